/** `arm fit`, `arm score`, `arm inspect`: the Activation RM from the command line. */
import fs from 'node:fs';
import path from 'node:path';
import { Option, type Command } from 'commander';
import { DataError, jsonlLines, MAX_LINE_BYTES, readExamples, streamExamples, type Example } from '../data/examples.js';
import { fitActivationRM, FitInterrupted, type HeadStrategy } from '../arm/fit.js';
import { ActivationRM } from '../arm/rm.js';
import { disposeDecoder } from '../arm/images.js';
import { CriterionWriteError, FORMAT_VERSION, loadCriterion, type Criterion } from '../arm/criterion.js';
import {
  addFitOptions,
  addJudgeOptions,
  addModelOptions,
  loadDecoder,
  modelInputs,
  nonNegativeInt,
  positiveInt,
  dropTornLastLine,
  prepareOutput,
  progressBar,
  sha256File,
  skipReporter,
  writeFileAtomic,
  type FitCliFlags,
  type InputFile,
  type JudgeCliOptions,
  type ModelCliOptions,
} from './common.js';

export const DEFAULT_MODEL = 'Qwen/Qwen2.5-0.5B-Instruct';

interface FitCliOptions extends ModelCliOptions, JudgeCliOptions, FitCliFlags {
  examples: string;
  out: string;
  seed: number;
  mode: 'replace' | 'add';
  heads: HeadStrategy;
  denoise?: string;
  keepAllMeans?: boolean;
  resume?: boolean;
  force?: boolean;
}

export function registerArmCommands(program: Command): void {
  registerFitCommand(program);
  registerScoreCommand(program);
  program
    .command('inspect')
    .description('show what a criterion file holds')
    .argument('<file>', '.arm.safetensors file')
    .option('--json', 'print the metadata as JSON')
    .action((file: string, o: { json?: boolean }) => {
      // Any format version: inspecting an old file says what it was (scoring with it is refused).
      const c = loadCriterion(file, { anyVersion: true });
      if (c.meta.formatVersion !== FORMAT_VERSION)
        process.stderr.write(
          `warning: ${file} has format version ${c.meta.formatVersion}; this build scores only version ${FORMAT_VERSION} files: fit the criterion again\n`,
        );
      if (o.json) {
        process.stdout.write(`${JSON.stringify({ ...c.meta, probs: Array.from(c.probs) })}\n`);
        return;
      }
      process.stdout.write(describeCriterion(file, c));
    });
}

