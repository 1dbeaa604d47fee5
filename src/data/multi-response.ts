/**
 * Rows with several responses per side, as benchmarks ship them: RM-Bench (3 chosen × 3 rejected, one per
 * style) and RewardBench 2 (1 chosen, 3 rejected; several chosen in its Ties subset). The harness compares
 * pairs, so each row becomes the pairs its benchmark's score needs, each marked with its cell (PairCell), and
 * src/eval/benchmarks.ts rebuilds the row's score from the pair results.
 */
import { DataError, type PairCell, type PairExample, type Prompt } from './examples.js';

export interface MultiResponseRow {
  id: string;
  line: number;
  row: Record<string, unknown>;
  prompt: Prompt;
  chosen: string[];
  rejected: string[];
  subset?: string;
}

/**
 * RM-Bench: every chosen × rejected comparison (the 3×3 matrix). RewardBench 2 (best-of-n): the first chosen
 * against every rejected response, plus every further chosen against the first rejected, so that every response
 * is scored at least once (the Ties score needs each response's score) without all n × m comparisons.
 */
export function expandRow(r: MultiResponseRow, scoring: PairCell['scoring']): PairExample[] {
  const cells: [number, number][] =
    scoring === 'rm-bench'
      ? r.chosen.flatMap((_, i) => r.rejected.map((__, j) => [i, j] as [number, number]))
      : [
          ...r.rejected.map((_, j) => [0, j] as [number, number]),
          ...r.chosen.slice(1).map((_, i) => [i + 1, 0] as [number, number]),
        ];
  return cells.map(([i, j]) => ({
    kind: 'pair',
    id: `${r.id}/c${i}-r${j}`,
    line: r.line,
    row: r.row,
    prompt: r.prompt,
    chosen: r.chosen[i]!,
    rejected: r.rejected[j]!,
    ...(r.subset === undefined ? {} : { subset: r.subset }),
    cell: {
      row: r.id,
      chosen: i,
      rejected: j,
      chosenCount: r.chosen.length,
      rejectedCount: r.rejected.length,
      cells: cells.length,
      scoring,
    },
  }));
}

/** A list of non-blank strings, or a DataError naming the field. */
export function responseList(v: unknown, where: string): string[] {
  if (!Array.isArray(v) || v.length === 0) throw new DataError(`${where}: must be a non-empty list of strings`);
  return v.map((x, i) => {
    if (typeof x !== 'string') throw new DataError(`${where}[${i}]: must be a string`);
    if (!x.trim()) throw new DataError(`${where}[${i}]: is empty`);
    return x;
  });
}

/** Whether a parsed row holds response lists (chosen and rejected as lists of strings) rather than single responses. */
export function isMultiResponseRow(row: unknown): boolean {
  if (typeof row !== 'object' || row === null) return false;
  const r = row as Record<string, unknown>;
  const strings = (v: unknown) => Array.isArray(v) && v.length > 0 && v.every((x) => typeof x === 'string');
  return strings(r.chosen) && strings(r.rejected);
}
