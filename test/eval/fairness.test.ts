/**
 * Issue 11, fairness: every expectation here is derived by hand from the case it builds (or from RewardBench's
 * published counts), not from the code under test. No model is loaded.
 */
import { describe, expect, it } from 'vitest';
import fs from 'node:fs';
import path from 'node:path';
import { readExamples, type PairExample } from '../../src/data/examples.js';
import { aggregate } from '../../src/eval/aggregate.js';
import { budgetNotes, evaluate } from '../../src/eval/harness.js';
import { dropDuplicatePairs, drawSplits, splitNotes } from '../../src/eval/splits.js';
import { bootstrapSeedsAndPairs, sectionScores } from '../../src/eval/metrics.js';
import { iclDemos } from '../../src/eval/methods.js';
import { pairOutcome, type RunRecord } from '../../src/eval/records.js';
import { savVote, type SavModel } from '../../src/baselines/sav.js';
import { PREFERENCE_DATA, tempDir } from '../helpers/fixtures.js';

const meta = { dataset: 'd', model: 'x', shape: { layers: 1, heads: 1 }, fewShot: 0, pool: 'global' };
/** A pair record as the harness writes it, with the outcome decided by the rule under test. */
function rec(
  method: string,
  id: string,
  chosen: number,
  rejected: number,
  over: Partial<Extract<RunRecord, { type: 'pair' }>> = {},
): RunRecord {
  const r = { chosen, rejected, tieBreak: over.tieBreak };
  const { correct, tied } = pairOutcome(r);
  return {
    type: 'pair',
    method,
    seed: over.seed ?? 0,
    group: 'all',
    id,
    subset: over.subset ?? 's',
    correct,
    tied,
    margin: chosen - rejected,
    truncated: false,
    tooLong: Number.isNaN(chosen + rejected),
    ...over,
    chosen,
    rejected,
  };
}

function writeRows(rows: object[]): string {
  const file = path.join(tempDir('arm-fair-'), 'data.jsonl');
  fs.writeFileSync(file, rows.map((r) => JSON.stringify(r)).join('\n') + '\n');
  return file;
}

describe('the same pairs for every method', () => {
  it(
    "a pair one method cannot score leaves every method's accuracy; coverage and all-pairs " +
      'accuracy say what it cost',
    () => {
      // pick-longer gets all four right; the model gets a, b right, c wrong, and cannot score d (too long).
      const records = [
        ...['a', 'b', 'c', 'd'].map((id) => rec('pick-longer', id, 2, 1)),
        rec('zero-shot', 'a', 0.9, 0.1),
        rec('zero-shot', 'b', 0.8, 0.3),
        rec('zero-shot', 'c', 0.2, 0.7),
        rec('zero-shot', 'd', NaN, NaN),
      ];
      const r = aggregate(records, meta);
      expect(r.commonSet).toEqual({ methods: ['pick-longer', 'zero-shot'], pairs: 3, testPairs: 4 });
      expect(r.methods['pick-longer']!.accuracy).toMatchObject({ mean: 1, n: 3 });
      expect(r.methods['zero-shot']!.accuracy.mean).toBeCloseTo(2 / 3, 12);
      expect(r.methods['zero-shot']!.accuracy.n).toBe(3);
      expect(r.methods['zero-shot']!.coverage).toEqual({ scored: 3, total: 4, rate: 0.75 });
      expect(r.methods['pick-longer']!.coverage.rate).toBe(1);
      expect(r.methods['zero-shot']!.allPairs.mean).toBe(0.5); // d counted wrong
    },
  );

  it(
    'the length rules alone need no model and no pool: llmbar gives 113/419 (longer) and ' +
      '304/419 (shorter) even with --few-shot 16',
    async () => {
      const file = path.join(PREFERENCE_DATA, 'llmbar.jsonl');
      // Independent count from the raw lines (code points, ties wrong).
      const rows = fs
        .readFileSync(file, 'utf8')
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l));
      const len = (s: string) => Array.from(s).length;
      expect([
        rows.filter((x) => len(x.chosen) > len(x.rejected)).length,
        rows.filter((x) => len(x.chosen) < len(x.rejected)).length,
        rows.length,
      ]).toEqual([113, 304, 419]);
      const results = await evaluate(null, readExamples(file).examples, {
        methods: ['pick-longer', 'pick-shorter'],
        fewShot: 16,
        seeds: 5,
        seed: 0,
        pool: 'subset',
        outputDir: tempDir(),
        saveAll: false,
        chunkSize: 64,
        dataset: 'llmbar.jsonl',
        modelId: 'none',
        method: { fit: {}, batchSize: 1, maxLength: 8, iclShots: 4, sampleN: 1, sampleTemperature: 1, savTopHeads: 1 },
      });
      expect(results.methods['pick-longer']!.accuracy).toMatchObject({ mean: 113 / 419, n: 419 });
      expect(results.methods['pick-shorter']!.accuracy).toMatchObject({ mean: 304 / 419, n: 419 });
    },
  );
});

