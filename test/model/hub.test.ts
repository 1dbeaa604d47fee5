/**
 * Hub ids: the real download path against a loopback stand-in for the hub (slow, redirected, cut, stalled,
 * failing and lying servers), resume and verification, path safety of ids/revisions/weight maps, offline modes,
 * two processes on one cache, a branch that moves between runs.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn, spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { downloadRepoFile, resolveModelDir, type ResolveOptions } from '../../src/model/checkpoint/hub.js';
import { parseHubDatasetRef, resolveHubDataset } from '../../src/data/hub-dataset.js';
import { Decoder } from '../../src/model/decoder.js';
import { STORIES, tempDir } from '../helpers/fixtures.js';
import { startHubStandin, type HubStandin } from '../helpers/hub-standin.js';

let hub: HubStandin;
let sharded: string;
const MODEL = 'model.safetensors';
const modelBytes = fs.readFileSync(path.join(STORIES, MODEL));
const modelSha = createHash('sha256').update(modelBytes).digest('hex');
/** Short timeouts and backoff so every retry path runs in well under a second. */
const FAST: ResolveOptions = { quiet: true, connectTimeoutMs: 1000, idleTimeoutMs: 1000, retryDelayMs: 20 };

/** A repository folder holding the stories tokenizer/config and the given extra files. */
function repoFolder(extra: Record<string, string | Buffer>): string {
  const dir = tempDir('arm-repo-');
  for (const f of ['config.json', 'tokenizer.json']) fs.copyFileSync(path.join(STORIES, f), path.join(dir, f));
  for (const [f, content] of Object.entries(extra)) fs.writeFileSync(path.join(dir, f), content);
  return dir;
}
const indexJson = (weightMap: Record<string, string>) => JSON.stringify({ metadata: {}, weight_map: weightMap });

/** A dataset repository: one parquet-named file under data/ (its bytes do not matter to the downloader). */
const datasetFolder = tempDir('arm-dataset-');
const datasetBytes = randomBytes(300_000);

beforeAll(async () => {
  fs.mkdirSync(path.join(datasetFolder, 'data'));
  fs.writeFileSync(path.join(datasetFolder, 'data', 'test-00000-of-00001.parquet'), datasetBytes);
  sharded = repoFolder({
    'model.safetensors.index.json': indexJson({
      a: 'model-00001-of-00003.safetensors',
      b: 'model-00002-of-00003.safetensors',
      c: 'model-00003-of-00003.safetensors',
      d: 'model-00001-of-00003.safetensors',
    }),
    'model-00001-of-00003.safetensors': randomBytes(200_000),
    'model-00002-of-00003.safetensors': randomBytes(250_000),
    'model-00003-of-00003.safetensors': randomBytes(150_000),
  });
  hub = await startHubStandin({
    'tiny/stories': STORIES,
    'tiny/sharded': sharded,
    'tiny/evil': repoFolder({ 'model.safetensors.index.json': indexJson({ w: '../evil.safetensors' }) }),
    'allenai/reward-bench-2': datasetFolder,
    'tiny/evil-abs': repoFolder({
      'model.safetensors.index.json': indexJson({ w: path.join(tempDir(), 'evil.safetensors') }),
    }),
  });
});
afterAll(() => hub?.stop());

/** resolveModelDir against the stand-in, with HF_* variables set as given (undefined: unset) and restored after. */
async function resolveVia(
  ref: string,
  opts: ResolveOptions,
  env: Record<string, string | undefined> = {},
): Promise<string> {
  const vars: Record<string, string | undefined> = {
    HF_ENDPOINT: hub.endpoint,
    HF_TOKEN: undefined,
    HF_HUB_OFFLINE: undefined,
    ...env,
  };
  const old = Object.fromEntries(Object.keys(vars).map((k) => [k, process.env[k]]));
  const set = (values: Record<string, string | undefined>) => {
    for (const [k, v] of Object.entries(values))
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
  };
  set(vars);
  try {
    return await resolveModelDir(ref, opts);
  } finally {
    set(old);
  }
}

/** Runs `f` with HF_ENDPOINT at the stand-in (other HF_* unset), restoring the environment after. */
async function viaStandin<T>(f: () => Promise<T>): Promise<T> {
  const keys = ['HF_ENDPOINT', 'HF_TOKEN', 'HF_HUB_OFFLINE'];
  const old = Object.fromEntries(keys.map((k) => [k, process.env[k]]));
  process.env.HF_ENDPOINT = hub.endpoint;
  delete process.env.HF_TOKEN;
  delete process.env.HF_HUB_OFFLINE;
  try {
    return await f();
  } finally {
    for (const [k, v] of Object.entries(old))
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
  }
}

const snapshotDir = (cacheDir: string, repo = 'tiny--stories', rev = 'main') => path.join(cacheDir, 'hub', repo, rev);
const fileRequests = (file: string) => hub.requests.filter((r) => r.file === file && r.status !== 302);

/** Every path under `root`, relative to it. */
function walk(root: string): string[] {
  return fs.readdirSync(root, { recursive: true, encoding: 'utf8' }).sort();
}

