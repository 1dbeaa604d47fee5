/**
 * GPTQ (quant/gptq.ts) against expectations that do not reuse its code: the inverse Cholesky factor against
 * UᵀU·A = I; the quantiser against a textbook OBS/OBQ implementation written here, which keeps an explicit
 * inverse Hessian (Gauss-Jordan) and removes each quantised input from it (mathematically the same as the
 * Cholesky form); the objective it minimises against round-to-nearest's, in-sample and on held-out inputs;
 * H = I (no covariance, nothing to push) against round-to-nearest bit for bit; dead inputs and argument checks.
 */
import { describe, expect, it } from 'vitest';
import { gptqQuantize, inverseCholeskyUpper } from '../../src/model/quant/gptq.js';
import {
  blobBytes,
  blocksPerRow,
  dequantizeMatrix,
  getPacked,
  zeroPointBytesPerRow,
  type QuantizedMatrix,
} from '../../src/model/quant/layout.js';
import { blockGrid, quantCode, quantizeMatrix } from '../../src/model/quant/round-to-nearest.js';

/** mulberry32 with Box-Muller normals: small, seeded, independent of the repo's generators. */
function rng(seed: number) {
  let s = seed >>> 0;
  const uniform = () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const normal = () => {
    const u = 1 - uniform(),
      v = uniform();
    return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
  };
  return { uniform, normal };
}

/** A [r, c] · B [c, m], row-major float64. */
function matmul(a: Float64Array, b: Float64Array, r: number, c: number, m: number): Float64Array {
  const out = new Float64Array(r * m);
  for (let i = 0; i < r; i++)
    for (let k = 0; k < c; k++) {
      const x = a[i * c + k]!;
      if (x === 0) continue;
      for (let j = 0; j < m; j++) out[i * m + j] = out[i * m + j]! + x * b[k * m + j]!;
    }
  return out;
}

/** Xᵀ X for X [t, k]. */
function gram(x: Float64Array, t: number, k: number): Float64Array {
  const h = new Float64Array(k * k);
  for (let p = 0; p < t; p++)
    for (let i = 0; i < k; i++) {
      const xi = x[p * k + i]!;
      for (let j = 0; j < k; j++) h[i * k + j] = h[i * k + j]! + xi * x[p * k + j]!;
    }
  return h;
}

/**
 * Correlated inputs X = Z · M [t, k]: Z standard normal, M = I·0.3 + a shared low-rank mixing, so every column
 * leans on a few common factors (as a layer's activations do), giving H strong off-diagonal mass.
 */
function correlatedInputs(t: number, k: number, mixSeed: number, sampleSeed: number): Float64Array {
  const rm = rng(mixSeed);
  const rank = 4;
  const m = new Float64Array(k * k);
  const a = Float64Array.from({ length: k * rank }, () => rm.normal());
  const b = Float64Array.from({ length: rank * k }, () => rm.normal());
  const ab = matmul(a, b, k, rank, k);
  for (let i = 0; i < k * k; i++) m[i] = ab[i]! / Math.sqrt(rank);
  for (let i = 0; i < k; i++) m[i * k + i] = m[i * k + i]! + 0.3;
  const rz = rng(sampleSeed);
  const z = Float64Array.from({ length: t * k }, () => rz.normal());
  return matmul(z, m, t, k, k);
}

/** Gauss-Jordan inverse with partial pivoting, float64. */
function invert(a: Float64Array, n: number): Float64Array {
  const m = Float64Array.from(a);
  const inv = new Float64Array(n * n);
  for (let i = 0; i < n; i++) inv[i * n + i] = 1;
  for (let c = 0; c < n; c++) {
    let p = c;
    for (let r = c + 1; r < n; r++) if (Math.abs(m[r * n + c]!) > Math.abs(m[p * n + c]!)) p = r;
    if (p !== c)
      for (let j = 0; j < n; j++) {
        [m[c * n + j], m[p * n + j]] = [m[p * n + j]!, m[c * n + j]!];
        [inv[c * n + j], inv[p * n + j]] = [inv[p * n + j]!, inv[c * n + j]!];
      }
    const d = m[c * n + c]!;
    for (let j = 0; j < n; j++) {
      m[c * n + j] = m[c * n + j]! / d;
      inv[c * n + j] = inv[c * n + j]! / d;
    }
    for (let r = 0; r < n; r++) {
      if (r === c) continue;
      const f = m[r * n + c]!;
      if (f === 0) continue;
      for (let j = 0; j < n; j++) {
        m[r * n + j] = m[r * n + j]! - f * m[c * n + j]!;
        inv[r * n + j] = inv[r * n + j]! - f * inv[c * n + j]!;
      }
    }
  }
  return inv;
}

