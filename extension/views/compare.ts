/**
 * Compare two runs (issue 13): the shown source (A) against one the user picks (B), a live
 * watcher or a recording. The facts of gradsight.widgets.compare(a, b): loss of both runs on one
 * chart, the per-layer metric at each run's last step on one log axis over the union of their
 * layers (a layer one run lacks is named as missing), and the findings side by side with what
 * only one run has marked.
 */
import type { ICompareData } from '../data';
import { compareRows, findingKey, onlyIn } from '../data';
import type { GradientsModel } from '../model';
import type { Finding } from '../protocol';
import { Chart, theme, withAlpha } from './charts';
import { empty, fmt, h, replaceChildren } from './dom';
import { SectionView } from './section';
import { sourceLabel } from './status';

/** A and B, the colours of gradsight.widgets.compare (widgets/style.py BLUE, ORANGE). */
export const RUN_COLORS = ['#0072B2', '#E69F00'] as const;
const TAGS = ['A', 'B'] as const;

export class CompareView extends SectionView {
  constructor(model: GradientsModel) {
    super(model, 'Compare runs', 'jp-gradsight-compare', ['status', 'snapshot', 'selection', 'compare']);
    this._select = h('select', { class: 'jp-gradsight-compare-select', 'aria-label': 'Compare with' });
    this._select.onchange = () => void this.model.compareWith(this._select.value || null);
    this._legend = h('div', { class: 'jp-gradsight-compare-legend' });
    this._lossBox = h('div', { class: 'jp-gradsight-chart jp-gradsight-compare-loss' });
    this._lossCanvas = h('canvas', { 'aria-label': 'Loss of both runs' });
    this._lossBox.appendChild(this._lossCanvas);
    this._flowBox = h('div', { class: 'jp-gradsight-chart jp-gradsight-compare-flow' });
    this._flowCanvas = h('canvas', { 'aria-label': 'Per-layer metric of both runs, log scale' });
    this._flowBox.appendChild(this._flowCanvas);
    this._missing = h('div', { class: 'jp-gradsight-muted jp-gradsight-compare-missing' });
    this._findings = h('div', { class: 'jp-gradsight-compare-findings' });
    this._empty = h('div');
    this.body.append(
      h(
        'div',
        { class: 'jp-gradsight-controls' },
        h('span', { class: 'jp-gradsight-muted' }, 'Compare with '),
        this._select
      ),
      this._empty,
      this._legend,
      (this._lossTitle = h('div', { class: 'jp-gradsight-compare-caption' }, 'Loss')),
      this._lossBox,
      (this._flowTitle = h('div', { class: 'jp-gradsight-compare-caption' })),
      this._flowBox,
      this._missing,
      this._findings
    );
  }

  /** Only with a second source to compare with. */
  protected isRelevant(): boolean {
    return super.isRelevant() && this.model.watchers.length > 1;
  }

  protected render(): void {
    const m = this.model;
    const a = m.watcherName;
    const others = m.watchers.filter(w => w.name !== a);
    this._select.replaceChildren(
      h('option', { value: '' }, '— nothing —'),
      ...others.map(w => h('option', { value: w.name }, sourceLabel(w, false)))
    );
    this._select.value = m.compareName ?? '';
    const data = m.compare;
    if (m.compareName === null || !data) {
      this._show(false);
      this._empty.replaceChildren(
        empty(
          m.compareName === null
            ? 'Pick a second run (a recording or another watched model) to see both side by side: loss, per-layer gradients, findings.'
            : 'Loading the comparison…'
        )
      );
      return;
    }
    this._empty.replaceChildren();
    this._show(true);
    if (data === this._drawn) {
      return; // a push of A re-renders the selector; the comparison itself is re-read apart
    }
    this._drawn = data;
    this._legend.replaceChildren(
      ...data.runs.map((r, k) =>
        h(
          'span',
          { class: 'jp-gradsight-compare-run', 'data-run': TAGS[k] },
          h('span', { class: 'jp-gradsight-swatch', style: `background: ${RUN_COLORS[k]}` }),
          `${r.label} · ${r.watcher.step_count} steps`
        )
      )
    );
    this._renderLoss(data);
    this._renderFlow(data);
    this._renderFindings(data);
  }

