/**
 * Qwen2-VL / Qwen2.5-VL / Qwen3-VL image preprocessing, as transformers' `Qwen2VLImageProcessor` (which all
 * three checkpoints name in preprocessor_config.json): `smart_resize` to a multiple of patch×merge within the
 * pixel budget, bicubic resize, rescale + normalise, the single frame repeated `temporal_patch_size` times,
 * and patchify to rows ordered as the vision tower's 2×2 patch merger expects.
 */
import { ModelError } from '../errors.js';
import type { RgbImage } from './image.js';
import { resizeBicubic, type BicubicKernel } from './resample.js';
import {
  kernelFor,
  normalizationTable,
  readBicubicResample,
  readBool,
  readNormalization,
  type PixelNormalization,
} from './normalize.js';
import { readPositiveInt } from '../families/config-fields.js';

export interface QwenVLImageProcessorConfig {
  readonly patchSize: number;
  readonly temporalPatchSize: number;
  readonly mergeSize: number;
  /** `size.shortest_edge` / `min_pixels`: the minimum pixel count after resizing (not an edge length). */
  readonly minPixels: number;
  /** `size.longest_edge` / `max_pixels`: the maximum pixel count after resizing. */
  readonly maxPixels: number;
  readonly doResize: boolean;
  readonly normalization: PixelNormalization;
  readonly kernel: BicubicKernel;
}

/**
 * Read a Qwen-VL preprocessor_config.json. Pixel bounds come from `size: {shortest_edge, longest_edge}`
 * (transformers ≥ 4.50 spelling) and are overridden by top-level `min_pixels`/`max_pixels` (what the
 * released Qwen2-VL/Qwen2.5-VL checkpoints carry), as transformers does.
 */
export function qwenVLImageProcessorConfig(
  json: Record<string, unknown>,
  where = 'preprocessor_config.json',
): QwenVLImageProcessorConfig {
  readBicubicResample(json, where);
  if (readBool(json, 'do_center_crop', false, where))
    throw new ModelError(`${where}: "do_center_crop" is not part of Qwen-VL preprocessing`);
  const size = (json['size'] ?? {}) as Record<string, unknown>;
  if (typeof size !== 'object' || Array.isArray(size)) throw new ModelError(`${where}: "size" must be an object`);
  const minPixels = readPositiveInt(
    json,
    'min_pixels',
    readPositiveInt(size, 'shortest_edge', 56 * 56, `${where} size`),
    where,
  );
  const maxPixels = readPositiveInt(
    json,
    'max_pixels',
    readPositiveInt(size, 'longest_edge', 28 * 28 * 1280, `${where} size`),
    where,
  );
  if (minPixels > maxPixels) throw new ModelError(`${where}: min pixels ${minPixels} exceed max pixels ${maxPixels}`);
  return {
    patchSize: readPositiveInt(json, 'patch_size', 14, where),
    temporalPatchSize: readPositiveInt(json, 'temporal_patch_size', 2, where),
    mergeSize: readPositiveInt(json, 'merge_size', 2, where),
    minPixels,
    maxPixels,
    doResize: readBool(json, 'do_resize', true, where),
    normalization: readNormalization(json, where),
    kernel: kernelFor(json),
  };
}

