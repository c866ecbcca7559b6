/**
 * One layer in detail: its histograms over the recent steps (gradient, activation or
 * weight; darker is newer) on the common signed log-spaced grid the kernel regrids a series
 * onto, the non-finite and zero counts kept apart, and its latest statistics. In a
 * torch.distributed source they are the selected rank's when the source holds them (a recording
 * of the job); otherwise (a live watcher) the source's own rank's, and a note says so.
 */
import type { TooltipItem } from 'chart.js';

import { overlay } from '../data';
import type { ILayerData } from '../data';
import type { GradientsModel } from '../model';
import type { HistKind, LayerMetric } from '../protocol';
import { HIST_KINDS } from '../protocol';
import { Chart, theme, withAlpha } from './charts';
import { empty, fmt, fmtEdge, h } from './dom';
import { SectionView } from './section';

const KIND_LABEL: { [K in HistKind]: string } = { grad: 'gradient', activation: 'activation', weight: 'weight' };

/** Rows of the statistics table: label, gradient metric, activation metric (names: the schema's). */
const STAT_ROWS: [string, LayerMetric, LayerMetric][] = [
  ['norm', 'grad_norm', 'act_norm'],
  ['mean', 'grad_mean', 'act_mean'],
  ['std', 'grad_std', 'act_std'],
  ['min', 'grad_min', 'act_min'],
  ['max', 'grad_max', 'act_max'],
  ['zero fraction', 'grad_zero_frac', 'act_zero_frac'],
  ['NaN', 'grad_nan', 'act_nan'],
  ['+Inf', 'grad_posinf', 'act_posinf'],
  ['-Inf', 'grad_neginf', 'act_neginf']
];
const PARAM_STATS: [string, LayerMetric][] = [
  ['param norm', 'param_norm'],
  ['param grad norm', 'param_grad_norm'],
  ['update norm', 'update_norm'],
  ['update / weight', 'update_ratio']
];

export class LayerView extends SectionView {
  constructor(model: GradientsModel) {
    super(model, 'Layer', 'jp-gradsight-layer', ['layer', 'selection', 'snapshot', 'rank']);
    this._picker = h('select', { class: 'jp-gradsight-layer-select', 'aria-label': 'Layer' });
    this._picker.onchange = () => void this.model.selectLayer(this._picker.value);
    this._tabs = h('div', { class: 'jp-gradsight-tabs', role: 'tablist' });
    for (const kind of HIST_KINDS) {
      const b = h('button', { class: 'jp-gradsight-tab', role: 'tab', 'data-kind': kind }, KIND_LABEL[kind]);
      b.onclick = () => {
        this._kind = kind;
        this.update();
      };
      this._tabs.appendChild(b);
    }
    this._canvasBox = h('div', { class: 'jp-gradsight-chart jp-gradsight-hist-chart' });
    this._canvas = h('canvas', { 'aria-label': 'Histograms over steps' });
    this._canvasBox.appendChild(this._canvas);
    this._histNote = h('div', { class: 'jp-gradsight-hist-note' });
    this._histEmpty = h('div');
    this._stats = h('div', { class: 'jp-gradsight-stats' });
    this._rankNote = h('div', { class: 'jp-gradsight-note jp-gradsight-rank-note', role: 'status' });
    this.body.append(
      h('div', { class: 'jp-gradsight-controls' }, this._picker),
      this._rankNote,
      this._tabs,
      this._canvasBox,
      this._histNote,
      this._histEmpty,
      this._stats
    );
  }

