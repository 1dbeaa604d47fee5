/**
 * Sweeps (`arm eval --few-shot 2,4` / `--pool-label-noise 0,0.5`) on icl-tiny, kept small (one or two criteria, the
 * cheap in-context methods): a sweep equals the separate runs it replaces, every k is tested on the same pairs with
 * nested pools; and what the reports tell a reader (issue 20): provenance, "1 seed", no empty columns, n beside
 * each interval, a colour scale on head maps, the zero-width interval explained, pages drawn in headless Chromium.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { Decoder } from '../../src/model/decoder.js';
import type { PairExample } from '../../src/data/examples.js';
import { evaluate, runEval, type ReportedEvalOptions } from '../../src/eval/harness.js';
import { evaluateSweep } from '../../src/eval/sweep.js';
import { aggregate, type Results } from '../../src/eval/aggregate.js';
import { renderHtml, renderMarkdown } from '../../src/eval/report.js';
import { readRecords } from '../../src/eval/run-log.js';
import type { RunRecord } from '../../src/eval/records.js';
import { checkHtmlInBrowser } from './browser.js';
import { tempDir } from '../helpers/fixtures.js';
import { ICL_TINY_MODEL, iclTinyPairs } from '../helpers/icl-tiny.js';

const VERSION = JSON.parse(fs.readFileSync(path.resolve(import.meta.dirname, '../../package.json'), 'utf8')).version;

/** A run's pair and prepared records without what varies by timing (seconds, tokens, cost records). */
const outcome = (records: RunRecord[]) =>
  records
    .filter((r) => r.type === 'pair' || r.type === 'prepared')
    .map((r) => (r.type === 'prepared' ? { ...r, seconds: 0, tokens: 0 } : r));

