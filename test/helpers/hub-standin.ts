/**
 * A stand-in for the Hugging Face hub on loopback: serves local folders at `/<owner>/<name>/resolve/<rev>/<file>`
 * the way the hub does, with the misbehaviour real links show switchable per test: a slow line, a redirect to
 * a second host (the "CDN") for LFS files, a connection cut mid-file, a stall, error statuses, Range requests
 * honoured or ignored, a branch that moves to another commit. HEAD answers with the headers alone. Every wait is
 * bounded and `stop()` ends all of it, so a test can never hang on it.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import type { AddressInfo } from 'node:net';
import type { Socket } from 'node:net';

interface StandinBehaviour {
  /** Bytes per second for file bodies, sent in slices every 100 ms. */
  throttleBytesPerSec?: number;
  /** `.safetensors` files answer 302 to the CDN host, with x-linked-size and x-linked-etag as the hub sends. */
  redirectLfs?: boolean;
  /** The sha256 put in x-linked-etag instead of the true one (with redirectLfs). */
  advertisedSha256?: (file: string) => string;
  /** Destroys the socket once per file after this many body bytes of a response. */
  cutAfterBytes?: number;
  /** Once per file, after `stallAfterBytes` body bytes, sends nothing for `stallMs`. */
  stallAfterBytes?: number;
  stallMs?: number;
  /** Answers the first `times` requests for each file with `status` (before any redirect). */
  failWith?: { status: number; times: number };
  /** Serves the whole file with 200 whatever Range asks (as some servers do). */
  ignoreRange?: boolean;
  /**
   * The hub's X-Repo-Commit header on its answers (the commit the asked revision points to); default
   * standinCommit(repo), as the hub always names one.
   */
  repoCommit?: string;
  /** Only files with these names get the throttle/cut/stall treatment (default: all). */
  only?: (file: string) => boolean;
}

interface StandinRequest {
  host: 'hub' | 'cdn';
  method: string;
  url: string;
  file: string;
  range?: string;
  authorization?: string;
  status: number;
  bytesSent: number;
}

export interface HubStandin {
  /** The HF_ENDPOINT to use. */
  endpoint: string;
  requests: StandinRequest[];
  /** Most file responses in flight at once since the last `configure`. */
  maxConcurrent: number;
  /** Replaces the behaviour and resets the once-per-file state, the request log and the counters. */
  configure(behaviour: StandinBehaviour): void;
  /** Body bytes served for files named `file` (both hosts) since the last `configure`. */
  bytesServed(file: string): number;
  /**
   * Moves `repo`'s branches to `commit`, whose files are `folder`'s: asked by any branch name, `repo` is served
   * from `folder` with X-Repo-Commit `commit` (over `repoCommit`); asked by a commit published before, from that
   * commit's folder, as the hub keeps old commits.
   */
  publish(repo: string, commit: string, folder: string): void;
  stop(): Promise<void>;
}

/** The commit a repository's branches point to unless configured or published otherwise. */
export function standinCommit(repo: string): string {
  return createHash('sha1').update(`standin:${repo}`).digest('hex');
}

/** The id git gives a file's content (`git hash-object`): what the hub sends as the ETag of a file not in LFS. */
export function gitBlobSha1(body: Buffer): string {
  return createHash('sha1').update(`blob ${body.length}\0`).update(body).digest('hex');
}

const LIMIT_MS = 10_000; // no single wait of the stand-in lasts longer than this

