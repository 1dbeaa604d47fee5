/**
 * Metrics with the conventions users expect: accuracy with ties counted wrong, TRL's margin, seeded
 * percentile-bootstrap 95% intervals (over seeds and pairs together), mean ± std across seeds, and RewardBench
 * section scores (subset accuracies weighted by RewardBench's fixed example counts).
 */
import { Rng } from '../util/rng.js';

export interface PairOutcome {
  chosen: number;
  rejected: number;
}

/** A pair is correct only when chosen > rejected strictly; NaN (unscorable) is wrong. */
const isCorrect = (p: PairOutcome) => p.chosen > p.rejected;

export function accuracy(pairs: PairOutcome[]): number {
  if (pairs.length === 0) return NaN;
  return pairs.filter(isCorrect).length / pairs.length;
}

/** TRL's reward-trainer "margin": mean of chosen − rejected over scorable pairs. */
export function meanMargin(pairs: PairOutcome[]): number {
  const ok = pairs.filter((p) => Number.isFinite(p.chosen - p.rejected));
  return ok.length ? ok.reduce((s, p) => s + (p.chosen - p.rejected), 0) / ok.length : NaN;
}

/**
 * Percentile bootstrap of the mean of outcomes (0/1, or per-pair rates in [0, 1]): `resamples` draws with replacement,
 * seeded.
 */
export function bootstrapInterval(
  outcomes: (boolean | number)[],
  opts: { resamples?: number; seed?: number; level?: number } = {},
): [number, number] {
  const n = outcomes.length;
  if (n === 0) return [NaN, NaN];
  const values = outcomes.map(Number);
  const resamples = opts.resamples ?? 1000,
    level = opts.level ?? 0.95;
  const rng = new Rng(opts.seed ?? 0);
  const means = new Float64Array(resamples);
  for (let r = 0; r < resamples; r++) {
    let total = 0;
    for (let i = 0; i < n; i++) total += values[rng.int(n)]!;
    means[r] = total / n;
  }
  means.sort();
  const lo = quantile(means, (1 - level) / 2),
    hi = quantile(means, 1 - (1 - level) / 2);
  return [lo, hi];
}

/**
 * Percentile bootstrap over seeds and pairs together: each resample draws seeds with replacement, then within
 * each drawn seed its pairs with replacement, and averages the per-seed means. Both sources of variation are in
 * the interval: which pairs were tested and which few-shot pool the seed drew. `perSeed[s]` holds seed s's
 * per-pair outcomes (0/1, or a paired difference in −1..1). With one seed it is the plain pair bootstrap.
 */
export function bootstrapSeedsAndPairs(
  perSeed: (boolean | number)[][],
  opts: { resamples?: number; seed?: number; level?: number } = {},
): [number, number] {
  const seeds = perSeed.filter((x) => x.length).map((x) => x.map(Number));
  if (seeds.length === 0) return [NaN, NaN];
  const resamples = opts.resamples ?? 1000,
    level = opts.level ?? 0.95;
  const rng = new Rng(opts.seed ?? 0);
  const means = new Float64Array(resamples);
  for (let r = 0; r < resamples; r++) {
    let total = 0;
    for (let k = 0; k < seeds.length; k++) {
      const values = seeds[rng.int(seeds.length)]!;
      let sum = 0;
      for (let i = 0; i < values.length; i++) sum += values[rng.int(values.length)]!;
      total += sum / values.length;
    }
    means[r] = total / seeds.length;
  }
  means.sort();
  return [quantile(means, (1 - level) / 2), quantile(means, 1 - (1 - level) / 2)];
}

/** Linear-interpolated quantile of sorted values (numpy's default). */
export function quantile(sorted: ArrayLike<number>, q: number): number {
  const pos = (sorted.length - 1) * q;
  const lo = Math.floor(pos),
    hi = Math.ceil(pos);
  return sorted[lo]! + (sorted[hi]! - sorted[lo]!) * (pos - lo);
}

/** Mean and sample standard deviation (n − 1); std is 0 for a single value. */
export function meanStd(xs: number[]): { mean: number; std: number; n: number } {
  const n = xs.length;
  if (n === 0) return { mean: NaN, std: NaN, n };
  const mean = xs.reduce((a, b) => a + b, 0) / n;
  const std = n > 1 ? Math.sqrt(xs.reduce((a, b) => a + (b - mean) ** 2, 0) / (n - 1)) : 0;
  return { mean, std, n };
}

/** RewardBench v1 sections and their subsets (allenai/reward-bench, rewardbench/constants.py, SUBSET_MAPPING). */
const REWARDBENCH_SECTIONS: Readonly<Record<string, readonly string[]>> = Object.freeze({
  Chat: ['alpacaeval-easy', 'alpacaeval-length', 'alpacaeval-hard', 'mt-bench-easy', 'mt-bench-med'],
  'Chat Hard': [
    'mt-bench-hard',
    'llmbar-natural',
    'llmbar-adver-neighbor',
    'llmbar-adver-GPTInst',
    'llmbar-adver-GPTOut',
    'llmbar-adver-manual',
  ],
  Safety: ['refusals-dangerous', 'refusals-offensive', 'xstest-should-refuse', 'xstest-should-respond', 'donotanswer'],
  Reasoning: ['math-prm', 'hep-cpp', 'hep-go', 'hep-java', 'hep-js', 'hep-python', 'hep-rust'],
});

/**
 * The fixed example counts RewardBench weights subsets by, transcribed from allenai/reward-bench
 * rewardbench/constants.py (EXAMPLE_COUNTS, commit a32e272). They are the full dataset's counts, not what a run
 * happened to test, so a seed's pool draw or a --limit does not move the weights. math-prm has 447 rows but
 * counts 984 there, upweighted so math weighs as much as the six code subsets together (6 × 164).
 */
const REWARDBENCH_EXAMPLE_COUNTS: Readonly<Record<string, number>> = Object.freeze({
  'alpacaeval-easy': 100,
  'alpacaeval-length': 95,
  'alpacaeval-hard': 95,
  'mt-bench-easy': 28,
  'mt-bench-med': 40,
  'mt-bench-hard': 37,
  'llmbar-natural': 100,
  'llmbar-adver-neighbor': 134,
  'llmbar-adver-GPTInst': 92,
  'llmbar-adver-GPTOut': 47,
  'llmbar-adver-manual': 46,
  'refusals-dangerous': 100,
  'refusals-offensive': 100,
  'xstest-should-refuse': 250,
  'xstest-should-respond': 154,
  donotanswer: 136,
  'math-prm': 984,
  'hep-cpp': 164,
  'hep-go': 164,
  'hep-java': 164,
  'hep-js': 164,
  'hep-python': 164,
  'hep-rust': 164,
});

/**
 * Section score = Σ subset accuracy × official count / Σ official counts, over the section's subsets present
 * (as RewardBench computes it). Sections with no subset present are left out.
 */
export function sectionScores(
  accuracies: Record<string, number>,
): Record<string, { score: number; count: number; subsets: string[] }> {
  const out: Record<string, { score: number; count: number; subsets: string[] }> = {};
  for (const [section, subsets] of Object.entries(REWARDBENCH_SECTIONS)) {
    const present = subsets.filter((s) => Number.isFinite(accuracies[s]));
    if (!present.length) continue;
    const count = present.reduce((n, s) => n + REWARDBENCH_EXAMPLE_COUNTS[s]!, 0);
    out[section] = {
      score: present.reduce((a, s) => a + accuracies[s]! * REWARDBENCH_EXAMPLE_COUNTS[s]!, 0) / count,
      count,
      subsets: present,
    };
  }
  return out;
}
