/**
 * Gradient flow: one horizontal bar per layer (model order, top to bottom) on a log scale,
 * coloured by the worst finding on that layer; clicking a row shows the layer in detail.
 * In a torch.distributed source the bars are the selected rank's, or a note says whose.
 */
import type { ActiveElement, ChartEvent, TooltipItem } from 'chart.js';

import { worstSeverityByLayer } from '../data';
import type { GradientsModel } from '../model';
import type { LayerMetric } from '../protocol';
import { Chart, theme, withAlpha } from './charts';
import { empty, fmt, h } from './dom';
import { rankNote } from './ranks';
import { SectionView } from './section';

/** The metrics offered, by their schema names (protocol/schema.json layer_metric). */
const METRICS: { readonly [K in LayerMetric]?: string } = {
  grad_norm: 'gradient norm (w.r.t. output)',
  param_grad_norm: 'parameter gradient norm',
  act_norm: 'activation norm',
  update_ratio: 'update / weight ratio'
};

export class FlowView extends SectionView {
  constructor(model: GradientsModel) {
    super(model, 'Gradient flow', 'jp-gradsight-flow', ['snapshot', 'selection', 'layer', 'rank']);
    this._select = h('select', { class: 'jp-gradsight-metric', 'aria-label': 'Metric' });
    for (const [key, label] of Object.entries(METRICS)) {
      this._select.appendChild(h('option', { value: key }, label));
    }
    this._select.onchange = () => this.update();
    this._canvasBox = h('div', { class: 'jp-gradsight-chart jp-gradsight-flow-chart' });
    this._canvas = h('canvas', { 'aria-label': 'Per-layer gradient norms, log scale' });
    this._canvasBox.appendChild(this._canvas);
    this._note = h('div', { class: 'jp-gradsight-muted jp-gradsight-note' });
    this._rankNote = h('div', { class: 'jp-gradsight-note jp-gradsight-rank-note', role: 'status' });
    this._empty = h('div');
    this.body.append(
      h('div', { class: 'jp-gradsight-controls' }, this._select),
      this._rankNote,
      this._canvasBox,
      this._note,
      this._empty
    );
  }

