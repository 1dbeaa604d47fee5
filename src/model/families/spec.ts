/**
 * config.json → ModelSpec, through one small adapter per architecture family. An adapter is a frozen
 * table of the family's quirks (which projections carry a bias, whether q/k are normalised, the head
 * size rule, Gemma's norm offset and soft-capping, Phi-3's fused projections); everything else is shared
 * Llama semantics.
 */
import { ModelError } from '../errors.js';
import { mropeFrequencyRows, mropeLayout } from '../vision/mrope.js';

export type Family = 'llama' | 'mistral' | 'qwen2' | 'qwen3' | 'gemma' | 'gemma2' | 'gemma3_text' | 'phi3';

/** MLP activation on the gate: SwiGLU (silu) or GeGLU (gelu, exact or tanh-approximated). */
export type Activation = 'silu' | 'gelu_tanh' | 'gelu';

/** 'sliding': the layer sees only the last `slidingWindow` keys; 'full': all earlier keys. */
export type LayerType = 'full' | 'sliding';

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
  hiddenSize: number; // D
  intermediateSize: number; // F
  numLayers: number; // L
  numHeads: number; // H (query heads)
  numKvHeads: number; // KV
  headDim: number; // d
  vocabSize: number; // V
  maxPositions: number;
  rmsNormEps: number;
  rope: RopeSpec;
  /** RoPE of the sliding layers where it differs from `rope` (Gemma 3's local base frequency); null = `rope`. */
  slidingRope: RopeSpec | null;
  /** Leading dimensions of each head that RoPE rotates (Phi-3 partial_rotary_factor · d); the rest pass through. */
  rotaryDim: number;
  tieWordEmbeddings: boolean;
  /** q/k/v projections have a bias. */
  qkvBias: boolean;
  /** o_proj has a bias. */
  oBias: boolean;
  mlpBias: boolean;
  /** RMSNorm over head_dim on q and k before RoPE (Qwen3, Gemma 3). */
  qkNorm: boolean;
  /** Keys older than this many positions are invisible to the layers marked 'sliding'; null = none slide. */
  slidingWindow: number | null;
  /** Per layer [L]: which attention it uses. */
  layerTypes: LayerType[];
  /** Queries are multiplied by this before q·k: 1/√d, or query_pre_attn_scalar^−½ (Gemma 2/3). */
  attnScale: number;
  /** Attention scores become tanh(s/c)·c before the mask (Gemma 2); null = none. */
  attnSoftcap: number | null;
  /** Final logits become tanh(x/c)·c (Gemma 2/3); null = none. */
  finalSoftcap: number | null;
  activation: Activation;
  /** Every RMSNorm multiplies by (normOffset + w): Gemma stores w − 1. Applied to the weights at export. */
  normOffset: 0 | 1;
  /** Norms on the attention and MLP outputs too, before the residual add (Gemma 2/3). */
  sandwichNorms: boolean;
  /** Embedding rows are multiplied by this before layer 0 (Gemma: √hidden_size as float32); null = none. */
  embedScale: number | null;
  /** The checkpoint stores fused qkv_proj and gate_up_proj (Phi-3) instead of separate projections. */
  fusedProjections: boolean;
  bosTokenId: number | null;
  eosTokenIds: number[];
  padTokenId: number | null;
  /**
   * The language model of an image-text checkpoint (Qwen2-VL, Qwen2.5-VL, Qwen3-VL, LLaVA-OneVision); null for text
   * checkpoints.
   */
  imageText: ImageTextSpec | null;
}

/** The image-text checkpoints whose language model runs as one of the text families. */
export type ImageTextModelType = 'qwen2_vl' | 'qwen2_5_vl' | 'qwen3_vl' | 'llava_onevision';

/**
 * Where a checkpoint keeps its language model: `prefix` replaces `model.` of the text names; `lmHead` the head's name.
 */
export interface LanguageModelSpelling {
  prefix: string;
  lmHead: string;
}

