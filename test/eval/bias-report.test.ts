// Bias probes in arm eval: --bias-pair runs both splits and reports the gap (flipped − biased), the gap statistics
// on constructed records, and a pair run with a model learning from the biased split's pool.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import fs from 'node:fs';
import path from 'node:path';
import { Decoder } from '../../src/model/decoder.js';
import { readExamples, type PairExample } from '../../src/data/examples.js';
import { buildProbe } from '../../src/data/bias-probe.js';
import { biasGaps, evaluateBiasPair, matchProbePair } from '../../src/eval/bias.js';
import type { EvalOptions } from '../../src/eval/harness.js';
import { readRecords } from '../../src/eval/run-log.js';
import type { RunRecord } from '../../src/eval/records.js';
import { Rng } from '../../src/util/rng.js';
import { arm } from '../helpers/cli.js';
import { PREFERENCE_DATA, STORIES, tempDir } from '../helpers/fixtures.js';

const LLMBAR = path.join(PREFERENCE_DATA, 'llmbar.jsonl');

describe('arm eval --bias-pair on the llmbar length probe', () => {
  it(
    'pick-longer shows a gap of +1 (0% biased, 100% flipped), pick-shorter −1, over all 419 ' +
      "pairs; bias.json and both runs' reports are written",
    () => {
      const probes = tempDir('arm-probes-');
      arm(['bias-probe', '--dataset', LLMBAR, '--bias', 'length', '--out', probes]);
      const out = tempDir('arm-bias-');
      const r = arm([
        'eval',
        '--bias-pair',
        `${path.join(probes, 'llmbar-length.jsonl')},${path.join(probes, 'llmbar-length-flipped.jsonl')}`,
        '--methods',
        'pick-longer,pick-shorter',
        '--output-dir',
        out,
        '--quiet',
      ]);
      expect(r.stdout).toMatch(/pick-longer/);
      const report = JSON.parse(fs.readFileSync(path.join(out, 'bias.json'), 'utf8'));
      expect(report.bias.kind).toBe('length');
      expect(report.commonPairs).toBe(419);
      const longer = report.methods['pick-longer'],
        shorter = report.methods['pick-shorter'];
      expect([longer.biased.mean, longer.flipped.mean, longer.gap.mean]).toEqual([0, 1, 1]);
      expect(longer.gap.ci95).toEqual([1, 1]);
      expect([shorter.biased.mean, shorter.flipped.mean, shorter.gap.mean]).toEqual([1, 0, -1]);
      for (const split of ['biased', 'flipped'])
        expect(fs.existsSync(path.join(out, split, 'results.json'))).toBe(true);
      expect(fs.readFileSync(path.join(out, 'bias.md'), 'utf8')).toMatch(
        /\| pick-longer \(control: length bias\) \| 0\.0 \| 100\.0 \| \+100\.0 \[\+100\.0, \+100\.0\] \| 419 \|/,
      );
    },
  );

  it('refuses files given the other way round, and a pair of unrelated files', () => {
    const probes = tempDir('arm-probes-');
    arm(['bias-probe', '--dataset', LLMBAR, '--bias', 'format', '--out', probes, '--limit', '20']);
    const [b, f] = ['llmbar-format.jsonl', 'llmbar-format-flipped.jsonl'].map((n) => path.join(probes, n));
    const swapped = arm(
      ['eval', '--bias-pair', `${f},${b}`, '--methods', 'pick-longer', '--output-dir', tempDir(), '--quiet'],
      { expectFail: true },
    );
    expect(swapped.stderr).toMatch(/other way round; give the biased file first/);
    const unrelated = arm(
      [
        'eval',
        '--bias-pair',
        `${b},${path.join(PREFERENCE_DATA, 'faireval.jsonl')}`,
        '--methods',
        'pick-longer',
        '--output-dir',
        tempDir(),
        '--quiet',
      ],
      { expectFail: true },
    );
    expect(unrelated.stderr).toMatch(/no pair id occurs in both files/);
  });
});

