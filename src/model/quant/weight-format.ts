/**
 * The weight format of a cache entry: how its weights are stored and multiplied (WeightFormat), and how
 * `--dtype fp32|fp16|int8|int4` and its options resolve to one (resolveWeightFormat), with the defaults BENCHMARKS.md
 * ("Weight formats") measured. Which linear layers stay at int8 in an int4 format (sensitiveLinears) and which GPTQ
 * places (gptqLinears) are decided here too; cache/decoder-cache.ts applies the format when it writes the entry.
 */
import { ModelError } from '../errors.js';
import type { ModelSpec } from '../families/types.js';
import type { PrequantScheme } from './awq-gptq.js';
import { checkBlockSize, type QuantOptions } from './layout.js';
import { W } from '../graph/decoder-graph.js';
import { cpuHasInt8DotProduct } from '../../util/cpu.js';

export type WeightDType = 'fp32' | 'fp16' | 'int8' | 'int4';
export const WEIGHT_DTYPES: readonly WeightDType[] = ['fp32', 'fp16', 'int8', 'int4'];
const DTYPE_BITS: Readonly<Record<Exclude<WeightDType, 'fp32' | 'fp16'>, 4 | 8>> = { int8: 8, int4: 4 };
/**
 * How int8 linear layers multiply: 'blockwise' = MatMulNBits (8-bit weights in blocks along K with zero
 * points; at accuracy level 4 the activations are rounded to int8 per block); 'rowwise' = W8A8 through
 * MatMulIntegerToFloat (weights int8 per output channel, activations int8 per row, quantised at run time), see
 * graph/quantized-linear.ts emitRowwiseLinear.
 */
export type Int8Kernel = 'rowwise' | 'blockwise';
export const INT8_KERNELS: readonly Int8Kernel[] = ['rowwise', 'blockwise'];

/**
 * How the cache entry stores weights. `quant` null: every float weight stays float32 (linear layers
 * transposed for MatMul). Otherwise every linear layer, the embedding table and the output head are
 * block-quantised with it (MatMulNBits); norms and biases stay float32. `prequant`: the checkpoint's own
 * AWQ/GPTQ codes are kept for the layers it stores quantised (always MatMulNBits, whatever `dtype`), and
 * `dtype` decides what the float rest (embedding, head, unquantised layers) becomes. `accuracyLevel`
 * applies to every MatMulNBits. `quant.int8Kernel` 'rowwise' (int8 only): the linear layers converted here
 * are stored int8 per output channel and multiplied W8A8 (MatMulIntegerToFloat) instead; the embedding table and
 * the head stay block-quantised (MatMulNBits), pre-quantised layers keep their codes.
 */
export interface WeightFormat {
  dtype: WeightDType;
  /**
   * Linear layers; `embedHead`: the embedding table and output head, when stored otherwise (int4 keeps them
   * int8); `sensitive`: the linear layers named by sensitiveLinears, when stored otherwise.
   */
  quant:
    | (Omit<QuantOptions, 'accuracyLevel'> & {
        embedHead?: Omit<QuantOptions, 'accuracyLevel'>;
        sensitive?: Omit<QuantOptions, 'accuracyLevel'> & { rule: string };
        int8Kernel?: Int8Kernel;
        gptq?: GptqCalibration;
      })
    | null;
  prequant: PrequantScheme | null;
  accuracyLevel: QuantOptions['accuracyLevel'];
}
/**
 * int4 `quant.gptq`: the main linear layers' codes are placed by GPTQ (gptq.ts) from `sequences` × `tokens`
 * calibration tokens the model samples itself from its first token (calibration.ts; `seed` fixes the draw).
 */
export interface GptqCalibration {
  sequences: number;
  tokens: number;
  seed: number;
  dampFraction: number;
}

export const FP32_FORMAT: WeightFormat = Object.freeze({
  dtype: 'fp32',
  quant: null,
  prequant: null,
  accuracyLevel: 0,
});

