/**
 * config.json → ModelSpec, through one small adapter per architecture family. An adapter is a frozen
 * table of the family's quirks (which projections carry a bias, whether q/k are normalised, the head
 * size rule); everything else is shared Llama semantics.
 */
import { ModelError } from '../errors.js';

export type Family = 'llama' | 'mistral' | 'qwen2' | 'qwen3';

export interface RopeSpec {
  theta: number;
  /** rope_type after normalising the two config spellings. */
  type: 'default' | 'linear' | 'llama3';
  factor: number;
  lowFreqFactor: number;
  highFreqFactor: number;
  originalMaxPositions: number;
}

export interface ModelSpec {
  family: Family;
  hiddenSize: number;        // D
  intermediateSize: number;  // F
  numLayers: number;         // L
  numHeads: number;          // H (query heads)
  numKvHeads: number;        // KV
  headDim: number;           // d
  vocabSize: number;         // V
  maxPositions: number;
  rmsNormEps: number;
  rope: RopeSpec;
  tieWordEmbeddings: boolean;
  /** q/k/v projections have a bias. */
  qkvBias: boolean;
  /** o_proj has a bias. */
  oBias: boolean;
  mlpBias: boolean;
  /** RMSNorm over head_dim on q and k before RoPE (Qwen3). */
  qkNorm: boolean;
  /** Keys older than this many positions are invisible (Mistral v0.1); null = full causal. */
  slidingWindow: number | null;
  bosTokenId: number | null;
  eosTokenIds: number[];
  padTokenId: number | null;
}

interface FamilyAdapter {
  /** q/k/v bias from the config, or the family's fixed rule. */
  qkvBias: (c: RawConfig) => boolean;
  oBias: (c: RawConfig) => boolean;
  qkNorm: boolean;
  slidingWindow: (c: RawConfig) => number | null;
}

type RawConfig = Record<string, unknown>;

const ADAPTERS: Readonly<Record<Family, FamilyAdapter>> = Object.freeze({
  llama: { qkvBias: (c) => c.attention_bias === true, oBias: (c) => c.attention_bias === true, qkNorm: false, slidingWindow: () => null },
  mistral: {
    qkvBias: () => false, oBias: () => false, qkNorm: false,
    slidingWindow: (c) => (typeof c.sliding_window === 'number' ? c.sliding_window : null),
  },
  qwen2: {
    qkvBias: () => true, oBias: () => false, qkNorm: false,
    slidingWindow: (c) => (c.use_sliding_window === true && typeof c.sliding_window === 'number' ? c.sliding_window : null),
  },
  qwen3: { qkvBias: (c) => c.attention_bias === true, oBias: (c) => c.attention_bias === true, qkNorm: true, slidingWindow: () => null },
});

export const SUPPORTED_FAMILIES = Object.keys(ADAPTERS) as Family[];

/**
 * Parses a config.json object; `file` only names the source in errors. Every field is checked for type and
 * range here, so odd input fails with the file and the field named rather than as NaN scores later.
 */
