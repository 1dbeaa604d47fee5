/**
 * GPTQ's calibration: Xᵀ X of the inputs of each linear layer it quantises (quant/gptq.ts), from the model
 * running on calibration text. Data-free: the model writes that text itself, sampling `sequences` continuations
 * of `tokens` tokens from its first token (BOS) at temperature 1 with a seeded PRNG, so no dataset has to ship or
 * download and the text is in whatever language and style the model knows (LLM-QAT's self-generated data).
 *
 * The calibration model is the checkpoint at fp32 with its graph also outputting the layers' inputs. The caller
 * writes and opens it (decoder.ts: cache/decoder-cache.ts writeCalibrationModel, then a Decoder over it) in a
 * temporary folder beside the cache entry, which is removed after; this file only runs it, through the
 * CalibrationModel interface, so quant/ does not depend on the Decoder above it.
 * Cost: an fp32 copy of the weights on disk and in memory while calibrating, sequences × tokens single-token
 * decode steps to sample, one forward over all of it, and tokens · K²/2 multiply-adds per layer in JS to sum
 * each Xᵀ X — seconds for small models, minutes at 0.5 B parameters (BENCHMARKS.md "Weight formats").
 */
import fs from 'node:fs';
import path from 'node:path';
import { linearInputSites, type LinearInputSite } from '../graph/decoder-graph.js';
import type { ModelSpec } from '../families/types.js';
import type { GptqCalibration } from './weight-format.js';
import { Rng } from '../../util/rng.js';

/**
 * Joins a GPTQ entry's cache key (with gptq.ts's GPTQ_VERSION): bump it when this file changes how calibration
 * tokens are drawn or summed.
 */
export const CALIBRATION_VERSION = 'self-sampled/1';

/** The calibration model as calibration runs it (decoder.ts adapts a Decoder); `Kv` is its cache of a prefix. */
interface CalibrationModel<Kv> {
  /** The cache of no tokens, to extend from. */
  readonly empty: Kv;
  /** Runs `ids` after `past` (batch 1): the cache extended by them, and the last position's logits [V]. */
  extend(past: Kv, ids: number[]): Promise<{ kv: Kv; logits: Float32Array }>;
  /** A forward over `rows` (equal lengths), returning each named site's output [B, S, K]. */
  forwardSites(rows: number[][], sites: readonly string[]): Promise<{ sites: Map<string, Float32Array> }>;
  dispose(): Promise<void>;
}

export interface CalibrationRun<Kv> {
  /**
   * An existing folder on the cache's disk for the temporary fp32 model; the model's folder name ends
   * `.tmp-PID-TIME`, so a crashed run's folder is swept like an abandoned build.
   */
  workDir: string;
  /** Writes the calibration model into the empty folder `dir`, its graph also outputting `sites`, and opens it. */
  open: (dir: string, sites: readonly LinearInputSite[]) => Promise<CalibrationModel<Kv>>;
  onProgress?: (done: number, total: number, what: string) => void;
}

/**
 * Memory a GPTQ build holds at its peak: the fp32 calibration model (onnxruntime keeps its weights resident),
 * one float64 Xᵀ X [K, K] per calibrated layer (all summed in one pass, each freed once its layer is placed), the
 * float32 site outputs of one forward [FORWARD_ROWS, tokens, K] for every site, and gptqQuantize's three
 * transient float64 [K, K] arrays (damped H, its factor, the factor's transpose) for the widest layer.
 */
export function calibrationBytes(
  spec: ModelSpec,
  weights: readonly string[],
  parameters: number,
  tokens: number,
): number {
  const sites = linearInputSites(spec);
  const widths = weights.map((w) => sites.get(w)?.inputs ?? 0);
  const widest = Math.max(0, ...widths);
  return (
    parameters * 4 +
    widths.reduce((n, k) => n + 8 * k * k, 0) +
    widths.reduce((n, k) => n + 4 * FORWARD_ROWS * tokens * k, 0) +
    3 * 8 * widest * widest
  );
}

/** Rows per calibration forward: bounds the [B, S, K] site outputs held at once. */
const FORWARD_ROWS = 8;

/**
 * Xᵀ X [K, K] (float64, averaged over positions) of the input of each graph weight in `weights`
 * (decoder-graph.ts W names of linear layers), by weight name.
 */
