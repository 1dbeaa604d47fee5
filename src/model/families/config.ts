/**
 * config.json → ModelSpec. Where a checkpoint's family gets decided: here, in `specFromConfig`, from config.json's
 * `model_type` alone (`architectures` is never read). A text `model_type` (llama, mistral, qwen2, qwen3, gemma,
 * gemma2, gemma3_text, phi3) is the family, and its row of FAMILY_ADAPTERS (tables.ts) supplies the quirks; an
 * image-text one (qwen2_vl, qwen2_5_vl, qwen3_vl, llava_onevision: IMAGE_TEXT_ADAPTERS) names the text family its
 * language model runs as (fixed for the Qwen VL types, `text_config.model_type` for LLaVA-OneVision) and sets
 * `imageText`; anything else is refused with the supported list. The vision tower's kind comes from the same
 * `model_type` in vision-config.ts. Every field is checked for type and range, so odd input fails with the file and
 * the field named rather than as NaN scores later.
 */
import { ModelError } from '../errors.js';
import { isObject, kind, positiveField, type RawConfig } from './config-fields.js';
import { mropeFrequencyRows, mropeLayout, parseRope, parseRotaryDim } from './rope-config.js';
import {
  FAMILY_ADAPTERS,
  IMAGE_TEXT_ADAPTERS,
  IMAGE_TEXT_MODEL_TYPES,
  SUPPORTED_FAMILIES,
  type FamilyAdapter,
} from './tables.js';
import type { Activation, Family, ImageTextModelType, LayerType, ModelSpec } from './types.js';

/**
 * Parses a config.json object; `file` only names the source in errors. Image-text configs give their language
 * model's spec (family qwen2/qwen3/…, `imageText` set).
 */
export function specFromConfig(config: unknown, file = 'config.json'): ModelSpec {
  if (!isObject(config)) throw new ModelError(`${file}: expected a JSON object, got ${kind(config)}`);
  const modelType = config.model_type;
  if (typeof modelType !== 'string' || !Object.hasOwn(IMAGE_TEXT_ADAPTERS, modelType))
    return textSpecFromConfig(config, file);
  const type = modelType as ImageTextModelType;
  const adapter = IMAGE_TEXT_ADAPTERS[type];
  const { text, where } = languageModelConfig(config, type, file);
  const spec = textSpecFromConfig(text, where);
  const layout = adapter.mrope ? mropeLayout(config) : undefined;
  if (adapter.mrope && !layout)
    throw new ModelError(
      `${where}: "rope_parameters.mrope_section" (or "rope_scaling.mrope_section") is missing; ` +
        `${type} needs M-RoPE sections`,
    );
  if (layout && spec.slidingWindow !== null)
    throw new ModelError(
      `${where}: sliding-window attention with M-RoPE is not supported (set use_sliding_window false)`,
    );
  const deepstackLayers = adapter.deepstack ? deepstackLayerCount(config, spec.numLayers, file) : 0;
  return {
    ...spec,
    imageText: {
      modelType: type,
      mropeRows: layout ? Array.from(mropeFrequencyRows(spec.rotaryDim / 2, layout)) : null,
      deepstackLayers,
      spellings: adapter.spellings,
    },
  };
}

/**
 * An image-text config's language-model part as a text family's config (`model_type` set to that family), and
 * how errors name it: `text_config`, or the top level of older flat hub configs.
 */
