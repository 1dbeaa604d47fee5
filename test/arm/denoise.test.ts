/**
 * Denoising (DESIGN §1 step 5), checked against results worked out by hand. The passes are built as
 * c + α_t·u1 + β_t·u2 + γ_t·u3 with an explicit orthonormal basis u and coefficient columns that sum to zero and
 * are mutually orthogonal, so the centred covariance is diag(Σα², Σβ², Σγ²)/T in that basis: its axes are u1, u2,
 * u3 without any eigen-solver.
 */
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { Decoder } from '../../src/model/decoder.js';
import { readExamples } from '../../src/data/examples.js';
import { extractMeans } from '../../src/arm/means.js';
import { denoiseMeans, parseDenoise } from '../../src/arm/denoise.js';
import { symmetricEigen } from '../../src/util/linalg.js';
import { fitActivationRM, judgeItemGroups, judgeItems } from '../../src/arm/fit.js';
import { STORIES, tempDir } from '../helpers/fixtures.js';

const u = [
  [1, 2, 2],
  [2, 1, -2],
  [2, -2, 1],
].map((v) => v.map((x) => x / 3));
const c = [1, -2, 0.5];
// Σ = 0 each, pairwise orthogonal; Σα² = 24, Σβ² = 16, Σγ² = 8 → variances 3, 2, 1 along u1, u2, u3.
const alpha = [3, -1, -1, -1, 3, -1, -1, -1];
const beta = [0, 2, -2, 0, 0, 2, -2, 0];
const gamma = [2, 0, 0, 0, -2, 0, 0, 0];
const point = (t: number) =>
  c.map((ci, i) => ci + alpha[t]! * u[0]![i]! + beta[t]! * u[1]![i]! + gamma[t]! * u[2]![i]!);
const along = (k: number, s: number) => c.map((ci, i) => ci + s * u[k]![i]!);

/** Two heads of d = 3 per layer, one layer; head 1 is the one denoised, head 0 holds other values. */
function layout() {
  const passes = alpha.map((_, t) => Float32Array.from([9, 9, 9, ...point(t)]));
  const mu = Float32Array.from([7, 7, 7, ...c]); // head 1: the plain mean of its passes is c
  return { passes, mu };
}
const head1 = (x: Float32Array) => Array.from(x.subarray(3, 6));
const close = (a: number[], b: number[]) => a.forEach((v, i) => expect(v).toBeCloseTo(b[i]!, 5));

describe('centred PCA denoising', () => {
  it('rank 2: passes rebuilt from u1, u2; the two off that plane (γ = ±2) count 1/5: mean moves −3/4 along u1', () => {
    // Residuals γ² = 4, 0, 0, 0, 4, 0, 0, 0; mean residual 1; weights 1/(1 + ρ): 1/5 for t = 0, 4, else 1.
    // Reweighted α mean: (2·3/5 − 6) / (2/5 + 6) = −3/4; β and γ means stay 0 (and γ is projected out anyway).
    const { passes, mu } = layout();
    const out = denoiseMeans(mu, passes, [[0, 1]], { H: 2, d: 3 }, 2, { centring: 'centred' });
    close(head1(out), along(0, -0.75));
    expect(Array.from(out.subarray(0, 3))).toEqual([7, 7, 7]); // heads not listed are left alone
  });

  it('rank 1: residuals β² + γ² (4 for six passes, 0 for two), mean 3, weights 3/7 and 1 → −1/4 along u1', () => {
    // Σaα = (3/7)(3 − 1 − 1 + 3 − 1 − 1) + (−1 − 1) = −8/7; Σa = 6·3/7 + 2 = 32/7; shift −1/4.
    const { passes, mu } = layout();
    close(head1(denoiseMeans(mu, passes, [[0, 1]], { H: 2, d: 3 }, 1, { centring: 'centred' })), along(0, -0.25));
  });

  it('rank ≥ d keeps every direction: the result is the (weighted) mean', () => {
    const { passes, mu } = layout();
    close(head1(denoiseMeans(mu, passes, [[0, 1]], { H: 2, d: 3 }, 3, { centring: 'centred' })), c);
    // Weights 0 except passes 1 and 2: their mean c + (−1)u1 + 0·u2 + 0·u3.
    const weights = alpha.map((_, t) => (t === 1 || t === 2 ? 1 : 0));
    close(head1(denoiseMeans(mu, passes, [[0, 1]], { H: 2, d: 3 }, 5, { centring: 'centred', weights })), along(0, -1));
  });

  it('passes that all lie on the rank-r structure give back their mean (no reweighting without evidence)', () => {
    // Only α varies: every pass lies on the line c + s·u1, residuals are 0.
    const passes = alpha.map((a) => Float32Array.from(c.map((ci, i) => ci + a * u[0]![i]!)));
    close(
      Array.from(denoiseMeans(Float32Array.from(c), passes, [[0, 0]], { H: 1, d: 3 }, 1, { centring: 'centred' })),
      c,
    );
  });
});