describe('sweeps and reports on icl-tiny', () => {
  let decoder: Decoder;
  let pairs: PairExample[];
  const criterion = (name: string) => pairs.filter((p) => p.subset === name);
  beforeAll(async () => {
    decoder = await Decoder.load(ICL_TINY_MODEL, { cacheDir: tempDir('arm-cache-') });
    pairs = iclTinyPairs(['resp-first-low', 'resp-all-even']);
  }, 60_000);
  afterAll(async () => {
    await decoder?.dispose();
  });

  const options = (over: Partial<ReportedEvalOptions> = {}): ReportedEvalOptions => ({
    methods: ['icl-judge', 'zero-shot'],
    fewShot: 4,
    seeds: 2,
    seed: 0,
    pool: 'subset',
    outputDir: tempDir('arm-eval-'),
    saveAll: true,
    chunkSize: 200,
    dataset: 'icl-tiny pairs.jsonl',
    modelId: 'icl-tiny',
    method: {
      fit: { templateText: '{prompt} {response}', warn: () => undefined },
      batchSize: 32,
      maxLength: decoder.spec.maxPositions,
      iclShots: 2,
      sampleN: 4,
      sampleTemperature: 1,
      savTopHeads: 6,
    },
    ...over,
  });

  it('a few-shot sweep equals its separate runs: the same test pairs at every k, the smaller pool nested', async () => {
    const data = criterion('resp-first-low');
    const out = tempDir('arm-sweep-');
    const sweep = await evaluateSweep(decoder, data, options({ outputDir: out, seeds: 1 }), {
      axis: 'few-shot',
      values: [2, 4],
    });
    const k2 = readRecords(path.join(out, 'k-2', 'items.jsonl')),
      k4 = readRecords(path.join(out, 'k-4', 'items.jsonl'));
    // k = 4 is a plain --few-shot 4 run; k = 2 a --few-shot 2 run on the split drawn for 4.
    expect(outcome(k4)).toEqual(outcome(await runEval(decoder, data, options({ seeds: 1 }))));
    expect(outcome(k2)).toEqual(
      outcome(await runEval(decoder, data, options({ fewShot: 2, splitFewShot: 4, seeds: 1 }))),
    );
    const tested = (rs: RunRecord[]) =>
      rs.filter((r) => r.type === 'pair' && r.method === 'icl-judge').map((r) => r.type === 'pair' && r.id);
    expect(tested(k2)).toEqual(tested(k4));
    expect(tested(k2)).toHaveLength(100 - 4);
    const pool = (rs: RunRecord[]) => rs.find((r) => r.type === 'prepared');
    const [small, big] = [pool(k2), pool(k4)];
    if (small?.type !== 'prepared' || big?.type !== 'prepared') throw new Error('no prepared record');
    expect(small.poolIds).toEqual(big.poolIds.slice(0, 2));
    // sweep.json gathers each folder's results.json.
    for (const k of [2, 4]) {
      const r = JSON.parse(fs.readFileSync(path.join(out, `k-${k}`, 'results.json'), 'utf8')) as Results;
      const point = sweep.methods['icl-judge']!.points.find((p) => p.value === k)!;
      expect(point.accuracy.mean).toBe(r.methods['icl-judge']!.accuracy.mean);
      expect(r.fewShot).toBe(k);
    }
    const md = fs.readFileSync(path.join(out, 'sweep.md'), 'utf8');
    expect(md).toContain('| method | k = 2 | k = 4 |');
    expect(md).toMatch(/\| zero-shot \| [\d.]+ \[[\d.]+, [\d.]+\]\*? n=96 \| [\d.]+ \[[\d.]+, [\d.]+\]\*? n=96 \|/);
    checkHtmlInBrowser(path.join(out, 'sweep.html'), { screenshot: path.join(out, 'sweep.png') });
  }, 120_000);

  it('a noise sweep equals its separate runs, and its reports carry p', async () => {
    const data = criterion('resp-all-even');
    const out = tempDir('arm-sweep-');
    const sweep = await evaluateSweep(decoder, data, options({ outputDir: out, seeds: 1 }), {
      axis: 'pool-label-noise',
      values: [0, 0.5],
    });
    for (const p of [0, 0.5]) {
      const swept = readRecords(path.join(out, `p-${p}`, 'items.jsonl'));
      expect(outcome(swept)).toEqual(outcome(await runEval(decoder, data, options({ poolLabelNoise: p, seeds: 1 }))));
    }
    expect(sweep.fixed).toEqual({ fewShot: 4 });
    expect(fs.readFileSync(path.join(out, 'p-0.5', 'report.md'), 'utf8')).toContain(
      'few-shot pool 4 pairs per subset, 0.5 of them with flipped labels; 1 seed (0).',
    );
    expect(fs.readFileSync(path.join(out, 'sweep.md'), 'utf8')).toContain('| method | p = 0 | p = 0.5 |');
  }, 120_000);

  it('results.json and the reports say how to reproduce the run; one seed reads "1 seed"', async () => {
    const out = tempDir('arm-eval-');
    const command = "arm eval --dataset pairs.jsonl --template-text '{prompt} {response}'";
    const results = await evaluate(decoder, pairs, {
      ...options({ outputDir: out, seeds: 1, saveAll: false, command }),
      methods: ['icl-judge', 'zero-shot', 'sav-vote'],
    });
    const json = JSON.parse(fs.readFileSync(path.join(out, 'results.json'), 'utf8')) as Results;
    const sha = createHash('sha256')
      .update(JSON.stringify(pairs.map((p) => [p.id, p.prompt, p.chosen, p.rejected])))
      .digest('hex');
    expect(json.provenance).toEqual({
      command,
      version: VERSION,
      model: { id: 'icl-tiny', weightsSha256: decoder.info.weightsFingerprint },
      template: { kind: 'scalar', text: '{prompt} {response}', chat: expect.any(Boolean) },
      seeds: [0],
      dataset: { title: 'icl-tiny pairs.jsonl', sha256: sha, pairs: 200 },
    });
    expect(decoder.info.weightsFingerprint).toMatch(/^[0-9a-f]{64}$/);
    const md = fs.readFileSync(path.join(out, 'report.md'), 'utf8');
    expect(md).toContain('1 seed (0).');
    expect(md).not.toMatch(/± 0\.0|seeds 0|\(n=1\)/);
    expect(md).toContain(`- command: \`${command.replace(/`/g, "'")}\``);
    expect(md).toContain(`- dataset: \`icl-tiny pairs.jsonl: 200 pairs, sha256 ${sha}\``);
    // Columns that no method fills (swap consistency needs the ranked template) are left out; verdicts stay.
    const header = md.split('\n').find((l) => l.startsWith('| method | accuracy'))!;
    expect(header).not.toContain('swap-consistent');
    expect(header).toContain('verdict acc.');
    // Per subset: accuracy, interval and the pairs it is over (one seed: 96 test pairs per criterion).
    expect(md).toMatch(/\| zero-shot \| [\d.]+ \[[\d.]+, [\d.]+\]\*? n=96 \| [\d.]+ \[[\d.]+, [\d.]+\]\*? n=96 \|/);
    const html = fs.readFileSync(path.join(out, 'report.html'), 'utf8');
    expect(html).toContain('share of fits using the head:'); // sav-vote's heads map has its colour scale
    expect(html).toContain('#0072B2');
    expect(html).not.toMatch(/#cc0000|rgba\(204,0,0/);
    expect(results.methods['sav-vote']!.headCounts).toBeDefined();
    checkHtmlInBrowser(path.join(out, 'report.html'), { screenshot: path.join(out, 'report.png') });
  }, 120_000);

  it('an interval of zero width, [100.0, 100.0], is marked and explained', () => {
    const pair = (id: string, seed: number, correct: boolean): RunRecord => ({
      type: 'pair',
      method: 'arm',
      seed,
      group: 's',
      id,
      subset: 's',
      chosen: correct ? 1 : 0,
      rejected: 0.5,
      correct,
      margin: correct ? 0.5 : -0.5,
      truncated: false,
      tooLong: false,
    });
    const meta = { dataset: 'd', model: 'm', shape: { layers: 1, heads: 1 }, fewShot: 2, pool: 'subset' };
    const perfect = aggregate([pair('a', 0, true), pair('b', 0, true), pair('c', 0, true)], meta);
    expect(perfect.methods.arm!.accuracy.ci95).toEqual([1, 1]);
    const md = renderMarkdown(perfect);
    expect(md).toMatch(/\| arm \| 100\.0 \| \[100\.0, 100\.0\]\* \|/);
    expect(md).toContain('* An interval of zero width (e.g. [100.0, 100.0]) means every (seed, pair) resample');
    expect(renderHtml(perfect)).toContain('An interval of zero width');
    const mixed = aggregate([pair('a', 0, true), pair('b', 0, false), pair('c', 0, true)], meta);
    expect(renderMarkdown(mixed)).not.toContain('An interval of zero width');
  });
});