export async function calibrationHessians<Kv>(
  spec: ModelSpec,
  weights: readonly string[],
  cal: GptqCalibration,
  run: CalibrationRun<Kv>,
): Promise<Map<string, Float64Array>> {
  const allSites = linearInputSites(spec);
  const sites = weights.map((w) => {
    const s = allSites.get(w);
    if (!s) throw new Error(`internal: no input site for weight ${w}`);
    return s;
  });
  const dir = path.join(run.workDir, `calibration.tmp-${process.pid}-${Date.now()}`);
  fs.mkdirSync(dir, { recursive: true });
  let model: CalibrationModel<Kv> | null = null;
  try {
    model = await run.open(dir, sites);
    // A model with fewer positions than cal.tokens calibrates on sequences as long as it can read.
    const length = Math.min(cal.tokens, spec.maxPositions);
    const texts = await sampleSequences(spec, model, { sequences: cal.sequences, length, seed: cal.seed }, run);
    const sums = new Map(sites.map((s) => [s.weight, new Float64Array(s.inputs * s.inputs)] as const));
    for (let at = 0; at < texts.length; at += FORWARD_ROWS) {
      const rows = texts.slice(at, at + FORWARD_ROWS);
      const out = await model.forwardSites(
        rows,
        sites.map((s) => s.site),
      );
      for (const s of sites) addGram(sums.get(s.weight)!, out.sites.get(s.site)!, s.inputs);
      run.onProgress?.(Math.min(at + FORWARD_ROWS, texts.length), texts.length, 'calibration inputs (GPTQ)');
    }
    const positions = texts.length * length;
    for (const s of sites) finishGram(sums.get(s.weight)!, s.inputs, positions);
    return sums;
  } finally {
    await model?.dispose();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

/** `sequences` rows of `length` ids: the start token, then the model's own samples at temperature 1. */
async function sampleSequences<Kv>(
  spec: ModelSpec,
  model: CalibrationModel<Kv>,
  draw: { sequences: number; length: number; seed: number },
  progress: Pick<CalibrationRun<Kv>, 'onProgress'>,
): Promise<number[][]> {
  // BOS, else an EOS id, else 0: the first that is in the vocabulary (tiny test configs keep a real model's BOS
  // id).
  const start = [spec.bosTokenId, ...spec.eosTokenIds, 0].find(
    (t): t is number => t !== null && t >= 0 && t < spec.vocabSize,
  )!;
  const rng = new Rng(draw.seed);
  const V = spec.vocabSize;
  const out: number[][] = [];
  for (let seq = 0; seq < draw.sequences; seq++) {
    const ids = [start];
    let step = await model.extend(model.empty, ids);
    while (ids.length < draw.length) {
      const next = sample(step.logits, V, rng.uniform());
      ids.push(next);
      if (ids.length < draw.length) step = await model.extend(step.kv, [next]);
    }
    out.push(ids);
    progress.onProgress?.(seq + 1, draw.sequences, 'calibration text (GPTQ)');
  }
  return out;
}

/** A draw from softmax(logits[0, V)) given a uniform u ∈ [0, 1). */
export function sample(logits: Float32Array, V: number, u: number): number {
  let max = -Infinity;
  for (let v = 0; v < V; v++) if (logits[v]! > max) max = logits[v]!;
  let z = 0;
  for (let v = 0; v < V; v++) z += Math.exp(logits[v]! - max);
  let remaining = u * z;
  for (let v = 0; v < V; v++) {
    remaining -= Math.exp(logits[v]! - max);
    if (remaining < 0) return v;
  }
  return V - 1; // u·z rounding past the last term
}

/** h (upper triangle) += Σ over rows x of x xᵀ, for x [rows, K] row-major. */
export function addGram(h: Float64Array, x: Float32Array, K: number): void {
  const rows = x.length / K;
  for (let row = 0; row < rows; row++) {
    const o = row * K;
    for (let i = 0; i < K; i++) {
      const xi = x[o + i]!;
      if (xi === 0) continue;
      const hi = i * K;
      for (let j = i; j < K; j++) h[hi + j] = h[hi + j]! + xi * x[o + j]!;
    }
  }
}

/** Mirrors the upper triangle into the lower one and divides by the number of positions summed. */
export function finishGram(h: Float64Array, K: number, positions: number): void {
  for (let i = 0; i < K; i++) {
    for (let j = i; j < K; j++) {
      const v = h[i * K + j]! / positions;
      h[i * K + j] = v;
      h[j * K + i] = v;
    }
  }
}
