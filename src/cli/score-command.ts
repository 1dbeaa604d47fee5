/**
 * `arm score`, streamed: a first pass validates every row (errors and `--skip-invalid` reports name file:line
 * before any model work), counts them and hashes the file; the second reads `--chunk-rows` rows at a time,
 * scores them and appends them to `<output>.part`, which is renamed to `<output>` when complete. Memory holds
 * one chunk, whatever the input's size. `<output>.score-checkpoint.json` (score-checkpoint.ts) records what the
 * rows are scored from: the same command run again after Ctrl-C or a crash continues after the last complete row,
 * with the same chunks, so the output is byte-identical to an uninterrupted run.
 */
import fs from 'node:fs';
import path from 'node:path';
import type { Command } from 'commander';
import { DataError, streamExamples, type Example } from '../data/examples.js';
import { armFields } from '../arm/rm.js';
import { CriterionSet } from '../arm/criterion-set.js';
import { UnknownTokenWatch } from '../arm/unknown-tokens.js';
import { disposeDecoder } from '../arm/images.js';
import { progressBar, type ProgressBar } from '../util/progress-bar.js';
import {
  addModelOptions,
  DEFAULT_MODEL,
  loadDecoderForOutputs,
  modelInputs,
  positiveInt,
  prepareOutput,
  sha256File,
  skipReporter,
  stopOnSigint,
  type InputFile,
  type ModelCliOptions,
} from './common.js';
import { addDeviceOption } from './device-option.js';
import { collectValues, criterionArgs } from './criterion-args.js';
import {
  countRow,
  noScoreTotals,
  openScoreCheckpoint,
  SCORE_CHECKPOINT_VERSION,
  type ScoreCheckpoint,
  type ScoreTotals,
} from './score-checkpoint.js';

/** Rows `arm score` reads, scores and appends at a time (`--chunk-rows`), and the most input bytes in one chunk. */
const SCORE_CHUNK_ROWS = 256;
const SCORE_CHUNK_BYTES = 64 * 1024 * 1024;

interface ScoreCliOptions extends ModelCliOptions {
  rm: string[];
  input: string;
  output: string;
  batchSize?: number;
  maxLength?: number;
  imageRoot?: string;
  skipInvalid?: boolean;
  chunkRows: number;
  restart?: boolean;
}

/** The files a run writes beside `<output>`: the rows so far, and what they were scored from. */
interface ScoreFiles {
  part: string;
  checkpoint: string;
}

export function registerScoreCommand(program: Command): void {
  addDeviceOption(
    addModelOptions(
      program.command('score').description('score items or pairs with a fitted criterion'),
      DEFAULT_MODEL,
    ),
  )
    .requiredOption(
      '--rm <[name=]file>',
      'criterion file; repeat as name=file to score several criteria in one pass ("arm" then holds {name: scores})',
      collectValues,
    )
    .requiredOption('--input <file.jsonl>', 'pairs {prompt, chosen, rejected} and/or items {prompt, response[, label]}')
    .requiredOption('--output <file.jsonl>', 'input rows with an "arm" field of scores added')
    .option('--batch-size <n>', 'forward batch size', (v) => positiveInt(v, '--batch-size'))
    .option('--max-length <n>', 'token budget per prompt', (v) => positiveInt(v, '--max-length'))
    .option('--image-root <dir>', "folder that rows' image paths are read under (default: the input file's folder)")
    .option(
      '--skip-invalid',
      'skip invalid rows and lines over the length limit (reported with file:line) instead of stopping',
    )
    .option(
      '--chunk-rows <n>',
      `rows read, scored and appended to <output>.part at a time (at most ${SCORE_CHUNK_BYTES >> 20} MiB of input ` +
        'lines); part of what a resumed run must match',
      (v) => positiveInt(v, '--chunk-rows'),
      SCORE_CHUNK_ROWS,
    )
    .option(
      '--restart',
      'discard what an interrupted run left in <output>.part and start over (by default the same command continues it)',
    )
    .action(scoreCommand);
}

