/**
 * How a run divides the dataset, per seed: exact duplicates dropped, then per group (a subset, or the whole set
 * with a global pool) a few-shot pool and a test set that never share a prompt; and the notes a run reports
 * about it (thin subsets, groups the pool used up, prompt siblings held out).
 */
import { createHash } from 'node:crypto';
import { promptIdentity, type PairExample } from '../data/examples.js';
import { Rng } from '../util/rng.js';
import type { SplitNotes } from './records.js';

/** Where pools are drawn from: each subset, or the whole set. */
export type PoolMode = 'subset' | 'global';

/** `heldOut`: pairs in neither pool nor test because a pool pair has their prompt. */
export interface Split {
  group: string;
  pool: PairExample[];
  test: PairExample[];
  heldOut: number;
}

/** Below this many test pairs a subset's accuracy is too noisy to read much into; the run warns about it. */
const MIN_TEST_PAIRS = 10;

/** Pairs with the same prompt (text and images) are siblings: they never straddle the pool and the test set. */
const promptKey = (p: PairExample) => promptIdentity(p);

/** The group a pair's pool is drawn from. */
const groupOf = (p: PairExample, mode: PoolMode) => (mode === 'global' ? 'all' : (p.subset ?? 'all'));

/**
 * The pool/test split for one seed. Per subset (default): `fewShot` pairs drawn from each subset; global: from
 * the whole set. Pairs are drawn by prompt: the prompts are shuffled and their pairs go to the pool in that
 * order, so no test pair shares its prompt with a pool pair. When the pool fills part-way through a prompt's
 * pairs, the rest of that prompt's pairs are held out (`heldOut`), neither pool nor test. With one pair per
 * prompt this is a plain shuffle. A group with no pair left for testing is dropped. Deterministic in (seed, group).
 * With `poolCandidate` (a dataset's own few-shot/test split) the pool comes from the pairs it accepts and the
 * test set is the rest.
 */
export function drawSplits(
  pairs: PairExample[],
  fewShot: number,
  mode: PoolMode,
  seed: number,
  poolCandidate?: (p: PairExample) => boolean,
): Split[] {
  const groups = new Map<string, PairExample[]>();
  for (const p of pairs) {
    const g = groupOf(p, mode);
    if (!groups.has(g)) groups.set(g, []);
    groups.get(g)!.push(p);
  }
  const splits: Split[] = [];
  for (const [group, members] of groups) {
    const split = poolCandidate
      ? splitFixedPool(members, fewShot, shuffledPrompts(members.filter(poolCandidate), seed, group), poolCandidate)
      : splitByPrompt(fewShot, shuffledPrompts(members, seed, group));
    if (split.test.length) splits.push({ group, ...split });
  }
  return splits;
}

/** The group's pairs gathered by prompt, in an order shuffled by (seed, group). */
function shuffledPrompts(candidates: PairExample[], seed: number, group: string): PairExample[][] {
  const byPrompt = new Map<string, PairExample[]>();
  for (const p of candidates) {
    const k = promptKey(p);
    if (!byPrompt.has(k)) byPrompt.set(k, []);
    byPrompt.get(k)!.push(p);
  }
  const groupSeed = parseInt(createHash('sha256').update(`${seed}:${group}`).digest('hex').slice(0, 8), 16);
  return new Rng(groupSeed).shuffle([...byPrompt.values()]);
}

/** The first `fewShot` pairs in prompt order go to the pool, the later prompts to the test set. */
function splitByPrompt(fewShot: number, order: PairExample[][]): Omit<Split, 'group'> {
  const pool: PairExample[] = [],
    test: PairExample[] = [];
  let heldOut = 0;
  for (const siblings of order) {
    if (pool.length >= fewShot) {
      test.push(...siblings);
      continue;
    }
    const room = fewShot - pool.length;
    pool.push(...siblings.slice(0, room));
    heldOut += Math.max(0, siblings.length - room);
  }
  return { pool, test, heldOut };
}

/**
 * A fixed split: the pool is drawn from the candidates' prompts; every other pair is tested unless a pool pair has
 * its prompt.
 */
