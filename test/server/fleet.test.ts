/**
 * Reward servers as a fleet: three `arm serve` replicas (child processes on loopback ports, one model and criterion)
 * driven the way OpenRLHF's remote reward client drives comma-separated `--remote_rm_url`s: the batch cut into one
 * contiguous chunk per URL (ceil(n / urls) rows each), every chunk posted at once to /get_reward with a 180 s
 * timeout and up to 5 tries 1 s apart, each on its own URL. Rewards equal what one server gives for the whole batch
 * (to float32 noise: a server micro-batches what arrives together, and padding in another batch moves a reward by
 * about 1e-6 of itself).
 * A replica killed mid-step: with failover (a retry goes to the next URL, as examples/arm_client.py and a Kubernetes
 * Service do) the step completes on the others with the same rewards; without it (OpenRLHF as it is) the dead URL's
 * chunk fails all 5 tries and the step raises about 5 s later. Then examples/arm_client.py (its TRL and verl
 * functions too) against the same replicas, when python3 is there.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { Decoder } from '../../src/model/decoder.js';
import { readExamples } from '../../src/data/examples.js';
import { fitActivationRM } from '../../src/arm/fit.js';
import { STORIES, tempDir } from '../helpers/fixtures.js';
import { serveReady } from '../helpers/cli.js';

const ARM_CLI = path.resolve(import.meta.dirname, '../helpers/arm-cli.ts');
const EXAMPLES = path.resolve(import.meta.dirname, '../../examples');
const dir = tempDir('arm-fleet-');
const criterionFile = path.join(dir, 'concise.arm.safetensors');
const keyFile = path.join(dir, 'key.txt');
const KEY = 'fleet-key-0123456789';
const headers = { 'content-type': 'application/json', authorization: `Bearer ${KEY}` };
// One graph cache for the fit and the three replicas: the model's graph is built once.
const cacheDir = tempDir('arm-cache-');
const python = spawnSync('python3', ['--version']).status === 0;

/** Chat-templated rows as OpenRLHF sends them: the templated prompt, and query = prompt + response. */
const rows = Array.from({ length: 14 }, (_, i) => {
  const prompt = `<|im_start|>user\nQuestion ${i}: what is ${i} plus ${i}?<|im_end|>\n<|im_start|>assistant\n`;
  const response = i % 2 ? `${2 * i}.` : `Let me think about ${i} plus ${i} at some length: it is ${2 * i}.`;
  return { prompt, response, query: `${prompt}${response}<|im_end|>` };
});

interface Replica {
  child: ChildProcess;
  url: string;
  stderr: () => string;
}
const replicas: Replica[] = [];
let reference: number[];

