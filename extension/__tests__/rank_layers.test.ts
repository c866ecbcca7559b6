/**
 * @jest-environment jsdom
 *
 * The rank selector switches the per-layer views to that rank's layers: get_snapshot,
 * get_heatmap and get_layer carry the rank, and the layer detail (histograms, latest statistics)
 * shows that rank's; from a source that holds only its own rank's layers (a live watcher) every
 * per-layer view says whose layers it shows instead.
 */
import type { JSONObject } from '@lumino/coreutils';
import { Widget } from '@lumino/widgets';

import { GradientsModel } from '../model';
import { FlowView } from '../views/flow';
import { HeatmapView } from '../views/heatmap';
import { LayerView } from '../views/layer';
import { RanksView } from '../views/ranks';
import { FakeKernel, FakeSession, settle } from './fakes';
import { fixture } from './fixtures';

// jsdom has no canvas: Chart.js is replaced by a stand-in that keeps what it is given (the bars
// and histograms themselves are checked in the browser test); the views' text is what is tested
jest.mock('../views/charts', () => {
  const actual = jest.requireActual('../views/charts');
  class Chart {
    data: { labels: unknown[]; datasets: { [k: string]: unknown }[] };
    options: { scales: { x: { title: { text: string } } } } = { scales: { x: { title: { text: '' } } } };
    constructor(_: unknown, config: { data: Chart['data'] }) {
      this.data = config.data;
    }
    update(): void {
      // nothing to draw
    }
    destroy(): void {
      // nothing to free
    }
  }
  return { ...actual, Chart };
});

const RANK_GRAD_NORM = [
  [4.0, 0.4, 0.04],
  [40.0, 4.0, 0.4]
];

/** A kernel whose source is a 2-rank job (rank 1 went wrong first); `perRank`: a recording of it. */
function rankedKernel(perRank: boolean): FakeKernel {
  const kernel = new FakeKernel('k1');
  kernel.overrides.get_snapshot = req => {
    const f = fixture('snapshot_ranks');
    const msg = f.message as unknown as JSONObject & { ranks: JSONObject };
    const asked = (req.rank as number | null) ?? 0;
    const shown = perRank ? asked : 0;
    const buffers = [...f.buffers];
    buffers[2] = new Float64Array(RANK_GRAD_NORM[shown]).buffer; // grad_norm of the rank shown
    const ranks = { ...msg.ranks, layers_rank: shown, per_rank_layers: perRank };
    return [{ ...msg, id: req.id, ranks }, buffers];
  };
  kernel.overrides.get_layer = req => {
    const f = fixture('layer');
    const msg = f.message as unknown as JSONObject & { stats: JSONObject };
    const shown = perRank ? ((req.rank as number | null) ?? 0) : 0;
    const stats = { ...msg.stats, grad_norm: RANK_GRAD_NORM[shown][2] }; // fc2's, of the rank shown
    return [
      { ...msg, id: req.id, watcher: req.watcher as string, layer: req.layer as string, rank: shown, stats },
      f.buffers
    ];
  };
  kernel.overrides.get_heatmap = req => {
    const f = fixture('heatmap');
    const rank = perRank ? ((req.rank as number | null) ?? 0) : 0;
    return [{ ...(f.message as JSONObject), id: req.id, watcher: req.watcher as string, rank }, f.buffers];
  };
  return kernel;
}

async function frame(): Promise<void> {
  await new Promise(resolve => requestAnimationFrame(() => resolve(undefined)));
}

