/**
 * The method end to end on small checkpoints: mean extraction against hand-computed per-pass means, the
 * intervention (replace / add), the shared-prefix REINFORCE loss against full forwards, and fit → file → load →
 * score (determinism, resume, bad input, a criterion from another model).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import fs from 'node:fs';
import path from 'node:path';
import { Decoder } from '../../src/model/decoder.js';
import { readExamples, type Example } from '../../src/data/examples.js';
import { extractMeans, planPasses } from '../../src/arm/means.js';
import { denoiseMeans } from '../../src/arm/denoise.js';
import { fitActivationRM, FitInterrupted, judgeItems } from '../../src/arm/fit.js';
import { reinforceLoss } from '../../src/arm/reinforce-loss.js';
import { ActivationRM } from '../../src/arm/rm.js';
import { makeTemplate, render, resolveAnswerTokens } from '../../src/arm/template.js';
import { loadCriterion } from '../../src/arm/criterion.js';
import { CHATML, FAMILY_CONFIGS, makeCheckpoint, relError, STORIES, tempDir } from '../helpers/fixtures.js';

/**
 * Plain float64 softmax and cross-entropy over a logits row: the expectations the graph's outputs are checked against.
 */
function softmax(row: Float32Array): Float64Array {
  const max = Math.max(...row);
  const e = Float64Array.from(row, (v) => Math.exp(v - max));
  const sum = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / sum);
}
const crossEntropy = (row: Float32Array, target: number) => -Math.log(softmax(row)[target]!);

const FEW = [
  { id: 'a', prompt: 'What is 2+2?', chosen: '4', rejected: 'It is 5, for sure, absolutely, no doubt.' },
  {
    id: 'b',
    prompt: [{ role: 'user', content: 'Name a colour.' }],
    chosen: 'Red.',
    rejected: 'A colour is a colour is a colour.',
  },
  { id: 'c', prompt: 'Say hi', chosen: 'Hi!', rejected: 'Goodbye forever and ever.' },
  { id: 'd', prompt: 'Capital of France?', response: 'Paris', label: 'yes' },
  { id: 'e', prompt: 'Capital of Spain?', response: 'Lisbon, obviously.', label: 0 },
];

function writeJsonl(rows: unknown[]): string {
  const file = path.join(tempDir(), 'few.jsonl');
  fs.writeFileSync(file, rows.map((r) => JSON.stringify(r)).join('\n') + '\n');
  return file;
}

let decoder: Decoder;
let examples: Example[];
const quick = {
  passes: 6,
  shots: 2,
  seed: 3,
  batchSize: 4,
  reinforce: { steps: 12, samples: 8, readoutMasks: 3, readoutItems: 4 },
};

beforeAll(async () => {
  const { dir } = makeCheckpoint(
    { ...FAMILY_CONFIGS['qwen2 (qkv bias, tied, GQA 2)']!, max_position_embeddings: 512 },
    { seed: 21, chatTemplate: CHATML, std: 0.3 },
  );
  decoder = await Decoder.load(dir, { cacheDir: tempDir('arm-cache-'), threads: 1 });
  examples = readExamples(writeJsonl(FEW)).examples;
});
afterAll(() => decoder?.dispose());

