/**
 * A hardened safetensors reader: single files and sharded checkpoints (model.safetensors.index.json).
 * The header length, every offset and every size is checked against the file before a byte is trusted;
 * tensors are read one at a time (never the whole file) and converted to float32.
 */
import fs from 'node:fs';
import path from 'node:path';
import { createHash } from 'node:crypto';
import { ModelError } from './errors.js';

const BYTES_PER_ELEMENT: Readonly<Record<string, number>> = Object.freeze({ F32: 4, F16: 2, BF16: 2 });
const MAX_HEADER_BYTES = 100 * 1024 * 1024;

export interface TensorInfo {
  name: string;
  dtype: 'F32' | 'F16' | 'BF16';
  shape: number[];
  file: string;
  /** Absolute byte offset of the data in `file`. */
  start: number;
  byteLength: number;
}

interface ShardFile { file: string; fd: number; size: number; headerBytes: Buffer }

export class SafetensorsCheckpoint {
  private constructor(
    readonly dir: string,
    private readonly shards: ShardFile[],
    private readonly tensors: Map<string, TensorInfo & { fd: number }>,
    /** The `__metadata__` map of the first shard. */
    readonly metadata: Record<string, string>,
  ) {}

  /** Opens one safetensors file. */
  static openFile(file: string): SafetensorsCheckpoint {
    if (!fs.existsSync(file)) throw new ModelError(`${file}: no such file`);
    return SafetensorsCheckpoint.openFiles(path.dirname(file), [file]);
  }

  /** Opens `dir/model.safetensors`, or the shards listed by `dir/model.safetensors.index.json`. */
  static open(dir: string): SafetensorsCheckpoint {
    const indexPath = path.join(dir, 'model.safetensors.index.json');
    const singlePath = path.join(dir, 'model.safetensors');
    let files: string[];
    if (fs.existsSync(indexPath)) {
      let index: { weight_map?: Record<string, string> };
      try { index = JSON.parse(fs.readFileSync(indexPath, 'utf8')); } catch (e) {
        throw new ModelError(`${indexPath}: not valid JSON (${(e as Error).message})`);
      }
      if (!index.weight_map || typeof index.weight_map !== 'object') throw new ModelError(`${indexPath}: field "weight_map" is missing`);
      files = [...new Set(Object.values(index.weight_map))].sort().map((f) => path.join(dir, f));
    } else if (fs.existsSync(singlePath)) {
      files = [singlePath];
    } else {
      throw new ModelError(`${dir}: no model.safetensors or model.safetensors.index.json (only safetensors checkpoints are supported)`);
    }
    return SafetensorsCheckpoint.openFiles(dir, files);
  }

  private static openFiles(dir: string, files: string[]): SafetensorsCheckpoint {
    const shards: ShardFile[] = [];
    let metadata: Record<string, string> = {};
    const tensors = new Map<string, TensorInfo & { fd: number }>();
    try {
      for (const file of files) {
        const shard = openShard(file);
        shards.push(shard);
        const parsed = parseHeader(shard);
        if (shards.length === 1) metadata = parsed.metadata;
        for (const t of parsed.tensors) {
          if (tensors.has(t.name)) throw new ModelError(`${file}: tensor "${t.name}" also appears in ${tensors.get(t.name)!.file}`);
          tensors.set(t.name, { ...t, fd: shard.fd });
        }
      }
    } catch (e) {
      for (const s of shards) fs.closeSync(s.fd);
      throw e;
    }
    return new SafetensorsCheckpoint(dir, shards, tensors, metadata);
  }

  names(): string[] { return [...this.tensors.keys()]; }
  /** The shard files, in the order they were opened. */
  get files(): string[] { return this.shards.map((s) => s.file); }
  has(name: string): boolean { return this.tensors.has(name); }

  info(name: string): TensorInfo {
    const t = this.tensors.get(name);
    if (!t) throw new ModelError(`${this.dir}: tensor "${name}" is missing from the checkpoint`);
    return t;
  }

