/**
 * Judge prompts. A JudgeItem is what the model is asked about (placeholders to fill) plus the index of the
 * correct answer word. The scalar template asks Yes/No about one response; the ranked template asks A/B
 * about two. Prompts go through the model's chat template when it has one (demonstrations as earlier
 * user/assistant turns), and through a plain "Answer:" format when it has none.
 */
import { createHash } from 'node:crypto';
import type { ChatInput, Tokenizer, UnknownCount } from '../model/tokenizer.js';
import type { TextPiece } from '../model/text-pieces.js';
import { promptText, type Prompt } from '../data/examples.js';

export type TemplateKind = 'scalar' | 'ranked';

export const DEFAULT_TEMPLATES: Readonly<Record<TemplateKind, string>> = Object.freeze({
  scalar:
    'Prompt: {prompt}\nResponse: {response}\nDoes this response meet the specified criteria? Answer with Yes or No.',
  ranked:
    'Prompt: {prompt}\nResponse A: {response_a}\nResponse B: {response_b}\n' +
    'Which response is better? Answer with A or B.',
});
const ANSWER_WORDS: Readonly<Record<TemplateKind, readonly [string, string]>> = Object.freeze({
  scalar: ['Yes', 'No'],
  ranked: ['A', 'B'],
});
const PLACEHOLDERS: Readonly<Record<TemplateKind, readonly string[]>> = Object.freeze({
  scalar: ['prompt', 'response'],
  ranked: ['prompt', 'response_a', 'response_b'],
});

export interface TemplateSpec {
  kind: TemplateKind;
  text: string;
  /** true: render through the tokenizer's chat template; false: plain text. */
  chat: boolean;
  /**
   * Extra variables for the chat template (transformers' `apply_chat_template(**kwargs)`). Absent when none:
   * criterion files written before it render as they did.
   */
  templateKwargs?: Record<string, unknown>;
}

/** One judged question: `prompt` may be truncated from its start; the other fields never are. */
export interface JudgeItem {
  id: string;
  prompt: Prompt;
  fields: Record<string, string>; // response | response_a, response_b
  answer: 0 | 1; // index into ANSWER_WORDS[kind]
  /** Image files shown with the prompt (image-text checkpoints), placed before the text of its user turn. */
  images?: readonly string[];
}

/**
 * How images enter a rendered prompt: `markup` is the text of one image placeholder (the checkpoint's own
 * tokens), `placeholderText` the placeholder token alone, and `tokens(file)` the placeholder count an image
 * expands to (for the length budget).
 */
export interface ImageRendering {
  readonly markup: string;
  readonly placeholderText: string;
  tokens(file: string): number;
}

/**
 * `templateKwargs` go to the chat template as they are, over one default: a template that takes
 * `enable_thinking` (Qwen3) is rendered with thinking off, because a judge's verdict is read at the end of the
 * generation prompt and, with thinking on, the model's next token there is `<think>`, not the verdict.
 */
export function makeTemplate(
  kind: TemplateKind,
  opts: { text?: string; chat?: boolean | 'auto'; templateKwargs?: Record<string, unknown> },
  tokenizer: Tokenizer,
): TemplateSpec {
  const text = opts.text ?? DEFAULT_TEMPLATES[kind];
  for (const p of PLACEHOLDERS[kind]) {
    if (!text.includes(`{${p}}`)) throw new Error(`template: the ${kind} template needs a {${p}} placeholder`);
  }
  const chat = opts.chat === undefined || opts.chat === 'auto' ? tokenizer.hasChatTemplate : opts.chat;
  if (chat && !tokenizer.hasChatTemplate)
    throw new Error('template: --chat was asked for but the tokenizer has no chat_template');
  if (!chat) {
    if (opts.templateKwargs && Object.keys(opts.templateKwargs).length)
      throw new Error(
        'template: chat template arguments were given, but prompts are rendered without the chat template',
      );
    return { kind, text, chat };
  }
  const templateKwargs = {
    ...(takesEnableThinking(tokenizer) ? { enable_thinking: false } : {}),
    ...opts.templateKwargs,
  };
  return Object.keys(templateKwargs).length ? { kind, text, chat, templateKwargs } : { kind, text, chat };
}