function registerFitCommand(program: Command): void {
  addFitOptions(
    addJudgeOptions(
      addModelOptions(
        program.command('fit').description('fit an Activation RM criterion from few-shot examples'),
        DEFAULT_MODEL,
      ),
    ),
  )
    .requiredOption(
      '--examples <file.jsonl>',
      'few-shot examples: {prompt, chosen, rejected} pairs and/or {prompt, response, label}',
    )
    .requiredOption('--out <file.arm.safetensors>', 'criterion file to write')
    .option('--seed <n>', 'seed for pass sampling and REINFORCE', (v) => nonNegativeInt(v, '--seed'), 0)
    .addOption(new Option('--mode <mode>', 'intervention').choices(['replace', 'add']).default('replace'))
    .option('--heads <which>', 'selected (REINFORCE) | all | random:N', 'selected')
    .option(
      '--denoise <pca:r[:centred|:uncentred]>',
      'denoise the means by a PCA of the per-pass activations with r axes (centred: rebuild passes from the top axes, passes off them count less; uncentred: project the mean onto the top axes of the second moment); default centred',
    )
    .option('--keep-all-means', 'store the means of every head, not only the selected ones')
    .option('--resume', 'continue an interrupted fit from <out>.fit-checkpoint.json')
    .option('--force', 'overwrite an existing --out that is not a criterion file')
    .option('--image-root <dir>', "folder that rows' image paths are read under (default: the examples file's folder)")
    .option(
      '--skip-invalid',
      'skip invalid rows and lines over the length limit (reported with file:line) instead of stopping',
    )
    .action(async (o: FitCliOptions & { imageRoot?: string; skipInvalid?: boolean }) => {
      if (o.denoiseBeforeSelection && !o.denoise) throw new Error('--denoise-before-selection needs --denoise pca:r');
      const { examples, skipped } = readExamples(o.examples, { imageRoot: o.imageRoot, skipInvalid: o.skipInvalid });
      const skips = skipReporter(o.examples);
      skipped.forEach((k) => skips.add(k));
      skips.end();
      // Minutes of work must not end in a refused or clobbering write: check where it goes first.
      const checkpointFile = `${o.out}.fit-checkpoint.json`;
      const inputs: InputFile[] = [{ path: o.examples, what: 'the examples file' }, ...modelInputs(o.model)];
      const output = prepareOutput(o.out, { flag: '--out', inputs, criterion: true, force: o.force });
      prepareOutput(checkpointFile, { flag: '--out (its checkpoint)', inputs });
      let decoder;
      try {
        decoder = await loadDecoder(o);
        // A hub id is only a folder once resolved.
        prepareOutput(o.out, { flag: '--out', inputs: modelInputs(decoder.info.modelDir) });
      } catch (e) {
        output.cleanup();
        await disposeDecoder(decoder);
        throw e;
      }
      let stop = false;
      const onSigint = () => {
        if (stop) process.exit(130);
        stop = true;
        process.stderr.write('\nstopping after the current batch or step (Ctrl-C again to quit at once)…\n');
      };
      process.on('SIGINT', onSigint);
      const bars = {
        means: progressBar('means     ', o.quiet),
        reinforce: progressBar('reinforce ', o.quiet),
        readout: progressBar('read-out  ', o.quiet),
      };
      if (!o.quiet)
        process.stderr.write(
          `fitting ${o.out}: ${o.passes} mean passes, ${o.heads === 'selected' ? `${o.steps} REINFORCE steps` : `heads ${o.heads}`} (Ctrl-C stops after the current batch or step and saves ${checkpointFile})\n`,
        );
      try {
        const rm = await fitActivationRM(decoder, examples, {
          template: o.template,
          templateText: o.templateText,
          chat: o.chat,
          templateKwargs: o.templateKwargs,
          passes: o.passes,
          shots: o.shots,
          passesPerDemoSet: o.passesPerDemoSet,
          seed: o.seed,
          batchSize: o.batchSize,
          maxLength: o.maxLength,
          mode: o.mode,
          heads: o.heads,
          denoise: o.denoise ?? null,
          denoiseBeforeSelection: o.denoiseBeforeSelection,
          reinforce: { steps: o.steps, samples: o.samples, lr: o.lr },
          checkpointFile,
          resume: o.resume,
          modelId: o.model,
          onProgress: (phase, done, total, info) => {
            bars[phase].update(done, total, info);
            if (done === total) bars[phase].stop();
          },
          warn: (m) => process.stderr.write(`warning: ${m}\n`),
          shouldStop: () => stop,
        });
        rm.save(o.out, { keepAllMeans: o.keepAllMeans });
        fs.rmSync(checkpointFile, { force: true });
        const m = rm.criterion.meta;
        process.stderr.write(
          `wrote ${o.out}: ${m.heads.length} of ${m.model.numLayers * m.model.numHeads} heads, seed ${m.seed}, ${m.fit.seconds.toFixed(1)} s; answer tokens ${m.answerTokens.primary.join('/')} (${m.answerTokens.strings.map((s) => JSON.stringify(s)).join('/')})` +
            `; ${examples.length} examples${skipped.length ? `, ${skipped.length} invalid rows skipped` : ''}\n`,
        );
      } catch (e) {
        if (e instanceof FitInterrupted) {
          process.stderr.write(`${e.message}\n`);
          process.exitCode = 130;
          return;
        }
        output.cleanup();
        // A finished fit whose file could not be written: its checkpoint stays, and --resume saves it again.
        if (e instanceof CriterionWriteError && fs.existsSync(checkpointFile)) {
          throw new Error(
            `${e.message}; the fit checkpoint ${checkpointFile} is kept: arm fit --resume with the same arguments saves the criterion without extracting means or running REINFORCE again`,
          );
        }
        throw e;
      } finally {
        Object.values(bars).forEach((b) => b.stop());
        process.off('SIGINT', onSigint);
        await disposeDecoder(decoder);
      }
    });
}

function registerScoreCommand(program: Command): void {
  addModelOptions(program.command('score').description('score items or pairs with a fitted criterion'), DEFAULT_MODEL)
    .requiredOption('--rm <file.arm.safetensors>', 'criterion file')
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
      `rows read, scored and appended to <output>.part at a time (at most ${SCORE_CHUNK_BYTES >> 20} MiB of input lines); part of what a resumed run must match`,
      (v) => positiveInt(v, '--chunk-rows'),
      SCORE_CHUNK_ROWS,
    )
    .option(
      '--restart',
      'discard what an interrupted run left in <output>.part and start over (by default the same command continues it)',
    )
    .action(scoreCommand);
}

