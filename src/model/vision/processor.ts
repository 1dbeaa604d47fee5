/**
 * One entry point over the image-processor families: read a checkpoint folder's preprocessor_config.json (and
 * config.json, for placeholder ids and LLaVA-OneVision's feature layout), then turn decoded images into pixel
 * tensors, token counts and an expanded prompt.
 */
import fs from 'node:fs';
import path from 'node:path';
import { ModelError } from '../errors.js';
import { processorPixelBound, type PixelBound, type RgbImage } from './image.js';
import {
  llavaOnevisionFeatureConfig,
  llavaOnevisionImageProcessorConfig,
  llavaOnevisionLayout,
  preprocessLlavaOnevisionImage,
  type LlavaOnevisionFeatureConfig,
  type LlavaOnevisionImageProcessorConfig,
  type LlavaOnevisionLayout,
  type Resolution,
} from './llava-onevision-processor.js';
import {
  expandImagePlaceholders,
  imagePlaceholderIds,
  type ExpandedPrompt,
  type ImagePlaceholderIds,
} from './placeholders.js';
import {
  preprocessQwenVLImage,
  qwenVLImageProcessorConfig,
  qwenVLImageTokenCount,
  type QwenVLImageProcessorConfig,
} from './qwen-processor.js';

/** One image ready for a vision tower. */
export type ProcessedImage =
  | {
      readonly family: 'qwen-vl';
      /** `[patches, C·T·P·P]`. */
      readonly pixelValues: Float32Array;
      readonly shape: readonly number[];
      readonly gridThw: readonly [number, number, number];
      readonly tokenCount: number;
    }
  | {
      readonly family: 'llava-onevision';
      /** `[tiles, 3, H, W]`. */
      readonly pixelValues: Float32Array;
      readonly shape: readonly number[];
      /** `image_sizes`: original [height, width]. */
      readonly imageSize: Resolution;
      readonly layout: LlavaOnevisionLayout;
      readonly tokenCount: number;
    };

export interface ImageProcessor {
  readonly family: 'qwen-vl' | 'llava-onevision';
  readonly placeholders: ImagePlaceholderIds;
  /** Placeholder tokens an image of this size expands to (no pixels needed). */
  tokenCount(height: number, width: number): number;
  /** The most pixels this processor resizes an image to (Qwen-VL `max_pixels`; LLaVA-OneVision's largest canvas). */
  readonly largestPixels: number;
  /**
   * The most pixels an image may have to be decoded for this processor: `ARM_MAX_IMAGE_PIXELS`, else
   * 4 × largestPixels and at least 4096² (image.ts IMAGE_PIXEL_FACTOR). Read when asked, so the variable applies
   * to a processor made before it was set.
   */
  pixelBound(): PixelBound;
  preprocess(image: RgbImage): ProcessedImage;
  /** Expand one placeholder per image in `ids` to each image's token count. */
  expand(ids: readonly number[], images: readonly ProcessedImage[]): ExpandedPrompt;
}

type Json = Record<string, unknown>;

function readJson(file: string): Json {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw new ModelError(`${file}: cannot read (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
  }
  try {
    const v = JSON.parse(text) as unknown;
    if (!v || typeof v !== 'object' || Array.isArray(v)) throw new Error('not a JSON object');
    return v as Json;
  } catch (err) {
    throw new ModelError(`${file}: invalid JSON (${(err as Error).message})`);
  }
}

function qwenVLImageProcessor(pre: QwenVLImageProcessorConfig, placeholders: ImagePlaceholderIds): ImageProcessor {
  return {
    family: 'qwen-vl',
    placeholders,
    tokenCount: (h, w) => qwenVLImageTokenCount(h, w, pre),
    largestPixels: pre.maxPixels,
    pixelBound: () => processorPixelBound(pre.maxPixels, 'max_pixels in preprocessor_config.json'),
    preprocess(image) {
      const p = preprocessQwenVLImage(image, pre);
      return {
        family: 'qwen-vl',
        pixelValues: p.pixelValues,
        shape: p.shape,
        gridThw: p.gridThw,
        tokenCount: p.tokenCount,
      };
    },
    expand: (ids, images) =>
      expandImagePlaceholders(
        ids,
        placeholders.image,
        images.map((i) => i.tokenCount),
      ),
  };
}

function llavaOnevisionImageProcessor(
  pre: LlavaOnevisionImageProcessorConfig,
  features: LlavaOnevisionFeatureConfig,
  placeholders: ImagePlaceholderIds,
): ImageProcessor {
  if (pre.tileSize[0] !== features.tileSize) {
    throw new ModelError(
      `preprocessor tile size ${pre.tileSize[0]} differs from the vision tower's image_size ${features.tileSize}`,
    );
  }
  // Every image becomes the base tile and the tiles of one grid-pinpoint canvas: the largest canvas bounds it.
  const largestPixels = Math.max(pre.tileSize[0] * pre.tileSize[1], ...pre.gridPinpoints.map(([h, w]) => h * w));
  return {
    family: 'llava-onevision',
    placeholders,
    tokenCount: (h, w) => llavaOnevisionLayout([h, w], features).tokenCount,
    largestPixels,
    pixelBound: () =>
      processorPixelBound(largestPixels, 'the largest image_grid_pinpoints canvas in preprocessor_config.json'),
    preprocess(image) {
      const p = preprocessLlavaOnevisionImage(image, pre);
      const layout = llavaOnevisionLayout(p.imageSize, features);
      return {
        family: 'llava-onevision',
        pixelValues: p.pixelValues,
        shape: p.shape,
        imageSize: p.imageSize,
        layout,
        tokenCount: layout.tokenCount,
      };
    },
    expand: (ids, images) =>
      expandImagePlaceholders(
        ids,
        placeholders.image,
        images.map((i) => i.tokenCount),
      ),
  };
}

/**
 * The image processor a checkpoint folder describes: `preprocessor_config.json`'s `image_processor_type`
 * picks the family (Qwen2VLImageProcessor[Fast|Pil] for Qwen2-VL/2.5-VL/3-VL, LlavaOnevisionImageProcessor[…]).
 */
export function loadImageProcessor(modelDir: string): ImageProcessor {
  const preFile = path.join(modelDir, 'preprocessor_config.json');
  if (!fs.existsSync(preFile))
    throw new ModelError(
      `${modelDir}: no preprocessor_config.json; image inputs need the checkpoint's image processor settings`,
    );
  const pre = readJson(preFile);
  const config = readJson(path.join(modelDir, 'config.json'));
  const type = pre['image_processor_type'];
  const placeholders = imagePlaceholderIds(config);
  if (typeof type === 'string' && /^Qwen[23]VLImageProcessor(Fast|Pil)?$/.test(type)) {
    return qwenVLImageProcessor(qwenVLImageProcessorConfig(pre, preFile), placeholders);
  }
  if (typeof type === 'string' && /^LlavaOnevisionImageProcessor(Fast|Pil)?$/.test(type)) {
    return llavaOnevisionImageProcessor(
      llavaOnevisionImageProcessorConfig(pre, preFile),
      llavaOnevisionFeatureConfig(config),
      placeholders,
    );
  }
  throw new ModelError(
    `${preFile}: image_processor_type ${JSON.stringify(type)} is not supported ` +
      '(Qwen2VLImageProcessor, LlavaOnevisionImageProcessor)',
  );
}
