/**
 * A tiny, independent reader for the float64/int64 reference tensors in the hf-parity fixtures
 * (`tensors.safetensors`): test ground truth, kept apart from the engine's own checkpoint reader.
 */
import fs from 'node:fs';

export interface ReferenceTensor {
  dtype: 'F64' | 'I64' | 'F32' | 'I32';
  shape: number[];
  /** Values as doubles (int64 values in the fixtures are small: position ids, grids, sizes). */
  values: Float64Array;
}

export function readReferenceTensors(file: string): Map<string, ReferenceTensor> {
  const buf = fs.readFileSync(file);
  const headerLen = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + headerLen).toString('utf8')) as Record<string, unknown>;
  const base = 8 + headerLen;
  const out = new Map<string, ReferenceTensor>();
  for (const [name, entry] of Object.entries(header)) {
    if (name === '__metadata__') continue;
    const { dtype, shape, data_offsets } = entry as {
      dtype: ReferenceTensor['dtype'];
      shape: number[];
      data_offsets: [number, number];
    };
    const bytes = buf.subarray(base + data_offsets[0], base + data_offsets[1]);
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const width = dtype === 'F64' || dtype === 'I64' ? 8 : 4;
    const n = bytes.byteLength / width;
    const values = new Float64Array(n);
    for (let i = 0; i < n; i++) {
      const at = i * width;
      if (dtype === 'F64') values[i] = view.getFloat64(at, true);
      else if (dtype === 'I64') values[i] = Number(view.getBigInt64(at, true));
      else if (dtype === 'F32') values[i] = view.getFloat32(at, true);
      else if (dtype === 'I32') values[i] = view.getInt32(at, true);
      else throw new Error(`${file}: ${name} has dtype ${dtype as string}, not F64/I64/F32/I32`);
    }
    out.set(name, { dtype, shape, values });
  }
  return out;
}
