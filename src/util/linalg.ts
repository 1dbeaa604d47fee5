/**
 * Small dense linear algebra in float64 for what runs in JS rather than in the model graph (the denoising PCA of
 * a head's d×d scatter matrix).
 */

/**
 * Eigen-decomposition of a symmetric d×d matrix by cyclic Jacobi rotations: eigenvalues in decreasing order with
 * their unit eigenvectors. Exact to rounding even for close or repeated eigenvalues, where power iteration crawls.
 */
export function symmetricEigen(M: Float64Array, d: number): { values: number[]; vectors: Float64Array[] } {
  const A = Float64Array.from(M); // [d, d], rotated towards diagonal
  const V = new Float64Array(d * d); // [d, d], columns become the eigenvectors
  for (let i = 0; i < d; i++) V[i * d + i] = 1;
  let norm = 0;
  for (let i = 0; i < d * d; i++) norm += A[i]! ** 2;
  for (let sweep = 0; sweep < 60; sweep++) {
    let off = 0;
    for (let p = 0; p < d; p++) for (let q = p + 1; q < d; q++) off += A[p * d + q]! ** 2;
    if (!(off > 1e-30 * norm)) break;
    for (let p = 0; p < d; p++) for (let q = p + 1; q < d; q++) jacobiRotate(A, V, d, p, q);
  }
  const order = Array.from({ length: d }, (_, i) => i).sort((a, b) => A[b * d + b]! - A[a * d + a]! || a - b);
  return {
    values: order.map((i) => A[i * d + i]!),
    vectors: order.map((i) => Float64Array.from({ length: d }, (_, k) => V[k * d + i]!)),
  };
}

/** One Jacobi rotation J in the (p, q) plane that zeroes A[p][q]: A ← Jᵀ·A·J, V ← V·J (in place). */
function jacobiRotate(A: Float64Array, V: Float64Array, d: number, p: number, q: number): void {
  const apq = A[p * d + q]!;
  if (apq === 0) return;
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
