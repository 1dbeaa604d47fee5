// `arm score --shard i/n` then `arm merge --output`: three shards run as separate processes and merged are the
// unsharded run's bytes and summary; a missing, duplicated, unfinished or mismatched shard is refused by name.
import { beforeAll, describe, expect, it } from 'vitest';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { tempDir } from '../helpers/fixtures.js';
import { armIn, armInBackground } from './shard-helpers.js';

const ROOT = path.resolve(import.meta.dirname, '../..');
const MODEL = path.join(ROOT, 'models/icl-tiny');
const TEMPLATE = ['--template-text', '{prompt} {response}'];

let dir: string;
let input: string;
let criterion: string;
let fullSummary: string;
const scoreArgs = (output: string, rm = criterion) => [
  'score',
  '--model',
  MODEL,
  '--rm',
  rm,
  '--input',
  input,
  '--output',
  output,
  '--chunk-rows',
  '16',
  '--quiet',
];
/** The summary line `score` and `merge` end with, without the output's path. */
const summaryOf = (stderr: string) => /scored \d+ rows → \S+(.*)/.exec(stderr)![1];
/** Copies the named shard files of `from` (a folder) into a new folder; returns it. */
function copyShards(from: string, names: string[]): string {
  const to = tempDir('arm-shards-');
  for (const n of names) fs.copyFileSync(path.join(from, n), path.join(to, n));
  return to;
}
const files = (i: number) => [`sharded.shard-${i}-of-3.json`, `sharded.shard-${i}-of-3.jsonl`];

beforeAll(async () => {
  dir = tempDir();
  // 168 pairs and 12 items of the bundled examples: 12 chunks of 16, so 4 per shard.
  input = path.join(dir, 'input.jsonl');
  const pairs = ['last-low', 'max-high'].map((c) =>
    fs.readFileSync(path.join(ROOT, `examples/icl-tiny/${c}/test.jsonl`)),
  );
  const items = Array.from({ length: 12 }, (_, i) =>
    JSON.stringify({ id: `item-${i}`, prompt: `w${i} w${i + 1}`, response: `w${i + 2} w${i + 3}` }),
  );
  fs.writeFileSync(input, `${Buffer.concat(pairs).toString().trim()}\n${items.join('\n')}\n`);
  criterion = path.join(dir, 'c.arm.safetensors');
  const few = path.join(ROOT, 'examples/icl-tiny/max-high/few.jsonl');
  const fit = ['fit', '--model', MODEL, ...TEMPLATE, '--examples', few, '--passes', '8', '--steps', '20', '--quiet'];
  armIn(dir, [...fit, '--out', criterion]);
  fullSummary = summaryOf(armIn(dir, scoreArgs('full.jsonl')).stderr)!;
  await Promise.all([0, 1, 2].map((i) => armInBackground(dir, [...scoreArgs('sharded.jsonl'), '--shard', `${i}/3`])));
}, 240_000);

