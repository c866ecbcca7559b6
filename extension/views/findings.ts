/**
 * Findings table: what the detectors reported, in the order the kernel sends them (that of
 * w.findings(): first step ascending, then severity, then layer order; never re-sorted
 * here), coloured by severity; a NaN origin shows its op and the user's source line.
 */
import type { Finding } from '../protocol';
import type { GradientsModel } from '../model';
import { empty, fmt, h } from './dom';
import { SectionView } from './section';

export class FindingsView extends SectionView {
  constructor(model: GradientsModel) {
    super(model, 'Findings', 'jp-gradsight-findings', ['snapshot', 'selection', 'rank']);
  }

  protected render(): void {
    const snap = this.model.snapshot;
    if (!snap) {
      this.setBody(empty('Waiting for the first training step…'));
      return;
    }
    const { rows, total } = snap.findings;
    this.titleNode.textContent = total ? `Findings (${total})` : 'Findings';
    if (rows.length === 0) {
      this.setBody(
        empty(
          `No findings after ${snap.watcher.step_count} step(s). Vanishing or exploding gradients, dead units and the first NaN/Inf are reported here, with the layer.`
        )
      );
      return;
    }
    const list = h('div', { class: 'jp-gradsight-findings-list', role: 'list' }, ...rows.map(f => this._item(f)));
    const parts: (Node | null)[] = [h('div', { class: 'jp-gradsight-scroll' }, list)];
    if (total > rows.length) {
      parts.push(
        h('div', { class: 'jp-gradsight-muted' }, `showing ${rows.length} of ${total}; w.findings() has them all`)
      );
    }
    this.setBody(...parts);
  }

  /** One finding as a compact card: a sidebar is too narrow for a five-column table. */
  private _item(f: Finding): HTMLElement {
    const layer = f.layer ?? '';
    const steps =
      f.last_step !== null && f.last_step !== undefined && f.last_step !== f.step
        ? `steps ${f.step}–${f.last_step}`
        : `step ${f.step ?? '–'}`;
    const layerLink = layer
      ? h('button', { class: 'jp-gradsight-link', title: `Show ${layer} in detail` }, h('code', {}, layer))
      : null;
    if (layerLink) {
      layerLink.onclick = () => void this.model.selectLayer(layer);
    }
    const head = h(
      'div',
      { class: 'jp-gradsight-finding-head' },
      h('span', { class: `jp-gradsight-pill jp-gradsight-pill-${f.severity}` }, f.severity),
      f.status === 'suspected'
        ? h(
            'span',
            {
              class: 'jp-gradsight-pill jp-gradsight-pill-suspected',
              title: 'evidence is building: the window has not filled'
            },
            'suspected'
          )
        : null,
      h('span', { class: 'jp-gradsight-finding-kind' }, f.kind),
      f.rank !== null && f.rank !== undefined
        ? h(
            'span',
            { class: 'jp-gradsight-pill jp-gradsight-pill-rank', 'data-rank': String(f.rank) },
            `rank ${f.rank}`
          )
        : null,
      layerLink,
      h('span', { class: 'jp-gradsight-muted' }, `${steps}${f.count && f.count > 1 ? ` ×${f.count}` : ''}`)
    );
    const hasValue = f.value !== null && f.value !== undefined;
    const hasThreshold = f.threshold !== null && f.threshold !== undefined;
    return h(
      'div',
      {
        class: `jp-gradsight-finding jp-gradsight-sev-${f.severity}${
          f.rank !== null && f.rank !== undefined && f.rank === this.model.rank ? ' jp-gradsight-finding-of-rank' : ''
        }`,
        role: 'listitem',
        'data-kind': f.kind
      },
      head,
      f.message ? h('div', { class: 'jp-gradsight-finding-message' }, f.message) : null,
      f.affected && f.affected.length > 1
        ? h(
            'div',
            { class: 'jp-gradsight-muted', title: f.affected.filter(Boolean).join(', ') },
            `one cause across ${f.affected.length} layers`
          )
        : null,
      hasValue || hasThreshold
        ? h(
            'div',
            { class: 'jp-gradsight-muted' },
            `value ${fmt(f.value)}${hasThreshold ? `, threshold ${fmt(f.threshold)}` : ''}`
          )
        : null,
      f.op || f.source
        ? h('div', { class: 'jp-gradsight-where' }, h('code', {}, [f.op, f.source].filter(Boolean).join(' at ')))
        : null,
      f.hint ? h('div', { class: 'jp-gradsight-hint' }, f.hint) : null
    );
  }
}
