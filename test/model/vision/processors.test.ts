/**
 * The image processors on hand-made inputs: Qwen-VL smart_resize and patch order, LLaVA-OneVision anyres tiling
 * and token counts, and loadImageProcessor's choice of family and its errors.
 */
import { describe, expect, it } from 'vitest';
import fs from 'node:fs';
import path from 'node:path';
import { ModelError } from '../../../src/model/errors.js';
import { rgbImage } from '../../../src/model/vision/image.js';
import {
  preprocessQwenVLImage,
  qwenVLImageProcessorConfig,
  qwenVLImageTokenCount,
  qwenVisionPatchPositions,
  roundHalfEven,
  smartResize,
} from '../../../src/model/vision/qwen-processor.js';
import {
  llavaOnevisionFeatureConfig,
  llavaOnevisionImageProcessorConfig,
  llavaOnevisionLayout,
  patchOutputSize,
  preprocessLlavaOnevisionImage,
  selectBestResolution,
} from '../../../src/model/vision/llava-onevision-processor.js';
import { loadImageProcessor } from '../../../src/model/vision/processor.js';
import { tempDir } from '../../helpers/fixtures.js';

/** The released Qwen2.5-VL-7B-Instruct preprocessor_config.json (top-level min/max pixels, no `size`). */
const QWEN25_RELEASED = {
  min_pixels: 3136,
  max_pixels: 12845056,
  patch_size: 14,
  temporal_patch_size: 2,
  merge_size: 2,
  image_mean: [0.48145466, 0.4578275, 0.40821073],
  image_std: [0.26862954, 0.26130258, 0.27577711],
  image_processor_type: 'Qwen2VLImageProcessor',
  processor_class: 'Qwen2_5_VLProcessor',
};

/** llava-hf/llava-onevision-qwen2-7b-ov-hf: SigLIP 384/14 = 27 features a side, pinpoints 384·(1..6)². */
const OV_PINPOINTS = Array.from({ length: 36 }, (_, i) => [384 * (Math.floor(i / 6) + 1), 384 * ((i % 6) + 1)]);
const OV_CONFIG = {
  image_grid_pinpoints: OV_PINPOINTS,
  image_token_index: 151646,
  vision_aspect_ratio: 'anyres_max_9',
  vision_feature_select_strategy: 'full',
  vision_config: { image_size: 384, patch_size: 14 },
};

