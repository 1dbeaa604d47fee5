/**
 * Label noise in the few-shot pool (`arm eval --pool-label-noise p`): a seeded fraction p of a pool's examples gets
 * the wrong label (a pair's chosen and rejected swapped, a scalar item's yes/no flipped) before any method is
 * prepared on it. Test pairs are never touched. The flipped set depends on (seed, group) and the pool only, so
 * every method of a seed learns from the same noisy pool, and the sets nest: p = 0.1's flips are among p = 0.25's.
 */
import { createHash } from 'node:crypto';
import type { Example } from '../data/examples.js';
import { Rng } from '../util/rng.js';

/** How many of `n` pool examples a noise level p flips: the nearest whole number (half rounds up). */
export const flipCount = (p: number, n: number) => Math.round(p * n);

/** The example with its label flipped: chosen ↔ rejected for a pair, true ↔ false for a labelled scalar item. */
export function flipLabel<T extends Example>(e: T): T {
  if (e.kind === 'pair') return { ...e, chosen: e.rejected, rejected: e.chosen };
  if (e.label === null) throw new Error(`${e.id}: an unlabelled item has no label to flip`);
  return { ...e, label: !e.label };
}

/**
 * The pool with `flipCount(p, pool.length)` of its examples flipped, and the ids flipped (in pool order). Which
 * ones: the first of a permutation of the pool seeded by (seed, group), so the same in every method of the seed.
 * `p` must be in [0, 1].
 */
export function flipPoolLabels<T extends Example>(
  pool: T[],
  p: number,
  seed: number,
  group: string,
): { pool: T[]; flipped: string[] } {
  if (!(p >= 0 && p <= 1)) throw new Error(`pool label noise must be in [0, 1], got ${p}`);
  const count = flipCount(p, pool.length);
  if (count === 0) return { pool, flipped: [] };
  const noiseSeed = parseInt(createHash('sha256').update(`noise:${seed}:${group}`).digest('hex').slice(0, 8), 16);
  const chosen = new Set(new Rng(noiseSeed).sample(pool.length, pool.length).slice(0, count));
  const flipped = pool.map((e, i) => (chosen.has(i) ? flipLabel(e) : e));
  return { pool: flipped, flipped: pool.filter((_, i) => chosen.has(i)).map((e) => e.id) };
}
