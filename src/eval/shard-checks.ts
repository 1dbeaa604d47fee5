/**
 * What merging shards checks before it reads a row, shared by `arm merge` of score and eval shards: that the shards
 * given are one set (one count, each index once, none missing or unfinished), and which fields of two runs'
 * descriptions differ.
 */
import { shardLabel, type Shard } from './shard-units.js';

/** A shard found: its place, and where it is (a file or folder, for the messages). */
interface FoundShard {
  shard: Shard;
  where: string;
}

/**
 * The problems of a set of shards, in one message (null when there are none): shards of different counts, a
 * shard given twice, shards not finished (`unfinished`, with why), and shards missing (`expectedAt` says where
 * each should be).
 */
export function shardSetProblems(
  finished: FoundShard[],
  unfinished: { shard: Shard | null; where: string; why: string }[],
  expectedAt: (s: Shard) => string,
): string | null {
  const problems: string[] = [];
  const counts = [...new Set([...finished, ...unfinished].flatMap((s) => (s.shard ? [s.shard.count] : [])))];
  if (counts.length > 1) {
    const each = [...finished, ...unfinished]
      .filter((s) => s.shard)
      .map((s) => `${s.where} is ${shardLabel(s.shard!)}`)
      .join(', ');
    return `the shards are of runs cut in different counts (${counts.join(', ')}): ${each}`;
  }
  const count = counts[0] ?? 0;
  const at = new Map<number, string[]>();
  for (const s of finished) at.set(s.shard.index, [...(at.get(s.shard.index) ?? []), s.where]);
  for (const [index, where] of [...at].sort((a, b) => a[0] - b[0]))
    if (where.length > 1)
      problems.push(`shard ${index} of ${count} is given ${where.length} times: ${where.join(', ')}`);
  for (const s of finished)
    if (!(s.shard.index >= 0 && s.shard.index < s.shard.count))
      problems.push(`${s.where} says it is shard ${s.shard.index} of ${s.shard.count}, which no run has`);
  for (const u of unfinished) problems.push(`${u.where} is not finished: ${u.why}`);
  const pending = new Set(unfinished.flatMap((u) => (u.shard ? [u.shard.index] : [])));
  for (let index = 0; index < count; index++)
    if (!at.has(index) && !pending.has(index))
      problems.push(`shard ${index} of ${count} is missing (expected ${expectedAt({ index, count })})`);
  return problems.length ? problems.join('; ') : null;
}

/** A value as it is shown in a difference: JSON, cut to 80 characters. */
const shown = (v: unknown) => {
  const text = v === undefined ? '(absent)' : JSON.stringify(v);
  return text.length > 80 ? `${text.slice(0, 77)}…` : text;
};

/**
 * The fields in which two JSON values differ, by path (`method.fit.passes: 8 vs 16`), leaves only; `prefix` goes
 * before each path.
 */
export function jsonDifferences(a: unknown, b: unknown, prefix = ''): string[] {
  const isObject = (v: unknown): v is Record<string, unknown> =>
    typeof v === 'object' && v !== null && !Array.isArray(v);
  if (isObject(a) && isObject(b)) {
    const keys = [...new Set([...Object.keys(a), ...Object.keys(b)])];
    return keys.flatMap((k) => jsonDifferences(a[k], b[k], `${prefix}${k}.`));
  }
  if (JSON.stringify(a) === JSON.stringify(b)) return [];
  return [`${prefix.replace(/\.$/, '') || '(the whole)'}: ${shown(a)} vs ${shown(b)}`];
}
