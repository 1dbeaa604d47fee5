/**
 * Image placeholder expansion (vision/placeholders.ts), M-RoPE position ids (vision/mrope.ts) and the M-RoPE
 * frequency layout read from config.json (families/rope-config.ts).
 */
import { describe, expect, it } from 'vitest';
import { ModelError } from '../../../src/model/errors.js';
import { expandImagePlaceholders, imagePlaceholderIds, imageSpansOf } from '../../../src/model/vision/placeholders.js';
import { mropePositionIds, mropePositionIdsBatch } from '../../../src/model/vision/mrope.js';
import { mropeFrequencyRows, mropeLayout } from '../../../src/model/families/rope-config.js';

const IMG = 500,
  VS = 502,
  VE = 503;

describe('placeholder expansion', () => {
  it('expands each placeholder to its image token count and reports the spans', () => {
    const { inputIds, imageSpans } = expandImagePlaceholders([1, VS, IMG, VE, 7, VS, IMG, VE, 9], IMG, [3, 2]);
    expect(inputIds).toEqual([1, VS, IMG, IMG, IMG, VE, 7, VS, IMG, IMG, VE, 9]);
    expect(imageSpans).toEqual([
      { start: 2, length: 3 },
      { start: 8, length: 2 },
    ]);
    expect(imageSpansOf(inputIds, IMG, [3, 2])).toEqual(imageSpans);
  });

  it('needs one placeholder per image', () => {
    expect(() => expandImagePlaceholders([1, IMG, IMG, 2], IMG, [4])).toThrow(
      /2 image placeholders .* but 1 image were given/,
    );
    expect(() => expandImagePlaceholders([1, 2], IMG, [4])).toThrow(ModelError);
    expect(() => expandImagePlaceholders([1, IMG], IMG, [0])).toThrow(/positive integer/);
    expect(expandImagePlaceholders([1, 2], IMG, []).inputIds).toEqual([1, 2]);
    expect(() => imageSpansOf([IMG, IMG, 1], IMG, [3])).toThrow(/needs 3/);
  });

  it('reads placeholder ids from Qwen and LLaVA configs', () => {
    expect(
      imagePlaceholderIds({ image_token_id: 151655, vision_start_token_id: 151652, vision_end_token_id: 151653 }),
    ).toEqual({
      image: 151655,
      visionStart: 151652,
      visionEnd: 151653,
    });
    expect(imagePlaceholderIds({ image_token_index: 151646 })).toEqual({ image: 151646 });
    expect(() => imagePlaceholderIds({ image_token_id: 'x' })).toThrow(/token id/);
  });
});

describe('M-RoPE position ids', () => {
  const rows = (p: { positions: Int32Array; length: number }) =>
    [0, 1, 2].map((r) => [...p.positions.subarray(r * p.length, (r + 1) * p.length)]);

  it('text only: all rows count up, delta 0', () => {
    const p = mropePositionIds(4, [], 2);
    expect(rows(p)).toEqual([
      [0, 1, 2, 3],
      [0, 1, 2, 3],
      [0, 1, 2, 3],
    ]);
    expect(p.delta).toBe(0);
  });

  it('an image shares its temporal index, spreads over the merged grid, and text resumes at max + 1', () => {
    // [text, VS, image 2×3 merged (grid 1×4×6, merge 2), VE, text]
    const ids = expandImagePlaceholders([1, VS, IMG, VE, 9], IMG, [6]);
    const p = mropePositionIds(ids.inputIds.length, [{ span: ids.imageSpans[0]!, gridThw: [1, 4, 6] }], 2);
    expect(rows(p)).toEqual([
      [0, 1, 2, 2, 2, 2, 2, 2, 5, 6],
      [0, 1, 2, 2, 2, 3, 3, 3, 5, 6],
      [0, 1, 2, 3, 4, 2, 3, 4, 5, 6],
    ]);
    expect(p.delta).toBe(7 - 10);
  });

  it('two images: the second starts after the first one’s max', () => {
    const ids = expandImagePlaceholders([IMG, 8, IMG], IMG, [4, 1]);
    const p = mropePositionIds(
      ids.inputIds.length,
      [
        { span: ids.imageSpans[0]!, gridThw: [1, 4, 4] },
        { span: ids.imageSpans[1]!, gridThw: [1, 2, 2] },
      ],
      2,
    );
    expect(rows(p)).toEqual([
      [0, 0, 0, 0, 2, 3],
      [0, 0, 1, 1, 2, 3],
      [0, 1, 0, 1, 2, 3],
    ]);
    expect(() => mropePositionIds(6, [{ span: { start: 0, length: 3 }, gridThw: [1, 4, 4] }], 2)).toThrow(
      /merges to 4/,
    );
  });

  it('left-padded batch: pads get 1, deltas are relative to the padded length', () => {
    const { positions, deltas } = mropePositionIdsBatch(
      [
        { padding: 2, images: [] },
        { padding: 0, images: [{ span: { start: 1, length: 4 }, gridThw: [1, 4, 4] }] },
      ],
      5,
      2,
    );
    // [3, B=2, S=5]
    expect([...positions]).toEqual([
      1, 1, 0, 1, 2, /**/ 0, 1, 1, 1, 1, 1, 1, 0, 1, 2, /**/ 0, 1, 1, 2, 2, 1, 1, 0, 1, 2, /**/ 0, 1, 2, 1, 2,
    ]);
    // Row 0: next real token at index 5 gets 3 = 5 + (−2); row 1: next gets 3 = 5 + (−2).
    expect(deltas).toEqual([-2, -2]);
  });

  it('frequency rows: contiguous sections and Qwen3-VL interleaving', () => {
    expect([...mropeFrequencyRows(8, { sections: [2, 3, 3], interleaved: false })]).toEqual([0, 0, 1, 1, 1, 2, 2, 2]);
    const q3 = mropeFrequencyRows(64, { sections: [24, 20, 20], interleaved: true });
    expect([0, 1, 2].map((r) => q3.filter((x) => x === r).length)).toEqual([24, 20, 20]);
    expect([...q3.subarray(0, 6)]).toEqual([0, 1, 2, 0, 1, 2]);
    expect([...q3.subarray(58)]).toEqual([1, 2, 0, 0, 0, 0]);
    expect(() => mropeFrequencyRows(10, { sections: [2, 3, 3], interleaved: false })).toThrow(/sum to head_dim/);
  });

  it('reads mrope_section from v5 rope_parameters and v4 rope_scaling', () => {
    expect(
      mropeLayout({ text_config: { rope_parameters: { mrope_section: [16, 24, 24], rope_type: 'default' } } }),
    ).toEqual({ sections: [16, 24, 24], interleaved: false });
    expect(mropeLayout({ rope_scaling: { type: 'mrope', mrope_section: [16, 24, 24] } })).toEqual({
      sections: [16, 24, 24],
      interleaved: false,
    });
    expect(
      mropeLayout({ text_config: { rope_scaling: { mrope_interleaved: true, mrope_section: [24, 20, 20] } } }),
    ).toEqual({ sections: [24, 20, 20], interleaved: true });
    expect(mropeLayout({ rope_theta: 1e6 })).toBeUndefined();
  });
});
