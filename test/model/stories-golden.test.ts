/** The real pretrained model: ../shared/models/stories260K/golden.json from an independent numpy reference. */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import fs from 'node:fs';
import path from 'node:path';
import { Decoder } from '../../src/model/decoder.js';
import { STORIES, tempDir } from '../helpers/fixtures.js';

interface Golden {
  prompts: {
    prompt: string;
    input_ids: number[];
    continuation_ids: number[];
    top5_last_prompt_position: { ids: number[]; logits: number[] };
    top5_after_8_generated: { ids: number[]; logits: number[] };
  }[];
  o_proj_input_taps: { prompt: string; sequence_index: number; layers: Record<string, number[]> };
}

const golden: Golden = JSON.parse(fs.readFileSync(path.join(STORIES, 'golden.json'), 'utf8'));
let decoder: Decoder;
beforeAll(async () => {
  decoder = await Decoder.load(STORIES, { cacheDir: tempDir('arm-cache-') });
});
afterAll(() => decoder?.dispose());

function top5(logits: Float32Array) {
  const order = Array.from(logits.keys())
    .sort((a, b) => logits[b]! - logits[a]!)
    .slice(0, 5);
  return { ids: order, logits: order.map((i) => logits[i]!) };
}

describe.each(golden.prompts.map((p) => [JSON.stringify(p.prompt), p] as const))('stories260K prompt %s', (_n, p) => {
  it('tokenizes to the golden ids', () => {
    expect(decoder.tokenizer.encode(p.prompt)).toEqual(p.input_ids);
  });

  it('top-5 logits at the last prompt position and after 8 generated tokens (≤ 1e-4)', async () => {
    const seqs = [p.input_ids, [...p.input_ids, ...p.continuation_ids.slice(0, 8)]];
    const out = await decoder.forward(seqs);
    const V = decoder.spec.vocabSize;
    for (const [b, want] of [
      [0, p.top5_last_prompt_position],
      [1, p.top5_after_8_generated],
    ] as const) {
      const got = top5(out.logits.subarray(b * V, (b + 1) * V));
      expect(got.ids).toEqual(want.ids);
      got.logits.forEach((v, i) => expect(Math.abs(v - want.logits[i]!)).toBeLessThan(1e-4));
    }
  });

  it('64 greedy tokens equal the golden continuation exactly', async () => {
    expect(await decoder.generate(p.input_ids, { maxNewTokens: 64, stopTokens: [] })).toEqual(p.continuation_ids);
  });
});

it('per-layer o_proj taps of head 0 at the last prompt position (≤ 1e-4)', async () => {
  const t = golden.o_proj_input_taps;
  const ids = decoder.tokenizer.encode(t.prompt);
  expect(ids.length - 1).toBe(t.sequence_index);
  const { heads } = await decoder.forward([ids]);
  const { numHeads: H, headDim: d } = decoder.spec;
  Object.values(t.layers).forEach((want, l) => {
    want.forEach((v, i) => expect(Math.abs(heads[l * H * d + i]! - v)).toBeLessThan(1e-4));
  });
});

it("generates karpathy's published opening", async () => {
  const ids = decoder.tokenizer.encode('Once upon a time');
  const text = decoder.tokenizer.decode([...ids, ...(await decoder.generate(ids, { maxNewTokens: 16 }))]);
  expect(text.startsWith('Once upon a time, there was a little girl named Lily.')).toBe(true);
});
