/** `--denoise` and `--denoise-before-selection` on the command line, and the `arm-denoised` ablation row. */
import { expect, it } from 'vitest';
import path from 'node:path';
import { Decoder } from '../../src/model/decoder.js';
import { readExamples, type PairExample } from '../../src/data/examples.js';
import { METHODS, type MethodOptions } from '../../src/eval/methods.js';
import { arm } from '../helpers/cli.js';
import { STORIES, tempDir } from '../helpers/fixtures.js';

const FEW = path.resolve(import.meta.dirname, '../../examples/concise/few.jsonl');

it('arm fit: --denoise-before-selection without --denoise, and a malformed --denoise, fail naming the flag', () => {
  const out = path.join(tempDir(), 'x.arm.safetensors');
  const base = [
    'fit',
    '--model',
    STORIES,
    '--examples',
    FEW,
    '--out',
    out,
    '--passes',
    '2',
    '--heads',
    'random:1',
    '--quiet',
  ];
  expect(arm([...base, '--denoise-before-selection'], { expectFail: true }).stderr).toMatch(
    /--denoise-before-selection needs --denoise/,
  );
  expect(arm([...base, '--denoise', 'pca:2:centered'], { expectFail: true }).stderr).toMatch(
    /--denoise pca:2:centered: expected pca:r/,
  );
});

it('arm fit --denoise pca:2 --denoise-before-selection records both in the criterion', () => {
  const out = path.join(tempDir(), 'd.arm.safetensors');
  arm([
    'fit',
    '--model',
    STORIES,
    '--examples',
    FEW,
    '--out',
    out,
    '--passes',
    '6',
    '--steps',
    '3',
    '--samples',
    '4',
    '--quiet',
    '--denoise',
    'pca:2',
    '--denoise-before-selection',
  ]);
  const meta = JSON.parse(arm(['inspect', out, '--json']).stdout);
  expect(meta.denoise).toBe('pca:2:centred');
  expect(meta.hyper.denoiseBeforeSelection).toBe(true);
  expect(arm(['inspect', out]).stdout).toMatch(/denoise pca:2:centred before selection/);
});

it('arm-denoised is an ablation row of arm eval that fits and scores', async () => {
  expect(Object.keys(METHODS)).toContain('arm-denoised');
  const decoder = await Decoder.load(STORIES, { cacheDir: tempDir('arm-cache-'), threads: 1 });
  try {
    const pairs = readExamples(FEW).examples.filter((e): e is PairExample => e.kind === 'pair');
    expect(pairs.length).toBeGreaterThanOrEqual(8);
    const options: MethodOptions = {
      fit: {
        passes: 6,
        shots: 2,
        reinforce: { steps: 3, samples: 4, readoutMasks: 2, readoutItems: 2 },
        warn: () => undefined,
      },
      batchSize: 4,
      maxLength: 256,
      iclShots: 2,
      sampleN: 2,
      sampleTemperature: 1,
      savTopHeads: 2,
    };
    const prepared = await METHODS['arm-denoised']!.prepare({ decoder, pool: pairs.slice(0, 5), seed: 0, options });
    const records = await prepared.scorePairs(pairs.slice(5));
    expect(records).toHaveLength(pairs.length - 5);
    for (const r of records) expect(Number.isFinite(r.chosen) && Number.isFinite(r.rejected)).toBe(true);
  } finally {
    await decoder.dispose();
  }
});
