/**
 * A hardened safetensors reader: single files and sharded checkpoints (model.safetensors.index.json).
 * The header length, every offset and every size is checked against the file before a byte is trusted,
 * with the reference implementation's rule for the data section (tensors sorted by offset tile it exactly:
 * from 0, no gap, no overlap, nothing after the last); tensors are read one at a time (never the whole
 * file) and converted to float32.
 */
import fs from 'node:fs';
import path from 'node:path';
import { ModelError } from '../errors.js';
import { writeFileAtomic } from '../../util/atomic-write.js';

/** Float dtypes hold weights; integer dtypes hold pre-quantised weights (AWQ/GPTQ qweight/qzeros/g_idx), read raw. */
const BYTES_PER_ELEMENT: Readonly<Record<string, number>> = Object.freeze({
  F32: 4,
  F16: 2,
  BF16: 2,
  I32: 4,
  U8: 1,
  I64: 8,
});
const FLOAT_DTYPES: ReadonlySet<string> = new Set(['F32', 'F16', 'BF16']);
const MAX_HEADER_BYTES = 100 * 1024 * 1024;

export interface TensorInfo {
  name: string;
  dtype: 'F32' | 'F16' | 'BF16' | 'I32' | 'U8' | 'I64';
  shape: number[];
  file: string;
  /** Absolute byte offset of the data in `file`. */
  start: number;
  byteLength: number;
}

interface ShardFile {
  file: string;
  fd: number;
  size: number;
  headerBytes: Buffer;
}

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
    if (fs.existsSync(indexPath)) {
      const weightMap = readIndex(indexPath, dir);
      const files = [...new Set(Object.values(weightMap))].sort().map((f) => path.join(dir, f));
      const ckpt = SafetensorsCheckpoint.openFiles(dir, files);
      try {
        // The index is what loaders trust to find a tensor, so it must agree with the shards' headers.
        for (const [name, f] of Object.entries(weightMap)) {
          const t = ckpt.tensors.get(name);
          if (!t)
            throw new ModelError(`${indexPath}: weight_map puts tensor "${name}" in "${f}", but no shard holds it`);
          if (path.resolve(t.file) !== path.resolve(dir, f)) {
            throw new ModelError(
              `${indexPath}: weight_map puts tensor "${name}" in "${f}", but it is in "${path.relative(dir, t.file)}"`,
            );
          }
        }
      } catch (e) {
        ckpt.close();
        throw e;
      }
      return ckpt;
    }
    if (fs.existsSync(singlePath)) return SafetensorsCheckpoint.openFiles(dir, [singlePath]);
    throw new ModelError(
      `${dir}: no model.safetensors or model.safetensors.index.json (only safetensors checkpoints are supported)`,
    );
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
          if (tensors.has(t.name))
            throw new ModelError(`${file}: tensor "${t.name}" also appears in ${tensors.get(t.name)!.file}`);
          tensors.set(t.name, { ...t, fd: shard.fd });
        }
      }
    } catch (e) {
      for (const s of shards) fs.closeSync(s.fd);
      throw e;
    }
    return new SafetensorsCheckpoint(dir, shards, tensors, metadata);
  }

  names(): string[] {
    return [...this.tensors.keys()];
  }
  /** The shard files, in the order they were opened. */
  get files(): string[] {
    return this.shards.map((s) => s.file);
  }
  has(name: string): boolean {
    return this.tensors.has(name);
  }

  info(name: string): TensorInfo {
    const t = this.tensors.get(name);
    if (!t) throw new ModelError(`${this.dir}: tensor "${name}" is missing from the checkpoint`);
    return t;
  }

  /** Reads one float tensor (F32/F16/BF16), converted to float32. */
  readFloat32(name: string): Float32Array {
    const t = this.info(name);
    if (!FLOAT_DTYPES.has(t.dtype))
      throw new ModelError(`${t.file}: tensor "${name}" is ${t.dtype}; expected a float tensor (F32, F16 or BF16)`);
    return toFloat32(this.readRaw(name), t.dtype as 'F32' | 'F16' | 'BF16');
  }

  /** Reads one tensor's bytes as stored (little-endian), in a fresh aligned buffer. */
  readRaw(name: string): Buffer {
    const t = this.info(name) as TensorInfo & { fd: number };
    // A fresh ArrayBuffer (not Buffer's pool): aligned, so typed views (F32 data, I32 codes) need no copy.
    const raw = Buffer.from(new ArrayBuffer(t.byteLength));
    let done = 0;
    while (done < t.byteLength) {
      const n = fs.readSync(t.fd, raw, done, t.byteLength - done, t.start + done);
      if (n === 0) throw new ModelError(`${t.file}: unexpected end of file inside tensor "${name}"`);
      done += n;
    }
    return raw;
  }

  /** Reads one I32 tensor (AWQ/GPTQ packed codes, g_idx). */
  readInt32(name: string): Int32Array {
    const t = this.info(name);
    if (t.dtype !== 'I32') throw new ModelError(`${t.file}: tensor "${name}" is ${t.dtype}; expected I32`);
    const raw = this.readRaw(name);
    return new Int32Array(raw.buffer, raw.byteOffset, raw.length / 4);
  }

  /**
   * The same tensors under other names: `rename(stored)` gives the name a tensor is read by, or null to hide it
   * (e.g. an image-text checkpoint's language model seen under text-model names). Shares the open files, so
   * close only one of the two.
   */
  renamed(rename: (stored: string) => string | null): SafetensorsCheckpoint {
    const tensors = new Map<string, TensorInfo & { fd: number }>();
    for (const [stored, t] of this.tensors) {
      const name = rename(stored);
      if (name === null) continue;
      if (tensors.has(name)) throw new ModelError(`${t.file}: tensors "${stored}" and another both read as "${name}"`);
      tensors.set(name, t);
    }
    return new SafetensorsCheckpoint(this.dir, this.shards, tensors, this.metadata);
  }

  close(): void {
    for (const s of this.shards) fs.closeSync(s.fd);
    this.shards.length = 0;
  }
}

