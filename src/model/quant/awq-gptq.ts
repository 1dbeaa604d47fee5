/**
 * Pre-quantised checkpoints (AutoAWQ "gemm" and GPTQ, as transformers saves them): a Linear `p` is stored as
 * `p.qweight`, `p.qzeros`, `p.scales` (GPTQ also `p.g_idx`) instead of `p.weight`, and is moved into the
 * MatMulNBits layout of layout.ts code for code, without re-quantising.
 *
 * Layouts (K inputs, N outputs, G = K / group_size groups, pack = 32 / bits values per int32, low bits first):
 *   GPTQ  qweight I32 [K/pack, N]   packed along K: word [i, n] holds k = i·pack + j at bits j·bits
 *         qzeros  I32 [G, N/pack]   packed along N; "gptq" (v1) stores zero − 1, "gptq_v2" the zero itself
 *         scales  F16 [G, N]
 *         g_idx   I32 [K]           group of each input; only the plain k / group_size order is accepted
 *   AWQ   qweight I32 [K, N/8]      packed along N in AWQ's interleaved order: word nibble i holds column
 *                                   8·c + AWQ_ORDER[i]
 *         qzeros  I32 [G, N/8]      same packing; the zero itself
 *         scales  F16 [G, N]
 * In both, W[n, k] = (q[k, n] − zero[g(k), n]) · scale[g(k), n].
 */
import { ModelError } from '../errors.js';
import type { SafetensorsCheckpoint } from '../checkpoint/safetensors.js';
import {
  allocQuantized,
  blobBytes,
  blocksPerRow,
  checkBlockSize,
  putPacked,
  zeroPointBytesPerRow,
  type QuantizedMatrix,
} from './layout.js';

/** AutoAWQ's pack order: nibble i of a word holds column AWQ_ORDER[i] of its group of 8. */
const AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7] as const;

export interface PrequantScheme {
  method: 'awq' | 'gptq';
  bits: 4 | 8;
  groupSize: number; // -1 in the config means one group over all of K
  /** GPTQ: zeros are stored minus one (the original format); false for checkpoint_format "gptq_v2". */
  zeroMinusOne: boolean;
}

/** Reads `quantization_config` of config.json; null when the checkpoint is not pre-quantised. */
export function prequantSchemeFromConfig(config: Record<string, unknown>, file = 'config.json'): PrequantScheme | null {
  const raw = config.quantization_config;
  if (raw === undefined || raw === null) return null;
  if (typeof raw !== 'object' || Array.isArray(raw))
    throw new ModelError(`${file}: field "quantization_config" must be an object`);
  const c = raw as Record<string, unknown>;
  const method = typeof c.quant_method === 'string' ? c.quant_method.toLowerCase() : c.quant_method;
  if (method !== 'awq' && method !== 'gptq') {
    throw new ModelError(
      `${file}: quantization_config.quant_method ${JSON.stringify(c.quant_method)} is not supported (awq and gptq ` +
        `4-bit checkpoints are; or use an unquantised checkpoint with --dtype int8|int4)`,
    );
  }
  const bits = c.bits ?? 4;
  if (method === 'awq' && bits !== 4)
    throw new ModelError(`${file}: quantization_config.bits ${JSON.stringify(bits)}: AWQ checkpoints must be 4-bit`);
  if (bits !== 4 && bits !== 8)
    throw new ModelError(
      `${file}: quantization_config.bits ${JSON.stringify(bits)} is not supported (4, or 8 for GPTQ)`,
    );
  const groupSize = c.group_size ?? c.q_group_size ?? 128;
  if (!Number.isInteger(groupSize) || (groupSize as number) === 0 || (groupSize as number) < -1) {
    throw new ModelError(
      `${file}: quantization_config.group_size ${JSON.stringify(groupSize)} must be a positive integer or -1`,
    );
  }
  if (method === 'awq') {
    const version = typeof c.version === 'string' ? c.version.toLowerCase() : 'gemm';
    if (version !== 'gemm')
      throw new ModelError(
        `${file}: AWQ version ${JSON.stringify(c.version)} is not supported (only "gemm", AutoAWQ's default packing)`,
      );
  }
  if (method === 'gptq' && c.desc_act === true) {
    // Act-order permutes which inputs share a group; MatMulNBits blocks are contiguous runs of K.
    throw new ModelError(
      `${file}: GPTQ with desc_act (act-order) is not supported: its groups are not contiguous runs of inputs; use ` +
        `a checkpoint quantised with desc_act false`,
    );
  }
  const format = typeof c.checkpoint_format === 'string' ? c.checkpoint_format : 'gptq';
  return {
    method,
    bits: bits as 4 | 8,
    groupSize: groupSize as number,
    zeroMinusOne: method === 'gptq' && format !== 'gptq_v2',
  };
}

