/**
 * The images of `/v1/score` items and pairs: file paths on the server's disk, checked before anything is queued so
 * that a bad path or a broken file is its own request's 400, never a failure of a micro-batch shared with others.
 * `imageFiles` checks the paths (inside `--image-root`, symbolic links followed; the file exists); `ReadableImages`
 * decodes each file once to see that it can be read.
 */
import fs from 'node:fs';
import path from 'node:path';
import { decodeImage } from '../model/vision/image.js';
import { HttpError } from './http-errors.js';

/** Where image paths are read and whether the model reads images at all. */
export interface ImageRoot {
  /** Absolute. */
  root: string;
  imageText: boolean;
}

/**
 * `images` of a /v1/score item or pair (`field` names it): a list of image file paths on the server's filesystem,
 * resolved against `root` as `arm score` resolves a row's paths against --image-root; each must exist and lie
 * inside `root` (after following symbolic links). Absolute paths inside `root` are accepted. Absent or empty: no
 * images. Each real path not yet in `found` is added with the field that first named it.
 */
export function imageFiles(
  images: unknown,
  field: string,
  { root, imageText }: ImageRoot,
  found: Map<string, string>,
): string[] | undefined {
  if (images === undefined || images === null || (Array.isArray(images) && images.length === 0)) return undefined;
  if (!imageText) throw new HttpError(400, field, `${field}: this server's model reads text only`);
  if (!Array.isArray(images)) throw new HttpError(400, field, `${field}: must be a list of image file paths`);
  let realRoot: string;
  try {
    realRoot = fs.realpathSync(root);
  } catch {
    throw new HttpError(500, null, `--image-root ${root} does not exist`);
  }
  return images.map((v, i) => {
    const at = `${field}[${i}]`;
    const real = imageFile(v, at, root, realRoot);
    if (!found.has(real)) found.set(real, at);
    return real;
  });
}

/** One entry of `images` (`at` names it) → the real path of a file inside the root; else a 400 naming `at`. */
function imageFile(v: unknown, at: string, root: string, realRoot: string): string {
  if (typeof v !== 'string' || !v.trim())
    throw new HttpError(400, at, `${at}: must be an image file path (a non-empty string)`);
  if (/^(https?|data):/i.test(v))
    throw new HttpError(
      400,
      at,
      `${at}: ${JSON.stringify(v.slice(0, 80))} is not a local file; images are read from the server's disk under ` +
        `--image-root`,
    );
  let given = v;
  if (v.startsWith('file://')) {
    try {
      given = decodeURIComponent(v.slice('file://'.length));
    } catch {
      throw new HttpError(400, at, `${at}: ${JSON.stringify(v.slice(0, 80))} is not a valid file:// URL`);
    }
  }
  const file = path.resolve(root, given);
  if (!isInside(file, root)) throw new HttpError(400, at, `${at}: ${JSON.stringify(v)} is outside --image-root`);
  let real: string;
  try {
    real = fs.realpathSync(file);
  } catch {
    throw new HttpError(400, at, `${at}: image file ${JSON.stringify(v)} not found under --image-root`);
  }
  if (!isInside(real, realRoot)) throw new HttpError(400, at, `${at}: ${JSON.stringify(v)} is outside --image-root`);
  let isFile = false;
  try {
    isFile = fs.statSync(real).isFile();
  } catch {
    /* removed meanwhile: reported below as not a file */
  }
  if (!isFile) throw new HttpError(400, at, `${at}: ${JSON.stringify(v)} is not a file`);
  return real;
}

/** Whether `p` lies inside `dir`. */
function isInside(p: string, dir: string): boolean {
  // `..foo.png` is a legal name inside it; only a first segment that is exactly `..` leaves it.
  const rel = path.relative(dir, p);
  return rel !== '' && rel !== '..' && !rel.startsWith(`..${path.sep}`) && !path.isAbsolute(rel);
}

/**
 * Image files known to decode (PNG, JPEG or WebP), by path and size + mtime; a bounded memo so a hot loop decodes
 * each once.
 */
export class ReadableImages {
  private readonly ok = new Map<string, string>();
  /**
   * Decodes each of `files` (real path → the field naming it) not known to decode; a 400 naming the first that
   * fails. One file at a time: a request naming many large images would otherwise hold all their decoded pixels at
   * once.
   */
  async check(files: Map<string, string>): Promise<void> {
    for (const [file, at] of files) {
      const st = fs.statSync(file);
      const stamp = `${st.size}:${st.mtimeMs}`;
      if (this.ok.get(file) === stamp) continue;
      try {
        await decodeImage(file);
      } catch (e) {
        throw new HttpError(400, at, `${at}: ${(e as Error).message.replace(`${file}: `, '')}`);
      }
      this.ok.delete(file);
      this.ok.set(file, stamp);
      if (this.ok.size > 4096) this.ok.delete(this.ok.keys().next().value!);
    }
  }
}
