/**
 * The criterion file `.arm.safetensors`: tensors `mu` (selected heads [n, d], or [L, H, d] with
 * keepAllMeans) and `probs` [L, H] (σ(θ) of the head-selection policy), with JSON metadata in the
 * safetensors header under the key "arm": everything needed to score again and to know where it came from.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createHash } from 'node:crypto';
import { ModelError } from '../model/errors.js';
import { readSafetensorsMetadata, SafetensorsCheckpoint, writeSafetensors } from '../model/checkpoint/safetensors.js';
import type { Decoder } from '../model/decoder.js';
import { describeWeightFormat, WEIGHT_DTYPES, type WeightDType } from '../model/quant/weight-format.js';
import type { AnswerTokens, TemplateSpec } from './template.js';
import { REINFORCE_DEFAULTS, type ReinforceOptions } from './reinforce.js';
import { visionConfigHash } from './images.js';
import { fileSha256OrNull, PROCESSOR_FILES } from '../model/checkpoint/file-hash.js';

/**
 * 2: the model identity `weightsFingerprint` is the sha256 of the weights' full content (1 held a sampled
 * fingerprint, which no longer matches any model). `model.files` (the tokenizer, chat template and processor
 * files' hashes) was added to version 2 as an optional field, not as version 3: a file without it loads with a
 * warning that those files could not be checked, where a new version would refuse every criterion fitted so far;
 * and older builds still read new files (they ignore the field).
 */
export const FORMAT_VERSION = 2;

export interface CriterionMeta {
  formatVersion: number;
  model: {
    id: string;
    family: string;
    configHash: string;
    weightsFingerprint: string;
    numLayers: number;
    numHeads: number;
    headDim: number;
    /** Weight storage the means were extracted at (absent in files fitted before int8/int4 existed: fp32). */
    dtype?: WeightDType;
    /** The full weight format, for people: e.g. "int4 (block 32, accuracy level 4)". */
    weightFormat?: string;
    /**
     * The device the criterion was fitted on (cpu, webgpu, cuda): informational, it scores on any device. Absent in
     * files fitted before it was recorded.
     */
    device?: string;
    /** Image-text checkpoints: sha256 of the vision tower's spec and preprocessor_config.json (arm/images.ts). */
    visionConfigHash?: string;
    /**
     * sha256 of each file that decides the judge prompt's ids or pixels besides config.json and the weights
     * (tokenizer.json, tokenizer_config.json, chat_template.jinja, chat_template.json; image-text checkpoints also
     * preprocessor_config.json), by file name; null where the checkpoint had none. Absent in files fitted before
     * it was recorded.
     */
    files?: Record<string, string | null>;
  };
  template: TemplateSpec;
  answerTokens: AnswerTokens;
  /** Patched heads as [layer, head]. */
  heads: [number, number][];
  mode: 'replace' | 'add';
  headStrategy: string; // selected | all | random:N
  denoise: string | null; // pca:r:centred | pca:r:uncentred
  seed: number;
  hyper: {
    passes: number;
    shots: number;
    passesPerDemoSet?: number;
    maxLength: number;
    batchSize: number;
    reinforce: ReinforceOptions | null;
    /** With denoising: whether it ran on every head before selection (true) or on the selected heads after it. */
    denoiseBeforeSelection?: boolean;
  };
  examples: { count: number; items: number; itemsTooLong: number; ids: string[]; sha256: string };
  readout: { meanLoss: number; candidates: number[] } | null;
  fit: { seconds: number; createdAt: string; meanPasses: number; truncatedPasses: number; reinforceSteps: number };
  /**
   * How much of the fit's judge prompts the vocabulary knew (unknown-tokens.ts), over the pool's items each rendered
   * alone: `rate` = `unknown` / `text` tokens (control tokens left out; unknown: <unk>, or byte fallback for a
   * character without a token), and the share of the template's own text known. Absent in files fitted before it
   * was recorded, and for the zero-shot judge.
   */
  unknownTokens?: {
    rate: number;
    unknown: number;
    text: number;
    template: { knownRate: number; unknown: number; text: number };
  };
  muLayout: 'selected' | 'all';
}

