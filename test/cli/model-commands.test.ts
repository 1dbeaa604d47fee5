import { expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { STORIES, tempDir } from '../helpers/fixtures.js';

const cacheDir = tempDir('arm-cache-');
export function arm(args: string[], opts: { expectFail?: boolean } = {}): { stdout: string; stderr: string; status: number } {
  try {
    const stdout = execFileSync(process.execPath, ['--import', 'tsx', path.resolve(import.meta.dirname, '../helpers/arm-cli.ts'), ...args], {
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

const golden = JSON.parse(fs.readFileSync(path.join(STORIES, 'golden.json'), 'utf8')).prompts[1];

it('arm forward --json prints input ids and the golden top-5', () => {
  const out = JSON.parse(arm(['forward', '--model', STORIES, '--prompt', 'Once upon a time', '--top', '5', '--json']).stdout);
  expect(out.inputIds).toEqual(golden.input_ids);
  expect(out.top.map((t: { id: number }) => t.id)).toEqual(golden.top5_last_prompt_position.ids);
  expect(out.heads).toBeUndefined();
});

it('arm forward --heads adds [layer][head][d] activations', () => {
  const out = JSON.parse(arm(['forward', '--model', STORIES, '--prompt', 'Once upon a time', '--json', '--heads']).stdout);
  expect(out.heads.length).toBe(5);
  expect(out.heads[0].length).toBe(8);
  expect(out.heads[0][0].length).toBe(8);
});

it('arm forward --chat applies the chat template', () => {
  const out = JSON.parse(arm(['forward', '--model', STORIES, '--prompt', 'Hi', '--chat', '--json']).stdout);
  expect(out.inputIds).toEqual([1, 320, 417, 13]); // <s> "Hi" "\n"
});

it('arm generate continues with karpathy\'s sample', () => {
  const text = arm(['generate', '--model', STORIES, '--prompt', 'Once upon a time', '--max-new-tokens', '64']).stdout;
  expect(text.startsWith('Once upon a time, there was a little girl named Lily.')).toBe(true);
});

it('a bad --model fails with a message and a non-zero exit', () => {
  const r = arm(['forward', '--model', '/nonexistent/dir', '--prompt', 'x'], { expectFail: true });
  expect(r.status).toBe(1);
  expect(r.stderr).toMatch(/arm: \/nonexistent\/dir: no such folder, and not a hub id/);
});
