// What `arm fit` and `arm score` may write, and what a failed or interrupted fit leaves behind.
import { beforeAll, expect, it } from 'vitest';
import fs from 'node:fs';
import path from 'node:path';
import { createHash } from 'node:crypto';
import { arm, armSpawn } from '../helpers/cli.js';
import { STORIES, tempDir } from '../helpers/fixtures.js';

const EXAMPLES = path.resolve(import.meta.dirname, '../../examples/concise');
const FEW = path.join(EXAMPLES, 'few.jsonl');
const ITEMS = path.join(EXAMPLES, 'items.jsonl');
const QUICK = ['--passes', '4', '--heads', 'random:2'];
const sha = (file: string) => createHash('sha256').update(fs.readFileSync(file)).digest('hex');

/** A private copy of stories260K: a test that overwrites a model file must never reach the shared one. */
function copyOfStories(): string {
  const dir = tempDir('arm-model-');
  for (const f of fs.readdirSync(STORIES)) fs.copyFileSync(path.join(STORIES, f), path.join(dir, f));
  return dir;
}

let criterion: string;
beforeAll(() => {
  criterion = path.join(tempDir(), 'c.arm.safetensors');
  arm(['fit', '--model', STORIES, '--examples', FEW, '--out', criterion, ...QUICK]);
});

it('fit refuses to write over a file of the model folder, even by another path', () => {
  const model = copyOfStories();
  const weights = path.join(model, 'model.safetensors');
  const before = sha(weights);
  const link = path.join(tempDir(), 'weights-link.safetensors');
  fs.symlinkSync(weights, link);
  for (const out of [weights, path.join(model, '.', 'sub', '..', 'model.safetensors'), link]) {
    const r = arm(['fit', '--model', model, '--examples', FEW, '--out', out, ...QUICK], { expectFail: true });
    expect(r.status).toBe(1);
    expect(r.stderr).toContain(`--out ${out}: is a file of the model folder`);
    expect(r.stderr).toMatch(/refusing to write over it/);
  }
  // --force does not make an input writable
  expect(
    arm(['fit', '--model', model, '--examples', FEW, '--out', weights, '--force', ...QUICK], { expectFail: true })
      .stderr,
  ).toMatch(/is a file of the model folder/);
  expect(sha(weights)).toBe(before);
  expect(fs.readdirSync(model).filter((f) => /\.tmp-|fit-checkpoint/.test(f))).toEqual([]);
});

it('fit refuses to write over its examples file', () => {
  const dir = tempDir();
  const examples = path.join(dir, 'few.jsonl');
  fs.copyFileSync(FEW, examples);
  fs.linkSync(examples, path.join(dir, 'hard-link.jsonl'));
  for (const out of [examples, path.join(dir, 'hard-link.jsonl')]) {
    const r = arm(['fit', '--model', STORIES, '--examples', examples, '--out', out, ...QUICK], { expectFail: true });
    expect(r.stderr).toContain(`--out ${out}: is the examples file`);
  }
  expect(fs.readFileSync(examples, 'utf8')).toBe(fs.readFileSync(FEW, 'utf8'));
});

it('fit overwrites an existing criterion file, and any other file only with --force', () => {
  const dir = tempDir();
  const notes = path.join(dir, 'notes.txt');
  fs.writeFileSync(notes, 'my notes\n');
  const r = arm(['fit', '--model', STORIES, '--examples', FEW, '--out', notes, ...QUICK], { expectFail: true });
  expect(r.stderr).toContain(
    `--out ${notes}: exists and is not a criterion file (no "arm" metadata); ` +
      'refusing to overwrite it (--force overrides)',
  );
  expect(fs.readFileSync(notes, 'utf8')).toBe('my notes\n');
  arm(['fit', '--model', STORIES, '--examples', FEW, '--out', notes, '--force', ...QUICK]);
  expect(JSON.parse(arm(['inspect', notes, '--json']).stdout).heads).toHaveLength(2);
  const again = path.join(dir, 'again.arm.safetensors');
  fs.copyFileSync(criterion, again);
  arm(['fit', '--model', STORIES, '--examples', FEW, '--out', again, ...QUICK, '--seed', '7']);
  expect(JSON.parse(arm(['inspect', again, '--json']).stdout).seed).toBe(7);
});

