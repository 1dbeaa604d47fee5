/**
 * Block-wise weight-only quantisation in onnxruntime's MatMulNBits layout (contrib domain com.microsoft),
 * shared by conversion-time quantisation (F32/F16/BF16 → int8/int4) and pre-quantised checkpoints (AWQ/GPTQ).
 *
 * A matrix W [N, K] (HF Linear layout: N outputs, K inputs; MatMulNBits computes Y = X · Wᵀ) is cut along K
 * into blocks of `blockSize`; each block of each row has a float scale and an unsigned zero point, and
 * W[n, k] ≈ (code[n, k] − zero[n, k / blockSize]) · scale[n, k / blockSize]. Arrays:
 *   codes       uint8 [N, nBlocks, blockSize·bits/8]  codes packed low bits first along K (4-bit: k even in
 *                                                   the low nibble); the last block padded with code 0
 *   scales      f32   [N, nBlocks]
 *   zeroPoints  uint8 [N, ceil(nBlocks·bits/8)]        packed like the codes (4-bit: two blocks a byte)
 * Rows are independent, so matrices fused along N (q|k|v, gate|up) are their parts' arrays concatenated.
 */
import type { GraphBuilder } from './graph-builder.js';

export type WeightDType = 'fp32' | 'int8' | 'int4';
/**
 * How int8 linear layers multiply: 'blockwise' = MatMulNBits (8-bit weights in blocks along K with zero
 * points; at accuracy level 4 the activations are rounded to int8 per block); 'rowwise' = W8A8 through
 * MatMulIntegerToFloat (weights int8 per output channel, activations int8 per row, quantised at run time), see
 * emitRowwiseLinear.
 */
export type Int8Kernel = 'rowwise' | 'blockwise';
export const INT8_KERNELS: readonly Int8Kernel[] = ['rowwise', 'blockwise'];
/** Joins the cache key of quantised entries: bump it when quantizeMatrix's choices change. */
export const QUANTIZER_VERSION = 'minmax-clip/1';
export const WEIGHT_DTYPES: readonly WeightDType[] = ['fp32', 'int8', 'int4'];
export const DTYPE_BITS: Readonly<Record<Exclude<WeightDType, 'fp32'>, 4 | 8>> = { int8: 8, int4: 4 };

/** How linear layers are stored: `bits` per weight, one scale and zero point per `blockSize` inputs. */
export interface QuantOptions {
  bits: 4 | 8;
  /** A power of two ≥ 16 (MatMulNBits' rule). */
  blockSize: number;
  /**
   * MatMulNBits `accuracy_level`: 0/1 = dequantise to fp32 and multiply in fp32; 4 = quantise the
   * activations per block to int8 and multiply in int8 (VNNI/AMX where the CPU has them). onnxruntime falls
   * back to fp32 compute where the requested level has no kernel.
   */
  accuracyLevel: 0 | 1 | 2 | 3 | 4;
}

export interface QuantizedMatrix {
  rows: number; // N
  cols: number; // K
  bits: 4 | 8;
  blockSize: number;
  codes: Uint8Array; // [N, nBlocks, blockSize·bits/8]
  scales: Float32Array; // [N, nBlocks]
  zeroPoints: Uint8Array; // [N, ceil(nBlocks·bits/8)]
}

export function checkBlockSize(blockSize: number, what = 'block size'): void {
  if (!Number.isInteger(blockSize) || blockSize < 16 || (blockSize & (blockSize - 1)) !== 0) {
    throw new Error(`${what} must be a power of two ≥ 16 (onnxruntime MatMulNBits), got ${blockSize}`);
  }
}

export const blocksPerRow = (cols: number, blockSize: number) => Math.ceil(cols / blockSize);
export const blobBytes = (bits: number, blockSize: number) => (blockSize * bits) / 8;
export const zeroPointBytesPerRow = (nBlocks: number, bits: number) => Math.ceil((nBlocks * bits) / 8);

