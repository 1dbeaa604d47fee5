/**
 * `activation-rm/scorers` in a real evalite run (the evalite CLI in a child process, offline, on a temporary
 * `*.eval.ts` file, results in memory): evaliteScorer through `createScorer` and autoevalsScorer as it is, both
 * scoring each row's stored response against its prompt under a criterion fitted on icl-tiny, give `arm score`'s
 * numbers; the autoevals-shaped scorer called directly, in-process and through `arm serve`, gives them too, with the
 * fields `arm score` writes as metadata. Inputs without a prompt are refused, naming the field.
 */
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { createScorer, type Evalite } from 'evalite';
import { tempDir } from '../helpers/fixtures.js';
import { Decoder } from '../../src/model/decoder.js';
import { autoevalsScorer, closeJudges, evaliteScorer } from '../../src/integrations/scorers.js';
import { outputText, promptFrom } from '../../src/integrations/judge.js';
import { armScoreRewards, fitCriterion, judgedRows, MODEL, ROOT, serveCriterion } from './fixture.js';

const dir = tempDir('arm-scorers-');
const cacheDir = tempDir('arm-cache-');
const criterion = path.join(dir, 'last-low.arm.safetensors');
const rows = judgedRows(6);
let alone: Map<string, number>; // arm score --batch-size 1
let batched: Map<string, number>; // arm score, the criterion's batch size

beforeAll(async () => {
  await fitCriterion(criterion, cacheDir);
  alone = armScoreRewards(criterion, rows, dir, ['--batch-size', '1']);
  batched = armScoreRewards(criterion, rows, dir);
}, 300_000);
afterAll(() => closeJudges());

// Both scorers have the types evalite gives its scorers (checked by tsc; the run below checks the behaviour).
createScorer(evaliteScorer({ criterion, model: MODEL })) satisfies Evalite.Scorer<string, string, unknown>;
autoevalsScorer({ criterion, model: MODEL }) satisfies Evalite.Scorer<string, string, unknown>;

/** The eval file: each row's input is {id, prompt, response}, the task answers the stored response. */
function evalFile(options: Record<string, unknown>): string {
  const scorers = path.join(ROOT, 'src/integrations/scorers.ts');
  return `import { createScorer, evalite } from 'evalite';
import { autoevalsScorer, evaliteScorer } from ${JSON.stringify(scorers)};

const options = ${JSON.stringify(options)};
evalite('icl-tiny last-low', {
  data: ${JSON.stringify(rows.map((r) => ({ input: r })))},
  task: async (input) => input.response,
  scorers: [createScorer(evaliteScorer(options)), autoevalsScorer({ ...options, name: 'autoevals-shaped' })],
});
`;
}

/** evalite's JSON export: per result, its input and scores (the fields read here). */
interface EvaliteExport {
  evals: { results: { input: { id: string }; scores: { name: string; score: number; metadata: unknown }[] }[] }[];
}

/** Runs `evalite run` in a folder of its own holding `arm.eval.ts` (in-memory storage: no SQLite build needed). */
function evaliteRun(name: string, source: string): { exported: EvaliteExport; log: string } {
  const work = path.join(dir, name);
  fs.mkdirSync(work);
  // The eval file imports 'evalite': resolved through this repository's node_modules.
  fs.symlinkSync(path.join(ROOT, 'node_modules'), path.join(work, 'node_modules'), 'dir');
  fs.writeFileSync(
    path.join(work, 'evalite.config.ts'),
    `import { defineConfig } from 'evalite/config';
import { createInMemoryStorage } from 'evalite/in-memory-storage';
export default defineConfig({ storage: () => createInMemoryStorage(), testTimeout: 120_000 });
`,
  );
  fs.writeFileSync(path.join(work, 'arm.eval.ts'), source);
  const cli = path.join(ROOT, 'node_modules/evalite/dist/bin.js');
  const run = spawnSync(process.execPath, [cli, 'run', '--outputPath', 'results.json', '--hideTable'], {
    cwd: work,
    encoding: 'utf8',
    timeout: 240_000,
    env: { ...process.env, ARM_CACHE_DIR: cacheDir },
  });
  const out = path.join(work, 'results.json');
  expect(fs.existsSync(out), `evalite wrote no results (exit ${run.status}):\n${run.stdout}\n${run.stderr}`).toBe(true);
  return { exported: JSON.parse(fs.readFileSync(out, 'utf8')) as EvaliteExport, log: `${run.stdout}\n${run.stderr}` };
}

