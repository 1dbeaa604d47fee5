/**
 * `--model` resolution: a local checkpoint folder as is, or a Hugging Face hub id (`owner/name[@revision]`)
 * from the hub cache Python's huggingface_hub shares (hf-cache.ts: a model either side downloaded is the other's),
 * downloaded into it when absent or incomplete. Without network it uses what the cache holds, or fails fast with
 * a clear message rather than hanging.
 *
 * Downloads are built for slow and flaky links: a connect timeout and an idle timeout (no bytes for a while)
 * but never a total one, resume of a part file with an HTTP Range request, retries with exponential backoff,
 * and every file checked against the size and sha256 the hub advertises before it is moved under its final
 * name. Shards download a few at a time under one progress bar.
 *
 * Every file is asked for at one commit: the one the revision named when the hub first answered. In the hub
 * cache a snapshot folder is per commit, so a branch that moves mid-download cannot mix two commits' files. A
 * file is first described by a HEAD, as huggingface_hub does: its ETag names the blob (so a blob another commit,
 * process or Python fetched is not fetched again), its size and sha256 are what the GET is checked against.
 * Two processes may fetch the same repository at once (a server and a CLI, two fits started together): each
 * blob (or flat file) is locked (`<blob>.lock`, hub-lock.ts) while one of them downloads it. The bar is
 * hub-progress.ts; one request with its timeouts is hub-http.ts.
 *
 * Dataset files (data/hub-dataset.ts) go to the same cache, one file at a time (downloadRepoFile), as Python's
 * hf_hub_download keeps them. Snapshots that earlier versions downloaded into flat folders under our own cache
 * root (`<cache>/hub/[datasets/]<owner>--<name>/<revision>/`) are still found and used, never written.
 *
 * This uses node:http/https rather than fetch: redirects are followed by hand because the hub's first answer
 * (a 302 to its CDN for LFS files) carries the file's size and sha256 in `x-linked-size`/`x-linked-etag`, which
 * fetch hides when it follows redirects itself, and the connect and idle timeouts map directly onto socket
 * events instead of being rebuilt from abort signals around a body reader.
 */
import fs from 'node:fs';
import type http from 'node:http';
import path from 'node:path';
import { createHash, type Hash } from 'node:crypto';
import { pipeline } from 'node:stream/promises';
import { ModelError } from '../errors.js';
import { get, networkCode, RetryableError, sleep, TimeoutError, type Connection, type Exchange } from './hub-http.js';
import { lockFile } from './hub-lock.js';
import { ProgressBar } from './hub-progress.js';
import { contentHashDir, defaultCacheDir, hfHubCacheDir, hfTokenPath } from '../../util/cache-root.js';
import { rememberContentSha256 } from './file-hash.js';
import {
  blobPath,
  cachedCommit,
  insideOrThrow,
  isCommitHash,
  knownAbsent,
  linkPointer,
  pointerPath,
  presentIn,
  recordAbsent,
  repoCacheDir,
  snapshotFolder,
  writeRef,
} from './hf-cache.js';

const REQUIRED = ['config.json', 'tokenizer.json'];
// chat_template.jinja: where transformers ≥ 4.43 saves a model's chat template (tokenizer.ts prefers it over the
// config's).
const OPTIONAL = ['tokenizer_config.json', 'chat_template.jinja', 'generation_config.json', 'special_tokens_map.json'];
const INDEX = 'model.safetensors.index.json';
const SINGLE = 'model.safetensors';
const MAX_REDIRECTS = 5;

export interface ResolveOptions {
  /** Our own cache root (util/cache-root.ts): content-hash memos, dataset files, earlier versions' models. */
  cacheDir?: string;
  /** The Hugging Face hub cache models are read from and downloaded into (default: as huggingface_hub finds it). */
  hubCacheDir?: string;
  revision?: string;
  quiet?: boolean;
  /** Longest wait for a TCP connection (default 10 s). */
  connectTimeoutMs?: number;
  /** Longest wait with no bytes arriving, for headers or body (default 30 s); there is no total timeout. */
  idleTimeoutMs?: number;
  /** Further tries after a network error, idle timeout, 5xx or 429 (default 5). */
  retries?: number;
  /** First backoff delay, doubled on each retry (default 1 s). */
  retryDelayMs?: number;
  /** Shards downloaded at once (default 4). */
  concurrency?: number;
  /**
   * Notes along the way (waiting for another process's download, a revision that moved, a cached snapshot used
   * without the hub): default stderr, none when quiet.
   */
  log?: (line: string) => void;
}

/** The hub could not be reached at all (before any answer): a cached snapshot may still do. */
class HubUnreachableError extends ModelError {
  constructor(
    id: string,
    /** `cannot reach <endpoint> (<why>)` */
    readonly what: string,
  ) {
    super(`${id}: ${what}; offline? pass a local checkpoint folder with --model`);
  }
}

