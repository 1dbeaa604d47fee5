// `arm eval --shard i/n` then `arm merge --output-dir`: three shards run as separate processes and merged write the
// unsharded run's report.md (wall-time column aside), results.json (wall times and date aside), items.jsonl
// (`seconds` aside) and run.json; a missing, duplicated, unfinished or mismatched shard is refused by name.
import { beforeAll, describe, expect, it } from 'vitest';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { tempDir } from '../helpers/fixtures.js';
import { armIn, armInBackground } from './shard-helpers.js';

const ROOT = path.resolve(import.meta.dirname, '../..');
let data: string;
let unsharded: string; // the folder the unsharded run ran in (its results in out/)
let sharded: string; // the folder the shards ran in (out/shard-<i>-of-3/, merged into out/)

const evalArgs = (more: string[] = []) => [
  'eval',
  '--model',
  path.join(ROOT, 'models/icl-tiny'),
  '--template-text',
  '{prompt} {response}',
  '--dataset',
  data,
  '--methods',
  'arm,zero-shot,random-heads,pick-longer',
  '--few-shot',
  '8',
  '--seeds',
  '2',
  '--passes',
  '8',
  '--steps',
  '20',
  '--output-dir',
  'out',
  '--save-all',
  '--quiet',
  ...more,
];
const read = (folder: string, file: string) => fs.readFileSync(path.join(folder, 'out', file), 'utf8');

/** report.md with the main table's "s / pair" cells (wall time per pair) blanked. */
function withoutWallTimes(report: string): string {
  const lines = report.split('\n');
  const header = lines.findIndex((l) => l.includes('| s / pair |'));
  const column = lines[header]!.split('|').findIndex((c) => c.trim() === 's / pair');
  for (let i = header + 2; lines[i]?.startsWith('|'); i++) {
    const cells = lines[i]!.split('|');
    cells[column] = ' (wall time) ';
    lines[i] = cells.join('|');
  }
  return lines.join('\n');
}

/** A results.json value with its wall times and date removed (the fields a rerun never reproduces). */
function withoutWallTimesJson(results: unknown): unknown {
  return JSON.parse(JSON.stringify(results), (k, v) =>
    ['seconds', 'secondsPerPair', 'prepareSeconds', 'generatedAt'].includes(k) ? undefined : v,
  );
}

/** A copy of the merged folder's shard folders `indexes` in a new folder's out/; returns the new folder. */
function copyShards(indexes: number[]): string {
  const to = tempDir('arm-eval-shards-');
  for (const i of indexes)
    fs.cpSync(path.join(sharded, 'out', `shard-${i}-of-3`), path.join(to, 'out', `shard-${i}-of-3`), {
      recursive: true,
    });
  return to;
}

beforeAll(async () => {
  // Both bundled criteria's test pairs: 2 subsets × 2 seeds × 3 chunks of 32 = 12 units, 4 per shard.
  const dir = tempDir();
  data = path.join(dir, 'pairs.jsonl');
  fs.writeFileSync(
    data,
    ['last-low', 'max-high'].map((c) => fs.readFileSync(path.join(ROOT, `examples/icl-tiny/${c}/test.jsonl`))).join(''),
  );
  unsharded = path.join(dir, 'unsharded');
  sharded = path.join(dir, 'sharded');
  fs.mkdirSync(unsharded);
  fs.mkdirSync(sharded);
  await Promise.all([
    armInBackground(unsharded, evalArgs()),
    ...[0, 1, 2].map((i) => armInBackground(sharded, evalArgs(['--shard', `${i}/3`]))),
  ]);
}, 240_000);

it('three shards merged write the unsharded run: report.md, results.json, items.jsonl, run.json', () => {
  for (const i of [0, 1, 2]) expect(fs.existsSync(path.join(sharded, `out/shard-${i}-of-3/shard.json`))).toBe(true);
  expect(fs.existsSync(path.join(sharded, 'out/report.md'))).toBe(false);
  const merge = armIn(sharded, ['merge', '--output-dir', 'out']);
  expect(merge.stderr).toMatch(/merged 3 shards: 304 of 304 \(seed, pair\)s/);
  // The tables and the command line as the unsharded run wrote them; only the wall-time column differs.
  expect(withoutWallTimes(read(sharded, 'report.md'))).toBe(withoutWallTimes(read(unsharded, 'report.md')));
  expect(read(sharded, 'report.md')).toContain('- command: `arm eval --model');
  expect(read(sharded, 'report.md')).not.toContain('--shard');
  const [merged, whole] = [sharded, unsharded].map((f) => JSON.parse(read(f, 'results.json')));
  expect(withoutWallTimesJson(merged)).toEqual(withoutWallTimesJson(whole));
  expect(merged.methods.arm.accuracy.n).toBe(304);
  expect(read(sharded, 'run.json')).toBe(read(unsharded, 'run.json'));
  const items = (f: string) =>
    read(f, 'items.jsonl')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l))
      // Only the wall times docs/batch-jobs.md says may differ: cost, prepared and skipped records' seconds.
      .map((r) => (['cost', 'prepared', 'skipped'].includes(r.type) ? { ...r, seconds: 0 } : r));
  expect(items(sharded)).toEqual(items(unsharded));
});

