/**
 * Tokenizer and chat template through @huggingface/transformers (transformers.js), loaded from a local checkpoint
 * folder only, and made to tokenise as Python transformers (v5) does with the same files.
 */
import fs from 'node:fs';
import path from 'node:path';
import * as transformers from '@huggingface/transformers';
import { PreTrainedTokenizer } from '@huggingface/transformers';
import { randomBytes } from 'node:crypto';
import { ModelError } from './errors.js';
import { PieceEncoder, type InnerTokenizer, type TextPiece } from './text-pieces.js';
import { isJsonObject, readJsonObjectFile, readUtf8File, type JsonObject } from './checkpoint/text-files.js';

export interface ChatMessage {
  role: string;
  content: string;
}

/** A content part as HF chat templates read them: `{type: "text", text}` or `{type: "image"}`. */
type ChatContentPart = { type: 'text'; text: string } | { type: 'image' };

/**
 * A message of a judge prompt. Its text (`content`, or the text parts) is untrusted: it is tokenised as plain
 * text. `markupBefore` is the model's own markup written before the text (image placeholders for templates that
 * do not render image parts); it keeps its control tokens.
 */
export interface ChatInput {
  role: string;
  content: string | ChatContentPart[];
  markupBefore?: string;
}

export interface ChatOptions {
  /** End with the tokens that open the assistant's turn (default true). */
  addGenerationPrompt?: boolean;
  /**
   * Extra variables for the chat template, as transformers' `apply_chat_template(..., **kwargs)` passes them,
   * e.g. `{ enable_thinking: false }` for Qwen3.
   */
  templateKwargs?: Record<string, unknown>;
}

type Json = JsonObject;

const isObject = isJsonObject;

/** True when the pipeline writes spaces as U+2581 "▁" (sentencepiece style), in a normalizer or a Metaspace step. */
function usesMetaspace(json: Json): boolean {
  const steps = (x: unknown): Json[] => {
    if (!isObject(x)) return [];
    const inner = x.normalizers ?? x.pretokenizers;
    return Array.isArray(inner) ? inner.flatMap(steps) : [x];
  };
  const all = [...steps(json.normalizer), ...steps(json.pre_tokenizer)];
  return all.some(
    (s) =>
      s.type === 'Metaspace' ||
      (s.type === 'Replace' && s.content === '\u2581' && isObject(s.pattern) && s.pattern.String === ' '),
  );
}

/**
 * What transformers v5 makes of a Llama-class sentencepiece tokenizer. transformers v5 does not run such a
 * tokenizer.json as written: `LlamaTokenizer` (also named as `LlamaTokenizerFast`) keeps only its vocabulary and
 * merges and rebuilds the rest in its constructor: no normalizer, a Metaspace pre-tokenizer with `split: false`
 * and prepend scheme "always" when `legacy` is true, "first" when it is false (the v5 default), "never" when
 * `add_prefix_space` is false; decoder Replace ▁→space, ByteFallback, Fuse, and Strip one leading space when a
 * prefix is added. The difference that shows: Metaspace prepends "▁" only to text that does not already start
 * with one (after spaces became "▁"), whereas the `Prepend "▁"` normalizer that older converters wrote into
 * tokenizer.json always prepends, so " Yes" became "▁▁Yes" → [▁, ▁Yes] instead of transformers' [▁Yes].
 * Applied only to BPE models whose tokenizer.json already uses "▁" for spaces; any other tokenizer.json
 * (e.g. byte-level BPE under a Llama class name) is left as written.
 */
function asTransformersBuildsIt(json: Json, config: Json): Json {
  const cls = typeof config.tokenizer_class === 'string' ? config.tokenizer_class.replace(/Fast$/, '') : null;
  const model = json.model;
  if (cls !== 'LlamaTokenizer' || !isObject(model) || model.type !== 'BPE' || !usesMetaspace(json)) return json;
  const addPrefixSpace = config.add_prefix_space !== false;
  const legacy = config.legacy === true;
  const prependScheme = !addPrefixSpace ? 'never' : legacy ? 'always' : 'first';
  const decoders: Json[] = [
    { type: 'Replace', pattern: { String: '\u2581' }, content: ' ' },
    { type: 'ByteFallback' },
    { type: 'Fuse' },
  ];
  if (addPrefixSpace) decoders.push({ type: 'Strip', content: ' ', start: 1, stop: 0 });
  return {
    ...json,
    normalizer: null,
    pre_tokenizer: { type: 'Metaspace', replacement: '\u2581', prepend_scheme: prependScheme, split: false },
    decoder: { type: 'Sequence', decoders },
  };
}

