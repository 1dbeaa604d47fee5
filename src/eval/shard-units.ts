/**
 * How a batch job's work is cut into shards (`--shard i/n`, docs/batch-jobs.md). A run's work is a list of units in
 * the order one unsharded run does it; shard i of n takes the contiguous run of units [⌊i·U/n⌋, ⌊(i+1)·U/n⌋), so
 * the shards in index order are the whole list, each unit once. `arm score` cuts its rows into chunks (cli/); `arm
 * eval`'s units are below: one scoring chunk of one seed's split, so a shard scores each test pair in the batch an
 * unsharded run scores it in, and the numbers agree to the bit.
 */
import type { PairExample } from '../data/examples.js';
import { drawSplits, type PoolMode } from './splits.js';

/** Shard `index` (0-based) of `count`. */
export interface Shard {
  index: number;
  count: number;
}

/** "shard-2-of-8": the name of a shard's files and folders. */
export const shardLabel = (s: Shard) => `shard-${s.index}-of-${s.count}`;

/** The units [start, end) shard `s` takes of `total` (contiguous; in index order the shards cover each unit once). */
export function shardRange(total: number, s: Shard): { start: number; end: number } {
  return { start: Math.floor((s.index * total) / s.count), end: Math.floor(((s.index + 1) * total) / s.count) };
}

/**
 * One unit of an evaluation: the test pairs of seed `seed`'s split of `group` that the harness scores in one call
 * per method (`ids`, at most its chunk size, in test order).
 */
export interface EvalUnit {
  seed: number;
  group: string;
  ids: string[];
}

/** What one shard of an evaluation covers. */
export interface EvalShardUnits {
  shard: Shard;
  /** Units in the whole run, and test pairs (seed, pair) in the whole run. */
  total: number;
  testPairs: number;
  /** This shard's range of the run's units, and those units. */
  start: number;
  end: number;
  units: EvalUnit[];
  /** Whether seed `seed`'s test pair `id` is in this shard. */
  has(seed: number, id: string): boolean;
}

/**
 * The units of an evaluation, in the order an unsharded run scores them (seed, then the seed's splits in draw
 * order, then chunks of `chunkSize` test pairs), and the range of them that `shard` takes.
 */
export function evalShardUnits(
  pairs: PairExample[],
  split: { fewShot: number; pool: PoolMode; poolCandidate?: (p: PairExample) => boolean },
  seeds: number[],
  chunkSize: number,
  shard: Shard,
): EvalShardUnits {
  const all: EvalUnit[] = [];
  for (const seed of seeds)
    for (const { group, test } of drawSplits(pairs, split.fewShot, split.pool, seed, split.poolCandidate))
      for (let at = 0; at < test.length; at += chunkSize)
        all.push({ seed, group, ids: test.slice(at, at + chunkSize).map((p) => p.id) });
  const { start, end } = shardRange(all.length, shard);
  const units = all.slice(start, end);
  const keys = new Set(units.flatMap((u) => u.ids.map((id) => `${u.seed}|${id}`)));
  return {
    shard,
    total: all.length,
    testPairs: all.reduce((n, u) => n + u.ids.length, 0),
    start,
    end,
    units,
    has: (seed, id) => keys.has(`${seed}|${id}`),
  };
}
