/**
 * Mean head activations (DESIGN step 1): T passes, each k demonstrations with their answers followed by
 * one query without its answer; the last-token activation of every head, averaged over passes.
 */
import type { Decoder } from '../model/decoder.js';
import { Rng } from '../util/rng.js';
import { render, type JudgeItem, type TemplateSpec } from './template.js';
import { forEachLastLogits, type Sequence } from '../model/batch.js';
import { toSequence, type JudgeImages } from './images.js';

/**
 * The fit's default g (passes per demo draw). With g = 5, 100 passes use 20 demo draws, each run once as a
 * shared prefix for its 5 queries: mean extraction ~4× cheaper (bench:fit). On icl-tiny (8 criteria, 3 seeds,
 * 2016 test pairs) ARM accuracy was 98.4 ± 0.6 at g = 1, 98.8 ± 0.4 at g = 5 and 98.8 ± 0.6 at g = 10:
 * the mean over 20 draws is not measurably worse than over 100. g = 1 (MTV's independent draws) stays an option.
 */
export const DEFAULT_PASSES_PER_DEMO_SET = 5;

export interface MeanOptions {
  passes: number; // T (100); with shots = 0, one pass per example
  shots: number; // k (4)
  seed: number;
  batchSize: number;
  maxLength: number;
  /**
   * Passes that share one draw of demonstrations (absent: 1, every pass draws its own, as MTV; the fit passes
   * DEFAULT_PASSES_PER_DEMO_SET). With g > 1 the
   * demonstrations are drawn once per g passes and their tokens run once for all g queries (shared prefix),
   * which makes mean extraction several times cheaper at the price of fewer distinct demo sets.
   */
  passesPerDemoSet?: number;
  /**
   * Each item's group (see planPasses): an item is never a demonstration for a query of its own group. Absent,
   * every item is its own group.
   */
  groupOf?: readonly number[];
  /** Image rows: the decoder's image handling (see images.ts); null or absent for text. */
  images?: JudgeImages | null;
  /** Keep every pass's activations ([T, L, H, d]) for denoising. */
  keepPasses?: boolean;
  onProgress?: (done: number, total: number) => void;
  /** Polled after every batch: when it returns true, extraction throws MeansInterrupted with the passes done. */
  shouldStop?: () => boolean;
  /** Per-pass activations from an interrupted run (pass index → [L·H·d]); those passes are not run again. */
  donePasses?: ReadonlyMap<number, Float32Array>;
}

export interface MeanResult {
  mu: Float32Array; // [L, H, d]
  passes: Float32Array[] | null; // T × [L, H, d] when kept
  truncatedPasses: number;
  /** For each pass: the query index and its demo indices (provenance, and the hand-computed test). */
  plan: { query: number; demos: number[] }[];
}

/** Mean extraction stopped on request; `done` holds every pass finished so far (resumed ones included). */
export class MeansInterrupted extends Error {
  override name = 'MeansInterrupted';
  constructor(
    readonly done: Map<number, Float32Array>,
    readonly total: number,
  ) {
    super(`mean extraction interrupted after ${done.size} of ${total} passes`);
  }
}

/**
 * The seeded pass plan: which query and which demos each pass uses. `groupOf[i]` names item i's group (the
 * source pair and every item sharing its prompt; default: each item alone): a query is never shown an item of
 * its own group as a demonstration, since its sibling (the other response of the same pair, or the same pair in
 * the other order) would give its answer away. A pass therefore has k = min(shots, nItems − its group's size)
 * demos. With `perDemoSet` = g > 1, passes come in blocks of g that share one demo draw: a block first reserves
 * one group at random (so some query is always left), draws k = min(shots, nItems − that group's size) demos
 * outside it, then takes up to g distinct queries among the items of groups no demo belongs to.
 */