export interface WeightFormatOptions {
  /** Weight storage; default: by model size and device (defaultDType). */
  dtype?: WeightDType;
  /** The load runs on a GPU device that supports this (the default dtype depends on it); absent: the CPU. */
  gpu?: GpuSupport;
  /**
   * Inputs per scale/zero point (power of two ≥ 16); default 128 for int8; 32 for int4, 16 below 20 M parameters
   * (defaultBlockSize).
   */
  blockSize?: number;
  /** MatMulNBits accuracy_level; default 4 (int8 compute) from 0.3 B parameters, 0 (fp32 compute) below. */
  accuracyLevel?: QuantOptions['accuracyLevel'];
  /** int8 only: how the linear layers multiply (Int8Kernel); default defaultInt8Kernel. */
  int8Kernel?: Int8Kernel;
  /** Whether the CPU has int8 dot products (default: read from the CPU, util/cpu.ts); tests set it. */
  int8DotProduct?: boolean;
  /** int4 only: how the 4-bit layers' codes are chosen (Int4Method); default defaultInt4Method. */
  int4Method?: Int4Method;
  /** GPTQ only: calibration size, seed or damping other than DEFAULT_GPTQ_CALIBRATION's. */
  gptqCalibration?: Partial<GptqCalibration>;
}

/**
 * How an int4 format chooses its 4-bit layers' codes: 'rtn' rounds each weight to the nearest level of its
 * block's grid (no data needed); 'gptq' places them with GPTQ from calibration inputs the model samples itself
 * (quant/gptq.ts, calibration.ts), which lowers each layer's output error rather than its weight error.
 */
export type Int4Method = 'rtn' | 'gptq';
export const INT4_METHODS: readonly Int4Method[] = ['rtn', 'gptq'];

/**
 * Calibration of a GPTQ build: 32 sequences × 128 self-sampled tokens, seed 0, damping 1% of the used inputs'
 * mean H[k, k].
 */
const DEFAULT_GPTQ_CALIBRATION: Readonly<GptqCalibration> = Object.freeze({
  sequences: 32,
  tokens: 128,
  seed: 0,
  dampFraction: 0.01,
});

/**
 * GPTQ below GPTQ_DEFAULT_MAX_PARAMETERS, where calibrating costs seconds to a minute or two; round-to-nearest
 * above. GPTQ's cost in JS on one core grows with layers × (tokens·K² + K³) for the down projection's K inputs:
 * measured per layer of the Qwen2.5-0.5B shape (K = 4864) it is ~4 minutes (BENCHMARKS.md "Weight formats"),
 * ~1.5 hours for the model, and a 7B model would take days. For 7B-class judges the accurate int4 path is a
 * published AWQ/GPTQ checkpoint, which loads as it is.
 */
function defaultInt4Method(spec: ModelSpec): Int4Method {
  return parameterCount(spec) < GPTQ_DEFAULT_MAX_PARAMETERS ? 'gptq' : 'rtn';
}
const GPTQ_DEFAULT_MAX_PARAMETERS = 2e7;

/**
 * int4 loses more per block than int8, so its blocks are smaller: a scale per 32 inputs (~0.14 extra bytes a
 * weight).
 */
const DEFAULT_BLOCK_SIZE: Readonly<Record<4 | 8, number>> = { 8: 128, 4: 32 };
/**
 * Below GPTQ_DEFAULT_MAX_PARAMETERS int4 also takes block 16: the weights are tens of MB at most, so the extra
 * scale per 16 weights costs nothing that matters, and with GPTQ it lowers stories260K's mean KL to fp32 from
 * 0.017 to 0.014 (mean of 4 calibration seeds, BENCHMARKS.md "Weight formats").
 */
function defaultBlockSize(bits: 4 | 8, spec: ModelSpec): number {
  return bits === 4 && parameterCount(spec) < GPTQ_DEFAULT_MAX_PARAMETERS ? 16 : DEFAULT_BLOCK_SIZE[bits];
}
/**
 * int8 compute (level 4) is what makes MatMulNBits fast (onnxruntime's fp32-compute path for 8-bit weights
 * dequantises the whole matrix on every call), but it also rounds the activations to int8 per block. Below
 * SMALL_MODEL_PARAMETERS a forward costs milliseconds either way, so small models take the exact path.
 */
function defaultAccuracyLevel(spec: ModelSpec): QuantOptions['accuracyLevel'] {
  return parameterCount(spec) < SMALL_MODEL_PARAMETERS ? 0 : 4;
}
const SMALL_MODEL_PARAMETERS = 3e8;

/** Weights in the linear layers, embedding and head (what the dtype changes the size of). */
export function parameterCount(spec: ModelSpec): number {
  const {
    hiddenSize: D,
    intermediateSize: F,
    numHeads: H,
    numKvHeads: KV,
    headDim: d,
    vocabSize: V,
    numLayers: L,
  } = spec;
  const perLayer = D * (H + 2 * KV) * d + H * d * D + 3 * D * F;
  return L * perLayer + V * D * (spec.tieWordEmbeddings ? 1 : 2);
}

