/**
 * A criterion belongs to the judge prompts it was fitted on: besides config.json and the weights, the files that
 * decide those prompts' token ids or pixels (tokenizer.json, tokenizer_config.json with its chat template,
 * chat_template.jinja / .json, and an image-text checkpoint's preprocessor_config.json) are recorded by content
 * hash, and a criterion refuses a model whose files differ, naming the file.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import fs from 'node:fs';
import path from 'node:path';
import { createHash } from 'node:crypto';
import { Decoder } from '../../src/model/decoder.js';
import { readExamples, type Example } from '../../src/data/examples.js';
import { fitActivationRM } from '../../src/arm/fit.js';
import { ActivationRM } from '../../src/arm/rm.js';
import { loadCriterion, saveCriterion } from '../../src/arm/criterion.js';
import { STORIES, tempDir } from '../helpers/fixtures.js';
import { imageTextCheckpoint } from '../helpers/image-text.js';

const CONCISE = path.resolve(import.meta.dirname, '../../examples/concise');
const quick = { passes: 4, shots: 1, seed: 1, batchSize: 4, heads: 'random:2' as const };
const sha256 = (bytes: Buffer | string) => createHash('sha256').update(bytes).digest('hex');
/** `text` escaped to match itself in a regular expression. */
const literal = (text: string) => text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
/** One regular expression from several literals (a long pattern over several lines): their sources joined. */
const joined = (...parts: RegExp[]) => new RegExp(parts.map((p) => p.source).join(''));

let examples: Example[];
beforeAll(() => {
  examples = readExamples(path.join(CONCISE, 'few.jsonl')).examples.slice(0, 4);
});

/** Fits a quick criterion on `dir` and saves it; returns its path. */
async function fitOn(dir: string, cacheDir: string, items: Example[]): Promise<string> {
  const decoder = await Decoder.load(dir, { cacheDir, threads: 1 });
  try {
    const file = path.join(tempDir('arm-crit-'), 'c.arm.safetensors');
    (await fitActivationRM(decoder, items, quick)).save(file);
    return file;
  } finally {
    await decoder.dispose();
  }
}

/** Loads the criterion against the model folder as it is now: the warnings, or the refusal. */
async function loadAgainst(dir: string, cacheDir: string, file: string): Promise<string[]> {
  const decoder = await Decoder.load(dir, { cacheDir, threads: 1 });
  try {
    const warnings: string[] = [];
    ActivationRM.load(decoder, file, { warn: (w) => warnings.push(w) });
    return warnings;
  } finally {
    await decoder.dispose();
  }
}

/** Runs `edit` on the folder, then `check`, and puts every file back as it was (added files removed). */
async function withEdit(dir: string, edit: () => void, check: () => Promise<void>): Promise<void> {
  const before = new Map(fs.readdirSync(dir).map((f) => [f, fs.readFileSync(path.join(dir, f))]));
  try {
    edit();
    await check();
  } finally {
    for (const f of fs.readdirSync(dir)) if (!before.has(f)) fs.rmSync(path.join(dir, f));
    for (const [f, bytes] of before) fs.writeFileSync(path.join(dir, f), bytes);
  }
}

