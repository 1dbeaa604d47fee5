/**
 * Rescale + normalise of 8-bit pixels as HF image processors do it, shared by the Qwen and LLaVA-OV
 * processors, and the preprocessor_config.json fields they have in common.
 */
import { ModelError } from '../errors.js';
import { readNumber } from '../families/config-fields.js';
import type { BicubicKernel } from './resample.js';

export interface PixelNormalization {
  readonly doRescale: boolean;
  readonly rescaleFactor: number;
  readonly doNormalize: boolean;
  readonly mean: readonly [number, number, number];
  readonly std: readonly [number, number, number];
}

/**
 * Per channel, `value(u8) → float32` as the torchvision backend computes it: rescale folded into mean/std
 * (`mean / rescale_factor`, in float32) and `(x − mean′) / std′` in float32, so results are bit-identical.
 * With the PIL backend the same numbers come out to within float32 rounding.
 */
export function normalizationTable(n: PixelNormalization): Float32Array[] {
  const f = Math.fround;
  return [0, 1, 2].map((c) => {
    const table = new Float32Array(256);
    for (let v = 0; v < 256; v++) {
      if (n.doRescale && n.doNormalize) {
        const inv = f(1 / n.rescaleFactor);
        const mean = f(f(n.mean[c]!) * inv);
        const std = f(f(n.std[c]!) * inv);
        table[v] = f(f(v - mean) / std);
      } else if (n.doNormalize) {
        table[v] = f(f(v - f(n.mean[c]!)) / f(n.std[c]!));
      } else if (n.doRescale) {
        table[v] = f(v * n.rescaleFactor);
      } else {
        table[v] = v;
      }
    }
    return table;
  });
}

type Json = Record<string, unknown>;

export function readBool(json: Json, key: string, fallback: boolean, where: string): boolean {
  const v = json[key];
  if (v === undefined || v === null) return fallback;
  if (typeof v !== 'boolean')
    throw new ModelError(`${where}: "${key}" must be true or false, got ${JSON.stringify(v)}`);
  return v;
}

function readTriple(
  json: Json,
  key: string,
  fallback: readonly [number, number, number],
  where: string,
): [number, number, number] {
  const v = json[key];
  if (v === undefined || v === null) return [...fallback];
  if (typeof v === 'number') return [v, v, v];
  if (!Array.isArray(v) || v.length !== 3 || !v.every((x) => typeof x === 'number' && Number.isFinite(x))) {
    throw new ModelError(`${where}: "${key}" must be three numbers (RGB), got ${JSON.stringify(v)}`);
  }
  return [v[0], v[1], v[2]];
}

/** OpenAI CLIP statistics: transformers' default for both processor families. */
const CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073] as const;
const CLIP_STD = [0.26862954, 0.26130258, 0.27577711] as const;

export function readNormalization(json: Json, where: string): PixelNormalization {
  const std = readTriple(json, 'image_std', CLIP_STD, where);
  if (std.some((s) => s === 0)) throw new ModelError(`${where}: "image_std" must not contain 0`);
  return {
    doRescale: readBool(json, 'do_rescale', true, where),
    rescaleFactor: readNumber(json, 'rescale_factor', 1 / 255, where),
    doNormalize: readBool(json, 'do_normalize', true, where),
    mean: readTriple(json, 'image_mean', CLIP_MEAN, where),
    std,
  };
}

/** PIL resample codes; HF processors map them to torchvision modes. Only bicubic (3) is implemented. */
export function readBicubicResample(json: Json, where: string): void {
  const resample = readNumber(json, 'resample', 3, where);
  if (resample !== 3) {
    throw new ModelError(
      `${where}: "resample" ${resample} is not supported; only 3 (bicubic), which Qwen-VL and LLaVA-OneVision use`,
    );
  }
}

/**
 * Which library's bicubic to reproduce. transformers 5 defaults to the torchvision backend (the hf-parity
 * fixtures were made with it); processors named `…Pil` use PIL. transformers 4's slow processors used PIL,
 * which differs from torchvision by at most one grey level on some resized pixels.
 */
export function kernelFor(json: Json): BicubicKernel {
  const type = json['image_processor_type'];
  return typeof type === 'string' && /Pil$/.test(type) ? 'pil' : 'torchvision';
}
