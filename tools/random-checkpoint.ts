/**
 * Deterministic random Hugging Face checkpoints (config.json + model.safetensors + tokenizer files) for
 * tests and benchmarks. Weights come from a seeded generator, so the same call always writes the same
 * bytes; the tokenizer is the 512-piece one of ../shared/models/stories260K (vocabularies must be ≥ 512).
 */
import fs from 'node:fs';
import path from 'node:path';
import { Rng } from '../src/util/rng.js';
import { writeSafetensors, type WritableTensor } from '../src/model/checkpoint/safetensors.js';

export { Rng };

export const SHARED_STORIES = path.resolve(path.dirname(new URL(import.meta.url).pathname), '../../shared/models/stories260K');

export type DType = 'F32' | 'F16' | 'BF16';

/** Config fields in Hugging Face spelling; anything here lands in config.json as is. */
export type HfConfig = Record<string, unknown> & {
  model_type: string; hidden_size: number; intermediate_size: number; num_hidden_layers: number;
  num_attention_heads: number; num_key_value_heads: number; vocab_size: number;
};

export interface RandomCheckpointOptions {
  seed?: number;
  dtype?: DType;
  /** Standard deviation of matrix weights. */
  std?: number;
  /** Keep the written values (as float32 after dtype rounding) for a reference forward. */
  keep?: boolean;
  chatTemplate?: string;
  /** Split weights into this many shards with an index file. */
  shards?: number;
}

/**
 * Tensor names and shapes of a Llama-family checkpoint with this config (HF layout), including Gemma 2/3's
 * extra norms and Phi-3's fused qkv_proj / gate_up_proj.
 */
export function checkpointLayout(c: HfConfig): [string, number[]][] {
  const D = c.hidden_size, F = c.intermediate_size, H = c.num_attention_heads, KV = c.num_key_value_heads;
  const d = (c.head_dim as number | undefined) ?? D / H;
  const phi3 = c.model_type === 'phi3';
  const sandwich = c.model_type === 'gemma2' || c.model_type === 'gemma3_text';
  const qkvBias = c.model_type === 'qwen2' || (!phi3 && c.attention_bias === true);
  const oBias = c.model_type !== 'qwen2' && !phi3 && c.attention_bias === true;
  const t: [string, number[]][] = [['model.embed_tokens.weight', [c.vocab_size, D]], ['model.norm.weight', [D]]];
  if (c.tie_word_embeddings !== true) t.push(['lm_head.weight', [c.vocab_size, D]]);
  for (let l = 0; l < c.num_hidden_layers; l++) {
    const p = `model.layers.${l}`;
    t.push([`${p}.input_layernorm.weight`, [D]], [`${p}.post_attention_layernorm.weight`, [D]]);
    if (sandwich) t.push([`${p}.pre_feedforward_layernorm.weight`, [D]], [`${p}.post_feedforward_layernorm.weight`, [D]]);
    if (phi3) {
      t.push([`${p}.self_attn.qkv_proj.weight`, [(H + 2 * KV) * d, D]], [`${p}.self_attn.o_proj.weight`, [D, H * d]]);
      t.push([`${p}.mlp.gate_up_proj.weight`, [2 * F, D]], [`${p}.mlp.down_proj.weight`, [D, F]]);
      continue;
    }
    t.push([`${p}.self_attn.q_proj.weight`, [H * d, D]], [`${p}.self_attn.k_proj.weight`, [KV * d, D]], [`${p}.self_attn.v_proj.weight`, [KV * d, D]], [`${p}.self_attn.o_proj.weight`, [D, H * d]]);
    if (qkvBias) t.push([`${p}.self_attn.q_proj.bias`, [H * d]], [`${p}.self_attn.k_proj.bias`, [KV * d]], [`${p}.self_attn.v_proj.bias`, [KV * d]]);
    if (oBias) t.push([`${p}.self_attn.o_proj.bias`, [D]]);
    if (c.model_type === 'qwen3' || c.model_type === 'gemma3_text') t.push([`${p}.self_attn.q_norm.weight`, [d]], [`${p}.self_attn.k_norm.weight`, [d]]);
    t.push([`${p}.mlp.gate_proj.weight`, [F, D]], [`${p}.mlp.up_proj.weight`, [F, D]], [`${p}.mlp.down_proj.weight`, [D, F]]);
    if (c.mlp_bias === true) t.push([`${p}.mlp.gate_proj.bias`, [F]], [`${p}.mlp.up_proj.bias`, [F]], [`${p}.mlp.down_proj.bias`, [D]]);
  }
  return t;
}

