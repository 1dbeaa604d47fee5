/**
 * LLaVA-OneVision image preprocessing (transformers' `LlavaOnevisionImageProcessor`) and the pure arithmetic
 * of its `anyres_max_N` feature layout: which grid of tiles an image gets, how the tile features are unpadded
 * back to the image's aspect ratio, when they are shrunk to at most N tiles' worth, and the resulting number of
 * image tokens (what placeholder expansion needs; the model's feature assembly follows `llavaOnevisionLayout`).
 */
import { ModelError } from '../errors.js';
import type { RgbImage } from './image.js';
import { rgbImage } from './image.js';
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

/** [height, width] in pixels. */
export type Resolution = readonly [number, number];

export interface LlavaOnevisionImageProcessorConfig {
  /** Tile (and base image) size, [height, width]; SigLIP's input size (384 for the released models). */
  readonly tileSize: Resolution;
  /** `image_grid_pinpoints`: the canvases, [height, width], an image may be fitted to before tiling. */
  readonly gridPinpoints: readonly Resolution[];
  readonly doResize: boolean;
  readonly normalization: PixelNormalization;
  readonly kernel: BicubicKernel;
}

type Json = Record<string, unknown>;

function readResolutions(v: unknown, where: string): Resolution[] {
  if (!Array.isArray(v) || v.length === 0)
    throw new ModelError(`${where}: "image_grid_pinpoints" must be a non-empty list of [height, width]`);
  return v.map((p) => {
    if (!Array.isArray(p) || p.length !== 2 || !p.every((x) => Number.isInteger(x) && x > 0)) {
      throw new ModelError(`${where}: "image_grid_pinpoints" entry ${JSON.stringify(p)} is not [height, width]`);
    }
    return [p[0] as number, p[1] as number] as const;
  });
}

export function llavaOnevisionImageProcessorConfig(
  json: Json,
  where = 'preprocessor_config.json',
): LlavaOnevisionImageProcessorConfig {
  readBicubicResample(json, where);
  if (readBool(json, 'do_center_crop', false, where))
    throw new ModelError(`${where}: "do_center_crop" is not supported for LLaVA-OneVision`);
  const size = (json['size'] ?? { height: 384, width: 384 }) as Json;
  if (typeof size !== 'object' || Array.isArray(size)) throw new ModelError(`${where}: "size" must be an object`);
  const tileSize: Resolution =
    'height' in size || 'width' in size
      ? [
          readPositiveInt(size, 'height', undefined, `${where} size`),
          readPositiveInt(size, 'width', undefined, `${where} size`),
        ]
      : [
          readPositiveInt(size, 'shortest_edge', undefined, `${where} size`),
          readPositiveInt(size, 'shortest_edge', undefined, `${where} size`),
        ];
  if (tileSize[0] !== tileSize[1])
    throw new ModelError(`${where}: LLaVA-OneVision tiles must be square, got size ${tileSize[1]}×${tileSize[0]}`);
  return {
    tileSize,
    gridPinpoints: readResolutions(json['image_grid_pinpoints'], where),
    doResize: readBool(json, 'do_resize', true, where),
    normalization: readNormalization(json, where),
    kernel: kernelFor(json),
  };
}

/**
 * LLaVA-NeXT's `select_best_resolution`: the canvas that keeps the most of the image's pixels when the image is
 * scaled to fit inside it, ties broken by the least wasted canvas; first one wins among equals.
 */
export function selectBestResolution(imageSize: Resolution, candidates: readonly Resolution[]): Resolution {
  const [h0, w0] = imageSize;
  let best: Resolution | undefined;
  let bestEffective = 0;
  let bestWasted = Infinity;
  for (const [h, w] of candidates) {
    const scale = Math.min(w / w0, h / h0);
    const effective = Math.min(Math.trunc(w0 * scale) * Math.trunc(h0 * scale), w0 * h0);
    const wasted = w * h - effective;
    if (effective > bestEffective || (effective === bestEffective && wasted < bestWasted)) {
      bestEffective = effective;
      bestWasted = wasted;
      best = [h, w];
    }
  }
  if (!best) throw new ModelError(`no grid pinpoint fits an image of ${w0}×${h0}`);
  return best;
}

/** `get_patch_output_size`: the image's size scaled to fit `target` with its aspect ratio kept. */
export function patchOutputSize(imageSize: Resolution, target: Resolution): Resolution {
  const [h0, w0] = imageSize;
  const [th, tw] = target;
  const scaleW = tw / w0;
  const scaleH = th / h0;
  if (scaleW < scaleH) return [Math.min(Math.ceil(h0 * scaleW), th), tw];
  return [th, Math.min(Math.ceil(w0 * scaleH), tw)];
}

