/**
 * The checkpoint of a streamed `arm score`: `<output>.score-checkpoint.json` records what the rows in
 * `<output>.part` were scored from, so that the same command continues an interrupted run and any other refuses
 * to mix its rows in; and the running totals of the summary line, rebuilt from the rows already written.
 */
import fs from 'node:fs';
import { jsonlLines, MAX_LINE_BYTES } from '../data/examples.js';
import { dropTornLastLine } from './common.js';
import { writeFileAtomic } from '../util/atomic-write.js';
import type { FieldShape } from '../eval/shard-manifest.js';

/**
 * Bumped when what a score checkpoint records, or how rows are chunked, changes: older partial outputs are then
 * refused.
 */
// 2: criteria (several --rm) instead of one criterion; 3: the package version, and the device and thread count used.
export const SCORE_CHECKPOINT_VERSION = 3;

/** What the rows of a partial output were scored from; a run continues it only when all of it matches. */
export interface ScoreCheckpoint {
  what: 'arm score checkpoint';
  version: number;
  /** activation-rm's package version: another build may batch or round differently. */
  armVersion: string;
  input: { file: string; sha256: string; bytes: number; rows: number };
  /** Every --rm criterion, in order, with the name its scores are written under. */
  criteria: { name: string; file: string; sha256: string }[];
  model: { weights: string; config: string; format: unknown };
  options: {
    batchSize: number;
    maxLength: number;
    chunkRows: number;
    chunkBytes: number;
    skipInvalid: boolean;
    imageRoot: string | null;
    /**
     * The device and onnxruntime thread count the scores were computed with (the effective ones, not the flags:
     * the default thread count is the machine's cores), since either can change the last bits of a score.
     */
    device: string;
    threads: number;
  };
  /** With --shard: the shard, and the rows [start, end) of the input (usable rows, 0-based) it scores. */
  shard?: { index: number; count: number; rows: { start: number; end: number } };
}

/** Running totals for the summary line; rebuilt from the rows already written when a run continues. */
export interface ScoreTotals {
  rows: number;
  /** Pair rows, and how many of them each criterion got right (null: the one criterion of a flat "arm" field). */
  pairs: number;
  correct: Map<string | null, number>;
  truncated: number;
  tooLong: number;
}

export const noScoreTotals = (): ScoreTotals => ({ rows: 0, pairs: 0, correct: new Map(), truncated: 0, tooLong: 0 });

/**
 * Adds one written row (its `arm` field) to the totals: the fields of one criterion, or with several (or named)
 * criteria an object of them by name. A prompt cut or too long for any criterion counts once.
 */
export function countRow(t: ScoreTotals, arm: Record<string, unknown>): void {
  const flat = 'tooLong' in arm;
  const perCriterion = (flat ? [[null, arm]] : Object.entries(arm)) as [string | null, Record<string, unknown>][];
  t.rows++;
  if (perCriterion.some(([, f]) => 'margin' in f)) t.pairs++;
  for (const [name, f] of perCriterion)
    if ('margin' in f) t.correct.set(name, (t.correct.get(name) ?? 0) + (f.correct === true ? 1 : 0));
  if (perCriterion.some(([, f]) => f.truncated === true)) t.truncated++;
  if (perCriterion.some(([, f]) => f.tooLong === true)) t.tooLong++;
}

/** Adds totals `b` (of later rows) to `a`. */
export function addTotals(a: ScoreTotals, b: ScoreTotals): void {
  a.rows += b.rows;
  a.pairs += b.pairs;
  for (const [name, n] of b.correct) a.correct.set(name, (a.correct.get(name) ?? 0) + n);
  a.truncated += b.truncated;
  a.tooLong += b.tooLong;
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
  const totals = readScoredRows(partFile, undefined, `; ${startOver}`);
  // A shard's part file holds its rows of the input only.
  const { shard } = checkpoint;
  const rows = shard ? shard.rows.end - shard.rows.start : checkpoint.input.rows;
  if (totals.rows > rows)
    throw new Error(
      `${partFile} holds ${totals.rows} rows but ${shard ? `shard ${shard.index} of ${shard.count} of ` : ''}` +
        `${checkpoint.input.file} has ${rows}; ${startOver}`,
    );
  return totals;
}

/**
 * Reads the rows `score` wrote to `file` (a part file, or a finished shard's rows), handing each line to `each`,
 * and returns their totals; a line that is not a scored row throws, naming file:line (and `hint` after it).
 */
