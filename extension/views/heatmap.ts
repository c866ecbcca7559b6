/**
 * Layers x steps: one row per layer (model order), one column per recorded step (or per run of
 * steps in a long run, each showing its most extreme step), coloured by log10 of the metric:
 * where and when gradients vanished or exploded, at a glance. NaN/Inf cells are red, exact
 * zeros black, cells without a value blank. Drawn on a canvas (one pixel per cell, scaled up),
 * like the panel's other charts; hovering a cell reads it out, clicking a row shows that layer.
 */
import type { IHeatmapData } from '../data';
import type { GradientsModel } from '../model';
import type { HeatmapMetric } from '../protocol';
import { HEATMAP_METRICS } from '../protocol';
import { theme } from './charts';
import { empty, fmt, h } from './dom';
import { rankNote } from './ranks';
import { SectionView } from './section';

const LABELS: { readonly [K in HeatmapMetric]: string } = {
  grad_norm: 'gradient norm (w.r.t. output)',
  param_grad_norm: 'parameter gradient norm',
  act_std: 'activation std',
  update_ratio: 'update / weight ratio'
};

export type RGBA = readonly [number, number, number, number];
/** NaN/Inf: a red no viridis colour comes near. */
export const NONFINITE: RGBA = [255, 32, 64, 255];
/** Exactly 0: below the bottom of the scale. */
export const ZERO: RGBA = [0, 0, 0, 255];
/** No value at that step (a layer without parameters, a detail metric between detail steps). */
export const MISSING: RGBA = [0, 0, 0, 0];

/** Viridis (perceptually uniform, readable in grey and by the colour-blind), 9 stops. */
const VIRIDIS: readonly (readonly [number, number, number])[] = [
  [68, 1, 84],
  [71, 45, 123],
  [59, 82, 139],
  [44, 114, 142],
  [33, 145, 140],
  [40, 174, 128],
  [94, 201, 98],
  [173, 220, 48],
  [253, 231, 37]
];

export function viridis(t: number): RGBA {
  const x = Math.min(1, Math.max(0, t)) * (VIRIDIS.length - 1);
  const i = Math.min(VIRIDIS.length - 2, Math.floor(x));
  const f = x - i;
  const [a, b] = [VIRIDIS[i], VIRIDIS[i + 1]];
  return [0, 1, 2].map(k => Math.round(a[k] + f * (b[k] - a[k]))).concat(255) as unknown as RGBA;
}

/** The log10 range of the finite, non-zero cells (the colour scale), or null if there are none. */
export function logRange(data: IHeatmapData): [number, number] | null {
  let lo = Infinity;
  let hi = -Infinity;
  for (let i = 0; i < data.values.length; i++) {
    const v = Math.abs(data.values[i]);
    if (data.nonfinite[i] === 0 && v > 0 && Number.isFinite(v)) {
      const l = Math.log10(v);
      lo = Math.min(lo, l);
      hi = Math.max(hi, l);
    }
  }
  return lo <= hi ? [lo, hi] : null;
}

/** The colour of one cell on the scale [lo, hi] (log10). */
export function cellColour(value: number, nonfinite: number, lo: number, hi: number): RGBA {
  if (nonfinite > 0 || value === Infinity || value === -Infinity) {
    return NONFINITE;
  }
  if (Number.isNaN(value)) {
    return MISSING;
  }
  if (value === 0) {
    return ZERO;
  }
  return viridis(hi > lo ? (Math.log10(Math.abs(value)) - lo) / (hi - lo) : 0.5);
}

/** Every cell's colour, row-major RGBA: the image drawn one pixel per cell. */
export function heatmapPixels(data: IHeatmapData): Uint8ClampedArray {
  const [lo, hi] = logRange(data) ?? [0, 0];
  const out = new Uint8ClampedArray(data.values.length * 4);
  for (let i = 0; i < data.values.length; i++) {
    out.set(cellColour(data.values[i], data.nonfinite[i], lo, hi), 4 * i);
  }
  return out;
}