interface RefResult {
  codes: Int32Array;
  scales: Float64Array;
  zeros: Int32Array;
  deq: Float64Array;
}

/**
 * The OBS/OBQ form (GPTQ paper, eq. 2–3): explicit Hinv = (H + λ·mean(diag H)·I)⁻¹; for each input k in order,
 * quantise w_k, spread its error as w_j −= (w_k − q_k)/Hinv[k,k] · Hinv[k,j] (j > k), then drop input k from
 * Hinv by Hinv ← Hinv − Hinv[:,k] Hinv[k,:] / Hinv[k,k]. Grids per block from the weights as updated when the
 * row reaches the block (blockGrid on a float32 copy), codes quantCode(fround(w_k)).
 */
function referenceGptq(
  w: Float32Array,
  rows: number,
  cols: number,
  h: Float64Array,
  opts: { bits: 4 | 8; blockSize: number; dampFraction?: number },
): RefResult {
  const { bits, blockSize, dampFraction = 0.01 } = opts;
  const hd = Float64Array.from(h);
  let mean = 0;
  for (let k = 0; k < cols; k++) mean += h[k * cols + k]!;
  mean /= cols;
  for (let k = 0; k < cols; k++) hd[k * cols + k] = hd[k * cols + k]! + dampFraction * mean;
  const hinv0 = invert(hd, cols);
  const nb = Math.ceil(cols / blockSize);
  const qmax = (1 << bits) - 1;
  const codes = new Int32Array(rows * cols),
    zeros = new Int32Array(rows * nb),
    scales = new Float64Array(rows * nb),
    deq = new Float64Array(rows * cols);
  for (let n = 0; n < rows; n++) {
    const hinv = Float64Array.from(hinv0);
    const row = Float64Array.from(w.subarray(n * cols, (n + 1) * cols));
    let scale = 1,
      zero = 0;
    for (let k = 0; k < cols; k++) {
      if (k % blockSize === 0) {
        const b = k / blockSize;
        const blk = Float32Array.from(row.subarray(k, Math.min(cols, k + blockSize)));
        ({ scale, zero } = blockGrid(blk, 0, blk.length, bits));
        scales[n * nb + b] = scale;
        zeros[n * nb + b] = zero;
      }
      const code = quantCode(Math.fround(row[k]!), scale, zero, qmax);
      const qk = (code - zero) * scale;
      codes[n * cols + k] = code;
      deq[n * cols + k] = qk;
      const dkk = hinv[k * cols + k]!;
      const err = (row[k]! - qk) / dkk;
      for (let j = k + 1; j < cols; j++) row[j] = row[j]! - err * hinv[k * cols + j]!;
      // Remove input k: the inverse of H restricted to the inputs still free.
      for (let i = k + 1; i < cols; i++) {
        const f = hinv[i * cols + k]! / dkk;
        if (f === 0) continue;
        for (let j = k + 1; j < cols; j++) hinv[i * cols + j] = hinv[i * cols + j]! - f * hinv[k * cols + j]!;
      }
    }
  }
  return { codes, scales, zeros, deq };
}

/** Codes [N, K] and zero points [N, nBlocks] unpacked from the MatMulNBits layout. */
function unpack(q: QuantizedMatrix): { codes: Int32Array; zeros: Int32Array } {
  const nb = blocksPerRow(q.cols, q.blockSize);
  const blob = blobBytes(q.bits, q.blockSize);
  const zpRow = zeroPointBytesPerRow(nb, q.bits);
  const codes = new Int32Array(q.rows * q.cols),
    zeros = new Int32Array(q.rows * nb);
  for (let n = 0; n < q.rows; n++) {
    for (let b = 0; b < nb; b++) zeros[n * nb + b] = getPacked(q.zeroPoints, n * zpRow, b, q.bits);
    for (let k = 0; k < q.cols; k++) {
      const b = Math.floor(k / q.blockSize);
      codes[n * q.cols + k] = getPacked(q.codes, (n * nb + b) * blob, k - b * q.blockSize, q.bits);
    }
  }
  return { codes, zeros };
}

