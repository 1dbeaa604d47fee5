// Metrics against hand-computed values (accuracy, std, quantiles, bootstrap, RewardBench sections) and the
// aggregation of run records.
import { describe, expect, it } from 'vitest';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { accuracy, bootstrapInterval, meanMargin, meanStd, quantile, sectionScores } from '../../src/eval/metrics.js';
import { aggregate } from '../../src/eval/aggregate.js';
import { readRecords } from '../../src/eval/run-log.js';

describe('metrics against hand-computed values', () => {
  it('accuracy counts ties and NaN as wrong', () => {
    const pairs = [
      { chosen: 0.9, rejected: 0.1 },
      { chosen: 0.5, rejected: 0.5 },
      { chosen: 0.2, rejected: 0.3 },
      { chosen: NaN, rejected: 0.1 },
    ];
    expect(accuracy(pairs)).toBe(0.25);
    expect(meanMargin(pairs)).toBeCloseTo((0.8 + 0 - 0.1) / 3, 12);
  });

  it('mean and sample std', () => {
    const r = meanStd([0.5, 0.7, 0.6]);
    expect(r.mean).toBeCloseTo(0.6, 12);
    expect(r.std).toBeCloseTo(0.1, 12); // sqrt((0.01 + 0.01 + 0) / 2)
    expect(meanStd([0.4]).std).toBe(0);
  });

  it('quantile interpolates like numpy', () => {
    expect(quantile([1, 2, 3, 4], 0.25)).toBeCloseTo(1.75, 12);
    expect(quantile([1, 2, 3, 4], 0.975)).toBeCloseTo(3.925, 12);
  });

  it('bootstrap: degenerate cases are exact; a known case is seeded, reproducible and covers the mean', () => {
    expect(bootstrapInterval([true, true, true])).toEqual([1, 1]);
    expect(bootstrapInterval([false, false])).toEqual([0, 0]);
    const outcomes = Array.from({ length: 200 }, (_, i) => i % 4 !== 0); // accuracy 0.75
    const a = bootstrapInterval(outcomes, { seed: 1, resamples: 2000 });
    expect(bootstrapInterval(outcomes, { seed: 1, resamples: 2000 })).toEqual(a);
    // Normal approximation: 0.75 ± 1.96·sqrt(0.75·0.25/200) = [0.690, 0.810]
    expect(a[0]).toBeGreaterThan(0.68);
    expect(a[0]).toBeLessThan(0.7);
    expect(a[1]).toBeGreaterThan(0.8);
    expect(a[1]).toBeLessThan(0.82);
  });

  it("RewardBench sections are weighted by RewardBench's fixed example counts", () => {
    const s = sectionScores({ 'llmbar-natural': 0.8, 'llmbar-adver-neighbor': 0.5, 'some-other': 1 });
    expect(Object.keys(s)).toEqual(['Chat Hard']);
    expect(s['Chat Hard']!.score).toBeCloseTo((0.8 * 100 + 0.5 * 134) / 234, 12);
    expect(s['Chat Hard']!.count).toBe(234);
  });
});

describe('aggregation', () => {
  const rec = (id: string, seed: number, chosen: number, rejected: number) => ({
    type: 'pair' as const,
    method: 'm',
    seed,
    group: 'all',
    id,
    subset: 's',
    chosen,
    rejected,
    correct: chosen > rejected,
    margin: chosen - rejected,
    truncated: false,
    tooLong: Number.isNaN(chosen + rejected),
  });
  const meta = { dataset: 'd', model: 'x', shape: { layers: 1, heads: 1 }, fewShot: 0, pool: 'global' };

  it('an unscorable pair stays wrong after the run log round-trips through JSON (NaN is written as null)', () => {
    const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'arm-agg-')), 'items.jsonl');
    fs.writeFileSync(
      file,
      [rec('a', 0, 0.3, NaN), rec('b', 0, 0.9, 0.1)].map((r) => JSON.stringify(r)).join('\n') + '\n',
    );
    const r = aggregate(readRecords(file), meta);
    expect(r.methods.m!.allPairs.mean).toBe(0.5); // over all its pairs, the unscorable one wrong
    expect(r.methods.m!.accuracy).toMatchObject({ mean: 1, n: 1 }); // the common set leaves it out
    expect(r.methods.m!.coverage).toEqual({ scored: 1, total: 2, rate: 0.5 });
    expect(r.methods.m!.margin).toBeCloseTo(0.8, 12); // the unscorable pair is left out of the margin
    expect(r.tooLongItems).toBe(1);
  });

  it("seeds that agree add no width from the seed draw: same accuracy, std 0, an interval like one seed's", () => {
    const pairs = Array.from({ length: 100 }, (_, i) => [`p${i}`, i % 10 < 6] as const);
    const one = aggregate(
      pairs.map(([id, ok]) => rec(id, 0, ok ? 1 : 0, 0.5)),
      meta,
    );
    const five = aggregate(
      [0, 1, 2, 3, 4].flatMap((s) => pairs.map(([id, ok]) => rec(id, s, ok ? 1 : 0, 0.5))),
      meta,
    );
    expect(five.methods.m!.accuracy.mean).toBeCloseTo(0.6, 12);
    expect(five.methods.m!.accuracy.std).toBe(0);
    // Five seeds resample pairs five times per draw: the interval is narrower than one seed's, around 0.6.
    const [lo1, hi1] = one.methods.m!.accuracy.ci95,
      [lo5, hi5] = five.methods.m!.accuracy.ci95;
    expect(lo5).toBeGreaterThan(lo1);
    expect(hi5).toBeLessThan(hi1);
    expect(lo5).toBeLessThan(0.6);
    expect(hi5).toBeGreaterThan(0.6);
  });
});
