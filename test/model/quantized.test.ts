/**
 * int8/int4 weights (quant/layout.ts, quant/round-to-nearest.ts, graph/quantized-linear.ts MatMulNBits): the
 * packed layout against hand-computed bytes and against onnxruntime's own kernel, then whole decoders at each
 * dtype against the fp32 reference; the row-wise W8A8 int8 kernel (MatMulIntegerToFloat) against an error bound
 * computed from its inputs, and a random checkpoint's forward at that kernel against fp32.
 */
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as ort from 'onnxruntime-node';
import { Decoder } from '../../src/model/decoder.js';
import { cacheKey } from '../../src/model/cache/decoder-cache.js';
import { GraphBuilder } from '../../src/model/graph/graph-builder.js';
import { OnnxDType } from '../../src/model/graph/proto.js';
import { emitMatMulNBits, emitRowwiseLinear } from '../../src/model/graph/quantized-linear.js';
import { dequantizeMatrix, type QuantizedMatrix } from '../../src/model/quant/layout.js';
import { dequantizeRowwise, quantizeMatrix, quantizeRowwise } from '../../src/model/quant/round-to-nearest.js';
import { describeWeightFormat, FP32_FORMAT, resolveWeightFormat } from '../../src/model/quant/weight-format.js';
import { Rng } from '../../tools/random-checkpoint.js';
import { specFromConfig } from '../../src/model/families/config.js';
import { FAMILY_CONFIGS, makeCheckpoint, relError, STORIES, tempDir } from '../helpers/fixtures.js';
import { QuantizePool } from '../../src/model/quant/quantize-pool.js';
import { graphNodes } from '../helpers/onnx-nodes.js';

const randomMatrix = (n: number, seed: number, std = 0.05) => {
  const r = new Rng(seed);
  return Float32Array.from({ length: n }, () => std * r.normal());
};

