/**
 * The decoder as an ONNX graph, emitted from a ModelSpec. One graph serves every use (full forward,
 * prefill, shared-prefix step, generation) because the KV cache is kept outside it: the graph reads a past
 * (batch 1: one shared prefix) and returns only the new positions' keys and values.
 *
 * Inputs
 *   inputs_embeds    f32   [B, S, D]   embed_tokens rows of the left-padded ids (the last position is S-1 in
 *                                      every row), gathered in JS from weights.bin: with tied embeddings the
 *                                      matrix then lives once, prepacked for the lm_head, not also for a Gather
 *   attention_mask   int64 [B, P+S]    1 = real token (past and new positions)
 *   position_ids     int64 [B, S]     M-RoPE families (ModelSpec.imageText.mropeRows): [3, B, S], rows
 * temporal/height/width
 *   deepstack_embeds f32   [k, B, S, D]  Qwen3-VL only: slice l is added after layer l < k (vision features at image
 * rows,
 *                                      zeros elsewhere; [k, 1, 1, D] zeros broadcast when no row has an image)
 *   past.{l}.key     f32   [1, KV, P, d]   keys after RoPE; P may be 0
 *   past.{l}.value   f32   [1, KV, P, d]
 *   patch_mask       f32   [B, L, H]   1 = patch that head at the last position
 *   patch_values     f32   [L, H, d]
 *   patch_replace    f32   []          1: z ← mask·v + (1−mask)·z (replace); 0: z ← z + mask·v (add)
 * Outputs
 *   logits           f32   [B, V]      last position only
 *   logsumexp        f32   [B]         log Σ exp(logits): log-probabilities without a JS pass over V
 *   heads            f32   [B, L, H, d] o_proj input at the last position (after any patch)
 *   new.{l}.key      f32   [B, KV, S, d]
 *   new.{l}.value    f32   [B, KV, S, d]
 *
 * Named sites (node outputs, TransformerLens-style; shapes per row of the batch):
 *   inputs_embeds                  [B, S, D]      (already × √D for Gemma: scaled where looked up)
 *   mask_bias / mask_bias.sliding  [B, 1, 1, S, T]  0 or −1e9: causal, and within the window for sliding layers
 *   rope.cos / rope.sin            [B, 1, S, r]   r = rotaryDim (rope.sliding.* for Gemma 3's local base)
 *   blocks.{l}.ln1 / ln2           [B, S, D]
 *   blocks.{l}.attn.q              [B, H, S, d]   after q_norm and RoPE
 *   blocks.{l}.attn.k / v          [B, KV, S, d]  (= new.{l}.key / value)
 *   blocks.{l}.attn.pattern.{form}.{c}  [B, KV, g, C_c, T_c]  softmax probabilities of query chunk c, g = H / KV:
 * positions
                                 s_c..s_{c+1}−1 over keys up to the chunk's last one (form noPast: T_c = s_{c+1}, used when
                                 P = 0; withPast: T_c = P + s_{c+1}); the other form's chunks are empty (ATTENTION_QUERY_CHUNKS)
 *   blocks.{l}.attn.z              [B, S, H·d]    per-head attention output, the o_proj input
 *   blocks.{l}.attn.z_last         [B, H, d]      its last position (hook_z at the read/patch site)
 *   blocks.{l}.attn.z_last_patched [B, H, d]
 *   blocks.{l}.attn.out            [B, S, D]      o_proj output
 *   blocks.{l}.ln1_post            [B, S, D]      its norm before the residual add (Gemma 2/3 only)
 *   blocks.{l}.resid_mid / resid_post [B, S, D]
 *   blocks.{l}.resid_deepstack     [B, S, D]      resid_post + DeepStack features (Qwen3-VL, layers l < k)
 *   blocks.{l}.mlp.act             [B, S, F]      act(gate)·up, the down_proj input
 *   blocks.{l}.mlp.out             [B, S, D]
 *   blocks.{l}.ln2_post            [B, S, D]      (Gemma 2/3 only)
 *   final.norm_last                [B, D]
 *   logits_raw                     [B, V]         before final soft-capping (Gemma 2/3 only)
 */
import { GraphBuilder } from './graph-builder.js';
import {
  emitMatMulNBits,
  emitRowwiseLinear,
  type QuantizedWeightRef,
  type RowwiseWeightRef,
} from './quantized-linear.js';
import { ropeInverseFrequencies } from './rope.js';
import type { LayerType, ModelSpec, RopeSpec } from '../families/types.js';

