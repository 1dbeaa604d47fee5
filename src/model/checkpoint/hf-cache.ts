/**
 * The Hugging Face hub cache as Python's huggingface_hub lays it out, so a model either side downloaded is the
 * other's too (one copy on disk; `hf cache scan` sees ours):
 *   <hub cache>/models--<owner>--<name>/          (datasets: datasets--<owner>--<name>/, laid out alike)
 *     refs/<revision>                    the commit the branch or tag pointed to when last asked (no newline)
 *     blobs/<etag>                       file contents, named by the hub's ETag: the sha256 for LFS files (weights),
 *                                        the git blob sha1 for small ones; shared by every commit that has them
 *     snapshots/<commit>/<file>          relative symlinks to ../../blobs/<etag> (one more ../ per subfolder)
 *     .no_exist/<commit>/<file>          empty: the hub answered 404 for this file at this commit
 * A snapshot folder holds one commit's files and nothing else: which commit a file belongs to is where it lies,
 * so two commits cannot mix. Only this module knows these paths; the network side is hub.ts.
 *
 * Our additions stay outside what Python reads: `blobs/<etag>.arm.incomplete` (a resumable part; Python's own
 * parts are `<etag>.<random>.incomplete`, so neither touches the other's, and `hf cache scan` lists ours as
 * incomplete downloads) and `blobs/<etag>.lock` (hub-lock.ts: Python locks in `<hub cache>/.locks/`, with flock,
 * which Node cannot take; a Python download of the same blob at the same moment costs bandwidth, not
 * correctness, since both verify and rename whole files).
 */
import fs from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { ModelError } from '../errors.js';
import { writeFileAtomic } from '../../util/atomic-write.js';

/**
 * A repository's folder in the hub cache: `models--Owner--Name` or `datasets--Owner--Name` (the hub's case kept,
 * as Python does).
 */
export function repoCacheDir(hubCache: string, id: string, repoType: 'model' | 'dataset' = 'model'): string {
  return insideOrThrow(hubCache, path.join(hubCache, `${repoType}s--${id.replace('/', '--')}`), id);
}

/** `p` resolved, if it lies strictly inside `root`; anything else is refused before a byte is written. */
export function insideOrThrow(root: string, p: string, what: string): string {
  const resolved = path.resolve(p);
  if (!resolved.startsWith(path.resolve(root) + path.sep))
    throw new ModelError(`${what}: ${resolved} would lie outside the cache folder ${root}; refused`);
  return resolved;
}

const COMMIT = /^[0-9a-f]{40}$/;

/** True for a full commit hash: a revision that never moves. */
export function isCommitHash(revision: string): boolean {
  return COMMIT.test(revision);
}

/** The commit `revision` names in the cache: itself when a commit hash, else `refs/<revision>`'s content. */
export function cachedCommit(repoDir: string, revision: string): string | undefined {
  if (isCommitHash(revision)) return revision;
  let text: string;
  try {
    text = fs.readFileSync(insideOrThrow(repoDir, path.join(repoDir, 'refs', revision), revision), 'utf8');
  } catch {
    return undefined;
  }
  const commit = text.trim();
  return isCommitHash(commit) ? commit : undefined;
}

/** Records that `revision` points to `commit` (atomically, so a reader never sees half a hash). */
export function writeRef(repoDir: string, revision: string, commit: string): void {
  if (isCommitHash(revision)) return;
  const ref = insideOrThrow(repoDir, path.join(repoDir, 'refs', revision), revision);
  fs.mkdirSync(path.dirname(ref), { recursive: true });
  writeFileAtomic(ref, commit, { unique: true });
}

export function snapshotFolder(repoDir: string, commit: string): string {
  return insideOrThrow(repoDir, path.join(repoDir, 'snapshots', commit), commit);
}

/**
 * A blob's path for the hub's ETag. The ETag comes from a server, and becomes a file name: only the shapes the
 * hub sends (hex sha1 or sha256, or a plain token) are accepted.
 */
export function blobPath(repoDir: string, etag: string, where: string): string {
  if (!/^[0-9A-Za-z][0-9A-Za-z_-]{7,127}$/.test(etag))
    throw new ModelError(`${where}: the hub's ETag ${JSON.stringify(etag)} cannot name a file in the cache; refused`);
  return insideOrThrow(repoDir, path.join(repoDir, 'blobs', etag), where);
}

/** Where a file of a snapshot lies (a symlink to its blob); `file` was checked to be a relative repository path. */
export function pointerPath(repoDir: string, commit: string, file: string): string {
  const snapshot = snapshotFolder(repoDir, commit);
  return insideOrThrow(snapshot, path.join(snapshot, file), `${commit}: ${file}`);
}

/**
 * Points `pointer` at `blob` with a relative symlink, as huggingface_hub does (a moved cache folder keeps
 * working). Made under a temporary name and renamed over the pointer, so a reader sees no pointer or a whole
 * one. Where symlinks cannot be made (some Windows set-ups), the blob is copied, as Python then does.
 */
export function linkPointer(blob: string, pointer: string): void {
  fs.mkdirSync(path.dirname(pointer), { recursive: true });
  const tmp = `${pointer}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
  try {
    fs.symlinkSync(path.relative(path.dirname(pointer), blob), tmp);
  } catch (e) {
    if (!['EPERM', 'ENOTSUP', 'EOPNOTSUPP'].includes((e as NodeJS.ErrnoException).code ?? '')) throw e;
    fs.copyFileSync(blob, tmp);
  }
  try {
    fs.renameSync(tmp, pointer);
  } catch (e) {
    fs.rmSync(tmp, { force: true });
    throw e;
  }
}

function noExistPath(repoDir: string, commit: string, file: string): string {
  const folder = insideOrThrow(repoDir, path.join(repoDir, '.no_exist', commit), commit);
  return insideOrThrow(folder, path.join(folder, file), `${commit}: ${file}`);
}

/** Records that the hub has no `file` at `commit` (Python's `.no_exist` marker), so it is not asked again. */
export function recordAbsent(repoDir: string, commit: string, file: string): void {
  const marker = noExistPath(repoDir, commit, file);
  fs.mkdirSync(path.dirname(marker), { recursive: true });
  fs.closeSync(fs.openSync(marker, 'a'));
}

export function knownAbsent(repoDir: string, commit: string, file: string): boolean {
  return fs.existsSync(noExistPath(repoDir, commit, file));
}

/** A file of a snapshot that can be read: present, and when a symlink, its blob there too. */
export function presentIn(snapshot: string, file: string): boolean {
  return fs.statSync(path.join(snapshot, file), { throwIfNoEntry: false })?.isFile() ?? false;
}