/** Whether the chat template reads `enable_thinking`: its generation prompt renders differently with it off. */
function takesEnableThinking(tokenizer: Tokenizer): boolean {
  const probe = [{ role: 'user', content: 'Is it?' }];
  return (
    tokenizer.renderChat(probe, { addGenerationPrompt: true }) !==
    tokenizer.renderChat(probe, { addGenerationPrompt: true, templateKwargs: { enable_thinking: false } })
  );
}

/** Fills placeholders in one pass, so text inside a prompt that looks like {response} is left alone. */
export function fill(template: TemplateSpec, item: JudgeItem, promptOverride?: string): string {
  const values: Record<string, string> = { ...item.fields, prompt: promptOverride ?? promptText(item.prompt) };
  return template.text.replace(/\{(prompt|response|response_a|response_b)\}/g, (m, key: string) => values[key] ?? m);
}

/**
 * `ids` carry one placeholder per entry of `images` (the shown items' image files, in order), not yet expanded.
 * `unknown`: the prompt's text tokens and how many of them the vocabulary did not know (unknown-tokens.ts).
 */
export interface Rendered {
  ids: number[];
  truncatedTokens: number;
  droppedDemos: number;
  images: string[];
  unknown: UnknownCount;
}

/**
 * Length bounds that keep huge inputs cheap. A prompt is cut by characters before it is tokenised: only its last
 * `maxLength × PROMPT_WINDOW_CHARS_PER_TOKEN` characters are read (widened when that window holds too few
 * tokens), so a megabyte prompt costs what a budget-sized one does. A response or question longer than
 * `maxLength × FIELD_CHARS_PER_TOKEN_LIMIT` characters is too long without tokenising it (no real text averages
 * 64 characters a token).
 */
export const PROMPT_WINDOW_CHARS_PER_TOKEN = 16;
export const FIELD_CHARS_PER_TOKEN_LIMIT = 64;

/** The query's response and question alone exceed the length budget: the item cannot be judged at this length. */
export class TooLongError extends Error {
  override name = 'TooLongError';
  constructor(
    readonly itemId: string,
    readonly tokens: number,
    readonly maxLength: number,
    /** `tokens` is a lower bound estimated from characters (the text was too long to tokenise). */
    opts: { estimated?: boolean } = {},
  ) {
    super(
      `item ${itemId}: ${opts.estimated ? 'over ' : ''}${tokens} tokens exceed --max-length ${maxLength} ` +
        'even with its prompt removed (the response and the question are never cut)',
    );
  }
}

/**
 * Token ids of `demos` (shown with their answers) followed by `query` (answer left out). When the total
 * exceeds `maxLength`, prompts are cut from their start, the longest prompt first; if that is not enough,
 * demonstrations are dropped (longest first). The query's response and the question are never cut: if they
 * alone do not fit, TooLongError.
 */
export function render(
  tokenizer: Tokenizer,
  template: TemplateSpec,
  demos: JudgeItem[],
  query: JudgeItem,
  maxLength: number,
  images?: ImageRendering | null,
): Rendered {
  const withImage = [...demos, query].find((it) => it.images?.length);
  if (withImage && !images)
    throw new Error(
      `item ${withImage.id} has an image, but the prompt is rendered without image support (an ` +
        'image-text checkpoint is needed)',
    );
  const fieldLimit = maxLength * FIELD_CHARS_PER_TOKEN_LIMIT;
  const oversized = (it: JudgeItem) => Object.values(it.fields).some((f) => f.length > fieldLimit);
  if (oversized(query)) throw new TooLongError(query.id, maxLength, maxLength, { estimated: true });
  let shown = demos.filter((it) => !oversized(it));
  for (;;) {
    const fitted = renderWithPromptCuts(tokenizer, template, shown, query, maxLength, images ?? null);
    if (fitted)
      return {
        ...fitted,
        droppedDemos: demos.length - shown.length,
        images: [...shown, query].flatMap((it) => it.images ?? []),
        unknown: tokenizer.countUnknown(fitted.ids),
      };
    if (shown.length === 0) {
      throw new TooLongError(
        query.id,
        assemble(tokenizer, template, [query], [fill(template, query, '')], images ?? null).length +
          imageExtra([query], images ?? null),
        maxLength,
      );
    }
    const longest = shown.reduce((best, it, i) => (length(it) > length(shown[best]!) ? i : best), 0);
    shown = shown.filter((_, i) => i !== longest);
  }
}

