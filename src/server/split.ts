/**
 * OpenRLHF's `/get_reward` sends `query[i]`: the full text the policy produced (prompt + response, already
 * chat-templated, decoded with special tokens kept, sometimes with padding around it) and optionally
 * `prompts[i]`: the templated prompt. This module turns one of those into what the judge needs: the user's
 * prompt (a string or a message list) and the response text.
 *
 * The rule (README "Reward server"):
 *  - with `prompts[i]`: the response is what follows `prompts[i]` in `query[i]` (leading padding / special tokens
 *    before it are ignored; if the texts only agree once special tokens are removed from both, that is used);
 *    otherwise 400.
 *  - without `prompts[i]`: refused (`prompts[i]` is required), unless the server opted in to the heuristic
 *    `last-assistant-turn`: the query is cut at its last assistant-turn opener of a known chat format (ChatML,
 *    Llama 3, Gemma, Phi-3, Mistral/Llama 2 `[/INST]`); none found → 400. The heuristic cannot be made safe: the
 *    response is untrusted text, and one that spells `<|im_start|>user … <|im_start|>assistant` moves the cut
 *    (the judge then grades its answer to its own question); cutting at the first opener instead breaks
 *    multi-turn prompts. Only `prompts[i]` says where the question ends whatever the response contains.
 *  - the response is cut at its first end-of-turn / end-of-sequence marker, remaining special tokens removed,
 *    whitespace trimmed.
 *  - the judge's prompt is the templated prompt parsed back into turns (system turns and the empty trailing
 *    assistant turn dropped: fit examples carry only the user's request); a lone user turn becomes a plain
 *    string. A prompt in no known format is its text with special tokens removed.
 */
import fs from 'node:fs';
import path from 'node:path';
import type { ChatTurn, Prompt } from '../data/examples.js';

export class SplitError extends Error {
  override name = 'SplitError';
  constructor(
    readonly field: string,
    message: string,
  ) {
    super(message);
  }
}

interface ChatFormat {
  name: string;
  /** Opens a turn; group 1 is the role. */
  open: RegExp;
  /** What opens the assistant's turn at generation time. */
  assistantOpen: string[];
  /** Ends a turn. */
  close: string;
}

const CHAT_FORMATS: ChatFormat[] = [
  { name: 'chatml', open: /<\|im_start\|>(\w+)\n/g, assistantOpen: ['<|im_start|>assistant\n'], close: '<|im_end|>' },
  {
    name: 'llama3',
    open: /<\|start_header_id\|>(\w+)<\|end_header_id\|>\n\n/g,
    assistantOpen: ['<|start_header_id|>assistant<|end_header_id|>\n\n'],
    close: '<|eot_id|>',
  },
  { name: 'gemma', open: /<start_of_turn>(\w+)\n/g, assistantOpen: ['<start_of_turn>model\n'], close: '<end_of_turn>' },
  { name: 'phi3', open: /<\|(system|user|assistant)\|>\n/g, assistantOpen: ['<|assistant|>\n'], close: '<|end|>' },
];

/** Mistral / Llama 2 `[INST] … [/INST]`: user text inside, assistant text after. */
const INST_OPEN = '[INST]',
  INST_CLOSE = '[/INST]';

/** Markers that end a policy's turn or sequence: the response stops at the first one. */
const END_MARKERS = [
  '<|im_end|>',
  '<|eot_id|>',
  '<|end_of_text|>',
  '<|endoftext|>',
  '<end_of_turn>',
  '<|end|>',
  '</s>',
  '<eos>',
];

/** Special-token strings of common chat templates (removed from prompts and responses). */
const COMMON_SPECIALS = [
  ...END_MARKERS,
  '<|im_start|>',
  '<|begin_of_text|>',
  '<|start_header_id|>',
  '<|end_header_id|>',
  '<start_of_turn>',
  '<bos>',
  '<s>',
  '<pad>',
  '<|pad|>',
  '<|user|>',
  '<|assistant|>',
  '<|system|>',
  '<unk>',
];

