/**
 * The decoder's causal attention: the additive masks (causal, padding, sliding window) and grouped-query
 * attention over a batch-1 past and the new positions, in query chunks. One graph serves forward and prefill
 * (no past) and shared-prefix steps (a past), so each chunk exists in two forms, of which one gets every query
 * at run time and the other none (empty tensors cost nothing):
 *  - noPast (P = 0): the keys are the new ones alone;
 *  - withPast: the batch-1 past is broadcast by MatMul rather than copied B times, and its scores are
 *    concatenated with the new ones'.
 * A chunk of new positions [s_c, s_{c+1}) reads only keys up to P + s_{c+1}: those after its last query are masked
 * for all of it.
 *
 * GPU providers refuse zero-sized dispatches (WebGPU: "Invalid dispatch group size (0, 1, 1)" in Softmax), so their
 * graph (AttentionLayout.pastSlot) has one query chunk of the withPast form only, and the caller feeds a past of at
 * least one slot (a masked one when there is no past): no tensor of the attention is ever empty.
 */
import { INT64_MAX, type DecoderOps } from './decoder-ops.js';
import { DECODER_INPUTS, SITES, type ChunkForm } from './sites.js';
import type { LayerType } from '../families/types.js';

const MASKED = -1e9; // finite, so a fully masked (padding) row stays finite instead of NaN

/**
 * Causal attention runs in this many query chunks (a static count, so the graph stays one graph for every S):
 * chunk c of the S new positions skips the keys after its last position, which its queries mask anyway. N
 * chunks compute (N+1)/2N of the S×T scores, and the largest score tensor is 1/N of the whole.
 */
export const ATTENTION_QUERY_CHUNKS = 4;

/** How a graph lays its attention out (default: the CPU's, ATTENTION_QUERY_CHUNKS chunks of both forms). */
export interface AttentionLayout {
  /** Query chunks per form (default ATTENTION_QUERY_CHUNKS); 1: one S×T score block per layer (tests compare). */
  readonly queryChunks?: number;
  /**
   * The withPast form alone: the past always holds ≥ 1 slot (a masked slot when empty), so no chunk is empty. GPU
   * graphs (with queryChunks 1).
   */
  readonly pastSlot?: boolean;
  /**
   * Also output each layer's whole cache after the run, present.{l}.key/value [1, KV, P+S, d] (the past and the
   * first row's new keys): a WebGPU decoder keeps it on the device and feeds it back as the next run's past, so the
   * prefix is never uploaded again (decoder.ts). Only with pastSlot.
   */
  readonly presentOutputs?: boolean;
}

/** What every layer's attention shares. */
export interface AttentionTables {
  /** Per attention kind in use: 0 or −1e9 [B, 1, 1, S, T]. */
  readonly masks: ReadonlyMap<LayerType, string>;
  /** [1] = P, the past's length. */
  readonly pastLength: string;
  /** Per form, the chunk bounds s_0 … s_N ([1] each): the noPast form's span all S queries when P = 0, else none. */
  readonly chunkBounds: Readonly<Record<ChunkForm, readonly string[]>>;
}

/** One layer's attention inputs: q [B, H, S, d], k and v [B, KV, S, d] (after RoPE), its past [1, KV, P, d]. */
export interface LayerAttention {
  readonly layer: number;
  readonly q: string;
  readonly k: string;
  readonly v: string;
  readonly past: { readonly key: string; readonly value: string };
}

/**
 * The masks (emitted before RoPE's tables) and the lengths S and P ([] int64 each) the query chunks are cut from.
 * One additive mask per attention kind in use; a sliding layer also hides keys ≥ window positions back
 * (transformers: kv_idx > q_idx − sliding_window), counted in token positions, not tensor indices: after a past, a
 * left-padded row's tokens sit (padding) indices after their positions.
 */
