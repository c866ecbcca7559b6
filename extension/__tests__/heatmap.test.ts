/**
 * @jest-environment jsdom
 */
import type { JSONObject } from '@lumino/coreutils';
import { Widget } from '@lumino/widgets';

import { heatmapData } from '../data';
import { GradientsModel, HEATMAP_REFRESH_MS } from '../model';
import type { Heatmap } from '../protocol';
import {
  HeatmapView,
  MISSING,
  NONFINITE,
  ZERO,
  cellColour,
  describeCell,
  heatmapPixels,
  logRange,
  viridis
} from '../views/heatmap';
import { FakeKernel, FakeSession, settle } from './fakes';
import { fixture } from './fixtures';

const f = fixture('heatmap');
const data = heatmapData(f.message as unknown as Heatmap, f.buffers);

async function frame(): Promise<void> {
  await new Promise(resolve => requestAnimationFrame(() => resolve(undefined)));
}

describe('heatmap data and colours', () => {
  it('decodes layers x columns row-major and refuses a shape that does not match', () => {
    expect(data.columns).toBe(4);
    expect(data.layers).toEqual(['fc1', 'act', 'fc2']);
    expect(Array.from(data.steps)).toEqual([0, 2, 4, 6]);
    expect(data.values[2 * 4 + 3]).toBeNaN(); // fc2's last column
    expect(data.nonfinite[2 * 4 + 3]).toBe(2);
    const bad = { ...(f.message as JSONObject), layers: ['fc1', 'act'] } as unknown as Heatmap;
    expect(() => heatmapData(bad, f.buffers)).toThrow('2 layers x 4 columns, but 12 values');
  });

  it('colours by log10 over the finite non-zero cells; NaN/Inf, exact zeros and gaps apart', () => {
    expect(logRange(data)).toEqual([-9, Math.log10(1.2)]);
    const px = heatmapPixels(data);
    const at = (row: number, c: number) => Array.from(px.slice(4 * (row * 4 + c), 4 * (row * 4 + c) + 4));
    expect(at(2, 3)).toEqual([...NONFINITE]); // counted non-finite steps win over any value
    expect(at(0, 3)).toEqual([...ZERO]);
    expect(at(1, 0)).toEqual([...MISSING]);
    expect(at(0, 2)).toEqual([...viridis(0)]); // 1e-9: the bottom of the scale
    expect(at(2, 1)).toEqual([...viridis(1)]); // 1.2: the top
    // a finite value whose step counted a NaN is still non-finite; an infinite value without counts too
    expect(cellColour(0.5, 1, -1, 1)).toBe(NONFINITE);
    expect(cellColour(Infinity, 0, -1, 1)).toBe(NONFINITE);
    expect(cellColour(1, 0, 0, 0)).toEqual(viridis(0.5)); // one value: mid-scale
  });

  it('reads a cell out with the steps its column covers', () => {
    expect(describeCell(data, 2, 3)).toBe('fc2 · steps from 6 · NaN/Inf in 2 of 2 step(s)');
    expect(describeCell(data, 1, 0)).toBe('act · steps 0–1 · no value');
    expect(describeCell(data, 0, 0)).toBe('fc1 · steps 0–1 · 0.1 (log10 -1), the most extreme');
  });
});

describe('heatmap in the model and the view', () => {
  let model: GradientsModel;
  let view: HeatmapView;

  async function connect(kernel: FakeKernel): Promise<void> {
    model = new GradientsModel({ clientId: 'test' });
    view = new HeatmapView(model);
    Widget.attach(view, document.body);
    model.setSession(new FakeSession(kernel));
    await settle();
    await frame();
  }

  // jsdom has no canvas (it says so on the console): the drawing is checked in the browser test
  let quiet: jest.SpyInstance;
  beforeEach(() => (quiet = jest.spyOn(console, 'error').mockImplementation(() => undefined)));
  afterEach(() => {
    view.dispose();
    model.dispose();
    quiet.mockRestore();
  });

  it('fetches the heatmap with the snapshot, labels what it shows, and refetches on a metric change', async () => {
    const kernel = new FakeKernel('k1');
    await connect(kernel);
    const asked = () => kernel.requests.filter(r => r.kind === 'get_heatmap');
    expect(asked()).toHaveLength(1);
    expect(asked()[0]).toMatchObject({ watcher: 'MLP', metric: 'grad_norm', rank: null });
    expect(view.node.querySelector('.jp-gradsight-heatmap-label')?.textContent).toBe(
      'log10 gradient norm (w.r.t. output) · 8 steps in 4 columns of 2 (each cell: its most extreme step)'
    );
    const keys = Array.from(view.node.querySelectorAll('.jp-gradsight-heatmap-key')).map(e => e.textContent);
    expect(keys).toEqual(['NaN/Inf (1)', 'exactly 0 (1)', 'no value (1)']);
    const ends = Array.from(view.node.querySelectorAll('.jp-gradsight-heatmap-end')).map(e => e.textContent);
    expect(ends).toEqual(['1e-9', '1.2']);

    const select = view.node.querySelector('select') as HTMLSelectElement;
    select.value = 'act_std';
    select.dispatchEvent(new Event('change'));
    await settle();
    await frame();
    expect(asked()[asked().length - 1]).toMatchObject({ metric: 'act_std' });
    expect(model.heatmap?.metric).toBe('act_std');
    expect(view.node.querySelector('.jp-gradsight-heatmap-label')?.textContent).toMatch(/^log10 activation std/);
  });

  it('re-reads the heatmap while training pushes, at most every HEATMAP_REFRESH_MS', async () => {
    const kernel = new FakeKernel('k1');
    await connect(kernel);
    const asked = () => kernel.requests.filter(r => r.kind === 'get_heatmap').length;
    const before = asked();
    kernel.push('snapshot_push');
    await settle();
    expect(asked()).toBe(before); // just fetched
    const now = jest.spyOn(Date, 'now');
    now.mockReturnValue(Date.now() + 2 * HEATMAP_REFRESH_MS);
    kernel.push('snapshot_push');
    kernel.push('snapshot_push');
    await settle();
    expect(asked()).toBe(before + 1);
    now.mockRestore();
  });

  it('asks for no more columns than the view has pixels, and again only when that changes', async () => {
    const kernel = new FakeKernel('k1');
    await connect(kernel);
    const asked = () => kernel.requests.filter(r => r.kind === 'get_heatmap');
    expect(asked()[0].max_columns).toBeUndefined(); // not measured yet: the kernel's bound
    const before = asked().length;
    await model.setHeatmapColumns(120.7); // the fixture is thinned (2 steps a column): re-asked to fit
    expect(asked()).toHaveLength(before + 1);
    expect(asked()[before].max_columns).toBe(120);
    await model.setHeatmapColumns(120);
    expect(asked()).toHaveLength(before + 1);
  });

  it('drops an answer for a metric the user has moved away from', async () => {
    const kernel = new FakeKernel('k1');
    await connect(kernel);
    const pending = model.selectHeatmapMetric('update_ratio');
    await model.selectHeatmapMetric('act_std');
    await pending;
    await settle();
    expect(model.heatmap?.metric).toBe('act_std');
  });
});
