/**
 * The graph cache's build folders: a killed build's `<entry>.tmp-PID-TIME` folder is swept by the next build
 * once its process is gone and it has not been written for an hour; live or recent ones are left alone.
 */
import { describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { ABANDONED_BUILD_MS, ensureCacheEntry } from '../../src/model/cache/entry.js';
import { tempDir } from '../helpers/fixtures.js';

/** A process id that ran and exited (so no process has it now, barring reuse within the test). */
function deadPid(): number {
  const child = spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))'], { encoding: 'utf8' });
  return Number(child.stdout);
}

function buildFolder(parent: string, name: string, ageMs: number): string {
  const dir = path.join(parent, name);
  fs.mkdirSync(dir);
  fs.writeFileSync(path.join(dir, 'weights.bin'), 'x');
  const t = (Date.now() - ageMs) / 1000;
  fs.utimesSync(path.join(dir, 'weights.bin'), t, t);
  fs.utimesSync(dir, t, t);
  return dir;
}

describe('abandoned builds', () => {
  it('the next build removes dead, old build folders and keeps live or recent ones', () => {
    const parent = tempDir('arm-cache-sweep-');
    const dead = deadPid();
    const hour = ABANDONED_BUILD_MS;
    const abandoned = buildFolder(parent, `old-entry.tmp-${dead}-1700000000000`, 2 * hour);
    const damaged = buildFolder(parent, `other.damaged-${dead}-1700000000001`, 3 * hour);
    // dead but written 5 min ago
    const recent = buildFolder(parent, `old-entry.tmp-${dead}-1700000000002`, 5 * 60 * 1000);
    // old but its process runs
    const live = buildFolder(parent, `old-entry.tmp-${process.pid}-1700000000003`, 2 * hour);
    const entry = buildFolder(parent, 'finished-entry', 5 * hour); // an entry, not a build folder
    const out = ensureCacheEntry(path.join(parent, 'new-entry'), ['model.onnx'], (tmp) =>
      fs.writeFileSync(path.join(tmp, 'model.onnx'), 'g'),
    );
    expect(out.built).toBe(true);
    expect(fs.existsSync(abandoned)).toBe(false);
    expect(fs.existsSync(damaged)).toBe(false);
    for (const kept of [recent, live, entry, path.join(parent, 'new-entry')]) expect(fs.existsSync(kept)).toBe(true);
    // A cache hit does not sweep (loads stay cheap): an abandoned folder made now stays until the next build
    const later = buildFolder(parent, `x.tmp-${dead}-1700000000004`, 2 * hour);
    expect(
      ensureCacheEntry(path.join(parent, 'new-entry'), ['model.onnx'], () => {
        throw new Error('not called');
      }).built,
    ).toBe(false);
    expect(fs.existsSync(later)).toBe(true);
  });
});