export function emitAttentionMasks(ops: DecoderOps): {
  masks: ReadonlyMap<LayerType, string>;
  seq: string;
  pastLen: string;
} {
  const { g, spec, i64, f32 } = ops;
  const { inputsEmbeds, attentionMask, positionIds } = DECODER_INPUTS;
  const scalarDim = (x: string, axis: number) =>
    g.op('Squeeze', [g.op('Shape', [x], { start: axis, end: axis + 1 }), i64([0])]);
  const total = scalarDim(attentionMask, 1);
  const seq = scalarDim(inputsEmbeds, 1);
  const pastLen = g.op('Sub', [total, seq], {}, SITES.pastLen);
  const keyIdx = g.op('Range', [g.intConst([0], []), total, g.intConst([1], [])]); // [T]
  const queryIdx = g.op('Unsqueeze', [g.op('Range', [pastLen, total, g.intConst([1], [])]), i64([1])]); // [S,1]
  const causal = g.op('LessOrEqual', [keyIdx, queryIdx]); // [S,T]
  const valid = g.op('Unsqueeze', [g.op('Cast', [attentionMask], { to: 9 }), i64([1, 2, 3])]); // [B,1,1,1,T]
  const slidingAllowed = () => {
    const batchPast = g.op(
      'Concat',
      [g.op('Shape', [inputsEmbeds], { start: 0, end: 1 }), g.op('Unsqueeze', [pastLen, i64([0])])],
      { axis: 0 },
    ); // [B,P]
    const pastPos = g.op('Expand', [
      g.op('Unsqueeze', [g.op('Range', [g.intConst([0], []), pastLen, g.intConst([1], [])]), i64([0])]),
      batchPast,
    ]);
    // [B,1,1,1,T]
    const keyPos = g.op('Unsqueeze', [g.op('Concat', [pastPos, positionIds], { axis: 1 }), i64([1, 2, 3])]);
    const queryPos = g.op('Unsqueeze', [positionIds, i64([1, 2, 4])]); // [B,1,1,S,1]
    return g.op('And', [
      causal,
      g.op('Greater', [keyPos, g.op('Sub', [queryPos, g.intConst([spec.slidingWindow!], [])])]),
    ]);
  };
  const maskFor = (type: LayerType): string => {
    const allowed = type === 'full' || spec.slidingWindow === null ? causal : slidingAllowed();
    const name = type === 'sliding' && spec.layerTypes.includes('full') ? SITES.maskBiasSliding : SITES.maskBias;
    return g.op('Where', [g.op('And', [valid, allowed]), f32(0), f32(MASKED)], {}, name); // [B,1,1,S,T]
  };
  const masks = new Map(Array.from(new Set(spec.layerTypes), (t) => [t, maskFor(t)] as const));
  return { masks, seq, pastLen };
}

/** The query chunks' bounds: `queryChunks` equal parts of the S queries, in the form that gets them. */
export function emitQueryChunks(
  ops: DecoderOps,
  lengths: { seq: string; pastLen: string },
  layout: AttentionLayout = {},
): Omit<AttentionTables, 'masks'> {
  const { g, i64 } = ops;
  const queryChunks = layout.queryChunks ?? ATTENTION_QUERY_CHUNKS;
  const seq1 = g.op('Unsqueeze', [lengths.seq, i64([0])]); // [1] = S
  const past1 = g.op('Unsqueeze', [lengths.pastLen, i64([0])]); // [1] = P
  if (layout.pastSlot) {
    if (queryChunks !== 1) throw new Error('internal: a pastSlot graph has one query chunk');
    return { pastLength: past1, chunkBounds: { noPast: [], withPast: [i64([0]), seq1] } };
  }
  // [1] = S if P = 0 else 0
  const noPastQueries = g.op('Mul', [seq1, g.op('Cast', [g.op('Equal', [past1, i64([0])])], { to: 7 })]);
  const bounds = (lo: string, hi: string) =>
    Array.from({ length: queryChunks + 1 }, (_, c) =>
      c === 0
        ? lo
        : c === queryChunks
          ? hi
          : g.op('Add', [lo, g.op('Div', [g.op('Mul', [g.op('Sub', [hi, lo]), i64([c])]), i64([queryChunks])])]),
    );
  return {
    pastLength: past1,
    chunkBounds: { noPast: bounds(i64([0]), noPastQueries), withPast: bounds(noPastQueries, seq1) },
  };
}

/** One layer's attention operands with the query heads grouped by their KV head (g = H / KV per group). */
interface GroupedOperands {
  readonly layer: number;
  readonly queries: string; // [B,KV,g,S,d], scaled
  readonly newKeysT: string; // [B,KV,1,d,S]
  readonly newValues: string; // [B,KV,1,S,d]
  readonly pastKeysT: string; // [1,KV,1,d,P]
  readonly pastValues: string; // [1,KV,1,P,d]
  readonly mask: string; // [B,1,1,S,T]
  readonly pastLength: string; // [1] = P
}

