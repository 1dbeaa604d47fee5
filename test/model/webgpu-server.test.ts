/**
 * The reward server with its model on `--device webgpu` (the worker thread `arm serve` runs, load option `device`):
 * /get_reward answers what the CPU computes for the same criterion, within float tolerance. Skipped, with the reason
 * in its name, where Dawn finds no adapter (webgpu.test.ts).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import fs from 'node:fs';
import path from 'node:path';
import { Decoder } from '../../src/model/decoder.js';
import { deviceProblem } from '../../src/model/session.js';
import { readExamples } from '../../src/data/examples.js';
import { fitActivationRM } from '../../src/arm/fit.js';
import type { ActivationRM } from '../../src/arm/rm.js';
import { createRewardServer, type RewardServer } from '../../src/server/app.js';
import { InProcessEngine, WorkerEngine } from '../../src/server/engine.js';
import { STORIES, tempDir } from '../helpers/fixtures.js';

const EXAMPLES = path.resolve(import.meta.dirname, '../../examples/concise');
const problem = await deviceProblem('webgpu');
const suite = problem === null ? 'webgpu: reward server' : `webgpu SKIPPED, no adapter: ${problem.slice(0, 300)}`;
if (problem !== null) console.warn(`note: ${suite}`);
const QUERIES = [
  '<|im_start|>user\nName a colour.<|im_end|>\n<|im_start|>assistant\nBlue.<|im_end|>',
  '<|im_start|>user\nTell me a story.<|im_end|>\n<|im_start|>assistant\nOnce upon a time there was a boat.<|im_end|>',
];

describe.skipIf(problem !== null)(suite, () => {
  const cacheDir = tempDir('arm-cache-');
  const file = path.join(tempDir(), 'concise.arm.safetensors');
  const servers: RewardServer[] = [];
  let cpu: Decoder;
  let rm: ActivationRM;
  beforeAll(async () => {
    cpu = await Decoder.load(STORIES, { cacheDir, threads: 1 });
    const few = readExamples(path.join(EXAMPLES, 'few.jsonl')).examples;
    rm = await fitActivationRM(cpu, few, {
      passes: 8,
      shots: 2,
      reinforce: { steps: 10, samples: 8, readoutMasks: 3, readoutItems: 4 },
    });
    rm.save(file);
  }, 120_000);
  afterAll(async () => {
    await Promise.all(servers.map((s) => s.close()));
    await cpu?.dispose();
  });

  async function rewards(device: 'webgpu' | 'cpu'): Promise<number[]> {
    const criteria = [{ name: 'concise', file }];
    // fp32 as the CPU (a GPU's default is fp16)
    const load = { cacheDir, device, dtype: 'fp32' as const };
    const engine =
      device === 'webgpu'
        ? await WorkerEngine.start({ model: STORIES, load, criteria })
        : new InProcessEngine(cpu, [{ name: 'concise', file, rm }]);
    const server = await createRewardServer({ engine, splitWithoutPrompts: 'last-assistant-turn' });
    servers.push(server);
    const url = await server.listen({ host: '127.0.0.1', port: 0 });
    const res = await fetch(`${url}/get_reward`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ query: QUERIES }),
      signal: AbortSignal.timeout(120_000),
    });
    expect(res.status).toBe(200);
    return ((await res.json()) as { rewards: number[] }).rewards;
  }

  it('/get_reward on webgpu equals the CPU within 1e-4 relative', async () => {
    const [gpu, host] = [await rewards('webgpu'), await rewards('cpu')];
    expect(gpu).toHaveLength(QUERIES.length);
    // The worker built and ran the GPU graph entry beside the CPU's (session.ts attentionLayout).
    expect(fs.readdirSync(path.join(cacheDir, 'graphs'))).toHaveLength(2);
    gpu.forEach((r, i) => expect(Math.abs(r - host[i]!)).toBeLessThanOrEqual(1e-4 * Math.max(1, Math.abs(host[i]!))));
  }, 120_000);
});
