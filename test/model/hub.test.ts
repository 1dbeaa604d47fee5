/**
 * Hub ids: the real download path into the Hugging Face cache layout against a loopback stand-in for the hub
 * (slow, redirected, cut, stalled, failing and lying servers), resume and verification, path safety of
 * ids/revisions/weight maps, offline modes, two processes on one cache, a branch that moves between runs. What
 * the layout is, and reading one Python wrote, is hub-cache.test.ts.
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
import { gitBlobSha1, standinCommit, startHubStandin, type HubStandin } from '../helpers/hub-standin.js';

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
  // Nothing here may reach the user's own hub cache: every call names one, and the default points to a scratch one.
  process.env.HF_HUB_CACHE = tempDir('hf-hub-default-');
  // Nor the token a `huggingface-cli login` left on this machine.
  process.env.HF_TOKEN_PATH = path.join(tempDir(), 'no-token');
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

/** Runs `f` with the environment variables set as given (undefined: unset), restoring them after. */
async function withEnv<T>(vars: Record<string, string | undefined>, f: () => Promise<T>): Promise<T> {
  const old = Object.fromEntries(Object.keys(vars).map((k) => [k, process.env[k]]));
  const set = (values: Record<string, string | undefined>) => {
    for (const [k, v] of Object.entries(values))
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
  };
  set(vars);
  try {
    return await f();
  } finally {
    set(old);
  }
}

/** resolveModelDir against the stand-in, with HF_* variables set as given (undefined: unset) and restored after. */
function resolveVia(ref: string, opts: ResolveOptions, env: Record<string, string | undefined> = {}): Promise<string> {
  const vars = { HF_ENDPOINT: hub.endpoint, HF_TOKEN: undefined, HF_HUB_OFFLINE: undefined, ...env };
  return withEnv(vars, () => resolveModelDir(ref, opts));
}

/** Runs `f` with HF_ENDPOINT at the stand-in (other HF_* unset), restoring the environment after. */
function viaStandin<T>(f: () => Promise<T>): Promise<T> {
  return withEnv({ HF_ENDPOINT: hub.endpoint, HF_TOKEN: undefined, HF_HUB_OFFLINE: undefined }, f);
}

/** A fresh pair of caches: our own root (hash memos, datasets) and the hub cache models go to. */
const caches = () => ({ cacheDir: tempDir('arm-cache-'), hubCacheDir: tempDir('hf-hub-') });
/** A repository's folder in a hub cache. */
const repoDir = (hubCacheDir: string, repo = 'tiny/stories') =>
  path.join(hubCacheDir, `models--${repo.replace('/', '--')}`);
/** The snapshot folder of a commit (by default the one the stand-in's branches point to). */
const snapshotOf = (hubCacheDir: string, repo = 'tiny/stories', commit = standinCommit(repo)) =>
  path.join(repoDir(hubCacheDir, repo), 'snapshots', commit);
/** The stand-in's ETag for a file's bytes, as the hub's: the sha256 for LFS files (redirected), else git's sha1. */
const etagOf = (bytes: Buffer, lfs: boolean) =>
  lfs ? createHash('sha256').update(bytes).digest('hex') : gitBlobSha1(bytes);
const blobOf = (hubCacheDir: string, bytes: Buffer, lfs: boolean, repo = 'tiny/stories') =>
  path.join(repoDir(hubCacheDir, repo), 'blobs', etagOf(bytes, lfs));
