/**
 * The criterion's metadata as a fit, or the zero-shot judge, records it: the model's identity (one builder for
 * both), the fit's record, and the fit's date. Key order is the criterion file's bytes: keep it.
 */
import { createHash } from 'node:crypto';
import type { Decoder } from '../model/decoder.js';
import { describeWeightFormat } from '../model/quant/weight-format.js';
import type { Example } from '../data/examples.js';
import { FORMAT_VERSION, type CriterionMeta } from './criterion.js';
import { FitError } from './fit-errors.js';
import type { FitSettings } from './fit-options.js';
import { visionConfigHash } from './images.js';
import type { ReinforceOptions } from './reinforce.js';
import type { AnswerTokens, TemplateSpec } from './template.js';
import type { UnknownTokenReport } from './unknown-tokens.js';

/** A fit's date: when it was made, and whether that date was asked for (SOURCE_DATE_EPOCH) rather than read. */
export interface FitDate {
  createdAt: string;
  reproducible: boolean;
}

/**
 * The fit's date: `SOURCE_DATE_EPOCH` (seconds since 1970, the reproducible-builds convention) when set, so that
 * two fits with the same inputs write byte-identical files; otherwise now.
 */
export function fitDate(env: NodeJS.ProcessEnv = process.env): FitDate {
  const raw = env.SOURCE_DATE_EPOCH;
  if (raw === undefined || raw === '') return { createdAt: new Date().toISOString(), reproducible: false };
  const seconds = Number(raw);
  if (!/^\d+$/.test(raw.trim()) || !Number.isSafeInteger(seconds) || seconds > 8.64e12)
    throw new FitError(`SOURCE_DATE_EPOCH=${JSON.stringify(raw)}: expected whole seconds since 1970-01-01`);
  return { createdAt: new Date(seconds * 1000).toISOString(), reproducible: true };
}

/** sha256 of the few-shot examples as read (ids and every field): the criterion's and the checkpoint key's. */
export function examplesSha256(examples: Example[]): string {
  return createHash('sha256')
    .update(JSON.stringify(examples.map((e) => [e.id, e])))
    .digest('hex');
}

/** The criterion's `model` block: which checkpoint, at which weight format, with which prompt files. */
function modelMeta(decoder: Decoder, modelId?: string): CriterionMeta['model'] {
  const { numLayers, numHeads, headDim } = decoder.spec;
  return {
    id: modelId ?? decoder.id,
    family: decoder.spec.family,
    configHash: decoder.info.configHash,
    weightsFingerprint: decoder.info.weightsFingerprint,
    numLayers,
    numHeads,
    headDim,
    dtype: decoder.info.weightFormat.dtype,
    weightFormat: describeWeightFormat(decoder.info.weightFormat),
    device: decoder.info.device,
    ...visionHashOf(decoder),
    ...promptFilesOf(decoder),
  };
}

/** The criterion's `visionConfigHash` for an image-text checkpoint (see images.ts); nothing for a text-only one. */
function visionHashOf(decoder: Decoder): { visionConfigHash?: string } {
  if (!decoder.spec.imageText) return {};
  // A checkpoint without preprocessor_config.json still scores text: it then has no vision config to record.
  try {
    return { visionConfigHash: visionConfigHash(decoder.info.modelDir) };
  } catch {
    return {};
  }
}

/**
 * The criterion's `model.files` for a decoder: its prompt files' hashes as loaded (none for a decoder without a
 * folder).
 */
function promptFilesOf(decoder: Decoder): { files?: Record<string, string | null> } {
  const files = decoder.info.promptFiles;
  return files && Object.keys(files).length ? { files: { ...files } } : {};
}

/** What a finished fit tells its criterion's metadata. */
export interface FitRecord {
  decoder: Decoder;
  modelId?: string;
  settings: FitSettings;
  reinforce: ReinforceOptions;
  template: TemplateSpec;
  answerTokens: AnswerTokens;
  heads: [number, number][];
  examples: CriterionMeta['examples'];
  readout: CriterionMeta['readout'];
  /** When the fit started (performance.now()) and its date (fitDate, read before any work). */
  clock: { started: number; date: FitDate };
  counts: { meanPasses: number; truncatedPasses: number; reinforceSteps: number };
  unknownTokens: UnknownTokenReport;
}

/** A fitted criterion's metadata. */
export function fitMeta(record: FitRecord): CriterionMeta {
  const { settings, clock } = record;
  return {
    formatVersion: FORMAT_VERSION,
    model: modelMeta(record.decoder, record.modelId),
    template: record.template,
    answerTokens: record.answerTokens,
    heads: record.heads,
    mode: settings.mode,
    headStrategy: settings.heads,
    denoise: settings.denoise,
    seed: settings.seed,
    hyper: {
      passes: settings.passes,
      shots: settings.shots,
      passesPerDemoSet: settings.passesPerDemoSet,
      maxLength: settings.maxLength,
      batchSize: settings.batchSize,
      reinforce: settings.heads === 'selected' ? record.reinforce : null,
      ...(settings.denoise !== null ? { denoiseBeforeSelection: settings.denoiseBeforeSelection } : {}),
    },
    examples: record.examples,
    readout: record.readout,
    // Wall time only when the date is real: SOURCE_DATE_EPOCH asks for byte-identical files.
    fit: {
      seconds: clock.date.reproducible ? 0 : (performance.now() - clock.started) / 1000,
      createdAt: clock.date.reproducible ? clock.date.createdAt : new Date().toISOString(),
      ...record.counts,
    },
    unknownTokens: record.unknownTokens,
    muLayout: 'selected',
  };
}

/** The zero-shot judge's metadata: no heads, no examples, no fit. */
export function zeroShotMeta(
  decoder: Decoder,
  judge: { modelId?: string; template: TemplateSpec; answerTokens: AnswerTokens; maxLength: number; batchSize: number },
): CriterionMeta {
  return {
    formatVersion: FORMAT_VERSION,
    model: modelMeta(decoder, judge.modelId),
    template: judge.template,
    answerTokens: judge.answerTokens,
    heads: [],
    mode: 'replace',
    headStrategy: 'none',
    denoise: null,
    seed: 0,
    hyper: { passes: 0, shots: 0, maxLength: judge.maxLength, batchSize: judge.batchSize, reinforce: null },
    examples: { count: 0, items: 0, itemsTooLong: 0, ids: [], sha256: '' },
    readout: null,
    fit: { seconds: 0, createdAt: fitDate().createdAt, meanPasses: 0, truncatedPasses: 0, reinforceSteps: 0 },
    muLayout: 'selected',
  };
}
