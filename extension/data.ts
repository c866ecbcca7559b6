/**
 * Decoded forms of the kernel's messages, as the views read them: buffers turned into
 * Float64Arrays once, when a message arrives, not on every render.
 */
import {
  Buffer,
  Compare,
  Finding,
  GradcheckReport,
  HIST_KINDS,
  Heatmap,
  HeatmapMetric,
  HistKind,
  Layer,
  RankOrigin,
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
  /** Present when the source is one rank of a torch.distributed job (or a recording of one). */
  readonly ranks: IRanksData | null;
}

/** The rank dimension: w.ranks() as columns (one value per rank, in rank order). */
export interface IRanksData {
  readonly worldSize: number;
  /** The source's own rank: this process's (a live watcher), the job's top directory's (a recording). */
  readonly rank: number;
  /** The rank whose layer statistics the snapshot carries (the one asked for, if the source holds it). */
  readonly layersRank: number;
  /** Whether the source holds every rank's layer statistics (a recording) or only its own. */
  readonly perRankLayers: boolean;
  readonly columns: { readonly [name: string]: Float64Array };
  readonly firstBad: RankOrigin | null;
}

/** The layer x step heatmap (protocol heatmap), decoded: `values` and `nonfinite` row-major. */
export interface IHeatmapData {
  readonly watcher: string;
  readonly metric: HeatmapMetric;
  /** The rank the rows belong to; null for one process. */
  readonly rank: number | null;
  readonly layers: readonly string[];
  /** First recorded step of each column. */
  readonly steps: Float64Array;
  /** layers x columns: the column's most extreme step; NaN where no step has a value. */
  readonly values: Float64Array;
  /** layers x columns: steps of the column whose value was NaN or +-Inf. */
  readonly nonfinite: Float64Array;
  readonly columns: number;
  readonly totalSteps: number;
  /** Recorded steps left out: no layer has a value there (a metric measured every few steps). */
  readonly skippedSteps: number;
  /** Recorded steps per column (1: every step is a column). */
  readonly stepSpan: number;
}

export function heatmapData(msg: Heatmap, buffers: readonly Buffer[]): IHeatmapData {
  const steps = decodeArray(msg.steps, buffers);
  const values = decodeArray(msg.values, buffers);
  const nonfinite = decodeArray(msg.nonfinite, buffers);
  const cells = msg.layers.length * steps.length;
  if (values.length !== cells || nonfinite.length !== cells) {
    throw new Error(
      `heatmap: ${msg.layers.length} layers x ${steps.length} columns, but ${values.length} values and ${nonfinite.length} counts`
    );
  }
  return {
    watcher: msg.watcher,
    metric: msg.metric,
    rank: msg.rank,
    layers: msg.layers,
    steps,
    values,
    nonfinite,
    columns: steps.length,
    totalSteps: msg.total_steps,
    skippedSteps: msg.skipped_steps,
    stepSpan: msg.step_span
  };
}

/** One run of a comparison, decoded (see protocol compare_run). */
export interface ICompareRun {
  readonly label: string;
  readonly watcher: WatcherSummary;
  readonly lastStep: number | null;
  readonly steps: { readonly total: number; readonly columns: { readonly [name: string]: Float64Array } };
  /** Leaf layer -> [metric at the last step, NaN/Inf gradient values counted]. */
  readonly flow: ReadonlyMap<string, readonly [number, number]>;
  readonly findings: { readonly total: number; readonly rows: readonly Finding[] };
}

export interface ICompareData {
  readonly metric: string;
  /** Union of both runs' leaf layers: A's order, then B's others. */
  readonly layers: readonly string[];
  readonly runs: readonly [ICompareRun, ICompareRun];
}

/** A layer of the union as the compare view draws it; undefined: the run has no such layer. */
export interface ICompareRow {
  readonly name: string;
  readonly values: readonly [number | undefined, number | undefined];
  readonly nonfinite: readonly [boolean, boolean];
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
  /** The rank the stats and histograms belong to (null: one process). */
  readonly rank: number | null;
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
    findings: msg.findings,
    ranks: msg.ranks
      ? {
          worldSize: msg.ranks.world_size,
          rank: msg.ranks.rank,
          layersRank: msg.ranks.layers_rank,
          perRankLayers: msg.ranks.per_rank_layers,
          columns: decodeColumns(msg.ranks.columns, buffers),
          firstBad: msg.ranks.first_bad
        }
      : null
  };
}

