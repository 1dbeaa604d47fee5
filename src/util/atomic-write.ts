/**
 * A file written whole or not at all: the bytes go to a temporary file beside the target (same folder, so the
 * same file system), optionally fsynced, then renamed over the target, so a reader sees the old file or the new
 * one, never half of one. On any failure the temporary file is removed and the write's own error is thrown.
 *
 * Our own rather than the `write-file-atomic` package: callers and tests rely on the temporary name being
 * `<target>.tmp-<pid>` (src/arm/criterion.ts cleans up after an injected writer by that name, and its test plants
 * a link there to simulate a full disk), the safetensors writer streams its parts through the open descriptor, and
 * everything here is synchronous; the package names its temporary files by a hash and chowns, retries and queues
 * asynchronously, none of which these writers want.
 */
import fs from 'node:fs';
import { randomBytes } from 'node:crypto';

export interface AtomicWriteOptions {
  /** fsync the temporary file before the rename, so the new content survives a crash (default false). */
  fsync?: boolean;
  /**
   * Append a random suffix to the temporary name (`<target>.tmp-<pid>-<hex>`): for files that processes on other
   * hosts (shared cache folders, where pids may repeat) may write at the same time. Default `<target>.tmp-<pid>`.
   */
  unique?: boolean;
}

/**
 * Writes `content` to `file` atomically. `content`: the whole text or bytes, or a function that writes them
 * through the temporary file's descriptor (for a file written in parts).
 */
export function writeFileAtomic(
  file: string,
  content: string | Uint8Array | ((fd: number) => void),
  opts: AtomicWriteOptions = {},
): void {
  const tmp = `${file}.tmp-${process.pid}${opts.unique ? `-${randomBytes(4).toString('hex')}` : ''}`;
  try {
    const fd = fs.openSync(tmp, 'w');
    try {
      if (typeof content === 'function') content(fd);
      else fs.writeFileSync(fd, content);
      if (opts.fsync) fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    fs.renameSync(tmp, file);
  } catch (e) {
    // Where even the removal fails (the target's folder is a file: ENOTDIR), the write's own error is the one to
    // report.
    try {
      fs.rmSync(tmp, { force: true });
    } catch {
      /* nothing was created */
    }
    throw e;
  }
}