export async function resolveModelDir(ref: string, opts: ResolveOptions = {}): Promise<string> {
  if (fs.existsSync(ref)) {
    if (!fs.statSync(ref).isDirectory())
      throw new ModelError(`${ref}: --model must be a checkpoint folder or a hub id, not a file`);
    return path.resolve(ref);
  }
  const { id, revision } = splitRepoRef(ref, opts.revision);
  const idProblem = repoIdProblem(id);
  if (idProblem)
    throw new ModelError(`${ref}: no such folder, and ${JSON.stringify(id)} is not a hub repo id: ${idProblem}`);
  checkRevision(id, revision);
  const cacheRoot = path.resolve(opts.cacheDir ?? defaultCacheDir());
  const hubCache = path.resolve(opts.hubCacheDir ?? hfHubCacheDir());
  const repoDir = repoCacheDir(hubCache, id);
  const log = logOf(opts);
  const cached = checkCachedSnapshot(repoDir, revision);
  if (cached && cached.missing.length === 0) return cached.dir;
  const legacy = snapshotDir(cacheRoot, 'model', id, revision);
  if (fs.existsSync(path.join(legacy, '.complete'))) return legacy;
  const usable = cached && cached.needed.length === 0 ? cached : undefined;
  const offline = offlineSetting();
  if (offline !== undefined) {
    if (usable) return usable.dir;
    const state = cached
      ? `the cached snapshot ${cached.dir} lacks ${cached.needed.join(', ')}, and HF_HUB_OFFLINE=${offline} keeps ` +
        'it from being completed'
      : `not in the cache (${repoDir}) and HF_HUB_OFFLINE=${offline}`;
    throw new ModelError(`${id}@${revision}: ${state}; pass a local checkpoint folder with --model`);
  }
  try {
    return await fillSnapshot({ id, revision, dir: repoDir, cacheRoot, opts, repoType: 'model' });
  } catch (e) {
    if (!(e instanceof HubUnreachableError) || !usable) throw e;
    log(
      `${id}@${revision}: ${e.what}; using ${usable.dir} as the cache holds it ` +
        `(not known whether the hub has ${usable.missing.join(', ')})`,
    );
    return usable.dir;
  }
}

function logOf(opts: ResolveOptions): (line: string) => void {
  return opts.log ?? (opts.quiet ? () => {} : (line) => process.stderr.write(`${line}\n`));
}

/**
 * What a snapshot in the hub cache lacks. `missing`: files neither there nor known to be absent from the hub
 * (`.no_exist`), so the hub must be asked; of those, `needed` are the ones the model cannot load without
 * (config, tokenizer, weights). A snapshot missing nothing is used without the network; one that lacks only
 * optional files is used as it is when offline.
 */
interface CachedSnapshot {
  dir: string;
  commit: string;
  missing: string[];
  needed: string[];
}

function checkCachedSnapshot(repoDir: string, revision: string): CachedSnapshot | undefined {
  const commit = cachedCommit(repoDir, revision);
  if (!commit) return undefined;
  const dir = snapshotFolder(repoDir, commit);
  if (!fs.existsSync(dir)) return undefined;
  const missing: string[] = [];
  const needed: string[] = [];
  const lack = (file: string, isNeeded: boolean) => {
    missing.push(file);
    if (isNeeded) needed.push(file);
  };
  for (const f of REQUIRED) if (!presentIn(dir, f)) lack(f, true);
  for (const f of OPTIONAL) if (!presentIn(dir, f) && !knownAbsent(repoDir, commit, f)) lack(f, false);
  if (presentIn(dir, INDEX)) {
    for (const shard of shardsOf(path.join(dir, INDEX))) if (!presentIn(dir, shard)) lack(shard, true);
  } else if (!presentIn(dir, SINGLE)) {
    if (knownAbsent(repoDir, commit, INDEX)) lack(SINGLE, true);
    else {
      missing.push(INDEX);
      needed.push(`${SINGLE} or ${INDEX}`);
    }
  }
  return { dir, commit, missing, needed };
}

/** The shard files a sharded checkpoint's index names, checked to be files inside the repository. */
function shardsOf(indexPath: string): string[] {
  let map: unknown;
  try {
    map = JSON.parse(fs.readFileSync(indexPath, 'utf8')).weight_map;
  } catch (e) {
    throw new ModelError(`${indexPath}: not valid JSON (${(e as Error).message})`);
  }
  if (typeof map !== 'object' || map === null) throw new ModelError(`${indexPath}: no weight_map object`);
  return [...new Set(Object.values(map).map((f) => checkRepoFileName(f, `${indexPath}: weight_map`)))].sort();
}

/**
 * One file of a hub repository (a model's or a dataset's: `<endpoint>/datasets/<id>/resolve/<rev>/<file>`) in the
 * hub cache, as huggingface_hub's hf_hub_download keeps it (`datasets--<owner>--<name>/snapshots/<commit>/<file>`,
 * a symlink to its blob), with the same retries, resume, size and sha256 checks, locks, token and offline rules
 * as a model snapshot. A file the cache holds for the revision's commit is used without the network (so is one an
 * earlier version left in our own cache root). Returns the local path, or null when the hub has no such file.
 */