describe('uncentred PCA denoising (the earlier variant, kept as an option)', () => {
  it('projects the mean onto the top axes of the second moment', () => {
    // passes (3,0), (1,0), (0,2): second moment diag(10/3, 4/3), top axis x; mean (4/3, 2/3) → (4/3, 0)
    const passes = [
      [3, 0],
      [1, 0],
      [0, 2],
    ].map((x) => Float32Array.from(x));
    const out = denoiseMeans(Float32Array.from([4 / 3, 2 / 3]), passes, [[0, 0]], { H: 1, d: 2 }, 1, {
      centring: 'uncentred',
    });
    close(Array.from(out), [4 / 3, 0]);
  });
});

describe('symmetric eigen-decomposition', () => {
  it('2×2 against the closed form, and a 3×3 with a known basis', () => {
    // [[2, 1], [1, 2]]: eigenvalues 3 (axis (1,1)/√2) and 1 (axis (1,−1)/√2).
    const e = symmetricEigen(Float64Array.from([2, 1, 1, 2]), 2);
    close(e.values, [3, 1]);
    const s = Math.SQRT1_2;
    expect(Math.abs(e.vectors[0]![0]! * s + e.vectors[0]![1]! * s)).toBeCloseTo(1, 10);
    // M = Σ λ_k u_k u_kᵀ with λ = 5, 2, −1 and the basis u above.
    const lambda = [5, 2, -1];
    const M = Float64Array.from({ length: 9 }, (_, n) =>
      lambda.reduce((a, l, k) => a + l * u[k]![Math.floor(n / 3)]! * u[k]![n % 3]!, 0),
    );
    const f = symmetricEigen(M, 3);
    close(f.values, lambda);
    f.vectors.forEach((v, k) => expect(Math.abs(v.reduce((a, x, i) => a + x * u[k]![i]!, 0))).toBeCloseTo(1, 10));
  });
});

describe('--denoise spec', () => {
  it('reads pca:r with an optional centring, centred by default', () => {
    expect(parseDenoise('pca:4')).toEqual({ rank: 4, centring: 'centred' });
    expect(parseDenoise('pca:2:uncentred')).toEqual({ rank: 2, centring: 'uncentred' });
    expect(parseDenoise('none')).toBeNull();
    expect(parseDenoise(null)).toBeNull();
    for (const bad of ['pca', 'pca:0', 'pca:2:centered', 'svd:3']) expect(() => parseDenoise(bad)).toThrow(/--denoise/);
  });
});

describe('denoising in a fit', () => {
  it("the criterion holds the selected heads' means denoised from the fit's own passes, and records how", async () => {
    const decoder = await Decoder.load(STORIES, { cacheDir: tempDir('arm-cache-'), threads: 1 });
    try {
      const { examples } = readExamples(path.resolve(import.meta.dirname, '../../examples/concise/few.jsonl'));
      const opts = { passes: 6, shots: 2, seed: 5, batchSize: 4, maxLength: 256, heads: 'random:3' as const };
      const plain = await fitActivationRM(decoder, examples, opts);
      const denoised = await fitActivationRM(decoder, examples, { ...opts, denoise: 'pca:2' });
      const before = await fitActivationRM(decoder, examples, {
        ...opts,
        denoise: 'pca:2:uncentred',
        denoiseBeforeSelection: true,
      });
      expect(plain.criterion.meta.denoise).toBeNull();
      expect(denoised.criterion.meta.denoise).toBe('pca:2:centred');
      expect(denoised.criterion.meta.hyper.denoiseBeforeSelection).toBe(false);
      expect(before.criterion.meta.denoise).toBe('pca:2:uncentred');
      expect(before.criterion.meta.hyper.denoiseBeforeSelection).toBe(true);
      const heads = plain.criterion.meta.heads;
      expect(denoised.criterion.meta.heads).toEqual(heads); // random:N draws the same heads for one seed
      // The expectation: the fit's passes taken again (same plan inputs) and denoised per head.
      const { numHeads: H, headDim: d } = decoder.spec;
      const items = judgeItems(examples, 'scalar');
      const means = await extractMeans(decoder, plain.criterion.meta.template, items, {
        passes: 6,
        shots: 2,
        seed: 5,
        batchSize: 4,
        maxLength: 256,
        passesPerDemoSet: plain.criterion.meta.hyper.passesPerDemoSet,
        keepPasses: true,
        groupOf: judgeItemGroups(examples, 'scalar'),
      });
      const at = (mu: Float32Array) =>
        heads.flatMap(([l, h]) => Array.from(mu.subarray((l * H + h) * d, (l * H + h + 1) * d)));
      const close = (a: number[], b: number[]) =>
        a.forEach((v, i) => expect(Math.abs(v - b[i]!)).toBeLessThan(1e-5 * Math.max(1, Math.abs(b[i]!))));
      close(at(plain.criterion.mu), at(means.mu));
      close(
        at(denoised.criterion.mu),
        at(denoiseMeans(means.mu, means.passes!, heads, { H, d }, 2, { centring: 'centred' })),
      );
      close(
        at(before.criterion.mu),
        at(denoiseMeans(means.mu, means.passes!, heads, { H, d }, 2, { centring: 'uncentred' })),
      );
      expect(at(denoised.criterion.mu)).not.toEqual(at(plain.criterion.mu));
    } finally {
      await decoder.dispose();
    }
  });
});