export interface ImageTextSpec {
  modelType: ImageTextModelType;
  /**
   * M-RoPE: for each rotary frequency [rotaryDim / 2], the position row (0 temporal, 1 height, 2 width) whose
   * position sets its angle; the graph then takes position_ids [3, B, S]. null: plain RoPE over [B, S] (LLaVA-OV).
   */
  mropeRows: number[] | null;
  /** Qwen3-VL DeepStack: features are added at the image rows after each of the first k layers; 0 = none. */
  deepstackLayers: number;
  /** The weight spellings this family's checkpoints use, tried in order (transformers 5 first). */
  spellings: LanguageModelSpelling[];
}

type RawConfig = Record<string, unknown>;

interface FamilyAdapter {
  /** q/k/v bias from the config, or the family's fixed rule. */
  qkvBias: (c: RawConfig) => boolean;
  oBias: (c: RawConfig) => boolean;
  qkNorm: boolean;
  slidingWindow: (c: RawConfig) => number | null;
  /** Which layers slide; null: every layer when there is a window (Mistral, Qwen2). */
  layerPattern: ((c: RawConfig, numLayers: number, file: string) => LayerType[]) | null;
  /** The activation's config name (validated by specFromConfig). */
  activation: (c: RawConfig) => unknown;
  normOffset: 0 | 1;
  sandwichNorms: boolean;
  embedScale: boolean;
  /** Query scaling; `headDim` for the default 1/√d. */
  attnScale: (c: RawConfig, headDim: number, file: string) => number;
  attnSoftcap: (c: RawConfig, file: string) => number | null;
  finalSoftcap: (c: RawConfig, file: string) => number | null;
  fusedProjections: boolean;
  /** partial_rotary_factor < 1 is honoured (Phi-3); elsewhere it is refused. */
  partialRotary: boolean;
  /** Separate RoPE for sliding layers (Gemma 3); null: all layers share `rope`. */
  slidingRope: ((c: RawConfig, file: string, maxPositions: number) => RopeSpec) | null;
}

const LLAMA_LIKE: FamilyAdapter = {
  qkvBias: (c) => c.attention_bias === true,
  oBias: (c) => c.attention_bias === true,
  qkNorm: false,
  slidingWindow: () => null,
  layerPattern: null,
  activation: (c) => c.hidden_act ?? 'silu',
  normOffset: 0,
  sandwichNorms: false,
  embedScale: false,
  attnScale: (_c, d) => 1 / Math.sqrt(d),
  attnSoftcap: () => null,
  finalSoftcap: () => null,
  fusedProjections: false,
  partialRotary: false,
  slidingRope: null,
};

/** Gemma's shared quirks: (1 + w) RMSNorm, embeddings × √hidden, GeGLU. */
const GEMMA_LIKE: FamilyAdapter = {
  ...LLAMA_LIKE,
  // transformers reads `hidden_activation`; without it Gemma is gelu_pytorch_tanh whatever `hidden_act` says.
  activation: (c) => c.hidden_activation ?? 'gelu_pytorch_tanh',
  normOffset: 1,
  embedScale: true,
};

/** Gemma 2/3: pre+post norms, query_pre_attn_scalar, sliding layers (defaults as transformers' config classes). */
const GEMMA2_LIKE: FamilyAdapter = {
  ...GEMMA_LIKE,
  sandwichNorms: true,
  slidingWindow: (c) =>
    c.sliding_window === undefined ? 4096 : typeof c.sliding_window === 'number' ? c.sliding_window : null,
  attnScale: (c, _d, file) => 1 / Math.sqrt(optionalPositive(c, 'query_pre_attn_scalar', 256, file)!),
};

