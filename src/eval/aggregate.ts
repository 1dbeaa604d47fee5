/**
 * From run records to the numbers in results.json: per method, overall and per subset, across seeds. Every
 * method is scored on the common set (the (seed, pair)s that every method in the run scored), so a method is
 * never ranked on pairs another could not score; each method's coverage and its score on all of its own
 * pairs (unscorable ones wrong) are reported beside it.
 */
import { bootstrapSeedsAndPairs, meanMargin, meanStd, sectionScores } from './metrics.js';
import { METHODS } from './methods.js';
import type { Provenance } from './provenance.js';
import { isScored, isTied, type PairRunRecord, type RunRecord, type SplitNotes } from './records.js';
import {
  bestOfNScores,
  judgeBenchScores,
  rmBenchScores,
  type BestOfNResult,
  type JudgeBenchCell,
  type RmBenchDomain,
} from './benchmarks.js';

type SkippedRec = Extract<RunRecord, { type: 'skipped' }>;

/**
 * `n`: test pairs scored (all seeds); `seeds`: how many seeds the mean and std are over (those that ran). The
 * interval bootstraps over seeds and pairs together (see bootstrapSeedsAndPairs).
 */
export interface Score {
  mean: number;
  std: number;
  perSeed: number[];
  ci95: [number, number];
  n: number;
  seeds: number;
}

/** A (method, pool group, seed) that was not run because the method could not be prepared on that pool. */
interface Skipped {
  method: string;
  group: string;
  seed: number;
  reason: string;
  testPairs: number;
}

/** Paired difference `reference − this method` in accuracy on the common set, with its interval. */
interface Difference {
  reference: string;
  mean: number;
  ci95: [number, number];
  n: number;
}