/** Polls `cond` every 20 ms; fails after `ms`. */
async function until(cond: () => boolean, what: string, ms = 20_000): Promise<void> {
  for (const end = Date.now() + ms; !cond();) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/** test/helpers/hub-download.ts in a process of its own, against the stand-in. */
function downloadInChild(ref: string, cacheDir: string) {
  const env: NodeJS.ProcessEnv = { ...process.env, HF_ENDPOINT: hub.endpoint };
  delete env.HF_TOKEN;
  delete env.HF_HUB_OFFLINE;
  const child = spawn(
    process.execPath,
    ['--import', 'tsx', path.resolve(import.meta.dirname, '../helpers/hub-download.ts'), ref, cacheDir],
    { env, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let stdout = '',
    stderr = '';
  child.stdout.on('data', (d) => {
    stdout += d;
  });
  child.stderr.on('data', (d) => {
    stderr += d;
  });
  const done = new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) =>
    child.on('close', (code) => resolve({ code, stdout, stderr })),
  );
  return { pid: child.pid!, done };
}

/** A lock file as another download writes it. */
const writeLock = (file: string, pid: number) =>
  fs.writeFileSync(`${file}.lock`, JSON.stringify({ pid, host: os.hostname(), token: `other-${pid}` }));
/** A process that runs until killed, to own a lock. */
async function liveProcess() {
  const child = spawn(process.execPath, ['-e', 'setTimeout(() => {}, 60_000)'], { stdio: 'ignore' });
  await once(child, 'spawn');
  return {
    pid: child.pid!,
    stop: async () => {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill();
        await once(child, 'exit');
      }
    },
  };
}