const ADAPTERS: Readonly<Record<Family, Readonly<FamilyAdapter>>> = Object.freeze({
  llama: Object.freeze({ ...LLAMA_LIKE }),
  mistral: Object.freeze({
    ...LLAMA_LIKE,
    qkvBias: () => false,
    oBias: () => false,
    slidingWindow: (c: RawConfig) => (typeof c.sliding_window === 'number' ? c.sliding_window : null),
  }),
  qwen2: Object.freeze({
    ...LLAMA_LIKE,
    qkvBias: () => true,
    oBias: () => false,
    slidingWindow: (c: RawConfig) =>
      c.use_sliding_window === true && typeof c.sliding_window === 'number' ? c.sliding_window : null,
  }),
  qwen3: Object.freeze({ ...LLAMA_LIKE, qkNorm: true }),
  gemma: Object.freeze({ ...GEMMA_LIKE }),
  gemma2: Object.freeze({
    ...GEMMA2_LIKE,
    // Gemma2Config: layers 0, 2, 4, … slide.
    layerPattern: (c: RawConfig, L: number, file: string) =>
      layerTypesFrom(c, L, file, (l) => (l % 2 === 0 ? 'sliding' : 'full')),
    attnSoftcap: (c: RawConfig, file: string) => optionalPositive(c, 'attn_logit_softcapping', 50, file),
    finalSoftcap: (c: RawConfig, file: string) => optionalPositive(c, 'final_logit_softcapping', 30, file),
  }),
  gemma3_text: Object.freeze({
    ...GEMMA2_LIKE,
    qkNorm: true,
    // Gemma3TextConfig: every `sliding_window_pattern`-th layer (6 by default) is global, the rest slide.
    layerPattern: (c: RawConfig, L: number, file: string) => {
      const every = optionalPositive(
        c,
        c.sliding_window_pattern !== undefined ? 'sliding_window_pattern' : '_sliding_window_pattern',
        6,
        file,
      )!;
      return layerTypesFrom(c, L, file, (l) => ((l + 1) % every === 0 ? 'full' : 'sliding'));
    },
    attnSoftcap: (c: RawConfig, file: string) => optionalPositive(c, 'attn_logit_softcapping', null, file),
    finalSoftcap: (c: RawConfig, file: string) => optionalPositive(c, 'final_logit_softcapping', null, file),
    slidingRope: gemma3SlidingRope,
  }),
  phi3: Object.freeze({
    ...LLAMA_LIKE,
    qkvBias: () => false,
    oBias: () => false,
    slidingWindow: (c: RawConfig) => (typeof c.sliding_window === 'number' ? c.sliding_window : null),
    fusedProjections: true,
    partialRotary: true,
  }),
});

/**
 * Image-text families: config.json nests the language model's settings in `text_config` (older hub Qwen2-VL and
 * Qwen2.5-VL configs keep them at the top level) and it runs as a text family; the rest is where its weights live.
 */
const IMAGE_TEXT: Readonly<
  Record<ImageTextModelType, { text: (c: RawConfig) => unknown; spellings: LanguageModelSpelling[] }>
> = Object.freeze({
  // transformers 5 `model.language_model.*`; hub checkpoints from before it `model.*` (both with `lm_head.weight`).
  qwen2_vl: {
    text: () => 'qwen2',
    spellings: [
      { prefix: 'model.language_model.', lmHead: 'lm_head.weight' },
      { prefix: 'model.', lmHead: 'lm_head.weight' },
    ],
  },
  qwen2_5_vl: {
    text: () => 'qwen2',
    spellings: [
      { prefix: 'model.language_model.', lmHead: 'lm_head.weight' },
      { prefix: 'model.', lmHead: 'lm_head.weight' },
    ],
  },
  qwen3_vl: {
    text: () => 'qwen3',
    spellings: [
      { prefix: 'model.language_model.', lmHead: 'lm_head.weight' },
      { prefix: 'model.', lmHead: 'lm_head.weight' },
    ],
  },
  // The LLM is whatever text_config says (Qwen2 for the released models); llava-hf checkpoints nest it as a CausalLM.
  llava_onevision: {
    text: (c) => c.model_type ?? 'qwen2',
    spellings: [
      { prefix: 'model.language_model.', lmHead: 'lm_head.weight' },
      { prefix: 'language_model.model.', lmHead: 'language_model.lm_head.weight' },
    ],
  },
});

