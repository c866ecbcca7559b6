/**
 * Chart.js set-up shared by the chart views: only the pieces we draw with are registered
 * (keeps the bundle small), and colours come from JupyterLab's theme variables.
 */
import {
  BarController,
  BarElement,
  CategoryScale,
  Chart,
  Filler,
  LineController,
  LineElement,
  LinearScale,
  LogarithmicScale,
  PointElement,
  Tooltip
} from 'chart.js';

Chart.register(
  BarController,
  BarElement,
  CategoryScale,
  Filler,
  LineController,
  LineElement,
  LinearScale,
  LogarithmicScale,
  PointElement,
  Tooltip
);

export { Chart };

export function cssVar(name: string, fallback: string): string {
  const v = getComputedStyle(document.body).getPropertyValue(name).trim();
  return v || fallback;
}

export interface ITheme {
  text: string;
  muted: string;
  grid: string;
  accent: string;
  warn: string;
  error: string;
  info: string;
  font: string;
}

export function theme(): ITheme {
  return {
    text: cssVar('--jp-ui-font-color1', '#212121'),
    muted: cssVar('--jp-ui-font-color2', '#616161'),
    grid: cssVar('--jp-border-color2', '#e0e0e0'),
    accent: cssVar('--jp-brand-color1', '#1976d2'),
    warn: cssVar('--jp-warn-color1', '#f57c00'),
    error: cssVar('--jp-error-color1', '#d32f2f'),
    info: cssVar('--jp-info-color1', '#0097a7'),
    font: cssVar('--jp-ui-font-family', 'sans-serif')
  };
}

/** `color` (#rrggbb or rgb()) at the given opacity, for histogram series over steps. */
export function withAlpha(color: string, alpha: number): string {
  const m = /^#([0-9a-f]{2})([0-9a-f]{2})([0-9a-f]{2})$/i.exec(color);
  if (m) {
    const [r, g, b] = [m[1], m[2], m[3]].map(x => parseInt(x, 16));
    return `rgba(${r}, ${g}, ${b}, ${alpha})`;
  }
  const rgb = /^rgba?\(([^)]+)\)$/.exec(color);
  if (rgb) {
    const [r, g, b] = rgb[1].split(',').map(x => x.trim());
    return `rgba(${r}, ${g}, ${b}, ${alpha})`;
  }
  return color;
}