export interface Criterion {
  meta: CriterionMeta;
  mu: Float32Array; // [L, H, d]; zero rows where a head's mean was not stored
  probs: Float32Array; // [L, H]
}

const f32Bytes = (x: Float32Array) => new Uint8Array(x.buffer, x.byteOffset, x.byteLength);

/**
 * Writing the criterion file failed (full disk, a folder that is not writable…). The message names the file and
 * the cause, and where the finished criterion was written instead (`savedTo`), if anywhere: a finished fit is
 * minutes of work, and the caller's fit checkpoint (if it keeps one) is the other way back.
 */
export class CriterionWriteError extends ModelError {
  constructor(
    message: string,
    readonly file: string,
    readonly code: string,
    readonly savedTo: string | null,
  ) {
    super(message);
  }
}

/**
 * Where saveCriterion puts a criterion it could not write to `file`, in order: beside it (`<file>.unsaved`), else
 * in the system's temporary folder (often another file system: a full disk or a read-only folder does not stop it).
 */
export function unsavedCriterionFiles(file: string): string[] {
  const abs = path.resolve(file);
  const tag = createHash('sha256').update(abs).digest('hex').slice(0, 12);
  return [`${abs}.unsaved`, path.join(os.tmpdir(), `${path.basename(abs)}.${tag}.unsaved`)];
}

const errorCode = (e: unknown) => {
  const err = e as NodeJS.ErrnoException;
  return err.code
    ? `${err.code}${err.syscall ? ` on ${err.syscall}` : ''}: ${err.message
        .replace(/^[A-Z]+: /, '')
        .replace(/, \w+ '.*'$/, '')
        .replace(/, \w+$/, '')}`
    : err.message;
};

/**
 * Writes the criterion file (through a temporary file renamed into place). When that fails, the error names the
 * file and the cause, and unless `fallback` is false the same bytes are written to the first of
 * unsavedCriterionFiles(file) that takes them, which the error names with the command that moves it into place.
 * `write` is the writer (tests inject one); nothing it leaves half-written stays.
 */
