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
import { shardLabel, shardRange, type Shard } from '../eval/shard-units.js';
import { shardSetProblems } from '../eval/shard-checks.js';
import { checkRange, readShardManifest } from '../eval/shard-manifest.js';
import {
  addTotals,
  noScoreTotals,
  readScoredRows,
  SCORE_CHECKPOINT_SHAPE,
  scoreCheckpointDiff,
  scoreSummary,
  type ScoreCheckpoint,
  type ScoreTotals,
} from './score-checkpoint.js';
import { prepareOutput } from './common.js';
import { writeFileAtomic } from '../util/atomic-write.js';

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

/**
 * Whether the shard of `checkpoint` is already finished: its manifest (`manifestFile`) is readable, says this shard
 * of this run, and its rows file holds its rows. A rerun of a finished task (a whole array resubmitted, a retry)
 * then leaves it as it is instead of scoring it again.
 */
export function finishedShardMatches(manifestFile: string, checkpoint: ScoreCheckpoint): boolean {
  if (!fs.existsSync(manifestFile)) return false;
  let found: FoundManifest;
  try {
    found = readManifest(manifestFile);
  } catch {
    return false; // not a manifest this build merges: the shard is scored again, and a new one written
  }
  const { shard: place, ...run } = checkpoint;
  const { manifest } = found;
  return (
    place !== undefined &&
    JSON.stringify(manifest.shard) === JSON.stringify({ index: place.index, count: place.count }) &&
    JSON.stringify(manifest.rows) === JSON.stringify(place.rows) &&
    scoreCheckpointDiff(manifest.run, run as ScoreCheckpoint).length === 0 &&
    fs.existsSync(found.rows) &&
    countLines(found.rows) === place.rows.end - place.rows.start
  );
}

/** A manifest as merging reads it: where it is, its rows file beside it (named after it), and what it says. */
interface FoundManifest {
  file: string;
  rows: string;
  manifest: ScoreShardManifest;
}

/**
 * Merges the shards of `output` (the manifests `given`, or every `<stem>.shard-<i>-of-<n>.json` beside it) into
 * `output`, through a temporary file; returns the summary line an unsharded run ends with. Throws, naming the
 * shard, on a missing, duplicated or unfinished shard, shards of different counts, shards of another run (the
 * differing fields named), a malformed manifest and rows that do not match a manifest; `output` is then untouched.
 */
export function mergeScoreShards(output: string, given?: string[]): string {
  const { found, unfinished } = given ? { found: given, unfinished: [] } : shardsBeside(output);
  const shards = found.map(readManifest);
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
  prepareOutput(output, {
    flag: '--output',
    inputs: shards.flatMap((s) => [s.file, s.rows]).map((f) => ({ path: f, what: 'a shard file' })),
  });
  const tmp = `${output}.merge-${process.pid}.tmp`;
  try {
    const totals = concatenate(shards, tmp);
    fs.renameSync(tmp, output);
    return scoreSummary(output, first.manifest.skipped, totals);
  } finally {
    fs.rmSync(tmp, { force: true });
  }
}

const SHARD_NAME = /^(.*)\.(shard-\d+-of-\d+)\.json(l|l\.part)?$/;

/** An unfinished shard as shard-checks.ts reports it. */
type Unfinished = { shard: Shard; where: string; why: string };

/**
 * The finished shards beside `output` (their manifests), and the unfinished ones: rows without a manifest, whether
 * partial (`.jsonl.part`) or complete (`.jsonl`, the run stopped before it wrote the manifest).
 */
function shardsBeside(output: string): { found: string[]; unfinished: Unfinished[] } {
  const dir = path.dirname(path.resolve(output));
  const stem = path.basename(stemOf(output));
  let names: string[];
  try {
    names = fs.readdirSync(dir);
  } catch (e) {
    throw new Error(`${output}: cannot list its folder ${dir} (${(e as NodeJS.ErrnoException).code})`);
  }
  const found: string[] = [];
  // By shard: a partial file (sorted after the rows file) says more than a rows file beside it.
  const unfinished = new Map<string, Unfinished>();
  for (const name of names.sort()) {
    const m = SHARD_NAME.exec(name);
    if (!m || m[1] !== stem) continue;
    const [, , label, rowsEnding] = m;
    const shard = placeOf(label!);
    const file = path.join(path.dirname(output), name);
    if (!rowsEnding) found.push(file);
    else if (!fs.existsSync(scoreShardFiles(output, shard).manifest))
      unfinished.set(label!, {
        shard,
        where: file,
        why:
          rowsEnding === 'l'
            ? 'its rows are complete but its manifest was not written (stopped before its last step); ' +
              'run its command again to finish it'
            : `${countLines(file)} rows scored so far; run its command again to finish it`,
      });
  }
  if (!found.length && !unfinished.size)
    throw new Error(
      `no shards of ${output}: expected ${stem}.shard-<i>-of-<n>.json beside it ` +
        `(written by arm score --shard i/n --output ${output})`,
    );
  return { found, unfinished: [...unfinished.values()] };
}

/** The shard a `shard-<i>-of-<n>` label names. */
const placeOf = (label: string): Shard => {
  const [, index, count] = /^shard-(\d+)-of-(\d+)$/.exec(label)!;
  return { index: Number(index), count: Number(count) };
};

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

/**
 * Reads and checks a shard manifest (shard-manifest.ts): every field's type, its shard against its name, its rows
 * within the input's. The rows file is the manifest's name with `.jsonl`: the `output` field must name that file,
 * and no other path is read (a manifest pointing elsewhere is refused).
 */
function readManifest(file: string): FoundManifest {
  const name = SHARD_NAME.exec(path.basename(file));
  const manifest = readShardManifest<ScoreShardManifest>(file, {
    what: 'arm score shard',
    version: SCORE_SHARD_VERSION,
    shape: {
      rows: { fields: { start: 'nat', end: 'nat' } },
      output: 'string',
      run: SCORE_CHECKPOINT_SHAPE,
      skipped: 'nat',
    },
    label: name && !name[3] ? name[2]! : null,
  });
  const rows = file.replace(/\.json$/, '.jsonl');
  checkRange(file, 'rows', manifest.rows, manifest.run.input.rows);
  if (manifest.output !== path.basename(rows))
    throw new Error(
      `${file}: "output" is ${JSON.stringify(manifest.output)}, but a shard's rows are the file beside its ` +
        `manifest, ${path.basename(rows)}`,
    );
  return { file, rows, manifest };
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
function concatenate(shards: FoundManifest[], target: string): ScoreTotals {
  const totals = noScoreTotals();
  const fd = fs.openSync(target, 'w');
  try {
    for (const s of shards) {
      if (!fs.existsSync(s.rows)) throw new Error(`${s.file}: its rows file ${s.rows} is missing`);
      let text = '';
      const shardTotals = readScoredRows(s.rows, (row) => {
        text += `${row}\n`;
        if (text.length > 1 << 22) {
          fs.writeSync(fd, text);
          text = '';
        }
      });
      fs.writeSync(fd, text);
      const want = s.manifest.rows.end - s.manifest.rows.start;
      if (shardTotals.rows !== want)
        throw new Error(`${s.rows}: holds ${shardTotals.rows} rows, but ${s.file} says the shard scored ${want}`);
      addTotals(totals, shardTotals);
    }
  } finally {
    fs.closeSync(fd);
  }
  return totals;
}