export async function downloadRepoFile(
  request: { repoType: 'model' | 'dataset'; ref: string; file: string },
  opts: ResolveOptions = {},
): Promise<string | null> {
  const { repoType, ref, file } = request;
  const { id, revision } = splitRepoRef(ref, opts.revision);
  const idProblem = repoIdProblem(id);
  if (idProblem) throw new ModelError(`${JSON.stringify(id)} is not a hub repo id: ${idProblem}`);
  checkRevision(id, revision);
  checkRepoFileName(file, `${id}@${revision}`);
  const cacheRoot = path.resolve(opts.cacheDir ?? defaultCacheDir());
  const repoDir = repoCacheDir(path.resolve(opts.hubCacheDir ?? hfHubCacheDir()), id, repoType);
  const cached = cachedCommit(repoDir, revision);
  if (cached && presentIn(snapshotFolder(repoDir, cached), file)) return pointerPath(repoDir, cached, file);
  const legacy = insideOrThrow(
    cacheRoot,
    path.join(snapshotDir(cacheRoot, repoType, id, revision), file),
    `${id}@${revision}: ${file}`,
  );
  if (fs.existsSync(legacy)) return legacy;
  const offline = offlineSetting();
  if (offline !== undefined) {
    const where = cached ? snapshotFolder(repoDir, cached) : repoDir;
    throw new ModelError(`${id}@${revision}: ${file} is not in the cache (${where}) and HF_HUB_OFFLINE=${offline}`);
  }
  const s = openSession({ id, revision, dir: repoDir, cacheRoot, opts, repoType }, new AbortController());
  // A branch or tag is resolved by this file's own HEAD (its X-Repo-Commit), recorded in refs/ as Python does.
  let head: FileInfo | undefined;
  if (isCommitHash(revision)) s.commit = revision;
  else {
    head = (await headFile(s, file)) ?? undefined;
    if (!s.commit) return null;
    if (cached && cached !== s.commit)
      s.log(`${id}@${revision}: the revision moved on the hub from commit ${cached} to ${s.commit}; fetching ${file}`);
    writeRef(repoDir, revision, s.commit);
  }
  const progress = new ProgressBar(opts.quiet ?? false, file);
  try {
    const got = await fetchIntoSnapshot(s, file, head, (done, total) => progress.update(file, done, total));
    return got ? pointerPath(repoDir, s.commit, file) : null;
  } finally {
    progress.stop();
  }
}

function checkRevision(id: string, revision: string): void {
  const revisionProblem = revisionProblemOf(revision);
  if (revisionProblem)
    throw new ModelError(
      `${id}: revision ${JSON.stringify(revision)} is not a valid branch, tag or commit: ${revisionProblem}`,
    );
}

/**
 * `<cache>/hub/[datasets/]<owner>--<name>/<revision>`, where earlier versions kept snapshots in a flat folder (read,
 * never written); refused if it would lie outside the cache folder.
 */
function snapshotDir(cacheRoot: string, repoType: 'model' | 'dataset', id: string, revision: string): string {
  // `/` is legal in a branch (`refs/pr/1`); encoding keeps the revision one path component, and the revision
  // checks rule out the `.`/`..` names that encoding leaves alone.
  return insideOrThrow(
    cacheRoot,
    path.join(
      cacheRoot,
      'hub',
      ...(repoType === 'dataset' ? ['datasets'] : []),
      id.replace('/', '--'),
      encodeURIComponent(revision),
    ),
    `${id}@${revision}`,
  );
}
/** HF_HUB_OFFLINE as set, when it says to stay offline (1, true, yes or on); else undefined. */
function offlineSetting(): string | undefined {
  const offline = process.env.HF_HUB_OFFLINE;
  return offline !== undefined && /^(1|true|yes|on)$/i.test(offline.trim()) ? offline : undefined;
}

const REPO_ID_RULE =
  "expected owner/name, each part made of letters, digits, '.', '_' or '-', " +
  "not starting or ending with '-' or '.', without '--' or '..', at most 96 characters";

/** `owner/name[@revision]` split at its first `@`; `revision`, when given, overrides the ref's (default `main`). */
export function splitRepoRef(ref: string, revision?: string): { id: string; revision: string } {
  const at = ref.indexOf('@');
  return { id: at < 0 ? ref : ref.slice(0, at), revision: revision ?? (at < 0 ? 'main' : ref.slice(at + 1)) };
}

/**
 * The hub's repo id rules (huggingface_hub's validate_repo_id, narrowed to ASCII and to owner/name): what is
 * wrong with `id`, or null. Shared with src/data/hub-dataset.ts, so models and datasets accept the same ids.
 */
export function repoIdProblem(id: string): string | null {
  const parts = id.split('/');
  if (parts.length !== 2) return REPO_ID_RULE;
  for (const part of parts) {
    if (!/^[A-Za-z0-9._-]{1,96}$/.test(part) || /^[-.]|[-.]$/.test(part) || part.includes('--') || part.includes('..'))
      return REPO_ID_RULE;
  }
  return null;
}