  protected render(): void {
    const name = this.model.layerName;
    const data = this.model.layer;
    const snap = this.model.snapshot;
    if (name === null || !snap) {
      this.titleNode.textContent = 'Layer';
      this._show(false);
      this._histEmpty.replaceChildren(empty('Click a layer in the gradient flow chart to see its histograms.'));
      this._stats.replaceChildren();
      return;
    }
    this._fillPicker(snap.layers.names, snap.layers.types, name);
    const note = layerRankNote(this.model, data && data.layer === name ? data : null);
    this._rankNote.style.display = note ? '' : 'none';
    this._rankNote.textContent = note ?? '';
    const i = snap.layers.names.indexOf(name);
    const type = data?.type ?? (i >= 0 ? snap.layers.types[i] : '');
    this.titleNode.textContent = `Layer ${name || '(root)'}${type ? ` (${type})` : ''}`;
    for (const b of Array.from(this._tabs.children) as HTMLElement[]) {
      const kind = b.dataset.kind as HistKind;
      b.classList.toggle('jp-mod-active', kind === this._kind);
      b.setAttribute('aria-selected', String(kind === this._kind));
      const n = data?.histograms[kind].length ?? 0;
      b.textContent = `${KIND_LABEL[kind]}${n ? ` (${n})` : ''}`;
    }
    if (!data || data.layer !== name) {
      this._show(false);
      this._histEmpty.replaceChildren(
        empty(this.model.kernelBusy ? 'Loading… (the kernel sends it with the next training step)' : 'Loading…')
      );
      this._stats.replaceChildren();
      return;
    }
    this._renderHistograms(data);
    this._renderStats(data);
  }

  /** A keyboard-friendly twin of clicking a bar in the gradient flow chart. */
  private _fillPicker(names: readonly string[], types: readonly string[], selected: string): void {
    const key = names.join('\u0000');
    if (key !== this._pickerKey) {
      this._pickerKey = key;
      this._picker.replaceChildren(
        ...names.map((n, i) => h('option', { value: n }, `${n || '(root)'}${types[i] ? ` (${types[i]})` : ''}`))
      );
    }
    this._picker.value = selected;
  }

  private _show(chart: boolean): void {
    this._canvasBox.style.display = chart ? '' : 'none';
    if (!chart) {
      this._histNote.replaceChildren();
    }
  }

  private _renderHistograms(data: ILayerData): void {
    const series = data.histograms[this._kind];
    if (series.length === 0) {
      this._show(false);
      const why =
        this._kind === 'weight'
          ? `${data.layer || '(root)'} has no weight histogram: only layers with their own parameters have one.`
          : `No ${KIND_LABEL[this._kind]} histogram of ${data.layer || '(root)'} yet. Histograms are taken every \`histogram_every\` steps (gs.watch(model, histogram_every=1) for every step).`;
      this._histEmpty.replaceChildren(empty(why));
      return;
    }
    this._histEmpty.replaceChildren();
    this._show(true);
    const latest = series[series.length - 1];
    const grid = overlay(series);
    const labels = binLabels(grid.edges);
    const t = theme();
    const datasets = series.map((hist, k) => {
      const counts = grid.counts[k];
      const newest = k === series.length - 1;
      const alpha = newest ? 1 : 0.15 + (0.55 * (k + 1)) / series.length;
      return {
        label: `step ${hist.step ?? '?'}`,
        data: counts ? Array.from(counts) : [],
        borderColor: withAlpha(t.accent, alpha),
        backgroundColor: withAlpha(t.accent, newest ? 0.15 : 0),
        borderWidth: newest ? 2 : 1,
        fill: newest,
        pointRadius: 0,
        tension: 0
      };
    });
    if (this._chart && this._chart.data.labels?.length !== labels.length) {
      this._chart.destroy();
      this._chart = null;
    }
    if (!this._chart) {
      this._chart = new Chart(this._canvas, {
        type: 'line',
        data: { labels, datasets },
        options: {
          animation: false,
          responsive: true,
          maintainAspectRatio: false,
          interaction: { mode: 'index', intersect: false },
          plugins: {
            legend: { display: false },
            tooltip: {
              filter: (item: TooltipItem<'line'>) => item.datasetIndex === item.chart.data.datasets.length - 1,
              callbacks: {
                title: (items: TooltipItem<'line'>[]) => {
                  const i = items[0]?.dataIndex ?? 0;
                  return `[${fmt(this._edges[i])}, ${fmt(this._edges[i + 1])})`;
                },
                label: (item: TooltipItem<'line'>) => `${item.dataset.label}: ${fmt(Number(item.raw))} values`
              }
            }
          },
          scales: {
            x: {
              title: { display: true, text: 'value (signed log-spaced bins)', color: t.muted },
              ticks: { color: t.muted, maxRotation: 0, autoSkip: true, maxTicksLimit: 9 },
              grid: { color: t.grid }
            },
            y: {
              beginAtZero: true,
              title: { display: true, text: 'count', color: t.muted },
              ticks: { color: t.muted, maxTicksLimit: 5 },
              grid: { color: t.grid }
            }
          }
        }
      });
    }
    this._edges = grid.edges;
    this._chart.data.labels = labels;
    this._chart.data.datasets = datasets;
    this._chart.update('none');
    const first = series[0].step;
    this._histNote.replaceChildren(
      h(
        'span',
        { class: 'jp-gradsight-muted' },
        series.length > 1 ? `steps ${first}–${latest.step}, darker is newer · ` : `step ${latest.step} · `
      ),
      chip('zero', latest.zero),
      chip('NaN', latest.nan, latest.nan > 0),
      chip('+Inf', latest.posinf, latest.posinf > 0),
      chip('-Inf', latest.neginf, latest.neginf > 0)
    );
  }

