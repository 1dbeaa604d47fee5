/** Hub ids: the real download path against a local HTTP stand-in for the hub, and the offline failure. */
import { afterAll, beforeAll, expect, it } from 'vitest';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import type { AddressInfo } from 'node:net';
import { resolveModelDir } from '../../src/model/hub.js';
import { Decoder } from '../../src/model/decoder.js';
import { STORIES, tempDir } from '../helpers/fixtures.js';

let server: http.Server;
let endpoint: string;
const requests: string[] = [];

beforeAll(async () => {
  server = http.createServer((req, res) => {
    requests.push(req.url!);
    const m = /^\/tiny\/stories\/resolve\/main\/([\w.-]+)$/.exec(req.url!);
    const file = m ? path.join(STORIES, m[1]!) : null;
    if (!file || !fs.existsSync(file)) { res.writeHead(404).end('not found'); return; }
    res.writeHead(200, { 'content-length': fs.statSync(file).size });
    fs.createReadStream(file).pipe(res);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  endpoint = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});
afterAll(() => new Promise<void>((r) => server.close(() => r())));

function withEnv<T>(vars: Record<string, string>, f: () => Promise<T>): Promise<T> {
  const old = Object.fromEntries(Object.keys(vars).map((k) => [k, process.env[k]]));
  Object.assign(process.env, vars);
  return f().finally(() => { for (const [k, v] of Object.entries(old)) if (v === undefined) delete process.env[k]; else process.env[k] = v; });
}

it('downloads a hub id into the cache once, then loads it like a local folder', async () => {
  const cacheDir = tempDir('arm-cache-');
  const dir = await withEnv({ HF_ENDPOINT: endpoint }, () => resolveModelDir('tiny/stories', { cacheDir, quiet: true }));
  for (const f of ['config.json', 'tokenizer.json', 'tokenizer_config.json', 'model.safetensors', '.complete']) expect(fs.existsSync(path.join(dir, f))).toBe(true);
  expect(fs.readFileSync(path.join(dir, 'model.safetensors')).equals(fs.readFileSync(path.join(STORIES, 'model.safetensors')))).toBe(true);
  const before = requests.length;
  expect(await withEnv({ HF_ENDPOINT: endpoint }, () => resolveModelDir('tiny/stories', { cacheDir, quiet: true }))).toBe(dir);
  expect(requests.length).toBe(before);
  const decoder = await Decoder.load('tiny/stories', { cacheDir, quiet: true });
  try {
    const ids = decoder.tokenizer.encode('Once upon a time');
    const golden = JSON.parse(fs.readFileSync(path.join(STORIES, 'golden.json'), 'utf8')).prompts[1];
    expect(await decoder.generate(ids, { maxNewTokens: 16, stopTokens: [] })).toEqual(golden.continuation_ids.slice(0, 16));
  } finally {
    await decoder.dispose();
  }
});

it('a missing repository file is a clear error', async () => {
  await expect(withEnv({ HF_ENDPOINT: endpoint }, () => resolveModelDir('tiny/absent', { cacheDir: tempDir(), quiet: true })))
    .rejects.toThrow(/tiny\/absent@main: config\.json not found on the hub/);
});

it('offline: fails fast with a clear message instead of hanging', async () => {
  const started = Date.now();
  await expect(withEnv({ HF_ENDPOINT: 'http://127.0.0.1:9' }, () => resolveModelDir('Qwen/Qwen2.5-0.5B-Instruct', { cacheDir: tempDir(), quiet: true, connectTimeoutMs: 3000 })))
    .rejects.toThrow(/Qwen\/Qwen2\.5-0\.5B-Instruct: cannot reach http:\/\/127\.0\.0\.1:9 .*offline\? pass a local checkpoint folder with --model/);
  expect(Date.now() - started).toBeLessThan(5000);
});

it('HF_HUB_OFFLINE=1 refuses without touching the network', async () => {
  await expect(withEnv({ HF_HUB_OFFLINE: '1' }, () => resolveModelDir('Qwen/Qwen2.5-0.5B-Instruct', { cacheDir: tempDir(), quiet: true })))
    .rejects.toThrow(/not in the cache .* HF_HUB_OFFLINE=1/);
});