describe('block quantisation layout', () => {
  it('packs 4-bit codes low nibble first, with the zero point that maps 0 exactly', () => {
    // One row of 16 values −4 … 3.5 in steps of 0.5: range 7.5 = 15 steps of 0.5, zero point 8.
    const w = Float32Array.from({ length: 16 }, (_, k) => (k - 8) * 0.5);
    const q = quantizeMatrix(w, 1, 16, { bits: 4, blockSize: 16 });
    expect(Array.from(q.scales)).toEqual([0.5]);
    expect(Array.from(q.zeroPoints)).toEqual([8]); // one block: the low nibble
    // codes are k (0..15); byte j holds code 2j in its low and 2j+1 in its high nibble
    expect(Array.from(q.codes)).toEqual(Array.from({ length: 8 }, (_, j) => (2 * j) | ((2 * j + 1) << 4)));
    expect(Array.from(dequantizeMatrix(q))).toEqual(Array.from(w));
  });

  it.each([8, 4] as const)(
    '%i-bit: every weight rounds to its nearest level (clipped ranges at 4 bits), zeros exact, a ragged last block',
    (bits) => {
      const N = 7,
        K = 172,
        blockSize = 32; // 172 = 5 blocks + 12
      const w = randomMatrix(N * K, bits);
      for (let k = 0; k < K; k += 9) w[3 * K + k] = 0;
      const q = quantizeMatrix(w, N, K, { bits, blockSize });
      const back = dequantizeMatrix(q);
      const qmax = 2 ** bits - 1;
      let clipped = 0;
      for (let n = 0; n < N; n++)
        for (let k = 0; k < K; k++) {
          const b = n * 6 + Math.floor(k / blockSize);
          const scale = q.scales[b]!;
          const zero =
            bits === 8
              ? q.zeroPoints[b]!
              : (q.zeroPoints[n * 3 + (Math.floor(k / blockSize) >> 1)]! >> (4 * (Math.floor(k / blockSize) & 1))) & 15;
          const [lo, hi] = [-zero * scale, (qmax - zero) * scale]; // the block's representable range
          const v = w[n * K + k]!;
          if (v < lo || v > hi) {
            clipped = Math.max(clipped, Math.abs(back[n * K + k]! - v) / scale);
            expect(back[n * K + k]).toBeCloseTo(v < lo ? lo : hi, 6);
          } // clamped to the nearest end
          else expect(Math.abs(back[n * K + k]! - v)).toBeLessThanOrEqual(scale / 2 + 1e-7);
          if (v === 0) expect(back[n * K + k]).toBe(0);
        }
      // 8-bit blocks keep their full range: an end value misses by at most the zero point's rounding (½ step)
      if (bits === 8) expect(clipped).toBeLessThanOrEqual(0.5 + 1e-6);
    },
  );

  it.each([
    [4, 16],
    [4, 32],
    [8, 32],
    [8, 128],
  ] as const)(
    '%i-bit, block %i: bit for bit the plain algorithm (range with 0, then at 4 bits the least-error of 5 clip ' +
      'factors)',
    (bits, blockSize) => {
      // The reference, written out plainly: one pass per candidate, Math.min/max clamps, element-wise packing.
      const reference = (w: Float32Array, rows: number, cols: number) => {
        const nb = Math.ceil(cols / blockSize),
          qmax = 2 ** bits - 1,
          perBlock = (blockSize * bits) / 8;
        const codes = new Uint8Array(rows * nb * perBlock),
          scales = new Float32Array(rows * nb),
          zeros: number[] = [];
        let clipped = 0;
        const code = (v: number, s: number, z: number) => Math.min(qmax, Math.max(0, Math.round(v / s) + z));
        for (let n = 0; n < rows; n++)
          for (let b = 0; b < nb; b++) {
            const block = Array.from(
              w.subarray(n * cols + b * blockSize, n * cols + Math.min(cols, (b + 1) * blockSize)),
            );
            const lo = Math.min(0, ...block),
              hi = Math.max(0, ...block);
            const candidates = [1, ...(bits === 4 && hi > lo ? [0.95, 0.9, 0.85, 0.8] : [])].map((f) => {
              const s = Math.fround(hi > lo ? ((hi - lo) * f) / qmax : 1);
              const z = Math.min(qmax, Math.max(0, Math.round((-lo * f) / s)));
              return { f, s, z, e: block.reduce((e, v) => e + ((code(v, s, z) - z) * s - v) ** 2, 0) };
            });
            const best = candidates.reduce((a, c) => (c.e < a.e ? c : a));
            if (best.f !== 1) clipped++;
            scales[n * nb + b] = best.s;
            zeros.push(best.z);
            block.forEach((v, k) => {
              const at = (n * nb + b) * perBlock + (bits === 8 ? k : k >> 1);
              codes[at] = codes[at]! | (code(v, best.s, best.z) << (bits === 4 && k & 1 ? 4 : 0));
            });
          }
        return { codes, scales, zeros, clipped };
      };
      const N = 9,
        K = 3 * blockSize + 7; // a ragged last block with an odd length
      const w = randomMatrix(N * K, 100 + blockSize + bits);
      for (let k = 0; k < K; k += 3) w[2 * K + k] = 40 * w[2 * K + k]!; // outliers: clipping pays there
      w.fill(0, 5 * K, 5 * K + blockSize); // an all-zero block (scale 1)
      const q = quantizeMatrix(w, N, K, { bits, blockSize });
      const ref = reference(w, N, K);
      expect(Array.from(q.codes)).toEqual(Array.from(ref.codes));
      expect(Array.from(q.scales)).toEqual(Array.from(ref.scales));
      const nb = Math.ceil(K / blockSize);
      const zeroOf = (n: number, b: number) =>
        bits === 8
          ? q.zeroPoints[n * nb + b]!
          : (q.zeroPoints[n * Math.ceil(nb / 2) + (b >> 1)]! >> (4 * (b & 1))) & 15;
      expect(Array.from({ length: N * nb }, (_, i) => zeroOf(Math.floor(i / nb), i % nb))).toEqual(ref.zeros);
      if (bits === 4) expect(ref.clipped).toBeGreaterThan(0); // the clip search chose a narrower range somewhere
    },
  );

  it.each([[1 << 24], [700]])(
    'worker threads (the build of a large model) give bit for bit the single-thread result, rows split unevenly, ' +
      'chunks of %i weights',
    async (chunkElements) => {
      const pool = QuantizePool.open(3, chunkElements)!;
      expect(pool).not.toBeNull();
      expect(pool.threads).toBe(3);
      try {
        // 700-weight chunks: 3 rows of 200 a chunk (the last one short), a row of 720 alone, buffers grown in between
        for (const [rows, cols, bits, blockSize] of [
          [101, 200, 4, 32],
          [7, 64, 8, 16],
          [2, 48, 4, 16],
          [5, 720, 4, 32],
          [33, 33, 8, 16],
        ] as const) {
          // 2 rows: one worker idle
          const w = randomMatrix(rows * cols, rows + cols);
          w[5] = 3; // an outlier, so the clip search matters
          const one = quantizeMatrix(w, rows, cols, { bits, blockSize });
          const many = pool.quantize(w, rows, cols, { bits, blockSize });
          expect(Array.from(many.codes)).toEqual(Array.from(one.codes));
          expect(Array.from(many.scales)).toEqual(Array.from(one.scales));
          expect(Array.from(many.zeroPoints)).toEqual(Array.from(one.zeroPoints));
        }
      } finally {
        await pool.close();
      }
      expect(QuantizePool.open(1)).toBeNull();
    },
  );
});

