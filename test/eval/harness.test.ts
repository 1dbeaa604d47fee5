// The evaluation harness: pool/test splits, and end-to-end runs of every method (tiny random model, stories260K)
// with resume, the length rules against an independent count, and refused resumes.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import fs from 'node:fs';
import path from 'node:path';
import { Decoder } from '../../src/model/decoder.js';
import { readExamples, type PairExample } from '../../src/data/examples.js';
import { evaluate, runEval, type EvalOptions } from '../../src/eval/harness.js';
import { drawSplits } from '../../src/eval/splits.js';
import { readRecords } from '../../src/eval/run-log.js';
import { METHODS } from '../../src/eval/methods.js';
import { checkHtmlInBrowser } from './browser.js';
import { CHATML, FAMILY_CONFIGS, makeCheckpoint, PREFERENCE_DATA, STORIES, tempDir } from '../helpers/fixtures.js';

const ALL_METHODS = Object.keys(METHODS);
const sample = readExamples(path.join(PREFERENCE_DATA, 'sample.jsonl')).examples;
const samplePairs = sample.filter((e): e is PairExample => e.kind === 'pair');

function options(
  outputDir: string,
  over: Partial<EvalOptions> = {},
): EvalOptions & { dataset: string; modelId: string } {
  return {
    methods: ALL_METHODS,
    fewShot: 4,
    seeds: 2,
    seed: 0,
    pool: 'global',
    outputDir,
    saveAll: true,
    chunkSize: 5,
    dataset: 'sample.jsonl',
    modelId: 'test',
    method: {
      fit: {
        passes: 4,
        shots: 2,
        reinforce: { steps: 6, samples: 8, readoutMasks: 2, readoutItems: 3 },
        warn: () => undefined,
      },
      batchSize: 8,
      maxLength: 384,
      iclShots: 2,
      sampleN: 4,
      sampleTemperature: 1,
      savTopHeads: 5,
    },
    ...over,
  };
}

describe('pool/test splits', () => {
  it('never put a pool pair in the test set; same seed, same split; another seed, another split', () => {
    for (const mode of ['subset', 'global'] as const) {
      for (const seed of [0, 1, 2]) {
        const splits = drawSplits(samplePairs, 2, mode, seed);
        for (const s of splits) {
          const pool = new Set(s.pool.map((p) => p.id));
          expect(s.test.some((p) => pool.has(p.id))).toBe(false);
          expect(s.pool.length + s.test.length).toBe(
            samplePairs.filter((p) => mode === 'global' || p.subset === s.group).length,
          );
        }
        expect(drawSplits(samplePairs, 2, mode, seed)).toEqual(splits);
      }
      expect(drawSplits(samplePairs, 2, mode, 0)).not.toEqual(drawSplits(samplePairs, 2, mode, 1));
    }
  });

  it('per-subset pools draw from each subset', () => {
    const splits = drawSplits(samplePairs, 1, 'subset', 0);
    const counts = new Map<string, number>();
    for (const p of samplePairs) counts.set(p.subset!, (counts.get(p.subset!) ?? 0) + 1);
    // a subset with no pair left after its pool has nothing to test and is dropped
    expect(new Set(splits.map((s) => s.group))).toEqual(new Set([...counts].filter(([, n]) => n > 1).map(([s]) => s)));
    for (const s of splits) expect(s.pool.every((p) => p.subset === s.group)).toBe(true);
  });
});

