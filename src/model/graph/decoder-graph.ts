/**
 * The decoder as an ONNX graph, emitted from a ModelSpec. One graph serves every use (full forward, prefill,
 * shared-prefix step, generation) because the KV cache is kept outside it: the graph reads a past (batch 1: one
 * shared prefix) and returns only the new positions' keys and values. Its inputs, outputs and named sites (the
 * hook points, with their shapes) are listed in sites.ts.
 *
 * Read it as a model: `emitDecoderGraph` declares the inputs and builds what every layer shares (the attention
 * masks, RoPE's tables, the query chunks' bounds: causal-attention.ts, rope.ts); each layer is
 *   resid += attention(ln1(resid));  resid += mlp(ln2(resid))
 * (`emitAttention`, `emitMlp`; Gemma 2/3 norm each branch again before the add, Qwen3-VL adds DeepStack features
 * after the first layers); `emitHead` turns the last position into logits. The building blocks (norms, linears
 * over float or quantised weights) are decoder-ops.ts. Cached graphs are keyed by GRAPH_VERSION: a change to the
 * emitted graph bumps it.
 */
import { GraphBuilder } from './graph-builder.js';
import { decoderOps, type DecoderOps, type QuantizedWeights } from './decoder-ops.js';
import {
  emitAttentionMasks,
  emitCausalAttention,
  emitQueryChunks,
  type AttentionLayout,
  type AttentionTables,
} from './causal-attention.js';
import { emitRope, type Rope } from './rope.js';
import { DECODER_INPUTS, DECODER_OUTPUTS, SITES } from './sites.js';
import type { ModelSpec } from '../families/types.js';

/** Graph-side names of the weights, as the exporter writes them. */
export const W = {
  embed: 'w.embed',
  lmHead: 'w.lm_head',
  finalNorm: 'w.final_norm',
  ln1: (l: number) => `w.${l}.ln1`,
  ln2: (l: number) => `w.${l}.ln2`, // the norm before the MLP (Gemma 2/3: pre_feedforward_layernorm)
  ln1Post: (l: number) => `w.${l}.ln1_post`, // Gemma 2/3: post_attention_layernorm, on the o_proj output
  ln2Post: (l: number) => `w.${l}.ln2_post`, // Gemma 2/3: post_feedforward_layernorm
  qkv: (l: number) => `w.${l}.qkv`, // [D, (H+2KV)·d]  q|k|v, transposed and fused
  qkvBias: (l: number) => `w.${l}.qkv_bias`,
  qNorm: (l: number) => `w.${l}.q_norm`,
  kNorm: (l: number) => `w.${l}.k_norm`,
  o: (l: number) => `w.${l}.o`, // [H·d, D]
  oBias: (l: number) => `w.${l}.o_bias`,
  gateUp: (l: number) => `w.${l}.gate_up`, // [D, 2F]  gate|up, transposed and fused
  gateUpBias: (l: number) => `w.${l}.gate_up_bias`,
  down: (l: number) => `w.${l}.down`, // [F, D]
  downBias: (l: number) => `w.${l}.down_bias`,
  /** Row block i of the output head [V, D] (embed_tokens when tied): same bytes, its own initializer. */
  headChunk: (i: number) => `w.head.${i}`,
} as const;

/**
 * The output head is split into row blocks of at most this many bytes. onnxruntime prepacks each weight
 * (a packed copy) before releasing the original, so the largest single weight sets the load-time peak;
 * for Qwen2.5-0.5B the head is 519 MiB, several times any other matrix.
 */
export const HEAD_CHUNK_BYTES = 64 * 2 ** 20;

/** Row ranges [start, end) of the output head's blocks. */
export function headChunks(spec: ModelSpec, chunkBytes = HEAD_CHUNK_BYTES): [number, number][] {
  const rowsPer = Math.max(1, Math.floor(chunkBytes / (spec.hiddenSize * 4)));
  const out: [number, number][] = [];
  for (let r = 0; r < spec.vocabSize; r += rowsPer) out.push([r, Math.min(spec.vocabSize, r + rowsPer)]);
  return out;
}

export const GRAPH_VERSION = 'decoder-graph/9'; // 9: patch values and mode per row

