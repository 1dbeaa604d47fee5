// Benchmark scoring rules: RM-Bench's 3 × 3 style matrix, JudgeBench per set and both orders, RewardBench 2's
// best-of-n and Ties from parquet, checked against independent computations from the raw rows.
import { describe, expect, it } from 'vitest';
import fs from 'node:fs';
import path from 'node:path';
import zlib from 'node:zlib';
import { parquetWriteFile } from 'hyparquet-writer';
import { Decoder } from '../../src/model/decoder.js';
import { loadDataset } from '../../src/data/dataset.js';
import { resolveHubDataset } from '../../src/data/hub-dataset.js';
import { evaluate, type EvalOptions } from '../../src/eval/harness.js';
import { bothOrderOutcome, type RunRecord } from '../../src/eval/records.js';
import { judgeBenchScores } from '../../src/eval/benchmarks.js';
import type { Example } from '../../src/data/examples.js';
import { PREFERENCE_DATA, STORIES, tempDir } from '../helpers/fixtures.js';

function options(over: Partial<EvalOptions> = {}): EvalOptions & { dataset: string; modelId: string } {
  return {
    methods: ['pick-longer', 'pick-shorter'],
    fewShot: 0,
    seeds: 1,
    seed: 0,
    pool: 'global',
    outputDir: tempDir('arm-bench-'),
    saveAll: false,
    chunkSize: 64,
    dataset: 'd',
    modelId: 'none',
    method: {
      fit: { warn: () => undefined },
      batchSize: 8,
      maxLength: 512,
      iclShots: 2,
      sampleN: 2,
      sampleTemperature: 1,
      savTopHeads: 4,
    },
    ...over,
  };
}
const run = (examples: Example[], over: Partial<EvalOptions> = {}) => evaluate(null, examples, options(over));

describe('RM-Bench 3×3 scoring', () => {
  it(
    "pick-longer on rm-bench.jsonl equals the README's definition computed here from the raw " +
      'rows (hard / normal / easy per domain, safety pooled)',
    async () => {
      const file = path.join(PREFERENCE_DATA, 'rm-bench.jsonl');
      const loaded = await loadDataset(file);
      expect(loaded.format).toBe('rm-bench');
      expect(loaded.examples.length).toBe(798 * 9);
      const results = await run(loaded.examples);
      const got = results.methods['pick-longer']!.rmBench!;
      // Independent expectation: the matrix per row from code-point lengths, strict >, averaged per domain.
      const rows = fs
        .readFileSync(file, 'utf8')
        .split('\n')
        .filter(Boolean)
        .map((l) => JSON.parse(l) as { subset: string; chosen: string[]; rejected: string[] });
      const len = (s: string) => [...s].length;
      for (const domain of ['chat', 'code', 'safety']) {
        const mine = rows.filter((r) => r.subset.startsWith(`rm-bench-${domain}`));
        const M = [0, 1, 2].map(() => [0, 0, 0]);
        for (const r of mine)
          for (let i = 0; i < 3; i++)
            for (let j = 0; j < 3; j++) if (len(r.chosen[i]!) > len(r.rejected[j]!)) M[i]![j]! += 1 / mine.length;
        const hard = (M[0]![1]! + M[0]![2]! + M[1]![2]!) / 3,
          normal = (M[0]![0]! + M[1]![1]! + M[2]![2]!) / 3,
          easy = (M[1]![0]! + M[2]![0]! + M[2]![1]!) / 3;
        expect(got[domain]!.hard.score).toBeCloseTo(hard, 10);
        expect(got[domain]!.normal.score).toBeCloseTo(normal, 10);
        expect(got[domain]!.easy.score).toBeCloseTo(easy, 10);
        expect(got[domain]!.avg.score).toBeCloseTo((hard + normal + easy) / 3, 10);
        expect(got[domain]!.hard.rows).toBe(mine.length);
      }
      expect(Object.keys(got).sort()).toEqual(['chat', 'code', 'safety']);
      // The length rule is what RM-Bench's hard/easy split is built to expose: it fails hard and passes easy.
      expect(got.chat!.hard.score).toBeLessThan(0.1);
      expect(got.chat!.easy.score).toBeGreaterThan(0.75);
    },
  );

  it('a row with a tie or a repeated response keeps all 9 cells; a tie is wrong', async () => {
    const dir = tempDir('arm-rmb-');
    const file = path.join(dir, 'rows.jsonl');
    const row = {
      id: 'rm-bench-chat-1',
      subset: 'rm-bench-chat',
      prompt: 'q',
      styles: ['concise', 'detailed', 'markdown'],
      chosen: ['bbb', 'bbbbb', 'bbbbb'],
      rejected: ['aa', 'aaaa', 'aaaaaa'],
    };
    fs.writeFileSync(file, JSON.stringify(row) + '\n');
    const results = await run((await loadDataset(file)).examples);
    // chosen 3,5,5 vs rejected 2,4,6 under pick-longer: rows [1,0,0],[1,1,0],[1,1,0].
    const chat = results.methods['pick-longer']!.rmBench!.chat!;
    expect(chat.matrix).toEqual([
      [1, 0, 0],
      [1, 1, 0],
      [1, 1, 0],
    ]);
    expect(chat.hard.score).toBeCloseTo(0, 12);
    expect(chat.normal.score).toBeCloseTo(2 / 3, 12);
    expect(chat.easy.score).toBeCloseTo(1, 12);
  });
});