describe('download', () => {
  it('downloads a hub id into the cache once, then loads it like a local folder', async () => {
    hub.configure({});
    const cacheDir = tempDir('arm-cache-');
    const dir = await resolveVia('tiny/stories', { cacheDir, quiet: true });
    for (const f of ['config.json', 'tokenizer.json', 'tokenizer_config.json', MODEL, '.complete'])
      expect(fs.existsSync(path.join(dir, f))).toBe(true);
    expect(fs.readFileSync(path.join(dir, MODEL)).equals(modelBytes)).toBe(true);
    const before = hub.requests.length;
    expect(await resolveVia('tiny/stories', { cacheDir, quiet: true })).toBe(dir);
    expect(hub.requests.length).toBe(before);
    const decoder = await Decoder.load('tiny/stories', { cacheDir, quiet: true });
    try {
      const ids = decoder.tokenizer.encode('Once upon a time');
      const golden = JSON.parse(fs.readFileSync(path.join(STORIES, 'golden.json'), 'utf8')).prompts[1];
      expect(await decoder.generate(ids, { maxNewTokens: 16, stopTokens: [] })).toEqual(
        golden.continuation_ids.slice(0, 16),
      );
    } finally {
      await decoder.dispose();
    }
  });

  it('pins the revision to the commit the hub names first, so a moving branch cannot mix two commits', async () => {
    const commit = 'c0ffee'.padEnd(40, '0');
    hub.configure({ repoCommit: commit, redirectLfs: true });
    const cacheDir = tempDir('arm-cache-');
    const dir = await resolveVia('tiny/stories', { cacheDir, quiet: true });
    const onHub = hub.requests.filter((r) => r.host === 'hub');
    expect(onHub[0]!.url).toBe('/tiny/stories/resolve/main/config.json');
    expect(onHub.length).toBeGreaterThan(3);
    for (const r of onHub.slice(1)) expect(r.url).toMatch(new RegExp(`^/tiny/stories/resolve/${commit}/`));
    expect(JSON.parse(fs.readFileSync(path.join(dir, '.complete'), 'utf8'))).toMatchObject({
      repo: 'tiny/stories',
      revision: 'main',
      commit,
    });
  });

  it('a missing repository file is a clear error, asked for once (404 is not retried)', async () => {
    hub.configure({});
    await expect(resolveVia('tiny/absent', { ...FAST, cacheDir: tempDir() })).rejects.toThrow(
      /tiny\/absent@main: config\.json not found on the hub/,
    );
    expect(hub.requests.map((r) => r.file)).toEqual(['config.json']);
  });

  it('a slow line is no failure: only silence times out, never the total time', async () => {
    // ~1 MB at 500 kB/s takes ~2 s, twice the connect and idle timeouts; a slice arrives every 100 ms.
    hub.configure({ throttleBytesPerSec: 500_000, only: (f) => f === MODEL });
    const cacheDir = tempDir();
    const started = Date.now();
    const dir = await resolveVia('tiny/stories', { ...FAST, cacheDir });
    expect(Date.now() - started).toBeGreaterThan(1800);
    expect(fs.readFileSync(path.join(dir, MODEL)).equals(modelBytes)).toBe(true);
    expect(fileRequests(MODEL)).toHaveLength(1);
  });

  it(
    'follows the redirect to the CDN, verifies the advertised sha256, ' +
      'keeps the token off the CDN, records the hash',
    async () => {
      hub.configure({ redirectLfs: true });
      const cacheDir = tempDir();
      const dir = await resolveVia('tiny/stories', { ...FAST, cacheDir }, { HF_TOKEN: 'hf_secret' });
      expect(fs.readFileSync(path.join(dir, MODEL)).equals(modelBytes)).toBe(true);
      const [redirect, ...rest] = hub.requests.filter((r) => r.file === MODEL);
      expect(redirect).toMatchObject({ host: 'hub', status: 302, authorization: 'Bearer hf_secret' });
      expect(rest).toHaveLength(1);
      expect(rest[0]).toMatchObject({ host: 'cdn', status: 200, authorization: undefined });
      // The sha256 computed while streaming is in the memo, for the file as it lies, so loading won't re-hash it.
      const memo = fs
        .readdirSync(path.join(cacheDir, 'hashes'))
        .map((f) => JSON.parse(fs.readFileSync(path.join(cacheDir, 'hashes', f), 'utf8')));
      const st = fs.statSync(path.join(dir, MODEL));
      expect(memo).toContainEqual(
        expect.objectContaining({
          path: path.join(dir, MODEL),
          sha256: modelSha,
          size: st.size,
          mtimeMs: st.mtimeMs,
          ino: st.ino,
        }),
      );
      expect(memo.some((m) => m.path === path.join(dir, 'config.json'))).toBe(true);
    },
  );

  it('a connection cut mid-file resumes with a Range request instead of starting over', async () => {
    hub.configure({ redirectLfs: true, cutAfterBytes: 400_000, only: (f) => f === MODEL });
    const cacheDir = tempDir();
    const dir = await resolveVia('tiny/stories', { ...FAST, cacheDir });
    expect(fs.readFileSync(path.join(dir, MODEL)).equals(modelBytes)).toBe(true);
    const [first, second, ...more] = fileRequests(MODEL);
    expect(more).toHaveLength(0);
    expect(first!.range).toBeUndefined();
    expect(second!.range).toMatch(/^bytes=[1-9]\d*-$/);
    expect(second!.status).toBe(206);
    expect(hub.bytesServed(MODEL)).toBeLessThan(2 * modelBytes.length);
    expect(fs.existsSync(path.join(dir, `${MODEL}.part`))).toBe(false);
  });

  it(
    'a run that gives up leaves its .part, never a half file under the ' + 'final name; the next run resumes it',
    async () => {
      hub.configure({ cutAfterBytes: 500_000, only: (f) => f === MODEL });
      const cacheDir = tempDir();
      await expect(resolveVia('tiny/stories', { ...FAST, retries: 0, cacheDir })).rejects.toThrow(
        new RegExp(
          String.raw`tiny\/stories@main: model\.safetensors: download failed after 1 try \(connection lost: ` +
            String.raw`ECONNRESET\); run again to resume from .*model\.safetensors\.part`,
        ),
      );
      const dir = snapshotDir(cacheDir);
      expect(fs.existsSync(path.join(dir, MODEL))).toBe(false);
      expect(fs.existsSync(path.join(dir, '.complete'))).toBe(false);
      const kept = fs.statSync(path.join(dir, `${MODEL}.part`)).size;
      expect(kept).toBeGreaterThan(0);
      await resolveVia('tiny/stories', { ...FAST, cacheDir });
      expect(fs.readFileSync(path.join(dir, MODEL)).equals(modelBytes)).toBe(true);
      expect(fileRequests(MODEL).map((r) => r.range)).toEqual([undefined, `bytes=${kept}-`]);
    },
  );

  it('a stalled connection hits the idle timeout and is resumed, without waiting the stall out', async () => {
    hub.configure({ stallAfterBytes: 300_000, stallMs: 8000, only: (f) => f === MODEL });
    const cacheDir = tempDir();
    const started = Date.now();
    const dir = await resolveVia('tiny/stories', { ...FAST, cacheDir });
    expect(Date.now() - started).toBeLessThan(5000);
    expect(fs.readFileSync(path.join(dir, MODEL)).equals(modelBytes)).toBe(true);
    const tries = fileRequests(MODEL);
    expect(tries).toHaveLength(2);
    expect(tries[1]!.range).toMatch(/^bytes=[1-9]\d*-$/);
  });

  it('retries 503 and 429 answers with backoff', async () => {
    for (const status of [503, 429]) {
      hub.configure({ failWith: { status, times: 2 } });
      const dir = await resolveVia('tiny/stories', { ...FAST, cacheDir: tempDir() });
      expect(fs.readFileSync(path.join(dir, MODEL)).equals(modelBytes)).toBe(true);
      expect(hub.requests.filter((r) => r.file === 'config.json').map((r) => r.status)).toEqual([status, status, 200]);
    }
  });

  it('gives up after the configured retries, leaving no file under its final name', async () => {
    hub.configure({ failWith: { status: 500, times: 100 } });
    const cacheDir = tempDir();
    await expect(resolveVia('tiny/stories', { ...FAST, retries: 2, cacheDir })).rejects.toThrow(
      /tiny\/stories@main: config\.json: download failed after 3 tries \(.*answered 500\)/,
    );
    expect(hub.requests).toHaveLength(3);
    expect(fs.existsSync(path.join(snapshotDir(cacheDir), 'config.json'))).toBe(false);
  });

  it('401 is not retried: the model is gated or private', async () => {
    hub.configure({ failWith: { status: 401, times: 100 } });
    await expect(resolveVia('tiny/stories', { ...FAST, cacheDir: tempDir() })).rejects.toThrow(
      /config\.json: .* answered 401; the model is gated or private \(set HF_TOKEN\)/,
    );
    expect(hub.requests).toHaveLength(1);
  });

  it('a sha256 mismatch fails, naming the file, and leaves neither the file nor a .complete marker', async () => {
    hub.configure({ redirectLfs: true, advertisedSha256: () => 'ab'.repeat(32) });
    const cacheDir = tempDir();
    await expect(resolveVia('tiny/stories', { ...FAST, cacheDir })).rejects.toThrow(
      new RegExp(
        `tiny/stories@main: model\\.safetensors: sha256 ${modelSha} does not match the ${'ab'.repeat(32)} the ` +
          `hub advertises`,
      ),
    );
    const dir = snapshotDir(cacheDir);
    for (const f of [MODEL, `${MODEL}.part`, '.complete']) expect(fs.existsSync(path.join(dir, f))).toBe(false);
  });

  it('downloads shards concurrently under one progress bar', async () => {
    hub.configure({ throttleBytesPerSec: 1_000_000, only: (f) => f.startsWith('model-') });
    const cacheDir = tempDir();
    const dir = await resolveVia('tiny/sharded', { ...FAST, quiet: false, cacheDir });
    for (const f of [
      'model-00001-of-00003.safetensors',
      'model-00002-of-00003.safetensors',
      'model-00003-of-00003.safetensors',
    ]) {
      expect(fs.readFileSync(path.join(dir, f)).equals(fs.readFileSync(path.join(sharded, f)))).toBe(true);
    }
    expect(hub.maxConcurrent).toBe(3);
    expect(fs.existsSync(path.join(dir, '.complete'))).toBe(true);
  });
});

