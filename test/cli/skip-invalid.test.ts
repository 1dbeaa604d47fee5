// `arm fit` and `arm score` with --skip-invalid: an invalid row and a line over the reader's 16 MiB limit are
// skipped and reported with file:line and reason; without the flag the first of them stops the command.
import { beforeAll, expect, it } from 'vitest';
import fs from 'node:fs';
import path from 'node:path';
import { arm, armSpawn } from '../helpers/cli.js';
import { STORIES, tempDir } from '../helpers/fixtures.js';
import { MAX_LINE_BYTES } from '../../src/data/examples.js';

const FEW = path.resolve(import.meta.dirname, '../../examples/concise/few.jsonl');
const fewLines = fs.readFileSync(FEW, 'utf8').trim().split('\n');
const fewIds = fewLines.map((l) => JSON.parse(l).id as string);
const fewPairs = fewLines.filter((l) => 'chosen' in JSON.parse(l)).length;
const INVALID = JSON.stringify({ id: 'bad', prompt: 'What is 2 plus 2?', chosen: '4.' }); // no "rejected"
// A well-formed row, just longer than the reader takes.
const LONG = JSON.stringify({ id: 'long', prompt: 'x'.repeat(MAX_LINE_BYTES), chosen: 'a', rejected: 'b' });
const QUICK = ['--passes', '4', '--heads', 'random:2'];

/** Runs the CLI and returns its exit code and stderr (`arm` keeps stderr only for failures). */
async function armStderr(args: string[]): Promise<{ code: number | null; stderr: string }> {
  const run = armSpawn(args);
  const { code } = await run.exited;
  return { code, stderr: run.stderr() };
}

let dir: string;
let invalidFirst: string; // few.jsonl with the invalid row as line 3 and the long line as line 6
let longFirst: string; //    ... with the long line as line 2 and the invalid row as line 5
beforeAll(() => {
  dir = tempDir();
  invalidFirst = path.join(dir, 'invalid-first.jsonl');
  longFirst = path.join(dir, 'long-first.jsonl');
  const withRows = (at: [number, string][]) => {
    const lines = [...fewLines];
    for (const [line, text] of at) lines.splice(line - 1, 0, text);
    return lines.join('\n') + '\n';
  };
  fs.writeFileSync(
    invalidFirst,
    withRows([
      [3, INVALID],
      [6, LONG],
    ]),
  );
  fs.writeFileSync(
    longFirst,
    withRows([
      [2, LONG],
      [5, INVALID],
    ]),
  );
  expect(fs.readFileSync(invalidFirst, 'utf8').split('\n')[5]).toBe(LONG);
});

const reasons = (file: string, invalid: number, long: number) => [
  `skipped invalid row: ${file}:${invalid}: field "rejected" is missing`,
  `skipped invalid row: ${file}:${long}: line is longer than the limit of ${MAX_LINE_BYTES} bytes`,
];

it('without --skip-invalid, fit and score stop at the first bad line, naming file:line and the field', () => {
  for (const cmd of [
    ['fit', '--examples'],
    ['score', '--input'],
  ]) {
    const out =
      cmd[0] === 'fit'
        ? ['--out', path.join(dir, 'x.arm.safetensors'), ...QUICK]
        : ['--rm', path.join(dir, 'none.arm.safetensors'), '--output', path.join(dir, 'x.jsonl')];
    const a = arm([cmd[0]!, '--model', STORIES, cmd[1]!, invalidFirst, ...out], { expectFail: true });
    expect(a.stderr).toContain(`arm: ${invalidFirst}:3: field "rejected" is missing`);
    const b = arm([cmd[0]!, '--model', STORIES, cmd[1]!, longFirst, ...out], { expectFail: true });
    expect(b.stderr).toContain(`arm: ${longFirst}:2: line is longer than the limit of ${MAX_LINE_BYTES} bytes`);
  }
  expect(fs.readdirSync(dir).sort()).toEqual(['invalid-first.jsonl', 'long-first.jsonl']); // nothing written
});

it('fit --skip-invalid fits on the other rows and reports the two skipped', async () => {
  const out = path.join(dir, 'c.arm.safetensors');
  const r = await armStderr([
    'fit',
    '--model',
    STORIES,
    '--examples',
    invalidFirst,
    '--out',
    out,
    ...QUICK,
    '--skip-invalid',
  ]);
  expect(r.code).toBe(0);
  for (const line of reasons(invalidFirst, 3, 6)) expect(r.stderr).toContain(line);
  expect(r.stderr).toContain(`skipped 2 invalid rows of ${invalidFirst} (--skip-invalid)`);
  expect(r.stderr).toMatch(/; 10 examples, 2 invalid rows skipped\n/);
  const meta = JSON.parse(arm(['inspect', out, '--json']).stdout);
  expect(meta.examples.ids).toEqual(fewIds);
});

it('score --skip-invalid scores the other rows, in order, and counts the skipped in its summary', async () => {
  const criterion = path.join(dir, 'c2.arm.safetensors');
  arm(['fit', '--model', STORIES, '--examples', FEW, '--out', criterion, ...QUICK]);
  const output = path.join(dir, 'scored.jsonl');
  const r = await armStderr([
    'score',
    '--model',
    STORIES,
    '--rm',
    criterion,
    '--input',
    longFirst,
    '--output',
    output,
    '--skip-invalid',
  ]);
  expect(r.code).toBe(0);
  for (const line of reasons(longFirst, 5, 2)) expect(r.stderr).toContain(line);
  expect(r.stderr).toMatch(
    new RegExp(`scored 10 rows → \\S+; skipped 2 invalid rows; pairs: accuracy [0-9.]+ \\(\\d+/${fewPairs},`),
  );
  const rows = fs
    .readFileSync(output, 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l));
  expect(rows.map((x) => x.id)).toEqual(fewIds);
  for (const row of rows) {
    if ('chosen' in row) expect(row.arm.correct).toBe(row.arm.chosen > row.arm.rejected);
    else expect(row.arm.reward).toBeGreaterThan(0);
  }
});