  /** Reads one tensor, converted to float32. */
  readFloat32(name: string): Float32Array {
    const t = this.info(name) as TensorInfo & { fd: number };
    // A fresh ArrayBuffer (not Buffer's pool): aligned, so F32 data is used in place without a copy.
    const raw = Buffer.from(new ArrayBuffer(t.byteLength));
    let done = 0;
    while (done < t.byteLength) {
      const n = fs.readSync(t.fd, raw, done, t.byteLength - done, t.start + done);
      if (n === 0) throw new ModelError(`${t.file}: unexpected end of file inside tensor "${name}"`);
      done += n;
    }
    return toFloat32(raw, t.dtype);
  }

  /**
   * A cheap identity of the weights: every header plus 64 KiB samples at 32 evenly spread offsets of each
   * shard. Any fine-tune or re-quantisation changes it; hashing gigabytes on every load would not pay.
   */
  fingerprint(): string {
    const h = createHash('sha256');
    const sample = Buffer.allocUnsafe(64 * 1024);
    for (const s of this.shards) {
      h.update(path.basename(s.file)).update(String(s.size)).update(s.headerBytes);
      for (let i = 0; i < 32; i++) {
        const at = Math.floor((s.size * i) / 32);
        const n = fs.readSync(s.fd, sample, 0, Math.min(sample.length, s.size - at), at);
        h.update(sample.subarray(0, n));
      }
    }
    return h.digest('hex');
  }

  close(): void {
    for (const s of this.shards) fs.closeSync(s.fd);
    this.shards.length = 0;
  }
}