export interface LlavaOnevisionProcessedImage {
  /** `[tiles, 3, H, W]` row-major: the whole image resized to one tile first, then the grid tiles row by row. */
  readonly pixelValues: Float32Array;
  readonly shape: readonly [number, number, number, number];
  /** `image_sizes`: the original [height, width], which the model's unpadding needs. */
  readonly imageSize: Resolution;
  /** The canvas the image was fitted to, [height, width]. */
  readonly bestResolution: Resolution;
}

function resizeTo(image: RgbImage, [h, w]: Resolution, kernel: BicubicKernel): RgbImage {
  return h === image.height && w === image.width ? image : resizeBicubic(image, w, h, kernel);
}

/** Centre `image` on a black canvas of `[h, w]` (extra pixel of an odd margin on the bottom/right). */
function padToCanvas(image: RgbImage, [h, w]: Resolution): RgbImage {
  if (h === image.height && w === image.width) return image;
  const top = Math.floor((h - image.height) / 2);
  const left = Math.floor((w - image.width) / 2);
  const out = new Uint8Array(h * w * 3);
  for (let y = 0; y < image.height; y++) {
    out.set(image.data.subarray(y * image.width * 3, (y + 1) * image.width * 3), ((y + top) * w + left) * 3);
  }
  return rgbImage(w, h, out);
}

export function preprocessLlavaOnevisionImage(
  image: RgbImage,
  cfg: LlavaOnevisionImageProcessorConfig,
): LlavaOnevisionProcessedImage {
  if (!cfg.doResize)
    throw new ModelError('LLaVA-OneVision preprocessing needs do_resize (tiles and the base image are resized)');
  const imageSize: Resolution = [image.height, image.width];
  const tile = cfg.tileSize[0];
  const best = selectBestResolution(imageSize, cfg.gridPinpoints);
  if (best[0] % tile !== 0 || best[1] % tile !== 0) {
    throw new ModelError(`grid pinpoint ${best[1]}×${best[0]} is not a multiple of the tile size ${tile}`);
  }
  const canvas = padToCanvas(resizeTo(image, patchOutputSize(imageSize, best), cfg.kernel), best);
  const base = resizeTo(image, cfg.tileSize, cfg.kernel);
  const rows = best[0] / tile,
    cols = best[1] / tile;
  const tiles = 1 + rows * cols;
  const tables = normalizationTable(cfg.normalization);
  const plane = tile * tile;
  const out = new Float32Array(tiles * 3 * plane);
  const writeTile = (index: number, src: RgbImage, y0: number, x0: number) => {
    for (let c = 0; c < 3; c++) {
      const table = tables[c]!;
      let o = (index * 3 + c) * plane;
      for (let y = 0; y < tile; y++) {
        for (let x = 0; x < tile; x++) out[o++] = table[src.data[((y0 + y) * src.width + x0 + x) * 3 + c]!]!;
      }
    }
  };
  writeTile(0, base, 0, 0);
  for (let r = 0; r < rows; r++) for (let q = 0; q < cols; q++) writeTile(1 + r * cols + q, canvas, r * tile, q * tile);
  return { pixelValues: out, shape: [tiles, 3, tile, tile], imageSize, bestResolution: best };
}

/** What the model needs from its config.json to lay out (and count) an image's features. */
export interface LlavaOnevisionFeatureConfig {
  /** `image_grid_pinpoints` (config.json; the same list as the processor's). */
  readonly gridPinpoints: readonly Resolution[];
  /** `vision_config.image_size`: the tile size in pixels. */
  readonly tileSize: number;
  /** `vision_config.image_size / vision_config.patch_size`: features per tile side. */
  readonly featuresPerSide: number;
  /** N of `vision_aspect_ratio: "anyres_max_N"`; undefined for plain `anyres`. */
  readonly maxTiles: number | undefined;
  /** `vision_feature_select_strategy: "default"` drops a CLS feature per tile; "full" (SigLIP) keeps all. */
  readonly dropsClsToken: boolean;
}

