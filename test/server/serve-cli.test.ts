/**
 * `arm serve` as users run it: a child process on a loopback port with the model in its scoring thread, started as
 * `node bin/arm.js serve` starts it (the command in the process that gets the signals; from source here). Equality
 * with the `arm score` command, the API key, SIGTERM with requests in flight (drained, exit 0), while the model
 * loads (exit 0, said), twice (130), and through npm's shell, which does not pass SIGTERM on (the server stops once
 * the shell is gone).
 */
import { afterAll, beforeAll, expect, it } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { Decoder } from '../../src/model/decoder.js';
import { readExamples } from '../../src/data/examples.js';
import { fitActivationRM } from '../../src/arm/fit.js';
import { arm, serveReady } from '../helpers/cli.js';
import { STORIES, tempDir } from '../helpers/fixtures.js';

const EXAMPLES = path.resolve(import.meta.dirname, '../../examples/concise');
const ARM_CLI = path.resolve(import.meta.dirname, '../helpers/arm-cli.ts');
const dir = tempDir('arm-serve-');
const criterionFile = path.join(dir, 'concise.arm.safetensors');
const keyFile = path.join(dir, 'key.txt');
const KEY = 'test-key-0123456789';
const auth = { authorization: `Bearer ${KEY}` };

let child: ChildProcess;
let url: string;
let stderr = '';
let exited: Promise<{ code: number | null; signal: string | null }>;

beforeAll(async () => {
  const decoder = await Decoder.load(STORIES, { cacheDir: tempDir('arm-cache-') });
  try {
    const rm = await fitActivationRM(decoder, readExamples(path.join(EXAMPLES, 'few.jsonl')).examples, {
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
  const started = await serve([
    '--api-key-file',
    keyFile,
    '--max-batch',
    '1000',
    '--max-wait-ms',
    '300',
    '--split-without-prompts',
    'last-assistant-turn',
  ]);
  ({ child, url, exited } = started);
  stderr = started.stderr();
});
const children: ChildProcess[] = [];
afterAll(() => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
});

/**
 * `arm serve` in a child process on a free loopback port; resolves once it is ready. `viaNpmShell`: started the way
 * npm starts it (`npx arm serve`, `npm run`): a child of `sh -c` with npm's variables, the shell being what npm
 * sends its signals to.
 */
async function serve(
  args: string[],
  { viaNpmShell = false } = {},
): Promise<{
  child: ChildProcess;
  url: string;
  exited: Promise<{ code: number | null; signal: string | null }>;
  stderr: () => string;
}> {
  const command = [
    process.execPath,
    '--import',
    'tsx',
    ARM_CLI,
    'serve',
    '--model',
    STORIES,
    '--rm',
    `concise=${criterionFile}`,
    '--port',
    '0',
    '--quiet',
    ...args,
  ];
  const env = { ...process.env, ARM_CACHE_DIR: tempDir('arm-cache-') };
  const c = viaNpmShell
    ? // A command after it, so that no shell replaces itself with node (dash never does; bash would).
      spawn('/bin/sh', ['-c', '"$@"; exit $?', 'sh', ...command], {
        env: { ...env, npm_command: 'exec', npm_lifecycle_event: 'npx' },
        stdio: ['ignore', 'ignore', 'pipe'],
      })
    : spawn(command[0]!, command.slice(1), { env, stdio: ['ignore', 'ignore', 'pipe'] });
  children.push(c);
  let err = '';
  c.stderr!.on('data', (b: Buffer) => {
    err += b.toString();
    if (c === child) stderr = err;
  });
  // 'close', not 'exit': stderr is read to its end by then.
  const done = new Promise<{ code: number | null; signal: string | null }>((resolve) =>
    c.once('close', (code, signal) => resolve({ code, signal })),
  );
  const at = await serveReady(c, () => err);
  return { child: c, url: at, exited: done, stderr: () => err };
}

async function post(route: string, body: unknown, headers: Record<string, string> = auth) {
  const res = await fetch(url + route, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(30_000),
  });
  return { status: res.status, body: (await res.json()) as any };
}

it('binds 127.0.0.1; every endpoint but /health needs the key', async () => {
  expect(url).toMatch(/^http:\/\/127\.0\.0\.1:/);
  expect((await fetch(`${url}/health`)).status).toBe(200);
  expect((await fetch(`${url}/ready`)).status).toBe(401);
  expect((await fetch(`${url}/ready`, { headers: auth })).status).toBe(200);
  expect((await post('/v1/score', { items: [{ prompt: 'p', response: 'r' }] }, {})).status).toBe(401);
});

it('/v1/score answers bitwise what `arm score` writes for the same rows (worker thread vs the command)', async () => {
  for (const kind of ['pair', 'scalar'] as const) {
    const rows = readExamples(path.join(EXAMPLES, 'items.jsonl'), { labelsOptional: true }).examples.filter(
      (e) => e.kind === kind,
    );
    const input = path.join(dir, `${kind}.jsonl`),
      output = path.join(dir, `${kind}.scored.jsonl`);
    fs.writeFileSync(input, rows.map((e) => JSON.stringify(e.row)).join('\n') + '\n');
    arm(['score', '--model', STORIES, '--rm', criterionFile, '--input', input, '--output', output, '--quiet']);
    // That call held this thread (seconds, more on a loaded machine): let fetch's pool see the kept-alive sockets the
    // server closed meanwhile (its keep-alive timeout is 10 s) before it reuses one ("other side closed").
    await new Promise((r) => setTimeout(r, 100));
    const written = fs
      .readFileSync(output, 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l).arm);
    const body =
      kind === 'pair'
        ? { pairs: rows.map((e) => e.kind === 'pair' && { prompt: e.prompt, chosen: e.chosen, rejected: e.rejected }) }
        : { items: rows.map((e) => e.kind === 'scalar' && { prompt: e.prompt, response: e.response }) };
    const served = await post('/v1/score', body);
    expect(served.status).toBe(200);
    expect(served.body.results).toEqual(written);
  }
});

