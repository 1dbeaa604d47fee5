/**
 * A checkpoint's vision tower, ready to run: config.json's `vision_config` → VisionSpec → a cached ONNX graph
 * (graph/vision-qwen.ts or graph/vision-siglip.ts) → onnxruntime. It turns one image's pixel tensor into the
 * rows that replace its placeholders:
 *  - Qwen2-VL / Qwen2.5-VL / Qwen3-VL: `pixel_values [N, C·T·P·P]` + `image_grid_thw` → merged tokens
 *    `[N/m², out_hidden]` (and Qwen3-VL's DeepStack features, one `[N/m², out_hidden]` per listed block);
 *  - LLaVA-OneVision: tiles `[T, C, S, S]` → projector output per tile `[T, n, text_hidden]`, to be laid out
 *    (unpadded, image_newline) by the caller as vision/llava-onevision-processor.ts's layout says.
 */
import path from 'node:path';
import fs from 'node:fs';
import * as ort from 'onnxruntime-node';
import { ModelError } from '../errors.js';
import { openSession, type Device } from '../session.js';
import { SafetensorsCheckpoint } from '../checkpoint/safetensors.js';
import { visionSpecFromConfig, visionSpecHash } from '../families/vision-config.js';
import type { QwenVisionSpec, SiglipVisionSpec, VisionSpec } from '../families/types.js';
import {
  checkpointFingerprint,
  defaultVisionCacheDir,
  ensureCachedVisionModel,
  VISION_MODEL_FILE,
  visionCacheKey,
} from '../cache/vision-cache.js';
import {
  emitQwenVisionGraph,
  QWEN_VISION_GRAPH_VERSION,
  QWEN_VISION_PREFIXES,
  qwenVisionExpectedShapes,
  qwenVisionWeightSources,
} from '../graph/vision-qwen.js';
import { qwenVisionFeeds } from './qwen-tower-feeds.js';
import {
  emitSiglipVisionGraph,
  LLAVA_IMAGE_NEWLINE,
  LLAVA_PROJECTOR_PREFIXES,
  SIGLIP_VISION_GRAPH_VERSION,
  SIGLIP_VISION_PREFIXES,
  siglipExpectedShapes,
  siglipVisionWeightSources,
} from '../graph/vision-siglip.js';
import type { ProcessedImage } from './processor.js';

export interface VisionTowerOptions {
  cacheDir?: string;
  threads?: number;
  /** Where the tower runs (session.ts; default cpu): a decoder's towers run on its device. */
  device?: Device;
  /** LLaVA-OneVision: also build SigLIP's pooling head (output `pooled`); for parity checks only. */
  pooledOutput?: boolean;
}

export interface QwenVisionOutput {
  readonly kind: 'qwen';
  /** `[tokens, outHidden]` row-major. */
  readonly embeddings: Float32Array;
  readonly dims: readonly [number, number];
  /** Qwen3-VL: one `[tokens, outHidden]` per `deepstack_visual_indexes` entry; empty otherwise. */
  readonly deepstack: readonly Float32Array[];
}

export interface SiglipVisionOutput {
  readonly kind: 'siglip';
  /** `[tiles, patches, textHidden]` row-major. */
  readonly features: Float32Array;
  readonly dims: readonly [number, number, number];
  /** `[tiles, hidden]`, only with `pooledOutput`. */
  readonly pooled?: Float32Array;
}

export class VisionTower {
  private constructor(
    readonly spec: VisionSpec,
    private readonly session: ort.InferenceSession,
    readonly info: {
      readonly modelDir: string;
      readonly cacheEntry: string;
      readonly built: boolean;
      /** sha256 of the spec the graph computes (criterion files record it). */
      readonly visionConfigHash: string;
      readonly weightsFingerprint: string;
      /** The checkpoint prefix the tower's weights were read under (e.g. `model.visual.` or `visual.`). */
      readonly prefix: string;
    },
    /** LLaVA-OneVision's `image_newline` `[textHidden]` (appended after each feature row); null for Qwen. */
    readonly imageNewline: Float32Array | null,
  ) {}

