/**
 * The fit's judge items. Each few-shot example becomes one item (scalar) or two (a pair's two responses, or a
 * pair in both orders for the ranked template); the items of one prompt form a group that mean extraction keeps
 * apart; and the pool a fit uses leaves out the items that cannot fit --max-length.
 */
import type { Decoder } from '../model/decoder.js';
import type { UnknownCount } from '../model/tokenizer.js';
import { imagesOf, promptIdentity, toScalarItems, type Example } from '../data/examples.js';
import { FitError } from './fit-errors.js';
import { judgeImagesFor, type JudgeImages } from './images.js';
import { render, TooLongError, type JudgeItem, type TemplateKind, type TemplateSpec } from './template.js';

/** Judge items for a template kind: scalar → one per response; ranked → each pair in both orders. */
export function judgeItems(examples: Example[], kind: TemplateKind): JudgeItem[] {
  if (kind === 'scalar') {
    return toScalarItems(examples).map((s) => ({
      id: s.id,
      prompt: s.prompt,
      fields: { response: s.response },
      answer: s.label ? 0 : 1,
      ...imagesOf(s),
    }));
  }
  return examples.flatMap((e): JudgeItem[] => {
    if (e.kind !== 'pair')
      throw new FitError(
        `example ${e.id} (line ${e.line}): the ranked template needs pairs {prompt, chosen, rejected}`,
      );
    return [
      {
        id: `${e.id}:ab`,
        prompt: e.prompt,
        fields: { response_a: e.chosen, response_b: e.rejected },
        answer: 0,
        ...imagesOf(e),
      },
      {
        id: `${e.id}:ba`,
        prompt: e.prompt,
        fields: { response_a: e.rejected, response_b: e.chosen },
        answer: 1,
        ...imagesOf(e),
      },
    ];
  });
}

/**
 * Each judge item's group, in judgeItems' order: items from one example (a pair's two responses, or a pair in
 * both orders) share a group, and so do all items of examples with the same prompt text (two pairs on one
 * prompt, or a duplicate). Mean extraction never shows a query an item of its own group as a demonstration.
 */
export function judgeItemGroups(examples: Example[], kind: TemplateKind): number[] {
  const byPrompt = new Map<string, number>();
  return examples.flatMap((e) => {
    const prompt = promptIdentity(e);
    if (!byPrompt.has(prompt)) byPrompt.set(prompt, byPrompt.size);
    const group = byPrompt.get(prompt)!;
    const count = kind === 'ranked' || e.kind === 'pair' ? 2 : 1;
    return Array.from({ length: count }, () => group);
  });
}

/** The judge items a fit uses, and what it needs to know about those it does not. */
export interface FitPool {
  /** Every judge item of the examples, in judgeItems' order. */
  allItems: JudgeItem[];
  /** The items that fit --max-length even without their prompt: the fit's pool. */
  items: JudgeItem[];
  /** Each pool item's group (judgeItemGroups). */
  groupOf: number[];
  /** Image rows: the decoder's image handling, with every file read; null when no item has an image. */
  images: JudgeImages | null;
  /** The pool items' judge prompts, each rendered alone: text tokens, and those the vocabulary did not know. */
  unknown: UnknownCount;
}

/**
 * The fit's pool: the judge items of `examples` that fit --max-length even without their prompt (the others are
 * left out, with a warning). Refuses a pool of a single label class; warns when groups are too few for `shots`
 * demonstrations per pass.
 */
export async function fitPool(
  decoder: Decoder,
  examples: Example[],
  template: TemplateSpec,
  opts: { maxLength: number; shots: number; warn: (message: string) => void },
): Promise<FitPool> {
  const { maxLength, shots, warn } = opts;
  const allItems = judgeItems(examples, template.kind);
  const allGroups = judgeItemGroups(examples, template.kind);
  // Image rows: every image's size and hash read now (length budgets); the vision tower runs later, once per image.
  const images = await judgeImagesFor(decoder, allItems);
  const unknown = { unknown: 0, text: 0 };
  const fits = allItems.map((it) => {
    try {
      const rendered = render(decoder.tokenizer, template, [], it, maxLength, images);
      unknown.unknown += rendered.unknown.unknown;
      unknown.text += rendered.unknown.text;
      return true;
    } catch (e) {
      if (!(e instanceof TooLongError)) throw e;
      return false;
    }
  });
  const items = allItems.filter((_, i) => fits[i]);
  const groupOf = allGroups.filter((_, i) => fits[i]);
  if (items.length < allItems.length)
    warn(
      `${allItems.length - items.length} of ${allItems.length} judge items do not fit --max-length ${maxLength} ` +
        'even without their prompt; they are left out of the fit',
    );
  checkPool(items, groupOf, shots, warn);
  return { allItems, items, groupOf, images, unknown };
}

/** Refuses a pool of a single label class; warns when its groups leave a pass fewer than `shots` demonstrations. */
function checkPool(items: JudgeItem[], groupOf: number[], shots: number, warn: (message: string) => void): void {
  const answers = new Set(items.map((it) => it.answer));
  if (answers.size < 2)
    throw new FitError(
      `the few-shot examples hold a single label class (${items.length} item${items.length === 1 ? '' : 's'}, ` +
        `all "${items[0]?.answer === 0 ? 'yes' : 'no'}"); give both yes and no examples`,
    );
  if (shots > 0) {
    const groupSize = new Map<number, number>();
    for (const g of groupOf) groupSize.set(g, (groupSize.get(g) ?? 0) + 1);
    const fewest = items.length - Math.max(...groupSize.values());
    if (fewest < shots)
      warn(
        `only ${items.length} judge items in ${groupSize.size} prompt group${groupSize.size === 1 ? '' : 's'}: ` +
          'a query is never shown an item of its own group, so some passes use ' +
          `${fewest} demonstrations instead of ${shots}`,
      );
  }
}