export const SUPPORTED_FAMILIES = Object.keys(ADAPTERS) as Family[];
export const IMAGE_TEXT_MODEL_TYPES = Object.keys(IMAGE_TEXT) as ImageTextModelType[];

/**
 * Parses a config.json object; `file` only names the source in errors. Image-text configs give their language
 * model's spec (family qwen2/qwen3/…, `imageText` set).
 */
export function specFromConfig(config: unknown, file = 'config.json'): ModelSpec {
  if (!isObject(config)) throw new ModelError(`${file}: expected a JSON object, got ${kind(config)}`);
  const modelType = config.model_type;
  if (typeof modelType !== 'string' || !Object.hasOwn(IMAGE_TEXT, modelType)) return textSpecFromConfig(config, file);
  const type = modelType as ImageTextModelType;
  const nested = config.text_config !== undefined && config.text_config !== null;
  if (nested && !isObject(config.text_config))
    throw new ModelError(`${file}: field "text_config" must be an object, got ${kind(config.text_config)}`);
  const raw = nested ? (config.text_config as RawConfig) : config;
  const where = nested ? `${file} text_config` : file;
  const textFamily = IMAGE_TEXT[type].text(raw);
  if (typeof textFamily !== 'string' || !Object.hasOwn(ADAPTERS, textFamily)) {
    throw new ModelError(
      `${where}: model_type ${JSON.stringify(textFamily)} is not a supported language model for ${type}; supported: ${SUPPORTED_FAMILIES.join(', ')}`,
    );
  }
  const text: RawConfig = { ...raw, model_type: textFamily };
  // Tying is decided at the top level when only it says so (older flat configs, some v5 saves).
  if (text.tie_word_embeddings === undefined && config.tie_word_embeddings !== undefined)
    text.tie_word_embeddings = config.tie_word_embeddings;
  // Older hub configs spell M-RoPE as rope_scaling {type: "mrope"}: plain RoPE per row, sections read below.
  for (const key of ['rope_parameters', 'rope_scaling']) {
    const rope = text[key];
    if (isObject(rope) && (rope.type === 'mrope' || rope.rope_type === 'mrope'))
      text[key] = { ...rope, type: 'default', rope_type: 'default' };
  }
  const spec = textSpecFromConfig(text, where);
  const layout = type === 'llava_onevision' ? undefined : mropeLayout(config);
  if (type !== 'llava_onevision' && !layout)
    throw new ModelError(
      `${where}: "rope_parameters.mrope_section" (or "rope_scaling.mrope_section") is missing; ${type} needs M-RoPE sections`,
    );
  if (layout && spec.slidingWindow !== null)
    throw new ModelError(
      `${where}: sliding-window attention with M-RoPE is not supported (set use_sliding_window false)`,
    );
  let deepstackLayers = 0;
  if (type === 'qwen3_vl') {
    const vision = isObject(config.vision_config) ? config.vision_config : {};
    const indexes = vision.deepstack_visual_indexes ?? [8, 16, 24]; // Qwen3VLVisionConfig's default
    if (!Array.isArray(indexes))
      throw new ModelError(
        `${file}: field "vision_config.deepstack_visual_indexes" must be a list, got ${kind(indexes)}`,
      );
    deepstackLayers = indexes.length;
    if (deepstackLayers > spec.numLayers)
      throw new ModelError(
        `${file}: ${deepstackLayers} DeepStack features but the language model has ${spec.numLayers} layers`,
      );
  }
  return {
    ...spec,
    imageText: {
      modelType: type,
      mropeRows: layout ? Array.from(mropeFrequencyRows(spec.rotaryDim / 2, layout)) : null,
      deepstackLayers,
      spellings: IMAGE_TEXT[type].spellings,
    },
  };
}