/** The graph inputs a layer reads (names from DECODER_INPUTS). */
interface DecoderInputs {
  readonly inputsEmbeds: string; // [B,S,D]
  readonly positionIds: string; // [B,S] or [3,B,S]
  readonly past: readonly { readonly key: string; readonly value: string }[]; // per layer [1,KV,P,d]
  readonly patchMask: string; // [B,L,H]
  readonly patchValues: string; // [R,L,H,d], R = 1 (every row) or B (one per row)
  readonly patchReplace: string; // [R]
  readonly deepstack: string | null; // [k,B,S,D]
}

/** What the per-layer emitters share: the building blocks, the inputs and the tables built once per graph. */
interface DecoderContext {
  readonly ops: DecoderOps;
  readonly inputs: DecoderInputs;
  readonly rope: Rope;
  readonly attention: AttentionTables;
}

/** Emits the graph; `weight(g, name)` registers the named weight (W) as an initializer and returns its name. */
export function emitDecoderGraph(
  spec: ModelSpec,
  weight: (g: GraphBuilder, name: string) => string,
  headChunkBytes = HEAD_CHUNK_BYTES,
  quantized?: QuantizedWeights,
  attention: AttentionLayout = {},
  siteOutputs: readonly LinearInputSite[] = [],
): GraphBuilder {
  const g = new GraphBuilder(18);
  const ops = decoderOps(g, spec, weight, quantized);
  const inputs = declareInputs(g, spec);
  const { masks, ...lengths } = emitAttentionMasks(ops);
  const rope = emitRope(ops, inputs.positionIds);
  const chunks = emitQueryChunks(ops, lengths, attention);
  const ctx: DecoderContext = { ops, inputs, rope, attention: { masks, ...chunks } };

  let resid = inputs.inputsEmbeds; // [B,S,D]
  const headTaps: string[] = []; // per layer [B,1,H,d]
  for (let l = 0; l < spec.numLayers; l++) {
    const attn = emitAttention(ctx, l, ops.rmsNorm(resid, W.ln1(l), SITES.ln1(l)));
    headTaps.push(attn.headTap);
    resid = addResidual(ctx, resid, attn.out, RESIDUAL_ADDS.attention(l));
    const mlpOut = emitMlp(ctx, l, ops.rmsNorm(resid, W.ln2(l), SITES.ln2(l)));
    resid = addResidual(ctx, resid, mlpOut, RESIDUAL_ADDS.mlp(l));
    resid = addDeepstack(ctx, l, resid);
    if (attention.presentOutputs) emitPresentKv(ops, l, inputs.past[l]!);
  }
  emitHead(ctx, resid, headTaps, headChunkBytes);
  for (const site of siteOutputs) g.output(site.site, 'FLOAT', ['batch', 'seq', site.inputs]);
  return g;
}

/** The graph inputs, in the order the graph declares them. */
function declareInputs(g: GraphBuilder, spec: ModelSpec): DecoderInputs {
  const { numLayers: L, numHeads: H, numKvHeads: KV, headDim: d } = spec;
  const names = DECODER_INPUTS;
  const inputsEmbeds = g.input(names.inputsEmbeds, 'FLOAT', ['batch', 'seq', spec.hiddenSize]);
  g.input(names.attentionMask, 'INT64', ['batch', 'total']);
  // M-RoPE: rotary frequency j turns by the position in row mropeRows[j] of the 3-row position ids.
  const positionIds = g.input(
    names.positionIds,
    'INT64',
    spec.imageText?.mropeRows ? [3, 'batch', 'seq'] : ['batch', 'seq'],
  );
  const past = Array.from({ length: L }, (_, l) => ({
    key: g.input(names.pastKey(l), 'FLOAT', [1, KV, 'past', d]),
    value: g.input(names.pastValue(l), 'FLOAT', [1, KV, 'past', d]),
  }));
  const patchMask = g.input(names.patchMask, 'FLOAT', ['batch', L, H]);
  // R = 1: one patch for every row (a criterion); R = B: a patch per row (several criteria after one prefix).
  const patchValues = g.input(names.patchValues, 'FLOAT', ['patch_rows', L, H, d]);
  const patchReplace = g.input(names.patchReplace, 'FLOAT', ['patch_rows']);
  const deepstackLayers = spec.imageText?.deepstackLayers ?? 0;
  const deepstack =
    deepstackLayers > 0
      ? g.input(names.deepstackEmbeds, 'FLOAT', [deepstackLayers, 'batch', 'seq', spec.hiddenSize])
      : null;
  return { inputsEmbeds, positionIds, past, patchMask, patchValues, patchReplace, deepstack };
}