/**
 * What a query without its prompt is split by: `refuse` (the default: the prompt is required), or the
 * `last-assistant-turn` heuristic, which a response can steer (see the module comment).
 */
export type SplitWithoutPrompts = 'refuse' | 'last-assistant-turn';
export const SPLIT_WITHOUT_PROMPTS: readonly SplitWithoutPrompts[] = ['refuse', 'last-assistant-turn'];

/** Splitting rules for one judge model: its tokenizer's special tokens join the common ones. */
export class QuerySplitter {
  private readonly specials: string[];
  /** A special token at a given index (sticky, longest first), and the characters one can start with. */
  private readonly specialAt: RegExp;
  private readonly specialStarts: Set<number>;
  private readonly specialStart: RegExp;
  private readonly endMarkers: string[];

  /**
   * `extraSpecials`: special-token strings of the judge's tokenizer (see `specialTokensOf`); `withoutPrompts`:
   * how a query without its prompt is split (default: refused).
   */
  constructor(
    extraSpecials: string[] = [],
    eosToken?: string | null,
    readonly withoutPrompts: SplitWithoutPrompts = 'refuse',
  ) {
    // Longest first, so "<|end_of_text|>" is removed before a shorter token that is a part of it.
    this.specials = [...new Set([...COMMON_SPECIALS, ...extraSpecials])]
      .filter((s) => s.length > 0)
      .sort((a, b) => b.length - a.length);
    this.specialAt = new RegExp(this.specials.map((t) => t.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')).join('|'), 'y');
    this.specialStarts = new Set(this.specials.map((t) => t.charCodeAt(0)));
    this.specialStart = new RegExp(
      `[${[...new Set(this.specials.map((t) => t[0]!))].map((ch) => ch.replace(/[\]\\^-]/g, '\\$&')).join('')}]`,
      'g',
    );
    this.endMarkers = [...new Set([...END_MARKERS, ...(eosToken ? [eosToken] : [])])];
  }

  /**
   * `query[i]` (and `prompts[i]` when given) → the judge's prompt and the response. Throws SplitError naming the
   * field.
   */
  split(query: string, prompt: string | undefined, index: number): { prompt: Prompt; response: string } {
    if (prompt !== undefined) {
      const at = this.findPrompt(query, prompt);
      if (at === null) {
        throw new SplitError(
          `prompts[${index}]`,
          `prompts[${index}] is not at the start of query[${index}] (not even with special tokens removed from ` +
            `both), so the response cannot be cut out; send the templated prompt exactly as the policy saw it, or ` +
            `leave prompts out`,
        );
      }
      return { prompt: this.judgePrompt(prompt), response: this.cleanResponse(at.rest) };
    }
    if (this.withoutPrompts === 'refuse') {
      throw new SplitError(
        `prompts[${index}]`,
        `prompts[${index}]: is required to tell query[${index}]'s question from its response (a response can spell a ` +
          `turn opener and move the question); send prompts, or opt in to the last-assistant-turn heuristic ` +
          `(--split-without-prompts last-assistant-turn)`,
      );
    }
    let best: { at: number; marker: string } | null = null;
    for (const f of CHAT_FORMATS) {
      for (const marker of f.assistantOpen) {
        const at = query.lastIndexOf(marker);
        if (at >= 0 && (!best || at > best.at)) best = { at, marker };
      }
    }
    const inst = query.lastIndexOf(INST_CLOSE);
    if (inst >= 0 && (!best || inst > best.at)) best = { at: inst, marker: INST_CLOSE };
    if (!best) {
      throw new SplitError(
        `query[${index}]`,
        `query[${index}] has no assistant-turn marker of a known chat format (ChatML, Llama 3, Gemma, Phi-3, [INST]) ` +
          `and prompts[${index}] was not sent, so prompt and response cannot be told apart; send prompts`,
      );
    }
    const promptPart = query.slice(0, best.at + best.marker.length);
    return {
      prompt: this.judgePrompt(promptPart),
      response: this.cleanResponse(query.slice(best.at + best.marker.length)),
    };
  }

  /**
   * Where the prompt ends in the query: an exact prefix (after leading padding), or a prefix once special tokens are
   * removed from both.
   */
  private findPrompt(query: string, prompt: string): { rest: string } | null {
    if (query.startsWith(prompt)) return { rest: query.slice(prompt.length) };
    const at = query.indexOf(prompt);
    if (at > 0 && this.stripSpecials(query.slice(0, at)).trim() === '')
      return { rest: query.slice(at + prompt.length) };
    const end = this.endOfPrefixIgnoringSpecials(query, this.stripSpecials(prompt).trim());
    return end === null ? null : { rest: query.slice(end) };
  }

  /**
   * Index in `query` just past `prefix` when the two agree with special tokens (and leading whitespace) in
   * `query` skipped; null when they do not. The rest of `query` keeps its markers, so the response can still be
   * cut at its end-of-turn marker.
   */
  private endOfPrefixIgnoringSpecials(query: string, prefix: string): number | null {
    if (!prefix) return null;
    let i = 0,
      j = 0;
    // Leading whitespace and special tokens are skipped, later only special tokens; the text between two places
    // where a special token could start is compared in one piece (character by character, trying every token at
    // every character, took seconds for a few MB).
    while (j < prefix.length) {
      if (this.specialStarts.has(query.charCodeAt(i))) {
        this.specialAt.lastIndex = i;
        const m = this.specialAt.exec(query);
        if (m) {
          i += m[0].length;
          continue;
        }
      }
      if (j === 0 && /\s/.test(query[i] ?? '')) {
        i++;
        continue;
      }
      if (i >= query.length) return null;
      this.specialStart.lastIndex = i + 1;
      const next = this.specialStart.test(query) ? this.specialStart.lastIndex - 1 : query.length;
      const len = Math.min(next - i, prefix.length - j);
      if (!query.startsWith(prefix.slice(j, j + len), i)) return null;
      i += len;
      j += len;
    }
    return i;
  }

  /** Cut at the first end marker, drop other special tokens, trim. */
  cleanResponse(text: string): string {
    let end = text.length;
    for (const m of this.endMarkers) {
      const at = text.indexOf(m);
      if (at >= 0 && at < end) end = at;
    }
    return this.stripSpecials(text.slice(0, end)).trim();
  }

  /** A templated prompt → the turns the judge is shown (see the module comment). */
  judgePrompt(templated: string): Prompt {
    const turns = parseTurns(templated);
    if (turns) {
      const kept = turns
        .map((t) => ({ role: t.role, content: this.stripSpecials(t.content).trim() }))
        .filter((t) => t.role !== 'system');
      while (kept.length && kept.at(-1)!.role === 'assistant' && kept.at(-1)!.content === '') kept.pop();
      if (kept.length === 1 && kept[0]!.role === 'user') return kept[0]!.content;
      if (kept.length) return kept;
    }
    return this.stripSpecials(templated).trim();
  }

  stripSpecials(text: string): string {
    let out = text;
    for (const s of this.specials) if (out.includes(s)) out = out.split(s).join('');
    return out;
  }
}

/** Turns of a templated conversation in one of the known formats, or null when it is in none. */
export function parseTurns(text: string): ChatTurn[] | null {
  for (const f of CHAT_FORMATS) {
    const opens = [...text.matchAll(f.open)];
    if (!opens.length) continue;
    return opens.map((m, i) => {
      const start = m.index! + m[0].length;
      const next = i + 1 < opens.length ? opens[i + 1]!.index! : text.length;
      let content = text.slice(start, next);
      const close = content.indexOf(f.close);
      if (close >= 0) content = content.slice(0, close);
      return { role: m[1] === 'model' ? 'assistant' : m[1]!, content };
    });
  }
  if (text.includes(INST_OPEN)) {
    const turns: ChatTurn[] = [];
    for (const part of text.split(INST_OPEN).slice(1)) {
      const [user, assistant] = part.split(INST_CLOSE) as [string, string | undefined];
      turns.push({ role: 'user', content: user });
      if (assistant !== undefined) turns.push({ role: 'assistant', content: assistant });
    }
    return turns;
  }
  return null;
}

/** The special-token strings a checkpoint's tokenizer.json declares (`added_tokens` with `special: true`). */
export function specialTokensOf(modelDir: string): string[] {
  try {
    const json = JSON.parse(fs.readFileSync(path.join(modelDir, 'tokenizer.json'), 'utf8')) as {
      added_tokens?: { content?: unknown; special?: unknown }[];
    };
    return (json.added_tokens ?? [])
      .filter((t) => t.special === true && typeof t.content === 'string')
      .map((t) => t.content as string);
  } catch {
    return []; // the decoder already loaded this file; a second read failing leaves only the common markers
  }
}

/** One entry's split. */
export interface SplitEntry {
  prompt: Prompt;
  response: string;
}

/**
 * The splits of a `/get_reward` or `/classify` body made before its handler runs (by the body worker, off the main
 * thread: stripping special tokens is per character): one per entry up to the first that fails, whose SplitError
 * ends the list. Null when the route splits nothing or the body is not the shape its handler splits (the handler then
 * answers its 400, as without this).
 */
export interface Presplit {
  entries: SplitEntry[];
  error?: { field: string; message: string };
}

export function presplitBody(route: string | undefined, body: unknown, splitter: QuerySplitter): Presplit | null {
  const strings = (v: unknown): v is string[] => Array.isArray(v) && v.every((x) => typeof x === 'string');
  if (body === null || typeof body !== 'object') return null;
  const b = body as Record<string, unknown>;
  let texts: string[], prompts: string[] | undefined;
  if (route === '/get_reward') {
    if (!strings(b.query) || (b.prompts !== undefined && !(strings(b.prompts) && b.prompts.length === b.query.length)))
      return null;
    if (b.prompts === undefined && splitter.withoutPrompts === 'refuse') return null;
    texts = b.query;
    prompts = b.prompts as string[] | undefined;
  } else if (route === '/classify') {
    if (splitter.withoutPrompts === 'refuse') return null;
    if (typeof b.input === 'string') texts = [b.input];
    else if (strings(b.input)) texts = b.input;
    else return null;
  } else {
    return null;
  }
  const entries: SplitEntry[] = [];
  for (let i = 0; i < texts.length; i++) {
    try {
      entries.push(splitter.split(texts[i]!, prompts?.[i], i));
    } catch (e) {
      if (e instanceof SplitError) return { entries, error: { field: e.field, message: e.message } };
      throw e;
    }
  }
  return { entries };
}

/** A body whose texts were split ahead, with those texts blanked: the main thread is not sent them again. */
export function withoutSplitTexts(body: Record<string, unknown>): Record<string, unknown> {
  const blank = (v: unknown) => (Array.isArray(v) ? v.map(() => '') : typeof v === 'string' ? '' : v);
  const out = { ...body };
  for (const key of ['query', 'prompts', 'input']) if (key in out) out[key] = blank(out[key]);
  return out;
}

/**
 * Entry splits on the main thread: a body whose texts the body thread split ahead (and blanked) is remembered with
 * its splits; any other body's entries are split here, when its handler asks.
 */
export class BodySplits {
  private readonly presplits = new WeakMap<object, Presplit>();

  constructor(private readonly splitter: QuerySplitter) {}

  /** `body` came from the body thread with its texts split ahead (`presplit`) and blanked. */
  remember(body: object, presplit: Presplit): void {
    this.presplits.set(body, presplit);
  }

  /** Entry `i`'s split (`text` and `prompt` as the body holds them): made ahead for a large body, else here. */
  entry(body: object, text: string, prompt: string | undefined, i: number): SplitEntry {
    const pre = this.presplits.get(body);
    if (!pre) return this.splitter.split(text, prompt, i);
    if (i < pre.entries.length) return pre.entries[i]!;
    throw new SplitError(pre.error!.field, pre.error!.message);
  }
}
