/** Tokenizer and chat template through @huggingface/transformers, loaded from a local checkpoint folder only. */
import fs from 'node:fs';
import path from 'node:path';
import { AutoTokenizer, env, type PreTrainedTokenizer } from '@huggingface/transformers';
import { ModelError } from './errors.js';

export interface ChatMessage { role: string; content: string }

export class Tokenizer {
  private constructor(private readonly tok: PreTrainedTokenizer, readonly dir: string) {}

  static async load(dir: string): Promise<Tokenizer> {
    const file = path.join(dir, 'tokenizer.json');
    if (!fs.existsSync(file)) throw new ModelError(`${file}: missing (a fast tokenizer.json is required)`);
    // transformers.js resolves `localModelPath + id`; never let it reach for the hub.
    env.allowRemoteModels = false;
    env.allowLocalModels = true;
    env.localModelPath = path.dirname(path.resolve(dir)) + path.sep;
    try {
      return new Tokenizer(await AutoTokenizer.from_pretrained(path.basename(path.resolve(dir))), dir);
    } catch (e) {
      throw new ModelError(`${file}: cannot load the tokenizer (${(e as Error).message})`);
    }
  }

  get hasChatTemplate(): boolean {
    return typeof (this.tok as unknown as { chat_template?: unknown }).chat_template === 'string';
  }

  get vocabSize(): number { return (this.tok as unknown as { model: { vocab: unknown[] } }).model.vocab.length; }

  /** Text → ids, adding the tokenizer's special tokens (e.g. BOS) unless told not to. */
  encode(text: string, opts: { addSpecialTokens?: boolean } = {}): number[] {
    return this.tok.encode(text, { add_special_tokens: opts.addSpecialTokens ?? true });
  }

  decode(ids: number[], opts: { skipSpecialTokens?: boolean } = {}): string {
    if (ids.length === 0) return '';
    return this.tok.decode(ids, { skip_special_tokens: opts.skipSpecialTokens ?? true });
  }

  /** The chat template rendered as text (the template adds any BOS itself). */
  renderChat(messages: ChatMessage[], opts: { addGenerationPrompt?: boolean } = {}): string {
    if (!this.hasChatTemplate) throw new ModelError(`${path.join(this.dir, 'tokenizer_config.json')}: the tokenizer has no chat_template`);
    return this.tok.apply_chat_template(messages, { tokenize: false, add_generation_prompt: opts.addGenerationPrompt ?? true }) as string;
  }

  /** The chat template rendered and tokenized without adding special tokens again (as transformers does). */
  applyChatTemplate(messages: ChatMessage[], opts: { addGenerationPrompt?: boolean } = {}): number[] {
    return this.encode(this.renderChat(messages, opts), { addSpecialTokens: false });
  }

  tokenId(token: string): number | null {
    const id = (this.tok as unknown as { model: { tokens_to_ids: Map<string, number> } }).model.tokens_to_ids.get(token);
    return id ?? null;
  }

  get eosTokenId(): number | null { return (this.tok as unknown as { eos_token_id?: number }).eos_token_id ?? null; }
  get padTokenId(): number | null { return (this.tok as unknown as { pad_token_id?: number }).pad_token_id ?? null; }
}