describe('ties', () => {
  it('equal primary scores are decided by the tie-break scores, strictly; without one a tie is wrong', () => {
    expect(pairOutcome({ chosen: 0.5, rejected: 0.5, tieBreak: { chosen: 0.3, rejected: -0.1 } })).toEqual({
      correct: true,
      tied: true,
    });
    expect(pairOutcome({ chosen: 0.5, rejected: 0.5, tieBreak: { chosen: -0.3, rejected: -0.1 } })).toEqual({
      correct: false,
      tied: true,
    });
    expect(pairOutcome({ chosen: 0.5, rejected: 0.5, tieBreak: { chosen: 0.2, rejected: 0.2 } })).toEqual({
      correct: false,
      tied: true,
    });
    expect(pairOutcome({ chosen: 0.5, rejected: 0.5 })).toEqual({ correct: false, tied: true });
    expect(pairOutcome({ chosen: 0.4, rejected: 0.6, tieBreak: { chosen: 1, rejected: 0 } })).toEqual({
      correct: false,
      tied: false,
    }); // the primary decides
    expect(pairOutcome({ chosen: NaN, rejected: NaN })).toEqual({ correct: false, tied: false });
  });

  it('tie rates: the share of pairs whose primary scores tie, and the share of those a tie-break decided', () => {
    const r = aggregate(
      [
        rec('vote', 'a', 0.5, 0.5, { tieBreak: { chosen: 2, rejected: 1 } }),
        rec('vote', 'b', 0.5, 0.5, { tieBreak: { chosen: 1, rejected: 1 } }),
        rec('vote', 'c', 0.7, 0.2),
        rec('vote', 'd', 0.1, 0.3),
      ],
      meta,
    );
    expect(r.methods.vote!.ties).toEqual({ rate: 0.5, broken: 0.5 });
    expect(r.methods.vote!.accuracy.mean).toBe(0.5); // a (broken right) and c
  });

  it('SAV: the share of heads nearer the Yes mean, and the summed cosine margin', () => {
    // Two heads of size 2. Yes means (1,0) and (0,1); No means (0,1) and (1,0): head 0 says Yes for x·(1,0), head 1 for
    // x·(0,1).
    const model: SavModel = {
      heads: [
        [0, 0],
        [0, 1],
      ],
      classMeans: [Float32Array.from([1, 0, 0, 1]), Float32Array.from([0, 1, 1, 0])],
      headAccuracy: new Float32Array(2),
    };
    // x: head 0 at 30° (cos to (1,0) = √3/2, to (0,1) = 1/2), head 1 at 0° (cos to (0,1) = 0, to (1,0) = 1).
    const x = Float32Array.from([Math.sqrt(3) / 2, 0.5, 1, 0]);
    const v = savVote(x, model, { numHeads: 2, headDim: 2 });
    expect(v.share).toBe(0.5); // head 0 votes Yes, head 1 votes No
    expect(v.margin).toBeCloseTo(Math.sqrt(3) / 2 - 0.5 + (0 - 1), 6);
  });
});

