/**
 * vitest globalSetup: every test run gets its own temp root, removed when the run ends.
 *
 * Tests (and the CLI children they spawn) make their folders with os.tmpdir(), which reads TMPDIR; workers
 * are forked after this runs, so they inherit it. Without this, each full run left ~1,500 folders
 * (checkpoints, graph caches; ~1 GB) in the system temp dir, and CI runs on one machine add up.
 * ARM_KEEP_TEST_TMP=1 keeps the root for a post-mortem; its path is printed either way.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

export default function setup(): () => void {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'arm-vitest-'));
  const previous = process.env.TMPDIR;
  process.env.TMPDIR = root;
  return () => {
    if (previous === undefined) delete process.env.TMPDIR;
    else process.env.TMPDIR = previous;
    if (process.env.ARM_KEEP_TEST_TMP) {
      process.stderr.write(`test temp files kept in ${root}\n`);
      return;
    }
    fs.rmSync(root, { recursive: true, force: true });
  };
}