  /** Loads (building and caching the graph if needed) the vision tower of a local checkpoint folder. */
  static async load(modelDir: string, opts: VisionTowerOptions = {}): Promise<VisionTower> {
    const configPath = path.join(modelDir, 'config.json');
    let config: Record<string, unknown>;
    try {
      config = JSON.parse(fs.readFileSync(configPath, 'utf8')) as Record<string, unknown>;
    } catch (e) {
      throw new ModelError(`${configPath}: cannot read as JSON (${(e as Error).message})`);
    }
    const spec = visionSpecFromConfig(config, configPath);
    const cacheDir = opts.cacheDir ?? defaultVisionCacheDir();
    const pooled = spec.kind === 'siglip' && opts.pooledOutput === true;
    const ckpt = SafetensorsCheckpoint.open(modelDir);
    let entry: { dir: string; built: boolean };
    let prefix: string;
    let fingerprint: string;
    let imageNewline: Float32Array | null = null;
    try {
      const plan = spec.kind === 'qwen' ? qwenPlan(spec, ckpt) : siglipPlan(spec, ckpt, { pooled });
      prefix = plan.prefix;
      checkShapes(ckpt, plan.shapes);
      if (spec.kind === 'siglip') {
        const newline = LLAVA_IMAGE_NEWLINE.find((n) => ckpt.has(n));
        if (newline) imageNewline = Float32Array.from(ckpt.readFloat32(newline));
      }
      fingerprint = checkpointFingerprint(ckpt.files, path.join(cacheDir, 'hashes'));
      const specJson = JSON.stringify(spec);
      entry = ensureCachedVisionModel({
        cacheDir,
        ckpt,
        sources: plan.sources,
        emit: plan.emit,
        key: visionCacheKey(plan.version, specJson, fingerprint, `${prefix}|${plan.projector ?? ''}|pooled=${pooled}`),
        doc: `${spec.family} vision tower`,
        metadata: { graph_version: plan.version, family: spec.family },
      });
    } finally {
      ckpt.close();
    }
    const session = await openSession(path.join(entry.dir, VISION_MODEL_FILE), {
      threads: opts.threads,
      device: opts.device,
    });
    return new VisionTower(
      spec,
      session,
      {
        modelDir,
        cacheEntry: entry.dir,
        built: entry.built,
        visionConfigHash: visionSpecHash(spec),
        weightsFingerprint: fingerprint,
        prefix,
      },
      imageNewline,
    );
  }

  /** Runs one preprocessed image (vision/processor.ts) through the tower. */
  async run(image: ProcessedImage): Promise<QwenVisionOutput | SiglipVisionOutput> {
    if (image.family === 'qwen-vl') return this.runQwen(image.pixelValues, image.gridThw);
    return this.runSiglip(image.pixelValues, image.shape[0]!);
  }

  /** Qwen ViT: `pixelValues [N, C·T·P·P]` in the processor's merger order, `gridThw` its patch grid. */
  async runQwen(pixelValues: Float32Array, gridThw: readonly [number, number, number]): Promise<QwenVisionOutput> {
    const spec = this.qwenSpec();
    const [t, gh, gw] = gridThw;
    const N = t * gh * gw;
    const K = spec.inChannels * spec.temporalPatchSize * spec.patchSize * spec.patchSize;
    if (pixelValues.length !== N * K)
      throw new ModelError(
        `vision tower: pixel_values holds ${pixelValues.length} values; ` +
          `grid ${t}×${gh}×${gw} with ${K} values per patch needs ${N * K}`,
      );
    const f = qwenVisionFeeds(spec, gridThw);
    const feeds: Record<string, ort.Tensor> = {
      pixel_values: new ort.Tensor('float32', pixelValues, [N, K]),
      patch_positions: new ort.Tensor('int64', f.patchPositions, [N, 2]),
    };
    if (f.window) {
      feeds['window_gather'] = new ort.Tensor('int64', f.window.gather, [f.window.windows, f.window.windowLen]);
      feeds['window_key_bias'] = new ort.Tensor('float32', f.window.keyBias, [
        f.window.windows,
        1,
        1,
        f.window.windowLen,
      ]);
      feeds['window_scatter'] = new ort.Tensor('int64', f.window.scatter, [N]);
    }
    if (f.posEmbed) {
      feeds['pos_embed_index'] = new ort.Tensor('int64', f.posEmbed.index, [N, 4]);
      feeds['pos_embed_weight'] = new ort.Tensor('float32', f.posEmbed.weight, [N, 4]);
    }
    const out = await this.session.run(feeds);
    const tokens = N / (spec.mergeSize * spec.mergeSize);
    return {
      kind: 'qwen',
      embeddings: out['image_embeds']!.data as Float32Array,
      dims: [tokens, spec.outHiddenSize],
      deepstack: spec.deepstackBlocks.map((_, i) => out[`deepstack.${i}`]!.data as Float32Array),
    };
  }

