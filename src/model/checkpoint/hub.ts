/**
 * `--model` resolution: a local checkpoint folder as is, or a Hugging Face hub id (`owner/name[@revision]`)
 * downloaded once into the cache. Without network it fails fast with a clear message rather than hanging.
 *
 * Downloads are built for slow and flaky links: a connect timeout and an idle timeout (no bytes for a while)
 * but never a total one, resume of a `.part` file with an HTTP Range request, retries with exponential
 * backoff, and every file checked against the size and sha256 the hub advertises before it is moved under its
 * final name. Shards download a few at a time under one progress bar.
 *
 * Two processes may fetch the same repository at once (a server and a CLI, two fits started together): each
 * file is locked (`<file>.lock`) while one of them downloads it. A snapshot folder records the commit its files
 * come from (`.commit`), so a run resumed after the branch moved on the hub starts over instead of mixing commits.
 *
 * This uses node:http/https rather than fetch: redirects are followed by hand because the hub's first answer
 * (a 302 to its CDN for LFS files) carries the file's size and sha256 in `x-linked-size`/`x-linked-etag`, which
 * fetch hides when it follows redirects itself, and the connect and idle timeouts map directly onto socket
 * events instead of being rebuilt from abort signals around a body reader.
 */
import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import os from 'node:os';
import path from 'node:path';
import { createHash, randomBytes, type Hash } from 'node:crypto';
import { pipeline } from 'node:stream/promises';
import cliProgress from 'cli-progress';
import { ModelError } from '../errors.js';
import { contentHashDir, defaultCacheDir } from '../../util/cache-root.js';
import { rememberContentSha256 } from './file-hash.js';

const REQUIRED = ['config.json', 'tokenizer.json'];
// chat_template.jinja: where transformers ≥ 4.43 saves a model's chat template (tokenizer.ts prefers it over the
// config's).
const OPTIONAL = ['tokenizer_config.json', 'chat_template.jinja', 'generation_config.json', 'special_tokens_map.json'];
const INDEX = 'model.safetensors.index.json';
const MAX_REDIRECTS = 5;
/** In a snapshot folder: the commit its files and parts come from. */
const COMMIT_FILE = '.commit';
const LOCK_POLL_MS = 250;

