/**
 * `--dtype fp16` on WebGPU (docs/gpu.md): the linear layers, embedding and head stored and multiplied in half
 * precision, everything else float32. Needs the adapter's shader-f16 feature, which lavapipe (Mesa 25) exposes.
 * Checked against the fp32 graph on the same device: stories260K logits and head taps, and icl-tiny's P(Yes) over
 * its eight criteria with demonstrations in context (max |ΔP(Yes)| ≤ 0.01); every fp16 MatMul profiled on the
 * device; the device KV cache with fp16 weights. Skipped with the reason in its name where Dawn finds no adapter.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import fs from 'node:fs';
import path from 'node:path';
import { Decoder } from '../../src/model/decoder.js';
import { deviceProblem, halfPrecisionProblem, openSession } from '../../src/model/session.js';
import { MODEL_FILE } from '../../src/model/cache/decoder-cache.js';
import { fixturePatch, relError, STORIES, tempDir } from '../helpers/fixtures.js';
import { ICL_TINY_MODEL, iclTinyRows } from '../helpers/icl-tiny.js';
import { loadCapturingStderr } from '../helpers/capture-load.js';
import { arm } from '../helpers/cli.js';

const problem = (await deviceProblem('webgpu')) ?? (await halfPrecisionProblem('webgpu'));
const suite = problem === null ? 'webgpu fp16' : `webgpu fp16 SKIPPED: ${problem.slice(0, 300)}`;
if (problem !== null) console.warn(`note: ${suite}`);
const cacheDir = tempDir('arm-cache-');

/** Loads `model` on webgpu at fp32 and at fp16. */
async function pair(model: string): Promise<{ full: Decoder; half: Decoder }> {
  const full = await Decoder.load(model, { cacheDir, device: 'webgpu', dtype: 'fp32' });
  const half = await Decoder.load(model, { cacheDir, device: 'webgpu', dtype: 'fp16' });
  return { full, half };
}

