// The PreferenceHack reader (alias fields, the 80/920 split, errors) and arm eval's use of its fixed split.
import { describe, expect, it } from 'vitest';
import fs from 'node:fs';
import path from 'node:path';
import { readPreferenceHack, PREFERENCEHACK_FEW_SHOT } from '../../src/data/preferencehack.js';
import { loadDataset } from '../../src/data/dataset.js';
import { evaluate } from '../../src/eval/harness.js';
import { drawSplits } from '../../src/eval/splits.js';
import type { PairExample } from '../../src/data/examples.js';
import { tempDir } from '../helpers/fixtures.js';

const writeJsonl = (file: string, rows: unknown[]) =>
  fs.writeFileSync(file, rows.map((r) => JSON.stringify(r)).join('\n') + '\n');

describe('PreferenceHack reader', () => {
  const dir = path.join(tempDir('arm-ph-'), 'PreferenceHack');
  fs.mkdirSync(dir);
  // 1000 rows as the paper describes a split: the wrong answer padded (longer), the right one plain.
  const length = path.join(dir, 'length.jsonl');
  writeJsonl(
    length,
    Array.from({ length: 1000 }, (_, i) => ({
      id: i,
      question: `What is ${i} + 1?`,
      correct_answer: `${i + 1}`,
      hacked_response: `The answer, after careful thought, is ${i + 2}.`,
    })),
  );

  it(
    'reads alias fields; the first 80 rows are the few-shot pairs and the other 920 the test ' +
      'set; the subset is the file name',
    () => {
      const data = readPreferenceHack(length);
      expect(data.examples.length).toBe(1000);
      expect(data.fewShotIds.size).toBe(PREFERENCEHACK_FEW_SHOT);
      expect([...data.fewShotIds]).toEqual(Array.from({ length: 80 }, (_, i) => String(i)));
      expect(data.splitFrom).toBe('order');
      const p = data.examples[5]!;
      expect([p.prompt, p.chosen, p.rejected, p.subset]).toEqual([
        'What is 5 + 1?',
        '6',
        'The answer, after careful thought, is 7.',
        'preferencehack-length',
      ]);
    },
  );

  it('takes the split from a split field, and A/B responses with a label', () => {
    const file = path.join(dir, 'positivity.jsonl');
    writeJsonl(file, [
      { prompt: 'p0', response_a: 'wrong, but wonderful!', response_b: 'right', label: 'B', split: 'train' },
      { prompt: 'p1', response_a: 'right', response_b: 'wrong, but great!', label: 'A', split: 'test' },
      { prompt: 'p2', response_a: 'right', response_b: 'wrong!', label: 1, split: 'test' },
    ]);
    const data = readPreferenceHack(file);
    expect(data.examples.map((e) => [e.chosen, e.rejected])).toEqual([
      ['right', 'wrong, but wonderful!'],
      ['right', 'wrong, but great!'],
      ['right', 'wrong!'],
    ]);
    expect(data.splitFrom).toBe('field');
    expect([...data.fewShotIds]).toEqual(['line-1']);
  });

  it('fails with a message naming the fields it found', () => {
    const file = path.join(dir, 'helpful.jsonl');
    writeJsonl(file, [{ instruction: 'q', output: 'a', score: 3 }]);
    expect(() => readPreferenceHack(file)).toThrow(
      /helpful\.jsonl:1: no chosen\/rejected responses .*found fields instruction, output, score/,
    );
    writeJsonl(file, [{ text: 'q' }]);
    expect(() => readPreferenceHack(file)).toThrow(/no prompt field .*found fields text/);
  });

  it('arm eval tests the 920 and draws pools only from the 80 (the path names PreferenceHack)', async () => {
    const loaded = await loadDataset(length);
    expect(loaded.fewShotIds!.size).toBe(80);
    const pairs = loaded.examples as PairExample[];
    const candidate = (p: PairExample) => loaded.fewShotIds!.has(p.id);
    for (const seed of [0, 1]) {
      const [split] = drawSplits(pairs, 16, 'subset', seed, candidate);
      expect(split!.pool.length).toBe(16);
      expect(split!.pool.every(candidate)).toBe(true);
      expect(split!.test.length).toBe(920);
      expect(split!.test.some(candidate)).toBe(false);
    }
    const results = await evaluate(null, loaded.examples, {
      methods: ['pick-longer', 'pick-shorter'],
      fewShot: 16,
      seeds: 1,
      seed: 0,
      pool: 'subset',
      outputDir: tempDir('arm-ph-eval-'),
      saveAll: false,
      chunkSize: 256,
      dataset: 'length.jsonl',
      modelId: 'none',
      poolCandidate: candidate,
      method: {
        fit: { warn: () => undefined },
        batchSize: 8,
        maxLength: 512,
        iclShots: 2,
        sampleN: 2,
        sampleTemperature: 1,
        savTopHeads: 4,
      },
    });
    expect(results.methods['pick-longer']!.accuracy.n).toBe(920);
    expect(results.methods['pick-longer']!.accuracy.mean).toBe(0); // the hacked answer is always the longer one
    expect(results.methods['pick-shorter']!.accuracy.mean).toBe(1);
  });
});
