/**
 * Decompression bombs: a small image file may declare billions of pixels. Images are checked from their header
 * against a bound derived from what the model's image processor can use (4 × its largest size, at least 4096²;
 * ARM_MAX_IMAGE_PIXELS or `maxPixels` set another) before any pixel is decoded; animated images decode one frame.
 */
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import fs from 'node:fs';
import path from 'node:path';
import zlib from 'node:zlib';
import sharp from 'sharp';
import { Decoder } from '../../src/model/decoder.js';
import { ModelError } from '../../src/model/errors.js';
import { readExamples } from '../../src/data/examples.js';
import { fitActivationRM } from '../../src/arm/fit.js';
import { releaseJudgeImages } from '../../src/arm/images.js';
import {
  decodeImage,
  DEFAULT_MAX_IMAGE_PIXELS,
  MIN_IMAGE_PIXEL_BOUND,
  processorPixelBound,
} from '../../src/model/vision/image.js';
import { loadImageProcessor } from '../../src/model/vision/processor.js';
import { tempDir } from '../helpers/fixtures.js';
import { HF_PARITY, imageTextCheckpoint, writeShapePairs } from '../helpers/image-text.js';

/** `text` escaped to match itself in a regular expression. */
const literal = (text: string) => text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

const CRC = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});
const crc32 = (b: Buffer) => {
  let c = 0xffffffff;
  for (const x of b) c = CRC[(c ^ x) & 0xff]! ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
};
function chunk(type: string, data: Buffer): Buffer {
  const head = Buffer.alloc(4);
  head.writeUInt32BE(data.length);
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32(Buffer.concat([Buffer.from(type, 'latin1'), data])));
  return Buffer.concat([head, Buffer.from(type, 'latin1'), data, crc]);
}

/**
 * A valid 1-bit greyscale PNG of `width` × `height` white pixels, written by hand: its pixel rows are 1/24 of their
 * RGB size and compress ~1000×, so a 16000×16000 image (768 MB as RGB) is a 32 KB file made in a fraction of a second.
 */
function whitePng(width: number, height: number): Buffer {
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr[8] = 1;
  ihdr[9] = 0; // bit depth 1, greyscale; compression, filter, interlace 0
  const row = Buffer.alloc(1 + Math.ceil(width / 8), 0xff);
  row[0] = 0; // filter None, all bits set
  const raw = Buffer.alloc(row.length * height);
  for (let y = 0; y < height; y++) row.copy(raw, y * row.length);
  const png = Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk('IHDR', ihdr),
    chunk('IDAT', zlib.deflateSync(raw, { level: 9 })),
    chunk('IEND', Buffer.alloc(0)),
  ]);
  return png;
}

const MB = 2 ** 20;
let dir: string, bomb: string;

beforeAll(() => {
  dir = tempDir('arm-bomb-');
  bomb = path.join(dir, 'bomb.png');
  fs.writeFileSync(bomb, whitePng(16000, 16000));
});

const savedEnv = process.env.ARM_MAX_IMAGE_PIXELS;
afterEach(() => {
  if (savedEnv === undefined) delete process.env.ARM_MAX_IMAGE_PIXELS;
  else process.env.ARM_MAX_IMAGE_PIXELS = savedEnv;
});

describe('the hand-made PNG', () => {
  it('is a real PNG: a small one decodes to white, the bomb declares 16000×16000 in a file under 100 KB', async () => {
    const small = await decodeImage(whitePng(13, 5));
    expect([small.width, small.height]).toEqual([13, 5]);
    expect(small.data.every((v) => v === 255)).toBe(true);
    const m = await sharp(bomb, { limitInputPixels: false }).metadata();
    expect([m.format, m.width, m.height]).toEqual(['png', 16000, 16000]);
    expect(fs.statSync(bomb).size).toBeLessThan(100_000);
  });
});

