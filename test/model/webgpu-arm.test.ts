/**
 * `arm fit` and `arm score` on `--device webgpu` end to end on ../shared/models/icl-tiny: the criterion fitted on the
 * device records it, and its scores on the device rank the test pairs as the CPU provider's do (Spearman ≥ 0.999,
 * the same pair verdicts). Skipped, with the reason in its name, where Dawn finds no adapter (webgpu.test.ts).
 */
import { beforeAll, describe, expect, it } from 'vitest';
import fs from 'node:fs';
import path from 'node:path';
import { deviceProblem } from '../../src/model/session.js';
import { readSafetensorsMetadata } from '../../src/model/checkpoint/safetensors.js';
import { Decoder } from '../../src/model/decoder.js';
import { ActivationRM, type PairScore } from '../../src/arm/rm.js';
import { readExamples } from '../../src/data/examples.js';
import { tempDir } from '../helpers/fixtures.js';
import { ICL_TINY_MODEL, iclTinyRows } from '../helpers/icl-tiny.js';
import { arm } from '../helpers/cli.js';

const MODEL = ICL_TINY_MODEL;
const problem = await deviceProblem('webgpu');
const suite = problem === null ? 'webgpu: arm fit + score' : `webgpu SKIPPED, no adapter: ${problem.slice(0, 300)}`;
if (problem !== null) console.warn(`note: ${suite}`);

interface Scored {
  id: string;
  arm: { chosen: number; rejected: number; correct: boolean };
}

describe.skipIf(problem !== null)(suite, () => {
  const dir = tempDir('arm-webgpu-arm-');
  const rm = path.join(dir, 'first-low.arm.safetensors');
  const scored = path.join(dir, 'scored-webgpu.jsonl');
  beforeAll(() => {
    const rows = iclTinyRows(['resp-first-low']);
    const write = (file: string, part: object[]) =>
      fs.writeFileSync(file, part.map((r) => JSON.stringify(r)).join('\n') + '\n');
    write(path.join(dir, 'few.jsonl'), rows.slice(0, 16));
    write(path.join(dir, 'test.jsonl'), rows.slice(30, 46));
    // fp32, as the CPU scores compared below (a GPU's default is fp16)
    const model = ['--model', MODEL, '--quiet', '--dtype', 'fp32'];
    arm(
      ['fit', ...model, '--device', 'webgpu', '--examples', path.join(dir, 'few.jsonl'), '--out', rm].concat([
        '--template-text',
        '{prompt} {response}',
        '--passes',
        '16',
        '--steps',
        '30',
        '--samples',
        '8',
      ]),
    );
    arm(
      ['score', ...model, '--device', 'webgpu', '--rm', rm, '--input', path.join(dir, 'test.jsonl')].concat([
        '--output',
        scored,
      ]),
    );
  }, 240_000);

  const read = (file: string): Scored[] =>
    fs
      .readFileSync(file, 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as Scored);

  it('the criterion file records the device it was fitted on', () => {
    const meta = JSON.parse(readSafetensorsMetadata(rm).arm!) as { model: { device: string } };
    expect(meta.model.device).toBe('webgpu');
  });

  it('scores on webgpu rank the pairs as on the CPU (Spearman ≥ 0.999) with the same verdicts', async () => {
    const gpu = read(scored);
    const decoder = await Decoder.load(MODEL, { cacheDir: tempDir('arm-cache-'), threads: 1 });
    let cpu: Scored[];
    try {
      const pairs = readExamples(path.join(dir, 'test.jsonl')).examples;
      const scores = await ActivationRM.load(decoder, rm).scoreExamples(pairs);
      cpu = pairs.map((e, i) => ({ id: e.id, arm: scores[i] as PairScore }));
    } finally {
      await decoder.dispose();
    }
    expect(gpu.map((r) => r.id)).toEqual(cpu.map((r) => r.id));
    const flat = (rows: Scored[]) => rows.flatMap((r) => [r.arm.chosen, r.arm.rejected]);
    expect(spearman(flat(gpu), flat(cpu))).toBeGreaterThanOrEqual(0.999);
    expect(gpu.map((r) => r.arm.correct)).toEqual(cpu.map((r) => r.arm.correct));
    // The criterion judges: most verdicts are right (a broken device graph would score at chance).
    expect(gpu.filter((r) => r.arm.correct).length).toBeGreaterThan(gpu.length / 2);
  });
});

/** Spearman's rank correlation, ties given their mean rank. */
function spearman(a: number[], b: number[]): number {
  const ranks = (x: number[]) => {
    const order = Array.from(x.keys()).sort((i, j) => x[i]! - x[j]!);
    const r = new Array<number>(x.length);
    for (let i = 0; i < order.length;) {
      let j = i;
      while (j + 1 < order.length && x[order[j + 1]!] === x[order[i]!]) j++;
      for (let k = i; k <= j; k++) r[order[k]!] = (i + j) / 2;
      i = j + 1;
    }
    return r;
  };
  const [ra, rb] = [ranks(a), ranks(b)];
  const mean = (x: number[]) => x.reduce((s, v) => s + v, 0) / x.length;
  const [ma, mb] = [mean(ra), mean(rb)];
  let num = 0,
    da = 0,
    db = 0;
  for (let i = 0; i < ra.length; i++) {
    num += (ra[i]! - ma) * (rb[i]! - mb);
    da += (ra[i]! - ma) ** 2;
    db += (rb[i]! - mb) ** 2;
  }
  return num / Math.sqrt(da * db);
}
