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
  scoreSummary,
  type ScoreCheckpoint,
  type ScoreTotals,
} from './score-checkpoint.js';
import { resolveShard, shardOption, type ShardFlag } from './shard.js';
import { finishedShardMatches, scoreShardFiles, shardRows, writeScoreShardManifest } from './score-shards.js';
import type { Shard } from '../eval/shard-units.js';
import { packageVersion } from '../eval/provenance.js';

/** Rows `arm score` reads, scores and appends at a time (`--chunk-rows`), and the most input bytes in one chunk. */
const SCORE_CHUNK_ROWS = 256;
const SCORE_CHUNK_BYTES = 64 * 1024 * 1024;

/** Whether a chunk of `rows` rows and `bytes` input bytes is full (the rule both passes cut chunks by). */
const chunkFull = (rows: number, bytes: number, chunkRows: number) => rows >= chunkRows || bytes >= SCORE_CHUNK_BYTES;

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
  shard?: ShardFlag;
}

/**
 * The files a run writes: `<output>` (with --shard, the shard's rows file), the rows so far, and what they were
 * scored from; with --shard also the shard's place, its rows of the input, and its manifest (score-shards.ts).
 */
interface ScoreFiles {
  output: string;
  part: string;
  checkpoint: string;
  shard?: { place: Shard; rows: { start: number; end: number }; manifest: string };
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
    .addOption(shardOption('input, in whole --chunk-rows chunks, into <output stem>.shard-<i>-of-<n>.jsonl'))
    .action(scoreCommand);
}