export function planPasses(
  nItems: number,
  passes: number,
  shots: number,
  seed: number,
  perDemoSet = 1,
  groupOf?: readonly number[],
): { query: number; demos: number[] }[] {
  if (shots === 0) return Array.from({ length: nItems }, (_, q) => ({ query: q, demos: [] }));
  if (groupOf && groupOf.length !== nItems) throw new Error(`planPasses: ${groupOf.length} groups for ${nItems} items`);
  const group = (i: number) => groupOf?.[i] ?? i;
  const members = new Map<number, number[]>();
  for (let i = 0; i < nItems; i++) members.set(group(i), [...(members.get(group(i)) ?? []), i]);
  const rng = new Rng(seed);
  if (perDemoSet <= 1) {
    return Array.from({ length: passes }, () => {
      const query = rng.int(nItems);
      const own = members.get(group(query))!;
      return { query, demos: rng.sample(nItems, Math.min(shots, nItems - own.length), new Set(own)) };
    });
  }
  const groups = [...members.values()];
  const plan: { query: number; demos: number[] }[] = [];
  while (plan.length < passes) {
    const reserved = groups[rng.int(groups.length)]!;
    const demos = rng.sample(nItems, Math.min(shots, nItems - reserved.length), new Set(reserved));
    const demoGroups = new Set(demos.map(group));
    const eligible = Array.from({ length: nItems }, (_, i) => i).filter((i) => !demoGroups.has(group(i)));
    const g = Math.min(perDemoSet, passes - plan.length, eligible.length);
    for (const j of rng.sample(eligible.length, g)) plan.push({ query: eligible[j]!, demos });
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
function meanBatches(lengths: number[], plan: { demos: number[] }[], batchSize: number, shared: boolean): number[][] {
  const units = new Map<string, number[]>();
  plan.forEach((p, i) => {
    const key = shared ? `demos ${p.demos.join(',')}` : `length ${lengths[i]!}`;
    units.set(key, [...(units.get(key) ?? []), i]);
  });
  const ordered = [...units.values()].sort((a, b) => lengths[a[0]!]! - lengths[b[0]!]! || a[0]! - b[0]!);
  if (shared) return ordered;
  return ordered.flatMap((unit) =>
    Array.from({ length: Math.ceil(unit.length / batchSize) }, (_, j) =>
      unit.slice(j * batchSize, (j + 1) * batchSize),
    ),
  );
}

export async function extractMeans(
  decoder: Decoder,
  template: TemplateSpec,
  pool: JudgeItem[],
  opts: MeanOptions,
): Promise<MeanResult> {
  const { numLayers: L, numHeads: H, headDim: d } = decoder.spec;
  const width = L * H * d;
  const plan = planPasses(pool.length, opts.passes, opts.shots, opts.seed, opts.passesPerDemoSet, opts.groupOf);
  let truncatedPasses = 0;
  const images = opts.images ?? null;
  // Rendered up front (token ids and lengths); image rows are placed per batch, just before it runs, so a
  // fit holds one batch's vision rows (beyond the rows cache), and a resumed fit places none for done passes.
  const rendered = plan.map((p) =>
    render(
      decoder.tokenizer,
      template,
      p.demos.map((i) => pool[i]!),
      pool[p.query]!,
      opts.maxLength,
      images,
    ),
  );
  const lengths: number[] = [];
  for (const r of rendered) {
    if (r.truncatedTokens > 0 || r.droppedDemos > 0) truncatedPasses++;
    lengths.push(r.images.length && images ? (await images.expandedIds(r.ids, r.images)).length : r.ids.length);
  }
  const done = new Map<number, Float32Array>();
  for (const [i, row] of opts.donePasses ?? []) {
    if (!(Number.isInteger(i) && i >= 0 && i < plan.length) || row.length !== width)
      throw new Error(
        `extractMeans: resumed pass ${i} does not fit this plan (${plan.length} passes of ${width} values)`,
      );
    done.set(i, row);
  }
  // Zero-shot passes have no demonstrations to share: every pass is its own unit (length-batched as usual).
  const shared = (opts.passesPerDemoSet ?? 1) > 1 && opts.shots > 0;
  for (const batch of meanBatches(lengths, plan, opts.batchSize, shared)) {
    const todo = batch.filter((i) => !done.has(i));
    if (!todo.length) continue;
    if (opts.shouldStop?.()) throw new MeansInterrupted(done, plan.length);
    const seqs: Sequence[] = [];
    for (const i of todo) seqs.push(await toSequence(images, rendered[i]!));
    await forEachLastLogits(
      decoder,
      seqs,
      {
        batchSize: opts.batchSize,
        sharePrefix: false,
        groups: shared ? [todo.map((_, j) => j)] : undefined,
      },
      (j, { heads }) => {
        done.set(todo[j]!, heads.slice());
      },
    );
    opts.onProgress?.(done.size, plan.length);
  }
  // Sum in plan order, so the result does not depend on how (or in how many runs) passes were batched.
  const perPass = plan.map((_, i) => done.get(i)!);
  const sum = new Float64Array(width);
  for (const row of perPass) for (let i = 0; i < width; i++) sum[i]! += row[i]!;
  return {
    mu: Float32Array.from(sum, (s) => s / plan.length),
    passes: opts.keepPasses ? perPass : null,
    truncatedPasses,
    plan,
  };
}

/** How denoising centres its PCA (see denoiseMeans). */
export type Centring = 'centred' | 'uncentred';

/**
 * Denoising (DESIGN step 5): per head in `heads`, a weighted PCA of the per-pass activations x_t (weights
 * `weights[t]`, uniform when absent), keeping the top `rank` axes U.
 *
 * `uncentred`: axes of the second moment Σ w_t x_t x_tᵀ, and the result is the mean projected onto them, UUᵀμ.
 *
 * `centred` (what the later paper version describes): axes of the covariance around the weighted mean c. Projecting
 * the mean onto them would change nothing: in centred coordinates the mean is 0, and rebuilding every pass as
 * c + UUᵀ(x_t − c) and averaging with the same weights gives back c, since a projection is linear. What a centred
 * PCA can tell is which passes fit the common structure: the part of a pass outside the top axes,
 * ρ_t = ‖(I − UUᵀ)(x_t − c)‖², is what is peculiar to that pass (its demo draw, a truncated or noisy example). So
 * each pass is rebuilt from the top axes and the rebuilt passes are averaged with weights w_t / (1 + ρ_t / ρ̄)
 * (ρ̄ the weighted mean residual): result c + UUᵀ(m − c), m that reweighted mean. Passes the rank-r structure
 * explains count fully, idiosyncratic ones less, and the result moves away from c only along the top axes. When
 * every pass fits the structure exactly (ρ = 0), or rank ≥ d, it is the weighted mean itself.
 *
 * Heads not listed keep `mu`. The function's default is `uncentred` (what it always did); fits default to centred.
 */
export function denoiseMeans(
  mu: Float32Array,
  passes: Float32Array[],
  heads: [number, number][],
  dims: { H: number; d: number },
  rank: number,
  opts: { centring?: Centring; weights?: number[] } = {},
): Float32Array {
  const out = mu.slice();
  const { H, d } = dims;
  const T = passes.length;
  const w = opts.weights ?? passes.map(() => 1);
  if (w.length !== T || !w.every((x) => x >= 0 && Number.isFinite(x)))
    throw new Error(`denoiseMeans: need ${T} finite non-negative weights`);
  const wSum = w.reduce((a, b) => a + b, 0);
  if (!(wSum > 0)) throw new Error('denoiseMeans: the weights sum to zero');
  const r = Math.min(rank, d);
  for (const [l, h] of heads) {
    const off = (l * H + h) * d;
    const xs = passes.map((x) => Float64Array.from(x.subarray(off, off + d)));
    const centre = new Float64Array(d);
    if (opts.centring === 'centred')
      xs.forEach((x, t) => {
        for (let i = 0; i < d; i++) centre[i]! += (w[t]! * x[i]!) / wSum;
      });
    // Weighted scatter around the centre (the origin when uncentred): Σ_t w_t (x_t − c)(x_t − c)ᵀ / Σ w   [d, d]
    const dev = xs.map((x) => x.map((v, i) => v - centre[i]!));
    const C = new Float64Array(d * d);
    dev.forEach((x, t) => {
      for (let i = 0; i < d; i++) for (let j = 0; j < d; j++) C[i * d + j]! += (w[t]! * x[i]! * x[j]!) / wSum;
    });
    const axes = symmetricEigen(C, d).vectors.slice(0, r);
    const project = (v: ArrayLike<number>) => {
      const p = new Float64Array(d);
      for (const u of axes) {
        let c = 0;
        for (let i = 0; i < d; i++) c += u[i]! * v[i]!;
        for (let i = 0; i < d; i++) p[i]! += c * u[i]!;
      }
      return p;
    };
    let result: Float64Array;
    if (opts.centring !== 'centred') {
      result = project(mu.subarray(off, off + d));
    } else {
      const residual = dev.map((x) => {
        const p = project(x);
        return x.reduce((a, v, i) => a + (v - p[i]!) ** 2, 0);
      });
      const meanResidual = residual.reduce((a, q, t) => a + w[t]! * q, 0) / wSum;
      const spread = dev.reduce((a, x, t) => a + w[t]! * x.reduce((s, v) => s + v * v, 0), 0) / wSum;
      // Residuals at rounding level are no evidence against a pass: weigh every pass as given.
      const exact = !(meanResidual > 1e-12 * spread);
      const a = residual.map((q, t) => (exact ? w[t]! : w[t]! / (1 + q / meanResidual)));
      const aSum = a.reduce((s, v) => s + v, 0);
      const shift = new Float64Array(d); // m − c
      dev.forEach((x, t) => {
        for (let i = 0; i < d; i++) shift[i]! += (a[t]! * x[i]!) / aSum;
      });
      const along = project(shift);
      result = centre.map((v, i) => v + along[i]!);
    }
    for (let i = 0; i < d; i++) out[off + i] = result[i]!;
  }
  return out;
}

/**
 * Eigen-decomposition of a symmetric d×d matrix by cyclic Jacobi rotations: eigenvalues in decreasing order with
 * their unit eigenvectors. Exact to rounding even for close or repeated eigenvalues, where power iteration crawls.
 */
export function symmetricEigen(M: Float64Array, d: number): { values: number[]; vectors: Float64Array[] } {
  const A = Float64Array.from(M);
  const V = new Float64Array(d * d);
  for (let i = 0; i < d; i++) V[i * d + i] = 1;
  let norm = 0;
  for (let i = 0; i < d * d; i++) norm += A[i]! ** 2;
  for (let sweep = 0; sweep < 60; sweep++) {
    let off = 0;
    for (let p = 0; p < d; p++) for (let q = p + 1; q < d; q++) off += A[p * d + q]! ** 2;
    if (!(off > 1e-30 * norm)) break;
    for (let p = 0; p < d; p++) {
      for (let q = p + 1; q < d; q++) {
        const apq = A[p * d + q]!;
        if (apq === 0) continue;
        // The rotation angle that zeroes A[p][q]: tan 2θ = 2 A_pq / (A_qq − A_pp), the smaller root for stability.
        const theta = (A[q * d + q]! - A[p * d + p]!) / (2 * apq);
        const t = Math.sign(theta || 1) / (Math.abs(theta) + Math.sqrt(theta * theta + 1));
        const c = 1 / Math.sqrt(t * t + 1),
          s = t * c;
        for (let k = 0; k < d; k++) {
          // A ← A·J
          const akp = A[k * d + p]!,
            akq = A[k * d + q]!;
          A[k * d + p] = c * akp - s * akq;
          A[k * d + q] = s * akp + c * akq;
        }
        for (let k = 0; k < d; k++) {
          // A ← Jᵀ·A
          const apk = A[p * d + k]!,
            aqk = A[q * d + k]!;
          A[p * d + k] = c * apk - s * aqk;
          A[q * d + k] = s * apk + c * aqk;
        }
        for (let k = 0; k < d; k++) {
          // V ← V·J: columns are the eigenvectors
          const vkp = V[k * d + p]!,
            vkq = V[k * d + q]!;
          V[k * d + p] = c * vkp - s * vkq;
          V[k * d + q] = s * vkp + c * vkq;
        }
      }
    }
  }
  const order = Array.from({ length: d }, (_, i) => i).sort((a, b) => A[b * d + b]! - A[a * d + a]! || a - b);
  return {
    values: order.map((i) => A[i * d + i]!),
    vectors: order.map((i) => Float64Array.from({ length: d }, (_, k) => V[k * d + i]!)),
  };
}