const length = (it: JudgeItem) =>
  promptText(it.prompt).length + Object.values(it.fields).reduce((n, f) => n + f.length, 0);

/** A prompt's text as tokenised: the whole of it, or (`charCut`) only a tail window of it. */
interface PromptTokens {
  text: string;
  ids: number[];
  charCut: boolean;
}

/**
 * Recent prompt tokenisations per tokenizer, keyed by a digest of the text: the same prompts come back in every
 * pass of a fit. Bounded by the characters it holds, so long prompts cannot pile up in memory.
 */
const promptMemo = new WeakMap<Tokenizer, { entries: Map<string, PromptTokens>; chars: number }>();
const PROMPT_MEMO_CHARS = 8 * 1024 * 1024;

/**
 * Tokens of the end of `text`: at least `need` + 1 of them when the text has that many (the first may be a partial
 * word).
 */
function promptTokens(tokenizer: Tokenizer, text: string, need: number): PromptTokens {
  let memo = promptMemo.get(tokenizer);
  if (!memo) promptMemo.set(tokenizer, (memo = { entries: new Map(), chars: 0 }));
  const key = createHash('sha256').update(`${need}\0`).update(text).digest('base64');
  const hit = memo.entries.get(key);
  if (hit) {
    memo.entries.delete(key);
    memo.entries.set(key, hit);
    return hit;
  }
  let window = Math.max(64, (need + 1) * PROMPT_WINDOW_CHARS_PER_TOKEN);
  let out: PromptTokens;
  for (;;) {
    if (text.length <= window) {
      out = { text, ids: tokenizer.encodeText(text, { addSpecialTokens: false }), charCut: false };
      break;
    }
    let start = text.length - window;
    if (/[\uDC00-\uDFFF]/.test(text[start]!)) start++; // never split a surrogate pair
    const tail = text.slice(start);
    const ids = tokenizer.encodeText(tail, { addSpecialTokens: false });
    if (ids.length > need) {
      out = { text: tail, ids, charCut: true };
      break;
    }
    window *= 4; // text with very long tokens (runs of spaces, repeated symbols): widen and try again
  }
  memo.entries.set(key, out);
  memo.chars += out.text.length;
  for (const [k, v] of memo.entries) {
    if (memo.chars <= PROMPT_MEMO_CHARS || k === key) break;
    memo.entries.delete(k);
    memo.chars -= v.text.length;
  }
  return out;
}

/** Tokens the items' images add once expanded (each placeholder is one id before expansion). */
function imageExtra(items: JudgeItem[], images: ImageRendering | null): number {
  return items.reduce((n, it) => n + (it.images ?? []).reduce((m, f) => m + images!.tokens(f) - 1, 0), 0);
}

