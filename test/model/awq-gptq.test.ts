/**
 * AWQ and GPTQ checkpoints load into MatMulNBits without re-quantising: a tiny model whose linear layers are
 * exactly (code − zero) · scale is written twice, as float32 and packed by this file's own packers (AutoAWQ's
 * "gemm" layout, GPTQ v1 and v2), and both must run alike.
 */
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Decoder } from '../../src/model/decoder.js';
import {
  SafetensorsCheckpoint,
  writeSafetensors,
  type WritableTensor,
} from '../../src/model/checkpoint/safetensors.js';
import { prequantSchemeFromConfig, readPrequantized } from '../../src/model/quant/awq-gptq.js';
import { dequantizeMatrix } from '../../src/model/quant/layout.js';
import { checkpointLayout, Rng, type HfConfig } from '../../tools/random-checkpoint.js';
import { makeCheckpoint, relError, tempDir } from '../helpers/fixtures.js';

const CONFIG: HfConfig = {
  model_type: 'llama',
  hidden_size: 64,
  intermediate_size: 96,
  num_hidden_layers: 2,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  vocab_size: 512,
  max_position_embeddings: 128,
  rms_norm_eps: 1e-5,
  rope_theta: 10000,
  tie_word_embeddings: false,
};
const GROUP = 32;
const LINEAR = /(q|k|v|o|gate|up|down)_proj\.weight$/;

/**
 * Codes [K, N] (0..2^bits−1), zeros [G, N] (1..2^bits−1, so GPTQ v1's zero − 1 ≥ 0), scales [G, N] exact in float16.
 */
interface Quantised {
  K: number;
  N: number;
  bits: number;
  codes: Int32Array;
  zeros: Int32Array;
  scales: Float32Array;
  halfScales: Uint16Array;
}

function randomQuantised(N: number, K: number, bits: number, rng: Rng): Quantised {
  const G = K / GROUP,
    top = 2 ** bits;
  const codes = Int32Array.from({ length: K * N }, () => Math.floor(rng.uniform() * top));
  const zeros = Int32Array.from({ length: G * N }, () => 1 + Math.floor(rng.uniform() * (top - 1)));
  // 2^-7 · (1 + m/16): float16 sign 0, biased exponent 8, mantissa m << 6 — exact in float16 and float32.
  const m = Int32Array.from({ length: G * N }, () => Math.floor(rng.uniform() * 16));
  return {
    K,
    N,
    bits,
    codes,
    zeros,
    scales: Float32Array.from(m, (x) => 2 ** -7 * (1 + x / 16) * (bits === 8 ? 1 / 16 : 1)),
    halfScales: Uint16Array.from(m, (x) => ((bits === 8 ? 4 : 8) << 10) | (x << 6)),
  };
}

/** W [N, K] = (code − zero) · scale: what the float twin stores. */
function dequantised(q: Quantised): Float32Array {
  const w = new Float32Array(q.N * q.K);
  for (let n = 0; n < q.N; n++)
    for (let k = 0; k < q.K; k++) {
      const g = Math.floor(k / GROUP);
      w[n * q.K + k] = (q.codes[k * q.N + n]! - q.zeros[g * q.N + n]!) * q.scales[g * q.N + n]!;
    }
  return w;
}

const i32 = (x: Int32Array) => new Uint8Array(x.buffer, x.byteOffset, x.byteLength);

/** AutoAWQ gemm: int32 words along N; word nibble i carries column ORDER[i] of its group of eight. */
function packAwq(values: Int32Array, rows: number, N: number): Int32Array {
  const ORDER = [0, 2, 4, 6, 1, 3, 5, 7];
  const out = new Int32Array(rows * (N / 8));
  for (let r = 0; r < rows; r++)
    for (let c = 0; c < N / 8; c++) {
      let word = 0;
      for (let i = 0; i < 8; i++) word |= values[r * N + c * 8 + ORDER[i]!]! << (4 * i);
      out[r * (N / 8) + c] = word;
    }
  return out;
}

/** GPTQ: qweight packs along K (word [i, n] = codes k = i·p … i·p+p−1), qzeros along N; p = 32 / bits. */
function packGptqWeight(q: Quantised): Int32Array {
  const p = 32 / q.bits;
  const out = new Int32Array((q.K / p) * q.N);
  for (let i = 0; i < q.K / p; i++)
    for (let n = 0; n < q.N; n++) {
      let word = 0;
      for (let j = 0; j < p; j++) word |= q.codes[(i * p + j) * q.N + n]! << (q.bits * j);
      out[i * q.N + n] = word;
    }
  return out;
}
function packGptqZeros(q: Quantised, minusOne: boolean): Int32Array {
  const p = 32 / q.bits,
    G = q.K / GROUP;
  const out = new Int32Array(G * (q.N / p));
  for (let g = 0; g < G; g++)
    for (let c = 0; c < q.N / p; c++) {
      let word = 0;
      for (let j = 0; j < p; j++) word |= (q.zeros[g * q.N + c * p + j]! - (minusOne ? 1 : 0)) << (q.bits * j);
      out[g * (q.N / p) + c] = word;
    }
  return out;
}

