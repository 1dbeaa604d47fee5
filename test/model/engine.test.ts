/**
 * The Decoder against a reference forward written in plain JS (helpers/reference.ts), for every test family:
 * last-position logits and head activations on a padded batch, head patches (replace and add), checkpoint
 * storage variants (f16/bf16, sharded), and an output head split into row blocks.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import fs from 'node:fs';
import path from 'node:path';
import { Decoder } from '../../src/model/decoder.js';
import { referenceForward } from '../helpers/reference.js';
import { FAMILY_CONFIGS, makeCheckpoint, relError, row, tempDir } from '../helpers/fixtures.js';

const cacheDir = tempDir('arm-cache-');
const PROMPTS = [
  [1, 403, 407, 261, 378],
  [1, 320, 417, 13, 290, 300, 301, 77, 99, 450, 12],
];

describe.each(Object.entries(FAMILY_CONFIGS))('engine vs reference forward: %s', (_name, config) => {
  let decoder: Decoder;
  let weights: Map<string, Float32Array>;
  beforeAll(async () => {
    const ckpt = makeCheckpoint(config, { seed: 7 });
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
      const refHeads = ref.heads.flatMap((layer) => layer.flatMap((h) => Array.from(h)));
      expect(refHeads.length).toBe(L * H * d);
      expect(relError(row(out.heads, b, L * H * d), refHeads)).toBeLessThan(1e-4);
    });
  });

  it('a head patch (replace and add) lands where the reference puts it', async () => {
    const { numLayers: L, numHeads: H, headDim: d } = decoder.spec;
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
    for (const mode of ['replace', 'add'] as const) {
      const out = await decoder.forward([PROMPTS[1]!], { mask, values, mode });
      const ref = referenceForward(config, weights, PROMPTS[1]!, { heads: chosen, values: refValues, mode });
      expect(relError(out.logits, ref.logits)).toBeLessThan(1e-4);
      expect(
        relError(
          out.heads,
          ref.heads.flatMap((layer) => layer.flatMap((h) => Array.from(h))),
        ),
      ).toBeLessThan(1e-4);
    }
  });
});

describe('checkpoint storage variants', () => {
  const config = FAMILY_CONFIGS['qwen2 (qkv bias, tied, GQA 2)']!;
  it.each([
    ['F16', 1],
    ['BF16', 1],
    ['F32', 3],
  ] as const)('%s weights in %i shard(s) load and match the reference', async (dtype, shards) => {
    const { dir, weights } = makeCheckpoint(config, { seed: 3, dtype, shards });
    if (shards > 1) expect(fs.existsSync(path.join(dir, 'model.safetensors.index.json'))).toBe(true);
    const decoder = await Decoder.load(dir, { cacheDir, threads: 1 });
    try {
      const out = await decoder.forward([PROMPTS[0]!]);
      expect(relError(out.logits, referenceForward(config, weights, PROMPTS[0]!).logits)).toBeLessThan(1e-4);
    } finally {
      await decoder.dispose();
    }
  });
});

it('an output head split into row blocks gives the same logits (untied and tied)', async () => {
  for (const config of [FAMILY_CONFIGS['mistral (GQA 4, untied)']!, FAMILY_CONFIGS['qwen2 (qkv bias, tied, GQA 2)']!]) {
    const { dir, weights } = makeCheckpoint(config, { seed: 4 });
    // 100 rows a block → 6 blocks
    const decoder = await Decoder.load(dir, { cacheDir, threads: 1, headChunkBytes: 100 * 32 * 4 });
    try {
      const out = await decoder.forward([PROMPTS[1]!]);
      expect(relError(out.logits, referenceForward(config, weights, PROMPTS[1]!).logits)).toBeLessThan(1e-4);
    } finally {
      await decoder.dispose();
    }
  }
});