export function specFromConfig(config: unknown, file = 'config.json'): ModelSpec {
  if (!isObject(config)) throw new ModelError(`${file}: expected a JSON object, got ${kind(config)}`);
  const family = config.model_type;
  if (family === undefined || family === null) throw new ModelError(`${file}: field "model_type" is missing`);
  if (typeof family !== 'string' || !Object.hasOwn(ADAPTERS, family)) {
    throw new ModelError(`${file}: model_type ${JSON.stringify(family)} is not supported; supported: ${SUPPORTED_FAMILIES.join(', ')}`);
  }
  const adapter = ADAPTERS[family as Family];
  const field = (key: string, fallback: number | undefined, integer: boolean): number => {
    const v = config[key];
    if (v === undefined || v === null) {
      if (fallback !== undefined) return fallback;
      throw new ModelError(`${file}: field "${key}" is missing`);
    }
    const ok = typeof v === 'number' && Number.isFinite(v) && v > 0 && (!integer || Number.isInteger(v));
    if (!ok) throw new ModelError(`${file}: field "${key}" must be a positive ${integer ? 'integer' : 'finite number'}, got ${JSON.stringify(v)}`);
    return v as number;
  };
  const int = (key: string, fallback?: number) => field(key, fallback, true);
  const hiddenSize = int('hidden_size');
  const numHeads = int('num_attention_heads');
  const numKvHeads = int('num_key_value_heads', numHeads);
  if (numHeads % numKvHeads !== 0) throw new ModelError(`${file}: num_attention_heads ${numHeads} is not a multiple of num_key_value_heads ${numKvHeads}`);
  const headDim = config.head_dim === undefined || config.head_dim === null
    ? hiddenSize / numHeads
    : int('head_dim');
  if (!Number.isInteger(headDim) || headDim % 2 !== 0) {
    const from = config.head_dim === undefined || config.head_dim === null ? ` (hidden_size ${hiddenSize} / num_attention_heads ${numHeads}, as "head_dim" is absent)` : '';
    throw new ModelError(`${file}: head_dim ${headDim}${from} must be an even integer`);
  }
  if (config.hidden_act !== undefined && config.hidden_act !== 'silu') {
    throw new ModelError(`${file}: hidden_act ${JSON.stringify(config.hidden_act)} is not supported (only "silu")`);
  }
  const maxPositions = int('max_position_embeddings', 2048);
  const window = config.sliding_window;
  if (window !== undefined && window !== null && !(typeof window === 'number' && Number.isInteger(window) && window > 0)) {
    throw new ModelError(`${file}: field "sliding_window" must be a positive integer or null, got ${JSON.stringify(window)}`);
  }
  const slidingWindow = adapter.slidingWindow(config);
  return {
    family: family as Family,
    hiddenSize,
    intermediateSize: int('intermediate_size'),
    numLayers: int('num_hidden_layers'),
    numHeads,
    numKvHeads,
    headDim,
    vocabSize: int('vocab_size'),
    maxPositions,
    rmsNormEps: field('rms_norm_eps', 1e-6, false),
    rope: parseRope(config, file, maxPositions),
    tieWordEmbeddings: config.tie_word_embeddings === true,
    qkvBias: adapter.qkvBias(config),
    oBias: adapter.oBias(config),
    mlpBias: config.mlp_bias === true,
    qkNorm: adapter.qkNorm,
    slidingWindow,
    bosTokenId: tokenId(config, 'bos_token_id', file),
    eosTokenIds: eosTokenIds(config, file),
    padTokenId: tokenId(config, 'pad_token_id', file),
  };
}

function isObject(v: unknown): v is RawConfig {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function kind(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  return `${typeof v}${typeof v === 'object' ? '' : ` ${JSON.stringify(v)}`}`;
}

const isTokenId = (v: unknown): v is number => typeof v === 'number' && Number.isInteger(v) && v >= 0;

/**
 * An optional token id: absent, null or negative → null (older Llama configs write `pad_token_id: -1` for
 * "none"); anything but an integer is an error.
 */
function tokenId(config: RawConfig, key: string, file: string): number | null {
  const v = config[key];
  if (v === undefined || v === null || (Number.isInteger(v) && (v as number) < 0)) return null;
  if (!isTokenId(v)) throw new ModelError(`${file}: field "${key}" must be a token id (an integer) or null, got ${JSON.stringify(v)}`);
  return v;
}

/** eos_token_id is one id or a list of ids (Llama 3 lists several). */
function eosTokenIds(config: RawConfig, file: string): number[] {
  const v = config.eos_token_id;
  if (v === undefined || v === null) return [];
  if (isTokenId(v)) return [v];
  if (Array.isArray(v) && v.every(isTokenId)) return v;
  throw new ModelError(`${file}: field "eos_token_id" must be a token id, a list of token ids or null, got ${JSON.stringify(v)}`);
}

/** Both spellings: classic `rope_theta` + `rope_scaling`, and transformers v5 `rope_parameters`. */
function parseRope(config: RawConfig, file: string, maxPositions: number): RopeSpec {
  const key = config.rope_parameters !== undefined && config.rope_parameters !== null ? 'rope_parameters' : 'rope_scaling';
  const raw = config[key] ?? null;
  if (raw !== null && !isObject(raw)) throw new ModelError(`${file}: field "${key}" must be an object or null, got ${kind(raw)}`);
  const params: RawConfig = raw ?? {};
  // Each number comes from `params` first (v5 keeps rope_theta there), else the top level, else a default.
  const positive = (name: string, fallback: number, where: 'params' | 'either' = 'params'): number => {
    const inParams = params[name] !== undefined && params[name] !== null;
    const v = inParams ? params[name] : where === 'either' ? config[name] ?? fallback : fallback;
    if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0) {
      const at = inParams ? `${key}.${name}` : name;
      throw new ModelError(`${file}: field "${at}" must be a positive finite number, got ${JSON.stringify(v)}`);
    }
    return v;
  };
  const theta = positive('rope_theta', 10000, 'either');
  const rawType = params.rope_type ?? params.type ?? 'default';
  if (rawType !== 'default' && rawType !== 'linear' && rawType !== 'llama3') {
    throw new ModelError(`${file}: rope type ${JSON.stringify(rawType)} is not supported; supported: default, linear, llama3`);
  }
  if (config.partial_rotary_factor !== undefined && config.partial_rotary_factor !== 1) {
    throw new ModelError(`${file}: partial_rotary_factor is not supported`);
  }
  return {
    theta,
    type: rawType,
    factor: positive('factor', 1),
    lowFreqFactor: positive('low_freq_factor', 1),
    highFreqFactor: positive('high_freq_factor', 4),
    originalMaxPositions: positive('original_max_position_embeddings', maxPositions),
  };
}

