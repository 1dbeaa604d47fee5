/**
 * Multimodal RewardBench (facebookresearch/multimodal_rewardbench): its released `all_data.json`, a JSON array of
 * rows {ID, Text (the question), Image (a path under the image folder its download script fills), Output1,
 * Output2, Better: "Output1" | "Output2", Category}. Each row is one pair with its image.
 *
 * Categories are reported as the benchmark's accuracy script splits them: `safety` becomes `safety/bias` for IDs
 * starting with "pairs" (the PAIRS images) and `safety/toxicity` otherwise; `reasoning` becomes `reasoning/math`
 * for IDs starting with "math" (MathVista) and `reasoning/coding` otherwise; other categories stay as they are.
 * The split category is the pair's subset, so `arm eval` reports accuracy per category and overall.
 */
import fs from 'node:fs';
import path from 'node:path';
import { DataError, type PairExample, type ReadOptions, type ReadResult } from './examples.js';

/** Whether `file` is a JSON array of Multimodal RewardBench rows (read from its first bytes, not the whole file). */
export function looksLikeMultimodalRewardBench(file: string): boolean {
  if (!file.toLowerCase().endsWith('.json')) return false;
  let head: string;
  try {
    const fd = fs.openSync(file, 'r');
    try {
      const buf = Buffer.alloc(64 * 1024);
      head = buf.subarray(0, fs.readSync(fd, buf, 0, buf.length, 0)).toString('utf8');
    } finally {
      fs.closeSync(fd);
    }
  } catch {
    return false;
  }
  return /^\s*\[/.test(head) && ['"Output1"', '"Output2"', '"Better"', '"Image"'].every((k) => head.includes(k));
}

/** The benchmark's reporting category of a row (2_get_accuracy.py's split of safety and reasoning). */
export function mmRewardBenchCategory(id: string, category: string): string {
  const lower = id.toLowerCase();
  if (category === 'safety') return lower.startsWith('pairs') ? 'safety/bias' : 'safety/toxicity';
  if (category === 'reasoning') return lower.startsWith('math') ? 'reasoning/math' : 'reasoning/coding';
  return category;
}

/**
 * Reads `all_data.json`. Images are resolved under `opts.imageRoot` (default: the JSON file's folder, where the
 * benchmark's download script puts `images/`) and must exist; errors name the file, the row and the field.
 */
export function readMultimodalRewardBench(file: string, opts: ReadOptions = {}): ReadResult {
  let rows: unknown;
  try {
    rows = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (e) {
    throw new DataError(`${file}: not readable as JSON (${(e as Error).message})`);
  }
  if (!Array.isArray(rows)) throw new DataError(`${file}: expected a JSON array of Multimodal RewardBench rows`);
  const root = path.resolve(opts.imageRoot ?? path.dirname(file));
  const examples: PairExample[] = [];
  const skipped: ReadResult['skipped'] = [];
  const seen = new Set<string>();
  for (const [i, raw] of rows.entries()) {
    const where = `${file}[${i}]`;
    try {
      const r = raw as Record<string, unknown>;
      if (typeof r !== 'object' || r === null || Array.isArray(r))
        throw new DataError(`${where}: a row must be a JSON object`);
      const text = (k: string) => {
        if (typeof r[k] !== 'string') throw new DataError(`${where}: field "${k}" must be a string`);
        return r[k] as string;
      };
      const id = String(r.ID ?? `row-${i}`);
      if (seen.has(id)) throw new DataError(`${where}: field "ID": duplicate id ${JSON.stringify(id)}`);
      const better = text('Better');
      if (better !== 'Output1' && better !== 'Output2')
        throw new DataError(`${where}: field "Better": ${JSON.stringify(better)} is not "Output1" or "Output2"`);
      const [o1, o2] = [text('Output1'), text('Output2')];
      const question = text('Text');
      if (!question.trim()) throw new DataError(`${where}: field "Text": is empty`);
      const image = path.resolve(root, text('Image'));
      let exists = false;
      try {
        exists = fs.statSync(image).isFile();
      } catch {
        exists = false;
      }
      if (!exists)
        throw new DataError(
          `${where}: field "Image": image file ${image} not found (images are read under --image-root ${root}; ` +
            `the benchmark's scripts/0_download_data.py fetches them)`,
        );
      const subset = mmRewardBenchCategory(id, typeof r.Category === 'string' ? r.Category : 'all');
      seen.add(id);
      if (opts.subsets && !opts.subsets.includes(subset)) continue;
      examples.push({
        kind: 'pair',
        id,
        line: i + 1,
        row: r,
        prompt: question,
        subset,
        images: [image],
        chosen: better === 'Output1' ? o1 : o2,
        rejected: better === 'Output1' ? o2 : o1,
      });
      if (opts.limit !== undefined && examples.length >= opts.limit) break;
    } catch (e) {
      if (!(e instanceof DataError) || !opts.skipInvalid) throw e;
      skipped.push({ line: i + 1, reason: e.message });
    }
  }
  if (!examples.length)
    throw new DataError(`${file}: no usable rows${skipped.length ? ` (${skipped.length} skipped as invalid)` : ''}`);
  return { examples, skipped };
}
