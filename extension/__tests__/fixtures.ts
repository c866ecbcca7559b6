/** Loads protocol/fixtures/*.json and encodes their listed buffer values as the kernel would. */
import * as fs from 'fs';
import * as path from 'path';

import type { Buffer, DType } from '../protocol';

export const FIXTURE_DIR = path.resolve(__dirname, '../../protocol/fixtures');

export interface IFixture {
  name: string;
  description: string;
  message: { [key: string]: unknown } & { kind: string };
  buffers: Buffer[];
  values: (number | null)[][];
  error_code?: string;
}

function encode(dtype: DType, values: (number | string | null)[]): ArrayBuffer {
  const nums = values.map(v => (v === null ? NaN : typeof v === 'string' ? Number(v) : v));
  const size = dtype === 'float64' || dtype === 'int64' ? 8 : 4;
  const buf = new ArrayBuffer(nums.length * size);
  const view = new DataView(buf);
  nums.forEach((x, i) => {
    const o = i * size;
    switch (dtype) {
      case 'float64':
        view.setFloat64(o, x, true);
        break;
      case 'float32':
        view.setFloat32(o, x, true);
        break;
      case 'int32':
        view.setInt32(o, x, true);
        break;
      case 'uint32':
        view.setUint32(o, x, true);
        break;
      case 'int64':
        view.setBigInt64(o, BigInt(x), true);
        break;
    }
  });
  return buf;
}

export function loadFixtures(sub = ''): IFixture[] {
  const dir = path.join(FIXTURE_DIR, sub);
  return fs
    .readdirSync(dir)
    .filter(f => f.endsWith('.json'))
    .sort()
    .map(f => {
      const raw = JSON.parse(fs.readFileSync(path.join(dir, f), 'utf-8'));
      const bufs: { dtype: DType; values: (number | string | null)[] }[] = raw.buffers ?? [];
      return {
        name: f.replace(/\.json$/, ''),
        description: raw.description,
        message: raw.message,
        buffers: bufs.map(b => encode(b.dtype, b.values)),
        values: bufs.map(b => b.values.map(v => (typeof v === 'string' ? Number(v) : v))),
        error_code: raw.error_code
      };
    });
}

export function fixture(name: string): IFixture {
  const f = loadFixtures().find(x => x.name === name);
  if (!f) {
    throw new Error(`no fixture ${name}`);
  }
  return f;
}