  protected render(): void {
    const snap = this.model.snapshot;
    const metric = this._select.value as LayerMetric;
    const shownRank = this.model.layersRank;
    const other = rankNote(this.model, shownRank);
    this._rankNote.textContent = other ?? '';
    this._rankNote.style.display = other ? '' : 'none';
    const values = snap?.layers.columns[metric];
    const finite = values ? Array.from(values).filter(v => v > 0 && Number.isFinite(v)) : [];
    if (!snap || !values || finite.length === 0) {
      this._canvasBox.style.display = 'none';
      this._note.textContent = '';
      this._empty.replaceChildren(
        empty(
          snap && snap.watcher.step_count > 0
            ? `No ${METRICS[metric]} recorded yet for any layer.`
            : 'No training step yet: run a step (loss.backward(), optimizer.step()) and the per-layer gradient norms appear here.'
        )
      );
      return;
    }
    this._empty.replaceChildren();
    this._canvasBox.style.display = '';
    const names = snap.layers.names;
    const types = snap.layers.types;
    const flagged = worstSeverityByLayer(snap.findings.rows, shownRank);
    const selected = this.model.layerName;
    const t = theme();
    const colour = (name: string): string => {
      const sev = flagged.get(name);
      return sev === 'error' ? t.error : sev === 'warning' ? t.warn : sev === 'info' ? t.info : t.accent;
    };
    const labels = names.map((n, i) => {
      const v = values[i];
      const mark = Number.isNaN(v) ? ' (NaN)' : v === 0 ? ' (0)' : '';
      return `${n || '(root)'}${mark}`;
    });
    const data = Array.from(values, v => (v > 0 && Number.isFinite(v) ? v : null));
    const bg = names.map(n => withAlpha(colour(n), n === selected ? 0.95 : 0.6));
    const border = names.map(n => (n === selected ? t.text : colour(n)));
    const widths = names.map(n => (n === selected ? 2 : 0));
    this._canvasBox.style.height = `${Math.min(520, 48 + 18 * names.length)}px`;
    const zeros = Array.from(values).filter(v => v === 0).length;
    const nans = Array.from(values).filter(v => Number.isNaN(v)).length;
    this._note.textContent =
      (shownRank !== null ? `rank ${shownRank} · ` : '') +
      `step ${snap.watcher.step_count}` +
      (zeros ? ` · ${zeros} layer(s) at exactly 0` : '') +
      (nans ? ` · ${nans} layer(s) without a value` : '') +
      (flagged.size ? ' · coloured: layers with findings' : '') +
      ' · click a bar for its histograms';

    if (this._chart && this._chart.data.labels?.length !== labels.length) {
      this._chart.destroy();
      this._chart = null;
    }
    if (!this._chart) {
      this._chart = new Chart(this._canvas, {
        type: 'bar',
        data: { labels, datasets: [{ data, backgroundColor: bg, borderColor: border, borderWidth: widths }] },
        options: {
          indexAxis: 'y',
          animation: false,
          responsive: true,
          maintainAspectRatio: false,
          interaction: { mode: 'y', intersect: false },
          onClick: (_e: ChartEvent, elements: ActiveElement[]) => {
            const el = elements[0];
            if (el) {
              void this.model.selectLayer(this._names[el.index]);
            }
          },
          onHover: (e: ChartEvent, elements: ActiveElement[]) => {
            const target = e.native?.target as HTMLElement | undefined;
            if (target) {
              target.style.cursor = elements.length ? 'pointer' : 'default';
            }
          },
          plugins: {
            legend: { display: false },
            tooltip: {
              callbacks: {
                label: (item: TooltipItem<'bar'>) => {
                  const i = item.dataIndex;
                  const sev = this._flagged.get(this._names[i]);
                  return `${this._types[i] || ''} ${this._metric}: ${fmt(this._values[i])}${sev ? ` · ${sev}` : ''}`;
                }
              }
            }
          },
          scales: {
            x: {
              type: 'logarithmic',
              title: { display: true, text: '', color: t.muted },
              ticks: {
                color: t.muted,
                callback: v => (isPowerOfTen(Number(v)) ? fmt(Number(v)) : ''),
                autoSkip: false,
                maxRotation: 0
              },
              grid: { color: t.grid }
            },
            y: {
              ticks: {
                autoSkip: false,
                font: { size: 10 },
                color: ctx => (this._flagged.has(this._names[ctx.index]) ? colour(this._names[ctx.index]) : t.text)
              },
              grid: { display: false }
            }
          }
        }
      });
    }
    this._names = names;
    this._types = types;
    this._values = values;
    this._flagged = flagged;
    this._metric = metric;
    const chart = this._chart;
    chart.data.labels = labels;
    const ds = chart.data.datasets[0];
    ds.data = data;
    ds.backgroundColor = bg;
    ds.borderColor = border;
    ds.borderWidth = widths;
    const x = chart.options.scales?.x;
    if (x && x.title) {
      x.title.text = `${METRICS[metric]} (log scale)`;
    }
    chart.update('none');
  }

  dispose(): void {
    this._chart?.destroy();
    this._chart = null;
    super.dispose();
  }

  private _select: HTMLSelectElement;
  private _canvasBox: HTMLElement;
  private _canvas: HTMLCanvasElement;
  private _note: HTMLElement;
  private _rankNote: HTMLElement;
  private _empty: HTMLElement;
  private _chart: Chart<'bar', (number | null)[], string> | null = null;
  private _names: readonly string[] = [];
  private _types: readonly string[] = [];
  private _values: Float64Array = new Float64Array(0);
  private _flagged = new Map<string, string>();
  private _metric: LayerMetric = 'grad_norm';
}

/** Log-axis ticks only at powers of ten: Chart.js also ticks 2x and 5x, which collide. */
function isPowerOfTen(v: number): boolean {
  if (!(v > 0)) {
    return false;
  }
  const e = Math.log10(v);
  return Math.abs(e - Math.round(e)) < 1e-9;
}