/**
 * The MatMulNBits nodes of an ONNX file as protobuf says, read without the project's writer: ModelProto.graph
 * (field 7) → GraphProto.node (1) → NodeProto input (1), op_type (4), attribute (5: name 1, i 3).
 */
function matMulNBitsNodes(file: string): { weight: string; bits: number; N: number; K: number }[] {
  return graphNodes(fs.readFileSync(file))
    .filter((n) => n.op === 'MatMulNBits')
    .map((n) => ({ weight: n.inputs[1]!.replace(/\.q$/, ''), bits: n.attr.bits!, N: n.attr.N!, K: n.attr.K! }));
}

/** Y = X · Wᵀ through one MatMulNBits node: the layout as onnxruntime itself reads it. */
async function ortMatMulNBits(
  q: QuantizedMatrix,
  x: Float32Array,
  M: number,
  accuracyLevel: number,
): Promise<Float32Array> {
  const g = new GraphBuilder(18);
  const input = g.input('x', 'FLOAT', [M, q.cols]);
  const init = (name: string, dims: number[], type: number, bytes: Uint8Array) =>
    (g as unknown as { initializers: object[] }).initializers.push({ name, dims, data_type: type, raw_data: bytes });
  const nb = Math.ceil(q.cols / q.blockSize);
  init('codes', [q.rows, nb, (q.blockSize * q.bits) / 8], OnnxDType.UINT8, q.codes);
  init(
    'scales',
    [q.scales.length],
    OnnxDType.FLOAT,
    new Uint8Array(q.scales.buffer, q.scales.byteOffset, q.scales.byteLength),
  );
  init('zp', [q.zeroPoints.length], OnnxDType.UINT8, q.zeroPoints);
  emitMatMulNBits(
    g,
    input,
    {
      codes: 'codes',
      scales: 'scales',
      zeroPoints: 'zp',
      rows: q.rows,
      cols: q.cols,
      bits: q.bits,
      blockSize: q.blockSize,
    },
    accuracyLevel,
    'y',
  );
  g.output('y', 'FLOAT', [M, q.rows]);
  const session = await ort.InferenceSession.create(g.toBytes('test', {}), { intraOpNumThreads: 1 });
  try {
    return (await session.run({ x: new ort.Tensor('float32', x, [M, q.cols]) })).y!.data as Float32Array;
  } finally {
    await session.release();
  }
}

describe('onnxruntime MatMulNBits reads the layout as written', () => {
  it.each([
    [8, 0],
    [4, 0],
    [8, 4],
    [4, 4],
  ] as const)('bits %i, accuracy level %i', async (bits, accuracyLevel) => {
    const M = 3,
      N = 40,
      K = 172;
    const q = quantizeMatrix(randomMatrix(N * K, 5), N, K, { bits, blockSize: 32 });
    const w = dequantizeMatrix(q);
    const x = randomMatrix(M * K, 6, 1);
    const want = new Float32Array(M * N);
    for (let m = 0; m < M; m++)
      for (let n = 0; n < N; n++) {
        let s = 0;
        for (let k = 0; k < K; k++) s += x[m * K + k]! * w[n * K + k]!;
        want[m * N + n] = s;
      }
    const got = await ortMatMulNBits(q, x, M, accuracyLevel);
    // Level 0 multiplies the dequantised weights in fp32 (summation order only). Level 4 also rounds each
    // block of x to int8 (relative step 1/127 per block), so about 1% of the output scale.
    expect(relError(got, want)).toBeLessThan(accuracyLevel === 0 ? 1e-5 : 2e-2);
  });
});