  /** SigLIP + projector: `pixelValues [tiles, C, S, S]`. */
  async runSiglip(pixelValues: Float32Array, tiles: number): Promise<SiglipVisionOutput> {
    const spec = this.siglipSpec();
    const S = spec.imageSize;
    if (pixelValues.length !== tiles * spec.numChannels * S * S) {
      throw new ModelError(
        `vision tower: pixel_values holds ${pixelValues.length} values; ` +
          `${tiles} tiles of ${spec.numChannels}×${S}×${S} need ${tiles * spec.numChannels * S * S}`,
      );
    }
    const out = await this.session.run({
      pixel_values: new ort.Tensor('float32', pixelValues, [tiles, spec.numChannels, S, S]),
    });
    const features = out['image_features']!;
    return {
      kind: 'siglip',
      features: features.data as Float32Array,
      dims: [features.dims[0]!, features.dims[1]!, features.dims[2]!],
      ...(out['pooled'] ? { pooled: out['pooled'].data as Float32Array } : {}),
    };
  }

  async release(): Promise<void> {
    await this.session.release();
  }

  private qwenSpec(): QwenVisionSpec {
    if (this.spec.kind !== 'qwen')
      throw new ModelError(`vision tower: ${this.spec.family} takes tiles, not a Qwen patch grid`);
    return this.spec;
  }

  private siglipSpec(): SiglipVisionSpec {
    if (this.spec.kind !== 'siglip')
      throw new ModelError(`vision tower: ${this.spec.family} takes a patch grid, not tiles`);
    return this.spec;
  }
}

interface Plan {
  prefix: string;
  projector?: string;
  version: string;
  shapes: Map<string, number[]>;
  sources: ReturnType<typeof qwenVisionWeightSources>;
  emit: Parameters<typeof ensureCachedVisionModel>[0]['emit'];
}

/** The first prefix under which `probe` exists, naming every spelling tried when none does. */
function findPrefix(ckpt: SafetensorsCheckpoint, prefixes: readonly string[], probe: string, what: string): string {
  const hit = prefixes.find((p) => ckpt.has(p + probe));
  if (hit === undefined)
    throw new ModelError(
      `${ckpt.dir}: no ${what} weights (looked for ${prefixes.map((p) => `"${p}${probe}"`).join(', ')})`,
    );
  return hit;
}

function qwenPlan(spec: QwenVisionSpec, ckpt: SafetensorsCheckpoint): Plan {
  const prefix = findPrefix(ckpt, QWEN_VISION_PREFIXES, 'patch_embed.proj.weight', 'vision tower');
  return {
    prefix,
    version: QWEN_VISION_GRAPH_VERSION,
    shapes: qwenVisionExpectedShapes(spec, prefix),
    sources: qwenVisionWeightSources(spec, prefix),
    emit: (weight) => emitQwenVisionGraph(spec, weight),
  };
}

function siglipPlan(spec: SiglipVisionSpec, ckpt: SafetensorsCheckpoint, opts: { pooled: boolean }): Plan {
  const { pooled } = opts;
  const prefix = findPrefix(ckpt, SIGLIP_VISION_PREFIXES, 'embeddings.patch_embedding.weight', 'SigLIP vision tower');
  const projector = findPrefix(ckpt, LLAVA_PROJECTOR_PREFIXES, 'linear_1.weight', 'multi-modal projector');
  if (pooled && !ckpt.has(`${prefix}head.probe`))
    throw new ModelError(`${ckpt.dir}: the SigLIP tower has no pooling head ("${prefix}head.probe")`);
  return {
    prefix,
    projector,
    version: SIGLIP_VISION_GRAPH_VERSION,
    shapes: siglipExpectedShapes(spec, prefix, projector),
    sources: siglipVisionWeightSources(spec, { tower: prefix, projector }, { pooled }),
    emit: (weight) => emitSiglipVisionGraph(spec, weight, { pooled }),
  };
}

function checkShapes(ckpt: SafetensorsCheckpoint, shapes: Map<string, number[]>): void {
  for (const [name, shape] of shapes) {
    if (!ckpt.has(name)) throw new ModelError(`${ckpt.dir}: tensor "${name}" is missing from the checkpoint`);
    const info = ckpt.info(name);
    if (info.shape.join(',') !== shape.join(','))
      throw new ModelError(
        `${info.file}: tensor "${name}" has shape [${info.shape}] but config.json implies [${shape}]`,
      );
  }
}
