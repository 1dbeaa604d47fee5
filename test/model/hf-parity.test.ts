/**
 * Parity with Hugging Face transformers itself: fixtures written by tools/hf_parity.py (transformers
 * 5.17, float64, eager attention) on models it built and saved with save_pretrained.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import fs from 'node:fs';
import path from 'node:path';
import { Decoder } from '../../src/model/decoder.js';
import { relError, STORIES, tempDir } from '../helpers/fixtures.js';
import {
  LOCAL_HF_PARITY as FIXTURES,
  LOCAL_TEXT_FAMILIES,
  readParity,
  type Parity as SharedParity,
} from '../helpers/hf-parity.js';

const names = fs.readdirSync(FIXTURES).filter((n) => fs.existsSync(path.join(FIXTURES, n, 'parity.json')));
const cacheDir = tempDir('arm-cache-');

/** The local fixtures also record the heads their patched run patched. */
type Parity = SharedParity & { patch: { heads: [number, number][] } };

it('covers every family', () => {
  expect(names.sort()).toEqual([...LOCAL_TEXT_FAMILIES].sort());
});

describe.each(names)('transformers parity: %s', (name) => {
  let decoder: Decoder;
  let parity: Parity;
  beforeAll(async () => {
    const dir = tempDir('arm-hf-');
    for (const f of fs.readdirSync(path.join(FIXTURES, name)))
      fs.copyFileSync(path.join(FIXTURES, name, f), path.join(dir, f));
    for (const f of ['tokenizer.json', 'tokenizer_config.json'])
      fs.copyFileSync(path.join(STORIES, f), path.join(dir, f));
    parity = readParity(dir) as Parity;
    decoder = await Decoder.load(dir, { cacheDir, threads: 1 });
  });
  afterAll(() => decoder?.dispose());

  it('last logits and o_proj inputs match transformers (≤ 1e-4 relative), two prompts in a padded batch', async () => {
    const out = await decoder.forward(parity.results.map((r) => r.input_ids));
    const { vocabSize: V, numLayers: L, numHeads: H, headDim: d } = decoder.spec;
    parity.results.forEach((r, b) => {
      expect(relError(out.logits.subarray(b * V, (b + 1) * V), r.last_logits)).toBeLessThan(1e-4);
      expect(relError(out.heads.subarray(b * L * H * d, (b + 1) * L * H * d), r.o_proj_input_last.flat())).toBeLessThan(
        1e-4,
      );
    });
  });

  it('a replace patch matches a transformers o_proj pre-hook that overwrites the same heads', async () => {
    const { numLayers: L, numHeads: H, headDim: d } = decoder.spec;
    const values = Float32Array.from({ length: L * H * d }, (_, i) => Math.sin(i) * 0.7);
    const mask = new Float32Array(L * H);
    for (const [l, h] of parity.patch.heads) mask[l * H + h] = 1;
    for (const r of parity.results) {
      const out = await decoder.forward([r.input_ids], { mask, values });
      expect(relError(out.logits, r.patched_last_logits)).toBeLessThan(1e-4);
      expect(relError(out.heads, r.patched_o_proj_input_last.flat())).toBeLessThan(1e-4);
    }
  });

  it("greedy generation with the KV cache gives transformers' 8 tokens", async () => {
    for (const r of parity.results)
      expect(await decoder.generate(r.input_ids, { maxNewTokens: 8, stopTokens: [] })).toEqual(r.greedy8);
  });
});