/** An empty matrix of the layout's sizes, for writers that fill it in (AWQ/GPTQ repacking, tests). */
export function allocQuantized(rows: number, cols: number, bits: 4 | 8, blockSize: number): QuantizedMatrix {
  checkBlockSize(blockSize);
  const nb = blocksPerRow(cols, blockSize);
  return {
    rows,
    cols,
    bits,
    blockSize,
    codes: new Uint8Array(rows * nb * blobBytes(bits, blockSize)),
    scales: new Float32Array(rows * nb),
    zeroPoints: new Uint8Array(rows * zeroPointBytesPerRow(nb, bits)),
  };
}

/** Writes `value` (< 2^bits) as element `index` of a low-bits-first packed byte array. */
export function putPacked(bytes: Uint8Array, at: number, index: number, bits: 4 | 8, value: number): void {
  if (bits === 8) {
    bytes[at + index] = value;
    return;
  }
  const i = at + (index >> 1);
  bytes[i] = index & 1 ? (bytes[i]! & 0x0f) | (value << 4) : (bytes[i]! & 0xf0) | value;
}

export function getPacked(bytes: Uint8Array, at: number, index: number, bits: 4 | 8): number {
  if (bits === 8) return bytes[at + index]!;
  const b = bytes[at + (index >> 1)]!;
  return index & 1 ? b >> 4 : b & 0x0f;
}

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
  const qmax = (1 << bits) - 1;
  for (let n = rowStart; n < rowEnd; n++) {
    const row = n * cols;
    for (let b = 0; b < nb; b++) {
      const k0 = b * blockSize;
      const k1 = Math.min(cols, k0 + blockSize);
      const { scale: scaleF, zero } = blockGrid(w, row + k0, row + k1, bits);
      q.scales[n * nb + b] = scaleF;
      putPacked(q.zeroPoints, n * zpRow, b, bits, zero);
      writeCodes(w, row + k0, row + k1, scaleF, zero, qmax, bits, q.codes, (n * nb + b) * blob);
      // Padding past K keeps code 0; MatMulNBits never reads it into a sum (K bounds the product).
    }
  }
}

const CLIP_SHRINKS = [0.95, 0.9, 0.85, 0.8];

/**
 * The scale and zero point of the block w[from, to): its min/max range widened to include 0 (so zeros, and
 * the zero point, decode exactly; an all-zero block gets scale 1), and at 4 bits narrowed (CLIP_SHRINKS) where
 * that lowers the block's squared error. Shared by round-to-nearest (quantizeRowsInto) and GPTQ (gptq.ts).
 */
export function blockGrid(w: Float32Array, from: number, to: number, bits: 4 | 8): { scale: number; zero: number } {
  const qmax = (1 << bits) - 1;
  let lo = 0;
  let hi = 0;
  for (let k = from; k < to; k++) {
    const v = w[k]!;
    if (v < lo) lo = v;
    if (v > hi) hi = v;
  }
  const scale = Math.fround(hi > lo ? (hi - lo) / qmax : 1);
  const zero = clampCode(Math.round(-lo / scale), qmax);
  // 16 levels: clipping the block's extremes a little often lowers the squared error of the rest
  // more than it costs the outliers, so try a few narrower ranges and keep the best.
  if (bits === 4 && hi > lo) return bestClip(w, from, to, lo, hi, scale, zero, qmax);
  return { scale, zero };
}

/** The code of v on a block's grid: round(v / scale) + zero, clamped to [0, 2^bits − 1]. */
export const quantCode = (v: number, scale: number, zero: number, qmax: number) =>
  clampCode(Math.round(v / scale) + zero, qmax);

const clampCode = (c: number, qmax: number) => (c < 0 ? 0 : c > qmax ? qmax : c);

/**
 * The block's range and its CLIP_SHRINKS narrowings, each scored by its squared error Σ (w − dequant(quant(w)))²
 * over w[from, to): all five in one pass over the block (the int4 build's hot loop: a 7B model has ~6.5 B int4
 * weights). Errors add in index order and ties keep the earlier candidate, as a pass per candidate would.
 */
