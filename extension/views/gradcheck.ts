/**
 * Gradcheck reports run in the kernel (newest first): pass/fail per tensor and where the
 * analytic and numeric gradients disagree most; and the button that runs the in-model
 * gradcheck of the selected layer, enabled only while the kernel is idle.
 */
import type { GradcheckReport } from '../protocol';
import type { GradientsModel } from '../model';
import { empty, fmt, h } from './dom';
import { SectionView } from './section';

export class GradcheckView extends SectionView {
  constructor(model: GradientsModel) {
    super(model, 'Gradcheck', 'jp-gradsight-gradcheck', ['reports', 'busy', 'selection', 'snapshot', 'status']);
    this._button = h('button', { class: 'jp-gradsight-button jp-mod-styled jp-mod-accept' }, 'Run gradcheck');
    this._button.onclick = () => void this.model.runGradcheck();
    this._why = h('span', { class: 'jp-gradsight-muted jp-gradsight-why' });
    this._list = h('div', { class: 'jp-gradsight-reports' });
    this.body.append(h('div', { class: 'jp-gradsight-controls' }, this._button, this._why), this._list);
  }

  protected render(): void {
    const m = this.model;
    const layer = m.layerName;
    const available = m.status?.features.gradcheck ?? false;
    let why = '';
    if (!available) {
      why = 'gradcheck is not available in this kernel';
    } else if (layer === null) {
      why = 'select a layer first';
    } else if (m.gradcheckRunning) {
      why = 'running…';
    } else if (m.kernelBusy) {
      why = 'the kernel is busy: runs when the cell finishes';
    }
    this._button.textContent = layer !== null ? `Run gradcheck on ${layer || '(root)'}` : 'Run gradcheck';
    this._button.disabled = why !== '';
    this._button.title = why || `Finite-difference check of ${layer} on the inputs it saw in the last step`;
    this._why.textContent = why;

    const reports = m.reports?.reports ?? [];
    if (reports.length === 0) {
      this._list.replaceChildren(
        empty(
          'No gradcheck reports yet. Select a layer and press Run gradcheck, or run `w.gradcheck("layer")` in a cell: reports appear here.'
        )
      );
      return;
    }
    this._list.replaceChildren(...reports.map(r => report(r)));
  }

  private _button: HTMLButtonElement;
  private _why: HTMLElement;
  private _list: HTMLElement;
}

function report(r: GradcheckReport): HTMLElement {
  const head = h(
    'div',
    { class: 'jp-gradsight-report-head' },
    h(
      'span',
      { class: `jp-gradsight-pill jp-gradsight-pill-${r.passed ? 'pass' : 'error'}` },
      r.passed ? 'pass' : 'FAIL'
    ),
    h('b', {}, ` ${r.title}`),
    h(
      'span',
      { class: 'jp-gradsight-muted' },
      [r.step !== null && r.step !== undefined ? ` step ${r.step}` : '', r.mode ? ` · ${r.mode}` : ''].join('')
    )
  );
  const rows = r.tensors.map(t =>
    h(
      'div',
      { class: `jp-gradsight-tensor ${t.passed ? '' : 'jp-gradsight-sev-error'}`, role: 'listitem' },
      h(
        'div',
        {},
        h('span', { class: t.passed ? 'jp-gradsight-ok' : 'jp-gradsight-fail' }, t.passed ? '✓ ' : '✗ '),
        h('code', {}, t.name),
        h('span', { class: 'jp-gradsight-muted' }, t.shape ? ` [${t.shape.join(', ')}]` : ''),
        h('span', { class: 'jp-gradsight-errs' }, ` abs ${fmt(t.max_abs_err)} · rel ${fmt(t.max_rel_err)}`)
      ),
      t.worst_index
        ? h(
            'div',
            { class: 'jp-gradsight-muted jp-gradsight-worst' },
            `worst at [${t.worst_index.join(', ')}]: analytic ${fmt(t.analytic)} vs numeric ${fmt(t.numeric)}`
          )
        : null
    )
  );
  const table = h('div', { class: 'jp-gradsight-tensors', role: 'list' }, ...rows);
  return h('div', { class: `jp-gradsight-report ${r.passed ? '' : 'jp-gradsight-report-failed'}` }, head, table);
}
