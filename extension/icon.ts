/** The sidebar icon: three bars of decreasing height (a gradient-flow chart) and a pulse. */
import { LabIcon } from '@jupyterlab/ui-components';

const svg = `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24" width="16" height="16">
  <g class="jp-icon3" fill="#616161">
    <rect x="3" y="4" width="14" height="3.2" rx="1"/>
    <rect x="3" y="10.4" width="9" height="3.2" rx="1"/>
    <rect x="3" y="16.8" width="4" height="3.2" rx="1"/>
  </g>
  <path class="jp-icon-warn0" fill="none" stroke="#f57c00" stroke-width="1.8" stroke-linecap="round" stroke-linejoin="round" d="M14 18.4h2l1.5-3 2 5 1.5-2h1"/>
</svg>`;

export const gradsightIcon = new LabIcon({ name: 'gradsight:icon', svgstr: svg });
