/**
 * The README's main command on the bundled icl-tiny (models/icl-tiny, examples/icl-tiny), run as written (outputs
 * moved to a temp folder), prints an accuracy on held-out pairs that the scored file confirms and the README states;
 * and `arm fit` on the same model without `--template-text "{prompt} {response}"` refuses (the default English
 * template is unknown words to its 64-word vocabulary) unless --force, which fits, warns and records the rate.
 */
import { describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { loadCriterion } from '../../src/arm/criterion.js';
import { tempDir } from '../helpers/fixtures.js';

const ROOT = path.resolve(import.meta.dirname, '../..');
const CLI = path.join(ROOT, 'test/helpers/arm-cli.ts');
const cacheDir = tempDir('arm-cache-');

/** `arm` from source, from the repository root, with stdout and stderr whatever the exit status. */
function arm(args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, ['--import', 'tsx', CLI, ...args], {
    cwd: ROOT,
    encoding: 'utf8',
    env: { ...process.env, ARM_CACHE_DIR: cacheDir },
  });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** Words of a shell command line (double-quoted words kept whole), as bash splits the README's command. */
function shellWords(line: string): string[] {
  return [...line.matchAll(/"([^"]*)"|(\S+)/g)].map((m) => m[1] ?? m[2]!);
}

/** The README's main command: its `npx arm fit …` and `npx arm score …` parts, as argument lists. */
function readmeCommand(): { fit: string[]; score: string[]; claim: string | null } {
  const readme = fs.readFileSync(path.join(ROOT, 'README.md'), 'utf8');
  const line = readme.split('\n').find((l) => /^npm install && npx arm fit --model models\/icl-tiny /.test(l));
  expect(line, 'README.md: the main command `npm install && npx arm fit --model models/icl-tiny …`').toBeDefined();
  const parts = line!.split('&&').map((p) => shellWords(p.trim()));
  const part = (cmd: string) => parts.find((p) => p[0] === 'npx' && p[1] === 'arm' && p[2] === cmd)!.slice(2);
  const claim = /accuracy (\d\.\d{4}) \((\d+\/\d+)[,)]/.exec(readme);
  return { fit: part('fit'), score: part('score'), claim: claim ? `${claim[1]} (${claim[2]})` : null };
}

/** `args` with the values of the output flags moved into `dir` (the README writes them under results/). */
function outputsIn(args: string[], dir: string): string[] {
  return args.map((a, i) => (['--out', '--rm', '--output'].includes(args[i - 1]!) ? path.join(dir, a) : a));
}

describe('the README main command on the bundled icl-tiny', () => {
  it('fits, scores the held-out pairs and prints the accuracy the scored file holds and the README states', () => {
    const { fit, score, claim } = readmeCommand();
    const out = tempDir('arm-quickstart-');
    const fitted = arm(outputsIn(fit, out));
    expect(fitted.status, fitted.stderr).toBe(0);
    expect(fitted.stderr).not.toMatch(/warning/);
    const scored = arm(outputsIn(score, out));
    expect(scored.status, scored.stderr).toBe(0);
    // Independently of the summary: the scored rows, each pair correct when chosen's reward is above rejected's.
    const input = path.join(ROOT, score[score.indexOf('--input') + 1]!);
    const rows = fs
      .readFileSync(path.join(out, score[score.indexOf('--output') + 1]!), 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { arm: { chosen: number; rejected: number } });
    expect(rows).toHaveLength(fs.readFileSync(input, 'utf8').trim().split('\n').length);
    const correct = rows.filter((r) => r.arm.chosen > r.arm.rejected).length;
    const printed = `${(correct / rows.length).toFixed(4)} (${correct}/${rows.length})`;
    expect(scored.stderr).toContain(`accuracy ${printed.slice(0, -1)}`); // "(84/84, ties … count as wrong)"

    expect(correct / rows.length).toBeGreaterThan(0.95); // the zero-shot judge gets 0.55 on these pairs
    expect(claim, 'README.md states the accuracy the main command prints').toBe(printed);
  });
});

describe('arm fit on icl-tiny with the default template', () => {
  const examples = path.join(ROOT, 'examples/icl-tiny/last-low/few.jsonl');
  const quick = ['--passes', '10', '--steps', '2', '--quiet'];

  it('refuses, saying what is unknown and that --force overrides, and writes nothing', () => {
    const out = path.join(tempDir(), 'default.arm.safetensors');
    const r = arm(['fit', '--model', 'models/icl-tiny', '--examples', examples, '--out', out, ...quick]);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/not fitted: the judge template is mostly unknown to the model's vocabulary/);
    expect(r.stderr).toMatch(/--template-text.*"\{prompt\} \{response\}".*--force/s);
    expect(fs.existsSync(out)).toBe(false);
  });

  it('with --force: fits, warns and records the rate in the criterion', () => {
    const out = path.join(tempDir(), 'default.arm.safetensors');
    const r = arm(['fit', '--model', 'models/icl-tiny', '--examples', examples, '--out', out, '--force', ...quick]);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/warning: the judge template is mostly unknown/);
    const meta = loadCriterion(out).meta;
    // 32 judge items, each "Prompt: w w w Response: w w w Does … Yes or No. A:": 21 words, 13 not in the vocabulary.
    expect(meta.unknownTokens).toMatchObject({ unknown: 32 * 13, text: 32 * 21, rate: 13 / 21 });
    expect(meta.unknownTokens!.template).toMatchObject({ unknown: 13, text: 15 });
    expect(meta.unknownTokens!.template.knownRate).toBeCloseTo(2 / 15, 12);
  });
});