describe('resume from an earlier run', () => {
  const withPart = (bytes: Buffer) => {
    const cacheDir = tempDir();
    fs.mkdirSync(snapshotDir(cacheDir), { recursive: true });
    fs.writeFileSync(path.join(snapshotDir(cacheDir), `${MODEL}.part`), bytes);
    return cacheDir;
  };

  it('continues a .part where it ended', async () => {
    hub.configure({ redirectLfs: true });
    const dir = await resolveVia('tiny/stories', { ...FAST, cacheDir: withPart(modelBytes.subarray(0, 600_000)) });
    expect(fs.readFileSync(path.join(dir, MODEL)).equals(modelBytes)).toBe(true);
    expect(fileRequests(MODEL).map((r) => r.range)).toEqual(['bytes=600000-']);
    expect(hub.bytesServed(MODEL)).toBe(modelBytes.length - 600_000);
  });

  it(
    'a stale .part (another version of the file) fails the sha256 check ' + 'and is downloaded again from zero',
    async () => {
      hub.configure({ redirectLfs: true });
      const dir = await resolveVia('tiny/stories', { ...FAST, cacheDir: withPart(randomBytes(600_000)) });
      expect(fs.readFileSync(path.join(dir, MODEL)).equals(modelBytes)).toBe(true);
      expect(fileRequests(MODEL).map((r) => r.range)).toEqual(['bytes=600000-', undefined]);
    },
  );

  it('a .part that already holds the whole file (416) is verified and moved into place', async () => {
    hub.configure({ redirectLfs: true });
    const dir = await resolveVia('tiny/stories', { ...FAST, cacheDir: withPart(modelBytes) });
    expect(fs.readFileSync(path.join(dir, MODEL)).equals(modelBytes)).toBe(true);
    expect(fileRequests(MODEL).map((r) => r.status)).toEqual([416]);
  });

  it('a .part longer than the file (416) is discarded and downloaded again', async () => {
    hub.configure({});
    const dir = await resolveVia('tiny/stories', {
      ...FAST,
      cacheDir: withPart(Buffer.concat([modelBytes, randomBytes(10)])),
    });
    expect(fs.readFileSync(path.join(dir, MODEL)).equals(modelBytes)).toBe(true);
    expect(fileRequests(MODEL).map((r) => r.status)).toEqual([416, 200]);
  });

  it('a server that ignores Range (200) restarts the file from zero', async () => {
    hub.configure({ ignoreRange: true });
    const dir = await resolveVia('tiny/stories', { ...FAST, cacheDir: withPart(randomBytes(600_000)) });
    expect(fs.readFileSync(path.join(dir, MODEL)).equals(modelBytes)).toBe(true);
    expect(fileRequests(MODEL).map((r) => r.status)).toEqual([200]);
  });
});