describe('weight formats', () => {
  it('the cache key names dtype, block size and accuracy level; fp32 keys are as before', () => {
    const fmt = (dtype: 'int8' | 'int4', blockSize?: number, accuracyLevel?: 0 | 4) =>
      resolveWeightFormat({} as never, null, { dtype, blockSize, accuracyLevel });
    const keys = [
      cacheKey('c', 'w'),
      cacheKey('c', 'w', undefined, fmt('int8')),
      cacheKey('c', 'w', undefined, fmt('int4')),
      cacheKey('c', 'w', undefined, fmt('int8', 64)),
      cacheKey('c', 'w', undefined, fmt('int8', undefined, 0)),
    ];
    expect(new Set(keys).size).toBe(keys.length);
    expect(cacheKey('c', 'w', undefined, FP32_FORMAT)).toBe(keys[0]);
  });

  it('int4 entries built before the int8 attention/edge-layer rule get another key', () => {
    const now = resolveWeightFormat({} as never, null, { dtype: 'int4' });
    const { sensitive, ...before } = now.quant!;
    expect(sensitive).toMatchObject({ bits: 8, blockSize: 128 });
    const key = (f: typeof now) => cacheKey('c', 'w', undefined, f);
    expect(key({ ...now, quant: before })).not.toBe(key(now));
    // so does one built under another rule of which layers are int8
    expect(
      key({ ...now, quant: { ...now.quant!, sensitive: { ...sensitive!, rule: `${sensitive!.rule}-other` } } }),
    ).not.toBe(key(now));
    expect(resolveWeightFormat({} as never, null, { dtype: 'int8' }).quant!.sensitive).toBeUndefined();
  });

  it(
    'the int8 kernel joins the key when rowwise; block-wise int8 keys are as before the option; it applies to int8 ' +
      'only',
    () => {
      const fmt = (int8Kernel?: 'rowwise' | 'blockwise') =>
        resolveWeightFormat({} as never, null, { dtype: 'int8', int8Kernel, int8DotProduct: true });
      const rowwise = fmt('rowwise'),
        blockwise = fmt('blockwise');
      const key = (f: ReturnType<typeof fmt>) => cacheKey('c', 'w', undefined, f);
      expect(key(rowwise)).not.toBe(key(blockwise));
      const { int8Kernel, ...before } = blockwise.quant!;
      expect(int8Kernel).toBe('blockwise');
      expect(key({ ...blockwise, quant: before })).toBe(key(blockwise));
      expect(describeWeightFormat(rowwise)).toBe(
        'int8 (rowwise W8A8 linear layers, embedding and head block 128, accuracy level 4)',
      );
      expect(describeWeightFormat(blockwise)).toBe('int8 (blockwise, block 128, accuracy level 4)');
      expect(() => resolveWeightFormat({} as never, null, { dtype: 'int4', int8Kernel: 'rowwise' })).toThrow(
        /--int8-kernel applies to --dtype int8/,
      );
      expect(() => resolveWeightFormat({} as never, null, { dtype: 'fp32', int8Kernel: 'blockwise' })).toThrow(
        /--int8-kernel/,
      );
      expect(() => resolveWeightFormat({} as never, null, { dtype: 'int8', int8Kernel: 'colwise' as never })).toThrow(
        /--int8-kernel must be/,
      );
      expect(resolveWeightFormat({} as never, null, { dtype: 'int4' }).quant!.int8Kernel).toBeUndefined();
      // AWQ/GPTQ layers keep their codes: no kernel choice, and the label does not claim W8A8 layers
      const awq = { method: 'awq', bits: 4, groupSize: 128, zeroMinusOne: false } as const;
      const pre = resolveWeightFormat({} as never, awq, {});
      expect(pre.quant!.int8Kernel).toBeUndefined();
      expect(describeWeightFormat(pre)).toBe('int8 (block 128, accuracy level 4, AWQ 4-bit layers, group 128)');
      expect(() => resolveWeightFormat({} as never, awq, { int8Kernel: 'rowwise' })).toThrow(
        /AWQ checkpoint's layers keep their 4-bit codes/,
      );
    },
  );

  it(
    'int8 defaults to rowwise from 0.3 B parameters (int8 compute anyway) ' + 'and to blockwise below (exact compute)',
    () => {
      const qwen05 = specFromConfig({
        model_type: 'qwen2',
        hidden_size: 896,
        intermediate_size: 4864,
        num_hidden_layers: 24,
        num_attention_heads: 14,
        num_key_value_heads: 2,
        vocab_size: 151936,
        tie_word_embeddings: true,
        max_position_embeddings: 4096,
        rms_norm_eps: 1e-6,
        rope_theta: 1000000,
      });
      const tiny = specFromConfig(FAMILY_CONFIGS['qwen2 (qkv bias, tied, GQA 2)']);
      expect(resolveWeightFormat(qwen05, null, { dtype: 'int8', int8DotProduct: true })).toMatchObject({
        quant: { int8Kernel: 'rowwise' },
        accuracyLevel: 4,
      });
      expect(resolveWeightFormat(tiny, null, { dtype: 'int8', int8DotProduct: true })).toMatchObject({
        quant: { int8Kernel: 'blockwise' },
        accuracyLevel: 0,
      });
      expect(resolveWeightFormat(qwen05, null, { dtype: 'int8', int8Kernel: 'blockwise' }).quant!.int8Kernel).toBe(
        'blockwise',
      );
      // Without int8 dot products (e.g. AVX2-only x86) onnxruntime's u8×s8 kernel saturates: blockwise, and rowwise
      // refused
      expect(resolveWeightFormat(qwen05, null, { dtype: 'int8', int8DotProduct: false }).quant!.int8Kernel).toBe(
        'blockwise',
      );
      expect(() =>
        resolveWeightFormat(qwen05, null, { dtype: 'int8', int8Kernel: 'rowwise', int8DotProduct: false }),
      ).toThrow(/needs a CPU with int8 dot products/);
    },
  );

  it('refuses a block size that is no power of two ≥ 16, and block options at fp32', () => {
    expect(() => resolveWeightFormat({} as never, null, { dtype: 'int4', blockSize: 24 })).toThrow(/power of two/);
    expect(() => resolveWeightFormat({} as never, null, { dtype: 'int4', blockSize: 8 })).toThrow(/power of two/);
    expect(() => resolveWeightFormat({} as never, null, { dtype: 'fp32', blockSize: 32 })).toThrow(/--block-size/);
  });
});

