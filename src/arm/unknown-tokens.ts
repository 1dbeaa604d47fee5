/**
 * How much of a judge prompt the model's vocabulary knows. Text the vocabulary lacks becomes unknown tokens
 * (`<unk>`, or sentencepiece byte fallback for characters it has no token for: Tokenizer.unknownTokenIds), and a
 * judge that reads mostly those still answers, with scores that look like any others and mean little: icl-tiny
 * (a 64-word vocabulary) fitted with the default English template scores 57% where "{prompt} {response}" scores 99%.
 *
 * Two measures, over text tokens only (control tokens are the chat template's markup, known by construction):
 *  - the judge prompts as the model reads them, summed over a batch (a fit's pool, a scored chunk, a request);
 *  - the template's own text: the judge prompt of an item whose prompt and responses are empty, i.e. the
 *    --template-text and the chat or plain format around it, measured once per template.
 */
import type { Tokenizer, UnknownCount } from '../model/tokenizer.js';
import type { CriterionMeta } from './criterion.js';
import { FitError } from './fit-errors.js';
import type { ItemScore, PairScore } from './rm.js';
import { render, type JudgeItem, type TemplateSpec } from './template.js';

/** More than this share of text tokens unknown is "mostly unknown": `arm fit` refuses, scoring warns. */
export const MOSTLY_UNKNOWN = 0.5;

/**
 * The judge prompts' unknown share (`rate`: 0 when they hold no text tokens), and how much of the template's own
 * text the vocabulary knows (`template.knownRate`: 1 when it has no text tokens). A criterion records its fit's.
 */
export type UnknownTokenReport = NonNullable<CriterionMeta['unknownTokens']>;

const templateMemo = new WeakMap<Tokenizer, Map<string, UnknownCount>>();

/** Text tokens of the template's own text (an item with empty prompt and responses), and the unknown ones. */
function templateUnknown(tokenizer: Tokenizer, template: TemplateSpec): UnknownCount {
  let memo = templateMemo.get(tokenizer);
  if (!memo) templateMemo.set(tokenizer, (memo = new Map()));
  const key = JSON.stringify(template);
  let count = memo.get(key);
  if (!count) {
    const empty: JudgeItem = {
      id: 'template',
      prompt: '',
      fields: template.kind === 'scalar' ? { response: '' } : { response_a: '', response_b: '' },
      answer: 0,
    };
    count = render(tokenizer, template, [], empty, Number.MAX_SAFE_INTEGER).unknown;
    memo.set(key, count);
  }
  return count;
}

/**
 * The report for judge prompts holding `count` text tokens, rendered with a template whose own text holds `own`
 * (templateUnknown; null where it is not known, e.g. a criterion fitted before it was recorded: then taken as known).
 */
function unknownTokenReport(count: UnknownCount, own: UnknownCount | null): UnknownTokenReport {
  own ??= { unknown: 0, text: 0 };
  return {
    rate: count.text ? count.unknown / count.text : 0,
    unknown: count.unknown,
    text: count.text,
    template: { knownRate: own.text ? 1 - own.unknown / own.text : 1, ...own },
  };
}

/** The text tokens, and the unknown ones, of the judge prompts behind some scores (a pair's two responses). */
export function scoresUnknown(scores: readonly (PairScore | ItemScore)[]): UnknownCount {
  const count = { unknown: 0, text: 0 };
  for (const s of scores)
    for (const item of 'detail' in s ? s.detail : [s]) {
      count.unknown += item.unknownTokens ?? 0;
      count.text += item.textTokens ?? 0;
    }
  return count;
}

const percent = (x: number) => `${(100 * x).toFixed(x > 0 && x < 0.01 ? 2 : 0)}%`;

/**
 * The warning for a report whose template or judge prompts are mostly unknown (null otherwise): what was measured,
 * and what to change.
 */
function unknownTokenWarning(report: UnknownTokenReport, template: TemplateSpec): string | null {
  const { rate, unknown, text } = report;
  const own = report.template;
  const prompts =
    `${percent(rate)} of the judge prompts' text tokens (${unknown} of ${text}) are unknown to the model's ` +
    'vocabulary (<unk>, or byte fallback for characters it has no token for)';
  if (own.knownRate < 1 - MOSTLY_UNKNOWN)
    return (
      `the judge template is mostly unknown to the model's vocabulary: of its own text ` +
      `(${JSON.stringify(template.text)} and the ${template.chat ? 'chat' : 'plain'} format around it) only ` +
      `${own.text - own.unknown} of ${own.text} tokens are known, and ${prompts}; the model reads unknown tokens ` +
      'where the question should be, and its scores mean little. Write the template in words the model knows ' +
      `(--template-text; a model trained on bare items takes "{prompt} {response}")` +
      (template.chat ? '' : ' and check that the plain format suits it (--chat)')
    );
  if (rate > MOSTLY_UNKNOWN)
    return (
      `${prompts}, while the template's own text is ${percent(own.knownRate)} known: the inputs are mostly text ` +
      'the model has no tokens for (another language or script, or markup it never saw), and its scores mean ' +
      'little. Score inputs in its vocabulary, or use a model that knows them'
    );
  return null;
}

/**
 * A fit's report on its pool (`count`: the pool items' judge prompts, each rendered alone); when the template or
 * the prompts are mostly unknown it refuses (FitError) or warns, as `refuse` says.
 */
export function checkFitVocabulary(
  tokenizer: Tokenizer,
  template: TemplateSpec,
  count: UnknownCount,
  opts: { refuse: boolean; warn: (message: string) => void },
): UnknownTokenReport {
  const report = unknownTokenReport(count, templateUnknown(tokenizer, template));
  const warning = unknownTokenWarning(report, template);
  if (warning && opts.refuse)
    throw new FitError(`not fitted: ${warning}. To fit anyway pass --force (library: refuseMostlyUnknown: false)`);
  if (warning) opts.warn(warning);
  return report;
}

/**
 * Measures batch after batch of scores (a file's chunks, a server's requests) and warns when one is mostly unknown:
 * the first time, then at most once per `intervalMs` (default: never again), saying how many batches were since.
 */
export class UnknownTokenWatch {
  private lastWarned = -Infinity;
  private unwarned = 0;

  private readonly own: UnknownCount | null;

  /**
   * `tokenizer` measures the template's own text; where none is at hand (the server's HTTP side) it is null and
   * `opts.templateCount` is the criterion's record of it (absent: taken as known).
   */
  constructor(
    tokenizer: Tokenizer | null,
    private readonly template: TemplateSpec,
    private readonly warn: (message: string) => void,
    private readonly opts: { intervalMs?: number; now?: () => number; templateCount?: UnknownCount } = {},
  ) {
    this.own = tokenizer ? templateUnknown(tokenizer, template) : (opts.templateCount ?? null);
  }

  /** The batch's report; `where` names the batch in the warning (e.g. "rows 1–256"). */
  add(scores: readonly (PairScore | ItemScore)[], where: string): UnknownTokenReport {
    const report = unknownTokenReport(scoresUnknown(scores), this.own);
    const warning = unknownTokenWarning(report, this.template);
    if (!warning) return report;
    const now = (this.opts.now ?? Date.now)();
    if (now - this.lastWarned >= (this.opts.intervalMs ?? Infinity) || this.lastWarned === -Infinity) {
      const since = this.unwarned ? ` (and ${this.unwarned} more such batches since the last warning)` : '';
      this.warn(`${where}: ${warning}${since}`);
      this.lastWarned = now;
      this.unwarned = 0;
    } else this.unwarned++;
    return report;
  }
}
