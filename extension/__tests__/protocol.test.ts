import {
  HIST_KINDS,
  LAYER_METRICS,
  PROTOCOL_VERSION,
  REPLY_KINDS,
  REQUEST_KINDS,
  SEVERITIES,
  decodeArray,
  isMessage,
  isReply,
  isRequest,
  makeRequest,
  whyInvalid
} from '../protocol';
import type { ArrayRef } from '../protocol';
import schema from '../../protocol/schema.json';
import { loadFixtures } from './fixtures';

type Ref = ArrayRef;

function refs(obj: unknown): Ref[] {
  if (Array.isArray(obj)) {
    return obj.flatMap(refs);
  }
  if (obj !== null && typeof obj === 'object') {
    const keys = Object.keys(obj).sort().join(',');
    if (keys === 'buffer,dtype,shape') {
      return [obj as Ref];
    }
    return Object.values(obj).flatMap(refs);
  }
  return [];
}

const valid = loadFixtures();
const invalid = loadFixtures('invalid');

describe('protocol fixtures', () => {
  it('cover every kind in the schema', () => {
    const kinds = new Set(valid.map(f => f.message.kind));
    expect([...kinds].sort()).toEqual([...REQUEST_KINDS, ...REPLY_KINDS].sort());
    const schemaKinds = [...schema.definitions.request_kind.enum, ...schema.definitions.reply_kind.enum];
    expect(schemaKinds.sort()).toEqual([...kinds].sort());
  });

  it.each(valid.map(f => [f.name, f] as const))('%s validates and its buffers decode', (_, f) => {
    expect(whyInvalid(f.message)).toBeNull();
    expect(isMessage(f.message)).toBe(true);
    const isReq = (REQUEST_KINDS as readonly string[]).includes(f.message.kind);
    expect(isRequest(f.message)).toBe(isReq);
    expect(isReply(f.message)).toBe(!isReq);
    for (const ref of refs(f.message)) {
      const arr = decodeArray(ref, f.buffers);
      expect(arr.length).toBe(ref.shape.reduce((a, b) => a * b, 1));
      const expected = f.values[ref.buffer].map(v => (v === null ? NaN : v));
      expect(Array.from(arr)).toEqual(expected);
    }
  });

  it.each(invalid.map(f => [f.name, f] as const))('%s is not a request the kernel would serve', (_, f) => {
    const why = whyInvalid(f.message);
    expect(why !== null || !isRequest(f.message)).toBe(true);
    expect(isRequest(f.message)).toBe(false);
  });
});

describe('facts read from the schema', () => {
  const defs = schema.definitions as unknown as { [name: string]: { [key: string]: unknown } };
  const kindsOf = (union: string): string[] =>
    (defs[union].oneOf as { $ref: string }[]).map(r => {
      const name = r.$ref.split('/').pop() as string;
      return (defs[name].properties as { kind: { const: string } }).kind.const;
    });

  it("lists each direction's kinds once, matching its union of message types", () => {
    expect([...REQUEST_KINDS]).toEqual(kindsOf('request'));
    expect([...REPLY_KINDS]).toEqual(kindsOf('reply'));
  });

  it('names the metrics, histogram kinds and severities', () => {
    expect(LAYER_METRICS).toContain('grad_norm');
    expect(LAYER_METRICS).toContain('update_ratio');
    expect([...HIST_KINDS]).toEqual(['activation', 'grad', 'weight']); // records.HIST_KINDS' order
    expect([...SEVERITIES]).toEqual(['info', 'warning', 'error']);
    expect(PROTOCOL_VERSION).toBe(1);
  });
});

describe('requests', () => {
  it('builders produce schema-valid messages', () => {
    expect(isRequest(makeRequest('a:1', { kind: 'hello', client: { name: 'x', version: '1' } }))).toBe(true);
    expect(isRequest(makeRequest('a:2', { kind: 'get_snapshot', watcher: null }))).toBe(true);
    expect(isRequest(makeRequest('a:3', { kind: 'get_layer', watcher: 'MLP', layer: '', follow: false }))).toBe(true);
    expect(isRequest(makeRequest('a:4', { kind: 'run_gradcheck', watcher: 'MLP', layer: 'fc1', mode: 'full' }))).toBe(
      true
    );
  });

  it('explains what is wrong', () => {
    expect(whyInvalid({ v: 1, kind: 'get_layer', id: 'x', watcher: 'MLP' })).toMatch(/layer/);
    expect(whyInvalid({ v: 2, kind: 'hello', id: 'x' })).toMatch(/v/);
    expect(whyInvalid('hello')).not.toBeNull();
  });
});

describe('decodeArray', () => {
  it('reads int64 counts exactly, negative values included', () => {
    const buf = new ArrayBuffer(24);
    const v = new DataView(buf);
    v.setBigInt64(0, BigInt(2 ** 40 + 3), true);
    v.setBigInt64(8, BigInt(-5), true);
    v.setBigInt64(16, BigInt(0), true);
    expect(Array.from(decodeArray({ buffer: 0, dtype: 'int64', shape: [3] }, [buf]))).toEqual([2 ** 40 + 3, -5, 0]);
  });

  it('reads from a view at an unaligned offset', () => {
    const buf = new ArrayBuffer(1 + 8);
    new DataView(buf).setFloat64(1, -2.5, true);
    const view = new DataView(buf, 1, 8);
    expect(Array.from(decodeArray({ buffer: 0, dtype: 'float64', shape: [1] }, [view]))).toEqual([-2.5]);
  });

  it('keeps NaN and infinities', () => {
    const arr = new Float32Array([NaN, Infinity, -Infinity]);
    const out = decodeArray({ buffer: 0, dtype: 'float32', shape: [3] }, [arr]);
    expect(Number.isNaN(out[0])).toBe(true);
    expect(out[1]).toBe(Infinity);
    expect(out[2]).toBe(-Infinity);
  });

  it('refuses a missing buffer or a length that contradicts the shape', () => {
    expect(() => decodeArray({ buffer: 1, dtype: 'float64', shape: [1] }, [new ArrayBuffer(8)])).toThrow(/missing/);
    expect(() => decodeArray({ buffer: 0, dtype: 'float64', shape: [2, 2] }, [new ArrayBuffer(8)])).toThrow(/needs 32/);
  });
});
