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
import { emitDecoderGraph, GRAPH_VERSION, HEAD_CHUNK_BYTES, headChunks, W } from './graph/decoder-graph.js';
import { expectedTensors, type ModelSpec } from './families/spec.js';
import { ModelError } from './errors.js';
import type { SafetensorsCheckpoint } from './checkpoint/safetensors.js';
import type { ExternalRef } from './graph/graph-builder.js';

export const MODEL_FILE = 'model.onnx';
export const DATA_FILE = 'weights.bin';
/** Where the embedding rows lie in weights.bin (the graph takes embeddings, JS looks them up). */
export const LAYOUT_FILE = 'layout.json';

export interface Layout { embed: { offset: number; rows: number; cols: number } }
const ALIGN = 4096; // page-aligned offsets let onnxruntime map the weights instead of copying them

export function defaultCacheDir(): string {
  return process.env.ARM_CACHE_DIR ?? path.join(process.env.XDG_CACHE_HOME ?? path.join(os.homedir(), '.cache'), 'activation-rm');
}

export function cacheKey(configText: string, weightsFingerprint: string, headChunkBytes = HEAD_CHUNK_BYTES): string {
  return createHash('sha256').update(`${GRAPH_VERSION}:${headChunkBytes}`).update('\0').update(configText).update('\0').update(weightsFingerprint).digest('hex').slice(0, 24);
}

/**
 * Checks names, shapes of every tensor the spec needs, and that the checkpoint holds no layer beyond
 * config.json's num_hidden_layers (those would be silently dropped); other extra tensors (e.g. rotary
 * caches) are ignored.
 */
export function validateCheckpoint(spec: ModelSpec, ckpt: SafetensorsCheckpoint): void {
  const layers = new Set<number>();
  for (const name of ckpt.names()) {
    const m = /^model\.layers\.(\d+)\./.exec(name);
    if (m) layers.add(Number(m[1]));
  }
  const beyond = [...layers].filter((l) => l >= spec.numLayers).sort((a, b) => a - b);
  if (beyond.length > 0) {
    const found = [...layers].sort((a, b) => a - b);
    const list = found.length === found[found.length - 1]! + 1 ? `${found.length} layers (model.layers.0 to model.layers.${found.length - 1})` : `layers ${found.join(', ')}`;
    throw new ModelError(`${path.join(ckpt.dir, 'config.json')}: num_hidden_layers is ${spec.numLayers} but the checkpoint holds ${list}; expected num_hidden_layers to match the model.layers.N tensors`);
  }
  for (const [name, shape] of expectedTensors(spec)) {
    if (!ckpt.has(name)) {
      const hint = name === 'lm_head.weight' ? ' (config says tie_word_embeddings is false)' : '';
      throw new ModelError(`${ckpt.dir}: tensor "${name}" is missing from the checkpoint${hint}`);
    }
    const info = ckpt.info(name);
    if (info.shape.join(',') !== shape.join(',')) {
      throw new ModelError(`${info.file}: tensor "${name}" has shape [${info.shape}] but config.json implies [${shape}]`);
    }
  }
}

export interface BuildProgress { (done: number, total: number, what: string): void }

/** Builds the cache entry if missing; returns the folder holding model.onnx and weights.bin. */
export function ensureCachedModel(spec: ModelSpec, ckpt: SafetensorsCheckpoint, key: string, cacheDir: string, onProgress?: BuildProgress, headChunkBytes = HEAD_CHUNK_BYTES): { dir: string; built: boolean } {
  const dir = path.join(cacheDir, 'graphs', key);
  if ([MODEL_FILE, DATA_FILE, LAYOUT_FILE].every((f) => fs.existsSync(path.join(dir, f)))) return { dir, built: false };
  fs.mkdirSync(path.dirname(dir), { recursive: true });
  const tmp = `${dir}.tmp-${process.pid}-${Date.now()}`;
  fs.mkdirSync(tmp, { recursive: true });
  try {
    writeModel(spec, ckpt, tmp, headChunkBytes, onProgress);
    try {
      fs.renameSync(tmp, dir);
    } catch (e) {
      // Another process finished the same entry first: theirs is as good as ours.
      if (!fs.existsSync(path.join(dir, MODEL_FILE))) throw e;
      fs.rmSync(tmp, { recursive: true, force: true });
    }
  } catch (e) {
    fs.rmSync(tmp, { recursive: true, force: true });
    throw e;
  }
  return { dir, built: true };
}

