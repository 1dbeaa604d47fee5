/**
 * The WebGPU execution provider (src/model/session.ts, docs/gpu.md) against the CPU provider and the goldens: the
 * stories260K golden; every family's transformers fixture (test/helpers/hf-parity.ts) in fp32 against the CPU
 * and transformers' float64 outputs: text (forward, head taps, patch, prefill + shared step, greedy) and image-text
 * (vision tower, patched run, an image prefix + shared step); every compute node on the device, and the errors when a
 * provider or adapter is missing. Fixtures that are absent are skipped by name. Runs
 * where Dawn finds an adapter (a GPU driver, or Mesa's software Vulkan driver lavapipe, which .ci/run installs);
 * elsewhere the suite is skipped with the reason in its name. Kept tiny: lavapipe compiles every shader on the CPU.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import fs from 'node:fs';
import path from 'node:path';
import { Decoder } from '../../src/model/decoder.js';
import { deviceProblem, openSession } from '../../src/model/session.js';
import { MODEL_FILE } from '../../src/model/cache/decoder-cache.js';
import { ImageInputs, type ImagePrompt } from '../../src/model/vision/image-inputs.js';
import { decodeImage } from '../../src/model/vision/image.js';
import { fixturePatch, relError, row, STORIES, tempDir } from '../helpers/fixtures.js';
import {
  IMAGE_TEXT_FIXTURES,
  type ImageTextParityResult,
  type ParityResult,
  readParity,
  TEXT_FIXTURES,
} from '../helpers/hf-parity.js';
import { arm } from '../helpers/cli.js';

const problem = await deviceProblem('webgpu');
const cudaProblem = await deviceProblem('cuda');
const suite = problem === null ? 'webgpu' : `webgpu SKIPPED, no adapter: ${problem.slice(0, 300)}`;
if (problem !== null) console.warn(`note: ${suite}`);
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

  describe.each(TEXT_FIXTURES)('transformers text fixture $name', ({ name, dir }) => {
    if (!fs.existsSync(path.join(dir, 'parity.json'))) return void it.skip(`SKIPPED, fixture absent: ${dir}`);
    const err = new Errors();
    let gpu: Decoder;
    let cpu: Decoder;
    let results: ParityResult[];
    beforeAll(async () => {
      results = readParity(dir).results;
      gpu = await Decoder.load(dir, { cacheDir, device: 'webgpu', dtype: 'fp32' });
      cpu = await Decoder.load(dir, { cacheDir, threads: 1, dtype: 'fp32' });
    }, 120_000);
    afterAll(async () => {
      err.report(name);
      await gpu?.dispose();
      await cpu?.dispose();
    });

    it('forward, patched forward and prefill + shared step: within 1e-4 of the CPU and of transformers', async () => {
      expect(gpu.info.device).toBe('webgpu');
      const { numLayers: L, numHeads: H, headDim: d, vocabSize: V } = gpu.spec;
      const patch = fixturePatch(L, H, d);
      const rows = results.map((r) => r.input_ids);
      const [g, c] = [await gpu.forward(rows), await cpu.forward(rows)];
      err.cpu('logits', g.logits, c.logits);
      err.cpu('heads', g.heads, c.heads);
      results.forEach((r, b) => {
        err.hf(`logits ${b}`, row(g.logits, b, V), r.last_logits);
        err.hf(`heads ${b}`, row(g.heads, b, L * H * d), r.o_proj_input_last.flat());
      });
      for (const r of results) {
        const [p, q] = [await gpu.forward([r.input_ids], patch), await cpu.forward([r.input_ids], patch)];
        err.cpu('patched logits', p.logits, q.logits);
        err.cpu('patched heads', p.heads, q.heads);
        err.hf('patched logits', p.logits, r.patched_last_logits);
        err.hf('patched heads', p.heads, r.patched_o_proj_input_last.flat());
        const step = await sharedStep(gpu, r.input_ids, patch);
        err.cpu('shared step', step, await sharedStep(cpu, r.input_ids, patch));
        err.hf('shared step', step.subarray(0, V), r.last_logits);
        err.hf('patched shared step', step.subarray(V), r.patched_last_logits);
      }
    });

    it("greedy generation gives transformers' 8 tokens", async () => {
      const r = results[0]!;
      expect(await gpu.generate(r.input_ids, { maxNewTokens: 8, stopTokens: [] })).toEqual(r.greedy8);
    });
  });

  describe.each(IMAGE_TEXT_FIXTURES)('transformers image-text fixture $name (vision tower on the device)', (f) => {
    const { name, dir } = f;
    if (!fs.existsSync(path.join(dir, 'parity.json'))) return void it.skip(`SKIPPED, fixture absent: ${dir}`);
    const err = new Errors();
    let gpu: Decoder;
    let cpu: Decoder;
    let inputs: ImageInputs;
    let cpuInputs: ImageInputs;
    let results: ImageTextParityResult[];
    beforeAll(async () => {
      results = readParity<ImageTextParityResult>(dir).results;
      gpu = await Decoder.load(dir, { cacheDir, device: 'webgpu', dtype: 'fp32' });
      cpu = await Decoder.load(dir, { cacheDir, threads: 1, dtype: 'fp32' });
      inputs = await ImageInputs.load(dir, { cacheDir, device: 'webgpu' });
      cpuInputs = await ImageInputs.load(dir, { cacheDir, threads: 1 });
    }, 120_000);
    afterAll(async () => {
      err.report(name);
      await gpu?.dispose();
      await cpu?.dispose();
      await inputs?.release();
      await cpuInputs?.release();
    });

    it('tower features, patched logits and a prefilled image prefix: within 1e-4 of the CPU and of HF', async () => {
      expect(gpu.info.device).toBe('webgpu');
      const image = await decodeImage(path.join(dir, 'image0.png'));
      const { numLayers: L, numHeads: H, headDim: d, vocabSize: V } = gpu.spec;
      const patch = fixturePatch(L, H, d);
      for (const r of results) {
        const p = await inputs.prepare(r.input_ids_one_placeholder, [image]);
        const q = await cpuInputs.prepare(r.input_ids_one_placeholder, [image]);
        expect(p.inputIds).toEqual(r.input_ids);
        err.cpu('tower features', p.images[0]!.embeds, q.images[0]!.embeds);
        (p.images[0]!.deepstack ?? []).forEach((x, i) => err.cpu(`deepstack ${i}`, x, q.images[0]!.deepstack![i]!));
        const out = await gpu.forward([p.inputIds], patch, { images: [p.images] });
        const ref = await cpu.forward([q.inputIds], patch, { images: [q.images] });
        err.cpu('patched logits', out.logits, ref.logits);
        err.cpu('patched heads', out.heads, ref.heads);
        err.hf('patched logits', out.logits, r.patched_last_logits);
        err.hf('patched heads', out.heads, r.patched_o_proj_input_last.flat());
        const step = await sharedStep(gpu, p.inputIds, patch, p.images);
        err.cpu('shared step', step, await sharedStep(cpu, q.inputIds, patch, q.images));
        err.hf('shared step', step.subarray(0, V), r.last_logits);
        err.hf('patched shared step', step.subarray(V), r.patched_last_logits);
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

/**
 * `ids` but the last prefilled (with `images` in the prefix), then the last token as two shared-prefix rows: row 0
 * unpatched, row 1 with `patch`. Returns both rows' logits.
 */