describe('intervals over seeds and pairs together', () => {
  it('seeds that disagree widen the interval: two seeds, one all right and one all wrong, give [0, 1]', () => {
    // Resampling the two seeds gives both-right (1/4), both-wrong (1/4) or one of each (1/2): the 2.5% and 97.5% points
    // are 0 and 1.
    const right = Array(50).fill(true),
      wrong = Array(50).fill(false);
    expect(bootstrapSeedsAndPairs([right, wrong], { seed: 3 })).toEqual([0, 1]);
    // The same pairs under both seeds, as the aggregate sees them: each pair's mean is 0.5, but the interval is not
    // [0.5, 0.5].
    const records = [0, 1].flatMap((seed) =>
      Array.from({ length: 50 }, (_, i) => rec('m', `p${i}`, seed === 0 ? 1 : 0, 0.5, { seed })),
    );
    expect(aggregate(records, meta).methods.m!.accuracy.ci95).toEqual([0, 1]);
  });

  it('one seed: the pair bootstrap, close to the normal approximation', () => {
    // 0.75 ± 1.96·sqrt(0.75·0.25/200) = [0.690, 0.810]
    const outcomes = Array.from({ length: 200 }, (_, i) => i % 4 !== 0);
    const [lo, hi] = bootstrapSeedsAndPairs([outcomes], { seed: 1, resamples: 2000 });
    expect(lo).toBeGreaterThan(0.68);
    expect(lo).toBeLessThan(0.7);
    expect(hi).toBeGreaterThan(0.8);
    expect(hi).toBeLessThan(0.82);
  });

  it('the paired difference to arm: per pair, arm right and the other wrong counts +1', () => {
    const records = [
      rec('arm', 'a', 1, 0),
      rec('arm', 'b', 1, 0),
      rec('arm', 'c', 1, 0),
      rec('arm', 'd', 0, 1),
      rec('zero-shot', 'a', 0, 1),
      rec('zero-shot', 'b', 1, 0),
      rec('zero-shot', 'c', 0, 1),
      rec('zero-shot', 'd', 0, 1),
    ];
    const d = aggregate(records, meta).methods['zero-shot']!.vsReference!;
    expect(d).toMatchObject({ reference: 'arm', mean: 0.5, n: 4 }); // (+1 + 0 + 1 + 0) / 4
  });
});

describe('leak-free splits', () => {
  // Six prompts with 3, 2, 1, 1, 1, 1 pairs; one exact duplicate of the first pair.
  const rows = [
    ...[0, 1, 2].map((i) => ({ id: `q0-${i}`, prompt: 'Q0', chosen: `good ${i}`, rejected: `bad ${i}` })),
    ...[0, 1].map((i) => ({
      id: `q1-${i}`,
      prompt: [{ role: 'user', content: 'Q1' }],
      chosen: `fine ${i}`,
      rejected: `poor ${i}`,
    })),
    ...[2, 3, 4, 5].map((q) => ({ id: `q${q}`, prompt: `Q${q}`, chosen: 'yes', rejected: 'no' })),
    { id: 'dup', prompt: 'Q0', chosen: 'good 0', rejected: 'bad 0' },
  ];
  const pairs = () => readExamples(writeRows(rows)).examples as PairExample[];

  it('exact duplicates are left out, the first kept', () => {
    const { pairs: kept, dropped } = dropDuplicatePairs(pairs());
    expect(dropped.map((p) => p.id)).toEqual(['dup']);
    expect(kept).toHaveLength(9);
    // Per-subset pools: the same pair in two subsets belongs to both (each subset's pool serves only its own tests).
    const twoSubsets = readExamples(
      writeRows([
        { id: 'x', subset: 'a', prompt: 'P', chosen: 'c', rejected: 'r' },
        { id: 'y', subset: 'b', prompt: 'P', chosen: 'c', rejected: 'r' },
        { id: 'z', subset: 'b', prompt: 'P', chosen: 'c', rejected: 'r' },
      ]),
    ).examples as PairExample[];
    expect(dropDuplicatePairs(twoSubsets, 'subset').dropped.map((p) => p.id)).toEqual(['z']);
    expect(dropDuplicatePairs(twoSubsets, 'global').dropped.map((p) => p.id)).toEqual(['y', 'z']);
  });

  it(
    'no test pair shares its prompt with a pool pair; the pool has exactly --few-shot pairs; ' + 'the rest is held out',
    () => {
      const { pairs: kept } = dropDuplicatePairs(pairs());
      const promptOf = (p: PairExample) => JSON.stringify(p.prompt);
      let sawSplitPrompt = false;
      for (let seed = 0; seed < 40; seed++) {
        for (const fewShot of [1, 2, 3, 4]) {
          const [split] = drawSplits(kept, fewShot, 'global', seed);
          const poolPrompts = new Set(split!.pool.map(promptOf));
          expect(split!.test.filter((p) => poolPrompts.has(promptOf(p)))).toEqual([]);
          expect(split!.pool).toHaveLength(fewShot);
          expect(split!.pool.length + split!.test.length + split!.heldOut).toBe(9);
          if (split!.heldOut > 0) sawSplitPrompt = true;
        }
      }
      expect(sawSplitPrompt).toBe(true); // some draw filled the pool part-way through a prompt's pairs
      expect(splitNotes(kept, 2, 'global', [0, 1, 2]).promptSiblingsHeldOut).toBe(
        [0, 1, 2].reduce((a, s) => a + drawSplits(kept, 2, 'global', s)[0]!.heldOut, 0),
      );
    },
  );
});