describe('two processes, one cache', () => {
  it(
    'two processes fetching one snapshot at once download each file once: the second waits for the lock, then ' +
      'finds it done',
    async () => {
      // ~5 s for the weights: time for the second process to start and reach their lock while the first fetches them.
      hub.configure({ throttleBytesPerSec: 200_000, only: (f) => f === MODEL, repoCommit: 'c0ffee'.padEnd(40, '1') });
      const cacheDir = tempDir('arm-cache-');
      const first = downloadInChild('tiny/stories', cacheDir);
      await until(() => hub.bytesServed(MODEL) > 0, 'the first process to be fetching the weights');
      const second = downloadInChild('tiny/stories', cacheDir);
      const [a, b] = await Promise.all([first.done, second.done]);
      expect(a, a.stderr).toMatchObject({ code: 0, stdout: `${snapshotDir(cacheDir)}\n` });
      expect(b, b.stderr).toMatchObject({ code: 0, stdout: `${snapshotDir(cacheDir)}\n` });
      expect(b.stderr).toContain(
        `tiny/stories@main: ${MODEL}: waiting for another download of it (pid ${first.pid}) to finish`,
      );
      expect(hub.requests.filter((r) => r.file === MODEL && r.method === 'GET')).toHaveLength(1);
      expect(hub.bytesServed(MODEL)).toBe(modelBytes.length);
      const dir = snapshotDir(cacheDir);
      expect(fs.readFileSync(path.join(dir, MODEL)).equals(modelBytes)).toBe(true);
      expect(walk(dir).filter((f) => /\.(lock|part)/.test(f))).toEqual([]);
    },
  );

  it(
    "waits while the lock's owner runs, without touching the file; once the owner is gone it takes over and " +
      'resumes its part',
    async () => {
      hub.configure({ redirectLfs: true });
      const cacheDir = tempDir();
      const dir = snapshotDir(cacheDir);
      fs.mkdirSync(dir, { recursive: true });
      fs.writeFileSync(path.join(dir, `${MODEL}.part`), modelBytes.subarray(0, 300_000));
      const owner = await liveProcess();
      const log: string[] = [];
      let resolving: Promise<string> | undefined;
      try {
        writeLock(path.join(dir, MODEL), owner.pid);
        resolving = resolveVia('tiny/stories', { ...FAST, cacheDir, log: (line) => log.push(line) });
        resolving.catch(() => {});
        await until(() => log.some((l) => l.includes('waiting')), 'the waiting note', 5000);
        await new Promise((resolve) => setTimeout(resolve, 600));
        expect(fileRequests(MODEL)).toHaveLength(0);
      } finally {
        await owner.stop();
      }
      expect(await resolving).toBe(dir);
      expect(fs.readFileSync(path.join(dir, MODEL)).equals(modelBytes)).toBe(true);
      expect(fileRequests(MODEL).map((r) => r.range)).toEqual(['bytes=300000-']);
      expect(log).toEqual([
        `tiny/stories@main: ${MODEL}: waiting for another download of it (pid ${owner.pid}) to finish; lock ` +
          `${path.join(dir, MODEL)}.lock`,
        `tiny/stories@main: ${MODEL}: taking over ${path.join(dir, MODEL)}.lock, left by pid ${owner.pid}, which ` +
          `is no longer running`,
      ]);
      expect(fs.existsSync(path.join(dir, `${MODEL}.lock`))).toBe(false);
    },
  );

  it('a lock left by a process that is no longer running is taken over at once', async () => {
    hub.configure({});
    const cacheDir = tempDir();
    const dir = snapshotDir(cacheDir);
    fs.mkdirSync(dir, { recursive: true });
    const dead = spawnSync(process.execPath, ['-e', '']).pid;
    writeLock(path.join(dir, MODEL), dead);
    const log: string[] = [];
    const started = Date.now();
    await resolveVia('tiny/stories', { ...FAST, cacheDir, log: (line) => log.push(line) });
    expect(Date.now() - started).toBeLessThan(3000);
    expect(fs.readFileSync(path.join(dir, MODEL)).equals(modelBytes)).toBe(true);
    expect(log).toEqual([
      `tiny/stories@main: ${MODEL}: taking over ${path.join(dir, MODEL)}.lock, left by pid ${dead}, which is no ` +
        `longer running`,
    ]);
    expect(walk(dir).filter((f) => f.includes('.lock'))).toEqual([]);
  });

  it("a shard failing ends the wait on another shard's lock (the abort is honoured while waiting)", async () => {
    hub.configure({ cutAfterBytes: 10_000, only: (f) => f === 'model-00003-of-00003.safetensors' });
    const cacheDir = tempDir();
    const dir = snapshotDir(cacheDir, 'tiny--sharded');
    fs.mkdirSync(dir, { recursive: true });
    const owner = await liveProcess();
    const log: string[] = [];
    try {
      writeLock(path.join(dir, 'model-00002-of-00003.safetensors'), owner.pid);
      const started = Date.now();
      await expect(
        resolveVia('tiny/sharded', { ...FAST, retries: 0, cacheDir, log: (line) => log.push(line) }),
      ).rejects.toThrow(/tiny\/sharded@main: model-00003-of-00003\.safetensors: download failed after 1 try/);
      expect(Date.now() - started).toBeLessThan(5000);
      expect(
        log.some((l) =>
          l.includes(`model-00002-of-00003.safetensors: waiting for another download of it (pid ${owner.pid})`),
        ),
      ).toBe(true);
      expect(fs.existsSync(path.join(dir, 'model-00002-of-00003.safetensors.lock'))).toBe(true); // still its owner's
    } finally {
      await owner.stop();
    }
  });
});