function openShard(file: string): ShardFile {
  let fd: number;
  try {
    fd = fs.openSync(file, 'r');
  } catch (e) {
    throw new ModelError(`${file}: cannot open (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
  try {
    const stat = fs.fstatSync(fd);
    if (!stat.isFile())
      throw new ModelError(
        `${file}: ${stat.isDirectory() ? 'is a directory' : 'is not a regular file'}; expected a safetensors file`,
      );
    const size = stat.size;
    if (size < 8) throw new ModelError(`${file}: too short to be a safetensors file (${size} bytes)`);
    const lenBuf = Buffer.alloc(8);
    fs.readSync(fd, lenBuf, 0, 8, 0);
    const headerLen = lenBuf.readBigUInt64LE(0);
    if (headerLen > BigInt(Math.min(MAX_HEADER_BYTES, size - 8))) {
      throw new ModelError(
        `${file}: header length ${headerLen} exceeds the file (${size} bytes) or the ${MAX_HEADER_BYTES}-byte ` +
          `limit; the file is corrupt or not safetensors`,
      );
    }
    const headerBytes = Buffer.alloc(Number(headerLen));
    fs.readSync(fd, headerBytes, 0, headerBytes.length, 8);
    return { file, fd, size, headerBytes };
  } catch (e) {
    fs.closeSync(fd);
    throw e;
  }
}

/** Reads a sharded checkpoint's index: tensor name → shard file, every file a relative path inside `dir`. */
function readIndex(indexPath: string, dir: string): Record<string, string> {
  const text = fs.readFileSync(indexPath, 'utf8');
  let index: unknown;
  try {
    index = JSON.parse(text);
  } catch (e) {
    throw new ModelError(`${indexPath}: not valid JSON (${(e as Error).message})`);
  }
  if (!isJsonObject(index)) throw new ModelError(`${indexPath}: expected a JSON object, got ${jsonKind(index)}`);
  if (index.weight_map === undefined) throw new ModelError(`${indexPath}: field "weight_map" is missing`);
  if (!isJsonObject(index.weight_map))
    throw new ModelError(
      `${indexPath}: field "weight_map" must be an object of tensor name → shard file, got ` +
        `${jsonKind(index.weight_map)}`,
    );
  const dup = findDuplicateKey(text);
  if (dup)
    throw new ModelError(
      `${indexPath}: key "${dup.key}" appears twice${dup.parent === null ? '' : ` inside "${dup.parent}"`}`,
    );
  const root = path.resolve(dir);
  const inside = root.endsWith(path.sep) ? root : root + path.sep;
  for (const [name, f] of Object.entries(index.weight_map)) {
    if (typeof f !== 'string' || f === '')
      throw new ModelError(
        `${indexPath}: weight_map entry for tensor "${name}" must be a shard file name, got ${JSON.stringify(f)}`,
      );
    // A hostile index could otherwise make us open any file on the machine.
    if (path.isAbsolute(f) || !path.resolve(root, f).startsWith(inside)) {
      throw new ModelError(
        `${indexPath}: weight_map puts tensor "${name}" in "${f}", which is outside the model folder ${dir}; shard ` +
          `files must be relative paths inside it`,
      );
    }
  }
  return index.weight_map as Record<string, string>;
}

function parseHeader(shard: ShardFile): { tensors: TensorInfo[]; metadata: Record<string, string> } {
  const { file, size, headerBytes } = shard;
  const header = headerJson(file, headerBytes);
  const dataStart = 8 + headerBytes.length;
  const out: TensorInfo[] = [];
  let metadata: Record<string, string> = {};
  for (const [name, entry] of Object.entries(header)) {
    if (name === '__metadata__') metadata = parseMetadata(file, entry);
    else out.push(parseTensorEntry(shard, name, entry, dataStart));
  }
  checkContiguous(file, out, dataStart, size - dataStart);
  return { tensors: out, metadata };
}

/** The header's JSON object, refused when it is not UTF-8, not JSON, not an object or names a key twice. */
function headerJson(file: string, headerBytes: Buffer): Record<string, unknown> {
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(headerBytes);
  } catch {
    throw new ModelError(`${file}: header is not valid UTF-8; the file is corrupt or not safetensors`);
  }
  let header: unknown;
  try {
    header = JSON.parse(text);
  } catch (e) {
    throw new ModelError(`${file}: header is not valid JSON (${(e as Error).message})`);
  }
  if (!isJsonObject(header)) throw new ModelError(`${file}: header is not a JSON object`);
  // JSON.parse keeps the last of two equal keys: a tensor named twice would silently lose one entry.
  const dup = findDuplicateKey(text);
  if (dup) {
    throw new ModelError(
      dup.parent === null
        ? `${file}: header names "${dup.key}" twice; every tensor must appear once`
        : `${file}: header entry "${dup.parent}" has field "${dup.key}" twice`,
    );
  }
  return header;
}

/** `__metadata__`: as in the reference reader, absent or null, else a map of strings to strings. */
function parseMetadata(file: string, entry: unknown): Record<string, string> {
  const metadata: Record<string, string> = {};
  if (entry === null) return metadata;
  if (!isJsonObject(entry))
    throw new ModelError(`${file}: "__metadata__" must be an object of string → string, got ${jsonKind(entry)}`);
  for (const [k, v] of Object.entries(entry)) {
    if (typeof v !== 'string')
      throw new ModelError(`${file}: "__metadata__" field "${k}" must be a string, got ${jsonKind(v)}`);
    metadata[k] = v;
  }
  return metadata;
}

/** One tensor's header entry, its dtype, shape and offsets checked against each other and the file. */
function parseTensorEntry(shard: ShardFile, name: string, entry: unknown, dataStart: number): TensorInfo {
  const { file, size } = shard;
  const where = `${file}: tensor "${name}"`;
  if (!isJsonObject(entry))
    throw new ModelError(`${where}: expected an object with dtype, shape and data_offsets, got ${jsonKind(entry)}`);
  const e = entry as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
  if (typeof e.dtype !== 'string') throw new ModelError(`${where}: field "dtype" is missing`);
  const bpe = BYTES_PER_ELEMENT[e.dtype];
  if (!bpe)
    throw new ModelError(
      `${where}: dtype ${e.dtype} is not supported (F32, F16, BF16; I32, U8, I64 for quantised checkpoints)`,
    );
  if (!Array.isArray(e.shape) || !e.shape.every((x) => Number.isInteger(x) && x >= 0))
    throw new ModelError(`${where}: field "shape" must be a list of non-negative integers`);
  const offs = e.data_offsets;
  if (
    !Array.isArray(offs) ||
    offs.length !== 2 ||
    !offs.every((x) => Number.isSafeInteger(x) && x >= 0) ||
    offs[1] < offs[0]
  ) {
    throw new ModelError(`${where}: field "data_offsets" must be [begin, end] with 0 <= begin <= end`);
  }
  const [begin, end] = offs as [number, number];
  const count = (e.shape as number[]).reduce((a, b) => a * b, 1);
  if (end - begin !== count * bpe)
    throw new ModelError(
      `${where}: data_offsets span ${end - begin} bytes but shape [${e.shape}] of ${e.dtype} needs ${count * bpe}`,
    );
  if (dataStart + end > size)
    throw new ModelError(
      `${where}: data_offsets end ${end} lies past the end of the file (${size - dataStart} data bytes)`,
    );
  return {
    name,
    dtype: e.dtype as TensorInfo['dtype'],
    shape: e.shape as number[],
    file,
    start: dataStart + begin,
    byteLength: end - begin,
  };
}

/**
 * The reference rule (huggingface/safetensors `Metadata::validate`): sorted by offsets, the tensors tile the
 * data section exactly. Overlaps would let two tensors alias each other's bytes; gaps and trailing bytes
 * are data no tensor accounts for, which a well-formed writer never produces.
 */
function checkContiguous(file: string, tensors: TensorInfo[], dataStart: number, dataBytes: number): void {
  const sorted = [...tensors].sort((a, b) => a.start - b.start || a.byteLength - b.byteLength);
  let at = 0;
  let prev: TensorInfo | null = null;
  const span = (t: TensorInfo) => `[${t.start - dataStart}, ${t.start - dataStart + t.byteLength}]`;
  for (const t of sorted) {
    const begin = t.start - dataStart;
    if (begin < at) {
      throw new ModelError(
        `${file}: tensor "${t.name}" data_offsets ${span(t)} overlap tensor "${prev!.name}" ${span(prev!)}; each ` +
          `byte of the data section must belong to one tensor`,
      );
    }
    if (begin > at) {
      const before = prev ? `tensor "${prev.name}" ends at ${at}` : 'the data section starts at 0';
      throw new ModelError(
        `${file}: tensor "${t.name}" data_offsets ${span(t)} leave a hole: ${before}; tensors must be contiguous`,
      );
    }
    at = begin + t.byteLength;
    prev = t;
  }
  if (at !== dataBytes) {
    throw new ModelError(
      `${file}: the tensors end at data offset ${at} but the data section holds ${dataBytes} bytes; expected the ` +
        `last tensor to end exactly at the end of the file (${dataBytes - at} trailing bytes)`,
    );
  }
}

function isJsonObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function jsonKind(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  if (typeof v === 'object') return 'an object';
  return `${typeof v} ${JSON.stringify(v)}`;
}

/** The JSON punctuation findDuplicateKey reads, as char codes. */
const CHAR = {
  quote: 0x22, // "
  backslash: 0x5c, // \
  openBrace: 0x7b, // {
  closeBrace: 0x7d, // }
  openBracket: 0x5b, // [
  closeBracket: 0x5d, // ]
  comma: 0x2c, // ,
} as const;

/**
 * The first key repeated within one object of `text` (already known to be valid JSON), with the top-level
 * key it sits under (null at the top level). A linear scan: strings are skipped whole, and only a string
 * right after `{` or after `,` inside an object is a key.
 */
export function findDuplicateKey(text: string): { key: string; parent: string | null } | null {
  // One Set per open object, null per open array.
  const stack: (Set<string> | null)[] = [];
  let expectKey = false;
  let topKey: string | null = null;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === CHAR.quote) {
      let j = i + 1;
      let escaped = false;
      for (let ch = text.charCodeAt(j); ch !== CHAR.quote; ch = text.charCodeAt(j)) {
        if (ch === CHAR.backslash) {
          escaped = true;
          j += 2;
        } else j += 1;
      }
      if (expectKey) {
        const key = escaped ? (JSON.parse(text.slice(i, j + 1)) as string) : text.slice(i + 1, j);
        const keys = stack[stack.length - 1]!;
        if (keys.has(key)) return { key, parent: stack.length === 1 ? null : topKey };
        keys.add(key);
        if (stack.length === 1) topKey = key;
        expectKey = false;
      }
      i = j;
    } else if (c === CHAR.openBrace) {
      stack.push(new Set());
      expectKey = true;
    } else if (c === CHAR.openBracket) {
      stack.push(null);
    } else if (c === CHAR.closeBrace || c === CHAR.closeBracket) {
      stack.pop();
      expectKey = false;
    } else if (c === CHAR.comma) {
      expectKey = stack[stack.length - 1] != null;
    }
  }
  return null;
}

function toFloat32(raw: Buffer, dtype: 'F32' | 'F16' | 'BF16'): Float32Array {
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

/**
 * Refuses weights read from tensor `name` of `file` that hold NaN or ±Inf: they would otherwise surface as NaN
 * scores and no error. The cache writers check every tensor they read (cache/decoder-weights.ts, vision-cache.ts).
 */
export function checkFiniteTensor(data: Float32Array, file: string, name: string): void {
  let bad = 0;
  for (let i = 0; i < data.length; i++) if (!Number.isFinite(data[i]!)) bad++;
  if (bad > 0)
    throw new ModelError(
      `${file}: tensor "${name}" holds ${bad} non-finite value${bad === 1 ? '' : 's'} ` +
        `(NaN or ±Inf) of ${data.length}; expected finite weights`,
    );
}

/** IEEE 754 binary16 → number (subnormals, infinities and NaN included). */
function halfToFloat(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const frac = h & 0x3ff;
  if (exp === 0) return sign * frac * 2 ** -24;
  if (exp === 0x1f) return frac ? NaN : sign * Infinity;
  return sign * (1 + frac / 1024) * 2 ** (exp - 15);
}

export interface WritableTensor {
  name: string;
  shape: number[];
  dtype: TensorInfo['dtype'];
  bytes: Uint8Array;
}

/**
 * Writes a safetensors file (8-byte header length, JSON header padded to 8 bytes, contiguous data) through
 * a temporary file `<file>.tmp-<pid>` renamed into place (util/atomic-write.ts), so a reader never sees a
 * half-written file.
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
  // A failed write (full disk, output is a folder) leaves nothing behind (its temporary file is removed).
  writeFileAtomic(
    file,
    (fd) => {
      const len = Buffer.alloc(8);
      len.writeBigUInt64LE(BigInt(Buffer.byteLength(json)));
      fs.writeSync(fd, len);
      fs.writeSync(fd, json);
      for (const t of tensors) fs.writeSync(fd, t.bytes);
    },
    { fsync: true },
  );
}

/** The `__metadata__` string map of a single safetensors file. */
export function readSafetensorsMetadata(file: string): Record<string, string> {
  const ckpt = SafetensorsCheckpoint.openFile(file);
  try {
    return ckpt.metadata;
  } finally {
    ckpt.close();
  }
}
