/**
 * The block-quantised weight layout every quantised linear layer is stored in: onnxruntime's MatMulNBits layout
 * (contrib domain com.microsoft, emitted by graph/quantized-linear.ts), shared by conversion-time quantisation
 * (round-to-nearest.ts, gptq.ts) and pre-quantised checkpoints (awq-gptq.ts). Only the layout lives here: how its
 * arrays are sized, packed, joined and read back; the choice of codes is the quantisers'.
 *
 * A matrix W [N, K] (HF Linear layout: N outputs, K inputs; MatMulNBits computes Y = X · Wᵀ) is cut along K
 * into blocks of `blockSize`; each block of each row has a float scale and an unsigned zero point, and
 * W[n, k] ≈ (code[n, k] − zero[n, k / blockSize]) · scale[n, k / blockSize]. Arrays:
 *   codes       uint8 [N, nBlocks, blockSize·bits/8]  codes packed low bits first along K (4-bit: k even in
 *                                                   the low nibble); the last block padded with code 0
 *   scales      f32   [N, nBlocks]
 *   zeroPoints  uint8 [N, ceil(nBlocks·bits/8)]        packed like the codes (4-bit: two blocks a byte)
 * Rows are independent, so matrices fused along N (q|k|v, gate|up) are their parts' arrays concatenated.
 */

/** How linear layers are stored: `bits` per weight, one scale and zero point per `blockSize` inputs. */
export interface QuantOptions {
  bits: 4 | 8;
  /** A power of two ≥ 16 (MatMulNBits' rule). */
  blockSize: number;
  /**
   * MatMulNBits `accuracy_level`: 0/1 = dequantise to fp32 and multiply in fp32; 4 = quantise the
   * activations per block to int8 and multiply in int8 (VNNI/AMX where the CPU has them). onnxruntime falls
   * back to fp32 compute where the requested level has no kernel.
   */
  accuracyLevel: 0 | 1 | 2 | 3 | 4;
}

export interface QuantizedMatrix {
  rows: number; // N
  cols: number; // K
  bits: 4 | 8;
  blockSize: number;
  codes: Uint8Array; // [N, nBlocks, blockSize·bits/8]
  scales: Float32Array; // [N, nBlocks]
  zeroPoints: Uint8Array; // [N, ceil(nBlocks·bits/8)]
}

/** One row's arrays: its codes [nBlocks, blockSize·bits/8], its nBlocks scales, its packed zero points. */
export interface QuantizedRow {
  codes: Uint8Array;
  scales: Float32Array;
  zeroPoints: Uint8Array;
}

export function checkBlockSize(blockSize: number, what = 'block size'): void {
  if (!Number.isInteger(blockSize) || blockSize < 16 || (blockSize & (blockSize - 1)) !== 0) {
    throw new Error(`${what} must be a power of two ≥ 16 (onnxruntime MatMulNBits), got ${blockSize}`);
  }
}

export const blocksPerRow = (cols: number, blockSize: number) => Math.ceil(cols / blockSize);
export const blobBytes = (bits: number, blockSize: number) => (blockSize * bits) / 8;
export const zeroPointBytesPerRow = (nBlocks: number, bits: number) => Math.ceil((nBlocks * bits) / 8);

/** An empty matrix of the layout's sizes, for writers that fill it in (quantisers, AWQ/GPTQ repacking, tests). */
export function allocQuantized(rows: number, cols: number, bits: 4 | 8, blockSize: number): QuantizedMatrix {
  checkBlockSize(blockSize);
  const nb = blocksPerRow(cols, blockSize);
  return {
    rows,
    cols,
    bits,
    blockSize,
    codes: new Uint8Array(rows * nb * blobBytes(bits, blockSize)),
    scales: new Float32Array(rows * nb),
    zeroPoints: new Uint8Array(rows * zeroPointBytesPerRow(nb, bits)),
  };
}