describe('a branch that moves between runs', () => {
  const COMMIT_A = 'a'.repeat(40);
  const COMMIT_B = 'b'.repeat(40);
  const SHARD_1 = 'model-00001-of-00002.safetensors';
  const SHARD_2 = 'model-00002-of-00002.safetensors';
  /** A two-shard repository whose every file differs from another commit's (config.json included). */
  const commitFolder = (tag: string) =>
    repoFolder({
      'config.json': JSON.stringify({
        ...JSON.parse(fs.readFileSync(path.join(STORIES, 'config.json'), 'utf8')),
        _commit: tag,
      }),
      'model.safetensors.index.json': indexJson({ a: SHARD_1, b: SHARD_2 }),
      [SHARD_1]: randomBytes(200_000),
      [SHARD_2]: randomBytes(tag === 'B' ? 420_000 : 400_000),
    });
  /** A run at `repo`'s `rev` cut in shard 2 with no retries: shard 1 done, shard 2 a part. */
  async function interruptedRun(repo: string, cacheDir: string, rev = 'main') {
    hub.configure({ redirectLfs: true, cutAfterBytes: 300_000, only: (f) => f === SHARD_2 });
    await expect(resolveVia(`${repo}@${rev}`, { ...FAST, retries: 0, concurrency: 1, cacheDir })).rejects.toThrow(
      new RegExp(`${SHARD_2}: download failed after 1 try`),
    );
    const dir = snapshotDir(cacheDir, repo.replace('/', '--'), rev);
    expect(fs.existsSync(path.join(dir, SHARD_1))).toBe(true);
    expect(fs.statSync(path.join(dir, `${SHARD_2}.part`)).size).toBeGreaterThan(0);
    return dir;
  }

  it(
    'a run resumed after main moved to another commit discards the old files and parts and gives exactly the new ' +
      "commit's",
    async () => {
      const [folderA, folderB] = [commitFolder('A'), commitFolder('B')];
      hub.publish('tiny/moving', COMMIT_A, folderA);
      const cacheDir = tempDir();
      const dir = await interruptedRun('tiny/moving', cacheDir);
      expect(fs.readFileSync(path.join(dir, '.commit'), 'utf8').trim()).toBe(COMMIT_A);
      // Another process's lock, on a file of its own: discarding the folder leaves it to its owner.
      writeLock(path.join(dir, 'other.bin'), process.ppid);

      hub.publish('tiny/moving', COMMIT_B, folderB);
      hub.configure({ redirectLfs: true });
      const log: string[] = [];
      expect(await resolveVia('tiny/moving', { ...FAST, cacheDir, log: (line) => log.push(line) })).toBe(dir);
      expect(walk(dir)).toEqual([...walk(folderB), '.commit', '.complete', 'other.bin.lock'].sort());
      for (const f of walk(folderB))
        expect(fs.readFileSync(path.join(dir, f)).equals(fs.readFileSync(path.join(folderB, f))), f).toBe(true);
      expect(JSON.parse(fs.readFileSync(path.join(dir, '.complete'), 'utf8'))).toMatchObject({
        revision: 'main',
        commit: COMMIT_B,
      });
      expect(fs.readFileSync(path.join(dir, '.commit'), 'utf8').trim()).toBe(COMMIT_B);
      expect(log).toEqual([
        expect.stringMatching(
          new RegExp(
            `^tiny/moving@main: the revision moved on the hub from commit ${COMMIT_A} to ${COMMIT_B} since .* was ` +
              `begun; discarded its 5 files and parts, starting over at ${COMMIT_B}$`,
          ),
        ),
      ]);
      // The commit was asked for before anything in the folder was used; nothing was fetched at the old one.
      expect(hub.requests[0]).toMatchObject({ method: 'HEAD', url: '/tiny/moving/resolve/main/config.json' });
      expect(hub.requests.some((r) => r.url.includes(COMMIT_A))).toBe(false);
    },
  );

  it('a run resumed at the same commit asks the hub once, then keeps what is done and resumes the part', async () => {
    hub.publish('tiny/steady', COMMIT_A, commitFolder('A'));
    const cacheDir = tempDir();
    const dir = await interruptedRun('tiny/steady', cacheDir);
    const kept = fs.statSync(path.join(dir, `${SHARD_2}.part`)).size;
    hub.configure({ redirectLfs: true });
    const log: string[] = [];
    await resolveVia('tiny/steady', { ...FAST, cacheDir, log: (line) => log.push(line) });
    expect(log).toEqual([]);
    expect(hub.requests.filter((r) => r.method === 'HEAD').map((r) => r.url)).toEqual([
      '/tiny/steady/resolve/main/config.json',
    ]);
    // Optional files the repository lacks are asked for again (404); of the rest only the part's file: hub 302, then
    // the CDN.
    expect(hub.requests.filter((r) => r.method === 'GET' && r.status !== 404).map((r) => r.file)).toEqual([
      SHARD_2,
      SHARD_2,
    ]);
    expect(fileRequests(SHARD_2).map((r) => r.range)).toEqual([`bytes=${kept}-`]);
    expect(JSON.parse(fs.readFileSync(path.join(dir, '.complete'), 'utf8'))).toMatchObject({ commit: COMMIT_A });
  });

  it('a revision that is a commit hash never moves: no extra request', async () => {
    hub.publish('tiny/pinned', COMMIT_A, commitFolder('A'));
    const cacheDir = tempDir();
    const dir = await interruptedRun('tiny/pinned', cacheDir, COMMIT_A);
    hub.configure({ redirectLfs: true });
    await resolveVia(`tiny/pinned@${COMMIT_A}`, { ...FAST, cacheDir });
    expect(hub.requests.filter((r) => r.status !== 404).map((r) => `${r.method} ${r.file}`)).toEqual([
      `GET ${SHARD_2}`,
      `GET ${SHARD_2}`,
    ]);
    expect(JSON.parse(fs.readFileSync(path.join(dir, '.complete'), 'utf8'))).toMatchObject({ commit: COMMIT_A });
  });
});