/**
 * Self-attention of layer `l` on its normed input x [B,S,D]: q, k, v, causal attention, the head patch at the
 * last position, o_proj. Returns the o_proj output [B,S,D] and the layer's (patched) head tap [B,1,H,d].
 */
function emitAttention(ctx: DecoderContext, l: number, x: string): { out: string; headTap: string } {
  const { spec } = ctx.ops;
  const { q, k, v } = emitQkv(ctx, l, x);
  const z = emitCausalAttention(ctx.ops, ctx.attention, { layer: l, q, k, v, past: ctx.inputs.past[l]! }); // [B,S,H·d]
  const { zOut, headTap } = emitHeadPatch(ctx, l, z);
  return { out: ctx.ops.linear(zOut, W.o(l), spec.oBias ? W.oBias(l) : null, SITES.attnOut(l)), headTap };
}

/**
 * The fused q|k|v projection split into heads: q [B,H,S,d] and k [B,KV,S,d] after the per-head norms (Qwen3,
 * Gemma 3: RMSNorm over d, before the transpose) and RoPE; v [B,KV,S,d]. k and v are the outputs new.{l}.*.
 */
function emitQkv(ctx: DecoderContext, l: number, x: string): { q: string; k: string; v: string } {
  const { g, spec, i64 } = ctx.ops;
  const { numHeads: H, numKvHeads: KV, headDim: d } = spec;
  const qkv = ctx.ops.linear(x, W.qkv(l), spec.qkvBias ? W.qkvBias(l) : null, SITES.attnQkv(l)); // [B,S,(H+2KV)d]
  const [qFlat, kFlat, vFlat] = g.opMulti('Split', [qkv, i64([H * d, KV * d, KV * d])], { axis: 2 }, 3);
  // [B,S,n·d] → [B,n,S,d]
  const heads = (t: string, n: number, norm?: { weight: string; site: string }) => {
    let y = g.op('Reshape', [t, i64([0, 0, n, d])]); // [B,S,n,d]
    if (norm) y = ctx.ops.rmsNorm(y, norm.weight, norm.site);
    return g.op('Transpose', [y], { perm: [0, 2, 1, 3] }); // [B,n,S,d]
  };
  const qNorm = spec.qkNorm ? { weight: W.qNorm(l), site: SITES.attnQNorm(l) } : undefined;
  const kNorm = spec.qkNorm ? { weight: W.kNorm(l), site: SITES.attnKNorm(l) } : undefined;
  const layerType = spec.layerTypes[l]!;
  const q = ctx.rope.apply(heads(qFlat!, H, qNorm), layerType, SITES.attnQ(l));
  const k = ctx.rope.apply(heads(kFlat!, KV, kNorm), layerType, SITES.attnK(l));
  const v = g.op('Identity', [heads(vFlat!, KV)], {}, SITES.attnV(l));
  g.output(DECODER_OUTPUTS.newKey(l), 'FLOAT', ['batch', KV, 'seq', d]);
  g.output(DECODER_OUTPUTS.newValue(l), 'FLOAT', ['batch', KV, 'seq', d]);
  return { q, k, v };
}

/**
 * The cache after this run, present.{l}.key/value [1, KV, P+S, d]: the batch-1 past and row 0's new keys/values (a
 * prefix is extended with batch 1; other runs' present is unused, and costs one copy on the device).
 */
