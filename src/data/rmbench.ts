/**
 * RM-Bench rows (`StyledPreference` in ../shared/data/preference/README.md): one prompt, 3 chosen and 3 rejected
 * responses in the styles concise, detailed (plain text), detailed (markdown). Each row becomes its 9
 * comparisons (multi-response.ts); src/eval/benchmarks.ts scores them as RM-Bench does (hard / normal / easy).
 * Other multi-response rows (RewardBench 2 exported to JSONL) read as best-of-n rows.
 */
import {
  DataError,
  jsonlLines,
  MAX_LINE_BYTES,
  type PairExample,
  type ReadOptions,
  type ReadResult,
} from './examples.js';
import { expandRow, responseList, type MultiResponseRow } from './multi-response.js';

const RM_BENCH_STYLES = ['concise', 'detailed', 'markdown'] as const;

/**
 * Reads a JSONL file of multi-response rows: RM-Bench (3 × 3 with `styles`) or best-of-n rows. `limit` and `subsets`
 * count rows, not pairs.
 */
export function readMultiResponseJsonl(
  file: string,
  opts: ReadOptions = {},
): ReadResult & { rows: number; scoring: Set<string> } {
  const examples: PairExample[] = [];
  const skipped: ReadResult['skipped'] = [];
  const seen = new Set<string>();
  const scoring = new Set<string>();
  let rows = 0;
  for (const { line, text, error } of jsonlLines(file, opts.maxLineBytes ?? MAX_LINE_BYTES)) {
    const where = `${file}:${line}`;
    try {
      if (error) throw new DataError(`${where}: ${error}`);
      if (!text!.trim()) continue;
      let raw: unknown;
      try {
        raw = JSON.parse(text!);
      } catch (e) {
        throw new DataError(`${where}: not valid JSON (${(e as Error).message})`);
      }
      const row = parseMultiRow(raw, line, where);
      if (seen.has(row.id)) throw new DataError(`${where}: field "id": duplicate id ${JSON.stringify(row.id)}`);
      seen.add(row.id);
      if (opts.subsets && !opts.subsets.includes(row.subset ?? '')) continue;
      const kind = isRmBenchRow(row) ? 'rm-bench' : 'best-of-n';
      scoring.add(kind);
      examples.push(...expandRow(row, kind));
      if (opts.limit !== undefined && ++rows >= opts.limit) break;
    } catch (e) {
      if (!(e instanceof DataError) || !opts.skipInvalid) throw e;
      skipped.push({ line, reason: e.message });
    }
  }
  if (examples.length === 0)
    throw new DataError(`${file}: no usable rows${skipped.length ? ` (${skipped.length} skipped as invalid)` : ''}`);
  return { examples, skipped, rows: new Set(examples.map((e) => e.cell!.row)).size, scoring };
}

/** RM-Bench: a `styles` list of the three styles, or an rm-bench subset, with 3 responses on each side. */
function isRmBenchRow(r: MultiResponseRow): boolean {
  const styles = r.row.styles;
  const styled = Array.isArray(styles) && styles.length === 3 && styles.every((s, i) => s === RM_BENCH_STYLES[i]);
  return (styled || (r.subset ?? '').startsWith('rm-bench')) && r.chosen.length === 3 && r.rejected.length === 3;
}

function parseMultiRow(raw: unknown, line: number, where: string): MultiResponseRow {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw))
    throw new DataError(`${where}: a row must be a JSON object`);
  const r = raw as Record<string, unknown>;
  const promptField = ['prompt', 'question', 'input'].find((k) => r[k] !== undefined);
  if (!promptField)
    throw new DataError(`${where}: field "prompt" is missing; found fields ${Object.keys(r).join(', ')}`);
  const prompt = r[promptField];
  if (typeof prompt !== 'string' || !prompt.trim())
    throw new DataError(`${where}: field "${promptField}": must be a non-empty string`);
  const row: MultiResponseRow = {
    id: r.id === undefined ? `line-${line}` : String(r.id),
    line,
    row: r,
    prompt,
    chosen: responseList(r.chosen, `${where}: field "chosen"`),
    rejected: responseList(r.rejected, `${where}: field "rejected"`),
    ...(typeof r.subset === 'string' ? { subset: r.subset } : {}),
  };
  const styles = r.styles;
  if (
    styles !== undefined &&
    (!Array.isArray(styles) || styles.length !== row.chosen.length || styles.length !== row.rejected.length)
  ) {
    throw new DataError(
      `${where}: field "styles": expected one style per response (${row.chosen.length} chosen, ` +
        `${row.rejected.length} rejected), got ${JSON.stringify(styles)}`,
    );
  }
  return row;
}
