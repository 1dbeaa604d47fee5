/**
 * Checkpoint → cached ONNX model on disk: `model.onnx` (the graph) next to `weights.bin` (every weight as
 * external data: float32, transposed for MatMul and fused where the graph fuses, or quantised as the weight
 * format says) and `layout.json` (where the embedding rows lie, for lookups in JS). The cache entry is keyed
 * by config + weights fingerprint + graph version + weight format and written into a temporary folder that is
 * renamed into place at the end (entry.ts), so a killed build never leaves a half-written entry behind.
 *
 * Which checkpoint tensors make each graph weight is decoder-weights.ts; which weight is quantised how is
 * quant/weight-format.ts (the format) applied here: round-to-nearest (quant/round-to-nearest.ts, on the
 * quantise pool's threads for big models), GPTQ for the main 4-bit layers of a GPTQ format (quant/gptq.ts, with
 * the calibration decoder.ts ran first), pre-quantised AWQ/GPTQ codes kept as they are (quant/awq-gptq.ts).
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createHash } from 'node:crypto';
import { ensureCacheEntry, PAGE_ALIGN, transposed } from './entry.js';
import { weightProducers, type Produced } from './decoder-weights.js';
import {
  emitDecoderGraph,
  GRAPH_VERSION,
  HEAD_CHUNK_BYTES,
  headChunks,
  W,
  type LinearInputSite,
} from '../graph/decoder-graph.js';
import type { ModelSpec } from '../families/types.js';
import { ModelError } from '../errors.js';
import type { SafetensorsCheckpoint } from '../checkpoint/safetensors.js';
import type { ExternalRef, GraphBuilder } from '../graph/graph-builder.js';
import type { AttentionLayout } from '../graph/causal-attention.js';
import { quantNames, rowwiseNames, type QuantizedWeightRef, type RowwiseWeightRef } from '../graph/quantized-linear.js';
import {
  blobBytes,
  blocksPerRow,
  zeroPointBytesPerRow,
  type QuantizedMatrix,
  type QuantOptions,
} from '../quant/layout.js';
import { QUANTIZER_VERSION, quantizeMatrix, quantizeRowwise, type RowwiseMatrix } from '../quant/round-to-nearest.js';
import { FP32_FORMAT, parameterCount, sensitiveLinears, type WeightFormat } from '../quant/weight-format.js';
import { QuantizePool } from '../quant/quantize-pool.js';
import { toHalf } from '../quant/half.js';
import { GPTQ_VERSION, gptqQuantize } from '../quant/gptq.js';
import { CALIBRATION_VERSION } from '../quant/calibration.js';

export const MODEL_FILE = 'model.onnx';
export const DATA_FILE = 'weights.bin';
/** Where the embedding rows lie in weights.bin (the graph takes embeddings, JS looks them up). */
export const LAYOUT_FILE = 'layout.json';
const ENTRY_FILES = [MODEL_FILE, DATA_FILE, LAYOUT_FILE];

export interface Layout {
  embed: {
    offset: number;
    rows: number;
    cols: number;
    /** Present when the table is block-quantised: `offset` is then its codes [V, nBlocks, blob] (quant/layout.ts). */
    quant?: { bits: 4 | 8; blockSize: number; scalesOffset: number; zeroPointsOffset: number };
    /** 'fp16': the rows are half precision (`--dtype fp16`); absent: float32. */
    dtype?: 'fp16';
  };
}

/** The folder of decoder graph entries under a cache root (`<cacheDir>/graphs/<key>/`). */
export function graphsDir(cacheDir: string): string {
  return path.join(cacheDir, 'graphs');
}

/** The part of the cache key that names the format; empty for plain fp32 so existing entries stay valid. */
function formatKey(f: WeightFormat): string {
  if (f.dtype === 'fp16') return ':fp16';
  if (!f.quant && !f.prequant) return '';
  // The embedding/head and sensitive layers' layouts, where they differ from the main one.
  const others =
    (f.quant?.embedHead ? `:${f.quant.embedHead.bits}:${f.quant.embedHead.blockSize}` : '') +
    (f.quant?.sensitive ? `:${f.quant.sensitive.rule}:${f.quant.sensitive.bits}:${f.quant.sensitive.blockSize}` : '');
  // Only 'rowwise' is named, so block-wise int8 entries built before the option existed keep their keys.
  const kernel = f.quant?.int8Kernel === 'rowwise' ? ':rowwise' : '';
  const g = f.quant?.gptq;
  const gptq = g
    ? `:gptq:${g.sequences}x${g.tokens}:${g.seed}:${g.dampFraction}:${CALIBRATION_VERSION}:${GPTQ_VERSION}`
    : '';
  const quant = f.quant ? `${f.quant.bits}:${f.quant.blockSize}${others}${kernel}${gptq}` : 'f32';
  const prequant = f.prequant
    ? `:${f.prequant.method}:${f.prequant.bits}:${f.prequant.groupSize}:${f.prequant.zeroMinusOne}`
    : '';
  return `:${f.dtype}:${quant}:${f.accuracyLevel}${prequant}:${QUANTIZER_VERSION}`;
}

