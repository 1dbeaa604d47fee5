/**
 * End to end on a model where the method visibly works: ../shared/models/icl-tiny (README there), a 0.8 M
 * parameter Llama trained to judge eight criteria from in-context examples. With 16 examples per criterion the
 * Activation RM must beat the zero-shot judge and random heads by a margin whose interval (over seeds and pairs)
 * excludes zero — with every fairness rule of the harness on (common set, duplicates dropped, splits by prompt,
 * balanced ICL demos, tie-breaks). Kept small for the suite: 4 of the 8 criteria, 2 seeds, 200 REINFORCE steps
 * (the README's full run: 8 criteria, 3 seeds, 600 steps: arm 98.8, icl-judge 97.9, zero-shot 71.0, random
 * heads 61.4).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import fs from 'node:fs';
import path from 'node:path';
import { Decoder } from '../../src/model/decoder.js';
import { readExamples, type PairExample } from '../../src/data/examples.js';
import { evaluate } from '../../src/eval/harness.js';
import type { Results } from '../../src/eval/aggregate.js';
import { tempDir } from '../helpers/fixtures.js';

const MODEL = path.resolve(import.meta.dirname, '../../../shared/models/icl-tiny');
const DATA = path.resolve(import.meta.dirname, '../../../shared/data/icl-tiny/pairs.jsonl');
/** Criteria where zero-shot is weakest and random heads hurt (per the full run), so the test has room to fail. */
const CRITERIA = ['resp-first-low', 'resp-last-low', 'resp-all-even', 'resp-max-high'];
const METHODS = ['arm', 'zero-shot', 'random-heads', 'icl-judge', 'sav-vote', 'sample-vote', 'all-heads'];
const DUPLICATES = 3;

describe('icl-tiny: the Activation RM beats zero-shot and random heads', () => {
  let decoder: Decoder;
  let results: Results;
  let pairs: PairExample[];
  beforeAll(async () => {
    decoder = await Decoder.load(MODEL, { cacheDir: tempDir('arm-cache-') });
    // The criteria's rows, plus exact copies of a few of them that the harness must leave out.
    const rows = fs
      .readFileSync(DATA, 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l))
      .filter((r) => CRITERIA.includes(r.subset));
    const file = path.join(tempDir('arm-icl-tiny-'), 'pairs.jsonl');
    const copies = rows.slice(0, DUPLICATES).map((r) => ({ ...r, id: `${r.id}-copy` }));
    fs.writeFileSync(file, [...rows, ...copies].map((r) => JSON.stringify(r)).join('\n') + '\n');
    const examples = readExamples(file).examples;
    pairs = examples.filter((e): e is PairExample => e.kind === 'pair').slice(0, rows.length);
    results = await evaluate(decoder, examples, {
      methods: METHODS,
      fewShot: 16,
      seeds: 2,
      seed: 0,
      pool: 'subset',
      outputDir: tempDir('arm-eval-'),
      saveAll: false,
      chunkSize: 128,
      dataset: 'icl-tiny',
      modelId: 'icl-tiny',
      method: {
        fit: { templateText: '{prompt} {response}', reinforce: { steps: 200 }, warn: () => undefined },
        batchSize: 32,
        maxLength: decoder.spec.maxPositions,
        iclShots: 4,
        sampleN: 8,
        sampleTemperature: 1,
        savTopHeads: 20,
      },
    });
  }, 120_000);
  afterAll(async () => {
    await decoder?.dispose();
  });

  it('arm − zero-shot and arm − random-heads have intervals above zero', () => {
    const arm = results.methods.arm!;
    expect(arm.accuracy.mean).toBeGreaterThan(0.9);
    for (const other of ['zero-shot', 'random-heads']) {
      const d = results.methods[other]!.vsReference!;
      expect(d.reference).toBe('arm');
      expect(d.ci95[0], `${other}: ${JSON.stringify(d)}`).toBeGreaterThan(0);
      expect(d.mean).toBeCloseTo(arm.accuracy.mean - results.methods[other]!.accuracy.mean, 12);
    }
  });

  it('every method is scored on the same pairs: all of the test pairs, nothing left uncovered', () => {
    // Per seed, each criterion's 100 pairs less its 16-pair pool, less any prompt sibling of a pool pair.
    const tested = results.commonSet.testPairs;
    expect(results.commonSet.pairs).toBe(tested);
    expect(tested).toBeLessThanOrEqual(2 * CRITERIA.length * (100 - 16));
    expect(tested).toBeGreaterThan(2 * CRITERIA.length * (100 - 16) - 4);
    for (const name of METHODS) {
      expect(results.methods[name]!.accuracy.n, name).toBe(tested);
      expect(results.methods[name]!.coverage.rate, name).toBe(1);
    }
    expect(results.splits!.duplicatePairs).toBe(DUPLICATES);
    expect(pairs.length).toBe(CRITERIA.length * 100);
  });

  it('all-heads is a constant: every pair ties; the voting baselines report their ties and break them', () => {
    expect(results.methods['all-heads']!.ties.rate).toBe(1);
    expect(results.methods['all-heads']!.control).toBe('constant score');
    for (const name of ['sav-vote', 'sample-vote']) {
      const t = results.methods[name]!.ties;
      expect(Number.isFinite(t.rate), name).toBe(true);
      if (t.rate > 0) expect(t.broken, name).toBeGreaterThan(0.5);
    }
    expect(results.methods['zero-shot']!.ties.rate).toBe(0);
  });

  it('the report states the budgets: arm learns from every pool item, the ICL judge sees 4', () => {
    expect(results.budget!.join(' ')).toMatch(/arm .*learns from all 32 judge items/);
    expect(results.budget!.join(' ')).toMatch(/icl-judge and sample-vote see 4 of those/);
  });
});