async function scoreCommand(o: ScoreCliOptions): Promise<void> {
  const place = o.shard ? resolveShard(o.shard) : undefined;
  // The input's rows first: a bad line is named before anything else is looked at (as before --rm was repeatable).
  const survey = surveyScoreInput(o);
  const { criteria, named } = criterionArgs(o.rm);
  const files = scoreFiles(o.output, survey, place);
  const inputs: InputFile[] = [
    { path: o.input, what: 'the --input file' },
    ...criteria.map((c) => ({ path: c.file, what: 'the --rm criterion file' })),
    ...modelInputs(o.model),
  ];
  const output = prepareOutput(files.output, { flag: '--output', inputs });
  prepareOutput(files.part, { flag: '--output (its partial file)', inputs });
  prepareOutput(files.checkpoint, { flag: '--output (its checkpoint)', inputs });
  const decoder = await loadDecoderForOutputs(o, {
    files: [files.output, files.part, files.checkpoint],
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

/** Where a run writes: `<output>`, or with a shard its own files and its range of whole chunks of the input. */
function scoreFiles(output: string, survey: ScoreSurvey, place: Shard | undefined): ScoreFiles {
  if (!place) return { output, part: `${output}.part`, checkpoint: `${output}.score-checkpoint.json` };
  const { rows, manifest } = scoreShardFiles(output, place);
  return {
    output: rows,
    part: `${rows}.part`,
    checkpoint: `${rows}.score-checkpoint.json`,
    shard: { place, rows: shardRows(survey.chunkEnds, place), manifest },
  };
}

/**
 * Scores the input (a shard: its rows) into the part file (continuing what it holds) and, when every row is in,
 * renames it to its output and ends with the summary; a run stopped by Ctrl-C keeps the part file and exits with
 * 130. A shard then writes its manifest, the mark that it is finished.
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
  const checkpoint = scoreCheckpointFor(o, set, survey.rows, files.shard);
  const range = files.shard?.rows ?? { start: 0, end: survey.rows };
  const rows = range.end - range.start;
  if (files.shard && !o.restart && finishedShardMatches(files.shard.manifest, checkpoint)) {
    const { place, manifest } = files.shard;
    process.stderr.write(
      `shard ${place.index} of ${place.count} is already done (${manifest} says this run): nothing to score; ` +
        `--restart scores it again; when all ${place.count} shards are done: arm merge --output ${o.output}\n`,
    );
    return;
  }
  Object.assign(totals, openScoreCheckpoint(files, checkpoint, { restart: o.restart ?? false }));
  // From here the shard is not finished until a new manifest says so.
  if (files.shard) fs.rmSync(files.shard.manifest, { force: true });
  if (files.shard && rows === 0)
    process.stderr.write(
      `note: shard ${files.shard.place.index} of ${files.shard.place.count} has no rows: the input is ` +
        `${survey.chunkEnds.length} chunks of --chunk-rows ${o.chunkRows}, fewer than the shards; ` +
        'a smaller --chunk-rows spreads it over more of them\n',
    );
  if (!o.quiet) {
    process.stderr.write(
      totals.rows
        ? `resuming: ${totals.rows} of ${rows} rows already scored in ${files.part}\n`
        : `scoring ${rows} rows into ${files.part}, ${o.chunkRows} at a time ` +
            `(renamed to ${files.output} when complete; Ctrl-C stops after the current chunk, ` +
            'and the same command continues)\n',
    );
  }
  const seen = await appendScoredChunks(set, o, checkpoint, {
    range,
    sharded: files.shard !== undefined,
    partFile: files.part,
    totals,
    bar,
    stopped: run.stopped,
    nested: run.layout.nested,
  });
  bar.stop();
  if (run.stopped() && totals.rows < rows) {
    process.stderr.write(
      `interrupted after ${totals.rows} of ${rows} rows, kept in ${files.part}; ` +
        'run the same command again to continue\n',
    );
    process.exitCode = 130;
    return;
  }
  if (seen !== rows || totals.rows !== rows) throw inputChanged(o.input, rows, String(seen));
  fs.renameSync(files.part, files.output);
  fs.rmSync(files.checkpoint, { force: true });
  if (files.shard) writeScoreShardManifest(files.shard.manifest, checkpoint, files.output, survey.skipped);
  process.stderr.write(scoreSummary(files.output, survey.skipped, totals));
  if (files.shard) {
    const { place } = files.shard;
    process.stderr.write(
      `shard ${place.index} of ${place.count}: rows ${range.start + 1}–${range.end} of ${survey.rows} ` +
        `(manifest ${files.shard.manifest}); when all ${place.count} shards are done: arm merge --output ${o.output}\n`,
    );
  }
}

/** The input's rows differ from pass 1's count (`scored`: how many pass 2 read, in words). */
const inputChanged = (input: string, rows: number, scored: string) =>
  new Error(
    `${input} changed while it was scored (${rows} rows when checked, ${scored} when scored); run the command again`,
  );

/**
 * What pass 1 found: usable rows, rows skipped as invalid, the first item row (for the ranked check), and where
 * pass 2's chunks will end (the row after each chunk's last: shards are cut there).
 */
interface ScoreSurvey {
  rows: number;
  skipped: number;
  firstScalar?: Example;
  chunkEnds: number[];
}

/** Pass 1 of `arm score`: every row validated (skips reported) and counted. */
function surveyScoreInput(o: ScoreCliOptions): ScoreSurvey {
  const skips = skipReporter(o.input);
  let rows = 0;
  let firstScalar: Example | undefined;
  const chunkEnds: number[] = [];
  let chunk = { rows: 0, bytes: 0 };
  for (const r of streamExamples(o.input, scoreReadOptions(o))) {
    if ('skipped' in r) {
      skips.add(r.skipped);
      continue;
    }
    rows++;
    if (r.example.kind === 'scalar') firstScalar ??= r.example;
    chunk = { rows: chunk.rows + 1, bytes: chunk.bytes + r.bytes };
    if (chunkFull(chunk.rows, chunk.bytes, o.chunkRows)) {
      chunkEnds.push(rows);
      chunk = { rows: 0, bytes: 0 };
    }
  }
  if (chunk.rows) chunkEnds.push(rows);
  const skipped = skips.end();
  if (rows === 0) throw new DataError(`${o.input}: no usable rows${skipped ? ` (${skipped} skipped as invalid)` : ''}`);
  return { rows, skipped, firstScalar, chunkEnds };
}

const scoreReadOptions = (o: ScoreCliOptions) => ({
  labelsOptional: true,
  imageRoot: o.imageRoot,
  skipInvalid: o.skipInvalid,
});

/** What this run scores from: the input, criterion and model by content, and every option the scores depend on. */
function scoreCheckpointFor(
  o: ScoreCliOptions,
  set: CriterionSet,
  rows: number,
  shard: ScoreFiles['shard'],
): ScoreCheckpoint {
  const meta = set.criteria[0]!.rm.criterion.meta;
  const info = set.decoder.info;
  return {
    what: 'arm score checkpoint',
    version: SCORE_CHECKPOINT_VERSION,
    armVersion: packageVersion(),
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
      device: info.device,
      threads: info.threads,
    },
    ...(shard ? { shard: { index: shard.place.index, count: shard.place.count, rows: shard.rows } } : {}),
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
    /** The usable rows [start, end) to score: all, or a shard's (`sharded`: rows after `end` are another's). */
    range: { start: number; end: number };
    sharded: boolean;
    partFile: string;
    totals: ScoreTotals;
    bar: ProgressBar;
    stopped: () => boolean;
    nested: boolean;
  },
): Promise<number> {
  const { totals, bar, range } = run;
  const done = totals.rows;
  const rows = range.end - range.start;
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
      const where = `${o.input}, rows ${range.start + start + 1}–${range.start + seen}`;
      for (const { name, watch } of watches) watch.add(scores.get(name)!, where);
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
  let index = 0; // usable rows read, in range or not
  try {
    for (const r of streamExamples(o.input, { ...scoreReadOptions(o), uniqueIds: false })) {
      if ('skipped' in r) continue;
      if (index++ < range.start) continue;
      // A row past the end is the next shard's, or (unsharded) one the input grew by since pass 1 counted it.
      if (index > range.end) {
        if (run.sharded) break;
        throw inputChanged(o.input, range.end, 'more');
      }
      chunk.push(r.example);
      chunkBytes += r.bytes;
      if (!chunkFull(chunk.length, chunkBytes, o.chunkRows)) continue;
      await flush();
      if (run.stopped()) return seen;
    }
    if (chunk.length) await flush();
    return seen;
  } finally {
    fs.closeSync(fd);
  }
}