function emitPresentKv(ops: DecoderOps, l: number, past: { key: string; value: string }): void {
  const { g, spec, i64 } = ops;
  const { numKvHeads: KV, headDim: d } = spec;
  const firstRow = (t: string) => g.op('Slice', [t, i64([0]), i64([1]), i64([0])]); // [1,KV,S,d]
  g.op('Concat', [past.key, firstRow(DECODER_OUTPUTS.newKey(l))], { axis: 2 }, DECODER_OUTPUTS.presentKey(l));
  g.op('Concat', [past.value, firstRow(DECODER_OUTPUTS.newValue(l))], { axis: 2 }, DECODER_OUTPUTS.presentValue(l));
  g.output(DECODER_OUTPUTS.presentKey(l), 'FLOAT', [1, KV, 'total', d]);
  g.output(DECODER_OUTPUTS.presentValue(l), 'FLOAT', [1, KV, 'total', d]);
}

/**
 * The read/patch site: the last position's per-head output z_last [B,H,d], before o_proj, patched by the inputs
 * (z ← z·(1 − mask·replace) + mask·value). Returns o_proj's input with the patched last position, and the tap.
 */
function emitHeadPatch(ctx: DecoderContext, l: number, z: string): { zOut: string; headTap: string } {
  const { g, spec, i64, f32 } = ctx.ops;
  const { numHeads: H, headDim: d } = spec;
  const { patchMask, patchValues, patchReplace } = ctx.inputs;
  const zLast = g.op('Reshape', [ctx.ops.lastPosition(z), i64([0, H, d])], {}, SITES.attnZLast(l)); // [B,H,d]
  const m = g.op('Unsqueeze', [g.op('Gather', [patchMask, g.intConst([l], [])], { axis: 1 }), i64([2])]); // [B,H,1]
  const value = g.op('Gather', [patchValues, g.intConst([l], [])], { axis: 1 }); // [R,H,d]
  const replace = g.op('Reshape', [patchReplace, i64([-1, 1, 1])]); // [R,1,1]
  const keep = g.op('Sub', [f32(1), g.op('Mul', [m, replace])]); // [B,H,1]
  const zPatched = g.op('Add', [g.op('Mul', [zLast, keep]), g.op('Mul', [m, value])], {}, SITES.attnZLastPatched(l));
  const headTap = g.op('Unsqueeze', [zPatched, i64([1])]); // [B,1,H,d]
  const zOut = g.op('Concat', [ctx.ops.allButLast(z), g.op('Reshape', [zPatched, i64([0, 1, H * d])])], { axis: 1 });
  return { zOut, headTap };
}

/** The gated MLP of layer `l` on its normed input x [B,S,D]: down(act(gate) · up) → [B,S,D]. */
function emitMlp(ctx: DecoderContext, l: number, x: string): string {
  const { g, spec, i64 } = ctx.ops;
  const F = spec.intermediateSize;
  const gateUp = ctx.ops.linear(x, W.gateUp(l), spec.mlpBias ? W.gateUpBias(l) : null, SITES.mlpGateUp(l)); // [B,S,2F]
  const [gate, up] = g.opMulti('Split', [gateUp, i64([F, F])], { axis: 2 }, 2);
  const act = g.op('Mul', [ctx.ops.activation(gate!), up!], {}, SITES.mlpAct(l)); // act(gate)·up
  return ctx.ops.linear(act, W.down(l), spec.mlpBias ? W.downBias(l) : null, SITES.mlpOut(l));
}

/** A residual add of layer l: the branch's own norm first (Gemma 2/3 sandwich norms) and the sum's site. */
interface ResidualAdd {
  readonly postNorm: string;
  readonly postNormSite: string;
  readonly site: string;
}

const RESIDUAL_ADDS = {
  attention: (l: number): ResidualAdd => ({
    postNorm: W.ln1Post(l),
    postNormSite: SITES.ln1Post(l),
    site: SITES.residMid(l),
  }),
  mlp: (l: number): ResidualAdd => ({
    postNorm: W.ln2Post(l),
    postNormSite: SITES.ln2Post(l),
    site: SITES.residPost(l),
  }),
} as const;

/** resid + branch [B,S,D], the branch normed first where the family has sandwich norms. */
function addResidual(ctx: DecoderContext, resid: string, branch: string, add: ResidualAdd): string {
  const normed = ctx.ops.spec.sandwichNorms ? ctx.ops.rmsNorm(branch, add.postNorm, add.postNormSite) : branch;
  return ctx.ops.g.op('Add', [resid, normed], {}, add.site);
}

