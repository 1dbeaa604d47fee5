/**
 * The embedding table of a cache entry, read row by row from its weights.bin (through the page cache, not held in
 * the heap): the decoder graph takes inputs_embeds, so the Decoder looks the ids' rows up here, float32 as stored
 * (or widened from fp16) or dequantised from their block-quantised codes (quant/layout.ts), where layout.json says
 * they lie.
 */
import fs from 'node:fs';
import path from 'node:path';
import { ModelError } from './errors.js';
import { DATA_FILE, LAYOUT_FILE, type Layout } from './cache/decoder-cache.js';
import { blobBytes, blocksPerRow, dequantizeRowInto, zeroPointBytesPerRow } from './quant/layout.js';
import { halfToFloat } from './quant/half.js';

/**
 * embed_tokens rows read on demand from weights.bin (through the page cache, not held in the heap), with a
 * small cache of recent rows: prompts repeat template tokens a lot.
 */
export class EmbeddingTable {
  private readonly fd: number;
  private readonly cache = new Map<number, Float32Array>();
  private static readonly CACHE_ROWS = 4096;

  constructor(
    file: string,
    private readonly layout: Layout['embed'],
  ) {
    this.fd = fs.openSync(file, 'r');
  }

  /**
   * Copies the row of token `id` into `out` at `at`, times `scale` when given (Gemma's √D): one float32
   * product per value, as transformers' float32 multiply (a product of two float32 is exact in a double).
   */
  row(id: number, out: Float32Array, at: number, scale: number | null = null): void {
    let values = this.cache.get(id);
    if (!values) {
      values = this.read(id);
      if (this.cache.size >= EmbeddingTable.CACHE_ROWS) this.cache.delete(this.cache.keys().next().value!);
      this.cache.set(id, values);
    }
    if (scale === null) out.set(values, at);
    else for (let i = 0; i < values.length; i++) out[at + i] = values[i]! * scale;
  }

  /** Row `id` as float32: read as is (or widened from fp16), or its codes, scales and zero points dequantised. */
  private read(id: number): Float32Array {
    const { cols, quant } = this.layout;
    const row = new Float32Array(cols);
    if (this.layout.dtype === 'fp16') {
      const half = new Uint16Array(cols);
      this.readAt(new Uint8Array(half.buffer), this.layout.offset + id * half.byteLength, id);
      for (let i = 0; i < cols; i++) row[i] = halfToFloat(half[i]!);
      return row;
    }
    if (!quant) {
      this.readAt(new Uint8Array(row.buffer), this.layout.offset + id * row.byteLength, id);
      return row;
    }
    const nb = blocksPerRow(cols, quant.blockSize);
    const codes = new Uint8Array(nb * blobBytes(quant.bits, quant.blockSize));
    const scales = new Float32Array(nb);
    const zeroPoints = new Uint8Array(zeroPointBytesPerRow(nb, quant.bits));
    this.readAt(codes, this.layout.offset + id * codes.length, id);
    this.readAt(new Uint8Array(scales.buffer), quant.scalesOffset + id * scales.byteLength, id);
    this.readAt(zeroPoints, quant.zeroPointsOffset + id * zeroPoints.length, id);
    return dequantizeRowInto(
      { cols, bits: quant.bits, blockSize: quant.blockSize },
      { codes, scales, zeroPoints },
      row,
    );
  }

  private readAt(bytes: Uint8Array, position: number, id: number): void {
    const n = fs.readSync(this.fd, bytes, 0, bytes.length, position);
    if (n !== bytes.length)
      throw new ModelError(`embedding row ${id}: short read from the cached weights (rebuild the cache entry)`);
  }

  close(): void {
    fs.closeSync(this.fd);
  }
}

/** The embedding table of the cache entry (or written model folder) `entryDir`. */
export function openEmbeddings(entryDir: string): EmbeddingTable {
  const layout = JSON.parse(fs.readFileSync(path.join(entryDir, LAYOUT_FILE), 'utf8')) as Layout;
  return new EmbeddingTable(path.join(entryDir, DATA_FILE), layout.embed);
}
