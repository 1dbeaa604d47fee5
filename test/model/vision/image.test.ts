/**
 * Image decoding (vision/image.ts: formats, ICC profiles, grey, alpha, EXIF orientation) and the bicubic
 * resampler (vision/resample.ts).
 */
import { describe, expect, it } from 'vitest';
import fs from 'node:fs';
import path from 'node:path';
import sharp from 'sharp';
import { decodeImage, overWhite, toRgb } from '../../../src/model/vision/image.js';
import { resizeBicubic } from '../../../src/model/vision/resample.js';
import { ModelError } from '../../../src/model/errors.js';
import { tempDir } from '../../helpers/fixtures.js';

/** A 5×3 RGB test pattern whose pixels are all distinct. */
function pattern(width = 5, height = 3, channels = 3): Buffer {
  const data = Buffer.alloc(width * height * channels);
  for (let i = 0; i < data.length; i++) data[i] = (i * 37 + 11) % 256;
  return data;
}

const raw = (data: Buffer, width: number, height: number, channels: 1 | 2 | 3 | 4) =>
  sharp(data, { raw: { width, height, channels } });

describe('decodeImage', () => {
  it('decodes PNG and lossless WebP to the exact RGB pixels', async () => {
    const px = pattern();
    for (const encoded of [
      await raw(px, 5, 3, 3).png().toBuffer(),
      await raw(px, 5, 3, 3).webp({ lossless: true }).toBuffer(),
    ]) {
      const img = await decodeImage(encoded);
      expect([img.width, img.height]).toEqual([5, 3]);
      expect(Buffer.from(img.data)).toEqual(px);
    }
  });

  it('decodes JPEG (lossy: close to the source) from a file path', async () => {
    const dir = tempDir('arm-vision-');
    const file = path.join(dir, 'flat.jpg');
    const flat = Buffer.from(Array.from({ length: 16 * 16 * 3 }, (_, i) => [200, 100, 50][i % 3]!));
    fs.writeFileSync(file, await raw(flat, 16, 16, 3).jpeg({ quality: 95 }).toBuffer());
    const img = await decodeImage(file);
    expect([img.width, img.height]).toEqual([16, 16]);
    for (let i = 0; i < img.data.length; i++) expect(Math.abs(img.data[i]! - flat[i]!)).toBeLessThanOrEqual(3);
  });

  it('ignores an embedded ICC profile, as PIL does: pixels equal the same PNG without its iCCP chunk', async () => {
    const saturated = Buffer.from(Array.from({ length: 4 * 4 * 3 }, (_, i) => [255, 0, 30][i % 3]!));
    const withProfile = await raw(saturated, 4, 4, 3).withIccProfile('p3').png().toBuffer();
    // Drop the iCCP chunk: [length u32][type 4][data][crc u32] after the 8-byte signature.
    const chunks: Buffer[] = [withProfile.subarray(0, 8)];
    let hadProfile = false;
    for (let at = 8; at < withProfile.length;) {
      const len = withProfile.readUInt32BE(at);
      const type = withProfile.toString('latin1', at + 4, at + 8);
      if (type === 'iCCP') hadProfile = true;
      else chunks.push(withProfile.subarray(at, at + 12 + len));
      at += 12 + len;
    }
    expect(hadProfile).toBe(true);
    const a = await decodeImage(withProfile);
    const b = await decodeImage(Buffer.concat(chunks));
    expect(a.data).toEqual(b.data);
  });

  it('replicates grey PNGs to three channels', async () => {
    const grey = pattern(4, 2, 1);
    const img = await decodeImage(await raw(grey, 4, 2, 1).png().toBuffer());
    expect(img.data.length).toBe(4 * 2 * 3);
    for (let i = 0; i < 8; i++) expect([...img.data.subarray(i * 3, i * 3 + 3)]).toEqual([grey[i], grey[i], grey[i]]);
  });

  it('composites transparency over white as PIL alpha_composite does', async () => {
    const rgba = Buffer.from([10, 20, 30, 255, 10, 20, 30, 0, 200, 100, 0, 128, 0, 0, 0, 1]);
    const img = await decodeImage(await raw(rgba, 4, 1, 4).png().toBuffer());
    expect([...img.data.subarray(0, 3)]).toEqual([10, 20, 30]);
    expect([...img.data.subarray(3, 6)]).toEqual([255, 255, 255]);
    // a = 128: (value·128 + 255·127) / 255 through PIL's integer path: 200 → 227, 100 → 177, 0 → 127.
    expect([...img.data.subarray(6, 9)]).toEqual([227, 177, 127]);
    expect(Math.abs(overWhite(200, 128) - (200 * 128 + 255 * 127) / 255)).toBeLessThanOrEqual(0.5);
    expect(overWhite(0, 1)).toBe(254);
  });

  it('overWhite is within half a level of the exact blend for every value and alpha', () => {
    for (let a = 0; a < 256; a++) {
      for (let v = 0; v < 256; v += 5)
        expect(Math.abs(overWhite(v, a) - (v * a + 255 * (255 - a)) / 255)).toBeLessThanOrEqual(0.5 + 1e-9);
    }
  });

  it('applies EXIF orientation (transformers load_image transposes)', async () => {
    const jpeg = await raw(pattern(8, 4), 8, 4, 3).jpeg().withMetadata({ orientation: 6 }).toBuffer();
    const img = await decodeImage(jpeg);
    expect([img.width, img.height]).toEqual([4, 8]);
  });

  it('refuses other formats, garbage and missing files with ModelError', async () => {
    const gif = await raw(pattern(), 5, 3, 3).gif().toBuffer();
    await expect(decodeImage(gif)).rejects.toThrow(/gif is not supported \(PNG, JPEG or WebP\)/);
    await expect(decodeImage(new Uint8Array([1, 2, 3, 4]))).rejects.toBeInstanceOf(ModelError);
    await expect(decodeImage('/nonexistent/cat.png')).rejects.toThrow(/cat\.png: cannot read image \(ENOENT\)/);
  });

  it('toRgb rejects odd channel counts and short buffers', () => {
    expect(() => toRgb(new Uint8Array(10), 2, 1, 5)).toThrow(ModelError);
    expect(() => toRgb(new Uint8Array(5), 2, 1, 3)).toThrow(/expected 6 samples/);
  });
});

