/**
 * RoPE maths on a parsed spec: the inverse frequencies after scaling (families/rope-config.ts parses the
 * config), and their graph form, the cos/sin tables and the rotation of a head's first `rotaryDim` dimensions.
 */
import { INT64_MAX, type DecoderOps } from './decoder-ops.js';
import { SITES, type RopeTableNames } from './sites.js';
import type { LayerType, ModelSpec, RopeSpec } from '../families/types.js';

/**
 * RoPE inverse frequencies [d/2] after scaling, computed as transformers does
 * (`_compute_default_rope_parameters`, `_compute_llama3_parameters`; linear divides by the factor).
 */
function ropeInverseFrequencies(spec: ModelSpec, rope: RopeSpec = spec.rope): Float32Array {
  const d = spec.rotaryDim; // partial rotary: the frequencies of a rotaryDim-sized head
  const base = new Float32Array(d / 2);
  for (let i = 0; i < d / 2; i++) base[i] = 1 / Math.pow(rope.theta, (2 * i) / d);
  if (rope.type === 'linear') return base.map((f) => f / rope.factor);
  if (rope.type === 'llama3') {
    const lowWavelen = rope.originalMaxPositions / rope.lowFreqFactor;
    const highWavelen = rope.originalMaxPositions / rope.highFreqFactor;
    return base.map((f) => {
      const wavelen = (2 * Math.PI) / f;
      if (wavelen < highWavelen) return f;
      if (wavelen > lowWavelen) return f / rope.factor;
      const smooth =
        (rope.originalMaxPositions / wavelen - rope.lowFreqFactor) / (rope.highFreqFactor - rope.lowFreqFactor);
      return (1 - smooth) * (f / rope.factor) + smooth * f;
    });
  }
  return base;
}

/** The decoder's rotary embedding, built once per graph: the cos/sin tables and how a layer applies them. */
export interface Rope {
  /**
   * x [B, n, S, d] with its first r = rotaryDim dimensions of each head turned by the angles of `layerType`'s
   * table (the rest pass through); the result is named `name`.
   */
  apply(x: string, layerType: LayerType, name: string): string;
}

/**
 * Emits the cos/sin tables [B, 1, S, r] from `positionIds` ([B, S], or M-RoPE's [3, B, S], whose row
 * mropeRows[j] turns rotary frequency j): one for the full-attention layers, and Gemma 3's local-base one for the
 * sliding layers.
 */
export function emitRope(ops: DecoderOps, positionIds: string): Rope {
  const { g, spec, i64 } = ops;
  const r = spec.rotaryDim;
  const d = spec.headDim;
  const mropeRows = spec.imageText?.mropeRows ?? null;
  const pos = mropeRows // [B,S,1] or [B,S,r/2]
    ? g.op('Transpose', [g.op('Gather', [g.op('Cast', [positionIds], { to: 1 }), i64(mropeRows)], { axis: 0 })], {
        perm: [1, 2, 0],
      })
    : g.op('Unsqueeze', [g.op('Cast', [positionIds], { to: 1 }), i64([2])]);
  const table = (rope: RopeSpec, names: RopeTableNames) => {
    const invFreq = g.floatConst(ropeInverseFrequencies(spec, rope), [r / 2], names.invFreq);
    const freqs = g.op('Mul', [pos, invFreq]); // [B,S,r/2]
    const emb = g.op('Unsqueeze', [g.op('Concat', [freqs, freqs], { axis: -1 }), i64([1])]); // [B,1,S,r]
    return { cos: g.op('Cos', [emb], {}, names.cos), sin: g.op('Sin', [emb], {}, names.sin) };
  };
  const full = table(spec.rope, SITES.rope);
  const sliding = spec.slidingRope ? table(spec.slidingRope, SITES.ropeSliding) : full;
  const half = i64([r / 2]);
  return {
    apply(x, layerType, name) {
      const { cos, sin } = layerType === 'sliding' ? sliding : full;
      const xr = r === d ? x : g.op('Slice', [x, i64([0]), i64([r]), i64([-1])]); // [B,n,S,r]
      const x1 = g.op('Slice', [xr, i64([0]), half, i64([-1])]);
      const x2 = g.op('Slice', [xr, half, i64([INT64_MAX]), i64([-1])]);
      const rotated = g.op('Concat', [g.op('Neg', [x2]), x1], { axis: -1 });
      if (r === d) return g.op('Add', [g.op('Mul', [x, cos]), g.op('Mul', [rotated, sin])], {}, name);
      const turned = g.op('Add', [g.op('Mul', [xr, cos]), g.op('Mul', [rotated, sin])]);
      // [B,n,S,d]
      return g.op('Concat', [turned, g.op('Slice', [x, i64([r]), i64([INT64_MAX]), i64([-1])])], { axis: -1 }, name);
    },
  };
}
