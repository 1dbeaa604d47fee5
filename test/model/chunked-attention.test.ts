/**
 * Causal attention in query chunks (graph/causal-attention.ts, ATTENTION_QUERY_CHUNKS): each chunk of new positions
 * reads only the keys up to its last position, in one of two forms (no past / with a batch-1 past broadcast).
 * 1. The same graph emitted with 1 chunk (one S×T score block per layer, the explicit path as it was) and with
 *    3 and 4 chunks gives the same outputs on identical feeds (random weights; chunk edges at odd places):
 *    left-padded batches without a past, B rows after a batch-1 past with S > 1 and S = 1, one token alone;
 *    with GQA, Gemma 2's soft-capping and sliding windows shorter than the prompt, Phi-3's partial rotary.
 * 2. The Decoder against the float64 reference on prompts long enough for every chunk to hold several
 *    positions: padded batches, prefill + extend by several tokens, shared prefix + padded suffixes (where a
 *    sliding window counts positions, not indices: the padding sits between the past and a row's tokens), and
 *    patched shared-prefix steps.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as ort from 'onnxruntime-node';
import { Decoder } from '../../src/model/decoder.js';
import { specFromConfig } from '../../src/model/families/config.js';
import type { ModelSpec } from '../../src/model/families/types.js';
import { emitDecoderGraph, headChunks } from '../../src/model/graph/decoder-graph.js';
import { ATTENTION_QUERY_CHUNKS } from '../../src/model/graph/causal-attention.js';
import { Rng, type HfConfig } from '../../tools/random-checkpoint.js';
import { referenceForward } from '../helpers/reference.js';
import { FAMILY_CONFIGS, makeCheckpoint, relError, row, tempDir } from '../helpers/fixtures.js';

const CONFIGS: Record<string, HfConfig> = {
  'qwen2 (GQA 2, qkv bias)': FAMILY_CONFIGS['qwen2 (qkv bias, tied, GQA 2)']!,
  'gemma2 (soft-capping 50, window 5 on even layers)': {
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
    sliding_window: 5,
    tie_word_embeddings: true,
  },
  'phi3 (partial rotary 0.5, window 7)': {
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
    sliding_window: 7,
    tie_word_embeddings: false,
  },
};

it('the default splits attention into several query chunks', () => {
  expect(ATTENTION_QUERY_CHUNKS).toBeGreaterThan(1);
});

// ---------------------------------------------------------------- 1. graph: chunked vs one block

/** Shape of each weight the graph asks for (random values: both graphs get the same ones). */
function weightDims(spec: ModelSpec, name: string): number[] {
  const { hiddenSize: D, intermediateSize: F, numHeads: H, numKvHeads: KV, headDim: d } = spec;
  const head = /^w\.head\.(\d+)$/.exec(name);
  if (head) {
    const [a, b] = headChunks(spec)[Number(head[1])]!;
    return [b - a, D];
  }
  const kind = name === 'w.final_norm' ? 'final_norm' : name.split('.').slice(2).join('.');
  const dims: Record<string, number[]> = {
    final_norm: [D],
    ln1: [D],
    ln2: [D],
    ln1_post: [D],
    ln2_post: [D],
    q_norm: [d],
    k_norm: [d],
    qkv: [D, (H + 2 * KV) * d],
    qkv_bias: [(H + 2 * KV) * d],
    o: [H * d, D],
    o_bias: [D],
    gate_up: [D, 2 * F],
    gate_up_bias: [2 * F],
    down: [F, D],
    down_bias: [D],
  };
  if (!dims[kind]) throw new Error(`test: no shape for weight ${name}`);
  return dims[kind]!;
}

async function graphSession(spec: ModelSpec, queryChunks: number): Promise<ort.InferenceSession> {
  const weights = new Map<string, string>();
  const g = emitDecoderGraph(
    spec,
    (gb, name) => {
      let id = weights.get(name);
      if (!id) {
        const dims = weightDims(spec, name);
        const rng = new Rng([...name].reduce((h, c) => (h * 31 + c.charCodeAt(0)) >>> 0, 7));
        const n = dims.reduce((a, b) => a * b, 1);
        const isNorm = dims.length === 1 && /norm|ln/.test(name);
        id = gb.floatConst(
          Array.from({ length: n }, () => (isNorm ? 1 : 0) + 0.3 * rng.normal()),
          dims,
          name.replaceAll('.', '_'),
        );
        weights.set(name, id);
      }
      return id;
    },
    undefined,
    undefined,
    { queryChunks },
  );
  return ort.InferenceSession.create(g.toBytes('test', {}), { intraOpNumThreads: 1, graphOptimizationLevel: 'all' });
}

