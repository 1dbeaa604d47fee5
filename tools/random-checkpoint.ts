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

export const SHARED_STORIES = path.resolve(
  path.dirname(new URL(import.meta.url).pathname),
  '../../shared/models/stories260K',
);

export type DType = 'F32' | 'F16' | 'BF16';

/** Config fields in Hugging Face spelling; anything here lands in config.json as is. */
export type HfConfig = Record<string, unknown> & {
  model_type: string;
  hidden_size: number;
  intermediate_size: number;
  num_hidden_layers: number;
  num_attention_heads: number;
  num_key_value_heads: number;
  vocab_size: number;
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
  /**
   * Benchmarks of speed and memory only (their cost does not depend on the values): matrices tile one pool of
   * seeded normal draws from a random start each, instead of drawing every value. Same distribution, ~30×
   * faster to write (a 7B checkpoint in minutes, not 13); values repeat with period POOL_SIZE. Not with `keep`.
   */
  fast?: boolean;
}

const POOL_SIZE = 1 << 20;

/**
 * Tensor names and shapes of a Llama-family checkpoint with this config (HF layout), including Gemma 2/3's
 * extra norms and Phi-3's fused qkv_proj / gate_up_proj.
 */
export function checkpointLayout(c: HfConfig): [string, number[]][] {
  const D = c.hidden_size,
    F = c.intermediate_size,
    H = c.num_attention_heads,
    KV = c.num_key_value_heads;
  const d = (c.head_dim as number | undefined) ?? D / H;
  const phi3 = c.model_type === 'phi3';
  const sandwich = c.model_type === 'gemma2' || c.model_type === 'gemma3_text';
  const qkvBias = c.model_type === 'qwen2' || (!phi3 && c.attention_bias === true);
  const oBias = c.model_type !== 'qwen2' && !phi3 && c.attention_bias === true;
  const t: [string, number[]][] = [
    ['model.embed_tokens.weight', [c.vocab_size, D]],
    ['model.norm.weight', [D]],
  ];
  if (c.tie_word_embeddings !== true) t.push(['lm_head.weight', [c.vocab_size, D]]);
  for (let l = 0; l < c.num_hidden_layers; l++) {
    const p = `model.layers.${l}`;
    t.push([`${p}.input_layernorm.weight`, [D]], [`${p}.post_attention_layernorm.weight`, [D]]);
    if (sandwich)
      t.push([`${p}.pre_feedforward_layernorm.weight`, [D]], [`${p}.post_feedforward_layernorm.weight`, [D]]);
    if (phi3) {
      t.push([`${p}.self_attn.qkv_proj.weight`, [(H + 2 * KV) * d, D]], [`${p}.self_attn.o_proj.weight`, [D, H * d]]);
      t.push([`${p}.mlp.gate_up_proj.weight`, [2 * F, D]], [`${p}.mlp.down_proj.weight`, [D, F]]);
      continue;
    }
    t.push(
      [`${p}.self_attn.q_proj.weight`, [H * d, D]],
      [`${p}.self_attn.k_proj.weight`, [KV * d, D]],
      [`${p}.self_attn.v_proj.weight`, [KV * d, D]],
      [`${p}.self_attn.o_proj.weight`, [D, H * d]],
    );
    if (qkvBias)
      t.push(
        [`${p}.self_attn.q_proj.bias`, [H * d]],
        [`${p}.self_attn.k_proj.bias`, [KV * d]],
        [`${p}.self_attn.v_proj.bias`, [KV * d]],
      );
    if (oBias) t.push([`${p}.self_attn.o_proj.bias`, [D]]);
    if (c.model_type === 'qwen3' || c.model_type === 'gemma3_text')
      t.push([`${p}.self_attn.q_norm.weight`, [d]], [`${p}.self_attn.k_norm.weight`, [d]]);
    t.push(
      [`${p}.mlp.gate_proj.weight`, [F, D]],
      [`${p}.mlp.up_proj.weight`, [F, D]],
      [`${p}.mlp.down_proj.weight`, [D, F]],
    );
    if (c.mlp_bias === true)
      t.push([`${p}.mlp.gate_proj.bias`, [F]], [`${p}.mlp.up_proj.bias`, [F]], [`${p}.mlp.down_proj.bias`, [D]]);
  }
  return t;
}

