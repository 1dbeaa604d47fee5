// `arm score` streams: rows are appended to <output>.part chunk by chunk, an interrupted run continues to the
// same bytes, a partial output of another run is refused, and memory holds one chunk, not the input.
import { beforeAll, expect, it } from 'vitest';
import fs from 'node:fs';
import path from 'node:path';
import { arm, armSpawn } from '../helpers/cli.js';
import { STORIES, tempDir } from '../helpers/fixtures.js';

const FEW = path.resolve(import.meta.dirname, '../../examples/concise/few.jsonl');
const ROWS = 1200;
const CHUNK = 16;

let criterion: string;
let input: string;
let full: string; // the uninterrupted run's output
beforeAll(() => {
  const dir = tempDir();
  criterion = path.join(dir, 'c.arm.safetensors');
  arm(['fit', '--model', STORIES, '--examples', FEW, '--out', criterion, '--passes', '4', '--heads', 'random:3']);
  // Pairs and items, some items sharing a prompt with their neighbours (scored as one prefix group).
  input = path.join(dir, 'items.jsonl');
  fs.writeFileSync(
    input,
    Array.from({ length: ROWS }, (_, i) =>
      JSON.stringify(
        i % 3 === 0
          ? { id: `p${i}`, prompt: `What is ${i} plus one?`, chosen: `${i + 1}.`, rejected: `It is ${i + 7}, surely!` }
          : {
              id: `s${i}`,
              prompt: `Name a colour, ${Math.floor(i / 4)}.`,
              response: i % 2 ? 'Blue.' : 'A very long list of colours follows.',
            },
      ),
    ).join('\n') + '\n',
  );
  full = path.join(dir, 'full.jsonl');
  arm([
    'score',
    '--model',
    STORIES,
    '--rm',
    criterion,
    '--input',
    input,
    '--output',
    full,
    '--chunk-rows',
    String(CHUNK),
  ]);
});

const scoreArgs = (output: string, more: string[] = []) => [
  'score',
  '--model',
  STORIES,
  '--rm',
  criterion,
  '--input',
  input,
  '--output',
  output,
  '--chunk-rows',
  String(CHUNK),
  ...more,
];
const completeLines = (file: string) => {
  const t = fs.readFileSync(file, 'utf8');
  return t
    .slice(0, t.lastIndexOf('\n') + 1)
    .split('\n')
    .filter(Boolean);
};

async function waitFor(what: string, cond: () => boolean, ms = 60_000): Promise<void> {
  const t0 = Date.now();
  while (!cond()) {
    if (Date.now() - t0 > ms) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Starts a score run and stops it (SIGKILL or SIGINT) once its part file holds some rows; returns the rows kept. */
async function interruptedRun(
  output: string,
  signal: 'SIGKILL' | 'SIGINT',
): Promise<{ code: number | null; stderr: string; rows: number }> {
  const run = armSpawn(scoreArgs(output));
  try {
    await waitFor(
      `${output}.part to hold rows`,
      () => fs.existsSync(`${output}.part`) && fs.statSync(`${output}.part`).size > 0,
    );
    run.child.kill(signal);
    const { code } = await run.exited;
    return { code, stderr: run.stderr(), rows: completeLines(`${output}.part`).length };
  } finally {
    run.child.kill('SIGKILL');
  }
}

it('the uninterrupted run scores every row, in input order', () => {
  const rows = fs
    .readFileSync(full, 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l));
  const inputRows = fs
    .readFileSync(input, 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l));
  expect(rows.map((r) => r.id)).toEqual(inputRows.map((r) => r.id));
  rows.forEach((r, i) => {
    expect({ ...r, arm: undefined }).toEqual({ ...inputRows[i], arm: undefined });
    if ('chosen' in r) expect(r.arm.correct).toBe(r.arm.chosen > r.arm.rejected);
    else expect(r.arm.reward).toBeGreaterThan(0);
  });
  expect(fs.existsSync(`${full}.part`)).toBe(false);
  expect(fs.existsSync(`${full}.score-checkpoint.json`)).toBe(false);
});

