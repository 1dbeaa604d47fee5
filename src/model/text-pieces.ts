/**
 * Untrusted text stays text. A judge prompt is the chat template's own markup (turn openers, end-of-turn marks,
 * image placeholders: the only places a control token may come from) around text from users and policies
 * (prompts, responses, demonstrations). Encoded as one string, a response that spells `<|im_end|>` would become
 * that control token and could forge a turn; ordinary ids that decode to the same letters would too, once
 * decoded and re-encoded. So every piece of text is tagged:
 *  - markup is split on the tokenizer's added tokens, as transformers splits any text;
 *  - untrusted text is split only on added tokens that are not control tokens (transformers'
 *    `split_special_tokens=True`): special added tokens are read as the letters they are made of.
 * Text between two control tokens is then joined across pieces and tokenised as one, so an item with no
 * control-token text in it gets exactly the ids of the one-string encoding (the tests compare them).
 *
 * This follows the tokenizers library's `encode_text` step by step (added-token split, lstrip/rstrip, normaliser,
 * normalised added tokens, pre-tokeniser with the section index, model, post-processor), on its own objects.
 */

/** A piece of a prompt's text: `markup` (the template's own, may hold control tokens) or untrusted text. */
export interface TextPiece {
  text: string;
  markup: boolean;
}

interface AddedTokenLike {
  content: string;
  id: number;
  special: boolean;
  normalized: boolean;
  lstrip: boolean;
  rstrip: boolean;
}
interface SplitterLike {
  split(text: string): string[];
}

/** The parts of `@huggingface/tokenizers`' Tokenizer this reads (its fields are public in the JS build). */
export interface InnerTokenizer {
  normalizer: ((text: string) => string) | null;
  pre_tokenizer: ((text: string, opts: { section_index: number }) => string[]) | null;
  model: ((tokens: string[]) => string[]) & { tokens_to_ids: Map<string, number>; unk_token_id?: number };
  post_processor: ((a: string[], b: null, addSpecialTokens: boolean) => { tokens: string[] }) | null;
  added_tokens: AddedTokenLike[];
  added_tokens_map: Map<string, AddedTokenLike>;
  special_tokens: string[];
  splitter_unnormalized: SplitterLike;
  remove_space?: boolean;
  do_lowercase_and_remove_accent?: boolean;
}

/** One run of text between added tokens, or one added token. */
interface Section {
  text: string;
  token: boolean;
  untrusted: boolean;
}

/** Splitters and dictionaries for one side (markup or untrusted text). */
interface Side {
  unnormalized: SplitterLike;
  unnormalizedWords: Set<string>;
  normalized: SplitterLike;
  normalizedWords: Set<string>;
}

export class PieceEncoder {
  /** Ids of the control tokens: special added tokens and those the tokenizer config names as special. */
  readonly controlIds: ReadonlySet<number>;
  private readonly markup: Side;
  private readonly plain: Side;

  /** `extraControl`: more token strings to treat as control (e.g. a processor's image token). */
  constructor(
    private readonly inner: InnerTokenizer,
    extraControl: readonly string[] = [],
  ) {
    const named = new Set([...inner.special_tokens, ...extraControl]);
    const control = inner.added_tokens.filter((t) => t.special || named.has(t.content));
    this.controlIds = new Set(control.map((t) => t.id));
    // The library's own trie splitter (longest match first), built over other word lists.
    const Splitter = inner.splitter_unnormalized.constructor as new (words: string[]) => SplitterLike;
    const side = (tokens: AddedTokenLike[]): Side => {
      const unnormalizedWords = new Set<string>(),
        normalizedWords = new Set<string>();
      for (const t of tokens) {
        if (t.normalized && inner.normalizer !== null) normalizedWords.add(inner.normalizer(t.content));
        else unnormalizedWords.add(t.content);
      }
      return {
        unnormalized: new Splitter([...unnormalizedWords]),
        unnormalizedWords,
        normalized: new Splitter([...normalizedWords]),
        normalizedWords,
      };
    };
    const controlSet = new Set(control);
    this.markup = side(inner.added_tokens);
    this.plain = side(inner.added_tokens.filter((t) => !controlSet.has(t)));
  }

  encode(pieces: readonly TextPiece[], opts: { addSpecialTokens: boolean }): number[] {
    const inner = this.inner;
    const sections = this.sections(pieces);
    stripAround(
      sections.map((s) => s.text),
      sections.map((s) => (s.token ? inner.added_tokens_map.get(s.text) : undefined)),
      (i, text) => {
        sections[i]!.text = text;
      },
    );
    const tokens = sections.flatMap((section, sectionIndex) => {
      if (section.text.length === 0) return [];
      if (section.token) return [section.text];
      const side = section.untrusted ? this.plain : this.markup;
      if (side.unnormalizedWords.has(section.text) || side.normalizedWords.has(section.text)) return [section.text];
      let text = section.text;
      if (inner.remove_space === true) text = text.trim().split(/\s+/).join(' ');
      if (inner.do_lowercase_and_remove_accent)
        text = text
          .toLowerCase()
          .normalize('NFD')
          .replace(/\p{Mn}/gu, '');
      if (inner.normalizer !== null) text = inner.normalizer(text);
      if (text.length === 0) return [];
      const subsections = side.normalized.split(text);
      stripAround(
        subsections,
        subsections.map((s) => (side.normalizedWords.has(s) ? inner.added_tokens_map.get(s) : undefined)),
        (i, t) => {
          subsections[i] = t;
        },
      );
      return subsections.flatMap((sub) => {
        if (sub.length === 0) return [];
        if (side.normalizedWords.has(sub)) return [sub];
        const words = inner.pre_tokenizer !== null ? inner.pre_tokenizer(sub, { section_index: sectionIndex }) : [sub];
        return inner.model(words);
      });
    });
    const all = inner.post_processor ? inner.post_processor(tokens, null, opts.addSpecialTokens).tokens : tokens;
    const unk = inner.model.unk_token_id;
    return all.map((t) => inner.added_tokens_map.get(t)?.id ?? inner.model.tokens_to_ids.get(t) ?? unk!);
  }

  /** Pieces → alternating runs of text and added tokens; text joins across pieces, as in the one-string split. */
  private sections(pieces: readonly TextPiece[]): Section[] {
    const sections: Section[] = [];
    for (const piece of pieces) {
      if (piece.text.length === 0) continue;
      const side = piece.markup ? this.markup : this.plain;
      for (const part of side.unnormalized.split(piece.text)) {
        const last = sections[sections.length - 1];
        // A part equal to a word of this side's dictionary is a match: the trie would have found any word inside a text
        // run.
        if (side.unnormalizedWords.has(part)) sections.push({ text: part, token: true, untrusted: false });
        else if (last && !last.token) {
          last.text += part;
          last.untrusted ||= !piece.markup;
        } else sections.push({ text: part, token: false, untrusted: !piece.markup });
      }
    }
    return sections;
  }
}

/** An added token with lstrip/rstrip eats the whitespace of its neighbours (as the tokenizers library does). */
function stripAround(
  texts: string[],
  tokens: (AddedTokenLike | undefined)[],
  set: (i: number, text: string) => void,
): void {
  tokens.forEach((token, i) => {
    if (!token) return;
    if (token.lstrip && i > 0) {
      texts[i - 1] = texts[i - 1]!.trimEnd();
      set(i - 1, texts[i - 1]!);
    }
    if (token.rstrip && i < texts.length - 1) {
      texts[i + 1] = texts[i + 1]!.trimStart();
      set(i + 1, texts[i + 1]!);
    }
  });
}
