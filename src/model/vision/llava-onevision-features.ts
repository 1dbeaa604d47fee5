/**
 * LLaVA-OneVision: the projector's per-tile features become the rows that replace an image's placeholders, laid
 * out as `llavaOnevisionLayout` says (transformers' `pack_image_features`): the base tile's features, then the
 * tile grid's feature map cropped to the image's aspect ratio ("unpadding"), shrunk bilinearly when anyres_max_N
 * asks, each of its rows followed by `image_newline`.
 */
import { ModelError } from '../errors.js';
import type { LlavaOnevisionLayout } from './llava-onevision-processor.js';

/**
 * `features` [tiles, n, D] (tile 0 the base image, then the grid's tiles row by row) → [layout.tokenCount, D].
 * `newline` [D] is the checkpoint's `image_newline`.
 */
export function packLlavaOnevisionFeatures(
  features: Float32Array,
  dims: readonly [number, number, number],
  layout: LlavaOnevisionLayout,
  newline: Float32Array | null,
): Float32Array {
  const [tiles, n, D] = dims;
  const [tileRows, tileCols] = layout.tileGrid;
  if (tiles !== 1 + tileRows * tileCols)
    throw new ModelError(
      `LLaVA-OneVision features: ${tiles} tiles, but the layout has a base tile and a ${tileRows}×${tileCols} grid`,
    );
  if (n !== layout.baseTokens)
    throw new ModelError(`LLaVA-OneVision features: ${n} features per tile, the layout expects ${layout.baseTokens}`);
  if (!newline || newline.length !== D)
    throw new ModelError(
      `LLaVA-OneVision features: the checkpoint's image_newline [${D}] is needed ` +
        `(got ${newline ? `[${newline.length}]` : 'none'})`,
    );
  const [gridH, gridW] = layout.gridFeatures;
  const side = gridH / tileRows;
  if (side * side !== n || gridW / tileCols !== side)
    throw new ModelError(
      `LLaVA-OneVision features: ${n} features per tile do not form the ${side}×${side} tile map the layout assumes`,
    );
  const [top, bottom, left, right] = layout.crop;
  const h0 = gridH - top - bottom,
    w0 = gridW - left - right;

  // The unpadded map [h0, w0, D]: feature (y, x) of the grid is feature (y mod side, x mod side) of tile (y div side, x
  // div side).
  const map = new Float32Array(h0 * w0 * D);
  for (let y = 0; y < h0; y++) {
    const gy = y + top,
      tr = Math.floor(gy / side),
      py = gy % side;
    for (let x = 0; x < w0; x++) {
      const gx = x + left,
        tc = Math.floor(gx / side),
        px = gx % side;
      const tile = 1 + tr * tileCols + tc;
      const from = (tile * n + py * side + px) * D;
      map.set(features.subarray(from, from + D), (y * w0 + x) * D);
    }
  }
  const [h, w] = layout.final;
  const shrunk = layout.interpolated ? bilinearResize(map, h0, w0, D, h, w) : map;
  if (!layout.interpolated && (h !== h0 || w !== w0))
    throw new ModelError(
      `LLaVA-OneVision features: layout size ${h}×${w} differs from the unpadded ${h0}×${w0} without interpolation`,
    );

  const out = new Float32Array(layout.tokenCount * D);
  out.set(features.subarray(0, n * D), 0);
  let at = n * D;
  for (let y = 0; y < h; y++) {
    out.set(shrunk.subarray(y * w * D, (y + 1) * w * D), at);
    at += w * D;
    out.set(newline, at);
    at += D;
  }
  if (at !== out.length)
    throw new ModelError(`LLaVA-OneVision features: laid out ${at / D} rows, the layout counts ${layout.tokenCount}`);
  return out;
}

/**
 * torch.nn.functional.interpolate(mode="bilinear", align_corners=False, no antialiasing) of a [h0, w0, D] map to
 * [h, w, D]: output pixel i samples input coordinate (i + 0.5)·(in/out) − 0.5, clamped at 0, between its two
 * neighbours.
 */
export function bilinearResize(
  map: Float32Array,
  h0: number,
  w0: number,
  D: number,
  h: number,
  w: number,
): Float32Array {
  const taps = (outSize: number, inSize: number) =>
    Array.from({ length: outSize }, (_, i) => {
      const src = Math.max(0, (i + 0.5) * (inSize / outSize) - 0.5);
      const i0 = Math.min(Math.floor(src), inSize - 1);
      const i1 = Math.min(i0 + 1, inSize - 1);
      const t = src - i0;
      return { i0, i1, t };
    });
  const ys = taps(h, h0),
    xs = taps(w, w0);
  const out = new Float32Array(h * w * D);
  for (let y = 0; y < h; y++) {
    const { i0: y0, i1: y1, t: ty } = ys[y]!;
    for (let x = 0; x < w; x++) {
      const { i0: x0, i1: x1, t: tx } = xs[x]!;
      const a = (y0 * w0 + x0) * D,
        b = (y0 * w0 + x1) * D,
        c = (y1 * w0 + x0) * D,
        e = (y1 * w0 + x1) * D;
      const o = (y * w + x) * D;
      for (let k = 0; k < D; k++) {
        out[o + k] =
          (1 - ty) * ((1 - tx) * map[a + k]! + tx * map[b + k]!) + ty * ((1 - tx) * map[c + k]! + tx * map[e + k]!);
      }
    }
  }
  return out;
}
