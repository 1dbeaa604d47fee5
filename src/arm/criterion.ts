/**
 * The criterion file `.arm.safetensors`: tensors `mu` (selected heads [n, d], or [L, H, d] with
 * keepAllMeans) and `probs` [L, H] (σ(θ) of the head-selection policy), with JSON metadata in the
 * safetensors header under the key "arm": everything needed to score again and to know where it came from.
 */
import { ModelError } from '../model/errors.js';
import { readSafetensorsMetadata, SafetensorsCheckpoint, writeSafetensors } from '../model/safetensors.js';
import type { Decoder } from '../model/decoder.js';
import type { AnswerTokens, TemplateSpec } from './template.js';
import type { ReinforceOptions } from './reinforce.js';

export const FORMAT_VERSION = 1;

export interface CriterionMeta {
  formatVersion: number;
  model: { id: string; family: string; configHash: string; weightsFingerprint: string; numLayers: number; numHeads: number; headDim: number };
  template: TemplateSpec;
  answerTokens: AnswerTokens;
  /** Patched heads as [layer, head]. */
  heads: [number, number][];
  mode: 'replace' | 'add';
  headStrategy: string;          // selected | all | random:N
  denoise: string | null;        // pca:r
  seed: number;
  hyper: { passes: number; shots: number; passesPerDemoSet?: number; maxLength: number; batchSize: number; reinforce: ReinforceOptions | null };
  examples: { count: number; items: number; itemsTooLong: number; ids: string[]; sha256: string };
  readout: { meanLoss: number; candidates: number[] } | null;
  fit: { seconds: number; createdAt: string; meanPasses: number; truncatedPasses: number; reinforceSteps: number };
  muLayout: 'selected' | 'all';
}

export interface Criterion {
  meta: CriterionMeta;
  mu: Float32Array;     // [L, H, d]; zero rows where a head's mean was not stored
  probs: Float32Array;  // [L, H]
}

const f32Bytes = (x: Float32Array) => new Uint8Array(x.buffer, x.byteOffset, x.byteLength);

export function saveCriterion(file: string, c: Criterion, opts: { keepAllMeans?: boolean } = {}): void {
  const { numLayers: L, numHeads: H, headDim: d } = c.meta.model;
  const meta: CriterionMeta = { ...c.meta, muLayout: opts.keepAllMeans ? 'all' : 'selected' };
  const mu = opts.keepAllMeans ? c.mu : selectedRows(c.mu, meta.heads, H, d);
  writeSafetensors(file, [
    { name: 'mu', dtype: 'F32', shape: opts.keepAllMeans ? [L, H, d] : [meta.heads.length, d], bytes: f32Bytes(mu) },
    { name: 'probs', dtype: 'F32', shape: [L, H], bytes: f32Bytes(c.probs) },
  ], { arm: JSON.stringify(meta) });
}

function selectedRows(mu: Float32Array, heads: [number, number][], H: number, d: number): Float32Array {
  const out = new Float32Array(heads.length * d);
  heads.forEach(([l, h], i) => out.set(mu.subarray((l * H + h) * d, (l * H + h + 1) * d), i * d));
  return out;
}

export function loadCriterion(file: string): Criterion {
  const raw = readSafetensorsMetadata(file).arm;
  if (!raw) throw new ModelError(`${file}: not a criterion file (no "arm" metadata in the safetensors header)`);
  let meta: CriterionMeta;
  try { meta = JSON.parse(raw); } catch (e) { throw new ModelError(`${file}: "arm" metadata is not valid JSON (${(e as Error).message})`); }
  if (meta.formatVersion !== FORMAT_VERSION) throw new ModelError(`${file}: format version ${meta.formatVersion} is not supported (this build reads ${FORMAT_VERSION})`);
  const { numLayers: L, numHeads: H, headDim: d } = meta.model;
  const ckpt = SafetensorsCheckpoint.openFile(file);
  try {
    const want = meta.muLayout === 'all' ? [L, H, d] : [meta.heads.length, d];
    const muInfo = ckpt.info('mu');
    if (muInfo.shape.join(',') !== want.join(',')) throw new ModelError(`${file}: tensor "mu" has shape [${muInfo.shape}], metadata implies [${want}]`);
    if (ckpt.info('probs').shape.join(',') !== [L, H].join(',')) throw new ModelError(`${file}: tensor "probs" has shape [${ckpt.info('probs').shape}], expected [${L},${H}]`);
    for (const [l, h] of meta.heads) if (!(l >= 0 && l < L && h >= 0 && h < H)) throw new ModelError(`${file}: head [${l}, ${h}] is outside the model's ${L}×${H}`);
    const stored = ckpt.readFloat32('mu');
    let mu = stored;
    if (meta.muLayout !== 'all') {
      mu = new Float32Array(L * H * d);
      meta.heads.forEach(([l, h], i) => mu.set(stored.subarray(i * d, (i + 1) * d), (l * H + h) * d));
    }
    return { meta, mu, probs: ckpt.readFloat32('probs') };
  } finally {
    ckpt.close();
  }
}

/** Refuses a criterion fitted on another model (config or weights differ). */
export function checkCriterionMatches(meta: CriterionMeta, decoder: Decoder, file = 'criterion'): void {
  const m = meta.model;
  if (m.configHash !== decoder.info.configHash || m.weightsFingerprint !== decoder.info.weightsFingerprint) {
    const what = m.configHash !== decoder.info.configHash ? 'config.json' : 'weights';
    throw new ModelError(`${file}: fitted on model ${m.id} (${m.family}, ${m.numLayers}×${m.numHeads} heads); the loaded model ${decoder.id} differs in its ${what}. Fit the criterion again on this model.`);
  }
}
