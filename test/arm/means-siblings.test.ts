/**
 * Mean extraction never shows a query its sibling (the other response of its pair, or its pair in the other
 * order) nor any item sharing its prompt: that demonstration would carry the query's answer. Expectations are
 * derived from the example ids and prompts, not from the plan code.
 */
import { describe, expect, it } from 'vitest';
import { planPasses } from '../../src/arm/means.js';
import { judgeItemGroups, judgeItems } from '../../src/arm/fit.js';
import type { Example } from '../../src/data/examples.js';

const pair = (id: string, prompt: string): Example => ({
  kind: 'pair',
  id,
  line: 1,
  row: {},
  prompt,
  chosen: `${id} good`,
  rejected: `${id} bad`,
});
const single = (id: string, prompt: string, label: boolean): Example => ({
  kind: 'scalar',
  id,
  line: 1,
  row: {},
  prompt,
  response: `${id} answer`,
  label,
});

/** The example an item came from, read off its id ("a:chosen", "a:ab" → "a"; a single item keeps its id). */
const sourceOf = (id: string) => id.replace(/:(chosen|rejected|ab|ba)$/, '');

describe('pass plans keep siblings apart', () => {
  const examples = Array.from({ length: 6 }, (_, i) => pair(`p${i}`, `prompt ${i}`));

  for (const kind of ['scalar', 'ranked'] as const) {
    for (const perDemoSet of [1, 4]) {
      const draws = perDemoSet === 1 ? 'independent draws' : 'shared demo draws';
      it(`${kind} items, ${draws}: no pass shows the query's sibling, and every pass has 4 demos`, () => {
        const items = judgeItems(examples, kind);
        const groups = judgeItemGroups(examples, kind);
        expect(groups).toHaveLength(items.length);
        for (let seed = 0; seed < 5; seed++) {
          const plan = planPasses(items.length, 40, 4, seed, perDemoSet, groups);
          expect(plan).toHaveLength(40);
          for (const p of plan) {
            expect(p.demos).toHaveLength(4);
            expect(new Set(p.demos).size).toBe(4);
            for (const d of p.demos) expect(sourceOf(items[d]!.id)).not.toBe(sourceOf(items[p.query]!.id));
          }
          // Same seed, same plan.
          expect(planPasses(items.length, 40, 4, seed, perDemoSet, groups)).toEqual(plan);
        }
      });
    }
  }

  it('items of different pairs on the same prompt are one group too', () => {
    const shared = [
      pair('a', 'same prompt'),
      pair('b', 'same prompt'),
      pair('c', 'other'),
      single('d', 'third', true),
      single('e', 'fourth', false),
    ];
    // Expected by hand: a's and b's four items share "same prompt"; c's two share theirs; d and e stand alone.
    expect(judgeItemGroups(shared, 'scalar')).toEqual([0, 0, 0, 0, 1, 1, 2, 3]);
    const items = judgeItems(shared, 'scalar');
    const promptOf = (i: number) => items[i]!.prompt;
    for (const perDemoSet of [1, 3]) {
      for (const p of planPasses(items.length, 30, 3, 7, perDemoSet, judgeItemGroups(shared, 'scalar'))) {
        for (const d of p.demos) expect(promptOf(d)).not.toBe(promptOf(p.query));
        // k = min(shots, n − own group size): 8 − 4 = 4 ≥ 3 for a/b queries, 8 − 2 = 6 for c, 8 − 1 = 7 for d/e.
        expect(p.demos).toHaveLength(3);
      }
    }
  });

  it('k = min(shots, items − own group size) on tiny pools', () => {
    // Two pairs (4 scalar items): a query's group holds 2 items, so 2 demos are left whatever --shots asks for.
    const two = [pair('a', 'x'), pair('b', 'y')];
    for (const p of planPasses(4, 20, 4, 1, 1, judgeItemGroups(two, 'scalar'))) expect(p.demos).toHaveLength(2);
    for (const p of planPasses(4, 20, 4, 1, 2, judgeItemGroups(two, 'scalar'))) expect(p.demos).toHaveLength(2);
    // One pair and one single item: the pair's items see 1 demo (the single), the single sees 2 (the pair).
    const mixed = [pair('a', 'x'), single('s', 'y', true)];
    const plan = planPasses(3, 30, 4, 2, 1, judgeItemGroups(mixed, 'scalar'));
    for (const p of plan) expect(p.demos.length).toBe(p.query === 2 ? 2 : 1);
    expect(new Set(plan.map((p) => p.query)).size).toBe(3);
    // A lone pair: no item outside its group, so the passes are zero-shot rather than showing the sibling.
    for (const p of planPasses(2, 5, 4, 0, 1, judgeItemGroups([pair('a', 'x')], 'scalar'))) expect(p.demos).toEqual([]);
    for (const p of planPasses(2, 5, 4, 0, 3, judgeItemGroups([pair('a', 'x')], 'scalar'))) expect(p.demos).toEqual([]);
  });

  it('without groups every item stands alone (the plan of earlier builds)', () => {
    for (const p of planPasses(5, 30, 4, 3)) {
      expect(p.demos).toHaveLength(4);
      expect(p.demos).not.toContain(p.query);
    }
  });
});