export function describeCriterion(file: string, c: Criterion): string {
  const m = c.meta;
  const { numLayers: L, numHeads: H } = m.model;
  const selected = new Set(m.heads.map(([l, h]) => l * H + h));
  // Validated files hold finite numbers; the fallback keeps a damaged one printable.
  const num = (x: unknown, digits: number) =>
    typeof x === 'number' && Number.isFinite(x) ? x.toFixed(digits) : String(x);
  const shade = (p: number) => ' ░▒▓█'[Math.min(4, Math.floor(p * 5))]!;
  const lines = [
    `${file}`,
    `  model      ${m.model.id} (${m.model.family}, ${L} layers × ${H} heads, d ${m.model.headDim}); config sha256 ${m.model.configHash.slice(0, 12)}…${m.model.visionConfigHash ? `; vision config sha256 ${m.model.visionConfigHash.slice(0, 12)}…` : ''}`,
    `  template   ${m.template.kind}${m.template.chat ? ` via chat template${m.template.templateKwargs ? ` ${JSON.stringify(m.template.templateKwargs)}` : ''}` : ' plain text'}; answers ${m.answerTokens.strings.map((s, i) => `${JSON.stringify(s)}→${m.answerTokens.primary[i]}`).join(', ')}`,
    `  heads      ${m.heads.length} of ${L * H} (${m.headStrategy}, ${m.mode}${m.denoise ? `, denoise ${m.denoise}${m.hyper.denoiseBeforeSelection ? ' before selection' : ''}` : ''}): ${m.heads.map(([l, h]) => `L${l}H${h}`).join(' ')}`,
    `  fit        seed ${m.seed}; ${m.fit.meanPasses} mean passes × ${m.hyper.shots} shots; ${m.fit.reinforceSteps} REINFORCE steps` +
      (m.hyper.reinforce ? ` (S ${m.hyper.reinforce.samples}, lr ${m.hyper.reinforce.lr})` : '') +
      `; ${num(m.fit.seconds, 1)} s; ${m.fit.createdAt}`,
    `  examples   ${m.examples.count} (${m.examples.items} judge items, ${m.examples.itemsTooLong} too long); sha256 ${m.examples.sha256.slice(0, 12)}…`,
    m.readout
      ? `  read-out   best mean loss ${num(m.readout.meanLoss, 4)} of ${m.readout.candidates.length} sampled masks`
      : '',
    '',
    `  selection probability σ(θ) per layer × head (█ ≥ 0.8; * = selected)`,
    `        ${Array.from({ length: H }, (_, h) => String(h % 10)).join(' ')}`,
    ...Array.from(
      { length: L },
      (_, l) =>
        `  L${String(l).padStart(3)} ${Array.from({ length: H }, (_, h) => (selected.has(l * H + h) ? '*' : shade(c.probs[l * H + h]!))).join(' ')}`,
    ),
    '',
  ];
  return lines.filter((x, i) => x !== '' || i > 5).join('\n');
}

/** Rows `arm score` reads, scores and appends at a time (`--chunk-rows`), and the most input bytes in one chunk. */
const SCORE_CHUNK_ROWS = 256;
const SCORE_CHUNK_BYTES = 64 * 1024 * 1024;
/**
 * Bumped when what a score checkpoint records, or how rows are chunked, changes: older partial outputs are then
 * refused.
 */
const SCORE_CHECKPOINT_VERSION = 1;

interface ScoreCliOptions extends ModelCliOptions {
  rm: string;
  input: string;
  output: string;
  batchSize?: number;
  maxLength?: number;
  imageRoot?: string;
  skipInvalid?: boolean;
  chunkRows: number;
  restart?: boolean;
}