export function cacheKey(
  configText: string,
  weightsFingerprint: string,
  headChunkBytes = HEAD_CHUNK_BYTES,
  format: WeightFormat = FP32_FORMAT,
  attention: AttentionLayout = {},
): string {
  // A GPU graph (one chunk over a masked past slot) is its own entry; CPU keys stay as they were.
  const layout = attention.pastSlot
    ? `:past-slot:${attention.queryChunks ?? ''}${attention.presentOutputs ? ':present' : ''}`
    : '';
  return createHash('sha256')
    .update(`${GRAPH_VERSION}:${headChunkBytes}${formatKey(format)}${layout}`)
    .update('\0')
    .update(configText)
    .update('\0')
    .update(weightsFingerprint)
    .digest('hex')
    .slice(0, 24);
}

export interface BuildProgress {
  (done: number, total: number, what: string): void;
}

/** What to build a decoder's cache entry as, and where. */
export interface DecoderBuild {
  /** The entry's cacheKey. */
  key: string;
  cacheDir: string;
  onProgress?: BuildProgress;
  /** The output head's row blocks (default HEAD_CHUNK_BYTES). */
  headChunkBytes?: number;
  format?: WeightFormat;
  /** Threads for quantisation (default: all cores). */
  threads?: number;
  /** GPTQ formats: Xᵀ X of each 4-bit linear layer's calibration inputs, by graph weight name (calibration.ts). */
  hessians?: Map<string, Float64Array>;
  /** The graph's attention layout (a GPU device's, session.ts attentionLayout); default the CPU's. */
  attention?: AttentionLayout;
}

/** Builds the cache entry if missing; returns the folder holding model.onnx and weights.bin. */
export function ensureCachedModel(
  spec: ModelSpec,
  ckpt: SafetensorsCheckpoint,
  build: DecoderBuild,
): { dir: string; built: boolean } {
  const format = build.format ?? FP32_FORMAT;
  const threads = build.threads ?? os.availableParallelism();
  return ensureCacheEntry(path.join(graphsDir(build.cacheDir), build.key), ENTRY_FILES, (tmp) => {
    // Block quantisation is most of a quantised build (a 7B int4 build ~95%): spread it over the cores, for
    // models big enough that starting worker threads pays (bit-for-bit the same entry either way).
    const pool =
      format.quant && parameterCount(spec) >= POOL_MIN_PARAMETERS
        ? QuantizePool.open(Math.min(threads, MAX_POOL_THREADS))
        : null;
    try {
      writeModel(spec, ckpt, tmp, {
        headChunkBytes: build.headChunkBytes ?? HEAD_CHUNK_BYTES,
        format,
        onProgress: build.onProgress,
        pool,
        hessians: build.hessians,
        attention: build.attention,
      });
    } finally {
      void pool?.close();
    }
  });
}

/** True when the entry for `key` is already built (a GPTQ build calibrates only when it is not). */
export function cachedModelExists(cacheDir: string, key: string): boolean {
  const dir = path.join(graphsDir(cacheDir), key);
  return ENTRY_FILES.every((f) => fs.existsSync(path.join(dir, f)));
}

/**
 * An fp32 model in `dir` (model.onnx, weights.bin, layout.json; not a cache entry) whose graph also outputs the
 * inputs of the given linear layers over all positions (decoder-graph.ts linearInputSites): GPTQ's calibration
 * model.
 */
export function writeCalibrationModel(
  spec: ModelSpec,
  ckpt: SafetensorsCheckpoint,
  dir: string,
  sites: readonly LinearInputSite[],
): void {
  writeModel(spec, ckpt, dir, { headChunkBytes: HEAD_CHUNK_BYTES, format: FP32_FORMAT, siteOutputs: sites });
}

/** Below this many weights a quantised build takes seconds: no worker threads. */
const POOL_MIN_PARAMETERS = 5e7;
/** Each worker is a V8 isolate (tens of MB) and the build also reads and writes: more threads stop paying. */
const MAX_POOL_THREADS = 8;

