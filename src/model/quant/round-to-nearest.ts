/**
 * Round-to-nearest quantisation: where a float weight becomes int8 or int4 codes. Every weight a quantised cache
 * entry stores is quantised here, except the main 4-bit linear layers of a GPTQ format (gptq.ts places those,
 * on blockGrid's grids) and the layers a pre-quantised AWQ/GPTQ checkpoint brings (awq-gptq.ts repacks their
 * codes as they are). The cache writer (cache/decoder-cache.ts) quantises weight by weight as the format says
 * (weight-format.ts), on quantize-pool.ts's threads for big models. Two forms:
 *   - block-wise (quantizeMatrix): asymmetric min/max per block of K into layout.ts's MatMulNBits layout, with a
 *     small clip search at 4 bits; the embedding table, the head and the linear layers of int8 and int4 formats;
 *   - row-wise (quantizeRowwise): symmetric int8 per output channel, for the linear layers of the W8A8 'rowwise'
 *     int8 kernel (graph/quantized-linear.ts emitRowwiseLinear).
 */
import { allocQuantized, blobBytes, blocksPerRow, putPacked, zeroPointBytesPerRow } from './layout.js';
import type { QuantizedMatrix, QuantOptions } from './layout.js';

/** Joins the cache key of quantised entries: bump it when quantizeMatrix's choices change. */
export const QUANTIZER_VERSION = 'minmax-clip/1';

/**
 * Asymmetric min/max quantisation of W [N, K] (row-major, HF layout) per block of K. The block's range is
 * widened to include 0, so zeros (and the zero point) decode exactly; an all-zero block gets scale 1. At 4
 * bits the range may be narrowed (CLIP_SHRINKS) where that lowers the block's squared error.
 */
export function quantizeMatrix(
  w: Float32Array,
  rows: number,
  cols: number,
  opts: Pick<QuantOptions, 'bits' | 'blockSize'>,
): QuantizedMatrix {
  const q = allocQuantized(rows, cols, opts.bits, opts.blockSize);
  quantizeRowsInto(w, q, 0, rows);
  return q;
}

/**
 * Rows [rowStart, rowEnd) of W into `q` (allocated for all of W, bits and block size set). Rows touch disjoint
 * bytes of every array, so row ranges can be quantised concurrently (quantize-pool.ts).
 */
export function quantizeRowsInto(w: Float32Array, q: QuantizedMatrix, rowStart: number, rowEnd: number): void {
  const { bits, blockSize, cols } = q;
  const nb = blocksPerRow(cols, blockSize);
  const blob = blobBytes(bits, blockSize);
  const zpRow = zeroPointBytesPerRow(nb, bits);
  for (let n = rowStart; n < rowEnd; n++) {
    const row = n * cols;
    for (let b = 0; b < nb; b++) {
      const k0 = b * blockSize;
      const k1 = Math.min(cols, k0 + blockSize);
      const grid = blockGrid(w, row + k0, row + k1, bits);
      q.scales[n * nb + b] = grid.scale;
      putPacked(q.zeroPoints, n * zpRow, b, bits, grid.zero);
      writeCodes(w, row + k0, row + k1, grid, q, (n * nb + b) * blob);
      // Padding past K keeps code 0; MatMulNBits never reads it into a sum (K bounds the product).
    }
  }
}

const CLIP_SHRINKS = [0.95, 0.9, 0.85, 0.8];

/** A block's grid: W ≈ (code − zero) · scale. */
interface BlockGrid {
  scale: number;
  zero: number;
}

/**
 * The scale and zero point of the block w[from, to): its min/max range widened to include 0 (so zeros, and
 * the zero point, decode exactly; an all-zero block gets scale 1), and at 4 bits narrowed (CLIP_SHRINKS) where
 * that lowers the block's squared error. Shared by round-to-nearest (quantizeRowsInto) and GPTQ (gptq.ts).
 */
export function blockGrid(w: Float32Array, from: number, to: number, bits: 4 | 8): BlockGrid {
  const qmax = (1 << bits) - 1;
  let lo = 0;
  let hi = 0;
  for (let k = from; k < to; k++) {
    const v = w[k]!;
    if (v < lo) lo = v;
    if (v > hi) hi = v;
  }
  // 16 levels: clipping the block's extremes a little often lowers the squared error of the rest
  // more than it costs the outliers, so try a few narrower ranges and keep the best.
  if (bits === 4 && hi > lo) return bestClip(w, from, to, lo, hi, qmax);
  const scale = Math.fround(hi > lo ? (hi - lo) / qmax : 1);
  return { scale, zero: clampCode(Math.round(-lo / scale), qmax) };
}

/** The code of v on a block's grid: round(v / scale) + zero, clamped to [0, 2^bits − 1]. */
export const quantCode = (v: number, scale: number, zero: number, qmax: number) =>
  clampCode(Math.round(v / scale) + zero, qmax);

const clampCode = (c: number, qmax: number) => (c < 0 ? 0 : c > qmax ? qmax : c);

