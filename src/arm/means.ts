/**
 * Mean head activations (DESIGN step 1): T passes, each k demonstrations with their answers followed by
 * one query without its answer; the last-token activation of every head, averaged over passes.
 */
import type { Decoder } from '../model/decoder.js';
import { Rng } from '../util/rng.js';
import { render, type JudgeItem, type TemplateSpec } from './template.js';
import { forEachLastLogits } from '../model/batch.js';

export interface MeanOptions {
  passes: number;    // T (100); with shots = 0, one pass per example
  shots: number;     // k (4)
  seed: number;
  batchSize: number;
  maxLength: number;
  /**
   * Passes that share one draw of demonstrations (default 1: every pass draws its own, as MTV). With g > 1 the
   * demonstrations are drawn once per g passes and their tokens run once for all g queries (shared prefix),
   * which makes mean extraction several times cheaper at the price of fewer distinct demo sets.
   */
  passesPerDemoSet?: number;
  /** Keep every pass's activations ([T, L, H, d]) for denoising. */
  keepPasses?: boolean;
  onProgress?: (done: number, total: number) => void;
  /** Polled after every batch: when it returns true, extraction throws MeansInterrupted with the passes done. */
  shouldStop?: () => boolean;
  /** Per-pass activations from an interrupted run (pass index → [L·H·d]); those passes are not run again. */
  donePasses?: ReadonlyMap<number, Float32Array>;
}

export interface MeanResult {
  mu: Float32Array;                 // [L, H, d]
  passes: Float32Array[] | null;    // T × [L, H, d] when kept
  truncatedPasses: number;
  /** For each pass: the query index and its demo indices (provenance, and the hand-computed test). */
  plan: { query: number; demos: number[] }[];
}

/** Mean extraction stopped on request; `done` holds every pass finished so far (resumed ones included). */
export class MeansInterrupted extends Error {
  override name = 'MeansInterrupted';
  constructor(readonly done: Map<number, Float32Array>, readonly total: number) {
    super(`mean extraction interrupted after ${done.size} of ${total} passes`);
  }
}

/**
 * The seeded pass plan: which query and which demos each pass uses. With `perDemoSet` = g > 1, passes come in
 * blocks of g that share one demo draw, with distinct queries outside it (as many as the pool allows).
 */
export function planPasses(nItems: number, passes: number, shots: number, seed: number, perDemoSet = 1): { query: number; demos: number[] }[] {
  if (shots === 0) return Array.from({ length: nItems }, (_, q) => ({ query: q, demos: [] }));
  const rng = new Rng(seed);
  const k = Math.min(shots, nItems - 1);
  if (perDemoSet <= 1) {
    return Array.from({ length: passes }, () => {
      const query = rng.int(nItems);
      return { query, demos: rng.sample(nItems, k, new Set([query])) };
    });
  }
  const plan: { query: number; demos: number[] }[] = [];
  while (plan.length < passes) {
    const demos = rng.sample(nItems, k);
    const g = Math.min(perDemoSet, passes - plan.length, nItems - k);
    for (const query of rng.sample(nItems, g, new Set(demos))) plan.push({ query, demos });
  }
  return plan;
}

/**
 * The batches mean extraction runs, as pass indices. Independent passes are batched only with passes of the
 * same token length: a left-padded row's activations differ from the unpadded ones in the last bits (the
 * attention reductions change length), so with padding the means, and through REINFORCE the selected heads,
 * would depend on --batch-size. Equal-length rows need no padding and give the same bits in any batch.
 * Passes sharing a demo draw run as one unit (prefix once, then their queries), whole per batch when the
 * draw's g passes fit one batch.
 */
function meanBatches(seqs: number[][], plan: { demos: number[] }[], batchSize: number, shared: boolean): number[][] {
  const units = new Map<string, number[]>();
  plan.forEach((p, i) => {
    const key = shared ? `demos ${p.demos.join(',')}` : `length ${seqs[i]!.length}`;
    units.set(key, [...(units.get(key) ?? []), i]);
  });
  const ordered = [...units.values()].sort((a, b) => seqs[a[0]!]!.length - seqs[b[0]!]!.length || a[0]! - b[0]!);
  if (shared) return ordered;
  return ordered.flatMap((unit) => Array.from({ length: Math.ceil(unit.length / batchSize) }, (_, j) => unit.slice(j * batchSize, (j + 1) * batchSize)));
}