describe('decodeImage', () => {
  it('refuses a 16000×16000 PNG by its header: fast, naming the file, size and bound, holding no pixels', async () => {
    global.gc?.();
    const rss0 = process.memoryUsage().rss,
      peak0 = process.resourceUsage().maxRSS * 1024;
    const t0 = performance.now();
    const err = await decodeImage(bomb).then(
      () => null,
      (e: unknown) => e as Error,
    );
    const ms = performance.now() - t0;
    const rssGrowth = process.memoryUsage().rss - rss0,
      peakGrowth = process.resourceUsage().maxRSS * 1024 - peak0;
    expect(err).toBeInstanceOf(ModelError);
    expect(err!.message).toBe(
      `${bomb}: the image is 16000×16000, 256000000 pixels, more than the ${DEFAULT_MAX_IMAGE_PIXELS} allowed ` +
        '(the default without an image processor, 4 × 4096×4096); ' +
        'it is refused before decoding (a small file can declare gigabytes of pixels): downscale it, ' +
        'or raise the bound with ARM_MAX_IMAGE_PIXELS',
    );
    // Decoding it costs 768 MB of RGB alone (measured before the bound: 1.5 GB resident, 8 s).
    expect(ms).toBeLessThan(2000);
    expect(rssGrowth).toBeLessThan(300 * MB);
    expect(peakGrowth).toBeLessThan(300 * MB);
  });

  it('takes the bound from maxPixels or ARM_MAX_IMAGE_PIXELS, and refuses a malformed variable naming it', async () => {
    const png = whitePng(40, 30);
    await expect(decodeImage(png, { maxPixels: 1199, name: 'forty.png' })).rejects.toThrow(
      'forty.png: the image is 40×30, 1200 pixels, more than the 1199 allowed (maxPixels)',
    );
    expect((await decodeImage(png, { maxPixels: 1200 })).width).toBe(40);
    process.env.ARM_MAX_IMAGE_PIXELS = '1000';
    await expect(decodeImage(png)).rejects.toThrow(/1200 pixels, more than the 1000 allowed \(ARM_MAX_IMAGE_PIXELS\)/);
    // above sharp's own default limit (16383²): the variable raises that too
    process.env.ARM_MAX_IMAGE_PIXELS = '300000000';
    expect((await sharp(bomb, { limitInputPixels: false }).metadata()).width).toBe(16000);
    process.env.ARM_MAX_IMAGE_PIXELS = '12e6';
    await expect(decodeImage(png)).rejects.toThrow(
      'ARM_MAX_IMAGE_PIXELS="12e6": expected a positive whole number of pixels (width × height)',
    );
  });

  it('animated WebP: only the first frame decodes (frames add no pixels); one over the bound is refused', async () => {
    const frames = async (n: number, side: number) => {
      const each = [];
      for (let i = 0; i < n; i++)
        each.push(
          await sharp({
            create: { width: side, height: side, channels: 3, background: { r: 20 * i + 10, g: 100, b: 200 } },
          })
            .png()
            .toBuffer(),
        );
      return sharp(each, { join: { animated: true } })
        .webp({ lossless: true, effort: 0 })
        .toBuffer();
    };
    const ten = await frames(10, 600); // 3.6 M pixels in all, 0.36 M a frame
    const m = await sharp(ten).metadata();
    expect([m.pages, m.width, m.height]).toEqual([10, 600, 600]);
    const img = await decodeImage(ten, { maxPixels: 1_000_000 });
    expect([img.width, img.height]).toEqual([600, 600]);
    expect(Array.from(img.data.subarray(0, 3))).toEqual([10, 100, 200]); // the first frame's colour
    await expect(decodeImage(await frames(3, 1200), { maxPixels: 1_000_000, name: 'anim.webp' })).rejects.toThrow(
      'anim.webp: the image is 1200×1200 (first of 3 frames), 1440000 pixels, more than the 1000000 allowed',
    );
  });
});