async function scoreCommand(o: ScoreCliOptions): Promise<void> {
  // The input's rows first: a bad line is named before anything else is looked at (as before --rm was repeatable).
  const survey = surveyScoreInput(o);
  const { criteria, named } = criterionArgs(o.rm);
  const files: ScoreFiles = { part: `${o.output}.part`, checkpoint: `${o.output}.score-checkpoint.json` };
  const inputs: InputFile[] = [
    { path: o.input, what: 'the --input file' },
    ...criteria.map((c) => ({ path: c.file, what: 'the --rm criterion file' })),
    ...modelInputs(o.model),
  ];
  const output = prepareOutput(o.output, { flag: '--output', inputs });
  prepareOutput(files.part, { flag: '--output (its partial file)', inputs });
  prepareOutput(files.checkpoint, { flag: '--output (its checkpoint)', inputs });
  const decoder = await loadDecoderForOutputs(o, {
    files: [o.output, files.part, files.checkpoint],
    flag: '--output',
    cleanup: output.cleanup,
  });
  const sigint = stopOnSigint(
    '\nstopping after the current chunk (Ctrl-C again to quit at once; the same command continues)…\n',
  );
  const bar = progressBar('scoring   ', { quiet: o.quiet });
  const totals = noScoreTotals();
  try {
    const set = CriterionSet.load(decoder, criteria);
    // Several criteria, or one given a name: "arm" holds each one's fields under its name.
    const layout = { nested: named || criteria.length > 1 };
    await scoreIntoPart(set, o, { survey, files, totals, bar, stopped: sigint.stopped, layout });
  } catch (e) {
    if (fs.existsSync(files.part) && totals.rows > 0) {
      process.stderr.write(
        `note: the ${totals.rows} rows scored before this error are kept in ${files.part}; ` +
          'the same command continues after them\n',
      );
    } else {
      // Nothing scored: leave nothing behind (a checkpoint whose part file holds rows is kept).
      if (fs.existsSync(files.part) && fs.statSync(files.part).size === 0) fs.rmSync(files.part, { force: true });
      if (!fs.existsSync(files.part)) fs.rmSync(files.checkpoint, { force: true });
      output.cleanup();
    }
    throw e;
  } finally {
    bar.stop();
    sigint.release();
    await disposeDecoder(decoder);
  }
}

/**
 * Scores the input into the part file (continuing what it holds) and, when every row is in, renames it to
 * `<output>` and ends with the summary; a run stopped by Ctrl-C keeps the part file and exits with 130.
 */
async function scoreIntoPart(
  set: CriterionSet,
  o: ScoreCliOptions,
  run: {
    survey: ScoreSurvey;
    files: ScoreFiles;
    totals: ScoreTotals;
    bar: ProgressBar;
    stopped: () => boolean;
    layout: { nested: boolean };
  },
): Promise<void> {
  const { survey, files, totals, bar } = run;
  const ranked = set.criteria.find((c) => c.rm.criterion.meta.template.kind === 'ranked');
  if (ranked && survey.firstScalar) {
    throw new Error(
      `${o.input}:${survey.firstScalar.line}: a {prompt, response} item, ` +
        `but ${ranked.file} uses the ranked template, which scores pairs only`,
    );
  }
  const checkpoint = scoreCheckpointFor(o, set, survey.rows);
  Object.assign(totals, openScoreCheckpoint(files, checkpoint, { restart: o.restart ?? false }));
  if (!o.quiet) {
    process.stderr.write(
      totals.rows
        ? `resuming: ${totals.rows} of ${survey.rows} rows already scored in ${files.part}\n`
        : `scoring ${survey.rows} rows into ${files.part}, ${o.chunkRows} at a time ` +
            `(renamed to ${o.output} when complete; Ctrl-C stops after the current chunk, ` +
            'and the same command continues)\n',
    );
  }
  const seen = await appendScoredChunks(set, o, checkpoint, {
    partFile: files.part,
    totals,
    bar,
    stopped: run.stopped,
    nested: run.layout.nested,
  });
  bar.stop();
  if (run.stopped() && totals.rows < survey.rows) {
    process.stderr.write(
      `interrupted after ${totals.rows} of ${survey.rows} rows, kept in ${files.part}; ` +
        'run the same command again to continue\n',
    );
    process.exitCode = 130;
    return;
  }
  if (seen !== survey.rows || totals.rows !== survey.rows)
    throw new Error(
      `${o.input} changed while it was scored (${survey.rows} rows when checked, ${seen} when scored); ` +
        'run the command again',
    );
  fs.renameSync(files.part, o.output);
  fs.rmSync(files.checkpoint, { force: true });
  process.stderr.write(scoreSummary(o.output, survey.skipped, totals));
}

/** What pass 1 found: usable rows, rows skipped as invalid, and the first item row (for the ranked check). */
interface ScoreSurvey {
  rows: number;
  skipped: number;
  firstScalar?: Example;
}

/** Pass 1 of `arm score`: every row validated (skips reported) and counted. */
function surveyScoreInput(o: ScoreCliOptions): ScoreSurvey {
  const skips = skipReporter(o.input);
  let rows = 0;
  let firstScalar: Example | undefined;
  for (const r of streamExamples(o.input, scoreReadOptions(o))) {
    if ('skipped' in r) {
      skips.add(r.skipped);
      continue;
    }
    rows++;
    if (r.example.kind === 'scalar') firstScalar ??= r.example;
  }
  const skipped = skips.end();
  if (rows === 0) throw new DataError(`${o.input}: no usable rows${skipped ? ` (${skipped} skipped as invalid)` : ''}`);
  return { rows, skipped, firstScalar };
}

