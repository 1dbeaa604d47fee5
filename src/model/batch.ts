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

/** Length of the common prefix of `seqs`, leaving at least one token in each. */
function commonPrefix(seqs: number[][]): number {
  let shared = Math.min(...seqs.map((s) => s.length)) - 1;
  for (const s of seqs) {
    let i = 0;
    while (i < shared && s[i] === seqs[0]![i]) i++;
    shared = i;
  }
  return shared;
}

/** One sequence's last position: logits [V], log Σ exp(logits), head activations [L·H·d]. */
export interface LastRow { logits: Float32Array; logSumExp: number; heads: Float32Array }

/** Calls `onRow(index, row)` for every sequence (grouped ones first, then by length). */
export async function forEachLastLogits(decoder: Decoder, seqs: number[][], opts: LastLogitsOptions, onRow: (index: number, row: LastRow) => void): Promise<void> {
  if (seqs.length === 0) return;
  const { vocabSize: V, numLayers: L, numHeads: H, headDim: d } = decoder.spec;
  let done = 0;
  const run = async (idx: number[], kv: KvCache | null, shared: number) => {
    const rows = idx.map((i) => seqs[i]!.slice(shared));
    const patch = opts.patch?.(idx.length);
    const out = kv ? await decoder.forwardShared(kv, rows, patch) : await decoder.forward(rows, patch);
    idx.forEach((i, b) => onRow(i, { logits: out.logits.subarray(b * V, (b + 1) * V), logSumExp: out.logSumExp[b]!, heads: out.heads.subarray(b * L * H * d, (b + 1) * L * H * d) }));
    done += idx.length;
    opts.onProgress?.(done, seqs.length);
  };
  const rest = new Set(seqs.keys());
  for (const group of opts.groups ?? []) {
    if (group.length < 2) continue;
    const shared = commonPrefix(group.map((i) => seqs[i]!));
    if (shared < MIN_SHARED) continue;
    const kv = await decoder.prefill(seqs[group[0]!]!.slice(0, shared));
    for (let start = 0; start < group.length; start += opts.batchSize) await run(group.slice(start, start + opts.batchSize), kv, shared);
    group.forEach((i) => rest.delete(i));
  }
  const others = [...rest];
  if (!others.length) return;
  let shared = (opts.sharePrefix ?? true) ? commonPrefix(others.map((i) => seqs[i]!)) : 0;
  const kv = shared >= MIN_SHARED ? await decoder.prefill(seqs[others[0]!]!.slice(0, shared)) : null;
  if (!kv) shared = 0;
  const order = others.sort((a, b) => seqs[a]!.length - seqs[b]!.length);
  const budget = opts.maxScoreElements ?? 2 ** 27;
  let batch: number[] = [];
  for (const i of order) {
    // Sorted by length, so the newest row is the longest: it sets S for the whole batch.
    const S = seqs[i]!.length - shared;
    if (batch.length && (batch.length >= opts.batchSize || (batch.length + 1) * H * S * (shared + S) > budget)) {
      await run(batch, kv, shared);
      batch = [];
    }
    batch.push(i);
  }
  if (batch.length) await run(batch, kv, shared);
}