describe('bias gaps', () => {
  /** Records of one method whose correctness on each pair is given per split. */
  const records = (method: string, correct: (i: number) => boolean, n: number, seeds = [0]): RunRecord[] =>
    seeds.flatMap((seed) =>
      Array.from({ length: n }, (_, i): RunRecord => ({
        type: 'pair',
        method,
        seed,
        group: 'all',
        id: `p${i}`,
        subset: 's',
        correct: correct(i),
        margin: 0,
        chosen: Number(correct(i)),
        rejected: 0.5,
        truncated: false,
        tooLong: false,
      })),
    );

  it('a judge whose verdicts do not depend on where the bias sits has a gap of exactly 0', () => {
    const verdict = (i: number) => i % 3 !== 0;
    const { methods } = biasGaps(records('content', verdict, 90, [0, 1]), records('content', verdict, 90, [0, 1]));
    expect(methods.content!.gap.mean).toBe(0);
    expect(methods.content!.gap.ci95).toEqual([0, 0]);
    expect(methods.content!.biased.mean).toBeCloseTo(2 / 3, 12);
  });

  it(
    'a judge right at random on each split independently has a gap interval around 0; one ' +
      'following the bias half the time a gap of +0.5',
    () => {
      const rng = new Rng(7);
      const b = Array.from({ length: 400 }, () => rng.uniform() < 0.6),
        f = Array.from({ length: 400 }, () => rng.uniform() < 0.6);
      const noisy = biasGaps(
        records('noisy', (i) => b[i]!, 400),
        records('noisy', (i) => f[i]!, 400),
      ).methods.noisy!;
      expect(noisy.gap.ci95[0]).toBeLessThan(0);
      expect(noisy.gap.ci95[1]).toBeGreaterThan(0);
      // Half the pairs judged by the bias (wrong when it is on the rejected side, right when on the chosen), half by
      // content (right).
      const half = biasGaps(
        records('half', (i) => i % 2 === 1, 200),
        records('half', () => true, 200),
      ).methods.half!;
      expect(half.gap.mean).toBe(0.5);
    },
  );

  it('is over the pairs every method scored in both runs', () => {
    const b = [...records('a', () => true, 10), ...records('b', () => true, 10)];
    const f = [...records('a', () => true, 10), ...records('b', () => true, 10)];
    const unscorable = f.find((r) => r.type === 'pair' && r.method === 'b' && r.id === 'p3')!;
    Object.assign(unscorable, { tooLong: true, chosen: NaN, rejected: NaN, correct: false });
    const gaps = biasGaps(b, f);
    expect(gaps.commonPairs).toBe(9);
    expect(gaps.methods.a!.pairs).toBe(9);
  });
});

describe('a bias pair run with a model (stories260K)', () => {
  let decoder: Decoder;
  beforeAll(async () => {
    decoder = await Decoder.load(STORIES, { cacheDir: tempDir('arm-cache-') });
  });
  afterAll(async () => {
    await decoder?.dispose();
  });

  it("both splits are tested on the same pairs, and the flipped run learns from the biased split's pool", async () => {
    const pairs = readExamples(path.join(PREFERENCE_DATA, 'sample.jsonl')).examples.filter(
      (e): e is PairExample => e.kind === 'pair',
    );
    const probe = buildProbe(pairs, 'positivity');
    const asExamples = (rows: typeof probe.biased) =>
      rows.map((r, i): PairExample => ({
        kind: 'pair',
        id: r.id,
        line: i + 1,
        row: r as unknown as Record<string, unknown>,
        prompt: r.prompt,
        chosen: r.chosen,
        rejected: r.rejected,
        subset: r.subset,
      }));
    const out = tempDir('arm-bias-model-');
    const opts: EvalOptions & { datasets: [string, string]; modelId: string } = {
      methods: ['icl-judge', 'zero-shot', 'pick-longer'],
      fewShot: 6,
      seeds: 1,
      seed: 0,
      pool: 'global',
      outputDir: out,
      saveAll: true,
      chunkSize: 8,
      datasets: ['sample-positivity.jsonl', 'sample-positivity-flipped.jsonl'],
      modelId: 'stories260K',
      method: {
        fit: { warn: () => undefined },
        batchSize: 8,
        maxLength: 512,
        iclShots: 2,
        sampleN: 2,
        sampleTemperature: 1,
        savTopHeads: 4,
      },
    };
    const { report } = await evaluateBiasPair(decoder, asExamples(probe.biased), asExamples(probe.flipped), opts);
    expect(Object.keys(report.methods).sort()).toEqual(['icl-judge', 'pick-longer', 'zero-shot']);
    expect(report.commonPairs).toBeGreaterThan(0);
    for (const g of Object.values(report.methods)) expect(g.gap.ci95[0]).toBeLessThanOrEqual(g.gap.ci95[1]);
    const prepared = (split: string) =>
      readRecords(path.join(out, split, 'items.jsonl')).filter(
        (r) => r.type === 'prepared' && r.method === 'icl-judge',
      );
    expect(prepared('flipped').map((r) => (r as { poolIds: string[] }).poolIds)).toEqual(
      prepared('biased').map((r) => (r as { poolIds: string[] }).poolIds),
    );
    // The flipped run's manifest records the pairs its pools came from: exactly the biased run's dataset.
    const manifest = (split: string) => JSON.parse(fs.readFileSync(path.join(out, split, 'run.json'), 'utf8'));
    expect(manifest('flipped').poolSource).toBe(manifest('biased').dataset);
    expect(manifest('flipped').dataset).not.toBe(manifest('biased').dataset);
    const tested = (split: string) =>
      new Set(
        readRecords(path.join(out, split, 'items.jsonl'))
          .filter((r) => r.type === 'pair')
          .map((r) => (r as { id: string }).id),
      );
    expect([...tested('flipped')].sort()).toEqual([...tested('biased')].sort());
    expect(matchProbePair(asExamples(probe.biased), asExamples(probe.flipped), ['a', 'b']).bias!.kind).toBe(
      'positivity',
    );
  }, 60_000);
});