/** `arm serve` in a child process on a free loopback port; resolves once it says it is ready. */
async function startReplica(): Promise<Replica> {
  const args = ['--import', 'tsx', ARM_CLI, 'serve', '--model', STORIES, '--rm', `concise=${criterionFile}`];
  // A 300 ms batch wait keeps each request queued in the server long enough for a kill to land while it waits.
  args.push('--port', '0', '--api-key-file', keyFile, '--max-wait-ms', '300');
  const child = spawn(process.execPath, args, {
    env: { ...process.env, ARM_CACHE_DIR: cacheDir },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let err = '';
  child.stderr!.on('data', (b: Buffer) => {
    err += b.toString();
  });
  const url = await serveReady(child, () => err, 90_000);
  return { child, url, stderr: () => err };
}

beforeAll(async () => {
  const decoder = await Decoder.load(STORIES, { cacheDir });
  try {
    const few = readExamples(path.join(EXAMPLES, 'concise', 'few.jsonl')).examples;
    const rm = await fitActivationRM(decoder, few, {
      passes: 8,
      shots: 2,
      seed: 4,
      reinforce: { steps: 10, samples: 8, readoutMasks: 3, readoutItems: 4 },
    });
    rm.save(criterionFile);
  } finally {
    await decoder.dispose();
  }
  fs.writeFileSync(keyFile, `${KEY}\n`);
  // The graph the fit built is in the shared cache: the three load it at once.
  replicas.push(...(await Promise.all([startReplica(), startReplica(), startReplica()])));
  // What one server says for the whole batch in one request: the rewards every split must reproduce.
  reference = (await getReward(replicas[0]!.url, rows)).rewards;
  // Any two rows' rewards differ by far more than the tolerance, so a reward sent back for the wrong row shows.
  for (const [i, a] of reference.entries())
    for (const b of reference.slice(i + 1)) expect(Math.abs(a - b) / Math.max(a, b)).toBeGreaterThan(10 * TOLERANCE);
});

/** Relative difference allowed between two scorings of one row in different batches (float32 padding effects). */
const TOLERANCE = 2e-5;

/** `actual` is `expected` row for row, to TOLERANCE. */
function expectSameRewards(actual: (number | null)[], expected: number[]): void {
  expect(actual).toHaveLength(expected.length);
  for (const [i, e] of expected.entries()) {
    expect(actual[i], `row ${i}`).toBeTypeOf('number');
    expect(Math.abs(actual[i]! - e) / e, `row ${i}: ${actual[i]} vs ${e}`).toBeLessThanOrEqual(TOLERANCE);
  }
}
afterAll(() => {
  for (const r of replicas) if (r.child.exitCode === null && r.child.signalCode === null) r.child.kill('SIGKILL');
});

async function getReward(url: string, batch: typeof rows): Promise<{ rewards: number[] }> {
  const res = await fetch(`${url}/get_reward`, {
    method: 'POST',
    headers,
    body: JSON.stringify({ query: batch.map((r) => r.query), prompts: batch.map((r) => r.prompt) }),
    signal: AbortSignal.timeout(180_000),
  });
  if (!res.ok) throw new Error(`${url} answered ${res.status}: ${await res.text()}`);
  const body = (await res.json()) as { rewards?: number[] };
  if (!Array.isArray(body.rewards)) throw new Error(`${url}: no rewards in ${JSON.stringify(body)}`);
  return { rewards: body.rewards };
}

interface Try {
  chunk: number;
  url: string;
  ok: boolean;
}

/**
 * One reward step as OpenRLHF's remote client takes it: ceil(n / urls) contiguous rows per URL, all chunks at once,
 * each tried up to 5 times with a 180 s timeout and a 1 s pause after a failure. Its retries stay on the chunk's
 * URL; `failover` sends try t to URL (chunk + t) mod n instead. Every try is logged in `tries`.
 */
async function openRlhfStep(urls: string[], batch: typeof rows, tries: Try[], failover = false): Promise<number[]> {
  const size = Math.ceil(batch.length / urls.length);
  const chunkRewards = await Promise.all(
    urls.map(async (_, chunk) => {
      const rowsOf = batch.slice(chunk * size, (chunk + 1) * size);
      for (let t = 0; t < 5; t++) {
        const url = urls[failover ? (chunk + t) % urls.length : chunk]!;
        try {
          const { rewards } = await getReward(url, rowsOf);
          tries.push({ chunk, url, ok: true });
          return rewards;
        } catch {
          tries.push({ chunk, url, ok: false });
        }
        await new Promise((resolve) => setTimeout(resolve, 1000));
      }
      throw new Error(`chunk ${chunk}: 5 tries failed; the step fails`);
    }),
  );
  return chunkRewards.flat();
}

describe('three replicas', () => {
  it("OpenRLHF's split: every reward equals one server's for the whole batch, whatever the chunking", async () => {
    const urls = replicas.map((r) => r.url);
    for (const batch of [rows, rows.slice(0, 7), rows.slice(0, 1)]) {
      const tries: Try[] = [];
      // One row over three URLs is OpenRLHF's per-sample case: the other two URLs get empty chunks, answered [].
      expectSameRewards(await openRlhfStep(urls, batch, tries), reference.slice(0, batch.length));
      expect(tries.map((t) => `${t.chunk} ${t.url} ${t.ok}`)).toEqual(
        expect.arrayContaining(urls.map((url, chunk) => `${chunk} ${url} true`)),
      );
      expect(tries).toHaveLength(3);
    }
  });

  it('a replica killed mid-step: with failover the retry lands on another and the step completes', async () => {
    const urls = replicas.map((r) => r.url);
    const tries: Try[] = [];
    const step = openRlhfStep(urls, rows, tries, true);
    // Killed once its chunk is queued (held for the batch wait): the request dies in flight, unanswered.
    for (const end = Date.now() + 20_000; ;) {
      const metrics = await fetch(`${urls[2]}/metrics`, { headers }).then((r) => r.text());
      if (/^arm_queue_items [1-9]/m.test(metrics)) break;
      if (Date.now() > end) throw new Error('chunk 2 never reached replica 2');
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
    replicas[2]!.child.kill('SIGKILL');
    const started = Date.now();
    expectSameRewards(await step, reference);
    expect(Date.now() - started).toBeLessThan(10_000);
    expect(tries.filter((t) => t.chunk === 2).map((t) => [t.url, t.ok])).toEqual([
      [urls[2], false],
      [urls[0], true],
    ]);
    for (const r of replicas.slice(0, 2))
      expect((await fetch(`${r.url}/ready`, { headers, signal: AbortSignal.timeout(10_000) })).status).toBe(200);
  });

  it("without failover (OpenRLHF's own retries, on the same URL) the dead replica's chunk fails the step", async () => {
    const urls = replicas.map((r) => r.url);
    const tries: Try[] = [];
    const started = Date.now();
    await expect(openRlhfStep(urls, rows, tries)).rejects.toThrow('chunk 2: 5 tries failed; the step fails');
    // 5 tries 1 s apart: the trainer's step raises ~5 s after the replica died, while the other chunks succeeded.
    expect(Date.now() - started).toBeGreaterThan(4500);
    expect(tries.filter((t) => t.chunk === 2)).toEqual(Array(5).fill({ chunk: 2, url: urls[2], ok: false }));
    expect(tries.filter((t) => t.chunk !== 2).every((t) => t.ok)).toBe(true);
  });
});

describe('examples/arm_client.py', () => {
  it.skipIf(!python)(
    'scores through live replicas, failing over from a dead one (needs python3, skipped without)',
    async () => {
      const [dead, ...live] = [replicas[2]!.url, replicas[0]!.url, replicas[1]!.url];
      const res = await fetch(`${live[0]}/v1/score`, {
        method: 'POST',
        headers,
        body: JSON.stringify({ items: rows.map((r) => ({ prompt: promptText(r.prompt), response: r.response })) }),
      });
      const scored = ((await res.json()) as { results: { reward: number }[] }).results.map((r) => r.reward);
      const script = `
import json, sys
from arm_client import ArmClient, ArmError, trl_reward, compute_score, compute_score_batch
cfg = json.load(sys.stdin)
client = ArmClient(",".join(cfg["urls"]), api_key=cfg["key"], timeout=30, retries=3, backoff=0.05, batch_size=4)
out = {"score": client.score(cfg["prompts"], cfg["responses"])}
out["get_reward"] = client.get_reward(cfg["queries"], cfg["templated"])["rewards"]
out["trl"] = trl_reward(cfg["prompts"], [[{"role": "assistant", "content": r}] for r in cfg["responses"]])
out["verl"] = compute_score("d", cfg["responses"][0], None, {"prompt": cfg["prompts"][0]})
out["verl_batch"] = compute_score_batch(["d"] * len(cfg["prompts"]), cfg["responses"], [None] * len(cfg["prompts"]),
                                        [{"question": p} for p in cfg["prompts"]])
try:
    ArmClient(cfg["urls"][1], api_key="wrong", retries=3).score(cfg["prompts"][:1], cfg["responses"][:1])
except ArmError as e:
    out["wrong_key"] = str(e)
print(json.dumps(out))
`;
      const input = {
        urls: [dead, ...live],
        key: KEY,
        prompts: rows.map((r) => promptText(r.prompt)),
        responses: rows.map((r) => r.response),
        queries: rows.map((r) => r.query),
        templated: rows.map((r) => r.prompt),
      };
      const env = {
        ...process.env,
        PYTHONPATH: EXAMPLES,
        ARM_URLS: [dead, ...live].join(','),
        ARM_API_KEY: KEY,
        ARM_BACKOFF: '0.05',
        ARM_BATCH_SIZE: '4',
      };
      const run = spawnSync('python3', ['-c', script], { input: JSON.stringify(input), env, encoding: 'utf8' });
      expect(run.status, run.stderr).toBe(0);
      const out = JSON.parse(run.stdout);
      for (const got of [out.score, out.trl, out.verl_batch]) expectSameRewards(got, scored);
      expectSameRewards([out.verl], scored.slice(0, 1));
      expectSameRewards(out.get_reward, reference);
      expect(out.wrong_key).toMatch(/answered 401/);
    },
  );
});

/** The user's question of a ChatML prompt, as /v1/score takes a prompt. */
function promptText(templated: string): string {
  return /<\|im_start\|>user\n([\s\S]*?)<\|im_end\|>/.exec(templated)![1]!;
}