function languageModelConfig(
  config: RawConfig,
  type: ImageTextModelType,
  file: string,
): { text: RawConfig; where: string } {
  const nested = config.text_config !== undefined && config.text_config !== null;
  if (nested && !isObject(config.text_config))
    throw new ModelError(`${file}: field "text_config" must be an object, got ${kind(config.text_config)}`);
  const raw = nested ? (config.text_config as RawConfig) : config;
  const where = nested ? `${file} text_config` : file;
  const textFamily = IMAGE_TEXT_ADAPTERS[type].text(raw);
  if (typeof textFamily !== 'string' || !Object.hasOwn(FAMILY_ADAPTERS, textFamily)) {
    throw new ModelError(
      `${where}: model_type ${JSON.stringify(textFamily)} is not a supported language model for ${type}; ` +
        `supported: ${SUPPORTED_FAMILIES.join(', ')}`,
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
  return { text, where };
}

/** Qwen3-VL: how many of the first layers take DeepStack features (one per `deepstack_visual_indexes` entry). */
function deepstackLayerCount(config: RawConfig, numLayers: number, file: string): number {
  const vision = isObject(config.vision_config) ? config.vision_config : {};
  const indexes = vision.deepstack_visual_indexes ?? [8, 16, 24]; // Qwen3VLVisionConfig's default
  if (!Array.isArray(indexes))
    throw new ModelError(
      `${file}: field "vision_config.deepstack_visual_indexes" must be a list, got ${kind(indexes)}`,
    );
  if (indexes.length > numLayers)
    throw new ModelError(
      `${file}: ${indexes.length} DeepStack features but the language model has ${numLayers} layers`,
    );
  return indexes.length;
}

/** A text family's config.json (checks run in field order, so the first bad field is the one reported). */
function textSpecFromConfig(config: RawConfig, file: string): ModelSpec {
  const family = familyOf(config, file);
  const adapter = FAMILY_ADAPTERS[family];
  const int = (key: string, fallback?: number) => positiveField(config, key, fallback, { integer: true, file });
  const { hiddenSize, numHeads, numKvHeads, headDim } = headShape(config, file);
  const activation = parseActivation(adapter.activation(config), adapter.activationField, file);
  const maxPositions = int('max_position_embeddings', 2048);
  const { slidingWindow, numLayers, layerTypes } = attentionLayers(config, adapter, file);
  if (config.use_bidirectional_attention === true) {
    throw new ModelError(
      `${file}: use_bidirectional_attention is not supported (an encoder such as EmbeddingGemma, not a causal decoder)`,
    );
  }
  const rope = parseRope(config, file, maxPositions);
  const rotaryDim = parseRotaryDim(config, file, { headDim, partialRotary: adapter.partialRotary });
  return {
    family,
    hiddenSize,
    intermediateSize: int('intermediate_size'),
    numLayers,
    numHeads,
    numKvHeads,
    headDim,
    vocabSize: int('vocab_size'),
    maxPositions,
    rmsNormEps: positiveField(config, 'rms_norm_eps', 1e-6, { integer: false, file }),
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

/** The text family: `model_type`, one of FAMILY_ADAPTERS' keys. */
function familyOf(config: RawConfig, file: string): Family {
  const family = config.model_type;
  if (family === undefined || family === null) throw new ModelError(`${file}: field "model_type" is missing`);
  if (typeof family !== 'string' || !Object.hasOwn(FAMILY_ADAPTERS, family)) {
    throw new ModelError(
      `${file}: model_type ${JSON.stringify(family)} is not supported; ` +
        `supported: ${[...SUPPORTED_FAMILIES, ...IMAGE_TEXT_MODEL_TYPES].join(', ')}`,
    );
  }
  return family as Family;
}

/** Widths and head counts; head_dim defaults to hidden_size / num_attention_heads and must be even (RoPE pairs). */
function headShape(
  config: RawConfig,
  file: string,
): { hiddenSize: number; numHeads: number; numKvHeads: number; headDim: number } {
  const int = (key: string, fallback?: number) => positiveField(config, key, fallback, { integer: true, file });
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
  return { hiddenSize, numHeads, numKvHeads, headDim };
}

/** The sliding window (validated whatever the family makes of it), the layer count and each layer's attention. */
function attentionLayers(
  config: RawConfig,
  adapter: FamilyAdapter,
  file: string,
): { slidingWindow: number | null; numLayers: number; layerTypes: LayerType[] } {
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
  const numLayers = positiveField(config, 'num_hidden_layers', undefined, { integer: true, file });
  const layerTypes: LayerType[] =
    slidingWindow === null
      ? Array.from({ length: numLayers }, () => 'full')
      : (adapter.layerPattern?.(config, numLayers, file) ?? Array.from({ length: numLayers }, () => 'sliding'));
  return { slidingWindow, numLayers, layerTypes };
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

/** The activation's transformers name → the graph's; `key` names the field in errors. */
function parseActivation(name: unknown, key: string, file: string): Activation {
  if (name === 'silu' || name === 'swish') return 'silu';
  if (name === 'gelu_pytorch_tanh') return 'gelu_tanh';
  if (name === 'gelu') return 'gelu';
  throw new ModelError(
    `${file}: ${key} ${JSON.stringify(name)} is not supported (supported: "silu", "gelu_pytorch_tanh", "gelu")`,
  );
}