function renderWithPromptCuts(
  tokenizer: Tokenizer,
  template: TemplateSpec,
  demos: JudgeItem[],
  query: JudgeItem,
  maxLength: number,
  images: ImageRendering | null,
): { ids: number[]; truncatedTokens: number } | null {
  const items = [...demos, query];
  const extra = imageExtra(items, images);
  const prompts = items.map((it) => promptTokens(tokenizer, promptText(it.prompt), maxLength));
  const promptIds = prompts.map((p) => p.ids);
  const keep = promptIds.map((p) => p.length); // tokens kept from the end of each prompt
  const texts = () =>
    items.map((it, i) =>
      fill(
        template,
        it,
        keep[i] === promptIds[i]!.length
          ? prompts[i]!.text
          : tokenizer.decode(promptIds[i]!.slice(promptIds[i]!.length - keep[i]!), { skipSpecialTokens: false }),
      ),
    );
  // Characters cut before tokenising count as at least one truncated token each prompt (their exact count is not
  // computed).
  let truncated = prompts.filter((p) => p.charCut).length;
  for (;;) {
    const ids = assemble(tokenizer, template, items, texts(), images);
    const over = ids.length + extra - maxLength;
    if (over <= 0) return { ids, truncatedTokens: truncated };
    const longest = keep.reduce((best, k, i) => (k > keep[best]! ? i : best), 0);
    if (keep[longest] === 0) return null;
    const cut = Math.min(keep[longest]!, over + 2); // a little slack: re-tokenising at the cut can merge differently
    keep[longest]! -= cut;
    truncated += cut;
  }
}

/**
 * The judge prompt's ids. Only the chat template's markup and the image placeholders are markup; every text from
 * the items (prompts, responses, the question, the answers) is untrusted text: it cannot hold a control token.
 */
function assemble(
  tokenizer: Tokenizer,
  template: TemplateSpec,
  items: JudgeItem[],
  texts: string[],
  images: ImageRendering | null = null,
): number[] {
  const words = ANSWER_WORDS[template.kind];
  const last = items.length - 1;
  const count = (it: JudgeItem) => it.images?.length ?? 0;
  if (template.chat) {
    const parts = images !== null && items.some((it) => count(it) > 0) && chatRendersImageParts(tokenizer, images);
    // The chat template's own image markup where it renders {type: "image"} parts (HF convention: images first
    // in the user turn); otherwise the placeholder markup written before the text.
    const user = (it: JudgeItem, text: string): ChatInput => {
      if (!count(it)) return { role: 'user', content: text };
      if (!parts) return { role: 'user', content: text, markupBefore: images!.markup.repeat(count(it)) };
      return {
        role: 'user',
        content: [...Array.from({ length: count(it) }, () => ({ type: 'image' as const })), { type: 'text', text }],
      };
    };
    const messages = items.flatMap((it, i) =>
      i === last ? [user(it, texts[i]!)] : [user(it, texts[i]!), { role: 'assistant', content: words[it.answer]! }],
    );
    return tokenizer.applyChatTemplate(messages, {
      addGenerationPrompt: true,
      templateKwargs: template.templateKwargs,
    });
  }
  const pieces: TextPiece[] = items.flatMap((it, i) => [
    { text: i === 0 ? '' : '\n\n', markup: false },
    { text: count(it) ? images!.markup.repeat(count(it)) : '', markup: true },
    { text: i === last ? `${texts[i]!}\nAnswer:` : `${texts[i]!}\nAnswer: ${words[it.answer]}`, markup: false },
  ]);
  return tokenizer.encodePieces(pieces);
}

const imagePartsMemo = new WeakMap<Tokenizer, boolean>();

/** Whether the chat template turns a `{type: "image"}` content part into the image placeholder (probed once). */
function chatRendersImageParts(tokenizer: Tokenizer, images: ImageRendering): boolean {
  let known = imagePartsMemo.get(tokenizer);
  if (known === undefined) {
    const probe: ChatInput = { role: 'user', content: [{ type: 'image' }, { type: 'text', text: 'Is it?' }] };
    try {
      known = tokenizer.renderChat([probe], { addGenerationPrompt: true }).includes(images.placeholderText);
    } catch {
      known = false;
    }
    imagePartsMemo.set(tokenizer, known);
  }
  return known;
}

export interface AnswerTokens {
  /** The token whose probability is the reward / whose loss REINFORCE minimises, per answer word. */
  primary: [number, number];
  /** First tokens of the case/space variants of each word ("Yes", " Yes", "yes", …), disjoint between the two. */
  variants: [number[], number[]];
  /** How each was found, for the criterion file and the CLI. */
  strings: [string, string];
}