describe('Qwen-VL smart_resize and config', () => {
  it('rounds halves to even as Python does', () => {
    expect([0.5, 1.5, 2.5, 3.5, 2.4, 2.6].map(roundHalfEven)).toEqual([0, 2, 2, 4, 2, 3]);
    // 70 / 28 = 2.5 → 2 (not 3): 56 × 56.
    expect(smartResize(70, 70, 28, 3136, 1e9)).toEqual([56, 56]);
  });

  it('keeps within the pixel budget', () => {
    expect(smartResize(768, 1024, 28, 3136, 12845056)).toEqual([756, 1036]);
    // Too many pixels: scale down by sqrt(area / max) and floor to the factor.
    const [h, w] = smartResize(4000, 3000, 28, 3136, 1003520);
    expect(h * w).toBeLessThanOrEqual(1003520);
    expect([h % 28, w % 28]).toEqual([0, 0]);
    expect([h, w]).toEqual([1148, 840]); // beta = sqrt(12e6 / 1003520) ≈ 3.458: floor(41.3)·28, floor(30.98)·28
    // Too few: scale up and ceil.
    expect(smartResize(45, 61, 32, 4096, 65536)).toEqual([64, 96]);
    expect(() => smartResize(10, 2500, 28, 3136, 1e9)).toThrow(/aspect ratio/);
  });

  it('reads min_pixels/max_pixels over size, as transformers does', () => {
    const cfg = qwenVLImageProcessorConfig({ ...QWEN25_RELEASED, size: { shortest_edge: 1, longest_edge: 2 } });
    expect([cfg.minPixels, cfg.maxPixels, cfg.kernel]).toEqual([3136, 12845056, 'torchvision']);
    const v5 = qwenVLImageProcessorConfig({
      size: { shortest_edge: 65536, longest_edge: 16777216 },
      patch_size: 16,
      image_processor_type: 'Qwen2VLImageProcessorFast',
    });
    expect([v5.minPixels, v5.maxPixels, v5.patchSize]).toEqual([65536, 16777216, 16]);
    expect(qwenVLImageProcessorConfig({ image_processor_type: 'Qwen2VLImageProcessorPil' }).kernel).toBe('pil');
    expect(() => qwenVLImageProcessorConfig({ resample: 2 })).toThrow(/only 3 \(bicubic\)/);
    expect(() => qwenVLImageProcessorConfig({ min_pixels: 10, max_pixels: 5 })).toThrow(ModelError);
  });

  it('patchifies in merger order: rows (h/2, w/2, 2, 2), columns (c, t, y, x), the frame repeated in time', () => {
    // 56×56 image, patch 14, merge 2: a 4×4 patch grid; pixel value encodes its patch (row, col).
    const cfg = qwenVLImageProcessorConfig({ do_normalize: false, do_rescale: false, min_pixels: 1, max_pixels: 1e9 });
    const data = new Uint8Array(56 * 56 * 3);
    for (let y = 0; y < 56; y++)
      for (let x = 0; x < 56; x++)
        for (let c = 0; c < 3; c++) data[(y * 56 + x) * 3 + c] = Math.floor(y / 14) * 10 + Math.floor(x / 14) + c * 100;
    const out = preprocessQwenVLImage(rgbImage(56, 56, data), cfg);
    expect(out.shape).toEqual([16, 3 * 2 * 14 * 14]);
    expect(out.gridThw).toEqual([1, 4, 4]);
    expect(out.tokenCount).toBe(4);
    const rowLen = 1176;
    const patchOfRow = (r: number) => out.pixelValues[r * rowLen]!;
    // First merged unit = patches (0,0), (0,1), (1,0), (1,1); then (0,2), (0,3), (1,2), (1,3); …
    expect(Array.from({ length: 8 }, (_, r) => patchOfRow(r))).toEqual([0, 1, 10, 11, 2, 3, 12, 13]);
    // Column blocks: channel-major, each channel's 2 temporal copies of 14×14.
    const row5 = out.pixelValues.subarray(5 * rowLen, 6 * rowLen);
    expect([row5[0], row5[196], row5[392], row5[784]]).toEqual([3, 3, 103, 203]);
    expect(qwenVLImageTokenCount(56, 56, cfg)).toBe(4);
    // The ViT's patch positions follow the same row order.
    const pos = qwenVisionPatchPositions(out.gridThw, 2);
    for (let r = 0; r < 16; r++) expect(pos[2 * r]! * 10 + pos[2 * r + 1]!).toBe(patchOfRow(r));
  });
});