it('a run killed part-way, with a half-written last row, continues to the bytes of an uninterrupted run', async () => {
  const output = path.join(tempDir(), 'scored.jsonl');
  const { rows } = await interruptedRun(output, 'SIGKILL');
  expect(rows).toBeGreaterThan(0);
  expect(rows).toBeLessThan(ROWS);
  expect(fs.existsSync(output)).toBe(false); // the output appears only complete
  // Rows written so far are the uninterrupted run's rows, already on disk while the run went on.
  const fullLines = fs.readFileSync(full, 'utf8').split('\n');
  expect(completeLines(`${output}.part`)).toEqual(fullLines.slice(0, rows));
  // Leave the part file mid-chunk (5 rows short of the chunks written) and ending in half a row, as a crash in
  // the middle of an append would: the chunk holding the first missing row is scored again from its start.
  const kept = Math.max(1, rows - 5);
  fs.writeFileSync(`${output}.part`, fullLines.slice(0, kept).join('\n') + '\n' + fullLines[kept]!.slice(0, 40));
  arm(scoreArgs(output)); // the same command, no flag
  expect(fs.readFileSync(output, 'utf8')).toBe(fs.readFileSync(full, 'utf8'));
  expect(fs.existsSync(`${output}.part`)).toBe(false);
  expect(fs.existsSync(`${output}.score-checkpoint.json`)).toBe(false);
}, 120_000);

it('reports what it resumed, drops the torn row and gives the same summary as an uninterrupted run', async () => {
  const output = path.join(tempDir(), 'scored.jsonl');
  const { rows } = await interruptedRun(output, 'SIGKILL');
  fs.appendFileSync(`${output}.part`, '{"id":"p9","prompt":"What is 9');
  const run = armSpawn(scoreArgs(output));
  const { code } = await run.exited;
  expect(code).toBe(0);
  expect(run.stderr()).toContain(`resuming: ${rows} of ${ROWS} rows already scored in ${output}.part`);
  expect(run.stderr()).toMatch(
    new RegExp(
      `dropped a half-written last row \\(30 bytes\\) from ${output.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}\\.part`,
    ),
  );
  const summary = (s: string) =>
    s
      .split('\n')
      .find((l) => l.startsWith('scored '))!
      .replace(/ → [^;]+/, '');
  const fullRun = armSpawn(scoreArgs(path.join(tempDir(), 'again.jsonl')));
  await fullRun.exited;
  // Accuracy and counts cover every row, the ones scored before the interruption included.
  expect(summary(run.stderr())).toBe(summary(fullRun.stderr()));
  expect(summary(run.stderr())).toMatch(
    new RegExp(`^scored ${ROWS} rows; pairs: accuracy [0-9.]+ \\(\\d+/${ROWS / 3},`),
  );
  expect(fs.readFileSync(output, 'utf8')).toBe(fs.readFileSync(full, 'utf8'));
}, 120_000);

