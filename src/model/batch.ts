/**
 * Running many sequences for their last-position logits: sorted by length into batches (less padding),
 * and, when all sequences start with the same tokens (a judge prompt with fixed demonstrations), that
 * common prefix is prefilled once and only the differing suffixes are run. forEachLastLogitsPerPatch runs each
 * sequence's last token under K patches (K criteria) after that sequence is prefilled once.
 */
import { disposeKv, emptyKv, type Decoder, type HeadPatch, type ImageEmbeds, type KvCache } from './decoder.js';

/** An image placed in a sequence, with `key` naming its content (two images are the same when their keys are). */
export interface PlacedImage extends ImageEmbeds {
  key: string;
}

/** Token ids (image placeholders already expanded) and the images over their placeholder rows. */
export interface ImageSequence {
  ids: number[];
  images: readonly PlacedImage[];
}

/** A sequence to run: plain token ids, or ids with images. */
export type Sequence = number[] | ImageSequence;

const idsOf = (s: Sequence): number[] => (Array.isArray(s) ? s : s.ids);
const imagesOf = (s: Sequence): readonly PlacedImage[] => (Array.isArray(s) ? [] : s.images);

export interface LastLogitsOptions {
  batchSize: number;
  /** The head patch for a batch of `rows` rows (the same patch per row), if any. */
  patch?: (rows: number) => HeadPatch;
  /** Prefill the prefix shared by every sequence once (default true). */
  sharePrefix?: boolean;
  /**
   * Sets of sequence indices that share a prefix among themselves (e.g. the two responses of a pair): each set
   * with a common prefix of at least MIN_SHARED tokens is run as that prefix, prefilled once, plus its suffixes.
   * Sequences in no such set are batched as usual.
   */
  groups?: number[][];
  /**
   * Cap on one batch's attention scores (rows × heads × S × (prefix + S) floats; default 2^27 = 512 MiB):
   * long sequences go in smaller batches instead of exhausting memory.
   */
  maxScoreElements?: number;
  onProgress?: (done: number, total: number) => void;
}

/** Below this many shared tokens a separate prefill costs more than the padding it saves. */
const MIN_SHARED = 8;

/**
 * Length of the common prefix of `seqs`, leaving at least one token in each. Equal ids are not enough where
 * images sit: a prefix holds an image only when every sequence has the same image (key) at the same place, and
 * it never ends inside an image's rows; otherwise it stops before that image.
 */
export function commonPrefix(seqs: Sequence[], hiddenSize: number): number {
  const ids = seqs.map(idsOf);
  let shared = Math.min(...ids.map((s) => s.length)) - 1;
  for (const s of ids) {
    let i = 0;
    while (i < shared && s[i] === ids[0]![i]) i++;
    shared = i;
  }
  const first = imagesOf(seqs[0]!);
  for (let changed = true; changed;) {
    changed = false;
    for (const s of seqs) {
      for (const img of imagesOf(s)) {
        if (img.start >= shared) continue;
        const end = img.start + img.embeds.length / hiddenSize;
        const same = first.find((f) => f.start === img.start);
        // Every sequence is checked against the first, and the first is among them: that makes it symmetric.
        const everywhere = seqs.every((o) => imagesOf(o).some((x) => x.start === img.start && x.key === img.key));
        if (end > shared || !same || same.key !== img.key || !everywhere) {
          shared = img.start;
          changed = true;
        }
      }
    }
  }
  return shared;
}

/** The images of `s` that lie in its first `shared` tokens, and the rest re-indexed from `shared`. */
function splitImages(s: Sequence, shared: number): { prefix: ImageEmbeds[]; suffix: ImageEmbeds[] } {
  const all = imagesOf(s);
  return {
    prefix: all.filter((img) => img.start < shared),
    suffix: all.filter((img) => img.start >= shared).map((img) => ({ ...img, start: img.start - shared })),
  };
}

/** One sequence's last position: logits [V], log Σ exp(logits), head activations [L·H·d]. */
export interface LastRow {
  logits: Float32Array;
  logSumExp: number;
  heads: Float32Array;
}