export function llavaOnevisionFeatureConfig(config: Json, where = 'config.json'): LlavaOnevisionFeatureConfig {
  const vision = config['vision_config'];
  if (!vision || typeof vision !== 'object') throw new ModelError(`${where}: "vision_config" is missing`);
  const imageSize = readPositiveInt(vision as Json, 'image_size', undefined, `${where} vision_config`);
  const patchSize = readPositiveInt(vision as Json, 'patch_size', undefined, `${where} vision_config`);
  const aspect = config['vision_aspect_ratio'] ?? 'anyres_max_9';
  let maxTiles: number | undefined;
  if (aspect !== 'anyres') {
    const m = typeof aspect === 'string' ? /^anyres_max_(\d+)$/.exec(aspect) : null;
    if (!m)
      throw new ModelError(
        `${where}: "vision_aspect_ratio" ${JSON.stringify(aspect)} is not supported (anyres or anyres_max_N)`,
      );
    maxTiles = Number(m[1]);
  }
  const strategy = config['vision_feature_select_strategy'] ?? 'full';
  if (strategy !== 'full' && strategy !== 'default') {
    throw new ModelError(
      `${where}: "vision_feature_select_strategy" must be "full" or "default", got ${JSON.stringify(strategy)}`,
    );
  }
  return {
    gridPinpoints: readResolutions(config['image_grid_pinpoints'], where),
    tileSize: imageSize,
    featuresPerSide: Math.floor(imageSize / patchSize),
    maxTiles,
    dropsClsToken: strategy === 'default',
  };
}

/**
 * How one image's features become language-model rows: the base tile's features first, then the tile grid's
 * feature map `[tileRows·side, tileCols·side]` cropped to the image's aspect ratio, optionally shrunk
 * (bilinear) to `final`, with one `image_newline` row appended after each of its rows.
 */
export interface LlavaOnevisionLayout {
  /** Tiles in the anyres grid, [rows, cols]. */
  readonly tileGrid: readonly [number, number];
  /** Features from the base tile. */
  readonly baseTokens: number;
  /** The tile grid's full feature map, [height, width]. */
  readonly gridFeatures: readonly [number, number];
  /** Rows/columns cropped from each side by unpadding: [top, bottom, left, right]. */
  readonly crop: readonly [number, number, number, number];
  /** Feature map after unpadding and the anyres_max shrink, [height, width]. */
  readonly final: readonly [number, number];
  /** True when the unpadded map is interpolated down to `final` (anyres_max_N ratio above 1.1). */
  readonly interpolated: boolean;
  /** baseTokens + final height · (final width + 1 newline). */
  readonly tokenCount: number;
}

/** Python's `int(round(x, 7))`: rounding to 7 decimals first keeps float noise from truncating a whole number down. */
function truncRounded7(x: number): number {
  return Math.trunc(Math.round(x * 1e7) / 1e7);
}

/**
 * The feature layout and token count for an image of `imageSize` = [height, width], as transformers'
 * LlavaOnevisionProcessor counts it and LlavaOnevisionModel.pack_image_features lays it out.
 */
export function llavaOnevisionLayout(imageSize: Resolution, cfg: LlavaOnevisionFeatureConfig): LlavaOnevisionLayout {
  const [h0, w0] = imageSize;
  const side = cfg.featuresPerSide;
  const [bh, bw] = selectBestResolution(imageSize, cfg.gridPinpoints);
  const tileRows = Math.floor(bh / cfg.tileSize),
    tileCols = Math.floor(bw / cfg.tileSize);
  const gridH = tileRows * side,
    gridW = tileCols * side;
  let h = gridH,
    w = gridW;
  let crop: [number, number, number, number] = [0, 0, 0, 0];
  if (w0 / h0 > gridW / gridH) {
    const newH = truncRounded7(h0 * (gridW / w0));
    const pad = Math.floor((gridH - newH) / 2);
    h -= 2 * pad;
    crop = [pad, pad, 0, 0];
  } else {
    const newW = truncRounded7(w0 * (gridH / h0));
    const pad = Math.floor((gridW - newW) / 2);
    w -= 2 * pad;
    crop = [0, 0, pad, pad];
  }
  let interpolated = false;
  if (cfg.maxTiles !== undefined) {
    const ratio = Math.sqrt((h * w) / (cfg.maxTiles * side * side));
    if (ratio > 1.1) {
      h = Math.floor(h / ratio);
      w = Math.floor(w / ratio);
      interpolated = true;
    }
  }
  const baseTokens = side * side - (cfg.dropsClsToken ? 1 : 0);
  return {
    tileGrid: [tileRows, tileCols],
    baseTokens,
    gridFeatures: [gridH, gridW],
    crop,
    final: [h, w],
    interpolated,
    tokenCount: baseTokens + h * (w + 1),
  };
}
