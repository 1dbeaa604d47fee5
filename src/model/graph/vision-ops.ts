/**
 * Building blocks shared by the vision-tower graphs (vision-qwen.ts, vision-siglip.ts): linear layers over
 * MatMul-ready weights, LayerNorm/RMSNorm, the towers' activations, and bidirectional multi-head attention.
 * Standard opset-18 operators, except fused attention: onnxruntime's com.microsoft MultiHeadAttention.
 */
import type { GraphBuilder } from './graph-builder.js';
import type { VisionActivation } from '../families/types.js';

export const INT64_MAX = Number.MAX_SAFE_INTEGER;

export interface VisionOps {
  readonly g: GraphBuilder;
  i64(values: number[]): string;
  f32(value: number): string;
  /** The initializer of graph weight `name` (registered once). */
  w(name: string): string;
  /** x [.., K] · W [K, N] (+ b [N]). */
  linear(x: string, weight: string, bias: string | null, out?: string): string;
  /** ONNX LayerNormalization over the last axis (bias optional). */
  layerNorm(x: string, weight: string, bias: string | null, eps: number, out?: string): string;
  /** x / √(mean(x²) + eps) · w over the last axis (Qwen2RMSNorm, in the form onnxruntime fuses). */
  rmsNorm(x: string, weight: string, eps: number, out?: string): string;
  act(x: string, kind: VisionActivation, out?: string): string;
  /**
   * softmax(q·kᵀ·scale + bias)·v: q [B, h, n, d], k and v [B, h, m, d], bias broadcast to [B, h, n, m] or
   * null. Returns [B, h, n, d].
   */
  attention(q: string, k: string, v: string, scale: number, bias: string | null, patternName?: string): string;
  /**
   * The same softmax(q·kᵀ·scale)·v without a mask, fused: q, k, v [B, n, h·d] with the heads side by side (as a
   * projection writes them) → [B, n, h·d] (also heads side by side: the output-projection input). It is
   * onnxruntime's com.microsoft MultiHeadAttention, whose CPU kernel, given no mask, bias or past, runs MLAS
   * flash attention: per thread, a tile of at most 2d query rows against key blocks sized to the L2 cache, with
   * a running softmax, so the [B, h, n, n] scores never exist and memory stays O(B·n·h·d) whatever n. (Where
   * onnxruntime reads an L2 size of 0, or ORT_DISABLE_FLASH_ATTENTION=1, the kernel falls back to whole score
   * tensors: the same result, the old memory.) No pattern site: the probabilities are never materialised.
   */
  fusedAttention(q: string, k: string, v: string, heads: number, scale: number, out?: string): string;
}

export function visionOps(g: GraphBuilder, weight: (g: GraphBuilder, name: string) => string): VisionOps {
  const i64 = (v: number[]) => g.intConst(v);
  const f32 = (v: number) => g.floatConst([v], []);
  const w = (name: string) => weight(g, name);
  const ops: VisionOps = {
    g,
    i64,
    f32,
    w,
    linear(x, weightName, biasName, out) {
      if (!biasName) return g.op('MatMul', [x, w(weightName)], {}, out);
      return g.op('Add', [g.op('MatMul', [x, w(weightName)]), w(biasName)], {}, out);
    },
    layerNorm(x, weightName, biasName, eps, out) {
      const inputs = biasName ? [x, w(weightName), w(biasName)] : [x, w(weightName)];
      return g.op('LayerNormalization', inputs, { axis: -1, epsilon: { float: eps } }, out);
    },
    rmsNorm(x, weightName, eps, out) {
      const variance = g.op('ReduceMean', [g.op('Pow', [x, f32(2)]), i64([-1])], { keepdims: 1 });
      const normed = g.op('Div', [x, g.op('Sqrt', [g.op('Add', [variance, f32(eps)])])]);
      return g.op('Mul', [normed, w(weightName)], {}, out);
    },
    act(x, kind, out) {
      switch (kind) {
        case 'silu':
          return g.op('Mul', [x, g.op('Sigmoid', [x])], {}, out);
        case 'quick_gelu':
          return g.op('Mul', [x, g.op('Sigmoid', [g.op('Mul', [x, f32(1.702)])])], {}, out);
        case 'gelu': {
          const halfX = g.op('Mul', [x, f32(0.5)]);
          return g.op(
            'Mul',
            [halfX, g.op('Add', [f32(1), g.op('Erf', [g.op('Mul', [x, f32(Math.SQRT1_2)])])])],
            {},
            out,
          );
        }
        case 'gelu_tanh': {
          const halfX = g.op('Mul', [x, f32(0.5)]);
          // x + 0.044715x³
          const cubic = g.op('Add', [x, g.op('Mul', [g.op('Mul', [g.op('Mul', [x, x]), x]), f32(0.044715)])]);
          return g.op(
            'Mul',
            [halfX, g.op('Add', [f32(1), g.op('Tanh', [g.op('Mul', [cubic, f32(Math.sqrt(2 / Math.PI))])])])],
            {},
            out,
          );
        }
      }
    },
    attention(q, k, v, scale, bias, patternName) {
      const kT = g.op('Transpose', [k], { perm: [0, 1, 3, 2] });
      const scores = g.op('MatMul', [g.op('Mul', [q, f32(scale)]), kT]);
      const probs = g.op('Softmax', [bias ? g.op('Add', [scores, bias]) : scores], { axis: -1 }, patternName);
      return g.op('MatMul', [probs, v]);
    },
    fusedAttention(q, k, v, heads, scale, out) {
      return g.contribOp('MultiHeadAttention', [q, k, v], { num_heads: heads, scale: { float: scale } }, out);
    },
  };
  return ops;
}

/**
 * Where a graph weight comes from in the checkpoint. 'linear': HF Linear/Conv weights [out, in…], fused along
 * `out` when several are named, stored transposed as MatMul's [in, out] (Conv kernels flattened over in…);
 * 'tensor': stored as it is (several are concatenated flat); `dims` overrides the stored shape. A name may end
 * in `#rows:a:b` to take rows [a, b) of the tensor's first axis (a slice of a fused checkpoint tensor).
 */
export type VisionWeightSource =
  | { readonly kind: 'linear'; readonly names: readonly string[] }
  | { readonly kind: 'tensor'; readonly names: readonly string[]; readonly dims?: readonly number[] };

export const linearOf = (...names: string[]): VisionWeightSource => ({ kind: 'linear', names });
export const tensorOf = (...names: string[]): VisionWeightSource => ({ kind: 'tensor', names });
