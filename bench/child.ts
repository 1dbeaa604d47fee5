/**
 * Benchmarks run their heavy phases in child processes (this same script with `--child <mode>`), so each
 * memory figure is that process's alone. The child prints one JSON object as its last stdout line.
 */
import { spawn } from 'node:child_process';

/** Runs `script` again with `args` plus `--child mode`; resolves to the child's last stdout line, parsed. */
export function runChild(script: string, mode: string, args: readonly string[]): Promise<Record<string, unknown>> {
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, [...process.execArgv, script, ...args, '--child', mode], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    let out = '';
    p.stdout.on('data', (b: Buffer) => {
      out += b.toString();
    });
    p.on('exit', (code) => {
      const line = out.trim().split('\n').at(-1) ?? '';
      if (code !== 0 || !line.startsWith('{')) reject(new Error(`child ${mode} exited ${code}: ${out.slice(-500)}`));
      else resolve(JSON.parse(line));
    });
  });
}