describe('RewardBench sections', () => {
  it("weights are RewardBench's fixed counts (math-prm upweighted to 984), not the pairs a run tested", () => {
    // Two test pairs in each subset: per-run counts would weigh math-prm and hep-python equally (0.5).
    const records = [
      rec('m', 'm1', 1, 0, { subset: 'math-prm' }),
      rec('m', 'm2', 1, 0, { subset: 'math-prm' }),
      rec('m', 'h1', 0, 1, { subset: 'hep-python' }),
      rec('m', 'h2', 0, 1, { subset: 'hep-python' }),
      rec('m', 'l1', 1, 0, { subset: 'llmbar-natural' }),
      rec('m', 'l2', 0, 1, { subset: 'llmbar-natural' }),
      rec('m', 'n1', 1, 0, { subset: 'llmbar-adver-neighbor' }),
      rec('m', 'n2', 1, 0, { subset: 'llmbar-adver-neighbor' }),
    ];
    const sections = aggregate(records, meta).methods.m!.sections;
    expect(sections.Reasoning!.score).toBeCloseTo(984 / (984 + 164), 12);
    expect(sections.Reasoning!.count).toBe(984 + 164);
    expect(sections['Chat Hard']!.score).toBeCloseTo((0.5 * 100 + 1 * 134) / 234, 12);
    expect(sectionScores({ 'xstest-should-refuse': 1, 'xstest-should-respond': 0 }).Safety!.score).toBeCloseTo(
      250 / (250 + 154),
      12,
    );
  });
});

describe('ICL judge demonstrations', () => {
  it('are balanced Yes/No whatever the draw (an odd one out goes either way)', () => {
    const pool = readExamples(
      writeRows(
        Array.from({ length: 16 }, (_, i) => ({ id: `p${i}`, prompt: `Q${i}`, chosen: `c${i}`, rejected: `r${i}` })),
      ),
    ).examples as PairExample[];
    const oddExtra = new Set<number>();
    for (let seed = 0; seed < 30; seed++) {
      const four = iclDemos(pool, 'scalar', 4, seed);
      expect(four.filter((d) => d.answer === 0)).toHaveLength(2);
      expect(new Set(four.map((d) => d.id)).size).toBe(4);
      const three = iclDemos(pool, 'scalar', 3, seed);
      const yes = three.filter((d) => d.answer === 0).length;
      expect([1, 2]).toContain(yes);
      oddExtra.add(yes);
    }
    expect(oddExtra).toEqual(new Set([1, 2]));
    // A pool short of one class gives what it has and fills up with the other.
    const oneSided = iclDemos(pool.slice(0, 1), 'scalar', 4, 0);
    expect(oneSided.map((d) => d.answer).sort()).toEqual([0, 1]);
  });
});

describe('the budget note says how many demonstration draws the means used', () => {
  const note = (fit: Record<string, unknown>) =>
    budgetNotes({ methods: ['arm'], fewShot: 16, pool: 'subset', method: { fit } as never })[0]!;
  it('default: 100 passes in 20 draws of 5; independent draws say nothing more; 7 passes of 3 make 3 draws', () => {
    expect(note({})).toContain(
      'means over 100 passes of 4 in-context demonstrations each (20 demonstration draws, each shared by 5 passes)',
    );
    expect(note({ passesPerDemoSet: 1 })).toContain(
      'means over 100 passes of 4 in-context demonstrations each, and head selection',
    );
    expect(note({ passes: 7, shots: 2, passesPerDemoSet: 3 })).toContain(
      '7 passes of 2 in-context demonstrations each (3 demonstration draws, each shared by 3 passes)',
    );
    expect(note({ shots: 0 })).toContain(
      'means over 100 passes of 0 in-context demonstrations each, and head selection',
    ); // nothing to share
  });
});
