/**
 * Image decoding: PNG, JPEG and WebP files (or bytes) → 8-bit RGB pixels, as transformers' `load_image` +
 * `convert_to_rgb` hand them to an image processor.
 *
 * Decoding uses sharp (libvips with libpng, libjpeg-turbo-derived mozjpeg and libwebp: the same decoder
 * families PIL wheels bundle, so JPEG pixels match PIL's rather than a pure-JS IDCT's). Resampling is NOT done
 * by sharp: its kernels do not reproduce PIL/torchvision bicubic bit for bit; see resample.ts.
 */
import fs from 'node:fs/promises';
import sharp from 'sharp';
import { ModelError } from '../errors.js';

/** 8-bit RGB pixels, row-major, interleaved: `data[(y * width + x) * 3 + c]`, shape [height, width, 3]. */
export interface RgbImage {
  readonly width: number;
  readonly height: number;
  readonly data: Uint8Array;
}

export function rgbImage(width: number, height: number, data: Uint8Array): RgbImage {
  if (!Number.isInteger(width) || !Number.isInteger(height) || width < 1 || height < 1) {
    throw new ModelError(`image size must be positive integers, got ${width}×${height}`);
  }
  if (data.length !== width * height * 3) {
    throw new ModelError(`RGB image ${width}×${height} needs ${width * height * 3} bytes, got ${data.length}`);
  }
  return { width, height, data };
}

const FORMATS = new Set(['png', 'jpeg', 'webp']);

/**
 * Decode an image file or its bytes into RGB. EXIF orientation is applied (transformers' `load_image` calls
 * `ImageOps.exif_transpose`); transparency is composited over white as transformers' `convert_to_rgb` does
 * (PIL `alpha_composite` on a white background, its integer rounding reproduced); grey images are replicated
 * to three channels. Embedded ICC profiles are ignored, as PIL ignores them.
 */
export async function decodeImage(source: string | Uint8Array): Promise<RgbImage> {
  const where = typeof source === 'string' ? source : 'image bytes';
  const bytes = typeof source === 'string' ? await readImageFile(source) : source;
  let format: string | undefined;
  try {
    format = (await sharp(bytes, { ignoreIcc: true }).metadata()).format;
  } catch (err) {
    throw new ModelError(`${where}: not a readable image (${(err as Error).message})`);
  }
  if (!format || !FORMATS.has(format)) {
    throw new ModelError(`${where}: image format ${format ?? 'unknown'} is not supported (PNG, JPEG or WebP)`);
  }
  // `ignoreIcc`: sharp would otherwise convert through an embedded profile to sRGB, which PIL never does.
  // `autoOrient` applies EXIF orientation; `raw` gives 8-bit samples in the file's own channel count
  // (1 grey, 2 grey+alpha, 3 RGB, 4 RGBA).
  const { data, info } = await sharp(bytes, { failOn: 'error', ignoreIcc: true })
    .autoOrient()
    .raw({ depth: 'uchar' })
    .toBuffer({ resolveWithObject: true })
    .catch((err: Error) => {
      throw new ModelError(`${where}: could not decode ${format} (${err.message})`);
    });
  return toRgb(new Uint8Array(data.buffer, data.byteOffset, data.length), info.width, info.height, info.channels, where);
}

async function readImageFile(file: string): Promise<Uint8Array> {
  try {
    return await fs.readFile(file);
  } catch (err) {
    throw new ModelError(`${file}: cannot read image (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
  }
}

/** Samples with 1–4 channels → RGB; alpha composited over white. */
export function toRgb(samples: Uint8Array, width: number, height: number, channels: number, where = 'image'): RgbImage {
  const n = width * height;
  if (samples.length !== n * channels) throw new ModelError(`${where}: expected ${n * channels} samples, got ${samples.length}`);
  const out = new Uint8Array(n * 3);
  for (let i = 0; i < n; i++) {
    let r: number, g: number, b: number, a: number;
    if (channels === 1 || channels === 2) {
      r = g = b = samples[i * channels]!;
      a = channels === 2 ? samples[i * 2 + 1]! : 255;
    } else if (channels === 3 || channels === 4) {
      r = samples[i * channels]!;
      g = samples[i * channels + 1]!;
      b = samples[i * channels + 2]!;
      a = channels === 4 ? samples[i * 4 + 3]! : 255;
    } else {
      throw new ModelError(`${where}: ${channels}-channel images are not supported`);
    }
    out[i * 3] = overWhite(r, a);
    out[i * 3 + 1] = overWhite(g, a);
    out[i * 3 + 2] = overWhite(b, a);
  }
  return rgbImage(width, height, out);
}

/**
 * One channel of PIL's `Image.alpha_composite(white, rgba)`: PIL's integer formula (7 extra bits of
 * precision, division by 255 done as two shifts), specialised to an opaque white destination, so that
 * semi-transparent pixels round exactly as HF's `convert_to_rgb` does.
 */
export function overWhite(value: number, alpha: number): number {
  if (alpha === 255) return value;
  if (alpha === 0) return 255;
  const coefSrc = alpha << 7; // src.a·255·255·2^7 / (255·255)
  const coefDst = (255 << 7) - coefSrc;
  const t = value * coefSrc + 255 * coefDst + (0x80 << 7);
  return (((t >> 8) + t) >> 8) >> 7;
}