describe('per-layer views of the selected rank', () => {
  let model: GradientsModel;
  let views: Widget[];
  let quiet: jest.SpyInstance;

  async function connect(kernel: FakeKernel): Promise<void> {
    model = new GradientsModel({ clientId: 'test' });
    views = [new RanksView(model), new FlowView(model), new HeatmapView(model), new LayerView(model)];
    for (const v of views) {
      Widget.attach(v, document.body);
    }
    model.setSession(new FakeSession(kernel));
    await settle();
    await frame();
  }

  const text = (sel: string): string[] =>
    views
      .flatMap(v => Array.from(v.node.querySelectorAll(sel)))
      .filter(e => (e as HTMLElement).style.display !== 'none')
      .map(e => e.textContent ?? '');

  beforeEach(() => (quiet = jest.spyOn(console, 'error').mockImplementation(() => undefined)));
  afterEach(() => {
    views.forEach(v => v.dispose());
    model.dispose();
    quiet.mockRestore();
  });

  it('asks a recording for the rank that went wrong first, then for the rank the user picks', async () => {
    const kernel = rankedKernel(true);
    await connect(kernel);
    const snapshots = () => kernel.requests.filter(r => r.kind === 'get_snapshot').map(r => r.rank);
    const heatmaps = () => kernel.requests.filter(r => r.kind === 'get_heatmap').map(r => r.rank);
    const layers = () => kernel.requests.filter(r => r.kind === 'get_layer').map(r => r.rank);
    const statsHead = () => text('.jp-gradsight-stats-table th')[0];
    const statsNorm = () => text('.jp-gradsight-stats-table td')[1]; // the 'norm' row's gradient cell
    expect(model.rank).toBe(1);
    expect(snapshots()).toEqual([null, 1]); // the default rank, once the snapshot named it
    expect(heatmaps()[heatmaps().length - 1]).toBe(1);
    expect(model.layersRank).toBe(1);
    expect(Array.from(model.snapshot?.layers.columns.grad_norm ?? [])).toEqual(RANK_GRAD_NORM[1]);
    await frame();
    expect(text('.jp-gradsight-rank-note').filter(t => t.startsWith('layer charts'))).toEqual([]);
    expect(text('.jp-gradsight-flow .jp-gradsight-note')[0]).toMatch(/^rank 1 · step 3/);
    // the layer detail: rank 1's histograms and statistics, labelled so
    expect(layers()[layers().length - 1]).toBe(1);
    expect(model.layer?.rank).toBe(1);
    expect(model.layer?.stats.grad_norm).toBe(RANK_GRAD_NORM[1][2]);
    expect(statsHead()).toBe('rank 1, latest (step 2)');
    expect(statsNorm()).toBe('0.4');

    await model.selectRank(0);
    await settle();
    await frame();
    expect(snapshots()).toEqual([null, 1, 0]);
    expect(heatmaps()[heatmaps().length - 1]).toBe(0);
    expect(model.layersRank).toBe(0);
    expect(Array.from(model.snapshot?.layers.columns.grad_norm ?? [])).toEqual(RANK_GRAD_NORM[0]);
    expect(text('.jp-gradsight-flow .jp-gradsight-note')[0]).toMatch(/^rank 0 · step 3/);
    expect(model.heatmap?.rank).toBe(0);
    expect(layers()[layers().length - 1]).toBe(0);
    expect(model.layer?.rank).toBe(0);
    expect(model.layer?.stats.grad_norm).toBe(RANK_GRAD_NORM[0][2]);
    expect(statsHead()).toBe('rank 0, latest (step 2)');
    expect(statsNorm()).toBe('0.04');
    expect(text('.jp-gradsight-rank-note')).toEqual([]);
  });

  it('says so in every per-layer view when a live watcher holds only its own rank', async () => {
    const kernel = rankedKernel(false);
    await connect(kernel);
    // nothing to ask again: the kernel already said it holds rank 0's layers only
    expect(kernel.requests.filter(r => r.kind === 'get_snapshot')).toHaveLength(1);
    expect(model.rank).toBe(1);
    expect(model.layersRank).toBe(0);
    await frame();
    const notes = text('.jp-gradsight-rank-note');
    const flow = notes.filter(t => t.startsWith('layer charts show rank 0 (this process)'));
    expect(flow).toHaveLength(3); // ranks, flow, heatmap
    expect(notes).toContain('histograms and statistics below: rank 0 (this process)');
    expect(model.layer?.rank).toBe(0); // asked for rank 1, answered with its own, and labelled so
    expect(text('.jp-gradsight-stats-table th')[0]).toBe('rank 0, latest (step 2)');
    expect(text('.jp-gradsight-flow .jp-gradsight-note')[1]).toMatch(/^rank 0 · step 3/); // the bars' own label

    await model.selectRank(0); // the process's own rank: nothing to explain
    await frame();
    expect(text('.jp-gradsight-rank-note')).toEqual([]);
  });
});
