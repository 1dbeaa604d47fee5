/**
 * `--template-kwargs <json>`: parsed as a JSON object (errors name the flag), passed to the chat template in
 * `fit` and in the zero-shot judge, and recorded in the criterion file.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import fs from 'node:fs';
import path from 'node:path';
import { Command } from 'commander';
import { addJudgeOptions } from '../../src/cli/common.js';
import { Decoder } from '../../src/model/decoder.js';
import { zeroShotRM } from '../../src/arm/fit.js';
import { render } from '../../src/arm/template.js';
import { loadCriterion } from '../../src/arm/criterion.js';
import { arm } from '../helpers/cli.js';
import { FAMILY_CONFIGS, makeCheckpoint, tempDir } from '../helpers/fixtures.js';

/** ChatML with one extra variable: `judge_note`, when given, opens the conversation. */
const NOTED_CHATML =
  "{% if judge_note %}{{ '<|im_start|>system\\n' + judge_note + '<|im_end|>\\n' }}{% endif %}" +
  "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}" +
  "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

const parse = (args: string[]) => addJudgeOptions(new Command().exitOverride()).parse(args, { from: 'user' }).opts();

describe('--template-kwargs parsing', () => {
  it('reads a JSON object', () => {
    expect(parse(['--template-kwargs', '{"enable_thinking": false, "judge_note": "strict"}']).templateKwargs).toEqual({
      enable_thinking: false,
      judge_note: 'strict',
    });
    expect(parse([]).templateKwargs).toBeUndefined();
  });

  it.each([
    ['{enable_thinking: false}', /--template-kwargs must be a JSON object.*is not valid JSON/],
    ['[1, 2]', /--template-kwargs must be a JSON object.*got an array/],
    ['"text"', /--template-kwargs must be a JSON object.*got a string/],
    ['null', /--template-kwargs must be a JSON object.*got null/],
    ['3', /--template-kwargs must be a JSON object.*got a number/],
  ])('refuses %s, naming the flag', (value, message) => {
    expect(() => parse(['--template-kwargs', value])).toThrow(message);
  });
});

describe('--template-kwargs in fit and in the zero-shot judge', () => {
  let model: string;
  let decoder: Decoder;
  beforeAll(async () => {
    model = makeCheckpoint(
      { ...FAMILY_CONFIGS['qwen2 (qkv bias, tied, GQA 2)']!, max_position_embeddings: 512 },
      { seed: 5, chatTemplate: NOTED_CHATML, std: 0.3 },
    ).dir;
    decoder = await Decoder.load(model, { cacheDir: tempDir('arm-cache-'), threads: 1 });
  });
  afterAll(() => decoder?.dispose());

  it('arm fit records the kwargs in the criterion, and its prompts carry them', () => {
    const dir = tempDir();
    const examples = path.join(dir, 'few.jsonl');
    fs.writeFileSync(
      examples,
      [
        { prompt: 'What is 2+2?', chosen: '4', rejected: 'Five, surely.' },
        { prompt: 'Say hi', chosen: 'Hi!', rejected: 'Goodbye forever.' },
        { prompt: 'Capital of France?', chosen: 'Paris', rejected: 'Lyon, obviously.' },
      ]
        .map((r) => JSON.stringify(r))
        .join('\n') + '\n',
    );
    const out = path.join(dir, 'noted.arm.safetensors');
    arm([
      'fit',
      '--model',
      model,
      '--examples',
      examples,
      '--out',
      out,
      '--passes',
      '4',
      '--shots',
      '1',
      '--heads',
      'random:2',
      '--quiet',
      '--template-kwargs',
      '{"judge_note": "Judge strictly."}',
    ]);
    const c = loadCriterion(out);
    expect(c.meta.template.chat).toBe(true);
    expect(c.meta.template.templateKwargs).toEqual({ judge_note: 'Judge strictly.' });
    // The recorded kwargs reach the rendering: the note's system turn is there, and only with them.
    const item = { id: 'q', prompt: 'Say hi', fields: { response: 'Hi!' }, answer: 0 as const };
    const withNote = decoder.tokenizer.decode(render(decoder.tokenizer, c.meta.template, [], item, 512).ids, {
      skipSpecialTokens: false,
    });
    const without = decoder.tokenizer.decode(
      render(decoder.tokenizer, { ...c.meta.template, templateKwargs: undefined }, [], item, 512).ids,
      { skipSpecialTokens: false },
    );
    expect(withNote).toContain('Judge strictly.');
    expect(without).not.toContain('Judge strictly.');
    expect(arm(['inspect', out]).stdout).toContain('{"judge_note":"Judge strictly."}');
  });

  it('the zero-shot judge takes them too; plain-text prompts refuse them', () => {
    expect(zeroShotRM(decoder, { templateKwargs: { judge_note: 'x' } }).criterion.meta.template.templateKwargs).toEqual(
      { judge_note: 'x' },
    );
    expect(zeroShotRM(decoder, {}).criterion.meta.template.templateKwargs).toBeUndefined();
    expect(() => zeroShotRM(decoder, { chat: false, templateKwargs: { judge_note: 'x' } })).toThrow(
      /chat template arguments/,
    );
  });

  it('arm fit names the flag on bad JSON before loading anything', () => {
    const r = arm(
      [
        'fit',
        '--model',
        model,
        '--examples',
        'none.jsonl',
        '--out',
        path.join(tempDir(), 'x.arm.safetensors'),
        '--template-kwargs',
        '{oops',
      ],
      { expectFail: true },
    );
    expect(r.stderr).toMatch(/--template-kwargs must be a JSON object/);
  });
});