describe('mean extraction', () => {
  it('equals the hand-computed mean of per-pass taps (each pass run alone)', async () => {
    const template = makeTemplate('scalar', {}, decoder.tokenizer);
    const items = judgeItems(examples, 'scalar');
    const res = await extractMeans(decoder, template, items, {
      passes: 5,
      shots: 2,
      seed: 9,
      batchSize: 3,
      maxLength: 512,
    });
    // The plan the means were taken over, checked against the design (T passes, k distinct demos, never the query), not
    // against planPasses again.
    const plan = res.plan;
    expect(plan).toHaveLength(5);
    for (const p of plan) {
      expect(p.query).toBeGreaterThanOrEqual(0);
      expect(p.query).toBeLessThan(items.length);
      expect(new Set(p.demos).size).toBe(2);
      for (const d of p.demos) expect(d >= 0 && d < items.length && d !== p.query).toBe(true);
    }
    const width = res.mu.length;
    const sum = new Float64Array(width);
    for (const p of plan) {
      const { ids } = render(
        decoder.tokenizer,
        template,
        p.demos.map((i) => items[i]!),
        items[p.query]!,
        512,
      );
      const { heads } = await decoder.forward([ids]);
      heads.forEach((v, i) => {
        sum[i]! += v;
      });
    }
    expect(
      relError(
        res.mu,
        Array.from(sum, (s) => s / plan.length),
      ),
    ).toBeLessThan(1e-5);
  });

  it('passes sharing a demo draw: the plan shares demos; the shared-prefix means equal per-pass forwards', async () => {
    const template = makeTemplate('scalar', {}, decoder.tokenizer);
    const items = judgeItems(examples, 'scalar');
    const plan = planPasses(items.length, 6, 2, 4, 3);
    expect(plan.length).toBe(6);
    for (const block of [plan.slice(0, 3), plan.slice(3)]) {
      expect(new Set(block.map((p) => p.demos.join(','))).size).toBe(1);
      expect(new Set(block.map((p) => p.query)).size).toBe(3);
      for (const p of block) expect(p.demos).not.toContain(p.query);
    }
    const tokens0 = decoder.stats.tokens;
    const res = await extractMeans(decoder, template, items, {
      passes: 6,
      shots: 2,
      seed: 4,
      batchSize: 4,
      maxLength: 512,
      passesPerDemoSet: 3,
    });
    const sharedTokens = decoder.stats.tokens - tokens0;
    const sum = new Float64Array(res.mu.length);
    let fullTokens = 0;
    for (const p of plan) {
      const { ids } = render(
        decoder.tokenizer,
        template,
        p.demos.map((i) => items[i]!),
        items[p.query]!,
        512,
      );
      fullTokens += ids.length;
      (await decoder.forward([ids])).heads.forEach((v, i) => {
        sum[i]! += v;
      });
    }
    expect(
      relError(
        res.mu,
        Array.from(sum, (x) => x / plan.length),
      ),
    ).toBeLessThan(1e-5);
    expect(sharedTokens).toBeLessThan(fullTokens);
  });

  it('zero-shot passes have nothing to share: with a demo-set size they run as independent passes', async () => {
    const template = makeTemplate('scalar', {}, decoder.tokenizer);
    const items = judgeItems(examples, 'scalar');
    const opts = { passes: 100, shots: 0, seed: 2, batchSize: 3, maxLength: 512 };
    const independent = await extractMeans(decoder, template, items, { ...opts, passesPerDemoSet: 1 });
    const batches: number[] = [];
    const grouped = await extractMeans(decoder, template, items, {
      ...opts,
      passesPerDemoSet: 5,
      onProgress: (done) => batches.push(done),
    });
    expect(Array.from(grouped.mu)).toEqual(Array.from(independent.mu)); // same bits: no padded all-items unit
    expect(batches.length).toBeGreaterThan(1); // progress (and Ctrl-C) between batches, not one unit of every item
  });

  it("PCA denoising projects the mean onto the top axes of the passes' second moment", () => {
    // passes (2,0,0), (2,0,0), (0,1,0): second moment diag(8/3, 1/3, 0), axes x then y; mean (4/3, 1/3, 0)
    const passes = [
      [2, 0, 0],
      [2, 0, 0],
      [0, 1, 0],
    ].map((x) => Float32Array.from(x));
    const mu = Float32Array.from([4 / 3, 1 / 3, 0]);
    const rank1 = denoiseMeans(mu, passes, [[0, 0]], { H: 1, d: 3 }, 1);
    expect(Array.from(rank1).map((x) => Number(x.toFixed(6)))).toEqual([1.333333, 0, 0]);
    const rank2 = denoiseMeans(mu, passes, [[0, 0]], { H: 1, d: 3 }, 2);
    expect(relError(rank2, mu)).toBeLessThan(1e-6);
  });
});

