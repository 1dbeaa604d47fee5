/**
 * Issue 7, defect 8: a few-shot pool a method cannot be prepared on (for a data reason) skips that
 * (method, subset, seed) with a recorded reason instead of aborting the whole run; thin and dropped subsets
 * are warned about. The real trigger: with the scalar template every pair gives one "yes" and one "no" item,
 * but items whose response does not fit --max-length are left out of the fit, so a subset whose chosen
 * responses are long leaves a pool of "no" items only.
 */
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import fs from 'node:fs';
import path from 'node:path';
import { Decoder } from '../../src/model/decoder.js';
import type { PairExample } from '../../src/data/examples.js';
import { FitError } from '../../src/arm/fit.js';
import { evaluate, runEval } from '../../src/eval/harness.js';
import { drawSplits, splitNotes } from '../../src/eval/splits.js';
import { readRecords } from '../../src/eval/run-log.js';
import type { RunRecord } from '../../src/eval/records.js';
import { aggregate } from '../../src/eval/aggregate.js';
import { METHODS } from '../../src/eval/methods.js';
import { renderHtml, renderMarkdown } from '../../src/eval/report.js';
import { CHATML, FAMILY_CONFIGS, makeCheckpoint, STORIES, tempDir } from '../helpers/fixtures.js';
import { datasetOf, LONG, storiesEvalOptions } from '../helpers/stories-eval.js';

/** Short answers the model can judge at --max-length 96. */
const plainRows = (subset: string, n: number) =>
  Array.from({ length: n }, (_, i) => ({
    id: `${subset}-${i}`,
    subset,
    prompt: `What is ${i} plus one?`,
    chosen: `It is ${i + 1}.`,
    rejected: `It is ${i + 7}.`,
  }));
/** The chosen (correct) answer is the long one: its "yes" item never fits, only the rejected "no" item does. */
const longChosenRows = (subset: string, n: number) =>
  Array.from({ length: n }, (_, i) => ({
    id: `${subset}-${i}`,
    subset,
    prompt: `Tell story ${i}.`,
    chosen: `${LONG} The end ${i}.`,
    rejected: `No story ${i}.`,
  }));

const options = storiesEvalOptions;

const skippedOf = (records: RunRecord[]) =>
  records.filter((r): r is Extract<RunRecord, { type: 'skipped' }> => r.type === 'skipped');

