// arm forward and arm generate: golden logits and tokens, head taps, chat template, token-id input, int4 GPTQ.
import { expect, it } from 'vitest';
import { arm } from '../helpers/cli.js';
import fs from 'node:fs';
import path from 'node:path';
import { STORIES } from '../helpers/fixtures.js';

const golden = JSON.parse(fs.readFileSync(path.join(STORIES, 'golden.json'), 'utf8')).prompts[1];

it('arm forward --json prints input ids and the golden top-5', () => {
  const out = JSON.parse(
    arm(['forward', '--model', STORIES, '--prompt', 'Once upon a time', '--top', '5', '--json']).stdout,
  );
  expect(out.inputIds).toEqual(golden.input_ids);
  expect(out.top.map((t: { id: number }) => t.id)).toEqual(golden.top5_last_prompt_position.ids);
  expect(out.heads).toBeUndefined();
});

it('arm forward --heads adds [layer][head][d] activations', () => {
  const out = JSON.parse(
    arm(['forward', '--model', STORIES, '--prompt', 'Once upon a time', '--json', '--heads']).stdout,
  );
  expect(out.heads.length).toBe(5);
  expect(out.heads[0].length).toBe(8);
  expect(out.heads[0][0].length).toBe(8);
});

it('arm forward --chat applies the chat template', () => {
  const out = JSON.parse(arm(['forward', '--model', STORIES, '--prompt', 'Hi', '--chat', '--json']).stdout);
  expect(out.inputIds).toEqual([1, 320, 417, 13]); // <s> "Hi" "\n"
});

it("arm generate continues with karpathy's sample", () => {
  const text = arm(['generate', '--model', STORIES, '--prompt', 'Once upon a time', '--max-new-tokens', '64']).stdout;
  expect(text.startsWith('Once upon a time, there was a little girl named Lily.')).toBe(true);
});

it('a bad --model fails with a message and a non-zero exit', () => {
  const r = arm(['forward', '--model', '/nonexistent/dir', '--prompt', 'x'], { expectFail: true });
  expect(r.status).toBe(1);
  expect(r.stderr).toMatch(
    /arm: \/nonexistent\/dir: no such folder, and "\/nonexistent\/dir" is not a hub repo id: expected owner\/name/,
  );
});

const GEMMA2 = path.resolve(STORIES, '../../fixtures/hf-parity/gemma2-softcap-window');

it.runIf(fs.existsSync(GEMMA2))(
  "arm forward --input-ids runs a checkpoint without a tokenizer (transformers' top-5 and taps)",
  () => {
    const parity = JSON.parse(fs.readFileSync(path.join(GEMMA2, 'parity.json'), 'utf8')).results[0];
    const ids: number[] = parity.input_ids;
    const out = JSON.parse(
      arm(['forward', '--model', GEMMA2, '--input-ids', ids.join(','), '--top', '5', '--json', '--heads']).stdout,
    );
    expect(out.inputIds).toEqual(ids);
    const expected = parity.last_logits
      .map((v: number, id: number) => [v, id])
      .sort((a: number[], b: number[]) => b[0]! - a[0]!)
      .slice(0, 5)
      .map((p: number[]) => p[1]);
    expect(out.top.map((t: { id: number }) => t.id)).toEqual(expected);
    expect(out.heads.flat(1).map((h: number[]) => h.length)).toEqual(Array(2 * 4).fill(16));
    expect(out.heads[1].flat()[0]).toBeCloseTo(parity.o_proj_input_last[1][0], 4);
    // The brief's example prompt, and text on a tokenizer-less checkpoint fails with the reason.
    expect(
      JSON.parse(
        arm(['forward', '--model', GEMMA2, '--input-ids', '1,403,407', '--top', '5', '--json', '--heads']).stdout,
      ).top.length,
    ).toBe(5);
    const r = arm(['forward', '--model', GEMMA2, '--prompt', 'hello'], { expectFail: true });
    expect(r.stderr).toMatch(/tokenizer\.json: missing, so this checkpoint runs on token ids only/);
  },
);

it('arm forward needs exactly one of --prompt and --input-ids, and --input-ids are token ids', () => {
  expect(arm(['forward', '--model', STORIES], { expectFail: true }).stderr).toMatch(
    /exactly one of --prompt <text> and --input-ids <ids>/,
  );
  expect(arm(['forward', '--model', STORIES, '--input-ids', '1,x'], { expectFail: true }).stderr).toMatch(
    /--input-ids must be comma-separated token ids/,
  );
  const out = JSON.parse(
    arm(['forward', '--model', STORIES, '--input-ids', golden.input_ids.join(','), '--top', '5', '--json']).stdout,
  );
  expect(out.top.map((t: { id: number }) => t.id)).toEqual(golden.top5_last_prompt_position.ids);
});

it(
  'arm forward --dtype int4 --int4-method gptq builds a GPTQ entry whose next token matches ' +
    'the fp32 golden; the method outside int4 is refused',
  () => {
    const cache = fs.mkdtempSync(path.join(process.env.TMPDIR ?? '/tmp', 'arm-cli-gptq-'));
    const out = JSON.parse(
      arm([
        'forward',
        '--model',
        STORIES,
        '--cache-dir',
        cache,
        '--dtype',
        'int4',
        '--int4-method',
        'gptq',
        '--prompt',
        'Once upon a time',
        '--top',
        '1',
        '--json',
        '--quiet',
      ]).stdout,
    );
    expect(out.top[0].id).toBe(golden.top5_last_prompt_position.ids[0]);
    const bad = arm(
      [
        'forward',
        '--model',
        STORIES,
        '--cache-dir',
        cache,
        '--dtype',
        'int8',
        '--int4-method',
        'gptq',
        '--prompt',
        'x',
      ],
      { expectFail: true },
    );
    expect(bad.stderr).toMatch(/--int4-method applies to --dtype int4, not int8/);
    const choice = arm(['forward', '--model', STORIES, '--int4-method', 'awq', '--prompt', 'x'], { expectFail: true });
    expect(choice.stderr).toMatch(/--int4-method.*Allowed choices are rtn, gptq/);
    fs.rmSync(cache, { recursive: true, force: true });
  },
);