/** Branch, tag or commit: git's ref-name rules, as far as they matter for a URL and a cache folder. */
export function revisionProblemOf(revision: string): string | null {
  if (revision.length === 0 || revision.length > 255) return 'expected 1 to 255 characters';
  if (/[\x00-\x1f\x7f]/.test(revision)) return 'control characters are not allowed';
  if (/[\\ ~^:?*[]/.test(revision)) return 'backslash, space and ~ ^ : ? * [ are not allowed';
  if (revision.includes('..')) return "'..' is not allowed";
  if (revision.split('/').some((c) => c === '' || c.startsWith('.')))
    return "expected '/'-separated names, none empty or starting with '.'";
  return null;
}

/** `p` resolved, if it lies strictly inside `root`; anything else is refused before a byte is written. */

/** A file name from the hub (a weight_map entry): relative, `/`-separated, no `.`/`..` segments. */
function checkRepoFileName(name: unknown, where: string): string {
  if (
    typeof name !== 'string' ||
    name === '' ||
    path.isAbsolute(name) ||
    name.startsWith('/') ||
    /[\\\x00-\x1f\x7f]/.test(name) ||
    name.split('/').some((s) => s === '' || s === '.' || s === '..')
  ) {
    throw new ModelError(
      `${where}: ${JSON.stringify(name)} is not a file name inside the repository (expected a relative path ` +
        `without '..', e.g. model-00001-of-00002.safetensors)`,
    );
  }
  return name;
}

interface Snapshot {
  id: string;
  revision: string;
  /** The repository's folder in the hub cache (hf-cache.ts). */
  dir: string;
  cacheRoot: string;
  opts: ResolveOptions;
  repoType: 'model' | 'dataset';
}

/** A download in progress: the snapshot, its connection settings (hub-http.ts) and what the hub said so far. */
interface Session extends Snapshot, Connection {
  endpoint: URL;
  token: string | undefined;
  retries: number;
  retryDelayMs: number;
  hashesDir: string;
  /** Set once the endpoint answered anything: before that a connection failure means offline, fail fast. */
  reached: boolean;
  /**
   * The commit the revision pointed to when the hub first answered (its X-Repo-Commit header). Every later file
   * is asked for at that commit, so a branch that moves during the download cannot mix files of two commits.
   */
  commit?: string;
  log: (line: string) => void;
}

/** A download session over one repository snapshot: endpoint, token, timeouts and retry policy. */
function openSession(snapshot: Snapshot, abort: AbortController): Session {
  const { opts } = snapshot;
  const endpointText = process.env.HF_ENDPOINT ?? 'https://huggingface.co';
  let endpoint: URL;
  try {
    endpoint = new URL(endpointText);
  } catch {
    throw new ModelError(`HF_ENDPOINT=${endpointText} is not a URL (expected e.g. https://huggingface.co)`);
  }
  return {
    ...snapshot,
    endpoint,
    token: process.env.HF_TOKEN || savedToken(),
    connectTimeoutMs: opts.connectTimeoutMs ?? 10_000,
    idleTimeoutMs: opts.idleTimeoutMs ?? 30_000,
    retries: opts.retries ?? 5,
    retryDelayMs: opts.retryDelayMs ?? 1000,
    hashesDir: contentHashDir(snapshot.cacheRoot),
    reached: false,
    signal: abort.signal,
    log: logOf(opts),
  };
}

/** The token `huggingface-cli login` saved (hfTokenPath), if any: gated models work for a logged-in user. */
function savedToken(): string | undefined {
  try {
    return fs.readFileSync(hfTokenPath(), 'utf8').trim() || undefined;
  } catch {
    return undefined;
  }
}

/**
 * Fills the hub cache's snapshot of the revision and returns its folder. The commit is the revision itself when
 * it is a commit hash, else what the hub answers for config.json at the revision (recorded in `refs/`, as
 * Python does); every other file is asked for at that commit, and lands in `snapshots/<commit>/`. Files already
 * there are kept (blobs are shared between commits, so a branch that moved only fetches what changed).
 */
async function fillSnapshot(snapshot: Snapshot): Promise<string> {
  const { id, revision, dir: repoDir, opts } = snapshot;
  const where = `${id}@${revision}`;
  const abort = new AbortController();
  const s = openSession(snapshot, abort);
  // A commit hash needs no asking; a branch or tag is resolved by the first HEAD.
  let config: FileInfo | undefined;
  if (isCommitHash(revision)) s.commit = revision;
  else config = (await headFile(s, REQUIRED[0]!)) ?? undefined;
  if (!s.commit) throw new ModelError(`${where}: ${REQUIRED[0]} not found on the hub`);
  const commit = s.commit;
  const before = cachedCommit(repoDir, revision);
  if (before && before !== commit) {
    s.log(
      `${where}: the revision moved on the hub from commit ${before} to ${commit} since it was cached; ` +
        `fetching ${commit} (files it shares with ${before} are not downloaded again)`,
    );
  }
  writeRef(repoDir, revision, commit);
  for (const file of [...REQUIRED, ...OPTIONAL]) {
    const got = await fetchIntoSnapshot(s, file, file === REQUIRED[0] ? config : undefined);
    if (!got && REQUIRED.includes(file)) throw new ModelError(`${where}: ${file} not found on the hub`);
  }
  const dir = snapshotFolder(repoDir, commit);
  // A single-file checkpoint already there has no index to ask about (checkCachedSnapshot reads it so too).
  const single = presentIn(dir, SINGLE) && !presentIn(dir, INDEX);
  const shards = !single && (await fetchIntoSnapshot(s, INDEX)) ? shardsOf(path.join(dir, INDEX)) : [SINGLE];
  for (const shard of shards) pointerPath(repoDir, commit, shard);
  const progress = new ProgressBar(opts.quiet ?? false, shards.length === 1 ? shards[0]! : `${shards.length} shards`);
  try {
    await inPool(shards, opts.concurrency ?? 4, abort, async (shard) => {
      const got = await fetchIntoSnapshot(s, shard, undefined, (done, total) => progress.update(shard, done, total));
      if (!got)
        throw new ModelError(`${where}: ${shard} not found on the hub (only safetensors checkpoints are supported)`);
    });
  } finally {
    progress.stop();
  }
  return dir;
}

/**
 * One file into `snapshots/<commit>/`: its blob downloaded unless already there (from another commit, another
 * process, or Python), then the snapshot's symlink to it. False when the hub has no such file (remembered in
 * `.no_exist/`, so it is not asked again). `info`: its HEAD, when already made.
 */
async function fetchIntoSnapshot(
  s: Session,
  file: string,
  info?: FileInfo,
  onProgress?: ByteProgress,
): Promise<boolean> {
  const commit = s.commit!;
  const snapshot = snapshotFolder(s.dir, commit);
  const pointer = pointerPath(s.dir, commit, file);
  if (presentIn(snapshot, file)) {
    const size = fs.statSync(pointer).size;
    onProgress?.(size, size);
    return true;
  }
  if (knownAbsent(s.dir, commit, file)) return false;
  const head = info ?? (await headFile(s, file));
  if (!head) {
    recordAbsent(s.dir, commit, file);
    return false;
  }
  const where = `${s.id}@${s.revision}: ${file}`;
  const blob = blobPath(s.dir, head.etag, where);
  fs.mkdirSync(path.dirname(blob), { recursive: true });
  let sha256: string | undefined;
  const release = await lockFile(s, blob, where);
  try {
    if (fs.existsSync(blob)) {
      const size = fs.statSync(blob).size;
      onProgress?.(size, size);
    } else {
      const target: Target = { file, dest: blob, part: `${blob}.arm.incomplete`, expected: head };
      if (!(await withRetries(s, where, target.part, () => downloadAttempt(s, target, onProgress))))
        throw new ModelError(`${where}: the hub described the file (HEAD) but then had none to send (404)`);
      sha256 = target.verified;
    }
  } finally {
    release();
  }
  linkPointer(blob, pointer);
  // Recorded for the snapshot's path, the one the model is loaded through.
  if (sha256) rememberContentSha256(pointer, sha256, s.hashesDir);
  return true;
}

/** What the hub's HEAD says of a file: the ETag that names its blob, and its size and sha256 when given. */
interface FileInfo extends Advertised {
  etag: string;
}

/**
 * HEAD for `file` at the session's commit (or its revision, for the first file: the answer's X-Repo-Commit then
 * becomes the session's commit). Null for a 404. Redirects to another host (the CDN, for LFS files) are not
 * followed: the hub's own answer carries the file's headers; a redirect on the hub itself (a renamed repository)
 * is.
 */
async function headFile(s: Session, file: string): Promise<FileInfo | null> {
  const where = `${s.id}@${s.revision}: ${file}`;
  const headers: Record<string, string> = { 'user-agent': 'activation-rm', 'accept-encoding': 'identity' };
  if (s.token !== undefined) headers.authorization = `Bearer ${s.token}`;
  const url = fileUrl(s, s.commit ?? s.revision, file);
  const res = await withRetries(s, where, undefined, async () => {
    let current = url;
    for (let hop = 0; ; hop++) {
      const { res } = await get(s, current, headers, 'HEAD');
      s.reached = true;
      res.resume();
      const failure = statusFailure(s, where, current, res);
      if (failure) throw failure;
      const next = res.headers.location ? new URL(res.headers.location, current) : undefined;
      if (!next || next.host !== current.host || ![301, 302, 303, 307, 308].includes(res.statusCode ?? 0)) return res;
      if (hop >= MAX_REDIRECTS) throw new ModelError(`${where}: ${url.href}: more than ${MAX_REDIRECTS} redirects`);
      current = next;
    }
  });
  const status = res.statusCode ?? 0;
  if (status === 404) return null;
  if (status >= 400) throw new ModelError(`${where}: ${url.href} answered ${status} ${res.statusMessage ?? ''}`.trim());
  const commit = responseHeader(res, 'x-repo-commit');
  if (!s.commit) {
    if (!commit || !isCommitHash(commit))
      throw new ModelError(
        `${where}: ${url.href} names no commit (X-Repo-Commit); ${s.endpoint.href} does not answer as the hub does`,
      );
    s.commit = commit;
  }
  const linkedEtag = responseHeader(res, 'x-linked-etag');
  const etag = bareEtag(linkedEtag ?? responseHeader(res, 'etag'));
  if (!etag) throw new ModelError(`${where}: ${url.href} sent no ETag, which names the file in the cache`);
  const linkedSize = Number(responseHeader(res, 'x-linked-size') ?? responseHeader(res, 'content-length'));
  return {
    etag,
    size: Number.isSafeInteger(linkedSize) && linkedSize >= 0 ? linkedSize : undefined,
    sha256: sha256FromEtag(etag),
  };
}

function bareEtag(etag: string | undefined): string | undefined {
  return etag?.trim().replace(/^W\//, '').replace(/^"|"$/g, '') || undefined;
}

/** Runs `work` over `items`, at most `limit` at once; the first failure aborts the rest and is rethrown. */
async function inPool<T>(
  items: T[],
  limit: number,
  abort: AbortController,
  work: (item: T) => Promise<void>,
): Promise<void> {
  let next = 0;
  let failure: { error: unknown } | undefined;
  const worker = async () => {
    while (next < items.length && !failure) {
      const item = items[next++]!;
      try {
        await work(item);
      } catch (error) {
        if (!failure) {
          failure = { error };
          abort.abort();
        }
      }
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(limit, items.length)) }, worker));
  if (failure) throw failure.error;
}