describe('a pool a method cannot be prepared on', () => {
  let stories: Decoder;
  beforeAll(async () => {
    stories = await Decoder.load(STORIES, { cacheDir: tempDir('arm-cache-') });
  });
  afterAll(async () => {
    await stories?.dispose();
  });

  const examples = () => datasetOf([...plainRows('plain', 14), ...longChosenRows('verbose', 14)]);

  it(
    'skips that (method, subset, seed) with its reason in items.jsonl, results.json, report.md ' +
      'and report.html; the rest runs',
    async () => {
      const out = tempDir('arm-eval-');
      const logged: string[] = [];
      const results = await evaluate(stories, examples(), { ...options(out), log: (l) => logged.push(l) });

      // Fitted methods lose subset "verbose" in both seeds; zero-shot needs no pool and keeps it.
      const expected = ['arm', 'random-heads', 'sav-vote'].flatMap((method) =>
        [0, 1].map((seed) => `${method}|verbose|${seed}`),
      );
      expect(results.skipped.map((k) => `${k.method}|${k.group}|${k.seed}`)).toEqual(expected);
      for (const k of results.skipped) {
        expect(k.testPairs).toBe(10);
        expect(k.reason).toMatch(
          k.method === 'sav-vote'
            ? /both classes.*do not fit --max-length 96/
            : /single label class.*do not fit --max-length 96/,
        );
      }
      expect(Object.keys(results.methods.arm!.subsets)).toEqual(['plain']);
      expect(results.methods.arm!.accuracy.n).toBe(2 * 10);
      expect(results.methods.arm!.skipped).toHaveLength(2);
      // zero-shot needs no pool and is given subset verbose too, but cannot score it (too long at 96 tokens);
      // like every method it is compared on the common set, which holds plain only.
      expect(Object.keys(results.methods['zero-shot']!.subsets)).toEqual(['plain']);
      expect(results.methods['zero-shot']!.allPairs.n).toBe(2 * 20);
      expect(results.methods['zero-shot']!.coverage).toEqual({ scored: 2 * 10, total: 2 * 20, rate: 0.5 });
      expect(results.methods.arm!.coverage).toEqual({ scored: 2 * 10, total: 2 * 20, rate: 0.5 });
      expect(results.methods['zero-shot']!.skipped).toEqual([]);
      // The log names the method, subset and seed of each skip.
      expect(logged.some((l) => /skipped arm on subset verbose, seed 1 .*single label class/.test(l))).toBe(true);

      const records = readRecords(path.join(out, 'items.jsonl'));
      expect(skippedOf(records)).toHaveLength(6);
      // A skipped split leaves no prepared record and no pair result behind.
      for (const k of skippedOf(records)) {
        expect(
          records.some(
            (r) => r.type !== 'skipped' && r.method === k.method && r.seed === k.seed && r.group === k.group,
          ),
        ).toBe(false);
      }
      const json = JSON.parse(fs.readFileSync(path.join(out, 'results.json'), 'utf8'));
      expect(json.skipped).toHaveLength(6);
      expect(json.methods.arm.skipped[0].reason).toMatch(/single label class/);
      const md = fs.readFileSync(path.join(out, 'report.md'), 'utf8');
      expect(md).toContain('## Skipped (method, subset, seed)');
      expect(md).toMatch(/\| arm \| verbose \| 0 \| 10 \| the few-shot examples hold a single label class/);
      expect(md).toMatch(/\| arm † \|/);
      expect(md).toMatch(/\| arm † \| [\d.]+ ± [\d.]+ \(2 seeds\) \|/);
      // verbose is out of the common set (skipped by some, unscorable by zero-shot): every row is over plain's 2 × 10
      // pairs
      expect(md).toContain(
        'the 20 of 40 (seed, test pair)s that every method (arm, random-heads, sav-vote, zero-shot) could score',
      );
      const html = fs.readFileSync(path.join(out, 'report.html'), 'utf8');
      expect(html).toContain('<h2>Skipped (method, subset, seed)</h2>');
      expect(html).toContain('sav-vote: the pool needs items of both classes');
    },
  );

  it('a resumed run neither retries a skipped pool nor counts anything twice', async () => {
    const out = tempDir('arm-eval-');
    const data = examples();
    const first = await evaluate(stories, data, options(out));
    const lines = fs.readFileSync(path.join(out, 'items.jsonl'), 'utf8');
    const prepare = vi.spyOn(METHODS.arm!, 'prepare');
    try {
      const again = await evaluate(stories, data, options(out));
      expect(prepare).not.toHaveBeenCalled(); // arm's plain splits are done; its verbose ones were skipped before
      expect(fs.readFileSync(path.join(out, 'items.jsonl'), 'utf8')).toBe(lines);
      expect(again.skipped).toEqual(first.skipped);
      expect(again.methods.arm!.accuracy.perSeed).toEqual(first.methods.arm!.accuracy.perSeed);
    } finally {
      prepare.mockRestore();
    }
  });

  it('a pool unusable in one seed only: that seed is left out of the subset mean, and n says so', async () => {
    // One pool pair per subset: the pool is unusable exactly when that pair is a long-chosen one.
    const rows = [...plainRows('mixed', 8), ...longChosenRows('mixed-long', 4).map((r) => ({ ...r, subset: 'mixed' }))];
    const data = datasetOf(rows);
    const pairs = data as PairExample[];
    const isBad = (seed: number) => drawSplits(pairs, 1, 'subset', seed)[0]!.pool[0]!.id.startsWith('mixed-long');
    const seed = Array.from({ length: 50 }, (_, s) => s).find((s) => isBad(s) && !isBad(s + 1))!;
    expect(seed).toBeDefined();

    const out = tempDir('arm-eval-');
    const results = await evaluate(stories, data, { ...options(out), methods: ['arm', 'zero-shot'], fewShot: 1, seed });
    expect(results.skipped.map((k) => [k.method, k.group, k.seed])).toEqual([['arm', 'mixed', seed]]);
    const arm = results.methods.arm!;
    expect(arm.accuracy.seeds).toBe(1);
    expect(arm.accuracy.perSeed).toHaveLength(1);
    expect(arm.accuracy.std).toBe(0);
    expect(arm.subsets.mixed!.seeds).toBe(1);
    expect(arm.allPairs.n).toBe(11);
    // On the common set, the long-chosen test pairs zero-shot cannot score at --max-length 96 drop out for both.
    expect(arm.accuracy.n).toBe(results.methods['zero-shot']!.accuracy.n);
    expect(arm.accuracy.n).toBeLessThanOrEqual(11);
    // On the common set zero-shot is compared where arm ran (one seed); over all its own pairs, both seeds.
    expect(results.methods['zero-shot']!.accuracy.seeds).toBe(1);
    expect(results.methods['zero-shot']!.allPairs.seeds).toBe(2);
    expect(results.seeds).toEqual([seed, seed + 1]);
    const md = fs.readFileSync(path.join(out, 'report.md'), 'utf8');
    expect(md).toMatch(/\| arm † \| [\d.]+ \(1 seed\) \|/);
    expect(md).toMatch(/\| zero-shot \| [\d.]+ \(1 seed\) \|/);
  });

  it('any FitError from preparing skips; any other error aborts, naming the method, subset and seed', async () => {
    const data = datasetOf(plainRows('plain', 12));
    const prepare = vi.spyOn(METHODS['zero-shot']!, 'prepare');
    try {
      prepare.mockRejectedValue(new FitError('nothing to fit on'));
      const results = await evaluate(stories, data, { ...options(tempDir()), methods: ['zero-shot', 'pick-longer'] });
      // Neither method needs a pool: no pool is drawn, every pair is tested, and one seed is enough.
      expect(results.skipped.map((k) => k.reason)).toEqual(['nothing to fit on']);
      expect(results.methods['zero-shot']!.accuracy.seeds).toBe(0);
      expect(results.methods['pick-longer']!.accuracy.n).toBe(12);
      expect(renderMarkdown(results)).toMatch(/\| zero-shot † \| – \|/); // a method skipped everywhere still has a row

      prepare.mockRejectedValue(new TypeError('cannot read properties of undefined'));
      const out = tempDir();
      await expect(runEval(stories, data, { ...options(out), methods: ['zero-shot'] })).rejects.toThrow(
        /^zero-shot, subset plain, seed 0: preparing failed: cannot read properties of undefined$/,
      );
      expect(skippedOf(readRecords(path.join(out, 'items.jsonl')))).toEqual([]);
    } finally {
      prepare.mockRestore();
    }
  });
});