function openShard(file: string): ShardFile {
  let fd: number;
  try { fd = fs.openSync(file, 'r'); } catch (e) {
    throw new ModelError(`${file}: cannot open (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
  try {
    const size = fs.fstatSync(fd).size;
    if (size < 8) throw new ModelError(`${file}: too short to be a safetensors file (${size} bytes)`);
    const lenBuf = Buffer.alloc(8);
    fs.readSync(fd, lenBuf, 0, 8, 0);
    const headerLen = lenBuf.readBigUInt64LE(0);
    if (headerLen > BigInt(Math.min(MAX_HEADER_BYTES, size - 8))) {
      throw new ModelError(`${file}: header length ${headerLen} exceeds the file (${size} bytes) or the ${MAX_HEADER_BYTES}-byte limit; the file is corrupt or not safetensors`);
    }
    const headerBytes = Buffer.alloc(Number(headerLen));
    fs.readSync(fd, headerBytes, 0, headerBytes.length, 8);
    return { file, fd, size, headerBytes };
  } catch (e) {
    fs.closeSync(fd);
    throw e;
  }
}

function parseHeader(shard: ShardFile): { tensors: TensorInfo[]; metadata: Record<string, string> } {
  const { file, size, headerBytes } = shard;
  let header: Record<string, unknown>;
  try { header = JSON.parse(headerBytes.toString('utf8')); } catch (e) {
    throw new ModelError(`${file}: header is not valid JSON (${(e as Error).message})`);
  }
  if (typeof header !== 'object' || header === null || Array.isArray(header)) throw new ModelError(`${file}: header is not a JSON object`);
  const dataStart = 8 + headerBytes.length;
  const out: TensorInfo[] = [];
  const metadata: Record<string, string> = {};
  for (const [name, entry] of Object.entries(header)) {
    if (name === '__metadata__') {
      for (const [k, v] of Object.entries((entry ?? {}) as Record<string, unknown>)) if (typeof v === 'string') metadata[k] = v;
      continue;
    }
    const e = entry as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
    const where = `${file}: tensor "${name}"`;
    if (typeof e.dtype !== 'string') throw new ModelError(`${where}: field "dtype" is missing`);
    const bpe = BYTES_PER_ELEMENT[e.dtype];
    if (!bpe) throw new ModelError(`${where}: dtype ${e.dtype} is not supported (F32, F16, BF16)`);
    if (!Array.isArray(e.shape) || !e.shape.every((x) => Number.isInteger(x) && x >= 0)) throw new ModelError(`${where}: field "shape" must be a list of non-negative integers`);
    const offs = e.data_offsets;
    if (!Array.isArray(offs) || offs.length !== 2 || !offs.every((x) => Number.isInteger(x) && x >= 0) || offs[1] < offs[0]) {
      throw new ModelError(`${where}: field "data_offsets" must be [begin, end] with 0 <= begin <= end`);
    }
    const [begin, end] = offs as [number, number];
    const count = (e.shape as number[]).reduce((a, b) => a * b, 1);
    if (end - begin !== count * bpe) throw new ModelError(`${where}: data_offsets span ${end - begin} bytes but shape [${e.shape}] of ${e.dtype} needs ${count * bpe}`);
    if (dataStart + end > size) throw new ModelError(`${where}: data_offsets end ${end} lies past the end of the file (${size - dataStart} data bytes)`);
    out.push({ name, dtype: e.dtype as TensorInfo['dtype'], shape: e.shape as number[], file, start: dataStart + begin, byteLength: end - begin });
  }
  return { tensors: out, metadata };
}

function toFloat32(raw: Buffer, dtype: TensorInfo['dtype']): Float32Array {
  const n = raw.length / BYTES_PER_ELEMENT[dtype]!;
  if (dtype === 'F32') {
    if (raw.byteOffset % 4 === 0) return new Float32Array(raw.buffer, raw.byteOffset, n);
    const out = new Float32Array(n);
    new Uint8Array(out.buffer).set(raw);
    return out;
  }
  const halves = new Uint16Array(n);
  new Uint8Array(halves.buffer).set(raw);
  const out = new Float32Array(n);
  if (dtype === 'BF16') {
    const bits = new Uint32Array(out.buffer);
    for (let i = 0; i < n; i++) bits[i] = halves[i]! << 16;
    return out;
  }
  for (let i = 0; i < n; i++) out[i] = halfToFloat(halves[i]!);
  return out;
}

/** IEEE 754 binary16 → number (subnormals, infinities and NaN included). */
export function halfToFloat(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const frac = h & 0x3ff;
  if (exp === 0) return sign * frac * 2 ** -24;
  if (exp === 0x1f) return frac ? NaN : sign * Infinity;
  return sign * (1 + frac / 1024) * 2 ** (exp - 15);
}

export interface WritableTensor { name: string; shape: number[]; dtype: TensorInfo['dtype']; bytes: Uint8Array }

/**
 * Writes a safetensors file (8-byte header length, JSON header padded to 8 bytes, contiguous data) through
 * a temporary file renamed into place, so a reader never sees a half-written file.
 */
export function writeSafetensors(file: string, tensors: WritableTensor[], metadata: Record<string, string> = {}): void {
  const header: Record<string, unknown> = { __metadata__: { format: 'pt', ...metadata } };
  let offset = 0;
  for (const t of tensors) {
    header[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + t.bytes.length] };
    offset += t.bytes.length;
  }
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - (Buffer.byteLength(json) % 8)) % 8);
  const tmp = `${file}.tmp-${process.pid}`;
  const fd = fs.openSync(tmp, 'w');
  try {
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(Buffer.byteLength(json)));
    fs.writeSync(fd, len);
    fs.writeSync(fd, json);
    for (const t of tensors) fs.writeSync(fd, t.bytes);
  } finally {
    fs.closeSync(fd);
  }
  fs.renameSync(tmp, file);
}

/** The `__metadata__` string map of a single safetensors file. */
export function readSafetensorsMetadata(file: string): Record<string, string> {
  const ckpt = SafetensorsCheckpoint.openFile(file);
  try { return ckpt.metadata; } finally { ckpt.close(); }
}