describe('JudgeBench', () => {
  it(
    'both-order rule: +1 per order picking the correct response, −1 for the other, 0 for ' +
      'neither; correct when the sum is positive',
    () => {
      expect(bothOrderOutcome([0.7, 0.6])).toBe(true);
      expect(bothOrderOutcome([0.7, 0.4])).toBe(false); // inconsistent: net 0
      expect(bothOrderOutcome([0.5, 0.6])).toBe(true); // a tie and a correct verdict
      expect(bothOrderOutcome([NaN, 0.6])).toBe(true);
      expect(bothOrderOutcome([0.4, 0.5])).toBe(false);
      expect(bothOrderOutcome([0.5, 0.5])).toBe(false);
    },
  );

  it(
    "per set and category by source prefix, overall over all the set's pairs; both orders only " +
      'where every record has them',
    () => {
      const rec = (id: string, subset: string, correct: boolean, orders?: [number, number]): RunRecord => ({
        type: 'pair',
        method: 'm',
        seed: 0,
        group: 'all',
        id,
        subset,
        correct,
        margin: 0,
        chosen: 1,
        rejected: 0,
        truncated: false,
        tooLong: false,
        ...(orders ? { orders } : {}),
      });
      const recs = [
        rec('1', 'judgebench-gpt4o-mmlu-pro-law', true, [0.9, 0.8]),
        rec('2', 'judgebench-gpt4o-mmlu-pro-math', false, [0.6, 0.3]),
        rec('3', 'judgebench-gpt4o-livebench-math', true, [0.6, 0.5]),
        rec('4', 'judgebench-claude-livecodebench', false, [0.2, 0.7]),
      ] as Extract<RunRecord, { type: 'pair' }>[];
      const s = judgeBenchScores(recs)!;
      expect(Object.keys(s).sort()).toEqual(['claude', 'gpt4o']);
      expect(s.gpt4o!['mmlu-pro']!.singleGame.score).toBe(0.5);
      expect(s.gpt4o!['mmlu-pro']!.bothOrders!.score).toBe(0.5);
      expect(s.gpt4o!.overall!.singleGame.score).toBeCloseTo(2 / 3, 12);
      expect(s.gpt4o!.overall!.bothOrders!.score).toBeCloseTo(2 / 3, 12);
      expect(s.gpt4o!.livecodebench).toBeUndefined();
      expect(s.claude!.overall!.bothOrders!.score).toBe(0);
    },
  );

  it(
    'a ranked-template judge records both orders and gets a both-order score; a length rule ' +
      'does not (stories260K)',
    async () => {
      const decoder = await Decoder.load(STORIES, { cacheDir: tempDir('arm-cache-') });
      try {
        // Short JudgeBench-shaped pairs (the real questions do not fit stories260K's context).
        const examples: Example[] = ['mmlu-pro-law', 'livebench-math', 'livecodebench'].map((source, i) => ({
          kind: 'pair',
          id: `judgebench-gpt4o-${i}`,
          line: i + 1,
          row: {},
          subset: `judgebench-gpt4o-${source}`,
          prompt: `Tom has ${i + 2} apples. How many?`,
          chosen: `He has ${i + 2}.`,
          rejected: `He has ${i + 7} apples and a dog.`,
        }));
        const results = await evaluate(
          decoder,
          examples,
          options({
            methods: ['zero-shot', 'pick-longer'],
            method: { ...options().method, fit: { template: 'ranked', warn: () => undefined } },
          }),
        );
        expect(results.commonSet.pairs).toBe(3);
        const jb = results.methods['zero-shot']!.judgeBench!.gpt4o!;
        expect(Object.keys(jb).sort()).toEqual(['livebench-math', 'livecodebench', 'mmlu-pro', 'overall']);
        expect(jb.overall!.bothOrders!.rows).toBe(3);
        expect(results.methods['pick-longer']!.judgeBench!.gpt4o!.overall!.bothOrders).toBeUndefined();
        expect(results.methods['pick-longer']!.judgeBench!.gpt4o!.overall!.singleGame.score).toBe(0);
      } finally {
        await decoder.dispose();
      }
    },
    60_000,
  );
});

