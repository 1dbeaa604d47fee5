/**
 * Building blocks of the decoder graph (decoder-graph.ts, causal-attention.ts), over one GraphBuilder and the
 * spec's weights: constants, RMSNorm, linear layers over float or quantised weights, the MLP's gate activation,
 * Gemma's soft-capping and last-position slices. (vision-ops.ts is the towers' counterpart.)
 */
import type { GraphBuilder } from './graph-builder.js';
import {
  emitMatMulNBits,
  emitRowwiseLinear,
  type QuantizedWeightRef,
  type RowwiseWeightRef,
} from './quantized-linear.js';
import type { ModelSpec } from '../families/types.js';

export const INT64_MAX = Number.MAX_SAFE_INTEGER;

/**
 * Which weights are stored quantised (int8/int4, graph/quantized-linear.ts): `ref` registers a linear
 * weight's quantised initializers and returns them (block-quantised for MatMulNBits, or row-wise int8 for
 * MatMulIntegerToFloat: `kind: 'rowwise'`), or null when that weight is float32.
 */
export interface QuantizedWeights {
  ref: (g: GraphBuilder, name: string) => QuantizedWeightRef | RowwiseWeightRef | null;
  accuracyLevel: number;
  /** Whether float weight `name` is stored fp16 (`--dtype fp16`: linear layers, embedding and head). */
  half?: (name: string) => boolean;
}

export interface DecoderOps {
  readonly g: GraphBuilder;
  readonly spec: ModelSpec;
  /** An int64 constant (shapes, axes, indices), shape [values.length]. */
  i64(values: number[]): string;
  /** A float32 scalar constant. */
  f32(value: number): string;
  /** The initializer of graph weight `name` (decoder-graph.ts W), registered once. */
  w(name: string): string;
  /** RMSNorm over the last axis, in the Pow/ReduceMean/Add/Sqrt/Div/Mul form that onnxruntime fuses. */
  rmsNorm(x: string, weightName: string, name: string): string;
  /**
   * x [.., K] · W → [.., N]: MatMul over a [K, N] float weight, MatMulNBits over a block-quantised [N, K] one, or
   * a row-wise W8A8 MatMulIntegerToFloat over an int8 [K, N] one.
   */
  matmul(x: string, weightName: string, out?: string): string;
  /** Whether `weightName` is stored quantised (asking registers its quantised initializers, as matmul does). */
  isQuantized(weightName: string): boolean;
  /** Whether float weight `weightName` is stored fp16: multiplied in fp16, between casts from and to float32. */
  isHalf(weightName: string): boolean;
  /** x cast to fp16 (to = 10) or back to float32 (to = 1). */
  cast(x: string, to: 'fp16' | 'fp32', name?: string): string;
  /** matmul, plus the bias when there is one; the result is named `name`. */
  linear(x: string, weightName: string, biasName: string | null, name: string): string;
  /** The MLP's gate activation: silu (SwiGLU), or gelu exact / tanh-approximated (GeGLU, gelu_pytorch_tanh). */
  activation(x: string): string;
  /** tanh(x / c) · c, Gemma 2's soft-capping of attention scores and final logits. */
  softcap(x: string, cap: number, name?: string): string;
  /** x [B, S, ..] → [B, 1, ..], the last position. */
  lastPosition(x: string): string;
  /** x [B, S, ..] → [B, S−1, ..], every position but the last. */
  allButLast(x: string): string;
}

/** The decoder's building blocks; `weight(g, name)` registers graph weight `name` and returns its initializer. */
export function decoderOps(
  g: GraphBuilder,
  spec: ModelSpec,
  weight: (g: GraphBuilder, name: string) => string,
  quantized?: QuantizedWeights,
): DecoderOps {
  const i64 = (v: number[]) => g.intConst(v);
  const f32 = (v: number) => g.floatConst([v], []);
  const w = (name: string) => weight(g, name);
  const cast = (x: string, to: 'fp16' | 'fp32', name?: string) =>
    g.op('Cast', [x], { to: to === 'fp16' ? 10 : 1 }, name);
  const isHalf = (weightName: string) => quantized?.half?.(weightName) ?? false;
  const matmul = (x: string, weightName: string, out?: string) => {
    // fp16 weights: the product runs in fp16 (the GPU's fast path); its input and output stay float32, so the
    // norms, the attention softmax and the residual stream around it keep float32's range and precision.
    if (isHalf(weightName)) return cast(g.op('MatMul', [cast(x, 'fp16'), w(weightName)]), 'fp32', out);
    const q = quantized?.ref(g, weightName);
    if (!q) return g.op('MatMul', [x, w(weightName)], {}, out);
    return 'kind' in q ? emitRowwiseLinear(g, x, q, out) : emitMatMulNBits(g, x, q, quantized!.accuracyLevel, out);
  };
  return {
    g,
    spec,
    i64,
    f32,
    w,
    rmsNorm(x, weightName, name) {
      const variance = g.op('ReduceMean', [g.op('Pow', [x, f32(2)]), i64([-1])], { keepdims: 1 });
      const normed = g.op('Div', [x, g.op('Sqrt', [g.op('Add', [variance, f32(spec.rmsNormEps)])])]);
      return g.op('Mul', [normed, w(weightName)], {}, name);
    },
    matmul,
    isQuantized: (weightName) => Boolean(quantized?.ref(g, weightName)),
    isHalf,
    cast,
    linear(x, weightName, biasName, name) {
      const y = matmul(x, weightName, biasName ? undefined : name);
      return biasName ? g.op('Add', [y, w(biasName)], {}, name) : y;
    },
    activation(x) {
      if (spec.activation === 'silu') return g.op('Mul', [x, g.op('Sigmoid', [x])]);
      const halfX = g.op('Mul', [x, f32(0.5)]);
      if (spec.activation === 'gelu')
        return g.op('Mul', [halfX, g.op('Add', [f32(1), g.op('Erf', [g.op('Mul', [x, f32(Math.SQRT1_2)])])])]);
      // x + 0.044715x³
      const cubic = g.op('Add', [x, g.op('Mul', [g.op('Mul', [g.op('Mul', [x, x]), x]), f32(0.044715)])]);
      return g.op('Mul', [
        halfX,
        g.op('Add', [f32(1), g.op('Tanh', [g.op('Mul', [cubic, f32(Math.sqrt(2 / Math.PI))])])]),
      ]);
    },
    softcap(x, cap, name) {
      return g.op('Mul', [g.op('Tanh', [g.op('Div', [x, f32(cap)])]), f32(cap)], {}, name);
    },
    lastPosition(x) {
      return g.op('Slice', [x, i64([-1]), i64([INT64_MAX]), i64([1])]);
    },
    allButLast(x) {
      return g.op('Slice', [x, i64([0]), i64([-1]), i64([1])]);
    },
  };
}