/** Query chunk `index` of one form: the new positions [start, end) ([1] int64 each). */
interface QueryChunk {
  readonly form: ChunkForm;
  readonly index: number;
  readonly start: string;
  readonly end: string;
}

/**
 * Grouped-query attention of one layer: query heads grouped by their KV head, [B, KV, g, S, d] (head h = kv·g + j
 * reads KV head kv, as repeat_kv), scaled, soft-capped where the family does, masked, softmaxed per query chunk.
 * Returns the per-head output [B, S, H·d] (site attn.z).
 */
export function emitCausalAttention(ops: DecoderOps, tables: AttentionTables, layer: LayerAttention): string {
  const { g, spec, i64, f32 } = ops;
  const { numHeads: H, numKvHeads: KV, headDim: d } = spec;
  const l = layer.layer;
  const operands: GroupedOperands = {
    layer: l,
    queries: g.op('Reshape', [g.op('Mul', [layer.q, f32(spec.attnScale)]), i64([0, KV, H / KV, -1, d])]),
    newKeysT: g.op('Unsqueeze', [g.op('Transpose', [layer.k], { perm: [0, 1, 3, 2] }), i64([2])]),
    newValues: g.op('Unsqueeze', [layer.v, i64([2])]),
    pastKeysT: g.op('Unsqueeze', [g.op('Transpose', [layer.past.key], { perm: [0, 1, 3, 2] }), i64([2])]),
    pastValues: g.op('Unsqueeze', [layer.past.value, i64([2])]),
    mask: tables.masks.get(spec.layerTypes[l]!)!,
    pastLength: tables.pastLength,
  };
  const chunks: string[] = [];
  for (const form of ['noPast', 'withPast'] as const) {
    const bounds = tables.chunkBounds[form];
    for (let c = 0; c + 1 < bounds.length; c++)
      chunks.push(emitQueryChunk(ops, operands, { form, index: c, start: bounds[c]!, end: bounds[c + 1]! }));
  }
  const mixed = g.op('Concat', chunks, { axis: 3 }); // [B,KV,g,S,d]
  // [B,S,H,d]
  const perHead = g.op('Transpose', [g.op('Reshape', [mixed, i64([0, H, -1, d])])], { perm: [0, 2, 1, 3] });
  return g.op('Reshape', [perHead, i64([0, 0, H * d])], {}, SITES.attnZ(l)); // [B,S,H·d]
}

/** One query chunk [s0, s1) → its output [B, KV, g, C, d]; its probabilities are site attn.pattern.{form}.{c}. */
function emitQueryChunk(ops: DecoderOps, x: GroupedOperands, chunk: QueryChunk): string {
  const { g, spec, i64 } = ops;
  const { form, start: s0, end: s1 } = chunk;
  const past1 = x.pastLength;
  const qc = g.op('Slice', [x.queries, s0, s1, i64([3])]); // [B,KV,g,C,d]
  const scoresNew = g.op('MatMul', [qc, g.op('Slice', [x.newKeysT, i64([0]), s1, i64([4])])]); // [B,KV,g,C,s1]
  const raw =
    // [B,KV,g,C,P+s1]
    form === 'noPast' ? scoresNew : g.op('Concat', [g.op('MatMul', [qc, x.pastKeysT]), scoresNew], { axis: -1 });
  const scores = spec.attnSoftcap === null ? raw : ops.softcap(raw, spec.attnSoftcap); // capped before the mask
  const keyEnd = g.op('Add', [past1, s1]);
  const maskStart = form === 'noPast' ? past1 : i64([0]); // P = 0 wherever noPast has queries
  const mask = g.op('Slice', [
    x.mask,
    g.op('Concat', [s0, maskStart], { axis: 0 }),
    g.op('Concat', [s1, keyEnd], { axis: 0 }),
    i64([3, 4]),
  ]);
  const pattern = SITES.attnPattern(x.layer, form, chunk.index);
  const probs = g.op('Softmax', [g.op('Add', [scores, mask])], { axis: -1 }, pattern);
  const newPart = (p: string) => g.op('MatMul', [p, g.op('Slice', [x.newValues, i64([0]), s1, i64([3])])]);
  if (form === 'noPast') return newPart(probs);
  return g.op('Add', [
    // [B,KV,g,C,d]
    g.op('MatMul', [g.op('Slice', [probs, i64([0]), past1, i64([4])]), x.pastValues]),
    newPart(g.op('Slice', [probs, past1, i64([INT64_MAX]), i64([4])])),
  ]);
}
