/**
 * Image decoding: PNG, JPEG and WebP files (or bytes) → 8-bit RGB pixels, as transformers' `load_image` +
 * `convert_to_rgb` hand them to an image processor.
 *
 * Decoding uses sharp (libvips with libpng, libjpeg-turbo-derived mozjpeg and libwebp: the same decoder
 * families PIL wheels bundle, so JPEG pixels match PIL's rather than a pure-JS IDCT's). Resampling is NOT done
 * by sharp: its kernels do not reproduce PIL/torchvision bicubic bit for bit; see resample.ts.
 */
import fs from 'node:fs/promises';
import sharp, { type Metadata } from 'sharp';
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
 * The bound on decoded pixels, checked from the file's header before any pixel is decoded: a 750 KB PNG can
 * declare 16000×16000 pixels, 768 MB as RGB (measured: 1.5 GB resident and 8 s to decode, where the header check
 * refuses it in milliseconds). An image processor never uses more than its largest size (Qwen-VL `max_pixels`,
 * LLaVA-OneVision's largest grid pinpoint): it shrinks anything bigger, so pixels beyond a small multiple of that
 * are decoded only to be thrown away.
 *
 * The bound is IMAGE_PIXEL_FACTOR (4) × the processor's largest size, and never below MIN_IMAGE_PIXEL_BOUND
 * (4096², 16.8 M pixels). 4× is twice the largest size per side: a camera photo up to that decodes (a 48 MP photo
 * for Qwen2.5-VL's 12.8 M `max_pixels`), and the decode costs at most ~7 bytes a pixel (sharp's buffer plus the RGB
 * copy): ~360 MB for Qwen2.5-VL, ~470 MB for Qwen3-VL (16.8 M). The floor keeps ordinary photos (12–16 MP phones)
 * readable when a checkpoint's processor was configured small. `ARM_MAX_IMAGE_PIXELS` sets the bound instead
 * (whole pixels), and library callers pass `maxPixels`.
 */
const IMAGE_PIXEL_FACTOR = 4;
export const MIN_IMAGE_PIXEL_BOUND = 4096 * 4096;
/** The bound where no image processor is known (a bare decodeImage): 4 × Qwen3-VL's largest size, 4096² (8192²). */
export const DEFAULT_MAX_IMAGE_PIXELS = IMAGE_PIXEL_FACTOR * 4096 * 4096;
const MAX_IMAGE_PIXELS_ENV = 'ARM_MAX_IMAGE_PIXELS';

/** A bound on an image's decoded pixels, with what it comes from (for the error message). */
export interface PixelBound {
  readonly pixels: number;
  readonly source: string;
}

/** `ARM_MAX_IMAGE_PIXELS` as a bound, or null when unset; a value that is not a positive whole number is an error. */
function envPixelBound(env: NodeJS.ProcessEnv = process.env): PixelBound | null {
  const raw = env[MAX_IMAGE_PIXELS_ENV];
  if (raw === undefined || raw.trim() === '') return null;
  const pixels = Number(raw.trim());
  if (!/^\d+$/.test(raw.trim()) || !Number.isSafeInteger(pixels) || pixels < 1) {
    throw new ModelError(
      `${MAX_IMAGE_PIXELS_ENV}=${JSON.stringify(raw)}: expected a positive whole number of pixels (width × height)`,
    );
  }
  return { pixels, source: MAX_IMAGE_PIXELS_ENV };
}

/**
 * The bound for an image processor whose largest output is `largestPixels` (`what` names it, e.g. "max_pixels
 * in preprocessor_config.json"): `ARM_MAX_IMAGE_PIXELS` when set, else max(4 × largestPixels, 4096²).
 */
export function processorPixelBound(
  largestPixels: number,
  what: string,
  env: NodeJS.ProcessEnv = process.env,
): PixelBound {
  const set = envPixelBound(env);
  if (set) return set;
  const scaled = IMAGE_PIXEL_FACTOR * largestPixels;
  return scaled >= MIN_IMAGE_PIXEL_BOUND
    ? {
        pixels: scaled,
        source: `${IMAGE_PIXEL_FACTOR} × the image processor's largest size of ${largestPixels} pixels, ${what}`,
      }
    : {
        pixels: MIN_IMAGE_PIXEL_BOUND,
        source:
          `at least 4096×4096; ${IMAGE_PIXEL_FACTOR} × the image processor's largest size of ` +
          `${largestPixels} pixels, ${what}, is less`,
      };
}

/** The bound without an image processor: `ARM_MAX_IMAGE_PIXELS`, else DEFAULT_MAX_IMAGE_PIXELS. */
function defaultPixelBound(env: NodeJS.ProcessEnv = process.env): PixelBound {
  return (
    envPixelBound(env) ?? {
      pixels: DEFAULT_MAX_IMAGE_PIXELS,
      source: `the default without an image processor, ${IMAGE_PIXEL_FACTOR} × 4096×4096`,
    }
  );
}

export interface DecodeImageOptions {
  /** Most pixels (width × height) to decode, checked from the header first; default `defaultPixelBound()`. */
  maxPixels?: number | PixelBound;
  /** What to call the image in errors (default: the path, or "image bytes"). */
  name?: string;
}

/**
 * Decode an image file or its bytes into RGB. EXIF orientation is applied (transformers' `load_image` calls
 * `ImageOps.exif_transpose`); transparency is composited over white as transformers' `convert_to_rgb` does
 * (PIL `alpha_composite` on a white background, its integer rounding reproduced); grey images are replicated
 * to three channels. Embedded ICC profiles are ignored, as PIL ignores them. Of an animated (multi-frame) WebP only
 * the first frame is decoded, as PIL's `Image.open` + `convert` give it, so frames do not multiply the cost.
 *
 * An image of more pixels than `maxPixels` (see IMAGE_PIXEL_FACTOR) is refused from its header, before decoding,
 * with an error naming the file, its size and the bound.
 */
export async function decodeImage(source: string | Uint8Array, opts: DecodeImageOptions = {}): Promise<RgbImage> {
  const where = opts.name ?? (typeof source === 'string' ? source : 'image bytes');
  const bound: PixelBound =
    opts.maxPixels === undefined
      ? defaultPixelBound()
      : typeof opts.maxPixels === 'number'
        ? { pixels: opts.maxPixels, source: 'maxPixels' }
        : opts.maxPixels;
  if (!(Number.isSafeInteger(bound.pixels) && bound.pixels >= 1))
    throw new ModelError(`${where}: pixel bound ${bound.pixels} (${bound.source}) is not a positive whole number`);
  const bytes = typeof source === 'string' ? await readImageFile(source) : source;
  let meta: Metadata;
  try {
    // The header only: no pixel is decoded here, whatever size it declares (sharp's own limit is lifted so that
    // the size can be reported; the decode below enforces the bound).
    meta = await sharp(bytes, { ignoreIcc: true, limitInputPixels: false }).metadata();
  } catch (err) {
    throw new ModelError(`${where}: not a readable image (${(err as Error).message})`);
  }
  const format = meta.format;
  if (!format || !FORMATS.has(format)) {
    throw new ModelError(`${where}: image format ${format ?? 'unknown'} is not supported (PNG, JPEG or WebP)`);
  }
  // One page: sharp decodes the first frame only (pages: 1), whose size the header gives as width × height.
  const width = meta.width ?? 0,
    height = meta.pageHeight ?? meta.height ?? 0;
  if (width * height > bound.pixels) {
    const frames = (meta.pages ?? 1) > 1 ? ` (first of ${meta.pages} frames)` : '';
    throw new ModelError(
      `${where}: the image is ${width}×${height}${frames}, ${width * height} pixels, ` +
        `more than the ${bound.pixels} allowed (${bound.source}); ` +
        'it is refused before decoding (a small file can declare gigabytes of pixels): ' +
        `downscale it, or raise the bound with ${MAX_IMAGE_PIXELS_ENV}`,
    );
  }
  // `ignoreIcc`: sharp would otherwise convert through an embedded profile to sRGB, which PIL never does.
  // `autoOrient` applies EXIF orientation; `raw` gives 8-bit samples in the file's own channel count
  // (1 grey, 2 grey+alpha, 3 RGB, 4 RGBA). `limitInputPixels` enforces the bound inside the decoder too.
  const { data, info } = await sharp(bytes, {
    failOn: 'error',
    ignoreIcc: true,
    pages: 1,
    page: 0,
    limitInputPixels: bound.pixels,
  })
    .autoOrient()
    .raw({ depth: 'uchar' })
    .toBuffer({ resolveWithObject: true })
    .catch((err: Error) => {
      throw new ModelError(`${where}: could not decode ${format} (${err.message})`);
    });
  return toRgb(
    new Uint8Array(data.buffer, data.byteOffset, data.length),
    info.width,
    info.height,
    info.channels,
    where,
  );
}

async function readImageFile(file: string): Promise<Uint8Array> {
  try {
    return await fs.readFile(file);
  } catch (err) {
    throw new ModelError(
      `${file}: cannot read image (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`,
    );
  }
}

/** Samples with 1–4 channels → RGB; alpha composited over white. */
export function toRgb(samples: Uint8Array, width: number, height: number, channels: number, where = 'image'): RgbImage {
  const n = width * height;
  if (samples.length !== n * channels)
    throw new ModelError(`${where}: expected ${n * channels} samples, got ${samples.length}`);
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