describe('resizeBicubic', () => {
  const img = (w: number, h: number, f: (x: number, y: number, c: number) => number) => {
    const data = new Uint8Array(w * h * 3);
    for (let y = 0; y < h; y++)
      for (let x = 0; x < w; x++) for (let c = 0; c < 3; c++) data[(y * w + x) * 3 + c] = f(x, y, c);
    return { width: w, height: h, data };
  };

  it('keeps a same-size image and a constant image unchanged', () => {
    const p = img(7, 5, (x, y, c) => (x * 31 + y * 7 + c * 50) % 256);
    expect(resizeBicubic(p, 7, 5).data).toEqual(p.data);
    const flat = img(9, 6, (_x, _y, c) => [12, 130, 250][c]!);
    for (const kernel of ['torchvision', 'pil'] as const) {
      for (const [w, h] of [
        [4, 3],
        [20, 11],
        [9, 2],
      ] as const) {
        const out = resizeBicubic(flat, w, h, kernel);
        for (let i = 0; i < out.data.length; i++) expect(out.data[i]).toBe([12, 130, 250][i % 3]);
      }
    }
  });

  it('antialiases when shrinking: 4 → 2 of a step edge, computed by hand', () => {
    // Output 0: centre 1, support 4 (2·scale), taps at x = 0..3 with Keys(a=−0.5) weights of (x − 0.5)/2:
    // 0.8671875, 0.8671875, 0.2265625, −0.0703125 (sum 1.890625) → 255·0.15625/1.890625 = 21.07 → 21.
    const step = img(4, 1, (x) => (x < 2 ? 0 : 255));
    for (const kernel of ['torchvision', 'pil'] as const) {
      const out = resizeBicubic(step, 2, 1, kernel);
      expect([out.data[0], out.data[3]]).toEqual([21, 234]);
    }
  });

  it('PIL and torchvision kernels differ by at most one level per pass', () => {
    const p = img(37, 23, (x, y, c) => (x * x * 3 + y * 11 + c * 70) % 256);
    for (const [w, h] of [
      [56, 28],
      [14, 14],
      [100, 64],
    ] as const) {
      const a = resizeBicubic(p, w, h, 'torchvision');
      const b = resizeBicubic(p, w, h, 'pil');
      let max = 0;
      for (let i = 0; i < a.data.length; i++) max = Math.max(max, Math.abs(a.data[i]! - b.data[i]!));
      expect(max).toBeLessThanOrEqual(2);
    }
  });

  it('rejects non-positive sizes', () => {
    expect(() =>
      resizeBicubic(
        img(2, 2, () => 0),
        0,
        2,
      ),
    ).toThrow(ModelError);
  });
});
