/**
 * Shared CLI plumbing: the flags several commands take and their parsers, loading the model, checking an output
 * path before long work, Ctrl-C as "stop after this step", `--skip-invalid` reports, and small file helpers.
 */
import fs from 'node:fs';
import { createHash } from 'node:crypto';
import path from 'node:path';
import { Option, type Command } from 'commander';
import { Decoder, type LoadOptions } from '../model/decoder.js';
import type { Device } from '../model/session.js';
import type { QuantOptions } from '../model/quant/layout.js';
import { readSafetensorsMetadata } from '../model/checkpoint/safetensors.js';
import {
  INT4_METHODS,
  INT8_KERNELS,
  WEIGHT_DTYPES,
  type Int4Method,
  type Int8Kernel,
  type WeightDType,
} from '../model/quant/weight-format.js';
import { DEFAULT_PASSES_PER_DEMO_SET } from '../arm/means.js';
import { disposeDecoder } from '../arm/images.js';
import { progressBar } from '../util/progress-bar.js';

/** The model `fit`, `score`, `eval`, `render` and `serve` use without `--model`. */
export const DEFAULT_MODEL = 'Qwen/Qwen2.5-0.5B-Instruct';

export interface ModelCliOptions {
  model: string;
  cacheDir?: string;
  threads?: number;
  revision?: string;
  quiet?: boolean;
  dtype?: WeightDType;
  blockSize?: number;
  accuracyLevel?: QuantOptions['accuracyLevel'];
  int8Kernel?: Int8Kernel;
  int4Method?: Int4Method;
  /** --device (device-option.ts), on the commands that take it. */
  device?: Device;
}

/** The weight-format part of the model flags and the device (which decides the graph), as Decoder.load options. */
export function weightFormatOptions(
  o: ModelCliOptions,
): Pick<LoadOptions, 'dtype' | 'blockSize' | 'accuracyLevel' | 'int8Kernel' | 'int4Method' | 'device'> {
  return {
    device: o.device,
    dtype: o.dtype,
    blockSize: o.blockSize,
    accuracyLevel: o.accuracyLevel,
    int8Kernel: o.int8Kernel,
    int4Method: o.int4Method,
  };
}

export function addModelOptions(cmd: Command, defaultModel?: string): Command {
  const model = 'Hugging Face checkpoint folder or hub id (owner/name[@revision])';
  return (
    defaultModel
      ? cmd.option('--model <dir|hub-id>', model, defaultModel)
      : cmd.requiredOption('--model <dir|hub-id>', model)
  )
    .option('--revision <rev>', 'hub revision (branch, tag or commit)')
    .option(
      '--cache-dir <dir>',
      'where built graphs and downloads are kept (default ~/.cache/activation-rm, or $ARM_CACHE_DIR)',
    )
    .option('--threads <n>', 'onnxruntime intra-op threads (default: all cores)', (v) => positiveInt(v, '--threads'))
    .addOption(
      new Option(
        '--dtype <dtype>',
        'weights: fp32; fp16 linear layers, embedding and head on a GPU (--device webgpu|cuda); or int8/int4 ' +
          'block-quantised ones (default on the CPU: fp32 below 0.3 B parameters, int8 to 3 B, int4 above; on a ' +
          'GPU: fp16 below 3.5 B, int4 above; without WebGPU shader-f16, fp32/int8 in its place)',
      ).choices(WEIGHT_DTYPES),
    )
    .option(
      '--block-size <n>',
      'int8/int4: inputs per scale and zero point, a power of two >= 16 (default 128 for int8; 32 for int4, ' +
        '16 below 20 M parameters)',
      (v) => positiveInt(v, '--block-size'),
    )
    .addOption(
      new Option(
        '--accuracy-level <n>',
        'int8/int4: onnxruntime MatMulNBits accuracy_level (4 = int8 compute, 0 = fp32 compute; default 4)',
      )
        .choices(['0', '1', '2', '3', '4'])
        .argParser((v) => Number(v) as QuantOptions['accuracyLevel']),
    )
    .addOption(
      new Option(
        '--int8-kernel <kernel>',
        'int8: linear layers as rowwise W8A8 (int8 weights per output channel, ' +
          'activations quantised per row at run time; onnxruntime MatMulIntegerToFloat) or blockwise (MatMulNBits); ' +
          'the embedding and head stay blockwise (default: rowwise from 0.3 B parameters, blockwise below)',
      ).choices(INT8_KERNELS),
    )
    .addOption(
      new Option(
        '--int4-method <method>',
        'int4: how 4-bit codes are chosen: rtn (round to nearest) or gptq (GPTQ on text the model samples itself; ' +
          'needs an fp32 copy while building) (default: gptq below 20 M parameters, rtn above)',
      ).choices(INT4_METHODS),
    )
    .option('--quiet', 'no progress bars');
}

