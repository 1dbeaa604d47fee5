/**
 * `activation-rm/promptfoo` in a real promptfoo eval (the promptfoo CLI in a child process, offline): the echo
 * provider returns each test's stored response as the output, the assertion scores it against the test's prompt
 * (`promptVar`) under a criterion fitted on icl-tiny. The scores are `arm score`'s (bitwise `--batch-size 1`'s, and
 * the default batches' within float32 rounding), pass is score ≥ threshold, the reason names criterion and P(Yes);
 * the same through a running `arm serve` (remote mode, with its API key). A bad config fails the assertion, named.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import type { AssertionValueFunction } from 'promptfoo';
import { tempDir } from '../helpers/fixtures.js';
import { activationRmAssertion } from '../../src/integrations/promptfoo.js';
import { armScoreRewards, fitCriterion, judgedRows, MODEL, ROOT, serveCriterion, type JudgedRow } from './fixture.js';

const dir = tempDir('arm-promptfoo-');
const cacheDir = tempDir('arm-cache-');
const criterion = path.join(dir, 'last-low.arm.safetensors');
// The assertion has the type promptfoo gives a javascript assertion's function (checked by tsc).
activationRmAssertion satisfies AssertionValueFunction;

/** The assertion as docs/integrations.md gives it for an installed package, and as a file path (the source here). */
const PACKAGE_ASSERTION = 'package:activation-rm/promptfoo:activationRmAssertion';
const FILE_ASSERTION = `file://${path.join(ROOT, 'src/integrations/promptfoo.ts')}:activationRmAssertion`;
const rows = judgedRows(6);
const CLI = path.join(ROOT, 'node_modules/promptfoo/dist/src/entrypoint.js');
/** Settings that keep promptfoo offline and out of the user's home. */
const offlineEnv = (work: string) => ({
  PROMPTFOO_CONFIG_DIR: path.join(work, '.promptfoo'),
  PROMPTFOO_CACHE_PATH: path.join(work, '.promptfoo-cache'),
  PROMPTFOO_DISABLE_TELEMETRY: '1',
  PROMPTFOO_DISABLE_UPDATE: '1',
  PROMPTFOO_DISABLE_SHARING: '1',
  PROMPTFOO_DISABLE_REMOTE_GENERATION: '1',
  PROMPTFOO_SELF_HOSTED: '1',
});

/**
 * Why promptfoo's CLI will not run on this Node, or null. Its engines (^20.20.0 || >=22.22.0) are narrower than
 * ours (^20.19.0 || ^22.13.0 || >=24), and it refuses to start outside them: there these tests skip, saying so.
 */