describe('intervention', () => {
  it('with an empty head set the score is plain zero-shot P(Yes)', async () => {
    const fitted = await fitActivationRM(decoder, examples, { ...quick, heads: 'random:0' });
    expect(fitted.criterion.meta.heads).toEqual([]);
    const items = judgeItems(examples, 'scalar');
    const scores = await fitted.scoreItems(items);
    const yes = fitted.criterion.meta.answerTokens.primary[0];
    for (const [i, item] of items.entries()) {
      const { ids } = render(decoder.tokenizer, fitted.criterion.meta.template, [], item, 512);
      const { logits } = await decoder.forward([ids]);
      // relative; batching reorders float sums
      expect(relError([scores[i]!.reward], [softmax(logits)[yes]!]) / softmax(logits)[yes]!).toBeLessThan(1e-5);
    }
  });

  it('replace sets a head to its mean, add adds the mean (checked at layer 0: no edit precedes its tap)', async () => {
    const { numLayers: L, numHeads: H, headDim: d } = decoder.spec;
    const base = await fitActivationRM(decoder, examples, { ...quick, heads: 'all' });
    const mu = base.criterion.mu;
    const ids = render(
      decoder.tokenizer,
      base.criterion.meta.template,
      [],
      judgeItems(examples, 'scalar')[0]!,
      512,
    ).ids;
    const plain = await decoder.forward([ids]);
    for (const mode of ['replace', 'add'] as const) {
      const rm = new ActivationRM(decoder, {
        ...base.criterion,
        meta: { ...base.criterion.meta, heads: [[0, 1]], mode },
      });
      const out = await decoder.forward([ids], rm.patch(1));
      for (let i = 0; i < d; i++) {
        const want = mode === 'replace' ? mu[d + i]! : plain.heads[d + i]! + mu[d + i]!;
        expect(out.heads[d + i]).toBeCloseTo(want, 5);
      }
      // every other head of layer 0 untouched
      for (let h = 0; h < H; h++)
        if (h !== 1) expect(out.heads.subarray(h * d, (h + 1) * d)).toEqual(plain.heads.subarray(h * d, (h + 1) * d));
      // later layers see the edit (DESIGN step 3): some head of the last layer changes
      const last = (L - 1) * H * d;
      expect(relError(out.heads.subarray(last), plain.heads.subarray(last))).toBeGreaterThan(1e-4);
    }
  });
});

it('the shared-prefix REINFORCE step gives the same per-mask losses as full forwards', async () => {
  const { numLayers: L, numHeads: H } = decoder.spec;
  const template = makeTemplate('scalar', {}, decoder.tokenizer);
  const items = judgeItems(examples, 'scalar');
  const answers = resolveAnswerTokens(decoder.tokenizer, template, items[0]!).primary;
  const mu = Float32Array.from({ length: L * H * decoder.spec.headDim }, (_, i) => Math.sin(i));
  const loss = reinforceLoss(decoder, {
    items,
    template,
    answerIds: answers,
    mu,
    mode: 'replace',
    maxLength: 512,
    cacheBytes: 1 << 20,
  });
  const masks = Array.from({ length: 6 }, (_, s) =>
    Uint8Array.from({ length: L * H }, (_, i) => ((i + s) % 3 === 0 ? 1 : 0)),
  );
  for (const item of [0, 3, 0]) {
    // the second visit of item 0 comes from the prefix cache
    const shared = await loss(item, masks);
    const ids = render(decoder.tokenizer, template, [], items[item]!, 512).ids;
    for (const [s, m] of masks.entries()) {
      const { logits } = await decoder.forward([ids], { mask: Float32Array.from(m), values: mu });
      expect(shared[s]).toBeCloseTo(crossEntropy(logits, answers[items[item]!.answer]), 4);
    }
  }
});

