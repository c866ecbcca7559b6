/**
 * The panel end of the protocol in protocol/schema.json: message types, the schema
 * validator, request builders and the decoding of binary buffers.
 *
 * The schema is the one definition: the types come from protocol-types.ts, which
 * `jlpm build:protocol` generates from it before tsc and jest run, and the lists below (kinds,
 * histogram kinds, metric names, severities) are read from it at run time.
 */
import type { JSONObject } from '@lumino/coreutils';
import Ajv from 'ajv';
import type { ValidateFunction } from 'ajv';

import schema from '../protocol/schema.json';
import type {
  ArrayRef,
  Columns,
  ErrorReply,
  HeatmapMetric,
  HistKind,
  LayerMetric,
  Message,
  ReplyKind,
  Reply,
  Request,
  RequestKind,
  Severity
} from './protocol-types';

export type {
  ArrayRef,
  Columns,
  Compare,
  CompareRun,
  ErrorReply,
  Finding,
  GetGradcheckReports,
  GetCompare,
  GetHeatmap,
  GetLayer,
  GetSnapshot,
  GradcheckReport,
  GradcheckReports,
  GradcheckTensor,
  Heatmap,
  HeatmapMetric,
  Hello,
  HistKind,
  HistogramMsg,
  Layer,
  LayerMetric,
  Message,
  RankOrigin,
  RanksMsg,
  Reply,
  ReplyKind,
  Request,
  RequestKind,
  RunGradcheck,
  Severity,
  Snapshot,
  Status,
  WatcherSummary
} from './protocol-types';

export type DType = ArrayRef['dtype'];
export type ErrorCode = ErrorReply['code'];

const definitions = schema.definitions;

/** The `v` every message carries (a protocol fact, apart from the package version). */
export const PROTOCOL_VERSION = definitions.envelope.properties.v.const as Request['v'];
export const COMM_TARGET = 'gradsight';
export const REQUEST_KINDS = definitions.request_kind.enum as readonly RequestKind[];
export const REPLY_KINDS = definitions.reply_kind.enum as readonly ReplyKind[];
/** Histogram kinds, in the one order of records.HIST_KINDS (the panel's tabs too). */
export const HIST_KINDS = definitions.of.enum as readonly HistKind[];
/** The per-layer statistics every watcher computes (snapshot columns, layer stats). */
export const LAYER_METRICS = definitions.layer_metric.enum as readonly LayerMetric[];
/** The metrics the layer x step heatmap offers. */
export const HEATMAP_METRICS = definitions.heatmap_metric.enum as readonly HeatmapMetric[];
/** Least to most severe. */
export const SEVERITIES = definitions.severity.enum as readonly Severity[];

/** A request without its envelope: what callers of `Connection.request` pass. */
export type RequestBody = WithoutEnvelope<Request>;
type WithoutEnvelope<T> = T extends unknown ? Omit<T, 'v' | 'id'> : never;

// -- validation --------------------------------------------------------------------------
type Definitions = { [name: string]: unknown };

let ajv: Ajv | null = null;
const validators = new Map<string, ValidateFunction>();

function validatorFor(definition: string): ValidateFunction {
  let v = validators.get(definition);
  if (!v) {
    ajv = ajv ?? new Ajv({ allErrors: false, strict: false });
    const defs = (schema as { definitions: Definitions }).definitions;
    v = ajv.compile({ $ref: `#/definitions/${definition}`, definitions: defs });
    validators.set(definition, v);
  }
  return v;
}

/** Why `data` is not a valid protocol message, or null when it is. */
export function whyInvalid(data: unknown): string | null {
  if (!validatorFor('envelope')(data)) {
    return describe(validatorFor('envelope'));
  }
  const kind = (data as { kind: string }).kind;
  const v = validatorFor(kind);
  return v(data) ? null : `${kind}: ${describe(v)}`;
}

function describe(v: ValidateFunction): string {
  const e = v.errors?.[0];
  return e ? `${e.instancePath || '(message)'} ${e.message ?? 'is invalid'}` : 'is invalid';
}

export function isMessage(data: unknown): data is Message {
  return whyInvalid(data) === null;
}

/** A valid kernel -> panel message (the only ones the panel acts on). */
export function isReply(data: unknown): data is Reply {
  return isMessage(data) && (REPLY_KINDS as readonly string[]).includes(data.kind);
}

export function isRequest(data: unknown): data is Request {
  return isMessage(data) && (REQUEST_KINDS as readonly string[]).includes(data.kind);
}

/** Requests are plain JSON; this is the one place the type system is told so. */
export function toJSON(req: Request): JSONObject {
  return req as unknown as JSONObject;
}

export function makeRequest(id: string, body: RequestBody): Request {
  return { v: PROTOCOL_VERSION, id, ...body } as Request;
}

// -- buffers -------------------------------------------------------------------------------
export type Buffer = ArrayBuffer | ArrayBufferView;

const ITEMSIZE: { [K in DType]: number } = { float64: 8, float32: 4, int64: 8, int32: 4, uint32: 4 };

function bytesOf(buf: Buffer): DataView {
  if (buf instanceof ArrayBuffer) {
    return new DataView(buf);
  }
  return new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
}

/**
 * The values an ArrayRef points at, as float64 (charts want numbers; int64 counts stay
 * exact below 2**53). Throws when the buffer is missing or its length contradicts the shape.
 */
export function decodeArray(ref: ArrayRef, buffers: readonly Buffer[]): Float64Array {
  const raw = buffers[ref.buffer];
  if (raw === undefined) {
    throw new Error(`buffer ${ref.buffer} is missing (message has ${buffers.length})`);
  }
  const view = bytesOf(raw);
  const n = ref.shape.reduce((a, b) => a * b, 1);
  const size = ITEMSIZE[ref.dtype];
  if (view.byteLength !== n * size) {
    throw new Error(
      `buffer ${ref.buffer} has ${view.byteLength} bytes; ${ref.dtype}${JSON.stringify(ref.shape)} needs ${n * size}`
    );
  }
  const out = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    const o = i * size;
    switch (ref.dtype) {
      case 'float64':
        out[i] = view.getFloat64(o, true);
        break;
      case 'float32':
        out[i] = view.getFloat32(o, true);
        break;
      case 'int32':
        out[i] = view.getInt32(o, true);
        break;
      case 'uint32':
        out[i] = view.getUint32(o, true);
        break;
      case 'int64':
        out[i] = view.getInt32(o + 4, true) * 4294967296 + view.getUint32(o, true);
        break;
    }
  }
  return out;
}

export function decodeColumns(columns: Columns, buffers: readonly Buffer[]): { [name: string]: Float64Array } {
  const out: { [name: string]: Float64Array } = {};
  for (const [name, ref] of Object.entries(columns)) {
    out[name] = decodeArray(ref, buffers);
  }
  return out;
}
