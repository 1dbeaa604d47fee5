/**
 * Scalar items that share a prompt (GRPO's many samples of one prompt) share its prefix when scored, as the two
 * responses of a pair do: each prompt runs once, and every score equals the item scored on its own.
 */
import { expect, it } from 'vitest';
import { Decoder } from '../../src/model/decoder.js';
import { zeroShotRM } from '../../src/arm/fit.js';
import { render } from '../../src/arm/template.js';
import type { Example } from '../../src/data/examples.js';
import { STORIES, tempDir } from '../helpers/fixtures.js';

it('samples of two prompts: each prompt is fed once, the scores are those of each item alone', async () => {
  const decoder = await Decoder.load(STORIES, { cacheDir: tempDir('arm-cache-'), threads: 1 });
  try {
    const rm = zeroShotRM(decoder);
    const prompts = [
      'Once upon a time there was a little girl named Lily. She loved to play outside in the park with her friends.',
      'Tom had a big red ball. He liked to throw it high into the sky and catch it with both hands.',
    ];
    const responses = [
      'She was happy.',
      'The dog ran away.',
      'It rained all day long and they stayed home.',
      'They ate cake.',
    ];
    const examples: Example[] = prompts.flatMap((prompt, p) =>
      responses.map((response, i): Example => ({
        kind: 'scalar',
        id: `p${p}s${i}`,
        line: 1,
        row: {},
        prompt,
        response,
        label: null,
      })),
    );
    const alone: { reward: number }[] = [];
    for (const e of examples) alone.push((await rm.scoreExamples([e]))[0]! as { reward: number });

    // Expected tokens fed: per prompt, its common prefix once plus each item's remainder.
    const meta = rm.criterion.meta;
    const ids = examples.map(
      (e) =>
        render(
          decoder.tokenizer,
          meta.template,
          [],
          { id: e.id, prompt: e.prompt, fields: { response: (e as { response: string }).response }, answer: 0 },
          meta.hyper.maxLength,
        ).ids,
    );
    let expected = 0;
    for (let p = 0; p < prompts.length; p++) {
      const group = ids.slice(p * responses.length, (p + 1) * responses.length);
      let common = Math.min(...group.map((s) => s.length)) - 1;
      for (const s of group) {
        let k = 0;
        while (k < common && s[k] === group[0]![k]) k++;
        common = k;
      }
      expect(common).toBeGreaterThan(20); // the prompt really is shared
      expected += common + group.reduce((n, s) => n + s.length - common, 0);
    }
    const before = decoder.stats.tokens;
    const together = await rm.scoreExamples(examples);
    expect(decoder.stats.tokens - before).toBe(expected);
    together.forEach((s, i) =>
      expect(Math.abs((s as { reward: number }).reward - alone[i]!.reward)).toBeLessThan(1e-5),
    );
  } finally {
    await decoder.dispose();
  }
});
