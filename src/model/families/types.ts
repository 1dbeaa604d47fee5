/**
 * What the engine knows about a checkpoint, as types: ModelSpec (the language model: sizes, attention layout,
 * RoPE, the family's quirks as flags) and VisionSpec (an image-text checkpoint's vision tower). config.ts and
 * vision-config.ts build them from config.json; the graphs (src/model/graph/) and the exporter read them.
 */

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

/** Activations the towers use, by their transformers ACT2FN names. */
export type VisionActivation = 'silu' | 'quick_gelu' | 'gelu' | 'gelu_tanh';

export type QwenVisionFamily = 'qwen2_vl' | 'qwen2_5_vl' | 'qwen3_vl';

export interface QwenVisionSpec {
  readonly kind: 'qwen';
  readonly family: QwenVisionFamily;
  /** ViT width (Qwen2-VL: `embed_dim`; later: `hidden_size`). */
  readonly hiddenSize: number;
  readonly intermediateSize: number;
  readonly depth: number;
  readonly numHeads: number;
  readonly headDim: number;
  readonly inChannels: number;
  readonly patchSize: number;
  readonly temporalPatchSize: number;
  readonly mergeSize: number;
  /**
   * Width of the merged tokens, the language model's hidden size (Qwen2-VL: `hidden_size`; later: `out_hidden_size`).
   */
  readonly outHiddenSize: number;
  readonly activation: VisionActivation;
  /** Qwen2-VL and Qwen3-VL: LayerNorm (with bias); Qwen2.5-VL: RMSNorm. */
  readonly norm: 'layernorm' | 'rmsnorm';
  /** Qwen2.5-VL: SwiGLU gate/up/down; otherwise fc1 → act → fc2. */
  readonly gatedMlp: boolean;
  readonly normEps: number;
  readonly ropeTheta: number;
  /** Qwen2.5-VL: window side in pixels; null = every block attends over the whole image. */
  readonly windowSize: number | null;
  /** Qwen2.5-VL: blocks that attend over the whole image (the rest attend within their window). */
  readonly fullAttentionBlocks: readonly number[];
  /** Qwen3-VL: learned position table rows (a square grid, interpolated to each image); 0 = none. */
  readonly numPositionEmbeddings: number;
  /** Qwen3-VL: blocks whose output feeds a DeepStack merger, in merger order. */
  readonly deepstackBlocks: readonly number[];
  /** Qwen3-VL's patch Conv3d has a bias; Qwen2-VL/2.5-VL's has none. */
  readonly patchBias: boolean;
}

export interface SiglipVisionSpec {
  readonly kind: 'siglip';
  readonly family: 'llava_onevision';
  readonly hiddenSize: number;
  readonly intermediateSize: number;
  readonly numLayers: number;
  readonly numHeads: number;
  readonly headDim: number;
  readonly numChannels: number;
  /** Tile side in pixels (`image_size`). */
  readonly imageSize: number;
  readonly patchSize: number;
  readonly layerNormEps: number;
  readonly activation: VisionActivation;
  /**
   * `vision_feature_layer` as indices into transformers' `hidden_states` tuple (0 = patch embeddings, k = after
   * k encoder layers), negative values resolved; several are concatenated along the hidden axis.
   */
  readonly featureLayers: readonly number[];
  /** `vision_feature_select_strategy: "default"` drops the first feature of each tile; "full" keeps all. */
  readonly dropsFirstFeature: boolean;
  readonly projectorActivation: VisionActivation;
  readonly projectorBias: boolean;
  /** The language model's hidden size: the projector's output width. */
  readonly textHiddenSize: number;
}

export type VisionSpec = QwenVisionSpec | SiglipVisionSpec;
