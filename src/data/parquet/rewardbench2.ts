/**
 * RewardBench datasets as the hub serves them, in parquet (read with hyparquet; hyparquet-compressors adds
 * zstd, gzip, brotli and lz4 to its built-in snappy, so any codec the hub's writers use reads).
 *
 * - RewardBench 2 (`allenai/reward-bench-2`): one row per prompt with `chosen` and `rejected` as lists (1 and 3;
 *   more in Ties), `subset`, `id`. Rows become best-of-n comparisons (multi-response.ts), scored in
 *   src/eval/benchmarks.ts as RewardBench 2 scores them.
 * - RewardBench (`allenai/reward-bench`, split `filtered`): plain pairs `{prompt, chosen, rejected, subset, id}`.
 */
import { asyncBufferFromFile, parquetReadObjects } from 'hyparquet';
import { compressors } from 'hyparquet-compressors';
import { DataError, type PairExample, type ReadOptions, type ReadResult } from '../examples.js';
import { expandRow, isMultiResponseRow, responseList } from '../multi-response.js';

/** Every row of a parquet file as a plain object (int64 as bigint, as hyparquet returns it). */
async function readParquetRows(file: string): Promise<Record<string, unknown>[]> {
  let buffer;
  try {
    buffer = await asyncBufferFromFile(file);
  } catch (e) {
    throw new DataError(`${file}: cannot read (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
  try {
    return (await parquetReadObjects({ file: buffer, compressors })) as Record<string, unknown>[];
  } catch (e) {
    throw new DataError(`${file}: not a readable parquet file (${(e as Error).message})`);
  }
}

/** Reads a RewardBench or RewardBench 2 parquet file into pairs; `limit` and `subsets` count rows. */
export async function readRewardBenchParquet(
  file: string,
  opts: ReadOptions = {},
): Promise<ReadResult & { scoring: 'pairs' | 'best-of-n' }> {
  const rows = await readParquetRows(file);
  if (!rows.length) throw new DataError(`${file}: no rows`);
  const columns = Object.keys(rows[0]!);
  const promptField = ['prompt', 'question', 'input'].find((c) => columns.includes(c));
  if (!promptField || !columns.includes('chosen') || !columns.includes('rejected')) {
    throw new DataError(
      `${file}: expected columns prompt (or question / input), chosen, rejected; found ${columns.join(', ')}`,
    );
  }
  const multi = isMultiResponseRow(rows[0]);
  const examples: PairExample[] = [];
  const skipped: ReadResult['skipped'] = [];
  const seen = new Set<string>();
  let taken = 0;
  for (let i = 0; i < rows.length; i++) {
    const r = rows[i]!,
      line = i + 1,
      where = `${file}: row ${line}`;
    try {
      const id = r.id === undefined || r.id === null ? `row-${line}` : String(r.id);
      if (seen.has(id)) throw new DataError(`${where}: field "id": duplicate id ${JSON.stringify(id)}`);
      seen.add(id);
      const subset = typeof r.subset === 'string' ? r.subset : undefined;
      if (opts.subsets && !opts.subsets.includes(subset ?? '')) continue;
      const prompt = r[promptField];
      if (typeof prompt !== 'string' || !prompt.trim())
        throw new DataError(`${where}: field "${promptField}": must be a non-empty string`);
      if (multi) {
        examples.push(
          ...expandRow(
            {
              id,
              line,
              row: r,
              prompt,
              chosen: responseList(r.chosen, `${where}: field "chosen"`),
              rejected: responseList(r.rejected, `${where}: field "rejected"`),
              ...(subset ? { subset } : {}),
            },
            'best-of-n',
          ),
        );
      } else {
        if (typeof r.chosen !== 'string' || typeof r.rejected !== 'string')
          throw new DataError(
            `${where}: fields "chosen" and "rejected" must be strings (or, as in RewardBench 2, both lists of strings)`,
          );
        examples.push({
          kind: 'pair',
          id,
          line,
          row: r,
          prompt,
          chosen: r.chosen,
          rejected: r.rejected,
          ...(subset ? { subset } : {}),
        });
      }
      if (opts.limit !== undefined && ++taken >= opts.limit) break;
    } catch (e) {
      if (!(e instanceof DataError) || !opts.skipInvalid) throw e;
      skipped.push({ line, reason: e.message });
    }
  }
  if (!examples.length)
    throw new DataError(`${file}: no usable rows${skipped.length ? ` (${skipped.length} skipped as invalid)` : ''}`);
  return { examples, skipped, scoring: multi ? 'best-of-n' : 'pairs' };
}