  private _show(on: boolean): void {
    for (const el of [
      this._legend,
      this._lossTitle,
      this._lossBox,
      this._flowTitle,
      this._flowBox,
      this._missing,
      this._findings
    ]) {
      el.style.display = on ? '' : 'none';
    }
  }

  private _renderLoss(data: ICompareData): void {
    const t = theme();
    const datasets = data.runs.map((r, k) => {
      const steps = r.steps.columns.step ?? new Float64Array(0);
      const loss = r.steps.columns.loss ?? new Float64Array(0);
      const points = Array.from(steps, (x, i) => ({ x, y: loss[i] })).filter(p => Number.isFinite(p.y));
      return {
        label: r.label,
        data: points,
        borderColor: RUN_COLORS[k],
        backgroundColor: RUN_COLORS[k],
        borderWidth: 1.5,
        pointRadius: 0
      };
    });
    const ys: number[] = [];
    datasets.forEach(d => d.data.forEach(p => p.y > 0 && ys.push(p.y)));
    const log = ys.length > 0 && Math.max(...ys) / Math.min(...ys) > 100;
    this._lossChart?.destroy();
    this._lossChart = new Chart(this._lossCanvas, {
      type: 'line',
      data: { datasets },
      options: {
        animation: false,
        responsive: true,
        maintainAspectRatio: false,
        parsing: false,
        plugins: { legend: { display: false } },
        scales: {
          x: {
            type: 'linear',
            title: { display: true, text: 'training step', color: t.muted },
            ticks: { color: t.muted, precision: 0 },
            grid: { color: t.grid }
          },
          y: {
            type: log ? 'logarithmic' : 'linear',
            title: { display: true, text: 'loss', color: t.muted },
            ticks: { color: t.muted, maxTicksLimit: 5 },
            grid: { color: t.grid }
          }
        }
      }
    });
  }

  private _renderFlow(data: ICompareData): void {
    const t = theme();
    const rows = compareRows(data);
    this._flowTitle.textContent = `Gradient flow: ${data.metric.replace(/_/g, ' ')} per layer, A vs B`;
    const labels = rows.map(row => {
      const marks = TAGS.filter((_, k) => row.values[k] === undefined).map(tag => `no ${tag}`);
      marks.push(...TAGS.filter((_, k) => row.nonfinite[k]).map(tag => `${tag} NaN`));
      return `${row.name || '(root)'}${marks.length ? ` [${marks.join(', ')}]` : ''}`;
    });
    const datasets = data.runs.map((r, k) => ({
      label: r.label,
      data: rows.map(row => {
        const v = row.values[k];
        return v !== undefined && v > 0 && Number.isFinite(v) ? v : null;
      }),
      backgroundColor: withAlpha(RUN_COLORS[k], 0.8),
      borderColor: rows.map(row => (row.nonfinite[k] ? t.error : RUN_COLORS[k])),
      borderWidth: rows.map(row => (row.nonfinite[k] ? 2 : 0))
    }));
    this._flowBox.style.height = `${Math.min(640, 60 + 26 * rows.length)}px`;
    this._flowChart?.destroy();
    this._flowChart = new Chart(this._flowCanvas, {
      type: 'bar',
      data: { labels, datasets },
      options: {
        indexAxis: 'y',
        animation: false,
        responsive: true,
        maintainAspectRatio: false,
        plugins: {
          legend: { display: false },
          tooltip: {
            callbacks: {
              label: item => {
                const v = rows[item.dataIndex].values[item.datasetIndex];
                return `${item.dataset.label}: ${v === undefined ? 'no such layer' : fmt(v)}`;
              }
            }
          }
        },
        scales: {
          x: {
            type: 'logarithmic',
            title: {
              display: true,
              text: `${data.metric.replace(/_/g, ' ')} at each run's last step (log scale, shared)`,
              color: t.muted
            },
            ticks: { color: t.muted, maxRotation: 0, autoSkip: true },
            grid: { color: t.grid }
          },
          y: {
            ticks: {
              autoSkip: false,
              font: { size: 10 },
              color: ctx => (rows[ctx.index]?.nonfinite.some(Boolean) ? t.error : t.text)
            },
            grid: { display: false }
          }
        }
      }
    });
    const missing = TAGS.map((tag, k) => {
      const names = rows.filter(row => row.values[k] === undefined).map(row => row.name || '(root)');
      return names.length ? `not in ${tag}: ${names.join(', ')}` : '';
    }).filter(Boolean);
    replaceChildren(
      this._missing,
      h(
        'div',
        { class: 'jp-gradsight-compare-layers' },
        missing.length
          ? `Layers differ between the runs: ${missing.join(' · ')}`
          : `Both runs have the same ${rows.length} layers.`
      ),
      rows.some(row => row.nonfinite.some(Boolean) || row.values.includes(undefined))
        ? h('div', {}, 'In the chart: [no B] the run has no such layer; [B NaN] NaN/Inf gradients there (no bar).')
        : null
    );
  }