/** What a column covers: "step 25" or "steps 20–29". */
export function columnSteps(data: IHeatmapData, c: number): string {
  const first = data.steps[c];
  if (data.stepSpan === 1) {
    return `step ${first}`;
  }
  const next = c + 1 < data.columns ? data.steps[c + 1] - 1 : NaN;
  return Number.isFinite(next) && next > first ? `steps ${first}–${next}` : `steps from ${first}`;
}

/** The readout of one cell. */
export function describeCell(data: IHeatmapData, row: number, c: number): string {
  const i = row * data.columns + c;
  const name = data.layers[row] || '(root)';
  const bad = data.nonfinite[i];
  const v = data.values[i];
  const of = data.stepSpan > 1 ? ` of ${data.stepSpan}` : '';
  const what =
    bad > 0
      ? `NaN/Inf in ${bad}${of} step(s)`
      : Number.isNaN(v)
        ? 'no value'
        : `${fmt(v)}${v > 0 ? ` (log10 ${fmt(Math.log10(v))})` : ''}${data.stepSpan > 1 ? ', the most extreme' : ''}`;
  return `${name} · ${columnSteps(data, c)} · ${what}`;
}

const LABEL_W = 96;
const AXIS_H = 16;
const MAX_H = 420;

export class HeatmapView extends SectionView {
  constructor(model: GradientsModel) {
    super(model, 'Layers × steps', 'jp-gradsight-heatmap', ['heatmap', 'selection', 'rank', 'status']);
    this._select = h('select', { class: 'jp-gradsight-heatmap-metric', 'aria-label': 'Heatmap metric' });
    for (const m of HEATMAP_METRICS) {
      this._select.appendChild(h('option', { value: m }, LABELS[m]));
    }
    this._select.onchange = () => void this.model.selectHeatmapMetric(this._select.value as HeatmapMetric);
    this._label = h('div', { class: 'jp-gradsight-muted jp-gradsight-heatmap-label' });
    this._rankNote = h('div', { class: 'jp-gradsight-note jp-gradsight-rank-note', role: 'status' });
    this._canvas = h('canvas', {
      class: 'jp-gradsight-heatmap-canvas',
      'aria-label': 'Layers by steps, coloured by log10 of the metric'
    });
    this._canvas.onmousemove = e => this._hover(e);
    this._canvas.onmouseleave = () => (this._readout.textContent = HINT);
    this._canvas.onclick = e => {
      const cell = this._cellAt(e);
      if (cell && this._data) {
        void this.model.selectLayer(this._data.layers[cell[0]]);
      }
    };
    this._box = h('div', { class: 'jp-gradsight-heatmap-box' }, this._canvas);
    if (typeof ResizeObserver !== 'undefined') {
      this._resize = new ResizeObserver(() => this.update()); // the sidebar dragged wider or narrower
      this._resize.observe(this._box);
    }
    this._legend = h('div', { class: 'jp-gradsight-heatmap-legend' });
    this._readout = h('div', { class: 'jp-gradsight-muted jp-gradsight-heatmap-readout' }, HINT);
    this._empty = h('div');
    this.body.append(
      h('div', { class: 'jp-gradsight-controls' }, this._select),
      this._rankNote,
      this._label,
      this._box,
      this._legend,
      this._readout,
      this._empty
    );
  }