it('SIGTERM with requests queued and in flight: every one answered, then exit 0', async () => {
  const queries = Array.from(
    { length: 24 },
    (_, i) => `<|im_start|>user\nQuestion ${i}?<|im_end|>\n<|im_start|>assistant\nAnswer ${i}.<|im_end|>`,
  );
  const inFlight = queries.map((q) => post('/get_reward', { query: [q] }));
  // The batch timer is 300 ms: wait until the server holds them all, then stop it.
  for (let i = 0; i < 300; i++) {
    const m = await fetch(`${url}/metrics`, { headers: auth }).then((r) => r.text());
    if (/^arm_queue_items 24$/m.test(m)) break;
    await new Promise((r) => setTimeout(r, 10));
  }
  child.kill('SIGTERM');
  const answers = await Promise.all(inFlight);
  for (const a of answers) {
    expect(a.status).toBe(200);
    expect(a.body.rewards[0]).toBeGreaterThan(0);
  }
  expect(await Promise.race([exited, new Promise((r) => setTimeout(() => r('timeout'), 20_000))])).toEqual({
    code: 0,
    signal: null,
  });
  expect(stderr).toMatch(/SIGTERM: no new requests \(draining: .*\); finishing 24 queued items/);
  expect(stderr).toContain('drained, exiting');
  await expect(fetch(`${url}/health`)).rejects.toThrow(); // nothing listens any more
});

/** Resolves with `p`, or with 'timeout' after `ms`. */
function within<T>(p: Promise<T>, ms: number): Promise<T | 'timeout'> {
  return Promise.race([p, new Promise<'timeout'>((r) => setTimeout(() => r('timeout'), ms))]);
}

it(
  'after SIGTERM, while it drains, /ready answers 503 draining, /health 200, a new scoring request 503; a second ' +
    'SIGTERM while a forward runs exits 130 once it returns, never aborting (onnxruntime cannot be stopped mid-run)',
  async () => {
    // 800 rows wait in the queue (the batch timer is 10 minutes) until the first SIGTERM starts their forward, one of
    // 800 rows (--batch-size 1000), which runs for seconds on this model, even on a quiet fast machine: the probes
    // and the second signal land inside it.
    const s = await serve(['--max-batch', '1000', '--batch-size', '1000', '--max-wait-ms', '600000']);
    const prompt = (i: number) =>
      `<|im_start|>user\nQuestion ${i} about a long story?<|im_end|>\n<|im_start|>assistant\n`;
    const query = Array.from(
      { length: 800 },
      (_, i) => `${prompt(i)}${'Once upon a time there was a little boat. '.repeat(6)}<|im_end|>`,
    );
    const request = fetch(`${s.url}/get_reward`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ query, prompts: query.map((_, i) => prompt(i)) }),
      signal: AbortSignal.timeout(120_000),
    }).catch((e: Error) => e);
    const queued = async () => /^arm_queue_items 800$/m.test(await fetch(`${s.url}/metrics`).then((r) => r.text()));
    for (let i = 0; i < 600 && !(await queued()); i++) await new Promise((r) => setTimeout(r, 50));
    expect(await queued()).toBe(true);
    s.child.kill('SIGTERM');
    let ready = await fetch(`${s.url}/ready`);
    for (let i = 0; i < 200 && ready.status === 200; i++) {
      await new Promise((r) => setTimeout(r, 20));
      ready = await fetch(`${s.url}/ready`);
    }
    expect([ready.status, await ready.json()]).toEqual([503, { status: 'draining' }]);
    expect((await fetch(`${s.url}/health`)).status).toBe(200);
    const refused = await fetch(`${s.url}/get_reward`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ query: [query[0]], prompts: [prompt(0)] }),
    });
    expect([refused.status, refused.headers.get('retry-after')]).toEqual([503, null]);
    expect(((await refused.json()) as { error: string }).error).toMatch(/^the server is shutting down/);
    s.child.kill('SIGTERM');
    expect(await within(s.exited, 60_000)).toEqual({ code: 130, signal: null });
    expect(s.stderr()).not.toMatch(/terminate called|Napi::Error/);
    expect(s.stderr()).toMatch(/SIGTERM: no new requests \(draining/);
    expect(s.stderr()).toMatch(/SIGTERM again/);
    await request; // answered if its batch finished with that forward, else cut: either way settled, not hung
  },
);