it('fit checks the output folder before loading the model', () => {
  const file = path.join(tempDir(), 'a-file');
  fs.writeFileSync(file, '');
  const out = path.join(file, 'sub', 'c.arm.safetensors'); // a folder cannot be made under a file
  // The model does not exist either: the output is checked first, so that is the error reported.
  const r = arm(['fit', '--model', path.join(tempDir(), 'no-model'), '--examples', FEW, '--out', out], {
    expectFail: true,
  });
  expect(r.stderr).toMatch(
    new RegExp(`--out ${out.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}: cannot create its folder .*ENOTDIR`),
  );
  const created = path.join(tempDir(), 'new', 'deeper');
  const r2 = arm(
    [
      'fit',
      '--model',
      path.join(tempDir(), 'no-model'),
      '--examples',
      FEW,
      '--out',
      path.join(created, 'c.arm.safetensors'),
    ],
    { expectFail: true },
  );
  expect(r2.stderr).toMatch(/no-model/);
  expect(fs.existsSync(path.dirname(created))).toBe(false); // the folders it made for the output are gone again
});

it('score refuses to write over its input, the criterion or a model file', () => {
  const dir = tempDir();
  const input = path.join(dir, 'items.jsonl');
  fs.copyFileSync(ITEMS, input);
  const rm = path.join(dir, 'c.arm.safetensors');
  fs.copyFileSync(criterion, rm);
  for (const [output, what] of [
    [path.join(dir, '.', 'items.jsonl'), 'the --input file'],
    [rm, 'the --rm criterion file'],
  ] as const) {
    const r = arm(['score', '--model', STORIES, '--rm', rm, '--input', input, '--output', output], {
      expectFail: true,
    });
    expect(r.stderr).toContain(`--output ${output}: is ${what}`);
  }
  expect(sha(input)).toBe(sha(ITEMS));
  expect(sha(rm)).toBe(sha(criterion));
  expect(fs.readdirSync(dir).sort()).toEqual(['c.arm.safetensors', 'items.jsonl']);
});

it('SOURCE_DATE_EPOCH: two fits with the same seed write byte-identical files', () => {
  const dir = tempDir();
  const fit = (name: string) => {
    arm(
      [
        'fit',
        '--model',
        STORIES,
        '--examples',
        FEW,
        '--out',
        path.join(dir, name),
        '--passes',
        '6',
        '--steps',
        '8',
        '--samples',
        '8',
        '--seed',
        '4',
      ],
      { env: { SOURCE_DATE_EPOCH: '1700000000' } },
    );
    return sha(path.join(dir, name));
  };
  expect(fit('a.arm.safetensors')).toBe(fit('b.arm.safetensors'));
  expect(arm(['inspect', path.join(dir, 'a.arm.safetensors')]).stdout).toMatch(/0\.0 s; 2023-11-14T22:13:20\.000Z/);
});

it('Ctrl-C during mean extraction stops it after the current batch and saves the passes done', async () => {
  const out = path.join(tempDir(), 'c.arm.safetensors');
  // Many more passes than run before the signal: finishing them instead of stopping takes a minute or more.
  const run = armSpawn([
    'fit',
    '--model',
    STORIES,
    '--examples',
    FEW,
    '--out',
    out,
    '--passes',
    '400',
    '--batch-size',
    '1',
    '--steps',
    '1',
  ]);
  try {
    const t0 = Date.now();
    while (!run.stderr().includes('fitting ') && Date.now() - t0 < 30_000) await new Promise((r) => setTimeout(r, 50));
    expect(run.stderr()).toContain('fitting ');
    await new Promise((r) => setTimeout(r, 4000)); // into mean extraction (rendering 400 passes takes ~3 s)
    run.child.kill('SIGINT');
    const signalled = Date.now();
    const { code } = await run.exited;
    expect(Date.now() - signalled).toBeLessThan(10_000);
    expect(code).toBe(130);
    expect(run.stderr()).toContain(
      `interrupted; progress saved to ${out}.fit-checkpoint.json (continue with --resume)`,
    );
    const saved = JSON.parse(fs.readFileSync(`${out}.fit-checkpoint.json`, 'utf8'));
    expect(saved.mu).toBe(''); // still in mean extraction
    expect(saved.meansDone.passes.length).toBeLessThan(400);
    expect(fs.existsSync(out)).toBe(false);
  } finally {
    run.child.kill('SIGKILL');
  }
}, 60_000);
