/**
 * Pool label noise (`arm eval --pool-label-noise p`): the flipped fraction is exact and seeded, the same pool reaches
 * every method of a seed, test pairs are never touched; and on icl-tiny, a judge taught from a fully flipped pool
 * learns the opposite criterion (so the flips do reach what the methods learn from).
 */
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import path from 'node:path';
import { Decoder } from '../../src/model/decoder.js';
import type { PairExample, ScalarExample } from '../../src/data/examples.js';
import { evaluate, runEval, type EvalOptions } from '../../src/eval/harness.js';
import { flipCount, flipLabel, flipPoolLabels } from '../../src/eval/noise.js';
import { METHODS, type PreparedMethod } from '../../src/eval/methods.js';
import type { RunRecord } from '../../src/eval/records.js';
import { readRecords } from '../../src/eval/run-log.js';
import { tempDir } from '../helpers/fixtures.js';
import { ICL_TINY_MODEL, iclTinyPairs } from '../helpers/icl-tiny.js';

const pair = (i: number): PairExample => ({
  kind: 'pair',
  id: `p${i}`,
  line: i + 1,
  row: {},
  prompt: `prompt ${i}`,
  chosen: `good ${i}`,
  rejected: `bad ${i}`,
});

describe('flipPoolLabels', () => {
  it('flips exactly round(p·n) pool pairs, swapping chosen and rejected, and leaves the rest as they were', () => {
    for (const n of [1, 5, 16, 32])
      for (const p of [0, 0.1, 0.25, 0.4, 0.5, 1]) {
        const pool = Array.from({ length: n }, (_, i) => pair(i));
        const { pool: noisy, flipped } = flipPoolLabels(pool, p, 3, 'g');
        // The hand count: p·n to the nearest whole pair (0.4 · 16 = 6.4 → 6; 0.1 · 5 = 0.5 → 1).
        expect(flipped.length, `p=${p} n=${n}`).toBe(Math.floor(p * n + 0.5));
        expect(noisy.map((e) => e.id)).toEqual(pool.map((e) => e.id));
        noisy.forEach((e, i) => {
          if (flipped.includes(e.id)) expect([e.chosen, e.rejected]).toEqual([`bad ${i}`, `good ${i}`]);
          else expect(e).toBe(pool[i]);
        });
      }
    expect(flipCount(0.1, 16)).toBe(2);
    expect(flipCount(0.25, 16)).toBe(4);
    expect(flipCount(0.4, 16)).toBe(6);
  });

  it('is seeded by (seed, group): the same set again, another for another seed, nested as p grows', () => {
    const pool = Array.from({ length: 32 }, (_, i) => pair(i));
    const flips = (p: number, seed: number, group = 'g') => flipPoolLabels(pool, p, seed, group).flipped;
    expect(flips(0.25, 0)).toEqual(flips(0.25, 0));
    const sets = [0, 1, 2, 3].map((s) => flips(0.25, s).join());
    expect(new Set(sets).size).toBeGreaterThan(1);
    expect(flips(0.25, 0, 'h').join()).not.toBe(flips(0.25, 0).join());
    for (const seed of [0, 1]) {
      const small = flips(0.1, seed),
        mid = flips(0.25, seed),
        big = flips(0.4, seed);
      expect(small.every((id) => mid.includes(id))).toBe(true);
      expect(mid.every((id) => big.includes(id))).toBe(true);
    }
  });

  it('flips a scalar item yes/no; refuses an unlabelled one and p outside [0, 1]', () => {
    const item: ScalarExample = { kind: 'scalar', id: 's', line: 1, row: {}, prompt: 'q', response: 'r', label: true };
    expect(flipLabel(item).label).toBe(false);
    expect(flipLabel(flipLabel(item))).toEqual(item);
    expect(() => flipLabel({ ...item, label: null })).toThrow(/s: an unlabelled item has no label to flip/);
    expect(() => flipPoolLabels([pair(0)], 1.5, 0, 'g')).toThrow(/must be in \[0, 1\], got 1.5/);
    expect(() => flipPoolLabels([pair(0)], -0.1, 0, 'g')).toThrow(/must be in \[0, 1\]/);
  });
});

