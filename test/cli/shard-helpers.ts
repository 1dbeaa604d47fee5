// Runs the arm CLI from source in a chosen working folder, for the shard tests: an unsharded run and the shards run
// in two folders with the same relative --output-dir, so their reports' command lines are the same words.
import { spawn, spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { tempDir } from '../helpers/fixtures.js';

const CLI = path.resolve(import.meta.dirname, '../helpers/arm-cli.ts');
// tsx by file URL: `--import tsx` would be looked up from the working folder, which is a temporary one here.
const TSX = pathToFileURL(createRequire(import.meta.url).resolve('tsx')).href;
const cacheDir = tempDir('arm-shard-cache-');

export interface ArmRun {
  status: number | null;
  stdout: string;
  stderr: string;
}

const env = (more: Record<string, string> = {}) => ({ ...process.env, ARM_CACHE_DIR: cacheDir, ...more });

/** Runs `arm …args` in `cwd` and waits; throws (with its stderr) when it fails unless `expectFail`. */
export function armIn(cwd: string, args: string[], opts: { expectFail?: boolean } = {}): ArmRun {
  const r = spawnSync(process.execPath, ['--import', TSX, CLI, ...args], { cwd, env: env(), encoding: 'utf8' });
  const run = { status: r.status, stdout: r.stdout, stderr: r.stderr };
  if (opts.expectFail && r.status === 0) throw new Error(`expected arm ${args.join(' ')} to fail; it succeeded`);
  if (!opts.expectFail && r.status !== 0) throw new Error(`arm ${args.join(' ')} failed (${r.status}):\n${r.stderr}`);
  return run;
}

/** Runs `arm …args` in `cwd` in the background; resolves when it exits, rejects when it fails. */
export function armInBackground(cwd: string, args: string[]): Promise<ArmRun> {
  const child = spawn(process.execPath, ['--import', TSX, CLI, ...args], { cwd, env: env() });
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (s: string) => (stdout += s));
  child.stderr.setEncoding('utf8').on('data', (s: string) => (stderr += s));
  return new Promise((resolve, reject) =>
    child.on('close', (status) =>
      status === 0
        ? resolve({ status, stdout, stderr })
        : reject(new Error(`arm ${args.join(' ')} failed (${status}):\n${stderr}`)),
    ),
  );
}