/** Feeds for rows of real lengths `lens` (left-padded to S) after a batch-1 past of P positions. */
function feeds(spec: ModelSpec, lens: number[], P: number, seed: number): Record<string, ort.Tensor> {
  const { hiddenSize: D, numLayers: L, numHeads: H, numKvHeads: KV, headDim: d } = spec;
  const rng = new Rng(seed);
  const B = lens.length,
    S = Math.max(...lens),
    T = P + S;
  const mask = new BigInt64Array(B * T),
    positions = new BigInt64Array(B * S);
  lens.forEach((n, b) => {
    for (let t = 0; t < T; t++) mask[b * T + t] = t < P || t - P >= S - n ? 1n : 0n;
    for (let s = 0; s < S; s++) positions[b * S + s] = BigInt(s >= S - n ? P + s - (S - n) : 0);
  });
  const rand = (n: number, scale = 1) => Float32Array.from({ length: n }, () => scale * rng.normal());
  const f: Record<string, ort.Tensor> = {
    inputs_embeds: new ort.Tensor('float32', rand(B * S * D), [B, S, D]),
    attention_mask: new ort.Tensor('int64', mask, [B, T]),
    position_ids: new ort.Tensor('int64', positions, [B, S]),
    patch_mask: new ort.Tensor(
      'float32',
      Float32Array.from({ length: B * L * H }, (_, i) => (i % 3 === 1 ? 1 : 0)),
      [B, L, H],
    ),
    patch_values: new ort.Tensor('float32', rand(L * H * d, 0.5), [1, L, H, d]),
    patch_replace: new ort.Tensor('float32', Float32Array.of(1), [1]),
  };
  for (let l = 0; l < L; l++) {
    f[`past.${l}.key`] = new ort.Tensor('float32', rand(KV * P * d), [1, KV, P, d]);
    f[`past.${l}.value`] = new ort.Tensor('float32', rand(KV * P * d), [1, KV, P, d]);
  }
  return f;
}

const CASES: [string, number[], number][] = [
  ['left-padded batch, no past', [1, 6, 17, 23], 0],
  ['one row, no past', [29], 0],
  ['one token, no past', [1], 0],
  ['batch-1 past, B rows of padded suffixes', [3, 11, 7], 9],
  ['batch-1 past, one row of several tokens (extend)', [13], 20],
  ['batch-1 past, B rows of one token (shared step)', [1, 1, 1, 1], 15],
];

describe.each(Object.entries(CONFIGS))('chunked attention = one score block: %s', (_name, config) => {
  const spec = specFromConfig(config);
  const sessions: ort.InferenceSession[] = [];
  beforeAll(async () => {
    for (const n of [1, 3, ATTENTION_QUERY_CHUNKS]) sessions.push(await graphSession(spec, n));
  });
  afterAll(async () => {
    for (const s of sessions) await s.release();
  });

  it.each(CASES)('%s', async (_case, lens, P) => {
    const f = feeds(spec, lens, P, lens.length * 100 + P);
    const outputs = [
      'logits',
      'logsumexp',
      'heads',
      ...Array.from({ length: spec.numLayers }, (_, l) => [`new.${l}.key`, `new.${l}.value`]).flat(),
    ];
    const [whole, ...chunked] = await Promise.all(sessions.map((s) => s.run(f, outputs)));
    // New keys/values only at real positions: a padding query sees no key, and its (unused) output is the mean
    // over however many masked keys its chunk holds.
    const S = Math.max(...lens),
      { numKvHeads: KV, headDim: d } = spec;
    const real = (x: Float32Array, name: string) =>
      !name.startsWith('new.')
        ? x
        : Float32Array.from(
            lens.flatMap((n, b) =>
              Array.from({ length: KV }, (_, h) =>
                Array.from(x.subarray(((b * KV + h) * S + S - n) * d, ((b * KV + h) * S + S) * d)),
              ).flat(),
            ),
          );
    for (const out of chunked) {
      for (const name of outputs) {
        const a = out[name]!.data as Float32Array,
          b = whole![name]!.data as Float32Array;
        expect(a.length).toBe(b.length);
        expect(relError(real(a, name), real(b, name)), name).toBeLessThan(1e-5);
      }
    }
  });
});

