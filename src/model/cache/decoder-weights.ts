/**
 * The decoder graph's weights as the cache writer (decoder-cache.ts) reads them from a checkpoint: which
 * checkpoint tensors make each graph weight (decoder-graph.ts W names), fused where the graph fuses them
 * (q|k|v, gate|up), Gemma's norm offset applied, pre-quantised (AWQ/GPTQ) layers read as their codes; and the
 * checks that the checkpoint holds what config.json promises. Every tensor is refused if it holds NaN or ±Inf.
 */
import path from 'node:path';
import { W } from '../graph/decoder-graph.js';
import { expectedTensors } from '../families/weights.js';
import type { ModelSpec } from '../families/types.js';
import { ModelError } from '../errors.js';
import { checkFiniteTensor, type SafetensorsCheckpoint } from '../checkpoint/safetensors.js';
import type { QuantizedMatrix } from '../quant/layout.js';
import { concatRows } from '../quant/layout.js';
import { checkPrequantized, isPrequantized, readPrequantized, type PrequantScheme } from '../quant/awq-gptq.js';

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
  checkLayerCount(spec, ckpt);
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

/** Refuses a checkpoint with layers beyond config.json's num_hidden_layers. */
function checkLayerCount(spec: ModelSpec, ckpt: SafetensorsCheckpoint): void {
  const layers = new Set<number>();
  for (const name of ckpt.names()) {
    const m = /^model\.layers\.(\d+)\./.exec(name);
    if (m) layers.add(Number(m[1]));
  }
  const beyond = [...layers].filter((l) => l >= spec.numLayers).sort((a, b) => a - b);
  if (beyond.length === 0) return;
  const found = [...layers].sort((a, b) => a - b);
  const list =
    found.length === found[found.length - 1]! + 1
      ? `${found.length} layers (model.layers.0 to model.layers.${found.length - 1})`
      : `layers ${found.join(', ')}`;
  throw new ModelError(
    `${path.join(ckpt.dir, 'config.json')}: num_hidden_layers is ${spec.numLayers} but the checkpoint holds ` +
      `${list}; expected num_hidden_layers to match the model.layers.N tensors`,
  );
}

/**
 * A weight as the writer receives it: float data as stored; a linear layer as HF rows [N = out, K = in]
 * (the writer transposes it for MatMul or quantises it); or a pre-quantised linear layer (AWQ/GPTQ).
 */
export type Produced =
  | { data: Float32Array; dims: number[] }
  | { linear: Float32Array; rows: number; cols: number }
  | { quantized: QuantizedMatrix };

/** A graph weight's reader: reads and lays out the weight when called (so only one is in memory at a time). */
type Producer = () => Produced;

/** The graph's weights, each as a function that reads and lays it out (so only one is in memory at a time). */
export function weightProducers(
  spec: ModelSpec,
  ckpt: SafetensorsCheckpoint,
  prequant: PrequantScheme | null,
): Map<string, Producer> {
  const read = producerKinds(spec, ckpt, prequant);
  const m = new Map<string, Producer>();
  m.set(W.embed, read.asIs('model.embed_tokens.weight'));
  if (!spec.tieWordEmbeddings) m.set(W.lmHead, read.asIs('lm_head.weight'));
  m.set(W.finalNorm, read.norm('model.norm.weight'));
  for (let l = 0; l < spec.numLayers; l++) {
    addNormProducers(m, spec, l, read);
    addAttentionProducers(m, spec, l, read);
    addMlpProducers(m, spec, l, read);
  }
  return m;
}

/** The ways a graph weight is read from checkpoint tensors. */
interface ProducerKinds {
  /** One tensor as stored. */
  asIs(name: string): Producer;
  /** Tensors joined end to end as one vector (fused biases). */
  concat(names: string[]): Producer;
  /** Linear layers [out, in] fused along `out` (rows), or their pre-quantised codes fused the same way. */
  linear(names: string[]): Producer;
  /** An RMSNorm weight as the graph multiplies by it. */
  norm(name: string): Producer;
}

