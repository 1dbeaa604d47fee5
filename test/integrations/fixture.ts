// The integrations' tests' shared ground: a criterion fitted on the bundled icl-tiny, the (prompt, output) rows they
// score, what `arm score` writes for those rows, and `arm serve` on the criterion.
import fs from 'node:fs';
import path from 'node:path';
import { Decoder } from '../../src/model/decoder.js';
import { readExamples, type PairExample } from '../../src/data/examples.js';
import { fitActivationRM } from '../../src/arm/fit.js';
import { arm, armSpawn, serveReady } from '../helpers/cli.js';

export const ROOT = path.resolve(import.meta.dirname, '../..');
export const MODEL = path.join(ROOT, 'models/icl-tiny');
const EXAMPLES = path.join(ROOT, 'examples/icl-tiny/last-low');

/** One output to judge: the prompt it answers, the output, and an id (`<pair id>-chosen` / `-rejected`). */
export interface JudgedRow {
  id: string;
  prompt: string;
  response: string;
}

/** Fits the last-low criterion on icl-tiny (a quick fit: 16 pairs, 16 passes, 40 REINFORCE steps) into `file`. */
export async function fitCriterion(file: string, cacheDir: string): Promise<void> {
  const decoder = await Decoder.load(MODEL, { cacheDir, quiet: true });
  try {
    const few = readExamples(path.join(EXAMPLES, 'few.jsonl')).examples;
    const rm = await fitActivationRM(decoder, few, {
      templateText: '{prompt} {response}',
      passes: 16,
      seed: 0,
      reinforce: { steps: 40 },
      warn: () => undefined,
    });
    rm.save(file);
  } finally {
    await decoder.dispose();
  }
}

/** Both responses of the first `pairs` held-out pairs, as separate outputs to judge. */
export function judgedRows(pairs: number): JudgedRow[] {
  const test = readExamples(path.join(EXAMPLES, 'test.jsonl')).examples.filter(
    (e): e is PairExample => e.kind === 'pair',
  );
  return test.slice(0, pairs).flatMap((e) => [
    { id: `${e.id}-chosen`, prompt: e.prompt as string, response: e.chosen },
    { id: `${e.id}-rejected`, prompt: e.prompt as string, response: e.rejected },
  ]);
}

/** P(Yes) of each row as `arm score` writes it (extra flags such as --batch-size in `args`), by row id. */
export function armScoreRewards(
  criterion: string,
  rows: JudgedRow[],
  dir: string,
  args: string[] = [],
): Map<string, number> {
  const input = path.join(dir, 'rows.jsonl');
  const output = path.join(dir, `scored${args.join('')}.jsonl`);
  fs.writeFileSync(input, rows.map((r) => JSON.stringify(r)).join('\n') + '\n');
  arm(['score', '--model', MODEL, '--rm', criterion, '--input', input, '--output', output, '--quiet', ...args]);
  const scored = fs
    .readFileSync(output, 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as { id: string; arm: { reward: number } });
  return new Map(scored.map((r) => [r.id, r.arm.reward]));
}

/** `arm serve` on `criterion` (name `last-low`) at a free loopback port, once it says it is ready. */
export async function serveCriterion(
  criterion: string,
  args: string[] = [],
): Promise<{ url: string; stop: () => Promise<void> }> {
  const served = armSpawn(['serve', '--model', MODEL, '--rm', `last-low=${criterion}`, '--port', '0', ...args]);
  const url = await serveReady(served.child, served.stderr);
  const stop = async () => {
    if (served.child.exitCode === null && served.child.signalCode === null) served.child.kill('SIGTERM');
    await served.exited;
  };
  return { url, stop };
}