/** GETs of `file` that carried its bytes (not the hub's redirect to the CDN). */
const fileRequests = (file: string) =>
  hub.requests.filter((r) => r.file === file && r.method === 'GET' && r.status !== 302);

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
function downloadInChild(ref: string, { cacheDir, hubCacheDir }: { cacheDir: string; hubCacheDir: string }) {
  const env: NodeJS.ProcessEnv = { ...process.env, HF_ENDPOINT: hub.endpoint };
  delete env.HF_TOKEN;
  delete env.HF_HUB_OFFLINE;
  const child = spawn(
    process.execPath,
    ['--import', 'tsx', path.resolve(import.meta.dirname, '../helpers/hub-download.ts'), ref, cacheDir, hubCacheDir],
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
  it('downloads a hub id into the hub cache once, then loads it like a local folder', async () => {
    hub.configure({});
    const { cacheDir, hubCacheDir } = caches();
    const dir = await resolveVia('tiny/stories', { cacheDir, hubCacheDir, quiet: true });
    expect(dir).toBe(snapshotOf(hubCacheDir));
    for (const f of ['config.json', 'tokenizer.json', 'tokenizer_config.json', MODEL])
      expect(fs.readFileSync(path.join(dir, f)).equals(fs.readFileSync(path.join(STORIES, f))), f).toBe(true);
    const before = hub.requests.length;
    expect(await resolveVia('tiny/stories', { cacheDir, hubCacheDir, quiet: true })).toBe(dir);
    expect(hub.requests.length).toBe(before);
    const decoder = await withEnv({ HF_HUB_CACHE: hubCacheDir, HF_ENDPOINT: 'http://127.0.0.1:9' }, () =>
      Decoder.load('tiny/stories', { cacheDir, quiet: true }),
    );
    try {
      expect(decoder.info.modelDir).toBe(dir);
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
    const { cacheDir, hubCacheDir } = caches();
    const dir = await resolveVia('tiny/stories', { cacheDir, hubCacheDir, quiet: true });
    const onHub = hub.requests.filter((r) => r.host === 'hub');
    expect(onHub[0]).toMatchObject({ method: 'HEAD', url: '/tiny/stories/resolve/main/config.json' });
    expect(onHub.length).toBeGreaterThan(3);
    for (const r of onHub.slice(1)) expect(r.url).toMatch(new RegExp(`^/tiny/stories/resolve/${commit}/`));
    expect(dir).toBe(snapshotOf(hubCacheDir, 'tiny/stories', commit));
    expect(fs.readFileSync(path.join(repoDir(hubCacheDir), 'refs', 'main'), 'utf8')).toBe(commit);
  });

  it('a missing repository file is a clear error, asked for once (404 is not retried)', async () => {
    hub.configure({});
    await expect(resolveVia('tiny/absent', { ...FAST, ...caches() })).rejects.toThrow(
      /tiny\/absent@main: config\.json not found on the hub/,
    );
    expect(hub.requests.map((r) => `${r.method} ${r.file}`)).toEqual(['HEAD config.json']);
  });

  it('a slow line is no failure: only silence times out, never the total time', async () => {
    // ~1 MB at 500 kB/s takes ~2 s, twice the connect and idle timeouts; a slice arrives every 100 ms.
    hub.configure({ throttleBytesPerSec: 500_000, only: (f) => f === MODEL });
    const started = Date.now();
    const dir = await resolveVia('tiny/stories', { ...FAST, ...caches() });
    expect(Date.now() - started).toBeGreaterThan(1800);
    expect(fs.readFileSync(path.join(dir, MODEL)).equals(modelBytes)).toBe(true);
    expect(fileRequests(MODEL)).toHaveLength(1);
  });

  it(
    'follows the redirect to the CDN, verifies the advertised sha256, ' +
      'keeps the token off the CDN, records the hash',
    async () => {
      hub.configure({ redirectLfs: true });
      const { cacheDir, hubCacheDir } = caches();
      const dir = await resolveVia('tiny/stories', { ...FAST, cacheDir, hubCacheDir }, { HF_TOKEN: 'hf_secret' });
      expect(fs.readFileSync(path.join(dir, MODEL)).equals(modelBytes)).toBe(true);
      const [head, redirect, ...rest] = hub.requests.filter((r) => r.file === MODEL);
      expect(head).toMatchObject({ method: 'HEAD', host: 'hub', status: 302, authorization: 'Bearer hf_secret' });
      expect(redirect).toMatchObject({ method: 'GET', host: 'hub', status: 302, authorization: 'Bearer hf_secret' });
      expect(rest).toHaveLength(1);
      expect(rest[0]).toMatchObject({ host: 'cdn', status: 200, authorization: undefined });
      // The sha256 computed while streaming is in the memo, for the path the model loads it by, so loading won't
      // re-hash it.
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
    const { hubCacheDir } = caches();
    const dir = await resolveVia('tiny/stories', { ...FAST, cacheDir: tempDir(), hubCacheDir });
    expect(fs.readFileSync(path.join(dir, MODEL)).equals(modelBytes)).toBe(true);
    const [first, second, ...more] = fileRequests(MODEL);
    expect(more).toHaveLength(0);
    expect(first!.range).toBeUndefined();
    expect(second!.range).toMatch(/^bytes=[1-9]\d*-$/);
    expect(second!.status).toBe(206);
    expect(hub.bytesServed(MODEL)).toBeLessThan(2 * modelBytes.length);
    expect(walk(repoDir(hubCacheDir)).filter((f) => f.endsWith('.incomplete'))).toEqual([]);
  });

  it(
    'a run that gives up leaves its part, never a half file under the final name; ' + 'the next run resumes it',
    async () => {
      hub.configure({ cutAfterBytes: 500_000, only: (f) => f === MODEL });
      const { cacheDir, hubCacheDir } = caches();
      const part = `${blobOf(hubCacheDir, modelBytes, false)}.arm.incomplete`;
      await expect(resolveVia('tiny/stories', { ...FAST, retries: 0, cacheDir, hubCacheDir })).rejects.toThrow(
        new RegExp(
          String.raw`tiny\/stories@main: model\.safetensors: download failed after 1 try \(connection lost: ` +
            String.raw`ECONNRESET\); run again to resume from ${part.replace(/[.]/g, '\\.')}`,
        ),
      );
      const dir = snapshotOf(hubCacheDir);
      expect(fs.existsSync(path.join(dir, MODEL))).toBe(false);
      expect(fs.existsSync(blobOf(hubCacheDir, modelBytes, false))).toBe(false);
      const kept = fs.statSync(part).size;
      expect(kept).toBeGreaterThan(0);
      await resolveVia('tiny/stories', { ...FAST, cacheDir, hubCacheDir });
      expect(fs.readFileSync(path.join(dir, MODEL)).equals(modelBytes)).toBe(true);
      expect(fileRequests(MODEL).map((r) => r.range)).toEqual([undefined, `bytes=${kept}-`]);
    },
  );

  it('a stalled connection hits the idle timeout and is resumed, without waiting the stall out', async () => {
    hub.configure({ stallAfterBytes: 300_000, stallMs: 8000, only: (f) => f === MODEL });
    const started = Date.now();
    const dir = await resolveVia('tiny/stories', { ...FAST, ...caches() });
    expect(Date.now() - started).toBeLessThan(5000);
    expect(fs.readFileSync(path.join(dir, MODEL)).equals(modelBytes)).toBe(true);
    const tries = fileRequests(MODEL);
    expect(tries).toHaveLength(2);
    expect(tries[1]!.range).toMatch(/^bytes=[1-9]\d*-$/);
  });

  it('retries 503 and 429 answers with backoff', async () => {
    for (const status of [503, 429]) {
      hub.configure({ failWith: { status, times: 2 } });
      const dir = await resolveVia('tiny/stories', { ...FAST, ...caches() });
      expect(fs.readFileSync(path.join(dir, MODEL)).equals(modelBytes)).toBe(true);
      expect(hub.requests.filter((r) => r.file === 'config.json').map((r) => `${r.method} ${r.status}`)).toEqual([
        `HEAD ${status}`,
        `HEAD ${status}`,
        'HEAD 200',
        'GET 200',
      ]);
    }
  });

  it('gives up after the configured retries, leaving no file under its final name', async () => {
    hub.configure({ failWith: { status: 500, times: 100 } });
    const { cacheDir, hubCacheDir } = caches();
    await expect(resolveVia('tiny/stories', { ...FAST, retries: 2, cacheDir, hubCacheDir })).rejects.toThrow(
      /tiny\/stories@main: config\.json: download failed after 3 tries \(.*answered 500\)/,
    );
    expect(hub.requests).toHaveLength(3);
    expect(walk(hubCacheDir)).toEqual([]);
  });

  it('401 is not retried: the model is gated or private', async () => {
    hub.configure({ failWith: { status: 401, times: 100 } });
    await expect(resolveVia('tiny/stories', { ...FAST, ...caches() })).rejects.toThrow(
      /config\.json: .* answered 401; the model is gated or private \(set HF_TOKEN, or log in with huggingface-cli/,
    );
    expect(hub.requests).toHaveLength(1);
  });

  it('a sha256 mismatch fails, naming the file, and leaves neither the file nor its part', async () => {
    hub.configure({ redirectLfs: true, advertisedSha256: () => 'ab'.repeat(32) });
    const { cacheDir, hubCacheDir } = caches();
    await expect(resolveVia('tiny/stories', { ...FAST, cacheDir, hubCacheDir })).rejects.toThrow(
      new RegExp(
        `tiny/stories@main: model\\.safetensors: sha256 ${modelSha} does not match the ${'ab'.repeat(32)} the ` +
          `hub advertises`,
      ),
    );
    expect(fs.existsSync(path.join(snapshotOf(hubCacheDir), MODEL))).toBe(false);
    expect(fs.readdirSync(path.join(repoDir(hubCacheDir), 'blobs')).filter((f) => !/^[0-9a-f]{40}$/.test(f))).toEqual(
      [],
    );
  });

  it('downloads shards concurrently under one progress bar', async () => {
    hub.configure({ throttleBytesPerSec: 1_000_000, only: (f) => f.startsWith('model-') });
    const { hubCacheDir } = caches();
    const dir = await resolveVia('tiny/sharded', { ...FAST, quiet: false, cacheDir: tempDir(), hubCacheDir });
    for (const f of [
      'model-00001-of-00003.safetensors',
      'model-00002-of-00003.safetensors',
      'model-00003-of-00003.safetensors',
    ]) {
      expect(fs.readFileSync(path.join(dir, f)).equals(fs.readFileSync(path.join(sharded, f)))).toBe(true);
    }
    expect(hub.maxConcurrent).toBe(3);
  });
});

describe('resume from an earlier run', () => {
  /** Caches whose hub cache holds a part of the weights' blob, as a run that stopped would leave it. */
  const withPart = (bytes: Buffer, lfs: boolean) => {
    const c = caches();
    const part = `${blobOf(c.hubCacheDir, modelBytes, lfs)}.arm.incomplete`;
    fs.mkdirSync(path.dirname(part), { recursive: true });
    fs.writeFileSync(part, bytes);
    return c;
  };

  it('continues a part where it ended', async () => {
    hub.configure({ redirectLfs: true });
    const dir = await resolveVia('tiny/stories', { ...FAST, ...withPart(modelBytes.subarray(0, 600_000), true) });
    expect(fs.readFileSync(path.join(dir, MODEL)).equals(modelBytes)).toBe(true);
    expect(fileRequests(MODEL).map((r) => r.range)).toEqual(['bytes=600000-']);
    expect(hub.bytesServed(MODEL)).toBe(modelBytes.length - 600_000);
  });

  it(
    'a stale part (another version of the file) fails the sha256 check ' + 'and is downloaded again from zero',
    async () => {
      hub.configure({ redirectLfs: true });
      const dir = await resolveVia('tiny/stories', { ...FAST, ...withPart(randomBytes(600_000), true) });
      expect(fs.readFileSync(path.join(dir, MODEL)).equals(modelBytes)).toBe(true);
      expect(fileRequests(MODEL).map((r) => r.range)).toEqual(['bytes=600000-', undefined]);
    },
  );

  it('a part that already holds the whole file (416) is verified and moved into place', async () => {
    hub.configure({ redirectLfs: true });
    const dir = await resolveVia('tiny/stories', { ...FAST, ...withPart(modelBytes, true) });
    expect(fs.readFileSync(path.join(dir, MODEL)).equals(modelBytes)).toBe(true);
    expect(fileRequests(MODEL).map((r) => r.status)).toEqual([416]);
  });

  it('a part longer than the file (416) is discarded and downloaded again', async () => {
    hub.configure({});
    const dir = await resolveVia('tiny/stories', {
      ...FAST,
      ...withPart(Buffer.concat([modelBytes, randomBytes(10)]), false),
    });
    expect(fs.readFileSync(path.join(dir, MODEL)).equals(modelBytes)).toBe(true);
    expect(fileRequests(MODEL).map((r) => r.status)).toEqual([416, 200]);
  });

  it('a server that ignores Range (200) restarts the file from zero', async () => {
    hub.configure({ ignoreRange: true });
    const dir = await resolveVia('tiny/stories', { ...FAST, ...withPart(randomBytes(600_000), false) });
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
      const commit = 'c0ffee'.padEnd(40, '1');
      hub.configure({ throttleBytesPerSec: 200_000, only: (f) => f === MODEL, repoCommit: commit });
      const c = caches();
      const first = downloadInChild('tiny/stories', c);
      await until(() => hub.bytesServed(MODEL) > 0, 'the first process to be fetching the weights');
      const second = downloadInChild('tiny/stories', c);
      const [a, b] = await Promise.all([first.done, second.done]);
      const dir = snapshotOf(c.hubCacheDir, 'tiny/stories', commit);
      expect(a, a.stderr).toMatchObject({ code: 0, stdout: `${dir}\n` });
      expect(b, b.stderr).toMatchObject({ code: 0, stdout: `${dir}\n` });
      expect(b.stderr).toContain(
        `tiny/stories@main: ${MODEL}: waiting for another download of it (pid ${first.pid}) to finish`,
      );
      expect(hub.requests.filter((r) => r.file === MODEL && r.method === 'GET')).toHaveLength(1);
      expect(hub.bytesServed(MODEL)).toBe(modelBytes.length);
      expect(fs.readFileSync(path.join(dir, MODEL)).equals(modelBytes)).toBe(true);
      expect(walk(repoDir(c.hubCacheDir)).filter((f) => /\.(lock|incomplete)|\.tmp-/.test(f))).toEqual([]);
    },
  );

  it(
    "waits while the lock's owner runs, without touching the file; once the owner is gone it takes over and " +
      'resumes its part',
    async () => {
      hub.configure({ redirectLfs: true });
      const c = caches();
      const blob = blobOf(c.hubCacheDir, modelBytes, true);
      fs.mkdirSync(path.dirname(blob), { recursive: true });
      fs.writeFileSync(`${blob}.arm.incomplete`, modelBytes.subarray(0, 300_000));
      const owner = await liveProcess();
      const log: string[] = [];
      let resolving: Promise<string> | undefined;
      try {
        writeLock(blob, owner.pid);
        resolving = resolveVia('tiny/stories', { ...FAST, ...c, log: (line) => log.push(line) });
        resolving.catch(() => {});
        await until(() => log.some((l) => l.includes('waiting')), 'the waiting note', 5000);
        await new Promise((resolve) => setTimeout(resolve, 600));
        expect(fileRequests(MODEL)).toHaveLength(0);
      } finally {
        await owner.stop();
      }
      const dir = await resolving;
      expect(dir).toBe(snapshotOf(c.hubCacheDir));
      expect(fs.readFileSync(path.join(dir, MODEL)).equals(modelBytes)).toBe(true);
      expect(fileRequests(MODEL).map((r) => r.range)).toEqual(['bytes=300000-']);
      expect(log).toEqual([
        `tiny/stories@main: ${MODEL}: waiting for another download of it (pid ${owner.pid}) to finish; lock ` +
          `${blob}.lock`,
        `tiny/stories@main: ${MODEL}: taking over ${blob}.lock, left by pid ${owner.pid}, which ` +
          `is no longer running`,
      ]);
      expect(fs.existsSync(`${blob}.lock`)).toBe(false);
    },
  );

  it('a lock left by a process that is no longer running is taken over at once', async () => {
    hub.configure({});
    const c = caches();
    const blob = blobOf(c.hubCacheDir, modelBytes, false);
    fs.mkdirSync(path.dirname(blob), { recursive: true });
    const dead = spawnSync(process.execPath, ['-e', '']).pid;
    writeLock(blob, dead);
    const log: string[] = [];
    const started = Date.now();
    const dir = await resolveVia('tiny/stories', { ...FAST, ...c, log: (line) => log.push(line) });
    expect(Date.now() - started).toBeLessThan(3000);
    expect(fs.readFileSync(path.join(dir, MODEL)).equals(modelBytes)).toBe(true);
    expect(log).toEqual([
      `tiny/stories@main: ${MODEL}: taking over ${blob}.lock, left by pid ${dead}, which is no ` + `longer running`,
    ]);
    expect(walk(c.hubCacheDir).filter((f) => f.includes('.lock'))).toEqual([]);
  });

  it("a shard failing ends the wait on another shard's lock (the abort is honoured while waiting)", async () => {
    hub.configure({ cutAfterBytes: 10_000, only: (f) => f === 'model-00003-of-00003.safetensors' });
    const c = caches();
    const shard2 = 'model-00002-of-00003.safetensors';
    const blob = blobOf(c.hubCacheDir, fs.readFileSync(path.join(sharded, shard2)), false, 'tiny/sharded');
    fs.mkdirSync(path.dirname(blob), { recursive: true });
    const owner = await liveProcess();
    const log: string[] = [];
    try {
      writeLock(blob, owner.pid);
      const started = Date.now();
      await expect(
        resolveVia('tiny/sharded', { ...FAST, retries: 0, ...c, log: (line) => log.push(line) }),
      ).rejects.toThrow(/tiny\/sharded@main: model-00003-of-00003\.safetensors: download failed after 1 try/);
      expect(Date.now() - started).toBeLessThan(5000);
      expect(log.some((l) => l.includes(`${shard2}: waiting for another download of it (pid ${owner.pid})`))).toBe(
        true,
      );
      expect(fs.existsSync(`${blob}.lock`)).toBe(true); // still its owner's
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
  /** A two-shard repository; `shard1`, when given, is its first shard's bytes (to share it with another commit). */
  const commitFolder = (tag: string, shard1: Buffer = randomBytes(200_000)) =>
    repoFolder({
      'config.json': JSON.stringify({
        ...JSON.parse(fs.readFileSync(path.join(STORIES, 'config.json'), 'utf8')),
        _commit: tag,
      }),
      'model.safetensors.index.json': indexJson({ a: SHARD_1, b: SHARD_2 }),
      [SHARD_1]: shard1,
      [SHARD_2]: randomBytes(tag === 'B' ? 420_000 : 400_000),
    });
  /** A run at `repo`'s `rev` cut in shard 2 with no retries: shard 1 done, shard 2 a part. */
  async function interruptedRun(repo: string, c: ReturnType<typeof caches>, commit: string, rev = 'main') {
    hub.configure({ redirectLfs: true, cutAfterBytes: 300_000, only: (f) => f === SHARD_2 });
    await expect(resolveVia(`${repo}@${rev}`, { ...FAST, retries: 0, concurrency: 1, ...c })).rejects.toThrow(
      new RegExp(`${SHARD_2}: download failed after 1 try`),
    );
    const dir = snapshotOf(c.hubCacheDir, repo, commit);
    expect(fs.existsSync(path.join(dir, SHARD_1))).toBe(true);
    expect(fs.existsSync(path.join(dir, SHARD_2))).toBe(false);
    const parts = walk(repoDir(c.hubCacheDir, repo)).filter((f) => f.endsWith('.arm.incomplete'));
    expect(parts).toHaveLength(1);
    return { dir, part: path.join(repoDir(c.hubCacheDir, repo), parts[0]!) };
  }

  it(
    'a run resumed after main moved fetches the new commit into its own snapshot, reusing the blobs both share; ' +
      'the old snapshot is left as it was',
    async () => {
      const folderA = commitFolder('A');
      const folderB = commitFolder('B', fs.readFileSync(path.join(folderA, SHARD_1)));
      hub.publish('tiny/moving', COMMIT_A, folderA);
      const c = caches();
      const { dir: dirA } = await interruptedRun('tiny/moving', c, COMMIT_A);
      const inA = walk(dirA);

      hub.publish('tiny/moving', COMMIT_B, folderB);
      hub.configure({ redirectLfs: true });
      const log: string[] = [];
      const dirB = await resolveVia('tiny/moving', { ...FAST, ...c, log: (line) => log.push(line) });
      expect(dirB).toBe(snapshotOf(c.hubCacheDir, 'tiny/moving', COMMIT_B));
      expect(walk(dirB)).toEqual(walk(folderB));
      for (const f of walk(folderB))
        expect(fs.readFileSync(path.join(dirB, f)).equals(fs.readFileSync(path.join(folderB, f))), f).toBe(true);
      expect(walk(dirA)).toEqual(inA);
      expect(fs.readFileSync(path.join(repoDir(c.hubCacheDir, 'tiny/moving'), 'refs', 'main'), 'utf8')).toBe(COMMIT_B);
      expect(log).toEqual([
        `tiny/moving@main: the revision moved on the hub from commit ${COMMIT_A} to ${COMMIT_B} since it was ` +
          `cached; fetching ${COMMIT_B} (files it shares with ${COMMIT_A} are not downloaded again)`,
      ]);
      // The commit was asked for first; nothing was fetched at the old one, nor the shard both commits share.
      expect(hub.requests[0]).toMatchObject({ method: 'HEAD', url: '/tiny/moving/resolve/main/config.json' });
      expect(hub.requests.some((r) => r.url.includes(COMMIT_A))).toBe(false);
      expect(fileRequests(SHARD_1)).toEqual([]);
      expect(fs.realpathSync(path.join(dirB, SHARD_1))).toBe(fs.realpathSync(path.join(dirA, SHARD_1)));
    },
  );

  it('a run resumed at the same commit asks the hub once, then keeps what is done and resumes the part', async () => {
    hub.publish('tiny/steady', COMMIT_A, commitFolder('A'));
    const c = caches();
    const { dir, part } = await interruptedRun('tiny/steady', c, COMMIT_A);
    const kept = fs.statSync(part).size;
    hub.configure({ redirectLfs: true });
    const log: string[] = [];
    expect(await resolveVia('tiny/steady', { ...FAST, ...c, log: (line) => log.push(line) })).toBe(dir);
    expect(log).toEqual([]);
    // The revision once; files the repository lacks were recorded (.no_exist) and are not asked again; of the rest
    // only the part's file: its HEAD, the hub's redirect, then the CDN from where the part ends.
    expect(hub.requests.map((r) => `${r.method} ${r.url.replace(/^\/tiny\/steady\/resolve\//, '')}`)).toEqual([
      'HEAD main/config.json',
      `HEAD ${COMMIT_A}/${SHARD_2}`,
      `GET ${COMMIT_A}/${SHARD_2}`,
      expect.stringMatching(new RegExp(`^GET /cdn/tiny/steady/${COMMIT_A}/${SHARD_2}$`)),
    ]);
    expect(fileRequests(SHARD_2).map((r) => r.range)).toEqual([`bytes=${kept}-`]);
    expect(fs.existsSync(part)).toBe(false);
  });

  it('a revision that is a commit hash never moves: nothing asked about the revision, no ref written', async () => {
    hub.publish('tiny/pinned', COMMIT_A, commitFolder('A'));
    const c = caches();
    await interruptedRun('tiny/pinned', c, COMMIT_A, COMMIT_A);
    hub.configure({ redirectLfs: true });
    await resolveVia(`tiny/pinned@${COMMIT_A}`, { ...FAST, ...c });
    expect(hub.requests.map((r) => `${r.method} ${r.file}`)).toEqual([
      `HEAD ${SHARD_2}`,
      `GET ${SHARD_2}`,
      `GET ${SHARD_2}`,
    ]);
    expect(fs.existsSync(path.join(repoDir(c.hubCacheDir, 'tiny/pinned'), 'refs'))).toBe(false);
  });
});

describe('paths stay inside the cache', () => {
  /** A cache two levels below a scratch folder, so that an escape would land in the scratch folder. */
  const nestedCache = () => {
    const base = tempDir('arm-escape-');
    const cacheDir = path.join(base, 'a', 'b', 'cache');
    fs.mkdirSync(cacheDir, { recursive: true });
    return { base, cacheDir, hubCacheDir: path.join(cacheDir, 'hf') };
  };
  const onlyCache = (base: string) =>
    walk(base).every((p) => ['a', path.join('a', 'b')].includes(p) || p.startsWith(path.join('a', 'b', 'cache')));

  it('a revision with .. is refused before anything is written', async () => {
    hub.configure({});
    const { base, cacheDir, hubCacheDir } = nestedCache();
    await expect(resolveVia('fake/x@../../../../somewhere', { ...FAST, cacheDir, hubCacheDir })).rejects.toThrow(
      new RegExp(
        String.raw`fake\/x: revision "\.\.\/\.\.\/\.\.\/\.\.\/somewhere" is not a valid branch, tag or commit: ` +
          String.raw`'\.\.' is not allowed`,
      ),
    );
    await expect(
      resolveVia('fake/x', { ...FAST, cacheDir, hubCacheDir, revision: '../../../../somewhere' }),
    ).rejects.toThrow(/not a valid branch, tag or commit/);
    expect(onlyCache(base)).toBe(true);
    expect(walk(cacheDir)).toEqual([]);
    expect(hub.requests).toHaveLength(0);
  });

  it('refuses malformed revisions', async () => {
    hub.configure({});
    const { base, cacheDir, hubCacheDir } = nestedCache();
    for (const rev of ['..', '/etc', 'a\\b', 'a\u0000b', 'a\nb', 'x/', 'a//b', '.hidden', 'a b', '']) {
      await expect(
        resolveVia(`fake/x@${rev}`, { ...FAST, cacheDir, hubCacheDir }),
        JSON.stringify(rev),
      ).rejects.toThrow(/is not a valid branch, tag or commit/);
    }
    expect(onlyCache(base)).toBe(true);
    expect(hub.requests).toHaveLength(0);
  });

  it('refuses repo ids the hub would refuse', async () => {
    hub.configure({});
    const { base, cacheDir, hubCacheDir } = nestedCache();
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
      await expect(resolveVia(id, { ...FAST, cacheDir, hubCacheDir }), id).rejects.toThrow(
        /no such folder, and ".*" is not a hub repo id: expected owner\/name/,
      );
    }
    expect(onlyCache(base)).toBe(true);
    expect(hub.requests).toHaveLength(0);
    // The longest legal name still passes validation (and is then simply absent on the stand-in).
    await expect(resolveVia(`fake/${'a'.repeat(96)}`, { ...FAST, cacheDir, hubCacheDir })).rejects.toThrow(
      /config\.json not found on the hub/,
    );
  });

  it('a branch with / (refs/pr/1) is a nested ref inside the cache, as Python keeps it', async () => {
    hub.configure({});
    const { cacheDir, hubCacheDir } = caches();
    const dir = await resolveVia('tiny/stories@refs/pr/1', { ...FAST, cacheDir, hubCacheDir });
    expect(dir).toBe(snapshotOf(hubCacheDir));
    const refs = path.join(repoDir(hubCacheDir), 'refs');
    expect(walk(refs)).toEqual(['refs', path.join('refs', 'pr'), path.join('refs', 'pr', '1')]);
    expect(fs.readFileSync(path.join(refs, 'refs', 'pr', '1'), 'utf8')).toBe(standinCommit('tiny/stories'));
    expect(hub.requests[0]!.url).toBe('/tiny/stories/resolve/refs%2Fpr%2F1/config.json');
  });

  it('a weight_map naming a file outside the snapshot is refused, nothing written outside', async () => {
    hub.configure({});
    for (const [repo, bad] of [
      ['tiny/evil', /"\.\.\/evil\.safetensors" is not a file name inside the repository/],
      ['tiny/evil-abs', /"\/.*evil\.safetensors" is not a file name inside the repository/],
    ] as const) {
      const { base, cacheDir, hubCacheDir } = nestedCache();
      await expect(resolveVia(repo, { ...FAST, cacheDir, hubCacheDir })).rejects.toThrow(bad);
      expect(onlyCache(base)).toBe(true);
      expect(walk(hubCacheDir).filter((f) => f.endsWith('evil.safetensors'))).toEqual([]);
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
        { ...caches(), quiet: true, connectTimeoutMs: 3000 },
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
      await expect(resolveVia('tiny/stories', { ...FAST, ...caches() }, { HF_HUB_OFFLINE: value })).rejects.toThrow(
        new RegExp(`not in the cache .* HF_HUB_OFFLINE=${value}; pass a local checkpoint folder`),
      );
    }
    expect(hub.requests).toHaveLength(0);
  });

  it('HF_HUB_OFFLINE still serves what is complete in the cache; 0 means online', async () => {
    hub.configure({});
    const { cacheDir, hubCacheDir } = caches();
    const dir = await resolveVia('tiny/stories', { ...FAST, cacheDir, hubCacheDir }, { HF_HUB_OFFLINE: '0' });
    const requests = hub.requests.length;
    expect(await resolveVia('tiny/stories', { ...FAST, cacheDir, hubCacheDir }, { HF_HUB_OFFLINE: 'true' })).toBe(dir);
    expect(hub.requests.length).toBe(requests);
  });
});

describe('dataset files', () => {
  const FILE = 'data/test-00000-of-00001.parquet';
  it(
    '--dataset owner/name downloads its parquet through the same client (datasets/ URL, sha256, resume) into the ' +
      'hub cache as hf_hub_download lays it out, then reads it from there without asking the hub',
    async () => {
      hub.configure({ redirectLfs: false, cutAfterBytes: 100_000 });
      const { cacheDir, hubCacheDir } = caches();
      const [file] = await viaStandin(() => resolveHubDataset('allenai/reward-bench-2', { cacheDir, hubCacheDir }));
      const commit = standinCommit('allenai/reward-bench-2');
      const datasetDir = path.join(hubCacheDir, 'datasets--allenai--reward-bench-2');
      expect(file).toBe(path.join(datasetDir, 'snapshots', commit, FILE));
      expect(fs.readFileSync(file!).equals(datasetBytes)).toBe(true);
      const blob = path.join(datasetDir, 'blobs', etagOf(datasetBytes, false));
      expect(fs.readlinkSync(file!)).toBe(path.relative(path.dirname(file!), blob));
      expect(fs.readFileSync(path.join(datasetDir, 'refs', 'main'), 'utf8')).toBe(commit);
      const asked = hub.requests.filter((r) => r.file === FILE);
      expect(asked[0]!.url).toBe(`/datasets/allenai/reward-bench-2/resolve/main/${FILE}`);
      expect(asked.length).toBeGreaterThan(2); // HEAD, then a GET cut once and resumed
      expect(hub.bytesServed(FILE)).toBeLessThan(2 * datasetBytes.length);
      const before = hub.requests.length;
      await viaStandin(() => resolveHubDataset('allenai/reward-bench-2', { cacheDir, hubCacheDir }));
      expect(hub.requests.length).toBe(before);
    },
  );

  it('a dataset file Python fetched (blob, snapshot symlink, refs/main) is read offline, a flat copy too', async () => {
    const { cacheDir, hubCacheDir } = caches();
    const repo = path.join(hubCacheDir, 'datasets--allenai--reward-bench');
    const commit = 'c'.repeat(40);
    const blob = path.join(repo, 'blobs', etagOf(datasetBytes, true));
    const pointer = path.join(repo, 'snapshots', commit, 'data', 'filtered-00000-of-00001.parquet');
    fs.mkdirSync(path.dirname(blob), { recursive: true });
    fs.writeFileSync(blob, datasetBytes);
    fs.mkdirSync(path.dirname(pointer), { recursive: true });
    fs.symlinkSync(path.relative(path.dirname(pointer), blob), pointer);
    fs.mkdirSync(path.join(repo, 'refs'));
    fs.writeFileSync(path.join(repo, 'refs', 'main'), commit);
    const offline = { HF_ENDPOINT: 'http://127.0.0.1:9', HF_HUB_OFFLINE: '1' };
    expect(await withEnv(offline, () => resolveHubDataset('allenai/reward-bench', { cacheDir, hubCacheDir }))).toEqual([
      pointer,
    ]);
    // Earlier versions kept dataset files flat under our own cache root: still read, not fetched again.
    const flat = path.join(cacheDir, 'hub', 'datasets', 'allenai--reward-bench-2', 'main', FILE);
    fs.mkdirSync(path.dirname(flat), { recursive: true });
    fs.writeFileSync(flat, datasetBytes);
    expect(
      await withEnv(offline, () => resolveHubDataset('allenai/reward-bench-2', { cacheDir, hubCacheDir })),
    ).toEqual([flat]);
    await expect(
      withEnv(offline, () => resolveHubDataset('allenai/reward-bench-2@v2', { cacheDir, hubCacheDir })),
    ).rejects.toThrow(
      /allenai\/reward-bench-2@v2: data\/test-00000-of-00001.parquet is not in the cache .* HF_HUB_OFFLINE=1/,
    );
  });

  it(
    "dataset ids and revisions follow the hub client's own rules: what the " + 'looser copy let through is refused',
    async () => {
      const { cacheDir, hubCacheDir } = caches();
      const before = hub.requests.length;
      for (const ref of [
        'allenai/reward-bench-2@.',
        'allenai/reward-bench-2@x/',
        'allenai/reward-bench-2@a//b',
        'allenai/reward-bench-2@a/.b',
        'allenai/reward-bench-2@a\x7fb',
        `allenai/reward-bench-2@${'a'.repeat(256)}`,
      ]) {
        expect(parseHubDatasetRef(ref), JSON.stringify(ref)).toBeNull();
        await expect(
          viaStandin(() => resolveHubDataset(ref, { cacheDir, hubCacheDir })),
          JSON.stringify(ref),
        ).rejects.toThrow(
          /not a hub dataset id \(owner\/name\[@revision\]\): revision .* is not a valid branch, tag or commit/,
        );
      }
      await expect(
        viaStandin(() => resolveHubDataset('allenai/reward-bench-2', { cacheDir, hubCacheDir, revision: '.' })),
      ).rejects.toThrow(/revision "\." is not a valid branch, tag or commit/);
      await expect(
        viaStandin(() => resolveHubDataset('allenai/reward--bench', { cacheDir, hubCacheDir })),
      ).rejects.toThrow(/"allenai\/reward--bench" is not a hub repo id: expected owner\/name/);
      expect(hub.requests.length).toBe(before);
      expect([...walk(cacheDir), ...walk(hubCacheDir)]).toEqual([]);
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
        { ...caches() },
      ),
    ).rejects.toThrow(/is not a file name inside the repository/);
  });
});

describe('a dataset branch that moves between runs', () => {
  it("resumed after main moved, it fetches the new commit's file into that commit's snapshot", async () => {
    const FILE = 'data/test-00000-of-00001.parquet';
    const folder = (bytes: Buffer) => {
      const d = tempDir('arm-dataset-');
      fs.mkdirSync(path.join(d, 'data'));
      fs.writeFileSync(path.join(d, FILE), bytes);
      return d;
    };
    const [bytesA, bytesB] = [randomBytes(300_000), randomBytes(320_000)];
    const [commitA, commitB] = ['a'.repeat(40), 'b'.repeat(40)];
    hub.publish('tiny/moving-set', commitA, folder(bytesA));
    const { cacheDir, hubCacheDir } = caches();
    const request = { repoType: 'dataset' as const, ref: 'tiny/moving-set', file: FILE };
    hub.configure({ cutAfterBytes: 100_000 });
    await expect(
      viaStandin(() => downloadRepoFile(request, { ...FAST, retries: 0, cacheDir, hubCacheDir })),
    ).rejects.toThrow(/download failed after 1 try/);
    const repo = path.join(hubCacheDir, 'datasets--tiny--moving-set');
    expect(fs.readFileSync(path.join(repo, 'refs', 'main'), 'utf8')).toBe(commitA);
    // The cut run leaves its part, named by commit a's blob (how many bytes reached the disk depends on timing).
    const partA = path.join(repo, 'blobs', `${etagOf(bytesA, false)}.arm.incomplete`);
    expect(fs.existsSync(partA)).toBe(true);

    hub.publish('tiny/moving-set', commitB, folder(bytesB));
    hub.configure({});
    const log: string[] = [];
    const opts = { ...FAST, cacheDir, hubCacheDir, log: (l: string) => log.push(l) };
    const got = await viaStandin(() => downloadRepoFile(request, opts));
    expect(got).toBe(path.join(repo, 'snapshots', commitB, FILE));
    expect(fs.readFileSync(got!).equals(bytesB)).toBe(true);
    expect(fs.readFileSync(path.join(repo, 'refs', 'main'), 'utf8')).toBe(commitB);
    expect(fs.existsSync(path.join(repo, 'snapshots', commitA, FILE))).toBe(false);
    expect(log).toEqual([expect.stringMatching(/moved on the hub from commit a{40} to b{40}; fetching/)]);
    expect(fileRequests(FILE).map((r) => r.range)).toEqual([undefined]);
  });
});