  protected render(): void {
    const data = this.model.heatmap;
    this._select.value = this.model.heatmapMetric;
    const other = data ? rankNote(this.model, data.rank) : null;
    this._rankNote.textContent = other ?? '';
    this._rankNote.style.display = other ? '' : 'none';
    if (!data || data.columns === 0 || data.layers.length === 0) {
      this._data = null;
      this._box.style.display = 'none';
      this._legend.replaceChildren();
      this._label.textContent = '';
      this._readout.style.display = 'none';
      this._empty.replaceChildren(
        empty(
          data
            ? 'No training step recorded yet: run a step and the layers appear here, one column per step.'
            : 'Loading…'
        )
      );
      return;
    }
    this._data = data;
    this._empty.replaceChildren();
    this._box.style.display = '';
    this._readout.style.display = '';
    const range = logRange(data);
    this._label.textContent =
      `log10 ${LABELS[data.metric]}` +
      (data.rank !== null ? ` · rank ${data.rank}` : '') +
      (data.stepSpan > 1
        ? ` · ${data.totalSteps} steps in ${data.columns} columns of ${data.stepSpan} (each cell: its most extreme step)`
        : ` · ${data.totalSteps} step(s)`) +
      (data.skippedSteps > 0 ? ` · ${data.skippedSteps} step(s) without a value left out` : '');
    this._legend.replaceChildren(...legend(range, data));
    this._draw(data);
  }

  private _draw(data: IHeatmapData): void {
    const rows = data.layers.length;
    const width = Math.max(200, this._box.clientWidth || 320);
    const rowH = Math.max(3, Math.min(16, Math.floor((MAX_H - AXIS_H) / rows)));
    const height = rows * rowH + AXIS_H;
    const ratio = window.devicePixelRatio || 1;
    this._canvas.width = Math.round(width * ratio);
    this._canvas.height = Math.round(height * ratio);
    this._canvas.style.width = `${width}px`;
    this._canvas.style.height = `${height}px`;
    this._geometry = { x0: LABEL_W, y0: 0, w: width - LABEL_W - 4, rowH };
    if (this._box.clientWidth > 0) {
      void this.model.setHeatmapColumns(this._geometry.w); // one pixel per column at least
    }
    const ctx = this._canvas.getContext('2d');
    if (!ctx) {
      return; // no canvas (jsdom): the text around it still says what it shows
    }
    const t = theme();
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);
    const image = document.createElement('canvas');
    image.width = data.columns;
    image.height = rows;
    const ictx = image.getContext('2d');
    if (ictx) {
      const pixels = ictx.createImageData(data.columns, rows);
      pixels.data.set(heatmapPixels(data));
      ictx.putImageData(pixels, 0, 0);
      ctx.imageSmoothingEnabled = false;
      ctx.drawImage(image, LABEL_W, 0, this._geometry.w, rows * rowH);
    }
    ctx.strokeStyle = t.grid;
    ctx.strokeRect(LABEL_W - 0.5, -0.5, this._geometry.w + 1, rows * rowH + 1);
    // layer names, as many as fit
    ctx.font = `10px ${t.font}`;
    ctx.textBaseline = 'middle';
    ctx.textAlign = 'right';
    const every = Math.ceil(11 / rowH);
    const selected = this.model.layerName;
    for (let r = 0; r < rows; r++) {
      const name = data.layers[r] || '(root)';
      const isSel = data.layers[r] === selected;
      if (isSel) {
        ctx.strokeStyle = t.text;
        ctx.strokeRect(LABEL_W + 0.5, r * rowH + 0.5, this._geometry.w - 1, rowH - 1);
      }
      if (r % every === 0 || isSel) {
        ctx.fillStyle = isSel ? t.text : t.muted;
        ctx.fillText(fitText(ctx, name, LABEL_W - 6), LABEL_W - 4, r * rowH + rowH / 2);
      }
    }
    // step ticks: first, last and a few between
    ctx.fillStyle = t.muted;
    ctx.textBaseline = 'top';
    const y = rows * rowH + 3;
    const ticks = Math.min(data.columns, 4);
    for (let k = 0; k < ticks; k++) {
      const c = ticks === 1 ? 0 : Math.round((k * (data.columns - 1)) / (ticks - 1));
      const x = LABEL_W + ((c + 0.5) / data.columns) * this._geometry.w;
      ctx.textAlign = k === 0 ? 'left' : k === ticks - 1 ? 'right' : 'center';
      ctx.fillText(String(data.steps[c]), k === 0 ? LABEL_W : k === ticks - 1 ? LABEL_W + this._geometry.w : x, y);
    }
  }

  dispose(): void {
    this._resize?.disconnect();
    super.dispose();
  }

  private _cellAt(e: MouseEvent): [number, number] | null {
    const data = this._data;
    const g = this._geometry;
    if (!data || !g) {
      return null;
    }
    const rect = this._canvas.getBoundingClientRect();
    const x = e.clientX - rect.left - g.x0;
    const y = e.clientY - rect.top - g.y0;
    const c = Math.floor((x / g.w) * data.columns);
    const r = Math.floor(y / g.rowH);
    return c >= 0 && c < data.columns && r >= 0 && r < data.layers.length ? [r, c] : null;
  }

  private _hover(e: MouseEvent): void {
    const cell = this._cellAt(e);
    this._readout.textContent = cell && this._data ? describeCell(this._data, cell[0], cell[1]) : HINT;
  }

  private _select: HTMLSelectElement;
  private _label: HTMLElement;
  private _rankNote: HTMLElement;
  private _canvas: HTMLCanvasElement;
  private _box: HTMLElement;
  private _legend: HTMLElement;
  private _readout: HTMLElement;
  private _empty: HTMLElement;
  private _data: IHeatmapData | null = null;
  private _geometry: { x0: number; y0: number; w: number; rowH: number } | null = null;
  private _resize: ResizeObserver | null = null;
}

