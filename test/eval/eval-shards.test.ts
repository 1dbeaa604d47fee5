/**
 * Evaluation shards (eval-shards.ts) in process, on stories260K with a subset whose pools cannot be used: five
 * shards that cut seeds' splits between them, merged, give the unsharded run's results and records, skipped pools
 * included; shards that fitted a method differently on the same pool are refused.
 */
import { afterAll, beforeAll, expect, it } from 'vitest';
import fs from 'node:fs';
import path from 'node:path';
import { Decoder } from '../../src/model/decoder.js';
import type { Example } from '../../src/data/examples.js';
import { evaluate } from '../../src/eval/harness.js';
import { evaluateShard, mergeEvalShards } from '../../src/eval/eval-shards.js';
import { readRecords } from '../../src/eval/run-log.js';
import type { RunRecord } from '../../src/eval/records.js';
import type { Results } from '../../src/eval/aggregate.js';
import { STORIES, tempDir } from '../helpers/fixtures.js';
import { datasetOf, LONG, storiesEvalOptions } from '../helpers/stories-eval.js';

function dataset(): Example[] {
  const rows = Array.from({ length: 14 }, (_, i) => [
    { id: `plain-${i}`, subset: 'plain', prompt: `What is ${i} plus one?`, chosen: `${i + 1}.`, rejected: `${i + 7}.` },
    { id: `verbose-${i}`, subset: 'verbose', prompt: `Story ${i}.`, chosen: `${LONG} ${i}.`, rejected: `No ${i}.` },
  ]).flat();
  return datasetOf(rows);
}

// 10 test pairs per (seed, subset) in chunks of 4: 3 units each, 12 in all; 5 shards cut splits in two.
const options = (outputDir: string) => storiesEvalOptions(outputDir, { chunkSize: 4 });

const withoutWallTimes = (r: Results) =>
  JSON.parse(JSON.stringify(r), (k, v) =>
    ['seconds', 'secondsPerPair', 'prepareSeconds', 'generatedAt'].includes(k) ? undefined : v,
  );
/** A record with the wall time that docs/batch-jobs.md says a merge does not reproduce zeroed; nothing else. */
const wallTimeless = (r: RunRecord) =>
  r.type === 'cost' || r.type === 'prepared' || r.type === 'skipped' ? { ...r, seconds: 0 } : r;
const recordsOf = (dir: string) => readRecords(path.join(dir, 'items.jsonl')).map(wallTimeless);

let stories: Decoder;
let unsharded: string;
let sharded: string;
let whole: Results;
beforeAll(async () => {
  stories = await Decoder.load(STORIES, { cacheDir: tempDir('arm-cache-') });
  const examples = dataset();
  unsharded = tempDir('arm-eval-');
  whole = await evaluate(stories, examples, options(unsharded));
  sharded = tempDir('arm-eval-shards-');
  for (let index = 0; index < 5; index++)
    await evaluateShard(stories, examples, {
      ...options(path.join(sharded, `shard-${index}-of-5`)),
      shard: { index, count: 5 },
    });
}, 240_000);
afterAll(async () => {
  await stories?.dispose();
});

it('five shards merged give the unsharded results and records, skipped pools included', () => {
  const merged = mergeEvalShards(sharded);
  expect(merged.shards).toBe(5);
  expect(withoutWallTimes(merged.results)).toEqual(withoutWallTimes(whole));
  expect(whole.skipped.map((k) => `${k.method}|${k.group}|${k.seed}`)).toEqual(
    ['arm', 'random-heads', 'sav-vote'].flatMap((m) => [0, 1].map((seed) => `${m}|verbose|${seed}`)),
  );
  expect(recordsOf(sharded)).toEqual(recordsOf(unsharded));
  for (const f of ['report.md', 'run.json']) expect(fs.existsSync(path.join(sharded, f)), f).toBe(true);
});

it('each shard that prepared a method on a pool recorded the same fingerprint; a different one is refused', () => {
  const prepared = [0, 1, 2, 3, 4].flatMap((i) =>
    readRecords(path.join(sharded, `shard-${i}-of-5`, 'items.jsonl'))
      .filter((r) => r.type === 'prepared')
      .map((r) => ({ shard: i, record: r as Extract<typeof r, { type: 'prepared' }> })),
  );
  // Fitted methods carry a fingerprint, zero-shot (nothing fitted) none; seed 0's plain pool is in shards 0 and 1.
  const armSeed0 = prepared.filter(
    (p) => p.record.method === 'arm' && p.record.seed === 0 && p.record.group === 'plain',
  );
  expect(armSeed0.map((p) => p.shard)).toEqual([0, 1]);
  expect(armSeed0[0]!.record.fingerprint).toMatch(/^[0-9a-f]{64}$/);
  expect(armSeed0[1]!.record.fingerprint).toBe(armSeed0[0]!.record.fingerprint);
  expect(prepared.some((p) => p.record.method === 'sav-vote' && p.record.fingerprint)).toBe(true);
  expect(prepared.filter((p) => p.record.method === 'zero-shot').every((p) => !p.record.fingerprint)).toBe(true);

  const tampered = tempDir('arm-eval-tampered-');
  fs.cpSync(sharded, tampered, { recursive: true });
  const items = path.join(tampered, 'shard-1-of-5', 'items.jsonl');
  const text = fs.readFileSync(items, 'utf8').replace(armSeed0[1]!.record.fingerprint!, '0'.repeat(64));
  fs.writeFileSync(items, text);
  expect(() => mergeEvalShards(tampered)).toThrow(
    new RegExp(
      'arm on seed 0, plain: .*shard-0-of-5 and .*shard-1-of-5 prepared it differently ' +
        '\\(other fitted means: fingerprint differs\\)',
    ),
  );
});