describe('label noise in the harness (icl-tiny)', () => {
  let decoder: Decoder;
  let pairs: PairExample[];
  const byId = () => new Map(pairs.map((p) => [p.id, p]));
  const firstLow = () => pairs.filter((p) => p.subset === 'resp-first-low');
  beforeAll(async () => {
    decoder = await Decoder.load(ICL_TINY_MODEL, { cacheDir: tempDir('arm-cache-') });
    pairs = iclTinyPairs(['resp-first-low', 'resp-max-high']);
  }, 60_000);
  afterAll(async () => {
    await decoder?.dispose();
  });

  const options = (over: Partial<EvalOptions> = {}): EvalOptions & { dataset: string; modelId: string } => ({
    methods: ['icl-judge', 'sav-vote', 'zero-shot'],
    fewShot: 16,
    seeds: 2,
    seed: 0,
    pool: 'subset',
    outputDir: tempDir('arm-eval-'),
    saveAll: true,
    chunkSize: 200,
    dataset: 'icl-tiny',
    modelId: 'icl-tiny',
    method: {
      fit: { templateText: '{prompt} {response}', warn: () => undefined },
      batchSize: 32,
      maxLength: decoder.spec.maxPositions,
      iclShots: 4,
      sampleN: 4,
      sampleTemperature: 1,
      savTopHeads: 8,
    },
    ...over,
  });

  it('every method of a seed learns from the same flipped pool, and no pool pair is tested', async () => {
    const seen: { method: string; seed: number; pool: PairExample[] }[] = [];
    const spies = ['icl-judge', 'sav-vote'].map((name) => {
      const original = METHODS[name]!.prepare.bind(METHODS[name]);
      return vi.spyOn(METHODS[name]!, 'prepare').mockImplementation(async (ctx): Promise<PreparedMethod> => {
        seen.push({ method: name, seed: ctx.seed, pool: ctx.pool });
        return original(ctx);
      });
    });
    let noisy: RunRecord[];
    try {
      noisy = await runEval(decoder, firstLow(), options({ poolLabelNoise: 0.25 }));
    } finally {
      spies.forEach((s) => s.mockRestore());
    }
    const original = byId();
    const prepared = noisy.filter((r): r is Extract<RunRecord, { type: 'prepared' }> => r.type === 'prepared');
    expect(prepared).toHaveLength(3 * 2); // 3 methods × 2 seeds
    for (const prep of prepared) {
      // 25% of a 16-pair pool: 4 pairs, in the pool, the same ones for every method of the (seed, subset).
      expect(prep.flipped, prep.method).toHaveLength(4);
      expect(prep.flipped!.every((id) => prep.poolIds.includes(id))).toBe(true);
      const same = prepared.filter((q) => q.seed === prep.seed && q.group === prep.group);
      for (const q of same) expect(q.flipped).toEqual(prep.flipped);
      // No flipped pair (nor any pool pair) is tested.
      const tested = noisy.filter((r) => r.type === 'pair' && r.method === prep.method && r.seed === prep.seed);
      expect(tested.some((r) => r.type === 'pair' && prep.poolIds.includes(r.id))).toBe(false);
    }
    // What the methods were given: exactly the flipped pairs swapped, and the same pool for both methods.
    expect(seen).toHaveLength(2 * 2);
    for (const s of seen) {
      const prep = prepared.find((p) => p.method === s.method && p.seed === s.seed && p.poolIds[0] === s.pool[0]!.id)!;
      for (const p of s.pool) {
        const o = original.get(p.id)!;
        const swapped = prep.flipped!.includes(p.id);
        expect([p.chosen, p.rejected]).toEqual(swapped ? [o.rejected, o.chosen] : [o.chosen, o.rejected]);
      }
      const other = seen.find((t) => t.method !== s.method && t.seed === s.seed && t.pool[0]!.id === s.pool[0]!.id);
      expect(other!.pool).toEqual(s.pool);
    }
  }, 120_000);

  it('a judge shown a wholly flipped pool learns the opposite criterion; test pairs are unchanged', async () => {
    const run = async (p: number) => {
      const outputDir = tempDir('arm-eval-');
      const results = await evaluate(decoder, firstLow(), {
        ...options({ poolLabelNoise: p, seeds: 1, outputDir }),
        methods: ['icl-judge', 'zero-shot'],
      });
      return { results, records: readRecords(path.join(outputDir, 'items.jsonl')) };
    };
    const { results: clean, records: cleanRecords } = await run(0),
      { results: flipped, records: flippedRecords } = await run(1);
    // Shown its 4 demonstrations with the answers reversed, the in-context judge goes below chance (the model's
    // zero-shot prior, ~70% right here, keeps it from 0).
    expect(clean.methods['icl-judge']!.accuracy.mean).toBeGreaterThan(0.9);
    expect(flipped.methods['icl-judge']!.accuracy.mean).toBeLessThan(0.45);
    // The zero-shot judge reads no pool: its scores of the same test pairs are unchanged by the flips.
    const zeroShot = (rs: RunRecord[]) =>
      rs.filter((r) => r.type === 'pair' && r.method === 'zero-shot').map((r) => r.type === 'pair' && [r.id, r.chosen]);
    expect(zeroShot(flippedRecords)).toEqual(zeroShot(cleanRecords));
    expect(zeroShot(cleanRecords).length).toBe(84);
    expect(cleanRecords.some((r) => r.type === 'prepared' && r.flipped !== undefined)).toBe(false);
    expect(flipped.poolLabelNoise).toBe(1);
    expect(clean.poolLabelNoise).toBe(0);
    await expect(
      runEval(decoder, pairs, { ...options({ poolLabelNoise: 0.5 }), methods: ['zero-shot'] }),
    ).rejects.toThrow(/--pool-label-noise 0.5: no method in the run learns from a pool/);
  }, 120_000);
});
