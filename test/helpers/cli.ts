import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { tempDir } from './fixtures.js';

const cacheDir = tempDir('arm-cache-');

/** Runs the `arm` CLI from source in a child process. */
export function arm(args: string[], opts: { expectFail?: boolean } = {}): { stdout: string; stderr: string; status: number } {
  try {
    const stdout = execFileSync(process.execPath, ['--import', 'tsx', path.resolve(import.meta.dirname, 'arm-cli.ts'), ...args], {
      encoding: 'utf8', env: { ...process.env, ARM_CACHE_DIR: cacheDir }, stdio: ['ignore', 'pipe', 'pipe'],
    });
    if (opts.expectFail) throw new Error(`expected failure, got ${stdout}`);
    return { stdout, stderr: '', status: 0 };
  } catch (e) {
    const err = e as { stdout: string; stderr: string; status: number };
    if (!opts.expectFail) throw e;
    return { stdout: err.stdout, stderr: err.stderr, status: err.status };
  }
}

