/** Patching identities, shared-prefix steps, and batch/padding invariance on a random GQA model. */
import { afterAll, beforeAll, expect, it } from 'vitest';
import { Decoder } from '../../src/model/decoder.js';
import { FAMILY_CONFIGS, makeCheckpoint, relError, row, tempDir } from '../helpers/fixtures.js';

let decoder: Decoder;
const A = [1, 403, 407, 261, 378, 300, 301, 12];
const B = [1, 17, 99, 250, 400, 12]; // different prefix, same last token as A

beforeAll(async () => {
  const { dir } = makeCheckpoint(FAMILY_CONFIGS['qwen3 (q/k norm, explicit head_dim, GQA 2)']!, { seed: 11, std: 0.3 });
  decoder = await Decoder.load(dir, { cacheDir: tempDir('arm-cache-'), threads: 1 });
});
afterAll(() => decoder?.dispose());

const size = () => {
  const { numLayers: L, numHeads: H, headDim: d, vocabSize: V } = decoder.spec;
  return { L, H, d, V };
};

it('an empty mask is exactly the unpatched run, whatever the values', async () => {
  const { L, H, d } = size();
  const plain = await decoder.forward([A]);
  const patched = await decoder.forward([A], {
    mask: new Float32Array(L * H),
    values: Float32Array.from({ length: L * H * d }, () => 5),
  });
  expect(Array.from(patched.logits)).toEqual(Array.from(plain.logits));
});

it('patching every head with the activations the same input produced changes nothing', async () => {
  const { L, H } = size();
  const plain = await decoder.forward([A]);
  const patched = await decoder.forward([A], { mask: new Float32Array(L * H).fill(1), values: plain.heads });
  expect(relError(patched.logits, plain.logits)).toBeLessThan(1e-6);
});

it("patching every head of B with A's activations gives A's last logits (the patch lands in every layer)", async () => {
  const { L, H } = size();
  const a = await decoder.forward([A]);
  const b = await decoder.forward([B]);
  expect(relError(b.logits, a.logits)).toBeGreaterThan(1e-2); // the prefixes really differ
  const patched = await decoder.forward([B], { mask: new Float32Array(L * H).fill(1), values: a.heads });
  expect(relError(patched.logits, a.logits)).toBeLessThan(1e-5);
  expect(relError(patched.heads, a.heads)).toBeLessThan(1e-6);
});

it('add mode adds the value, replace mode overwrites it', async () => {
  const { L, H, d } = size();
  const plain = await decoder.forward([A]);
  const values = Float32Array.from({ length: L * H * d }, (_, i) => Math.cos(i));
  const mask = new Float32Array(L * H);
  mask[0] = 1; // layer 0 head 0 only: its tap is read before any later layer can change it
  const add = await decoder.forward([A], { mask, values, mode: 'add' });
  const replace = await decoder.forward([A], { mask, values, mode: 'replace' });
  for (let i = 0; i < d; i++) {
    expect(add.heads[i]).toBeCloseTo(plain.heads[i]! + values[i]!, 5);
    expect(replace.heads[i]).toBeCloseTo(values[i]!, 6);
  }
});

it('prefill + stepShared over B patch rows equals B full forwards with those patches', async () => {
  const { L, H, d, V } = size();
  const values = Float32Array.from({ length: L * H * d }, (_, i) => Math.sin(i * 0.37));
  const rows = 5;
  const mask = Float32Array.from({ length: rows * L * H }, (_, i) => ((i * 7919) % 3 === 0 ? 1 : 0));
  mask.fill(0, 0, L * H); // row 0 unpatched
  const kv = await decoder.prefill(A.slice(0, -1));
  const step = await decoder.stepShared(kv, A[A.length - 1]!, { mask, values });
  for (let r = 0; r < rows; r++) {
    const full = await decoder.forward([A], { mask: mask.slice(r * L * H, (r + 1) * L * H), values });
    expect(relError(row(step.logits, r, V), full.logits)).toBeLessThan(1e-5);
    expect(relError(row(step.heads, r, L * H * d), full.heads)).toBeLessThan(1e-5);
  }
});

it('a left-padded batch equals each row alone, in any order and batch size', async () => {
  const { V, L, H, d } = size();
  const seqs = [A, B, [1, 5], A.slice(0, 3)];
  const alone = await Promise.all(seqs.map((s) => decoder.forward([s])));
  for (const order of [
    [0, 1, 2, 3],
    [3, 2, 1, 0],
    [2, 0],
  ]) {
    const batch = await decoder.forward(order.map((i) => seqs[i]!));
    order.forEach((i, b) => {
      expect(relError(row(batch.logits, b, V), alone[i]!.logits)).toBeLessThan(1e-5);
      expect(relError(row(batch.heads, b, L * H * d), alone[i]!.heads)).toBeLessThan(1e-5);
    });
  }
});

it('extend() continues a cache exactly like a full forward', async () => {
  const { kv } = await decoder.extend(await decoder.prefill(A.slice(0, 3)), A.slice(3, 6));
  const { logits } = await decoder.extend(kv, A.slice(6));
  expect(relError(logits, (await decoder.forward([A])).logits)).toBeLessThan(1e-5);
});

it('forwardShared: continuations of different lengths after one prefix equal their full forwards', async () => {
  const { V } = size();
  const prefix = A.slice(0, 4);
  const suffixes = [A.slice(4), [77, 12], [300]];
  const kv = await decoder.prefill(prefix);
  const shared = await decoder.forwardShared(kv, suffixes);
  for (const [b, s] of suffixes.entries()) {
    const full = await decoder.forward([[...prefix, ...s]]);
    expect(relError(row(shared.logits, b, V), full.logits)).toBeLessThan(1e-5);
  }
});

it('logsumexp equals log Σ exp(logits) computed in float64', async () => {
  const { V } = size();
  const out = await decoder.forward([A, B]);
  for (let b = 0; b < 2; b++) {
    const row = row_(out.logits, b, V);
    const max = Math.max(...row);
    const lse = max + Math.log(row.reduce((s, v) => s + Math.exp(v - max), 0));
    expect(Math.abs(out.logSumExp[b]! - lse)).toBeLessThan(1e-5 * Math.max(1, Math.abs(lse)));
  }
});
const row_ = (x: Float32Array, i: number, w: number) => Array.from(row(x, i, w));
