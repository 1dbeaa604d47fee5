/**
 * `--dtype fp16` where it needs no GPU: the float32 → fp16 rounding of the weights (quant/half.ts) against values
 * numpy's astype(float16) gives, the cache key that keeps fp16 entries apart from fp32 ones, and the CPU's refusal.
 */
import { describe, expect, it } from 'vitest';
import { halfBits, halfToFloat, toHalf } from '../../src/model/quant/half.js';
import { cacheKey } from '../../src/model/cache/decoder-cache.js';
import { defaultDType, FP32_FORMAT, parameterCount, resolveWeightFormat } from '../../src/model/quant/weight-format.js';
import { Decoder } from '../../src/model/decoder.js';
import { specFromConfig } from '../../src/model/families/config.js';
import { STORIES, tempDir } from '../helpers/fixtures.js';
import fs from 'node:fs';
import path from 'node:path';

describe('fp16 weights', () => {
  it('rounds float32 to the nearest fp16, ties to even, as numpy does', () => {
    const cases: [number, number][] = [
      [0, 0x0000],
      [-0, 0x8000],
      [1, 0x3c00],
      [-2, 0xc000],
      [0.1, 0x2e66],
      [1 / 3, 0x3555],
      [65504, 0x7bff], // the largest fp16
      [65519, 0x7bff], // rounds down to it
      [65520, 0x7c00], // the tie rounds to even: Infinity
      [1e6, 0x7c00],
      [-Infinity, 0xfc00],
      [2 ** -24, 0x0001], // the smallest subnormal
      [2 ** -25, 0x0000], // its half: a tie, to even (0)
      [3 * 2 ** -25, 0x0002], // 1.5 subnormal steps: a tie, to even (2)
      [2 ** -14, 0x0400], // the smallest normal
      [1 + 2 ** -11, 0x3c00], // a tie between 1 and its successor: to even
      [1 + 3 * 2 ** -11, 0x3c02],
      [2047 * 2 ** -11 * 2 ** -14, 0x0400], // the largest float below the smallest normal rounds up into it
    ];
    for (const [x, bits] of cases) expect(halfBits(x).toString(16), `${x}`).toBe(bits.toString(16));
    expect(halfBits(NaN) & 0x7c00).toBe(0x7c00);
    expect(halfToFloat(halfBits(NaN))).toBeNaN();
  });

  it('widens every fp16 back exactly, and float32 values round trip within half an fp16 step', () => {
    for (let h = 0; h < 0x10000; h++) {
      if ((h & 0x7c00) === 0x7c00) continue; // Inf, NaN
      expect(halfBits(halfToFloat(h))).toBe(h);
    }
    const x = Float32Array.from({ length: 1000 }, (_, i) => Math.sin(i) * 3);
    const back = Array.from(toHalf(x), halfToFloat);
    back.forEach((v, i) => expect(Math.abs(v - x[i]!)).toBeLessThanOrEqual(2 ** -11 * Math.abs(x[i]!) + 1e-12));
  });

  it('an fp16 entry has its own cache key; fp16 refuses the options that do not apply to it', () => {
    const spec = specFromConfig(JSON.parse(fs.readFileSync(path.join(STORIES, 'config.json'), 'utf8')), 'config');
    const half = resolveWeightFormat(spec, null, { dtype: 'fp16' });
    expect(half).toEqual({ dtype: 'fp16', quant: null, prequant: null, accuracyLevel: 0 });
    expect(cacheKey('{}', 'w', undefined, half)).not.toBe(cacheKey('{}', 'w', undefined, FP32_FORMAT));
    expect(() => resolveWeightFormat(spec, null, { dtype: 'fp16', blockSize: 32 })).toThrow(/--block-size applies/);
  });

  it('the default dtype by device: CPU as before; a GPU fp16, int4 from 3.5 B; without shader-f16 fp32/int8', () => {
    const base = specFromConfig(JSON.parse(fs.readFileSync(path.join(STORIES, 'config.json'), 'utf8')), 'config');
    // stories260K with its vocabulary widened to reach `n` parameters (the embedding is what grows)
    const sized = (n: number) => {
      const spec = { ...base, vocabSize: Math.round((n - parameterCount(base)) / base.hiddenSize) + base.vocabSize };
      expect(parameterCount(spec) / n).toBeCloseTo(1, 2);
      return spec;
    };
    const sizes = [base, sized(1e9), sized(3.2e9), sized(7e9)];
    const pick = (gpu?: { halfPrecision: boolean }) => sizes.map((s) => defaultDType(s, null, gpu).dtype);
    expect(pick()).toEqual(['fp32', 'int8', 'int4', 'int4']);
    expect(pick({ halfPrecision: true })).toEqual(['fp16', 'fp16', 'fp16', 'int4']);
    expect(pick({ halfPrecision: false })).toEqual(['fp32', 'int8', 'int8', 'int4']);
    expect(defaultDType(base, null, { halfPrecision: false }).why).toMatch(/lacks 'shader-f16'\), so fp32$/);
    // The CPU's resolved default (so its cache key) is what it was; a GPU resolves its own default.
    expect(resolveWeightFormat(base, null, {})).toEqual(FP32_FORMAT);
    expect(resolveWeightFormat(sizes[1]!, null, {})).toEqual(resolveWeightFormat(sizes[1]!, null, { dtype: 'int8' }));
    expect(resolveWeightFormat(base, null, { gpu: { halfPrecision: true } }).dtype).toBe('fp16');
    // An AWQ/GPTQ checkpoint keeps its codes on any device: the default only stores its embedding and head (int8).
    const awq = { method: 'awq', bits: 4, groupSize: 128, zeroMinusOne: false } as const;
    expect(defaultDType(base, awq, { halfPrecision: true }).dtype).toBe('int8');
  });

  it('the CPU refuses --dtype fp16 and says why (no fp16 MatMul kernel: weights cast back to float32)', async () => {
    await expect(Decoder.load(STORIES, { cacheDir: tempDir('arm-cache-'), dtype: 'fp16' })).rejects.toThrow(
      /--dtype fp16 runs on a GPU.*no fp16 MatMul kernel/,
    );
  });
});
