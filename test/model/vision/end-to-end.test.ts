/**
 * Image+text prompts end to end against transformers 5.17 (../shared/fixtures/hf-parity, README there): the PNG
 * through our preprocessing and vision tower, the placeholder expanded, the features in inputs_embeds, M-RoPE
 * positions (Qwen), DeepStack (Qwen3-VL), LLaVA-OneVision's feature layout with image_newline; then the language
 * model's last logits and per-head o_proj inputs, a patched run and 8 greedy tokens within 1e-4 of HF's float64.
 * Also: the image in a prefilled prefix with shared-prefix steps after it, padded batches mixing image and text
 * rows, both weight spellings of the language model, and `arm forward --image`.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { renamedCheckpoint } from '../../helpers/image-text.js';
import { argmax, Decoder, emptyKv } from '../../../src/model/decoder.js';
import { ImageInputs, type ImagePrompt } from '../../../src/model/vision/image-inputs.js';
import { decodeImage, type RgbImage } from '../../../src/model/vision/image.js';
import { fixturePatch, relError } from '../../helpers/fixtures.js';
import { arm } from '../../helpers/cli.js';
import { IMAGE_TEXT_FAMILIES as FAMILIES } from '../../helpers/hf-parity.js';

const FIXTURES = path.resolve(import.meta.dirname, '../../../../shared/fixtures/hf-parity');
const present = fs.existsSync(path.join(FIXTURES, 'qwen2_5_vl-tiny'));
const TOLERANCE = 1e-4;
/** The fixtures' greedy tokens skip the image/video placeholders and vision start/end (ids 500–503). */
const GREEDY_BELOW = 500;

interface Result {
  input_ids: number[];
  input_ids_one_placeholder: number[];
  image_token_count: number;
  last_logits: number[];
  o_proj_input_last: number[][];
  patched_last_logits: number[];
  patched_o_proj_input_last: number[][];
  greedy8: number[];
}

let cacheDir: string;
beforeAll(() => {
  cacheDir = fs.mkdtempSync(path.join(os.tmpdir(), 'arm-e2e-'));
});
afterAll(() => {
  fs.rmSync(cacheDir, { recursive: true, force: true });
});

describe.runIf(present).each(FAMILIES)('image+text parity with transformers: %s', (name) => {
  const dir = path.join(FIXTURES, name);
  let decoder: Decoder;
  let inputs: ImageInputs;
  let results: Result[];
  let image: RgbImage;
  let prompts: ImagePrompt[];
  beforeAll(async () => {
    results = (JSON.parse(fs.readFileSync(path.join(dir, 'parity.json'), 'utf8')) as { results: Result[] }).results;
    decoder = await Decoder.load(dir, { cacheDir, threads: 1 });
    inputs = await ImageInputs.load(dir, { cacheDir, threads: 1 });
    image = await decodeImage(path.join(dir, 'image0.png'));
    prompts = [];
    for (const r of results) prompts.push(await inputs.prepare(r.input_ids_one_placeholder, [image]));
  });
  afterAll(async () => {
    await decoder?.dispose();
    await inputs?.release();
  });

  it("expands one placeholder per image to the ids HF's processor made", () => {
    results.forEach((r, i) => {
      expect(prompts[i]!.inputIds).toEqual(r.input_ids);
      const placeholders = r.input_ids.filter((t) => t === inputs.placeholderId).length;
      expect(prompts[i]!.images[0]!.start).toBe(r.input_ids.indexOf(inputs.placeholderId));
      expect(prompts[i]!.images[0]!.embeds.length).toBe(placeholders * decoder.spec.hiddenSize);
    });
  });

  it(`last logits and o_proj inputs match (≤ ${TOLERANCE} relative), both prompts in one padded batch`, async () => {
    const out = await decoder.forward(
      prompts.map((p) => p.inputIds),
      undefined,
      { images: prompts.map((p) => p.images) },
    );
    const { vocabSize: V, numLayers: L, numHeads: H, headDim: d } = decoder.spec;
    results.forEach((r, b) => {
      expect(relError(out.logits.subarray(b * V, (b + 1) * V), r.last_logits)).toBeLessThan(TOLERANCE);
      expect(relError(out.heads.subarray(b * L * H * d, (b + 1) * L * H * d), r.o_proj_input_last.flat())).toBeLessThan(
        TOLERANCE,
      );
    });
  });

  it("a replace patch matches HF's o_proj pre-hook", async () => {
    const { numLayers: L, numHeads: H, headDim: d } = decoder.spec;
    const patch = fixturePatch(L, H, d);
    for (const [i, r] of results.entries()) {
      const out = await decoder.forward([prompts[i]!.inputIds], patch, { images: [prompts[i]!.images] });
      expect(relError(out.logits, r.patched_last_logits)).toBeLessThan(TOLERANCE);
      expect(relError(out.heads, r.patched_o_proj_input_last.flat())).toBeLessThan(TOLERANCE);
    }
  });

  it('the image in a prefilled prefix, then the last token as shared-prefix patch rows = full forward', async () => {
    const { numLayers: L, numHeads: H, headDim: d, vocabSize: V } = decoder.spec;
    const { mask, values } = fixturePatch(L, H, d);
    for (const [i, r] of results.entries()) {
      const p = prompts[i]!;
      const kv = await decoder.prefill(p.inputIds.slice(0, -1), { images: p.images });
      const rows = new Float32Array(2 * L * H);
      rows.set(mask, L * H); // row 0 unpatched, row 1 patched
      const out = await decoder.stepShared(kv, p.inputIds.at(-1)!, { mask: rows, values });
      expect(relError(out.logits.subarray(0, V), r.last_logits)).toBeLessThan(TOLERANCE);
      expect(relError(out.logits.subarray(V, 2 * V), r.patched_last_logits)).toBeLessThan(TOLERANCE);
    }
  });

  it("greedy decoding with the KV cache after an image gives HF's 8 tokens", async () => {
    for (const [i, r] of results.entries()) {
      const p = prompts[i]!;
      let { kv, logits } = await decoder.extend(emptyKv(decoder.spec), p.inputIds, { images: p.images });
      const out: number[] = [];
      for (let t = 0; t < 8; t++) {
        const next = argmax(logits, 0, GREEDY_BELOW);
        out.push(next);
        ({ kv, logits } = await decoder.extend(kv, [next]));
      }
      expect(out).toEqual(r.greedy8);
    }
  });

  it('a padded batch mixing image rows and a text row gives each row its own result', async () => {
    const text = results[1]!.input_ids_one_placeholder.filter((t) => t !== inputs.placeholderId);
    const together = await decoder.forward([text, prompts[0]!.inputIds, prompts[1]!.inputIds], undefined, {
      images: [undefined, prompts[0]!.images, prompts[1]!.images],
    });
    const { vocabSize: V } = decoder.spec;
    const alone = await decoder.forward([text]);
    expect(relError(together.logits.subarray(0, V), alone.logits)).toBeLessThan(1e-5);
    const first = await decoder.forward([prompts[0]!.inputIds], undefined, { images: [prompts[0]!.images] });
    expect(relError(together.logits.subarray(V, 2 * V), first.logits)).toBeLessThan(1e-5);
  });
});

