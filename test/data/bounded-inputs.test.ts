/**
 * Huge or malformed input: a line over the stated limit, bytes that are not UTF-8, a pair without a prompt, a
 * directory instead of a file — each a clear error naming file and line; a megabytes-long prompt is cut by
 * characters before it is tokenised, so its cost does not grow with its size.
 */
import { describe, expect, it } from 'vitest';
import fs from 'node:fs';
import path from 'node:path';
import { DataError, MAX_LINE_BYTES, readExamples } from '../../src/data/examples.js';
import { Tokenizer } from '../../src/model/tokenizer.js';
import {
  FIELD_CHARS_PER_TOKEN_LIMIT,
  makeTemplate,
  PROMPT_WINDOW_CHARS_PER_TOKEN,
  render,
  TooLongError,
  type JudgeItem,
} from '../../src/arm/template.js';
import { STORIES, tempDir } from '../helpers/fixtures.js';

const pair = (prompt: string, i = 0) => JSON.stringify({ id: `p${i}`, prompt, chosen: 'Yes it is.', rejected: 'No.' });

function jsonl(lines: (string | Buffer)[]): string {
  const file = path.join(tempDir(), 'rows.jsonl');
  fs.writeFileSync(
    file,
    Buffer.concat(lines.map((l) => Buffer.concat([Buffer.isBuffer(l) ? l : Buffer.from(l), Buffer.from('\n')]))),
  );
  return file;
}

describe('reading JSONL', () => {
  it('a line over the limit is an error naming file and line; with --skip-invalid the other rows survive', () => {
    const file = jsonl([pair('short', 1), pair('x'.repeat(MAX_LINE_BYTES + 10), 2), pair('also short', 3)]);
    expect(() => readExamples(file)).toThrow(
      new RegExp(`${file}:2: line is longer than the limit of ${MAX_LINE_BYTES} bytes`),
    );
    const { examples, skipped } = readExamples(file, { skipInvalid: true });
    expect(examples.map((e) => e.id)).toEqual(['p1', 'p3']);
    expect(skipped).toEqual([{ line: 2, reason: expect.stringMatching(/:2: line is longer/) }]);
  });

  it('a line that ends exactly at a read-chunk boundary, CRLF and a BOM read as before', () => {
    const first = pair('a'.repeat(1024 * 1024 - 60), 1);
    const file = jsonl([
      Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from(first)]),
      `${pair('crlf', 2)}\r`,
      pair('last', 3),
    ]);
    const { examples } = readExamples(file);
    expect(examples.map((e) => [e.id, e.line])).toEqual([
      ['p1', 1],
      ['p2', 2],
      ['p3', 3],
    ]);
    expect((examples[1] as { prompt: string }).prompt).toBe('crlf');
  });

  it('bytes that are not UTF-8 are an error naming the line and the byte, not silent U+FFFD', () => {
    const bad = Buffer.concat([
      Buffer.from('{"prompt": "caf'),
      Buffer.from([0xe9]),
      Buffer.from('", "chosen": "a", "rejected": "b"}'),
    ]);
    const file = jsonl([pair('fine', 1), bad]);
    expect(() => readExamples(file)).toThrow(new RegExp(`${file}:2: not valid UTF-8 \\(byte 15 of the line\\)`));
  });

  it('a pair row without a prompt says the prompt is missing', () => {
    const file = jsonl([JSON.stringify({ chosen: 'a', rejected: 'b' })]);
    expect(() => readExamples(file)).toThrow(new RegExp(`${file}:1: field "prompt" is missing`));
  });

  it('a directory instead of a file', () => {
    const dir = tempDir();
    expect(() => readExamples(dir)).toThrow(new DataError(`${dir}: cannot read (a directory, expected a JSONL file)`));
  });
});

describe('long prompts are cut by characters before tokenising', async () => {
  const tokenizer = await Tokenizer.load(STORIES);
  const template = makeTemplate('scalar', { chat: false }, tokenizer);
  /** Counts the characters the tokenizer is asked to encode. */
  function countingTokenizer(): { tok: Tokenizer; chars: () => number } {
    let chars = 0;
    const tok = Object.create(tokenizer) as Tokenizer;
    tok.encode = (text, opts) => {
      chars += text.length;
      return tokenizer.encode(text, opts);
    };
    return { tok, chars: () => chars };
  }
  const item = (prompt: string, response = 'The answer is four.'): JudgeItem => ({
    id: 'q',
    prompt,
    fields: { response },
    answer: 0,
  });
  const maxLength = 256;

  it("a 5 MB prompt costs what a budget-sized one does, and keeps the prompt's end", () => {
    const words = Array.from(
      { length: 1_000_000 },
      (_, i) => ['Once', 'upon', 'a', 'time', 'there', 'was', 'a', 'cat'][i % 8],
    ).join(' ');
    const prompt = `${words} THE END`;
    expect(prompt.length).toBeGreaterThan(3_000_000);
    const { tok, chars } = countingTokenizer();
    const r = render(tok, template, [], item(prompt), maxLength);
    expect(r.ids.length).toBeLessThanOrEqual(maxLength);
    expect(r.truncatedTokens).toBeGreaterThan(0);
    const text = tokenizer.decode(r.ids);
    expect(text).toContain('THE END');
    expect(text).toContain('Response: The answer is four.');
    // Everything tokenised, all passes of the cut loop together: a few windows' worth, not the prompt.
    expect(chars()).toBeLessThan(20 * (maxLength + 1) * PROMPT_WINDOW_CHARS_PER_TOKEN);
  });

  it('a cut prompt renders as the same tokens as a prompt of just its tail would', () => {
    const body = Array.from({ length: 20_000 }, (_, i) => `word${i % 97}`).join(' ');
    const long = render(tokenizer, template, [], item(body), maxLength);
    const tail = render(
      tokenizer,
      template,
      [],
      item(body.slice(-((maxLength + 1) * PROMPT_WINDOW_CHARS_PER_TOKEN))),
      maxLength,
    );
    expect(long.ids).toEqual(tail.ids);
  });

  it('a response far over the budget is too long without being tokenised', () => {
    const { tok, chars } = countingTokenizer();
    const response = 'z'.repeat(maxLength * FIELD_CHARS_PER_TOKEN_LIMIT + 1);
    expect(() => render(tok, template, [], item('Q?', response), maxLength)).toThrow(TooLongError);
    expect(chars()).toBeLessThan(response.length);
  });

  it('a demonstration with a huge response is dropped, not tokenised', () => {
    const { tok, chars } = countingTokenizer();
    const demo = { ...item('Q1?', 'y'.repeat(maxLength * FIELD_CHARS_PER_TOKEN_LIMIT + 1)), id: 'd' };
    const r = render(tok, template, [demo], item('Q2?'), maxLength);
    expect(r.droppedDemos).toBe(1);
    expect(chars()).toBeLessThan(10_000);
  });
});