describe('a text checkpoint (stories260K copy)', () => {
  let dir: string, cacheDir: string, criterion: string;
  const at = (f: string) => path.join(dir, f);
  const json = (f: string) => JSON.parse(fs.readFileSync(at(f), 'utf8')) as Record<string, unknown>;

  beforeAll(async () => {
    dir = tempDir('arm-stories-copy-');
    for (const f of [
      'config.json',
      'model.safetensors',
      'tokenizer.json',
      'tokenizer_config.json',
      'generation_config.json',
    ])
      fs.copyFileSync(path.join(STORIES, f), at(f));
    cacheDir = tempDir('arm-cache-');
    criterion = await fitOn(dir, cacheDir, examples);
  });

  it('records the sha256 of every tokenizer file, null for those the checkpoint lacks', () => {
    expect(loadCriterion(criterion).meta.model.files).toEqual({
      'tokenizer.json': sha256(fs.readFileSync(at('tokenizer.json'))),
      'tokenizer_config.json': sha256(fs.readFileSync(at('tokenizer_config.json'))),
      'chat_template.jinja': null,
      'chat_template.json': null,
    });
  });

  it('loads against unchanged files without a warning (files absent on both sides are fine)', async () => {
    expect(await loadAgainst(dir, cacheDir, criterion)).toEqual([]);
  });

  const edits: [string, string, (dir: string) => void, RegExp][] = [
    [
      'tokenizer_config.json',
      'its chat_template edited',
      (d) => {
        const c = JSON.parse(fs.readFileSync(path.join(d, 'tokenizer_config.json'), 'utf8'));
        c.chat_template = `Judge strictly.\n${c.chat_template}`;
        fs.writeFileSync(path.join(d, 'tokenizer_config.json'), JSON.stringify(c, null, 2));
      },
      joined(
        /tokenizer_config\.json differs from the one this criterion was fitted with /,
        /\(fitted with sha256 [0-9a-f]{16}…, now sha256 [0-9a-f]{16}…\)/,
      ),
    ],
    [
      'tokenizer_config.json',
      'removed',
      (d) => fs.rmSync(path.join(d, 'tokenizer_config.json')),
      /tokenizer_config\.json is missing, but the model this criterion was fitted with had one/,
    ],
    [
      'tokenizer.json',
      'edited (a vocabulary entry renamed)',
      (d) => {
        const t = JSON.parse(fs.readFileSync(path.join(d, 'tokenizer.json'), 'utf8'));
        const vocab = t.model.vocab as Record<string, number>;
        const [word, id] = Object.entries(vocab).at(-1)!;
        delete vocab[word];
        vocab[`${word}x`] = id;
        fs.writeFileSync(path.join(d, 'tokenizer.json'), JSON.stringify(t));
      },
      /tokenizer\.json differs from the one this criterion was fitted with/,
    ],
    [
      'chat_template.jinja',
      "added (it overrides the config's template)",
      (d) =>
        fs.writeFileSync(
          path.join(d, 'chat_template.jinja'),
          "{% for m in messages %}Q: {{ m['content'] }}\n{% endfor %}A:",
        ),
      joined(
        /chat_template\.jinja is present \(sha256 [0-9a-f]{16}…\), /,
        /but the model this criterion was fitted with had no chat_template\.jinja/,
      ),
    ],
    [
      'chat_template.json',
      'added',
      (d) =>
        fs.writeFileSync(
          path.join(d, 'chat_template.json'),
          JSON.stringify({ chat_template: "{% for m in messages %}{{ m['content'] }}{% endfor %}" }),
        ),
      /chat_template\.json is present/,
    ],
  ];
  for (const [file, what, edit, message] of edits) {
    it(`refuses the criterion when ${file} is ${what}, naming the file`, async () => {
      await withEdit(
        dir,
        () => edit(dir),
        async () => {
          const refusal = loadAgainst(dir, cacheDir, criterion);
          await expect(refusal).rejects.toThrow(message);
          await expect(refusal).rejects.toThrow(
            new RegExp(`^${literal(criterion)}: ${literal(at(file))} .*fit the criterion again`),
          );
        },
      );
    });
  }

  it('counts a whitespace-only change: the bytes are the identity, even where the ids would not move', async () => {
    await withEdit(
      dir,
      () => fs.writeFileSync(at('tokenizer.json'), `${JSON.stringify(json('tokenizer.json'), null, 1)}\n`),
      async () => {
        // The re-indented tokenizer gives the same ids (so this is whitespace only) and is still refused.
        const [a, b] = [
          await Decoder.load(STORIES, { cacheDir, threads: 1 }),
          await Decoder.load(dir, { cacheDir, threads: 1 }),
        ];
        try {
          expect(b.tokenizer.encode('Once upon a time, a judge said yes.')).toEqual(
            a.tokenizer.encode('Once upon a time, a judge said yes.'),
          );
        } finally {
          await a.dispose();
          await b.dispose();
        }
        await expect(loadAgainst(dir, cacheDir, criterion)).rejects.toThrow(/tokenizer\.json differs/);
      },
    );
  });

  it('names every file that differs in one message', async () => {
    await withEdit(
      dir,
      () => {
        fs.appendFileSync(at('tokenizer_config.json'), '\n');
        fs.writeFileSync(at('chat_template.jinja'), '{{ messages[0].content }}');
      },
      async () => {
        await expect(loadAgainst(dir, cacheDir, criterion)).rejects.toThrow(
          /tokenizer_config\.json differs .*; .*chat_template\.jinja is present/,
        );
      },
    );
  });

  it('loads a criterion written before the files were recorded, warning that they could not be checked', async () => {
    const c = loadCriterion(criterion);
    delete c.meta.model.files;
    const old = path.join(tempDir('arm-crit-'), 'old.arm.safetensors');
    saveCriterion(old, c);
    expect(await loadAgainst(dir, cacheDir, old)).toEqual([
      expect.stringMatching(
        joined(
          /old\.arm\.safetensors was fitted before criterion files recorded the tokenizer, chat template and /,
          /processor files \(tokenizer\.json, tokenizer_config\.json, chat_template\.jinja, chat_template\.json\), /,
          /so a change to them since it was fitted cannot be detected/,
        ),
      ),
    ]);
    // It is the promise it states: the template edit that refuses a new file goes unnoticed by an old one.
    await withEdit(
      dir,
      () => edits[0]![2](dir),
      async () => {
        expect(await loadAgainst(dir, cacheDir, old)).toHaveLength(1);
        await expect(loadAgainst(dir, cacheDir, criterion)).rejects.toThrow(/tokenizer_config\.json differs/);
      },
    );
  });

  it('refuses metadata whose file names point outside the model folder, or whose hashes are not sha256', () => {
    const c = loadCriterion(criterion);
    const bad = path.join(tempDir('arm-crit-'), 'bad.arm.safetensors');
    expect(() =>
      saveCriterion(bad, { ...c, meta: { ...c.meta, model: { ...c.meta.model, files: { '../config.json': null } } } }),
    ).toThrow(/metadata field "model\.files": "\.\.\/config\.json" is not a file name/);
    expect(() =>
      saveCriterion(bad, { ...c, meta: { ...c.meta, model: { ...c.meta.model, files: { 'tokenizer.json': 'abc' } } } }),
    ).toThrow(/metadata field "model\.files\.tokenizer\.json": "abc" is not a sha256/);
    expect(fs.existsSync(bad)).toBe(false);
  });
});

