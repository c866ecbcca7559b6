/**
 * @jest-environment jsdom
 */
import type { JSONObject } from '@lumino/coreutils';
import { Widget } from '@lumino/widgets';

import { compareData, compareRows, onlyIn, othersMedian, rankRow, snapshotData } from '../data';
import { COMPARE_REFRESH_MS, GradientsModel } from '../model';
import type { Compare, Snapshot } from '../protocol';
import { CompareView } from '../views/compare';
import { RanksView } from '../views/ranks';
import { FakeKernel, FakeSession, settle } from './fakes';
import { fixture } from './fixtures';

const WATCHERS: JSONObject[] = [
  { name: 'MLP', step_count: 3, n_layers: 3 },
  { name: 'MLP [yesterday]', step_count: 4, n_layers: 3, source: 'recording', live: false },
  { name: 'CNN', step_count: 9, n_layers: 5 }
];
const TWO_SOURCES: JSONObject = { watchers: WATCHERS };

function kernelWith(status: JSONObject, snapshot = 'snapshot_push'): FakeKernel {
  const kernel = new FakeKernel('k1');
  kernel.overrides.hello = req => [{ ...(fixture('status').message as JSONObject), id: req.id, ...status }, []];
  kernel.overrides.get_snapshot = req => {
    const f = fixture(snapshot);
    const name = (req.watcher as string | null) ?? 'MLP';
    return [{ ...(f.message as JSONObject), id: req.id, watcher: { name, step_count: 3, n_layers: 3 } }, f.buffers];
  };
  return kernel;
}

async function frame(): Promise<void> {
  await new Promise(resolve => requestAnimationFrame(() => resolve(undefined)));
}

/** A model connected to `kernel` after its first exchange, with a view of it on the page if asked. */
async function connect<V extends Widget>(
  kernel: FakeKernel,
  View?: new (model: GradientsModel) => V
): Promise<{ model: GradientsModel; view: V }> {
  const model = new GradientsModel({ clientId: 'test' });
  const view = View ? new View(model) : (null as unknown as V);
  if (view) {
    Widget.attach(view, document.body);
  }
  model.setSession(new FakeSession(kernel));
  await settle();
  await frame();
  return { model, view };
}

describe('compare data', () => {
  const f = fixture('compare');
  const data = compareData(f.message as unknown as Compare, f.buffers);

  it('puts both runs on the union of their layers, a missing layer marked per run', () => {
    const rows = compareRows(data);
    expect(rows.map(r => r.name)).toEqual(['fc1', 'fc1.5', 'fc2', 'fc3']);
    expect(rows.map(r => r.values)).toEqual([
      [4, 8],
      [0.4, undefined],
      [0.04, 0.8],
      [undefined, NaN]
    ]);
    // B's fc3 counted NaN/Inf gradient values: marked, while A simply has no fc3
    expect(rows.map(r => r.nonfinite)).toEqual([
      [false, false],
      [false, false],
      [false, false],
      [false, true]
    ]);
  });

  it('finds what only one run reported (by kind and layer, whatever the steps)', () => {
    const [onlyA, onlyB] = onlyIn(data);
    expect([...onlyA]).toEqual([]);
    expect([...onlyB]).toEqual(['nan_origin\u0000fc3']);
  });
});

describe('ranks data', () => {
  const f = fixture('snapshot_ranks');
  const ranks = snapshotData(f.message as unknown as Snapshot, f.buffers).ranks!;

  it('decodes the ranks table and the rank that went wrong first', () => {
    expect(ranks.worldSize).toBe(2);
    expect(ranks.firstBad).toEqual({ rank: 1, step: 2, kind: 'rank_nonfinite', layer: 'fc2' });
    expect(rankRow(ranks, 1).step_s).toBe(0.031);
    expect(rankRow(ranks, 0).findings).toBe(0);
    expect(othersMedian(ranks, 'step_s', 1)).toBe(0.012);
    expect(snapshotData(fixture('snapshot_push').message as unknown as Snapshot, f.buffers).ranks).toBeNull();
  });
});

