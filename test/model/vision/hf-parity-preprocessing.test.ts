/**
 * From the PNG to what the vision tower and language model receive, against transformers 5.17 on the
 * hf-parity fixtures (../shared/fixtures/hf-parity, README there): pixel_values, image_grid_thw/image_sizes,
 * the expanded input ids, and the M-RoPE position ids.
 *
 * Measured: our pixel_values equal HF's exactly (max |diff| 0) for all four families, both images — the
 * fixtures came from the torchvision backend, whose uint8 bicubic resample.ts reproduces bit for bit, and the
 * normalisation is done in float32 as torchvision does. Tolerance: 1e-6 (a few float32 ulps at |x| ≤ 2.2).
 * With PIL's kernel instead the largest difference is one grey level (≈ 0.015 after normalisation).
 */
import { beforeAll, describe, expect, it } from 'vitest';
import fs from 'node:fs';
import path from 'node:path';
import { decodeImage, type RgbImage } from '../../../src/model/vision/image.js';
import { loadImageProcessor, type ImageProcessor } from '../../../src/model/vision/processor.js';
import { mropePositionIds } from '../../../src/model/vision/mrope.js';
import { mropeFrequencyRows, mropeLayout } from '../../../src/model/families/rope-config.js';
import { preprocessQwenVLImage, qwenVLImageProcessorConfig } from '../../../src/model/vision/qwen-processor.js';
import {
  llavaOnevisionImageProcessorConfig,
  preprocessLlavaOnevisionImage,
} from '../../../src/model/vision/llava-onevision-processor.js';
import { IMAGE_TEXT_FAMILIES as FAMILIES } from '../../helpers/hf-parity.js';
import { readReferenceTensors, type ReferenceTensor } from '../../helpers/safetensors-f64.js';

const FIXTURES = path.resolve(import.meta.dirname, '../../../../shared/fixtures/hf-parity');
const present = fs.existsSync(path.join(FIXTURES, 'qwen2_5_vl-tiny'));
const PIXEL_TOLERANCE = 1e-6;

interface Parity {
  processor: string;
  results: { input_ids: number[]; input_ids_one_placeholder: number[]; image: string }[];
}

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  expect(a.length).toBe(b.length);
  let max = 0;
  for (let i = 0; i < a.length; i++) max = Math.max(max, Math.abs(a[i]! - b[i]!));
  return max;
}

describe.runIf(present).each(FAMILIES)('HF preprocessing parity: %s', (name) => {
  const dir = path.join(FIXTURES, name);
  let tensors: Map<string, ReferenceTensor>;
  let parity: Parity;
  let processor: ImageProcessor;
  const images: RgbImage[] = [];
  const config = () => JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8')) as Record<string, unknown>;
  const ref = (key: string) => {
    const t = tensors.get(`${parity.processor}.${key}`);
    if (!t) throw new Error(`${name}: no reference tensor ${parity.processor}.${key}`);
    return t;
  };

  beforeAll(async () => {
    tensors = readReferenceTensors(path.join(dir, 'tensors.safetensors'));
    parity = JSON.parse(fs.readFileSync(path.join(dir, 'parity.json'), 'utf8'));
    processor = loadImageProcessor(dir);
    for (const i of [0, 1]) images.push(await decodeImage(path.join(dir, `image${i}.png`)));
  });

  it.each([0, 1])(`pixel_values of image%i match HF within ${PIXEL_TOLERANCE}`, (i) => {
    const ours = processor.preprocess(images[i]!);
    const theirs = ref(`image${i}.pixel_values`);
    // LLaVA-OV's reference carries a batch axis: [1, tiles, 3, H, W].
    expect(theirs.shape.slice(-ours.shape.length)).toEqual([...ours.shape]);
    const diff = maxAbsDiff(ours.pixelValues, theirs.values);
    expect(diff).toBeLessThanOrEqual(PIXEL_TOLERANCE);
    if (ours.family === 'qwen-vl') {
      expect([...ours.gridThw]).toEqual([...ref(`image${i}.image_grid_thw`).values]);
    } else {
      expect([...ours.imageSize]).toEqual([...ref(`image${i}.image_sizes`).values]);
    }
    expect(processor.tokenCount(images[i]!.height, images[i]!.width)).toBe(ours.tokenCount);
  });

  it('the fixtures were made by the torchvision backend: PIL bicubic is one grey level off on resized pixels', () => {
    const json = JSON.parse(fs.readFileSync(path.join(dir, 'preprocessor_config.json'), 'utf8')) as Record<
      string,
      unknown
    >;
    const pil =
      processor.family === 'qwen-vl'
        ? preprocessQwenVLImage(images[1]!, { ...qwenVLImageProcessorConfig(json), kernel: 'pil' }).pixelValues
        : preprocessLlavaOnevisionImage(images[1]!, { ...llavaOnevisionImageProcessorConfig(json), kernel: 'pil' })
            .pixelValues;
    const diff = maxAbsDiff(pil, ref('image1.pixel_values').values);
    expect(diff).toBeGreaterThan(0.01);
    expect(diff).toBeLessThan(2 * (1 / 255 / 0.26130258) + 1e-6); // at most two grey levels (both passes)
  });

  it('expands the one-placeholder prompt to HF input_ids', () => {
    const image = processor.preprocess(images[0]!);
    for (const r of parity.results) {
      expect(r.image).toBe('image0.png');
      const expanded = processor.expand(r.input_ids_one_placeholder, [image]);
      expect(expanded.inputIds).toEqual(r.input_ids);
      expect(expanded.imageSpans).toHaveLength(1);
      const span = expanded.imageSpans[0]!;
      expect(
        r.input_ids.slice(span.start, span.start + span.length).every((id) => id === processor.placeholders.image),
      ).toBe(true);
      expect(span.length).toBe(image.tokenCount);
    }
  });

  it('M-RoPE position ids match what the rotary embedding received', () => {
    const image = processor.preprocess(images[0]!);
    parity.results.forEach((r, j) => {
      const theirs = tensors.get(`rope_position_ids.prompt${j}`)!;
      const { inputIds, imageSpans } = processor.expand(r.input_ids_one_placeholder, [image]);
      if (image.family !== 'qwen-vl') {
        // LLaVA-OneVision's Qwen2 language model uses plain 1-D positions.
        expect(theirs.shape).toEqual([1, inputIds.length]);
        expect([...theirs.values]).toEqual(inputIds.map((_, i) => i));
        return;
      }
      const merge = (config()['vision_config'] as { spatial_merge_size: number }).spatial_merge_size;
      const ours = mropePositionIds(inputIds.length, [{ span: imageSpans[0]!, gridThw: image.gridThw }], merge);
      expect(theirs.shape).toEqual([3, 1, inputIds.length]);
      expect([...ours.positions]).toEqual([...theirs.values]);
      // The next token continues at max + 1 on all rows.
      expect(inputIds.length + ours.delta).toBe(Math.max(...theirs.values) + 1);
    });
  });

  it.runIf(name.startsWith('qwen'))('reads the M-RoPE layout from config.json', () => {
    const layout = mropeLayout(config())!;
    expect(layout.sections).toEqual([2, 3, 3]);
    expect(layout.interleaved).toBe(name.startsWith('qwen3'));
    const rows = [...mropeFrequencyRows(8, layout)];
    expect(rows).toEqual(layout.interleaved ? [0, 1, 2, 0, 1, 2, 0, 1] : [0, 0, 1, 1, 1, 2, 2, 2]);
  });
});
