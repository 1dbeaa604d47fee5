/**
 * `arm fit`: an Activation RM criterion from few-shot examples, written to one .arm.safetensors file. The output
 * path is checked before the model loads; Ctrl-C stops after the current batch or step and keeps a checkpoint
 * that `--resume` continues.
 */
import fs from 'node:fs';
import { Option, type Command } from 'commander';
import { readExamples } from '../data/examples.js';
import { fitActivationRM } from '../arm/fit.js';
import { FitInterrupted } from '../arm/fit-errors.js';
import type { FitOptions, HeadStrategy } from '../arm/fit-options.js';
import type { ActivationRM } from '../arm/rm.js';
import { disposeDecoder } from '../arm/images.js';
import { CriterionWriteError } from '../arm/criterion.js';
import { progressBar } from '../util/progress-bar.js';
import {
  addFitOptions,
  addJudgeOptions,
  addModelOptions,
  DEFAULT_MODEL,
  loadDecoderForOutputs,
  modelInputs,
  nonNegativeInt,
  prepareOutput,
  skipReporter,
  stopOnSigint,
  type FitCliFlags,
  type InputFile,
  type JudgeCliOptions,
  type ModelCliOptions,
} from './common.js';
import { addDeviceOption } from './device-option.js';

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
  imageRoot?: string;
  skipInvalid?: boolean;
}

export function registerFitCommand(program: Command): void {
  const command = program.command('fit').description('fit an Activation RM criterion from few-shot examples');
  // Each adds its flags to `command` (in help order).
  addModelOptions(command, DEFAULT_MODEL);
  addDeviceOption(command);
  addJudgeOptions(command);
  addFitOptions(command);
  addFitCommandOptions(command);
  command.action(fitCommand);
}

/** The flags only `fit` takes: its input and output, the intervention, and how the run is kept. */
function addFitCommandOptions(cmd: Command): Command {
  return cmd
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
      'denoise the means by a PCA of the per-pass activations with r axes ' +
        '(centred: rebuild passes from the top axes, passes off them count less; ' +
        'uncentred: project the mean onto the top axes of the second moment); default centred',
    )
    .option('--keep-all-means', 'store the means of every head, not only the selected ones')
    .option('--resume', 'continue an interrupted fit from <out>.fit-checkpoint.json')
    .option(
      '--force',
      'fit even when the judge prompts are mostly unknown tokens (<unk> or byte fallback: a template or inputs ' +
        "in words the model's vocabulary lacks), and overwrite an existing --out that is not a criterion file",
    )
    .option('--image-root <dir>', "folder that rows' image paths are read under (default: the examples file's folder)")
    .option(
      '--skip-invalid',
      'skip invalid rows and lines over the length limit (reported with file:line) instead of stopping',
    );
}

async function fitCommand(o: FitCliOptions): Promise<void> {
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
  const decoder = await loadDecoderForOutputs(o, { files: [o.out], flag: '--out', cleanup: output.cleanup });
  const sigint = stopOnSigint('\nstopping after the current batch or step (Ctrl-C again to quit at once)…\n');
  const bars = {
    means: progressBar('means     ', { quiet: o.quiet }),
    reinforce: progressBar('reinforce ', { quiet: o.quiet }),
    readout: progressBar('read-out  ', { quiet: o.quiet }),
  };
  if (!o.quiet) {
    const work = o.heads === 'selected' ? `${o.steps} REINFORCE steps` : `heads ${o.heads}`;
    process.stderr.write(
      `fitting ${o.out}: ${o.passes} mean passes, ${work} ` +
        `(Ctrl-C stops after the current batch or step and saves ${checkpointFile})\n`,
    );
  }
  try {
    const rm = await fitActivationRM(decoder, examples, {
      ...fitOptionsFrom(o, checkpointFile),
      onProgress: (phase, done, total, info) => {
        bars[phase].update(done, total, info);
        if (done === total) bars[phase].stop();
      },
      warn: (m) => process.stderr.write(`warning: ${m}\n`),
      shouldStop: sigint.stopped,
    });
    rm.save(o.out, { keepAllMeans: o.keepAllMeans });
    fs.rmSync(checkpointFile, { force: true });
    process.stderr.write(fitSummary(o.out, rm, { examples: examples.length, skipped: skipped.length }));
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
        `${e.message}; the fit checkpoint ${checkpointFile} is kept: arm fit --resume with the same arguments ` +
          'saves the criterion without extracting means or running REINFORCE again',
      );
    }
    throw e;
  } finally {
    Object.values(bars).forEach((b) => b.stop());
    sigint.release();
    await disposeDecoder(decoder);
  }
}

/** The fit's options from the flags (progress, warnings and stopping are the command's). */
function fitOptionsFrom(o: FitCliOptions, checkpointFile: string): FitOptions {
  return {
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
    refuseMostlyUnknown: !o.force,
  };
}

/** The line `fit` ends with: what was written, from how many examples. */
function fitSummary(out: string, rm: ActivationRM, counts: { examples: number; skipped: number }): string {
  const m = rm.criterion.meta;
  const strings = m.answerTokens.strings.map((s) => JSON.stringify(s)).join('/');
  const answers = `${m.answerTokens.primary.join('/')} (${strings})`;
  return (
    `wrote ${out}: ${m.heads.length} of ${m.model.numLayers * m.model.numHeads} heads, seed ${m.seed}, ` +
    `${m.fit.seconds.toFixed(1)} s; answer tokens ${answers}` +
    `; ${counts.examples} examples${counts.skipped ? `, ${counts.skipped} invalid rows skipped` : ''}\n`
  );
}