describe('merge refuses', () => {
  it('a missing shard, naming it', () => {
    const partial = copyShards([0, 2]);
    const r = armIn(partial, ['merge', '--output-dir', 'out'], { expectFail: true });
    expect(r.stderr).toContain('shard 1 of 3 is missing (expected out/shard-1-of-3)');
    expect(fs.existsSync(path.join(partial, 'out/results.json'))).toBe(false);
  });

  it('a duplicated shard, naming both copies', () => {
    const shards = ['out/shard-0-of-3', 'out/shard-1-of-3', 'out/shard-0-of-3', 'out/shard-2-of-3'];
    const r = armIn(sharded, ['merge', '--output-dir', 'twice', ...shards], { expectFail: true });
    expect(r.stderr).toContain('shard 0 of 3 is given 2 times: out/shard-0-of-3, out/shard-0-of-3');
  });

  it('an unfinished shard, with how far it got', () => {
    const unfinished = copyShards([0, 1, 2]);
    fs.rmSync(path.join(unfinished, 'out/shard-1-of-3/shard.json'));
    const r = armIn(unfinished, ['merge', '--output-dir', 'out'], { expectFail: true });
    expect(r.stderr).toMatch(
      /out\/shard-1-of-3 is not finished: no shard\.json \(\d+ pair results in its items\.jsonl/,
    );
  });

  it('a shard of another run (--seed 1), naming the field', async () => {
    const other = copyShards([0, 2]);
    await armInBackground(other, evalArgs(['--shard', '1/3', '--seed', '1']));
    const r = armIn(other, ['merge', '--output-dir', 'out'], { expectFail: true });
    expect(r.stderr).toContain(
      'out/shard-1-of-3/shard.json is a shard of another run than out/shard-0-of-3/shard.json: different seed: 0 vs 1',
    );
  }, 120_000);

  it('a shard run on another device or thread count, naming the field', () => {
    const shard = JSON.parse(read(sharded, 'shard-0-of-3/shard.json'));
    const pkg = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8'));
    expect(shard.run.runtime).toEqual({ armVersion: pkg.version, device: 'cpu', threads: os.availableParallelism() });
    const other = copyShards([0, 1, 2]);
    const file = path.join(other, 'out/shard-1-of-3/shard.json');
    const edited = JSON.parse(fs.readFileSync(file, 'utf8'));
    edited.run.runtime.threads = 1000;
    fs.writeFileSync(file, JSON.stringify(edited));
    const r = armIn(other, ['merge', '--output-dir', 'out'], { expectFail: true });
    expect(r.stderr).toContain(
      `out/shard-1-of-3/shard.json is a shard of another run than out/shard-0-of-3/shard.json: ` +
        `different runtime.threads: ${os.availableParallelism()} vs 1000`,
    );
  });

  it('a malformed shard.json, naming the field, before it writes anything', () => {
    const cases: [(m: Record<string, any>) => void, string][] = [
      [(m) => delete m.run.meta.shape, '"run.meta.shape" should be an object, got absent'],
      [
        (m) => (m.run.meta.provenance.dataset.title = 7),
        '"run.meta.provenance.dataset.title" should be a string, got 7',
      ],
      [(m) => delete m.units, '"units" should be an object, got absent'],
      [(m) => (m.run.seeds = ['0']), '"run.seeds[0]" should be an integer, got "0"'],
      [(m) => (m.shard = { index: 2, count: 3 }), '"shard" says shard-2-of-3 but its name says shard-1-of-3'],
      [(m) => m.units.list.pop(), '"units.list" holds 3 units, but "units" is 4–8'],
    ];
    for (const [edit, message] of cases) {
      const damaged = copyShards([0, 1, 2]);
      const file = path.join(damaged, 'out/shard-1-of-3/shard.json');
      const m = JSON.parse(fs.readFileSync(file, 'utf8'));
      edit(m);
      fs.writeFileSync(file, JSON.stringify(m));
      const r = armIn(damaged, ['merge', '--output-dir', 'out'], { expectFail: true });
      expect(r.stderr).toContain(`out/shard-1-of-3/shard.json: ${message}`);
      expect(fs.readdirSync(path.join(damaged, 'out')).sort()).toEqual([
        'shard-0-of-3',
        'shard-1-of-3',
        'shard-2-of-3',
      ]);
    }
  });

  it('a shard whose items.jsonl lost a result', () => {
    const damaged = copyShards([0, 1, 2]);
    const items = path.join(damaged, 'out/shard-2-of-3/items.jsonl');
    const lines = fs.readFileSync(items, 'utf8').trim().split('\n');
    const pair = lines.findIndex((l) => l.includes('"type":"pair"'));
    fs.writeFileSync(items, [...lines.slice(0, pair), ...lines.slice(pair + 1)].join('\n') + '\n');
    const r = armIn(damaged, ['merge', '--output-dir', 'out'], { expectFail: true });
    expect(r.stderr).toMatch(/out\/shard-2-of-3\/items\.jsonl: 1 results missing/);
  });
});

it('--shard is refused for a sweep and a bias pair, with what to do instead', () => {
  const r = armIn(sharded, [...evalArgs(['--shard', '0/2']), '--few-shot', '2,4'], { expectFail: true });
  expect(r.stderr).toMatch(/--shard .* does not cut a sweep: run each --few-shot value as its own sharded run/);
});
