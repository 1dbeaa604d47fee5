/**
 * Bicubic resizing of 8-bit RGB images, reproducing what Hugging Face image processors get from
 *  - torchvision (`tvF.resize(uint8, BICUBIC, antialias=True)`, the default "torchvision" backend of
 *    transformers 5 processors, which is what the hf-parity fixtures ran): torch's uint8 antialiased kernel,
 *    int16 weights with a precision chosen per pass;
 *  - PIL (`Image.resize(BICUBIC)`, the "pil" backend / slow processors of transformers 4): 22-bit weights.
 *
 * Both are the same separable scheme (Keys cubic, a = −0.5, support widened by the scale when shrinking, so
 * it antialiases): horizontal pass first into an 8-bit intermediate, then vertical; weights normalised to sum
 * 1, turned into fixed point, and each output rounded and clamped to 0..255. They differ only in the fixed-point
 * precision, which moves some outputs by one grey level.
 */
import { rgbImage, type RgbImage } from './image.js';
import { ModelError } from '../errors.js';

export type BicubicKernel = 'torchvision' | 'pil';

/**
 * Keys' cubic convolution with a = −0.5 (PIL's BICUBIC and torch's antialiased bicubic), each library's own
 * operation order for the outer lobe so that the double-precision weights agree to the last bit.
 */
function keysCubic(x: number, kernel: BicubicKernel): number {
  const a = -0.5;
  x = Math.abs(x);
  if (x < 1) return ((a + 2) * x - (a + 3)) * x * x + 1;
  if (x < 2) return kernel === 'pil' ? (((x - 5) * x + 8) * x - 4) * a : ((a * x - 5 * a) * x + 8 * a) * x - 4 * a;
  return 0;
}

/** Per output index: first input index, tap count and fixed-point weights (`ksize` slots per output). */
interface Taps {
  readonly first: Int32Array;
  readonly count: Int32Array;
  readonly weights: Int32Array; // [outSize, ksize]
  readonly ksize: number;
  readonly precision: number; // weights are w·2^precision
}

function computeTaps(inSize: number, outSize: number, kernel: BicubicKernel): Taps {
  const scale = inSize / outSize;
  const filterScale = Math.max(scale, 1);
  const invFilterScale = 1 / filterScale;
  const support = 2 * filterScale;
  const ksize = Math.ceil(support) * 2 + 1;
  const first = new Int32Array(outSize);
  const count = new Int32Array(outSize);
  const real = new Float64Array(outSize * ksize);
  let maxWeight = 0;
  for (let i = 0; i < outSize; i++) {
    const center = (i + 0.5) * scale;
    // C casts to int truncate toward zero; both libraries then clamp to the image.
    const lo = Math.max(Math.trunc(center - support + 0.5), 0);
    const hi = Math.min(Math.trunc(center + support + 0.5), inSize);
    const n = Math.min(Math.max(hi - lo, 0), ksize);
    let total = 0;
    for (let j = 0; j < n; j++) {
      const w = keysCubic((j + lo - center + 0.5) * invFilterScale, kernel);
      real[i * ksize + j] = w;
      total += w;
    }
    if (total !== 0) {
      for (let j = 0; j < n; j++) {
        real[i * ksize + j]! /= total;
        maxWeight = Math.max(maxWeight, real[i * ksize + j]!);
      }
    }
    first[i] = lo;
    count[i] = n;
  }
  let precision = 22; // PIL: PRECISION_BITS = 32 − 8 − 2
  if (kernel === 'torchvision') {
    // torch: the largest precision whose rounded max weight still fits int16 (see UpSampleKernel.cpp).
    for (precision = 0; precision < 22; precision++) {
      if (Math.trunc(0.5 + maxWeight * 2 ** (precision + 1)) >= 1 << 15) break;
    }
  }
  const weights = new Int32Array(outSize * ksize);
  const unit = 2 ** precision;
  for (let k = 0; k < real.length; k++) {
    const v = real[k]! * unit;
    weights[k] = v < 0 ? Math.trunc(-0.5 + v) : Math.trunc(0.5 + v);
  }
  return { first, count, weights, ksize, precision };
}

/** Round-half-up of a fixed-point sum, then clamp to a byte: `clip8` / `_mm_srai` + saturating packs. */
function toByte(acc: number, precision: number): number {
  const v = Math.floor(acc / 2 ** precision);
  return v < 0 ? 0 : v > 255 ? 255 : v;
}

/** Horizontal pass over interleaved RGB: each row resampled from `width` to `outW` columns. */
function passX(src: Uint8Array, width: number, height: number, taps: Taps, outW: number): Uint8Array {
  const out = new Uint8Array(outW * height * 3);
  const half = taps.precision > 0 ? 2 ** (taps.precision - 1) : 0;
  const { first, count, weights, ksize, precision } = taps;
  for (let y = 0; y < height; y++) {
    const rowBase = y * width * 3;
    for (let x = 0; x < outW; x++) {
      const n = count[x]!;
      const k0 = x * ksize;
      let s = rowBase + first[x]! * 3;
      let r = half,
        g = half,
        b = half;
      for (let j = 0; j < n; j++, s += 3) {
        const w = weights[k0 + j]!;
        r += src[s]! * w;
        g += src[s + 1]! * w;
        b += src[s + 2]! * w;
      }
      const d = (y * outW + x) * 3;
      out[d] = toByte(r, precision);
      out[d + 1] = toByte(g, precision);
      out[d + 2] = toByte(b, precision);
    }
  }
  return out;
}

/** Vertical pass over interleaved RGB: each column resampled from `height` to `outH` rows. */
function passY(src: Uint8Array, width: number, taps: Taps, outH: number): Uint8Array {
  const stride = width * 3;
  const out = new Uint8Array(outH * stride);
  const half = taps.precision > 0 ? 2 ** (taps.precision - 1) : 0;
  const { first, count, weights, ksize, precision } = taps;
  const acc = new Float64Array(stride);
  for (let y = 0; y < outH; y++) {
    acc.fill(half);
    const n = count[y]!;
    // Row-at-a-time accumulation keeps memory access sequential.
    for (let j = 0; j < n; j++) {
      const w = weights[y * ksize + j]!;
      const base = (first[y]! + j) * stride;
      for (let i = 0; i < stride; i++) acc[i]! += src[base + i]! * w;
    }
    const d = y * stride;
    for (let i = 0; i < stride; i++) out[d + i] = toByte(acc[i]!, precision);
  }
  return out;
}

/**
 * Resize to `width`×`height` with antialiased bicubic, bit-exact to the chosen library. A dimension that
 * keeps its size is not resampled (both libraries skip that pass; its kernel would be the identity anyway).
 */
export function resizeBicubic(
  image: RgbImage,
  width: number,
  height: number,
  kernel: BicubicKernel = 'torchvision',
): RgbImage {
  if (!Number.isInteger(width) || !Number.isInteger(height) || width < 1 || height < 1) {
    throw new ModelError(`resize target must be positive integers, got ${width}×${height}`);
  }
  let data = image.data;
  let w = image.width;
  if (width !== image.width) {
    data = passX(data, w, image.height, computeTaps(image.width, width, kernel), width);
    w = width;
  }
  if (height !== image.height) {
    data = passY(data, w, computeTaps(image.height, height, kernel), height);
  }
  return rgbImage(width, height, data === image.data ? data.slice() : data);
}
