/**
 * Checkpoint → cached ONNX model on disk: `model.onnx` (the graph) next to `weights.bin` (every weight as
 * float32 external data, transposed for MatMul and fused where the graph fuses). The cache entry is keyed
 * by config + weights fingerprint + graph version and written into a temporary folder that is renamed
 * into place at the end, so a killed build never leaves a half-written entry behind.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createHash } from 'node:crypto';
import { defaultCacheDir, ensureCacheEntry, PAGE_ALIGN, transposed } from './entry.js';
import {
  emitDecoderGraph,
  GRAPH_VERSION,
  HEAD_CHUNK_BYTES,
  headChunks,
  W,
  type LinearInputSite,
} from '../graph/decoder-graph.js';
import { expectedTensors, type ModelSpec } from '../families/spec.js';
import { ModelError } from '../errors.js';
import type { SafetensorsCheckpoint } from '../checkpoint/safetensors.js';
import type { ExternalRef } from '../graph/graph-builder.js';
import {
  blobBytes,
  blocksPerRow,
  concatRows,
  QUANTIZER_VERSION,
  quantizeMatrix,
  quantizeRowwise,
  quantNames,
  rowwiseNames,
  sliceRows,
  zeroPointBytesPerRow,
  type Int8Kernel,
  type QuantizedMatrix,
  type QuantOptions,
  type WeightDType,
} from '../graph/quantized-linear.js';
import { checkPrequantized, isPrequantized, readPrequantized, type PrequantScheme } from '../quant/awq-gptq.js';
import { parameterCount, sensitiveLinears } from '../quant/weight-format.js';
import { QuantizePool } from '../quant/quantize-pool.js';
import { GPTQ_VERSION, gptqQuantize } from '../quant/gptq.js';

export const MODEL_FILE = 'model.onnx';
export const DATA_FILE = 'weights.bin';
/** Where the embedding rows lie in weights.bin (the graph takes embeddings, JS looks them up). */
export const LAYOUT_FILE = 'layout.json';

export interface Layout {
  embed: {
    offset: number;
    rows: number;
    cols: number;
    /**
     * Present when the table is block-quantised: `offset` is then its codes [V, nBlocks, blob] (quantized-linear.ts).
     */
    quant?: { bits: 4 | 8; blockSize: number; scalesOffset: number; zeroPointsOffset: number };
  };
}

/**
 * How the cache entry stores weights. `quant` null: every float weight stays float32 (linear layers
 * transposed for MatMul). Otherwise every linear layer, the embedding table and the output head are
 * block-quantised with it (MatMulNBits); norms and biases stay float32. `prequant`: the checkpoint's own
 * AWQ/GPTQ codes are kept for the layers it stores quantised (always MatMulNBits, whatever `dtype`), and
 * `dtype` decides what the float rest (embedding, head, unquantised layers) becomes. `accuracyLevel`
 * applies to every MatMulNBits. `quant.int8Kernel` 'rowwise' (int8 only): the linear layers converted here
 * are stored int8 per output channel and multiplied W8A8 (MatMulIntegerToFloat) instead; the embedding table and the
 * head stay block-quantised (MatMulNBits), pre-quantised layers keep their codes.
 */
