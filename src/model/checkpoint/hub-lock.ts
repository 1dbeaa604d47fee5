/**
 * One process at a time per downloaded file (checkpoint/hub.ts): `<file>.lock`, created exclusively, names its
 * owner's pid and host; others wait for it, and a lock whose owner is gone is taken over. Two processes may fetch
 * the same repository at once (a server and a CLI, two fits started together).
 */
import fs from 'node:fs';
import os from 'node:os';
import { randomBytes } from 'node:crypto';
import { sleep } from './hub-http.js';

const LOCK_POLL_MS = 250;

/** What a waiting lock needs of its download session: where to say it waits, and the signal that ends the wait. */
export interface LockWaiter {
  log: (line: string) => void;
  signal: AbortSignal;
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
export async function lockFile(s: LockWaiter, dest: string, where: string): Promise<() => void> {
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
          `${where}: taking over ${lock}, left by ` +
            `${owner ? `pid ${owner.pid}, which is no longer running` : 'a process that never wrote it'}`,
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
