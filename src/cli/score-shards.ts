/**
 * `arm score --shard i/n` and `arm merge --output`: a shard scores a contiguous run of the input's chunks (whole
 * `--chunk-rows` chunks, cut where an unsharded run cuts them, so every row is scored in the batch it would be) into
 * `<stem>.shard-<i>-of-<n>.jsonl`, resumable as any `arm score` output, and when done writes
 * `<stem>.shard-<i>-of-<n>.json`: what it was scored from (the score checkpoint's fields) and its rows. Merging
 * checks the shards are one run's, each once and finished, and concatenates their rows in shard order: the bytes
 * one unsharded run writes.
 */
import fs from 'node:fs';
import path from 'node:path';
import { jsonlLines, MAX_LINE_BYTES } from '../data/examples.js';
import { shardLabel, shardRange, type Shard } from '../eval/shard-units.js';
import { shardSetProblems } from '../eval/shard-checks.js';
import {
  countRow,
  noScoreTotals,
  scoreCheckpointDiff,
  scoreSummary,
  type ScoreCheckpoint,
  type ScoreTotals,
} from './score-checkpoint.js';
import { prepareOutput, writeFileAtomic } from './common.js';

/** Bumped when a score shard manifest's layout changes: shards of other versions are not merged. */
const SCORE_SHARD_VERSION = 2; // 2: the run's package version, device and effective thread count

/** `<stem>.shard-<i>-of-<n>.json`: a finished shard of `arm score`. */
interface ScoreShardManifest {
  what: 'arm score shard';
  version: number;
  shard: Shard;
  /** The input's usable rows [start, end) this shard scored (0-based; skipped invalid rows not counted). */
  rows: { start: number; end: number };
  /** The shard's scored rows: a file beside this manifest. */
  output: string;
  /** What the rows were scored from: the score checkpoint without its shard; every shard of a run has the same. */
  run: ScoreCheckpoint;
  /** Invalid rows of the whole input left out with --skip-invalid (for the summary line). */
  skipped: number;
}

/** `<output>` without a `.jsonl` ending: shard files are named `<stem>.shard-<i>-of-<n>.jsonl` and `.json`. */
const stemOf = (output: string) => output.replace(/\.jsonl$/i, '');

/** The files of shard `s` of a run whose merged output is `output`: its rows, and its manifest once finished. */
export function scoreShardFiles(output: string, s: Shard): { rows: string; manifest: string } {
  const base = `${stemOf(output)}.${shardLabel(s)}`;
  return { rows: `${base}.jsonl`, manifest: `${base}.json` };
}

/**
 * The rows [start, end) shard `s` scores, given where the input's chunks end (`chunkEnds`: the row after each
 * chunk's last, in order): the shard's range of whole chunks.
 */
export function shardRows(chunkEnds: number[], s: Shard): { start: number; end: number } {
  const { start, end } = shardRange(chunkEnds.length, s);
  return { start: start ? chunkEnds[start - 1]! : 0, end: end ? chunkEnds[end - 1]! : 0 };
}

/** Writes a finished shard's manifest (the mark that it is finished). */
export function writeScoreShardManifest(
  file: string,
  checkpoint: ScoreCheckpoint,
  rowsFile: string,
  skipped: number,
): void {
  const { shard: place, ...run } = checkpoint;
  const manifest: ScoreShardManifest = {
    what: 'arm score shard',
    version: SCORE_SHARD_VERSION,
    shard: { index: place!.index, count: place!.count },
    rows: place!.rows,
    output: path.basename(rowsFile),
    run,
    skipped,
  };
  writeFileAtomic(file, `${JSON.stringify(manifest, null, 2)}\n`);
}

/** A manifest as merging reads it, and where it is. */
interface FoundManifest {
  file: string;
  manifest: ScoreShardManifest;
}

/**
 * Merges the shards of `output` (the manifests `given`, or every `<stem>.shard-<i>-of-<n>.json` beside it) into
 * `output`, through a temporary file; returns the summary line an unsharded run ends with. Throws, naming the
 * shard, on a missing, duplicated or unfinished shard, shards of different counts, shards of another run (the
 * differing fields named) and rows that do not match a manifest.
 */
export function mergeScoreShards(output: string, given?: string[]): string {
  const { found, unfinished } = given ? { found: given, unfinished: [] } : shardsBeside(output);
  const shards = found.map((file) => ({ file, manifest: readManifest(file) }));
  const problems = shardSetProblems(
    shards.map((s) => ({ shard: s.manifest.shard, where: s.file })),
    unfinished,
    (s) => scoreShardFiles(output, s).manifest,
  );
  if (problems) throw new Error(`cannot merge the shards of ${output}: ${problems}`);
  shards.sort((a, b) => a.manifest.shard.index - b.manifest.shard.index);
  const first = shards[0]!;
  for (const s of shards.slice(1)) {
    const differs = scoreCheckpointDiff(first.manifest.run, s.manifest.run);
    if (differs.length)
      throw new Error(
        `${s.file} is a shard of another scoring run than ${first.file}: different ${differs.join('; ')}; ` +
          'score every shard with the same command (only --shard differs)',
      );
  }
  checkRowsTile(shards);
  const rowFiles = shards.map((s) => path.join(path.dirname(s.file), s.manifest.output));
  prepareOutput(output, {
    flag: '--output',
    inputs: [...shards.map((s) => s.file), ...rowFiles].map((f) => ({ path: f, what: 'a shard file' })),
  });
  const tmp = `${output}.merge-${process.pid}.tmp`;
  try {
    const totals = concatenate(shards, rowFiles, tmp);
    fs.renameSync(tmp, output);
    return scoreSummary(output, first.manifest.skipped, totals);
  } finally {
    fs.rmSync(tmp, { force: true });
  }
}

