/**
 * forEachLastLogits (model/batch.ts): grouping, a shared prefix prefilled once and a score budget change how
 * the sequences are run (fewer session runs), never their last-position logits, which match each sequence run
 * alone.
 */
import { afterAll, beforeAll, expect, it } from 'vitest';
import { Decoder } from '../../src/model/decoder.js';
import { forEachLastLogits } from '../../src/model/batch.js';
import { FAMILY_CONFIGS, makeCheckpoint, relError, tempDir } from '../helpers/fixtures.js';

let decoder: Decoder;
beforeAll(async () => {
  const { dir } = makeCheckpoint(FAMILY_CONFIGS['llama (GQA 2, tied)']!, { seed: 8 });
  decoder = await Decoder.load(dir, { cacheDir: tempDir('arm-cache-'), threads: 1 });
});
afterAll(() => decoder?.dispose());

const seqs = [
  [1, 5, 9, 13, 300, 301, 302, 303, 304, 305, 40],
  [1, 5, 9, 13, 300, 301, 302, 303, 304, 305, 41, 42],
  [1, 7],
  [1, 5, 9, 13, 300, 301, 302, 303, 304, 305, 43, 44, 45],
];

async function collect(opts: Parameters<typeof forEachLastLogits>[2]) {
  const out: number[][] = [];
  const runs0 = decoder.stats.runs;
  await forEachLastLogits(decoder, seqs, opts, (i, { logits, logSumExp }) => {
    out[i] = [...Array.from(logits), logSumExp];
  });
  return { out, runs: decoder.stats.runs - runs0 };
}

it('groups, a shared prefix and a score budget change how sequences run, not their results', async () => {
  const alone = await Promise.all(
    seqs.map(async (s) => {
      const r = await decoder.forward([s]);
      return [...Array.from(r.logits), r.logSumExp[0]!];
    }),
  );
  const plain = await collect({ batchSize: 8, sharePrefix: false });
  expect(plain.runs).toBe(1);
  const grouped = await collect({ batchSize: 8, groups: [[0, 1, 3]] });
  expect(grouped.runs).toBe(3); // the group's prefix prefill + its suffixes + the lone sequence
  const budgeted = await collect({ batchSize: 8, sharePrefix: false, maxScoreElements: 4 * 13 * 13 });
  expect(budgeted.runs).toBe(4); // the budget admits one row of the longest length at a time
  for (const r of [plain, grouped, budgeted])
    seqs.forEach((_, i) => expect(relError(r.out[i]!, alone[i]!)).toBeLessThan(1e-5));
});
