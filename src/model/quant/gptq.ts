/**
 * GPTQ (Frantar et al., 2022, arXiv 2210.17323): block-wise quantisation of a linear layer W [N, K] that uses
 * calibration inputs X to choose codes, instead of rounding each weight to its nearest level. It minimises the
 * layer's output error ‖X Wᵀ − X Qᵀ‖² = Σ_n (w_n − q_n)ᵀ H (w_n − q_n), with H = Xᵀ X [K, K] summed over the
 * calibration positions: the inputs are quantised one at a time, in order, and each one's rounding error is
 * pushed onto the inputs not yet quantised, in the proportions H's inverse says best cancel it there.
 *
 * With U the upper Cholesky factor of H⁻¹ (H⁻¹ = Uᵀ U), input k of a row does
 *   q_k   = dequant(quant(w_k))                       on its block's grid
 *   e     = (w_k − q_k) / U[k, k]
 *   w_j  −= e · U[k, j]                               for every j > k
 * (the paper's Algorithm 1, one input at a time). Rows are independent given U, and the output is in the
 * MatMulNBits layout (layout.ts) round-to-nearest's quantizeMatrix writes. Where this differs from the reference
 * implementation (GPTQ's `fasterquant` with groups, static_groups off), on purpose:
 *   - a block's scale and zero point come from its weights as fully updated when the row reaches the block;
 *     the reference's lazy batches of 128 inputs pick the grids of a batch's later groups from weights that
 *     lack the updates from earlier inputs of the same batch;
 *   - the grid is round-to-nearest's (blockGrid: min/max with the clip search at 4 bits), not plain min/max;
 *   - an input no calibration position used keeps its weights (the reference zeroes them) and gets a unit
 *     diagonal; the damping is a fraction of the mean over the used inputs' diagonal.
 */
import {
  allocQuantized,
  blobBytes,
  blocksPerRow,
  putPacked,
  zeroPointBytesPerRow,
  type QuantizedMatrix,
  type QuantOptions,
} from './layout.js';
import { blockGrid, quantCode } from './round-to-nearest.js';

/** Joins a GPTQ entry's cache key: bump it when gptqQuantize's choices change. */
export const GPTQ_VERSION = 'gptq-blockgrid/1';

export interface GptqOptions extends Pick<QuantOptions, 'bits' | 'blockSize'> {
  /**
   * Added to H's diagonal as a fraction of the used inputs' mean H[k, k] (the paper's percdamp), so H is safely
   * invertible. Default 0.01.
   */
  dampFraction?: number;
}

/**
 * `w` [N, K] row-major (HF layout), `hessian` [K, K] row-major (Xᵀ X, symmetric; any positive scale: only
 * ratios matter). An input no calibration position used (H[k, k] = 0) gets a unit diagonal: its weights are
 * rounded as they stand and, having no covariance with the others, push them nothing.
 */
export function gptqQuantize(
  w: Float32Array,
  rows: number,
  cols: number,
  hessian: Float64Array,
  opts: GptqOptions,
): QuantizedMatrix {
  if (w.length !== rows * cols) throw new Error(`gptq: W has ${w.length} values, expected ${rows}×${cols}`);
  if (hessian.length !== cols * cols) throw new Error(`gptq: H has ${hessian.length} values, expected ${cols}×${cols}`);
  const { bits, blockSize } = opts;
  const q = allocQuantized(rows, cols, bits, blockSize);
  const U = inverseCholeskyUpper(dampedHessian(hessian, cols, opts.dampFraction ?? 0.01), cols);
  const nb = blocksPerRow(cols, blockSize);
  const blob = blobBytes(bits, blockSize);
  const zpRow = zeroPointBytesPerRow(nb, bits);
  const qmax = (1 << bits) - 1;
  const row = new Float64Array(cols); // the row as updated so far
  const block = new Float32Array(blockSize); // the current block, for its grid
  for (let n = 0; n < rows; n++) {
    for (let k = 0; k < cols; k++) row[k] = w[n * cols + k]!;
    let scale = 1,
      zero = 0;
    for (let k = 0; k < cols; k++) {
      const b = Math.floor(k / blockSize);
      const inBlock = k - b * blockSize;
      if (inBlock === 0) {
        const end = Math.min(cols, k + blockSize);
        for (let j = k; j < end; j++) block[j - k] = row[j]!;
        ({ scale, zero } = blockGrid(block, 0, end - k, bits));
        q.scales[n * nb + b] = scale;
        putPacked(q.zeroPoints, n * zpRow, b, bits, zero);
      }
      const code = quantCode(Math.fround(row[k]!), scale, zero, qmax);
      putPacked(q.codes, (n * nb + b) * blob, inBlock, bits, code);
      const e = (row[k]! - (code - zero) * scale) / U[k * cols + k]!;
      const uRow = k * cols;
      for (let j = k + 1; j < cols; j++) row[j] = row[j]! - e * U[uRow + j]!;
    }
  }
  return q;
}

