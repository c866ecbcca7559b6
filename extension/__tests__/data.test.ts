import { layerData, overlay, worstSeverityByLayer } from '../data';
import type { IHistogramData } from '../data';
import type { Finding, Layer } from '../protocol';
import { fixture } from './fixtures';

function hist(step: number, edges: number[], counts: number[]): IHistogramData {
  return {
    step,
    edges: Float64Array.from(edges),
    counts: Float64Array.from(counts),
    nan: 0,
    posinf: 0,
    neginf: 0,
    zero: 0
  };
}

describe('overlay', () => {
  it('draws a series the kernel sent on one grid, every step on the same edges', () => {
    const f = fixture('layer');
    const data = layerData(f.message as unknown as Layer, f.buffers);
    const grid = overlay(data.histograms.grad);
    expect(Array.from(grid.edges)).toEqual([-1, -1e-6, 0, 1e-6, 1]);
    expect(grid.counts.map(c => (c ? Array.from(c) : null))).toEqual([
      [1, 2, 3, 4],
      [2, 3.5, 3.5, 5]
    ]);
  });

  it('leaves out a histogram whose edges differ, even with as many bins', () => {
    // what `sameBins` let through: same bin count, edges refitted to another range
    const older = hist(1, [-1e-3, -1e-9, 0, 1e-9, 1e-3], [5, 0, 0, 5]);
    const newer = hist(2, [-1, -1e-6, 0, 1e-6, 1], [1, 2, 3, 4]);
    const grid = overlay([older, newer]);
    expect(grid.edges).toBe(newer.edges);
    expect(grid.counts[0]).toBeNull();
    expect(Array.from(grid.counts[1] ?? [])).toEqual([1, 2, 3, 4]);
  });

  it('is empty for an empty series', () => {
    expect(overlay([])).toEqual({ edges: new Float64Array(0), counts: [] });
  });
});

describe('worstSeverityByLayer', () => {
  it('ranks by the schema order of severities', () => {
    const f = (layer: string, severity: Finding['severity']): Finding => ({
      step: 0,
      layer,
      kind: 'k',
      severity,
      message: null
    });
    const worst = worstSeverityByLayer([f('a', 'info'), f('a', 'error'), f('a', 'warning'), f('b', 'warning')]);
    expect(Object.fromEntries(worst)).toEqual({ a: 'error', b: 'warning' });
  });

  it("colours a rank's layers by that rank's findings and those of no single rank", () => {
    const f = (layer: string, severity: Finding['severity'], rank: number | null): Finding => ({
      step: 0,
      layer,
      kind: 'k',
      severity,
      message: null,
      rank
    });
    // rank 1 produced a NaN in a; rank 0 saw b vanish; c diverged across ranks (no single rank)
    const rows = [f('a', 'error', 1), f('b', 'warning', 0), f('c', 'error', null), f('a', 'info', 0)];
    expect(Object.fromEntries(worstSeverityByLayer(rows, 0))).toEqual({ a: 'info', b: 'warning', c: 'error' });
    expect(Object.fromEntries(worstSeverityByLayer(rows, 1))).toEqual({ a: 'error', c: 'error' });
    expect(Object.fromEntries(worstSeverityByLayer(rows))).toEqual({ a: 'error', b: 'warning', c: 'error' });
  });
});
