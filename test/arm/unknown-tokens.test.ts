/**
 * The unknown-token measure (src/arm/unknown-tokens.ts) against counts made here from the vocabulary itself: which
 * ids count as unknown for a word-level, a sentencepiece (byte fallback) and a byte-level BPE vocabulary; on the
 * bundled icl-tiny (a 64-word vocabulary), the default English template is mostly unknown and "{prompt} {response}"
 * is not, a fit refuses the first when asked to and records the rate in its criterion either way; and the fit's
 * warning about --max-length cuts names the length a pass needs, computed here from icl-tiny's format.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import fs from 'node:fs';
import path from 'node:path';
import { Decoder } from '../../src/model/decoder.js';
import { Tokenizer } from '../../src/model/tokenizer.js';
import { readExamples, type Example, type PairExample } from '../../src/data/examples.js';
import { FitError, fitActivationRM } from '../../src/arm/fit.js';
import { loadCriterion } from '../../src/arm/criterion.js';
import { DEFAULT_TEMPLATES } from '../../src/arm/template.js';
import { MOSTLY_UNKNOWN, UnknownTokenWatch } from '../../src/arm/unknown-tokens.js';
import { evaluate } from '../../src/eval/harness.js';
import { tempDir } from '../helpers/fixtures.js';
import { tokenizerFolder } from '../helpers/tokenizers.js';

const ICL_TINY = path.resolve(import.meta.dirname, '../../models/icl-tiny');
const FEW = path.resolve(import.meta.dirname, '../../examples/icl-tiny/last-low/few.jsonl');
/** icl-tiny's word-level vocabulary, read from its tokenizer.json: the independent reference for "known". */
const VOCAB = new Set(
  Object.keys(
    (JSON.parse(fs.readFileSync(path.join(ICL_TINY, 'tokenizer.json'), 'utf8')) as { model: { vocab: object } }).model
      .vocab,
  ),
);
/** A fit small enough for a test: what is measured here happens before the means, or does not depend on them. */
const QUICK = { passes: 10, batchSize: 16, reinforce: { steps: 2, samples: 4, readoutMasks: 2, readoutItems: 4 } };

/**
 * The text words of a judge prompt in icl-tiny's chat format (`<bos>`, then ` {content} A:` for the query: the
 * template its tokenizer_config.json holds), and how many of them the vocabulary lacks. WhitespaceSplit makes every
 * whitespace-separated word one token: a word outside the vocabulary is one <unk>.
 */
function wordCount(question: string): { unknown: number; text: number } {
  const words = ` ${question} A:`.split(/\s+/).filter(Boolean);
  return { unknown: words.filter((w) => !VOCAB.has(w)).length, text: words.length };
}

/** The judge items of pairs, as the fit renders them: each response with its prompt, through `templateText`. */
function expectedCount(pairs: PairExample[], templateText: string): { unknown: number; text: number } {
  const fill = (p: string, r: string) => templateText.replace('{prompt}', p).replace('{response}', r);
  const counts = pairs.flatMap((e) => [
    wordCount(fill(e.prompt as string, e.chosen)),
    wordCount(fill(e.prompt as string, e.rejected)),
  ]);
  return counts.reduce((a, c) => ({ unknown: a.unknown + c.unknown, text: a.text + c.text }));
}