  private _renderStats(data: ILayerData): void {
    const s = data.stats;
    const table = h(
      'table',
      { class: 'jp-gradsight-table jp-gradsight-stats-table' },
      h(
        'thead',
        {},
        h(
          'tr',
          {},
          h('th', {}, `${data.rank !== null ? `rank ${data.rank}, ` : ''}latest (step ${fmt(s.step ?? null)})`),
          h('th', {}, 'gradient'),
          h('th', {}, 'activation')
        )
      )
    );
    const body = h('tbody');
    for (const [label, g, a] of STAT_ROWS) {
      const nonFinite = label === 'NaN' || label.endsWith('Inf');
      body.appendChild(h('tr', {}, h('td', {}, label), cell(s[g], nonFinite), cell(s[a], nonFinite)));
    }
    table.appendChild(body);
    const params = PARAM_STATS.filter(([, key]) => s[key] !== null && s[key] !== undefined);
    const paramList = params.length
      ? h(
          'div',
          { class: 'jp-gradsight-params' },
          ...params.map(([label, key]) =>
            h('span', { class: 'jp-gradsight-param' }, `${label} `, h('b', {}, fmt(s[key])))
          )
        )
      : h('div', { class: 'jp-gradsight-muted' }, 'No parameters of its own.');
    this._stats.replaceChildren(table, paramList);
  }

  dispose(): void {
    this._chart?.destroy();
    this._chart = null;
    super.dispose();
  }

  private _kind: HistKind = 'grad';
  private _picker: HTMLSelectElement;
  private _pickerKey = '';
  private _tabs: HTMLElement;
  private _canvasBox: HTMLElement;
  private _canvas: HTMLCanvasElement;
  private _histNote: HTMLElement;
  private _histEmpty: HTMLElement;
  private _stats: HTMLElement;
  private _rankNote: HTMLElement;
  private _chart: Chart<'line', number[], string> | null = null;
  private _edges: Float64Array = new Float64Array(0);
}

/**
 * What to say when the layer detail shows another rank than the one selected (the source does
 * not hold the selected rank's layers): never another rank's histograms under the selected label.
 */
export function layerRankNote(model: GradientsModel, data: ILayerData | null): string | null {
  const ranks = model.snapshot?.ranks;
  const wanted = model.rank;
  const shown = data?.rank ?? null;
  if (!ranks || shown === null || wanted === null || shown === wanted) {
    return null;
  }
  const why = ranks.perRankLayers ? `this recording holds no layer statistics of rank ${wanted} (yet)` : 'this process';
  return `histograms and statistics below: rank ${shown} (${why})`;
}

/** Each bin labelled by its edge farther from zero: "-1e-2" … "-1e-8", "1e-8" … "1e-2". */
export function binLabels(edges: Float64Array): string[] {
  const out: string[] = [];
  for (let i = 0; i + 1 < edges.length; i++) {
    const lo = edges[i];
    const hi = edges[i + 1];
    out.push(fmtEdge(Math.abs(lo) > Math.abs(hi) ? lo : hi));
  }
  return out;
}

/** A statistic; counts of non-finite values are highlighted when there are any. */
function cell(v: number | null | undefined, badIfPositive = false): HTMLElement {
  const bad = badIfPositive && typeof v === 'number' && v > 0;
  return h('td', { class: bad ? 'jp-gradsight-bad' : undefined }, fmt(v ?? null));
}

function chip(label: string, n: number, bad = false): HTMLElement {
  return h('span', { class: `jp-gradsight-chip${bad ? ' jp-gradsight-chip-bad' : ''}` }, `${label} ${n}`);
}