/** Writes the checkpoint into `dir`; returns the weights (float32, after dtype rounding) when `keep`. */
export function writeRandomCheckpoint(dir: string, config: HfConfig, opts: RandomCheckpointOptions = {}): Map<string, Float32Array> {
  const rng = new Rng(opts.seed ?? 0);
  const dtype = opts.dtype ?? 'F32';
  const std = opts.std ?? 0.1;
  const layout = checkpointLayout(config);
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify({ architectures: ['ForCausalLM'], hidden_act: 'silu', torch_dtype: 'float32', bos_token_id: 1, eos_token_id: 2, ...config }, null, 2));
  fs.copyFileSync(path.join(SHARED_STORIES, 'tokenizer.json'), path.join(dir, 'tokenizer.json'));
  const tokConfig = JSON.parse(fs.readFileSync(path.join(SHARED_STORIES, 'tokenizer_config.json'), 'utf8'));
  if (opts.chatTemplate !== undefined) tokConfig.chat_template = opts.chatTemplate;
  fs.writeFileSync(path.join(dir, 'tokenizer_config.json'), JSON.stringify(tokConfig, null, 2));

  const kept = new Map<string, Float32Array>();
  const shardCount = opts.shards ?? 1;
  const perShard = Math.ceil(layout.length / shardCount);
  const weightMap: Record<string, string> = {};
  for (let s = 0; s < shardCount; s++) {
    const part = layout.slice(s * perShard, (s + 1) * perShard);
    const file = shardCount === 1 ? 'model.safetensors' : `model-${String(s + 1).padStart(5, '0')}-of-${String(shardCount).padStart(5, '0')}.safetensors`;
    writeSafetensors(path.join(dir, file), part.map(([name, shape]): WritableTensor => {
      const isNorm = name.endsWith('norm.weight');
      const isBias = name.endsWith('.bias');
      const n = shape.reduce((a, b) => a * b, 1);
      const values = new Float32Array(n);
      for (let i = 0; i < n; i++) values[i] = isNorm ? 1 + 0.1 * rng.normal() : (isBias ? 0.5 : 1) * std * rng.normal();
      const rounded = roundTo(values, dtype);
      if (opts.keep) kept.set(name, rounded);
      weightMap[name] = file;
      return { name, shape, dtype, bytes: encode(rounded, dtype) };
    }));
  }
  if (shardCount > 1) fs.writeFileSync(path.join(dir, 'model.safetensors.index.json'), JSON.stringify({ metadata: {}, weight_map: weightMap }, null, 2));
  return kept;
}

function encode(values: Float32Array, dtype: DType): Uint8Array {
  if (dtype === 'F32') return new Uint8Array(values.buffer, values.byteOffset, values.byteLength);
  const out = new Uint16Array(values.length);
  const bits = new Uint32Array(values.buffer, values.byteOffset, values.length);
  for (let i = 0; i < values.length; i++) out[i] = dtype === 'BF16' ? bits[i]! >>> 16 : floatToHalf(values[i]!);
  return new Uint8Array(out.buffer);
}

/** Values as they read back after storing in `dtype` (truncation to bf16, round-to-nearest f16). */
function roundTo(values: Float32Array, dtype: DType): Float32Array {
  if (dtype === 'F32') return values;
  const out = new Float32Array(values.length);
  const inBits = new Uint32Array(values.buffer), outBits = new Uint32Array(out.buffer);
  for (let i = 0; i < values.length; i++) {
    if (dtype === 'BF16') outBits[i] = (inBits[i]! >>> 16) << 16;
    else out[i] = halfBitsToFloat(floatToHalf(values[i]!));
  }
  return out;
}

function floatToHalf(x: number): number {
  const f = new Float32Array([x]);
  const b = new Uint32Array(f.buffer)[0]!;
  const sign = (b >>> 16) & 0x8000;
  let exp = ((b >>> 23) & 0xff) - 127 + 15;
  let mant = b & 0x7fffff;
  if (exp <= 0) {
    if (exp < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - exp;
    let half = mant >>> shift;
    if ((mant >>> (shift - 1)) & 1) half++;
    return sign | half;
  }
  if (exp >= 31) return sign | 0x7c00;
  let half = sign | (exp << 10) | (mant >>> 13);
  if (mant & 0x1000) half++; // round half up (ties are vanishingly rare in random normals)
  return half;
}

function halfBitsToFloat(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f, frac = h & 0x3ff;
  if (exp === 0) return sign * frac * 2 ** -24;
  if (exp === 31) return frac ? NaN : sign * Infinity;
  return sign * (1 + frac / 1024) * 2 ** (exp - 15);
}