/** The transformers.js class `tokenizer_class` names (as AutoTokenizer picks it), else the base class. */
function tokenizerClass(config: Json): new (json: Json, config: Json) => PreTrainedTokenizer {
  const name = typeof config.tokenizer_class === 'string' ? config.tokenizer_class.replace(/Fast$/, '') : '';
  const cls = (transformers as unknown as Record<string, unknown>)[name];
  const ok = typeof cls === 'function' && (cls === PreTrainedTokenizer || cls.prototype instanceof PreTrainedTokenizer);
  return (ok ? cls : PreTrainedTokenizer) as new (json: Json, config: Json) => PreTrainedTokenizer;
}

/**
 * Token strings tokenizer_config.json names as special beyond the added tokens' flags (`extra_special_tokens`,
 * `additional_special_tokens`).
 */
function namedSpecialTokens(config: Json): string[] {
  const contentOf = (v: unknown): string | null =>
    typeof v === 'string' ? v : isObject(v) && typeof v.content === 'string' ? v.content : null;
  const extra = config.extra_special_tokens;
  const listed = [
    ...(Array.isArray(config.additional_special_tokens) ? config.additional_special_tokens : []),
    ...(Array.isArray(extra) ? extra : isObject(extra) ? Object.values(extra) : []),
  ];
  return listed.map(contentOf).filter((s): s is string => s !== null);
}

/**
 * How the vocabulary spells text it lacks, from tokenizer.json's model: its unknown token (by name, or Unigram's
 * `unk_id`), and whether it falls back to byte tokens `<0x00>`…`<0xFF>` (sentencepiece `byte_fallback`).
 */
interface VocabularyGaps {
  unk: string | number | null;
  byteFallback: boolean;
}

function vocabularyGaps(model: Json): VocabularyGaps {
  const unk =
    typeof model.unk_token === 'string' ? model.unk_token : typeof model.unk_id === 'number' ? model.unk_id : null;
  return { unk, byteFallback: model.byte_fallback === true };
}

/** Of some ids, the text tokens (control tokens left out) and how many of them stand for text the vocabulary lacks. */
export interface UnknownCount {
  unknown: number;
  text: number;
}

export class Tokenizer {
  private readonly pieces: PieceEncoder;
  private unknownIds: ReadonlySet<number> | null = null;

  private constructor(
    private readonly tok: PreTrainedTokenizer,
    readonly dir: string,
    extraControl: string[],
    private readonly gaps: VocabularyGaps = { unk: null, byteFallback: false },
  ) {
    this.pieces = new PieceEncoder((tok as unknown as { _tokenizer: InnerTokenizer })._tokenizer, extraControl);
  }