type Flavour = 'awq' | 'gptq' | 'gptq_v2' | 'gptq8';

/** Writes `dir` as the `flavour` checkpoint of the same model as `floatDir`. */
function writeQuantisedTwin(
  floatDir: string,
  floats: Map<string, Float32Array>,
  quantised: Map<string, Quantised>,
  flavour: Flavour,
  extra: Record<string, unknown> = {},
): string {
  const dir = tempDir(`arm-${flavour}-`);
  for (const f of ['tokenizer.json', 'tokenizer_config.json'])
    fs.copyFileSync(path.join(floatDir, f), path.join(dir, f));
  const config = JSON.parse(fs.readFileSync(path.join(floatDir, 'config.json'), 'utf8'));
  config.quantization_config =
    flavour === 'awq'
      ? { quant_method: 'awq', bits: 4, group_size: GROUP, version: 'gemm', zero_point: true, ...extra }
      : {
          quant_method: 'gptq',
          bits: flavour === 'gptq8' ? 8 : 4,
          group_size: GROUP,
          desc_act: false,
          sym: false,
          ...(flavour === 'gptq_v2' ? { checkpoint_format: 'gptq_v2' } : {}),
          ...extra,
        };
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(config));
  const tensors: WritableTensor[] = [];
  for (const [name, shape] of checkpointLayout(CONFIG)) {
    const q = quantised.get(name);
    if (!q) {
      const v = floats.get(name)!;
      tensors.push({ name, shape, dtype: 'F32', bytes: new Uint8Array(v.buffer, v.byteOffset, v.byteLength) });
      continue;
    }
    const base = name.slice(0, -'.weight'.length);
    const G = q.K / GROUP,
      p = 32 / q.bits;
    if (flavour === 'awq') {
      tensors.push({
        name: `${base}.qweight`,
        shape: [q.K, q.N / 8],
        dtype: 'I32',
        bytes: i32(packAwq(q.codes, q.K, q.N)),
      });
      tensors.push({ name: `${base}.qzeros`, shape: [G, q.N / 8], dtype: 'I32', bytes: i32(packAwq(q.zeros, G, q.N)) });
    } else {
      tensors.push({ name: `${base}.qweight`, shape: [q.K / p, q.N], dtype: 'I32', bytes: i32(packGptqWeight(q)) });
      tensors.push({
        name: `${base}.qzeros`,
        shape: [G, q.N / p],
        dtype: 'I32',
        bytes: i32(packGptqZeros(q, flavour !== 'gptq_v2')),
      });
      tensors.push({
        name: `${base}.g_idx`,
        shape: [q.K],
        dtype: 'I32',
        bytes: i32(Int32Array.from({ length: q.K }, (_, k) => Math.floor(k / GROUP))),
      });
    }
    tensors.push({ name: `${base}.scales`, shape: [G, q.N], dtype: 'F16', bytes: new Uint8Array(q.halfScales.buffer) });
  }
  writeSafetensors(path.join(dir, 'model.safetensors'), tensors);
  return dir;
}

/** The float twin and its quantised forms for `bits`: linear layers exactly on the quantisation grid. */
function twins(bits: 4 | 8, seed: number) {
  const { dir, weights } = makeCheckpoint(CONFIG, { seed, std: 0.3 });
  const rng = new Rng(seed + 100);
  const quantised = new Map<string, Quantised>();
  const tensors: WritableTensor[] = [];
  for (const [name, shape] of checkpointLayout(CONFIG)) {
    let v = weights.get(name)!;
    if (LINEAR.test(name)) {
      const q = randomQuantised(shape[0]!, shape[1]!, bits, rng);
      quantised.set(name, q);
      v = dequantised(q);
      weights.set(name, v);
    }
    tensors.push({ name, shape, dtype: 'F32', bytes: new Uint8Array(v.buffer, v.byteOffset, v.byteLength) });
  }
  writeSafetensors(path.join(dir, 'model.safetensors'), tensors);
  return { floatDir: dir, floats: weights, quantised };
}

