/** From run records to the numbers in results.json: per method, overall and per subset, across seeds. */
import { bootstrapInterval, meanMargin, meanStd, sectionScores } from './metrics.js';
import { METHODS } from './methods.js';
import type { RunRecord, SplitNotes } from './harness.js';

type PairRec = Extract<RunRecord, { type: 'pair' }>;
type SkippedRec = Extract<RunRecord, { type: 'skipped' }>;

/** `n`: test pairs scored (all seeds); `seeds`: how many seeds the mean and std are over (those that ran). */
export interface Score { mean: number; std: number; perSeed: number[]; ci95: [number, number]; n: number; seeds: number }

/** A (method, pool group, seed) that was not run because the method could not be prepared on that pool. */
export interface Skipped { method: string; group: string; seed: number; reason: string; testPairs: number }

export interface MethodResult {
  definition: string;
  accuracy: Score;
  margin: number;
  subsets: Record<string, Score>;
  sections: Record<string, { score: number; count: number; subsets: string[] }>;
  truncatedPairs: number;
  tooLongPairs: number;
  swapConsistency?: number;
  verdictAccuracy?: number;
  cost: { seconds: number; secondsPerPair: number; forwardTokens: number; forwardTokensPerPair: number; prepareSeconds: number; prepareTokens: number };
  /** Pool groups and seeds this method was not run on, and why; its scores cover the rest. */
  skipped: Skipped[];
  /** [layer, head] → how many of the method's fits used that head (for the heat map). */
  headCounts?: Record<string, number>;
  fits?: number;
}

export interface Results {
  dataset: string;
  model: string;
  /** Layers × heads of the model, for the heat map. */
  shape: { layers: number; heads: number };
  fewShot: number;
  seeds: number[];
  pool: string;
  methods: Record<string, MethodResult>;
  /** Distinct test pairs (seed, id) whose prompt was cut to fit, by any method. */
  truncatedItems: number;
  /** Distinct test pairs that could not be scored at all (a response longer than the budget). */
  tooLongItems: number;
  /** Every skipped (method, pool group, seed), for all methods. */
  skipped: Skipped[];
  /** Thin and dropped subsets, when the harness passed them. */
  splits?: SplitNotes;
  generatedAt: string;
}

function score(recs: PairRec[], seeds: number[], bootstrapSeed: number): Score {
  const bySeed = seeds.map((s) => recs.filter((r) => r.seed === s)).filter((x) => x.length);
  const perSeed = bySeed.map((x) => x.filter((r) => r.correct).length / x.length); // the stored outcome: ties and unscorable are wrong
  const { mean, std } = meanStd(perSeed);
  // Interval: percentile bootstrap over distinct test pairs (a pair tested under several seeds contributes its
  // mean correctness once), so repeats across seeds are not counted as independent evidence.
  const byId = new Map<string, { hits: number; n: number }>();
  for (const r of recs) {
    const e = byId.get(r.id) ?? { hits: 0, n: 0 };
    e.hits += r.correct ? 1 : 0;
    e.n++;
    byId.set(r.id, e);
  }
  const perPair = [...byId.values()].map((e) => e.hits / e.n);
  return { mean, std, perSeed, ci95: bootstrapInterval(perPair, { seed: bootstrapSeed }), n: recs.length, seeds: perSeed.length };
}

export function aggregate(records: RunRecord[], meta: { dataset: string; model: string; shape: { layers: number; heads: number }; fewShot: number; pool: string; splits?: SplitNotes }): Results {
  const pairs = records.filter((r): r is PairRec => r.type === 'pair');
  const skipped: Skipped[] = records.filter((r): r is SkippedRec => r.type === 'skipped')
    .map((r) => ({ method: r.method, group: r.group, seed: r.seed, reason: r.reason, testPairs: r.testPairs }))
    .sort((a, b) => a.method.localeCompare(b.method) || a.group.localeCompare(b.group) || a.seed - b.seed);
  const seeds = [...new Set([...pairs, ...skipped].map((r) => r.seed))].sort((a, b) => a - b);
  const methods: Record<string, MethodResult> = {};
  // A method skipped on every pool still gets a row, so its absence is explained rather than silent.
  for (const name of [...new Set([...pairs, ...skipped].map((r) => r.method))]) {
    const recs = pairs.filter((r) => r.method === name);
    const subsets: Record<string, Score> = {};
    for (const sub of [...new Set(recs.map((r) => r.subset))].sort()) subsets[sub] = score(recs.filter((r) => r.subset === sub), seeds, 1);
    const costs = records.filter((r): r is Extract<RunRecord, { type: 'cost' }> => r.type === 'cost' && r.method === name);
    const preps = records.filter((r): r is Extract<RunRecord, { type: 'prepared' }> => r.type === 'prepared' && r.method === name);
    const skippedRecs = records.filter((r): r is SkippedRec => r.type === 'skipped' && r.method === name);
    const seconds = costs.reduce((a, c) => a + c.seconds, 0), tokens = costs.reduce((a, c) => a + c.tokens, 0), scored = costs.reduce((a, c) => a + c.pairs, 0);
    const result: MethodResult = {
      definition: METHODS[name]?.definition ?? '',
      accuracy: score(recs, seeds, 0),
      margin: meanMargin(recs),
      subsets,
      sections: sectionScores(Object.fromEntries(Object.entries(subsets).map(([k, v]) => [k, { accuracy: v.mean, count: v.n / Math.max(1, v.perSeed.length) }]))),
      truncatedPairs: recs.filter((r) => r.truncated).length,
      tooLongPairs: recs.filter((r) => r.tooLong).length,
      skipped: skipped.filter((k) => k.method === name),
      cost: {
        seconds, secondsPerPair: scored ? seconds / scored : NaN, forwardTokens: tokens, forwardTokensPerPair: scored ? tokens / scored : NaN,
        // A failed preparation still cost its time and tokens.
        prepareSeconds: [...preps, ...skippedRecs].reduce((a, p) => a + p.seconds, 0), prepareTokens: [...preps, ...skippedRecs].reduce((a, p) => a + p.tokens, 0),
      },
    };
    const swaps = recs.filter((r) => r.swapConsistent !== undefined);
    if (swaps.length) result.swapConsistency = swaps.filter((r) => r.swapConsistent).length / swaps.length;
    const verdicts = recs.filter((r) => r.verdictCorrect !== undefined);
    if (verdicts.length) result.verdictAccuracy = verdicts.filter((r) => r.verdictCorrect).length / verdicts.length;
    const withHeads = preps.filter((p) => p.heads);
    if (withHeads.length) {
      result.fits = withHeads.length;
      result.headCounts = {};
      for (const p of withHeads) for (const [l, h] of p.heads!) result.headCounts[`${l},${h}`] = (result.headCounts[`${l},${h}`] ?? 0) + 1;
    }
    methods[name] = result;
  }
  const distinct = (flag: (r: PairRec) => boolean) => new Set(pairs.filter(flag).map((r) => `${r.seed}|${r.id}`)).size;
  return {
    ...meta, seeds, methods,
    truncatedItems: distinct((r) => r.truncated),
    tooLongItems: distinct((r) => r.tooLong),
    skipped,
    generatedAt: new Date().toISOString(),
  };
}