describe('paths stay inside the cache', () => {
  /** A cache two levels below a scratch folder, so that an escape would land in the scratch folder. */
  const nestedCache = () => {
    const base = tempDir('arm-escape-');
    const cacheDir = path.join(base, 'a', 'b', 'cache');
    fs.mkdirSync(cacheDir, { recursive: true });
    return { base, cacheDir };
  };
  const onlyCache = (base: string) =>
    walk(base).every((p) => ['a', path.join('a', 'b')].includes(p) || p.startsWith(path.join('a', 'b', 'cache')));

  it('a revision with .. is refused before anything is written', async () => {
    hub.configure({});
    const { base, cacheDir } = nestedCache();
    await expect(resolveVia('fake/x@../../../../somewhere', { ...FAST, cacheDir })).rejects.toThrow(
      new RegExp(
        String.raw`fake\/x: revision "\.\.\/\.\.\/\.\.\/\.\.\/somewhere" is not a valid branch, tag or commit: ` +
          String.raw`'\.\.' is not allowed`,
      ),
    );
    await expect(resolveVia('fake/x', { ...FAST, cacheDir, revision: '../../../../somewhere' })).rejects.toThrow(
      /not a valid branch, tag or commit/,
    );
    expect(onlyCache(base)).toBe(true);
    expect(walk(cacheDir)).toEqual([]);
    expect(hub.requests).toHaveLength(0);
  });

  it('refuses malformed revisions', async () => {
    hub.configure({});
    const { base, cacheDir } = nestedCache();
    for (const rev of ['..', '/etc', 'a\\b', 'a\u0000b', 'a\nb', 'x/', 'a//b', '.hidden', 'a b', '']) {
      await expect(resolveVia(`fake/x@${rev}`, { ...FAST, cacheDir }), JSON.stringify(rev)).rejects.toThrow(
        /is not a valid branch, tag or commit/,
      );
    }
    expect(onlyCache(base)).toBe(true);
    expect(hub.requests).toHaveLength(0);
  });

  it('refuses repo ids the hub would refuse', async () => {
    hub.configure({});
    const { base, cacheDir } = nestedCache();
    for (const id of [
      'fake/x--y',
      'fake/..',
      'fake/.x',
      'fake/x.',
      '-fake/x',
      'fake/x-',
      'fa..ke/x',
      'fa ke/x',
      'fake/x%2F..',
      `fake/${'a'.repeat(97)}`,
      'a/b/c',
      'noslash',
    ]) {
      await expect(resolveVia(id, { ...FAST, cacheDir }), id).rejects.toThrow(
        /no such folder, and ".*" is not a hub repo id: expected owner\/name/,
      );
    }
    expect(onlyCache(base)).toBe(true);
    expect(hub.requests).toHaveLength(0);
    // The longest legal name still passes validation (and is then simply absent on the stand-in).
    await expect(resolveVia(`fake/${'a'.repeat(96)}`, { ...FAST, cacheDir })).rejects.toThrow(
      /config\.json not found on the hub/,
    );
  });

  it('a branch with / (refs/pr/1) maps to one folder inside the cache', async () => {
    hub.configure({});
    const cacheDir = tempDir();
    const dir = await resolveVia('tiny/stories@refs/pr/1', { ...FAST, cacheDir });
    expect(dir).toBe(snapshotDir(cacheDir, 'tiny--stories', 'refs%2Fpr%2F1'));
    expect(fs.readdirSync(path.join(cacheDir, 'hub', 'tiny--stories'))).toEqual(['refs%2Fpr%2F1']);
    expect(hub.requests[0]!.url).toBe('/tiny/stories/resolve/refs%2Fpr%2F1/config.json');
  });

  it('a weight_map naming a file outside the snapshot is refused, nothing written outside', async () => {
    hub.configure({});
    for (const [repo, bad] of [
      ['tiny/evil', /"\.\.\/evil\.safetensors" is not a file name inside the repository/],
      ['tiny/evil-abs', /"\/.*evil\.safetensors" is not a file name inside the repository/],
    ] as const) {
      const { base, cacheDir } = nestedCache();
      await expect(resolveVia(repo, { ...FAST, cacheDir })).rejects.toThrow(bad);
      expect(onlyCache(base)).toBe(true);
      expect(fs.existsSync(path.join(snapshotDir(cacheDir, repo.replace('/', '--')), '.complete'))).toBe(false);
      expect(hub.requests.some((r) => r.file.includes('evil'))).toBe(false);
    }
  });
});

