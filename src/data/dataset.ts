/**
 * What `--dataset` names, read into pairs: Multimodal RewardBench's all_data.json (mm-rewardbench.ts, images under
 * `imageRoot`), a JSONL file of pairs (examples.ts), a JSONL file of multi-response
 * rows (RM-Bench, RewardBench 2 exported to JSONL: rmbench.ts), a parquet file or a folder of them
 * (parquet/rewardbench2.ts), or a hub dataset id (hub-dataset.ts).
 */
import fs from 'node:fs';
import path from 'node:path';
import { DataError, jsonlLines, MAX_LINE_BYTES, readExamples, type Example, type ReadOptions } from './examples.js';
import { isMultiResponseRow } from './multi-response.js';
import { readMultiResponseJsonl } from './rmbench.js';
import { readRewardBenchParquet } from './parquet/rewardbench2.js';
import { resolveHubDataset, type HubDatasetOptions } from './hub-dataset.js';
import { looksLikePreferenceHack, readPreferenceHack } from './preferencehack.js';
import { looksLikeMultimodalRewardBench, readMultimodalRewardBench } from './mm-rewardbench.js';

export interface LoadedDataset {
  examples: Example[];
  skipped: { line: number; reason: string }[];
  /** How rows became pairs: one pair per row, or several comparisons per row scored by the benchmark's rule. */
  format: 'pairs' | 'rm-bench' | 'best-of-n';
  /** The files read. */
  files: string[];
  /**
   * PreferenceHack: the designated few-shot pairs; pools are drawn from them only, and the other pairs are the test
   * set.
   */
  fewShotIds?: Set<string>;
}

/** `preferenceHack`: read as a released PreferenceHack file (default: when the path says "preferencehack"). */
export async function loadDataset(
  ref: string,
  opts: ReadOptions & { hub?: HubDatasetOptions; preferenceHack?: boolean } = {},
): Promise<LoadedDataset> {
  let files: string[];
  if (fs.existsSync(ref)) {
    files = fs.statSync(ref).isDirectory()
      ? fs
          .readdirSync(ref, { recursive: true, encoding: 'utf8' })
          .filter((f) => f.endsWith('.parquet'))
          .sort()
          .map((f) => path.join(ref, f))
      : [ref];
    if (!files.length) throw new DataError(`${ref}: a folder with no .parquet file; pass a JSONL or parquet file`);
  } else if (/^[^/\\.][^/\\]*\/[^/\\]+$/.test(ref) && !/\.(jsonl|json|parquet)$/i.test(ref)) {
    files = await resolveHubDataset(ref, opts.hub);
  } else {
    throw new DataError(`${ref}: cannot read (no such file)`);
  }
  const out: LoadedDataset = { examples: [], skipped: [], format: 'pairs', files };
  for (const file of files) {
    if ((opts.preferenceHack ?? looksLikePreferenceHack(file)) && !file.toLowerCase().endsWith('.parquet')) {
      const r = readPreferenceHack(file, opts);
      const keep = r.examples.filter((e) => !opts.subsets || opts.subsets.includes(e.subset ?? ''));
      out.examples.push(...keep);
      out.skipped.push(...r.skipped);
      out.fewShotIds = new Set([
        ...(out.fewShotIds ?? []),
        ...[...r.fewShotIds].filter((id) => keep.some((e) => e.id === id)),
      ]);
    } else if (looksLikeMultimodalRewardBench(file)) {
      const r = readMultimodalRewardBench(file, opts);
      out.examples.push(...r.examples);
      out.skipped.push(...r.skipped);
    } else if (file.toLowerCase().endsWith('.parquet')) {
      const r = await readRewardBenchParquet(file, opts);
      out.examples.push(...r.examples);
      out.skipped.push(...r.skipped);
      if (r.scoring === 'best-of-n') out.format = 'best-of-n';
    } else if (firstRowIsMultiResponse(file, opts.maxLineBytes)) {
      const r = readMultiResponseJsonl(file, opts);
      out.examples.push(...r.examples);
      out.skipped.push(...r.skipped);
      out.format = r.scoring.has('rm-bench') ? 'rm-bench' : 'best-of-n';
    } else {
      const r = readExamples(file, opts);
      out.examples.push(...r.examples);
      out.skipped.push(...r.skipped);
    }
  }
  return out;
}

/**
 * Whether the first non-blank line holds response lists (a multi-response file); an unreadable line says no (the pair
 * reader reports it).
 */
function firstRowIsMultiResponse(file: string, maxLineBytes = MAX_LINE_BYTES): boolean {
  for (const { text } of jsonlLines(file, maxLineBytes)) {
    if (text === undefined) return false;
    if (!text.trim()) continue;
    try {
      return isMultiResponseRow(JSON.parse(text));
    } catch {
      return false;
    }
  }
  return false;
}