it('three shards merged are the unsharded run, byte for byte, with the same summary', () => {
  for (const i of [0, 1, 2]) for (const f of files(i)) expect(fs.existsSync(path.join(dir, f)), f).toBe(true);
  const merge = armIn(dir, ['merge', '--output', 'sharded.jsonl']);
  expect(fs.readFileSync(path.join(dir, 'sharded.jsonl')).equals(fs.readFileSync(path.join(dir, 'full.jsonl')))).toBe(
    true,
  );
  expect(summaryOf(merge.stderr)).toBe(fullSummary);
  expect(fullSummary).toMatch(/pairs: accuracy 0\.\d{4} \(\d+\/168/);
  // Each shard holds whole chunks of 16 rows: 4 chunks each.
  const rows = (i: number) => JSON.parse(fs.readFileSync(path.join(dir, files(i)[0]!), 'utf8')).rows;
  expect([0, 1, 2].map(rows)).toEqual([
    { start: 0, end: 64 },
    { start: 64, end: 128 },
    { start: 128, end: 180 },
  ]);
});

/** A copy of the three finished shards whose shard 1 manifest `edit` changed; returns the folder. */
function withEditedManifest(edit: (m: Record<string, any>) => void): string {
  const copy = copyShards(dir, [0, 1, 2].flatMap(files));
  const file = path.join(copy, files(1)[0]!);
  const m = JSON.parse(fs.readFileSync(file, 'utf8'));
  edit(m);
  fs.writeFileSync(file, JSON.stringify(m));
  return copy;
}

describe('merge refuses', () => {
  it('a missing shard, naming it', () => {
    const partial = copyShards(dir, [...files(0), ...files(2)]);
    const r = armIn(partial, ['merge', '--output', 'sharded.jsonl'], { expectFail: true });
    expect(r.stderr).toMatch(/shard 1 of 3 is missing \(expected sharded\.shard-1-of-3\.json\)/);
    expect(fs.existsSync(path.join(partial, 'sharded.jsonl'))).toBe(false);
  });

  it("a shard given twice, and a manifest copied under another shard's name", () => {
    const twice = armIn(dir, ['merge', '--output', 'x.jsonl', files(0)[0]!, files(0)[0]!, files(1)[0]!], {
      expectFail: true,
    });
    expect(twice.stderr).toContain(
      'shard 0 of 3 is given 2 times: sharded.shard-0-of-3.json, sharded.shard-0-of-3.json; shard 2 of 3 is missing',
    );
    const copied = copyShards(dir, [...files(0), ...files(1)]);
    // Shard 0's manifest under shard 2's name: the manifest says which shard it is, and the name must agree.
    fs.copyFileSync(path.join(copied, files(0)[0]!), path.join(copied, files(2)[0]!));
    const r = armIn(copied, ['merge', '--output', 'sharded.jsonl'], { expectFail: true });
    expect(r.stderr).toContain(
      'sharded.shard-2-of-3.json: "shard" says shard-0-of-3 but its name says shard-2-of-3 ' +
        "(a manifest copied under another shard's name?)",
    );
    expect(fs.existsSync(path.join(copied, 'sharded.jsonl'))).toBe(false);
  });

  it('an unfinished shard, with how far it got', () => {
    const unfinished = copyShards(dir, [...files(0), ...files(2)]);
    const rows =
      fs
        .readFileSync(path.join(dir, files(1)[1]!), 'utf8')
        .split('\n')
        .slice(0, 5)
        .join('\n') + '\n';
    fs.writeFileSync(path.join(unfinished, `${files(1)[1]}.part`), rows);
    const r = armIn(unfinished, ['merge', '--output', 'sharded.jsonl'], { expectFail: true });
    expect(r.stderr).toMatch(/sharded\.shard-1-of-3\.jsonl\.part is not finished: 5 rows scored so far/);
  });

  it('a shard of another run (another criterion), naming the field', () => {
    const other = copyShards(dir, [...files(0), ...files(2)]);
    const otherCriterion = path.join(other, 'other.arm.safetensors');
    const few = path.join(ROOT, 'examples/icl-tiny/last-low/few.jsonl');
    const fit = ['fit', '--model', MODEL, ...TEMPLATE, '--examples', few, '--passes', '8', '--steps', '20'];
    armIn(other, [...fit, '--out', otherCriterion, '--quiet']);
    armIn(other, [...scoreArgs('sharded.jsonl', otherCriterion), '--shard', '1/3']);
    const r = armIn(other, ['merge', '--output', 'sharded.jsonl'], { expectFail: true });
    expect(r.stderr).toContain(
      'sharded.shard-1-of-3.json is a shard of another scoring run than sharded.shard-0-of-3.json: different criteria',
    );
  }, 120_000);

  it('shards of different counts', () => {
    const mixed = copyShards(dir, [...files(0), ...files(1)]);
    const m = JSON.parse(fs.readFileSync(path.join(dir, files(2)[0]!), 'utf8'));
    fs.writeFileSync(
      path.join(mixed, 'sharded.shard-2-of-4.json'),
      JSON.stringify({ ...m, shard: { index: 2, count: 4 }, output: 'sharded.shard-2-of-4.jsonl' }),
    );
    fs.copyFileSync(path.join(dir, files(2)[1]!), path.join(mixed, 'sharded.shard-2-of-4.jsonl'));
    const r = armIn(mixed, ['merge', '--output', 'sharded.jsonl'], { expectFail: true });
    expect(r.stderr).toMatch(/cut in different counts \(3, 4\)/);
  });
});

it("a shard's partial output is measured against the shard's rows, not the whole input's", () => {
  const folder = tempDir('arm-shards-');
  const manifest = JSON.parse(fs.readFileSync(path.join(dir, files(1)[0]!), 'utf8'));
  const rowsFile = path.join(folder, files(1)[1]!);
  fs.writeFileSync(
    `${rowsFile}.score-checkpoint.json`,
    JSON.stringify({ ...manifest.run, shard: { ...manifest.shard, rows: manifest.rows } }),
  );
  // Shard 1's 64 rows and 6 more: fewer than the input's 180, more than the shard has.
  const full = fs.readFileSync(path.join(dir, 'full.jsonl'), 'utf8').split('\n');
  fs.writeFileSync(`${rowsFile}.part`, full.slice(64, 134).join('\n') + '\n');
  const r = armIn(folder, [...scoreArgs('sharded.jsonl'), '--shard', '1/3'], { expectFail: true });
  expect(r.stderr).toContain(`sharded.shard-1-of-3.jsonl.part holds 70 rows but shard 1 of 3 of ${input} has 64`);
});

it('a shard records the package version, device and effective thread count; merge refuses another', () => {
  const m = JSON.parse(fs.readFileSync(path.join(dir, files(0)[0]!), 'utf8'));
  const pkg = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8'));
  expect(m.run.armVersion).toBe(pkg.version);
  // No --threads: the count onnxruntime ran with, so shards on machines of other sizes do not compare equal.
  expect(m.run.options).toMatchObject({ device: 'cpu', threads: os.availableParallelism() });
  for (const [field, value, said] of [
    ['threads', 1000, `threads: ${os.availableParallelism()} vs 1000`],
    ['device', 'webgpu', 'device: "cpu" vs "webgpu"'],
  ] as const) {
    const other = copyShards(dir, [...files(0), ...files(1), ...files(2)]);
    const file = path.join(other, files(1)[0]!);
    const shard = JSON.parse(fs.readFileSync(file, 'utf8'));
    shard.run.options[field] = value;
    fs.writeFileSync(file, JSON.stringify(shard));
    const r = armIn(other, ['merge', '--output', 'sharded.jsonl'], { expectFail: true });
    expect(r.stderr).toContain(`sharded.shard-1-of-3.json is a shard of another scoring run than`);
    expect(r.stderr).toContain(`different ${said}`);
  }
});

describe('merge refuses a malformed manifest, naming the file and field, and writes nothing', () => {
  const refused = (edit: (m: Record<string, any>) => void, message: string) => {
    const copy = withEditedManifest(edit);
    const r = armIn(copy, ['merge', '--output', 'sharded.jsonl'], { expectFail: true });
    expect(r.stderr).toContain(`sharded.shard-1-of-3.json: ${message}`);
    expect(fs.readdirSync(copy).filter((f) => !f.includes('.shard-'))).toEqual([]);
    return r;
  };

  it('a field missing or of the wrong type', () => {
    refused((m) => delete m.shard, '"shard" should be an object, got absent');
    refused((m) => delete m.rows, '"rows" should be an object, got absent');
    refused((m) => (m.rows.end = -1), '"rows.end" should be an integer ≥ 0, got -1');
    refused((m) => (m.run.options.threads = '8'), '"run.options.threads" should be an integer ≥ 1, got "8"');
    refused((m) => delete m.run.input, '"run.input" should be an object, got absent');
    refused((m) => (m.shard.index = 3), '"shard" is 3 of 3, which no run has (0 to 2)');
    refused((m) => (m.rows.end = 1000), '"rows" is 64–1000, not a range within 0–180');
  });

  it('an output path other than the rows file beside it: never read', () => {
    const secret = path.join(tempDir(), 'secret.jsonl');
    fs.writeFileSync(secret, '{"arm":{"reward":1,"tooLong":false},"secret":"do-not-print"}\n');
    const r = refused(
      (m) => (m.output = path.relative(dir, secret)),
      `"output" is ${JSON.stringify(path.relative(dir, secret))}, but a shard's rows are the file beside its ` +
        'manifest, sharded.shard-1-of-3.jsonl',
    );
    expect(r.stderr + r.stdout).not.toContain('do-not-print');
    // Another shard's rows: their rows would be merged twice.
    refused((m) => (m.output = files(0)[1]), '"output" is "sharded.shard-0-of-3.jsonl"');
  });
});

it('a shard whose rows are complete but whose manifest was not written is unfinished, not missing', () => {
  const copy = copyShards(dir, [...files(0), ...files(2), files(1)[1]!]);
  const r = armIn(copy, ['merge', '--output', 'sharded.jsonl'], { expectFail: true });
  expect(r.stderr).toContain(
    'sharded.shard-1-of-3.jsonl is not finished: its rows are complete but its manifest was not written',
  );
  expect(r.stderr).toContain('run its command again to finish it');
  expect(r.stderr).not.toContain('is missing');
});

it('a finished shard run again (a whole array resubmitted, a retry) says it is done and leaves its files', () => {
  const copy = copyShards(dir, [0, 1, 2].flatMap(files));
  const manifest = path.join(copy, files(1)[0]!);
  const before = fs.readFileSync(manifest, 'utf8');
  fs.utimesSync(manifest, new Date(0), new Date(0));
  const r = armIn(copy, [...scoreArgs('sharded.jsonl'), '--shard', '1/3']);
  expect(r.stderr).toContain(
    'shard 1 of 3 is already done (sharded.shard-1-of-3.json says this run): nothing to score',
  );
  expect(fs.readFileSync(manifest, 'utf8')).toBe(before);
  expect(fs.statSync(manifest).mtimeMs).toBe(0);
  expect(fs.readdirSync(copy).sort()).toEqual([0, 1, 2].flatMap(files).sort());
  // Another run's shard under the same name is scored again, as before.
  const other = armIn(copy, [...scoreArgs('sharded.jsonl'), '--shard', '1/3', '--batch-size', '3']);
  expect(other.stderr).not.toContain('already done');
  expect(JSON.parse(fs.readFileSync(manifest, 'utf8')).run.options.batchSize).toBe(3);
  armIn(copy, ['merge', '--output', 'sharded.jsonl'], { expectFail: true });
});

describe('merged shards are the unsharded run', () => {
  /** Scores `args` unsharded into full.jsonl and as 3 shards merged into sharded.jsonl in a new folder. */
  async function both(args: (output: string) => string[]): Promise<{ folder: string; full: string; merge: string }> {
    const folder = tempDir('arm-shards-');
    const full = armIn(folder, args('full.jsonl')).stderr;
    await Promise.all([0, 1, 2].map((i) => armInBackground(folder, [...args('sharded.jsonl'), '--shard', `${i}/3`])));
    const merge = armIn(folder, ['merge', '--output', 'sharded.jsonl']).stderr;
    const bytes = (f: string) => fs.readFileSync(path.join(folder, f));
    expect(bytes('sharded.jsonl').equals(bytes('full.jsonl'))).toBe(true);
    expect(summaryOf(merge)).toBe(summaryOf(full));
    return { folder, full, merge };
  }

  it('with --skip-invalid and invalid rows on chunk and shard boundaries', async () => {
    // Invalid lines first, between chunks 0 and 1 (after usable row 16), on the shard 0 | 1 boundary (row 64), and
    // last: the chunks are cut in usable rows, so every shard still holds whole chunks of the unsharded run.
    const lines = fs.readFileSync(input, 'utf8').trim().split('\n');
    const bad = (n: number) => [`{"id":"bad-${n}","prompt":"no response"}`, `{not json ${n}`];
    const withBad = [
      ...bad(0),
      ...lines.slice(0, 16),
      ...bad(1),
      ...lines.slice(16, 64),
      ...bad(2),
      ...lines.slice(64),
    ];
    const dirty = path.join(tempDir(), 'dirty.jsonl');
    fs.writeFileSync(dirty, [...withBad, ...bad(3)].join('\n') + '\n');
    const args = (output: string) => {
      const a = scoreArgs(output);
      a[a.indexOf(input)] = dirty;
      return [...a, '--skip-invalid'];
    };
    const { merge, folder } = await both(args);
    expect(summaryOf(merge)).toMatch(/^ skipped 8 invalid rows; pairs: accuracy/);
    const rows = (i: number) => JSON.parse(fs.readFileSync(path.join(folder, files(i)[0]!), 'utf8')).rows;
    expect([0, 1, 2].map(rows)).toEqual([
      { start: 0, end: 64 },
      { start: 64, end: 128 },
      { start: 128, end: 180 },
    ]);
  }, 120_000);

  it('with several named criteria (--rm name=file: "arm" holds each under its name)', async () => {
    const other = path.join(tempDir(), 'last-low.arm.safetensors');
    const few = path.join(ROOT, 'examples/icl-tiny/last-low/few.jsonl');
    armIn(dir, [
      'fit',
      '--model',
      MODEL,
      ...TEMPLATE,
      '--examples',
      few,
      '--passes',
      '8',
      '--steps',
      '20',
      '--quiet',
      '--out',
      other,
    ]);
    const args = (output: string) => {
      const a = scoreArgs(output);
      a.splice(a.indexOf('--rm'), 2, '--rm', `max=${criterion}`, '--rm', `last=${other}`);
      return a;
    };
    const { folder, merge } = await both(args);
    const first = JSON.parse(fs.readFileSync(path.join(folder, 'sharded.jsonl'), 'utf8').split('\n')[0]!);
    expect(Object.keys(first.arm)).toEqual(['max', 'last']);
    expect(summaryOf(merge)).toMatch(/pairs: accuracy max 0\.\d{4} \(\d+\/168\), last 0\.\d{4} \(\d+\/168\)/);
  }, 120_000);
});