it('Ctrl-C stops after the chunk; a partial output of another input, criterion or chunking is refused', async () => {
  const dir = tempDir();
  const output = path.join(dir, 'scored.jsonl');
  const { code, stderr, rows } = await interruptedRun(output, 'SIGINT');
  expect(code).toBe(130);
  expect(stderr).toContain(
    `interrupted after ${rows} of ${ROWS} rows, kept in ${output}.part; run the same command again to continue`,
  );
  expect(rows % CHUNK).toBe(0); // whole chunks only
  expect(fs.readFileSync(`${output}.part`, 'utf8').endsWith('\n')).toBe(true);
  const partBefore = fs.readFileSync(`${output}.part`, 'utf8');

  const otherInput = path.join(dir, 'other.jsonl');
  fs.writeFileSync(otherInput, fs.readFileSync(input, 'utf8').replace('What is 0 plus one?', 'What is zero plus one?'));
  const r1 = arm(
    [
      'score',
      '--model',
      STORIES,
      '--rm',
      criterion,
      '--input',
      otherInput,
      '--output',
      output,
      '--chunk-rows',
      String(CHUNK),
    ],
    { expectFail: true },
  );
  expect(r1.stderr).toContain(`${output}.part holds rows of another scoring run (different input: ${input} sha256 `);
  expect(r1.stderr).toContain(`vs ${otherInput} sha256 `);
  expect(r1.stderr).toContain(
    `remove ${output}.part and ${output}.score-checkpoint.json, or pass --restart, to start over`,
  );

  const otherCriterion = path.join(dir, 'other.arm.safetensors');
  arm([
    'fit',
    '--model',
    STORIES,
    '--examples',
    FEW,
    '--out',
    otherCriterion,
    '--passes',
    '4',
    '--heads',
    'random:3',
    '--seed',
    '5',
  ]);
  const r2 = arm(
    [
      'score',
      '--model',
      STORIES,
      '--rm',
      otherCriterion,
      '--input',
      input,
      '--output',
      output,
      '--chunk-rows',
      String(CHUNK),
    ],
    { expectFail: true },
  );
  expect(r2.stderr).toMatch(
    /holds rows of another scoring run \(different criteria: .*c\.arm\.safetensors vs .*other\.arm\.safetensors/,
  );
  const r3 = arm([...scoreArgs(output).slice(0, -1), String(CHUNK * 2)], { expectFail: true });
  expect(r3.stderr).toContain('(different chunkRows: 16 vs 32)');
  // Refusals touch nothing: the same command still continues it, to the uninterrupted bytes.
  expect(fs.readFileSync(`${output}.part`, 'utf8')).toBe(partBefore);
  arm(scoreArgs(output));
  expect(fs.readFileSync(output, 'utf8')).toBe(fs.readFileSync(full, 'utf8'));

  // --restart discards a partial output instead; a part file without its checkpoint is refused.
  fs.writeFileSync(`${output}.part`, partBefore);
  expect(arm(scoreArgs(output), { expectFail: true }).stderr).toContain(
    `${output}.part exists without ${output}.score-checkpoint.json`,
  );
  arm(scoreArgs(output, ['--restart']));
  expect(fs.readFileSync(output, 'utf8')).toBe(fs.readFileSync(full, 'utf8'));
}, 180_000);

it('holds one chunk of rows, not the input: 120 MB of rows score under a 96 MB heap', () => {
  // 3000 rows of 40 kB each: holding them all (as `arm score` did before streaming) runs out of a 96 MB heap.
  const dir = tempDir();
  const big = path.join(dir, 'big.jsonl');
  const note = 'x'.repeat(40_000);
  const fd = fs.openSync(big, 'w');
  for (let i = 0; i < 3000; i++)
    fs.writeSync(
      fd,
      `${JSON.stringify({ id: `r${i}`, prompt: 'Is the sky blue?', response: `Yes ${i % 7}.`, note })}\n`,
    );
  fs.closeSync(fd);
  const output = path.join(dir, 'scored.jsonl');
  try {
    arm(['score', '--model', STORIES, '--rm', criterion, '--input', big, '--output', output, '--chunk-rows', '100'], {
      env: { NODE_OPTIONS: `${process.env.NODE_OPTIONS ?? ''} --max-old-space-size=96` },
    });
    const lines = completeLines(output);
    expect(lines).toHaveLength(3000);
    for (const i of [0, 1234, 2999]) {
      const row = JSON.parse(lines[i]!);
      expect(row.id).toBe(`r${i}`);
      expect(row.note).toBe(note);
      expect(row.arm.reward).toBeGreaterThan(0);
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}, 120_000);

it('an input that grows while it is scored is refused, not cut at the rows counted first', async () => {
  // Rows of 2.5 kB: the first 1 MB read holds 400 of them, so the reader is far from the end when rows are added.
  const dir = tempDir();
  const grown = path.join(dir, 'grown.jsonl');
  const note = 'x'.repeat(2500);
  const lines = fs.readFileSync(input, 'utf8').trim().split('\n');
  fs.writeFileSync(grown, lines.map((l) => `${l.slice(0, -1)},"note":"${note}"}\n`).join(''));
  const output = path.join(dir, 'scored.jsonl');
  const run = armSpawn(['score', '--model', STORIES, '--rm', criterion, '--input', grown, '--output', output]);
  try {
    await waitFor(
      `${output}.part to hold rows`,
      () => fs.existsSync(`${output}.part`) && completeLines(`${output}.part`).length > 0,
    );
    // Stopped while its rows are appended to, so that the run sees them before it reaches the end.
    run.child.kill('SIGSTOP');
    fs.appendFileSync(
      grown,
      lines
        .slice(0, 20)
        .map((l) => l.replace(/"id":"(\w+)"/, '"id":"$1-again"') + '\n')
        .join(''),
    );
    run.child.kill('SIGCONT');
    const { code } = await run.exited;
    expect(run.stderr()).toContain(
      `${grown} changed while it was scored (${ROWS} rows when checked, more when scored)`,
    );
    expect(code).toBe(1);
    expect(fs.existsSync(output)).toBe(false);
  } finally {
    run.child.kill('SIGKILL');
  }
}, 120_000);