/** The tensor names standing for `prefix.weight` in a pre-quantised checkpoint. */
const prequantNames = (prefix: string) => ({
  qweight: `${prefix}.qweight`,
  qzeros: `${prefix}.qzeros`,
  scales: `${prefix}.scales`,
  gIdx: `${prefix}.g_idx`,
});

/** `weightName` ("….weight") is stored quantised in this checkpoint. */
export function isPrequantized(ckpt: SafetensorsCheckpoint, weightName: string): boolean {
  return weightName.endsWith('.weight') && ckpt.has(prequantNames(weightName.slice(0, -'.weight'.length)).qweight);
}

/** Checks the tensors standing for `weightName` against the expected [N, K]; returns the block size. */
export function checkPrequantized(
  ckpt: SafetensorsCheckpoint,
  weightName: string,
  shape: readonly number[],
  scheme: PrequantScheme,
): number {
  const [N, K] = shape as [number, number];
  const names = prequantNames(weightName.slice(0, -'.weight'.length));
  const pack = 32 / scheme.bits;
  const blockSize = scheme.groupSize === -1 ? K : scheme.groupSize;
  const where = `${ckpt.dir}: ${names.qweight}`;
  try {
    checkBlockSize(blockSize, `${scheme.method.toUpperCase()} group size`);
  } catch (e) {
    throw new ModelError(`${where}: ${(e as Error).message}`);
  }
  if (K % blockSize !== 0)
    throw new ModelError(`${where}: ${K} inputs are not a whole number of groups of ${blockSize}`);
  const G = K / blockSize;
  const want: [string, number[]][] =
    scheme.method === 'gptq'
      ? [
          [names.qweight, [K / pack, N]],
          [names.qzeros, [G, N / pack]],
          [names.scales, [G, N]],
        ]
      : [
          [names.qweight, [K, N / 8]],
          [names.qzeros, [G, N / 8]],
          [names.scales, [G, N]],
        ];
  if ((scheme.method === 'gptq' ? K : N) % pack !== 0 || N % pack !== 0)
    throw new ModelError(`${where}: a [${N}, ${K}] matrix cannot be packed ${pack} values to an int32`);
  for (const [name, dims] of want) {
    if (!ckpt.has(name))
      throw new ModelError(
        `${ckpt.dir}: tensor "${name}" is missing (a ${scheme.method.toUpperCase()} checkpoint stores ` +
          `${weightName} as qweight, qzeros and scales)`,
      );
    const info = ckpt.info(name);
    const dtypeOk = name === names.scales ? ['F16', 'BF16', 'F32'].includes(info.dtype) : info.dtype === 'I32';
    if (!dtypeOk)
      throw new ModelError(
        `${info.file}: tensor "${name}" is ${info.dtype}; expected ${name === names.scales ? 'F16' : 'I32'}`,
      );
    if (info.shape.join(',') !== dims.join(','))
      throw new ModelError(
        `${info.file}: tensor "${name}" has shape [${info.shape}] but config.json and quantization_config imply ` +
          `[${dims}]`,
      );
  }
  if (ckpt.has(names.gIdx)) {
    const info = ckpt.info(names.gIdx);
    if (info.dtype !== 'I32' || info.shape.join(',') !== String(K))
      throw new ModelError(`${info.file}: tensor "${names.gIdx}" must be I32 [${K}]`);
  }
  return blockSize;
}

