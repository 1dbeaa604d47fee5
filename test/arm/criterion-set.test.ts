/**
 * Several criteria in one pass (CriterionSet, scoreExamplesUnder): K = 1, 2 and 8 criteria fitted here on
 * icl-tiny's eight criteria (they select different heads) give each criterion the scores it gets alone — items,
 * pairs, GRPO groups (many responses to one prompt), truncated prompts and too-long items — while the prompt runs
 * once; a criterion with another template gets a pass of its own; a criterion of another model is refused naming
 * its file; and the same holds on an image-text checkpoint with images.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import path from 'node:path';
import { Decoder } from '../../src/model/decoder.js';
import { readExamples, type Example, type PairExample } from '../../src/data/examples.js';
import { fitActivationRM } from '../../src/arm/fit.js';
import { ActivationRM, type ExampleScore, type ItemScore } from '../../src/arm/rm.js';
import { CriterionSet, passKey } from '../../src/arm/criterion-set.js';
import { releaseJudgeImages } from '../../src/arm/images.js';
import { tempDir } from '../helpers/fixtures.js';
import { imageTextCheckpoint, writeShapePairs } from '../helpers/image-text.js';

const MODEL = path.resolve(import.meta.dirname, '../../../shared/models/icl-tiny');
const DATA = path.resolve(import.meta.dirname, '../../../shared/data/icl-tiny/pairs.jsonl');
const cacheDir = tempDir('arm-cache-');
/** The largest |Δ| between a criterion's score in a shared pass and alone that we accept (float32 rounding). */
const BOUND = 1e-5;
const FIT = { templateText: '{prompt} {response}', passes: 16, reinforce: { steps: 40 }, warn: () => undefined };

/** Every number two example scores carry (items of pairs included), side by side; flags compared exactly. */
function compare(a: ExampleScore, b: ExampleScore): number {
  expect(a.id).toBe(b.id);
  expect(a.tooLong).toBe(b.tooLong);
  const items = (s: ExampleScore): ItemScore[] => ('detail' in s ? s.detail : [s]);
  let worst = 0;
  const diff = (x: number, y: number) => {
    if (Number.isNaN(x) || Number.isNaN(y)) expect(Number.isNaN(x)).toBe(Number.isNaN(y));
    else worst = Math.max(worst, Math.abs(x - y));
  };
  items(a).forEach((x, i) => {
    const y = items(b)[i]!;
    expect([x.id, x.truncatedTokens, x.tooLong, x.verdict]).toEqual([y.id, y.truncatedTokens, y.tooLong, y.verdict]);
    diff(x.reward, y.reward);
    diff(x.normalized, y.normalized);
    diff(x.logitYes, y.logitYes);
    diff(x.logitNo, y.logitNo);
  });
  if ('chosen' in a && 'chosen' in b) {
    diff(a.chosen, b.chosen);
    diff(a.rejected, b.rejected);
    if (a.rejected !== b.rejected || a.chosen !== b.chosen) expect(Math.abs(a.margin - b.margin)).toBeLessThan(BOUND);
  }
  return worst;
}