describe('stories260K at int8 and int4 against fp32', () => {
  const cacheDir = tempDir('arm-cache-q-');
  const decoders: Partial<Record<'fp32' | 'int8' | 'int4', Decoder>> = {};
  let prompts: number[][];
  beforeAll(async () => {
    for (const dtype of ['fp32', 'int8', 'int4'] as const)
      decoders[dtype] = await Decoder.load(STORIES, { cacheDir, threads: 1, dtype });
    const t = decoders.fp32!.tokenizer;
    prompts = [
      'Once upon a time, there was a little girl named Lily.',
      'The dog ran to the park and saw a big red ball',
      'Tom was sad because',
    ].map((p) => t.encode(p));
  });
  afterAll(async () => {
    for (const d of Object.values(decoders)) await d?.dispose();
  });

  it('each dtype is its own cache entry, smaller than fp32, and records its format', () => {
    const { fp32, int8, int4 } = decoders as Required<typeof decoders>;
    expect(new Set([fp32.info.cacheEntry, int8.info.cacheEntry, int4.info.cacheEntry]).size).toBe(3);
    expect(int8.weightBytes).toBeLessThan(fp32.weightBytes);
    expect(int4.weightBytes).toBeLessThan(int8.weightBytes);
    expect(int8.info.weightFormat).toMatchObject({
      dtype: 'int8',
      quant: { bits: 8, blockSize: 128, int8Kernel: 'blockwise' },
      accuracyLevel: 0,
    }); // small model: MatMulNBits, exact compute
    expect(int4.info.weightFormat).toMatchObject({
      dtype: 'int4',
      quant: {
        bits: 4,
        blockSize: 16,
        embedHead: { bits: 8, blockSize: 128 },
        sensitive: { bits: 8, blockSize: 128, rule: 'attention+first-last-layers' },
        gptq: { sequences: 32, tokens: 128 },
      },
    }); // small model: GPTQ, block 16
  });

  it('int4 keeps q|k|v and o of every layer and every linear layer of the first and last layers at 8 bits', () => {
    // stories260K: 5 layers, hidden 64 (8 heads + 2·4 kv heads of 8), intermediate 172, tied 512 vocabulary
    const nodes = matMulNBitsNodes(path.join(decoders.int4!.info.cacheEntry, 'model.onnx'));
    const bits = new Map(nodes.map((n) => [n.weight, n.bits]));
    const want = new Map<string, number>();
    for (let l = 0; l < 5; l++) {
      want.set(`w.${l}.qkv`, 8);
      want.set(`w.${l}.o`, 8);
      want.set(`w.${l}.gate_up`, l === 0 || l === 4 ? 8 : 4);
      want.set(`w.${l}.down`, l === 0 || l === 4 ? 8 : 4);
    }
    for (const [w, b] of want) expect([w, bits.get(w)]).toEqual([w, b]);
    const head = nodes.filter((n) => n.weight.startsWith('w.head.'));
    expect(head.reduce((n, h) => n + h.N, 0)).toBe(512);
    expect(head.every((h) => h.bits === 8 && h.K === 64)).toBe(true);
    expect(nodes.length).toBe(want.size + head.length);
    expect(nodes.find((n) => n.weight === 'w.2.down')).toMatchObject({ N: 64, K: 172 });
    // int8 has nothing at 4 bits
    expect(matMulNBitsNodes(path.join(decoders.int8!.info.cacheEntry, 'model.onnx')).every((n) => n.bits === 8)).toBe(
      true,
    );
  });

  // Tolerances: measured on these prompts, with ~2× margin. int8 moves a weight by at most 1/510 of its
  // block's range and the activations by 1/254 of theirs, so logits move by ~1% of their scale; int4's step
  // is 17× coarser on a 64-wide model, where nothing averages out.
  it.each([
    ['int8', 0.03, 0.05],
    ['int4', 0.4, 0.6],
  ] as const)('%s: logits and head taps close to fp32', async (dtype, logitTol, headTol) => {
    const ref = await decoders.fp32!.forward(prompts);
    const got = await decoders[dtype]!.forward(prompts);
    expect(relError(got.logits, ref.logits)).toBeLessThan(logitTol);
    expect(relError(got.heads, ref.heads)).toBeLessThan(headTol);
    expect(got.logits.every(Number.isFinite)).toBe(true);
  });

  it('int8: the same next token as fp32 on every prompt', async () => {
    const V = decoders.fp32!.spec.vocabSize;
    const argmaxRows = (x: Float32Array) =>
      prompts.map((_, b) => {
        const r = x.subarray(b * V, (b + 1) * V);
        return r.indexOf(Math.max(...r));
      });
    expect(argmaxRows((await decoders.int8!.forward(prompts)).logits)).toEqual(
      argmaxRows((await decoders.fp32!.forward(prompts)).logits),
    );
  });

  it('int8: patches land exactly at the tap; batching, padding and shared prefixes agree as at fp32', async () => {
    const d = decoders.int8!;
    const { numLayers: L, numHeads: H, headDim: hd } = d.spec;
    const [a, b] = prompts as [number[], number[]];
    const values = Float32Array.from({ length: L * H * hd }, (_, i) => Math.sin(i));
    const mask = new Float32Array(L * H);
    mask[3] = 1;
    mask[L * H - 1] = 1;
    const patched = await d.forward([a], { mask, values });
    for (const h of [3, L * H - 1])
      expect(Array.from(patched.heads.subarray(h * hd, (h + 1) * hd))).toEqual(
        Array.from(values.subarray(h * hd, (h + 1) * hd)),
      );
    const plain = await d.forward([a]);
    const empty = await d.forward([a], { mask: new Float32Array(L * H), values });
    expect(Array.from(empty.logits)).toEqual(Array.from(plain.logits));
    // a padded batch row and a shared-prefix step reproduce the single forward
    const both = await d.forward([a, b]);
    const V = d.spec.vocabSize;
    expect(relError(both.logits.subarray(V), (await d.forward([b])).logits)).toBeLessThan(1e-4);
    const kv = await d.prefill(a.slice(0, -1));
    const step = await d.stepShared(kv, a.at(-1)!, { mask: new Float32Array(2 * L * H), values });
    expect(relError(step.logits.subarray(0, V), plain.logits)).toBeLessThan(1e-4);
  });
});