/**
 * Resolves answer tokens as the model will see them. Chat: the chat template itself says where the answer
 * starts: render the query with the assistant answering each word, and the first position where the two
 * renderings differ holds the answer tokens (so a template that puts a space or a think block before the
 * assistant's text reads the token the model would really emit there). Plain text: the first token after
 * "Answer:" when " Yes" / " No" follow it.
 */
export function resolveAnswerTokens(tokenizer: Tokenizer, template: TemplateSpec, probe: JudgeItem): AnswerTokens {
  probe = { ...probe, images: undefined }; // the answer position does not depend on images in the user turn
  const words = ANSWER_WORDS[template.kind];
  const base = assemble(tokenizer, template, [probe], [fill(template, probe)]);
  let firstAfter: (word: string) => number | null;
  let strings: [string, string];
  if (template.chat) {
    const messages = [{ role: 'user', content: fill(template, probe) }];
    const answered = (word: string) =>
      tokenizer.applyChatTemplate([...messages, { role: 'assistant', content: word }], {
        addGenerationPrompt: false,
        templateKwargs: template.templateKwargs,
      });
    const [yes, no] = [answered(words[0]), answered(words[1])];
    let at = 0;
    while (at < yes.length && at < no.length && yes[at] === no[at]) at++;
    if (at === yes.length || at === no.length)
      throw new Error(
        `template: the chat template renders the answers "${words[0]}" and "${words[1]}" alike; use a ` +
          'custom template with other answer words',
      );
    const basePrefix = base.length <= at && base.every((t, i) => yes[i] === t);
    if (basePrefix && at > base.length) {
      const between = tokenizer.decode(yes.slice(base.length, at), { skipSpecialTokens: false });
      throw new Error(
        `template: the chat template puts ${JSON.stringify(between)} between the generation prompt and ` +
          "the answer, so the model's next token at the end of the prompt is not its verdict; pass chat " +
          'template arguments that remove it (e.g. enable_thinking=false) or render without the chat ' +
          'template',
      );
    }
    // A variant counts where its rendering departs from the answers' shared prefix: the token at that position.
    firstAfter = (word) => {
      const ids = answered(word);
      return ids.length > at && yes.slice(0, at).every((t, i) => ids[i] === t) ? ids[at]! : null;
    };
    strings = [words[0], words[1]];
  } else {
    firstAfter = (word) => {
      const ids = tokenizer.encodeText(`${fill(template, probe)}\nAnswer:${word}`);
      return ids.length > base.length && base.every((t, i) => ids[i] === t)
        ? ids[base.length]!
        : (tokenizer.encodeText(word.trimStart(), { addSpecialTokens: false })[0] ?? null);
    };
    strings = [` ${words[0]}`, ` ${words[1]}`];
  }
  const primary = [firstAfter(strings[0]), firstAfter(strings[1])] as [number, number];
  if (primary[0] === primary[1]) {
    throw new Error(
      `template: "${words[0]}" and "${words[1]}" begin with the same token (${primary[0]}) in this ` +
        'tokenizer; use a custom template with other answer words',
    );
  }
  // Variants: case and leading-space forms. A token that is only whitespace says nothing about the verdict, and
  // a one-letter lowercase form ("a") is mostly the article, not the answer: both are left out.
  const forms = (w: string) =>
    [w, w.toLowerCase(), w.toUpperCase()].filter((v) => !(v.length === 1 && v !== v.toUpperCase()));
  const meaningful = (t: number | null): t is number =>
    t !== null && tokenizer.decode([t], { skipSpecialTokens: false }).trim() !== '';
  const variantsOf = (w: string) => [
    ...new Set(
      forms(w)
        .flatMap((v) => [firstAfter(v), firstAfter(` ${v}`)])
        .filter(meaningful),
    ),
  ];
  const yes = variantsOf(words[0]),
    no = variantsOf(words[1]);
  const shared = new Set(yes.filter((t) => no.includes(t)));
  const variants: [number[], number[]] = [yes.filter((t) => !shared.has(t)), no.filter((t) => !shared.has(t))];
  for (const [i, p] of primary.entries()) if (!variants[i]!.includes(p)) variants[i]!.unshift(p);
  return { primary, variants, strings };
}