/** `attempt` until it succeeds, with backoff, for as long as its failures are worth another try. */
async function withRetries<T>(
  s: Session,
  where: string,
  part: string | undefined,
  attempt: () => Promise<T>,
): Promise<T> {
  for (let n = 0; ; n++) {
    try {
      return await attempt();
    } catch (e) {
      if (s.signal.aborted) throw e;
      const code = networkCode(e);
      if (!s.reached && (code || e instanceof TimeoutError)) {
        throw new HubUnreachableError(
          s.id,
          `cannot reach ${s.endpoint.href.replace(/\/$/, '')} (${code ?? (e as Error).message})`,
        );
      }
      if (!(e instanceof RetryableError || e instanceof TimeoutError || code)) throw e;
      const reason = code && !(e instanceof TimeoutError) ? `connection lost: ${code}` : (e as Error).message;
      if (n >= s.retries) {
        const resume = part && fs.existsSync(part) ? `; run again to resume from ${part}` : '';
        const tries = n === 0 ? '1 try' : `${n + 1} tries`;
        throw new ModelError(`${where}: download failed after ${tries} (${reason})${resume}`);
      }
      const backoff = Math.min(60_000, s.retryDelayMs * 2 ** n);
      await sleep(Math.max(backoff, e instanceof RetryableError ? (e.retryAfterMs ?? 0) : 0), s.signal);
    }
  }
}