/**
 * RoPE inverse frequencies [d/2] after scaling, computed as transformers does
 * (`_compute_default_rope_parameters`, `_compute_llama3_parameters`; linear divides by the factor).
 */
export function ropeInverseFrequencies(spec: ModelSpec): Float32Array {
  const { headDim: d, rope } = spec;
  const base = new Float32Array(d / 2);
  for (let i = 0; i < d / 2; i++) base[i] = 1 / Math.pow(rope.theta, (2 * i) / d);
  if (rope.type === 'linear') return base.map((f) => f / rope.factor);
  if (rope.type === 'llama3') {
    const lowWavelen = rope.originalMaxPositions / rope.lowFreqFactor;
    const highWavelen = rope.originalMaxPositions / rope.highFreqFactor;
    return base.map((f) => {
      const wavelen = (2 * Math.PI) / f;
      if (wavelen < highWavelen) return f;
      if (wavelen > lowWavelen) return f / rope.factor;
      const smooth = (rope.originalMaxPositions / wavelen - rope.lowFreqFactor) / (rope.highFreqFactor - rope.lowFreqFactor);
      return (1 - smooth) * (f / rope.factor) + smooth * f;
    });
  }
  return base;
}

/** Every tensor a checkpoint of this spec must hold, with its HF shape. */
export function expectedTensors(spec: ModelSpec): Map<string, number[]> {
  const { hiddenSize: D, intermediateSize: F, numHeads: H, numKvHeads: KV, headDim: d, vocabSize: V } = spec;
  const t = new Map<string, number[]>();
  t.set('model.embed_tokens.weight', [V, D]);
  t.set('model.norm.weight', [D]);
  if (!spec.tieWordEmbeddings) t.set('lm_head.weight', [V, D]);
  for (let l = 0; l < spec.numLayers; l++) {
    const p = `model.layers.${l}`;
    t.set(`${p}.input_layernorm.weight`, [D]);
    t.set(`${p}.post_attention_layernorm.weight`, [D]);
    t.set(`${p}.self_attn.q_proj.weight`, [H * d, D]);
    t.set(`${p}.self_attn.k_proj.weight`, [KV * d, D]);
    t.set(`${p}.self_attn.v_proj.weight`, [KV * d, D]);
    t.set(`${p}.self_attn.o_proj.weight`, [D, H * d]);
    if (spec.qkvBias) {
      t.set(`${p}.self_attn.q_proj.bias`, [H * d]);
      t.set(`${p}.self_attn.k_proj.bias`, [KV * d]);
      t.set(`${p}.self_attn.v_proj.bias`, [KV * d]);
    }
    if (spec.oBias) t.set(`${p}.self_attn.o_proj.bias`, [D]);
    if (spec.qkNorm) {
      t.set(`${p}.self_attn.q_norm.weight`, [d]);
      t.set(`${p}.self_attn.k_norm.weight`, [d]);
    }
    t.set(`${p}.mlp.gate_proj.weight`, [F, D]);
    t.set(`${p}.mlp.up_proj.weight`, [F, D]);
    t.set(`${p}.mlp.down_proj.weight`, [D, F]);
    if (spec.mlpBias) {
      t.set(`${p}.mlp.gate_proj.bias`, [F]);
      t.set(`${p}.mlp.up_proj.bias`, [F]);
      t.set(`${p}.mlp.down_proj.bias`, [D]);
    }
  }
  return t;
}