/** The judge prompt and batching flags `fit`, `score` and `eval` share. */
export function addJudgeOptions(cmd: Command): Command {
  return cmd
    .addOption(new Option('--template <kind>', 'judge template').choices(['scalar', 'ranked']).default('scalar'))
    .option(
      '--template-text <text>',
      'custom template with {prompt} {response} (ranked: {response_a} {response_b}) placeholders',
    )
    .option('--chat', 'force the chat template')
    .option('--no-chat', 'plain-text prompts even if the tokenizer has a chat template')
    .option(
      '--template-kwargs <json>',
      'extra chat-template variables as a JSON object, e.g. \'{"enable_thinking": false}\' ' +
        '(templates that read enable_thinking get false unless set here)',
      (v) => jsonObject(v, '--template-kwargs'),
    )
    .option('--batch-size <n>', 'forward batch size', (v) => positiveInt(v, '--batch-size'), 8)
    .option('--max-length <n>', "token budget per prompt (default: the model's positions)", (v) =>
      positiveInt(v, '--max-length'),
    );
}

/** Activation RM fitting flags (DESIGN.md §1 defaults). */
export function addFitOptions(cmd: Command): Command {
  return cmd
    .option('--passes <T>', 'mean-extraction passes', (v) => positiveInt(v, '--passes'), 100)
    .option(
      '--shots <k>',
      'demonstrations per pass (0: one zero-shot pass per example)',
      (v) => nonNegativeInt(v, '--shots'),
      4,
    )
    .option(
      '--passes-per-demo-set <g>',
      'passes sharing one demo draw, run as one shared prefix (1 = independent draws, ~4× slower means)',
      (v) => positiveInt(v, '--passes-per-demo-set'),
      DEFAULT_PASSES_PER_DEMO_SET,
    )
    .option('--steps <n>', 'REINFORCE steps', (v) => positiveInt(v, '--steps'), 600)
    .option('--samples <S>', 'masks per REINFORCE step', (v) => positiveInt(v, '--samples'), 32)
    .option('--lr <x>', 'Adam learning rate', (v) => positiveNumber(v, '--lr'), 0.1)
    .option(
      '--denoise-before-selection',
      'denoise the means of every head before head selection, not the selected heads after it (fit: with --denoise; ' +
        'eval: the arm-denoised row)',
    );
}

export interface JudgeCliOptions {
  template: 'scalar' | 'ranked';
  templateText?: string;
  chat: boolean | 'auto';
  templateKwargs?: Record<string, unknown>;
  batchSize: number;
  maxLength?: number;
}
export interface FitCliFlags {
  passes: number;
  shots: number;
  passesPerDemoSet: number;
  steps: number;
  samples: number;
  lr: number;
  denoiseBeforeSelection?: boolean;
}

/** A flag's value parsed as a JSON object (not an array, string or null); errors name the flag. */
function jsonObject(v: string, flag: string): Record<string, unknown> {
  let parsed: unknown;
  try {
    parsed = JSON.parse(v);
  } catch (e) {
    throw new Error(
      `${flag} must be a JSON object, e.g. '{"enable_thinking": false}'; ` +
        `${JSON.stringify(v)} is not valid JSON (${(e as Error).message})`,
    );
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
    const got = Array.isArray(parsed) ? 'an array' : parsed === null ? 'null' : `a ${typeof parsed}`;
    throw new Error(`${flag} must be a JSON object, e.g. '{"enable_thinking": false}'; got ${got}`);
  }
  return parsed as Record<string, unknown>;
}

