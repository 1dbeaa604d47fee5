/**
 * Gemma 1/2/3 and Phi-3 on random checkpoints against the float64 reference (test/helpers/reference.ts),
 * in the config spellings and shapes the transformers fixtures do not cover: older hub configs without
 * layer_types (Gemma 2 alternation, Gemma 3's sliding_window_pattern, rope_local_base_freq and a linear
 * rope_scaling that only the global layers use), class-default soft-capping, MHA and untied heads, a
 * windowed Phi-3 with half of each head rotated, prompts longer than every window, left padding.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Decoder } from '../../src/model/decoder.js';
import { specFromConfig } from '../../src/model/families/config.js';
import { referenceForward } from '../helpers/reference.js';
import { makeCheckpoint, relError, row, tempDir } from '../helpers/fixtures.js';
import type { HfConfig } from '../../tools/random-checkpoint.js';

const cacheDir = tempDir('arm-cache-');
const PROMPTS = [
  [1, 403, 407, 261, 378],
  [1, 320, 417, 13, 290, 300, 301, 77, 99, 450, 12],
];

const CONFIGS: Record<string, HfConfig> = {
  'gemma (MHA, untied, head_dim 8)': {
    model_type: 'gemma',
    hidden_size: 32,
    intermediate_size: 40,
    num_hidden_layers: 2,
    num_attention_heads: 4,
    num_key_value_heads: 4,
    head_dim: 8,
    vocab_size: 512,
    max_position_embeddings: 128,
    rms_norm_eps: 1e-6,
    rope_theta: 10000,
    hidden_activation: 'gelu_pytorch_tanh',
    tie_word_embeddings: false,
  },
  'gemma2 (no layer_types: even layers slide; class-default soft-caps 50/30; window 3)': {
    model_type: 'gemma2',
    hidden_size: 32,
    intermediate_size: 48,
    num_hidden_layers: 3,
    num_attention_heads: 4,
    num_key_value_heads: 2,
    head_dim: 16,
    vocab_size: 512,
    max_position_embeddings: 128,
    rms_norm_eps: 1e-6,
    rope_theta: 10000,
    hidden_activation: 'gelu_pytorch_tanh',
    query_pre_attn_scalar: 24,
    sliding_window: 3,
    tie_word_embeddings: true,
  },
  'gemma3_text (sliding_window_pattern 2, rope_local_base_freq, linear scaling on global layers)': {
    model_type: 'gemma3_text',
    hidden_size: 32,
    intermediate_size: 48,
    num_hidden_layers: 4,
    num_attention_heads: 4,
    num_key_value_heads: 2,
    head_dim: 8,
    vocab_size: 512,
    max_position_embeddings: 128,
    rms_norm_eps: 1e-6,
    rope_theta: 1000000,
    rope_local_base_freq: 10000,
    rope_scaling: { rope_type: 'linear', factor: 8 },
    sliding_window_pattern: 2,
    sliding_window: 4,
    query_pre_attn_scalar: 8,
    hidden_activation: 'gelu_pytorch_tanh',
    attn_logit_softcapping: null,
    final_logit_softcapping: 20,
    tie_word_embeddings: true,
  },
  'phi3 (untied, partial rotary 0.5, window 6)': {
    model_type: 'phi3',
    hidden_size: 48,
    intermediate_size: 64,
    num_hidden_layers: 2,
    num_attention_heads: 4,
    num_key_value_heads: 2,
    vocab_size: 512,
    max_position_embeddings: 128,
    rms_norm_eps: 1e-5,
    rope_theta: 10000,
    partial_rotary_factor: 0.5,
    sliding_window: 6,
    tie_word_embeddings: false,
  },
};

it('the configs read as intended (so the tests below exercise each quirk)', () => {
  const spec = (name: string) => specFromConfig(CONFIGS[name]);
  const g2 = spec('gemma2 (no layer_types: even layers slide; class-default soft-caps 50/30; window 3)');
  expect([g2.layerTypes, g2.attnSoftcap, g2.finalSoftcap, g2.attnScale, g2.normOffset, g2.embedScale]).toEqual([
    ['sliding', 'full', 'sliding'],
    50,
    30,
    1 / Math.sqrt(24),
    1,
    Math.fround(Math.sqrt(32)),
  ]);
  const g3 = spec('gemma3_text (sliding_window_pattern 2, rope_local_base_freq, linear scaling on global layers)');
  expect(g3.layerTypes).toEqual(['sliding', 'full', 'sliding', 'full']);
  expect([g3.rope.theta, g3.rope.type, g3.rope.factor, g3.slidingRope?.theta, g3.slidingRope?.type]).toEqual([
    1000000,
    'linear',
    8,
    10000,
    'default',
  ]);
  expect([g3.qkNorm, g3.attnSoftcap, g3.finalSoftcap, g3.activation]).toEqual([true, null, 20, 'gelu_tanh']);
  const phi = spec('phi3 (untied, partial rotary 0.5, window 6)');
  expect([phi.rotaryDim, phi.headDim, phi.fusedProjections, phi.layerTypes, phi.slidingWindow]).toEqual([
    6,
    12,
    true,
    ['sliding', 'sliding'],
    6,
  ]);
});

describe.each(Object.entries(CONFIGS))('engine vs reference forward: %s', (_name, config) => {
  let decoder: Decoder;
  let weights: Map<string, Float32Array>;
  beforeAll(async () => {
    const ckpt = makeCheckpoint(config, { seed: 11 });
    weights = ckpt.weights;
    decoder = await Decoder.load(ckpt.dir, { cacheDir, threads: 1 });
  });
  afterAll(() => decoder?.dispose());

  it('last logits and every head activation match the reference (≤ 1e-4 relative), batched with padding', async () => {
    const out = await decoder.forward(PROMPTS);
    const { vocabSize: V, numLayers: L, numHeads: H, headDim: d } = decoder.spec;
    PROMPTS.forEach((ids, b) => {
      const ref = referenceForward(config, weights, ids);
      expect(relError(row(out.logits, b, V), ref.logits)).toBeLessThan(1e-4);
      expect(
        relError(
          row(out.heads, b, L * H * d),
          ref.heads.flatMap((layer) => layer.flatMap((h) => Array.from(h))),
        ),
      ).toBeLessThan(1e-4);
    });
  });

  it('a head patch (replace and add) lands where the reference puts it, also as a shared-prefix step', async () => {
    const { numLayers: L, numHeads: H, headDim: d, vocabSize: V } = decoder.spec;
    const values = Float32Array.from({ length: L * H * d }, (_, i) => Math.sin(i) * 0.7);
    const chosen: [number, number][] = [
      [0, 1],
      [L - 1, H - 1],
    ];
    const mask = new Float32Array(L * H);
    for (const [l, h] of chosen) mask[l * H + h] = 1;
    const refValues = Array.from({ length: L }, (_, l) =>
      Array.from({ length: H }, (_, h) => Float64Array.from(values.subarray((l * H + h) * d, (l * H + h + 1) * d))),
    );
    const ids = PROMPTS[1]!;
    for (const mode of ['replace', 'add'] as const) {
      const ref = referenceForward(config, weights, ids, { heads: chosen, values: refValues, mode });
      const out = await decoder.forward([ids], { mask, values, mode });
      expect(relError(out.logits, ref.logits)).toBeLessThan(1e-4);
      expect(
        relError(
          out.heads,
          ref.heads.flatMap((layer) => layer.flatMap((h) => Array.from(h))),
        ),
      ).toBeLessThan(1e-4);
      const kv = await decoder.prefill(ids.slice(0, -1));
      const rows = new Float32Array(2 * L * H);
      rows.set(mask, L * H);
      const step = await decoder.stepShared(kv, ids.at(-1)!, { mask: rows, values, mode });
      expect(relError(step.logits.subarray(V), ref.logits)).toBeLessThan(1e-4);
      expect(relError(step.logits.subarray(0, V), referenceForward(config, weights, ids).logits)).toBeLessThan(1e-4);
    }
  });
});