/**
 * The block's range [lo, hi] (lo < hi) and its CLIP_SHRINKS narrowings, each scored by its squared error
 * Σ (w − dequant(quant(w)))² over w[from, to): all five in one pass over the block (the int4 build's hot loop: a
 * 7B model has ~6.5 B int4 weights). Errors add in index order and ties keep the earlier candidate, as a pass per
 * candidate would.
 */
function bestClip(w: Float32Array, from: number, to: number, lo: number, hi: number, qmax: number): BlockGrid {
  const range = hi - lo;
  const s0 = Math.fround(range / qmax),
    z0 = clampCode(Math.round(-lo / s0), qmax);
  const s1 = Math.fround((range * CLIP_SHRINKS[0]!) / qmax),
    z1 = clampCode(Math.round((-lo * CLIP_SHRINKS[0]!) / s1), qmax);
  const s2 = Math.fround((range * CLIP_SHRINKS[1]!) / qmax),
    z2 = clampCode(Math.round((-lo * CLIP_SHRINKS[1]!) / s2), qmax);
  const s3 = Math.fround((range * CLIP_SHRINKS[2]!) / qmax),
    z3 = clampCode(Math.round((-lo * CLIP_SHRINKS[2]!) / s3), qmax);
  const s4 = Math.fround((range * CLIP_SHRINKS[3]!) / qmax),
    z4 = clampCode(Math.round((-lo * CLIP_SHRINKS[3]!) / s4), qmax);
  let e0 = 0,
    e1 = 0,
    e2 = 0,
    e3 = 0,
    e4 = 0;
  for (let i = from; i < to; i++) {
    const v = w[i]!;
    let d = (clampCode(Math.round(v / s0) + z0, qmax) - z0) * s0 - v;
    e0 += d * d;
    d = (clampCode(Math.round(v / s1) + z1, qmax) - z1) * s1 - v;
    e1 += d * d;
    d = (clampCode(Math.round(v / s2) + z2, qmax) - z2) * s2 - v;
    e2 += d * d;
    d = (clampCode(Math.round(v / s3) + z3, qmax) - z3) * s3 - v;
    e3 += d * d;
    d = (clampCode(Math.round(v / s4) + z4, qmax) - z4) * s4 - v;
    e4 += d * d;
  }
  let scale = s0,
    zero = z0,
    best = e0;
  if (e1 < best) {
    best = e1;
    scale = s1;
    zero = z1;
  }
  if (e2 < best) {
    best = e2;
    scale = s2;
    zero = z2;
  }
  if (e3 < best) {
    best = e3;
    scale = s3;
    zero = z3;
  }
  if (e4 < best) {
    scale = s4;
    zero = z4;
  }
  return { scale, zero };
}

/** The codes of w[from, to) on one block's grid, packed low bits first into `q.codes` from byte `at`. */
function writeCodes(w: Float32Array, from: number, to: number, grid: BlockGrid, q: QuantizedMatrix, at: number): void {
  const { scale, zero } = grid;
  const { bits, codes } = q;
  const qmax = (1 << bits) - 1;
  if (bits === 8) {
    for (let i = from; i < to; i++) codes[at + i - from] = clampCode(Math.round(w[i]! / scale) + zero, qmax);
    return;
  }
  for (let i = from; i < to; i += 2) {
    const low = clampCode(Math.round(w[i]! / scale) + zero, qmax);
    const high = i + 1 < to ? clampCode(Math.round(w[i + 1]! / scale) + zero, qmax) : 0;
    codes[at + ((i - from) >> 1)] = low | (high << 4);
  }
}

/**
 * Row-wise W8A8 ("rowwise" int8 kernel): W [N, K] stored int8 per output channel, symmetric, transposed to
 * MatMulInteger's [K, N]:
 *   codes   int8 [K, N]   codes[k, n] = round(W[n, k] / scales[n]) ∈ [−127, 127]
 *   scales  f32  [N]      max_k |W[n, k]| / 127 (1 for an all-zero channel)
 * Rows (channels) are independent, so fused matrices (q|k|v, gate|up) are quantised as one.
 */
export interface RowwiseMatrix {
  rows: number;
  cols: number;
  codes: Int8Array;
  scales: Float32Array;
}

export function quantizeRowwise(w: Float32Array, rows: number, cols: number): RowwiseMatrix {
  const codes = new Int8Array(rows * cols);
  const scales = new Float32Array(rows);
  for (let n = 0; n < rows; n++) {
    const row = n * cols;
    let m = 0;
    for (let k = 0; k < cols; k++) m = Math.max(m, Math.abs(w[row + k]!));
    const s = Math.fround(m > 0 ? m / 127 : 1);
    scales[n] = s;
    for (let k = 0; k < cols; k++) codes[k * rows + n] = Math.max(-127, Math.min(127, Math.round(w[row + k]! / s)));
  }
  return { rows, cols, codes, scales };
}

/** W back to float32 in HF layout [N, K] (tests and references only). */
export function dequantizeRowwise(q: RowwiseMatrix): Float32Array {
  const out = new Float32Array(q.rows * q.cols);
  for (let n = 0; n < q.rows; n++)
    for (let k = 0; k < q.cols; k++) out[n * q.cols + k] = q.codes[k * q.rows + n]! * q.scales[n]!;
  return out;
}