export interface WeightFormat {
  dtype: WeightDType;
  /**
   * Linear layers; `embedHead`: the embedding table and output head, when stored otherwise (int4 keeps them
   * int8); `sensitive`: the linear layers named by weight-format.ts's sensitiveLinears, when stored otherwise.
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
 * int4 `quant.gptq`: the main linear layers' codes are placed by GPTQ (quant/gptq.ts) from `sequences` × `tokens`
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

/** The part of the cache key that names the format; empty for plain fp32 so existing entries stay valid. */
function formatKey(f: WeightFormat): string {
  if (!f.quant && !f.prequant) return '';
  const eh =
    (f.quant?.embedHead ? `:${f.quant.embedHead.bits}:${f.quant.embedHead.blockSize}` : '') +
    (f.quant?.sensitive ? `:${f.quant.sensitive.rule}:${f.quant.sensitive.bits}:${f.quant.sensitive.blockSize}` : '');
  // Only 'rowwise' is named, so block-wise int8 entries built before the option existed keep their keys.
  const kernel = f.quant?.int8Kernel === 'rowwise' ? ':rowwise' : '';
  const g = f.quant?.gptq;
  const gptq = g
    ? `:gptq:${g.sequences}x${g.tokens}:${g.seed}:${g.dampFraction}:${CALIBRATION_VERSION}:${GPTQ_VERSION}`
    : '';
  const q = `${f.quant ? `${f.quant.bits}:${f.quant.blockSize}${eh}${kernel}${gptq}` : 'f32'}:${f.accuracyLevel}`;
  const pq = f.prequant
    ? `:${f.prequant.method}:${f.prequant.bits}:${f.prequant.groupSize}:${f.prequant.zeroMinusOne}`
    : '';
  return `:${f.dtype}:${q}${pq}:${QUANTIZER_VERSION}`;
}
/**
 * Joins a GPTQ entry's key (with gptq.ts's GPTQ_VERSION): bump it when calibration.ts changes how calibration tokens
 * are drawn or summed.
 */
export const CALIBRATION_VERSION = 'self-sampled/1';
const ALIGN = PAGE_ALIGN;
export { defaultCacheDir };

export function cacheKey(
  configText: string,
  weightsFingerprint: string,
  headChunkBytes = HEAD_CHUNK_BYTES,
  format: WeightFormat = FP32_FORMAT,
): string {
  return createHash('sha256')
    .update(`${GRAPH_VERSION}:${headChunkBytes}${formatKey(format)}`)
    .update('\0')
    .update(configText)
    .update('\0')
    .update(weightsFingerprint)
    .digest('hex')
    .slice(0, 24);
}

/**
 * Checks names, shapes of every tensor the spec needs, and that the checkpoint holds no layer beyond
 * config.json's num_hidden_layers (those would be silently dropped); other extra tensors (e.g. rotary
 * caches) are ignored.
 */
export function validateCheckpoint(
  spec: ModelSpec,
  ckpt: SafetensorsCheckpoint,
  prequant: PrequantScheme | null = null,
): void {
  const layers = new Set<number>();
  for (const name of ckpt.names()) {
    const m = /^model\.layers\.(\d+)\./.exec(name);
    if (m) layers.add(Number(m[1]));
  }
  const beyond = [...layers].filter((l) => l >= spec.numLayers).sort((a, b) => a - b);
  if (beyond.length > 0) {
    const found = [...layers].sort((a, b) => a - b);
    const list =
      found.length === found[found.length - 1]! + 1
        ? `${found.length} layers (model.layers.0 to model.layers.${found.length - 1})`
        : `layers ${found.join(', ')}`;
    throw new ModelError(
      `${path.join(ckpt.dir, 'config.json')}: num_hidden_layers is ${spec.numLayers} but the checkpoint holds ${list}; expected num_hidden_layers to match the model.layers.N tensors`,
    );
  }
  for (const [name, shape] of expectedTensors(spec)) {
    if (prequant && !ckpt.has(name) && isPrequantized(ckpt, name)) {
      checkPrequantized(ckpt, name, shape, prequant);
      continue;
    }
    if (!ckpt.has(name)) {
      const hint = name === 'lm_head.weight' ? ' (config says tie_word_embeddings is false)' : '';
      throw new ModelError(`${ckpt.dir}: tensor "${name}" is missing from the checkpoint${hint}`);
    }
    const info = ckpt.info(name);
    if (info.shape.join(',') !== shape.join(',')) {
      throw new ModelError(
        `${info.file}: tensor "${name}" has shape [${info.shape}] but config.json implies [${shape}]`,
      );
    }
  }
}

export interface BuildProgress {
  (done: number, total: number, what: string): void;
}

/** Builds the cache entry if missing; returns the folder holding model.onnx and weights.bin. */
export function ensureCachedModel(
  spec: ModelSpec,
  ckpt: SafetensorsCheckpoint,
  key: string,
  cacheDir: string,
  onProgress?: BuildProgress,
  headChunkBytes = HEAD_CHUNK_BYTES,
  format: WeightFormat = FP32_FORMAT,
  threads = os.availableParallelism(),
  hessians?: Map<string, Float64Array>,
): { dir: string; built: boolean } {
  return ensureCacheEntry(path.join(cacheDir, 'graphs', key), [MODEL_FILE, DATA_FILE, LAYOUT_FILE], (tmp) => {
    // Block quantisation is most of a quantised build (a 7B int4 build ~95%): spread it over the cores, for
    // models big enough that starting worker threads pays (bit-for-bit the same entry either way).
    const pool =
      format.quant && parameterCount(spec) >= POOL_MIN_PARAMETERS
        ? QuantizePool.open(Math.min(threads, MAX_POOL_THREADS))
        : null;
    try {
      writeModel(spec, ckpt, tmp, headChunkBytes, format, onProgress, pool, { hessians });
    } finally {
      void pool?.close();
    }
  });
}

/** True when the entry for `key` is already built (a GPTQ build calibrates only when it is not). */
export function cachedModelExists(cacheDir: string, key: string): boolean {
  const dir = path.join(cacheDir, 'graphs', key);
  return [MODEL_FILE, DATA_FILE, LAYOUT_FILE].every((f) => fs.existsSync(path.join(dir, f)));
}

/**
 * An fp32 model in `dir` (model.onnx, weights.bin, layout.json; not a cache entry) whose graph also outputs the
 * inputs of the given linear layers over all positions (decoder-graph.ts linearInputSites): GPTQ's calibration model.
 */
export function writeCalibrationModel(
  spec: ModelSpec,
  ckpt: SafetensorsCheckpoint,
  dir: string,
  sites: readonly LinearInputSite[],
): void {
  writeModel(spec, ckpt, dir, HEAD_CHUNK_BYTES, FP32_FORMAT, undefined, null, { siteOutputs: sites });
}

/** Below this many weights a quantised build takes seconds: no worker threads. */
const POOL_MIN_PARAMETERS = 5e7;
/** Each worker is a V8 isolate (tens of MB) and the build also reads and writes: more threads stop paying. */
const MAX_POOL_THREADS = 8;

/** A quantised matrix's three arrays in weights.bin. */
interface QuantRefs {
  codes: ExternalRef;
  scales: ExternalRef;
  zeroPoints: ExternalRef;
  rows: number;
  cols: number;
  bits: 4 | 8;
  blockSize: number;
}

/**
 * `extra.hessians`: Xᵀ X of each linear layer's calibration inputs by graph weight name, for the layers a
 * GPTQ format quantises at 4 bits (calibration.ts); `extra.siteOutputs`: linear inputs the graph also outputs.
 */
function writeModel(
  spec: ModelSpec,
  ckpt: SafetensorsCheckpoint,
  outDir: string,
  headChunkBytes: number,
  format: WeightFormat,
  onProgress?: BuildProgress,
  pool: QuantizePool | null = null,
  extra: { hessians?: Map<string, Float64Array>; siteOutputs?: readonly LinearInputSite[] } = {},
): void {
  const quantize = (w: Float32Array, rows: number, cols: number, opts: Pick<QuantOptions, 'bits' | 'blockSize'>) =>
    pool ? pool.quantize(w, rows, cols, opts) : quantizeMatrix(w, rows, cols, opts);
  // GPTQ places the main (4-bit) linear layers' codes; the sensitive ones, the embedding and the head round to nearest.
  const quantizeLinear = (name: string, w: Float32Array, rows: number, cols: number, sensitiveLayer: boolean) => {
    const quant = format.quant!;
    if (sensitiveLayer || !quant.gptq) return quantize(w, rows, cols, sensitiveLayer ? quant.sensitive! : quant);
    const h = extra.hessians?.get(name);
    if (!h)
      throw new ModelError(
        `the GPTQ build of ${name} has no calibration inputs (was the cache entry removed while it was loading?); load the model again`,
      );
    extra.hessians!.delete(name); // each Xᵀ X is used once: free it for the rest of the build
    return gptqQuantize(w, rows, cols, h, {
      bits: quant.bits,
      blockSize: quant.blockSize,
      dampFraction: quant.gptq.dampFraction,
    });
  };
  const producers = weightProducers(spec, ckpt, format.prequant);
  const fd = fs.openSync(path.join(outDir, DATA_FILE), 'w');
  const refs = new Map<string, ExternalRef>();
  const quantRefs = new Map<string, QuantRefs>();
  let offset = 0;
  const rowwiseRefs = new Map<string, { codes: ExternalRef; scales: ExternalRef; rows: number; cols: number }>();
  const write = (
    name: string,
    data: ArrayBufferView,
    dims: number[],
    elemType: ExternalRef['elemType'] = 'FLOAT',
  ): ExternalRef => {
    const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    fs.writeSync(fd, bytes, 0, bytes.length, offset);
    const ref: ExternalRef = { name, dims, offset, length: bytes.length, elemType };
    offset = Math.ceil((offset + bytes.length) / ALIGN) * ALIGN;
    return ref;
  };
  const writeQuantized = (name: string, q: QuantizedMatrix) => {
    const n = quantNames(name);
    const nb = blocksPerRow(q.cols, q.blockSize);
    quantRefs.set(name, {
      codes: write(n.codes, q.codes, [q.rows, nb, blobBytes(q.bits, q.blockSize)], 'UINT8'),
      scales: write(n.scales, q.scales, [q.scales.length]),
      zeroPoints: write(n.zeroPoints, q.zeroPoints, [q.zeroPoints.length], 'UINT8'),
      rows: q.rows,
      cols: q.cols,
      bits: q.bits,
      blockSize: q.blockSize,
    });
  };
  const writeRowwise = (name: string, w: Float32Array, rows: number, cols: number) => {
    const q = quantizeRowwise(w, rows, cols);
    const n = rowwiseNames(name);
    rowwiseRefs.set(name, {
      codes: write(n.codes, q.codes, [cols, rows], 'INT8'),
      scales: write(n.scales, q.scales, [rows]),
      rows,
      cols,
    });
  };
  const rowwise = format.quant?.int8Kernel === 'rowwise';
  // The embedding table and a separate output head are [V, D] = [N, K] already: quantised as they are.
  const quantizedAsIs = new Set<string>(format.quant ? [W.embed, W.lmHead] : []);
  const sensitive = format.quant?.sensitive ? sensitiveLinears(spec) : new Set<string>();
  try {
    let done = 0;
    for (const [name, produce] of producers) {
      const p = produce();
      if ('quantized' in p) {
        writeQuantized(name, p.quantized);
      } else if ('linear' in p) {
        if (format.quant && rowwise && !sensitive.has(name)) writeRowwise(name, p.linear, p.rows, p.cols);
        else if (format.quant)
          writeQuantized(name, quantizeLinear(name, p.linear, p.rows, p.cols, sensitive.has(name)));
        else refs.set(name, write(name, transposed(p.linear, p.rows, p.cols), [p.cols, p.rows]));
      } else if (quantizedAsIs.has(name)) {
        writeQuantized(name, quantize(p.data, p.dims[0]!, p.dims[1]!, format.quant!.embedHead ?? format.quant!));
      } else {
        refs.set(name, write(name, p.data, p.dims));
      }
      onProgress?.(++done, producers.size, name);
    }
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  // The head's row blocks are views of bytes already written (embed_tokens when tied, else lm_head).
  const headName = spec.tieWordEmbeddings ? W.embed : W.lmHead;
  const qHead = quantRefs.get(headName);
  if (qHead) {
    const nb = blocksPerRow(qHead.cols, qHead.blockSize);
    const per = {
      codes: nb * blobBytes(qHead.bits, qHead.blockSize),
      scales: nb * 4,
      zeroPoints: zeroPointBytesPerRow(nb, qHead.bits),
    };
    headChunks(spec, headChunkBytes).forEach(([start, end], i) => {
      const view = (r: ExternalRef, bytesPerRow: number, dims: number[], suffix: string): ExternalRef => ({
        name: W.headChunk(i) + suffix,
        dims,
        offset: r.offset + start * bytesPerRow,
        length: (end - start) * bytesPerRow,
        elemType: r.elemType,
      });
      const rows = end - start;
      quantRefs.set(W.headChunk(i), {
        codes: view(qHead.codes, per.codes, [rows, nb, per.codes / nb], '.q'),
        scales: view(qHead.scales, per.scales, [rows * nb], '.scales'),
        zeroPoints: view(qHead.zeroPoints, per.zeroPoints, [rows * per.zeroPoints], '.zp'),
        rows,
        cols: qHead.cols,
        bits: qHead.bits,
        blockSize: qHead.blockSize,
      });
    });
  } else {
    const head = refs.get(headName)!;
    const rowBytes = spec.hiddenSize * 4;
    headChunks(spec, headChunkBytes).forEach(([start, end], i) => {
      refs.set(W.headChunk(i), {
        name: W.headChunk(i),
        dims: [end - start, spec.hiddenSize],
        offset: head.offset + start * rowBytes,
        length: (end - start) * rowBytes,
      });
    });
  }
  const graph = emitDecoderGraph(
    spec,
    (g, name) => {
      const ref = refs.get(name);
      if (!ref) throw new Error(`internal: graph uses weight ${name} that was not exported`);
      return g.externalWeight(ref, DATA_FILE);
    },
    headChunkBytes,
    {
      accuracyLevel: format.accuracyLevel,
      ref: (g, name) => {
        const r = rowwiseRefs.get(name);
        if (r)
          return {
            kind: 'rowwise',
            codes: g.externalWeight(r.codes, DATA_FILE),
            scales: g.externalWeight(r.scales, DATA_FILE),
            rows: r.rows,
            cols: r.cols,
          };
        const q = quantRefs.get(name);
        if (!q) return null;
        return {
          codes: g.externalWeight(q.codes, DATA_FILE),
          scales: g.externalWeight(q.scales, DATA_FILE),
          zeroPoints: g.externalWeight(q.zeroPoints, DATA_FILE),
          rows: q.rows,
          cols: q.cols,
          bits: q.bits,
          blockSize: q.blockSize,
        };
      },
    },
    {},
    extra.siteOutputs,
  );
  const bytes = graph.toBytes(`${spec.family} decoder with last-position head taps and patches`, {
    graph_version: GRAPH_VERSION,
    family: spec.family,
    weight_dtype: format.dtype,
    ...(format.quant?.int8Kernel ? { int8_kernel: format.quant.int8Kernel } : {}),
  });
  fs.writeFileSync(path.join(outDir, MODEL_FILE), bytes);
  const qEmbed = quantRefs.get(W.embed);
  const embed = qEmbed?.codes ?? refs.get(W.embed)!;
  const layout: Layout = {
    embed: {
      offset: embed.offset,
      rows: embed.dims[0]!,
      cols: qEmbed ? qEmbed.cols : embed.dims[1]!,
      ...(qEmbed
        ? {
            quant: {
              bits: qEmbed.bits,
              blockSize: qEmbed.blockSize,
              scalesOffset: qEmbed.scales.offset,
              zeroPointsOffset: qEmbed.zeroPoints.offset,
            },
          }
        : {}),
    },
  };
  fs.writeFileSync(path.join(outDir, LAYOUT_FILE), JSON.stringify(layout));
}

/**
 * A weight as the writer receives it: float data as stored; a linear layer as HF rows [N = out, K = in]
 * (the writer transposes it for MatMul or quantises it); or a pre-quantised linear layer (AWQ/GPTQ).
 */
type Produced =
  | { data: Float32Array; dims: number[] }
  | { linear: Float32Array; rows: number; cols: number }
  | { quantized: QuantizedMatrix };

/** The graph's weights, each as a function that reads and lays it out (so only one is in memory at a time). */
function weightProducers(
  spec: ModelSpec,
  ckpt: SafetensorsCheckpoint,
  prequant: PrequantScheme | null,
): Map<string, () => Produced> {
  // Every checkpoint tensor passes through here exactly once while the entry is built, so this is the one
  // cheap place to refuse NaN/Inf weights (they would otherwise surface as NaN scores and no error).
  const read = (name: string) => {
    const data = ckpt.readFloat32(name);
    let bad = 0;
    for (let i = 0; i < data.length; i++) if (!Number.isFinite(data[i]!)) bad++;
    if (bad > 0)
      throw new ModelError(
        `${ckpt.info(name).file}: tensor "${name}" holds ${bad} non-finite value${bad === 1 ? '' : 's'} (NaN or ±Inf) of ${data.length}; expected finite weights`,
      );
    return data;
  };
  const asIs =
    (name: string): (() => Produced) =>
    () => ({ data: read(name), dims: ckpt.info(name).shape });
  const concat =
    (names: string[]): (() => Produced) =>
    () => {
      const parts = names.map(read);
      const out = new Float32Array(parts.reduce((n, p) => n + p.length, 0));
      let at = 0;
      for (const p of parts) {
        out.set(p, at);
        at += p.length;
      }
      return { data: out, dims: [out.length] };
    };
  // HF Linear weights are [out, in]; several projections fuse along `out` (rows). The writer transposes
  // the result to MatMul's [in, out] (fp32) or quantises it as it is (MatMulNBits takes [out, in]).
  const expected = expectedTensors(spec);
  const transposedConcat =
    (names: string[]): (() => Produced) =>
    () => {
      const shapeOf = (n: string) => expected.get(n) ?? ckpt.info(n).shape;
      if (prequant && names.some((n) => isPrequantized(ckpt, n))) {
        if (!names.every((n) => isPrequantized(ckpt, n)))
          throw new ModelError(
            `${ckpt.dir}: ${names.join(', ')} are fused by the graph but only some are stored quantised`,
          );
        return { quantized: concatRows(names.map((n) => readPrequantized(ckpt, n, shapeOf(n), prequant))) };
      }
      const shapes = names.map((n) => ckpt.info(n).shape as [number, number]);
      const cols = shapes[0]![1];
      const rows = shapes.reduce((n, s) => n + s[0], 0);
      const out = new Float32Array(rows * cols);
      let at = 0;
      for (const n of names) {
        const src = read(n);
        out.set(src, at);
        at += src.length;
      }
      return { linear: out, rows, cols };
    };
  // RMSNorm weights as the graph multiplies by them: Gemma's (1 + w), summed in float32 as transformers does.
  const norm = (name: string): (() => Produced) =>
    spec.normOffset === 0
      ? asIs(name)
      : () => {
          const data = read(name);
          for (let i = 0; i < data.length; i++) data[i] = spec.normOffset + data[i]!;
          return { data, dims: ckpt.info(name).shape };
        };
  const m = new Map<string, () => Produced>();
  m.set(W.embed, asIs('model.embed_tokens.weight'));
  if (!spec.tieWordEmbeddings) m.set(W.lmHead, asIs('lm_head.weight'));
  m.set(W.finalNorm, norm('model.norm.weight'));
  for (let l = 0; l < spec.numLayers; l++) {
    const a = `model.layers.${l}.self_attn`;
    const mlp = `model.layers.${l}.mlp`;
    const ln = `model.layers.${l}`;
    m.set(W.ln1(l), norm(`${ln}.input_layernorm.weight`));
    if (spec.sandwichNorms) {
      // Gemma 2/3: post_attention_layernorm normalises the o_proj output; the pre-MLP norm is pre_feedforward.
      m.set(W.ln1Post(l), norm(`${ln}.post_attention_layernorm.weight`));
      m.set(W.ln2(l), norm(`${ln}.pre_feedforward_layernorm.weight`));
      m.set(W.ln2Post(l), norm(`${ln}.post_feedforward_layernorm.weight`));
    } else {
      m.set(W.ln2(l), norm(`${ln}.post_attention_layernorm.weight`));
    }
    // Phi-3 stores q|k|v and gate|up already fused along `out`, in the order the graph splits them.
    if (spec.fusedProjections) {
      m.set(W.qkv(l), transposedConcat([`${a}.qkv_proj.weight`]));
      if (spec.qkvBias) m.set(W.qkvBias(l), asIs(`${a}.qkv_proj.bias`));
    } else {
      m.set(W.qkv(l), transposedConcat([`${a}.q_proj.weight`, `${a}.k_proj.weight`, `${a}.v_proj.weight`]));
      if (spec.qkvBias) m.set(W.qkvBias(l), concat([`${a}.q_proj.bias`, `${a}.k_proj.bias`, `${a}.v_proj.bias`]));
    }
    if (spec.qkNorm) {
      m.set(W.qNorm(l), norm(`${a}.q_norm.weight`));
      m.set(W.kNorm(l), norm(`${a}.k_norm.weight`));
    }
    m.set(W.o(l), transposedConcat([`${a}.o_proj.weight`]));
    if (spec.oBias) m.set(W.oBias(l), asIs(`${a}.o_proj.bias`));
    if (spec.fusedProjections) {
      m.set(W.gateUp(l), transposedConcat([`${mlp}.gate_up_proj.weight`]));
      if (spec.mlpBias) m.set(W.gateUpBias(l), asIs(`${mlp}.gate_up_proj.bias`));
    } else {
      m.set(W.gateUp(l), transposedConcat([`${mlp}.gate_proj.weight`, `${mlp}.up_proj.weight`]));
      if (spec.mlpBias) m.set(W.gateUpBias(l), concat([`${mlp}.gate_proj.bias`, `${mlp}.up_proj.bias`]));
    }
    m.set(W.down(l), transposedConcat([`${mlp}.down_proj.weight`]));
    if (spec.mlpBias) m.set(W.downBias(l), asIs(`${mlp}.down_proj.bias`));
  }
  return m;
}
