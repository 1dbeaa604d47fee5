/**
 * config.json → VisionSpec: what the vision-tower graphs (graph/vision-qwen.ts, graph/vision-siglip.ts) need
 * to know about a checkpoint's image encoder, for the Qwen2-VL, Qwen2.5-VL, Qwen3-VL and LLaVA-OneVision
 * families. Reads transformers-5 and older hub spellings of the same fields.
 */
import { createHash } from 'node:crypto';
import { ModelError } from '../errors.js';
import { readNumber, readPositiveInt, type RawConfig } from './config-fields.js';
import type { QwenVisionFamily, QwenVisionSpec, SiglipVisionSpec, VisionActivation, VisionSpec } from './types.js';

function activationOf(name: unknown, where: string): VisionActivation {
  switch (name) {
    case 'silu':
    case 'swish':
      return 'silu';
    case 'quick_gelu':
      return 'quick_gelu';
    case 'gelu':
      return 'gelu';
    case 'gelu_pytorch_tanh':
    case 'gelu_new':
    case 'gelu_fast':
      return 'gelu_tanh';
    default:
      throw new ModelError(
        `${where}: activation ${JSON.stringify(name)} is not supported (silu, quick_gelu, gelu, gelu_pytorch_tanh)`,
      );
  }
}

function intList(v: unknown, key: string, where: string): number[] {
  if (v === undefined || v === null) return [];
  if (!Array.isArray(v) || !v.every((x) => Number.isInteger(x) && x >= 0))
    throw new ModelError(`${where}: "${key}" must be a list of non-negative integers, got ${JSON.stringify(v)}`);
  return v as number[];
}

function ropeThetaOf(vision: RawConfig, where: string): number {
  const rope = vision['rope_parameters'];
  if (rope && typeof rope === 'object' && (rope as RawConfig)['rope_theta'] !== undefined)
    return readNumber(rope as RawConfig, 'rope_theta', 10000, `${where} rope_parameters`);
  return readNumber(vision, 'rope_theta', 10000, where);
}

/** The model_type names config.json uses for the image-text families (older hub configs included). */
const QWEN_TYPES: Readonly<Record<string, QwenVisionFamily>> = {
  qwen2_vl: 'qwen2_vl',
  qwen2_5_vl: 'qwen2_5_vl',
  qwen3_vl: 'qwen3_vl',
};

export function visionSpecFromConfig(config: RawConfig, where = 'config.json'): VisionSpec {
  const modelType = config['model_type'];
  const visionRaw = config['vision_config'];
  if (!visionRaw || typeof visionRaw !== 'object' || Array.isArray(visionRaw))
    throw new ModelError(`${where}: "vision_config" is missing; expected an image-text checkpoint`);
  const vision = visionRaw as RawConfig;
  const vw = `${where} vision_config`;
  if (typeof modelType === 'string' && modelType in QWEN_TYPES) return qwenSpec(QWEN_TYPES[modelType]!, vision, vw);
  if (modelType === 'llava_onevision') return siglipSpec(config, vision, where);
  throw new ModelError(
    `${where}: model_type ${JSON.stringify(modelType)} has no supported vision tower ` +
      '(qwen2_vl, qwen2_5_vl, qwen3_vl, llava_onevision)',
  );
}

function qwenSpec(family: QwenVisionFamily, v: RawConfig, where: string): QwenVisionSpec {
  const inChannels = readPositiveInt(v, 'in_channels', readPositiveInt(v, 'in_chans', 3, where), where);
  const patchSize = readPositiveInt(v, 'patch_size', readPositiveInt(v, 'spatial_patch_size', 14, where), where);
  const common = {
    kind: 'qwen' as const,
    family,
    inChannels,
    patchSize,
    depth: readPositiveInt(v, 'depth', 32, where),
    numHeads: readPositiveInt(v, 'num_heads', 16, where),
    temporalPatchSize: readPositiveInt(v, 'temporal_patch_size', 2, where),
    mergeSize: readPositiveInt(v, 'spatial_merge_size', 2, where),
    normEps: 1e-6, // hard-coded in all three ViTs
    ropeTheta: ropeThetaOf(v, where),
  };
  let spec: QwenVisionSpec;
  if (family === 'qwen2_vl') {
    // Qwen2-VL names the ViT width embed_dim and the merged output width hidden_size.
    const hiddenSize = readPositiveInt(v, 'embed_dim', 1280, where);
    spec = {
      ...common,
      hiddenSize,
      intermediateSize: hiddenSize * readNumber(v, 'mlp_ratio', 4, where),
      outHiddenSize: readPositiveInt(v, 'hidden_size', 3584, where),
      headDim: hiddenSize / common.numHeads,
      activation: activationOf(v['hidden_act'] ?? 'quick_gelu', where),
      norm: 'layernorm',
      gatedMlp: false,
      windowSize: null,
      fullAttentionBlocks: [],
      numPositionEmbeddings: 0,
      deepstackBlocks: [],
      patchBias: false,
    };
  } else {
    const hiddenSize = readPositiveInt(v, 'hidden_size', 1280, where);
    const isQwen25 = family === 'qwen2_5_vl';
    spec = {
      ...common,
      hiddenSize,
      intermediateSize: readPositiveInt(v, 'intermediate_size', 3420, where),
      outHiddenSize: readPositiveInt(v, 'out_hidden_size', 3584, where),
      headDim: hiddenSize / common.numHeads,
      activation: activationOf(v['hidden_act'] ?? (isQwen25 ? 'silu' : 'gelu_pytorch_tanh'), where),
      norm: isQwen25 ? 'rmsnorm' : 'layernorm',
      gatedMlp: isQwen25,
      windowSize: isQwen25 ? readPositiveInt(v, 'window_size', 112, where) : null,
      fullAttentionBlocks: isQwen25
        ? intList(v['fullatt_block_indexes'] ?? [7, 15, 23, 31], 'fullatt_block_indexes', where)
        : [],
      numPositionEmbeddings: isQwen25 ? 0 : readPositiveInt(v, 'num_position_embeddings', 2304, where),
      deepstackBlocks: isQwen25
        ? []
        : intList(v['deepstack_visual_indexes'] ?? [8, 16, 24], 'deepstack_visual_indexes', where),
      patchBias: !isQwen25,
    };
  }
  if (!Number.isInteger(spec.headDim) || spec.headDim % 4 !== 0)
    throw new ModelError(
      `${where}: width ${spec.hiddenSize} / num_heads ${spec.numHeads} ` +
        'must be a whole head size divisible by 4 (2-D rotary)',
    );
  if (!Number.isInteger(spec.intermediateSize))
    throw new ModelError(`${where}: MLP width ${spec.intermediateSize} is not an integer`);
  for (const b of [...spec.fullAttentionBlocks, ...spec.deepstackBlocks])
    if (b >= spec.depth) throw new ModelError(`${where}: block index ${b} is beyond depth ${spec.depth}`);
  if (spec.windowSize !== null && spec.windowSize % (spec.patchSize * spec.mergeSize) !== 0) {
    throw new ModelError(
      `${where}: window_size ${spec.windowSize} must be a multiple of patch_size × spatial_merge_size ` +
        `(${spec.patchSize * spec.mergeSize})`,
    );
  }
  if (spec.numPositionEmbeddings > 0 && !Number.isInteger(Math.sqrt(spec.numPositionEmbeddings))) {
    throw new ModelError(
      `${where}: num_position_embeddings ${spec.numPositionEmbeddings} must be a square (a grid of learned positions)`,
    );
  }
  return spec;
}