/**
 * 0 for x below 1e-30 of `scale` (its diagonal's size): far under float64's precision, and where H is nearly
 * banded the factors' entries decay geometrically into subnormal numbers, which x86 multiplies ~100× slower (a
 * banded K = 4864 Hessian took 68 s to factor before this, and the row updates were 15× slower).
 */
const flush = (x: number, scale: number) => (Math.abs(x) < 1e-30 * Math.abs(scale) ? 0 : x);

/**
 * H + λ·(mean of the used inputs' H[k, k])·I, with dead inputs (H[k, k] = 0) given a unit diagonal so the factorisation
 * exists.
 */
function dampedHessian(h: Float64Array, n: number, dampFraction: number): Float64Array {
  const out = Float64Array.from(h);
  let sum = 0,
    used = 0;
  for (let k = 0; k < n; k++)
    if (h[k * n + k]! > 0) {
      sum += h[k * n + k]!;
      used++;
    }
  const damp = dampFraction * (used > 0 ? sum / used : 1);
  for (let k = 0; k < n; k++) {
    const i = k * n + k;
    out[i] = (out[i]! === 0 ? 1 : out[i]!) + damp;
  }
  return out;
}

/**
 * U upper triangular with A⁻¹ = Uᵀ U, for A symmetric positive definite [n, n], without forming A⁻¹: factor
 * A = R Rᵀ with R upper (a Cholesky factorisation run from the last index back), then U = R⁻¹, since
 * A⁻¹ = R⁻ᵀ R⁻¹ = (R⁻¹)ᵀ R⁻¹. O(n³): about n³/3 multiply-adds.
 */
export function inverseCholeskyUpper(a: Float64Array, n: number): Float64Array {
  const R = new Float64Array(n * n);
  for (let j = n - 1; j >= 0; j--) {
    let d = a[j * n + j]!;
    for (let k = j + 1; k < n; k++) d -= R[j * n + k]! ** 2;
    if (!(d > 0)) throw new Error(`gptq: the damped Hessian is not positive definite at input ${j} (pivot ${d})`);
    const rjj = Math.sqrt(d);
    R[j * n + j] = rjj;
    for (let i = 0; i < j; i++) {
      let s = a[i * n + j]!;
      for (let k = j + 1; k < n; k++) s -= R[i * n + k]! * R[j * n + k]!;
      R[i * n + j] = flush(s / rjj, rjj);
    }
  }
  // U = R⁻¹ (upper): column j by back substitution on R U = I, kept as row j of Uᵀ so both inner reads run along
  // memory.
  const Ut = new Float64Array(n * n);
  for (let j = 0; j < n; j++) {
    const col = j * n;
    Ut[col + j] = 1 / R[j * n + j]!;
    for (let i = j - 1; i >= 0; i--) {
      let s = 0;
      for (let k = i + 1; k <= j; k++) s += R[i * n + k]! * Ut[col + k]!;
      Ut[col + i] = flush(-s / R[i * n + i]!, Ut[col + j]!);
    }
  }
  // U into R's buffer (R is no longer needed): one [n, n] array fewer at the peak.
  const U = R;
  U.fill(0);
  for (let i = 0; i < n; i++) for (let j = i; j < n; j++) U[i * n + j] = Ut[j * n + i]!;
  return U;
}