const SHARD_NAME = /^(.*)\.shard-(\d+)-of-(\d+)\.json(l\.part)?$/;

/** The finished shards beside `output` (their manifests), and the unfinished ones (a partial file, no manifest). */
function shardsBeside(output: string): {
  found: string[];
  unfinished: { shard: Shard; where: string; why: string }[];
} {
  const dir = path.dirname(path.resolve(output));
  const stem = path.basename(stemOf(output));
  let names: string[];
  try {
    names = fs.readdirSync(dir);
  } catch (e) {
    throw new Error(`${output}: cannot list its folder ${dir} (${(e as NodeJS.ErrnoException).code})`);
  }
  const found: string[] = [];
  const unfinished: { shard: Shard; where: string; why: string }[] = [];
  for (const name of names.sort()) {
    const m = SHARD_NAME.exec(name);
    if (!m || m[1] !== stem) continue;
    const shard = { index: Number(m[2]), count: Number(m[3]) };
    const file = path.join(path.dirname(output), name);
    if (!m[4]) found.push(file);
    else if (!fs.existsSync(scoreShardFiles(output, shard).manifest)) {
      const rows = countLines(file);
      unfinished.push({ shard, where: file, why: `${rows} rows scored so far; run its command again to finish it` });
    }
  }
  if (!found.length && !unfinished.length)
    throw new Error(
      `no shards of ${output}: expected ${stem}.shard-<i>-of-<n>.json beside it ` +
        `(written by arm score --shard i/n --output ${output})`,
    );
  return { found, unfinished };
}

/** The complete lines of a file (its newlines), read in chunks: a partial output may be large. */
function countLines(file: string): number {
  const fd = fs.openSync(file, 'r');
  try {
    const buf = Buffer.allocUnsafe(1 << 20);
    let lines = 0;
    for (let n; (n = fs.readSync(fd, buf, 0, buf.length, null)) > 0;)
      for (let at = buf.indexOf(0x0a); at !== -1 && at < n; at = buf.indexOf(0x0a, at + 1)) lines++;
    return lines;
  } finally {
    fs.closeSync(fd);
  }
}

function readManifest(file: string): ScoreShardManifest {
  let m: ScoreShardManifest;
  try {
    m = JSON.parse(fs.readFileSync(file, 'utf8')) as ScoreShardManifest;
  } catch (e) {
    throw new Error(`${file}: not a readable score shard manifest (${(e as Error).message})`);
  }
  if (m?.what !== 'arm score shard')
    throw new Error(`${file}: not a score shard manifest (no "what": "arm score shard")`);
  if (m.version !== SCORE_SHARD_VERSION)
    throw new Error(`${file}: shard layout version ${m.version}; this build merges version ${SCORE_SHARD_VERSION}`);
  return m;
}

/** The shards' row ranges, in index order, cover the input's rows once. */
function checkRowsTile(shards: FoundManifest[]): void {
  let at = 0;
  for (const s of shards) {
    const { start, end } = s.manifest.rows;
    if (start !== at) throw new Error(`${s.file}: holds rows ${start}–${end} of the input, expected to start at ${at}`);
    at = end;
  }
  const total = shards[0]!.manifest.run.input.rows;
  if (at !== total) throw new Error(`the shards hold ${at} of the input's ${total} rows`);
}

/** Appends every shard's rows to `target` in shard order (rows checked and counted); returns the totals. */
function concatenate(shards: FoundManifest[], rowFiles: string[], target: string): ScoreTotals {
  const totals = noScoreTotals();
  const fd = fs.openSync(target, 'w');
  try {
    shards.forEach((s, k) => {
      const file = rowFiles[k]!;
      if (!fs.existsSync(file)) throw new Error(`${s.file}: its rows file ${file} is missing`);
      let rows = 0;
      let text = '';
      // Rows are score's own output: up to the input's longest line plus the scores.
      for (const { line, text: row, error } of jsonlLines(file, 2 * MAX_LINE_BYTES)) {
        let arm: unknown;
        try {
          if (error) throw new Error(error);
          arm = (JSON.parse(row!) as { arm?: unknown }).arm;
        } catch (e) {
          throw new Error(`${file}:${line}: not a scored row (${(e as Error).message})`);
        }
        if (typeof arm !== 'object' || arm === null) throw new Error(`${file}:${line}: not a scored row (no "arm")`);
        countRow(totals, arm as Record<string, unknown>);
        rows++;
        text += `${row}\n`;
        if (text.length > 1 << 22) {
          fs.writeSync(fd, text);
          text = '';
        }
      }
      fs.writeSync(fd, text);
      const want = s.manifest.rows.end - s.manifest.rows.start;
      if (rows !== want) throw new Error(`${file}: holds ${rows} rows, but ${s.file} says the shard scored ${want}`);
    });
  } finally {
    fs.closeSync(fd);
  }
  return totals;
}