describe('RewardBench 2 from parquet', () => {
  const dir = tempDir('arm-rb2-');
  // Lengths make pick-longer's outcome obvious: chosen vs 3 rejected.
  const rows = [
    { id: '1', subset: 'Focus', chosen: ['aaaa'], rejected: ['a', 'aa', 'aaa'] }, // best: 1
    { id: '2', subset: 'Focus', chosen: ['aaa'], rejected: ['aaa', 'a', 'aa'] }, // tied with one: 1/2
    { id: '3', subset: 'Focus', chosen: ['aa'], rejected: ['aaa', 'a', 'a'] }, // beaten: 0
    { id: '4', subset: 'Focus', chosen: ['aa'], rejected: ['aa', 'aa', 'a'] }, // tied with two: 1/3
    { id: '5', subset: 'Math', chosen: ['bbbbb'], rejected: ['b', 'bb', 'bbb'] },
    { id: 'ref:1', subset: 'Ties', chosen: ['xxxxxx'], rejected: ['xx', 'xxx'] },
    { id: 'tied:1', subset: 'Ties', chosen: ['yyyyy', 'yyyyyyy'], rejected: ['yyy', 'yyyy'] },
  ];
  const write = (file: string, codec: 'SNAPPY' | 'GZIP') =>
    parquetWriteFile({
      filename: file,
      codec,
      ...(codec === 'GZIP'
        ? { compressors: { GZIP: (input: Uint8Array) => new Uint8Array(zlib.gzipSync(input)) } }
        : {}),
      columnData: [
        { name: 'id', data: rows.map((r) => r.id), type: 'STRING' },
        { name: 'prompt', data: rows.map((r) => `prompt ${r.id}`), type: 'STRING' },
        { name: 'chosen', data: rows.map((r) => r.chosen) },
        { name: 'rejected', data: rows.map((r) => r.rejected) },
        { name: 'num_correct', data: rows.map((r) => BigInt(r.chosen.length)), type: 'INT64' },
        { name: 'subset', data: rows.map((r) => r.subset), type: 'STRING' },
      ],
    });

  it(
    'best-of-4 with ties sharing credit, Ties by its own rule, overall the mean of subsets ' +
      '(snappy and gzip files alike)',
    async () => {
      for (const codec of ['SNAPPY', 'GZIP'] as const) {
        const file = path.join(dir, `test-${codec}.parquet`);
        write(file, codec);
        const loaded = await loadDataset(file);
        expect(loaded.format).toBe('best-of-n');
        const bon = (await run(loaded.examples)).methods['pick-longer']!.bestOfN!;
        expect(bon.subsets.Focus!.score).toBeCloseTo((1 + 1 / 2 + 0 + 1 / 3) / 4, 12);
        expect(bon.subsets.Math!.score).toBe(1);
        // ref: gap 6 − 3 = 3; tied: correct 5, 7 vs 3, 4 → gap 1, spread 2: accurate both; not preferred
        // (1 ≯ 2); margin tanh(1/2 − 1).
        expect(bon.ties!.refAccuracy).toBe(1);
        expect(bon.ties!.tiedAccuracy).toBe(1);
        expect(bon.ties!.correctnessPreferred).toBe(0);
        expect(bon.ties!.correctnessPreferredHard).toBe(0);
        const ties = 0.3 + 0.3 + 0.01 * Math.tanh(-0.5);
        expect(bon.subsets.Ties!.score).toBeCloseTo(ties, 12);
        expect(bon.overall).toBeCloseTo(((1 + 1 / 2 + 1 / 3) / 4 + 1 + ties) / 3, 12);
      }
    },
  );

  it('RewardBench (v1) parquet rows are plain pairs; a file without the columns names the ones it found', async () => {
    const v1 = path.join(dir, 'filtered.parquet');
    parquetWriteFile({
      filename: v1,
      columnData: [
        { name: 'prompt', data: ['p1', 'p2'], type: 'STRING' },
        { name: 'chosen', data: ['long answer', 'x'], type: 'STRING' },
        { name: 'rejected', data: ['short', 'longer one'], type: 'STRING' },
        { name: 'subset', data: ['llmbar-natural', 'llmbar-natural'], type: 'STRING' },
        { name: 'id', data: [1n, 2n], type: 'INT64' },
      ],
    });
    const loaded = await loadDataset(v1);
    expect(loaded.format).toBe('pairs');
    expect(loaded.examples.map((e) => e.id)).toEqual(['1', '2']);
    const results = await run(loaded.examples);
    expect(results.methods['pick-longer']!.accuracy.mean).toBe(0.5);
    expect(results.methods['pick-longer']!.sections['Chat Hard']).toBeDefined();
    const bad = path.join(dir, 'bad.parquet');
    parquetWriteFile({
      filename: bad,
      columnData: [
        { name: 'text', data: ['a'], type: 'STRING' },
        { name: 'score', data: [1], type: 'DOUBLE' },
      ],
    });
    await expect(loadDataset(bad)).rejects.toThrow(/expected columns prompt .*chosen, rejected; found text, score/);
  });

  // Downloading it (datasets/ URL, resume, checks) is tested against the hub stand-in in test/model/hub.test.ts.
  it(
    '--dataset allenai/reward-bench-2 reads the file from the cache offline; offline without ' + 'it is a clear error',
    async () => {
      const cacheDir = tempDir('arm-hubcache-');
      const previous = process.env.HF_HUB_OFFLINE;
      process.env.HF_HUB_OFFLINE = '1';
      try {
        await expect(resolveHubDataset('allenai/reward-bench-2', { cacheDir })).rejects.toThrow(
          /not in the cache .* HF_HUB_OFFLINE=1/,
        );
        const dest = path.join(
          cacheDir,
          'hub',
          'datasets',
          'allenai--reward-bench-2',
          'main',
          'data',
          'test-00000-of-00001.parquet',
        );
        fs.mkdirSync(path.dirname(dest), { recursive: true });
        write(dest, 'SNAPPY');
        const loaded = await loadDataset('allenai/reward-bench-2', { hub: { cacheDir } });
        expect(loaded.files).toEqual([dest]);
        expect(loaded.format).toBe('best-of-n');
      } finally {
        if (previous === undefined) delete process.env.HF_HUB_OFFLINE;
        else process.env.HF_HUB_OFFLINE = previous;
      }
      await expect(loadDataset('someone/unknown-set', { hub: { cacheDir } })).rejects.toThrow(
        /of hub datasets arm eval knows allenai\/reward-bench-2, allenai\/reward-bench/,
      );
    },
  );
});