/**
 * The spelling of the language model's weights in a checkpoint holding `names`: the text names of `spec`
 * (`model.layers.0…`, `lm_head.weight`) map to these. Text checkpoints use the text names as they are.
 */
export function languageModelSpelling(spec: ModelSpec, names: Iterable<string>, dir: string): LanguageModelSpelling {
  const spellings = spec.imageText?.spellings ?? [{ prefix: 'model.', lmHead: 'lm_head.weight' }];
  if (spellings.length === 1) return spellings[0]!;
  const all = new Set(names);
  const hit = spellings.find((s) => all.has(`${s.prefix}embed_tokens.weight`));
  if (!hit)
    throw new ModelError(
      `${dir}: no language-model weights (looked for ${spellings.map((s) => `"${s.prefix}embed_tokens.weight"`).join(', ')})`,
    );
  return hit;
}

/**
 * Checkpoint name → the text name the exporter reads (`model.…`, `lm_head.weight`), or null for other tensors (vision
 * tower).
 */
export function textWeightName(spelling: LanguageModelSpelling, stored: string): string | null {
  if (stored === spelling.lmHead) return 'lm_head.weight';
  if (stored.startsWith(spelling.prefix)) return `model.${stored.slice(spelling.prefix.length)}`;
  return null;
}

/**
 * A text family's config.json. Every field is checked for type and range here, so odd input fails with the
 * file and the field named rather than as NaN scores later.
 */
