/**
 * Metrics with the conventions users expect: accuracy with ties counted wrong, TRL's margin, seeded
 * percentile-bootstrap 95% intervals, mean ± std across seeds, and RewardBench section scores (subset
 * accuracies weighted by example counts).
 */
import { Rng } from '../util/rng.js';

export interface PairOutcome { chosen: number; rejected: number }

/** A pair is correct only when chosen > rejected strictly; NaN (unscorable) is wrong. */
export const isCorrect = (p: PairOutcome) => p.chosen > p.rejected;

export function accuracy(pairs: PairOutcome[]): number {
  if (pairs.length === 0) return NaN;
  return pairs.filter(isCorrect).length / pairs.length;
}

/** TRL's reward-trainer "margin": mean of chosen − rejected over scorable pairs. */
export function meanMargin(pairs: PairOutcome[]): number {
  const ok = pairs.filter((p) => Number.isFinite(p.chosen - p.rejected));
  return ok.length ? ok.reduce((s, p) => s + (p.chosen - p.rejected), 0) / ok.length : NaN;
}

/** Percentile bootstrap of the mean of outcomes (0/1, or per-pair rates in [0, 1]): `resamples` draws with replacement, seeded. */
export function bootstrapInterval(outcomes: (boolean | number)[], opts: { resamples?: number; seed?: number; level?: number } = {}): [number, number] {
  const n = outcomes.length;
  if (n === 0) return [NaN, NaN];
  const values = outcomes.map(Number);
  const resamples = opts.resamples ?? 1000, level = opts.level ?? 0.95;
  const rng = new Rng(opts.seed ?? 0);
  const means = new Float64Array(resamples);
  for (let r = 0; r < resamples; r++) {
    let total = 0;
    for (let i = 0; i < n; i++) total += values[rng.int(n)]!;
    means[r] = total / n;
  }
  means.sort();
  const lo = quantile(means, (1 - level) / 2), hi = quantile(means, 1 - (1 - level) / 2);
  return [lo, hi];
}

/** Linear-interpolated quantile of sorted values (numpy's default). */
export function quantile(sorted: ArrayLike<number>, q: number): number {
  const pos = (sorted.length - 1) * q;
  const lo = Math.floor(pos), hi = Math.ceil(pos);
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

/** RewardBench v1 sections and their subsets. */
export const REWARDBENCH_SECTIONS: Readonly<Record<string, readonly string[]>> = Object.freeze({
  Chat: ['alpacaeval-easy', 'alpacaeval-length', 'alpacaeval-hard', 'mt-bench-easy', 'mt-bench-med'],
  'Chat Hard': ['mt-bench-hard', 'llmbar-natural', 'llmbar-adver-neighbor', 'llmbar-adver-GPTInst', 'llmbar-adver-GPTOut', 'llmbar-adver-manual'],
  Safety: ['refusals-dangerous', 'refusals-offensive', 'xstest-should-refuse', 'xstest-should-respond', 'donotanswer'],
  Reasoning: ['math-prm', 'hep-cpp', 'hep-go', 'hep-java', 'hep-js', 'hep-python', 'hep-rust'],
});

/**
 * Section score = Σ subset accuracy × subset count / Σ counts over the section's subsets present.
 * Sections with no subset present are left out.
 */
export function sectionScores(perSubset: Record<string, { accuracy: number; count: number }>): Record<string, { score: number; count: number; subsets: string[] }> {
  const out: Record<string, { score: number; count: number; subsets: string[] }> = {};
  for (const [section, subsets] of Object.entries(REWARDBENCH_SECTIONS)) {
    const present = subsets.filter((s) => perSubset[s] && perSubset[s]!.count > 0);
    if (!present.length) continue;
    const count = present.reduce((n, s) => n + perSubset[s]!.count, 0);
    out[section] = { score: present.reduce((a, s) => a + perSubset[s]!.accuracy * perSubset[s]!.count, 0) / count, count, subsets: present };
  }
  return out;
}