const HINT = 'hover a cell to read it; click a row for that layer';

function rgba(c: RGBA): string {
  return `rgba(${c[0]}, ${c[1]}, ${c[2]}, ${c[3] / 255})`;
}

/** The colour bar with its ends (powers of ten) and the special cells present. */
function legend(range: [number, number] | null, data: IHeatmapData): HTMLElement[] {
  const out: HTMLElement[] = [];
  if (range) {
    const stops = [0, 0.25, 0.5, 0.75, 1].map(t => `${rgba(viridis(t))} ${t * 100}%`).join(', ');
    out.push(
      h('span', { class: 'jp-gradsight-heatmap-end' }, fmt(10 ** range[0])),
      h('span', { class: 'jp-gradsight-heatmap-bar', style: `background: linear-gradient(to right, ${stops})` }),
      h('span', { class: 'jp-gradsight-heatmap-end' }, fmt(10 ** range[1]))
    );
  }
  const count = (test: (v: number, bad: number) => boolean) => {
    let n = 0;
    for (let i = 0; i < data.values.length; i++) {
      n += test(data.values[i], data.nonfinite[i]) ? 1 : 0;
    }
    return n;
  };
  const specials: [RGBA, string, number, string][] = [
    [NONFINITE, 'NaN/Inf', count((v, bad) => bad > 0 || v === Infinity || v === -Infinity), 'nonfinite'],
    [ZERO, 'exactly 0', count((v, bad) => bad === 0 && v === 0), 'zero'],
    [MISSING, 'no value', count((v, bad) => bad === 0 && Number.isNaN(v)), 'missing']
  ];
  for (const [colour, label, n, key] of specials) {
    if (n > 0) {
      out.push(
        h(
          'span',
          { class: 'jp-gradsight-heatmap-key', 'data-key': key },
          h('span', { class: 'jp-gradsight-heatmap-swatch', style: `background: ${rgba(colour)}` }),
          `${label} (${n})`
        )
      );
    }
  }
  return out;
}

function fitText(ctx: CanvasRenderingContext2D, text: string, width: number): string {
  if (ctx.measureText(text).width <= width) {
    return text;
  }
  let s = text;
  while (s.length > 1 && ctx.measureText(`…${s}`).width > width) {
    s = s.slice(1);
  }
  return `…${s}`; // the end of a dotted name says more than its start
}