/** Reads `weightName`'s quantised tensors into the MatMulNBits layout (rows N, cols K), code for code. */
export function readPrequantized(
  ckpt: SafetensorsCheckpoint,
  weightName: string,
  shape: readonly number[],
  scheme: PrequantScheme,
): QuantizedMatrix {
  const [N, K] = shape as [number, number];
  const blockSize = checkPrequantized(ckpt, weightName, shape, scheme);
  const names = prequantNames(weightName.slice(0, -'.weight'.length));
  const { bits } = scheme;
  const mask = (1 << bits) - 1;
  const pack = 32 / bits;
  const G = K / blockSize;
  const qweight = ckpt.readInt32(names.qweight);
  const qzeros = ckpt.readInt32(names.qzeros);
  const scales = ckpt.readFloat32(names.scales); // [G, N]
  if (ckpt.has(names.gIdx)) {
    const gIdx = ckpt.readInt32(names.gIdx);
    for (let k = 0; k < K; k++) {
      if (gIdx[k] !== Math.floor(k / blockSize)) {
        throw new ModelError(
          `${ckpt.info(names.gIdx).file}: tensor "${names.gIdx}" puts input ${k} in group ${gIdx[k]}, not ` +
            `${Math.floor(k / blockSize)}: act-order (desc_act) GPTQ checkpoints are not supported`,
        );
      }
    }
  }
  const out = allocQuantized(N, K, bits, blockSize);
  const nb = blocksPerRow(K, blockSize); // = G
  const blob = blobBytes(bits, blockSize);
  const zpRow = zeroPointBytesPerRow(nb, bits);
  const awqColumn = new Int32Array(8); // column within a group of 8 → nibble index
  AWQ_ORDER.forEach((col, nibble) => {
    awqColumn[col] = nibble;
  });
  // Value of column n in a row of words packed along N.
  const unpackN = (words: Int32Array, rowWords: number, row: number, n: number) =>
    scheme.method === 'awq'
      ? (words[row * rowWords + (n >> 3)]! >>> (awqColumn[n & 7]! * 4)) & 0xf
      : (words[row * rowWords + Math.floor(n / pack)]! >>> ((n % pack) * bits)) & mask;
  for (let g = 0; g < G; g++) {
    for (let n = 0; n < N; n++) {
      out.scales[n * nb + g] = scales[g * N + n]!;
      const zero = unpackN(qzeros, N / pack, g, n) + (scheme.zeroMinusOne ? 1 : 0);
      if (zero > mask) {
        throw new ModelError(
          `${ckpt.info(names.qzeros).file}: tensor "${names.qzeros}" stores zero point ${zero - 1} (+1 = ${zero}) ` +
            `at group ${g}, output ${n}, which does not fit ${bits} bits (a known GPTQ v1 overflow); this checkpoint ` +
            `is not supported`,
        );
      }
      putPacked(out.zeroPoints, n * zpRow, g, bits, zero);
    }
  }
  for (let k = 0; k < K; k++) {
    const b = Math.floor(k / blockSize);
    const j = k - b * blockSize;
    for (let n = 0; n < N; n++) {
      const code =
        scheme.method === 'awq'
          ? unpackN(qweight, N / 8, k, n)
          : (qweight[Math.floor(k / pack) * N + n]! >>> ((k % pack) * bits)) & mask;
      putPacked(out.codes, (n * nb + b) * blob, j, bits, code);
    }
  }
  return out;
}