function bestClip(
  w: Float32Array,
  from: number,
  to: number,
  lo: number,
  hi: number,
  s0: number,
  z0: number,
  qmax: number,
): { scale: number; zero: number } {
  const range = hi - lo;
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

/** The codes of w[from, to) at one scale and zero point, packed low bits first from byte `at`. */
function writeCodes(
  w: Float32Array,
  from: number,
  to: number,
  scale: number,
  zero: number,
  qmax: number,
  bits: 4 | 8,
  codes: Uint8Array,
  at: number,
): void {
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

/** Row `n` of the matrix back to float32 (embedding lookups; tests). */
export function dequantizeRow(
  q: QuantizedMatrix,
  n: number,
  out: Float32Array = new Float32Array(q.cols),
  at = 0,
): Float32Array {
  const nb = blocksPerRow(q.cols, q.blockSize);
  return dequantizeRowFrom(
    q.codes,
    n * nb * blobBytes(q.bits, q.blockSize),
    q.scales,
    n * nb,
    q.zeroPoints,
    n * zeroPointBytesPerRow(nb, q.bits),
    q.cols,
    q.bits,
    q.blockSize,
    out,
    at,
  );
}

/**
 * One row from its parts: `codes` at byte `codesAt`, its nBlocks scales from `scales[scalesAt]`, its packed
 * zero points at byte `zerosAt`. Written into `out` at `at`.
 */
export function dequantizeRowFrom(
  codes: Uint8Array,
  codesAt: number,
  scales: Float32Array,
  scalesAt: number,
  zeroPoints: Uint8Array,
  zerosAt: number,
  cols: number,
  bits: 4 | 8,
  blockSize: number,
  out: Float32Array,
  at: number,
): Float32Array {
  const blob = blobBytes(bits, blockSize);
  for (let k = 0; k < cols; k++) {
    const b = Math.floor(k / blockSize);
    const code = getPacked(codes, codesAt + b * blob, k - b * blockSize, bits);
    out[at + k] = (code - getPacked(zeroPoints, zerosAt, b, bits)) * scales[scalesAt + b]!;
  }
  return out;
}

/** The whole matrix back to float32 [N, K] (tests and references only: this is the size quantisation saves). */
export function dequantizeMatrix(q: QuantizedMatrix): Float32Array {
  const out = new Float32Array(q.rows * q.cols);
  for (let n = 0; n < q.rows; n++) dequantizeRow(q, n, out, n * q.cols);
  return out;
}

/** Concatenates matrices along N (fused projections); they must share K, bits and block size. */
export function concatRows(parts: QuantizedMatrix[]): QuantizedMatrix {
  const first = parts[0]!;
  for (const p of parts) {
    if (p.cols !== first.cols || p.bits !== first.bits || p.blockSize !== first.blockSize) {
      throw new Error(
        `cannot fuse quantised matrices of different layouts (K ${p.cols}/${first.cols}, bits ${p.bits}/${first.bits}, block ${p.blockSize}/${first.blockSize})`,
      );
    }
  }
  if (parts.length === 1) return first;
  const cat = <T extends Uint8Array | Float32Array>(arrays: T[], make: (n: number) => T): T => {
    const out = make(arrays.reduce((n, a) => n + a.length, 0));
    let at = 0;
    for (const a of arrays) {
      out.set(a as never, at);
      at += a.length;
    }
    return out;
  };
  return {
    rows: parts.reduce((n, p) => n + p.rows, 0),
    cols: first.cols,
    bits: first.bits,
    blockSize: first.blockSize,
    codes: cat(
      parts.map((p) => p.codes),
      (n) => new Uint8Array(n),
    ),
    scales: cat(
      parts.map((p) => p.scales),
      (n) => new Float32Array(n),
    ),
    zeroPoints: cat(
      parts.map((p) => p.zeroPoints),
      (n) => new Uint8Array(n),
    ),
  };
}

/** Rows [start, end) of a matrix, as views (the head's row blocks). */
export function sliceRows(q: QuantizedMatrix, start: number, end: number): QuantizedMatrix {
  const nb = blocksPerRow(q.cols, q.blockSize);
  const blob = blobBytes(q.bits, q.blockSize);
  const zp = zeroPointBytesPerRow(nb, q.bits);
  return {
    rows: end - start,
    cols: q.cols,
    bits: q.bits,
    blockSize: q.blockSize,
    codes: q.codes.subarray(start * nb * blob, end * nb * blob),
    scales: q.scales.subarray(start * nb, end * nb),
    zeroPoints: q.zeroPoints.subarray(start * zp, end * zp),
  };
}

/** Graph-side names of a quantised matrix's three initializers, given the matrix's weight name. */
export const quantNames = (name: string) => ({
  codes: `${name}.q`,
  scales: `${name}.scales`,
  zeroPoints: `${name}.zp`,
});

/** What the graph needs to emit a MatMulNBits for one weight: its initializers (registered) and attributes. */
export interface QuantizedWeightRef {
  codes: string;
  scales: string;
  zeroPoints: string;
  rows: number;
  cols: number;
  bits: 4 | 8;
  blockSize: number;
}

/** Y [.., N] = X [.., K] · dequant(W)ᵀ. */
export function emitMatMulNBits(
  g: GraphBuilder,
  x: string,
  w: QuantizedWeightRef,
  accuracyLevel: number,
  out?: string,
): string {
  return g.contribOp(
    'MatMulNBits',
    [x, w.codes, w.scales, w.zeroPoints],
    {
      K: w.cols,
      N: w.rows,
      bits: w.bits,
      block_size: w.blockSize,
      accuracy_level: accuracyLevel,
    },
    out,
  );
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

/** Graph-side names of a row-wise matrix's two initializers. */
export const rowwiseNames = (name: string) => ({ codes: `${name}.q8`, scales: `${name}.wscale` });

/** What the graph needs to emit a row-wise W8A8 linear: its initializers (registered) and sizes. */
export interface RowwiseWeightRef {
  kind: 'rowwise';
  codes: string;
  scales: string;
  rows: number;
  cols: number;
}

/**
 * Y [.., N] = X [.., K] · Wᵀ with int8 × int8 products summed in int32 (onnxruntime's MatMulIntegerToFloat,
 * com.microsoft: MatMulInteger with the int32 → float scaling fused; MLAS runs u8 × s8 with AVX-512 VNNI /
 * AVX2 where the CPU has them):
 *   s   = max(max_k |X[.., k]|, tiny) / 127        per row of X (each position of each batch row on its own)
 *   Xq  = QuantizeLinear(X / s, 1, 128)           uint8: round-half-even(X / s) + 128 ∈ [1, 255]
 *   Y   = MatMulIntegerToFloat(Xq, codes, a_scale 1, b_scale scales, a_zero_point 128) · s
 * The activations are unsigned with zero point 128 because MLAS has a fast kernel for u8 × s8, not s8 × s8.
 * Per-row rounding is coarser than MatMulNBits' per-block rounding at accuracy level 4 (one scale per K
 * inputs, not per 128): a row with a few large outlier channels rounds its other inputs coarsely.
 */
export function emitRowwiseLinear(g: GraphBuilder, x: string, w: RowwiseWeightRef, out?: string): string {
  const amax = g.op('ReduceMax', [g.op('Abs', [x]), g.intConst([-1])], { keepdims: 1 }); // [.., 1]
  const s = g.op('Div', [g.op('Max', [amax, g.floatConst([1e-30], [])]), g.floatConst([127], [])]);
  const zp = g.uint8Const([128], []);
  const one = g.floatConst([1], []);
  const xq = g.op('QuantizeLinear', [g.op('Div', [x, s]), one, zp]); // uint8 [.., K]
  const y = g.contribOp('MatMulIntegerToFloat', [xq, w.codes, one, w.scales, zp]); // f32 [.., N]
  return g.op('Mul', [y, s], {}, out);
}