const INT64_MAX = Number.MAX_SAFE_INTEGER;
const MASKED = -1e9; // finite, so a fully masked (padding) row stays finite instead of NaN

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
 * Which weights are stored quantised (int8/int4, graph/quantized-linear.ts): `ref` registers a linear
 * weight's quantised initializers and returns them (block-quantised for MatMulNBits, or row-wise int8 for
 * MatMulIntegerToFloat: `kind: 'rowwise'`), or null when that weight is float32.
 */
export interface QuantizedWeights {
  ref: (g: GraphBuilder, name: string) => QuantizedWeightRef | RowwiseWeightRef | null;
  accuracyLevel: number;
}

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

export const GRAPH_VERSION = 'decoder-graph/8';

/**
 * Causal attention runs in this many query chunks (a static count, so the graph stays one graph for every S):
 * chunk c of the S new positions skips the keys after its last position, which its queries mask anyway. N
 * chunks compute (N+1)/2N of the S×T scores, and the largest score tensor is 1/N of the whole.
 */
export const ATTENTION_QUERY_CHUNKS = 4;

/** Emits the graph; `weight(name)` registers the named weight as an initializer and returns its name. */
export function emitDecoderGraph(
  spec: ModelSpec,
  weight: (g: GraphBuilder, name: string) => string,
  headChunkBytes = HEAD_CHUNK_BYTES,
  quantized?: QuantizedWeights,
  attention: { queryChunks?: number } = {},
  siteOutputs: readonly LinearInputSite[] = [],
): GraphBuilder {
  // 1: one S×T score block per layer (tests compare)
  const queryChunks = attention.queryChunks ?? ATTENTION_QUERY_CHUNKS;
  const g = new GraphBuilder(18);
  const { numLayers: L, numHeads: H, numKvHeads: KV, headDim: d, vocabSize: V } = spec;
  const group = H / KV;
  const w = (name: string) => weight(g, name);
  const i64 = (v: number[]) => g.intConst(v);
  const f32 = (v: number) => g.floatConst([v], []);

  const inputsEmbeds = g.input('inputs_embeds', 'FLOAT', ['batch', 'seq', spec.hiddenSize]);
  const attnMask = g.input('attention_mask', 'INT64', ['batch', 'total']);
  // M-RoPE: rotary frequency j turns by the position in row mropeRows[j] of the 3-row position ids.
  const mropeRows = spec.imageText?.mropeRows ?? null;
  const positionIds = g.input('position_ids', 'INT64', mropeRows ? [3, 'batch', 'seq'] : ['batch', 'seq']);
  const past = Array.from({ length: L }, (_, l) => ({
    key: g.input(`past.${l}.key`, 'FLOAT', [1, KV, 'past', d]),
    value: g.input(`past.${l}.value`, 'FLOAT', [1, KV, 'past', d]),
  }));
  const patchMask = g.input('patch_mask', 'FLOAT', ['batch', L, H]);
  const patchValues = g.input('patch_values', 'FLOAT', [L, H, d]);
  const patchReplace = g.input('patch_replace', 'FLOAT', []);
  const deepstackLayers = spec.imageText?.deepstackLayers ?? 0;
  const deepstack =
    deepstackLayers > 0
      ? g.input('deepstack_embeds', 'FLOAT', [deepstackLayers, 'batch', 'seq', spec.hiddenSize])
      : null;

  // ---- shared: additive mask [B,1,1,S,T] and RoPE tables [B,1,S,d] ----
  const scalarDim = (x: string, axis: number) =>
    g.op('Squeeze', [g.op('Shape', [x], { start: axis, end: axis + 1 }), i64([0])]);
  const total = scalarDim(attnMask, 1);
  const seq = scalarDim(inputsEmbeds, 1);
  const pastLen = g.op('Sub', [total, seq], {}, 'past_len');
  const keyIdx = g.op('Range', [g.intConst([0], []), total, g.intConst([1], [])]); // [T]
  const queryIdx = g.op('Unsqueeze', [g.op('Range', [pastLen, total, g.intConst([1], [])]), i64([1])]); // [S,1]
  const causal = g.op('LessOrEqual', [keyIdx, queryIdx]); // [S,T]
  const valid = g.op('Unsqueeze', [g.op('Cast', [attnMask], { to: 9 }), i64([1, 2, 3])]); // [B,1,1,1,T]
  // One additive mask per attention kind in use; a sliding layer also hides keys ≥ window positions back
  // (transformers: kv_idx > q_idx − sliding_window), counted in token positions, not tensor indices: after a
  // past, a left-padded row's tokens sit (padding) indices after their positions.
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
  const maskBiasFor = (type: LayerType): string => {
    const allowed = type === 'full' || spec.slidingWindow === null ? causal : slidingAllowed();
    const name = type === 'sliding' && spec.layerTypes.includes('full') ? 'mask_bias.sliding' : 'mask_bias';
    return g.op('Where', [g.op('And', [valid, allowed]), f32(0), f32(MASKED)], {}, name); // [B,1,1,S,T]
  };
  const maskBias = new Map(Array.from(new Set(spec.layerTypes), (t) => [t, maskBiasFor(t)] as const));

  // RoPE on the first r = rotaryDim dimensions of each head (all of them unless partial rotary).
  const r = spec.rotaryDim;
  const pos = mropeRows // [B,S,1] or [B,S,r/2]
    ? g.op('Transpose', [g.op('Gather', [g.op('Cast', [positionIds], { to: 1 }), i64(mropeRows)], { axis: 0 })], {
        perm: [1, 2, 0],
      })
    : g.op('Unsqueeze', [g.op('Cast', [positionIds], { to: 1 }), i64([2])]);
  const ropeTables = (ropeSpec: RopeSpec, prefix: string) => {
    const invFreq = g.floatConst(ropeInverseFrequencies(spec, ropeSpec), [r / 2], `${prefix}.inv_freq`);
    const freqs = g.op('Mul', [pos, invFreq]); // [B,S,r/2]
    const emb = g.op('Unsqueeze', [g.op('Concat', [freqs, freqs], { axis: -1 }), i64([1])]); // [B,1,S,r]
    return { cos: g.op('Cos', [emb], {}, `${prefix}.cos`), sin: g.op('Sin', [emb], {}, `${prefix}.sin`) };
  };
  const globalRope = ropeTables(spec.rope, 'rope');
  const slidingRope = spec.slidingRope ? ropeTables(spec.slidingRope, 'rope.sliding') : globalRope;
  const half = i64([r / 2]);
  const rope = (x: string, table: { cos: string; sin: string }, name: string) => {
    const xr = r === d ? x : g.op('Slice', [x, i64([0]), i64([r]), i64([-1])]); // [B,n,S,r]
    const x1 = g.op('Slice', [xr, i64([0]), half, i64([-1])]);
    const x2 = g.op('Slice', [xr, half, i64([INT64_MAX]), i64([-1])]);
    const rotated = g.op('Concat', [g.op('Neg', [x2]), x1], { axis: -1 });
    if (r === d) return g.op('Add', [g.op('Mul', [x, table.cos]), g.op('Mul', [rotated, table.sin])], {}, name);
    const turned = g.op('Add', [g.op('Mul', [xr, table.cos]), g.op('Mul', [rotated, table.sin])]);
    // [B,n,S,d]
    return g.op('Concat', [turned, g.op('Slice', [x, i64([r]), i64([INT64_MAX]), i64([-1])])], { axis: -1 }, name);
  };
  // tanh(x / c) · c, Gemma 2's soft-capping of attention scores and final logits.
  const softcap = (x: string, cap: number, name?: string) =>
    g.op('Mul', [g.op('Tanh', [g.op('Div', [x, f32(cap)])]), f32(cap)], {}, name);
  // RMSNorm in the Pow/ReduceMean/Add/Sqrt/Div/Mul form that onnxruntime fuses.
  const rmsNorm = (x: string, weightName: string, name: string) => {
    const variance = g.op('ReduceMean', [g.op('Pow', [x, f32(2)]), i64([-1])], { keepdims: 1 });
    const normed = g.op('Div', [x, g.op('Sqrt', [g.op('Add', [variance, f32(spec.rmsNormEps)])])]);
    return g.op('Mul', [normed, w(weightName)], {}, name);
  };
  // x [.., K] · W → [.., N]: MatMul over a [K, N] float weight, MatMulNBits over a block-quantised [N, K]
  // one, or a row-wise W8A8 MatMulIntegerToFloat over an int8 [K, N] one.
  const matmul = (x: string, weightName: string, out?: string) => {
    const q = quantized?.ref(g, weightName);
    if (!q) return g.op('MatMul', [x, w(weightName)], {}, out);
    return 'kind' in q ? emitRowwiseLinear(g, x, q, out) : emitMatMulNBits(g, x, q, quantized!.accuracyLevel, out);
  };
  const linear = (x: string, weightName: string, biasName: string | null, name: string) => {
    const y = matmul(x, weightName, biasName ? undefined : name);
    return biasName ? g.op('Add', [y, w(biasName)], {}, name) : y;
  };
  // The MLP's gate activation: silu (SwiGLU), or gelu exact / tanh-approximated (GeGLU, gelu_pytorch_tanh).
  const activation = (x: string) => {
    if (spec.activation === 'silu') return g.op('Mul', [x, g.op('Sigmoid', [x])]);
    const halfX = g.op('Mul', [x, f32(0.5)]);
    if (spec.activation === 'gelu')
      return g.op('Mul', [halfX, g.op('Add', [f32(1), g.op('Erf', [g.op('Mul', [x, f32(Math.SQRT1_2)])])])]);
    // x + 0.044715x³
    const cubic = g.op('Add', [x, g.op('Mul', [g.op('Mul', [g.op('Mul', [x, x]), x]), f32(0.044715)])]);
    return g.op('Mul', [
      halfX,
      g.op('Add', [f32(1), g.op('Tanh', [g.op('Mul', [cubic, f32(Math.sqrt(2 / Math.PI))])])]),
    ]);
  };
  const lastPosition = (x: string) => g.op('Slice', [x, i64([-1]), i64([INT64_MAX]), i64([1])]); // [B,1,...]
  const allButLast = (x: string) => g.op('Slice', [x, i64([0]), i64([-1]), i64([1])]);

  // ---- blocks ----
  let resid = inputsEmbeds; // [B,S,D]
  const headTaps: string[] = [];
  // Query chunks for causal attention: a chunk of new positions [s_c, s_{c+1}) reads only keys up to P + s_{c+1}
  // (those after its last query are masked for all of it). Two forms, of which one gets every query at run time
  // and the other none (empty tensors cost nothing): without a past (P = 0: forward, prefill) the keys are the new
  // ones alone; with a past (extend, shared-prefix steps) the batch-1 past is broadcast by MatMul rather than
  // copied B times, and its scores are concatenated with the new ones'.
  const seq1 = g.op('Unsqueeze', [seq, i64([0])]); // [1] = S
  const past1 = g.op('Unsqueeze', [pastLen, i64([0])]); // [1] = P
  // [1] = S if P = 0 else 0
  const noPastQueries = g.op('Mul', [seq1, g.op('Cast', [g.op('Equal', [past1, i64([0])])], { to: 7 })]);
  const chunkBounds = (lo: string, hi: string) =>
    Array.from({ length: queryChunks + 1 }, (_, c) =>
      c === 0
        ? lo
        : c === queryChunks
          ? hi
          : g.op('Add', [lo, g.op('Div', [g.op('Mul', [g.op('Sub', [hi, lo]), i64([c])]), i64([queryChunks])])]),
    );
  // s_c
  const chunkStarts = { noPast: chunkBounds(i64([0]), noPastQueries), withPast: chunkBounds(noPastQueries, seq1) };
  for (let l = 0; l < L; l++) {
    const p = `blocks.${l}`;
    const ropeTable = spec.layerTypes[l] === 'sliding' ? slidingRope : globalRope;
    const x = rmsNorm(resid, W.ln1(l), `${p}.ln1`);
    const qkv = linear(x, W.qkv(l), spec.qkvBias ? W.qkvBias(l) : null, `${p}.attn.qkv`); // [B,S,(H+2KV)d]
    const [qFlat, kFlat, vFlat] = g.opMulti('Split', [qkv, i64([H * d, KV * d, KV * d])], { axis: 2 }, 3);
    // [B,S,n·d] → [B,n,S,d], with Qwen3's per-head RMSNorm (over d) before the transpose.
    const heads = (t: string, n: number, norm?: { weight: string; site: string }) => {
      let y = g.op('Reshape', [t, i64([0, 0, n, d])]); // [B,S,n,d]
      if (norm) y = rmsNorm(y, norm.weight, norm.site);
      return g.op('Transpose', [y], { perm: [0, 2, 1, 3] }); // [B,n,S,d]
    };
    const qNorm = spec.qkNorm ? { weight: W.qNorm(l), site: `${p}.attn.q_norm` } : undefined;
    const kNorm = spec.qkNorm ? { weight: W.kNorm(l), site: `${p}.attn.k_norm` } : undefined;
    const q = rope(heads(qFlat!, H, qNorm), ropeTable, `${p}.attn.q`);
    const k = rope(heads(kFlat!, KV, kNorm), ropeTable, `new.${l}.key`);
    const v = g.op('Identity', [heads(vFlat!, KV)], {}, `new.${l}.value`);
    g.output(`new.${l}.key`, 'FLOAT', ['batch', KV, 'seq', d]);
    g.output(`new.${l}.value`, 'FLOAT', ['batch', KV, 'seq', d]);

    // Query heads grouped by their KV head: [B,KV,g,S,d]; head h = kv·g + j reads KV head kv, as repeat_kv.
    const qg = g.op('Reshape', [g.op('Mul', [q, f32(spec.attnScale)]), i64([0, KV, group, -1, d])]);
    const newKeysT = g.op('Unsqueeze', [g.op('Transpose', [k], { perm: [0, 1, 3, 2] }), i64([2])]); // [B,KV,1,d,S]
    const newValues = g.op('Unsqueeze', [v, i64([2])]); // [B,KV,1,S,d]
    // [1,KV,1,d,P]
    const pastKeysT = g.op('Unsqueeze', [g.op('Transpose', [past[l]!.key], { perm: [0, 1, 3, 2] }), i64([2])]);
    const pastValues = g.op('Unsqueeze', [past[l]!.value, i64([2])]); // [1,KV,1,P,d]
    const bias = maskBias.get(spec.layerTypes[l]!)!; // [B,1,1,S,T]
    const chunks: string[] = [];
    for (const form of ['noPast', 'withPast'] as const) {
      const bounds = chunkStarts[form];
      for (let c = 0; c < queryChunks; c++) {
        const [s0, s1] = [bounds[c]!, bounds[c + 1]!];
        const qc = g.op('Slice', [qg, s0, s1, i64([3])]); // [B,KV,g,C,d]
        const scoresNew = g.op('MatMul', [qc, g.op('Slice', [newKeysT, i64([0]), s1, i64([4])])]); // [B,KV,g,C,s1]
        const raw =
          // [B,KV,g,C,P+s1]
          form === 'noPast' ? scoresNew : g.op('Concat', [g.op('MatMul', [qc, pastKeysT]), scoresNew], { axis: -1 });
        const scores = spec.attnSoftcap === null ? raw : softcap(raw, spec.attnSoftcap); // capped before the mask
        const keyEnd = g.op('Add', [past1, s1]);
        const maskStart = form === 'noPast' ? past1 : i64([0]); // P = 0 wherever noPast has queries
        const maskC = g.op('Slice', [
          bias,
          g.op('Concat', [s0, maskStart], { axis: 0 }),
          g.op('Concat', [s1, keyEnd], { axis: 0 }),
          i64([3, 4]),
        ]);
        const probs = g.op('Softmax', [g.op('Add', [scores, maskC])], { axis: -1 }, `${p}.attn.pattern.${form}.${c}`);
        const newPart = (x: string) => g.op('MatMul', [x, g.op('Slice', [newValues, i64([0]), s1, i64([3])])]);
        chunks.push(
          form === 'noPast'
            ? newPart(probs)
            : g.op('Add', [
                // [B,KV,g,C,d]
                g.op('MatMul', [g.op('Slice', [probs, i64([0]), past1, i64([4])]), pastValues]),
                newPart(g.op('Slice', [probs, past1, i64([INT64_MAX]), i64([4])])),
              ]),
        );
      }
    }
    const mixed = chunks.length === 1 ? chunks[0]! : g.op('Concat', chunks, { axis: 3 }); // [B,KV,g,S,d]
    // [B,S,H,d]
    const perHead = g.op('Transpose', [g.op('Reshape', [mixed, i64([0, H, -1, d])])], { perm: [0, 2, 1, 3] });
    const z = g.op('Reshape', [perHead, i64([0, 0, H * d])], {}, `${p}.attn.z`); // [B,S,H·d]

    // The read/patch site: the last position's per-head output, before o_proj.
    const zLast = g.op('Reshape', [lastPosition(z), i64([0, H, d])], {}, `${p}.attn.z_last`); // [B,H,d]
    const m = g.op('Unsqueeze', [g.op('Gather', [patchMask, g.intConst([l], [])], { axis: 1 }), i64([2])]); // [B,H,1]
    const value = g.op('Gather', [patchValues, g.intConst([l], [])], { axis: 0 }); // [H,d]
    const keep = g.op('Sub', [f32(1), g.op('Mul', [m, patchReplace])]); // [B,H,1]
    const zPatched = g.op('Add', [g.op('Mul', [zLast, keep]), g.op('Mul', [m, value])], {}, `${p}.attn.z_last_patched`);
    headTaps.push(g.op('Unsqueeze', [zPatched, i64([1])])); // [B,1,H,d]
    const zOut = g.op('Concat', [allButLast(z), g.op('Reshape', [zPatched, i64([0, 1, H * d])])], { axis: 1 });

    const attnOut = linear(zOut, W.o(l), spec.oBias ? W.oBias(l) : null, `${p}.attn.out`);
    const attnBranch = spec.sandwichNorms ? rmsNorm(attnOut, W.ln1Post(l), `${p}.ln1_post`) : attnOut;
    resid = g.op('Add', [resid, attnBranch], {}, `${p}.resid_mid`);
    const x2 = rmsNorm(resid, W.ln2(l), `${p}.ln2`);
    const gateUp = linear(x2, W.gateUp(l), spec.mlpBias ? W.gateUpBias(l) : null, `${p}.mlp.gate_up`); // [B,S,2F]
    const [gate, up] = g.opMulti(
      'Split',
      [gateUp, i64([spec.intermediateSize, spec.intermediateSize])],
      { axis: 2 },
      2,
    );
    const act = g.op('Mul', [activation(gate!), up!], {}, `${p}.mlp.act`); // act(gate)·up
    const mlpOut = linear(act, W.down(l), spec.mlpBias ? W.downBias(l) : null, `${p}.mlp.out`);
    const mlpBranch = spec.sandwichNorms ? rmsNorm(mlpOut, W.ln2Post(l), `${p}.ln2_post`) : mlpOut;
    resid = g.op('Add', [resid, mlpBranch], {}, `${p}.resid_post`);
    // Qwen3-VL DeepStack: layer l < k adds vision feature set l at the image rows (transformers: after the layer).
    if (deepstack && l < deepstackLayers)
      resid = g.op(
        'Add',
        [resid, g.op('Gather', [deepstack, g.intConst([l], [])], { axis: 0 })],
        {},
        `${p}.resid_deepstack`,
      );
  }

  const hLast = g.op('Squeeze', [lastPosition(resid), i64([1])]); // [B,D]
  const normed = rmsNorm(hLast, W.finalNorm, 'final.norm_last');
  const blocks = headChunks(spec, headChunkBytes).map((_, i) =>
    quantized?.ref(g, W.headChunk(i)) // [B,rows_i]
      ? matmul(normed, W.headChunk(i))
      : g.op('Gemm', [normed, w(W.headChunk(i))], { transB: 1 }),
  );
  const logitsName = spec.finalSoftcap === null ? 'logits' : 'logits_raw';
  if (blocks.length === 1) g.op('Identity', blocks, {}, logitsName);
  else g.op('Concat', blocks, { axis: 1 }, logitsName); // [B,V]
  if (spec.finalSoftcap !== null) softcap(logitsName, spec.finalSoftcap, 'logits');
  g.output('logits', 'FLOAT', ['batch', V]);
  g.op('ReduceLogSumExp', ['logits', i64([1])], { keepdims: 0 }, 'logsumexp'); // [B]
  g.output('logsumexp', 'FLOAT', ['batch']);
  g.op('Concat', headTaps, { axis: 1 }, 'heads'); // [B,L,H,d]
  g.output('heads', 'FLOAT', ['batch', L, H, d]);
  for (const site of siteOutputs) g.output(site.site, 'FLOAT', ['batch', 'seq', site.inputs]);
  return g;
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
    add(W.qkv(l), `blocks.${l}.ln1`, spec.hiddenSize);
    add(W.o(l), `blocks.${l}.attn.z`, spec.numHeads * spec.headDim);
    add(W.gateUp(l), `blocks.${l}.ln2`, spec.hiddenSize);
    add(W.down(l), `blocks.${l}.mlp.act`, spec.intermediateSize);
  }
  return m;
}