const randomWeights = (n: number, seed: number, std = 0.05) => {
  const r = rng(seed);
  return Float32Array.from({ length: n }, () => std * r.normal());
};

/** Σ_n (w_n − q_n)ᵀ H (w_n − q_n). */
function objective(w: Float32Array, q: ArrayLike<number>, rows: number, cols: number, h: Float64Array): number {
  let total = 0;
  const d = new Float64Array(cols);
  for (let n = 0; n < rows; n++) {
    for (let k = 0; k < cols; k++) d[k] = w[n * cols + k]! - q[n * cols + k]!;
    for (let i = 0; i < cols; i++) {
      let s = 0;
      for (let j = 0; j < cols; j++) s += h[i * cols + j]! * d[j]!;
      total += d[i]! * s;
    }
  }
  return total;
}

/** Mean of (X Wᵀ − X Qᵀ)² over X [t, k]. */
function outputMse(
  x: Float64Array,
  t: number,
  w: Float32Array,
  q: ArrayLike<number>,
  rows: number,
  cols: number,
): number {
  let total = 0;
  for (let p = 0; p < t; p++)
    for (let n = 0; n < rows; n++) {
      let s = 0;
      for (let k = 0; k < cols; k++) s += x[p * cols + k]! * (w[n * cols + k]! - q[n * cols + k]!);
      total += s * s;
    }
  return total / (t * rows);
}

describe('inverseCholeskyUpper', () => {
  it('returns upper-triangular U with a positive diagonal and Uᵀ U · A = I', () => {
    const n = 12,
      t = 20;
    const r = rng(7);
    const x = Float64Array.from({ length: t * n }, () => r.normal());
    const a = gram(x, t, n);
    for (let i = 0; i < n; i++) a[i * n + i] = a[i * n + i]! + 1;
    const u = inverseCholeskyUpper(a, n);
    for (let i = 0; i < n; i++) {
      expect(u[i * n + i]).toBeGreaterThan(0);
      for (let j = 0; j < i; j++) expect(u[i * n + j]).toBe(0);
    }
    const ut = new Float64Array(n * n);
    for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) ut[i * n + j] = u[j * n + i]!;
    const prod = matmul(matmul(ut, u, n, n, n), a, n, n, n);
    let worst = 0;
    for (let i = 0; i < n; i++)
      for (let j = 0; j < n; j++) worst = Math.max(worst, Math.abs(prod[i * n + j]! - (i === j ? 1 : 0)));
    expect(worst).toBeLessThan(1e-9);
  });

  it('throws on a matrix that is not positive definite', () => {
    // [[1, 2], [2, 1]]: eigenvalues 3 and −1.
    expect(() => inverseCholeskyUpper(Float64Array.from([1, 2, 2, 1]), 2)).toThrow(/not positive definite/);
  });
});