describe('icl-tiny: K criteria in one pass score as each alone', () => {
  let decoder: Decoder;
  const rms = new Map<string, ActivationRM>();
  const files: { name: string; file: string }[] = [];
  let examples: Example[];
  const dir = tempDir('arm-criteria-');
  beforeAll(async () => {
    decoder = await Decoder.load(MODEL, { cacheDir, quiet: true });
    const all = readExamples(DATA).examples.filter((e): e is PairExample => e.kind === 'pair');
    const subsets = [...new Set(all.map((e) => e.row.subset as string))];
    expect(subsets).toHaveLength(8);
    for (const subset of subsets) {
      const own = all.filter((e) => e.row.subset === subset);
      const rm = await fitActivationRM(decoder, own.slice(0, 16), FIT);
      const file = path.join(dir, `${subset}.arm.safetensors`);
      rm.save(file);
      files.push({ name: subset, file });
      rms.set(subset, ActivationRM.load(decoder, file));
    }
    // Test rows: pairs of every criterion, a GRPO group (four responses to one prompt), a labelled item, a prompt
    // cut from its start by --max-length, and a response that alone exceeds it (too long: not scored).
    const pairs = subsets.flatMap((s) => all.filter((e) => e.row.subset === s).slice(40, 43));
    const group = ['w1 w2 w3', 'w9 w8 w7', 'w4 w4 w4', 'w2 w5 w9'].map((response, i): Example => ({
      kind: 'scalar',
      id: `grpo-${i}`,
      line: 0,
      row: {},
      prompt: 'w3 w1 w4',
      response,
      label: i % 2 === 0,
    }));
    const words = (n: number) => Array.from({ length: n }, (_, i) => `w${(i * 7) % 40}`).join(' ');
    const long: Example[] = [
      { kind: 'scalar', id: 'cut', line: 0, row: {}, prompt: words(60), response: 'w1 w2 w3', label: null },
      { kind: 'scalar', id: 'too-long', line: 0, row: {}, prompt: 'w1', response: words(90), label: null },
    ];
    examples = [...pairs, ...group, ...long];
  }, 600_000);
  afterAll(async () => {
    await decoder?.dispose();
  });

  it('the fitted criteria differ (else sharing a pass proves nothing)', () => {
    const heads = [...rms.values()].map((rm) => JSON.stringify(rm.criterion.meta.heads));
    expect(new Set(heads).size).toBeGreaterThan(4);
    expect(new Set(files.map((f) => passKey(rms.get(f.name)!.criterion.meta))).size).toBe(1);
  });

  for (const K of [1, 2, 8]) {
    it(`K = ${K}: one pass, each criterion's scores as alone (|Δ| ≤ ${BOUND}), the prompt run once`, async () => {
      const set = CriterionSet.load(decoder, files.slice(0, K));
      expect(set.passes(undefined, 48)).toHaveLength(1);
      const opts = { maxLength: 48, batchSize: 8 };
      const before = decoder.stats.tokens;
      const together = await set.scoreExamples(examples, opts);
      const sharedTokens = decoder.stats.tokens - before;
      let aloneTokens = 0;
      let worst = 0;
      for (const { name } of files.slice(0, K)) {
        const t0 = decoder.stats.tokens;
        const alone = await rms.get(name)!.scoreExamples(examples, opts);
        aloneTokens += decoder.stats.tokens - t0;
        const got = together.get(name)!;
        expect(got).toHaveLength(alone.length);
        alone.forEach((s, i) => (worst = Math.max(worst, compare(got[i]!, s))));
      }
      expect(worst).toBeLessThanOrEqual(BOUND);
      // The cut and the too-long item behave as alone: truncated from the start, and not scored.
      const byId = (id: string) => together.get(files[0]!.name)!.find((s) => s.id === id) as ItemScore;
      expect(byId('cut').truncatedTokens).toBeGreaterThan(0);
      expect(byId('too-long').tooLong).toBe(true);
      expect(Number.isNaN(byId('too-long').reward)).toBe(true);
      // Tokens fed: the prompts once plus K last-token rows each, not K full passes.
      const live = examples.length + examples.filter((e) => e.kind === 'pair').length - 1;
      expect(sharedTokens).toBeLessThanOrEqual(aloneTokens / K + K * live);
      if (K === 8) expect(sharedTokens).toBeLessThan(aloneTokens / 4);
    }, 300_000);
  }

  it('a criterion with another template gets its own pass; the scores do not change', async () => {
    const all = readExamples(DATA).examples.filter((e): e is PairExample => e.kind === 'pair');
    const own = all.filter((e) => e.row.subset === files[0]!.name).slice(0, 16);
    const other = await fitActivationRM(decoder, own, { ...FIT, templateText: '{prompt} w0 {response}' });
    const file = path.join(dir, 'other-template.arm.safetensors');
    other.save(file);
    const set = CriterionSet.load(decoder, [...files.slice(0, 2), { name: 'other', file }]);
    const passes = set.passes();
    expect(passes.map((p) => p.map((c) => c.name))).toEqual([[files[0]!.name, files[1]!.name], ['other']]);
    const some = examples.slice(0, 6);
    const together = await set.scoreExamples(some, { names: ['other', files[1]!.name] });
    expect([...together.keys()]).toEqual(['other', files[1]!.name]);
    const alone = await ActivationRM.load(decoder, file).scoreExamples(some);
    alone.forEach((s, i) => expect(compare(together.get('other')![i]!, s)).toBeLessThanOrEqual(BOUND));
  }, 300_000);

  it('refuses a criterion fitted on another model, naming its file', async () => {
    const vl = await Decoder.load(imageTextCheckpoint('qwen2_5_vl'), { cacheDir, quiet: true });
    try {
      expect(() => CriterionSet.load(vl, files.slice(0, 2))).toThrow(files[0]!.file);
    } finally {
      await vl.dispose();
    }
  });

  it('refuses two criteria of one name', () => {
    expect(() => CriterionSet.load(decoder, [files[0]!, { ...files[1]!, name: files[0]!.name }])).toThrow(
      /two criteria/,
    );
  });
});

describe('image-text: K criteria in one pass with images', () => {
  let decoder: Decoder;
  afterAll(async () => {
    if (decoder) await releaseJudgeImages(decoder);
    await decoder?.dispose();
  });

  it('two criteria fitted on image pairs score as each alone', async () => {
    decoder = await Decoder.load(imageTextCheckpoint('qwen2_5_vl'), { cacheDir, quiet: true });
    const shapes = readExamples((await writeShapePairs(tempDir('arm-shapes-'))).file).examples;
    const fit = {
      passes: 8,
      shots: 1,
      batchSize: 4,
      reinforce: { steps: 6, samples: 8, readoutMasks: 3, readoutItems: 6 },
      warn: () => undefined,
    };
    const dir = tempDir('arm-vl-criteria-');
    const files = [0, 1].map((seed) => path.join(dir, `c${seed}.arm.safetensors`));
    for (const [seed, file] of files.entries()) (await fitActivationRM(decoder, shapes, { ...fit, seed })).save(file);
    const set = CriterionSet.load(
      decoder,
      files.map((file, i) => ({ name: `c${i}`, file })),
    );
    expect(shapes.some((e) => e.images?.length)).toBe(true);
    const together = await set.scoreExamples(shapes);
    // The two criteria score differently, so rows mixed up between them would show.
    const rewards = (name: string) =>
      together.get(name)!.flatMap((s) => ('detail' in s ? s.detail : [s]).map((x) => x.logitYes));
    const gap = Math.max(...rewards('c0').map((r, i) => Math.abs(r - rewards('c1')[i]!)));
    expect(gap).toBeGreaterThan(100 * BOUND);
    for (const [i, file] of files.entries()) {
      const alone = await ActivationRM.load(decoder, file).scoreExamples(shapes);
      alone.forEach((s, j) => expect(compare(together.get(`c${i}`)![j]!, s)).toBeLessThanOrEqual(BOUND));
    }
  }, 300_000);
});