describe('which ids are unknown', () => {
  it('word-level: <unk> only, counted as text though it is a special token', async () => {
    const tok = await Tokenizer.load(ICL_TINY);
    expect([...tok.unknownTokenIds]).toEqual([tok.tokenId('<unk>')]);
    const ids = tok.encodeText('w3 Prompt: w7 hello A:', { addSpecialTokens: false });
    expect(tok.countUnknown(ids)).toEqual(wordCount('w3 Prompt: w7 hello'));
  });

  it('sentencepiece with byte fallback: non-ASCII byte tokens are unknown, "\\n" (<0x0A>) is not', async () => {
    const tok = await Tokenizer.load(tokenizerFolder('llama2'));
    // A llama emoji has no token in Llama 2's vocabulary: its 4 UTF-8 bytes are byte tokens.
    const llama = [...Buffer.from('🦙', 'utf8')].map((b) => tok.tokenId(`<0x${b.toString(16).toUpperCase()}>`)!);
    expect(llama).toHaveLength(4);
    const ids = tok.encodeText('Is it a llama?\n🦙', { addSpecialTokens: false });
    expect(ids).toContain(tok.tokenId('<0x0A>'));
    expect(ids.slice(-4)).toEqual(llama);
    expect(tok.countUnknown(ids)).toEqual({ unknown: 4, text: ids.length });
  });

  it('byte-level BPE: nothing is unknown, whatever the script', async () => {
    const tok = await Tokenizer.load(tokenizerFolder('qwen3'));
    expect(tok.unknownTokenIds.size).toBe(0);
    const ids = tok.encodeText('🦙 羊驼 ⍼', { addSpecialTokens: false });
    expect(tok.countUnknown(ids)).toEqual({ unknown: 0, text: ids.length });
  });
});

