/** A criterion file records the dtype it was fitted at; scoring at another dtype warns and still scores. */
import path from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { Decoder } from '../../src/model/decoder.js';
import { readExamples } from '../../src/data/examples.js';
import { fitActivationRM } from '../../src/arm/fit.js';
import { ActivationRM } from '../../src/arm/rm.js';
import { loadCriterion, saveCriterion } from '../../src/arm/criterion.js';
import { tempDir } from '../helpers/fixtures.js';

const ICL_TINY = path.resolve(import.meta.dirname, '../../../shared/models/icl-tiny');
const PAIRS = path.resolve(import.meta.dirname, '../../../shared/data/icl-tiny/pairs.jsonl');
const cacheDir = tempDir('arm-cache-wf-');
let int8: Decoder;
let fp32: Decoder;

beforeAll(async () => {
  int8 = await Decoder.load(ICL_TINY, { cacheDir, threads: 1, dtype: 'int8' });
  fp32 = await Decoder.load(ICL_TINY, { cacheDir, threads: 1, dtype: 'fp32' });
});
afterAll(async () => {
  await int8?.dispose();
  await fp32?.dispose();
});

it('records dtype and format; another dtype at scoring time is a warning, the same dtype none', async () => {
  const examples = readExamples(PAIRS)
    .examples.filter((e) => e.subset === 'resp-first-low')
    .slice(0, 8);
  const rm = await fitActivationRM(int8, examples, {
    templateText: '{prompt} {response}',
    passes: 4,
    shots: 2,
    seed: 1,
    batchSize: 4,
    reinforce: { steps: 4, samples: 4, readoutMasks: 2, readoutItems: 4 },
  });
  const file = path.join(tempDir('arm-crit-'), 'c.arm.safetensors');
  rm.save(file);
  const meta = loadCriterion(file).meta;
  expect(meta.model.dtype).toBe('int8');
  // small model: block-wise kernel, exact compute
  expect(meta.model.weightFormat).toBe('int8 (blockwise, block 128, accuracy level 0)');

  const warnings: string[] = [];
  const same = ActivationRM.load(int8, file, { warn: (m) => warnings.push(m) });
  expect(warnings).toEqual([]);
  const other = ActivationRM.load(fp32, file, { warn: (m) => warnings.push(m) });
  expect(warnings).toHaveLength(1);
  expect(warnings[0]).toMatch(/fitted with --dtype int8 and is scored with --dtype fp32/);
  // Same dtype, another int8 format (the accuracy level here): warned too, naming both formats
  const level4 = await Decoder.load(ICL_TINY, { cacheDir, threads: 1, dtype: 'int8', accuracyLevel: 4 });
  try {
    ActivationRM.load(level4, file, { warn: (m) => warnings.push(m) });
    expect(warnings).toHaveLength(2);
    expect(warnings[1]).toContain(
      'fitted with weights "int8 (blockwise, block 128, accuracy level 0)" ' +
        'and is scored with "int8 (blockwise, block 128, accuracy level 4)"',
    );
  } finally {
    await level4.dispose();
  }
  // A label written before the kernel option existed ("int8 (block 128, …)") is the same format as blockwise
  const old = loadCriterion(file);
  const oldFile = path.join(tempDir('arm-crit-'), 'old.arm.safetensors');
  saveCriterion(oldFile, {
    ...old,
    meta: { ...old.meta, model: { ...old.meta.model, weightFormat: 'int8 (block 128, accuracy level 0)' } },
  });
  ActivationRM.load(int8, oldFile, { warn: (m) => warnings.push(m) });
  expect(warnings).toHaveLength(2);
  const pair = examples.slice(0, 1);
  const [a] = (await same.scoreExamples(pair)) as { chosen: number; rejected: number }[];
  const [b] = (await other.scoreExamples(pair)) as { chosen: number; rejected: number }[];
  // Scored at the other dtype it still scores, and close to the fitted dtype's numbers (int8 vs fp32 weights).
  for (const s of [a!, b!]) for (const p of [s.chosen, s.rejected]) expect(p > 0 && p < 1).toBe(true);
  expect(Math.abs(a!.chosen - b!.chosen)).toBeLessThan(0.05);
  expect(Math.abs(a!.rejected - b!.rejected)).toBeLessThan(0.05);
});