describe('offline', () => {
  it('an unreachable hub fails fast with a clear message instead of hanging', async () => {
    const started = Date.now();
    await expect(
      resolveVia(
        'Qwen/Qwen2.5-0.5B-Instruct',
        { cacheDir: tempDir(), quiet: true, connectTimeoutMs: 3000 },
        { HF_ENDPOINT: 'http://127.0.0.1:9' },
      ),
    ).rejects.toThrow(
      new RegExp(
        String.raw`Qwen\/Qwen2\.5-0\.5B-Instruct: cannot reach http:\/\/127\.0\.0\.1:9 .*offline\? pass a local ` +
          String.raw`checkpoint folder with --model`,
      ),
    );
    expect(Date.now() - started).toBeLessThan(5000);
  });

  it('HF_HUB_OFFLINE=1|true|yes (any case) refuses without touching the network', async () => {
    hub.configure({});
    for (const value of ['1', 'true', 'TRUE', 'yes', 'Yes']) {
      await expect(
        resolveVia('tiny/stories', { ...FAST, cacheDir: tempDir() }, { HF_HUB_OFFLINE: value }),
      ).rejects.toThrow(new RegExp(`not in the cache .* HF_HUB_OFFLINE=${value}; pass a local checkpoint folder`));
    }
    expect(hub.requests).toHaveLength(0);
  });

  it('HF_HUB_OFFLINE still serves what is complete in the cache; 0 means online', async () => {
    hub.configure({});
    const cacheDir = tempDir();
    const dir = await resolveVia('tiny/stories', { ...FAST, cacheDir }, { HF_HUB_OFFLINE: '0' });
    const requests = hub.requests.length;
    expect(await resolveVia('tiny/stories', { ...FAST, cacheDir }, { HF_HUB_OFFLINE: 'true' })).toBe(dir);
    expect(hub.requests.length).toBe(requests);
  });
});

describe('dataset files', () => {
  it(
    '--dataset owner/name downloads its parquet through the same client (datasets/ URL, redirect, sha256, resume), ' +
      'then reads it from the cache',
    async () => {
      hub.configure({ redirectLfs: false, cutAfterBytes: 100_000 });
      const cacheDir = tempDir('arm-cache-');
      const [file] = await viaStandin(() => resolveHubDataset('allenai/reward-bench-2', { cacheDir }));
      expect(file).toBe(
        path.join(
          cacheDir,
          'hub',
          'datasets',
          'allenai--reward-bench-2',
          'main',
          'data',
          'test-00000-of-00001.parquet',
        ),
      );
      expect(fs.readFileSync(file!).equals(datasetBytes)).toBe(true);
      const asked = hub.requests.filter((r) => r.file === 'data/test-00000-of-00001.parquet');
      expect(asked[0]!.url).toBe('/datasets/allenai/reward-bench-2/resolve/main/data/test-00000-of-00001.parquet');
      expect(asked.length).toBeGreaterThan(1); // the connection was cut once and the download went on
      expect(hub.bytesServed('data/test-00000-of-00001.parquet')).toBeLessThan(2 * datasetBytes.length);
      const before = hub.requests.length;
      await viaStandin(() => resolveHubDataset('allenai/reward-bench-2', { cacheDir }));
      expect(hub.requests.length).toBe(before);
    },
  );

  it(
    "dataset ids and revisions follow the hub client's own rules: what the " + 'looser copy let through is refused',
    async () => {
      const cacheDir = tempDir();
      let asked = 0;
      const download = async () => {
        asked++;
        return true;
      };
      for (const ref of [
        'allenai/reward-bench-2@.',
        'allenai/reward-bench-2@x/',
        'allenai/reward-bench-2@a//b',
        'allenai/reward-bench-2@a/.b',
        'allenai/reward-bench-2@a\x7fb',
        `allenai/reward-bench-2@${'a'.repeat(256)}`,
      ]) {
        expect(parseHubDatasetRef(ref), JSON.stringify(ref)).toBeNull();
        await expect(resolveHubDataset(ref, { cacheDir, download }), JSON.stringify(ref)).rejects.toThrow(
          /not a hub dataset id \(owner\/name\[@revision\]\): revision .* is not a valid branch, tag or commit/,
        );
      }
      await expect(resolveHubDataset('allenai/reward-bench-2', { cacheDir, download, revision: '.' })).rejects.toThrow(
        /revision "\." is not a valid branch, tag or commit/,
      );
      await expect(resolveHubDataset('allenai/reward--bench', { cacheDir, download })).rejects.toThrow(
        /"allenai\/reward--bench" is not a hub repo id: expected owner\/name/,
      );
      expect(asked).toBe(0);
      expect(walk(cacheDir)).toEqual([]);
      expect(parseHubDatasetRef('allenai/reward-bench-2@refs/pr/1')).toEqual({
        id: 'allenai/reward-bench-2',
        revision: 'refs/pr/1',
      });
    },
  );

  it('a file name that escapes the repository is refused', async () => {
    await expect(
      downloadRepoFile(
        { repoType: 'dataset', ref: 'allenai/reward-bench-2', file: '../../x.parquet' },
        { cacheDir: tempDir() },
      ),
    ).rejects.toThrow(/is not a file name inside the repository/);
  });
});
