/**
 * The KV cache kept on the GPU (LoadOptions.kvCache 'device', the WebGPU default; docs/gpu.md): a prefix's keys and
 * values stay device tensors between prefill, extend and the steps after it, and are never uploaded again. Checked
 * against the CPU provider (within 1e-4) and against the same WebGPU graph with the cache in JS ('host', the path
 * before; equal), with the bytes fed through host memory counted from the fed tensors' locations. Runs where Dawn
 * finds an adapter (lavapipe in CI); skipped with the reason in its name elsewhere.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import v8 from 'node:v8';
import vm from 'node:vm';
import { Decoder, disposeKv, type KvCache } from '../../src/model/decoder.js';
import { forEachLastLogitsPerPatch } from '../../src/model/batch.js';
import { deviceProblem } from '../../src/model/session.js';
import { fixturePatch, relError, STORIES, tempDir } from '../helpers/fixtures.js';

const problem = await deviceProblem('webgpu');
const suite = problem === null ? 'webgpu KV cache' : `webgpu KV cache SKIPPED, no adapter: ${problem.slice(0, 300)}`;
if (problem !== null) console.warn(`note: ${suite}`);
const cacheDir = tempDir('arm-cache-');

const PROMPT = [1, 403, 407, 261, 378, 285, 259, 147, 216, 379, 302, 286, 101, 313, 260, 265];

describe.skipIf(problem !== null)(suite, () => {
  let device: Decoder; // kvCache 'device' (the default)
  let host: Decoder; // the same WebGPU graph, cache in JS
  let cpu: Decoder;
  beforeAll(async () => {
    device = await Decoder.load(STORIES, { cacheDir, device: 'webgpu', dtype: 'fp32' });
    host = await Decoder.load(STORIES, { cacheDir, device: 'webgpu', dtype: 'fp32', kvCache: 'host' });
    cpu = await Decoder.load(STORIES, { cacheDir, threads: 1 });
  }, 120_000);
  afterAll(async () => {
    await device?.dispose();
    await host?.dispose();
    await cpu?.dispose();
  });

  /** Two patch rows after a prefix: row 0 unpatched, row 1 patched (fixturePatch). */
  const twoRows = (d: Decoder) => {
    const { numLayers: L, numHeads: H, headDim } = d.spec;
    const patch = fixturePatch(L, H, headDim);
    const mask = new Float32Array(2 * L * H);
    mask.set(patch.mask, L * H);
    return { mask, values: patch.values };
  };

  it('webgpu defaults to a device cache; cpu and cuda refuse one', async () => {
    expect(device.info.kvCache).toBe('device');
    expect(host.info.kvCache).toBe('host');
    expect(cpu.info.kvCache).toBe('host');
    const kv = await device.prefill(PROMPT.slice(0, 4));
    expect(kv.device).toBeDefined();
    expect(kv.keys).toEqual([]); // nothing of it in JS
    disposeKv(kv);
    await expect(Decoder.load(STORIES, { cacheDir, kvCache: 'device' })).rejects.toThrow(/needs --device webgpu/);
  });

  it('prefill, extend, patched steps: equal to the host cache, within 1e-4 of the CPU; nothing uploaded', async () => {
    const patch = twoRows(device);
    const chain = async (d: Decoder) => {
      const before = d.stats.kvUploadBytes;
      const a = await d.prefill(PROMPT.slice(0, 6));
      const b = await d.extend(a, PROMPT.slice(6, 11)); // a past on the device, extended there
      const c = await d.extend(b.kv, PROMPT.slice(11, -1));
      const afterPrefix = d.stats.kvUploadBytes;
      const steps = [];
      for (let i = 0; i < 3; i++) steps.push(await d.stepShared(c.kv, PROMPT.at(-1)!, patch));
      const stepUpload = (d.stats.kvUploadBytes - afterPrefix) / 3;
      const forward = await d.forwardShared(a, [PROMPT.slice(6), PROMPT.slice(8)]);
      for (const kv of [a, b.kv, c.kv]) disposeKv(kv);
      return { b, c, steps, forward, prefixUpload: afterPrefix - before, stepUpload };
    };
    const [dev, hst, ref] = [await chain(device), await chain(host), await chain(cpu)];
    for (const x of [dev, hst]) {
      expect(relError(x.b.logits, ref.b.logits)).toBeLessThan(1e-4);
      expect(relError(x.c.heads, ref.c.heads)).toBeLessThan(1e-4);
      expect(relError(x.steps[2]!.logits, ref.steps[2]!.logits)).toBeLessThan(1e-4);
      expect(relError(x.steps[2]!.heads, ref.steps[2]!.heads)).toBeLessThan(1e-4);
      expect(relError(x.forward.logits, ref.forward.logits)).toBeLessThan(1e-4);
    }
    // One graph, the same kernels, the same cache values: the device path changes where they live, not what they are.
    expect(dev.c.logits).toEqual(hst.c.logits);
    expect(dev.steps[2]!.logits).toEqual(hst.steps[2]!.logits);
    expect(dev.steps[2]!.heads).toEqual(hst.steps[2]!.heads);
    expect(dev.forward.logits).toEqual(hst.forward.logits);
    const { numLayers: L, numKvHeads: KV, headDim: d } = device.spec;
    const P = PROMPT.length - 1;
    expect(hst.stepUpload).toBe(2 * L * KV * P * d * 4); // the whole prefix, every step
    expect(dev.stepUpload).toBe(0);
    expect(dev.prefixUpload).toBe(2 * L * KV * 1 * d * 4); // the masked slot of the first prefill, once
    expect(ref.stepUpload).toBe(0); // the CPU reads the arrays in place
  });

  it('greedy generation on the device cache equals the host cache', async () => {
    const opts = { maxNewTokens: 10, stopTokens: [] };
    expect(await device.generate(PROMPT.slice(0, 5), opts)).toEqual(await host.generate(PROMPT.slice(0, 5), opts));
  });

  it('scoring batches (shared, group and own prefixes extended on the device) within 1e-4 of the CPU', async () => {
    const seqs = [PROMPT, [...PROMPT.slice(0, 12), 300, 301], [...PROMPT.slice(0, 9), 500, 501, 502], PROMPT.slice(3)];
    const patch = twoRows(device);
    const collect = async (d: Decoder) => {
      const rows = new Map<number, Float32Array>();
      await forEachLastLogitsPerPatch(d, seqs, { patch, groups: [[0, 1]] }, (i, r) => rows.set(i, r.logits));
      return rows;
    };
    const [dev, ref] = [await collect(device), await collect(cpu)];
    for (let i = 0; i < seqs.length; i++) expect(relError(dev.get(i)!, ref.get(i)!)).toBeLessThan(1e-4);
  });

  it('a cache dropped without disposeKv is released by the GC while the decoder lives, never after it', async () => {
    // Releasing a device tensor after its session is gone segfaults onnxruntime-node 1.30 (device-kv.ts).
    v8.setFlagsFromString('--expose-gc');
    const gc = vm.runInNewContext('gc') as () => void;
    const collect = async () => {
      for (let i = 0; i < 3; i++) {
        gc();
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
    };
    const d = await Decoder.load(STORIES, { cacheDir, device: 'webgpu', dtype: 'fp32' });
    const live = () => (d as unknown as { deviceCaches: { live: Map<number, unknown> } }).deviceCaches.live.size;
    const kept = await d.prefill(PROMPT.slice(0, 5));
    for (let i = 0; i < 4; i++) await d.prefill(PROMPT.slice(0, 6 + i)); // dropped at once
    await collect();
    expect(live()).toBe(1); // only `kept`
    for (let i = 0; i < 4; i++) await d.prefill(PROMPT.slice(0, 6 + i)); // dropped, and not yet collected ...
    await d.dispose(); // ... when the session goes: released first
    expect(live()).toBe(0);
    await collect(); // the GC finds nothing left to release (a crash would end this worker)
    expect(kept.length).toBe(5);
    await expect(d.stepShared(kept, 7, twoRows(cpu))).rejects.toThrow(/disposed/);
  });

  it('a disposed cache, or one of another decoder, is refused by name; a CPU-made cache is uploaded', async () => {
    const kv = await device.prefill(PROMPT.slice(0, 6));
    const patch = twoRows(device);
    await expect(host.stepShared(kv, 7, patch)).rejects.toThrow(/lives on the GPU of another decoder/);
    disposeKv(kv);
    await expect(device.stepShared(kv, 7, patch)).rejects.toThrow(/was disposed/);
    const fromCpu: KvCache = await cpu.prefill(PROMPT.slice(0, 6));
    const before = device.stats.kvUploadBytes;
    const out = await device.stepShared(fromCpu, 7, patch);
    expect(device.stats.kvUploadBytes - before).toBeGreaterThan(0);
    expect(relError(out.logits, (await cpu.stepShared(fromCpu, 7, patch)).logits)).toBeLessThan(1e-4);
  });
});
