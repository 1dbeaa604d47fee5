/**
 * The per-family adapter tables, frozen (as llama.cpp keeps llama-arch's tables apart from the loader): for each
 * text family (config.json `model_type`) the quirks that differ from shared Llama semantics — which projections
 * carry a bias, q/k norms, sliding-window rules, Gemma's norm offset, soft-capping and query scaling, Phi-3's fused
 * projections and partial rotary — and for each image-text model type the text family its language model runs as
 * and where its checkpoints keep the language model's weights. config.ts reads them; adding a family is a row here.
 */
import { layerTypesFrom, optionalPositive, type RawConfig } from './config-fields.js';
import { gemma3SlidingRope } from './rope-config.js';
import type { Family, ImageTextModelType, LanguageModelSpelling, LayerType, RopeSpec } from './types.js';

/** One family's quirks; the functions read the raw config (and validate what they read). */
export interface FamilyAdapter {
  /** q/k/v bias from the config, or the family's fixed rule. */
  qkvBias: (c: RawConfig) => boolean;
  oBias: (c: RawConfig) => boolean;
  qkNorm: boolean;
  slidingWindow: (c: RawConfig) => number | null;
  /** Which layers slide; null: every layer when there is a window (Mistral, Qwen2). */
  layerPattern: ((c: RawConfig, numLayers: number, file: string) => LayerType[]) | null;
  /** The activation's config name (validated by specFromConfig). */
  activation: (c: RawConfig) => unknown;
  /** The field that names it, for errors: Gemma's transformers classes read `hidden_activation`. */
  activationField: 'hidden_act' | 'hidden_activation';
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
  activationField: 'hidden_act',
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
  activationField: 'hidden_activation',
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

export const FAMILY_ADAPTERS: Readonly<Record<Family, Readonly<FamilyAdapter>>> = Object.freeze({
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

/** An image-text model type: the text family its language model runs as, and how its checkpoints differ. */
export interface ImageTextAdapter {
  /** The language model's text family (a FAMILY_ADAPTERS key, checked by the parser) from its config. */
  text: (c: RawConfig) => unknown;
  /** Positions are M-RoPE's three rows (`mrope_section` required); false: plain RoPE (LLaVA-OneVision). */
  mrope: boolean;
  /** Qwen3-VL DeepStack: vision features are added after the first `deepstack_visual_indexes.length` layers. */
  deepstack: boolean;
  /** The weight spellings this family's checkpoints use, tried in order (transformers 5 first). */
  spellings: LanguageModelSpelling[];
}

/**
 * The Qwen VL families: transformers 5 `model.language_model.*`; hub checkpoints from before it `model.*` (both
 * with `lm_head.weight`).
 */
const qwenVl = (textFamily: Family, opts: { deepstack: boolean }): ImageTextAdapter =>
  Object.freeze({
    text: () => textFamily,
    mrope: true,
    deepstack: opts.deepstack,
    spellings: [
      { prefix: 'model.language_model.', lmHead: 'lm_head.weight' },
      { prefix: 'model.', lmHead: 'lm_head.weight' },
    ],
  });

/**
 * Image-text families: config.json nests the language model's settings in `text_config` (older hub Qwen2-VL and
 * Qwen2.5-VL configs keep them at the top level) and it runs as a text family; the rest is where its weights live.
 */
export const IMAGE_TEXT_ADAPTERS: Readonly<Record<ImageTextModelType, ImageTextAdapter>> = Object.freeze({
  qwen2_vl: qwenVl('qwen2', { deepstack: false }),
  qwen2_5_vl: qwenVl('qwen2', { deepstack: false }),
  qwen3_vl: qwenVl('qwen3', { deepstack: true }),
  // The LLM is whatever text_config says (Qwen2 for the released models); llava-hf checkpoints nest it as a CausalLM.
  llava_onevision: Object.freeze({
    text: (c: RawConfig) => c.model_type ?? 'qwen2',
    mrope: false,
    deepstack: false,
    spellings: [
      { prefix: 'model.language_model.', lmHead: 'lm_head.weight' },
      { prefix: 'language_model.model.', lmHead: 'language_model.lm_head.weight' },
    ],
  }),
});

export const SUPPORTED_FAMILIES = Object.keys(FAMILY_ADAPTERS) as Family[];
export const IMAGE_TEXT_MODEL_TYPES = Object.keys(IMAGE_TEXT_ADAPTERS) as ImageTextModelType[];
