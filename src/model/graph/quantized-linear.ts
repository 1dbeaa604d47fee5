/**
 * The graph side of quantised linear layers: the ONNX nodes that multiply by quantised weights, and the names
 * of their initializers. Two kernels:
 *   - MatMulNBits (contrib domain com.microsoft): weights block-quantised in quant/layout.ts's layout (codes,
 *     scales, zero points per block of K), activations float (or int8 per block at accuracy level 4);
 *   - MatMulIntegerToFloat: the int8 'rowwise' W8A8 kernel, weights int8 per output channel
 *     (quant/round-to-nearest.ts quantizeRowwise), activations quantised per row at run time.
 * How a weight is quantised is quant/'s business (round-to-nearest.ts, gptq.ts, awq-gptq.ts); this file only
 * emits the nodes that read the result.
 */
import type { GraphBuilder } from './graph-builder.js';

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