  /**
   * Loads `dir`/tokenizer.json (required) and `dir`/tokenizer_config.json (optional, as in transformers: without
   * it there are no special-token names and no chat template). Files are read here, not by transformers.js,
   * so that nothing reaches for the hub and errors name the file at fault.
   */
  static async load(dir: string): Promise<Tokenizer> {
    if (!fs.existsSync(dir))
      throw new ModelError(`${dir}: no such folder (expected a checkpoint folder with tokenizer.json)`);
    if (!fs.statSync(dir).isDirectory())
      throw new ModelError(`${dir}: not a folder (expected a checkpoint folder with tokenizer.json)`);
    const file = path.join(dir, 'tokenizer.json');
    const configFile = path.join(dir, 'tokenizer_config.json');
    const json = readJsonObjectFile(file, 'a fast tokenizer.json (required)')!;
    if (!isObject(json.model))
      throw new ModelError(`${file}: no "model" object (expected the tokenizers library's JSON format)`);
    const config = readJsonObjectFile(configFile, 'tokenizer settings and chat template', { optional: true }) ?? {};
    // Newer checkpoints keep the template beside the config (transformers ≥ 4.43 saves chat_template.jinja,
    // processors chat_template.json); as in transformers, the separate file wins.
    const jinja = readUtf8File(path.join(dir, 'chat_template.jinja'), 'a Jinja chat template', { optional: true });
    const templateJson =
      jinja === null
        ? readJsonObjectFile(path.join(dir, 'chat_template.json'), 'a {"chat_template": ...} object', {
            optional: true,
          })
        : null;
    if (jinja !== null) config.chat_template = jinja;
    else if (templateJson && typeof templateJson.chat_template === 'string')
      config.chat_template = templateJson.chat_template;
    for (const key of ['bos_token', 'eos_token', 'unk_token', 'pad_token', 'sep_token', 'cls_token', 'mask_token']) {
      const v = config[key];
      if (v != null && typeof v !== 'string' && !(isObject(v) && typeof v.content === 'string')) {
        throw new ModelError(
          `${configFile}: ${key} must be a string or an AddedToken object, found ${JSON.stringify(v).slice(0, 60)}`,
        );
      }
      // transformers.js only takes token objects tagged as AddedToken; transformers takes any with a content.
      if (isObject(v)) config[key] = { ...v, __type: 'AddedToken' };
    }
    try {
      return new Tokenizer(
        new (tokenizerClass(config))(asTransformersBuildsIt(json, config), config),
        dir,
        namedSpecialTokens(config),
        vocabularyGaps(json.model as Json),
      );
    } catch (e) {
      throw new ModelError(`${file}: cannot build the tokenizer (${(e as Error).message})`);
    }
  }

  get hasChatTemplate(): boolean {
    const t = (this.tok as unknown as { chat_template?: unknown }).chat_template;
    return typeof t === 'string' || (isObject(t) && typeof t.default === 'string');
  }

  /** Number of token ids (the model's vocabulary plus added tokens). */
  get vocabSize(): number {
    return this.tok._tokenizer.model?.vocab.length ?? 0;
  }

  /**
   * Text → ids, adding the tokenizer's special tokens (e.g. BOS) unless told not to. Text that spells a special
   * token becomes that token: for the engine's raw tools and trusted markup only; untrusted text goes through
   * `encodeText`.
   */
  encode(text: string, opts: { addSpecialTokens?: boolean } = {}): number[] {
    return this.tok.encode(text, { add_special_tokens: opts.addSpecialTokens ?? true });
  }

  /** Untrusted text → ids: text that spells a control token stays text (transformers' `split_special_tokens=True`). */
  encodeText(text: string, opts: { addSpecialTokens?: boolean } = {}): number[] {
    return this.encodePieces([{ text, markup: false }], opts);
  }

  /** Markup and untrusted text → ids; only markup may hold control tokens (see text-pieces.ts). */
  encodePieces(pieces: readonly TextPiece[], opts: { addSpecialTokens?: boolean } = {}): number[] {
    return this.pieces.encode(pieces, { addSpecialTokens: opts.addSpecialTokens ?? true });
  }

  /** Ids of control tokens (special added tokens, and tokens the config names as special). */
  get controlTokenIds(): ReadonlySet<number> {
    return this.pieces.controlIds;
  }

  /**
   * Ids that stand for text the vocabulary lacks: the unknown token, and with sentencepiece byte fallback the byte
   * tokens of non-ASCII bytes (<0x80>…<0xFF>: pieces of a character that has no token). ASCII byte tokens do not
   * count: such vocabularies spell newline and tab that way as a rule (Llama 2's "\n" is <0x0A>). A byte-level BPE
   * (GPT-2, Llama 3, Qwen) spells every byte with ordinary tokens: nothing it reads is unknown.
   */
  get unknownTokenIds(): ReadonlySet<number> {
    if (!this.unknownIds) {
      const { unk, byteFallback } = this.gaps;
      const ids = [typeof unk === 'number' ? unk : unk === null ? null : this.tokenId(unk)];
      if (byteFallback)
        for (let b = 0x80; b <= 0xff; b++) ids.push(this.tokenId(`<0x${b.toString(16).toUpperCase()}>`));
      this.unknownIds = new Set(ids.filter((id): id is number => id !== null));
    }
    return this.unknownIds;
  }