export function saveCriterion(
  file: string,
  c: Criterion,
  opts: { keepAllMeans?: boolean; fallback?: boolean; write?: typeof writeSafetensors } = {},
): void {
  const { numLayers: L, numHeads: H, headDim: d } = c.meta.model;
  const meta: CriterionMeta = { ...c.meta, muLayout: opts.keepAllMeans ? 'all' : 'selected' };
  // What would not load must not be written (a NaN in the metadata becomes null in JSON).
  const problems = [...metaProblems(meta), ...tensorProblems(meta, c.mu, c.probs, 'all')];
  if (problems.length) throw new ModelError(`${file}: not written: ${problems.slice(0, 5).join('; ')}`);
  const mu = opts.keepAllMeans ? c.mu : selectedRows(c.mu, meta.heads, H, d);
  const tensors = [
    {
      name: 'mu',
      dtype: 'F32' as const,
      shape: opts.keepAllMeans ? [L, H, d] : [meta.heads.length, d],
      bytes: f32Bytes(mu),
    },
    { name: 'probs', dtype: 'F32' as const, shape: [L, H], bytes: f32Bytes(c.probs) },
  ];
  const write = opts.write ?? writeSafetensors;
  const attempt = (target: string): unknown => {
    try {
      write(target, tensors, { arm: JSON.stringify(meta) });
      return null;
    } catch (e) {
      // The writer's temporary file, on a failed write (an injected writer may leave one).
      try {
        fs.rmSync(`${target}.tmp-${process.pid}`, { force: true });
      } catch {
        /* its folder is not one: nothing to remove */
      }
      return e;
    }
  };
  const failed = attempt(file);
  if (failed === null) return;
  const code = (failed as NodeJS.ErrnoException).code ?? 'error';
  const what = `${file}: could not write the criterion file (${errorCode(failed)})`;
  if (opts.fallback === false) throw new CriterionWriteError(what, file, code, null);
  const tried: string[] = [];
  for (const other of unsavedCriterionFiles(file)) {
    const e = attempt(other);
    if (e === null) {
      throw new CriterionWriteError(
        `${what}; the finished criterion was written to ${other} instead: move it into place once the cause is fixed ` +
          `(mv ${JSON.stringify(other)} ${JSON.stringify(file)}); it loads from there as it is`,
        file,
        code,
        other,
      );
    }
    tried.push(`${other} (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
  throw new CriterionWriteError(
    `${what}; it could not be written elsewhere either: ${tried.join(', ')}`,
    file,
    code,
    null,
  );
}

function selectedRows(mu: Float32Array, heads: [number, number][], H: number, d: number): Float32Array {
  const out = new Float32Array(heads.length * d);
  heads.forEach(([l, h], i) => out.set(mu.subarray((l * H + h) * d, (l * H + h + 1) * d), i * d));
  return out;
}

/** The name a criterion file's scores go by: its file name without `.arm.safetensors` (or `.safetensors`). */
export function criterionNameOf(file: string): string {
  return path.basename(file).replace(/(\.arm)?\.safetensors$/, '');
}

/**
 * Reads and validates a criterion file; every error names the file and the field. `anyVersion` reads files of
 * other format versions too (for `arm inspect`); scoring always needs the current one.
 */
export function loadCriterion(file: string, opts: { anyVersion?: boolean } = {}): Criterion {
  let raw: string | undefined;
  try {
    raw = readSafetensorsMetadata(file).arm;
  } catch (e) {
    throw new ModelError(`${file}: not a criterion file (${(e as Error).message})`);
  }
  if (!raw) throw new ModelError(`${file}: not a criterion file (no "arm" metadata in the safetensors header)`);
  let meta: CriterionMeta;
  try {
    meta = JSON.parse(raw);
  } catch (e) {
    throw new ModelError(`${file}: "arm" metadata is not valid JSON (${(e as Error).message})`);
  }
  if (!isRecord(meta)) throw new ModelError(`${file}: "arm" metadata is not a JSON object`);
  if (meta.formatVersion !== FORMAT_VERSION && !opts.anyVersion) {
    const v = JSON.stringify(meta.formatVersion);
    throw new ModelError(
      meta.formatVersion === 1
        ? `${file}: metadata field "formatVersion": 1 is an older format whose model identity (a sampled ` +
            'weights fingerprint) this build no longer computes; fit the criterion again (arm fit)'
        : `${file}: metadata field "formatVersion": ${v} is not supported (this build reads ${FORMAT_VERSION})`,
    );
  }
  const problems = metaProblems(meta);
  if (problems.length)
    throw new ModelError(
      `${file}: ${problems.slice(0, 5).join('; ')}${problems.length > 5 ? `; and ${problems.length - 5} more` : ''}`,
    );
  const { numLayers: L, numHeads: H, headDim: d } = meta.model;
  const ckpt = SafetensorsCheckpoint.openFile(file);
  try {
    const want = meta.muLayout === 'all' ? [L, H, d] : [meta.heads.length, d];
    for (const name of ['mu', 'probs'])
      if (!ckpt.has(name)) throw new ModelError(`${file}: tensor "${name}" is missing`);
    const muInfo = ckpt.info('mu');
    if (muInfo.shape.join(',') !== want.join(','))
      throw new ModelError(`${file}: tensor "mu" has shape [${muInfo.shape}], metadata implies [${want}]`);
    if (ckpt.info('probs').shape.join(',') !== [L, H].join(','))
      throw new ModelError(`${file}: tensor "probs" has shape [${ckpt.info('probs').shape}], expected [${L},${H}]`);
    const stored = ckpt.readFloat32('mu');
    let mu = stored;
    if (meta.muLayout !== 'all') {
      mu = new Float32Array(L * H * d);
      meta.heads.forEach(([l, h], i) => mu.set(stored.subarray(i * d, (i + 1) * d), (l * H + h) * d));
    }
    const probs = ckpt.readFloat32('probs');
    const bad = tensorProblems(meta, mu, probs, meta.muLayout);
    if (bad.length) throw new ModelError(`${file}: ${bad.slice(0, 5).join('; ')}`);
    return { meta, mu, probs };
  } finally {
    ckpt.close();
  }
}

type Check = (v: unknown) => string | null; // null: fine; otherwise what is wrong with v

const isRecord = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
const show = (v: unknown) => {
  const s = JSON.stringify(v);
  return s === undefined ? String(v) : s.length > 60 ? `${s.slice(0, 57)}...` : s;
};
const int =
  (min: number, max?: number): Check =>
  (v) =>
    Number.isInteger(v) && (v as number) >= min && (max === undefined || (v as number) <= max)
      ? null
      : max === undefined
        ? `is not an integer ≥ ${min}`
        : `is not an integer in ${min}..${max}`;
const finite: Check = (v) => (typeof v === 'number' && Number.isFinite(v) ? null : 'is not a finite number');
const str: Check = (v) => (typeof v === 'string' ? null : 'is not a string');
const bool: Check = (v) => (typeof v === 'boolean' ? null : 'is not true or false');
const oneOf =
  (...xs: unknown[]): Check =>
  (v) =>
    xs.includes(v) ? null : `is not one of ${xs.map((x) => JSON.stringify(x)).join(', ')}`;
/** A plain file name inside the model folder (criterion metadata names files; it must not point elsewhere). */
const isFileName = (name: string) => /^[A-Za-z0-9._-]+$/.test(name) && name !== '.' && name !== '..';
const hex64: Check = (v) =>
  typeof v === 'string' && /^[0-9a-f]{64}$/.test(v) ? null : 'is not a sha256 (64 hex digits)';

/** Checks a metadata field at `path`, adding what is wrong with it to the problems. */
type Field = (v: unknown, path: string) => void;

/** Field checks that add their findings to `out`, each as `metadata field "path": value problem`. */
function fieldChecks(out: string[]) {
  const is =
    (check: Check): Field =>
    (v, path) => {
      const p = check(v);
      if (p) out.push(`metadata field "${path}": ${show(v)} ${p}`);
    };
  const obj =
    (fields: Record<string, Field>, optional: string[] = []): Field =>
    (v, path) => {
      if (!isRecord(v)) {
        out.push(`metadata field "${path}": ${show(v)} is not an object`);
        return;
      }
      for (const [k, field] of Object.entries(fields)) {
        const p = path ? `${path}.${k}` : k;
        if (k in v) field(v[k], p);
        else if (!optional.includes(k)) out.push(`metadata field "${p}" is missing`);
      }
    };
  const list =
    (each: Field, length?: number): Field =>
    (v, path) => {
      if (!Array.isArray(v)) out.push(`metadata field "${path}": ${show(v)} is not a list`);
      else if (length !== undefined && v.length !== length)
        out.push(`metadata field "${path}": ${show(v)} does not hold ${length} entries`);
      else v.forEach((x, i) => each(x, `${path}[${i}]`));
    };
  const orNull =
    (field: Field): Field =>
    (v, path) => {
      if (v !== null) field(v, path);
    };
  return { is, obj, list, orNull };
}

type FieldChecks = ReturnType<typeof fieldChecks>;

/** A `[layer, head]` pair within L×H, each pair listed once. */
function headField(out: string[], { is }: FieldChecks, dims: { L: number; H: number }): Field {
  const seen = new Set<string>();
  return (v, path) => {
    if (!Array.isArray(v) || v.length !== 2) {
      out.push(`metadata field "${path}": ${show(v)} is not a [layer, head] pair`);
      return;
    }
    const before = out.length;
    is(int(0, dims.L - 1))(v[0], `${path}[0]`);
    is(int(0, dims.H - 1))(v[1], `${path}[1]`);
    if (out.length === before && seen.has(`${v[0]},${v[1]}`))
      out.push(`metadata field "${path}": ${show(v)} is listed twice`);
    seen.add(`${v[0]},${v[1]}`);
  };
}

/** The `model` block: identity hashes, shape, weight format, and the prompt files by name. */
function modelField(out: string[], { is, obj }: FieldChecks): Field {
  const files: Field = (v, path) => {
    if (!isRecord(v)) {
      out.push(`metadata field "${path}": ${show(v)} is not an object`);
      return;
    }
    for (const [name, h] of Object.entries(v)) {
      if (!isFileName(name)) out.push(`metadata field "${path}": ${show(name)} is not a file name`);
      else if (h !== null) is(hex64)(h, `${path}.${name}`);
    }
  };
  return obj(
    {
      id: is(str),
      family: is(str),
      configHash: is(hex64),
      weightsFingerprint: is(str),
      numLayers: is(int(1)),
      numHeads: is(int(1)),
      headDim: is(int(1)),
      dtype: is(oneOf(...WEIGHT_DTYPES)),
      weightFormat: is(str),
      device: is(str),
      visionConfigHash: is(hex64),
      files,
    },
    ['dtype', 'weightFormat', 'device', 'visionConfigHash', 'files'],
  );
}

/** Problems with the metadata's shape and values, each as `metadata field "path": value problem`. */
function metaProblems(meta: unknown): string[] {
  const out: string[] = [];
  const checks = fieldChecks(out);
  const { is, obj, list, orNull } = checks;
  if (!isRecord(meta)) return ['"arm" metadata is not a JSON object'];
  const model = isRecord(meta.model) ? meta.model : {};
  const [L, H] = [model.numLayers, model.numHeads].map((n) => (Number.isInteger(n) ? (n as number) : 0));
  const token = is(int(0));
  obj(
    {
      formatVersion: is(int(1)),
      model: modelField(out, checks),
      template: obj(
        {
          kind: is(oneOf('scalar', 'ranked')),
          text: is(str),
          chat: is(bool),
          templateKwargs: is((v) => (isRecord(v) ? null : 'is not an object')),
        },
        ['templateKwargs'],
      ),
      answerTokens: obj({ primary: list(token, 2), variants: list(list(token), 2), strings: list(is(str), 2) }),
      heads: list(headField(out, checks, { L: L!, H: H! })),
      mode: is(oneOf('replace', 'add')),
      headStrategy: is(str),
      denoise: orNull(is(str)),
      seed: is(int(0)),
      hyper: obj(
        {
          passes: is(int(0)),
          shots: is(int(0)),
          passesPerDemoSet: is(int(1)),
          maxLength: is(int(1)),
          batchSize: is(int(1)),
          reinforce: orNull(obj(Object.fromEntries(Object.keys(REINFORCE_DEFAULTS).map((k) => [k, is(finite)])))),
          denoiseBeforeSelection: is(bool),
        },
        ['passesPerDemoSet', 'denoiseBeforeSelection'],
      ),
      examples: obj({
        count: is(int(0)),
        items: is(int(0)),
        itemsTooLong: is(int(0)),
        ids: list(is(str)),
        sha256: is(str),
      }),
      readout: orNull(obj({ meanLoss: is(finite), candidates: list(is(finite)) })),
      fit: obj({
        seconds: is(finite),
        createdAt: is(str),
        meanPasses: is(int(0)),
        truncatedPasses: is(int(0)),
        reinforceSteps: is(int(0)),
      }),
      unknownTokens: obj({
        rate: is(finite),
        unknown: is(int(0)),
        text: is(int(0)),
        template: obj({ knownRate: is(finite), unknown: is(int(0)), text: is(int(0)) }),
      }),
      muLayout: is(oneOf('selected', 'all')),
    },
    ['unknownTokens'],
  )(meta, '');
  return out;
}

/** Non-finite means (of the stored heads) and probabilities outside [0, 1]. */
function tensorProblems(
  meta: CriterionMeta,
  mu: Float32Array,
  probs: Float32Array,
  layout: 'selected' | 'all',
): string[] {
  const { numHeads: H, headDim: d } = meta.model;
  const out: string[] = [];
  const rows =
    layout === 'all'
      ? Array.from({ length: mu.length / d }, (_, i) => [Math.floor(i / H), i % H] as [number, number])
      : meta.heads;
  for (const [l, h] of rows) {
    const at = (l * H + h) * d;
    const bad = mu.subarray(at, at + d).findIndex((x) => !Number.isFinite(x));
    if (bad >= 0) {
      out.push(`tensor "mu" of layer ${l}, head ${h}: ${mu[at + bad]} is not finite`);
      break;
    }
  }
  const badP = probs.findIndex((p) => !(p >= 0 && p <= 1));
  if (badP >= 0)
    out.push(`tensor "probs"[${Math.floor(badP / H)}][${badP % H}]: ${probs[badP]} is not a probability in [0, 1]`);
  return out;
}

const short = (h: string | null) => (h === null ? 'absent' : `sha256 ${h.slice(0, 16)}…`);

/**
 * Where the prompt files the criterion recorded differ from the decoder's (content hashes; absent on one side only
 * is a difference), as one message per file; and the files that could not be checked (the decoder's that the
 * criterion does not record, or the whole field missing in a criterion fitted before it existed), as a warning.
 */
function promptFileDifferences(
  meta: CriterionMeta,
  decoder: Decoder,
  file: string,
): { problems: string[]; warning: string | null } {
  const dir = decoder.info.modelDir;
  const recorded = meta.model.files;
  const now = decoder.info.promptFiles ?? {};
  if (recorded === undefined) {
    return {
      problems: [],
      warning:
        `${file} was fitted before criterion files recorded the tokenizer, chat template and processor ` +
        `files (${Object.keys(now).join(', ')}), so a change to them since it was fitted cannot be ` +
        'detected; fit it again to record them',
    };
  }
  const problems: string[] = [];
  const unchecked: string[] = [];
  for (const name of new Set([...Object.keys(now), ...Object.keys(recorded)])) {
    if (!(name in recorded)) {
      unchecked.push(name);
      continue;
    }
    // A file a newer build recorded that this one does not read is hashed as it is now: the criterion's promise holds.
    const current = name in now ? now[name]! : fileSha256OrNull(path.join(dir, name));
    const was = recorded[name]!;
    if (was === current) continue;
    // The image processor's settings: "another vision configuration", as the vision config hash check says.
    const where = PROCESSOR_FILES.includes(name)
      ? `another vision configuration: ${path.join(dir, name)}`
      : path.join(dir, name);
    problems.push(
      was === null
        ? `${where} is present (${short(current)}), but the model this criterion was fitted with had no ${name}`
        : current === null
          ? `${where} is missing, but the model this criterion was fitted with had one (${short(was)})`
          : `${where} differs from the one this criterion was fitted with (fitted with ${short(was)}, ` +
            `now ${short(current)})`,
    );
  }
  const warning = unchecked.length
    ? `${file} does not record ${unchecked.join(', ')} (fitted by an older build), so a change to ` +
      `${unchecked.length === 1 ? 'it' : 'them'} cannot be detected`
    : null;
  return { problems, warning };
}

/**
 * Refuses a criterion fitted on another model: config.json or weights differ, or a file that decides the judge
 * prompt's ids or pixels (tokenizer, chat template, image processor: `model.files`) differs; and answer tokens
 * outside the model's vocabulary. Returns warnings: a criterion fitted at another dtype (same checkpoint) still scores,
 * since quantisation moves activations only slightly (BENCHMARKS.md, "Weight formats": Spearman of P(Yes)
 * fp32-fitted vs scored at int8), but its means were not taken at this precision; and a criterion fitted before
 * the prompt files were recorded loads, with a warning that they could not be checked.
 */
export function checkCriterionMatches(meta: CriterionMeta, decoder: Decoder, file = 'criterion'): string[] {
  const m = meta.model;
  const warnings: string[] = [];
  if (m.configHash !== decoder.info.configHash || m.weightsFingerprint !== decoder.info.weightsFingerprint) {
    const what = m.configHash !== decoder.info.configHash ? 'config.json' : 'weights';
    throw new ModelError(
      `${file}: fitted on model ${m.id} (${m.family}, ${m.numLayers}×${m.numHeads} heads); the loaded ` +
        `model ${decoder.id} differs in its ${what}. Fit the criterion again on this model.`,
    );
  }
  // The tokenizer, chat template and image processor decide which ids and pixels the judge sees: a criterion's
  // means and heads belong to the prompts it was fitted on (an edited chat_template moved rewards 33×).
  const files = promptFileDifferences(meta, decoder, file);
  if (files.problems.length) {
    throw new ModelError(
      `${file}: ${files.problems.join('; ')}. These files decide the judge prompt's token ids or ` +
        "pixels, so the criterion's means do not apply; fit the criterion again on this model (arm fit)",
    );
  }
  if (files.warning) warnings.push(files.warning);
  if (m.visionConfigHash !== undefined) {
    // Images become other rows under another image processor (preprocessor_config.json is not in configHash).
    let now: string | null = null;
    try {
      now = visionConfigHash(decoder.info.modelDir);
    } catch {
      now = null;
    }
    if (now !== m.visionConfigHash)
      throw new ModelError(
        `${file}: fitted with another vision configuration (vision tower spec or ` +
          `preprocessor_config.json) than ${decoder.id} has now; fit the criterion again`,
      );
  }
  const { numLayers: L, numHeads: H, headDim: d, vocabSize: V } = decoder.spec;
  if (m.numLayers !== L || m.numHeads !== H || m.headDim !== d)
    throw new ModelError(
      `${file}: metadata field "model": ${m.numLayers}×${m.numHeads} heads of ${m.headDim} do not ` +
        `match the loaded model's ${L}×${H} of ${d}`,
    );
  const tokens: [string, number][] = [
    ...meta.answerTokens.primary.map((t, i): [string, number] => [`answerTokens.primary[${i}]`, t]),
    ...meta.answerTokens.variants.flatMap((ts, i) =>
      ts.map((t, j): [string, number] => [`answerTokens.variants[${i}][${j}]`, t]),
    ),
  ];
  for (const [field, t] of tokens)
    if (!(t >= 0 && t < V))
      throw new ModelError(`${file}: metadata field "${field}": ${t} is outside the vocabulary (0..${V - 1})`);
  const fitted = m.dtype ?? 'fp32';
  const now = decoder.info.weightFormat.dtype;
  if (fitted !== now) {
    warnings.push(
      `${file} was fitted with --dtype ${fitted} and is scored with --dtype ${now}: scores are close ` +
        `but not identical (fit again at ${now} for exact agreement)`,
    );
    return warnings;
  }
  // Same dtype, another format (int8 kernel, int4 rule, block size): e.g. a criterion fitted where the int8
  // default was rowwise, scored where it is blockwise. Labels before the kernel option lacked "blockwise".
  const label = describeWeightFormat(decoder.info.weightFormat);
  const was = m.weightFormat;
  if (was !== undefined && was !== label && was !== label.replace('blockwise, ', '')) {
    warnings.push(
      `${file} was fitted with weights "${was}" and is scored with "${label}": scores are close but ` +
        'not identical (fit again, or pass the same --int8-kernel/--block-size, for exact agreement)',
    );
  }
  return warnings;
}
