import { expect, it } from 'vitest';
import { arm } from '../helpers/cli.js';
import fs from 'node:fs';
import path from 'node:path';
import { STORIES } from '../helpers/fixtures.js';

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
  expect(r.stderr).toMatch(/arm: \/nonexistent\/dir: no such folder, and "\/nonexistent\/dir" is not a hub repo id: expected owner\/name/);
});