/** Calls `onRow(index, row)` for every sequence (grouped ones first, then by length). */
export async function forEachLastLogits(
  decoder: Decoder,
  seqs: Sequence[],
  opts: LastLogitsOptions,
  onRow: (index: number, row: LastRow) => void,
): Promise<void> {
  if (seqs.length === 0) return;
  const { vocabSize: V, numLayers: L, numHeads: H, headDim: d, hiddenSize: D } = decoder.spec;
  const len = (i: number) => idsOf(seqs[i]!).length;
  let done = 0;
  const run = async (idx: number[], kv: KvCache | null, shared: number) => {
    const rows = idx.map((i) => idsOf(seqs[i]!).slice(shared));
    const withImages = idx.some((i) => imagesOf(seqs[i]!).length > 0);
    const images = withImages ? idx.map((i) => splitImages(seqs[i]!, shared).suffix) : undefined;
    const patch = opts.patch?.(idx.length);
    const out = kv
      ? await decoder.forwardShared(kv, rows, patch, { images })
      : await decoder.forward(rows, patch, { images });
    idx.forEach((i, b) =>
      onRow(i, {
        logits: out.logits.subarray(b * V, (b + 1) * V),
        logSumExp: out.logSumExp[b]!,
        heads: out.heads.subarray(b * L * H * d, (b + 1) * L * H * d),
      }),
    );
    done += idx.length;
    opts.onProgress?.(done, seqs.length);
  };
  const prefill = (i: number, shared: number) =>
    decoder.prefill(idsOf(seqs[i]!).slice(0, shared), { images: splitImages(seqs[i]!, shared).prefix });
  const rest = new Set(seqs.keys());
  for (const group of opts.groups ?? []) {
    if (group.length < 2) continue;
    const shared = commonPrefix(
      group.map((i) => seqs[i]!),
      D,
    );
    if (shared < MIN_SHARED) continue;
    const kv = await prefill(group[0]!, shared);
    for (let start = 0; start < group.length; start += opts.batchSize)
      await run(group.slice(start, start + opts.batchSize), kv, shared);
    disposeKv(kv); // a GPU cache's memory goes now (a JS cache is left to the GC)
    group.forEach((i) => rest.delete(i));
  }
  const others = [...rest];
  if (!others.length) return;
  let shared =
    (opts.sharePrefix ?? true)
      ? commonPrefix(
          others.map((i) => seqs[i]!),
          D,
        )
      : 0;
  const kv = shared >= MIN_SHARED ? await prefill(others[0]!, shared) : null;
  if (!kv) shared = 0;
  const order = others.sort((a, b) => len(a) - len(b));
  const budget = opts.maxScoreElements ?? 2 ** 27;
  let batch: number[] = [];
  for (const i of order) {
    // Sorted by length, so the newest row is the longest: it sets S for the whole batch.
    const S = len(i) - shared;
    if (batch.length && (batch.length >= opts.batchSize || (batch.length + 1) * H * S * (shared + S) > budget)) {
      await run(batch, kv, shared);
      batch = [];
    }
    batch.push(i);
  }
  if (batch.length) await run(batch, kv, shared);
  if (kv) disposeKv(kv);
}

export interface PerPatchOptions {
  /** K rows of patch (mask [K, L, H], values [K, L, H, d] or [L, H, d]): each sequence's last token runs as K rows. */
  patch: HeadPatch;
  /** As LastLogitsOptions.groups: sets of sequences (a pair's responses) whose common prefix is prefilled once. */
  groups?: number[][];
  /** Prefill the prefix shared by every sequence once (default true). */
  sharePrefix?: boolean;
  onProgress?: (done: number, total: number) => void;
}

/** The images of `s` wholly within tokens [from, to), re-indexed from `from`; one that straddles `to` is refused. */
function imagesBetween(s: Sequence, from: number, to: number, hiddenSize: number): ImageEmbeds[] {
  const out: ImageEmbeds[] = [];
  for (const img of imagesOf(s)) {
    const end = img.start + img.embeds.length / hiddenSize;
    if (img.start >= from && end <= to) out.push({ ...img, start: img.start - from });
    else if (img.start < to && end > to)
      throw new Error(`an image's rows (tokens ${img.start}..${end - 1}) reach the prompt's last token`);
  }
  return out;
}

/**
 * Calls `onRows(index, rows)` for every sequence: its last position run under each of the K patch rows (rows:
 * ForwardResult-shaped, [K, V] logits). Everything before the last token runs once, unpatched (the patch acts at
 * the last position only): the prefix every sequence shares, then each group's, then each sequence's own rest,
 * each extending the cache of the one before; the last token then runs as K rows after it (Decoder.stepShared).
 */
export async function forEachLastLogitsPerPatch(
  decoder: Decoder,
  seqs: Sequence[],
  opts: PerPatchOptions,
  onRows: (index: number, rows: { logits: Float32Array; logSumExp: Float32Array; heads: Float32Array }) => void,
): Promise<void> {
  if (seqs.length === 0) return;
  const D = decoder.spec.hiddenSize;
  // The cache after ids [from, to) of sequence i, extending `past` (which holds its first `from` tokens).
  const extend = async (past: KvCache, i: number, from: number, to: number): Promise<KvCache> =>
    to > from
      ? (await decoder.extend(past, idsOf(seqs[i]!).slice(from, to), { images: imagesBetween(seqs[i]!, from, to, D) }))
          .kv
      : past;
  let shared = (opts.sharePrefix ?? true) ? commonPrefix(seqs, D) : 0;
  if (shared < MIN_SHARED) shared = 0;
  const root = await extend(emptyKv(decoder.spec), 0, 0, shared);
  let done = 0;
  const finish = async (i: number, past: KvCache, from: number) => {
    const ids = idsOf(seqs[i]!);
    const kv = await extend(past, i, from, ids.length - 1);
    imagesBetween(seqs[i]!, ids.length - 1, ids.length, D); // refuses an image over the last token
    onRows(i, await decoder.stepShared(kv, ids[ids.length - 1]!, opts.patch));
    if (kv !== past) disposeKv(kv); // a GPU cache's memory goes now (a JS cache is left to the GC)
    opts.onProgress?.(++done, seqs.length);
  };
  const rest = new Set(seqs.keys());
  for (const group of opts.groups ?? []) {
    if (group.length < 2) continue;
    const own = commonPrefix(
      group.map((i) => seqs[i]!),
      D,
    );
    const groupShared = own - shared >= MIN_SHARED ? own : shared;
    const kv = await extend(root, group[0]!, shared, groupShared);
    for (const i of group) await finish(i, kv, groupShared);
    if (kv !== root) disposeKv(kv);
    group.forEach((i) => rest.delete(i));
  }
  for (const i of rest) await finish(i, root, shared);
  disposeKv(root);
}
