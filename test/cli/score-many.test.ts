/**
 * `arm score --rm a=… --rm b=…`: several criteria in one pass from the command line. Each row's "arm" holds every
 * criterion's fields under its name, equal (within float32 rounding) to what `arm score --rm <file>` writes for that
 * criterion alone; the summary gives each criterion's pair accuracy. (A resumed run refusing other criteria:
 * score-stream.test.ts.)
 */
import { beforeAll, expect, it } from 'vitest';
import fs from 'node:fs';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { Decoder } from '../../src/model/decoder.js';
import { readExamples, type PairExample } from '../../src/data/examples.js';
import { fitActivationRM } from '../../src/arm/fit.js';
import { tempDir } from '../helpers/fixtures.js';

const MODEL = path.resolve(import.meta.dirname, '../../../shared/models/icl-tiny');
const DATA = path.resolve(import.meta.dirname, '../../../shared/data/icl-tiny/pairs.jsonl');
const SUBSETS = ['resp-first-low', 'resp-max-high'];
const dir = tempDir('arm-score-many-');
const files = SUBSETS.map((s) => path.join(dir, `${s}.arm.safetensors`));
const input = path.join(dir, 'input.jsonl');
const cacheDir = tempDir('arm-cache-');
const CLI = path.resolve(import.meta.dirname, '../helpers/arm-cli.ts');

const rowsOf = (file: string) =>
  fs
    .readFileSync(file, 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as { id: string; arm: Record<string, unknown> });

beforeAll(async () => {
  const decoder = await Decoder.load(MODEL, { cacheDir, quiet: true });
  const pairs = readExamples(DATA).examples.filter((e): e is PairExample => e.kind === 'pair');
  for (const [k, subset] of SUBSETS.entries()) {
    const own = pairs.filter((e) => e.row.subset === subset);
    const rm = await fitActivationRM(decoder, own.slice(0, 16), {
      templateText: '{prompt} {response}',
      passes: 16,
      reinforce: { steps: 40 },
      warn: () => undefined,
    });
    rm.save(files[k]!);
  }
  await decoder.dispose();
  // Test pairs of both criteria, and items without labels.
  const test = SUBSETS.flatMap((s) => pairs.filter((e) => e.row.subset === s).slice(30, 40)).map((e) => e.row);
  const items = test.slice(0, 4).map((r, i) => ({ id: `item-${i}`, prompt: r.prompt, response: r.chosen }));
  fs.writeFileSync(input, [...test, ...items].map((r) => JSON.stringify(r)).join('\n') + '\n');
}, 300_000);

/** `arm score` with its stderr (the summary line) also on success. */
function score(args: string[]): { status: number | null; stderr: string } {
  const r = spawnSync(process.execPath, ['--import', 'tsx', CLI, 'score', '--model', MODEL, ...args], {
    encoding: 'utf8',
    env: { ...process.env, ARM_CACHE_DIR: cacheDir },
  });
  return { status: r.status, stderr: r.stderr };
}

it('one pass writes every criterion under its name, as each alone writes it; the summary names each', () => {
  const output = path.join(dir, 'both.jsonl');
  const both = score(['--rm', `first=${files[0]}`, '--rm', `max=${files[1]}`, '--input', input, '--output', output]);
  expect(both.status, both.stderr).toBe(0);
  const together = rowsOf(output);
  for (const [k, name] of ['first', 'max'].entries()) {
    const single = path.join(dir, `${name}.jsonl`);
    expect(score(['--rm', files[k]!, '--input', input, '--output', single]).status).toBe(0);
    const alone = rowsOf(single);
    expect(together).toHaveLength(alone.length);
    alone.forEach((row, i) => {
      const got = together[i]!.arm[name] as Record<string, unknown>;
      expect(Object.keys(got)).toEqual(Object.keys(row.arm));
      for (const [field, value] of Object.entries(row.arm)) {
        if (typeof value === 'number') expect(Math.abs((got[field] as number) - value)).toBeLessThan(1e-5);
        else expect(got[field]).toEqual(value);
      }
    });
    // The summary gives this criterion's pair accuracy as counted from its rows alone.
    const pairs = alone.filter((r) => 'margin' in r.arm);
    const right = pairs.filter((r) => r.arm.correct === true).length;
    expect(pairs).toHaveLength(20);
    expect(both.stderr).toContain(`${name} ${(right / 20).toFixed(4)} (${right}/20)`);
  }
});