export const nonNegativeInt = (v: string, flag: string) => (v === '0' ? 0 : positiveInt(v, flag));
export const positiveNumber = (v: string, flag: string) => {
  const n = Number(v);
  if (!(n > 0)) throw new Error(`${flag} must be a positive number, got ${JSON.stringify(v)}`);
  return n;
};

export function positiveInt(v: string, flag: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1) throw new Error(`${flag} must be a positive integer, got ${JSON.stringify(v)}`);
  return n;
}

export async function loadDecoder(opts: ModelCliOptions): Promise<Decoder> {
  const bar = progressBar('building graph', { quiet: opts.quiet });
  try {
    return await Decoder.load(opts.model, {
      cacheDir: opts.cacheDir,
      threads: opts.threads,
      revision: opts.revision,
      quiet: opts.quiet,
      ...weightFormatOptions(opts),
      onBuildProgress: (done, total, what) => bar.update(done, total, what),
    });
  } finally {
    bar.stop();
  }
}

/**
 * Loads the model, then checks `outputs.files` again against the model folder's files (a hub id is a folder only
 * once resolved). On failure the decoder is disposed of and `outputs.cleanup` removes the folders made for them.
 */
export async function loadDecoderForOutputs(
  opts: ModelCliOptions,
  outputs: { files: string[]; flag: string; cleanup: () => void },
): Promise<Decoder> {
  let decoder: Decoder | undefined;
  try {
    decoder = await loadDecoder(opts);
    const inputs = modelInputs(decoder.info.modelDir);
    for (const file of outputs.files) prepareOutput(file, { flag: outputs.flag, inputs });
    return decoder;
  } catch (e) {
    outputs.cleanup();
    await disposeDecoder(decoder);
    throw e;
  }
}

/**
 * Ctrl-C as "stop after the current step": the first prints `message` and makes `stopped()` true, a second exits
 * at once (status 130). Call `release` when the work is over.
 */
export function stopOnSigint(message: string): { stopped: () => boolean; release: () => void } {
  let stop = false;
  const onSigint = () => {
    if (stop) process.exit(130);
    stop = true;
    process.stderr.write(message);
  };
  process.on('SIGINT', onSigint);
  return { stopped: () => stop, release: () => process.off('SIGINT', onSigint) };
}

/** A file a command reads, for refusing to write over it. */
export interface InputFile {
  path: string;
  what: string;
}

/** The files of a local model folder (recursively, capped), as inputs; none for a hub id. */
export function modelInputs(model: string): InputFile[] {
  let entries: string[];
  try {
    if (!fs.statSync(model).isDirectory()) return [];
    entries = fs.readdirSync(model, { recursive: true, encoding: 'utf8' }).slice(0, 10_000);
  } catch {
    return [];
  }
  return entries.map((f) => ({ path: path.join(model, f), what: `a file of the model folder ${model}` }));
}

const sameFile = (a: fs.Stats, b: fs.Stats) => a.dev === b.dev && a.ino === b.ino;
const statOrNull = (file: string) => {
  try {
    return fs.statSync(file);
  } catch {
    return null;
  }
};
const errCode = (e: unknown) => (e as NodeJS.ErrnoException).code ?? (e as Error).message;

/**
 * Checks, before any long work, that `file` may be written: it is none of `inputs` (the same file by device and
 * inode, whatever the paths say; never overridable), it is not a folder, an existing file is a criterion file
 * when `criterion` is set (else `--force` is needed), and its folder exists or can be created and takes a new
 * file (a probe file is created and removed). Returns `cleanup`, which removes the folders this created if
 * they are still empty: call it when the command fails.
 */