function siglipSpec(config: RawConfig, v: RawConfig, where: string): SiglipVisionSpec {
  const vw = `${where} vision_config`;
  if (v['model_type'] !== undefined && v['model_type'] !== 'siglip_vision_model') {
    throw new ModelError(`${vw}: model_type ${JSON.stringify(v['model_type'])} is not supported (siglip_vision_model)`);
  }
  const hiddenSize = readPositiveInt(v, 'hidden_size', 768, vw);
  const numHeads = readPositiveInt(v, 'num_attention_heads', 12, vw);
  const numLayers = readPositiveInt(v, 'num_hidden_layers', 12, vw);
  const raw = config['vision_feature_layer'] ?? -1;
  const layers = Array.isArray(raw) ? raw : [raw];
  if (layers.length === 0 || !layers.every((x) => Number.isInteger(x)))
    throw new ModelError(
      `${where}: "vision_feature_layer" must be an integer or a list of integers, got ${JSON.stringify(raw)}`,
    );
  // hidden_states holds numLayers + 1 entries (embeddings first), indexed from either end as in Python.
  const featureLayers = (layers as number[]).map((k) => {
    const i = k < 0 ? numLayers + 1 + k : k;
    if (i < 0 || i > numLayers)
      throw new ModelError(
        `${where}: vision_feature_layer ${k} is outside the ${numLayers + 1} hidden states ` +
          `of a ${numLayers}-layer tower`,
      );
    return i;
  });
  const strategy = config['vision_feature_select_strategy'] ?? 'full';
  if (strategy !== 'full' && strategy !== 'default')
    throw new ModelError(
      `${where}: "vision_feature_select_strategy" must be "full" or "default", got ${JSON.stringify(strategy)}`,
    );
  const text = (config['text_config'] ?? {}) as RawConfig;
  const projectorBias = config['multimodal_projector_bias'] ?? true;
  if (typeof projectorBias !== 'boolean')
    throw new ModelError(`${where}: "multimodal_projector_bias" must be true or false`);
  const spec: SiglipVisionSpec = {
    kind: 'siglip',
    family: 'llava_onevision',
    hiddenSize,
    numHeads,
    numLayers,
    headDim: hiddenSize / numHeads,
    intermediateSize: readPositiveInt(v, 'intermediate_size', 3072, vw),
    numChannels: readPositiveInt(v, 'num_channels', 3, vw),
    imageSize: readPositiveInt(v, 'image_size', 224, vw),
    patchSize: readPositiveInt(v, 'patch_size', 16, vw),
    layerNormEps: readNumber(v, 'layer_norm_eps', 1e-6, vw),
    activation: activationOf(v['hidden_act'] ?? 'gelu_pytorch_tanh', vw),
    featureLayers,
    dropsFirstFeature: strategy === 'default',
    projectorActivation: activationOf(config['projector_hidden_act'] ?? 'gelu', where),
    projectorBias,
    textHiddenSize: readPositiveInt(text, 'hidden_size', 4096, `${where} text_config`),
  };
  if (!Number.isInteger(spec.headDim))
    throw new ModelError(`${vw}: hidden_size ${hiddenSize} is not divisible by num_attention_heads ${numHeads}`);
  if (spec.imageSize % spec.patchSize !== 0)
    throw new ModelError(`${vw}: image_size ${spec.imageSize} is not a multiple of patch_size ${spec.patchSize}`);
  return spec;
}

/** sha256 of the spec (what the tower computes), for cache keys and criterion files. */
export function visionSpecHash(spec: VisionSpec): string {
  return createHash('sha256').update(JSON.stringify(spec)).digest('hex');
}