export interface ResolveOptions {
  cacheDir?: string;
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
   * Notes along the way (waiting for another process's download, a revision that moved): default stderr, none when
   * quiet.
   */
  log?: (line: string) => void;
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
  const revisionProblem = revisionProblemOf(revision);
  if (revisionProblem)
    throw new ModelError(
      `${id}: revision ${JSON.stringify(revision)} is not a valid branch, tag or commit: ${revisionProblem}`,
    );

  const cacheRoot = path.resolve(opts.cacheDir ?? defaultCacheDir());
  // `/` is legal in a branch (`refs/pr/1`); encoding keeps the revision one path component, and the checks
  // above rule out the `.`/`..` names that encoding leaves alone.
  const dir = insideOrThrow(
    cacheRoot,
    path.join(cacheRoot, 'hub', id.replace('/', '--'), encodeURIComponent(revision)),
    `${id}@${revision}`,
  );
  if (fs.existsSync(path.join(dir, '.complete'))) return dir;
  const offline = process.env.HF_HUB_OFFLINE;
  if (offline !== undefined && /^(1|true|yes|on)$/i.test(offline.trim())) {
    throw new ModelError(
      `${id}: not in the cache (${dir}) and HF_HUB_OFFLINE=${offline}; pass a local checkpoint folder with --model`,
    );
  }
  await downloadSnapshot({ id, revision, dir, cacheRoot, opts });
  return dir;
}

/**
 * One file of a hub repository (a model's or a dataset's: `<endpoint>/datasets/<id>/resolve/<rev>/<file>`) into
 * `<cache>/hub/[datasets/]<owner>--<name>/<revision>/<file>`, with the same retries, resume, size and sha256
 * checks, token and offline rules as a model snapshot. Returns the local path, or null when the hub has no such
 * file.
 */
export async function downloadRepoFile(
  request: { repoType: 'model' | 'dataset'; ref: string; file: string },
  opts: ResolveOptions = {},
): Promise<string | null> {
  const { repoType, ref, file } = request;
  const { id, revision } = splitRepoRef(ref, opts.revision);
  const idProblem = repoIdProblem(id);
  if (idProblem) throw new ModelError(`${JSON.stringify(id)} is not a hub repo id: ${idProblem}`);
  const revisionProblem = revisionProblemOf(revision);
  if (revisionProblem)
    throw new ModelError(
      `${id}: revision ${JSON.stringify(revision)} is not a valid branch, tag or commit: ${revisionProblem}`,
    );
  checkRepoFileName(file, `${id}@${revision}`);
  const cacheRoot = path.resolve(opts.cacheDir ?? defaultCacheDir());
  const dir = insideOrThrow(
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
  const dest = insideOrThrow(cacheRoot, path.join(dir, file), `${id}@${revision}: ${file}`);
  if (fs.existsSync(dest)) return dest;
  const offline = process.env.HF_HUB_OFFLINE;
  if (offline !== undefined && /^(1|true|yes|on)$/i.test(offline.trim())) {
    throw new ModelError(`${id}@${revision}: ${file} is not in the cache (${dest}) and HF_HUB_OFFLINE=${offline}`);
  }
  const s = openSession({ id, revision, dir, cacheRoot, opts, repoType }, new AbortController());
  fs.mkdirSync(dir, { recursive: true });
  await pinCommit(s, file);
  const progress = new ProgressBar(opts.quiet ?? false, file);
  try {
    return (await downloadFile(s, file, (done, total) => progress.update(file, done, total))) ? dest : null;
  } finally {
    progress.stop();
  }
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
function insideOrThrow(root: string, p: string, what: string): string {
  const resolved = path.resolve(p);
  if (!resolved.startsWith(root + path.sep))
    throw new ModelError(`${what}: ${resolved} would lie outside the cache folder ${root}; refused`);
  return resolved;
}

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
      `${where}: ${JSON.stringify(name)} is not a file name inside the repository (expected a relative path without '..', e.g. model-00001-of-00002.safetensors)`,
    );
  }
  return name;
}

interface Snapshot {
  id: string;
  revision: string;
  dir: string;
  cacheRoot: string;
  opts: ResolveOptions;
  repoType?: 'model' | 'dataset';
}

interface Session extends Snapshot {
  endpoint: URL;
  token: string | undefined;
  connectTimeoutMs: number;
  idleTimeoutMs: number;
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
  /** `commit` is recorded in the folder's `.commit` (adoptCommit): the folder must go on recording it. */
  adopted: boolean;
  signal: AbortSignal;
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
    token: process.env.HF_TOKEN || undefined,
    connectTimeoutMs: opts.connectTimeoutMs ?? 10_000,
    idleTimeoutMs: opts.idleTimeoutMs ?? 30_000,
    retries: opts.retries ?? 5,
    retryDelayMs: opts.retryDelayMs ?? 1000,
    hashesDir: contentHashDir(snapshot.cacheRoot),
    reached: false,
    adopted: false,
    signal: abort.signal,
    log: opts.log ?? (opts.quiet ? () => {} : (line) => process.stderr.write(`${line}\n`)),
  };
}