async function sharedStep(
  decoder: Decoder,
  ids: number[],
  patch: { mask: Float32Array; values: Float32Array },
  images?: ImagePrompt['images'],
): Promise<Float32Array> {
  const { numLayers: L, numHeads: H } = decoder.spec;
  const kv = await decoder.prefill(ids.slice(0, -1), { images });
  const mask = new Float32Array(2 * L * H);
  mask.set(patch.mask, L * H);
  return (await decoder.stepShared(kv, ids.at(-1)!, { mask, values: patch.values })).logits;
}

/** Each comparison within 1e-4 relative (relError), the largest against the CPU and against transformers kept. */
class Errors {
  private worst = { cpu: 0, hf: 0 };

  cpu(what: string, gpu: ArrayLike<number>, cpu: ArrayLike<number>): void {
    this.check('cpu', what, gpu, cpu);
  }

  hf(what: string, gpu: ArrayLike<number>, hf: ArrayLike<number>): void {
    this.check('hf', what, gpu, hf);
  }

  report(name: string): void {
    const { cpu, hf } = this.worst;
    console.info(`webgpu ${name}: max relative error ${cpu.toExponential(2)} vs CPU, ${hf.toExponential(2)} vs HF`);
  }

  private check(against: 'cpu' | 'hf', what: string, a: ArrayLike<number>, b: ArrayLike<number>): void {
    const e = relError(a, b);
    this.worst[against] = Math.max(this.worst[against], e);
    expect(e, `${what} against ${against === 'cpu' ? 'the CPU' : 'transformers'}`).toBeLessThan(1e-4);
  }
}
