/**
 * From scores to the numbers each protocol sends: the readout of a scalar score (P(Yes), the Yes/No-normalised
 * probability or the logit difference), the weighted combination of several criteria, `/get_reward`'s score
 * transform, `/classify`'s probability, and the fields `arm score` writes (`/v1/score`).
 */
import type { ExampleScore } from './engine-types.js';

/** The `arm` column of a scored row: one definition, shared with `arm score` (src/arm/rm.ts). */
export { armFields } from '../arm/rm.js';

/** What `/get_reward` returns as `rewards` (and `/classify` as P(Yes)): see README "Reward server". */
export type Readout = 'reward' | 'normalized' | 'logit-diff';
/** `scores` from `rewards`: unchanged, log-odds, or 1/0 at a threshold. */
export type ScoreTransform = { kind: 'none' } | { kind: 'logit' } | { kind: 'threshold'; at: number };

/** A scalar score read out as `how` says; null for an item too long to score (or a pair). */
export function readValue(s: ExampleScore, how: Readout): number | null {
  if (s.tooLong || !('reward' in s)) return null;
  return how === 'reward' ? s.reward : how === 'normalized' ? s.normalized : s.logitYes - s.logitNo;
}

/** P(Yes) as read out: a logit difference becomes its sigmoid (the two-way softmax). */
export function probabilityOfYes(s: ExampleScore, how: Readout): number | null {
  const v = readValue(s, how);
  return v === null ? null : how === 'logit-diff' ? 1 / (1 + Math.exp(-v)) : v;
}

/**
 * Item `i`'s value: the only criterion's, or the weighted sum over criteria (`perCriterion[j]` is criterion j's
 * values); null when any of them is null.
 */
export function combineValues(perCriterion: (number | null)[][], weights: number[] | null, i: number): number | null {
  if (!weights) return perCriterion[0]![i]!;
  let sum = 0;
  for (let j = 0; j < weights.length; j++) {
    const v = perCriterion[j]![i];
    if (v === null || v === undefined) return null;
    sum += weights[j]! * v;
  }
  return sum;
}

/** `/get_reward`'s `scores` entry from a reward; an item too long to score gets `tooLongReward`. */
export function transformScore(
  v: number | null,
  transform: ScoreTransform,
  tooLongReward: number | null,
): number | null {
  if (v === null) return tooLongReward;
  if (transform.kind === 'logit') {
    const p = Math.min(1 - 1e-6, Math.max(1e-6, v));
    return Math.log(p / (1 - p));
  }
  if (transform.kind === 'threshold') return v >= transform.at ? 1 : 0;
  return v;
}
