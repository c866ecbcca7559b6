/**
 * Decoded forms of the kernel's messages, as the views read them: buffers turned into
 * Float64Arrays once, when a message arrives, not on every render.
 */
import {
  Buffer,
  Finding,
  GradcheckReport,
  HIST_KINDS,
  HistKind,
  Layer,
  SEVERITIES,
  Severity,
  Snapshot,
  WatcherSummary,
  decodeArray,
  decodeColumns
} from './protocol';

export interface ISnapshotData {
  readonly watcher: WatcherSummary;
  /** The layer the kernel's pushes carry (its default or the panel's choice). */
  readonly selectedLayer: string | null;
  readonly layers: {
    readonly names: readonly string[];
    readonly types: readonly string[];
    readonly total: number;
    readonly columns: { readonly [name: string]: Float64Array };
  };
  readonly steps: { readonly total: number; readonly columns: { readonly [name: string]: Float64Array } };
  readonly findings: { readonly total: number; readonly rows: readonly Finding[] };
}

export interface IHistogramData {
  readonly step: number | null;
  readonly edges: Float64Array;
  readonly counts: Float64Array;
  readonly nan: number;
  readonly posinf: number;
  readonly neginf: number;
  readonly zero: number;
}

export interface ILayerData {
  readonly watcher: string;
  readonly layer: string;
  readonly type: string;
  readonly stats: { readonly [name: string]: number | null };
  readonly histograms: { readonly [K in HistKind]: readonly IHistogramData[] };
}

export interface IReportsData {
  readonly total: number;
  readonly reports: readonly GradcheckReport[];
}

export function snapshotData(msg: Snapshot, buffers: readonly Buffer[]): ISnapshotData {
  return {
    watcher: msg.watcher,
    selectedLayer: msg.selected_layer ?? null,
    layers: {
      names: msg.layers.names,
      types: msg.layers.types,
      total: msg.layers.total,
      columns: decodeColumns(msg.layers.columns, buffers)
    },
    steps: { total: msg.steps.total, columns: decodeColumns(msg.steps.columns, buffers) },
    findings: msg.findings
  };
}

export function layerData(msg: Layer, buffers: readonly Buffer[]): ILayerData {
  const histograms = {} as { [K in HistKind]: IHistogramData[] };
  for (const of of HIST_KINDS) {
    histograms[of] = msg.histograms[of].map(h => ({
      step: h.step,
      edges: decodeArray(h.edges, buffers),
      counts: decodeArray(h.counts, buffers),
      nan: h.nan,
      posinf: h.posinf,
      neginf: h.neginf,
      zero: h.zero
    }));
  }
  return { watcher: msg.watcher, layer: msg.layer, type: msg.type, stats: msg.stats, histograms };
}

/**
 * The histograms of one series as the chart overlays them, bin by bin on the newest one's
 * edges. The kernel sends a series on one common grid; a histogram on other edges is left
 * out (null) rather than drawn against bins that are not its own.
 */
export function overlay(series: readonly IHistogramData[]): { edges: Float64Array; counts: (Float64Array | null)[] } {
  const latest = series[series.length - 1];
  if (!latest) {
    return { edges: new Float64Array(0), counts: [] };
  }
  return { edges: latest.edges, counts: series.map(h => (sameEdges(h.edges, latest.edges) ? h.counts : null)) };
}

export function sameEdges(a: Float64Array, b: Float64Array): boolean {
  return a === b || (a.length === b.length && a.every((v, i) => v === b[i]));
}

/** The most severe finding per layer: what the gradient-flow chart colours a bar by. */
export function worstSeverityByLayer(rows: readonly Finding[]): Map<string, Severity> {
  const out = new Map<string, Severity>();
  for (const f of rows) {
    if (f.layer === null) {
      continue;
    }
    const prev = out.get(f.layer);
    if (prev === undefined || SEVERITIES.indexOf(f.severity) > SEVERITIES.indexOf(prev)) {
      out.set(f.layer, f.severity);
    }
  }
  return out;
}