describe('the bound of an image processor', () => {
  it('is 4 × the largest size it resizes to, at least 4096², and ARM_MAX_IMAGE_PIXELS when set', () => {
    // Qwen2.5-VL's released max_pixels (28·28·16384) → 4× that; the tiny fixtures' (224², LLaVA's 84×56 canvas) → the
    // floor.
    expect(processorPixelBound(12845056, 'max_pixels').pixels).toBe(51380224);
    const qwen = loadImageProcessor(path.join(HF_PARITY, 'qwen2_5_vl-tiny'));
    expect(qwen.largestPixels).toBe(50176);
    expect(qwen.pixelBound().pixels).toBe(MIN_IMAGE_PIXEL_BOUND);
    const llava = loadImageProcessor(path.join(HF_PARITY, 'llava_onevision-tiny'));
    expect(llava.largestPixels).toBe(84 * 56);
    expect(llava.pixelBound()).toEqual({
      pixels: 4096 * 4096,
      source: expect.stringMatching(
        new RegExp(
          /at least 4096×4096; 4 × the image processor's largest size of 4704 pixels, /.source +
            /the largest image_grid_pinpoints canvas/.source,
        ),
      ),
    });
    process.env.ARM_MAX_IMAGE_PIXELS = '5000';
    expect(qwen.pixelBound()).toEqual({ pixels: 5000, source: 'ARM_MAX_IMAGE_PIXELS' });
  });
});

describe('judge items with images (qwen2_5_vl tiny fixture)', () => {
  it('a fit showing the bomb fails fast, naming the file, its size and the bound, holding no pixels', async () => {
    const work = tempDir('arm-bomb-fit-');
    const { file } = await writeShapePairs(work, { colours: ['red', 'blue'], shapes: ['circle'] });
    fs.copyFileSync(bomb, path.join(work, 'images', 'bomb.png'));
    fs.appendFileSync(
      file,
      `${JSON.stringify({
        id: 'bomb',
        prompt: 'What shape is in the picture ?',
        chosen: 'a white square',
        rejected: 'a red circle',
        images: ['images/bomb.png'],
      })}\n`,
    );
    const { examples } = readExamples(file);
    const decoder = await Decoder.load(imageTextCheckpoint('qwen2_5_vl'), {
      cacheDir: tempDir('arm-cache-'),
      threads: 1,
      quiet: true,
    });
    try {
      global.gc?.();
      const rss0 = process.memoryUsage().rss,
        peak0 = process.resourceUsage().maxRSS * 1024;
      const t0 = performance.now();
      const err = await fitActivationRM(decoder, examples, {
        passes: 2,
        shots: 1,
        heads: 'random:1',
        warn: () => undefined,
      }).then(
        () => null,
        (e: unknown) => e as Error,
      );
      const ms = performance.now() - t0;
      expect(err).toBeInstanceOf(ModelError);
      expect(err!.message).toMatch(
        new RegExp(
          `^${literal(path.join(work, 'images', 'bomb.png'))}: ` +
            'the image is 16000×16000, 256000000 pixels, more than the 16777216 allowed ' +
            "\\(at least 4096×4096; 4 × the image processor's largest size of 50176 pixels, " +
            'max_pixels in preprocessor_config\\.json, is less\\)',
        ),
      );
      expect(ms).toBeLessThan(3000);
      expect(process.memoryUsage().rss - rss0).toBeLessThan(300 * MB);
      expect(process.resourceUsage().maxRSS * 1024 - peak0).toBeLessThan(300 * MB);
      // The same rows without the bomb fit (the bound refuses only what exceeds it).
      process.env.ARM_MAX_IMAGE_PIXELS = String(56 * 56);
      await fitActivationRM(
        decoder,
        examples.filter((e) => e.id !== 'bomb'),
        { passes: 2, shots: 1, heads: 'random:1', warn: () => undefined },
      );
      // One pixel less than a 56×56 shape: refused through the processor's bound, naming the variable (new files:
      // a file already read stays accepted for the process).
      process.env.ARM_MAX_IMAGE_PIXELS = String(56 * 56 - 1);
      const other = readExamples(
        (await writeShapePairs(tempDir('arm-shapes-'), { colours: ['green', 'yellow'], shapes: ['square'] })).file,
      ).examples;
      await expect(
        fitActivationRM(decoder, other, { passes: 2, shots: 1, heads: 'random:1', warn: () => undefined }),
      ).rejects.toThrow(/\.png: the image is 56×56, 3136 pixels, more than the 3135 allowed \(ARM_MAX_IMAGE_PIXELS\)/);
    } finally {
      await releaseJudgeImages(decoder);
      await decoder.dispose();
    }
  });
});
