/**
 * Full-content sha256 of checkpoint files, computed once per file and remembered by (path, size, mtime,
 * ctime, inode): a model's identity (graph cache key, criterion files) must change when any byte of its
 * weights changes, and hashing gigabytes on every load would not pay. Hub downloads hand in the sha256
 * they verified while streaming, so a fresh download is never read twice.
 *
 * The memo lives in `<cacheDir>/hashes/<sha256(absolute path)>.json`, one small file per checkpoint file,
 * written atomically (temporary file renamed into place) so concurrent loads never see half an entry.
 */
import fs from 'node:fs';
import path from 'node:path';
import { createHash } from 'node:crypto';
import { ModelError } from '../errors.js';

interface MemoEntry { path: string; size: number; mtimeMs: number; ctimeMs: number; ino: number; dev: number; sha256: string }

const CHUNK_BYTES = 8 * 1024 * 1024;

function statKey(file: string): Omit<MemoEntry, 'sha256'> {
  const st = fs.statSync(file);
  return { path: path.resolve(file), size: st.size, mtimeMs: st.mtimeMs, ctimeMs: st.ctimeMs, ino: st.ino, dev: st.dev };
}

function memoFile(memoDir: string, absPath: string): string {
  return path.join(memoDir, `${createHash('sha256').update(absPath).digest('hex').slice(0, 32)}.json`);
}

const sameStat = (a: Omit<MemoEntry, 'sha256'>, b: Partial<MemoEntry>) =>
  a.path === b.path && a.size === b.size && a.mtimeMs === b.mtimeMs && a.ctimeMs === b.ctimeMs && a.ino === b.ino && a.dev === b.dev;

/** sha256 (hex) of every byte of `file`, from the memo in `memoDir` when the file is unchanged since. */
export function contentSha256(file: string, memoDir: string): string {
  let key: Omit<MemoEntry, 'sha256'>;
  try { key = statKey(file); } catch (e) {
    throw new ModelError(`${file}: cannot read (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
  const memo = memoFile(memoDir, key.path);
  try {
    const entry = JSON.parse(fs.readFileSync(memo, 'utf8')) as Partial<MemoEntry>;
    if (sameStat(key, entry) && typeof entry.sha256 === 'string' && /^[0-9a-f]{64}$/.test(entry.sha256)) return entry.sha256;
  } catch { /* no memo, or a damaged one: hash again */ }
  const sha256 = hashFile(file);
  // The file may have changed while it was read: only remember a hash whose stat held still.
  if (sameStat(statKey(file), key)) writeMemo(memo, { ...key, sha256 });
  return sha256;
}

/** Records a hash already known (a hub download verified while streaming) for the file as it is now. */
export function rememberContentSha256(file: string, sha256: string, memoDir: string): void {
  if (!/^[0-9a-f]{64}$/.test(sha256)) throw new Error(`rememberContentSha256: ${JSON.stringify(sha256)} is not a hex sha256`);
  const key = statKey(file);
  writeMemo(memoFile(memoDir, key.path), { ...key, sha256 });
}

function hashFile(file: string): string {
  const h = createHash('sha256');
  const fd = fs.openSync(file, 'r');
  try {
    const buf = Buffer.allocUnsafe(CHUNK_BYTES);
    for (let at = 0; ;) {
      const n = fs.readSync(fd, buf, 0, buf.length, at);
      if (n === 0) break;
      h.update(buf.subarray(0, n));
      at += n;
    }
  } finally {
    fs.closeSync(fd);
  }
  return h.digest('hex');
}

function writeMemo(memo: string, entry: MemoEntry): void {
  try {
    fs.mkdirSync(path.dirname(memo), { recursive: true });
    const tmp = `${memo}.tmp-${process.pid}`;
    fs.writeFileSync(tmp, JSON.stringify(entry));
    fs.renameSync(tmp, memo);
  } catch {
    // A read-only cache only costs hashing again next time.
  }
}

/**
 * The identity of a checkpoint's weights: sha256 over every file's name and full-content sha256. Any edited
 * byte changes it (graph cache keys, criterion files); the per-file hashes are memoised by stat.
 */
export function weightsContentHash(files: readonly string[], memoDir: string): string {
  const h = createHash('sha256');
  for (const f of [...files].sort()) h.update(path.basename(f)).update('\0').update(contentSha256(f, memoDir)).update('\n');
  return h.digest('hex');
}