/** Writes the checkpoint into `dir`; returns the weights (float32, after dtype rounding) when `keep`. */
export function writeRandomCheckpoint(
  dir: string,
  config: HfConfig,
  opts: RandomCheckpointOptions = {},
): Map<string, Float32Array> {
  const rng = new Rng(opts.seed ?? 0);
  const dtype = opts.dtype ?? 'F32';
  const std = opts.std ?? 0.1;
  const layout = checkpointLayout(config);
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(
    path.join(dir, 'config.json'),
    JSON.stringify(
      {
        architectures: ['ForCausalLM'],
        hidden_act: 'silu',
        torch_dtype: 'float32',
        bos_token_id: 1,
        eos_token_id: 2,
        ...config,
      },
      null,
      2,
    ),
  );
  fs.copyFileSync(path.join(SHARED_STORIES, 'tokenizer.json'), path.join(dir, 'tokenizer.json'));
  const tokConfig = JSON.parse(fs.readFileSync(path.join(SHARED_STORIES, 'tokenizer_config.json'), 'utf8'));
  if (opts.chatTemplate !== undefined) tokConfig.chat_template = opts.chatTemplate;
  fs.writeFileSync(path.join(dir, 'tokenizer_config.json'), JSON.stringify(tokConfig, null, 2));

  if (opts.fast && opts.keep)
    throw new Error('writeRandomCheckpoint: fast values cannot be kept (they are for benchmarks)');
  const pool = opts.fast ? Float32Array.from({ length: POOL_SIZE }, () => rng.normal()) : null;
  const kept = new Map<string, Float32Array>();
  const shardCount = opts.shards ?? 1;
  const perShard = Math.ceil(layout.length / shardCount);
  const weightMap: Record<string, string> = {};
  for (let s = 0; s < shardCount; s++) {
    const part = layout.slice(s * perShard, (s + 1) * perShard);
    const file =
      shardCount === 1
        ? 'model.safetensors'
        : `model-${String(s + 1).padStart(5, '0')}-of-${String(shardCount).padStart(5, '0')}.safetensors`;
    writeSafetensors(
      path.join(dir, file),
      part.map(([name, shape]): WritableTensor => {
        const isNorm = name.endsWith('norm.weight');
        const isBias = name.endsWith('.bias');
        const n = shape.reduce((a, b) => a * b, 1);
        const values = new Float32Array(n);
        if (pool && !isNorm && n > POOL_SIZE) {
          fillFromPool(values, pool, rng.int(POOL_SIZE), (isBias ? 0.5 : 1) * std);
        } else {
          for (let i = 0; i < n; i++)
            values[i] = isNorm ? 1 + 0.1 * rng.normal() : (isBias ? 0.5 : 1) * std * rng.normal();
        }
        const rounded = roundTo(values, dtype);
        if (opts.keep) kept.set(name, rounded);
        weightMap[name] = file;
        return { name, shape, dtype, bytes: encode(rounded, dtype) };
      }),
    );
  }
  if (shardCount > 1)
    fs.writeFileSync(
      path.join(dir, 'model.safetensors.index.json'),
      JSON.stringify({ metadata: {}, weight_map: weightMap }, null, 2),
    );
  return kept;
}

/** values[i] = scale · pool[(start + i) mod |pool|]. */
function fillFromPool(values: Float32Array, pool: Float32Array, start: number, scale: number): void {
  const scaled = pool.map((x) => x * scale);
  let at = 0;
  let from = start;
  while (at < values.length) {
    const n = Math.min(values.length - at, scaled.length - from);
    values.set(scaled.subarray(from, from + n), at);
    at += n;
    from = 0;
  }
}

/**
 * Tensor names and shapes of a Qwen2-VL / Qwen2.5-VL vision tower (`vision_config` in HF spelling), under
 * `prefix` ('visual.' as hub checkpoints name it, 'model.visual.' as transformers 5 saves it). Qwen2.5-VL's
 * tower (SwiGLU MLP with gate/up/down, RMSNorm) when `vision.fullatt_block_indexes` is present, Qwen2-VL's
 * (fc1/fc2 MLP, LayerNorm with biases) otherwise.
 */
