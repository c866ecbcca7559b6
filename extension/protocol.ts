/**
 * The panel end of the protocol in protocol/schema.json: message types, the schema
 * validator, request builders and the decoding of binary buffers.
 *
 * The types are hand-written mirrors of the schema; jest checks that every fixture in
 * protocol/fixtures validates against the schema and decodes into these shapes, so the
 * TypeScript and Python sides are held to the same examples.
 */
import type { JSONObject } from '@lumino/coreutils';
import Ajv from 'ajv';
import type { ValidateFunction } from 'ajv';

import schema from '../protocol/schema.json';

export const PROTOCOL_VERSION = 1;
export const COMM_TARGET = 'gradsight';

export type DType = 'float64' | 'float32' | 'int64' | 'int32' | 'uint32';
export type Severity = 'info' | 'warning' | 'error';
export type HistKind = 'grad' | 'activation' | 'weight';
export const HIST_KINDS: readonly HistKind[] = ['grad', 'activation', 'weight'];

export type ArrayRef = { buffer: number; dtype: DType; shape: number[] };
export type Columns = { [name: string]: ArrayRef };

export type WatcherSummary = { name: string; step_count: number; n_layers: number };

export type Finding = {
  step: number | null;
  last_step?: number | null;
  count?: number | null;
  layer: string | null;
  kind: string;
  severity: Severity;
  message: string | null;
  hint?: string | null;
  phase?: string | null;
  op?: string | null;
  source?: string | null;
  value?: number | null;
  threshold?: number | null;
};

export type HistogramMsg = {
  step: number | null;
  edges: ArrayRef;
  counts: ArrayRef;
  nan: number;
  posinf: number;
  neginf: number;
  zero: number;
};

export type GradcheckTensor = {
  name: string;
  shape?: number[];
  passed: boolean;
  max_abs_err?: number | null;
  max_rel_err?: number | null;
  worst_index?: number[] | null;
  analytic?: number | null;
  numeric?: number | null;
};

export type GradcheckReport = {
  title: string;
  watcher?: string | null;
  layer?: string | null;
  mode?: string | null;
  step?: number | null;
  passed: boolean;
  tensors: GradcheckTensor[];
};

// -- requests (panel -> kernel) ----------------------------------------------------------
export type Hello = { v: 1; kind: 'hello'; id: string; client?: { name?: string; version?: string } };
export type GetSnapshot = { v: 1; kind: 'get_snapshot'; id: string; watcher: string | null };
export type GetLayer = {
  v: 1;
  kind: 'get_layer';
  id: string;
  watcher: string;
  layer: string;
  max_steps?: number;
  follow?: boolean;
};
export type GetGradcheckReports = { v: 1; kind: 'get_gradcheck_reports'; id: string };
export type RunGradcheck = { v: 1; kind: 'run_gradcheck'; id: string; watcher: string; layer: string; mode?: string };
export type Request = Hello | GetSnapshot | GetLayer | GetGradcheckReports | RunGradcheck;
/** A request without its envelope: what callers of `Connection.request` pass. */
export type RequestBody =
  | Omit<Hello, 'v' | 'id'>
  | Omit<GetSnapshot, 'v' | 'id'>
  | Omit<GetLayer, 'v' | 'id'>
  | Omit<GetGradcheckReports, 'v' | 'id'>
  | Omit<RunGradcheck, 'v' | 'id'>;

// -- replies and pushes (kernel -> panel) ------------------------------------------------------
export type Status = {
  v: 1;
  kind: 'status';
  id: string | null;
  gradsight_version: string;
  protocol: 1;
  kernel?: { python?: string; torch?: string; pid?: number };
  watchers: WatcherSummary[];
  features: { gradcheck: boolean; watchers: boolean };
};
export type Snapshot = {
  v: 1;
  kind: 'snapshot';
  id: string | null;
  watcher: WatcherSummary;
  selected_layer?: string | null;
  layers: { names: string[]; types: string[]; total: number; columns: Columns };
  steps: { total: number; columns: Columns };
  findings: { total: number; rows: Finding[] };
};
export type Layer = {
  v: 1;
  kind: 'layer';
  id: string | null;
  watcher: string;
  layer: string;
  type: string;
  stats: { [name: string]: number | null };
  histograms: { [K in HistKind]: HistogramMsg[] };
};
export type GradcheckReports = {
  v: 1;
  kind: 'gradcheck_reports';
  id: string | null;
  total: number;
  reports: GradcheckReport[];
};
export type ErrorCode =
  | 'bad_message'
  | 'too_large'
  | 'unsupported_version'
  | 'unknown_kind'
  | 'not_found'
  | 'busy'
  | 'unavailable'
  | 'internal';
export type ErrorReply = {
  v: 1;
  kind: 'error';
  id: string | null;
  code: ErrorCode;
  message: string;
  request_kind?: string | null;
};
export type Reply = Status | Snapshot | Layer | GradcheckReports | ErrorReply;
export type Message = Request | Reply;

export const REQUEST_KINDS: readonly Request['kind'][] = [
  'hello',
  'get_snapshot',
  'get_layer',
  'get_gradcheck_reports',
  'run_gradcheck'
];
export const REPLY_KINDS: readonly Reply['kind'][] = ['status', 'snapshot', 'layer', 'gradcheck_reports', 'error'];

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
    throw new Error(`buffer ${ref.buffer} has ${view.byteLength} bytes; ${ref.dtype}${JSON.stringify(ref.shape)} needs ${n * size}`);
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