/** What a GPU device runs (the default dtype's input): `halfPrecision`, fp16 shaders (WebGPU's shader-f16). */
export interface GpuSupport {
  halfPrecision: boolean;
}

/** The default dtype of a load and why it is the default (for the log line that announces it). */
export interface DTypeChoice {
  dtype: WeightDType;
  why: string;
}

/**
 * The dtype a model runs at unless told otherwise; `gpu` absent: on the CPU. Pre-quantised checkpoints keep their
 * codes everywhere; this then only picks embedding/head storage (int8).
 *
 * CPU: small models stay fp32 (they are fast already and their matrices too small for block-quantised kernels to
 * pay off); from ~0.3 B parameters int8 is faster at the same judgements; above ~3 B parameters fp32 and int8 no
 * longer fit a 16–24 GB machine next to everything else, so int4.
 *
 * GPU (see gpuDefaultDType): fp16 up to GPU_HALF_MAX_PARAMETERS, int4 above.
 */
export function defaultDType(spec: ModelSpec, prequant: PrequantScheme | null = null, gpu?: GpuSupport): DTypeChoice {
  const n = parameterCount(spec);
  const size = `${formatParameters(n)} parameters`;
  if (prequant)
    return {
      dtype: 'int8',
      why: `the ${prequant.method.toUpperCase()} layers keep their codes; embedding and head int8`,
    };
  if (gpu) return gpuDefaultDType(n, size, gpu);
  if (n < SMALL_MODEL_PARAMETERS) return { dtype: 'fp32', why: `the CPU default below 0.3 B parameters (${size})` };
  if (n < 3e9) return { dtype: 'int8', why: `the CPU default from 0.3 B to 3 B parameters (${size})` };
  return { dtype: 'int4', why: `the CPU default from 3 B parameters (${size})` };
}

/**
 * A GPU's default. fp16 is the type GPUs multiply natively: it halves fp32's weight memory and bandwidth (what a
 * decode step is bound by) with no dequantisation, and it judges as fp32 does (BENCHMARKS.md "Weight formats on the
 * GPU", lavapipe: icl-tiny P(Yes) Spearman against fp32 0.9999, the median of 8 criteria; stories260K next-token
 * agreement 0.997, block-wise int8's 0.994). It stays the default while fp16 weights fit common GPU memory
 * (GPU_HALF_MAX_PARAMETERS); above, int4 (MatMulNBits, dequantised in the shader): a 7B model is 15 GB at fp16 and
 * 7.6 GB at int8, too much for an 8–12 GB card with its KV cache, and 5.4 GiB at int4. int8 gets no range of its
 * own: below the limit fp16 fits and is more accurate, above it int8 does not fit where fp16 did not.
 * Without fp16 shaders (a WebGPU adapter lacking shader-f16) the fp16 range takes what the adapter runs: fp32 for
 * small models (below SMALL_MODEL_PARAMETERS, exact and small anyway), else block-wise int8, about fp16's
 * footprint and as close to fp32 (Spearman 0.9999).
 */
function gpuDefaultDType(n: number, size: string, gpu: GpuSupport): DTypeChoice {
  const halfRange = `below ${formatParameters(GPU_HALF_MAX_PARAMETERS)} parameters`;
  if (n >= GPU_HALF_MAX_PARAMETERS)
    return {
      dtype: 'int4',
      why: `the GPU default from ${formatParameters(GPU_HALF_MAX_PARAMETERS)} parameters (${size})`,
    };
  if (gpu.halfPrecision) return { dtype: 'fp16', why: `the GPU default ${halfRange} (${size})` };
  const dtype = n < SMALL_MODEL_PARAMETERS ? 'fp32' : 'int8';
  return {
    dtype,
    why:
      `fp16 is the GPU default ${halfRange} (${size}), but this device has no fp16 shaders (the WebGPU adapter ` +
      `lacks 'shader-f16'), so ${dtype}`,
  };
}
/**
 * fp16 weights of 3.5 B parameters are 7 GB: an 8 GB card (the common floor of discrete and laptop GPUs) still
 * holds a 3 B model (Qwen2.5-3B: 5.8 GiB) with room for its KV cache and activations; a 7 B model (15 GB) would
 * fill a 16 GB card alone.
 */
const GPU_HALF_MAX_PARAMETERS = 3.5e9;

const formatParameters = (n: number) =>
  n >= 1e8 ? `${Number((n / 1e9).toPrecision(2))} B` : `${Number((n / 1e6).toPrecision(2))} M`;