function fileUrl(s: Session, revision: string, file: string): URL {
  const repo = `${s.repoType === 'dataset' ? 'datasets/' : ''}${s.id}`;
  const filePath = file.split('/').map(encodeURIComponent).join('/');
  return new URL(`${s.endpoint.href.replace(/\/$/, '')}/${repo}/resolve/${encodeURIComponent(revision)}/${filePath}`);
}

/** The error for an answer that is no file: 401/403 (gated, final), 429/5xx (retryable); undefined otherwise. */
function statusFailure(s: Session, where: string, url: URL, res: http.IncomingMessage): Error | undefined {
  const status = res.statusCode ?? 0;
  if (status === 401 || status === 403)
    return new ModelError(
      `${where}: ${url.href} answered ${status}; the model is gated or private ` +
        '(set HF_TOKEN, or log in with huggingface-cli login)',
    );
  if (status === 429 || status >= 500) {
    const retryAfter = Number(res.headers['retry-after']);
    return new RetryableError(
      `${url.href} answered ${status}`,
      Number.isFinite(retryAfter) ? Math.min(60, retryAfter) * 1000 : undefined,
    );
  }
  return undefined;
}

/** What the hub said about a file on its own host (not the CDN's headers, which describe something else). */
interface Advertised {
  size?: number;
  sha256?: string;
}