export function readScoredRows(file: string, each: (row: string) => void = () => {}, hint = ''): ScoreTotals {
  const totals = noScoreTotals();
  // Rows are our own output: up to the input's longest line plus the scores.
  for (const { line, text, error } of jsonlLines(file, 2 * MAX_LINE_BYTES)) {
    let arm: unknown;
    try {
      if (error) throw new Error(error);
      arm = (JSON.parse(text!) as { arm?: unknown }).arm;
    } catch (e) {
      throw new Error(`${file}:${line}: not a scored row (${(e as Error).message})${hint}`);
    }
    if (typeof arm !== 'object' || arm === null)
      throw new Error(`${file}:${line}: not a scored row (no "arm" field)${hint}`);
    countRow(totals, arm as Record<string, unknown>);
    each(text!);
  }
  return totals;
}

/** What a score checkpoint holds, as merging checks a shard manifest's copy of it (src/eval/shard-manifest.ts). */
export const SCORE_CHECKPOINT_SHAPE: FieldShape = {
  fields: {
    what: 'string',
    version: 'nat',
    armVersion: 'string',
    input: { fields: { file: 'string', sha256: 'string', bytes: 'nat', rows: 'nat' } },
    criteria: { arrayOf: { fields: { name: 'string', file: 'string', sha256: 'string' } } },
    model: { fields: { weights: 'string', config: 'string', format: { optional: 'any' } } },
    options: {
      fields: {
        batchSize: 'count',
        maxLength: 'count',
        chunkRows: 'count',
        chunkBytes: 'count',
        skipInvalid: 'boolean',
        imageRoot: { oneOf: ['string', 'null'] },
        device: 'string',
        threads: 'count',
      },
    },
  },
};

/** The fields of two checkpoints that differ, in words. */
export function scoreCheckpointDiff(a: ScoreCheckpoint, b: ScoreCheckpoint): string[] {
  const same = (x: unknown, y: unknown) => JSON.stringify(x) === JSON.stringify(y);
  const out: string[] = [];
  if (a.what !== b.what || a.version !== b.version)
    return [`checkpoint layout (version ${String(a.version)}, this build writes ${b.version})`];
  if (a.input?.sha256 !== b.input.sha256)
    out.push(
      `input: ${a.input?.file} sha256 ${String(a.input?.sha256).slice(0, 12)}… ` +
        `vs ${b.input.file} sha256 ${b.input.sha256.slice(0, 12)}…`,
    );
  const criteria = (c: ScoreCheckpoint) => (c.criteria ?? []).map((x) => `${x.name}=${x.file}`).join(', ');
  if (
    !same(
      a.criteria?.map((c) => [c.name, c.sha256]),
      b.criteria.map((c) => [c.name, c.sha256]),
    )
  )
    out.push(`criteria: ${criteria(a)} vs ${criteria(b)} (other names or contents)`);
  if (a.armVersion !== b.armVersion) out.push(`activation-rm version: ${a.armVersion} vs ${b.armVersion}`);
  if (!same(a.model, b.model)) out.push('model weights, config or --dtype');
  if (!same(a.shard, b.shard))
    out.push(`shard: ${JSON.stringify(a.shard ?? null)} vs ${JSON.stringify(b.shard ?? null)}`);
  for (const k of Object.keys(b.options) as (keyof ScoreCheckpoint['options'])[]) {
    if (!same(a.options?.[k], b.options[k]))
      out.push(`${k}: ${JSON.stringify(a.options?.[k])} vs ${JSON.stringify(b.options[k])}`);
  }
  return out;
}

/** The line `score` ends with: rows written, rows skipped, pair accuracy per criterion, prompts cut, rows too long. */
export function scoreSummary(output: string, skipped: number, t: ScoreTotals): string {
  const wrong = 'ties and unscorable count as wrong';
  const flat = t.correct.get(null);
  const each = (name: string | null, n: number) => `${name} ${(n / t.pairs).toFixed(4)} (${n}/${t.pairs})`;
  const accuracies =
    flat === undefined
      ? `${[...t.correct].map(([name, n]) => each(name, n)).join(', ')} (${wrong})`
      : `${(flat / t.pairs).toFixed(4)} (${flat}/${t.pairs}, ${wrong})`;
  return (
    `scored ${t.rows} rows → ${output}` +
    (skipped ? `; skipped ${skipped} invalid rows` : '') +
    (t.pairs ? `; pairs: accuracy ${accuracies}` : '') +
    `; truncated prompts: ${t.truncated}; too long to score: ${t.tooLong}\n`
  );
}