interface WriteOptions {
  headChunkBytes: number;
  format: WeightFormat;
  onProgress?: BuildProgress;
  /** Threads for round-to-nearest; null: quantise on this thread. */
  pool?: QuantizePool | null;
  /** GPTQ formats: Xᵀ X of each 4-bit linear layer's calibration inputs (each deleted once used). */
  hessians?: Map<string, Float64Array>;
  /** Linear-layer inputs the graph also outputs (the calibration model). */
  siteOutputs?: readonly LinearInputSite[];
  attention?: AttentionLayout;
}

/** The three files of a model folder: weights.bin, then the graph that reads it, then the embedding layout. */
function writeModel(spec: ModelSpec, ckpt: SafetensorsCheckpoint, outDir: string, opts: WriteOptions): void {
  const weights = writeWeights(spec, ckpt, path.join(outDir, DATA_FILE), opts);
  addHeadChunks(spec, opts.headChunkBytes, weights);
  fs.writeFileSync(path.join(outDir, MODEL_FILE), decoderGraphBytes(spec, weights, opts));
  fs.writeFileSync(path.join(outDir, LAYOUT_FILE), JSON.stringify(embeddingLayout(weights)));
}

/** A block-quantised matrix's three arrays in weights.bin. */
interface QuantRefs {
  codes: ExternalRef;
  scales: ExternalRef;
  zeroPoints: ExternalRef;
  rows: number;
  cols: number;
  bits: 4 | 8;
  blockSize: number;
}

/** A row-wise int8 matrix's two arrays in weights.bin. */
interface RowwiseRefs {
  codes: ExternalRef;
  scales: ExternalRef;
  rows: number;
  cols: number;
}

/** Where each graph weight lies in weights.bin, by graph weight name, by how it is stored. */
interface WrittenWeights {
  floats: Map<string, ExternalRef>;
  quantized: Map<string, QuantRefs>;
  rowwise: Map<string, RowwiseRefs>;
}

/** weights.bin as it is written: each array at the next page-aligned offset, its place recorded by name. */
class WeightsFile {
  readonly written: WrittenWeights = { floats: new Map(), quantized: new Map(), rowwise: new Map() };
  private offset = 0;

  constructor(private readonly fd: number) {}

  addFloat(name: string, data: Float32Array, dims: number[]): void {
    this.written.floats.set(name, this.write(name, data, dims));
  }

  /** A float matrix stored as fp16 (rounded to nearest even): `--dtype fp16`. */
  addHalf(name: string, data: Float32Array, dims: number[]): void {
    this.written.floats.set(name, this.write(name, toHalf(data), dims, 'FLOAT16'));
  }

  addQuantized(name: string, q: QuantizedMatrix): void {
    const n = quantNames(name);
    const nb = blocksPerRow(q.cols, q.blockSize);
    this.written.quantized.set(name, {
      codes: this.write(n.codes, q.codes, [q.rows, nb, blobBytes(q.bits, q.blockSize)], 'UINT8'),
      scales: this.write(n.scales, q.scales, [q.scales.length]),
      zeroPoints: this.write(n.zeroPoints, q.zeroPoints, [q.zeroPoints.length], 'UINT8'),
      rows: q.rows,
      cols: q.cols,
      bits: q.bits,
      blockSize: q.blockSize,
    });
  }

  addRowwise(name: string, q: RowwiseMatrix): void {
    const n = rowwiseNames(name);
    this.written.rowwise.set(name, {
      codes: this.write(n.codes, q.codes, [q.cols, q.rows], 'INT8'),
      scales: this.write(n.scales, q.scales, [q.rows]),
      rows: q.rows,
      cols: q.cols,
    });
  }

  private write(
    name: string,
    data: ArrayBufferView,
    dims: number[],
    elemType: ExternalRef['elemType'] = 'FLOAT',
  ): ExternalRef {
    const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    fs.writeSync(this.fd, bytes, 0, bytes.length, this.offset);
    const ref: ExternalRef = { name, dims, offset: this.offset, length: bytes.length, elemType };
    // Page-aligned offsets let onnxruntime map the weights instead of copying them.
    this.offset = Math.ceil((this.offset + bytes.length) / PAGE_ALIGN) * PAGE_ALIGN;
    return ref;
  }
}

