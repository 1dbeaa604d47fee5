/**
 * The WebGPU execution provider (src/model/session.ts, docs/gpu.md) against the CPU provider and the goldens: the
 * stories260K golden, a transformers fixture with sliding window and soft-capping (forward, patch, prefill + shared
 * step, greedy), every compute node on the device, and the errors when a provider or adapter is missing. Runs
 * where Dawn finds an adapter (a GPU driver, or Mesa's software Vulkan driver lavapipe, which .ci/run installs);
 * elsewhere the suite is skipped with the reason in its name. Kept tiny: lavapipe compiles every shader on the CPU.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import fs from 'node:fs';
import path from 'node:path';
import { Decoder } from '../../src/model/decoder.js';
import { deviceProblem, openSession } from '../../src/model/session.js';
import { MODEL_FILE } from '../../src/model/cache/decoder-cache.js';
import { ImageInputs } from '../../src/model/vision/image-inputs.js';
import { decodeImage } from '../../src/model/vision/image.js';
import { fixturePatch, relError, STORIES, tempDir } from '../helpers/fixtures.js';
import { arm } from '../helpers/cli.js';

const problem = await deviceProblem('webgpu');
const cudaProblem = await deviceProblem('cuda');
const suite = problem === null ? 'webgpu' : `webgpu SKIPPED, no adapter: ${problem.slice(0, 300)}`;
if (problem !== null) console.warn(`note: ${suite}`);
const FIXTURES = path.resolve(import.meta.dirname, '../../../shared/fixtures/hf-parity');
const cacheDir = tempDir('arm-cache-');

interface Golden {
  prompts: { input_ids: number[]; continuation_ids: number[]; top5_last_prompt_position: { ids: number[] } }[];
  o_proj_input_taps: { prompt: string; layers: Record<string, number[]> };
}

describe.skipIf(problem !== null)(suite, () => {
  describe('stories260K', () => {
    let gpu: Decoder;
    let cpu: Decoder;
    const golden: Golden = JSON.parse(fs.readFileSync(path.join(STORIES, 'golden.json'), 'utf8'));
    beforeAll(async () => {
      gpu = await Decoder.load(STORIES, { cacheDir, device: 'webgpu', dtype: 'fp32' });
      cpu = await Decoder.load(STORIES, { cacheDir, threads: 1 });
    }, 120_000);
    afterAll(async () => {
      await gpu?.dispose();
      await cpu?.dispose();
    });

    it('runs on webgpu in its own graph entry', () => {
      expect(gpu.info.device).toBe('webgpu');
      expect(cpu.info.device).toBe('cpu');
      expect(gpu.info.cacheEntry).not.toBe(cpu.info.cacheEntry);
    });

    it('a padded batch of the golden prompts: logits and head taps within 1e-4 of the CPU, golden top-5', async () => {
      const rows = golden.prompts.map((p) => p.input_ids);
      const [g, c] = [await gpu.forward(rows), await cpu.forward(rows)];
      expect(relError(g.logits, c.logits)).toBeLessThan(1e-4);
      expect(relError(g.heads, c.heads)).toBeLessThan(1e-4);
      const V = gpu.spec.vocabSize;
      golden.prompts.forEach((p, b) => {
        const row = Array.from(g.logits.subarray(b * V, (b + 1) * V));
        const top5 = Array.from(row.keys()).sort((x, y) => row[y]! - row[x]!);
        expect(top5.slice(0, 5)).toEqual(p.top5_last_prompt_position.ids);
      });
    });

    it('greedy generation with the KV cache gives the golden continuation', async () => {
      const p = golden.prompts[0]!;
      const got = await gpu.generate(p.input_ids, { maxNewTokens: 12, stopTokens: [] });
      expect(got).toEqual(p.continuation_ids.slice(0, 12));
    });

    it('int4 and block-wise int8 (MatMulNBits) run on the device as on the CPU; row-wise int8 is refused', async () => {
      const rows = golden.prompts.map((p) => p.input_ids);
      for (const dtype of ['int4', 'int8'] as const) {
        const int4Method = dtype === 'int4' ? ('rtn' as const) : undefined; // GPTQ would calibrate twice: slow
        const q = await Decoder.load(STORIES, { cacheDir, device: 'webgpu', dtype, int4Method });
        const c = await Decoder.load(STORIES, {
          cacheDir,
          threads: 1,
          dtype,
          int4Method,
          int8Kernel: q.info.weightFormat.quant?.int8Kernel,
        });
        try {
          if (dtype === 'int8') expect(q.info.weightFormat.quant?.int8Kernel).toBe('blockwise');
          expect(relError((await q.forward(rows)).logits, (await c.forward(rows)).logits)).toBeLessThan(1e-4);
        } finally {
          await q.dispose();
          await c.dispose();
        }
      }
      await expect(
        Decoder.load(STORIES, { cacheDir, device: 'webgpu', dtype: 'int8', int8Kernel: 'rowwise' }),
      ).rejects.toThrow(/--int8-kernel rowwise \(MatMulIntegerToFloat\) runs on the CPU only; on --device webgpu/);
    });

    it('every node reading a float tensor runs on the device (profiled: fp32, int4); on the CPU it bites', async () => {
      expect(await cpuFloatNodesOf(gpu, 'webgpu')).toEqual([]);
      expect((await cpuFloatNodesOf(gpu, 'cpu')).length).toBeGreaterThan(100);
      const int4 = await Decoder.load(STORIES, { cacheDir, device: 'webgpu', dtype: 'int4', int4Method: 'rtn' });
      try {
        expect(await cpuFloatNodesOf(int4, 'webgpu')).toEqual([]);
      } finally {
        await int4.dispose();
      }
    });
  });

  describe('transformers fixture gemma2-softcap-window (sliding window, soft-capping)', () => {
    const dir = path.join(FIXTURES, 'gemma2-softcap-window');
    let gpu: Decoder;
    let cpu: Decoder;
    let results: { input_ids: number[]; last_logits: number[]; patched_last_logits: number[]; greedy8: number[] }[];
    beforeAll(async () => {
      results = JSON.parse(fs.readFileSync(path.join(dir, 'parity.json'), 'utf8')).results;
      gpu = await Decoder.load(dir, { cacheDir, device: 'webgpu', dtype: 'fp32' });
      cpu = await Decoder.load(dir, { cacheDir, threads: 1 });
    }, 120_000);
    afterAll(async () => {
      await gpu?.dispose();
      await cpu?.dispose();
    });

    it('forward, patched forward and prefill + shared step: within 1e-4 of the CPU and of transformers', async () => {
      const { numLayers: L, numHeads: H, headDim: d, vocabSize: V } = gpu.spec;
      const patch = fixturePatch(L, H, d);
      const rows = results.map((r) => r.input_ids);
      const [g, c] = [await gpu.forward(rows), await cpu.forward(rows)];
      expect(relError(g.logits, c.logits)).toBeLessThan(1e-4);
      expect(relError(g.heads, c.heads)).toBeLessThan(1e-4);
      for (const r of results) {
        const patched = await gpu.forward([r.input_ids], patch);
        expect(relError(patched.logits, r.patched_last_logits)).toBeLessThan(1e-4);
        const kv = await gpu.prefill(r.input_ids.slice(0, -1));
        const mask = new Float32Array(2 * L * H);
        mask.set(patch.mask, L * H); // row 0 unpatched, row 1 patched
        const step = await gpu.stepShared(kv, r.input_ids.at(-1)!, { mask, values: patch.values });
        expect(relError(step.logits.subarray(0, V), r.last_logits)).toBeLessThan(1e-4);
        expect(relError(step.logits.subarray(V), r.patched_last_logits)).toBeLessThan(1e-4);
      }
    });

    it("greedy generation gives transformers' 8 tokens", async () => {
      const r = results[0]!;
      expect(await gpu.generate(r.input_ids, { maxNewTokens: 8, stopTokens: [] })).toEqual(r.greedy8);
    });
  });

  describe('transformers fixture qwen2_vl-tiny (image + text: vision tower and M-RoPE on the device)', () => {
    const dir = path.join(FIXTURES, 'qwen2_vl-tiny');
    let gpu: Decoder;
    let inputs: ImageInputs;
    let cpuInputs: ImageInputs;
    type Result = { input_ids_one_placeholder: number[]; last_logits: number[]; patched_last_logits: number[] };
    let results: Result[];
    beforeAll(async () => {
      results = JSON.parse(fs.readFileSync(path.join(dir, 'parity.json'), 'utf8')).results;
      gpu = await Decoder.load(dir, { cacheDir, device: 'webgpu', dtype: 'fp32' });
      inputs = await ImageInputs.load(dir, { cacheDir, device: 'webgpu' });
      cpuInputs = await ImageInputs.load(dir, { cacheDir, threads: 1 });
    }, 120_000);
    afterAll(async () => {
      await gpu?.dispose();
      await inputs?.release();
      await cpuInputs?.release();
    });

    it('tower features within 1e-4 of the CPU; patched logits and a prefilled image prefix match HF', async () => {
      const image = await decodeImage(path.join(dir, 'image0.png'));
      const { numLayers: L, numHeads: H, headDim: d, vocabSize: V } = gpu.spec;
      const patch = fixturePatch(L, H, d);
      for (const r of results) {
        const p = await inputs.prepare(r.input_ids_one_placeholder, [image]);
        const q = await cpuInputs.prepare(r.input_ids_one_placeholder, [image]);
        expect(relError(p.images[0]!.embeds, q.images[0]!.embeds)).toBeLessThan(1e-4);
        const out = await gpu.forward([p.inputIds], patch, { images: [p.images] });
        expect(relError(out.logits, r.patched_last_logits)).toBeLessThan(1e-4);
        const kv = await gpu.prefill(p.inputIds.slice(0, -1), { images: p.images });
        const mask = new Float32Array(2 * L * H);
        mask.set(patch.mask, L * H);
        const step = await gpu.stepShared(kv, p.inputIds.at(-1)!, { mask, values: patch.values });
        expect(relError(step.logits.subarray(0, V), r.last_logits)).toBeLessThan(1e-4);
        expect(relError(step.logits.subarray(V), r.patched_last_logits)).toBeLessThan(1e-4);
      }
    });
  });
});

describe('missing providers and adapters are errors that say what to install', () => {
  it('webgpu without any Vulkan driver: arm fit names the Mesa/Vulkan driver, no CPU fall back', () => {
    const examples = path.join(tempDir('arm-webgpu-'), 'few.jsonl');
    fs.writeFileSync(examples, JSON.stringify({ prompt: 'Once', chosen: 'upon', rejected: 'a' }) + '\n');
    const out = path.join(path.dirname(examples), 'x.arm.safetensors');
    const r = arm(['fit', '--model', STORIES, '--examples', examples, '--out', out, '--device', 'webgpu', '--quiet'], {
      expectFail: true,
      env: { VK_ICD_FILENAMES: '/nonexistent/icd.json', VK_DRIVER_FILES: '/nonexistent/icd.json' },
    });
    expect(r.stderr).toMatch(/--device webgpu: .*adapter/);
    expect(r.stderr).toMatch(/mesa-vulkan-drivers/);
  });

  it.skipIf(cudaProblem === null)(
    'cuda where the opt-in provider is not installed names the install command',
    async () => {
      await expect(Decoder.load(STORIES, { cacheDir, device: 'cuda' })).rejects.toThrow(
        /ONNXRUNTIME_NODE_INSTALL=cuda12 node node_modules\/onnxruntime-node\/script\/install/,
      );
      expect(fs.existsSync(path.join(cacheDir, 'graphs'))).toBe(true); // the entry was built; the session refused
    },
  );
});

/**
 * The nodes that read a float tensor yet ran on the CPU provider, in a profiled forward, prefill and shared step of
 * `decoder`'s graph opened on `device` (swapped in for its own session for the run).
 */