/** Python's `round`: halves go to the even neighbour (smart_resize relies on it, e.g. round(2.5) = 2). */
export function roundHalfEven(x: number): number {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/**
 * transformers' `smart_resize`: the [height, width] closest to the image's that are multiples of `factor`
 * (= patch × merge) with height·width within [minPixels, maxPixels], aspect ratio kept as far as possible.
 */
export function smartResize(
  height: number,
  width: number,
  factor: number,
  minPixels: number,
  maxPixels: number,
): [number, number] {
  if (Math.max(height, width) / Math.min(height, width) > 200) {
    throw new ModelError(`image ${width}×${height}: aspect ratio must be below 200 (Qwen-VL smart_resize)`);
  }
  let h = roundHalfEven(height / factor) * factor;
  let w = roundHalfEven(width / factor) * factor;
  if (h * w > maxPixels) {
    const beta = Math.sqrt((height * width) / maxPixels);
    h = Math.max(factor, Math.floor(height / beta / factor) * factor);
    w = Math.max(factor, Math.floor(width / beta / factor) * factor);
  } else if (h * w < minPixels) {
    const beta = Math.sqrt(minPixels / (height * width));
    h = Math.ceil((height * beta) / factor) * factor;
    w = Math.ceil((width * beta) / factor) * factor;
  }
  return [h, w];
}

export interface QwenVLProcessedImage {
  /** `[patches, C·T·P·P]` row-major: rows in (t, h/merge, w/merge, merge_h, merge_w) order, columns (c, t, y, x). */
  readonly pixelValues: Float32Array;
  readonly shape: readonly [number, number];
  /** `image_grid_thw`: patches along time, height, width (before merging). */
  readonly gridThw: readonly [number, number, number];
  /** Tokens this image occupies in the language model: t·h·w / merge². */
  readonly tokenCount: number;
  /** The size the image was resized to, [height, width]. */
  readonly resized: readonly [number, number];
}

/** The resized [height, width] for an image of this size (no pixels needed). */
function qwenVLResizedSize(height: number, width: number, cfg: QwenVLImageProcessorConfig): [number, number] {
  if (!cfg.doResize) return [height, width];
  return smartResize(height, width, cfg.patchSize * cfg.mergeSize, cfg.minPixels, cfg.maxPixels);
}

/** How many placeholder tokens an image of this size expands to. */
export function qwenVLImageTokenCount(height: number, width: number, cfg: QwenVLImageProcessorConfig): number {
  const [h, w] = qwenVLResizedSize(height, width, cfg);
  return ((h / cfg.patchSize) * (w / cfg.patchSize)) / (cfg.mergeSize * cfg.mergeSize);
}

export function preprocessQwenVLImage(image: RgbImage, cfg: QwenVLImageProcessorConfig): QwenVLProcessedImage {
  const [height, width] = qwenVLResizedSize(image.height, image.width, cfg);
  const unit = cfg.patchSize * cfg.mergeSize;
  if (height % unit !== 0 || width % unit !== 0) {
    throw new ModelError(`image ${width}×${height} is not a multiple of patch×merge ${unit}; enable do_resize`);
  }
  const resized =
    height === image.height && width === image.width ? image : resizeBicubic(image, width, height, cfg.kernel);
  const tables = normalizationTable(cfg.normalization);
  const P = cfg.patchSize,
    M = cfg.mergeSize,
    T = cfg.temporalPatchSize;
  const gridT = 1; // one image = one frame, repeated T times to fill a temporal patch
  const gridH = height / P,
    gridW = width / P;
  const rowLen = 3 * T * P * P;
  const rows = gridT * gridH * gridW;
  const out = new Float32Array(rows * rowLen);
  const px = resized.data;
  let row = 0;
  for (let bh = 0; bh < gridH / M; bh++) {
    for (let bw = 0; bw < gridW / M; bw++) {
      for (let mh = 0; mh < M; mh++) {
        for (let mw = 0; mw < M; mw++) {
          const y0 = (bh * M + mh) * P,
            x0 = (bw * M + mw) * P;
          let col = row * rowLen;
          for (let c = 0; c < 3; c++) {
            const table = tables[c]!;
            for (let t = 0; t < T; t++) {
              for (let y = 0; y < P; y++) {
                for (let x = 0; x < P; x++) out[col++] = table[px[((y0 + y) * width + x0 + x) * 3 + c]!]!;
              }
            }
          }
          row++;
        }
      }
    }
  }
  return {
    pixelValues: out,
    shape: [rows, rowLen],
    gridThw: [gridT, gridH, gridW],
    tokenCount: rows / (M * M),
    resized: [height, width],
  };
}

/**
 * The (row, column) of each pixel_values row's patch on the patch grid, `[patches, 2]` row-major, in the same
 * merger order as `preprocessQwenVLImage` writes rows. The Qwen ViT's 2-D rotary embedding (`rot_pos_emb`) and
 * Qwen2.5-VL's window partition are functions of these.
 */
export function qwenVisionPatchPositions(gridThw: readonly [number, number, number], mergeSize: number): Int32Array {
  const [t, h, w] = gridThw;
  const out = new Int32Array(t * h * w * 2);
  let i = 0;
  for (let ti = 0; ti < t; ti++) {
    for (let bh = 0; bh < h / mergeSize; bh++) {
      for (let bw = 0; bw < w / mergeSize; bw++) {
        for (let mh = 0; mh < mergeSize; mh++) {
          for (let mw = 0; mw < mergeSize; mw++) {
            out[i++] = bh * mergeSize + mh;
            out[i++] = bw * mergeSize + mw;
          }
        }
      }
    }
  }
  return out;
}