function textSpecFromConfig(config: RawConfig, file: string): ModelSpec {
  const family = config.model_type;
  if (family === undefined || family === null) throw new ModelError(`${file}: field "model_type" is missing`);
  if (typeof family !== 'string' || !Object.hasOwn(ADAPTERS, family)) {
    throw new ModelError(
      `${file}: model_type ${JSON.stringify(family)} is not supported; supported: ${[...SUPPORTED_FAMILIES, ...IMAGE_TEXT_MODEL_TYPES].join(', ')}`,
    );
  }
  const adapter = ADAPTERS[family as Family];
  const field = (key: string, fallback: number | undefined, integer: boolean): number => {
    const v = config[key];
    if (v === undefined || v === null) {
      if (fallback !== undefined) return fallback;
      throw new ModelError(`${file}: field "${key}" is missing`);
    }
    const ok = typeof v === 'number' && Number.isFinite(v) && v > 0 && (!integer || Number.isInteger(v));
    if (!ok)
      throw new ModelError(
        `${file}: field "${key}" must be a positive ${integer ? 'integer' : 'finite number'}, got ${JSON.stringify(v)}`,
      );
    return v as number;
  };
  const int = (key: string, fallback?: number) => field(key, fallback, true);
  const hiddenSize = int('hidden_size');
  const numHeads = int('num_attention_heads');
  const numKvHeads = int('num_key_value_heads', numHeads);
  if (numHeads % numKvHeads !== 0)
    throw new ModelError(
      `${file}: num_attention_heads ${numHeads} is not a multiple of num_key_value_heads ${numKvHeads}`,
    );
  const headDim = config.head_dim === undefined || config.head_dim === null ? hiddenSize / numHeads : int('head_dim');
  if (!Number.isInteger(headDim) || headDim % 2 !== 0) {
    const from =
      config.head_dim === undefined || config.head_dim === null
        ? ` (hidden_size ${hiddenSize} / num_attention_heads ${numHeads}, as "head_dim" is absent)`
        : '';
    throw new ModelError(`${file}: head_dim ${headDim}${from} must be an even integer`);
  }
  const activation = parseActivation(
    adapter.activation(config),
    family === 'gemma' || family === 'gemma2' || family === 'gemma3_text' ? 'hidden_activation' : 'hidden_act',
    file,
  );
  const maxPositions = int('max_position_embeddings', 2048);
  const window = config.sliding_window;
  if (
    window !== undefined &&
    window !== null &&
    !(typeof window === 'number' && Number.isInteger(window) && window > 0)
  ) {
    throw new ModelError(
      `${file}: field "sliding_window" must be a positive integer or null, got ${JSON.stringify(window)}`,
    );
  }
  const slidingWindow = adapter.slidingWindow(config);
  const numLayers = int('num_hidden_layers');
  const layerTypes: LayerType[] =
    slidingWindow === null
      ? Array.from({ length: numLayers }, () => 'full')
      : (adapter.layerPattern?.(config, numLayers, file) ?? Array.from({ length: numLayers }, () => 'sliding'));
  if (config.use_bidirectional_attention === true) {
    throw new ModelError(
      `${file}: use_bidirectional_attention is not supported (an encoder such as EmbeddingGemma, not a causal decoder)`,
    );
  }
  const rope = parseRope(config, file, maxPositions);
  const rotaryDim = parseRotaryDim(config, file, headDim, adapter.partialRotary);
  return {
    family: family as Family,
    hiddenSize,
    intermediateSize: int('intermediate_size'),
    numLayers,
    numHeads,
    numKvHeads,
    headDim,
    vocabSize: int('vocab_size'),
    maxPositions,
    rmsNormEps: field('rms_norm_eps', 1e-6, false),
    rope,
    slidingRope:
      adapter.slidingRope && layerTypes.includes('sliding') ? adapter.slidingRope(config, file, maxPositions) : null,
    rotaryDim,
    tieWordEmbeddings: config.tie_word_embeddings === true,
    qkvBias: adapter.qkvBias(config),
    oBias: adapter.oBias(config),
    mlpBias: config.mlp_bias === true,
    qkNorm: adapter.qkNorm,
    slidingWindow,
    layerTypes,
    attnScale: adapter.attnScale(config, headDim, file),
    attnSoftcap: adapter.attnSoftcap(config, file),
    finalSoftcap: adapter.finalSoftcap(config, file),
    activation,
    normOffset: adapter.normOffset,
    sandwichNorms: adapter.sandwichNorms,
    // transformers multiplies by torch.tensor(hidden_size ** 0.5, dtype=embeddings' dtype): float32 here.
    embedScale: adapter.embedScale ? Math.fround(Math.sqrt(hiddenSize)) : null,
    fusedProjections: adapter.fusedProjections,
    bosTokenId: tokenId(config, 'bos_token_id', file),
    eosTokenIds: eosTokenIds(config, file),
    padTokenId: tokenId(config, 'pad_token_id', file),
    imageText: null,
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
  if (!isTokenId(v))
    throw new ModelError(`${file}: field "${key}" must be a token id (an integer) or null, got ${JSON.stringify(v)}`);
  return v;
}

/** eos_token_id is one id or a list of ids (Llama 3 lists several). */
function eosTokenIds(config: RawConfig, file: string): number[] {
  const v = config.eos_token_id;
  if (v === undefined || v === null) return [];
  if (isTokenId(v)) return [v];
  if (Array.isArray(v) && v.every(isTokenId)) return v;
  throw new ModelError(
    `${file}: field "eos_token_id" must be a token id, a list of token ids or null, got ${JSON.stringify(v)}`,
  );
}

/** Both spellings: classic `rope_theta` + `rope_scaling`, and transformers v5 `rope_parameters`. */
function parseRope(config: RawConfig, file: string, maxPositions: number): RopeSpec {
  const key =
    config.rope_parameters !== undefined && config.rope_parameters !== null ? 'rope_parameters' : 'rope_scaling';
  const raw = config[key] ?? null;
  if (raw !== null && !isObject(raw))
    throw new ModelError(`${file}: field "${key}" must be an object or null, got ${kind(raw)}`);
  // v5 Gemma 3 keys the parameters by layer type; the global layers' entry is this spec's `rope`.
  if (raw !== null && isObject(raw.full_attention))
    return ropeFrom(raw.full_attention, `${key}.full_attention`, config, file, maxPositions);
  return ropeFrom(raw ?? {}, key, config, file, maxPositions);
}

/** One RoPE parameter object; a number missing there comes from the config's top level, else a default. */
function ropeFrom(
  params: RawConfig,
  key: string,
  config: RawConfig,
  file: string,
  maxPositions: number,
  thetaFallback?: number,
): RopeSpec {
  const positive = (name: string, fallback: number, where: 'params' | 'either' = 'params'): number => {
    const inParams = params[name] !== undefined && params[name] !== null;
    const v = inParams ? params[name] : where === 'either' ? (config[name] ?? fallback) : fallback;
    if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0) {
      const at = inParams ? `${key}.${name}` : name;
      throw new ModelError(`${file}: field "${at}" must be a positive finite number, got ${JSON.stringify(v)}`);
    }
    return v;
  };
  const theta =
    thetaFallback === undefined ? positive('rope_theta', 10000, 'either') : positive('rope_theta', thetaFallback);
  const rawType = params.rope_type ?? params.type ?? 'default';
  if (rawType !== 'default' && rawType !== 'linear' && rawType !== 'llama3') {
    throw new ModelError(
      `${file}: rope type ${JSON.stringify(rawType)} is not supported; supported: default, linear, llama3`,
    );
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
 * Gemma 3's sliding layers: v5 `rope_parameters.sliding_attention`, else the older `rope_local_base_freq`
 * (default 10000) with plain RoPE — rope_scaling applies to the global layers only.
 */
function gemma3SlidingRope(config: RawConfig, file: string, maxPositions: number): RopeSpec {
  const params = config.rope_parameters;
  if (isObject(params) && isObject(params.sliding_attention))
    return ropeFrom(params.sliding_attention, 'rope_parameters.sliding_attention', config, file, maxPositions);
  const base = optionalPositive(config, 'rope_local_base_freq', 10000, file)!;
  return ropeFrom({}, 'rope_local_base_freq', config, file, maxPositions, base);
}

/**
 * How many leading dimensions of a head RoPE rotates: int(head_dim · partial_rotary_factor), as transformers
 * computes it; the factor sits in rope_parameters (v5) or at the top level.
 */
function parseRotaryDim(config: RawConfig, file: string, headDim: number, allowed: boolean): number {
  const params = isObject(config.rope_parameters) ? config.rope_parameters : {};
  const key =
    params.partial_rotary_factor !== undefined && params.partial_rotary_factor !== null
      ? 'rope_parameters.partial_rotary_factor'
      : 'partial_rotary_factor';
  const factor = key === 'partial_rotary_factor' ? config.partial_rotary_factor : params.partial_rotary_factor;
  if (factor === undefined || factor === null || factor === 1) return headDim;
  if (!allowed)
    throw new ModelError(
      `${file}: ${key} ${JSON.stringify(factor)} is not supported for model_type ${JSON.stringify(config.model_type)} (only 1)`,
    );
  if (typeof factor !== 'number' || !(factor > 0 && factor <= 1))
    throw new ModelError(`${file}: field "${key}" must be a number in (0, 1], got ${JSON.stringify(factor)}`);
  const dim = Math.floor(headDim * factor);
  if (dim < 2 || dim % 2 !== 0)
    throw new ModelError(
      `${file}: ${key} ${factor} × head_dim ${headDim} gives ${dim} rotary dimensions; expected an even number ≥ 2`,
    );
  return dim;
}

/** A number the config may leave out (then `fallback`, transformers' class default) or set to null (none). */
function optionalPositive(config: RawConfig, key: string, fallback: number | null, file: string): number | null {
  const v = config[key];
  if (v === undefined) return fallback;
  if (v === null) return null;
  if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0)
    throw new ModelError(`${file}: field "${key}" must be a positive finite number or null, got ${JSON.stringify(v)}`);
  return v;
}

/** `layer_types` as written (v5 configs), else the family's pattern. */
function layerTypesFrom(
  config: RawConfig,
  numLayers: number,
  file: string,
  pattern: (layer: number) => LayerType,
): LayerType[] {
  const raw = config.layer_types;
  if (raw === undefined || raw === null) return Array.from({ length: numLayers }, (_, l) => pattern(l));
  const names: Record<string, LayerType> = { full_attention: 'full', sliding_attention: 'sliding' };
  if (
    !Array.isArray(raw) ||
    raw.length !== numLayers ||
    !raw.every((t) => typeof t === 'string' && Object.hasOwn(names, t))
  ) {
    throw new ModelError(
      `${file}: field "layer_types" must list "full_attention" or "sliding_attention" for each of the ${numLayers} layers, got ${JSON.stringify(raw).slice(0, 120)}`,
    );
  }
  return raw.map((t) => names[t as string]!);
}

/** The activation's transformers name → the graph's; `key` names the field in errors. */
function parseActivation(name: unknown, key: string, file: string): Activation {
  if (name === 'silu' || name === 'swish') return 'silu';
  if (name === 'gelu_pytorch_tanh') return 'gelu_tanh';
  if (name === 'gelu') return 'gelu';
  throw new ModelError(
    `${file}: ${key} ${JSON.stringify(name)} is not supported (supported: "silu", "gelu_pytorch_tanh", "gelu")`,
  );
}

/**
 * RoPE inverse frequencies [d/2] after scaling, computed as transformers does
 * (`_compute_default_rope_parameters`, `_compute_llama3_parameters`; linear divides by the factor).
 */
export function ropeInverseFrequencies(spec: ModelSpec, rope: RopeSpec = spec.rope): Float32Array {
  const d = spec.rotaryDim; // partial rotary: the frequencies of a rotaryDim-sized head
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
      const smooth =
        (rope.originalMaxPositions / wavelen - rope.lowFreqFactor) / (rope.highFreqFactor - rope.lowFreqFactor);
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
    if (spec.sandwichNorms) {
      t.set(`${p}.pre_feedforward_layernorm.weight`, [D]);
      t.set(`${p}.post_feedforward_layernorm.weight`, [D]);
    }
    if (spec.fusedProjections) {
      t.set(`${p}.self_attn.qkv_proj.weight`, [(H + 2 * KV) * d, D]);
      if (spec.qkvBias) t.set(`${p}.self_attn.qkv_proj.bias`, [(H + 2 * KV) * d]);
    } else {
      t.set(`${p}.self_attn.q_proj.weight`, [H * d, D]);
      t.set(`${p}.self_attn.k_proj.weight`, [KV * d, D]);
      t.set(`${p}.self_attn.v_proj.weight`, [KV * d, D]);
      if (spec.qkvBias) {
        t.set(`${p}.self_attn.q_proj.bias`, [H * d]);
        t.set(`${p}.self_attn.k_proj.bias`, [KV * d]);
        t.set(`${p}.self_attn.v_proj.bias`, [KV * d]);
      }
    }
    t.set(`${p}.self_attn.o_proj.weight`, [D, H * d]);
    if (spec.oBias) t.set(`${p}.self_attn.o_proj.bias`, [D]);
    if (spec.qkNorm) {
      t.set(`${p}.self_attn.q_norm.weight`, [d]);
      t.set(`${p}.self_attn.k_norm.weight`, [d]);
    }
    if (spec.fusedProjections) {
      t.set(`${p}.mlp.gate_up_proj.weight`, [2 * F, D]);
      if (spec.mlpBias) t.set(`${p}.mlp.gate_up_proj.bias`, [2 * F]);
    } else {
      t.set(`${p}.mlp.gate_proj.weight`, [F, D]);
      t.set(`${p}.mlp.up_proj.weight`, [F, D]);
      if (spec.mlpBias) {
        t.set(`${p}.mlp.gate_proj.bias`, [F]);
        t.set(`${p}.mlp.up_proj.bias`, [F]);
      }
    }
    t.set(`${p}.mlp.down_proj.weight`, [D, F]);
    if (spec.mlpBias) t.set(`${p}.mlp.down_proj.bias`, [D]);
  }
  return t;
}