/** `repos` maps `owner/name` to the folder whose files it serves (for every revision). */
export async function startHubStandin(repos: Record<string, string>): Promise<HubStandin> {
  let behaviour: StandinBehaviour = {};
  const cut = new Set<string>();
  const stalled = new Set<string>();
  const failures = new Map<string, number>();
  const timers = new Set<NodeJS.Timeout>();
  const sockets = new Set<Socket>();
  let stopped = false;
  let inFlight = 0;
  const published = new Map<string, { latest: string; folders: Map<string, string> }>();

  // Resolves after `ms` (at most LIMIT_MS), or at once when the client goes away or the stand-in stops.
  const wait = (ms: number, res: http.ServerResponse) =>
    new Promise<void>((resolve) => {
      const finish = () => {
        clearTimeout(timer);
        timers.delete(timer);
        res.off('close', finish);
        resolve();
      };
      const timer = setTimeout(finish, Math.min(ms, LIMIT_MS));
      timers.add(timer);
      res.on('close', finish);
    });

  const fileOf = (repo: string, rev: string, file: string): string | null => {
    const commits = published.get(repo);
    const root = commits ? (commits.folders.get(rev) ?? commits.folders.get(commits.latest)) : repos[repo];
    if (!root) return null;
    const full = path.resolve(root, file);
    return full.startsWith(path.resolve(root) + path.sep) && fs.existsSync(full) && fs.statSync(full).isFile()
      ? full
      : null;
  };

  async function serveBody(
    req: http.IncomingMessage,
    res: http.ServerResponse,
    log: StandinRequest,
    key: string,
    full: string,
    extraHeaders: http.OutgoingHttpHeaders,
  ): Promise<void> {
    const body = fs.readFileSync(full);
    const range = /^bytes=(\d+)-$/.exec(req.headers.range ?? '');
    let start = 0;
    if (range && !behaviour.ignoreRange) {
      start = Number(range[1]);
      if (start >= body.length) {
        log.status = 416;
        res.writeHead(416, { 'content-range': `bytes */${body.length}` }).end();
        return;
      }
      log.status = 206;
      res.writeHead(206, {
        ...extraHeaders,
        'content-length': body.length - start,
        'content-range': `bytes ${start}-${body.length - 1}/${body.length}`,
      });
    } else {
      log.status = 200;
      res.writeHead(200, { ...extraHeaders, 'content-length': body.length });
    }
    const treated = behaviour.only?.(log.file) ?? true;
    const rate = treated ? behaviour.throttleBytesPerSec : undefined;
    const slice = rate ? Math.max(1, Math.floor(rate / 10)) : 64 * 1024;
    inFlight++;
    max = Math.max(max, inFlight);
    try {
      for (let at = start; at < body.length;) {
        if (res.destroyed || stopped) return;
        const sent = at - start;
        if (treated && behaviour.cutAfterBytes !== undefined && !cut.has(key) && sent >= behaviour.cutAfterBytes) {
          cut.add(key);
          res.socket?.destroy();
          return;
        }
        if (treated && behaviour.stallMs && !stalled.has(key) && sent >= (behaviour.stallAfterBytes ?? 0)) {
          stalled.add(key);
          await wait(behaviour.stallMs, res);
          continue;
        }
        let n = Math.min(slice, body.length - at);
        if (treated && behaviour.cutAfterBytes !== undefined && !cut.has(key))
          n = Math.min(n, Math.max(1, behaviour.cutAfterBytes - sent));
        if (treated && behaviour.stallMs && !stalled.has(key))
          n = Math.min(n, Math.max(1, (behaviour.stallAfterBytes ?? 0) - sent));
        const drained = res.write(body.subarray(at, at + n));
        at += n;
        log.bytesSent += n;
        if (!drained) {
          await new Promise<void>((resolve) => {
            const go = () => {
              res.off('drain', go);
              res.off('close', go);
              resolve();
            };
            res.on('drain', go);
            res.on('close', go);
          });
        }
        if (rate) await wait(100, res);
      }
      res.end();
    } finally {
      inFlight--;
    }
  }

  let max = 0;
  let cdnOrigin = '';
  const requests: StandinRequest[] = [];

  const handle = (host: 'hub' | 'cdn') => (req: http.IncomingMessage, res: http.ServerResponse) => {
    // Datasets live under /datasets/<id>/resolve/… on the hub; the stand-in serves them from the same repos map.
    const pattern =
      host === 'hub'
        ? /^\/(?:datasets\/)?([^/]+\/[^/]+)\/resolve\/([^/]+)\/(.+)$/
        : /^\/cdn\/([^/]+\/[^/]+)\/([^/]+)\/(.+)$/;
    const m = pattern.exec(req.url ?? '');
    const repo = m ? m[1]! : '';
    const file = m ? decodeURIComponent(m[3]!) : '';
    const log: StandinRequest = {
      host,
      method: req.method ?? 'GET',
      url: req.url ?? '',
      file,
      range: req.headers.range,
      authorization: req.headers.authorization,
      status: 0,
      bytesSent: 0,
    };
    requests.push(log);
    const rev = m ? decodeURIComponent(m[2]!) : '';
    const commits = published.get(repo);
    const repoCommit = commits
      ? commits.folders.has(rev)
        ? rev
        : commits.latest
      : (behaviour.repoCommit ?? standinCommit(repo));
    const full = m ? fileOf(repo, rev, file) : null;
    if (!full) {
      log.status = 404;
      res.writeHead(404).end('Entry not found');
      return;
    }
    const key = `${repo}/${file}`;
    if (host === 'hub' && behaviour.failWith && (failures.get(key) ?? 0) < behaviour.failWith.times) {
      failures.set(key, (failures.get(key) ?? 0) + 1);
      log.status = behaviour.failWith.status;
      res.writeHead(behaviour.failWith.status).end('no');
      return;
    }
    const body = fs.readFileSync(full);
    const sha256 = createHash('sha256').update(body).digest('hex');
    if (host === 'hub' && behaviour.redirectLfs && file.endsWith('.safetensors')) {
      log.status = 302;
      res
        .writeHead(302, {
          location: `${cdnOrigin}/cdn/${repo}/${m![2]}/${m![3]}`,
          'x-linked-size': body.length,
          'x-linked-etag': `"${behaviour.advertisedSha256?.(file) ?? sha256}"`,
          ...(repoCommit ? { 'x-repo-commit': repoCommit } : {}),
          etag: `W/"${gitBlobSha1(body)}"`,
        })
        .end();
      return;
    }
    // Like the hub: small files carry their git blob sha1 as ETag (not a sha256; a client must not check it).
    const etag = host === 'hub' ? `"${gitBlobSha1(body)}"` : `"cdn-${sha256.slice(0, 16)}"`;
    const headers = { etag, ...(host === 'hub' && repoCommit ? { 'x-repo-commit': repoCommit } : {}) };
    if (req.method === 'HEAD') {
      log.status = 200;
      res.writeHead(200, { ...headers, 'content-length': body.length }).end();
      return;
    }
    serveBody(req, res, log, key, full, headers).catch(() => res.destroy());
  };

  const listen = async (server: http.Server) => {
    server.on('connection', (socket) => {
      sockets.add(socket);
      socket.on('close', () => sockets.delete(socket));
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  };
  const hub = http.createServer(handle('hub'));
  const cdn = http.createServer(handle('cdn'));
  const endpoint = await listen(hub);
  cdnOrigin = await listen(cdn);

  return {
    endpoint,
    requests,
    get maxConcurrent() {
      return max;
    },
    configure(next) {
      behaviour = next;
      cut.clear();
      stalled.clear();
      failures.clear();
      requests.length = 0;
      max = 0;
    },
    bytesServed: (file) => requests.filter((r) => r.file === file).reduce((sum, r) => sum + r.bytesSent, 0),
    publish(repo, commit, folder) {
      const commits = published.get(repo) ?? { latest: commit, folders: new Map<string, string>() };
      commits.folders.set(commit, folder);
      commits.latest = commit;
      published.set(repo, commits);
    },
    async stop() {
      stopped = true;
      for (const t of timers) clearTimeout(t);
      for (const socket of sockets) socket.destroy();
      await Promise.all([hub, cdn].map((server) => new Promise<void>((resolve) => server.close(() => resolve()))));
    },
  };
}