  private _renderFindings(data: ICompareData): void {
    const only = onlyIn(data);
    const columns = data.runs.map((r, k) => {
      const { rows, total } = r.findings;
      const items = rows.map(f => this._item(f, only[k].has(findingKey(f)) ? TAGS[k] : null));
      return h(
        'div',
        { class: 'jp-gradsight-compare-col', 'data-run': TAGS[k] },
        h(
          'div',
          { class: 'jp-gradsight-compare-col-head', style: `border-color: ${RUN_COLORS[k]}` },
          `${r.label}: ${total} finding(s)`
        ),
        ...(items.length ? items : [h('div', { class: 'jp-gradsight-muted' }, 'nothing wrong detected')]),
        total > rows.length ? h('div', { class: 'jp-gradsight-muted' }, `showing ${rows.length} of ${total}`) : null
      );
    });
    this._findings.replaceChildren(...columns);
  }

  private _item(f: Finding, onlyHere: string | null): HTMLElement {
    const steps =
      f.last_step !== null && f.last_step !== undefined && f.last_step !== f.step
        ? `${f.step}–${f.last_step}`
        : `${f.step ?? '–'}`;
    return h(
      'div',
      {
        class: `jp-gradsight-compare-finding jp-gradsight-sev-${f.severity}${onlyHere ? ' jp-gradsight-compare-only' : ''}`,
        'data-kind': f.kind,
        title: f.message ?? ''
      },
      h('span', { class: `jp-gradsight-pill jp-gradsight-pill-${f.severity}` }, f.severity),
      ` ${f.kind} `,
      f.layer ? h('code', {}, f.layer) : null,
      h('span', { class: 'jp-gradsight-muted' }, ` step ${steps}`),
      onlyHere ? h('span', { class: 'jp-gradsight-pill jp-gradsight-pill-only' }, `only in ${onlyHere}`) : null
    );
  }

  dispose(): void {
    this._lossChart?.destroy();
    this._flowChart?.destroy();
    super.dispose();
  }

  private _select: HTMLSelectElement;
  private _legend: HTMLElement;
  private _lossTitle!: HTMLElement;
  private _flowTitle!: HTMLElement;
  private _lossBox: HTMLElement;
  private _lossCanvas: HTMLCanvasElement;
  private _flowBox: HTMLElement;
  private _flowCanvas: HTMLCanvasElement;
  private _missing: HTMLElement;
  private _findings: HTMLElement;
  private _empty: HTMLElement;
  private _drawn: ICompareData | null = null;
  private _lossChart: Chart<'line', { x: number; y: number }[]> | null = null;
  private _flowChart: Chart<'bar', (number | null)[], string> | null = null;
}