export function qwenVisionLayout(vision: Record<string, unknown>, prefix = 'visual.'): [string, number[]][] {
  const v = vision as {
    depth: number;
    hidden_size?: number;
    embed_dim?: number;
    intermediate_size?: number;
    mlp_ratio?: number;
    in_chans?: number;
    in_channels?: number;
    temporal_patch_size: number;
    patch_size: number;
    spatial_merge_size: number;
    out_hidden_size?: number;
    hidden_size_out?: number;
    fullatt_block_indexes?: number[];
  };
  const qwen25 = Array.isArray(v.fullatt_block_indexes);
  const D = qwen25 ? v.hidden_size! : v.embed_dim!;
  const F = qwen25 ? v.intermediate_size! : D * (v.mlp_ratio ?? 4);
  const C = v.in_chans ?? v.in_channels ?? 3;
  const M = D * v.spatial_merge_size ** 2;
  const O = qwen25 ? v.out_hidden_size! : v.hidden_size!;
  const out: [string, number[]][] = [
    [`${prefix}patch_embed.proj.weight`, [D, C, v.temporal_patch_size, v.patch_size, v.patch_size]],
  ];
  for (let l = 0; l < v.depth; l++) {
    const b = `${prefix}blocks.${l}`;
    out.push([`${b}.norm1.weight`, [D]], [`${b}.norm2.weight`, [D]]);
    if (!qwen25) out.push([`${b}.norm1.bias`, [D]], [`${b}.norm2.bias`, [D]]);
    out.push(
      [`${b}.attn.qkv.weight`, [3 * D, D]],
      [`${b}.attn.qkv.bias`, [3 * D]],
      [`${b}.attn.proj.weight`, [D, D]],
      [`${b}.attn.proj.bias`, [D]],
    );
    if (qwen25) {
      out.push(
        [`${b}.mlp.gate_proj.weight`, [F, D]],
        [`${b}.mlp.gate_proj.bias`, [F]],
        [`${b}.mlp.up_proj.weight`, [F, D]],
        [`${b}.mlp.up_proj.bias`, [F]],
        [`${b}.mlp.down_proj.weight`, [D, F]],
        [`${b}.mlp.down_proj.bias`, [D]],
      );
    } else {
      out.push(
        [`${b}.mlp.fc1.weight`, [F, D]],
        [`${b}.mlp.fc1.bias`, [F]],
        [`${b}.mlp.fc2.weight`, [D, F]],
        [`${b}.mlp.fc2.bias`, [D]],
      );
    }
  }
  out.push([`${prefix}merger.ln_q.weight`, [D]]);
  if (!qwen25) out.push([`${prefix}merger.ln_q.bias`, [D]]);
  out.push(
    [`${prefix}merger.mlp.0.weight`, [M, M]],
    [`${prefix}merger.mlp.0.bias`, [M]],
    [`${prefix}merger.mlp.2.weight`, [O, M]],
    [`${prefix}merger.mlp.2.bias`, [O]],
  );
  return out;
}

/**
 * One safetensors file of `layout`'s tensors, values uniform with standard deviation `std` (norm weights 1,
 * biases half as wide), stored as bf16: what speed and memory benchmarks need of a vision tower.
 */
export function writeRandomTensorsBf16(file: string, layout: [string, number[]][], seed = 0, std = 0.02): void {
  const rng = new Rng(seed);
  const a = std * Math.sqrt(3); // uniform(−a, a) has standard deviation std
  const f = new Float32Array(1),
    bits = new Uint32Array(f.buffer);
  writeSafetensors(
    file,
    layout.map(([name, shape]): WritableTensor => {
      const n = shape.reduce((x, y) => x * y, 1);
      const out = new Uint16Array(n);
      const isNorm = /norm\d?\.weight$|ln_q\.weight$/.test(name);
      const width = name.endsWith('.bias') ? a / 2 : a;
      for (let i = 0; i < n; i++) {
        f[0] = isNorm ? 1 : (rng.uniform() * 2 - 1) * width;
        out[i] = bits[0]! >>> 16;
      }
      return { name, shape, dtype: 'BF16', bytes: new Uint8Array(out.buffer) };
    }),
  );
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
  const inBits = new Uint32Array(values.buffer),
    outBits = new Uint32Array(out.buffer);
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
  const exp = (h >> 10) & 0x1f,
    frac = h & 0x3ff;
  if (exp === 0) return sign * frac * 2 ** -24;
  if (exp === 31) return frac ? NaN : sign * Infinity;
  return sign * (1 + frac / 1024) * 2 ** (exp - 15);
}
