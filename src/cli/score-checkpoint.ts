/**
 * The checkpoint of a streamed `arm score`: `<output>.score-checkpoint.json` records what the rows in
 * `<output>.part` were scored from, so that the same command continues an interrupted run and any other refuses
 * to mix its rows in; and the running totals of the summary line, rebuilt from the rows already written.
 */
import fs from 'node:fs';
import { jsonlLines, MAX_LINE_BYTES } from '../data/examples.js';
import { dropTornLastLine, writeFileAtomic } from './common.js';

/**
 * Bumped when what a score checkpoint records, or how rows are chunked, changes: older partial outputs are then
 * refused.
 */
export const SCORE_CHECKPOINT_VERSION = 1;

/** What the rows of a partial output were scored from; a run continues it only when all of it matches. */
export interface ScoreCheckpoint {
  what: 'arm score checkpoint';
  version: number;
  input: { file: string; sha256: string; bytes: number; rows: number };
  criterion: { file: string; sha256: string };
  model: { weights: string; config: string; format: unknown };
  options: {
    batchSize: number;
    maxLength: number;
    chunkRows: number;
    chunkBytes: number;
    skipInvalid: boolean;
    imageRoot: string | null;
    threads: number | null;
  };
}

/** Running totals for the summary line; rebuilt from the rows already written when a run continues. */
export interface ScoreTotals {
  rows: number;
  pairs: number;
  correct: number;
  truncated: number;
  tooLong: number;
}

export const noScoreTotals = (): ScoreTotals => ({ rows: 0, pairs: 0, correct: 0, truncated: 0, tooLong: 0 });

/** Adds one written row (its `arm` field) to the totals. */
export function countRow(t: ScoreTotals, arm: Record<string, unknown>): void {
  t.rows++;
  if ('margin' in arm) {
    t.pairs++;
    if (arm.correct === true) t.correct++;
  }
  if (arm.truncated === true) t.truncated++;
  if (arm.tooLong === true) t.tooLong++;
}

/**
 * Opens `partFile` for a run with `checkpoint`: a new run (or `restart`) writes the checkpoint and an empty part
 * file; otherwise the existing checkpoint must match in every field (the refusal names those that differ), a
 * half-written last line is dropped, and the complete rows are read back for the summary's totals.
 */
export function openScoreCheckpoint(
  files: { part: string; checkpoint: string },
  checkpoint: ScoreCheckpoint,
  opts: { restart: boolean },
): ScoreTotals {
  const { part: partFile, checkpoint: checkpointFile } = files;
  const startOver = `remove ${partFile} and ${checkpointFile}, or pass --restart, to start over`;
  if (opts.restart || !fs.existsSync(partFile)) {
    writeFileAtomic(checkpointFile, `${JSON.stringify(checkpoint, null, 2)}\n`);
    fs.writeFileSync(partFile, '');
    return noScoreTotals();
  }
  if (!fs.existsSync(checkpointFile))
    throw new Error(
      `${partFile} exists without ${checkpointFile}, so what its rows were scored from is unknown; ${startOver}`,
    );
  let old: ScoreCheckpoint;
  try {
    old = JSON.parse(fs.readFileSync(checkpointFile, 'utf8')) as ScoreCheckpoint;
  } catch (e) {
    throw new Error(`${checkpointFile}: not a readable score checkpoint (${(e as Error).message}); ${startOver}`);
  }
  const differs = scoreCheckpointDiff(old, checkpoint);
  if (differs.length) {
    throw new Error(
      `${partFile} holds rows of another scoring run (different ${differs.join('; ')}); ` +
        `refusing to mix them into ${checkpoint.input.file}'s scores: ${startOver}, or choose another --output`,
    );
  }
  const dropped = dropTornLastLine(partFile);
  if (dropped) process.stderr.write(`dropped a half-written last row (${dropped} bytes) from ${partFile}\n`);
  const totals = countWrittenRows(partFile, startOver);
  if (totals.rows > checkpoint.input.rows)
    throw new Error(
      `${partFile} holds ${totals.rows} rows but ${checkpoint.input.file} has ${checkpoint.input.rows}; ${startOver}`,
    );
  return totals;
}

/** The totals of the rows a part file holds; a row that is not one `score` wrote stops the run. */
function countWrittenRows(partFile: string, startOver: string): ScoreTotals {
  const totals = noScoreTotals();
  // Rows are our own output: up to the input's longest line plus the scores.
  for (const { line, text, error } of jsonlLines(partFile, 2 * MAX_LINE_BYTES)) {
    let arm: unknown;
    try {
      if (error) throw new Error(error);
      arm = (JSON.parse(text!) as { arm?: unknown }).arm;
    } catch (e) {
      throw new Error(`${partFile}:${line}: not a scored row (${(e as Error).message}); ${startOver}`);
    }
    if (typeof arm !== 'object' || arm === null)
      throw new Error(`${partFile}:${line}: not a scored row (no "arm" field); ${startOver}`);
    countRow(totals, arm as Record<string, unknown>);
  }
  return totals;
}

/** The fields of two checkpoints that differ, in words. */
function scoreCheckpointDiff(a: ScoreCheckpoint, b: ScoreCheckpoint): string[] {
  const same = (x: unknown, y: unknown) => JSON.stringify(x) === JSON.stringify(y);
  const out: string[] = [];
  if (a.what !== b.what || a.version !== b.version)
    return [`checkpoint layout (version ${String(a.version)}, this build writes ${b.version})`];
  if (a.input?.sha256 !== b.input.sha256)
    out.push(
      `input: ${a.input?.file} sha256 ${String(a.input?.sha256).slice(0, 12)}… ` +
        `vs ${b.input.file} sha256 ${b.input.sha256.slice(0, 12)}…`,
    );
  if (a.criterion?.sha256 !== b.criterion.sha256)
    out.push(`criterion: ${a.criterion?.file} vs ${b.criterion.file} (other contents)`);
  if (!same(a.model, b.model)) out.push('model weights, config or --dtype');
  for (const k of Object.keys(b.options) as (keyof ScoreCheckpoint['options'])[]) {
    if (!same(a.options?.[k], b.options[k]))
      out.push(`${k}: ${JSON.stringify(a.options?.[k])} vs ${JSON.stringify(b.options[k])}`);
  }
  return out;
}