/** Every graph weight read, stored as the format says, and written to `file` (fsynced). */
function writeWeights(spec: ModelSpec, ckpt: SafetensorsCheckpoint, file: string, opts: WriteOptions): WrittenWeights {
  const producers = weightProducers(spec, ckpt, opts.format.prequant);
  const store = weightStorer(spec, opts);
  const fd = fs.openSync(file, 'w');
  const out = new WeightsFile(fd);
  try {
    let done = 0;
    for (const [name, produce] of producers) {
      store(out, name, produce());
      opts.onProgress?.(++done, producers.size, name);
    }
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  return out.written;
}

/**
 * How each weight is stored under the format: pre-quantised codes as they are; with `quant`, linear layers
 * row-wise int8 (the rowwise kernel, but the sensitive layers) or block-quantised, the embedding table and head
 * block-quantised; everything else float32, linear layers transposed for MatMul.
 */
function weightStorer(spec: ModelSpec, opts: WriteOptions): (out: WeightsFile, name: string, p: Produced) => void {
  const { format } = opts;
  const quantize = blockQuantizers(format, opts);
  const rowwise = format.quant?.int8Kernel === 'rowwise';
  // The embedding table and a separate output head are [V, D] = [N, K] already: quantised as they are.
  const quantizedAsIs = new Set<string>(format.quant ? [W.embed, W.lmHead] : []);
  const sensitive = format.quant?.sensitive ? sensitiveLinears(spec) : new Set<string>();
  const half = format.dtype === 'fp16';
  return (out, name, p) => {
    if ('quantized' in p) {
      out.addQuantized(name, p.quantized);
    } else if (half && 'linear' in p) {
      out.addHalf(name, transposed(p.linear, p.rows, p.cols), [p.cols, p.rows]);
    } else if (half && 'data' in p && (name === W.embed || name === W.lmHead)) {
      out.addHalf(name, p.data, p.dims);
    } else if ('linear' in p) {
      if (format.quant && rowwise && !sensitive.has(name))
        out.addRowwise(name, quantizeRowwise(p.linear, p.rows, p.cols));
      else if (format.quant) out.addQuantized(name, quantize.linear(name, p, sensitive.has(name)));
      else out.addFloat(name, transposed(p.linear, p.rows, p.cols), [p.cols, p.rows]);
    } else if (quantizedAsIs.has(name)) {
      const layout = format.quant!.embedHead ?? format.quant!;
      out.addQuantized(name, quantize.roundToNearest(p.data, p.dims[0]!, p.dims[1]!, layout));
    } else {
      out.addFloat(name, p.data, p.dims);
    }
  };
}

type BlockLayout = Pick<QuantOptions, 'bits' | 'blockSize'>;

/**
 * The block quantisers of a build: round-to-nearest (on the pool's threads when there is one) and, for linear
 * layers, GPTQ for the main (4-bit) layers of a GPTQ format; the sensitive layers, the embedding and the head
 * round to nearest.
 */
function blockQuantizers(format: WeightFormat, opts: Pick<WriteOptions, 'pool' | 'hessians'>) {
  const { pool, hessians } = opts;
  const roundToNearest = (w: Float32Array, rows: number, cols: number, layout: BlockLayout) =>
    pool ? pool.quantize(w, rows, cols, layout) : quantizeMatrix(w, rows, cols, layout);
  const linear = (name: string, p: { linear: Float32Array; rows: number; cols: number }, sensitiveLayer: boolean) => {
    const quant = format.quant!;
    if (sensitiveLayer || !quant.gptq)
      return roundToNearest(p.linear, p.rows, p.cols, sensitiveLayer ? quant.sensitive! : quant);
    const h = hessians?.get(name);
    if (!h)
      throw new ModelError(
        `the GPTQ build of ${name} has no calibration inputs ` +
          '(was the cache entry removed while it was loading?); load the model again',
      );
    hessians!.delete(name); // each Xᵀ X is used once: free it for the rest of the build
    return gptqQuantize(p.linear, p.rows, p.cols, h, {
      bits: quant.bits,
      blockSize: quant.blockSize,
      dampFraction: quant.gptq.dampFraction,
    });
  };
  return { roundToNearest, linear };
}

/** The head's row blocks, as views of bytes already written (embed_tokens when tied, else lm_head). */
function addHeadChunks(spec: ModelSpec, headChunkBytes: number, weights: WrittenWeights): void {
  const headName = spec.tieWordEmbeddings ? W.embed : W.lmHead;
  const qHead = weights.quantized.get(headName);
  const chunks = headChunks(spec, headChunkBytes);
  if (!qHead) {
    const head = weights.floats.get(headName)!;
    const rowBytes = spec.hiddenSize * (head.elemType === 'FLOAT16' ? 2 : 4);
    chunks.forEach(([start, end], i) => {
      weights.floats.set(W.headChunk(i), {
        name: W.headChunk(i),
        dims: [end - start, spec.hiddenSize],
        offset: head.offset + start * rowBytes,
        length: (end - start) * rowBytes,
        ...(head.elemType === 'FLOAT16' ? { elemType: 'FLOAT16' as const } : {}),
      });
    });
    return;
  }
  const nb = blocksPerRow(qHead.cols, qHead.blockSize);
  const perRow = {
    codes: nb * blobBytes(qHead.bits, qHead.blockSize),
    scales: nb * 4,
    zeroPoints: zeroPointBytesPerRow(nb, qHead.bits),
  };
  chunks.forEach(([start, end], i) => {
    const names = quantNames(W.headChunk(i));
    const view = (r: ExternalRef, bytesPerRow: number, dims: number[], name: string): ExternalRef => ({
      name,
      dims,
      offset: r.offset + start * bytesPerRow,
      length: (end - start) * bytesPerRow,
      elemType: r.elemType,
    });
    const rows = end - start;
    weights.quantized.set(W.headChunk(i), {
      codes: view(qHead.codes, perRow.codes, [rows, nb, perRow.codes / nb], names.codes),
      scales: view(qHead.scales, perRow.scales, [rows * nb], names.scales),
      zeroPoints: view(qHead.zeroPoints, perRow.zeroPoints, [rows * perRow.zeroPoints], names.zeroPoints),
      rows,
      cols: qHead.cols,
      bits: qHead.bits,
      blockSize: qHead.blockSize,
    });
  });
}

/** model.onnx: the decoder graph over the weights as written, its initializers external data in weights.bin. */
function decoderGraphBytes(spec: ModelSpec, weights: WrittenWeights, opts: WriteOptions): Uint8Array {
  const graph = emitDecoderGraph(
    spec,
    (g, name) => {
      const ref = weights.floats.get(name);
      if (!ref) throw new Error(`internal: graph uses weight ${name} that was not exported`);
      return g.externalWeight(ref, DATA_FILE);
    },
    opts.headChunkBytes,
    {
      accuracyLevel: opts.format.accuracyLevel,
      ref: (g, name) => quantizedWeightRef(g, weights, name),
      half: (name) => weights.floats.get(name)?.elemType === 'FLOAT16',
    },
    opts.attention ?? {},
    opts.siteOutputs,
  );
  return graph.toBytes(`${spec.family} decoder with last-position head taps and patches`, {
    graph_version: GRAPH_VERSION,
    family: spec.family,
    weight_dtype: opts.format.dtype,
    ...(opts.format.quant?.int8Kernel ? { int8_kernel: opts.format.quant.int8Kernel } : {}),
  });
}

/** A quantised weight's initializers registered with the graph; null for a float weight. */
function quantizedWeightRef(
  g: GraphBuilder,
  weights: WrittenWeights,
  name: string,
): QuantizedWeightRef | RowwiseWeightRef | null {
  const rowwise = weights.rowwise.get(name);
  if (rowwise)
    return {
      kind: 'rowwise',
      codes: g.externalWeight(rowwise.codes, DATA_FILE),
      scales: g.externalWeight(rowwise.scales, DATA_FILE),
      rows: rowwise.rows,
      cols: rowwise.cols,
    };
  const blockwise = weights.quantized.get(name);
  if (!blockwise) return null;
  return {
    codes: g.externalWeight(blockwise.codes, DATA_FILE),
    scales: g.externalWeight(blockwise.scales, DATA_FILE),
    zeroPoints: g.externalWeight(blockwise.zeroPoints, DATA_FILE),
    rows: blockwise.rows,
    cols: blockwise.cols,
    bits: blockwise.bits,
    blockSize: blockwise.blockSize,
  };
}

/** layout.json: where the embedding table's rows (or their codes, scales and zero points) lie in weights.bin. */
function embeddingLayout(weights: WrittenWeights): Layout {
  const qEmbed = weights.quantized.get(W.embed);
  const embed = qEmbed?.codes ?? weights.floats.get(W.embed)!;
  return {
    embed: {
      offset: embed.offset,
      rows: embed.dims[0]!,
      cols: qEmbed ? qEmbed.cols : embed.dims[1]!,
      ...(embed.elemType === 'FLOAT16' ? { dtype: 'fp16' as const } : {}),
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
}