describe('GradientsModel compare and ranks', () => {
  let model: GradientsModel;
  afterEach(() => model?.dispose());

  it('compares the shown source with the one picked, and forgets it when it closes', async () => {
    const kernel = kernelWith(TWO_SOURCES);
    model = (await connect(kernel)).model;
    await model.selectWatcher('MLP');
    await model.compareWith('MLP [yesterday]');
    const req = kernel.requests.filter(r => r.kind === 'get_compare').pop();
    expect(req).toMatchObject({ watcher: 'MLP', other: 'MLP [yesterday]' });
    expect(model.compare?.runs.map(r => r.watcher.name)).toEqual(['MLP', 'MLP [yesterday]']);
    expect(model.compare?.layers).toEqual(['fc1', 'fc1.5', 'fc2', 'fc3']);

    kernel.push('status', { watchers: WATCHERS.filter(w => w.name !== 'MLP [yesterday]') });
    await settle();
    expect(model.compareName).toBeNull();
    expect(model.compare).toBeNull();
  });

  it('re-reads the comparison while A trains, at most once a second, and drops stale answers', async () => {
    const kernel = kernelWith(TWO_SOURCES);
    model = (await connect(kernel)).model;
    await model.compareWith('CNN');
    const asked = () => kernel.requests.filter(r => r.kind === 'get_compare').length;
    const before = asked();
    const now = jest.spyOn(Date, 'now');
    now.mockReturnValue(Date.now() + 2 * COMPARE_REFRESH_MS);
    kernel.push('snapshot_push', { watcher: { name: 'MLP', step_count: 4, n_layers: 3 } });
    kernel.push('snapshot_push', { watcher: { name: 'MLP', step_count: 5, n_layers: 3 } });
    await settle();
    expect(asked()).toBe(before + 1);
    now.mockRestore();

    // the user picks another run before the first answer came: that answer is not shown as
    // this comparison, and this one is asked once the first is in
    const pending = model.compareWith('MLP [yesterday]');
    await model.compareWith('CNN');
    await pending;
    await settle();
    expect(model.compare?.runs[1].watcher.name).toBe('CNN');
  });

  it('shows the rank that went wrong first unless the user picks another', async () => {
    const kernel = kernelWith({}, 'snapshot_ranks');
    model = (await connect(kernel)).model;
    expect(model.rank).toBe(1);
    model.selectRank(0);
    expect(model.rank).toBe(0);
    model.selectRank(null);
    expect(model.rank).toBe(1);
  });
});

describe('views', () => {
  // jsdom has no canvas: Chart.js says so on the console; the charts are checked in the browser test
  let quiet: jest.SpyInstance;
  beforeEach(() => (quiet = jest.spyOn(console, 'error').mockImplementation(() => undefined)));
  afterEach(() => quiet.mockRestore());

  it('CompareView labels both runs, names the layers each lacks and what only B found', async () => {
    const kernel = kernelWith(TWO_SOURCES);
    const { model, view } = await connect(kernel, CompareView);
    const select = view.node.querySelector('select') as HTMLSelectElement;
    expect(Array.from(select.options).map(o => o.value)).toEqual(['', 'MLP [yesterday]', 'CNN']);
    select.value = 'MLP [yesterday]';
    select.dispatchEvent(new Event('change'));
    await settle();
    await frame();
    const legend = Array.from(view.node.querySelectorAll('.jp-gradsight-compare-run')).map(e => e.textContent);
    expect(legend).toEqual(['A: MLP · 3 steps', 'B: MLP [yesterday] · 4 steps']);
    expect(view.node.querySelector('.jp-gradsight-compare-layers')?.textContent).toBe(
      'Layers differ between the runs: not in A: fc3 · not in B: fc1.5'
    );
    const cols = Array.from(view.node.querySelectorAll('.jp-gradsight-compare-col'));
    expect(cols.map(c => c.querySelector('.jp-gradsight-compare-col-head')?.textContent)).toEqual([
      'A: MLP: 1 finding(s)',
      'B: MLP [yesterday]: 2 finding(s)'
    ]);
    const onlyB = Array.from(cols[1].querySelectorAll('.jp-gradsight-compare-only')).map(
      e => (e as HTMLElement).dataset.kind
    );
    expect(onlyB).toEqual(['nan_origin']);
    expect(cols[0].querySelectorAll('.jp-gradsight-compare-only')).toHaveLength(0);
    view.dispose();
    model.dispose();
  });

  it('RanksView marks the rank that went wrong first and shows the selected rank’s times', async () => {
    const kernel = kernelWith({}, 'snapshot_ranks');
    const { model, view } = await connect(kernel, RanksView);
    const buttons = Array.from(view.node.querySelectorAll('.jp-gradsight-rank')) as HTMLElement[];
    expect(buttons.map(b => b.dataset.rank)).toEqual(['0', '1']);
    expect(buttons.map(b => !!b.querySelector('.jp-gradsight-rank-bad'))).toEqual([false, true]);
    expect(buttons[1].getAttribute('aria-checked')).toBe('true'); // the bad rank is shown first
    expect(view.node.querySelector('.jp-gradsight-rank-first')?.textContent).toContain(
      'rank 1 went wrong first (step 2)'
    );
    const stepRow = () => Array.from(view.node.querySelectorAll('tbody tr')[0].children).map(c => c.textContent);
    expect(stepRow()).toEqual(['step', '31', '12', '×2.58']);
    buttons[0].click();
    await frame();
    expect(stepRow()).toEqual(['step', '12', '31', '×0.387']);
    expect(model.rank).toBe(0);
    view.dispose();
    model.dispose();
  });

  it('RanksView stays hidden for a single process', async () => {
    const { model, view } = await connect(kernelWith({}), RanksView);
    expect(view.isHidden).toBe(true);
    view.dispose();
    model.dispose();
  });
});
