/**
 * A small evaluation on stories260K for the harness tests (unusable pools, shards): every fitted method at a few
 * passes and steps, batches of 8 at --max-length 96, and a text far longer than that budget for a subset whose
 * "yes" items never fit (its pools hold "no" items only, so fitted methods skip it).
 */
import fs from 'node:fs';
import path from 'node:path';
import { readExamples, type Example } from '../../src/data/examples.js';
import type { ReportedEvalOptions } from '../../src/eval/harness.js';
import { tempDir } from './fixtures.js';

/** Far longer than --max-length 96 in stories260K tokens, even with the prompt cut away. */
export const LONG =
  'Once upon a time there was a little dog who liked to run in the park and play with a red ball every day. '.repeat(6);

/** `rows` written as a JSONL pair file and read back as the harness reads a dataset. */
export function datasetOf(rows: object[]): Example[] {
  const file = path.join(tempDir('arm-eval-data-'), 'data.jsonl');
  fs.writeFileSync(file, rows.map((r) => JSON.stringify(r)).join('\n') + '\n');
  return readExamples(file).examples;
}

/** arm, random-heads, sav-vote and zero-shot over 2 seeds of 4-pair pools, at test sizes; `over` replaces fields. */
export function storiesEvalOptions(outputDir: string, over: Partial<ReportedEvalOptions> = {}): ReportedEvalOptions {
  return {
    methods: ['arm', 'random-heads', 'sav-vote', 'zero-shot'],
    fewShot: 4,
    seeds: 2,
    seed: 0,
    pool: 'subset',
    outputDir,
    saveAll: true,
    chunkSize: 8,
    dataset: 'data.jsonl',
    modelId: 'stories260K',
    method: {
      fit: {
        passes: 4,
        shots: 2,
        reinforce: { steps: 4, samples: 8, readoutMasks: 2, readoutItems: 3 },
        warn: () => undefined,
      },
      batchSize: 8,
      maxLength: 96,
      iclShots: 2,
      sampleN: 4,
      sampleTemperature: 1,
      savTopHeads: 5,
    },
    ...over,
  };
}