function producerKinds(spec: ModelSpec, ckpt: SafetensorsCheckpoint, prequant: PrequantScheme | null): ProducerKinds {
  const read = (name: string) => readFinite(ckpt, name);
  const asIs =
    (name: string): Producer =>
    () => ({ data: read(name), dims: ckpt.info(name).shape });
  const expected = expectedTensors(spec);
  return {
    asIs,
    concat: (names) => () => {
      const data = joined(names.map(read));
      return { data, dims: [data.length] };
    },
    // HF Linear weights are [out, in]; several projections fuse along `out` (rows). The writer transposes
    // the result to MatMul's [in, out] (fp32) or quantises it as it is (MatMulNBits takes [out, in]).
    linear: (names) => () => {
      if (prequant && names.some((n) => isPrequantized(ckpt, n))) {
        if (!names.every((n) => isPrequantized(ckpt, n)))
          throw new ModelError(
            `${ckpt.dir}: ${names.join(', ')} are fused by the graph but only some are stored quantised`,
          );
        const shapeOf = (n: string) => expected.get(n) ?? ckpt.info(n).shape;
        return { quantized: concatRows(names.map((n) => readPrequantized(ckpt, n, shapeOf(n), prequant))) };
      }
      const shapes = names.map((n) => ckpt.info(n).shape as [number, number]);
      const cols = shapes[0]![1];
      const rows = shapes.reduce((n, s) => n + s[0], 0);
      // Read one part at a time into the fused matrix: a 7B model's gate and up are ~180 MB each.
      const out = new Float32Array(rows * cols);
      let at = 0;
      for (const n of names) {
        const src = read(n);
        out.set(src, at);
        at += src.length;
      }
      return { linear: out, rows, cols };
    },
    // RMSNorm weights as the graph multiplies by them: Gemma's (1 + w), summed in float32 as transformers does.
    norm: (name) =>
      spec.normOffset === 0
        ? asIs(name)
        : () => {
            const data = read(name);
            for (let i = 0; i < data.length; i++) data[i] = spec.normOffset + data[i]!;
            return { data, dims: ckpt.info(name).shape };
          },
  };
}

/**
 * A tensor as float32, refused when it holds NaN or ±Inf. Every checkpoint tensor passes through here exactly
 * once while the entry is built, so this is the one cheap place to refuse them.
 */
function readFinite(ckpt: SafetensorsCheckpoint, name: string): Float32Array {
  const data = ckpt.readFloat32(name);
  checkFiniteTensor(data, ckpt.info(name).file, name);
  return data;
}

/** `parts` end to end in one array. */
function joined(parts: Float32Array[]): Float32Array {
  const out = new Float32Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

function addNormProducers(m: Map<string, Producer>, spec: ModelSpec, l: number, read: ProducerKinds): void {
  const ln = `model.layers.${l}`;
  m.set(W.ln1(l), read.norm(`${ln}.input_layernorm.weight`));
  if (spec.sandwichNorms) {
    // Gemma 2/3: post_attention_layernorm normalises the o_proj output; the pre-MLP norm is pre_feedforward.
    m.set(W.ln1Post(l), read.norm(`${ln}.post_attention_layernorm.weight`));
    m.set(W.ln2(l), read.norm(`${ln}.pre_feedforward_layernorm.weight`));
    m.set(W.ln2Post(l), read.norm(`${ln}.post_feedforward_layernorm.weight`));
  } else {
    m.set(W.ln2(l), read.norm(`${ln}.post_attention_layernorm.weight`));
  }
}

function addAttentionProducers(m: Map<string, Producer>, spec: ModelSpec, l: number, read: ProducerKinds): void {
  const a = `model.layers.${l}.self_attn`;
  // Phi-3 stores q|k|v and gate|up already fused along `out`, in the order the graph splits them.
  if (spec.fusedProjections) {
    m.set(W.qkv(l), read.linear([`${a}.qkv_proj.weight`]));
    if (spec.qkvBias) m.set(W.qkvBias(l), read.asIs(`${a}.qkv_proj.bias`));
  } else {
    m.set(W.qkv(l), read.linear([`${a}.q_proj.weight`, `${a}.k_proj.weight`, `${a}.v_proj.weight`]));
    if (spec.qkvBias) m.set(W.qkvBias(l), read.concat([`${a}.q_proj.bias`, `${a}.k_proj.bias`, `${a}.v_proj.bias`]));
  }
  if (spec.qkNorm) {
    m.set(W.qNorm(l), read.norm(`${a}.q_norm.weight`));
    m.set(W.kNorm(l), read.norm(`${a}.k_norm.weight`));
  }
  m.set(W.o(l), read.linear([`${a}.o_proj.weight`]));
  if (spec.oBias) m.set(W.oBias(l), read.asIs(`${a}.o_proj.bias`));
}

function addMlpProducers(m: Map<string, Producer>, spec: ModelSpec, l: number, read: ProducerKinds): void {
  const mlp = `model.layers.${l}.mlp`;
  if (spec.fusedProjections) {
    m.set(W.gateUp(l), read.linear([`${mlp}.gate_up_proj.weight`]));
    if (spec.mlpBias) m.set(W.gateUpBias(l), read.asIs(`${mlp}.gate_up_proj.bias`));
  } else {
    m.set(W.gateUp(l), read.linear([`${mlp}.gate_proj.weight`, `${mlp}.up_proj.weight`]));
    if (spec.mlpBias) m.set(W.gateUpBias(l), read.concat([`${mlp}.gate_proj.bias`, `${mlp}.up_proj.bias`]));
  }
  m.set(W.down(l), read.linear([`${mlp}.down_proj.weight`]));
  if (spec.mlpBias) m.set(W.downBias(l), read.asIs(`${mlp}.down_proj.bias`));
}
