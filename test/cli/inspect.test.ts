/**
 * `arm inspect` on criterion files whose heads and probabilities the test sets: the template text, each selected
 * head's final probability and the read-out that picked the mask, a map whose glyphs are all in its legend and
 * whose cells follow the probabilities; and, for several files, the combined map and the pairwise counts.
 */
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import path from 'node:path';
import { Decoder } from '../../src/model/decoder.js';
import { readExamples } from '../../src/data/examples.js';
import { fitActivationRM } from '../../src/arm/fit.js';
import { saveCriterion, type Criterion } from '../../src/arm/criterion.js';
import { main } from '../../src/cli/main.js';
import { tempDir } from '../helpers/fixtures.js';

const ICL_TINY = path.resolve(import.meta.dirname, '../../models/icl-tiny');
const PAIRS = path.resolve(import.meta.dirname, '../../examples/icl-tiny/last-low/few.jsonl');
const dir = tempDir('arm-inspect-');
let fitted: Criterion;

beforeAll(async () => {
  const decoder = await Decoder.load(ICL_TINY, { cacheDir: tempDir('arm-cache-'), threads: 1, quiet: true });
  try {
    const examples = readExamples(PAIRS).examples.slice(0, 6);
    const options = { passes: 5, shots: 2, seed: 3, templateText: '{prompt} {response}', warn: () => {} };
    fitted = (await fitActivationRM(decoder, examples, { ...options, reinforce: { steps: 4, samples: 4 } })).criterion;
  } finally {
    await decoder.dispose();
  }
});
afterAll(() => vi.restoreAllMocks());

/** A copy of the fitted criterion with these heads and σ(θ) (every other head `rest`), saved as `name`. */
function variant(name: string, heads: [number, number][], probs: Record<string, number>, rest = 0.05): string {
  const { numLayers: L, numHeads: H } = fitted.meta.model;
  const p = new Float32Array(L * H).fill(rest);
  for (const [key, value] of Object.entries(probs)) {
    const [l, h] = key.slice(1).split('H').map(Number);
    p[l! * H + h!] = value;
  }
  const file = path.join(dir, `${name}.arm.safetensors`);
  saveCriterion(file, { ...fitted, meta: { ...fitted.meta, heads }, probs: p });
  return file;
}

async function inspect(...args: string[]): Promise<string> {
  let out = '';
  const spy = vi.spyOn(process.stdout, 'write').mockImplementation((s) => {
    out += String(s);
    return true;
  });
  try {
    await main(['node', 'arm', 'inspect', ...args]);
  } finally {
    spy.mockRestore();
  }
  expect(process.exitCode ?? 0).toBe(0);
  return out;
}

/** The map rows under the header line that follows `after`: `L<l>` → its cells. */
function mapRows(text: string, after: RegExp, width: number): Map<string, string[]> {
  const lines = text.split('\n');
  const start = lines.findIndex((l) => after.test(l)) + 1;
  const first = lines.slice(start).findIndex((l) => /^ {2}L\d/.test(l)) + start;
  const rows = new Map<string, string[]>();
  for (const line of lines.slice(first)) {
    const m = /^ {2}(L\d+) (.*)$/.exec(line);
    if (!m) break;
    const cells = (m[2]!.match(new RegExp(`.{1,${width + 1}}`, 'g')) ?? []).map((c) => c.trim());
    rows.set(m[1]!, cells);
  }
  return rows;
}

describe('arm inspect', () => {
  it('one file: template text, why each head was chosen, and a map whose glyphs are all in its legend', async () => {
    const heads: [number, number][] = [
      [0, 1],
      [2, 3],
      [3, 7],
    ];
    const file = variant('a', heads, { L0H1: 0.9, L2H3: 0.7, L3H7: 0.1, L1H0: 0.5, L1H1: 0.3 });
    const out = await inspect(file);
    expect(out).toContain('text       "{prompt} {response}"');
    // Each selected head with its final probability, highest first, and the read-out's rule.
    expect(out).toMatch(/L0H1 0\.900 +L2H3 0\.700 +L3H7 0\.100/);
    expect(out).toMatch(/masks were sampled from σ\(θ\),\s+and the one with the lowest mean loss/);
    expect(out).toContain(`loss ${fitted.meta.readout!.meanLoss.toFixed(4)}`);

    const legend = /legend: (.*)$/m.exec(out)![1]!;
    const rows = mapRows(out, /legend:/, 2);
    expect([...rows.keys()]).toEqual(['L0', 'L1', 'L2', 'L3']);
    const expected: Record<string, string> = { L0H1: '█*', L2H3: '▓*', L3H7: '·*', L1H0: '▒', L1H1: '░' };
    for (const [l, cells] of rows) {
      expect(cells.length).toBe(8);
      cells.forEach((cell, h) => {
        expect(cell).toBe(expected[`${l}H${h}`] ?? '·');
        for (const glyph of cell) expect(legend).toContain(glyph);
      });
    }
  });

  it('several files: the combined map names the criteria selecting each head; pairwise counts', async () => {
    const a = variant(
      'first',
      [
        [0, 0],
        [1, 1],
        [2, 3],
      ],
      {},
    );
    const b = variant(
      'second',
      [
        [1, 1],
        [2, 3],
        [3, 7],
        [0, 5],
      ],
      {},
    );
    const c = variant('third', [[3, 7]], {});
    const out = await inspect(a, b, c);
    expect(out).toMatch(/^A = first\.arm\.safetensors: 3 heads$/m);
    expect(out).toMatch(/^C = third\.arm\.safetensors: 1 heads$/m);
    const shared = mapRows(out, /shared heads/, 3);
    const expected: Record<string, string> = { L0H0: 'A', L1H1: 'AB', L2H3: 'AB', L3H7: 'BC', L0H5: 'B' };
    for (const [l, cells] of shared) cells.forEach((cell, h) => expect(cell).toBe(expected[`${l}H${h}`] ?? '·'));
    expect(out).toMatch(/selected by all 3: none/);
    const table = out.split('\n').slice(out.split('\n').findIndex((l) => /heads in common/.test(l)) + 2);
    expect(table.slice(0, 3).map((l) => l.trim().split(/\s+/))).toEqual([
      ['A', '3', '2', '0'],
      ['B', '2', '4', '1'],
      ['C', '0', '1', '1'],
    ]);
    expect(await inspect(a, b)).toMatch(/selected by all 2: L1H1 L2H3/);
  });
});