describe.runIf(present)('what the image wiring does is needed (controls)', () => {
  it('Qwen2.5-VL: text positions instead of M-RoPE over the image grid miss HF', async () => {
    const dir = path.join(FIXTURES, 'qwen2_5_vl-tiny');
    const r = (JSON.parse(fs.readFileSync(path.join(dir, 'parity.json'), 'utf8')) as { results: Result[] }).results[0]!;
    const decoder = await Decoder.load(dir, { cacheDir, threads: 1 });
    const inputs = await ImageInputs.load(dir, { cacheDir, threads: 1 });
    try {
      const p = await inputs.prepare(r.input_ids_one_placeholder, [await decodeImage(path.join(dir, 'image0.png'))]);
      const img = p.images[0]!;
      const n = img.embeds.length / decoder.spec.hiddenSize;
      // positions as a 1×n strip
      const strip = await decoder.forward([p.inputIds], undefined, { images: [[{ ...img, grid: [1, 1, n] }]] });
      expect(relError(strip.logits, r.last_logits)).toBeGreaterThan(100 * TOLERANCE);
      const none = await decoder.forward([p.inputIds]); // placeholder embeddings, text positions
      expect(relError(none.logits, r.last_logits)).toBeGreaterThan(100 * TOLERANCE);
    } finally {
      await decoder.dispose();
      await inputs.release();
    }
  });

  it('Qwen3-VL: leaving out the DeepStack features misses HF; a text-only row needs none', async () => {
    const dir = path.join(FIXTURES, 'qwen3_vl-tiny');
    const r = (JSON.parse(fs.readFileSync(path.join(dir, 'parity.json'), 'utf8')) as { results: Result[] }).results[0]!;
    const decoder = await Decoder.load(dir, { cacheDir, threads: 1 });
    const inputs = await ImageInputs.load(dir, { cacheDir, threads: 1 });
    try {
      const p = await inputs.prepare(r.input_ids_one_placeholder, [await decodeImage(path.join(dir, 'image0.png'))]);
      const img = p.images[0]!;
      expect(img.deepstack).toHaveLength(decoder.spec.imageText!.deepstackLayers);
      const zeros = img.deepstack!.map((f) => new Float32Array(f.length));
      const out = await decoder.forward([p.inputIds], undefined, { images: [[{ ...img, deepstack: zeros }]] });
      expect(relError(out.logits, r.last_logits)).toBeGreaterThan(100 * TOLERANCE);
      await expect(
        decoder.forward([p.inputIds], undefined, { images: [[{ ...img, deepstack: undefined }]] }),
      ).rejects.toThrow(/DeepStack/);
      const text = await decoder.forward([[1, 403, 407, 261, 378]]);
      expect(Number.isFinite(text.logits[0]!)).toBe(true);
    } finally {
      await decoder.dispose();
      await inputs.release();
    }
  });

  it('a text-only checkpoint refuses images', async () => {
    const dir = path.join(FIXTURES, 'phi3-fused');
    const decoder = await Decoder.load(dir, { cacheDir, threads: 1 });
    try {
      await expect(
        decoder.forward([[1, 2, 3]], undefined, {
          images: [[{ start: 1, embeds: new Float32Array(decoder.spec.hiddenSize) }]],
        }),
      ).rejects.toThrow(/text-only checkpoint/);
    } finally {
      await decoder.dispose();
    }
  });
});