export async function extractMeans(decoder: Decoder, template: TemplateSpec, pool: JudgeItem[], opts: MeanOptions): Promise<MeanResult> {
  const { numLayers: L, numHeads: H, headDim: d } = decoder.spec;
  const width = L * H * d;
  const plan = planPasses(pool.length, opts.passes, opts.shots, opts.seed, opts.passesPerDemoSet);
  let truncatedPasses = 0;
  const seqs = plan.map((p) => {
    const r = render(decoder.tokenizer, template, p.demos.map((i) => pool[i]!), pool[p.query]!, opts.maxLength);
    if (r.truncatedTokens > 0 || r.droppedDemos > 0) truncatedPasses++;
    return r.ids;
  });
  const done = new Map<number, Float32Array>();
  for (const [i, row] of opts.donePasses ?? []) {
    if (!(Number.isInteger(i) && i >= 0 && i < plan.length) || row.length !== width) throw new Error(`extractMeans: resumed pass ${i} does not fit this plan (${plan.length} passes of ${width} values)`);
    done.set(i, row);
  }
  const shared = (opts.passesPerDemoSet ?? 1) > 1;
  for (const batch of meanBatches(seqs, plan, opts.batchSize, shared)) {
    const todo = batch.filter((i) => !done.has(i));
    if (!todo.length) continue;
    if (opts.shouldStop?.()) throw new MeansInterrupted(done, plan.length);
    await forEachLastLogits(decoder, todo.map((i) => seqs[i]!), {
      batchSize: opts.batchSize, sharePrefix: false, groups: shared ? [todo.map((_, j) => j)] : undefined,
    }, (j, { heads }) => { done.set(todo[j]!, heads.slice()); });
    opts.onProgress?.(done.size, plan.length);
  }
  // Sum in plan order, so the result does not depend on how (or in how many runs) passes were batched.
  const perPass = plan.map((_, i) => done.get(i)!);
  const sum = new Float64Array(width);
  for (const row of perPass) for (let i = 0; i < width; i++) sum[i]! += row[i]!;
  return { mu: Float32Array.from(sum, (s) => s / plan.length), passes: opts.keepPasses ? perPass : null, truncatedPasses, plan };
}

/**
 * Denoising (DESIGN step 5): per selected head, a weighted PCA of the per-pass activations (weights
 * `weights[t]`, uniform when absent) and the mean projected onto the top `rank` axes. The PCA is uncentred
 * (axes of the second moment Σ w_t x_t x_tᵀ): centred at the mean, the mean would project to zero.
 */
export function denoiseMeans(mu: Float32Array, passes: Float32Array[], heads: [number, number][], dims: { H: number; d: number }, rank: number, weights?: number[]): Float32Array {
  const out = mu.slice();
  const { H, d } = dims;
  const w = weights ?? passes.map(() => 1);
  const wSum = w.reduce((a, b) => a + b, 0);
  for (const [l, h] of heads) {
    const off = (l * H + h) * d;
    // Weighted uncentred second moment C = Σ_t w_t x_t x_tᵀ / Σ w  [d, d]
    const C = new Float64Array(d * d);
    passes.forEach((x, t) => {
      for (let i = 0; i < d; i++) for (let j = 0; j < d; j++) C[i * d + j]! += (w[t]! * x[off + i]! * x[off + j]!) / wSum;
    });
    const axes = topEigenvectors(C, d, Math.min(rank, d));
    const m = Array.from(mu.subarray(off, off + d));
    const projected = new Float64Array(d);
    for (const u of axes) {
      const c = u.reduce((a, ui, i) => a + ui * m[i]!, 0);
      for (let i = 0; i < d; i++) projected[i]! += c * u[i]!;
    }
    for (let i = 0; i < d; i++) out[off + i] = projected[i]!;
  }
  return out;
}

/** Top-k eigenvectors of a symmetric matrix by power iteration with deflation. */
function topEigenvectors(C: Float64Array, d: number, k: number): number[][] {
  const A = Float64Array.from(C);
  const out: number[][] = [];
  for (let e = 0; e < k; e++) {
    let v = Array.from({ length: d }, (_, i) => 1 / Math.sqrt(d) + (i === e ? 0.1 : 0));
    let lambda = 0;
    for (let it = 0; it < 500; it++) {
      const next = new Array(d).fill(0);
      for (let i = 0; i < d; i++) for (let j = 0; j < d; j++) next[i] += A[i * d + j]! * v[j]!;
      const norm = Math.hypot(...next);
      if (norm < 1e-20) break;
      const nv = next.map((x) => x / norm);
      const delta = nv.reduce((a, x, i) => a + Math.abs(x - v[i]!), 0);
      v = nv;
      lambda = norm;
      if (delta < 1e-10) break;
    }
    out.push(v);
    for (let i = 0; i < d; i++) for (let j = 0; j < d; j++) A[i * d + j]! -= lambda * v[i]! * v[j]!;
  }
  return out;
}