/** What the rows of a partial output were scored from; a run continues it only when all of it matches. */
interface ScoreCheckpoint {
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
interface ScoreTotals {
  rows: number;
  pairs: number;
  correct: number;
  truncated: number;
  tooLong: number;
}

/** The `arm` field `score` writes for one row (non-finite numbers as null). */
function armField(s: Awaited<ReturnType<ActivationRM['scoreExamples']>>[number]): Record<string, unknown> {
  const arm =
    'chosen' in s
      ? {
          chosen: s.chosen,
          rejected: s.rejected,
          margin: s.margin,
          correct: s.correct,
          truncated: s.truncated,
          tooLong: s.tooLong,
          ...(s.swapConsistent === undefined ? {} : { swapConsistent: s.swapConsistent }),
        }
      : {
          reward: s.reward,
          normalized: s.normalized,
          logitYes: s.logitYes,
          logitNo: s.logitNo,
          truncated: s.truncatedTokens > 0,
          tooLong: s.tooLong,
        };
  return Object.fromEntries(
    Object.entries(arm).map(([k, v]) => [k, typeof v === 'number' && !Number.isFinite(v) ? null : v]),
  );
}

function countRow(t: ScoreTotals, arm: Record<string, unknown>): void {
  t.rows++;
  if ('margin' in arm) {
    t.pairs++;
    if (arm.correct === true) t.correct++;
  }
  if (arm.truncated === true) t.truncated++;
  if (arm.tooLong === true) t.tooLong++;
}

/**
 * `arm score`, streamed: a first pass validates every row (errors and `--skip-invalid` reports name file:line
 * before any model work), counts them and hashes the file; the second reads `--chunk-rows` rows at a time,
 * scores them and appends them to `<output>.part`, which is renamed to `<output>` when complete. Memory holds
 * one chunk, whatever the input's size. `<output>.score-checkpoint.json` records what the rows are scored
 * from: the same command run again after Ctrl-C or a crash continues after the last complete row, with the
 * same chunks, so the output is byte-identical to an uninterrupted run.
 */
async function scoreCommand(o: ScoreCliOptions): Promise<void> {
  const survey = surveyScoreInput(o);
  const partFile = `${o.output}.part`;
  const checkpointFile = `${o.output}.score-checkpoint.json`;
  const inputs: InputFile[] = [
    { path: o.input, what: 'the --input file' },
    { path: o.rm, what: 'the --rm criterion file' },
    ...modelInputs(o.model),
  ];
  const output = prepareOutput(o.output, { flag: '--output', inputs });
  prepareOutput(partFile, { flag: '--output (its partial file)', inputs });
  prepareOutput(checkpointFile, { flag: '--output (its checkpoint)', inputs });
  let decoder;
  try {
    decoder = await loadDecoder(o);
    for (const f of [o.output, partFile, checkpointFile])
      prepareOutput(f, { flag: '--output', inputs: modelInputs(decoder.info.modelDir) });
  } catch (e) {
    output.cleanup();
    await disposeDecoder(decoder);
    throw e;
  }
  let stop = false;
  const onSigint = () => {
    if (stop) process.exit(130);
    stop = true;
    process.stderr.write(
      '\nstopping after the current chunk (Ctrl-C again to quit at once; the same command continues)…\n',
    );
  };
  process.on('SIGINT', onSigint);
  const bar = progressBar('scoring   ', o.quiet);
  const totals: ScoreTotals = { rows: 0, pairs: 0, correct: 0, truncated: 0, tooLong: 0 };
  try {
    const rm = ActivationRM.load(decoder, o.rm);
    if (rm.criterion.meta.template.kind === 'ranked' && survey.firstScalar) {
      throw new Error(
        `${o.input}:${survey.firstScalar.line}: a {prompt, response} item, but ${o.rm} uses the ranked template, which scores pairs only`,
      );
    }
    const checkpoint = scoreCheckpointFor(o, rm, survey.rows);
    Object.assign(totals, openScoreCheckpoint(partFile, checkpointFile, checkpoint, o.restart ?? false));
    if (!o.quiet) {
      process.stderr.write(
        totals.rows
          ? `resuming: ${totals.rows} of ${survey.rows} rows already scored in ${partFile}\n`
          : `scoring ${survey.rows} rows into ${partFile}, ${o.chunkRows} at a time (renamed to ${o.output} when complete; Ctrl-C stops after the current chunk, and the same command continues)\n`,
      );
    }
    const seen = await appendScoredChunks(rm, o, checkpoint, { partFile, totals, bar, stopped: () => stop });
    bar.stop();
    if (stop && totals.rows < survey.rows) {
      process.stderr.write(
        `interrupted after ${totals.rows} of ${survey.rows} rows, kept in ${partFile}; run the same command again to continue\n`,
      );
      process.exitCode = 130;
      return;
    }
    if (seen !== survey.rows || totals.rows !== survey.rows)
      throw new Error(
        `${o.input} changed while it was scored (${survey.rows} rows when checked, ${seen} when scored); run the command again`,
      );
    fs.renameSync(partFile, o.output);
    fs.rmSync(checkpointFile, { force: true });
    process.stderr.write(scoreSummary(o.output, survey.skipped, totals));
  } catch (e) {
    if (fs.existsSync(partFile) && totals.rows > 0) {
      process.stderr.write(
        `note: the ${totals.rows} rows scored before this error are kept in ${partFile}; the same command continues after them\n`,
      );
    } else {
      // Nothing scored: leave nothing behind (a checkpoint whose part file holds rows is kept).
      if (fs.existsSync(partFile) && fs.statSync(partFile).size === 0) fs.rmSync(partFile, { force: true });
      if (!fs.existsSync(partFile)) fs.rmSync(checkpointFile, { force: true });
      output.cleanup();
    }
    throw e;
  } finally {
    bar.stop();
    process.off('SIGINT', onSigint);
    await disposeDecoder(decoder);
  }
}

/** Pass 1 of `arm score`: every row validated (skips reported), counted; the first item row, for the ranked check. */
function surveyScoreInput(o: ScoreCliOptions): { rows: number; skipped: number; firstScalar?: Example } {
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
function scoreCheckpointFor(o: ScoreCliOptions, rm: ActivationRM, rows: number): ScoreCheckpoint {
  const meta = rm.criterion.meta;
  const info = rm.decoder.info;
  return {
    what: 'arm score checkpoint',
    version: SCORE_CHECKPOINT_VERSION,
    input: { file: path.resolve(o.input), sha256: sha256File(o.input), bytes: fs.statSync(o.input).size, rows },
    criterion: { file: path.resolve(o.rm), sha256: sha256File(o.rm) },
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
  rm: ActivationRM,
  o: ScoreCliOptions,
  checkpoint: ScoreCheckpoint,
  run: {
    partFile: string;
    totals: ScoreTotals;
    bar: ReturnType<typeof progressBar>;
    stopped: () => boolean;
  },
): Promise<number> {
  const { totals, bar } = run;
  const done = totals.rows;
  const rows = checkpoint.input.rows;
  const fd = fs.openSync(run.partFile, 'a');
  let seen = 0;
  let chunk: Example[] = [];
  let chunkBytes = 0;
  const flush = async () => {
    const start = seen;
    seen += chunk.length;
    if (seen > done) {
      bar.update(Math.max(start, done), rows);
      const scores = await rm.scoreExamples(chunk, {
        batchSize: checkpoint.options.batchSize,
        maxLength: checkpoint.options.maxLength,
        onProgress: (d, t) => bar.update(Math.max(done, start + Math.floor((d / t) * chunk.length)), rows),
      });
      let text = '';
      for (let i = Math.max(0, done - start); i < chunk.length; i++) {
        const arm = armField(scores[i]!);
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

function scoreSummary(output: string, skipped: number, t: ScoreTotals): string {
  return (
    `scored ${t.rows} rows → ${output}` +
    (skipped ? `; skipped ${skipped} invalid rows` : '') +
    (t.pairs
      ? `; pairs: accuracy ${(t.correct / t.pairs).toFixed(4)} (${t.correct}/${t.pairs}, ties and unscorable count as wrong)`
      : '') +
    `; truncated prompts: ${t.truncated}; too long to score: ${t.tooLong}\n`
  );
}

/**
 * Opens `partFile` for a run with `checkpoint`: a new run (or `restart`) writes the checkpoint and an empty part
 * file; otherwise the existing checkpoint must match in every field (the refusal names those that differ), a
 * half-written last line is dropped, and the complete rows are read back for the summary's totals.
 */
function openScoreCheckpoint(
  partFile: string,
  checkpointFile: string,
  checkpoint: ScoreCheckpoint,
  restart: boolean,
): ScoreTotals {
  const totals: ScoreTotals = { rows: 0, pairs: 0, correct: 0, truncated: 0, tooLong: 0 };
  const fresh = () => {
    writeFileAtomic(checkpointFile, `${JSON.stringify(checkpoint, null, 2)}\n`);
    fs.writeFileSync(partFile, '');
    return totals;
  };
  const startOver = `remove ${partFile} and ${checkpointFile}, or pass --restart, to start over`;
  if (restart || !fs.existsSync(partFile)) return fresh();
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
      `${partFile} holds rows of another scoring run (different ${differs.join('; ')}); refusing to mix them into ${checkpoint.input.file}'s scores: ${startOver}, or choose another --output`,
    );
  }
  const dropped = dropTornLastLine(partFile);
  if (dropped) process.stderr.write(`dropped a half-written last row (${dropped} bytes) from ${partFile}\n`);
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
  if (totals.rows > checkpoint.input.rows)
    throw new Error(
      `${partFile} holds ${totals.rows} rows but ${checkpoint.input.file} has ${checkpoint.input.rows}; ${startOver}`,
    );
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
      `input: ${a.input?.file} sha256 ${String(a.input?.sha256).slice(0, 12)}… vs ${b.input.file} sha256 ${b.input.sha256.slice(0, 12)}…`,
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