function writeModel(spec: ModelSpec, ckpt: SafetensorsCheckpoint, outDir: string, headChunkBytes: number, onProgress?: BuildProgress): void {
  const producers = weightProducers(spec, ckpt);
  const fd = fs.openSync(path.join(outDir, DATA_FILE), 'w');
  const refs = new Map<string, ExternalRef>();
  let offset = 0;
  try {
    let done = 0;
    for (const [name, produce] of producers) {
      const { data, dims } = produce();
      const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
      fs.writeSync(fd, bytes, 0, bytes.length, offset);
      refs.set(name, { name, dims, offset, length: bytes.length });
      offset = Math.ceil((offset + bytes.length) / ALIGN) * ALIGN;
      onProgress?.(++done, producers.size, name);
    }
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  // The head's row blocks are views of bytes already written (embed_tokens when tied, else lm_head).
  const head = refs.get(spec.tieWordEmbeddings ? W.embed : W.lmHead)!;
  const rowBytes = spec.hiddenSize * 4;
  headChunks(spec, headChunkBytes).forEach(([start, end], i) => {
    refs.set(W.headChunk(i), { name: W.headChunk(i), dims: [end - start, spec.hiddenSize], offset: head.offset + start * rowBytes, length: (end - start) * rowBytes });
  });
  const graph = emitDecoderGraph(spec, (g, name) => {
    const ref = refs.get(name);
    if (!ref) throw new Error(`internal: graph uses weight ${name} that was not exported`);
    return g.externalWeight(ref, DATA_FILE);
  }, headChunkBytes);
  const bytes = graph.toBytes(`${spec.family} decoder with last-position head taps and patches`, { graph_version: GRAPH_VERSION, family: spec.family });
  fs.writeFileSync(path.join(outDir, MODEL_FILE), bytes);
  const embed = refs.get(W.embed)!;
  const layout: Layout = { embed: { offset: embed.offset, rows: embed.dims[0]!, cols: embed.dims[1]! } };
  fs.writeFileSync(path.join(outDir, LAYOUT_FILE), JSON.stringify(layout));
}

interface Produced { data: Float32Array; dims: number[] }

/** The graph's weights, each as a function that reads and lays it out (so only one is in memory at a time). */
function weightProducers(spec: ModelSpec, ckpt: SafetensorsCheckpoint): Map<string, () => Produced> {
  // Every checkpoint tensor passes through here exactly once while the entry is built, so this is the one
  // cheap place to refuse NaN/Inf weights (they would otherwise surface as NaN scores and no error).
  const read = (name: string) => {
    const data = ckpt.readFloat32(name);
    let bad = 0;
    for (let i = 0; i < data.length; i++) if (!Number.isFinite(data[i]!)) bad++;
    if (bad > 0) throw new ModelError(`${ckpt.info(name).file}: tensor "${name}" holds ${bad} non-finite value${bad === 1 ? '' : 's'} (NaN or ±Inf) of ${data.length}; expected finite weights`);
    return data;
  };
  const asIs = (name: string): (() => Produced) => () => ({ data: read(name), dims: ckpt.info(name).shape });
  const concat = (names: string[]): (() => Produced) => () => {
    const parts = names.map(read);
    const out = new Float32Array(parts.reduce((n, p) => n + p.length, 0));
    let at = 0;
    for (const p of parts) { out.set(p, at); at += p.length; }
    return { data: out, dims: [out.length] };
  };
  // HF Linear weights are [out, in]; MatMul wants [in, out]. Several projections fuse along `out`.
  const transposedConcat = (names: string[]): (() => Produced) => () => {
    const shapes = names.map((n) => ckpt.info(n).shape as [number, number]);
    const inDim = shapes[0]![1];
    const outDim = shapes.reduce((n, s) => n + s[0], 0);
    const out = new Float32Array(inDim * outDim);
    let col = 0;
    names.forEach((n, i) => {
      const src = read(n);
      const rows = shapes[i]![0];
      // Blocked transpose: 64×64 tiles keep both the reads and the strided writes in cache.
      for (let r0 = 0; r0 < rows; r0 += 64) {
        const r1 = Math.min(rows, r0 + 64);
        for (let c0 = 0; c0 < inDim; c0 += 64) {
          const c1 = Math.min(inDim, c0 + 64);
          for (let r = r0; r < r1; r++) {
            const srcRow = r * inDim;
            for (let c = c0; c < c1; c++) out[c * outDim + col + r] = src[srcRow + c]!;
          }
        }
      }
      col += rows;
    });
    return { data: out, dims: [inDim, outDim] };
  };
  const m = new Map<string, () => Produced>();
  m.set(W.embed, asIs('model.embed_tokens.weight'));
  if (!spec.tieWordEmbeddings) m.set(W.lmHead, asIs('lm_head.weight'));
  m.set(W.finalNorm, asIs('model.norm.weight'));
  for (let l = 0; l < spec.numLayers; l++) {
    const a = `model.layers.${l}.self_attn`;
    const mlp = `model.layers.${l}.mlp`;
    m.set(W.ln1(l), asIs(`model.layers.${l}.input_layernorm.weight`));
    m.set(W.ln2(l), asIs(`model.layers.${l}.post_attention_layernorm.weight`));
    m.set(W.qkv(l), transposedConcat([`${a}.q_proj.weight`, `${a}.k_proj.weight`, `${a}.v_proj.weight`]));
    if (spec.qkvBias) m.set(W.qkvBias(l), concat([`${a}.q_proj.bias`, `${a}.k_proj.bias`, `${a}.v_proj.bias`]));
    if (spec.qkNorm) {
      m.set(W.qNorm(l), asIs(`${a}.q_norm.weight`));
      m.set(W.kNorm(l), asIs(`${a}.k_norm.weight`));
    }
    m.set(W.o(l), transposedConcat([`${a}.o_proj.weight`]));
    if (spec.oBias) m.set(W.oBias(l), asIs(`${a}.o_proj.bias`));
    m.set(W.gateUp(l), transposedConcat([`${mlp}.gate_proj.weight`, `${mlp}.up_proj.weight`]));
    if (spec.mlpBias) m.set(W.gateUpBias(l), concat([`${mlp}.gate_proj.bias`, `${mlp}.up_proj.bias`]));
    m.set(W.down(l), transposedConcat([`${mlp}.down_proj.weight`]));
    if (spec.mlpBias) m.set(W.downBias(l), asIs(`${mlp}.down_proj.bias`));
  }
  return m;
}