export interface MethodResult {
  definition: string;
  /** Marks a control (a length rule, a constant score) rather than a judge. */
  control?: string;
  /** On the common set: the headline number. */
  accuracy: Score;
  /** On every test pair given to this method (skipped pools aside), unscorable pairs counted wrong. */
  allPairs: Score;
  /** Test pairs this method scored, of those it was given (skipped pools count as given and not scored). */
  coverage: { scored: number; total: number; rate: number };
  /** On the common set: share of pairs whose primary scores tie, and share of those a tie-break decided. */
  ties: { rate: number; broken: number };
  /** Paired difference to the reference method (arm when it ran), on the common set. */
  vsReference?: Difference;
  margin: number;
  subsets: Record<string, Score>;
  sections: Record<string, { score: number; count: number; subsets: string[] }>;
  truncatedPairs: number;
  tooLongPairs: number;
  /**
   * Share of the judge prompts' text tokens the model's vocabulary did not know (<unk>, or byte fallback:
   * arm/unknown-tokens.ts) over the method's test pairs; over 0.5 its scores mean little. Absent for methods that
   * read no prompt, and for logs written before it was recorded.
   */
  unknownTokenRate?: number;
  swapConsistency?: number;
  verdictAccuracy?: number;
  cost: {
    seconds: number;
    secondsPerPair: number;
    forwardTokens: number;
    forwardTokensPerPair: number;
    prepareSeconds: number;
    prepareTokens: number;
  };
  /** Pool groups and seeds this method was not run on, and why; its scores cover the rest. */
  skipped: Skipped[];
  /** RM-Bench's 3×3 scores per domain (hard / normal / easy), on the common set, when the dataset is RM-Bench. */
  rmBench?: Record<string, RmBenchDomain>;
  /**
   * RewardBench 2's best-of-N (ties share credit) per subset and Ties' own score, when the dataset has multi-response
   * rows.
   */
  bestOfN?: BestOfNResult;
  /** JudgeBench per response set and category: one judgment per pair, and both orders for pairwise judges. */
  judgeBench?: Record<string, Record<string, JudgeBenchCell>>;
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
  /** The fraction of each few-shot pool whose labels were flipped (0: none). */
  poolLabelNoise: number;
  seeds: number[];
  pool: string;
  /** What reproduces the run (absent in results written before it was recorded). */
  provenance?: Provenance;
  methods: Record<string, MethodResult>;
  /** The (seed, pair)s every method that scored anything scored: what `accuracy` is over. */
  commonSet: { methods: string[]; pairs: number; testPairs: number };
  /** The method differences are measured against (arm when it ran). */
  reference: string | null;
  /** What each method was given to learn from, in words (the ICL judge sees fewer examples than the ARM). */
  budget?: string[];
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

function score(recs: PairRunRecord[], seeds: number[], bootstrapSeed: number): Score {
  const bySeed = seeds.map((s) => recs.filter((r) => r.seed === s)).filter((x) => x.length);
  // the stored outcome: ties left and unscorable are wrong
  const perSeed = bySeed.map((x) => x.filter((r) => r.correct).length / x.length);
  const { mean, std } = meanStd(perSeed);
  const ci95 = bootstrapSeedsAndPairs(
    bySeed.map((x) => x.map((r) => r.correct)),
    { seed: bootstrapSeed },
  );
  return { mean, std, perSeed, ci95, n: recs.length, seeds: perSeed.length };
}

const key = (r: { seed: number; id: string }) => `${r.seed}|${r.id}`;

/** Per seed, the paired outcome difference (reference correct − other correct) on pairs both hold. */
function difference(
  reference: string,
  ref: PairRunRecord[],
  other: PairRunRecord[],
  seeds: number[],
  bootstrapSeed: number,
): Difference {
  const refByKey = new Map(ref.map((r) => [key(r), r]));
  const perSeed = seeds
    .map((s) =>
      other
        .filter((r) => r.seed === s && refByKey.has(key(r)))
        .map((r) => Number(refByKey.get(key(r))!.correct) - Number(r.correct)),
    )
    .filter((x) => x.length);
  const mean = perSeed.length
    ? perSeed.reduce((a, x) => a + x.reduce((u, v) => u + v, 0) / x.length, 0) / perSeed.length
    : NaN;
  return {
    reference,
    mean,
    ci95: bootstrapSeedsAndPairs(perSeed, { seed: bootstrapSeed }),
    n: perSeed.reduce((a, x) => a + x.length, 0),
  };
}

export interface AggregateMeta {
  dataset: string;
  model: string;
  shape: { layers: number; heads: number };
  fewShot: number;
  poolLabelNoise?: number;
  pool: string;
  provenance?: Provenance;
  splits?: SplitNotes;
  budget?: string[];
}

export function aggregate(records: RunRecord[], meta: AggregateMeta): Results {
  const pairs = records.filter((r): r is PairRunRecord => r.type === 'pair');
  const skipped: Skipped[] = records
    .filter((r): r is SkippedRec => r.type === 'skipped')
    .map((r) => ({ method: r.method, group: r.group, seed: r.seed, reason: r.reason, testPairs: r.testPairs }))
    .sort((a, b) => a.method.localeCompare(b.method) || a.group.localeCompare(b.group) || a.seed - b.seed);
  const seeds = [...new Set([...pairs, ...skipped].map((r) => r.seed))].sort((a, b) => a - b);
  const names = [...new Set([...pairs, ...skipped].map((r) => r.method))];
  const { inSet, common, testKeys } = commonSet(pairs, names);
  const reference = inSet.includes('arm') ? 'arm' : null;
  const run: RunView = {
    records,
    pairs,
    skipped,
    seeds,
    reference,
    commonOf: (name) => pairs.filter((r) => r.method === name && common.has(key(r))),
  };
  const methods: Record<string, MethodResult> = {};
  // A method skipped on every pool still gets a row, so its absence is explained rather than silent.
  for (const name of names) methods[name] = methodResult(run, name);
  const distinct = (flag: (r: PairRunRecord) => boolean) => new Set(pairs.filter(flag).map(key)).size;
  return {
    ...meta,
    poolLabelNoise: meta.poolLabelNoise ?? 0,
    seeds,
    methods,
    commonSet: { methods: inSet, pairs: common.size, testPairs: testKeys.size },
    reference,
    truncatedItems: distinct((r) => r.truncated),
    tooLongItems: distinct((r) => r.tooLong),
    skipped,
    generatedAt: new Date().toISOString(),
  };
}

/**
 * The common set: (seed, pair)s scored by every method that scored anything. A method that scored nothing (skipped
 * everywhere) is left out of the definition, or the set would be empty; its row says why.
 */
function commonSet(
  pairs: PairRunRecord[],
  names: string[],
): { inSet: string[]; common: Set<string>; testKeys: Set<string> } {
  const scoredBy = new Map<string, Set<string>>();
  for (const r of pairs)
    if (isScored(r)) {
      if (!scoredBy.has(r.method)) scoredBy.set(r.method, new Set());
      scoredBy.get(r.method)!.add(key(r));
    }
  const inSet = names.filter((m) => scoredBy.has(m));
  const testKeys = new Set(pairs.map(key));
  const common = new Set([...testKeys].filter((k) => inSet.every((m) => scoredBy.get(m)!.has(k))));
  return { inSet, common, testKeys };
}

/** A run's records as the per-method results read them. */
interface RunView {
  records: RunRecord[];
  pairs: PairRunRecord[];
  skipped: Skipped[];
  seeds: number[];
  reference: string | null;
  /** A method's pair records on the common set. */
  commonOf: (name: string) => PairRunRecord[];
}

/** One method's row of results.json (its fields in a fixed order; the optional ones only where they apply). */
function methodResult(run: RunView, name: string): MethodResult {
  const { records, seeds } = run;
  const own = run.pairs.filter((r) => r.method === name);
  const recs = run.commonOf(name);
  const subsets: Record<string, Score> = {};
  for (const sub of [...new Set(recs.map((r) => r.subset))].sort())
    subsets[sub] = score(
      recs.filter((r) => r.subset === sub),
      seeds,
      1,
    );
  const preps = records.filter(
    (r): r is Extract<RunRecord, { type: 'prepared' }> => r.type === 'prepared' && r.method === name,
  );
  const skippedRecs = records.filter((r): r is SkippedRec => r.type === 'skipped' && r.method === name);
  const tied = recs.filter(isTied);
  const total = own.length + skippedRecs.reduce((a, k) => a + k.testPairs, 0);
  const scoredPairs = own.filter(isScored).length;
  const result: MethodResult = {
    definition: METHODS[name]?.definition ?? '',
    ...(METHODS[name]?.control ? { control: METHODS[name]!.control } : {}),
    accuracy: score(recs, seeds, 0),
    allPairs: score(own, seeds, 0),
    coverage: { scored: scoredPairs, total, rate: total ? scoredPairs / total : NaN },
    ties: {
      rate: recs.length ? tied.length / recs.length : NaN,
      broken: tied.length
        ? tied.filter((r) => r.tieBreak && r.tieBreak.chosen !== r.tieBreak.rejected).length / tied.length
        : NaN,
    },
    margin: meanMargin(recs),
    subsets,
    sections: sectionScores(Object.fromEntries(Object.entries(subsets).map(([k, v]) => [k, v.mean]))),
    truncatedPairs: own.filter((r) => r.truncated).length,
    tooLongPairs: own.filter((r) => r.tooLong).length,
    ...unknownTokenRate(own),
    skipped: run.skipped.filter((k) => k.method === name),
    cost: methodCost(records, name, [...preps, ...skippedRecs]),
  };
  addBenchmarkScores(result, recs);
  if (run.reference && name !== run.reference && recs.length)
    result.vsReference = difference(run.reference, run.commonOf(run.reference), recs, seeds, 2);
  const swaps = recs.filter((r) => r.swapConsistent !== undefined);
  if (swaps.length) result.swapConsistency = swaps.filter((r) => r.swapConsistent).length / swaps.length;
  const verdicts = recs.filter((r) => r.verdictCorrect !== undefined);
  if (verdicts.length) result.verdictAccuracy = verdicts.filter((r) => r.verdictCorrect).length / verdicts.length;
  const withHeads = preps.filter((p) => p.heads);
  if (withHeads.length) {
    result.fits = withHeads.length;
    result.headCounts = {};
    for (const p of withHeads)
      for (const [l, h] of p.heads!) result.headCounts[`${l},${h}`] = (result.headCounts[`${l},${h}`] ?? 0) + 1;
  }
  return result;
}

/** Scoring time and tokens per pair, and what preparing cost (a failed preparation still cost its time and tokens). */
function methodCost(
  records: RunRecord[],
  name: string,
  preparations: { seconds: number; tokens: number }[],
): MethodResult['cost'] {
  const costs = records.filter(
    (r): r is Extract<RunRecord, { type: 'cost' }> => r.type === 'cost' && r.method === name,
  );
  const seconds = costs.reduce((a, c) => a + c.seconds, 0),
    tokens = costs.reduce((a, c) => a + c.tokens, 0),
    scored = costs.reduce((a, c) => a + c.pairs, 0);
  return {
    seconds,
    secondsPerPair: scored ? seconds / scored : NaN,
    forwardTokens: tokens,
    forwardTokensPerPair: scored ? tokens / scored : NaN,
    prepareSeconds: preparations.reduce((a, p) => a + p.seconds, 0),
    prepareTokens: preparations.reduce((a, p) => a + p.tokens, 0),
  };
}

/** RM-Bench, RewardBench 2 and JudgeBench scores, for the datasets that are one of them. */
function addBenchmarkScores(result: MethodResult, recs: PairRunRecord[]): void {
  const rmBench = rmBenchScores(recs),
    bestOfN = bestOfNScores(recs),
    judgeBench = judgeBenchScores(recs);
  if (rmBench) result.rmBench = rmBench;
  if (bestOfN) result.bestOfN = bestOfN;
  if (judgeBench) result.judgeBench = judgeBench;
}

/** The unknown share of the judge prompts' text tokens over a method's pair records (none when not measured). */
function unknownTokenRate(own: PairRunRecord[]): Pick<MethodResult, 'unknownTokenRate'> {
  const measured = own.filter((r) => r.textTokens !== undefined);
  const text = measured.reduce((n, r) => n + r.textTokens!, 0);
  return text ? { unknownTokenRate: measured.reduce((n, r) => n + (r.unknownTokens ?? 0), 0) / text } : {};
}