/**
 * The int8 kernel unless told otherwise: 'rowwise' (W8A8, MatMulIntegerToFloat) from SMALL_MODEL_PARAMETERS,
 * where int8 is the default dtype and MatMulNBits would run at accuracy level 4 (activations rounded to int8
 * anyway); 'blockwise' below, where MatMulNBits runs at level 0 (exact fp32 compute) and speed matters little.
 * Measured (BENCHMARKS.md "Weight formats", 2 AMD EPYC cores, quiet, 2026-11-27) on the Qwen2.5-0.5B shape:
 * a 256-token forward is 2.78× faster than fp32 with rowwise, 1.71× with blockwise; the 32-row shared step
 * 1.93× vs 1.55×; a 1-row decode step is ~1.1× slower than blockwise (2.61× vs 2.82× fp32). Accuracy gates
 * met: stories260K top-1 agreement 0.991 (blockwise level 4: 0.991, level 0: 0.994), icl-tiny P(Yes)
 * Spearman 0.998 (median of 8 criteria). The cost: per-row activation scales are coarser than MatMulNBits'
 * per-block ones, so the Qwen-shape mean KL to fp32 is 0.0011 vs 0.00056, and ~3× blockwise's on a synthetic
 * test with outlier input channels (real LLMs have them). Pass 'blockwise' where that matters more than speed.
 * Only on CPUs with int8 dot products (VNNI/AMX): without them onnxruntime's u8×s8 kernels saturate (util/cpu.ts).
 */
export function defaultInt8Kernel(spec: ModelSpec, int8DotProduct = cpuHasInt8DotProduct()): Int8Kernel {
  return parameterCount(spec) >= SMALL_MODEL_PARAMETERS && int8DotProduct ? 'rowwise' : 'blockwise';
}

function parseWeightDType(v: string, what = '--dtype'): WeightDType {
  if (!(WEIGHT_DTYPES as readonly string[]).includes(v))
    throw new ModelError(`${what} must be one of ${WEIGHT_DTYPES.join(', ')}, got ${JSON.stringify(v)}`);
  return v as WeightDType;
}

export function resolveWeightFormat(
  spec: ModelSpec,
  prequant: PrequantScheme | null,
  opts: WeightFormatOptions = {},
): WeightFormat {
  const dtype = opts.dtype ?? defaultDType(spec, prequant, opts.gpu).dtype;
  parseWeightDType(dtype, 'dtype');
  const accuracyLevel = opts.accuracyLevel ?? defaultAccuracyLevel(spec);
  if (![0, 1, 2, 3, 4].includes(accuracyLevel))
    throw new ModelError(`--accuracy-level must be 0–4, got ${accuracyLevel}`);
  checkKernelOptions(dtype, prequant, opts);
  if (dtype === 'fp16') return halfFormat(prequant, opts);
  if (dtype === 'fp32') {
    if (opts.blockSize !== undefined) throw new ModelError('--block-size applies to --dtype int8 or int4, not fp32');
    if (opts.accuracyLevel !== undefined && !prequant)
      throw new ModelError('--accuracy-level applies to --dtype int8 or int4 (or AWQ/GPTQ checkpoints), not fp32');
    return { dtype, quant: null, prequant, accuracyLevel: prequant ? accuracyLevel : 0 };
  }
  const bits = DTYPE_BITS[dtype];
  const blockSize = opts.blockSize ?? defaultBlockSize(bits, spec);
  try {
    checkBlockSize(blockSize);
  } catch (e) {
    throw new ModelError(`--block-size: ${(e as Error).message}`);
  }
  // int4 keeps the embedding table and output head at int8: on stories260K that took int4's next-token
  // agreement with fp32 from 0.85 to 0.87 (BENCHMARKS.md), for ~0.5 bytes more per vocabulary weight. It also
  // keeps the linear layers of sensitiveLinears() at int8 (see there).
  const int8 = { bits: 8 as const, blockSize: DEFAULT_BLOCK_SIZE[8] };
  // Pre-quantised checkpoints keep their layers' codes (MatMulNBits): no int8 kernel to choose, none in the key
  // or label.
  const int8Kernel =
    dtype === 'int8' && !prequant ? (opts.int8Kernel ?? defaultInt8Kernel(spec, opts.int8DotProduct)) : undefined;
  const gptq = gptqCalibrationOf(spec, dtype, prequant, opts);
  return {
    dtype,
    quant: {
      bits,
      blockSize,
      ...(bits === 4 ? { embedHead: int8, sensitive: { ...int8, rule: SENSITIVE_RULE } } : {}),
      ...(int8Kernel ? { int8Kernel } : {}),
      ...(gptq ? { gptq } : {}),
    },
    prequant,
    accuracyLevel,
  };
}

