/**
 * Answer tokens come from the chat template itself, checked against what Python transformers produced on the
 * same real tokenizer files (../shared/fixtures/tokenizers/hf-reference.json: the ids of "Yes", "No" and the
 * thinking-off rendering), not against this code's own rendering.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import fs from 'node:fs';
import path from 'node:path';
import { Tokenizer } from '../../src/model/tokenizer.js';
import { makeTemplate, render, resolveAnswerTokens, type JudgeItem } from '../../src/arm/template.js';
import { tokenizerFolder } from '../helpers/tokenizers.js';

interface Reference {
  encode: { text: string; ids: number[] }[];
  chat?: {
    messages: { role: string; content: string }[];
    ids_enable_thinking_false: number[];
    answer_A: { first_id: number };
    answer_B: { first_id: number };
  }[];
}
const FIXTURE = path.resolve(import.meta.dirname, '../../../shared/fixtures/tokenizers/hf-reference.json');
const reference: Record<string, Reference> = JSON.parse(fs.readFileSync(FIXTURE, 'utf8'));
/** transformers' ids of a text without special tokens. */
const idsOf = (key: string, text: string) => reference[key]!.encode.find((e) => e.text === text)!.ids;

/**
 * A template whose user turn is exactly `content` (prompt + empty response), to compare with the reference's messages.
 */
const verbatim = (tok: Tokenizer, kind: 'scalar' | 'ranked' = 'scalar') =>
  makeTemplate(
    kind,
    { text: kind === 'scalar' ? '{prompt}{response}' : '{prompt}{response_a}{response_b}', chat: true },
    tok,
  );
const item = (content: string): JudgeItem => ({
  id: 'q',
  prompt: content,
  fields: { response: '', response_a: '', response_b: '' },
  answer: 0,
});

describe('Qwen3: judged with thinking off', () => {
  let tok: Tokenizer;
  beforeAll(async () => {
    tok = await Tokenizer.load(tokenizerFolder('qwen3'));
  });

  it('a template taking enable_thinking renders with thinking off; the prompt ends where the verdict starts', () => {
    const template = verbatim(tok);
    expect(template.templateKwargs).toEqual({ enable_thinking: false });
    for (const c of reference.qwen3!.chat!.filter((c) => c.messages.length === 1)) {
      // transformers' rendering with enable_thinking=False ends in the empty think block
      expect(render(tok, template, [], item(c.messages[0]!.content), 4096).ids).toEqual(c.ids_enable_thinking_false);
    }
  });

  it('the answer tokens are "Yes" and "No" themselves, not <think> (151667)', () => {
    const answers = resolveAnswerTokens(tok, verbatim(tok), item('Is the sky blue?'));
    expect(answers.primary).toEqual([idsOf('qwen3', 'Yes')[0], idsOf('qwen3', 'No')[0]]);
    expect(answers.primary).not.toContain(151667);
    expect(answers.variants[0]).toContain(idsOf('qwen3', 'yes')[0]);
  });

  it('thinking on, explicitly: refused with a message naming the think block, rather than reading P(<think>)', () => {
    const template = makeTemplate(
      'scalar',
      { text: '{prompt}{response}', chat: true, templateKwargs: { enable_thinking: true } },
      tok,
    );
    expect(() => resolveAnswerTokens(tok, template, item('Is the sky blue?'))).toThrow(
      /puts "<think>.*between the generation prompt and the answer/s,
    );
  });
});

describe.each([['llama3_1'], ['gemma3']] as const)('%s', (key) => {
  let tok: Tokenizer;
  beforeAll(async () => {
    tok = await Tokenizer.load(tokenizerFolder(key));
  });

  it('scalar: "Yes"/"No" as transformers encodes them; the template takes no extra arguments', () => {
    const template = verbatim(tok);
    expect(template.templateKwargs).toBeUndefined();
    expect(resolveAnswerTokens(tok, template, item('Is the sky blue?')).primary).toEqual([
      idsOf(key, 'Yes')[0],
      idsOf(key, 'No')[0],
    ]);
  });

  it('ranked: A/B as transformers places them; no whitespace-only and no lowercase one-letter variants', () => {
    const c = reference[key]!.chat![0]!;
    const answers = resolveAnswerTokens(tok, verbatim(tok, 'ranked'), item(c.messages[0]!.content));
    expect(answers.primary).toEqual([c.answer_A.first_id, c.answer_B.first_id]);
    answers.variants.forEach((ids, i) => {
      for (const id of ids)
        expect(tok.decode([id], { skipSpecialTokens: false }).trim(), `variant ${id}`).toBe('AB'[i]);
    });
  });
});

describe('Llama-2 [INST] template: the assistant turn starts with a space', () => {
  // Llama-2-chat's template (as published with the model), added to the llama2 tokenizer, which has none.
  const LLAMA2_CHAT =
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}" +
    "{{ '[INST] ' + message['content'].strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}" +
    "{{ ' ' + message['content'].strip() + ' ' + eos_token }}{% endif %}{% endfor %}";
  let tok: Tokenizer;
  beforeAll(async () => {
    tok = await Tokenizer.load(
      tokenizerFolder('llama2', {
        config: (c) => {
          c.chat_template = LLAMA2_CHAT;
        },
      }),
    );
  });

  it('reads "▁Yes"/"▁No", the tokens the model emits after [/INST], not the unspaced pieces', () => {
    const answers = resolveAnswerTokens(tok, makeTemplate('scalar', {}, tok), item('Is the sky blue?'));
    // transformers encodes " Yes" and "Yes" (legacy sentencepiece) both as 5592, " No" as 1770
    expect(answers.primary).toEqual([idsOf('llama2', ' Yes')[0], idsOf('llama2', ' No')[0]]);
  });
});