describe('thin and dropped subsets', () => {
  const rows = [...plainRows('big', 16), ...plainRows('thin', 8), ...plainRows('tiny', 3)];
  const pairs = () => datasetOf(rows) as PairExample[];

  it('splitNotes counts the test pairs each subset keeps and the groups the pool swallows', () => {
    expect(splitNotes(pairs(), 4, 'subset', [0, 1])).toEqual({
      minTestPairs: 10,
      smallSubsets: [{ subset: 'thin', rows: 8, testPairs: 4 }],
      droppedGroups: [{ group: 'tiny', rows: 3, seeds: [0, 1] }],
      promptSiblingsHeldOut: 0,
    });
    // Global pool: per subset, the fewest test pairs any seed leaves; nothing is dropped while pairs remain.
    const global = splitNotes(pairs(), 4, 'global', [0, 1, 2]);
    expect(global.droppedGroups).toEqual([]);
    for (const s of global.smallSubsets) {
      const fewest = Math.min(
        ...[0, 1, 2].map(
          (seed) => drawSplits(pairs(), 4, 'global', seed)[0]!.test.filter((p) => p.subset === s.subset).length,
        ),
      );
      expect(s.testPairs).toBe(fewest);
    }
    expect(global.smallSubsets.map((s) => s.subset)).toEqual(['thin', 'tiny']);
  });

  it('are warned about in the log and noted in the report', async () => {
    const out = tempDir();
    const logged: string[] = [];
    const { dir } = makeCheckpoint({ ...FAMILY_CONFIGS['llama (GQA 2, tied)']! }, { seed: 5, chatTemplate: CHATML });
    const tiny = await Decoder.load(dir, { cacheDir: tempDir('arm-cache-'), threads: 1 });
    try {
      // A pool method (icl-judge, cheap to prepare): a run of pool-free methods alone draws no pool.
      const results = await evaluate(tiny, pairs(), {
        ...options(out),
        methods: ['icl-judge'],
        log: (l) => logged.push(l),
      });
      expect(logged).toContain(
        'warning: subset tiny has 3 pairs, all taken by the --few-shot 4 pool in seeds 0, 1: ' +
          'nothing of it is tested there',
      );
      expect(logged).toContain(
        'warning: subset thin has 8 pairs, leaving 4 test pairs after the pool (fewer than 10): its accuracy is noisy',
      );
      expect(results.splits!.droppedGroups.map((d) => d.group)).toEqual(['tiny']);
      const md = fs.readFileSync(path.join(out, 'report.md'), 'utf8');
      expect(md).toContain(
        'Subset tiny (3 pairs) went wholly into the --few-shot 4 pool in seeds 0, 1: it is not tested there.',
      );
      expect(md).toContain(
        'Subsets with fewer than 10 test pairs (fewest over seeds) have noisy accuracies: thin (8 pairs, 4 tested).',
      );
      expect(renderHtml(results)).toContain('thin (8 pairs, 4 tested)');

      // Nothing left to test at all is an error, not an empty report.
      await expect(
        runEval(tiny, pairs(), { ...options(tempDir()), methods: ['icl-judge'], fewShot: 20 }),
      ).rejects.toThrow(/--few-shot 20 leaves no pair to test/);
    } finally {
      await tiny.dispose();
    }
  });

  it('random-heads without an ARM run asks a small model for at most its own head count', async () => {
    const { dir } = makeCheckpoint(
      { ...FAMILY_CONFIGS['llama (GQA 2, tied)']!, max_position_embeddings: 256 },
      { seed: 5, chatTemplate: CHATML },
    );
    const tiny = await Decoder.load(dir, { cacheDir: tempDir('arm-cache-'), threads: 1 });
    try {
      const out = tempDir();
      const results = await evaluate(tiny, pairs(), {
        ...options(out),
        methods: ['random-heads'],
        seeds: 1,
        method: { ...options('').method, maxLength: 256 },
      });
      // 2 layers × 4 heads < 20: this was a FitError, which would now read as an unusable pool
      expect(results.skipped).toEqual([]);
      const prepared = readRecords(path.join(out, 'items.jsonl')).filter((r) => r.type === 'prepared');
      expect(prepared.length).toBeGreaterThan(0);
      for (const p of prepared) if (p.type === 'prepared') expect(p.heads).toHaveLength(8);
    } finally {
      await tiny.dispose();
    }
  });
});

