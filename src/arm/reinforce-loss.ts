/**
 * REINFORCE's loss on the model (DESIGN §1 step 2): for one query item and S masks, −log P(correct answer token)
 * with each mask's heads patched at the last token. The key cost insight: the patch touches only the last position,
 * so each item's prompt without its last token is prefilled once (KV caches kept, least recently used evicted) and
 * every call is one shared-prefix step with the S masks as S rows. reinforce.ts consumes it as a MaskLoss.
 */
import { disposeKv, type Decoder, type KvCache } from '../model/decoder.js';
import { FitError } from './fit-errors.js';
import { toSequence, type JudgeImages } from './images.js';
import type { MaskLoss } from './reinforce.js';
import { nonFiniteHint } from './rm.js';
import { render, type JudgeItem, type TemplateSpec } from './template.js';

export interface ReinforceLossOptions {
  items: JudgeItem[];
  template: TemplateSpec;
  /** The token of each answer word (AnswerTokens.primary); an item's loss reads the one of its answer. */
  answerIds: [number, number];
  /** The means patched in: [L, H, d]. */
  mu: Float32Array;
  mode: 'replace' | 'add';
  maxLength: number;
  /** Bytes of prefix KV caches kept. */
  cacheBytes: number;
  /** Image rows: the decoder's image handling; null or absent for text. */
  images?: JudgeImages | null;
}

/** The per-mask loss −log P(correct answer token) with the mask's heads patched, via shared prefixes. */
export function reinforceLoss(decoder: Decoder, opts: ReinforceLossOptions): MaskLoss {
  const { numLayers: L, numHeads: H, vocabSize: V } = decoder.spec;
  const { items, answerIds, mu, mode } = opts;
  const prefixOf = prefixCache(decoder, opts);
  return async (item, masks) => {
    const { kv, last } = await prefixOf(item);
    const mask = new Float32Array(masks.length * L * H); // [S, L, H]
    masks.forEach((m, s) => mask.set(m, s * L * H));
    const { logits, logSumExp } = await decoder.stepShared(kv, last, { mask, values: mu, mode });
    const target = answerIds[items[item]!.answer];
    const losses = masks.map((_, s) => logSumExp[s]! - logits[s * V + target]!); // −log softmax(logits)[target]
    // A NaN loss would turn θ into NaN and the fit into an empty head set without a word: stop here instead.
    const bad = losses.findIndex((l) => !Number.isFinite(l));
    if (bad >= 0) {
      const patched = masks[bad]!.reduce((a, b) => a + b, 0);
      throw new FitError(
        nonFiniteHint(`the REINFORCE loss of item ${items[item]!.id} (mask ${bad}, ${patched} heads patched)`),
      );
    }
    return losses;
  };
}

/** An item's prompt prefilled without its last token, and that last token. */
interface Prefix {
  kv: KvCache;
  last: number;
}

/** Each item's Prefix, prefilled on first use and kept within `cacheBytes` (least recently used evicted). */
function prefixCache(decoder: Decoder, opts: ReinforceLossOptions): (item: number) => Promise<Prefix> {
  const { numLayers: L, numKvHeads: KV, headDim: d } = decoder.spec;
  const { items, template, maxLength, cacheBytes } = opts;
  const images = opts.images ?? null;
  const cache = new Map<number, Prefix>(); // insertion order = recency
  let cachedBytes = 0;
  const bytesOf = (kv: KvCache) => kv.length * KV * d * 4 * 2 * L;
  return async (item) => {
    const hit = cache.get(item);
    if (hit) {
      cache.delete(item);
      cache.set(item, hit);
      return hit;
    }
    // An image lives in the prefix: its rows are placed once here, and every step after it is text only.
    const seq = await toSequence(images, render(decoder.tokenizer, template, [], items[item]!, maxLength, images));
    const ids = Array.isArray(seq) ? seq : seq.ids;
    const prefixImages = Array.isArray(seq) ? [] : seq.images;
    if (prefixImages.some((img) => img.start + img.embeds.length / decoder.spec.hiddenSize >= ids.length))
      throw new FitError(`item ${items[item]!.id}: its prompt ends inside an image`);
    const entry = { kv: await decoder.prefill(ids.slice(0, -1), { images: prefixImages }), last: ids[ids.length - 1]! };
    cache.set(item, entry);
    cachedBytes += bytesOf(entry.kv);
    for (const [k, v] of cache) {
      if (cachedBytes <= cacheBytes || k === item) break;
      cache.delete(k);
      cachedBytes -= bytesOf(v.kv);
      disposeKv(v.kv); // a GPU cache's memory goes now, not when the GC gets to it (losses are awaited one at a time)
    }
    return entry;
  };
}
