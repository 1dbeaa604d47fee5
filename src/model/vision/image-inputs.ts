/**
 * Images into a prompt of an image-text checkpoint: its image processor (vision/processor.ts, from
 * preprocessor_config.json), its vision tower (vision/tower.ts), placeholder expansion, and the tower's output
 * laid out as the rows that replace the placeholders, ready for Decoder.forward / prefill / extend.
 */
import type { ImageEmbeds } from './image-embeds.js';
import { ModelError } from '../errors.js';
import type { RgbImage } from './image.js';
import { packLlavaOnevisionFeatures } from './llava-onevision-features.js';
import { loadImageProcessor, type ImageProcessor, type ProcessedImage } from './processor.js';
import { VisionTower, type VisionTowerOptions } from './tower.js';

/** A prompt with its images placed: ids with each placeholder expanded, and each image's rows. */
export interface ImagePrompt {
  inputIds: number[];
  images: ImageEmbeds[];
}

export class ImageInputs {
  private constructor(
    readonly processor: ImageProcessor,
    readonly tower: VisionTower,
  ) {}

  /** The image processor and vision tower of a local checkpoint folder (Decoder's `info.modelDir`). */
  static async load(modelDir: string, opts: VisionTowerOptions = {}): Promise<ImageInputs> {
    const processor = loadImageProcessor(modelDir);
    const tower = await VisionTower.load(modelDir, opts);
    if ((processor.family === 'qwen-vl') !== (tower.spec.kind === 'qwen')) {
      await tower.release();
      throw new ModelError(
        `${modelDir}: preprocessor_config.json describes a ${processor.family} image processor, ` +
          `but config.json a ${tower.spec.family} vision tower`,
      );
    }
    return new ImageInputs(processor, tower);
  }

  /** The image placeholder token (one per image in a prompt, before expansion). */
  get placeholderId(): number {
    return this.processor.placeholders.image;
  }

  /**
   * `ids` carry one placeholder per image (in order); each is expanded to its image's token count, as HF
   * processors do, and each image runs through the vision tower once.
   */
  async prepare(ids: readonly number[], images: readonly RgbImage[]): Promise<ImagePrompt> {
    const processed = images.map((img) => this.processor.preprocess(img));
    const expanded = this.processor.expand(ids, processed);
    const placed: ImageEmbeds[] = [];
    for (const [i, p] of processed.entries())
      placed.push({ start: expanded.imageSpans[i]!.start, ...(await this.embed(p)) });
    return { inputIds: expanded.inputIds, images: placed };
  }

  /** One preprocessed image → the rows that replace its placeholders (and M-RoPE grid, DeepStack features). */
  async embed(image: ProcessedImage): Promise<Omit<ImageEmbeds, 'start'>> {
    const out = await this.tower.run(image);
    if (out.kind === 'qwen' && image.family === 'qwen-vl' && this.tower.spec.kind === 'qwen') {
      const m = this.tower.spec.mergeSize;
      const [t, gh, gw] = image.gridThw;
      return {
        embeds: out.embeddings,
        grid: [t, gh / m, gw / m],
        ...(out.deepstack.length > 0 ? { deepstack: out.deepstack } : {}),
      };
    }
    if (out.kind === 'siglip' && image.family === 'llava-onevision') {
      return { embeds: packLlavaOnevisionFeatures(out.features, out.dims, image.layout, this.tower.imageNewline) };
    }
    throw new ModelError(`a ${image.family} image does not fit the ${this.tower.spec.family} vision tower`);
  }

  async release(): Promise<void> {
    await this.tower.release();
  }
}