describe('row-wise W8A8 int8 linear (MatMulIntegerToFloat)', () => {
  it(
    'stores each output channel as int8 codes [K, N] within half a step of the weight; an all-zero channel gets ' +
      'scale 1',
    () => {
      const N = 9,
        K = 70;
      const w = randomMatrix(N * K, 11);
      for (let k = 0; k < K; k++) w[4 * K + k] = 0;
      const q = quantizeRowwise(w, N, K);
      const back = dequantizeRowwise(q);
      expect(q.codes.length).toBe(K * N);
      for (let n = 0; n < N; n++) {
        let maxCode = 0;
        for (let k = 0; k < K; k++) {
          const c = q.codes[k * N + n]!; // transposed: MatMulInteger's [K, N]
          maxCode = Math.max(maxCode, Math.abs(c));
          expect(Math.abs(back[n * K + k]! - w[n * K + k]!)).toBeLessThanOrEqual((q.scales[n]! / 2) * (1 + 1e-6));
          expect(back[n * K + k]).toBe(Math.fround(c * q.scales[n]!));
        }
        // symmetric: the channel's largest |w| is code ±127, so nothing is clipped
        expect(maxCode).toBe(n === 4 ? 0 : 127);
      }
      expect(q.scales[4]).toBe(1);
    },
  );

  it('onnxruntime: every output within the bound of per-row activation and per-channel weight rounding', async () => {
    const M = 6,
      K = 200,
      N = 48;
    const w = randomMatrix(N * K, 12);
    const q = quantizeRowwise(w, N, K);
    const x = randomMatrix(M * K, 13, 1);
    x[1 * K + 7] = 40; // row 1: one outlier channel (its other inputs round coarsely)
    for (let k = 0; k < K; k++) {
      x[2 * K + k] = 0;
      x[3 * K + k] = x[3 * K + k]! * 1e-3;
      x[4 * K + k] = x[4 * K + k]! * 100;
    } // zero, tiny, large rows
    x[5 * K + 3] = -5; // row 5: its largest magnitude is negative
    const g = new GraphBuilder(18);
    const input = g.input('x', 'FLOAT', [1, M, K]); // [B, S, K] as in the decoder
    const init = (name: string, dims: number[], type: number, data: ArrayBufferView) =>
      (g as unknown as { initializers: object[] }).initializers.push({
        name,
        dims,
        data_type: type,
        raw_data: new Uint8Array(data.buffer, data.byteOffset, data.byteLength),
      });
    init('codes', [K, N], OnnxDType.INT8, q.codes);
    init('scales', [N], OnnxDType.FLOAT, q.scales);
    emitRowwiseLinear(g, input, { kind: 'rowwise', codes: 'codes', scales: 'scales', rows: N, cols: K }, 'y');
    g.output('y', 'FLOAT', [1, M, N]);
    const session = await ort.InferenceSession.create(g.toBytes('test', {}), { intraOpNumThreads: 1 });
    const got = (await session.run({ x: new ort.Tensor('float32', x, [1, M, K]) })).y!.data as Float32Array;
    await session.release();
    // y − ŷ = Σ_k (x − x̂)·w + x̂·(w − ŵ), with |x − x̂| ≤ s/2 (s = max_k |x| / 127, round to nearest) and
    // |w − ŵ| ≤ scale_n / 2; |x̂| ≤ |x| + s/2. Plus float32 rounding of the products' sums (1e-5 relative).
    let worst = 0;
    for (let m = 0; m < M; m++) {
      let amax = 0;
      for (let k = 0; k < K; k++) amax = Math.max(amax, Math.abs(x[m * K + k]!));
      const s = amax / 127;
      for (let n = 0; n < N; n++) {
        let want = 0,
          absW = 0,
          absX = 0,
          absXW = 0;
        for (let k = 0; k < K; k++) {
          const xv = x[m * K + k]!,
            wv = w[n * K + k]!;
          want += xv * wv;
          absW += Math.abs(wv);
          absX += Math.abs(xv) + s / 2;
          absXW += Math.abs(xv * wv);
        }
        const bound = (s / 2) * absW + (q.scales[n]! / 2) * absX + 1e-5 * absXW;
        const err = Math.abs(got[m * N + n]! - want);
        expect(err).toBeLessThanOrEqual(bound);
        if (m === 2)
          expect(got[m * N + n]).toBe(0); // an all-zero row (padding) stays exactly zero
        else worst = Math.max(worst, err / bound);
      }
    }
    // rounding did happen (the bound is not vacuous: it is met, not met by coincidence with zero error)
    expect(worst).toBeGreaterThan(0.01);
  });
});