describe('fit → file → load → score', () => {
  it('is deterministic for a seed, round-trips through the file, and batch size does not change scores', async () => {
    const a = await fitActivationRM(decoder, examples, quick);
    const b = await fitActivationRM(decoder, examples, quick);
    expect(b.criterion.meta.heads).toEqual(a.criterion.meta.heads);
    expect(Array.from(b.criterion.probs)).toEqual(Array.from(a.criterion.probs));
    const file = path.join(tempDir(), 'c.arm.safetensors');
    a.save(file);
    const loaded = ActivationRM.load(decoder, file);
    expect(loaded.criterion.meta.heads).toEqual(a.criterion.meta.heads);
    // only the selected heads' means are stored; they come back exactly
    const { numHeads: H, headDim: d } = decoder.spec;
    for (const [l, h] of a.criterion.meta.heads) {
      const at = (l * H + h) * d;
      expect(Array.from(loaded.criterion.mu.subarray(at, at + d))).toEqual(
        Array.from(a.criterion.mu.subarray(at, at + d)),
      );
    }
    const batched = await loaded.scoreExamples(examples, { batchSize: 8 });
    const single = await loaded.scoreExamples(examples, { batchSize: 1 });
    const fromFit = await a.scoreExamples(examples, { batchSize: 3 });
    const rewards = (xs: typeof batched) => xs.flatMap((x) => ('chosen' in x ? [x.chosen, x.rejected] : [x.reward]));
    expect(relError(rewards(batched), rewards(single))).toBeLessThan(1e-6);
    expect(relError(rewards(batched), rewards(fromFit))).toBeLessThan(1e-6);
    // the ranked template: both orders, averaged
    const ranked = await fitActivationRM(
      decoder,
      examples.filter((e) => e.kind === 'pair'),
      { ...quick, template: 'ranked' },
    );
    const r = await ranked.scoreExamples(examples.filter((e) => e.kind === 'pair'));
    for (const p of r) if ('swapConsistent' in p) expect(p.chosen + p.rejected).toBeCloseTo(1, 10);
  });

  it('--keep-all-means stores [L, H, d]', async () => {
    const a = await fitActivationRM(decoder, examples, { ...quick, heads: 'random:3' });
    const file = path.join(tempDir(), 'all.arm.safetensors');
    a.save(file, { keepAllMeans: true });
    const c = loadCriterion(file);
    expect(c.meta.muLayout).toBe('all');
    expect(Array.from(c.mu)).toEqual(Array.from(a.criterion.mu));
  });

  it('an interrupted fit resumes from its checkpoint to the same result', async () => {
    const checkpointFile = path.join(tempDir(), 'fit.ckpt.json');
    const opts = { ...quick, reinforce: { ...quick.reinforce, steps: 25 } };
    const whole = await fitActivationRM(decoder, examples, opts);
    let polls = 0,
      phase = '';
    const onProgress = (p: string) => {
      phase = p;
    };
    await expect(
      fitActivationRM(decoder, examples, {
        ...opts,
        checkpointFile,
        onProgress,
        shouldStop: () => phase === 'reinforce' && ++polls > 11,
      }),
    ).rejects.toBeInstanceOf(FitInterrupted);
    expect(JSON.parse(fs.readFileSync(checkpointFile, 'utf8')).state.step).toBe(12); // polled after each step
    const resumed = await fitActivationRM(decoder, examples, { ...opts, checkpointFile, resume: true });
    expect(resumed.criterion.meta.heads).toEqual(whole.criterion.meta.heads);
    expect(Array.from(resumed.criterion.probs)).toEqual(Array.from(whole.criterion.probs));
  });
});