function sha256FromEtag(etag: string | undefined): string | undefined {
  const bare = etag?.trim().replace(/^W\//, '').replace(/^"|"$/g, '');
  return bare && /^[0-9a-fA-F]{64}$/.test(bare) ? bare.toLowerCase() : undefined;
}

/**
 * Where one file's bytes go: `dest` once whole and verified, `part` until then. `expected`: what the hub's HEAD
 * advertised, when one was made (over what the GET's answer says). `verified`: the sha256, once it is in place.
 */
interface Target {
  file: string;
  dest: string;
  part: string;
  expected?: Advertised;
  verified?: string;
}

/**
 * One try at one file: GET it from where the part left off, and move it into place once its size and sha256
 * check out. False when the hub has no such file; a RetryableError where another try may do better.
 */
async function downloadAttempt(s: Session, target: Target, onProgress?: ByteProgress): Promise<boolean> {
  const { file, dest, part } = target;
  const offset = fs.existsSync(part) ? fs.statSync(part).size : 0;
  // Hash the bytes we already have before asking for more: for a big part this takes longer than the idle
  // timeout would allow between the response's headers and its first body byte read.
  const partHash = offset > 0 ? await hashInto(part, createHash('sha256')) : undefined;
  const url = fileUrl(s, s.commit ?? s.revision, file);
  const got = await getFollowingRedirects(s, url, offset);
  const answer = {
    ...got,
    advertised: {
      size: target.expected?.size ?? got.advertised.size,
      sha256: target.expected?.sha256 ?? got.advertised.sha256,
    },
  };
  const attempt: Attempt = { s, target, where: `${s.id}@${s.revision}: ${file}`, url, dest, part, offset, partHash };
  const settled = settleWithoutBody(attempt, answer, onProgress);
  if (settled !== null) return settled;
  const extent = bodyExtent(attempt, answer);
  const received = await receiveIntoPart(attempt, answer, extent, onProgress);
  finishReceived(attempt, extent, received);
  return true;
}

type ByteProgress = (done: number, total: number | undefined) => void;

/** One try at one file: where its bytes go and what of them is already there. */
interface Attempt {
  s: Session;
  target: Target;
  /** `<repo>@<revision>: <file>`, for messages. */
  where: string;
  url: URL;
  dest: string;
  /** `<dest>.part`: the bytes so far. */
  part: string;
  /** Bytes already in the part, asked for from there on. */
  offset: number;
  /** sha256 over the part's bytes so far (when offset > 0), to go on with. */
  partHash: Hash | undefined;
}

function responseHeader(res: http.IncomingMessage, name: string): string | undefined {
  const v = res.headers[name];
  return Array.isArray(v) ? v[0] : v;
}

/**
 * Answers that settle the try without reading a body: true (the part was already the whole file), false (no such
 * file), or an error; null when the body is the file (200, or 206 from the offset).
 */
function settleWithoutBody(
  a: Attempt,
  { res, advertised }: Exchange & { advertised: Advertised },
  onProgress?: ByteProgress,
): boolean | null {
  const { s } = a;
  const status = res.statusCode ?? 0;
  if (status === 404) {
    res.resume();
    return false;
  }
  const failure = statusFailure(s, a.where, a.url, res);
  if (failure) {
    res.resume();
    throw failure;
  }
  if (status === 416) {
    res.resume();
    return settleUnsatisfiableRange(a, res, advertised, onProgress);
  }
  if (status !== 200 && status !== 206) {
    res.resume();
    throw new ModelError(`${a.where}: ${a.url.href} answered ${status} ${res.statusMessage ?? ''}`.trimEnd());
  }
  return null;
}

/** A 416: the part already holds everything the server has (or more): it is either the whole file or stale. */
function settleUnsatisfiableRange(
  a: Attempt,
  res: http.IncomingMessage,
  advertised: Advertised,
  onProgress?: ByteProgress,
): true {
  const range = /^bytes \*\/(\d+)$/.exec(responseHeader(res, 'content-range') ?? '');
  const total = advertised.size ?? Number(range?.[1] ?? NaN);
  if (a.partHash && a.offset === total) {
    const sha256 = a.partHash.digest('hex');
    if (!advertised.sha256 || advertised.sha256 === sha256) {
      finish(a, sha256);
      onProgress?.(total, total);
      return true;
    }
  }
  fs.rmSync(a.part, { force: true });
  throw new RetryableError(
    `${a.part} did not match the file on the hub (${a.offset} bytes, range not satisfiable); starting over`,
  );
}

/**
 * Where the body starts in the file (the offset for a 206, else 0), and the file's size and sha256 when the hub
 * says (or, for the size, the body's headers do).
 */
interface BodyExtent {
  start: number;
  expectedSize: number | undefined;
  expectedSha256: string | undefined;
}

function bodyExtent(a: Attempt, { res, advertised }: Exchange & { advertised: Advertised }): BodyExtent {
  let start = 0;
  let bodyTotal: number | undefined;
  if (res.statusCode === 206) {
    const contentRange = responseHeader(res, 'content-range');
    const range = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(contentRange ?? '');
    if (!range || Number(range[1]) !== a.offset) {
      res.resume();
      fs.rmSync(a.part, { force: true });
      throw new RetryableError(
        `${a.url.href} answered a range (${contentRange}) other than the one asked for (from ${a.offset}); ` +
          'starting over',
      );
    }
    start = a.offset;
    if (range[3] !== '*') bodyTotal = Number(range[3]);
  } else if (responseHeader(res, 'content-length') !== undefined) {
    // A 200 to a Range request means the server ignored it: the body is the whole file, start from zero.
    bodyTotal = Number(responseHeader(res, 'content-length'));
  }
  if (advertised.size !== undefined && bodyTotal !== undefined && advertised.size !== bodyTotal) {
    res.resume();
    throw new ModelError(`${a.where}: the hub advertises ${advertised.size} bytes but the download holds ${bodyTotal}`);
  }
  return { start, expectedSize: advertised.size ?? bodyTotal, expectedSha256: advertised.sha256 };
}

/** The bytes received and their sha256 (the part's earlier bytes included when the body resumed it). */
interface Received {
  bytes: number;
  hash: Hash;
}

/** Streams the body onto the part (appended from `extent.start`), hashing and reporting as it goes. */
async function receiveIntoPart(
  a: Attempt,
  { res, touch }: Exchange,
  extent: BodyExtent,
  onProgress?: ByteProgress,
): Promise<Received> {
  const { start, expectedSize } = extent;
  const hash = start > 0 ? a.partHash! : createHash('sha256');
  let received = start;
  onProgress?.(received, expectedSize);
  const out = fs.createWriteStream(a.part, { flags: start > 0 ? 'a' : 'w' });
  try {
    await pipeline(
      res,
      async function* (chunks: AsyncIterable<Buffer>) {
        for await (const chunk of chunks) {
          touch();
          hash.update(chunk);
          received += chunk.length;
          onProgress?.(received, expectedSize);
          yield chunk;
        }
      },
      out,
      { signal: a.s.signal },
    );
  } finally {
    // pipeline can reject while a write is still in flight; the next try measures the part, so wait for it.
    if (!out.closed) await new Promise<void>((resolve) => out.once('close', () => resolve()));
  }
  const onDisk = fs.statSync(a.part).size;
  if (onDisk !== received) {
    fs.rmSync(a.part, { force: true });
    throw new RetryableError(`${a.part} holds ${onDisk} bytes where ${received} were written; starting over`);
  }
  return { bytes: received, hash };
}

/** Checks the received part's size and sha256 against what the hub advertised, then moves it into place. */
function finishReceived(a: Attempt, extent: BodyExtent, received: Received): void {
  const { expectedSize, expectedSha256, start } = extent;
  if (expectedSize !== undefined && received.bytes < expectedSize) {
    // The body ended early without an error: keep the part, the next try resumes it.
    throw new RetryableError(`the connection ended after ${received.bytes} of ${expectedSize} bytes`);
  }
  if (expectedSize !== undefined && received.bytes > expectedSize) {
    fs.rmSync(a.part, { force: true });
    throw new ModelError(
      `${a.where}: received ${received.bytes} bytes, but the hub advertises ${expectedSize}; ` +
        'the partial download was deleted',
    );
  }
  const sha256 = received.hash.digest('hex');
  if (expectedSha256 && sha256 !== expectedSha256) {
    fs.rmSync(a.part, { force: true });
    const message = `sha256 ${sha256} does not match the ${expectedSha256} the hub advertises`;
    // A resumed part may be left over from another version of the file: one clean try settles it.
    if (start > 0) throw new RetryableError(message);
    throw new ModelError(`${a.where}: ${message}; the download was deleted`);
  }
  finish(a, sha256);
}

/** Moves a verified part into place (fetchIntoSnapshot records its sha256 for the snapshot's path). */
function finish({ part, dest, target }: Attempt, sha256: string): void {
  fs.renameSync(part, dest);
  target.verified = sha256;
}

async function hashInto(file: string, hash: Hash): Promise<Hash> {
  for await (const chunk of fs.createReadStream(file)) hash.update(chunk as Buffer);
  return hash;
}

/**
 * GET `url` from byte `offset`, following up to MAX_REDIRECTS redirects by hand. The Authorization header is
 * dropped once a redirect leaves the host it was meant for (the CDN gets signed URLs, not the user's token).
 */
async function getFollowingRedirects(
  s: Session,
  url: URL,
  offset: number,
): Promise<Exchange & { advertised: Advertised }> {
  const advertised: Advertised = {};
  let current = url;
  let authorized = s.token !== undefined;
  for (let hop = 0; ; hop++) {
    const headers: Record<string, string> = { 'user-agent': 'activation-rm', 'accept-encoding': 'identity' };
    if (authorized) headers.authorization = `Bearer ${s.token}`;
    if (offset > 0) headers.range = `bytes=${offset}-`;
    const exchange = await get(s, current, headers);
    const res = exchange.res;
    s.reached = true;
    const onHub = current.host === s.endpoint.host;
    const status = res.statusCode ?? 0;
    if (onHub) {
      const commit = res.headers['x-repo-commit'];
      if (!s.commit && typeof commit === 'string' && /^[0-9a-f]{40}$/.test(commit)) s.commit = commit;
      const linkedSize = Number(res.headers['x-linked-size']);
      if (Number.isSafeInteger(linkedSize) && linkedSize >= 0) advertised.size = linkedSize;
      const linkedSha = sha256FromEtag(res.headers['x-linked-etag'] as string | undefined);
      if (linkedSha) advertised.sha256 = linkedSha;
      else if (status >= 200 && status < 300 && !advertised.sha256)
        advertised.sha256 = sha256FromEtag(res.headers.etag);
    }
    const location = res.headers.location;
    if (![301, 302, 303, 307, 308].includes(status) || !location) return { ...exchange, advertised };
    res.resume();
    if (hop >= MAX_REDIRECTS)
      throw new ModelError(`${s.id}@${s.revision}: ${url.href}: more than ${MAX_REDIRECTS} redirects`);
    const next = new URL(location, current);
    if (next.protocol !== 'https:' && next.protocol !== 'http:')
      throw new ModelError(`${s.id}@${s.revision}: ${url.href} redirects to ${next.protocol} URL, refused`);
    if (next.host !== current.host) authorized = false;
    current = next;
  }
}
