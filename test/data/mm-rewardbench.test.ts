/**
 * Multimodal RewardBench's all_data.json: a synthetic file in its released shape (JSON array, ID / Text / Image /
 * Output1 / Output2 / Better / Category), images under an image folder; categories split as its accuracy script
 * splits them; `arm eval --image-root` end to end on the tiny Qwen2.5-VL fixture.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import fs from 'node:fs';
import path from 'node:path';
import { loadDataset } from '../../src/data/dataset.js';
import {
  looksLikeMultimodalRewardBench,
  mmRewardBenchCategory,
  readMultimodalRewardBench,
} from '../../src/data/mm-rewardbench.js';
import { DataError } from '../../src/data/examples.js';
import { tempDir } from '../helpers/fixtures.js';
import { imageTextCheckpoint, writeShape, SHAPES } from '../helpers/image-text.js';
import { arm } from '../helpers/cli.js';

let root: string;
let file: string;
const CATEGORIES: [string, string][] = [
  ['pairs-1', 'safety'],
  ['hatefulmemes-2', 'safety'],
  ['mathvista-3', 'reasoning'],
  ['EMMA-Coding-4', 'reasoning'],
  ['nocaps-5', 'correctness'],
  ['MMBench-6', 'vqa'],
];

beforeAll(async () => {
  root = tempDir('arm-mmrb-');
  fs.mkdirSync(path.join(root, 'images', 'shapes'), { recursive: true });
  const rows = [];
  let k = 0;
  for (const colour of ['red', 'blue']) {
    for (const shape of SHAPES) {
      const name = await writeShape(path.join(root, 'images', 'shapes'), colour, shape);
      const [id, category] = CATEGORIES[k % CATEGORIES.length]!;
      const right = `a ${colour} ${shape}`,
        wrong = `a ${colour === 'red' ? 'blue' : 'red'} ${shape}`;
      rows.push({
        ID: `${id}-${k}`,
        Text: 'What shape is in the picture ?',
        Image: `images/shapes/${name}`,
        Output1: k % 2 ? wrong : right,
        Output2: k % 2 ? right : wrong,
        Better: k % 2 ? 'Output2' : 'Output1',
        Category: category,
      });
      k++;
    }
  }
  file = path.join(root, 'all_data.json');
  fs.writeFileSync(file, JSON.stringify(rows, null, 2));
});

describe('Multimodal RewardBench reader', () => {
  it('splits safety and reasoning as 2_get_accuracy.py does', () => {
    expect(mmRewardBenchCategory('PAIRS-occupations-1', 'safety')).toBe('safety/bias');
    expect(mmRewardBenchCategory('hatefulmemes-1', 'safety')).toBe('safety/toxicity');
    expect(mmRewardBenchCategory('mathvista-1', 'reasoning')).toBe('reasoning/math');
    expect(mmRewardBenchCategory('EMMA-Coding-1', 'reasoning')).toBe('reasoning/coding');
    expect(mmRewardBenchCategory('nocaps-1', 'correctness')).toBe('correctness');
  });

  it('reads rows as pairs with their image, chosen by Better, the category as subset', async () => {
    expect(looksLikeMultimodalRewardBench(file)).toBe(true);
    const { examples } = readMultimodalRewardBench(file);
    expect(examples).toHaveLength(6);
    const [a, b] = examples as [
      (typeof examples)[0] & { chosen: string; rejected: string },
      (typeof examples)[0] & { chosen: string; rejected: string },
    ];
    expect(a).toMatchObject({
      kind: 'pair',
      id: 'pairs-1-0',
      prompt: 'What shape is in the picture ?',
      chosen: 'a red circle',
      rejected: 'a blue circle',
      subset: 'safety/bias',
    });
    expect(a.images).toEqual([path.join(root, 'images', 'shapes', 'red-circle.png')]);
    expect(b).toMatchObject({ chosen: 'a red square', rejected: 'a blue square', subset: 'safety/toxicity' });
    expect(examples.map((e) => e.subset)).toEqual([
      'safety/bias',
      'safety/toxicity',
      'reasoning/math',
      'reasoning/coding',
      'correctness',
      'vqa',
    ]);
    // Through --dataset, with an explicit image root and a subset filter.
    const loaded = await loadDataset(file, { imageRoot: root, subsets: ['reasoning/math'] });
    expect(loaded.examples.map((e) => e.id)).toEqual(['mathvista-3-2']);
  });

  it('names the row, the field and the missing image', () => {
    const other = tempDir();
    expect(() => readMultimodalRewardBench(file, { imageRoot: other })).toThrow(DataError);
    expect(() => readMultimodalRewardBench(file, { imageRoot: other })).toThrow(
      `${file}[0]: field "Image": image file ${path.join(other, 'images/shapes/red-circle.png')} not found`,
    );
    const bad = path.join(root, 'bad.json');
    fs.writeFileSync(
      bad,
      JSON.stringify([
        {
          ID: 'x',
          Text: 'q',
          Image: 'images/shapes/red-circle.png',
          Output1: 'a',
          Output2: 'b',
          Better: 'Output3',
          Category: 'vqa',
        },
      ]),
    );
    expect(() => readMultimodalRewardBench(bad)).toThrow(
      `${bad}[0]: field "Better": "Output3" is not "Output1" or "Output2"`,
    );
  });

  it('arm eval --image-root reports each category', () => {
    const model = imageTextCheckpoint('qwen2_5_vl');
    const moved = path.join(tempDir(), 'all_data.json');
    fs.copyFileSync(file, moved); // images stay under root: --image-root points there
    const out = path.join(tempDir(), 'eval');
    arm([
      'eval',
      '--model',
      model,
      '--dataset',
      moved,
      '--image-root',
      root,
      '--methods',
      'zero-shot,pick-longer',
      '--few-shot',
      '0',
      '--output-dir',
      out,
    ]);
    const results = JSON.stringify(JSON.parse(fs.readFileSync(path.join(out, 'results.json'), 'utf8')));
    for (const c of ['safety/bias', 'safety/toxicity', 'reasoning/math', 'reasoning/coding', 'correctness', 'vqa'])
      expect(results).toContain(`"${c}"`);
  }, 120_000);
});
