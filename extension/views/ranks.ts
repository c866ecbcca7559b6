/**
 * The rank dimension of a torch.distributed source: one button per rank, a red dot on the rank
 * that went wrong first (and a line saying so), and the selected rank's step times (its row of
 * w.ranks()) next to the median of the other ranks, so a straggler stands out.
 */
import { othersMedian, rankRow } from '../data';
import type { IRanksData } from '../data';
import type { GradientsModel } from '../model';
import { fmt, h } from './dom';
import { SectionView } from './section';

/** Columns of w.ranks() shown as times (seconds in the table, milliseconds here). */
const TIMES: [string, string][] = [
  ['step_s', 'step'],
  ['forward_s', 'forward'],
  ['backward_s', 'backward'],
  ['allreduce_s', 'all-reduce'],
  ['busy_s', 'busy']
];
const COUNTS: [string, string][] = [
  ['nonfinite_steps', 'steps with NaN/Inf'],
  ['first_nonfinite_step', 'first NaN/Inf at step'],
  ['findings', 'findings naming it']
];

export class RanksView extends SectionView {
  constructor(model: GradientsModel) {
    super(model, 'Ranks', 'jp-gradsight-ranks', ['snapshot', 'selection', 'rank']);
  }

  protected isRelevant(): boolean {
    return super.isRelevant() && !!this.model.snapshot?.ranks;
  }

  protected render(): void {
    const ranks = this.model.snapshot?.ranks;
    const selected = this.model.rank;
    if (!ranks || selected === null) {
      return;
    }
    this.titleNode.textContent = `Ranks (world size ${ranks.worldSize})`;
    const bad = ranks.firstBad;
    const buttons = h('div', { class: 'jp-gradsight-rank-buttons', role: 'radiogroup', 'aria-label': 'Rank' });
    for (let r = 0; r < ranks.worldSize; r++) {
      const b = h(
        'button',
        {
          class: `jp-gradsight-rank${r === selected ? ' jp-mod-active' : ''}`,
          role: 'radio',
          'aria-checked': String(r === selected),
          'data-rank': String(r),
          title: bad?.rank === r ? `rank ${r} went wrong first` : `rank ${r}`
        },
        bad?.rank === r ? h('span', { class: 'jp-gradsight-rank-bad', 'aria-label': 'went wrong first' }) : null,
        `rank ${r}`,
        r === ranks.rank ? h('span', { class: 'jp-gradsight-muted' }, '(this)') : null
      );
      b.onclick = () => this.model.selectRank(r);
      buttons.appendChild(b);
    }
    const first = bad
      ? h(
          'div',
          { class: 'jp-gradsight-rank-first', role: 'status' },
          h('span', { class: 'jp-gradsight-rank-bad' }),
          `rank ${bad.rank} went wrong first (step ${bad.step ?? '?'})`,
          h('span', { class: 'jp-gradsight-muted' }, ` · ${bad.kind}${bad.layer ? ` in ${bad.layer}` : ''}`)
        )
      : h('div', { class: 'jp-gradsight-muted jp-gradsight-rank-first' }, 'no rank has reported an error');
    this.setBody(buttons, first, this._table(ranks, selected), this._note(ranks, selected));
  }

  private _table(ranks: IRanksData, r: number): HTMLElement {
    const row = rankRow(ranks, r);
    const body = h('tbody');
    for (const [col, label] of TIMES) {
      if (!(col in row)) {
        continue;
      }
      const mine = row[col];
      const others = othersMedian(ranks, col, r);
      const ratio = mine / others;
      const slow = Number.isFinite(ratio) && ratio >= 1.5;
      body.appendChild(
        h(
          'tr',
          {},
          h('td', {}, label),
          h('td', { class: slow ? 'jp-gradsight-bad' : undefined }, ms(mine)),
          h('td', {}, ms(others)),
          h('td', { class: slow ? 'jp-gradsight-bad' : undefined }, Number.isFinite(ratio) ? `×${fmt(ratio)}` : '–')
        )
      );
    }
    for (const [col, label] of COUNTS) {
      if (col in row) {
        const v = row[col];
        const bad = col !== 'first_nonfinite_step' && v > 0;
        body.appendChild(
          h(
            'tr',
            {},
            h('td', {}, label),
            h('td', { class: bad ? 'jp-gradsight-bad' : undefined }, fmt(v)),
            h('td'),
            h('td')
          )
        );
      }
    }
    return h(
      'table',
      { class: 'jp-gradsight-table jp-gradsight-rank-table' },
      h(
        'thead',
        {},
        h('tr', {}, h('th', {}, `rank ${r} (median)`), h('th', {}, 'ms'), h('th', {}, 'other ranks'), h('th', {}, ''))
      ),
      body
    );
  }

  private _note(ranks: IRanksData, r: number): HTMLElement | null {
    const other = rankNote(this.model, ranks.layersRank);
    if (other) {
      return h('div', { class: 'jp-gradsight-note jp-gradsight-rank-note', role: 'status' }, other);
    }
    return r === ranks.rank && !ranks.perRankLayers
      ? null
      : h('div', { class: 'jp-gradsight-muted jp-gradsight-note' }, `The layer charts below show rank ${r}.`);
  }
}

/**
 * What to say when a per-layer view shows rank `shown` while rank `model.rank` is selected (the
 * source does not hold the selected rank's layers): never another rank's numbers under the
 * selected rank's label. Null when they agree, or for a single process.
 */
export function rankNote(model: GradientsModel, shown: number | null): string | null {
  const ranks = model.snapshot?.ranks;
  const wanted = model.rank;
  if (!ranks || shown === null || wanted === null || shown === wanted) {
    return null;
  }
  if (!ranks.perRankLayers) {
    return (
      `layer charts show rank ${shown} (this process): rank ${wanted}'s layer statistics stay in rank ${wanted}'s ` +
      'process. Record the job (gs.watch(..., record=path) on every rank) and open the recording to see every rank here.'
    );
  }
  return `layer charts show rank ${shown}: this recording holds no layer statistics of rank ${wanted} (yet).`;
}

function ms(seconds: number): string {
  return Number.isFinite(seconds) ? fmt(seconds * 1000) : '–';
}