  /** Of `ids`, the text tokens (not control tokens; an unknown token always counts) and the unknown ones among them. */
  countUnknown(ids: readonly number[]): UnknownCount {
    const unknownIds = this.unknownTokenIds;
    const control = this.controlTokenIds;
    let unknown = 0,
      text = 0;
    for (const id of ids) {
      if (unknownIds.has(id)) unknown++;
      else if (control.has(id)) continue;
      text++;
    }
    return { unknown, text };
  }

  decode(ids: number[], opts: { skipSpecialTokens?: boolean } = {}): string {
    if (ids.length === 0) return '';
    return this.tok.decode(ids, { skip_special_tokens: opts.skipSpecialTokens ?? true });
  }

  /** The chat template rendered as text (the template adds any BOS itself). */
  renderChat(messages: (ChatMessage | ChatInput)[], opts: ChatOptions = {}): string {
    if (!this.hasChatTemplate)
      throw new ModelError(`${path.join(this.dir, 'tokenizer_config.json')}: the tokenizer has no chat_template`);
    return this.tok.apply_chat_template(messages, {
      ...opts.templateKwargs,
      tokenize: false,
      add_generation_prompt: opts.addGenerationPrompt ?? true,
    }) as string;
  }

  /**
   * The chat template rendered as pieces: its markup, and each message's text as an untrusted piece. The template
   * is rendered with a random marker in place of each text (keeping the text's leading and trailing whitespace,
   * so a template that trims content trims the same), and the texts are put back as pieces of their own. A text
   * therefore cannot steer the template's logic either (e.g. a template branching on what content starts with).
   */
  renderChatPieces(messages: ChatInput[], opts: ChatOptions = {}): TextPiece[] {
    const nonce = randomBytes(8).toString('hex');
    const texts: string[] = [];
    const masked = (text: string): string => {
      const lead = /^\s*/.exec(text)![0];
      const trail = lead.length === text.length ? '' : /\s*$/.exec(text)![0];
      texts.push(text.slice(lead.length, text.length - trail.length));
      return `${lead}\uE000${nonce}:${texts.length - 1}\uE001${trail}`;
    };
    const maskedMessages = messages.map((m) => ({
      role: m.role,
      content:
        typeof m.content === 'string'
          ? (m.markupBefore ?? '') + masked(m.content)
          : m.content.map((p) => (p.type === 'text' ? { ...p, text: masked(p.text) } : p)),
    }));
    const rendered = this.renderChat(maskedMessages as unknown as ChatMessage[], opts);
    const pieces: TextPiece[] = [];
    let at = 0;
    for (const m of rendered.matchAll(new RegExp(`\uE000${nonce}:(\\d+)\uE001`, 'g'))) {
      pieces.push({ text: rendered.slice(at, m.index), markup: true }, { text: texts[Number(m[1])]!, markup: false });
      at = m.index + m[0].length;
    }
    pieces.push({ text: rendered.slice(at), markup: true });
    return pieces;
  }

  /**
   * The chat template rendered and tokenized without adding special tokens again (as transformers does), the
   * messages' text as untrusted text.
   */
  applyChatTemplate(messages: ChatInput[], opts: ChatOptions = {}): number[] {
    return this.encodePieces(this.renderChatPieces(messages, opts), { addSpecialTokens: false });
  }

  tokenId(token: string): number | null {
    return this.tok._tokenizer.token_to_id(token) ?? null;
  }

  get eosTokenId(): number | null {
    return (this.tok as unknown as { eos_token_id?: number | null }).eos_token_id ?? null;
  }
  get padTokenId(): number | null {
    return (this.tok as unknown as { pad_token_id?: number | null }).pad_token_id ?? null;
  }
}