describe('an image-text checkpoint (qwen2_5_vl tiny fixture)', () => {
  let dir: string, cacheDir: string, criterion: string;

  beforeAll(async () => {
    dir = imageTextCheckpoint('qwen2_5_vl');
    cacheDir = tempDir('arm-cache-');
    const items: Example[] = readExamples(path.join(CONCISE, 'few.jsonl')).examples.slice(0, 4);
    criterion = await fitOn(dir, cacheDir, items);
  });
  afterAll(() => fs.rmSync(cacheDir, { recursive: true, force: true }));

  it('records preprocessor_config.json too, and refuses an edited one (whitespace included) naming it', async () => {
    expect(loadCriterion(criterion).meta.model.files?.['preprocessor_config.json']).toBe(
      sha256(fs.readFileSync(path.join(dir, 'preprocessor_config.json'))),
    );
    expect(await loadAgainst(dir, cacheDir, criterion)).toEqual([]);
    await withEdit(
      dir,
      () => fs.appendFileSync(path.join(dir, 'preprocessor_config.json'), ' '),
      async () => {
        await expect(loadAgainst(dir, cacheDir, criterion)).rejects.toThrow(
          /preprocessor_config\.json differs from the one this criterion was fitted with/,
        );
      },
    );
    await withEdit(
      dir,
      () => {
        const p = JSON.parse(fs.readFileSync(path.join(dir, 'preprocessor_config.json'), 'utf8'));
        p.size.longest_edge *= 4;
        fs.writeFileSync(path.join(dir, 'preprocessor_config.json'), JSON.stringify(p));
      },
      async () => {
        await expect(loadAgainst(dir, cacheDir, criterion)).rejects.toThrow(/preprocessor_config\.json differs/);
      },
    );
  });
});