describe('bad input', () => {
  it('empty file, malformed line, missing field, bad label', () => {
    expect(() => readExamples(writeJsonl([]))).toThrow(/few\.jsonl: no usable rows/);
    const f = path.join(tempDir(), 'bad.jsonl');
    fs.writeFileSync(f, '{"prompt":"p","chosen":"a","rejected":"b"}\n{"prompt": oops}\n');
    expect(() => readExamples(f)).toThrow(/bad\.jsonl:2: not valid JSON/);
    expect(() => readExamples(writeJsonl([{ prompt: 'p', chosen: 'a' }]))).toThrow(
      /few\.jsonl:1: field "rejected" is missing/,
    );
    expect(() => readExamples(writeJsonl([{ prompt: 'p', response: 'a', label: 'maybe' }]))).toThrow(
      /few\.jsonl:1: field "label": "maybe" is not a label/,
    );
    expect(readExamples(f, { skipInvalid: true }).skipped).toEqual([
      { line: 2, reason: expect.stringMatching(/not valid JSON/) },
    ]);
  });

  it('one label class is refused', async () => {
    const one = readExamples(
      writeJsonl([
        { prompt: 'p', response: 'a', label: 1 },
        { prompt: 'q', response: 'b', label: 'yes' },
      ]),
    ).examples;
    await expect(fitActivationRM(decoder, one, quick)).rejects.toThrow(/single label class/);
  });

  it('a criterion fitted on another model is refused on load', async () => {
    const a = await fitActivationRM(decoder, examples, { ...quick, heads: 'random:2' });
    const file = path.join(tempDir(), 'c.arm.safetensors');
    a.save(file);
    const { dir } = makeCheckpoint(
      { ...FAMILY_CONFIGS['qwen2 (qkv bias, tied, GQA 2)']!, max_position_embeddings: 512 },
      { seed: 22, chatTemplate: CHATML },
    );
    const other = await Decoder.load(dir, { cacheDir: tempDir('arm-cache-'), threads: 1 });
    try {
      expect(() => ActivationRM.load(other, file)).toThrow(
        /c\.arm\.safetensors: fitted on model .* differs in its weights\. Fit the criterion again/,
      );
    } finally {
      await other.dispose();
    }
  });
});

it('pairs run their shared prompt once and score as if run whole', async () => {
  const rm = await fitActivationRM(decoder, examples, { ...quick, heads: 'random:4' });
  const long = 'Once upon a time there was a little dog who liked to run in the park with his friends. '.repeat(3);
  const pairs = readExamples(
    writeJsonl(
      [1, 2, 3].map((i) => ({
        id: `l${i}`,
        prompt: `Question ${i}: ${long}`,
        chosen: `Answer ${i}.`,
        rejected: `No answer ${i * 7}.`,
      })),
    ),
  ).examples;
  const items = judgeItems(pairs, 'scalar');
  const tokens0 = decoder.stats.tokens;
  const grouped = await rm.scoreItems(items, {}, [
    [0, 1],
    [2, 3],
    [4, 5],
  ]);
  const groupedTokens = decoder.stats.tokens - tokens0;
  const tokens1 = decoder.stats.tokens;
  const plain = await rm.scoreItems(items, { batchSize: 1 });
  expect(groupedTokens).toBeLessThan(decoder.stats.tokens - tokens1); // the prompts were not fed twice
  expect(
    relError(
      grouped.map((s) => s.reward),
      plain.map((s) => s.reward),
    ),
  ).toBeLessThan(1e-6);
});

describe('stories260K end to end', () => {
  it('fit → file → load → score: deterministic for a seed, same scores in batch and one by one', async () => {
    const stories = await Decoder.load(STORIES, { cacheDir: tempDir('arm-cache-') });
    try {
      const few = readExamples(path.resolve(import.meta.dirname, '../../examples/concise/few.jsonl')).examples;
      const items = readExamples(path.resolve(import.meta.dirname, '../../examples/concise/items.jsonl'), {
        labelsOptional: true,
      }).examples;
      const opts = { passes: 10, shots: 2, seed: 5, reinforce: { steps: 20, readoutItems: 8 } };
      const [a, b] = [await fitActivationRM(stories, few, opts), await fitActivationRM(stories, few, opts)];
      expect(b.criterion.meta.heads).toEqual(a.criterion.meta.heads);
      expect(Array.from(b.criterion.mu)).toEqual(Array.from(a.criterion.mu));
      const file = path.join(tempDir(), 'stories.arm.safetensors');
      a.save(file);
      const loaded = ActivationRM.load(stories, file);
      const flat = (xs: Awaited<ReturnType<ActivationRM['scoreExamples']>>) =>
        xs.flatMap((x) => ('chosen' in x ? [x.chosen, x.rejected] : [x.reward]));
      const batched = flat(await loaded.scoreExamples(items, { batchSize: 8 }));
      const single = flat(await loaded.scoreExamples(items, { batchSize: 1 }));
      expect(batched.every(Number.isFinite)).toBe(true);
      expect(relError(batched, single)).toBeLessThan(1e-6);
      expect(relError(batched, flat(await a.scoreExamples(items)))).toBeLessThan(1e-6);
    } finally {
      await stories.dispose();
    }
  });
});