it('an evalite run scores each output as `arm score` does, through createScorer and as an autoevals scorer', () => {
  const { exported, log } = evaliteRun('local', evalFile({ criterion, model: MODEL, cacheDir }));
  const results = exported.evals.flatMap((e) => e.results);
  expect(
    results.every((r) => r.scores.length === 2),
    log,
  ).toBe(true);
  expect(results.map((r) => r.input.id).sort()).toEqual(rows.map((r) => r.id).sort());
  let maxDiff = 0;
  for (const r of results) {
    const byName = new Map(r.scores.map((s) => [s.name, s.score]));
    expect([...byName.keys()].sort()).toEqual(['activation-rm:last-low', 'autoevals-shaped']);
    for (const score of byName.values()) {
      expect(score).toBe(alone.get(r.input.id));
      maxDiff = Math.max(maxDiff, Math.abs(score - batched.get(r.input.id)!));
    }
  }
  expect(maxDiff).toBeLessThanOrEqual(1e-6);
  process.stderr.write(`evalite in-process vs arm score (batched): max |diff| ${maxDiff}\n`);
});

describe('the autoevals-shaped scorer called directly', () => {
  it('in-process: {name, score, metadata} with the fields `arm score` writes; calls together load once', async () => {
    const load = vi.spyOn(Decoder, 'load');
    const score = autoevalsScorer({ criterion, model: MODEL, cacheDir });
    const got = await Promise.all(rows.map((r) => score({ input: r.prompt, output: r.response })));
    got.forEach((g, i) => {
      expect(g.name).toBe('activation-rm:last-low');
      expect(g.score).toBe(alone.get(rows[i]!.id));
      expect(g.metadata).toMatchObject({ criterion: 'last-low', readout: 'reward', tooLong: false, truncated: false });
      expect(g.metadata.reward).toBe(g.score);
    });
    // Another readout of the same criterion: the model already loaded is reused.
    const normalized = autoevalsScorer({ criterion, model: MODEL, cacheDir, readout: 'normalized' });
    const other = await normalized({ input: rows[0]!.prompt, output: rows[0]!.response });
    expect(other.metadata).toMatchObject({ readout: 'normalized', reward: got[0]!.score });
    expect(other.score).toBe(other.metadata.normalized);
    expect(load).toHaveBeenCalledTimes(1);
    load.mockRestore();
  });

  it('remote: through `arm serve`, which batches concurrent requests, `arm score`’s numbers', async () => {
    // The server's default batching: the 12 concurrent requests are scored in shared batches.
    const server = await serveCriterion(criterion, ['--max-wait-ms', '50']);
    try {
      const score = autoevalsScorer({ url: server.url, name: 'remote' });
      const got = await Promise.all(rows.map((r) => score({ input: { prompt: r.prompt }, output: r.response })));
      let maxDiff = 0;
      got.forEach((g, i) => {
        expect(g).toMatchObject({ name: 'remote', metadata: { criterion: 'last-low' } });
        maxDiff = Math.max(maxDiff, Math.abs(g.score! - batched.get(rows[i]!.id)!));
      });
      expect(maxDiff).toBeLessThanOrEqual(1e-6);
      process.stderr.write(`autoevals scorer through arm serve (batched) vs arm score: max |diff| ${maxDiff}\n`);
    } finally {
      await server.stop();
    }
  });

  it('an input without a prompt, or options without a criterion, are refused naming the field', async () => {
    const score = autoevalsScorer({ criterion, model: MODEL, cacheDir });
    await expect(score({ input: { question: 'w1' }, output: 'w2' })).rejects.toThrow(
      /activation-rm\/scorers options: input: expected the prompt/,
    );
    expect(() => autoevalsScorer({ model: MODEL })).toThrow(/activation-rm\/scorers options: criterion: .*required/);
    expect(() => autoevalsScorer({ url: 'localhost:5000' })).toThrow(/url: expected http\(s\):\/\/host:port/);
    // A typo, or one mode's field in the other's config, is named rather than ignored.
    const typo = { criterion, model: MODEL, treshold: 0.5 } as Parameters<typeof autoevalsScorer>[0];
    expect(() => autoevalsScorer(typo)).toThrow(/treshold: not a field of this config/);
    expect(() => autoevalsScorer({ url: 'http://127.0.0.1:1', criterion })).toThrow(/criterion: a remote judge/);
    expect(() => autoevalsScorer({ criterion, model: MODEL, apiKeyEnv: 'K' })).toThrow(/apiKeyEnv: only for a remote/);
  });
});

describe('prompts and outputs as the tools hand them over', () => {
  it('a chat, as a list or as its JSON text, is a message list; other text stays text', () => {
    const chat = [{ role: 'user', content: 'w1 w2' }];
    expect(promptFrom(chat, 'input')).toEqual(chat);
    expect(promptFrom(JSON.stringify(chat), 'prompt')).toEqual(chat);
    expect(promptFrom('[not json', 'prompt')).toBe('[not json');
    expect(promptFrom('[1, 2]', 'prompt')).toBe('[1, 2]');
    expect(() => promptFrom(42, 'vars.question')).toThrow(/vars.question: expected a string or a list of/);
  });

  it('an output that is not text is judged as its JSON; a missing one is refused', () => {
    expect(outputText({ answer: 4 }, 'output')).toBe('{"answer":4}');
    expect(() => outputText(undefined, 'output')).toThrow(/output: no output to score/);
  });
});