describe('LLaVA-OneVision anyres', () => {
  it('selects the canvas that keeps most pixels, then the least waste', () => {
    const pins = [
      [28, 28],
      [28, 56],
      [56, 28],
      [56, 56],
      [56, 84],
      [84, 56],
    ] as const;
    expect(selectBestResolution([56, 84], pins)).toEqual([56, 84]);
    expect(selectBestResolution([45, 61], pins)).toEqual([56, 84]);
    expect(selectBestResolution([20, 20], pins)).toEqual([28, 28]);
    expect(patchOutputSize([45, 61], [56, 84])).toEqual([56, 76]);
    expect(patchOutputSize([61, 45], [84, 56])).toEqual([76, 56]);
  });

  it('counts tokens as the HF processor does for the released 7B model', () => {
    const features = llavaOnevisionFeatureConfig(OV_CONFIG);
    expect(features).toMatchObject({ tileSize: 384, featuresPerSide: 27, maxTiles: 9, dropsClsToken: false });
    // A 1000×1000 image: best canvas 1152×1152 (3×3 tiles), 81×81 features,
    // no unpadding, ratio sqrt(6561 / (9·729)) = 1 → kept. 729 base + 81·82.
    const square = llavaOnevisionLayout([1000, 1000], features);
    expect(square.tileGrid).toEqual([3, 3]);
    expect(square.tokenCount).toBe(729 + 81 * 82);
    // A wide image: unpadding removes rows; a large one is shrunk by anyres_max_9.
    const wide = llavaOnevisionLayout([500, 1500], features);
    expect(wide.crop[2] + wide.crop[3]).toBe(0);
    expect(wide.crop[0]).toBeGreaterThan(0);
    expect(wide.tokenCount).toBe(wide.baseTokens + wide.final[0] * (wide.final[1] + 1));
    const big = llavaOnevisionLayout([2304, 2304], features);
    expect(big.interpolated).toBe(true);
    expect(big.gridFeatures).toEqual([162, 162]);
    expect(big.final).toEqual([81, 81]); // ratio sqrt(162² / (9·27²)) = 2 → 162 // 2
  });

  it('reproduces HF _get_unpadded_features on an odd size', () => {
    // 337×1000 (h×w) → canvas 384×1152 (1×3 tiles): 27×81 features; new_height = int(337·81/1000) = 27 → no crop.
    const f = llavaOnevisionFeatureConfig(OV_CONFIG);
    const a = llavaOnevisionLayout([337, 1000], f);
    expect(a.tileGrid).toEqual([1, 3]);
    expect(a.final).toEqual([27, 81]);
    // 300×1000 → 384×1152 too; new_height = int(300·81/1000) = 24 → padding 1 each side → 25 rows.
    const b = llavaOnevisionLayout([300, 1000], f);
    expect(b.crop).toEqual([1, 1, 0, 0]);
    expect(b.tokenCount).toBe(729 + 25 * 82);
    expect(llavaOnevisionFeatureConfig({ ...OV_CONFIG, vision_feature_select_strategy: 'default' }).dropsClsToken).toBe(
      true,
    );
    expect(() => llavaOnevisionFeatureConfig({ ...OV_CONFIG, vision_aspect_ratio: 'pad' })).toThrow(/anyres/);
  });

  it('tiles the padded canvas after the base image', () => {
    const cfg = llavaOnevisionImageProcessorConfig({
      size: { height: 28, width: 28 },
      image_grid_pinpoints: [[28, 56]],
      do_normalize: false,
      do_rescale: false,
    });
    const data = new Uint8Array(56 * 28 * 3);
    for (let y = 0; y < 28; y++)
      for (let x = 0; x < 56; x++) data.fill(x < 28 ? 40 : 200, (y * 56 + x) * 3, (y * 56 + x) * 3 + 3);
    const out = preprocessLlavaOnevisionImage(rgbImage(56, 28, data), cfg);
    expect(out.shape).toEqual([3, 3, 28, 28]);
    const plane = 3 * 28 * 28;
    expect(out.pixelValues[plane]).toBe(40); // tile 1: left half
    expect(out.pixelValues[2 * plane]).toBe(200); // tile 2: right half
    expect(out.imageSize).toEqual([28, 56]);
  });
});

describe('loadImageProcessor', () => {
  const write = (files: Record<string, unknown>) => {
    const dir = tempDir('arm-vision-proc-');
    for (const [name, v] of Object.entries(files)) fs.writeFileSync(path.join(dir, name), JSON.stringify(v));
    return dir;
  };

  it('picks the family from image_processor_type and the placeholder ids from config.json', () => {
    const qwen = loadImageProcessor(
      write({
        'preprocessor_config.json': QWEN25_RELEASED,
        'config.json': { image_token_id: 151655, vision_start_token_id: 151652, vision_end_token_id: 151653 },
      }),
    );
    expect(qwen.family).toBe('qwen-vl');
    expect(qwen.placeholders).toEqual({ image: 151655, visionStart: 151652, visionEnd: 151653 });
    expect(qwen.tokenCount(768, 1024)).toBe((756 / 28) * (1036 / 28));
    const ov = loadImageProcessor(
      write({
        'preprocessor_config.json': {
          image_processor_type: 'LlavaOnevisionImageProcessor',
          size: { height: 384, width: 384 },
          image_grid_pinpoints: OV_PINPOINTS,
        },
        'config.json': OV_CONFIG,
      }),
    );
    expect(ov.family).toBe('llava-onevision');
    expect(ov.placeholders.image).toBe(151646);
    expect(ov.tokenCount(1000, 1000)).toBe(729 + 81 * 82);
  });

  it('names the file when something is missing or unsupported', () => {
    expect(() => loadImageProcessor(write({ 'config.json': {} }))).toThrow(/no preprocessor_config\.json/);
    expect(() =>
      loadImageProcessor(
        write({
          'preprocessor_config.json': { image_processor_type: 'CLIPImageProcessor' },
          'config.json': { image_token_id: 1 },
        }),
      ),
    ).toThrow(/preprocessor_config\.json: image_processor_type "CLIPImageProcessor" is not supported/);
    expect(() => loadImageProcessor(write({ 'preprocessor_config.json': QWEN25_RELEASED, 'config.json': {} }))).toThrow(
      /image_token_id/,
    );
  });
});