async function downloadSnapshot(snapshot: Snapshot): Promise<void> {
  const { id, revision, dir, opts } = snapshot;
  const abort = new AbortController();
  const s = openSession(snapshot, abort);
  fs.mkdirSync(dir, { recursive: true });
  await pinCommit(s, REQUIRED[0]!);

  for (const file of [...REQUIRED, ...OPTIONAL]) {
    const got = await downloadFile(s, file);
    if (!got && REQUIRED.includes(file)) throw new ModelError(`${id}@${revision}: ${file} not found on the hub`);
  }
  let shards: string[];
  if (await downloadFile(s, INDEX)) {
    const indexPath = path.join(dir, INDEX);
    let map: unknown;
    try {
      map = JSON.parse(fs.readFileSync(indexPath, 'utf8')).weight_map;
    } catch (e) {
      throw new ModelError(`${indexPath}: not valid JSON (${(e as Error).message})`);
    }
    if (typeof map !== 'object' || map === null) throw new ModelError(`${indexPath}: no weight_map object`);
    shards = [...new Set(Object.values(map).map((f) => checkRepoFileName(f, `${indexPath}: weight_map`)))].sort();
  } else {
    shards = ['model.safetensors'];
  }
  for (const shard of shards) insideOrThrow(s.cacheRoot, path.join(dir, shard), `${id}@${revision}: ${shard}`);

  const progress = new ProgressBar(opts.quiet ?? false, shards.length === 1 ? shards[0]! : `${shards.length} shards`);
  try {
    await inPool(shards, opts.concurrency ?? 4, abort, async (shard) => {
      const got = await downloadFile(s, shard, (done, total) => progress.update(shard, done, total));
      if (!got)
        throw new ModelError(
          `${id}@${revision}: ${shard} not found on the hub (only safetensors checkpoints are supported)`,
        );
    });
  } finally {
    progress.stop();
  }
  checkPinned(s, `${id}@${revision}`);
  fs.writeFileSync(
    path.join(dir, '.complete'),
    JSON.stringify({ repo: id, revision, commit: s.commit ?? null, completedAt: new Date().toISOString() }),
  );
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

/** One bar for all shards: bytes, rate and ETA over the lot; totals grow as each shard's size becomes known. */
class ProgressBar {
  private readonly bar?: cliProgress.SingleBar;
  private readonly files = new Map<string, { done: number; total: number }>();
  private started = false;
  private readonly startedAt = Date.now();
  /** Bytes that were already on disk (resumed parts) when each file first reported: not part of the rate. */
  private resumedBytes = 0;

  constructor(
    quiet: boolean,
    private readonly label: string,
  ) {
    if (!quiet) {
      this.bar = new cliProgress.SingleBar(
        {
          format: `{label} {bar} {percentage}% | {doneMb}/{totalMb} MB | {rate} MB/s | ETA {eta_formatted}`,
          hideCursor: true,
        },
        cliProgress.Presets.shades_classic,
      );
    }
  }

  update(file: string, done: number, total: number | undefined): void {
    if (!this.bar) return;
    if (!this.files.has(file)) this.resumedBytes += done;
    this.files.set(file, { done, total: total ?? Math.max(done, this.files.get(file)?.total ?? 0) });
    let sumDone = 0,
      sumTotal = 0;
    for (const f of this.files.values()) {
      sumDone += f.done;
      sumTotal += Math.max(f.total, f.done);
    }
    const seconds = Math.max(1e-3, (Date.now() - this.startedAt) / 1000);
    const payload = {
      label: this.label,
      doneMb: (sumDone / 1e6).toFixed(1),
      totalMb: (sumTotal / 1e6).toFixed(1),
      rate: (Math.max(0, sumDone - this.resumedBytes) / 1e6 / seconds).toFixed(1),
    };
    if (!this.started) {
      this.bar.start(Math.max(1, sumTotal), sumDone, payload);
      this.started = true;
      return;
    }
    this.bar.setTotal(Math.max(1, sumTotal));
    this.bar.update(sumDone, payload);
  }

  stop(): void {
    if (this.started) this.bar?.stop();
  }
}

/** Worth another try: network trouble, timeouts, 5xx/429, a damaged part. `retryAfterMs` from the server. */
class RetryableError extends Error {
  constructor(
    message: string,
    readonly retryAfterMs?: number,
  ) {
    super(message);
  }
}

const NETWORK_CODES = new Set([
  'ECONNRESET',
  'ECONNREFUSED',
  'ECONNABORTED',
  'EPIPE',
  'ETIMEDOUT',
  'ENOTFOUND',
  'EAI_AGAIN',
  'ENETUNREACH',
  'ENETDOWN',
  'EHOSTUNREACH',
  'EHOSTDOWN',
  'ERR_STREAM_PREMATURE_CLOSE',
  'HPE_INVALID_CONSTANT',
]);

function networkCode(e: unknown): string | undefined {
  const code = (e as NodeJS.ErrnoException | undefined)?.code;
  if (code && (NETWORK_CODES.has(code) || code.startsWith('HPE_'))) return code;
  return undefined;
}

/**
 * Downloads `file` into the snapshot folder with retries; null when the hub has no such file. The file
 * appears under its final name only once its size and (when advertised) sha256 check out; until then the
 * bytes live in `<file>.part`, which a later try or a later run resumes. Only one process at a time works on
 * a file (lockFile): another one waits, then finds the file done or resumes the part the first one left.
 */
async function downloadFile(
  s: Session,
  file: string,
  onProgress?: (done: number, total: number | undefined) => void,
): Promise<boolean> {
  const dest = insideOrThrow(s.cacheRoot, path.join(s.dir, file), `${s.id}@${s.revision}: ${file}`);
  if (fs.existsSync(dest)) return true;
  fs.mkdirSync(path.dirname(dest), { recursive: true });
  const where = `${s.id}@${s.revision}: ${file}`;
  const release = await lockFile(s, dest, where);
  try {
    checkPinned(s, where);
    if (fs.existsSync(dest)) {
      // Another process finished it while this one waited.
      const size = fs.statSync(dest).size;
      onProgress?.(size, size);
      return true;
    }
    return await withRetries(s, where, `${dest}.part`, () => downloadAttempt(s, file, dest, onProgress));
  } finally {
    release();
  }
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
        throw new ModelError(
          `${s.id}: cannot reach ${s.endpoint.href.replace(/\/$/, '')} (${code ?? (e as Error).message}); offline? pass a local checkpoint folder with --model`,
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

/**
 * Before anything an earlier run left in the folder is trusted, learns which commit the revision names now
 * (one HEAD request for `probeFile`, made even when that file is already here). When the folder recorded
 * another commit, the branch moved since: adoptCommit discards the old files. A commit hash never moves, and
 * an empty folder holds nothing to trust (the first answer pins the commit and records it, downloadAttempt).
 * A hub that names no commit, or a folder begun before commits were recorded, is trusted as it is: nothing
 * to compare.
 */
async function pinCommit(s: Session, probeFile: string): Promise<void> {
  if (/^[0-9a-f]{40}$/.test(s.revision)) {
    s.commit = s.revision;
    adoptCommit(s);
    return;
  }
  if (leftovers(s.dir).length === 0) return;
  const commit = await withRetries(s, `${s.id}@${s.revision}: ${probeFile}`, undefined, () =>
    probeCommit(s, probeFile),
  );
  if (commit) {
    s.commit = commit;
    adoptCommit(s);
  }
}

/** The X-Repo-Commit the hub answers a HEAD for `file` at the revision with (the hub's own answer, no redirect). */
async function probeCommit(s: Session, file: string): Promise<string | undefined> {
  const url = fileUrl(s, s.revision, file);
  const headers: Record<string, string> = { 'user-agent': 'activation-rm', 'accept-encoding': 'identity' };
  if (s.token !== undefined) headers.authorization = `Bearer ${s.token}`;
  const { res } = await get(s, url, headers, 'HEAD');
  s.reached = true;
  res.resume();
  const failure = statusFailure(s, `${s.id}@${s.revision}: ${file}`, url, res);
  if (failure) throw failure;
  const commit = res.headers['x-repo-commit'];
  return typeof commit === 'string' && /^[0-9a-f]{40}$/.test(commit) ? commit : undefined;
}

function fileUrl(s: Session, revision: string, file: string): URL {
  return new URL(
    `${s.endpoint.href.replace(/\/$/, '')}/${s.repoType === 'dataset' ? 'datasets/' : ''}${s.id}/resolve/${encodeURIComponent(revision)}/${file.split('/').map(encodeURIComponent).join('/')}`,
  );
}

/** The error for an answer that is no file: 401/403 (gated, final), 429/5xx (retryable); undefined otherwise. */
function statusFailure(s: Session, where: string, url: URL, res: http.IncomingMessage): Error | undefined {
  const status = res.statusCode ?? 0;
  if (status === 401 || status === 403)
    return new ModelError(`${where}: ${url.href} answered ${status}; the model is gated or private (set HF_TOKEN)`);
  if (status === 429 || status >= 500) {
    const retryAfter = Number(res.headers['retry-after']);
    return new RetryableError(
      `${url.href} answered ${status}`,
      Number.isFinite(retryAfter) ? Math.min(60, retryAfter) * 1000 : undefined,
    );
  }
  return undefined;
}

/** The commit recorded in `dir`, if any. */
function recordedCommit(dir: string): string | undefined {
  try {
    return fs.readFileSync(path.join(dir, COMMIT_FILE), 'utf8').trim() || undefined;
  } catch {
    return undefined;
  }
}

/** Files (and parts) in `dir`, relative to it: everything but the commit record and locks, which are their owners'. */
function leftovers(dir: string): string[] {
  let names: string[];
  try {
    names = fs.readdirSync(dir, { recursive: true, encoding: 'utf8' });
  } catch {
    return [];
  }
  return names.filter(
    (name) =>
      !path.basename(name).startsWith(COMMIT_FILE) &&
      !/\.lock(\.aside-[0-9a-f]+)?$/.test(name) &&
      fs.statSync(path.join(dir, name), { throwIfNoEntry: false })?.isFile(),
  );
}

/**
 * Records `s.commit` as the commit of the folder's files. When the folder recorded another one, the revision
 * moved on the hub since those files and parts were fetched: they are discarded, so a snapshot never mixes two
 * commits (another process still working at the old commit fails its checkPinned). True when anything went.
 */
function adoptCommit(s: Session): boolean {
  s.adopted = true;
  const recorded = recordedCommit(s.dir);
  if (recorded === s.commit) return false;
  // The new commit is recorded before anything is listed: a process still fetching the old one fails its next
  // check, and a file it moves into place after the listing below is removed by its own finish() re-check.
  // Written aside and renamed: a reader sees the old commit or the new one, never a torn file.
  const record = path.join(s.dir, COMMIT_FILE);
  const tmp = `${record}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
  fs.writeFileSync(tmp, `${s.commit}\n`);
  fs.renameSync(tmp, record);
  if (recorded === undefined) return false;
  const discarded = leftovers(s.dir);
  for (const name of discarded) fs.rmSync(path.join(s.dir, name), { force: true });
  s.log(
    `${s.id}@${s.revision}: the revision moved on the hub from commit ${recorded} to ${s.commit} since ${s.dir} was begun; ` +
      `discarded its ${discarded.length} files and parts, starting over at ${s.commit}`,
  );
  return discarded.length > 0;
}

/** Throws when another process moved the folder on to another commit than the one this session fetches. */
function checkPinned(s: Session, where: string): void {
  if (!s.adopted) return;
  const recorded = recordedCommit(s.dir);
  if (recorded !== s.commit) {
    throw new ModelError(
      `${where}: another download moved ${s.dir} on to commit ${recorded ?? '(none)'} while this one fetched ${s.commit} (the revision moved on the hub); run again`,
    );
  }
}

/** checkPinned for a file being fetched: a part of a commit the folder no longer records is of no use, it goes. */
function checkPinnedPart(s: Session, where: string, part: string): void {
  try {
    checkPinned(s, where);
  } catch (e) {
    fs.rmSync(part, { force: true });
    throw e;
  }
}

interface LockOwner {
  pid: number;
  host: string;
  token: string;
  since?: string;
}

/** Tokens of the locks this process holds: a lock naming this pid with another token is a dead namesake's. */
const heldLocks = new Set<string>();

/**
 * Makes this process the only one working on `dest`: `<dest>.lock`, created exclusively, names its pid and
 * host. Others poll until it is gone (the session's abort signal ends the wait) and say once that they wait.
 * A lock whose pid is not running on this host is stale and is taken over; one from another host cannot be
 * checked and is waited for. Returns the release, for a `finally`.
 */
async function lockFile(s: Session, dest: string, where: string): Promise<() => void> {
  const lock = `${dest}.lock`;
  const me: LockOwner = {
    pid: process.pid,
    host: os.hostname(),
    token: randomBytes(8).toString('hex'),
    since: new Date().toISOString(),
  };
  let told = false;
  for (;;) {
    let fd: number | undefined;
    try {
      fd = fs.openSync(lock, 'wx');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    }
    if (fd !== undefined) {
      try {
        fs.writeSync(fd, JSON.stringify(me));
      } catch (e) {
        fs.closeSync(fd);
        fs.rmSync(lock, { force: true });
        throw e;
      }
      fs.closeSync(fd);
      heldLocks.add(me.token);
      return () => {
        heldLocks.delete(me.token);
        if (readLock(lock)?.owner?.token === me.token) fs.rmSync(lock, { force: true });
      };
    }
    const seen = readLock(lock);
    if (!seen) continue; // released meanwhile
    const { owner } = seen;
    if (lockIsStale(seen)) {
      if (removeStaleLock(lock, seen.raw))
        s.log(
          `${where}: taking over ${lock}, left by ${owner ? `pid ${owner.pid}, which is no longer running` : 'a process that never wrote it'}`,
        );
      continue;
    }
    if (!told) {
      told = true;
      const who = owner ? `pid ${owner.pid}${owner.host !== me.host ? ` on ${owner.host}` : ''}` : 'another process';
      s.log(`${where}: waiting for another download of it (${who}) to finish; lock ${lock}`);
    }
    await sleep(LOCK_POLL_MS, s.signal);
  }
}

function readLock(lock: string): { raw: string; owner?: LockOwner; mtimeMs: number } | undefined {
  let raw: string, mtimeMs: number;
  try {
    mtimeMs = fs.statSync(lock).mtimeMs;
    raw = fs.readFileSync(lock, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw e;
  }
  try {
    const owner = JSON.parse(raw) as LockOwner;
    if (
      Number.isSafeInteger(owner.pid) &&
      owner.pid > 0 &&
      typeof owner.host === 'string' &&
      typeof owner.token === 'string'
    )
      return { raw, owner, mtimeMs };
  } catch {
    /* not written yet, or garbled */
  }
  return { raw, mtimeMs };
}

function lockIsStale({ owner, mtimeMs }: { owner?: LockOwner; mtimeMs: number }): boolean {
  // Its owner writes it right after creating it: still empty after seconds means the owner died in between.
  if (!owner) return Date.now() - mtimeMs > 10_000;
  if (owner.host !== os.hostname()) return false;
  if (owner.pid === process.pid) return !heldLocks.has(owner.token);
  try {
    process.kill(owner.pid, 0);
    return false;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code !== 'EPERM'; // EPERM: running, as another user
  }
}

/**
 * Removes a stale lock unless it changed meanwhile: renamed aside first (atomic, so of two processes taking
 * it over one moves it), and put back when what was moved is by then a live owner's fresh lock. True when the
 * stale one went.
 */
function removeStaleLock(lock: string, raw: string): boolean {
  const aside = `${lock}.aside-${randomBytes(6).toString('hex')}`;
  try {
    fs.renameSync(lock, aside);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw e;
  }
  let stale = true;
  try {
    if (fs.readFileSync(aside, 'utf8') !== raw) {
      stale = false;
      fs.linkSync(aside, lock);
    }
  } catch {
    /* a third process locked it in the instant between: it keeps it (the fresh owner loses its file) */
  }
  fs.rmSync(aside, { force: true });
  return stale;
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

async function downloadAttempt(
  s: Session,
  file: string,
  dest: string,
  onProgress?: (done: number, total: number | undefined) => void,
): Promise<boolean> {
  const where = `${s.id}@${s.revision}: ${file}`;
  const part = `${dest}.part`;
  const offset = fs.existsSync(part) ? fs.statSync(part).size : 0;
  // Hash the bytes we already have before asking for more: for a big part this takes longer than the idle
  // timeout would allow between the response's headers and its first body byte read.
  const partHash = offset > 0 ? await hashInto(part, createHash('sha256')) : undefined;
  const url = fileUrl(s, s.commit ?? s.revision, file);
  const { res, touch, advertised } = await getFollowingRedirects(s, url, offset);
  const status = res.statusCode ?? 0;
  const header = (name: string) => {
    const v = res.headers[name];
    return Array.isArray(v) ? v[0] : v;
  };

  // The first answer of a run into an empty folder names the commit: record it. Another process may have filled
  // the folder at another commit meanwhile; adoptCommit then discarded that, this file's part included.
  if (s.commit && !s.adopted && adoptCommit(s) && offset > 0) {
    res.resume();
    throw new RetryableError(`${s.dir} held files of another commit, discarded; starting ${file} over`);
  }
  if (status === 404) {
    res.resume();
    return false;
  }
  const failure = statusFailure(s, where, url, res);
  if (failure) {
    res.resume();
    throw failure;
  }
  if (status === 416) {
    // The part already holds everything the server has (or more): it is either the whole file or stale.
    res.resume();
    const total = advertised.size ?? Number(/^bytes \*\/(\d+)$/.exec(header('content-range') ?? '')?.[1] ?? NaN);
    if (partHash && offset === total) {
      const sha256 = partHash.digest('hex');
      if (!advertised.sha256 || advertised.sha256 === sha256) {
        finish(s, where, part, dest, sha256);
        onProgress?.(total, total);
        return true;
      }
    }
    fs.rmSync(part, { force: true });
    throw new RetryableError(
      `${part} did not match the file on the hub (${offset} bytes, range not satisfiable); starting over`,
    );
  }
  if (status !== 200 && status !== 206) {
    res.resume();
    throw new ModelError(`${where}: ${url.href} answered ${status} ${res.statusMessage ?? ''}`.trimEnd());
  }

  let start = 0;
  let bodyTotal: number | undefined;
  if (status === 206) {
    const range = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(header('content-range') ?? '');
    if (!range || Number(range[1]) !== offset) {
      res.resume();
      fs.rmSync(part, { force: true });
      throw new RetryableError(
        `${url.href} answered a range (${header('content-range')}) other than the one asked for (from ${offset}); starting over`,
      );
    }
    start = offset;
    if (range[3] !== '*') bodyTotal = Number(range[3]);
  } else if (header('content-length') !== undefined) {
    // A 200 to a Range request means the server ignored it: the body is the whole file, start from zero.
    bodyTotal = Number(header('content-length'));
  }
  const expectedSize = advertised.size ?? bodyTotal;
  if (advertised.size !== undefined && bodyTotal !== undefined && advertised.size !== bodyTotal) {
    res.resume();
    throw new ModelError(`${where}: the hub advertises ${advertised.size} bytes but the download holds ${bodyTotal}`);
  }

  const hash = start > 0 ? partHash! : createHash('sha256');
  let received = start;
  onProgress?.(received, expectedSize);
  const out = fs.createWriteStream(part, { flags: start > 0 ? 'a' : 'w' });
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
      { signal: s.signal },
    );
  } finally {
    // pipeline can reject while a write is still in flight; the next try measures the part, so wait for it.
    if (!out.closed) await new Promise<void>((resolve) => out.once('close', () => resolve()));
  }
  checkPinnedPart(s, where, part);
  const onDisk = fs.statSync(part).size;
  if (onDisk !== received) {
    fs.rmSync(part, { force: true });
    throw new RetryableError(`${part} holds ${onDisk} bytes where ${received} were written; starting over`);
  }

  if (expectedSize !== undefined && received < expectedSize) {
    // The body ended early without an error: keep the part, the next try resumes it.
    throw new RetryableError(`the connection ended after ${received} of ${expectedSize} bytes`);
  }
  if (expectedSize !== undefined && received > expectedSize) {
    fs.rmSync(part, { force: true });
    throw new ModelError(
      `${where}: received ${received} bytes, but the hub advertises ${expectedSize}; the partial download was deleted`,
    );
  }
  const sha256 = hash.digest('hex');
  if (advertised.sha256 && sha256 !== advertised.sha256) {
    fs.rmSync(part, { force: true });
    const message = `sha256 ${sha256} does not match the ${advertised.sha256} the hub advertises`;
    // A resumed part may be left over from another version of the file: one clean try settles it.
    if (start > 0) throw new RetryableError(message);
    throw new ModelError(`${where}: ${message}; the download was deleted`);
  }
  finish(s, where, part, dest, sha256);
  return true;
}

/**
 * Moves a verified part into place and records its sha256, so loading the model does not hash it again; unless
 * the folder moved on to another commit meanwhile, which makes the part a leftover of the old one.
 */
function finish(s: Session, where: string, part: string, dest: string, sha256: string): void {
  checkPinnedPart(s, where, part);
  fs.renameSync(part, dest);
  // The folder may have moved on to another commit between that check and the rename: then this file is of
  // the old commit, and the process that moved it has already listed what to discard.
  try {
    checkPinned(s, where);
  } catch (e) {
    fs.rmSync(dest, { force: true });
    throw e;
  }
  rememberContentSha256(dest, sha256, s.hashesDir);
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

class TimeoutError extends Error {}

interface Exchange {
  res: http.IncomingMessage;
  /** Call on every body chunk: restarts the idle timer. */
  touch: () => void;
}

/**
 * One GET whose response arrives with its headers. A timer guards the connection (connectTimeoutMs) and then
 * every silence on it (idleTimeoutMs): the headers, and each body chunk (via `touch`), must come within that.
 */
function get(s: Session, url: URL, headers: Record<string, string>, method: 'GET' | 'HEAD' = 'GET'): Promise<Exchange> {
  return new Promise((resolve, reject) => {
    if (s.signal.aborted) {
      reject(new Error('aborted'));
      return;
    }
    const req = (url.protocol === 'https:' ? https : http).request(url, { method, headers });
    let response: http.IncomingMessage | undefined;
    let timer: NodeJS.Timeout | undefined;
    const fail = (e: Error) => {
      response?.destroy(e);
      req.destroy(e);
    };
    const arm = (ms: number, what: string) => {
      clearTimeout(timer);
      timer = setTimeout(() => fail(new TimeoutError(`${what} ${url.host} for ${ms} ms`)), ms);
    };
    const onAbort = () => fail(new Error('aborted'));
    const done = () => {
      clearTimeout(timer);
      s.signal.removeEventListener('abort', onAbort);
    };
    s.signal.addEventListener('abort', onAbort, { once: true });
    arm(s.connectTimeoutMs, 'no connection to');
    req.on('socket', (socket) => {
      const connected = () => {
        if (!response) arm(s.idleTimeoutMs, 'no answer from');
      };
      if (socket.connecting) socket.once('connect', connected);
      else connected();
    });
    req.on('response', (res) => {
      response = res;
      arm(s.idleTimeoutMs, 'no bytes from');
      res.on('close', done);
      resolve({ res, touch: () => arm(s.idleTimeoutMs, 'no bytes from') });
    });
    req.on('error', (e) => {
      done();
      reject(e);
    });
    req.end();
  });
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal.aborted) {
      reject(new Error('aborted'));
      return;
    }
    const timer = setTimeout(() => {
      signal.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(timer);
      reject(new Error('aborted'));
    };
    signal.addEventListener('abort', onAbort, { once: true });
  });
}