describe('end to end', () => {
  let tiny: Decoder, stories: Decoder;
  beforeAll(async () => {
    const { dir } = makeCheckpoint(
      { ...FAMILY_CONFIGS['llama (GQA 2, tied)']!, max_position_embeddings: 512 },
      { seed: 5, chatTemplate: CHATML },
    );
    tiny = await Decoder.load(dir, { cacheDir: tempDir('arm-cache-'), threads: 1 });
    stories = await Decoder.load(STORIES, { cacheDir: tempDir('arm-cache-') });
  });
  afterAll(async () => {
    await tiny?.dispose();
    await stories?.dispose();
  });

  it.each([
    ['tiny random model', () => tiny],
    ['stories260K', () => stories],
  ] as const)('every method runs on %s over sample.jsonl and writes a report', async (_n, get) => {
    const out = tempDir('arm-eval-');
    const results = await evaluate(get(), sample, options(out));
    expect(Object.keys(results.methods).sort()).toEqual([...ALL_METHODS].sort());
    // Independent of the aggregation: re-read the raw log and decide each pair from its scores by the rule
    // (chosen > rejected; on a tie, the tie-break scores; else wrong), over the pairs every method scored.
    const raw = fs
      .readFileSync(path.join(out, 'items.jsonl'), 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l))
      .filter((r) => r.type === 'pair');
    const scored = (r: { chosen: number | null; rejected: number | null }) => r.chosen !== null && r.rejected !== null;
    const keys = (m: string) => new Set(raw.filter((r) => r.method === m && scored(r)).map((r) => `${r.seed}|${r.id}`));
    const common = [...keys(ALL_METHODS[0]!)].filter((k) => ALL_METHODS.every((m) => keys(m).has(k)));
    const right = (r: { chosen: number; rejected: number; tieBreak?: { chosen: number; rejected: number } }) =>
      r.chosen > r.rejected ||
      (r.chosen === r.rejected && r.tieBreak !== undefined && r.tieBreak.chosen > r.tieBreak.rejected);
    const longer = new Map(samplePairs.map((p) => [p.id, [...p.chosen].length > [...p.rejected].length]));
    for (const [name, m] of Object.entries(results.methods)) {
      const perSeed = [0, 1].map((seed) => {
        const recs = raw.filter((r) => r.method === name && r.seed === seed && common.includes(`${seed}|${r.id}`));
        if (name === 'pick-longer') for (const r of recs) expect(right(r), r.id).toBe(longer.get(r.id));
        return recs.filter(right).length / recs.length;
      });
      expect(m.accuracy.mean, name).toBeCloseTo((perSeed[0]! + perSeed[1]!) / 2, 12);
      expect(m.accuracy.n, name).toBe(common.length);
      expect(m.accuracy.perSeed.length, name).toBe(2);
      if (!name.startsWith('pick-')) expect(m.cost.forwardTokens, name).toBeGreaterThan(0);
    }
    // Every method was given 20 test pairs per seed, less a pair held out when the pool takes its prompt sibling
    // (sample.jsonl has one shared prompt); the common set is the part all could score at --max-length 384.
    for (const [name, m] of Object.entries(results.methods)) {
      expect(m.allPairs.n, name).toBeGreaterThanOrEqual(2 * (samplePairs.length - 4) - 2);
      expect(m.allPairs.n, name).toBeLessThanOrEqual(2 * (samplePairs.length - 4));
    }
    expect(common.length).toBeGreaterThan(0);
    expect(results.commonSet.pairs).toBe(common.length);
    expect(results.methods['all-heads']!.ties.rate).toBe(1); // a constant score ties every pair
    expect(results.methods.arm!.headCounts).toBeDefined();
    for (const f of ['results.json', 'report.md', 'report.html', 'items.jsonl'])
      expect(fs.existsSync(path.join(out, f)), f).toBe(true);
    // The pool of every prepared method never overlaps the pairs it scored, nor shares a prompt with them.
    const records = readRecords(path.join(out, 'items.jsonl'));
    const promptOf = new Map(samplePairs.map((p) => [p.id, JSON.stringify(p.prompt)]));
    for (const prep of records.filter((r) => r.type === 'prepared')) {
      if (prep.type !== 'prepared') continue;
      const pool = new Set(prep.poolIds),
        poolPrompts = new Set(prep.poolIds.map((id) => promptOf.get(id)));
      expect(
        records.some(
          (r) =>
            r.type === 'pair' &&
            r.method === prep.method &&
            r.seed === prep.seed &&
            (pool.has(r.id) || poolPrompts.has(promptOf.get(r.id))),
        ),
      ).toBe(false);
    }
    checkHtmlInBrowser(path.join(out, 'report.html'));
  });

  it('same seed, same numbers; an interrupted run resumes without redoing finished pairs', async () => {
    const methods = ['arm', 'zero-shot', 'sav-vote', 'pick-longer'];
    const a = await evaluate(tiny, sample, { ...options(tempDir()), methods });
    const b = await evaluate(tiny, sample, { ...options(tempDir()), methods });
    const accs = (r: typeof a) =>
      Object.fromEntries(Object.entries(r.methods).map(([k, m]) => [k, m.accuracy.perSeed]));
    expect(accs(b)).toEqual(accs(a));

    const out = tempDir();
    let chunks = 0;
    await expect(
      runEval(tiny, sample, {
        ...options(out),
        methods,
        onProgress: (what) => {
          if (!what.endsWith('preparing') && ++chunks === 5) throw new Error('power cut');
        },
      }),
    ).rejects.toThrow('power cut');
    const before = readRecords(path.join(out, 'items.jsonl')).filter((r) => r.type === 'pair').length;
    expect(before).toBeGreaterThan(0);
    fs.appendFileSync(path.join(out, 'items.jsonl'), '{"type":"pair","method":"arm","se'); // a line cut by the crash
    const tokens0 = tiny.stats.tokens;
    const resumed = await evaluate(tiny, sample, { ...options(out), methods });
    const pairs = readRecords(path.join(out, 'items.jsonl')).filter((r) => r.type === 'pair');
    const perMethod = pairs.length / methods.length;
    expect(
      Number.isInteger(perMethod) &&
        perMethod >= 2 * (samplePairs.length - 4) - 2 &&
        perMethod <= 2 * (samplePairs.length - 4),
    ).toBe(true); // all scored, nothing twice
    expect(new Set(pairs.map((r) => r.type === 'pair' && `${r.method}|${r.seed}|${r.id}`)).size).toBe(pairs.length);
    expect(accs(resumed)).toEqual(accs(a));
    expect(tiny.stats.tokens).toBeGreaterThan(tokens0);
  });

  it('heuristic controls on llmbar equal an independent count of longer/shorter chosen responses', async () => {
    const file = path.join(PREFERENCE_DATA, 'llmbar.jsonl');
    // Independent count straight from the raw lines (code points, ties wrong).
    const rows = fs
      .readFileSync(file, 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l));
    const len = (s: string) => Array.from(s).length;
    const bySubset = new Map<string, { longer: number; shorter: number; n: number }>();
    for (const r of rows) {
      const c = bySubset.get(r.subset) ?? { longer: 0, shorter: 0, n: 0 };
      c.n++;
      if (len(r.chosen) > len(r.rejected)) c.longer++;
      if (len(r.chosen) < len(r.rejected)) c.shorter++;
      bySubset.set(r.subset, c);
    }
    const out = tempDir();
    const results = await evaluate(stories, readExamples(file).examples, {
      ...options(out),
      methods: ['pick-longer', 'pick-shorter'],
      fewShot: 0,
      seeds: 1,
      pool: 'subset',
    });
    const total = [...bySubset.values()].reduce(
      (a, c) => ({ longer: a.longer + c.longer, shorter: a.shorter + c.shorter, n: a.n + c.n }),
      { longer: 0, shorter: 0, n: 0 },
    );
    expect(results.methods['pick-longer']!.accuracy.mean).toBeCloseTo(total.longer / total.n, 12);
    expect(results.methods['pick-shorter']!.accuracy.mean).toBeCloseTo(total.shorter / total.n, 12);
    for (const [subset, c] of bySubset) {
      expect(results.methods['pick-longer']!.subsets[subset]!.mean).toBeCloseTo(c.longer / c.n, 12);
      expect(results.methods['pick-longer']!.subsets[subset]!.n).toBe(c.n);
    }
    expect(results.methods['pick-longer']!.sections['Chat Hard']!.count).toBe(419);
  });

  it('sav-vote reads both responses under the ranked template (it judges scalar items)', async () => {
    const out = tempDir();
    const results = await evaluate(tiny, sample, {
      ...options(out),
      methods: ['sav-vote'],
      seeds: 1,
      saveAll: true,
      method: { ...options('').method, fit: { ...options('').method.fit, template: 'ranked' } },
    });
    expect(results.methods['sav-vote']!.allPairs.n).toBeGreaterThanOrEqual(samplePairs.length - 5);
    // Seeing the responses, chosen and rejected do not all get identical votes (they did when the placeholders stayed
    // literal).
    const pairs = readRecords(path.join(out, 'items.jsonl')).filter((r) => r.type === 'pair');
    expect(pairs.some((r) => r.type === 'pair' && Number.isFinite(r.chosen) && r.chosen !== r.rejected)).toBe(true);
  });

  it('refuses pool methods with --few-shot 0, and a folder holding another run', async () => {
    await expect(runEval(tiny, sample, { ...options(tempDir()), fewShot: 0 })).rejects.toThrow(
      /--few-shot 0 leaves no pool for arm/,
    );
    const out = tempDir();
    await evaluate(tiny, sample, { ...options(out), methods: ['icl-judge'] });
    await expect(runEval(tiny, sample, { ...options(out), methods: ['icl-judge'], fewShot: 3 })).rejects.toThrow(
      /holds a run with another model \(weights, tokenizer or processor files\), dataset or options/,
    );
  });

  it('a run folder resumed after the chat template changed (same weights) is refused', async () => {
    const dir = tempDir('arm-eval-model-');
    for (const f of fs.readdirSync(tiny.info.modelDir))
      fs.copyFileSync(path.join(tiny.info.modelDir, f), path.join(dir, f));
    const out = tempDir();
    await evaluate(tiny, sample, { ...options(out), methods: ['pick-longer'], fewShot: 0, seeds: 1 });
    const configFile = path.join(dir, 'tokenizer_config.json');
    const config = JSON.parse(fs.readFileSync(configFile, 'utf8'));
    fs.writeFileSync(configFile, JSON.stringify({ ...config, chat_template: `${config.chat_template} ` }));
    const edited = await Decoder.load(dir, { cacheDir: tempDir('arm-cache-'), threads: 1 });
    try {
      expect(edited.info.weightsFingerprint).toBe(tiny.info.weightsFingerprint);
      await expect(
        runEval(edited, sample, { ...options(out), methods: ['pick-longer'], fewShot: 0, seeds: 1 }),
      ).rejects.toThrow(/holds a run with another model \(weights, tokenizer or processor files\)/);
    } finally {
      await edited.dispose();
    }
  });
});