/**
 * fp16 (GPU devices; decoder.ts refuses it on the CPU): the linear layers, the embedding table and the output head
 * stored and multiplied in half precision; everything else float32 (graph/decoder-ops.ts matmul). Float
 * checkpoints only.
 */
function halfFormat(prequant: PrequantScheme | null, opts: WeightFormatOptions): WeightFormat {
  if (prequant)
    throw new ModelError(
      `--dtype fp16 applies to float checkpoints; this ${prequant.method.toUpperCase()} checkpoint's layers keep ` +
        `their ${prequant.bits}-bit codes (use --dtype int8 or int4)`,
    );
  if (opts.blockSize !== undefined) throw new ModelError('--block-size applies to --dtype int8 or int4, not fp16');
  if (opts.accuracyLevel !== undefined)
    throw new ModelError('--accuracy-level applies to --dtype int8 or int4 (or AWQ/GPTQ checkpoints), not fp16');
  return { dtype: 'fp16', quant: null, prequant: null, accuracyLevel: 0 };
}

/** Refuses --int8-kernel and --int4-method where they do not apply, and rowwise on CPUs that would saturate. */
function checkKernelOptions(dtype: WeightDType, prequant: PrequantScheme | null, opts: WeightFormatOptions): void {
  const keepsCodes = (flag: string) =>
    new ModelError(
      `${flag} applies to linear layers converted here; ` +
        `this ${prequant!.method.toUpperCase()} checkpoint's layers keep their ${prequant!.bits}-bit codes`,
    );
  if (opts.int8Kernel !== undefined && !INT8_KERNELS.includes(opts.int8Kernel))
    throw new ModelError(
      `--int8-kernel must be one of ${INT8_KERNELS.join(', ')}, got ${JSON.stringify(opts.int8Kernel)}`,
    );
  if (opts.int8Kernel !== undefined && dtype !== 'int8')
    throw new ModelError(`--int8-kernel applies to --dtype int8, not ${dtype}`);
  if (opts.int8Kernel !== undefined && prequant) throw keepsCodes('--int8-kernel');
  if (opts.int4Method !== undefined && !INT4_METHODS.includes(opts.int4Method))
    throw new ModelError(
      `--int4-method must be one of ${INT4_METHODS.join(', ')}, got ${JSON.stringify(opts.int4Method)}`,
    );
  if (opts.int4Method !== undefined && dtype !== 'int4')
    throw new ModelError(`--int4-method applies to --dtype int4, not ${dtype}`);
  if (opts.int4Method !== undefined && prequant) throw keepsCodes('--int4-method');
  if (opts.int8Kernel === 'rowwise' && !(opts.int8DotProduct ?? cpuHasInt8DotProduct())) {
    throw new ModelError(
      '--int8-kernel rowwise needs a CPU with int8 dot products (AVX-512 VNNI, AVX-VNNI or AMX): ' +
        "without them onnxruntime's uint8×int8 kernel saturates int16 sums and loses terms; " +
        'use --int8-kernel blockwise',
    );
  }
}

/** The GPTQ calibration of an int4 format whose 4-bit layers GPTQ places; undefined when none does. */
function gptqCalibrationOf(
  spec: ModelSpec,
  dtype: WeightDType,
  prequant: PrequantScheme | null,
  opts: WeightFormatOptions,
): GptqCalibration | undefined {
  // GPTQ places the 4-bit layers; a model of ≤ 2 layers has none (its first and last layers stay int8).
  const hasGptqLayers = gptqLinears(spec).length > 0;
  if (opts.int4Method === 'gptq' && dtype === 'int4' && !prequant && !hasGptqLayers) {
    throw new ModelError(
      `--int4-method gptq: this ${spec.numLayers}-layer model has no 4-bit layers to place ` +
        '(int4 keeps the attention and the first and last layers at int8); use --int4-method rtn',
    );
  }
  const gptqOn =
    dtype === 'int4' && !prequant && hasGptqLayers && (opts.int4Method ?? defaultInt4Method(spec)) === 'gptq';
  if (opts.gptqCalibration && !gptqOn)
    throw new ModelError('a GPTQ calibration was given, but the format is not int4 with --int4-method gptq');
  return gptqOn ? checkCalibration({ ...DEFAULT_GPTQ_CALIBRATION, ...opts.gptqCalibration }) : undefined;
}

