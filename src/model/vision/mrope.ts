/**
 * Multimodal rotary positions (M-RoPE) for Qwen2-VL, Qwen2.5-VL and Qwen3-VL, as transformers'
 * `get_rope_index` computes them: three position rows (temporal, height, width). Text tokens advance all three
 * together; an image's tokens all share the temporal index of where the image starts and spread over height
 * and width on the merged grid; text after an image resumes at (largest position so far) + 1.
 *
 * Which row drives which rotary frequency is a property of the checkpoint (`mrope_section`, and Qwen3-VL's
 * interleaved layout): families/rope-config.ts reads it into ModelSpec.imageText.mropeRows for the decoder graph.
 */
import { ModelError } from '../errors.js';
import type { ImageSpan } from './placeholders.js';

/** An image in an expanded prompt: its placeholder span and `image_grid_thw` (patch grid before merging). */
export interface MropeImage {
  readonly span: ImageSpan;
  readonly gridThw: readonly [number, number, number];
}

export interface MropePositions {
  /** `[3, S]` row-major: temporal, height, width. */
  readonly positions: Int32Array;
  readonly length: number;
  /**
   * `rope_deltas`: (max position + 1) − S. A token appended at sequence index s ≥ S gets position s + delta on
   * all three rows, which is how generation and single-token steps after the prefix continue.
   */
  readonly delta: number;
}

/**
 * Positions for one unpadded sequence of `length` tokens with `images` in order (spans from placeholder
 * expansion). Each span's length must equal t·h·w / merge² of its grid.
 */
export function mropePositionIds(
  length: number,
  images: readonly MropeImage[],
  spatialMergeSize: number,
): MropePositions {
  const positions = new Int32Array(3 * length);
  const set = (i: number, t: number, h: number, w: number) => {
    positions[i] = t;
    positions[length + i] = h;
    positions[2 * length + i] = w;
  };
  let next = 0; // the position the next text token gets: max so far + 1
  let at = 0;
  for (const [k, { span, gridThw }] of images.entries()) {
    const [t, gh, gw] = gridThw;
    if (gh % spatialMergeSize !== 0 || gw % spatialMergeSize !== 0) {
      throw new ModelError(
        `image ${k}: grid ${gh}×${gw} is not divisible by the spatial merge size ${spatialMergeSize}`,
      );
    }
    const h = gh / spatialMergeSize,
      w = gw / spatialMergeSize;
    if (span.length !== t * h * w)
      throw new ModelError(
        `image ${k}: ${span.length} placeholder tokens, but grid ${t}×${gh}×${gw} merges to ${t * h * w}`,
      );
    if (span.start < at || span.start + span.length > length)
      throw new ModelError(
        `image ${k}: span [${span.start}, ${span.start + span.length}) is out of order or out of the sequence`,
      );
    for (; at < span.start; at++, next++) set(at, next, next, next);
    // Images use temporal index 0 for every frame (Qwen2.5-VL scales video time; a still image has none).
    let i = span.start;
    for (let ti = 0; ti < t; ti++)
      for (let hi = 0; hi < h; hi++) for (let wi = 0; wi < w; wi++) set(i++, next, next + hi, next + wi);
    next += Math.max(h, w, 1);
    at = span.start + span.length;
  }
  for (; at < length; at++, next++) set(at, next, next, next);
  return { positions, length, delta: next - length };
}

/**
 * A left-padded batch `[B, S]`: each row's real tokens get `mropePositionIds`, padding positions get 1, as
 * transformers fills them. Returns `[3, B, S]` row-major and one delta per row (relative to the padded length).
 */
export function mropePositionIdsBatch(
  rows: readonly { padding: number; images: readonly MropeImage[] }[],
  paddedLength: number,
  spatialMergeSize: number,
): { positions: Int32Array; deltas: number[] } {
  const B = rows.length;
  const positions = new Int32Array(3 * B * paddedLength).fill(1);
  const deltas: number[] = [];
  rows.forEach(({ padding, images }, b) => {
    const n = paddedLength - padding;
    const one = mropePositionIds(n, images, spatialMergeSize);
    for (let r = 0; r < 3; r++)
      positions.set(one.positions.subarray(r * n, (r + 1) * n), (r * B + b) * paddedLength + padding);
    deltas.push(one.delta + n - paddedLength);
  });
  return { positions, deltas };
}
