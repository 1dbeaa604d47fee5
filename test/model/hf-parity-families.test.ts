/**
 * Parity with Hugging Face transformers for the Gemma 1/2/3 and Phi-3 families: tiny checkpoints saved by
 * transformers 5.17 with float64 logits, o_proj inputs, patched runs and 8 greedy tokens
 * (../shared/fixtures/hf-parity, README there). They ship no tokenizer: loading must not need one, and the
 * tests feed token ids.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import fs from 'node:fs';
import path from 'node:path';
import { Decoder } from '../../src/model/decoder.js';
import { fixturePatch, relError, tempDir } from '../helpers/fixtures.js';
import { HF_PARITY as FIXTURES } from '../helpers/image-text.js';
import { type Parity, readParity, SHARED_TEXT_FAMILIES as TEXT_FAMILIES } from '../helpers/hf-parity.js';

const present = fs.existsSync(FIXTURES);
const cacheDir = tempDir('arm-cache-');

describe.runIf(present).each(TEXT_FAMILIES)('transformers parity: %s', (name) => {
  const dir = path.join(FIXTURES, name);
  let decoder: Decoder;
  let parity: Parity;
  beforeAll(async () => {
    parity = readParity(dir);
    decoder = await Decoder.load(dir, { cacheDir, threads: 1 });
  });
  afterAll(() => decoder?.dispose());

  it('fixture is what we think it is (float64, no tokenizer)', () => {
    expect(parity.dtype).toBe('float64');
    expect(fs.existsSync(path.join(dir, 'tokenizer.json'))).toBe(false);
    expect(decoder.hasTokenizer).toBe(false);
    expect(() => decoder.tokenizer).toThrow(/tokenizer\.json: missing, so this checkpoint runs on token ids only/);
  });

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
    const { mask, values } = fixturePatch(L, H, d);
    for (const r of parity.results) {
      const out = await decoder.forward([r.input_ids], { mask, values });
      expect(relError(out.logits, r.patched_last_logits)).toBeLessThan(1e-4);
      expect(relError(out.heads, r.patched_o_proj_input_last.flat())).toBeLessThan(1e-4);
    }
  });

  it('shared-prefix step (prefill, then the last token as patch rows): same patched and unpatched logits', async () => {
    const { numLayers: L, numHeads: H, headDim: d, vocabSize: V } = decoder.spec;
    const { mask, values } = fixturePatch(L, H, d);
    for (const r of parity.results) {
      const kv = await decoder.prefill(r.input_ids.slice(0, -1));
      const rows = new Float32Array(2 * L * H);
      rows.set(mask, L * H); // row 0 unpatched, row 1 patched
      const out = await decoder.stepShared(kv, r.input_ids.at(-1)!, { mask: rows, values });
      expect(relError(out.logits.subarray(0, V), r.last_logits)).toBeLessThan(1e-4);
      expect(relError(out.logits.subarray(V, 2 * V), r.patched_last_logits)).toBeLessThan(1e-4);
    }
  });

  it("greedy generation with the KV cache gives transformers' 8 tokens", async () => {
    for (const r of parity.results)
      expect(await decoder.generate(r.input_ids, { maxNewTokens: 8, stopTokens: [] })).toEqual(r.greedy8);
  });
});
