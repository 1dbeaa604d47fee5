/**
 * Denoising of mean activations (DESIGN §1 step 5, the later paper version; an option, off by default): a weighted
 * PCA of each head's per-pass activations, and the `--denoise` spelling that asks for it.
 */
import { symmetricEigen } from '../util/linalg.js';
import { FitError } from './fit-errors.js';

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
  const weights = opts.weights ?? passes.map(() => 1);
  if (weights.length !== T || !weights.every((x) => x >= 0 && Number.isFinite(x)))
    throw new Error(`denoiseMeans: need ${T} finite non-negative weights`);
  const weightSum = weights.reduce((a, b) => a + b, 0);
  if (!(weightSum > 0)) throw new Error('denoiseMeans: the weights sum to zero');
  const keptAxes = Math.min(rank, d);
  for (const [l, h] of heads) {
    const off = (l * H + h) * d;
    const xs = passes.map((x) => Float64Array.from(x.subarray(off, off + d))); // T × [d]
    const centre = new Float64Array(d);
    if (opts.centring === 'centred')
      xs.forEach((x, t) => {
        for (let i = 0; i < d; i++) centre[i]! += (weights[t]! * x[i]!) / weightSum;
      });
    // Weighted scatter around the centre (the origin when uncentred): Σ_t w_t (x_t − c)(x_t − c)ᵀ / Σ w   [d, d]
    const dev = xs.map((x) => x.map((v, i) => v - centre[i]!));
    const scatter = new Float64Array(d * d);
    dev.forEach((x, t) => {
      for (let i = 0; i < d; i++)
        for (let j = 0; j < d; j++) scatter[i * d + j]! += (weights[t]! * x[i]! * x[j]!) / weightSum;
    });
    const axes = symmetricEigen(scatter, d).vectors.slice(0, keptAxes);
    const result =
      opts.centring === 'centred'
        ? centredEstimate(centre, dev, axes, { weights, weightSum })
        : projectOnto(axes, mu.subarray(off, off + d));
    for (let i = 0; i < d; i++) out[off + i] = result[i]!;
  }
  return out;
}

/** UUᵀv: `v` projected onto the span of the orthonormal `axes` (each [d]). */
function projectOnto(axes: Float64Array[], v: ArrayLike<number>): Float64Array {
  const p = new Float64Array(v.length);
  for (const u of axes) {
    let c = 0;
    for (let i = 0; i < v.length; i++) c += u[i]! * v[i]!;
    for (let i = 0; i < v.length; i++) p[i]! += c * u[i]!;
  }
  return p;
}

/**
 * The centred estimate c + UUᵀ(m − c) (see denoiseMeans): `dev` holds each pass's deviation x_t − c, and m is the
 * mean of the passes reweighted by how well the top `axes` explain them.
 */
function centredEstimate(
  centre: Float64Array,
  dev: Float64Array[],
  axes: Float64Array[],
  { weights, weightSum }: { weights: number[]; weightSum: number },
): Float64Array {
  const d = centre.length;
  const residual = dev.map((x) => {
    const p = projectOnto(axes, x);
    return x.reduce((a, v, i) => a + (v - p[i]!) ** 2, 0);
  });
  const meanResidual = residual.reduce((a, q, t) => a + weights[t]! * q, 0) / weightSum;
  const spread = dev.reduce((a, x, t) => a + weights[t]! * x.reduce((s, v) => s + v * v, 0), 0) / weightSum;
  // Residuals at rounding level are no evidence against a pass: weigh every pass as given.
  const exact = !(meanResidual > 1e-12 * spread);
  const reweighted = residual.map((q, t) => (exact ? weights[t]! : weights[t]! / (1 + q / meanResidual)));
  const reweightedSum = reweighted.reduce((s, v) => s + v, 0);
  const shift = new Float64Array(d); // m − c
  dev.forEach((x, t) => {
    for (let i = 0; i < d; i++) shift[i]! += (reweighted[t]! * x[i]!) / reweightedSum;
  });
  const along = projectOnto(axes, shift);
  return centre.map((v, i) => v + along[i]!);
}

/** `--denoise pca:r[:centred|:uncentred]` (centred when not said), or null for none. */
export function parseDenoise(spec: string | null): { rank: number; centring: Centring } | null {
  if (spec === null || spec === 'none') return null;
  const m = /^pca:(\d+)(?::(centred|uncentred))?$/.exec(spec);
  if (!m || !(Number(m[1]) >= 1))
    throw new FitError(`--denoise ${spec}: expected pca:r, pca:r:centred or pca:r:uncentred with r ≥ 1, or none`);
  return { rank: Number(m[1]), centring: (m[2] as Centring | undefined) ?? 'centred' };
}

/** The spelling the criterion records: `pca:r:centred` for `pca:r`, null for none. */
export function canonicalDenoise(spec: string | null): string | null {
  const parsed = parseDenoise(spec);
  return parsed && `pca:${parsed.rank}:${parsed.centring}`;
}
