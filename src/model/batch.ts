/**
 * Running many sequences for their last-position logits: sorted by length into batches (less padding),
 * and, when all sequences start with the same tokens (a judge prompt with fixed demonstrations), that
 * common prefix is prefilled once and only the differing suffixes are run.
 */
import type { Decoder, HeadPatch, KvCache } from './decoder.js';

export interface LastLogitsOptions {
  batchSize: number;
  /** The head patch for a batch of `rows` rows (the same patch per row), if any. */
  patch?: (rows: number) => HeadPatch;
  /** Prefill the prefix shared by every sequence once (default true). */
  sharePrefix?: boolean;
  onProgress?: (done: number, total: number) => void;
}

/** Calls `onRow(index, logits [V], heads [L·H·d])` for every sequence, in length order. */
export async function forEachLastLogits(decoder: Decoder, seqs: number[][], opts: LastLogitsOptions, onRow: (index: number, logits: Float32Array, heads: Float32Array) => void): Promise<void> {
  if (seqs.length === 0) return;
  const { vocabSize: V, numLayers: L, numHeads: H, headDim: d } = decoder.spec;
  let shared = 0;
  if (opts.sharePrefix ?? true) {
    shared = Math.min(...seqs.map((s) => s.length)) - 1;
    for (const s of seqs) {
      let i = 0;
      while (i < shared && s[i] === seqs[0]![i]) i++;
      shared = i;
    }
  }
  let kv: KvCache | null = null;
  if (shared >= 8) kv = await decoder.prefill(seqs[0]!.slice(0, shared)); // below that, padding costs more than it saves
  else shared = 0;
  const order = seqs.map((_, i) => i).sort((a, b) => seqs[a]!.length - seqs[b]!.length);
  for (let start = 0; start < order.length; start += opts.batchSize) {
    const idx = order.slice(start, start + opts.batchSize);
    const rows = idx.map((i) => seqs[i]!.slice(shared));
    const patch = opts.patch?.(idx.length);
    const out = kv ? await decoder.forwardShared(kv, rows, patch) : await decoder.forward(rows, patch);
    idx.forEach((i, b) => onRow(i, out.logits.subarray(b * V, (b + 1) * V), out.heads.subarray(b * L * H * d, (b + 1) * L * H * d)));
    opts.onProgress?.(Math.min(start + opts.batchSize, order.length), order.length);
  }
}