function checkCalibration(c: GptqCalibration): GptqCalibration {
  for (const k of ['sequences', 'tokens'] as const)
    if (!Number.isInteger(c[k]) || c[k] < 1)
      throw new ModelError(`GPTQ calibration ${k} must be a positive integer, got ${c[k]}`);
  if (c.tokens < 2) throw new ModelError(`GPTQ calibration tokens must be at least 2, got ${c.tokens}`);
  if (!Number.isInteger(c.seed) || c.seed < 0)
    throw new ModelError(`GPTQ calibration seed must be a non-negative integer, got ${c.seed}`);
  if (!(c.dampFraction > 0 && c.dampFraction < 1))
    throw new ModelError(`GPTQ calibration dampFraction must be in (0, 1), got ${c.dampFraction}`);
  return c;
}

/**
 * Names sensitiveLinears' rule in the format, so in the cache key and criterion metadata: rename it when the
 * rule changes.
 */
const SENSITIVE_RULE = 'attention+first-last-layers';

/** The linear layers a GPTQ format places with calibration: the main (4-bit) ones, all but sensitiveLinears. */
export function gptqLinears(spec: Pick<ModelSpec, 'numLayers'>): string[] {
  const sensitive = sensitiveLinears(spec);
  const out: string[] = [];
  for (let l = 0; l < spec.numLayers; l++)
    for (const n of [W.qkv(l), W.o(l), W.gateUp(l), W.down(l)]) if (!sensitive.has(n)) out.push(n);
  return out;
}

/**
 * The linear layers an int4 format stores at `quant.sensitive` (int8) instead of 4 bits, by graph weight name:
 *   - the attention projections (q|k|v and o) of every layer. With grouped-query attention they are a small
 *     share of the weights (13% on Qwen2.5-7B), their errors pass through every softmax, and the o_proj input
 *     is the head tap the activation RM reads and patches;
 *   - every linear layer of the first and the last layer. The first layer's error reaches every later layer,
 *     and the last layer's error reaches the logits with no later layer to average it out (llama.cpp's
 *     Q4_K_M gives its edge layers more bits for the same reason).
 * Measured (BENCHMARKS.md "Weight formats"): on stories260K it cuts int4's mean KL to fp32 from 0.072 to 0.025
 * (top-1 agreement 0.885 → 0.927); on Qwen2.5-7B it costs 0.45 GiB of weights.bin (4.95 → 5.40 GiB). The
 * middle layers' gate|up and down stay int4: they are most of a large model's weights.
 */
export function sensitiveLinears(spec: Pick<ModelSpec, 'numLayers'>): Set<string> {
  const names = new Set<string>();
  for (let l = 0; l < spec.numLayers; l++) {
    names.add(W.qkv(l));
    names.add(W.o(l));
    if (l === 0 || l === spec.numLayers - 1) {
      names.add(W.gateUp(l));
      names.add(W.down(l));
    }
  }
  return names;
}

/**
 * A short label of the format for logs and criterion metadata, e.g. "int4 (block 32, accuracy level 4)",
 * "int8 (rowwise W8A8 linear layers, embedding and head block 128, accuracy level 4)".
 */
export function describeWeightFormat(f: WeightFormat): string {
  const parts: string[] = [];
  if (f.quant?.int8Kernel === 'rowwise')
    parts.push('rowwise W8A8 linear layers', `embedding and head block ${f.quant.blockSize}`);
  else if (f.quant?.int8Kernel === 'blockwise') parts.push('blockwise', `block ${f.quant.blockSize}`);
  else if (f.quant) parts.push(`block ${f.quant.blockSize}`);
  if (f.quant?.sensitive)
    parts.push(`attention and first/last layers int${f.quant.sensitive.bits} (block ${f.quant.sensitive.blockSize})`);
  if (f.quant?.gptq) parts.push(`GPTQ on ${f.quant.gptq.sequences}×${f.quant.gptq.tokens} self-sampled tokens`);
  if (f.quant || f.prequant) parts.push(`accuracy level ${f.accuracyLevel}`);
  if (f.prequant)
    parts.push(`${f.prequant.method.toUpperCase()} ${f.prequant.bits}-bit layers, group ${f.prequant.groupSize}`);
  if (f.dtype === 'fp16') parts.push('linear layers, embedding and head; norms, attention and residual stream fp32');
  return parts.length ? `${f.dtype} (${parts.join(', ')})` : f.dtype;
}