describe.runIf(present)('language-model weight spellings', () => {
  // The fixtures hold the older hub spellings (transformers 5.17 saves them so): Qwen `model.layers.*`,
  // llava-hf `language_model.model.*` + `language_model.lm_head.weight`; transformers 5 in memory names both
  // `model.language_model.*` + `lm_head.weight`, and Qwen3-VL is saved that way.
  const cases: [string, (n: string) => string][] = [
    [
      'qwen2_5_vl-tiny',
      (n) => n.replace(/^model\.(?!language_model\.)/, 'model.language_model.').replace(/^visual\./, 'model.visual.'),
    ],
    [
      'llava_onevision-tiny',
      (n) =>
        n
          .replace(/^language_model\.model\./, 'model.language_model.')
          .replace(/^language_model\.lm_head\./, 'lm_head.'),
    ],
    ['qwen3_vl-tiny', (n) => n.replace(/^model\.language_model\./, 'model.')],
  ];
  it.each(cases)('%s renamed loads and gives the same logits', async (name, rename) => {
    const src = path.join(FIXTURES, name);
    const dir = renamedCheckpoint(src, rename);
    const r = (JSON.parse(fs.readFileSync(path.join(src, 'parity.json'), 'utf8')) as { results: Result[] }).results[0]!;
    const decoder = await Decoder.load(dir, { cacheDir, threads: 1 });
    const inputs = await ImageInputs.load(dir, { cacheDir, threads: 1 });
    try {
      const p = await inputs.prepare(r.input_ids_one_placeholder, [await decodeImage(path.join(dir, 'image0.png'))]);
      const out = await decoder.forward([p.inputIds], undefined, { images: [p.images] });
      expect(relError(out.logits, r.last_logits)).toBeLessThan(TOLERANCE);
    } finally {
      await decoder.dispose();
      await inputs.release();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('a checkpoint with no language-model weights under any spelling is refused by name', async () => {
    const dir = renamedCheckpoint(path.join(FIXTURES, 'qwen2_vl-tiny'), (n) => n.replace(/^model\./, 'llm.'));
    try {
      await expect(Decoder.load(dir, { cacheDir, threads: 1 })).rejects.toThrow(
        new RegExp(
          'no language-model weights \\(looked for "model\\.language_model\\.embed_tokens\\.weight", ' +
            '"model\\.embed_tokens\\.weight"\\)',
        ),
      );
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe.runIf(present).each(FAMILIES)('arm forward --image: %s', (name) => {
  it('prints the expanded ids, the top logits and head taps HF computes', () => {
    const dir = path.join(FIXTURES, name);
    const r = (JSON.parse(fs.readFileSync(path.join(dir, 'parity.json'), 'utf8')) as { results: Result[] }).results[1]!;
    const out = JSON.parse(
      arm([
        'forward',
        '--model',
        dir,
        '--input-ids',
        r.input_ids_one_placeholder.join(','),
        '--image',
        path.join(dir, 'image0.png'),
        '--top',
        '5',
        '--json',
        '--heads',
        '--threads',
        '1',
        '--quiet',
      ]).stdout,
    ) as { inputIds: number[]; top: { id: number; logit: number }[]; heads: number[][][] };
    expect(out.inputIds).toEqual(r.input_ids);
    const order = r.last_logits
      .map((v, i) => [v, i] as const)
      .sort((a, b) => b[0] - a[0])
      .slice(0, 5);
    expect(out.top.map((t) => t.id)).toEqual(order.map(([, i]) => i));
    expect(
      relError(
        out.top.map((t) => t.logit),
        order.map(([v]) => v),
      ),
    ).toBeLessThan(TOLERANCE);
    expect(relError(out.heads.flat(2), r.o_proj_input_last.flat())).toBeLessThan(TOLERANCE);
  });
});

describe.runIf(present)('arm forward --image refusals', () => {
  it('a prompt without the placeholder, and a text-only checkpoint, fail with the reason', () => {
    const dir = path.join(FIXTURES, 'qwen2_vl-tiny');
    const noPlaceholder = arm(
      ['forward', '--model', dir, '--input-ids', '1,403,261', '--image', path.join(dir, 'image0.png'), '--quiet'],
      { expectFail: true },
    );
    expect(noPlaceholder.stderr).toMatch(/0 image placeholders \(token 500\)/);
    const text = arm(
      [
        'forward',
        '--model',
        path.join(FIXTURES, 'phi3-fused'),
        '--input-ids',
        '1,500,2',
        '--image',
        path.join(dir, 'image0.png'),
        '--quiet',
      ],
      { expectFail: true },
    );
    expect(text.stderr).toMatch(/preprocessor_config\.json/);
  });
});
