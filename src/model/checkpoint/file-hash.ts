/**
 * Full-content sha256 of checkpoint files, computed once per file and remembered by (path, size, mtime,
 * ctime, inode): a model's identity (graph cache key, criterion files) must change when any byte of its
 * weights changes, and hashing gigabytes on every load would not pay. Hub downloads hand in the sha256
 * they verified while streaming, so a fresh download is never read twice.
 *
 * The memo lives in `<cacheDir>/hashes/<sha256(absolute path)>.json`, one small file per checkpoint file,
 * written atomically (util/atomic-write.ts) so concurrent loads never see half an entry.
 */
import fs from 'node:fs';
import path from 'node:path';
import { createHash } from 'node:crypto';
import { ModelError } from '../errors.js';
import { writeFileAtomic } from '../../util/atomic-write.js';

interface MemoEntry {
  path: string;
  size: number;
  mtimeMs: number;
  ctimeMs: number;
  ino: number;
  dev: number;
  sha256: string;
}

const CHUNK_BYTES = 8 * 1024 * 1024;

function statKey(file: string): Omit<MemoEntry, 'sha256'> {
  const st = fs.statSync(file);
  return {
    path: path.resolve(file),
    size: st.size,
    mtimeMs: st.mtimeMs,
    ctimeMs: st.ctimeMs,
    ino: st.ino,
    dev: st.dev,
  };
}

function memoFile(memoDir: string, absPath: string): string {
  return path.join(memoDir, `${createHash('sha256').update(absPath).digest('hex').slice(0, 32)}.json`);
}

const sameStat = (a: Omit<MemoEntry, 'sha256'>, b: Partial<MemoEntry>) =>
  a.path === b.path &&
  a.size === b.size &&
  a.mtimeMs === b.mtimeMs &&
  a.ctimeMs === b.ctimeMs &&
  a.ino === b.ino &&
  a.dev === b.dev;

/** sha256 (hex) of every byte of `file`, from the memo in `memoDir` when the file is unchanged since. */
export function contentSha256(file: string, memoDir: string): string {
  let key: Omit<MemoEntry, 'sha256'>;
  try {
    key = statKey(file);
  } catch (e) {
    throw new ModelError(`${file}: cannot read (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
  const memo = memoFile(memoDir, key.path);
  try {
    const entry = JSON.parse(fs.readFileSync(memo, 'utf8')) as Partial<MemoEntry>;
    if (sameStat(key, entry) && typeof entry.sha256 === 'string' && /^[0-9a-f]{64}$/.test(entry.sha256))
      return entry.sha256;
  } catch {
    /* no memo, or a damaged one: hash again */
  }
  const sha256 = hashFile(file);
  // The file may have changed while it was read: only remember a hash whose stat held still.
  if (sameStat(statKey(file), key)) writeMemo(memo, { ...key, sha256 });
  return sha256;
}

/** Records a hash already known (a hub download verified while streaming) for the file as it is now. */
export function rememberContentSha256(file: string, sha256: string, memoDir: string): void {
  if (!/^[0-9a-f]{64}$/.test(sha256))
    throw new Error(`rememberContentSha256: ${JSON.stringify(sha256)} is not a hex sha256`);
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
    writeFileAtomic(memo, JSON.stringify(entry));
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
  for (const f of [...files].sort())
    h.update(path.basename(f)).update('\0').update(contentSha256(f, memoDir)).update('\n');
  return h.digest('hex');
}

/**
 * The checkpoint files besides config.json and the weights that decide a judge prompt's token ids, as this build
 * reads them (model/tokenizer.ts): the tokenizer (tokenizer.json; tokenizer_config.json, which also holds the
 * special tokens and the chat template) and the chat template files that override the config's
 * (chat_template.jinja, else chat_template.json). Files this build never reads (special_tokens_map.json,
 * added_tokens.json, generation_config.json) change nothing it computes and are left out, so that editing them
 * does not invalidate a criterion.
 */
export const TOKENIZER_FILES: readonly string[] = [
  'tokenizer.json',
  'tokenizer_config.json',
  'chat_template.jinja',
  'chat_template.json',
];

/**
 * What decides an image-text checkpoint's pixels (model/vision/processor.ts). processor_config.json and
 * video_preprocessor_config.json are not read by this build (no video; the image processor's settings are all in
 * preprocessor_config.json), so they are not part of the identity.
 */
export const PROCESSOR_FILES: readonly string[] = ['preprocessor_config.json'];

/** Every file a prompt's ids or pixels may depend on: TOKENIZER_FILES, then PROCESSOR_FILES. */
export const PROMPT_FILES: readonly string[] = [...TOKENIZER_FILES, ...PROCESSOR_FILES];

/** sha256 (hex) of every byte of `file`, or null when it does not exist; other failures name the file. */
export function fileSha256OrNull(file: string): string | null {
  try {
    return hashFile(file);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return null;
    throw new ModelError(
      `${file}: cannot read (${code === 'EISDIR' ? 'a directory, not a file' : (code ?? (e as Error).message)}) to ` +
        `hash it for the model identity`,
    );
  }
}

/**
 * Content hashes of the prompt files (PROMPT_FILES) in `modelDir`, by file name; null for a file that is absent.
 * The hash is of the bytes, so a whitespace-only edit counts: the JSON files are parsed, but the chat template
 * inside them is Jinja, where whitespace is output, and a canonical hash would have to know which is which.
 */
export function promptFileHashes(
  modelDir: string,
  names: readonly string[] = PROMPT_FILES,
): Record<string, string | null> {
  return Object.fromEntries(names.map((n) => [n, fileSha256OrNull(path.join(modelDir, n))]));
}