function splitFixedPool(
  members: PairExample[],
  fewShot: number,
  candidateOrder: PairExample[][],
  poolCandidate: (p: PairExample) => boolean,
): Omit<Split, 'group'> {
  const pool: PairExample[] = [],
    test: PairExample[] = [];
  let heldOut = 0;
  for (const siblings of candidateOrder) {
    if (pool.length >= fewShot) continue;
    pool.push(...siblings.slice(0, fewShot - pool.length));
  }
  const poolPrompts = new Set(pool.map(promptKey));
  for (const p of members) {
    if (poolCandidate(p)) continue;
    if (poolPrompts.has(promptKey(p))) heldOut++;
    else test.push(p);
  }
  return { pool, test, heldOut };
}

/**
 * Exact duplicate pairs (same prompt text, chosen and rejected) after the first are left out: a duplicate would
 * count twice, or sit in both pool and test. Duplicates are looked for within the group a pool is drawn from
 * (a subset, or the whole set with a global pool): the same pair in two subsets is two subsets' data, and each
 * subset's pool serves only its own test pairs.
 */
export function dropDuplicatePairs(
  pairs: PairExample[],
  mode: PoolMode = 'global',
): { pairs: PairExample[]; dropped: PairExample[] } {
  const seen = new Set<string>();
  const kept: PairExample[] = [],
    dropped: PairExample[] = [];
  for (const p of pairs) {
    // A multi-response row's comparisons are its benchmark's cells, equal texts or not (RM-Bench repeats a
    // response across styles in 63 rows): they are never each other's duplicates, nor another row's.
    const k = p.cell
      ? JSON.stringify(['cell', p.cell.row, p.cell.chosen, p.cell.rejected])
      : JSON.stringify([mode === 'global' ? '' : (p.subset ?? 'all'), promptKey(p), p.chosen, p.rejected]);
    if (seen.has(k)) dropped.push(p);
    else {
      seen.add(k);
      kept.push(p);
    }
  }
  return { pairs: kept, dropped };
}

/**
 * What the splits of `seeds` leave to report: subsets with fewer than MIN_TEST_PAIRS test pairs in some seed,
 * groups the pool took whole in some seed, and the prompt siblings held out over all seeds.
 */
export function splitNotes(
  pairs: PairExample[],
  fewShot: number,
  mode: PoolMode,
  seeds: number[],
  poolCandidate?: (p: PairExample) => boolean,
): SplitNotes {
  const rows = new Map<string, number>(),
    groupRows = new Map<string, number>();
  for (const p of pairs) {
    rows.set(p.subset ?? 'all', (rows.get(p.subset ?? 'all') ?? 0) + 1);
    const g = groupOf(p, mode);
    groupRows.set(g, (groupRows.get(g) ?? 0) + 1);
  }
  const fewestTest = new Map([...rows.keys()].map((s) => [s, Infinity]));
  const dropped = new Map<string, number[]>();
  let promptSiblingsHeldOut = 0;
  for (const seed of seeds) {
    const splits = drawSplits(pairs, fewShot, mode, seed, poolCandidate);
    promptSiblingsHeldOut += splits.reduce((a, s) => a + s.heldOut, 0);
    const tested = new Map<string, number>();
    for (const split of splits)
      for (const p of split.test) tested.set(p.subset ?? 'all', (tested.get(p.subset ?? 'all') ?? 0) + 1);
    for (const s of rows.keys()) fewestTest.set(s, Math.min(fewestTest.get(s)!, tested.get(s) ?? 0));
    const kept = new Set(splits.map((s) => s.group));
    for (const g of groupRows.keys()) if (!kept.has(g)) dropped.set(g, [...(dropped.get(g) ?? []), seed]);
  }
  const droppedGroups = [...dropped]
    .map(([group, s]) => ({ group, rows: groupRows.get(group)!, seeds: s }))
    .sort((a, b) => a.group.localeCompare(b.group));
  // In per-subset mode a dropped group is a subset already listed as dropped; do not list it twice.
  const droppedSubsets = new Set(mode === 'subset' ? droppedGroups.map((d) => d.group) : []);
  const smallSubsets = [...fewestTest]
    .filter(([s, n]) => n < MIN_TEST_PAIRS && !droppedSubsets.has(s))
    .map(([subset, testPairs]) => ({ subset, rows: rows.get(subset)!, testPairs }))
    .sort((a, b) => a.subset.localeCompare(b.subset));
  return { minTestPairs: MIN_TEST_PAIRS, smallSubsets, droppedGroups, promptSiblingsHeldOut };
}