describe('fitting icl-tiny', () => {
  let decoder: Decoder;
  let examples: Example[];
  let pairs: PairExample[];
  beforeAll(async () => {
    decoder = await Decoder.load(ICL_TINY, { cacheDir: tempDir('arm-cache-') });
    examples = readExamples(FEW).examples;
    pairs = examples.filter((e): e is PairExample => e.kind === 'pair');
  }, 60_000);
  afterAll(async () => {
    await decoder?.dispose();
  });

  it('with the default template: warns, and records the rate counted from the vocabulary', async () => {
    const warnings: string[] = [];
    const rm = await fitActivationRM(decoder, examples, { ...QUICK, warn: (m) => warnings.push(m) });
    const expected = expectedCount(pairs, DEFAULT_TEMPLATES.scalar);
    const own = wordCount(DEFAULT_TEMPLATES.scalar.replace('{prompt}', '').replace('{response}', ''));
    const recorded = rm.criterion.meta.unknownTokens!;
    expect(recorded).toEqual({
      rate: expected.unknown / expected.text,
      ...expected,
      template: { knownRate: 1 - own.unknown / own.text, ...own },
    });
    expect(recorded.rate).toBeGreaterThan(MOSTLY_UNKNOWN);
    expect(recorded.template.knownRate).toBeLessThan(1 - MOSTLY_UNKNOWN);
    const warning = warnings.find((w) => w.includes('judge template is mostly unknown'));
    expect(warning).toContain(`only ${own.text - own.unknown} of ${own.text} tokens are known`);
    expect(warning).toContain(`(${expected.unknown} of ${expected.text})`);
    // Written and read back with the criterion.
    const file = path.join(tempDir(), 'default.arm.safetensors');
    rm.save(file);
    expect(loadCriterion(file).meta.unknownTokens).toEqual(recorded);
  });

  it('refuses before any work when asked to, with how to override', async () => {
    const progress: string[] = [];
    const fit = fitActivationRM(decoder, examples, {
      ...QUICK,
      refuseMostlyUnknown: true,
      onProgress: (phase) => progress.push(phase),
    });
    await expect(fit).rejects.toThrow(FitError);
    await expect(fit).rejects.toThrow(/not fitted: the judge template is mostly unknown.*--force/);
    expect(progress).toEqual([]);
  });

  it('with "{prompt} {response}": nothing unknown, no warning, not refused', async () => {
    const warnings: string[] = [];
    const template = '{prompt} {response}';
    const rm = await fitActivationRM(decoder, examples, {
      ...QUICK,
      templateText: template,
      refuseMostlyUnknown: true,
      warn: (m) => warnings.push(m),
    });
    const expected = expectedCount(pairs, template);
    expect(expected.unknown).toBe(0);
    expect(rm.criterion.meta.unknownTokens).toEqual({
      rate: 0,
      ...expected,
      template: { knownRate: 1, unknown: 0, text: 1 }, // " A:" of the chat format
    });
    expect(warnings).toEqual([]);
  });

  it('scoring measures each judge prompt, and the watch warns on a mostly unknown batch', async () => {
    const rm = await fitActivationRM(decoder, examples, { ...QUICK, templateText: '{prompt} {response}' });
    const chatml = {
      kind: 'scalar' as const,
      id: 'chatml',
      line: 1,
      row: {},
      prompt: '<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n',
      response: '4<|im_end|>',
      label: null,
    };
    const scores = await rm.scoreExamples([pairs[0]!, chatml]);
    const pair = scores[0]!;
    expect('detail' in pair && pair.detail.map((d) => [d.unknownTokens, d.textTokens])).toEqual([
      [0, 7],
      [0, 7],
    ]);
    const words = wordCount(`${chatml.prompt} ${chatml.response}`);
    expect(scores[1]).toMatchObject({ unknownTokens: words.unknown, textTokens: words.text });
    expect(words.unknown / words.text).toBeGreaterThan(MOSTLY_UNKNOWN);
    const warned: string[] = [];
    let now = 0;
    const watch = new UnknownTokenWatch(decoder.tokenizer, rm.criterion.meta.template, (m) => warned.push(m), {
      intervalMs: 1000,
      now: () => now,
    });
    expect(watch.add([pair], 'known').rate).toBe(0);
    expect(watch.add([scores[1]!], 'batch 2').rate).toBe(words.unknown / words.text);
    now = 500;
    watch.add([scores[1]!], 'batch 3'); // within the interval: counted, not warned
    now = 1500;
    watch.add([scores[1]!], 'batch 4');
    expect(warned).toHaveLength(2);
    expect(warned[0]).toMatch(/^batch 2: \d+% of the judge prompts' text tokens \(6 of 7\) are unknown/);
    expect(warned[1]).toMatch(/^batch 4: .*\(and 1 more such batches since the last warning\)$/);
  });

  it("eval results record a method's rate: the zero-shot judge with the default and the bare template", async () => {
    const test = readExamples(path.join(path.dirname(FEW), 'test.jsonl')).examples.slice(0, 12);
    const rateWith = async (templateText?: string) => {
      const results = await evaluate(decoder, test, {
        methods: ['zero-shot'],
        fewShot: 4,
        seeds: 1,
        seed: 0,
        pool: 'global',
        outputDir: tempDir('arm-eval-'),
        saveAll: false,
        chunkSize: 64,
        dataset: 'last-low',
        modelId: 'icl-tiny',
        method: {
          fit: { templateText },
          batchSize: 16,
          maxLength: decoder.spec.maxPositions,
          iclShots: 2,
          sampleN: 2,
          sampleTemperature: 1,
          savTopHeads: 4,
        },
      });
      return results.methods['zero-shot']!.unknownTokenRate;
    };
    // Every judge item is 21 words with the default template, 13 of them unknown (as expectedCount counts); none bare.
    expect(expectedCount(test.slice(0, 1) as PairExample[], DEFAULT_TEMPLATES.scalar)).toEqual({
      unknown: 2 * 13,
      text: 2 * 21,
    });
    expect(await rateWith()).toBe(13 / 21);
    expect(await rateWith('{prompt} {response}')).toBe(0);
  });

  it('the warning about --max-length cuts says what was cut and the length that fits', async () => {
    // Every pass is <bos>, 4 demonstrations " w w w w w w A: Yes|No |" (9 tokens) and the query (7): 44 tokens.
    const passLength = (shots: number) => 1 + 9 * shots + 7;
    const template = { ...QUICK, templateText: '{prompt} {response}' };
    const warnings: string[] = [];
    await fitActivationRM(decoder, examples, { ...template, maxLength: 40, warn: (m) => warnings.push(m) });
    const fitting = [4, 3, 2, 1, 0].find((k) => passLength(k) <= 40);
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toMatch(/^10 of 10 mean-extraction passes did not fit --max-length 40: /);
    expect(warnings[0]).toContain(`the longest needs ${passLength(4)} tokens whole`);
    expect(warnings[0]).toContain(`To keep them whole: --max-length ${passLength(4)}, or fewer`);
    expect(warnings[0]).toContain(`(--shots ${fitting})`);
    const none: string[] = [];
    await fitActivationRM(decoder, examples, { ...template, maxLength: passLength(4), warn: (m) => none.push(m) });
    expect(none).toEqual([]);
  });
});