async function cpuFloatNodesOf(decoder: Decoder, device: 'webgpu' | 'cpu'): Promise<string[]> {
  const prefix = path.join(tempDir('arm-profile-'), 'run');
  const holder = decoder as unknown as { session: Awaited<ReturnType<typeof openSession>> };
  const original = holder.session;
  // As the decoder's own session: its KV cache outputs stay on the device (kvCache 'device').
  const kvOnDevice = device === 'webgpu' && decoder.info.kvCache === 'device';
  const session = await openSession(path.join(decoder.info.cacheEntry, MODEL_FILE), {
    device,
    profileFilePrefix: prefix,
    deviceOutputs: kvOnDevice ? original.outputNames.filter((n) => /^(new|present)\./.test(n)) : [],
  });
  holder.session = session;
  try {
    await decoder.forward([[1, 2, 3], [4]]);
    const kv = await decoder.prefill([1, 2, 3]);
    const { numLayers: L, numHeads: H, headDim: d } = decoder.spec;
    await decoder.stepShared(kv, 4, { mask: new Float32Array(2 * L * H).fill(1), values: new Float32Array(L * H * d) });
  } finally {
    holder.session = original;
    session.endProfiling(); // writes <prefix>_<time>.json
    await session.release();
  }
  const [file] = fs.readdirSync(path.dirname(prefix)).filter((f) => f.endsWith('.json'));
  return cpuFloatNodes(JSON.parse(fs.readFileSync(path.join(path.dirname(prefix), file!), 'utf8')) as ProfileEvent[]);
}

interface ProfileEvent {
  cat: string;
  name: string;
  args: { op_name?: string; provider?: string; input_type_shape?: Record<string, number[]>[] };
}

/** Profiled nodes that ran on the CPU provider although an input is a float tensor (index arithmetic aside). */
function cpuFloatNodes(events: ProfileEvent[]): string[] {
  return events
    .filter((e) => e.cat === 'Node' && e.name.endsWith('_kernel_time'))
    .filter((e) => e.args.provider === 'CPUExecutionProvider')
    .filter((e) => (e.args.input_type_shape ?? []).some((t) => Object.keys(t).some((k) => /float/.test(k))))
    .map((e) => `${e.args.op_name}: ${e.name}`);
}