/** Qwen3-VL DeepStack: layer l < k adds vision feature set l at the image rows (transformers: after the layer). */
function addDeepstack(ctx: DecoderContext, l: number, resid: string): string {
  const { g, spec } = ctx.ops;
  const deepstack = ctx.inputs.deepstack;
  if (!deepstack || l >= (spec.imageText?.deepstackLayers ?? 0)) return resid;
  const features = g.op('Gather', [deepstack, g.intConst([l], [])], { axis: 0 }); // [B,S,D]
  return g.op('Add', [resid, features], {}, SITES.residDeepstack(l));
}

/**
 * The last position's logits [B,V] (the head in row blocks, soft-capped for Gemma 2/3), their logsumexp [B], and
 * the head taps as `heads` [B,L,H,d].
 */
function emitHead(ctx: DecoderContext, resid: string, headTaps: readonly string[], headChunkBytes: number): void {
  const { g, spec, i64 } = ctx.ops;
  const outputs = DECODER_OUTPUTS;
  const hLast = g.op('Squeeze', [ctx.ops.lastPosition(resid), i64([1])]); // [B,D]
  const normed = ctx.ops.rmsNorm(hLast, W.finalNorm, SITES.finalNormLast);
  const chunks = headChunks(spec, headChunkBytes);
  const normedHalf = chunks.some((_, i) => ctx.ops.isHalf(W.headChunk(i))) ? ctx.ops.cast(normed, 'fp16') : null;
  const blocks = chunks.map((_, i) =>
    ctx.ops.isQuantized(W.headChunk(i)) // [B,rows_i]
      ? ctx.ops.matmul(normed, W.headChunk(i))
      : normedHalf && ctx.ops.isHalf(W.headChunk(i)) // fp16 product, float32 logits
        ? ctx.ops.cast(g.op('Gemm', [normedHalf, ctx.ops.w(W.headChunk(i))], { transB: 1 }), 'fp32')
        : g.op('Gemm', [normed, ctx.ops.w(W.headChunk(i))], { transB: 1 }),
  );
  const logitsName = spec.finalSoftcap === null ? outputs.logits : SITES.logitsRaw;
  if (blocks.length === 1) g.op('Identity', blocks, {}, logitsName);
  else g.op('Concat', blocks, { axis: 1 }, logitsName); // [B,V]
  if (spec.finalSoftcap !== null) ctx.ops.softcap(logitsName, spec.finalSoftcap, outputs.logits);
  g.output(outputs.logits, 'FLOAT', ['batch', spec.vocabSize]);
  g.op('ReduceLogSumExp', [outputs.logits, i64([1])], { keepdims: 0 }, outputs.logsumexp); // [B]
  g.output(outputs.logsumexp, 'FLOAT', ['batch']);
  g.op('Concat', [...headTaps], { axis: 1 }, outputs.heads); // [B,L,H,d]
  g.output(outputs.heads, 'FLOAT', ['batch', spec.numLayers, spec.numHeads, spec.headDim]);
}

/** The named site that is a linear layer's input over all positions [B, S, K] (GPTQ's calibration inputs). */
export interface LinearInputSite {
  weight: string;
  site: string;
  inputs: number;
}

/**
 * Where each fused linear weight reads its input: q|k|v from ln1, o from attn.z, gate|up from ln2, down from mlp.act.
 */
export function linearInputSites(spec: ModelSpec): Map<string, LinearInputSite> {
  const m = new Map<string, LinearInputSite>();
  const add = (weight: string, site: string, inputs: number) => m.set(weight, { weight, site, inputs });
  for (let l = 0; l < spec.numLayers; l++) {
    add(W.qkv(l), SITES.ln1(l), spec.hiddenSize);
    add(W.o(l), SITES.attnZ(l), spec.numHeads * spec.headDim);
    add(W.gateUp(l), SITES.ln2(l), spec.hiddenSize);
    add(W.down(l), SITES.mlpAct(l), spec.intermediateSize);
  }
  return m;
}