// ---------------------------------------------------------------- 2. Decoder vs the float64 reference

const cacheDir = tempDir('arm-cache-');
const ids = (n: number, seed: number) => {
  const rng = new Rng(seed);
  return Array.from({ length: n }, () => 1 + Math.floor(rng.uniform() * 500));
};

describe.each(Object.entries(CONFIGS))('chunked attention vs the reference: %s', (_name, config) => {
  let decoder: Decoder;
  let weights: Map<string, Float32Array>;
  beforeAll(async () => {
    const ckpt = makeCheckpoint(config, { seed: 5 });
    weights = ckpt.weights;
    decoder = await Decoder.load(ckpt.dir, { cacheDir, threads: 1 });
  });
  afterAll(() => decoder?.dispose());
  const flatHeads = (h: Float64Array[][]) => h.flatMap((layer) => layer.flatMap((x) => Array.from(x)));

  it('left-padded batch of 1..41 tokens: logits and heads ≤ 1e-4', async () => {
    const rows = [ids(41, 1), ids(1, 2), ids(9, 3), ids(26, 4)];
    const out = await decoder.forward(rows);
    const { vocabSize: V, numLayers: L, numHeads: H, headDim: d } = decoder.spec;
    rows.forEach((r, b) => {
      const ref = referenceForward(config, weights, r);
      expect(relError(row(out.logits, b, V), ref.logits)).toBeLessThan(1e-4);
      expect(relError(row(out.heads, b, L * H * d), flatHeads(ref.heads))).toBeLessThan(1e-4);
    });
  });

  it('prefill then extend by 11 tokens; a shared 17-token prefix with padded suffixes of 1, 8, 21 tokens', async () => {
    const { vocabSize: V } = decoder.spec;
    const prefix = ids(17, 6);
    const kv = await decoder.prefill(prefix);
    const more = ids(11, 7);
    const ext = await decoder.extend(kv, more);
    expect(relError(ext.logits, referenceForward(config, weights, [...prefix, ...more]).logits)).toBeLessThan(1e-4);
    const suffixes = [ids(1, 8), ids(8, 9), ids(21, 10)];
    const out = await decoder.forwardShared(kv, suffixes);
    suffixes.forEach((s, b) =>
      expect(relError(row(out.logits, b, V), referenceForward(config, weights, [...prefix, ...s]).logits)).toBeLessThan(
        1e-4,
      ),
    );
    // The extended cache equals the cache of one prefill of the whole.
    const whole = await decoder.prefill([...prefix, ...more]);
    expect(relError(ext.kv.keys.at(-1)!, whole.keys.at(-1)!)).toBeLessThan(1e-5);
  });

  it('patched shared-prefix step after 37 tokens matches the patched reference', async () => {
    const { numLayers: L, numHeads: H, headDim: d, vocabSize: V } = decoder.spec;
    const prompt = ids(38, 11);
    const values = Float32Array.from({ length: L * H * d }, (_, i) => Math.cos(i) * 0.6);
    const chosen: [number, number][] = [
      [0, 0],
      [L - 1, 2],
    ];
    const mask = new Float32Array(3 * L * H);
    for (const [l, h] of chosen) mask[L * H + l * H + h] = 1;
    const refValues = Array.from({ length: L }, (_, l) =>
      Array.from({ length: H }, (_, h) => Float64Array.from(values.subarray((l * H + h) * d, (l * H + h + 1) * d))),
    );
    const kv = await decoder.prefill(prompt.slice(0, -1));
    const step = await decoder.stepShared(kv, prompt.at(-1)!, { mask, values });
    const plain = referenceForward(config, weights, prompt).logits;
    expect(relError(row(step.logits, 0, V), plain)).toBeLessThan(1e-4);
    expect(
      relError(
        row(step.logits, 1, V),
        referenceForward(config, weights, prompt, { heads: chosen, values: refValues, mode: 'replace' }).logits,
      ),
    ).toBeLessThan(1e-4);
    expect(relError(row(step.logits, 2, V), plain)).toBeLessThan(1e-4);
  });
});