describe.skipIf(problem !== null)(suite, () => {
  describe('stories260K', () => {
    let full: Decoder;
    let half: Decoder;
    beforeAll(async () => ({ full, half } = await pair(STORIES)), 120_000);
    afterAll(async () => {
      await full?.dispose();
      await half?.dispose();
    });

    it('half the weight bytes; logits within 1e-2 and head taps within 3e-2 of fp32 (relative error)', async () => {
      expect(half.info.weightFormat.dtype).toBe('fp16');
      expect(half.info.cacheEntry).not.toBe(full.info.cacheEntry);
      expect(half.weightBytes / full.weightBytes).toBeLessThan(0.55); // the norms stay float32
      const rows = [
        [1, 403, 407, 261, 378, 285, 259],
        [1, 20, 30, 40],
      ];
      const [a, b] = [await full.forward(rows), await half.forward(rows)];
      expect(relError(b.logits, a.logits)).toBeLessThan(1e-2); // measured 5.3e-3 on lavapipe
      expect(relError(b.heads, a.heads)).toBeLessThan(3e-2); // measured 1.3e-2
    });

    it('without --dtype, a webgpu load takes fp16 (the GPU default) and says so in its weights line', async () => {
      const { decoder: d, stderr } = await loadCapturingStderr(STORIES, { cacheDir, device: 'webgpu' });
      try {
        expect(d.info.weightFormat.dtype).toBe('fp16');
        expect(d.info.cacheEntry).toBe(half.info.cacheEntry); // the same entry as an explicit --dtype fp16
        expect(stderr).toMatch(/^weights: fp16 \(.*\); the GPU default below 3\.5 B parameters \(0\.\d+ M/m);
      } finally {
        await d.dispose();
      }
    });

    it('prefill + patched steps on the device KV cache agree with fp32 as the forward does', async () => {
      const { numLayers: L, numHeads: H, headDim: d } = half.spec;
      const patch = fixturePatch(L, H, d);
      const mask = new Float32Array(2 * L * H);
      mask.set(patch.mask, L * H);
      const ids = [1, 403, 407, 261, 378, 285, 259, 300];
      const kv = await half.prefill(ids.slice(0, -1));
      const uploaded = half.stats.kvUploadBytes;
      const out = await half.stepShared(kv, ids.at(-1)!, { ...patch, mask });
      expect(half.stats.kvUploadBytes).toBe(uploaded); // the prefix stayed on the device
      const ref = await full.stepShared(await full.prefill(ids.slice(0, -1)), ids.at(-1)!, { ...patch, mask });
      expect(relError(out.logits, ref.logits)).toBeLessThan(1e-2);
    });

    it('every fp16 MatMul runs on the device, none on the CPU provider (profiled)', async () => {
      const nodes = await profiledNodes(half);
      const halfMatMuls = nodes.filter((n) => /MatMul|Gemm/.test(n.op) && n.types.includes('float16'));
      expect(halfMatMuls.length).toBeGreaterThanOrEqual(half.spec.numLayers * 4);
      expect(halfMatMuls.every((n) => n.provider === 'WebGpuExecutionProvider')).toBe(true);
      const floatOnCpu = nodes.filter((n) => n.provider === 'CPUExecutionProvider' && /float/.test(n.types));
      expect(floatOnCpu).toEqual([]);
    });
  });

  describe('icl-tiny (8 criteria, demonstrations in context)', () => {
    let full: Decoder;
    let half: Decoder;
    beforeAll(async () => ({ full, half } = await pair(ICL_TINY_MODEL)), 120_000);
    afterAll(async () => {
      await full?.dispose();
      await half?.dispose();
    });

    it('max |ΔP(Yes)| ≤ 0.01 against fp32 over 8 criteria × 6 queries', async () => {
      const prompts = iclPrompts(half, 4, 6);
      const [a, b] = [await pYes(full, prompts), await pYes(half, prompts)];
      const deltas = a.map((p, i) => Math.abs(p - b[i]!));
      const worst = Math.max(...deltas);
      console.log(`icl-tiny fp16 vs fp32 (webgpu): max |ΔP(Yes)| = ${worst.toExponential(2)} over ${a.length}`);
      expect(worst).toBeLessThanOrEqual(0.01);
    });
  });
});

describe('--dtype fp16 where the device is missing', () => {
  it('webgpu without any Vulkan driver: the error names the driver to install, not shader-f16', () => {
    const examples = path.join(tempDir('arm-webgpu-'), 'few.jsonl');
    fs.writeFileSync(examples, JSON.stringify({ prompt: 'Once', chosen: 'upon', rejected: 'a' }) + '\n');
    const out = path.join(path.dirname(examples), 'x.arm.safetensors');
    const args = ['fit', '--model', STORIES, '--examples', examples, '--out', out, '--quiet'];
    const r = arm([...args, '--device', 'webgpu', '--dtype', 'fp16', '--cache-dir', cacheDir], {
      expectFail: true,
      env: { VK_ICD_FILENAMES: '/nonexistent/icd.json', VK_DRIVER_FILES: '/nonexistent/icd.json' },
    });
    expect(r.stderr).toMatch(/--device webgpu: .*adapter/);
    expect(r.stderr).toMatch(/mesa-vulkan-drivers/);
    expect(r.stderr).not.toMatch(/shader-f16/);
  });
});

/**
 * Per criterion, `queries` judge prompts (README of icl-tiny): `demos` labelled demonstrations of that criterion
 * (a pair's chosen as Yes, its rejected as No), then a query response, ending at "A:".
 */
function iclPrompts(decoder: Decoder, demos: number, queries: number): number[][] {
  const pairs = iclTinyRows();
  const out: number[][] = [];
  for (const subset of new Set(pairs.map((p) => p.subset))) {
    const own = pairs.filter((p) => p.subset === subset);
    const context = own.slice(0, demos).flatMap((p) => [
      { role: 'user' as const, content: `${p.prompt} ${p.chosen}` },
      { role: 'assistant' as const, content: 'Yes' },
      { role: 'user' as const, content: `${p.prompt} ${p.rejected}` },
      { role: 'assistant' as const, content: 'No' },
    ]);
    for (const [i, q] of own.slice(demos, demos + queries).entries()) {
      const content = `${q.prompt} ${i % 2 ? q.rejected : q.chosen}`;
      out.push(decoder.applyChatTemplate([...context, { role: 'user', content }]));
    }
  }
  return out;
}

/** P(Yes) at each prompt's last position (token "Yes"). */
async function pYes(decoder: Decoder, prompts: number[][]): Promise<number[]> {
  const yes = decoder.tokenizer.encode('Yes').at(-1)!;
  const { logits, logSumExp } = await decoder.forward(prompts);
  const V = decoder.spec.vocabSize;
  return prompts.map((_, b) => Math.exp(logits[b * V + yes]! - logSumExp[b]!));
}

/** Every node of a profiled forward of `decoder`'s graph on webgpu: op, provider and input types. */
async function profiledNodes(decoder: Decoder): Promise<{ op: string; provider: string; types: string }[]> {
  const prefix = path.join(tempDir('arm-profile-'), 'run');
  const session = await openSession(path.join(decoder.info.cacheEntry, MODEL_FILE), {
    device: 'webgpu',
    profileFilePrefix: prefix,
  });
  try {
    const probe = await Decoder.load(STORIES, { cacheDir, device: 'webgpu', dtype: 'fp16', kvCache: 'host' });
    const holder = probe as unknown as { session: typeof session };
    const original = holder.session;
    holder.session = session;
    try {
      await probe.forward([[1, 2, 3], [4]]);
    } finally {
      holder.session = original;
      await probe.dispose();
    }
  } finally {
    session.endProfiling();
    await session.release();
  }
  const [file] = fs.readdirSync(path.dirname(prefix)).filter((f) => f.endsWith('.json'));
  const events = JSON.parse(fs.readFileSync(path.join(path.dirname(prefix), file!), 'utf8')) as {
    cat: string;
    name: string;
    args: { op_name?: string; provider?: string; input_type_shape?: Record<string, number[]>[] };
  }[];
  return events
    .filter((e) => e.cat === 'Node' && e.name.endsWith('_kernel_time'))
    .map((e) => ({
      op: e.args.op_name ?? '',
      provider: e.args.provider ?? '',
      types: (e.args.input_type_shape ?? []).flatMap((t) => Object.keys(t)).join(','),
    }));
}