describe('gptqQuantize', () => {
  const cases: { bits: 4 | 8; blockSize: number; rows: number; cols: number; seed: number; damp?: number }[] = [
    { bits: 4, blockSize: 16, rows: 8, cols: 48, seed: 1 },
    { bits: 4, blockSize: 32, rows: 8, cols: 48, seed: 2 }, // partial last block (16 of 32)
    { bits: 4, blockSize: 16, rows: 6, cols: 40, seed: 3 }, // partial last block (8 of 16)
    { bits: 8, blockSize: 16, rows: 6, cols: 40, seed: 4 },
    { bits: 4, blockSize: 16, rows: 6, cols: 40, seed: 5, damp: 0.1 },
  ];
  for (const { bits, blockSize, rows, cols, seed, damp } of cases) {
    it(
      `matches the explicit-inverse OBQ form (bits ${bits}, block ${blockSize}, ${rows}×${cols}, damp ` +
        `${damp ?? 'default'})`,
      () => {
        const t = 4 * cols;
        const x = correlatedInputs(t, cols, 100 + seed, 200 + seed);
        const h = gram(x, t, cols);
        const w = randomWeights(rows * cols, 300 + seed);
        const q = gptqQuantize(
          w,
          rows,
          cols,
          h,
          damp === undefined ? { bits, blockSize } : { bits, blockSize, dampFraction: damp },
        );
        const ref = referenceGptq(w, rows, cols, h, { bits, blockSize, dampFraction: damp ?? 0.01 });
        const got = unpack(q);
        const nb = blocksPerRow(cols, blockSize);
        let codeDiffs = 0;
        for (let i = 0; i < rows * cols; i++) if (got.codes[i] !== ref.codes[i]) codeDiffs++;
        expect(codeDiffs).toBeLessThanOrEqual(Math.floor(0.005 * rows * cols));
        for (let i = 0; i < rows * nb; i++) {
          expect(Math.abs(q.scales[i]! - ref.scales[i]!)).toBeLessThanOrEqual(1e-6 * Math.abs(ref.scales[i]!));
          expect(got.zeros[i]).toBe(ref.zeros[i]);
        }
        // Padding past K stays code 0.
        const lastBlob = (n: number) => (n * nb + nb - 1) * blobBytes(bits, blockSize);
        for (let n = 0; n < rows; n++)
          for (let k = cols; k < nb * blockSize; k++)
            expect(getPacked(q.codes, lastBlob(n), k - (nb - 1) * blockSize, bits)).toBe(0);
        // And the result is not round-to-nearest: GPTQ moved codes.
        const rtn = unpack(quantizeMatrix(w, rows, cols, { bits, blockSize }));
        let rtnDiffs = 0;
        for (let i = 0; i < rows * cols; i++) if (rtn.codes[i] !== got.codes[i]) rtnDiffs++;
        expect(rtnDiffs).toBeGreaterThan(0.05 * rows * cols);
      },
    );
  }

  it(
    'lowers the objective Σ (w − q)ᵀ H (w − q) well below ' + 'round-to-nearest, and the output MSE on held-out inputs',
    () => {
      const rows = 16,
        cols = 64,
        t = 512;
      const bits = 4,
        blockSize = 32;
      const x = correlatedInputs(t, cols, 11, 12);
      const h = gram(x, t, cols);
      const w = randomWeights(rows * cols, 13);
      const gq = dequantizeMatrix(gptqQuantize(w, rows, cols, h, { bits, blockSize }));
      const rq = dequantizeMatrix(quantizeMatrix(w, rows, cols, { bits, blockSize }));
      const eG = objective(w, gq, rows, cols, h),
        eR = objective(w, rq, rows, cols, h);
      expect(eG).toBeLessThan(0.5 * eR);
      // Consistency of the two measures: the in-sample output MSE is the objective over t·rows.
      expect(outputMse(x, t, w, gq, rows, cols)).toBeCloseTo(eG / (t * rows), 10);
      const held = correlatedInputs(t, cols, 11, 99); // same mixing M, fresh Z
      const mG = outputMse(held, t, w, gq, rows, cols),
        mR = outputMse(held, t, w, rq, rows, cols);
      expect(mG).toBeLessThan(0.5 * mR);
    },
  );

  it('with H = I (no covariance) equals round-to-nearest bit for bit', () => {
    for (const [bits, blockSize, rows, cols] of [
      [4, 16, 8, 48],
      [4, 32, 5, 40],
      [8, 16, 4, 40],
    ] as const) {
      const w = randomWeights(rows * cols, 21 + cols);
      const h = new Float64Array(cols * cols);
      for (let k = 0; k < cols; k++) h[k * cols + k] = 1;
      const g = gptqQuantize(w, rows, cols, h, { bits, blockSize });
      const r = quantizeMatrix(w, rows, cols, { bits, blockSize });
      expect(g.codes).toEqual(r.codes);
      expect(g.scales).toEqual(r.scales);
      expect(g.zeroPoints).toEqual(r.zeroPoints);
      expect([g.rows, g.cols, g.bits, g.blockSize]).toEqual([rows, cols, bits, blockSize]);
    }
  });

  /** H from 128 correlated calibration inputs and random W, all seeded from `seed`. */
  const problem = (rows: number, cols: number, seed: number) => ({
    h: gram(correlatedInputs(128, cols, seed, seed + 1), 128, cols),
    w: randomWeights(rows * cols, seed + 2),
  });

  it('depends on H only up to scale (H × 4 gives the same bytes)', () => {
    const rows = 4,
      cols = 48;
    const { h, w } = problem(rows, cols, 31);
    const a = gptqQuantize(w, rows, cols, h, { bits: 4, blockSize: 16 });
    const b = gptqQuantize(
      w,
      rows,
      cols,
      h.map((v) => 4 * v),
      { bits: 4, blockSize: 16 },
    );
    expect(b.codes).toEqual(a.codes);
    expect(b.scales).toEqual(a.scales);
    expect(b.zeroPoints).toEqual(a.zeroPoints);
  });

  it('quantises rows independently (a row alone gives the bytes it gets among others)', () => {
    const rows = 6,
      cols = 48;
    const { h, w } = problem(rows, cols, 41);
    const all = gptqQuantize(w, rows, cols, h, { bits: 4, blockSize: 16 });
    const nb = blocksPerRow(cols, 16);
    const one = gptqQuantize(w.slice(3 * cols, 4 * cols), 1, cols, h, { bits: 4, blockSize: 16 });
    expect(one.codes).toEqual(all.codes.slice(3 * nb * 8, 4 * nb * 8));
    expect(one.scales).toEqual(all.scales.slice(3 * nb, 4 * nb));
  });

  it('handles a dead input (H[k, k] = 0): no throw, finite scales, its weight rounded as it stands', () => {
    const rows = 5,
      cols = 40,
      t = 160,
      dead = 19;
    const x = correlatedInputs(t, cols, 51, 52);
    for (let p = 0; p < t; p++) x[p * cols + dead] = 0;
    const h = gram(x, t, cols);
    expect(h[dead * cols + dead]).toBe(0);
    const w = randomWeights(rows * cols, 53);
    const q = gptqQuantize(w, rows, cols, h, { bits: 4, blockSize: 16 });
    for (const s of q.scales) {
      expect(Number.isFinite(s)).toBe(true);
      expect(s).toBeGreaterThan(0);
    }
    const deq = dequantizeMatrix(q);
    for (const v of deq) expect(Number.isFinite(v)).toBe(true);
    // Having no covariance with the others, the dead input receives no error from earlier inputs: its code is
    // its original weight's on the block's grid.
    const { codes, zeros } = unpack(q);
    const nb = blocksPerRow(cols, 16),
      b = Math.floor(dead / 16);
    for (let n = 0; n < rows; n++) {
      expect(codes[n * cols + dead]).toBe(
        quantCode(w[n * cols + dead]!, q.scales[n * nb + b]!, zeros[n * nb + b]!, 15),
      );
    }
    // Undamped, H is singular at the dead input: the unit diagonal it gets must keep the factorisation possible.
    const qu = gptqQuantize(w, rows, cols, h, { bits: 4, blockSize: 16, dampFraction: 0 });
    for (const s of qu.scales) expect(Number.isFinite(s)).toBe(true);
    // An all-zero H (every input dead) still quantises.
    const q0 = gptqQuantize(w, rows, cols, new Float64Array(cols * cols), { bits: 4, blockSize: 16 });
    for (const s of q0.scales) expect(Number.isFinite(s)).toBe(true);
  });

  it('rejects W or H of the wrong size, naming the sizes', () => {
    const h = new Float64Array(16 * 16);
    expect(() => gptqQuantize(new Float32Array(30), 2, 16, h, { bits: 4, blockSize: 16 })).toThrow(
      /W has 30 values, expected 2×16/,
    );
    expect(() =>
      gptqQuantize(new Float32Array(32), 2, 16, new Float64Array(15 * 15), { bits: 4, blockSize: 16 }),
    ).toThrow(/H has 225 values, expected 16×16/);
  });
});