/** Writes `value` (< 2^bits) as element `index` of a low-bits-first packed byte array. */
export function putPacked(bytes: Uint8Array, at: number, index: number, bits: 4 | 8, value: number): void {
  if (bits === 8) {
    bytes[at + index] = value;
    return;
  }
  const i = at + (index >> 1);
  bytes[i] = index & 1 ? (bytes[i]! & 0x0f) | (value << 4) : (bytes[i]! & 0xf0) | value;
}

export function getPacked(bytes: Uint8Array, at: number, index: number, bits: 4 | 8): number {
  if (bits === 8) return bytes[at + index]!;
  const b = bytes[at + (index >> 1)]!;
  return index & 1 ? b >> 4 : b & 0x0f;
}

/** Row `n` of the matrix, as views of its arrays. */
function rowOf(q: QuantizedMatrix, n: number): QuantizedRow {
  const nb = blocksPerRow(q.cols, q.blockSize);
  const codeBytes = nb * blobBytes(q.bits, q.blockSize);
  const zeroBytes = zeroPointBytesPerRow(nb, q.bits);
  return {
    codes: q.codes.subarray(n * codeBytes, (n + 1) * codeBytes),
    scales: q.scales.subarray(n * nb, (n + 1) * nb),
    zeroPoints: q.zeroPoints.subarray(n * zeroBytes, (n + 1) * zeroBytes),
  };
}

/**
 * One row back to float32 from its arrays (`layout`: the matrix's K, bits and block size), written into `out`
 * at `at` (embedding lookups read a row's arrays from the cache entry's weights.bin).
 */
export function dequantizeRowInto(
  layout: Pick<QuantizedMatrix, 'cols' | 'bits' | 'blockSize'>,
  row: QuantizedRow,
  out: Float32Array,
  at = 0,
): Float32Array {
  const { cols, bits, blockSize } = layout;
  const blob = blobBytes(bits, blockSize);
  for (let k = 0; k < cols; k++) {
    const b = Math.floor(k / blockSize);
    const code = getPacked(row.codes, b * blob, k - b * blockSize, bits);
    out[at + k] = (code - getPacked(row.zeroPoints, 0, b, bits)) * row.scales[b]!;
  }
  return out;
}

/** The whole matrix back to float32 [N, K] (tests and references only: this is the size quantisation saves). */
export function dequantizeMatrix(q: QuantizedMatrix): Float32Array {
  const out = new Float32Array(q.rows * q.cols);
  for (let n = 0; n < q.rows; n++) dequantizeRowInto(q, rowOf(q, n), out, n * q.cols);
  return out;
}

/** Concatenates matrices along N (fused projections); they must share K, bits and block size. */
export function concatRows(parts: QuantizedMatrix[]): QuantizedMatrix {
  const first = parts[0]!;
  for (const p of parts) {
    if (p.cols !== first.cols || p.bits !== first.bits || p.blockSize !== first.blockSize) {
      throw new Error(
        `cannot fuse quantised matrices of different layouts (K ${p.cols}/${first.cols}, ` +
          `bits ${p.bits}/${first.bits}, block ${p.blockSize}/${first.blockSize})`,
      );
    }
  }
  if (parts.length === 1) return first;
  const cat = <T extends Uint8Array | Float32Array>(arrays: T[], make: (n: number) => T): T => {
    const out = make(arrays.reduce((n, a) => n + a.length, 0));
    let at = 0;
    for (const a of arrays) {
      out.set(a as never, at);
      at += a.length;
    }
    return out;
  };
  return {
    rows: parts.reduce((n, p) => n + p.rows, 0),
    cols: first.cols,
    bits: first.bits,
    blockSize: first.blockSize,
    codes: cat(
      parts.map((p) => p.codes),
      (n) => new Uint8Array(n),
    ),
    scales: cat(
      parts.map((p) => p.scales),
      (n) => new Float32Array(n),
    ),
    zeroPoints: cat(
      parts.map((p) => p.zeroPoints),
      (n) => new Uint8Array(n),
    ),
  };
}