it('SIGTERM while the model loads (here: waiting on a hub that never answers): says so, exits 0', async () => {
  // Accepts connections and never answers: the load waits on it until the signal (its idle timeout is 30 s).
  const sockets: net.Socket[] = [];
  let connected!: () => void;
  const loadWaits = new Promise<void>((resolve) => (connected = resolve));
  const hub = net.createServer((socket) => {
    sockets.push(socket);
    connected();
  });
  await new Promise<void>((resolve) => hub.listen(0, '127.0.0.1', resolve));
  try {
    const c = spawn(
      process.execPath,
      ['--import', 'tsx', ARM_CLI, 'serve', '--model', 'stand-in/never-answers', '--rm', criterionFile, '--quiet'],
      {
        env: {
          ...process.env,
          ARM_CACHE_DIR: tempDir('arm-cache-'),
          HF_HUB_CACHE: tempDir('arm-hub-'),
          HF_ENDPOINT: `http://127.0.0.1:${(hub.address() as net.AddressInfo).port}`,
          HF_HUB_OFFLINE: '',
          HF_TOKEN: '',
        },
        stdio: ['ignore', 'ignore', 'pipe'],
      },
    );
    children.push(c);
    let err = '';
    c.stderr!.on('data', (b: Buffer) => (err += b.toString()));
    const exited = new Promise<{ code: number | null; signal: string | null }>((resolve) =>
      c.once('close', (code, signal) => resolve({ code, signal })),
    );
    expect(await within(Promise.race([loadWaits, exited]), 60_000), err).toBeUndefined();
    c.kill('SIGTERM');
    expect(await within(exited, 30_000), err).toEqual({ code: 0, signal: null });
    expect(err).toContain('arm serve: SIGTERM while loading the model: stopping without serving');
    expect(err).toContain('arm serve: stopped before serving, exiting');
    expect(err).not.toMatch(/listening on|terminate called/);
  } finally {
    for (const socket of sockets) socket.destroy();
    hub.close();
  }
});

it(
  'started through npm (npx arm serve): SIGTERM reaches only its shell, which dies without passing it on; the ' +
    'server notices the shell is gone, drains, exits and frees its port',
  async () => {
    const s = await serve([], { viaNpmShell: true });
    s.child.kill('SIGTERM'); // what npm does with a SIGTERM it gets
    // The shell's end; 'close' comes once the server, which holds the same stderr pipe, has exited too.
    expect(await within(s.exited, 60_000), s.stderr()).toEqual({ code: null, signal: 'SIGTERM' });
    expect(s.stderr()).toMatch(/the npm process that started this server is gone/);
    expect(s.stderr()).toContain('arm serve: drained, exiting');
    await expect(fetch(`${s.url}/health`)).rejects.toThrow();
  },
);

it('--image-root must be an existing folder', () => {
  const r = arm(
    [
      'serve',
      '--model',
      STORIES,
      '--rm',
      `concise=${criterionFile}`,
      '--image-root',
      path.join(dir, 'no-such-folder'),
      '--port',
      '0',
    ],
    { expectFail: true },
  );
  expect(r.status).not.toBe(0);
  expect(r.stderr).toMatch(/--image-root .*no-such-folder: no such folder/);
});