describe('pre-quantised checkpoints', () => {
  const cacheDir = tempDir('arm-cache-pq-');
  let four: ReturnType<typeof twins>;
  let eight: ReturnType<typeof twins>;
  let reference: Decoder;
  const ids = [1, 403, 407, 261, 378, 300, 301, 12];
  beforeAll(async () => {
    four = twins(4, 3);
    eight = twins(8, 4);
    reference = await Decoder.load(four.floatDir, { cacheDir, threads: 1, dtype: 'fp32' });
  });
  afterAll(() => reference?.dispose());

  it.each(['awq', 'gptq', 'gptq_v2', 'gptq8'] as const)(
    "%s: every linear layer unpacks to exactly the float twin's weights",
    (flavour) => {
      const t = flavour === 'gptq8' ? eight : four;
      const dir = writeQuantisedTwin(t.floatDir, t.floats, t.quantised, flavour);
      const scheme = prequantSchemeFromConfig(JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8')))!;
      const ckpt = SafetensorsCheckpoint.open(dir);
      try {
        for (const [name, q] of t.quantised) {
          const m = readPrequantized(ckpt, name, [q.N, q.K], scheme);
          expect(m.bits).toBe(flavour === 'gptq8' ? 8 : 4);
          expect(m.blockSize).toBe(GROUP);
          expect(Array.from(dequantizeMatrix(m))).toEqual(Array.from(t.floats.get(name)!));
        }
      } finally {
        ckpt.close();
      }
    },
  );

  it.each(['awq', 'gptq'] as const)(
    '%s: the decoder runs like the float twin (logits, taps, patched)',
    async (flavour) => {
      const dir = writeQuantisedTwin(four.floatDir, four.floats, four.quantised, flavour);
      // fp32 keeps the checkpoint's float tensors (embedding, head, norms) as they are; accuracy level 0 multiplies
      // the exact dequantised weights in fp32, so only summation order differs from the twin.
      const d = await Decoder.load(dir, { cacheDir, threads: 1, dtype: 'fp32', accuracyLevel: 0 });
      try {
        expect(d.info.weightFormat.prequant).toMatchObject({ method: flavour, bits: 4, groupSize: GROUP });
        const got = await d.forward([ids]);
        const want = await reference.forward([ids]);
        expect(relError(got.logits, want.logits)).toBeLessThan(1e-5);
        expect(relError(got.heads, want.heads)).toBeLessThan(1e-5);
        const { numLayers: L, numHeads: H } = d.spec;
        const mask = new Float32Array(L * H);
        mask[1] = 1;
        const patch = { mask, values: want.heads.map((x) => -x) };
        expect(
          relError((await d.forward([ids], patch)).logits, (await reference.forward([ids], patch)).logits),
        ).toBeLessThan(1e-5);
        // Weights stay 4-bit: the cache holds far less than the twin's float32 linear layers.
        expect(d.weightBytes).toBeLessThan(reference.weightBytes);
      } finally {
        await d.dispose();
      }
    },
  );

  it(
    'refuses act-order (desc_act, or a g_idx that is not k / group_size), ' + 'other AWQ packings and methods',
    async () => {
      expect(() =>
        prequantSchemeFromConfig({
          quantization_config: { quant_method: 'gptq', bits: 4, group_size: 32, desc_act: true },
        }),
      ).toThrow(/desc_act/);
      expect(() =>
        prequantSchemeFromConfig({
          quantization_config: { quant_method: 'awq', bits: 4, group_size: 32, version: 'gemv' },
        }),
      ).toThrow(/gemm/);
      expect(() => prequantSchemeFromConfig({ quantization_config: { quant_method: 'bitsandbytes' } })).toThrow(
        /not supported/,
      );
      const dir = writeQuantisedTwin(four.floatDir, four.floats, four.quantised, 'gptq');
      // Rewrite one g_idx in place: swap the groups of inputs 0 and 32.
      const ckpt = SafetensorsCheckpoint.open(dir);
      const info = ckpt.info('model.layers.0.self_attn.q_proj.g_idx');
      ckpt.close();
      const fd = fs.openSync(path.join(dir, 'model.safetensors'), 'r+');
      fs.writeSync(fd, i32(Int32Array.of(1)), 0, 4, info.start);
      fs.closeSync(fd);
      await expect(Decoder.load(dir, { cacheDir, threads: 1 })).rejects.toThrow(/act-order/);
    },
  );

  it('names a qweight of the wrong shape', async () => {
    const q = new Map(four.quantised);
    const name = 'model.layers.1.mlp.down_proj.weight';
    const bad = q.get(name)!;
    q.set(name, {
      ...bad,
      N: bad.N / 2,
      zeros: bad.zeros.slice(0, bad.zeros.length / 2),
      scales: bad.scales.slice(0, bad.scales.length / 2),
      halfScales: bad.halfScales.slice(0, bad.halfScales.length / 2),
    });
    const dir = writeQuantisedTwin(four.floatDir, four.floats, q, 'awq');
    await expect(Decoder.load(dir, { cacheDir, threads: 1 })).rejects.toThrow(/down_proj\.qweight.*shape/);
  });
});
