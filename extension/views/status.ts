/**
 * The top section: which notebook and kernel the panel follows, whether gradsight is
 * loaded there, and which watched model is shown. Every state that is not "connected with
 * a watched model" says what to do next.
 */
import type { ConnectionState, GradientsModel } from '../model';
import type { WatcherSummary } from '../protocol';
import { empty, fmt, h } from './dom';
import { SectionView } from './section';

const ADVICE: { [S in ConnectionState]: string } = {
  'no-notebook': 'Open a notebook: this panel shows the gradients of the model it trains.',
  'no-kernel': 'This notebook has no kernel. Start one, then run `import gradsight` in this notebook.',
  connecting: 'Connecting to the kernel…',
  'not-loaded': 'gradsight is not loaded in this kernel: run `import gradsight` in this notebook.',
  connected: '',
  restarting: 'The kernel is restarting… afterwards, run `import gradsight` in this notebook again.',
  dead: 'The kernel died. Restart it, then run `import gradsight` in this notebook.'
};

const LABEL: { [S in ConnectionState]: string } = {
  'no-notebook': 'no notebook',
  'no-kernel': 'no kernel',
  connecting: 'connecting',
  'not-loaded': 'gradsight not loaded',
  connected: 'connected',
  restarting: 'restarting',
  dead: 'kernel dead'
};

export class StatusView extends SectionView {
  constructor(model: GradientsModel) {
    super(model, 'Status', 'jp-gradsight-status', ['status', 'snapshot', 'busy', 'error', 'selection']);
    this.update();
  }

  protected isRelevant(): boolean {
    return true;
  }

  protected render(): void {
    const m = this.model;
    const session = m.session;
    const line = h(
      'div',
      { class: 'jp-gradsight-status-line' },
      h('span', { class: `jp-gradsight-dot jp-gradsight-dot-${m.state}`, title: LABEL[m.state] }),
      h('span', { class: 'jp-gradsight-state', 'data-state': m.state }, LABEL[m.state]),
      m.state === 'connected' && m.kernelBusy ? h('span', { class: 'jp-gradsight-badge' }, 'cell running') : null
    );
    const where = session
      ? h(
          'div',
          { class: 'jp-gradsight-muted jp-gradsight-where-kernel' },
          `${basename(session.path)} · ${session.kernelDisplayName}`
        )
      : null;
    const parts: (Node | null)[] = [line, where];
    if (m.state !== 'connected') {
      parts.push(empty(ADVICE[m.state], 'jp-gradsight-advice'));
    } else {
      const st = m.status;
      if (st) {
        parts.push(
          h(
            'div',
            { class: 'jp-gradsight-muted jp-gradsight-versions' },
            `gradsight ${st.gradsight_version} · torch ${st.kernel?.torch ?? '?'} · Python ${st.kernel?.python ?? '?'}`
          )
        );
        if (!st.features.watchers) {
          parts.push(
            empty('gradsight is loaded but its capture engine failed to import in this kernel; see the kernel log.')
          );
        }
      }
      parts.push(this._watchers());
    }
    if (m.lastError) {
      parts.push(h('div', { class: 'jp-gradsight-error', role: 'alert' }, m.lastError));
    }
    this.setBody(...parts);
  }

  private _watchers(): HTMLElement {
    const m = this.model;
    const watchers = m.watchers;
    if (watchers.length === 0) {
      return empty(
        'No model is watched in this kernel yet. Run `w = gs.watch(model, optimizer=opt)` and train: the gradients appear here while the cell runs. ' +
          'To show a recording, run `rec = gs.open(path)`, or right-click its manifest.json in the file browser: Open in Gradients panel.',
        'jp-gradsight-advice'
      );
    }
    const current = m.watcherName;
    let picker: HTMLElement;
    if (watchers.length === 1) {
      picker = h('span', { class: 'jp-gradsight-watcher-name' }, sourceLabel(watchers[0], false));
    } else {
      const select = h('select', { class: 'jp-gradsight-watcher-select', 'aria-label': 'Watched model' });
      for (const w of watchers) {
        const opt = h('option', { value: w.name }, sourceLabel(w, true));
        opt.selected = w.name === current;
        select.appendChild(opt);
      }
      select.onchange = () => void m.selectWatcher(select.value);
      picker = select;
    }
    const snap = m.snapshot;
    const loss = snap?.steps.columns.loss;
    const lastLoss = loss && loss.length ? loss[loss.length - 1] : NaN;
    const summary = snap
      ? `step ${snap.watcher.step_count} · ${snap.layers.total} layers` +
        (Number.isNaN(lastLoss) ? '' : ` · loss ${fmt(lastLoss)}`)
      : '';
    return h(
      'div',
      { class: 'jp-gradsight-watchers' },
      h('span', { class: 'jp-gradsight-muted' }, watchers.length === 1 ? 'Model ' : `Models (${watchers.length}) `),
      picker,
      h('span', { class: 'jp-gradsight-step' }, summary ? ` ${summary}` : '')
    );
  }
}

/** How the source selector names a watcher or a recording (its name is the kernel's key). */
export function sourceLabel(w: WatcherSummary, withLayers: boolean): string {
  const layers = withLayers ? `${w.n_layers} layers` : '';
  if (w.source !== 'recording') {
    return layers ? `${w.name} (${layers})` : w.name;
  }
  const kind = w.live ? 'recording, live' : 'recording';
  return `${w.name} (${[kind, layers].filter(Boolean).join(', ')})`;
}

function basename(path: string): string {
  const i = path.lastIndexOf('/');
  return i >= 0 ? path.slice(i + 1) : path;
}