const scoreReadOptions = (o: ScoreCliOptions) => ({
  labelsOptional: true,
  imageRoot: o.imageRoot,
  skipInvalid: o.skipInvalid,
});

/** What this run scores from: the input, criterion and model by content, and every option the scores depend on. */
function scoreCheckpointFor(o: ScoreCliOptions, set: CriterionSet, rows: number): ScoreCheckpoint {
  const meta = set.criteria[0]!.rm.criterion.meta;
  const info = set.decoder.info;
  return {
    what: 'arm score checkpoint',
    version: SCORE_CHECKPOINT_VERSION,
    input: { file: path.resolve(o.input), sha256: sha256File(o.input), bytes: fs.statSync(o.input).size, rows },
    criteria: set.criteria.map((c) => ({ name: c.name, file: path.resolve(c.file), sha256: sha256File(c.file) })),
    model: { weights: info.weightsFingerprint, config: info.configHash, format: info.weightFormat },
    options: {
      batchSize: o.batchSize ?? meta.hyper.batchSize,
      maxLength: o.maxLength ?? meta.hyper.maxLength,
      chunkRows: o.chunkRows,
      chunkBytes: SCORE_CHUNK_BYTES,
      skipInvalid: o.skipInvalid ?? false,
      imageRoot: o.imageRoot === undefined ? null : path.resolve(o.imageRoot),
      threads: o.threads ?? null,
    },
  };
}

/**
 * Pass 2 of `arm score`: reads the input again in chunks, scores every chunk that holds a row not yet in the
 * part file and appends those rows (in input order) with one write per chunk; stops after a chunk when
 * `stopped()`. Chunks are cut at the same rows in every run (a fixed number of rows or bytes from the start),
 * so a continued run scores each row in the batches an uninterrupted run would: the chunk holding the first
 * missing row is scored whole and its rows already written are not written again. Returns the rows read.
 */
async function appendScoredChunks(
  set: CriterionSet,
  o: ScoreCliOptions,
  checkpoint: ScoreCheckpoint,
  run: {
    partFile: string;
    totals: ScoreTotals;
    bar: ProgressBar;
    stopped: () => boolean;
    nested: boolean;
  },
): Promise<number> {
  const { totals, bar } = run;
  const done = totals.rows;
  const rows = checkpoint.input.rows;
  const fd = fs.openSync(run.partFile, 'a');
  let seen = 0;
  let chunk: Example[] = [];
  let chunkBytes = 0;
  const warning = (m: string) => process.stderr.write(`\nwarning: ${m}\n`);
  // One watch per pass: the criteria of a pass see the same judge prompts.
  const watches = set.passes(undefined, checkpoint.options.maxLength).map((pass) => ({
    name: pass[0]!.name,
    watch: new UnknownTokenWatch(set.decoder.tokenizer, pass[0]!.rm.criterion.meta.template, warning),
  }));
  const flush = async () => {
    const start = seen;
    seen += chunk.length;
    if (seen > done) {
      bar.update(Math.max(start, done), rows);
      const scores = await set.scoreExamples(chunk, {
        batchSize: checkpoint.options.batchSize,
        maxLength: checkpoint.options.maxLength,
        onProgress: (d, t) => bar.update(Math.max(done, start + Math.floor((d / t) * chunk.length)), rows),
      });
      for (const { name, watch } of watches) watch.add(scores.get(name)!, `${o.input}, rows ${start + 1}–${seen}`);
      let text = '';
      for (let i = Math.max(0, done - start); i < chunk.length; i++) {
        const arm = run.nested
          ? Object.fromEntries(set.names.map((n) => [n, armFields(scores.get(n)![i]!)]))
          : armFields(scores.get(set.names[0]!)![i]!);
        text += `${JSON.stringify({ ...chunk[i]!.row, arm })}\n`;
        countRow(totals, arm);
      }
      fs.appendFileSync(fd, text);
      bar.update(seen, rows);
    }
    chunk = [];
    chunkBytes = 0;
  };
  try {
    for (const r of streamExamples(o.input, { ...scoreReadOptions(o), uniqueIds: false })) {
      if ('skipped' in r) continue;
      chunk.push(r.example);
      chunkBytes += r.bytes;
      if (chunk.length < o.chunkRows && chunkBytes < SCORE_CHUNK_BYTES) continue;
      await flush();
      if (run.stopped()) return seen;
    }
    if (chunk.length) await flush();
    return seen;
  } finally {
    fs.closeSync(fd);
  }
}

/** The line `score` ends with: rows written, rows skipped, pair accuracy per criterion, prompts cut, rows too long. */
function scoreSummary(output: string, skipped: number, t: ScoreTotals): string {
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
