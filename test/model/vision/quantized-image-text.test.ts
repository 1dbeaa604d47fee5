/**
 * Image-text checkpoints at int8 and int4: the language model quantised (MatMulNBits), the vision tower in fp32,
 * the image features in the same place. Against transformers' float64 logits on the tiny fixtures: top-1 kept at
 * int8, and errors of the size the text families show at each dtype (test/model/quantized.test.ts).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { argmax, Decoder } from '../../../src/model/decoder.js';
import { ImageInputs } from '../../../src/model/vision/image-inputs.js';
import { decodeImage } from '../../../src/model/vision/image.js';

const FIXTURES = path.resolve(import.meta.dirname, '../../../../shared/fixtures/hf-parity');
const FAMILIES = ['qwen2_5_vl-tiny', 'llava_onevision-tiny'];
const present = fs.existsSync(path.join(FIXTURES, 'qwen2_5_vl-tiny'));

let cacheDir: string;
beforeAll(() => {
  cacheDir = fs.mkdtempSync(path.join(os.tmpdir(), 'arm-vq-'));
});
afterAll(() => {
  fs.rmSync(cacheDir, { recursive: true, force: true });
});

describe.runIf(present).each(FAMILIES)('quantised language model with an image: %s', (name) => {
  it('int8: the top token kept, within 2% of the logit range (0.6–0.9% measured); int4: 15% (7–8.5%)', async () => {
    const dir = path.join(FIXTURES, name);
    const { results } = JSON.parse(fs.readFileSync(path.join(dir, 'parity.json'), 'utf8')) as {
      results: { input_ids_one_placeholder: number[]; last_logits: number[] }[];
    };
    const inputs = await ImageInputs.load(dir, { cacheDir, threads: 1 });
    try {
      const prompt = await inputs.prepare(results[0]!.input_ids_one_placeholder, [
        await decodeImage(path.join(dir, 'image0.png')),
      ]);
      const hf = results[0]!.last_logits;
      const range = Math.max(...hf) - Math.min(...hf);
      for (const [dtype, bound] of [
        ['int8', 0.02],
        ['int4', 0.15],
      ] as const) {
        const decoder = await Decoder.load(dir, { cacheDir, threads: 1, dtype });
        try {
          expect(decoder.info.weightFormat.dtype).toBe(dtype);
          const { logits } = await decoder.forward([prompt.inputIds], undefined, { images: [prompt.images] });
          const err = Math.max(...hf.map((v, i) => Math.abs(v - logits[i]!)));
          expect(err / range).toBeLessThan(bound);
          if (dtype === 'int8') expect(argmax(logits)).toBe(argmax(hf));
        } finally {
          await decoder.dispose();
        }
      }
    } finally {
      await inputs.release();
    }
  });
});
