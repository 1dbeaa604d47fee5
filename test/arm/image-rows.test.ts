/**
 * Image rows through fit / score / eval on tiny image-text checkpoints (the hf-parity fixtures with a word-level
 * tokenizer made here) and a synthetic preference set of coloured shapes with true and false captions.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import fs from 'node:fs';
import path from 'node:path';
import { Decoder } from '../../src/model/decoder.js';
import { commonPrefix, forEachLastLogits, type ImageSequence } from '../../src/model/batch.js';
import { DataError, readExamples, type Example, type PairExample } from '../../src/data/examples.js';
import { buildProbe } from '../../src/data/bias-probe.js';
import { fitActivationRM, FitInterrupted, judgeItems } from '../../src/arm/fit.js';
import { reinforceLoss } from '../../src/arm/reinforce-loss.js';
import { ActivationRM, type PairScore } from '../../src/arm/rm.js';
import {
  clearImageRowsCache,
  forEachRenderedLastLogits,
  JudgeImages,
  judgeImagesFor,
  releaseJudgeImages,
} from '../../src/arm/images.js';
import { makeTemplate, render } from '../../src/arm/template.js';
import { extractMeans } from '../../src/arm/means.js';
import { loadCriterion } from '../../src/arm/criterion.js';
import { ModelError } from '../../src/model/errors.js';
import { FAMILY_CONFIGS, makeCheckpoint, tempDir } from '../helpers/fixtures.js';
import { imageTextCheckpoint, writeShape, writeShapePairs, type ImageTextFamily } from '../helpers/image-text.js';
import { arm } from '../helpers/cli.js';

const IMAGE = 500,
  VISION_START = 502,
  VISION_END = 503;
const cacheDir = tempDir('arm-cache-');
const FIT = {
  passes: 8,
  shots: 2,
  batchSize: 4,
  reinforce: { steps: 6, samples: 8, readoutMasks: 3, readoutItems: 6 },
} as const;

let data: string;
let shapesFile: string;
let examples: Example[];

beforeAll(async () => {
  data = tempDir('arm-shapes-');
  shapesFile = (await writeShapePairs(data)).file;
  examples = readExamples(shapesFile).examples;
});

describe('image rows in JSONL', () => {
  it('reads images, the image alias and image content parts, relative to the file', async () => {
    const dir = tempDir();
    fs.mkdirSync(path.join(dir, 'img'));
    await writeShape(path.join(dir, 'img'), 'red', 'circle');
    await writeShape(path.join(dir, 'img'), 'blue', 'square');
    const rows = [
      { prompt: 'What shape ?', chosen: 'a red circle', rejected: 'a blue square', images: ['img/red-circle.png'] },
      { prompt: 'What shape ?', response: 'a blue square', label: 'yes', image: 'img/blue-square.png' },
      {
        prompt: [
          {
            role: 'user',
            content: [
              { type: 'image', path: 'img/red-circle.png' },
              { type: 'text', text: 'What shape ?' },
            ],
          },
        ],
        chosen: 'a red circle',
        rejected: 'a red square',
      },
      {
        chosen: [
          {
            role: 'user',
            content: [
              { type: 'image', path: 'img/blue-square.png' },
              { type: 'text', text: 'Describe' },
            ],
          },
          { role: 'assistant', content: 'a blue square' },
        ],
        rejected: [
          {
            role: 'user',
            content: [
              { type: 'image', path: 'img/blue-square.png' },
              { type: 'text', text: 'Describe' },
            ],
          },
          { role: 'assistant', content: 'a red circle' },
        ],
      },
      { prompt: 'No image here', chosen: 'x', rejected: 'y' },
      {
        prompt: [
          {
            role: 'user',
            content: [
              { type: 'text', text: 'What shape ?' },
              { type: 'image_url', image_url: { url: `file://${path.join(dir, 'img', 'red-circle.png')}` } },
            ],
          },
        ],
        chosen: 'a red circle',
        rejected: 'a red square',
      },
    ];
    const file = path.join(dir, 'rows.jsonl');
    fs.writeFileSync(file, rows.map((r) => JSON.stringify(r)).join('\n'));
    const ex = readExamples(file).examples;
    const abs = (n: string) => path.join(dir, 'img', n);
    expect(ex.map((e) => e.images)).toEqual([
      [abs('red-circle.png')],
      [abs('blue-square.png')],
      [abs('red-circle.png')],
      [abs('blue-square.png')],
      undefined,
      [abs('red-circle.png')],
    ]);
    expect(ex[2]!.prompt).toEqual([{ role: 'user', content: 'What shape ?' }]);
    expect(ex[3]!.kind === 'pair' && ex[3]!.chosen).toBe('a blue square');
    // Judge items carry their images; a pair's two items both.
    expect(judgeItems(ex.slice(0, 1), 'scalar').map((i) => i.images)).toEqual([
      [abs('red-circle.png')],
      [abs('red-circle.png')],
    ]);
  });

  it("bias probes keep the pair's images, readable from anywhere", () => {
    const { biased, flipped } = buildProbe(
      examples.filter((e): e is PairExample => e.kind === 'pair'),
      'length',
    );
    expect(biased[0]!.images).toEqual(examples[0]!.images);
    const file = path.join(tempDir(), 'probe.jsonl');
    fs.writeFileSync(file, flipped.map((r) => JSON.stringify(r)).join('\n'));
    expect(readExamples(file).examples.map((e) => e.images)).toEqual(examples.map((e) => e.images));
  });

  it('names the file, line, field and the missing image', () => {
    const dir = tempDir();
    const write = (row: unknown) => {
      const f = path.join(dir, 'r.jsonl');
      fs.writeFileSync(f, `{"prompt":"a","chosen":"b","rejected":"c"}\n${JSON.stringify(row)}\n`);
      return f;
    };
    const f1 = write({ prompt: 'a', chosen: 'b', rejected: 'c', images: ['nope.png'] });
    expect(() => readExamples(f1)).toThrow(DataError);
    expect(() => readExamples(f1)).toThrow(
      `${f1}:2: field "images[0]": image file ${path.join(dir, 'nope.png')} not found`,
    );
    const f2 = write({
      prompt: [{ role: 'user', content: [{ type: 'image', path: 'gone.png' }] }],
      chosen: 'b',
      rejected: 'c',
    });
    expect(() => readExamples(f2)).toThrow(
      `${f2}:2: field "prompt"[0].content[0].path: image file ${path.join(dir, 'gone.png')} not found`,
    );
    expect(() => readExamples(write({ prompt: 'a', chosen: 'b', rejected: 'c', image: 'x.png', images: [] }))).toThrow(
      'give "images" or "image", not both',
    );
    expect(() =>
      readExamples(write({ prompt: 'a', chosen: 'b', rejected: 'c', image: 'https://example.com/x.png' })),
    ).toThrow('not a local file');
    expect(() => readExamples(write({ prompt: 'a', chosen: 'b', rejected: 'c', images: 'x.png' }))).toThrow(
      'field "images": must be a list',
    );
    expect(() =>
      readExamples(
        write({
          prompt: 'a',
          chosen: [{ role: 'assistant', content: [{ type: 'image', path: 'x.png' }] }],
          rejected: 'c',
        }),
      ),
    ).toThrow('images are read from the prompt only');
  });
});

describe('judge prompts and the batch runner with images (Qwen2.5-VL tiny)', () => {
  let decoder: Decoder;
  beforeAll(async () => {
    decoder = await Decoder.load(imageTextCheckpoint('qwen2_5_vl'), { cacheDir, quiet: true });
  });
  afterAll(async () => {
    await releaseJudgeImages(decoder);
    await decoder.dispose();
  });

  it("renders the chat template's image markup into the user turn, one placeholder per image", async () => {
    const images = JudgeImages.of(decoder)!;
    const items = judgeItems(examples.slice(0, 3), 'scalar');
    await images.load(items.flatMap((i) => i.images ?? []));
    const template = makeTemplate('scalar', {}, decoder.tokenizer);
    expect(template.chat).toBe(true);
    const r = render(decoder.tokenizer, template, items.slice(2, 4), items[0]!, 256, images);
    expect(r.images).toEqual([items[2]!.images![0], items[3]!.images![0], items[0]!.images![0]]);
    expect(r.ids.filter((t) => t === IMAGE)).toHaveLength(3);
    // <|im_start|> user \n <|vision_start|><|image_pad|><|vision_end|> Prompt : …
    const at = r.ids.indexOf(IMAGE);
    expect(r.ids.slice(at - 1, at + 2)).toEqual([VISION_START, IMAGE, VISION_END]);
    expect(decoder.tokenizer.decode(r.ids.slice(at - 3, at + 4), { skipSpecialTokens: false })).toMatch(
      /^<\|im_start\|> user <\|vision_start\|>/,
    );
    // A chat template that only takes strings gets the same markup as text; no chat template: markup before the text.
    const plainChat = await Decoder.load(imageTextCheckpoint('qwen2_5_vl', { chat: 'text' }), {
      cacheDir,
      quiet: true,
    });
    try {
      const images2 = JudgeImages.of(plainChat)!;
      await images2.load(items[0]!.images!);
      const r2 = render(
        plainChat.tokenizer,
        makeTemplate('scalar', {}, plainChat.tokenizer),
        [],
        items[0]!,
        256,
        images2,
      );
      expect(r2.ids).toEqual(render(decoder.tokenizer, template, [], items[0]!, 256, images).ids);
      const r3 = render(
        plainChat.tokenizer,
        makeTemplate('scalar', { chat: false }, plainChat.tokenizer),
        [],
        items[0]!,
        256,
        images2,
      );
      expect(r3.ids.slice(0, 3)).toEqual([VISION_START, IMAGE, VISION_END]);
    } finally {
      await plainChat.dispose();
    }
    // The length budget counts the expanded image: 56×56 is 4 tokens here.
    expect(images.tokens(items[0]!.images![0]!)).toBe(4);
    const len = r.ids.length + 3 * 3;
    expect(render(decoder.tokenizer, template, items.slice(2, 4), items[0]!, len, images).truncatedTokens).toBe(0);
    expect(
      render(decoder.tokenizer, template, items.slice(2, 4), items[0]!, len - 1, images).truncatedTokens,
    ).toBeGreaterThan(0);
  });

  it('shares a prefix only where the images are the same too', async () => {
    const images = JudgeImages.of(decoder)!;
    const [a, b] = [examples[0]!.images![0]!, examples[4]!.images![0]!];
    const ids = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, VISION_START, IMAGE, VISION_END, 11, 12, 13];
    const withA = await images.place(ids, [a]);
    const withB = await images.place(ids, [b]);
    const withA2: ImageSequence = { ids: [...withA.ids.slice(0, -1), 14], images: withA.images };
    expect(withA.ids).toEqual(withB.ids); // same size, same ids: only the images differ
    const D = decoder.spec.hiddenSize;
    expect(commonPrefix([withA, withB], D)).toBe(11); // stops before the image
    expect(commonPrefix([withA, withA2], D)).toBe(withA.ids.length - 1);
    // A prefix never ends inside an image: cut to before it.
    expect(commonPrefix([withA, { ids: withA.ids.slice(0, 13), images: withA.images }], D)).toBe(11);
    const seqs = [withA, withB, withA2];
    const alone = await Promise.all(seqs.map((s) => decoder.forward([s.ids], undefined, { images: [s.images] })));
    const batched: Float32Array[] = [];
    await forEachLastLogits(
      decoder,
      seqs,
      {
        batchSize: 4,
        groups: [
          [0, 1],
          [0, 2],
        ],
      },
      (i, row) => {
        batched[i] = row.logits.slice();
      },
    );
    const close = (x: Float32Array, y: Float32Array) => Math.max(...x.map((v, i) => Math.abs(v - y[i]!)));
    seqs.forEach((_, i) => expect(close(batched[i]!, alone[i]!.logits)).toBeLessThan(1e-4));
    // The two images really give different logits (the test would pass vacuously otherwise).
    expect(close(alone[0]!.logits, alone[1]!.logits)).toBeGreaterThan(1e-3);
    // Shared prefix over the whole batch (no groups): the image rows in the suffix.
    const shared: Float32Array[] = [];
    await forEachLastLogits(decoder, seqs, { batchSize: 4 }, (i, row) => {
      shared[i] = row.logits.slice();
    });
    seqs.forEach((_, i) => expect(close(shared[i]!, alone[i]!.logits)).toBeLessThan(1e-4));
  });

  it('scores image prompts chunk by chunk (a group kept whole) with the results of one run', async () => {
    const images = JudgeImages.of(decoder)!;
    const items = judgeItems(examples, 'scalar');
    await images.load(items.flatMap((i) => i.images ?? []));
    const template = makeTemplate('scalar', {}, decoder.tokenizer);
    const rendered = items.map((it) => render(decoder.tokenizer, template, [], it, 256, images));
    const groups = examples.map((_, p) => [2 * p, 2 * p + 1]);
    const run = async (chunk: number) => {
      const rows: Float32Array[] = [];
      const progress: number[] = [];
      await forEachRenderedLastLogits(
        decoder,
        images,
        rendered,
        { batchSize: 4, groups, onProgress: (done) => progress.push(done) },
        (i, r) => {
          rows[i] = r.logits.slice();
        },
        chunk,
      );
      return { rows, progress };
    };
    const one = await run(1000),
      chunked = await run(5);
    expect(chunked.rows).toHaveLength(items.length);
    chunked.rows.forEach((r, i) => expect(Array.from(r)).toEqual(Array.from(one.rows[i]!)));
    expect(chunked.progress.at(-1)).toBe(items.length);
  });

  it('resumes an interrupted image fit to the same criterion, and refuses to when an image changed', async () => {
    const dir = tempDir('arm-resume-');
    const { file } = await writeShapePairs(dir, { colours: ['red', 'blue'], shapes: ['circle', 'square'] });
    const rows = readExamples(file).examples;
    const checkpointFile = path.join(dir, 'fit.ckpt.json');
    let phase = '';
    await expect(
      fitActivationRM(decoder, rows, {
        ...FIT,
        shots: 1,
        checkpointFile,
        onProgress: (p) => {
          phase = p;
        },
        shouldStop: () => phase === 'reinforce',
        warn: () => undefined,
      }),
    ).rejects.toBeInstanceOf(FitInterrupted);
    const whole = await fitActivationRM(decoder, rows, { ...FIT, shots: 1, warn: () => undefined });
    const resumed = await fitActivationRM(decoder, rows, {
      ...FIT,
      shots: 1,
      checkpointFile,
      resume: true,
      warn: () => undefined,
    });
    expect(Array.from(resumed.criterion.mu)).toEqual(Array.from(whole.criterion.mu));
    expect(resumed.criterion.meta.heads).toEqual(whole.criterion.meta.heads);
    // Interrupt again, then redraw one picture under the same name: the checkpoint no longer matches.
    phase = '';
    await expect(
      fitActivationRM(decoder, rows, {
        ...FIT,
        shots: 1,
        checkpointFile,
        onProgress: (p) => {
          phase = p;
        },
        shouldStop: () => phase === 'reinforce',
        warn: () => undefined,
      }),
    ).rejects.toBeInstanceOf(FitInterrupted);
    await writeShape(path.join(dir, 'images'), 'red', 'circle', 56, '#ff00ff');
    await expect(
      fitActivationRM(decoder, rows, { ...FIT, shots: 1, checkpointFile, resume: true, warn: () => undefined }),
    ).rejects.toThrow(/made with other examples/);
  });

  it('means place image rows per batch: a resumed run places none for done passes, with the same means', async () => {
    const items = judgeItems(examples, 'scalar');
    const template = makeTemplate('scalar', {}, decoder.tokenizer);
    const opts = { passes: 6, shots: 2, seed: 3, batchSize: 4, maxLength: 256, keepPasses: true };
    clearImageRowsCache();
    const images = JudgeImages.of(decoder)!;
    await images.load(items.flatMap((i) => i.images ?? []));
    const whole = await extractMeans(decoder, template, items, { ...opts, images });
    const used = images.stats.towerRuns + images.stats.cacheHits;
    expect(used).toBeGreaterThan(0);
    // Every pass done: nothing to run, so no image is placed (no tower run, no cache lookup)
    const all = new Map(whole.passes!.map((p, i) => [i, p] as const));
    const resumedAll = await extractMeans(decoder, template, items, { ...opts, images, donePasses: all });
    expect(images.stats.towerRuns + images.stats.cacheHits).toBe(used);
    expect(Array.from(resumedAll.mu)).toEqual(Array.from(whole.mu));
    // Half done: only the rest is placed and run, and the means are the same bits
    const half = new Map([...all].filter(([i]) => i % 2 === 0));
    const resumedHalf = await extractMeans(decoder, template, items, { ...opts, images, donePasses: half });
    expect(images.stats.towerRuns + images.stats.cacheHits).toBeGreaterThan(used);
    expect(Array.from(resumedHalf.mu)).toEqual(Array.from(whole.mu));
  });

  it('a row with two images shows both, in order, and scores as the full forward', async () => {
    const rm = await fitActivationRM(decoder, examples.slice(0, 6), { ...FIT, warn: () => undefined });
    const two = { ...examples[0]!, id: 'two', images: [examples[0]!.images![0]!, examples[5]!.images![0]!] } as Example;
    const swapped = { ...two, id: 'swapped', images: [...two.images!].reverse() } as Example;
    const [a, b] = (await rm.scoreExamples([two, swapped])) as PairScore[];
    expect(a!.chosen).not.toBe(b!.chosen); // order matters: the images are placed, not pooled
    const images = JudgeImages.of(decoder)!;
    const r = render(decoder.tokenizer, rm.criterion.meta.template, [], judgeItems([two], 'scalar')[0]!, 256, images);
    expect(r.images).toEqual(two.images);
    const seq = await images.place(r.ids, r.images);
    expect(seq.images.map((i) => i.start)).toEqual([seq.ids.indexOf(IMAGE), seq.ids.lastIndexOf(IMAGE) - 3]);
    const full = await decoder.forward([seq.ids], rm.patch(1), { images: [seq.images] });
    expect(a!.chosen).toBeCloseTo(
      Math.exp(full.logits[rm.criterion.meta.answerTokens.primary[0]]! - full.logSumExp[0]!),
      6,
    );
  });

  it('the ranked template fits and scores image pairs in both orders', async () => {
    const rm = await fitActivationRM(decoder, examples.slice(0, 6), {
      ...FIT,
      template: 'ranked',
      warn: () => undefined,
    });
    const scores = (await rm.scoreExamples(examples.slice(6))) as PairScore[];
    expect(scores.every((s) => Number.isFinite(s.margin) && typeof s.swapConsistent === 'boolean')).toBe(true);
  });

  it("REINFORCE steps over an image prefix give the full forward's loss", async () => {
    const items = judgeItems(examples.slice(0, 2), 'scalar');
    const images = JudgeImages.of(decoder)!;
    await images.load(items.flatMap((i) => i.images ?? []));
    const template = makeTemplate('scalar', {}, decoder.tokenizer);
    const { numLayers: L, numHeads: H, headDim: d, vocabSize: V } = decoder.spec;
    const mu = Float32Array.from({ length: L * H * d }, (_, i) => Math.sin(i) * 0.5);
    const answer: [number, number] = [decoder.tokenizer.tokenId('Yes')!, decoder.tokenizer.tokenId('No')!];
    const loss = reinforceLoss(decoder, {
      items,
      template,
      answerIds: answer,
      mu,
      mode: 'replace',
      maxLength: 256,
      cacheBytes: 2 ** 26,
      images,
    });
    const masks = [new Uint8Array(L * H), Uint8Array.from({ length: L * H }, (_, i) => (i % 3 === 0 ? 1 : 0))];
    const got = await loss(1, masks);
    const seq = await images.place(
      ...((r) => [r.ids, r.images] as const)(render(decoder.tokenizer, template, [], items[1]!, 256, images)),
    );
    for (const [s, m] of masks.entries()) {
      const full = await decoder.forward(
        [seq.ids],
        { mask: Float32Array.from(m), values: mu },
        { images: [seq.images] },
      );
      expect(got[s]).toBeCloseTo(full.logSumExp[0]! - full.logits[answer[1]]!, 4);
      expect(full.logits.length).toBe(V);
    }
  });
});

describe('fit and score on image rows', () => {
  it.each<[ImageTextFamily]>([['qwen2_5_vl'], ['llava_onevision'], ['qwen3_vl']])(
    '%s: fit, save, load, score; the tower runs once per distinct image',
    async (family) => {
      const decoder = await Decoder.load(imageTextCheckpoint(family), { cacheDir, quiet: true });
      clearImageRowsCache(); // rows are cached across decoders of the same weights: count from empty
      try {
        const rm = await fitActivationRM(decoder, examples, { ...FIT, seed: 1, warn: () => undefined });
        const images = JudgeImages.of(decoder)!;
        // 12 pictures, hundreds of uses; the fit's 20 demo draws need not show every picture
        const afterFit = images.stats.towerRuns;
        expect(afterFit).toBeLessThanOrEqual(12);
        expect(afterFit).toBeGreaterThanOrEqual(10);
        expect(rm.criterion.meta.model.visionConfigHash).toMatch(/^[0-9a-f]{64}$/);
        const file = path.join(tempDir(), 'shapes.arm.safetensors');
        rm.save(file);
        expect(loadCriterion(file).meta.model.visionConfigHash).toBe(rm.criterion.meta.model.visionConfigHash);
        const again = ActivationRM.load(decoder, file);
        const scores = (await again.scoreExamples(examples)) as PairScore[];
        expect(images.stats.towerRuns).toBe(12); // scoring every row ran only the pictures the fit had not
        expect(scores).toHaveLength(12);
        for (const s of scores) {
          expect(Number.isFinite(s.chosen) && Number.isFinite(s.rejected)).toBe(true);
          expect(s.tooLong).toBe(false);
        }
        // Scores follow the image: the same caption under another picture scores differently.
        const swapped = examples.map((e) => ({
          ...e,
          images: examples[(examples.indexOf(e) + 1) % examples.length]!.images,
        }));
        const other = (await again.scoreExamples(swapped)) as PairScore[];
        expect(other.some((s, i) => Math.abs(s.chosen - scores[i]!.chosen) > 1e-7)).toBe(true);
      } finally {
        await releaseJudgeImages(decoder);
        await decoder.dispose();
      }
    },
  );

  it('refuses a criterion whose vision configuration changed, and image rows on a text-only model', async () => {
    const dir = imageTextCheckpoint('qwen2_5_vl');
    const decoder = await Decoder.load(dir, { cacheDir, quiet: true });
    const file = path.join(tempDir(), 'c.arm.safetensors');
    try {
      (await fitActivationRM(decoder, examples.slice(0, 4), { ...FIT, shots: 1, warn: () => undefined })).save(file);
    } finally {
      await releaseJudgeImages(decoder);
      await decoder.dispose();
    }
    const pre = JSON.parse(fs.readFileSync(path.join(dir, 'preprocessor_config.json'), 'utf8'));
    fs.writeFileSync(
      path.join(dir, 'preprocessor_config.json'),
      JSON.stringify({ ...pre, size: { ...pre.size, longest_edge: 100352 } }),
    );
    const changed = await Decoder.load(dir, { cacheDir, quiet: true });
    try {
      expect(() => ActivationRM.load(changed, file)).toThrow(/another vision configuration/);
    } finally {
      await changed.dispose();
    }
    const text = await Decoder.load(makeCheckpoint(FAMILY_CONFIGS['qwen2 (qkv bias, tied, GQA 2)']!).dir, {
      cacheDir,
      quiet: true,
    });
    try {
      await expect(judgeImagesFor(text, judgeItems(examples, 'scalar'))).rejects.toThrow(ModelError);
      await expect(judgeImagesFor(text, judgeItems(examples, 'scalar'))).rejects.toThrow(
        /item red-circle:chosen has an image, but .* is a text-only checkpoint/,
      );
    } finally {
      await text.dispose();
    }
  });
});

describe('arm fit / score / eval on image rows (CLI)', () => {
  it('fits, scores and evaluates the shapes set end to end', () => {
    const model = imageTextCheckpoint('qwen2_5_vl');
    const out = tempDir();
    const rmFile = path.join(out, 'shapes.arm.safetensors');
    const fitFlags = ['--passes', '8', '--shots', '2', '--steps', '6', '--samples', '8'];
    arm(['fit', '--model', model, '--examples', shapesFile, '--out', rmFile, ...fitFlags]);
    expect(arm(['inspect', rmFile]).stdout).toMatch(/vision config sha256 [0-9a-f]{12}…/);
    const scored = path.join(out, 'scored.jsonl');
    arm(['score', '--model', model, '--rm', rmFile, '--input', shapesFile, '--output', scored]);
    const rows = fs
      .readFileSync(scored, 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l));
    expect(rows).toHaveLength(12);
    expect(rows[0].images).toEqual(['images/red-circle.png']);
    expect(typeof rows[0].arm.margin).toBe('number');
    // The same rows from another folder, their images found through --image-root: the same scores.
    const elsewhere = path.join(tempDir(), 'moved.jsonl');
    fs.copyFileSync(shapesFile, elsewhere);
    arm(['score', '--model', model, '--rm', rmFile, '--input', elsewhere, '--output', path.join(out, 'moved.jsonl')], {
      expectFail: true,
    });
    arm([
      'score',
      '--model',
      model,
      '--rm',
      rmFile,
      '--input',
      elsewhere,
      '--output',
      path.join(out, 'moved.jsonl'),
      '--image-root',
      data,
    ]);
    const moved = fs
      .readFileSync(path.join(out, 'moved.jsonl'), 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l));
    expect(moved.map((r) => r.arm.margin)).toEqual(rows.map((r) => r.arm.margin));
    const evalDir = path.join(out, 'eval');
    arm([
      'eval',
      '--model',
      model,
      '--dataset',
      shapesFile,
      '--methods',
      'arm,zero-shot,token-prob,sav-vote,icl-judge,sample-vote,mean-add,random-heads',
      '--few-shot',
      '6',
      '--seeds',
      '1',
      '--pool',
      'global',
      '--output-dir',
      evalDir,
      ...fitFlags,
    ]);
    const results = JSON.parse(fs.readFileSync(path.join(evalDir, 'results.json'), 'utf8'));
    for (const m of [
      'arm',
      'zero-shot',
      'token-prob',
      'sav-vote',
      'icl-judge',
      'sample-vote',
      'mean-add',
      'random-heads',
    ]) {
      expect(results.methods[m].accuracy.n).toBe(6); // every test pair scored by every method
    }
  }, 180_000);

  it('a resumed eval refuses a folder whose run saw other pixels under the same image names', async () => {
    const model = imageTextCheckpoint('qwen2_5_vl');
    const dir = tempDir('arm-eval-pixels-');
    const { file } = await writeShapePairs(dir, { colours: ['red', 'blue'], shapes: ['circle', 'square'] });
    const evalDir = path.join(dir, 'eval');
    const run = (expectFail = false) =>
      arm(
        [
          'eval',
          '--model',
          model,
          '--dataset',
          file,
          '--methods',
          'zero-shot',
          '--few-shot',
          '0',
          '--seeds',
          '1',
          '--save-all',
          '--output-dir',
          evalDir,
        ],
        { expectFail },
      );
    run();
    run(); // unchanged: resumes from the kept log (nothing left to do)
    await writeShape(path.join(dir, 'images'), 'red', 'circle', 56, '#ff00ff'); // same name, other pixels
    expect(run(true).stderr).toMatch(
      /holds a run with another model \(weights, tokenizer or processor files\), dataset or options/,
    );
  }, 120_000);
});
