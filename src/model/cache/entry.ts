/**
 * What the decoder's and the vision towers' graph caches share: how an entry is built atomically (into a
 * temporary folder renamed into place, so a killed build never leaves half an entry) and how abandoned builds
 * are swept, the page alignment of weights in the data file, and the weight transpose for MatMul. Kept apart from
 * cache/decoder-cache.ts so that the vision cache does not pull in the decoder graph. The cache root itself is
 * util/cache-root.ts.
 */
import fs from 'node:fs';
import path from 'node:path';

/** Page-aligned offsets let onnxruntime map the weights instead of copying them. */
export const PAGE_ALIGN = 4096;

/**
 * The entry `dir` when all of `files` are in it; otherwise `write(tmp)` fills a temporary folder that is then
 * renamed to `dir`. A concurrent builder that finished first wins (its entry is as good); any failure removes
 * the temporary folder.
 */
export function ensureCacheEntry(
  dir: string,
  files: readonly string[],
  write: (tmpDir: string) => void,
): { dir: string; built: boolean } {
  if (files.every((f) => fs.existsSync(path.join(dir, f)))) return { dir, built: false };
  fs.mkdirSync(path.dirname(dir), { recursive: true });
  sweepAbandonedBuilds(path.dirname(dir));
  const tmp = `${dir}.tmp-${process.pid}-${Date.now()}`;
  fs.mkdirSync(tmp, { recursive: true });
  try {
    write(tmp);
    try {
      fs.renameSync(tmp, dir);
    } catch (e) {
      if (files.every((f) => fs.existsSync(path.join(dir, f)))) {
        fs.rmSync(tmp, { recursive: true, force: true }); // another builder finished first: its entry is as good
      } else if (fs.existsSync(dir)) {
        // A damaged entry (some files missing) would fail every later load: set it aside and put ours in place.
        const aside = `${dir}.damaged-${process.pid}-${Date.now()}`;
        fs.renameSync(dir, aside);
        fs.renameSync(tmp, dir);
        fs.rmSync(aside, { recursive: true, force: true });
      } else {
        throw e;
      }
    }
  } catch (e) {
    fs.rmSync(tmp, { recursive: true, force: true });
    throw e;
  }
  return { dir, built: true };
}

/** A build folder untouched this long, whose process is gone, was abandoned (a killed or crashed build). */
export const ABANDONED_BUILD_MS = 60 * 60 * 1000;
const BUILD_FOLDER = /\.(?:tmp|damaged)-(\d+)-\d+$/;

/**
 * Removes the temporary folders of builds that will never finish: `<entry>.tmp-PID-TIME` (and set-aside
 * `.damaged-` ones) in `parent` whose process no longer runs and whose files were last written over
 * ABANDONED_BUILD_MS ago. Both conditions, because a cache folder may be shared by machines whose process ids
 * this one cannot see, and a 7B build writes for minutes. Runs when an entry is built, not on every load.
 */
function sweepAbandonedBuilds(parent: string, now = Date.now()): string[] {
  const removed: string[] = [];
  let names: string[];
  try {
    names = fs.readdirSync(parent);
  } catch {
    return removed;
  }
  for (const name of names) {
    const m = BUILD_FOLDER.exec(name);
    if (!m || processRuns(Number(m[1]))) continue;
    const folder = path.join(parent, name);
    if (now - lastWriteMs(folder) < ABANDONED_BUILD_MS) continue;
    // Housekeeping only: a folder we may not remove (another user's, in a shared cache) must not fail the build.
    try {
      fs.rmSync(folder, { recursive: true, force: true });
      removed.push(folder);
    } catch {
      /* left for its owner */
    }
  }
  return removed;
}

function processRuns(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** The latest mtime of a folder and the files directly in it (ms). */
function lastWriteMs(folder: string): number {
  let latest = 0;
  try {
    latest = fs.statSync(folder).mtimeMs;
    for (const f of fs.readdirSync(folder)) {
      try {
        latest = Math.max(latest, fs.statSync(path.join(folder, f)).mtimeMs);
      } catch {
        /* removed meanwhile */
      }
    }
  } catch {
    /* the folder went away */
  }
  return latest;
}

/** W [rows, cols] → Wᵀ [cols, rows]; 64×64 tiles keep both the reads and the strided writes in cache. */
export function transposed(w: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(rows * cols);
  for (let r0 = 0; r0 < rows; r0 += 64) {
    const r1 = Math.min(rows, r0 + 64);
    for (let c0 = 0; c0 < cols; c0 += 64) {
      const c1 = Math.min(cols, c0 + 64);
      for (let r = r0; r < r1; r++) {
        const srcRow = r * cols;
        for (let c = c0; c < c1; c++) out[c * rows + r] = w[srcRow + c]!;
      }
    }
  }
  return out;
}