export function compareData(msg: Compare, buffers: readonly Buffer[]): ICompareData {
  const runs = msg.runs.map(r => {
    const values = decodeArray(r.flow.values, buffers);
    const bad = decodeArray(r.flow.nonfinite, buffers);
    if (values.length !== r.flow.names.length || bad.length !== r.flow.names.length) {
      throw new Error(`compare: ${r.label} has ${r.flow.names.length} layers but ${values.length} values`);
    }
    return {
      label: r.label,
      watcher: r.watcher,
      lastStep: r.last_step,
      steps: { total: r.steps.total, columns: decodeColumns(r.steps.columns, buffers) },
      flow: new Map(r.flow.names.map((n, i) => [n, [values[i], bad[i]] as const])),
      findings: r.findings
    };
  });
  return { metric: msg.metric, layers: msg.layers, runs: [runs[0], runs[1]] };
}

/** One row per layer of the union, with each run's value or undefined where the run lacks it. */
export function compareRows(data: ICompareData): ICompareRow[] {
  const [a, b] = data.runs;
  return data.layers.map(name => {
    const va = a.flow.get(name);
    const vb = b.flow.get(name);
    return {
      name,
      values: [va?.[0], vb?.[0]],
      nonfinite: [
        (va?.[1] ?? 0) > 0 || !Number.isFinite(va?.[0] ?? 0),
        (vb?.[1] ?? 0) > 0 || !Number.isFinite(vb?.[0] ?? 0)
      ]
    };
  });
}

/** What a finding is about, to match it across runs: its kind and layer (steps differ by run). */
export function findingKey(f: Finding): string {
  return `${f.kind}\u0000${f.layer ?? ''}`;
}

/** Per run, the keys of its findings the other run does not have ("what is in B and not in A"). */
export function onlyIn(data: ICompareData): [Set<string>, Set<string>] {
  const keys = data.runs.map(r => new Set(r.findings.rows.map(findingKey)));
  const only = (mine: Set<string>, other: Set<string>) => new Set([...mine].filter(k => !other.has(k)));
  return [only(keys[0], keys[1]), only(keys[1], keys[0])];
}

/** One rank's row of the ranks table: column -> value (NaN where unknown). */
export function rankRow(ranks: IRanksData, rank: number): { [name: string]: number } {
  const ranksCol = ranks.columns.rank;
  const i = ranksCol ? Array.from(ranksCol).indexOf(rank) : rank;
  const out: { [name: string]: number } = {};
  for (const [name, values] of Object.entries(ranks.columns)) {
    out[name] = i >= 0 && i < values.length ? values[i] : NaN;
  }
  return out;
}

/** Median of a column over every rank but `rank` (what "slower than the others" compares to). */
export function othersMedian(ranks: IRanksData, column: string, rank: number): number {
  const values = ranks.columns[column];
  const ids = ranks.columns.rank;
  if (!values) {
    return NaN;
  }
  const others = Array.from(values)
    .filter((v, i) => (ids ? ids[i] : i) !== rank && Number.isFinite(v))
    .sort((x, y) => x - y);
  if (others.length === 0) {
    return NaN;
  }
  const mid = Math.floor(others.length / 2);
  return others.length % 2 ? others[mid] : (others[mid - 1] + others[mid]) / 2;
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
  return {
    watcher: msg.watcher,
    layer: msg.layer,
    type: msg.type,
    rank: msg.rank ?? null,
    stats: msg.stats,
    histograms
  };
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

/**
 * Whether a finding belongs on a chart of rank `rank`'s layers: one of that rank's, or of no single
 * rank (null: a finding of one process, or one that names no single rank); every finding when
 * `rank` is null (one process).
 */
export function ofRank(f: Finding, rank: number | null): boolean {
  return rank === null || f.rank === null || f.rank === undefined || f.rank === rank;
}

/**
 * The most severe finding per layer: what the gradient-flow chart colours a bar by (of the
 * findings of rank `rank`, see ofRank: a layer of rank 0 is not coloured by rank 1's NaN).
 */
export function worstSeverityByLayer(rows: readonly Finding[], rank: number | null = null): Map<string, Severity> {
  const out = new Map<string, Severity>();
  for (const f of rows) {
    if (f.layer === null || !ofRank(f, rank)) {
      continue;
    }
    const prev = out.get(f.layer);
    if (prev === undefined || SEVERITIES.indexOf(f.severity) > SEVERITIES.indexOf(prev)) {
      out.set(f.layer, f.severity);
    }
  }
  return out;
}