export function prepareOutput(
  file: string,
  opts: { flag: string; inputs: InputFile[]; criterion?: boolean; force?: boolean },
): { cleanup: () => void } {
  const at = statOrNull(file);
  if (at?.isDirectory()) throw new Error(`${opts.flag} ${file}: is a folder, not a file`);
  if (at) {
    for (const input of opts.inputs) {
      const st = statOrNull(input.path);
      if (st?.isFile() && sameFile(st, at))
        throw new Error(
          `${opts.flag} ${file}: is ${input.what} (${input.path}), which this command reads; ` +
            'refusing to write over it. Choose another output path',
        );
    }
    if (opts.criterion && !opts.force && !isCriterionFile(file)) {
      throw new Error(
        `${opts.flag} ${file}: exists and is not a criterion file (no "arm" metadata); ` +
          'refusing to overwrite it (--force overrides)',
      );
    }
  }
  const dir = path.dirname(path.resolve(file));
  let created: string | undefined;
  try {
    created = fs.mkdirSync(dir, { recursive: true });
  } catch (e) {
    throw new Error(`${opts.flag} ${file}: cannot create its folder ${dir} (${errCode(e)})`);
  }
  const cleanup = () => {
    if (!created) return;
    // Remove the folders made here, deepest first, as long as they are empty.
    for (let d = dir; ; d = path.dirname(d)) {
      try {
        fs.rmdirSync(d);
      } catch {
        return;
      }
      if (d === created) return;
    }
  };
  const probe = path.join(dir, `.arm-write-probe-${process.pid}`);
  try {
    fs.writeFileSync(probe, '');
    fs.rmSync(probe, { force: true });
  } catch (e) {
    cleanup();
    throw new Error(`${opts.flag} ${file}: cannot write in ${dir} (${errCode(e)})`);
  }
  return { cleanup };
}

function isCriterionFile(file: string): boolean {
  try {
    return readSafetensorsMetadata(file).arm !== undefined;
  } catch {
    return false;
  }
}

/** How many skipped rows are listed one by one before the rest are only counted (as `arm eval` does). */
const SKIPPED_LISTED = 10;

/**
 * Reports rows `--skip-invalid` left out, on stderr: the first SKIPPED_LISTED with their reasons (each names
 * file:line and, where it is one, the field), then a count of the rest. Call `add` per row, `end` once.
 */
export function skipReporter(
  file: string,
  write: (s: string) => void = (s) => process.stderr.write(s),
): { add(s: { line: number; reason: string }): void; end(): number } {
  let count = 0;
  return {
    add(s) {
      if (count < SKIPPED_LISTED) write(`skipped invalid row: ${s.reason}\n`);
      count++;
    },
    end() {
      if (count > SKIPPED_LISTED) write(`skipped invalid row: … and ${count - SKIPPED_LISTED} more\n`);
      if (count) write(`skipped ${count} invalid row${count === 1 ? '' : 's'} of ${file} (--skip-invalid)\n`);
      return count;
    },
  };
}

/** The sha256 of a file's bytes, read in chunks (any size, bounded memory). */
export function sha256File(file: string): string {
  const hash = createHash('sha256');
  const fd = fs.openSync(file, 'r');
  try {
    const buf = Buffer.allocUnsafe(1 << 20);
    for (let n; (n = fs.readSync(fd, buf, 0, buf.length, null)) > 0;) hash.update(buf.subarray(0, n));
  } finally {
    fs.closeSync(fd);
  }
  return hash.digest('hex');
}

/**
 * Cuts a file back to the end of its last complete line (its last "\n"; empty when it has none): what a crash
 * in the middle of an append leaves is dropped. Returns the bytes dropped.
 */
export function dropTornLastLine(file: string): number {
  const size = fs.statSync(file).size;
  const fd = fs.openSync(file, 'r+');
  try {
    const buf = Buffer.allocUnsafe(64 * 1024);
    let end = size;
    while (end > 0) {
      const start = Math.max(0, end - buf.length);
      const n = fs.readSync(fd, buf, 0, end - start, start);
      const nl = buf.subarray(0, n).lastIndexOf(0x0a);
      if (nl !== -1) {
        end = start + nl + 1;
        break;
      }
      end = start;
    }
    if (end < size) fs.ftruncateSync(fd, end);
    return size - end;
  } finally {
    fs.closeSync(fd);
  }
}