describe('a random checkpoint at int8 rowwise against fp32', () => {
  const cacheDir = tempDir('arm-cache-rw-');
  const config = FAMILY_CONFIGS['llama3 (rope llama3, GQA 3, untied, attention+mlp bias)']!;
  const L = config.num_hidden_layers as number;
  const d: Partial<Record<'fp32' | 'rowwise' | 'blockwise', Decoder>> = {};
  const rng = new Rng(21);
  const V = config.vocab_size as number;
  const prompts = [9, 6].map((n) => Array.from({ length: n }, () => Math.floor(rng.uniform() * V)));
  beforeAll(async () => {
    const { dir } = makeCheckpoint(config, { seed: 4, std: 0.1 });
    d.fp32 = await Decoder.load(dir, { cacheDir, threads: 1, dtype: 'fp32' });
    d.rowwise = await Decoder.load(dir, { cacheDir, threads: 1, dtype: 'int8', int8Kernel: 'rowwise' });
    d.blockwise = await Decoder.load(dir, { cacheDir, threads: 1, dtype: 'int8', int8Kernel: 'blockwise' });
  });
  afterAll(async () => {
    for (const x of Object.values(d)) await x?.dispose();
  });

  it(
    'each kernel is its own cache entry and records itself; linear layers are MatMulIntegerToFloat, the head ' +
      'MatMulNBits',
    () => {
      const { fp32, rowwise, blockwise } = d as Required<typeof d>;
      expect(new Set([fp32.info.cacheEntry, rowwise.info.cacheEntry, blockwise.info.cacheEntry]).size).toBe(3);
      expect(rowwise.info.weightFormat.quant).toMatchObject({ bits: 8, int8Kernel: 'rowwise' });
      expect(describeWeightFormat(rowwise.info.weightFormat)).toMatch(/rowwise/);
      expect(describeWeightFormat(blockwise.info.weightFormat)).toMatch(/blockwise/);
      const nodes = graphNodes(fs.readFileSync(path.join(rowwise.info.cacheEntry, 'model.onnx')));
      const integer = nodes.filter((n) => n.op === 'MatMulIntegerToFloat').map((n) => n.inputs[1]);
      expect(integer.sort()).toEqual(
        Array.from({ length: L }, (_, l) => ['qkv', 'o', 'gate_up', 'down'].map((w) => `w.${l}.${w}.q8`))
          .flat()
          .sort(),
      );
      const nbits = nodes.filter((n) => n.op === 'MatMulNBits');
      expect(nbits.length).toBeGreaterThan(0);
      expect(nbits.every((n) => n.inputs[1]!.startsWith('w.head.'))).toBe(true);
      expect(
        graphNodes(fs.readFileSync(path.join(blockwise.info.cacheEntry, 'model.onnx'))).some(
          (n) => n.op === 'MatMulIntegerToFloat',
        ),
      ).toBe(false);
    },
  );

  // Tolerance: a linear layer's output moves by at most half an activation step and half a weight step per
  // input, each 1/127 of its row's or channel's largest magnitude, so about 1/127 of the output's scale when
  // the inputs do not cancel. 4 linear layers a layer (q|k|v, o, gate|up, down) in the path to the logits add
  // up to 4L/127 (0.094 for 3 layers) relative to the largest logit; the head is the same MatMulNBits at both
  // kernels. Random inputs do not all round the same way, so the measured error is far below this.
  it(
    'logits and head taps within 4L/127 of fp32 (relative to the largest ' + 'value), padded batch rows included',
    async () => {
      const rel = (a: Float32Array, b: Float32Array) => {
        let e = 0,
          s = 0;
        for (let i = 0; i < a.length; i++) {
          e = Math.max(e, Math.abs(a[i]! - b[i]!));
          s = Math.max(s, Math.abs(b[i]!));
        }
        return e / s;
      };
      const ref = await d.fp32!.forward(prompts);
      const got = await d.rowwise!.forward(prompts);
      const tol = (4 * L) / 127;
      expect(rel(got.logits, ref.logits)).toBeLessThan(tol);
      expect(rel(got.heads, ref.heads)).toBeLessThan(tol);
      expect(rel(got.logits, ref.logits)).toBeGreaterThan(0); // the int8 path did run
      // the padded row is the same as that prompt alone (per-row scales: padding does not change a real row)
      const alone = await d.rowwise!.forward([prompts[1]!]);
      expect(relError(got.logits.subarray(V), alone.logits)).toBeLessThan(1e-5);
    },
  );

  it('patches land exactly at the tap; a shared-prefix step reproduces the forward', async () => {
    const x = d.rowwise!;
    const { numHeads: H, headDim: hd } = x.spec;
    const values = Float32Array.from({ length: L * H * hd }, (_, i) => Math.cos(i));
    const mask = new Float32Array(L * H);
    mask[1] = 1;
    mask[L * H - 2] = 1;
    const a = prompts[0]!;
    const patched = await x.forward([a], { mask, values });
    for (const h of [1, L * H - 2])
      expect(Array.from(patched.heads.subarray(h * hd, (h + 1) * hd))).toEqual(
        Array.from(values.subarray(h * hd, (h + 1) * hd)),
      );
    const kv = await x.prefill(a.slice(0, -1));
    const step = await x.stepShared(kv, a.at(-1)!, { mask: new Float32Array(L * H), values });
    expect(relError(step.logits.subarray(0, V), (await x.forward([a])).logits)).toBeLessThan(1e-4);
  });
});