describe('aggregation with skips', () => {
  it('a method only ever skipped has a row with no accuracy, and seeds count the seeds that ran', () => {
    const meta = { dataset: 'd', model: 'x', shape: { layers: 1, heads: 1 }, fewShot: 2, pool: 'subset' };
    const skip = (method: string, seed: number): RunRecord => ({
      type: 'skipped',
      method,
      seed,
      group: 's',
      reason: 'why',
      testPairs: 1,
      poolIds: [],
      seconds: 0.5,
      tokens: 10,
    });
    const pair = (method: string, seed: number, ok: boolean): RunRecord => ({
      type: 'pair',
      method,
      seed,
      group: 's',
      id: 'a',
      subset: 's',
      chosen: ok ? 1 : 0,
      rejected: 0.5,
      correct: ok,
      margin: ok ? 0.5 : -0.5,
      truncated: false,
      tooLong: false,
    });
    const r = aggregate(
      [skip('a', 0), skip('a', 1), pair('b', 0, true), skip('b', 1), pair('c', 0, true), pair('c', 1, false)],
      meta,
    );
    expect(r.seeds).toEqual([0, 1]);
    expect(Number.isNaN(r.methods.a!.accuracy.mean)).toBe(true);
    expect(r.methods.a!.accuracy.seeds).toBe(0);
    expect(r.methods.a!.cost.prepareSeconds).toBe(1);
    expect(r.methods.b!.accuracy).toMatchObject({ mean: 1, std: 0, seeds: 1, perSeed: [1] });
    // The common set is seed 0's pair (b did not run in seed 1): c is compared there; over its own pairs, both seeds.
    expect(r.methods.c!.accuracy).toMatchObject({ mean: 1, seeds: 1 });
    expect(r.methods.c!.allPairs).toMatchObject({ mean: 0.5, seeds: 2 });
    expect(Object.keys(r.methods).length).toBe(3);
    // Rows sort by accuracy; the method with none goes last rather than wherever NaN lands.
    const md = renderMarkdown(r);
    expect(md.indexOf('| b † |')).toBeLessThan(md.indexOf('| c |'));
    expect(md.indexOf('| c |')).toBeLessThan(md.indexOf('| a † |'));
    const html = renderHtml(r);
    expect(html).toContain('<td>b</td><td>s</td><td>1</td><td>1</td><td>why</td>');
    expect(html).not.toContain('<title>a:'); // no empty bar that would read as 0%
  });
});