function promptfooRuntimeProblem(): string | null {
  const run = spawnSync(process.execPath, [CLI, '--version'], {
    encoding: 'utf8',
    timeout: 120_000,
    env: { ...process.env, ...offlineEnv(path.join(dir, 'probe')) },
  });
  if (run.status === 0) return null;
  return `${run.stdout}${run.stderr}`
    .replace(/\x1b\[[0-9;]*m/g, '')
    .trim()
    .split('\n')
    .filter(Boolean)
    .slice(0, 3)
    .join(' ');
}
const runtimeProblem = promptfooRuntimeProblem();
const suite = runtimeProblem === null ? 'promptfoo' : `promptfoo SKIPPED on this Node: ${runtimeProblem}`;
if (runtimeProblem !== null) console.warn(`note: ${suite}`);
let alone: Map<string, number>; // arm score --batch-size 1
let batched: Map<string, number>; // arm score, the criterion's batch size
let threshold: number;

/** What one assertion gave: promptfoo's GradingResult. */
interface Grading {
  pass: boolean;
  score: number;
  reason: string;
}
/**
 * One promptfoo result row, as `promptfoo eval -o out.json` writes it (the fields read here): the test's verdict
 * and each assertion's; `error` when an assertion threw.
 */
interface PromptfooResult {
  vars: { id: string; question: string; response: string };
  score: number;
  success: boolean;
  error?: string;
  gradingResult: (Grading & { componentResults: Grading[] }) | null;
}

/** A promptfoo config: the echo provider answers each row's response; one javascript assertion with `config`. */
function configYaml(judgeRows: JudgedRow[], config: Record<string, unknown>, assertion = FILE_ASSERTION): string {
  return JSON.stringify({
    description: 'activation-rm assertion on icl-tiny',
    prompts: ['{{response}}'],
    providers: ['echo'],
    defaultTest: { assert: [{ type: 'javascript', value: assertion, config }] },
    tests: judgeRows.map((r) => ({ vars: { id: r.id, question: r.prompt, response: r.response } })),
  });
}

/**
 * `work` as a project that installed activation-rm: node_modules/activation-rm with this package.json's name and
 * `exports`, its dist/integrations/promptfoo.js re-exporting the source (run under tsx), so that promptfoo resolves
 * `package:activation-rm/promptfoo:…` through the exports map as it does in a real install.
 */
function installedPackage(work: string): void {
  const pkg = path.join(work, 'node_modules/activation-rm');
  fs.mkdirSync(path.join(pkg, 'dist/integrations'), { recursive: true });
  const { name, type, exports } = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as {
    name: string;
    type: string;
    exports: unknown;
  };
  fs.writeFileSync(path.join(pkg, 'package.json'), JSON.stringify({ name, type, exports }));
  const source = path.join(ROOT, 'src/integrations/promptfoo.ts');
  fs.writeFileSync(path.join(pkg, 'dist/integrations/promptfoo.js'), `export * from ${JSON.stringify(source)};\n`);
}

/** Runs `promptfoo eval` on `config` in a child process (offline: no telemetry, update check, sharing or cache). */
function promptfooEval(
  name: string,
  config: string,
  env: Record<string, string> = {},
): { results: PromptfooResult[]; stderr: string } {
  const work = path.join(dir, name);
  installedPackage(work);
  fs.writeFileSync(path.join(work, 'promptfooconfig.yaml'), config);
  // tsx: the assertion is this repository's TypeScript source (an installed package points at dist/…/promptfoo.js).
  const tsx = pathToFileURL(path.join(ROOT, 'node_modules/tsx/dist/loader.mjs')).href;
  const args = ['--import', tsx, CLI, 'eval', '-c', 'promptfooconfig.yaml', '-o', 'out.json', '--no-cache'];
  const run = spawnSync(process.execPath, [...args, '--no-table', '--no-progress-bar', '-j', '4'], {
    cwd: work,
    encoding: 'utf8',
    timeout: 240_000,
    env: {
      ...process.env,
      ...env,
      ARM_CACHE_DIR: cacheDir,
      ...offlineEnv(work),
    },
  });
  const out = path.join(work, 'out.json');
  expect(fs.existsSync(out), `promptfoo wrote no results (exit ${run.status}):\n${run.stdout}\n${run.stderr}`).toBe(
    true,
  );
  const written = JSON.parse(fs.readFileSync(out, 'utf8')) as { results: { results: PromptfooResult[] } };
  return { results: written.results.results, stderr: `${run.stdout}\n${run.stderr}` };
}

/** Each row's promptfoo score is `expected`'s for its id (within `tolerance`), pass is score ≥ threshold. */
function expectScores(results: PromptfooResult[], expected: Map<string, number>, tolerance: number): number {
  expect(results.map((r) => r.vars.id).sort()).toEqual(rows.map((r) => r.id).sort());
  let maxDiff = 0;
  for (const r of results) {
    const want = expected.get(r.vars.id)!;
    expect(r.gradingResult, r.error).not.toBeNull();
    const grading = r.gradingResult!.componentResults[0]!;
    maxDiff = Math.max(maxDiff, Math.abs(grading.score - want), Math.abs(r.score - want));
    expect(grading.pass, grading.reason).toBe(want >= threshold);
    expect(r.success).toBe(want >= threshold);
    expect(grading.reason).toMatch(
      new RegExp(`^last-low: P\\(Yes\\) = ${want.toFixed(4)} ${want >= threshold ? '≥' : '<'} threshold ${threshold}`),
    );
  }
  expect(maxDiff).toBeLessThanOrEqual(tolerance);
  return maxDiff;
}

describe.skipIf(runtimeProblem !== null)(suite, () => {
  beforeAll(async () => {
    await fitCriterion(criterion, cacheDir);
    alone = armScoreRewards(criterion, rows, dir, ['--batch-size', '1']);
    batched = armScoreRewards(criterion, rows, dir);
    // A threshold between the scores, so that some outputs pass and some fail.
    const sorted = [...alone.values()].sort((a, b) => a - b);
    threshold = Number(((sorted[5]! + sorted[6]!) / 2).toFixed(6));
  }, 300_000);

  describe('in-process', () => {
    it('a promptfoo eval scores each output as `arm score` does; pass is score ≥ threshold', () => {
      const { results } = promptfooEval(
        'local',
        configYaml(rows, { criterion, model: MODEL, threshold, promptVar: 'question', cacheDir }, PACKAGE_ASSERTION),
      );
      expect(expectScores(results, alone, 0)).toBe(0);
      const diff = expectScores(results, batched, 1e-6);
      expect(results.some((r) => r.success) && results.some((r) => !r.success)).toBe(true);
      process.stderr.write(`promptfoo in-process vs arm score (batched): max |diff| ${diff}\n`);
    });

    it('a config without a criterion fails the test with an error naming the field', () => {
      const { results } = promptfooEval('bad', configYaml(rows.slice(0, 1), { model: MODEL, promptVar: 'question' }));
      expect(results[0]!.success).toBe(false);
      expect(results[0]!.error).toMatch(/activation-rm\/promptfoo assertion config: criterion: .*required/);
    });
  });

  it('examples/promptfoo runs as written (its paths pointed at this checkout and the criterion fitted here)', () => {
    const example = fs
      .readFileSync(path.join(ROOT, 'examples/promptfoo/promptfooconfig.yaml'), 'utf8')
      .replace(
        'file://../../dist/integrations/promptfoo.js:',
        `file://${path.join(ROOT, 'src/integrations/promptfoo.ts')}:`,
      )
      .replace('../../results/last-low.arm.safetensors', criterion)
      .replace('../../models/icl-tiny', MODEL);
    const { results } = promptfooEval('example', example);
    const idOf = new Map(rows.map((r) => [`${r.prompt}|${r.response}`, r.id]));
    expect(results).toHaveLength(rows.length);
    for (const r of results) {
      const want = alone.get(idOf.get(`${r.vars.question}|${r.vars.response}`)!)!;
      const grading = r.gradingResult!.componentResults[0]!;
      expect(grading.score).toBe(want);
      expect(grading.pass).toBe(want >= 0.5);
    }
  });

  describe('remote (arm serve)', () => {
    let server: { url: string; stop: () => Promise<void> };
    const KEY = 'integration-key-0123';
    beforeAll(async () => {
      const keyFile = path.join(dir, 'key.txt');
      fs.writeFileSync(keyFile, `${KEY}\n`);
      // --max-batch 1: each request scored alone, as the in-process judge scores it.
      server = await serveCriterion(criterion, ['--api-key-file', keyFile, '--max-batch', '1']);
    });
    afterAll(async () => server?.stop());

    it('the same eval through `arm serve` gives the same scores', () => {
      const config = { url: server.url, apiKeyEnv: 'ARM_TEST_KEY', threshold, promptVar: 'question' };
      const { results } = promptfooEval('remote', configYaml(rows, config), { ARM_TEST_KEY: KEY });
      expect(expectScores(results, alone, 0)).toBe(0);
    });

    it('a wrong key fails the assertion with the server’s 401', () => {
      const config = { url: server.url, apiKeyEnv: 'ARM_TEST_KEY', threshold, promptVar: 'question' };
      const { results } = promptfooEval('wrong-key', configYaml(rows.slice(0, 1), config), { ARM_TEST_KEY: 'nope' });
      expect(results[0]!.success).toBe(false);
      expect(results[0]!.error).toMatch(/\/v1\/score: HTTP 401/);
    });
  });
});
