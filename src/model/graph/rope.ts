/**
 * RoPE maths on a parsed spec: the inverse frequencies after scaling (families/rope-config.ts parses the
 * config), and their graph form, the cos/sin tables and the rotation of a head's first `rotaryDim` dimensions.
 */
import type { GraphBuilder } from './graph-builder.js';
import type { ModelSpec, RopeSpec } from '../families/types.js';

/**
 * RoPE inverse frequencies [d/2] after scaling, computed as transformers does
 * (`_compute_default_rope_parameters`, `_compute_llama3_parameters`; linear divides by the factor).
 */
export function ropeInverseFrequencies(spec: ModelSpec, rope: RopeSpec = spec.rope): Float32Array {
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
