/**
 * Mean head activations (DESIGN step 1): T passes, each k demonstrations with their answers followed by
 * one query without its answer; the last-token activation of every head, averaged over passes.
 */
import type { Decoder } from '../model/decoder.js';
import { Rng } from '../util/rng.js';
import { render, type JudgeItem, type TemplateSpec } from './template.js';

export interface MeanOptions {
  passes: number;    // T (100); with shots = 0, one pass per example
  shots: number;     // k (4)
  seed: number;
  batchSize: number;
  maxLength: number;
  /** Keep every pass's activations ([T, L, H, d]) for denoising. */
  keepPasses?: boolean;
  onProgress?: (done: number, total: number) => void;
}

export interface MeanResult {
  mu: Float32Array;                 // [L, H, d]
  passes: Float32Array[] | null;    // T × [L, H, d] when kept
  truncatedPasses: number;
  /** For each pass: the query index and its demo indices (provenance, and the hand-computed test). */
  plan: { query: number; demos: number[] }[];
}

/** The seeded pass plan: which query and which demos each pass uses. */
export function planPasses(nItems: number, passes: number, shots: number, seed: number): { query: number; demos: number[] }[] {
  if (shots === 0) return Array.from({ length: nItems }, (_, q) => ({ query: q, demos: [] }));
  const rng = new Rng(seed);
  const k = Math.min(shots, nItems - 1);
  return Array.from({ length: passes }, () => {
    const query = rng.int(nItems);
    return { query, demos: rng.sample(nItems, k, new Set([query])) };
  });
}

export async function extractMeans(decoder: Decoder, template: TemplateSpec, pool: JudgeItem[], opts: MeanOptions): Promise<MeanResult> {
  const { numLayers: L, numHeads: H, headDim: d } = decoder.spec;
  const width = L * H * d;
  const plan = planPasses(pool.length, opts.passes, opts.shots, opts.seed);
  const sum = new Float64Array(width);
  const kept: Float32Array[] | null = opts.keepPasses ? [] : null;
  let truncatedPasses = 0;
  for (let start = 0; start < plan.length; start += opts.batchSize) {
    const batch = plan.slice(start, start + opts.batchSize).map((p) => {
      const r = render(decoder.tokenizer, template, p.demos.map((i) => pool[i]!), pool[p.query]!, opts.maxLength);
      if (r.truncatedTokens > 0) truncatedPasses++;
      return r.ids;
    });
    const { heads } = await decoder.forward(batch);
    for (let b = 0; b < batch.length; b++) {
      const row = heads.subarray(b * width, (b + 1) * width);
      for (let i = 0; i < width; i++) sum[i]! += row[i]!;
      kept?.push(row.slice());
    }
    opts.onProgress?.(Math.min(start + opts.batchSize, plan.length), plan.length);
  }
  return { mu: Float32Array.from(sum, (s) => s / plan.length), passes: kept, truncatedPasses, plan };
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
