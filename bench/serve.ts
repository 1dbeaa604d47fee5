/**
 * Reward-server benchmark (`npm run bench:serve`): judge items per second through `arm serve` (a child process on
 * 127.0.0.1, load from autocannon, one /get_reward query and its prompt per request) over items per second of
 * in-process `ActivationRM.scoreExamples` on the same items, in the same run; latency p50/p99 at concurrency 1 and
 * 32; peak RSS of the server process. Every load phase is bounded in requests and in seconds.
 *
 *   npm run bench:serve [-- --model stories|qwen] [--items N] [--per-request k] [--max-seconds S]
 *
 * `stories` (default): ../shared/models/stories260K, where HTTP overhead dominates (a forward is ~1 ms);
 * `qwen`: the random Qwen2.5-0.5B-shaped checkpoint of bench/qwen-shape.ts, where the model dominates.
 * Last line: one JSON object {"serveOverOffline", "p50Ms", "p99Ms", "p50MsC1", "p99MsC1", "rssMiB", …}.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import autocannon from 'autocannon';
import { Decoder } from '../src/model/decoder.js';
import { fitActivationRM } from '../src/arm/fit.js';
import type { Example } from '../src/data/examples.js';
import { Rng } from '../src/util/rng.js';
import { ensureQwenShapeCheckpoint } from './qwen-shape.js';

const argv = process.argv.slice(2);
if (argv[0] === '--serve-child') {
  // The server process: `arm serve` exactly as the command runs it.
  const { main } = await import('../src/cli/main.js');
  await main(['node', 'arm', 'serve', ...argv.slice(1)]);
} else {
  await runBench();
}

function flag(name: string, fallback: string): string {
  const at = argv.indexOf(`--${name}`);
  return at >= 0 && argv[at + 1] !== undefined ? argv[at + 1]! : fallback;
}

async function runBench(): Promise<void> {
  const which = flag('model', 'stories');
  const model =
    which === 'qwen'
      ? ensureQwenShapeCheckpoint()
      : path.resolve(import.meta.dirname, '../../shared/models/stories260K');
  const nItems = Number(flag('items', which === 'qwen' ? '96' : '2000'));
  const perRequest = Number(flag('per-request', '1'));
  const maxSeconds = Number(flag('max-seconds', '120'));
  const workDir = fs.mkdtempSync(path.join(os.tmpdir(), 'arm-bench-serve-'));
  const cacheDir = process.env.ARM_CACHE_DIR ?? path.join(workDir, 'cache');
  const log = (s: string) => process.stderr.write(`${s}\n`);

  // Items: chat-templated queries and prompts as OpenRLHF sends them, prompts of 20–60 words, responses of 5–40.
  const rng = new Rng(7);
  const WORDS = 'the cat sat on a mat and looked at big red ball she said tree park'.split(' ');
  const text = (n: number) => Array.from({ length: n }, () => WORDS[rng.int(WORDS.length)]).join(' ');
  const items = Array.from({ length: nItems }, () => ({
    prompt: text(20 + rng.int(40)),
    response: text(5 + rng.int(35)),
  }));
  // The templated prompt the policy saw, and the query: that prompt followed by the response.
  const templatedPrompt = (i: number) => `<|im_start|>user\n${items[i]!.prompt}<|im_end|>\n<|im_start|>assistant\n`;
  const query = (i: number) => `${templatedPrompt(i)}${items[i]!.response}<|im_end|>`;

  // 1. A criterion (few passes, random heads: this measures scoring, not fitting) and the offline rate.
  const decoder = await Decoder.load(model, { cacheDir, quiet: true });
  const few: Example[] = Array.from({ length: 6 }, (_, i) => ({
    kind: 'pair',
    id: `f${i}`,
    line: i + 1,
    row: {},
    prompt: text(20),
    chosen: text(5),
    rejected: text(25),
  }));
  const rm = await fitActivationRM(decoder, few, {
    passes: 4,
    shots: 2,
    seed: 0,
    heads: `random:${Math.max(1, Math.round((decoder.spec.numLayers * decoder.spec.numHeads) / 20))}`,
    warn: () => {},
  });
  const criterion = path.join(workDir, 'bench.arm.safetensors');
  rm.save(criterion);
  // The server cuts each query after its prompt back into this prompt and response, so both score the same items.
  const examples: Example[] = items.map((it, i) => ({
    kind: 'scalar',
    id: `i${i}`,
    line: 0,
    row: {},
    prompt: it.prompt,
    response: it.response,
    label: null,
  }));
  await rm.scoreExamples(examples.slice(0, 8)); // warm
  const t0 = performance.now();
  await rm.scoreExamples(examples);
  const offlineS = (performance.now() - t0) / 1000;
  const offlineItemsPerS = nItems / offlineS;
  log(`offline: ${nItems} items in ${offlineS.toFixed(2)} s = ${offlineItemsPerS.toFixed(1)} items/s`);
  await decoder.dispose();

  // 2. The server in a child process.
  const child = spawn(
    process.execPath,
    [
      '--import',
      'tsx',
      import.meta.filename,
      '--serve-child',
      '--model',
      model,
      '--rm',
      `bench=${criterion}`,
      '--port',
      '0',
      '--max-batch',
      '32',
      '--max-wait-ms',
      '10',
      '--max-queue',
      '4096',
      '--quiet',
    ],
    { env: { ...process.env, ARM_CACHE_DIR: cacheDir }, stdio: ['ignore', 'ignore', 'pipe'] },
  );
  let stderr = '';
  const url = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`server not ready in 300 s:\n${stderr}`)), 300_000);
    child.stderr!.on('data', (b: Buffer) => {
      stderr += b.toString();
      const m = /listening on (http:\/\/127\.0\.0\.1:\d+)/.exec(stderr);
      if (m && stderr.includes('arm serve: ready')) {
        clearTimeout(timer);
        resolve(m[1]!);
      }
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`server exited (${code}):\n${stderr}`));
    });
  });
  log(`server: ${url} (pid ${child.pid})`);

  // 3. Load: each request carries `perRequest` queries taken in turn from the items, `amount` requests at most,
  // `maxSeconds` at most.
  const load = async (connections: number, amount: number) => {
    let next = 0;
    // `prompts` is required: the server cuts the response out of query[i] after prompts[i].
    const body = () => {
      const picked = Array.from({ length: perRequest }, () => next++ % nItems);
      return JSON.stringify({ query: picked.map(query), prompts: picked.map(templatedPrompt) });
    };
    // Without a callback autocannon returns the running instance, a promise of the result that can also stop().
    const instance = autocannon({
      url: `${url}/get_reward`,
      connections,
      amount,
      timeout: 180,
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      requests: [{ method: 'POST', path: '/get_reward', setupRequest: (req) => ({ ...req, body: body() }) }],
    }) as unknown as Promise<autocannon.Result> & { stop(): void };
    const stop = setTimeout(() => instance.stop(), maxSeconds * 1000);
    const result = await instance;
    clearTimeout(stop);
    const ok = result['2xx'];
    const bad = result.non2xx + result.errors + result.timeouts;
    if (bad)
      log(
        `warning: ${bad} requests failed (non-2xx ${result.non2xx}, errors ${result.errors}, timeouts ` +
          `${result.timeouts})`,
      );
    return {
      connections,
      requests: ok,
      failed: bad,
      seconds: result.duration,
      itemsPerS: (ok * perRequest) / result.duration,
      p50Ms: result.latency.p50,
      p99Ms: result.latency.p99,
    };
  };
  const c1 = await load(1, Math.min(Math.ceil(nItems / perRequest / 4), 500));
  log(
    `concurrency 1: ${c1.requests} requests in ${c1.seconds.toFixed(2)} s, ${c1.itemsPerS.toFixed(1)} items/s, p50 ` +
      `${c1.p50Ms} ms, p99 ${c1.p99Ms} ms`,
  );
  const c32 = await load(32, Math.ceil(nItems / perRequest));
  log(
    `concurrency 32: ${c32.requests} requests in ${c32.seconds.toFixed(2)} s, ${c32.itemsPerS.toFixed(1)} items/s, ` +
      `p50 ${c32.p50Ms} ms, p99 ${c32.p99Ms} ms`,
  );

  // 4. Peak RSS of the server process (Linux: VmHWM), then a graceful stop.
  const status = fs.readFileSync(`/proc/${child.pid}/status`, 'utf8');
  const rssMiB = Math.round(Number(/VmHWM:\s+(\d+) kB/.exec(status)?.[1] ?? NaN) / 1024);
  const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));
  child.kill('SIGTERM');
  const exitCode = await exited;
  fs.rmSync(workDir, { recursive: true, force: true });

  const out = {
    model: which,
    items: nItems,
    perRequest,
    cores: os.availableParallelism(),
    offlineItemsPerS: round(offlineItemsPerS),
    serveItemsPerS: round(c32.itemsPerS),
    serveOverOffline: round(c32.itemsPerS / offlineItemsPerS, 3),
    serveItemsPerSC1: round(c1.itemsPerS),
    p50Ms: c32.p50Ms,
    p99Ms: c32.p99Ms,
    p50MsC1: c1.p50Ms,
    p99MsC1: c1.p99Ms,
    failed: c1.failed + c32.failed,
    rssMiB,
    serverExit: exitCode,
  };
  console.log(JSON.stringify(out));
}

function round(x: number, digits = 1): number {
  return Number(x.toFixed(digits));
}
