// Runs the arm CLI from source in a child process, for the CLI tests.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { tempDir } from './fixtures.js';

const cacheDir = tempDir('arm-cache-');

/** Runs the `arm` CLI from source in a child process. */
export function arm(
  args: string[],
  opts: { expectFail?: boolean; env?: Record<string, string> } = {},
): { stdout: string; stderr: string; status: number } {
  let stdout: string;
  try {
    stdout = execFileSync(
      process.execPath,
      ['--import', 'tsx', path.resolve(import.meta.dirname, 'arm-cli.ts'), ...args],
      {
        encoding: 'utf8',
        env: { ...process.env, ARM_CACHE_DIR: cacheDir, ...opts.env },
        stdio: ['ignore', 'pipe', 'pipe'],
      },
    );
  } catch (e) {
    const err = e as { stdout: string; stderr: string; status: number };
    if (!opts.expectFail) throw e;
    return { stdout: err.stdout, stderr: err.stderr, status: err.status };
  }
  // Outside the try: a command that should have failed but succeeded must fail the test, not be caught above.
  if (opts.expectFail)
    throw new Error(`expected arm ${args.join(' ')} to fail; it succeeded with: ${stdout.slice(0, 500)}`);
  return { stdout, stderr: '', status: 0 };
}

/**
 * Starts the `arm` CLI from source in a child process without waiting (for signals); stderr is collected in `stderr()`.
 */
export function armSpawn(args: string[]): {
  child: ChildProcess;
  stderr: () => string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
} {
  const child = spawn(process.execPath, ['--import', 'tsx', path.resolve(import.meta.dirname, 'arm-cli.ts'), ...args], {
    env: { ...process.env, ARM_CACHE_DIR: cacheDir },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let err = '';
  child.stderr!.setEncoding('utf8').on('data', (s: string) => {
    err += s;
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.on('close', (code, signal) => resolve({ code, signal })),
  );
  return { child, stderr: () => err, exited };
}

/**
 * The URL an `arm serve` child listens on, once its stderr (as `stderr()` has collected it) says it is ready;
 * rejects, with that stderr, when the child exits first or `ms` pass.
 */
export function serveReady(child: ChildProcess, stderr: () => string, ms = 60_000): Promise<string> {
  return new Promise<string>((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`arm serve did not get ready in ${ms / 1000} s:\n${stderr()}`)),
      ms,
    );
    child.stderr!.on('data', () => {
      const at = /listening on (http:\/\/127\.0\.0\.1:\d+)/.exec(stderr());
      if (at && stderr().includes('arm serve: ready')) {
        clearTimeout(timer);
        resolve(at[1]!);
      }
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`arm serve exited (${code}):\n${stderr()}`));
    });
  });
}
