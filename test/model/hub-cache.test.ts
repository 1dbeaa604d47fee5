/**
 * The Hugging Face cache shared with Python: where it is (HF_HUB_CACHE and its older names), a snapshot laid
 * out as huggingface_hub writes it (blobs, relative symlinks, refs/main, .no_exist) used without the network,
 * an incomplete one completed rather than trusted, our downloads read back by another implementation of the
 * layout (@huggingface/hub's scanCacheDir), and snapshots earlier versions left in our own cache still found.
 * The download path itself (resume, retries, locks, verification) is hub.test.ts.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { scanCacheDir } from '@huggingface/hub';
import { resolveModelDir, type ResolveOptions } from '../../src/model/checkpoint/hub.js';
import { hfHubCacheDir } from '../../src/util/cache-root.js';
import { Decoder } from '../../src/model/decoder.js';
import { STORIES, tempDir } from '../helpers/fixtures.js';
import { gitBlobSha1, standinCommit, startHubStandin, type HubStandin } from '../helpers/hub-standin.js';

const REPO = 'tiny/stories';
const COMMIT = standinCommit(REPO);
const MODEL = 'model.safetensors';
const FAST: ResolveOptions = { quiet: true, connectTimeoutMs: 1000, idleTimeoutMs: 1000, retryDelayMs: 20 };
const STORIES_FILES = ['config.json', 'generation_config.json', MODEL, 'tokenizer.json', 'tokenizer_config.json'];

let hub: HubStandin;
let nested: string;
beforeAll(async () => {
  process.env.HF_HUB_CACHE = tempDir('hf-hub-default-');
  process.env.HF_TOKEN_PATH = path.join(tempDir(), 'no-token');
  nested = tempDir('arm-repo-');
  for (const f of ['config.json', 'tokenizer.json']) fs.copyFileSync(path.join(STORIES, f), path.join(nested, f));
  fs.mkdirSync(path.join(nested, 'weights'));
  fs.copyFileSync(path.join(STORIES, MODEL), path.join(nested, 'weights', 'part-1.safetensors'));
  fs.writeFileSync(
    path.join(nested, 'model.safetensors.index.json'),
    JSON.stringify({ metadata: {}, weight_map: { w: 'weights/part-1.safetensors' } }),
  );
  hub = await startHubStandin({ [REPO]: STORIES, 'tiny/nested': nested });
});
afterAll(() => hub?.stop());

/** Runs `f` with the environment variables set as given (undefined: unset), restoring them after. */
async function withEnv<T>(vars: Record<string, string | undefined>, f: () => Promise<T> | T): Promise<T> {
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

const online = { HF_ENDPOINT: '', HF_TOKEN: undefined, HF_HUB_OFFLINE: undefined };
const resolveOnline = (ref: string, opts: ResolveOptions) =>
  withEnv({ ...online, HF_ENDPOINT: hub.endpoint }, () => resolveModelDir(ref, opts));
const caches = () => ({ cacheDir: tempDir('arm-cache-'), hubCacheDir: tempDir('hf-hub-') });

/** The ETag the real hub gives a file, which huggingface_hub names its blob by: sha256 for LFS, git's sha1 else. */
function hubEtag(bytes: Buffer, lfs: boolean): string {
  return lfs ? createHash('sha256').update(bytes).digest('hex') : gitBlobSha1(bytes);
}

/**
 * A snapshot as Python's huggingface_hub writes it: each file's bytes in blobs/<etag>, a relative symlink to it
 * in snapshots/<commit>/, refs/main holding the commit (no newline), `.no_exist` markers for `absent` files.
 */
function writePythonSnapshot(
  hubCacheDir: string,
  files: Record<string, Buffer>,
  absent: string[] = [],
  repo = REPO,
  commit = COMMIT,
): string {
  const repoDir = path.join(hubCacheDir, `models--${repo.replace('/', '--')}`);
  const snapshot = path.join(repoDir, 'snapshots', commit);
  for (const [name, bytes] of Object.entries(files)) {
    const etag = hubEtag(bytes, name.endsWith('.safetensors'));
    fs.mkdirSync(path.join(repoDir, 'blobs'), { recursive: true });
    fs.writeFileSync(path.join(repoDir, 'blobs', etag), bytes);
    const pointer = path.join(snapshot, name);
    fs.mkdirSync(path.dirname(pointer), { recursive: true });
    fs.symlinkSync(path.relative(path.dirname(pointer), path.join(repoDir, 'blobs', etag)), pointer);
  }
  for (const name of absent) {
    fs.mkdirSync(path.join(repoDir, '.no_exist', commit), { recursive: true });
    fs.writeFileSync(path.join(repoDir, '.no_exist', commit, name), '');
  }
  fs.mkdirSync(path.join(repoDir, 'refs'), { recursive: true });
  fs.writeFileSync(path.join(repoDir, 'refs', 'main'), commit);
  return snapshot;
}

const storiesFiles = (names = STORIES_FILES) =>
  Object.fromEntries(names.map((f) => [f, fs.readFileSync(path.join(STORIES, f))]));
const LACKING = ['chat_template.jinja', 'special_tokens_map.json'];

describe('where the hub cache is', () => {
  it('HF_HUB_CACHE, then HUGGINGFACE_HUB_CACHE, then HF_HOME/hub, then XDG_CACHE_HOME/huggingface/hub', () => {
    const none = { HF_HUB_CACHE: undefined, HUGGINGFACE_HUB_CACHE: undefined, HF_HOME: undefined };
    const at = (vars: Record<string, string | undefined>) => withEnv({ ...none, ...vars }, hfHubCacheDir);
    return Promise.all([
      expect(at({ XDG_CACHE_HOME: undefined })).resolves.toBe(path.join(os.homedir(), '.cache', 'huggingface', 'hub')),
      expect(at({ XDG_CACHE_HOME: '/x' })).resolves.toBe('/x/huggingface/hub'),
      expect(at({ XDG_CACHE_HOME: '/x', HF_HOME: '/h' })).resolves.toBe('/h/hub'),
      expect(at({ HF_HOME: '~/hf' })).resolves.toBe(path.join(os.homedir(), 'hf', 'hub')),
      expect(at({ HF_HOME: '/h', HUGGINGFACE_HUB_CACHE: '/old' })).resolves.toBe('/old'),
      expect(at({ HF_HOME: '/h', HUGGINGFACE_HUB_CACHE: '/old', HF_HUB_CACHE: '/new' })).resolves.toBe('/new'),
      expect(at({ HF_HUB_CACHE: '', HF_HOME: '/h' })).resolves.toBe('/h/hub'),
    ]);
  });
});

describe('the token huggingface-cli login saved', () => {
  it('is sent to the hub when HF_TOKEN is unset (HF_TOKEN_PATH, else HF_HOME/token), and HF_TOKEN wins', async () => {
    const hfHome = tempDir('hf-home-');
    fs.writeFileSync(path.join(hfHome, 'token'), 'hf_saved\n');
    const asked = async (env: Record<string, string | undefined>) => {
      hub.configure({});
      await withEnv({ ...online, HF_ENDPOINT: hub.endpoint, HF_TOKEN_PATH: undefined, ...env }, () =>
        resolveModelDir(REPO, { ...FAST, ...caches() }),
      );
      return new Set(hub.requests.map((r) => r.authorization));
    };
    expect(await asked({ HF_HOME: hfHome })).toEqual(new Set(['Bearer hf_saved']));
    expect(await asked({ HF_HOME: hfHome, HF_TOKEN: 'hf_env' })).toEqual(new Set(['Bearer hf_env']));
    const elsewhere = path.join(tempDir(), 'my-token');
    fs.writeFileSync(elsewhere, 'hf_elsewhere');
    expect(await asked({ HF_HOME: hfHome, HF_TOKEN_PATH: elsewhere })).toEqual(new Set(['Bearer hf_elsewhere']));
    expect(await asked({ HF_HOME: tempDir() })).toEqual(new Set([undefined]));
  });
});

describe('a snapshot Python downloaded', () => {
  it('is found and loaded offline, as it lies, through its symlinks', async () => {
    const { cacheDir, hubCacheDir } = caches();
    const snapshot = writePythonSnapshot(hubCacheDir, storiesFiles(), LACKING);
    expect(
      await withEnv({ ...online, HF_HUB_OFFLINE: '1' }, () => resolveModelDir(REPO, { cacheDir, hubCacheDir })),
    ).toBe(snapshot);
    // With the hub reachable it is not asked anything either: every file is there or known to be absent.
    hub.configure({});
    expect(await resolveOnline(REPO, { ...FAST, cacheDir, hubCacheDir })).toBe(snapshot);
    expect(hub.requests).toEqual([]);
    const decoder = await withEnv({ ...online, HF_HUB_OFFLINE: '1', HF_HUB_CACHE: hubCacheDir }, () =>
      Decoder.load(REPO, { cacheDir, quiet: true }),
    );
    try {
      expect(decoder.info.modelDir).toBe(snapshot);
      const golden = JSON.parse(fs.readFileSync(path.join(STORIES, 'golden.json'), 'utf8')).prompts[1];
      const ids = decoder.tokenizer.encode('Once upon a time');
      expect(await decoder.generate(ids, { maxNewTokens: 8, stopTokens: [] })).toEqual(
        golden.continuation_ids.slice(0, 8),
      );
    } finally {
      await decoder.dispose();
    }
    expect(fs.readdirSync(snapshot).every((f) => fs.lstatSync(path.join(snapshot, f)).isSymbolicLink())).toBe(true);
  });

  it('lacking optional files nobody recorded, is used as it is when the hub cannot be reached', async () => {
    const { cacheDir, hubCacheDir } = caches();
    const snapshot = writePythonSnapshot(hubCacheDir, storiesFiles());
    const log: string[] = [];
    const unreachable = { ...online, HF_ENDPOINT: 'http://127.0.0.1:9' };
    const opts = { ...FAST, cacheDir, hubCacheDir, log: (line: string) => log.push(line) };
    expect(await withEnv(unreachable, () => resolveModelDir(REPO, opts))).toBe(snapshot);
    expect(log).toEqual([
      `tiny/stories@main: cannot reach http://127.0.0.1:9 (ECONNREFUSED); using ${snapshot} as the cache holds it ` +
        '(not known whether the hub has chat_template.jinja, special_tokens_map.json)',
    ]);
    // Online, the two it cannot tell apart from missing are asked for once, then known absent.
    hub.configure({});
    expect(await resolveOnline(REPO, opts)).toBe(snapshot);
    expect(hub.requests.map((r) => `${r.method} ${r.file} ${r.status}`).sort()).toEqual(
      ['HEAD config.json 200', ...LACKING.map((f) => `HEAD ${f} 404`)].sort(),
    );
    hub.configure({});
    expect(await resolveOnline(REPO, opts)).toBe(snapshot);
    expect(hub.requests).toEqual([]);
  });

  it('incomplete (weights missing, a blob deleted) is completed, not trusted; offline it is refused', async () => {
    const { cacheDir, hubCacheDir } = caches();
    const snapshot = writePythonSnapshot(hubCacheDir, storiesFiles(STORIES_FILES.filter((f) => f !== MODEL)), LACKING);
    const tokenizerBlob = fs.realpathSync(path.join(snapshot, 'tokenizer.json'));
    fs.rmSync(tokenizerBlob);
    await expect(
      withEnv({ ...online, HF_HUB_OFFLINE: '1' }, () => resolveModelDir(REPO, { cacheDir, hubCacheDir })),
    ).rejects.toThrow(
      `tiny/stories@main: the cached snapshot ${snapshot} lacks tokenizer.json, model.safetensors or ` +
        'model.safetensors.index.json, and HF_HUB_OFFLINE=1 keeps it from being completed; pass a local checkpoint ' +
        'folder with --model',
    );
    const configBlob = fs.realpathSync(path.join(snapshot, 'config.json'));
    const configIno = fs.statSync(configBlob).ino;
    hub.configure({ redirectLfs: true });
    expect(await resolveOnline(REPO, { ...FAST, cacheDir, hubCacheDir })).toBe(snapshot);
    for (const f of STORIES_FILES)
      expect(fs.readFileSync(path.join(snapshot, f)).equals(fs.readFileSync(path.join(STORIES, f))), f).toBe(true);
    // Only what was missing came over the wire; what Python left is kept as it was.
    expect(hub.requests.filter((r) => r.method === 'GET' && r.host === 'hub').map((r) => r.file)).toEqual([
      'tokenizer.json',
      MODEL,
    ]);
    expect(fs.statSync(configBlob).ino).toBe(configIno);
    expect(fs.realpathSync(path.join(snapshot, MODEL))).toBe(
      path.join(
        hubCacheDir,
        'models--tiny--stories',
        'blobs',
        hubEtag(fs.readFileSync(path.join(STORIES, MODEL)), true),
      ),
    );
  });
});

describe('a snapshot we downloaded', () => {
  it('is laid out as huggingface_hub lays it out, and another reader of that layout sees it whole', async () => {
    const { cacheDir, hubCacheDir } = caches();
    hub.configure({ redirectLfs: true });
    const dir = await resolveOnline(REPO, { ...FAST, cacheDir, hubCacheDir });
    const repoDir = path.join(hubCacheDir, 'models--tiny--stories');
    expect(dir).toBe(path.join(repoDir, 'snapshots', COMMIT));
    expect(fs.readFileSync(path.join(repoDir, 'refs', 'main'), 'utf8')).toBe(COMMIT);
    // Relative links to blobs named as the hub names them: the sha256 for LFS files, git's sha1 for the rest.
    for (const f of STORIES_FILES) {
      const etag = hubEtag(fs.readFileSync(path.join(STORIES, f)), f.endsWith('.safetensors'));
      expect(fs.readlinkSync(path.join(dir, f)), f).toBe(`../../blobs/${etag}`);
    }
    expect(fs.readdirSync(path.join(repoDir, '.no_exist', COMMIT)).sort()).toEqual([
      'chat_template.jinja',
      'model.safetensors.index.json',
      'special_tokens_map.json',
    ]);
    const scan = await scanCacheDir(hubCacheDir);
    expect(scan.warnings).toEqual([]);
    expect(scan.repos).toHaveLength(1);
    const [repo] = scan.repos;
    expect(repo!.id).toEqual({ name: REPO, type: 'model' });
    expect(repo!.revisions).toHaveLength(1);
    const [revision] = repo!.revisions;
    expect(revision!.commitOid).toBe(COMMIT);
    expect(revision!.refs).toEqual(['main']);
    expect(revision!.files.map((f) => path.basename(f.path)).sort()).toEqual(STORIES_FILES);
    const weights = revision!.files.find((f) => f.path === path.join(dir, MODEL))!;
    expect(weights.blob).toMatchObject({
      path: path.join(repoDir, 'blobs', hubEtag(fs.readFileSync(path.join(STORIES, MODEL)), true)),
      size: fs.statSync(path.join(STORIES, MODEL)).size,
    });
    expect(repo!.size).toBe(STORIES_FILES.reduce((sum, f) => sum + fs.statSync(path.join(STORIES, f)).size, 0));
  });

  it('links a file in a subfolder with one ../ more', async () => {
    const { cacheDir, hubCacheDir } = caches();
    hub.configure({ redirectLfs: true });
    const dir = await resolveOnline('tiny/nested', { ...FAST, cacheDir, hubCacheDir });
    const sha256 = hubEtag(fs.readFileSync(path.join(nested, 'weights', 'part-1.safetensors')), true);
    expect(fs.readlinkSync(path.join(dir, 'weights', 'part-1.safetensors'))).toBe(`../../../blobs/${sha256}`);
  });
});

describe('snapshots earlier versions downloaded into our own cache', () => {
  it('are found and used without the network; a complete hub-cache snapshot comes first', async () => {
    const { cacheDir, hubCacheDir } = caches();
    const legacy = path.join(cacheDir, 'hub', 'tiny--stories', 'main');
    fs.mkdirSync(legacy, { recursive: true });
    for (const f of STORIES_FILES) fs.copyFileSync(path.join(STORIES, f), path.join(legacy, f));
    fs.writeFileSync(path.join(legacy, '.complete'), JSON.stringify({ repo: REPO, revision: 'main', commit: null }));
    hub.configure({});
    expect(await resolveOnline(REPO, { ...FAST, cacheDir, hubCacheDir })).toBe(legacy);
    expect(hub.requests).toEqual([]);
    const snapshot = writePythonSnapshot(hubCacheDir, storiesFiles(), LACKING);
    expect(await resolveOnline(REPO, { ...FAST, cacheDir, hubCacheDir })).toBe(snapshot);
  });
});
