/**
 * The Qwen2-VL / Qwen2.5-VL / Qwen3-VL vision transformer as an ONNX graph, one image per run. Rows come in
 * the processor's merger order (2×2 neighbouring patches consecutive, see vision/qwen-processor.ts), so the
 * patch merger is a reshape of four consecutive rows and no reordering is needed anywhere: Qwen2.5-VL's window
 * attention gathers each window's rows into a padded batch and scatters the result back.
 *
 * Inputs
 *   pixel_values      f32   [N, C·T·P·P]  N = grid_h·grid_w patches (an image has one temporal patch)
 *   patch_positions   int64 [N, 2]        (row, column) of each patch on the grid: the 2-D rotary angles
 *   window_gather     int64 [Wn, Wl]      Qwen2.5-VL only: rows of each window, padded (padding repeats row 0)
 *   window_key_bias   f32   [Wn, 1, 1, Wl] Qwen2.5-VL only: 0 for a real key, −1e9 for padding
 *   window_scatter    int64 [N]           Qwen2.5-VL only: where each row sits in the flattened [Wn·Wl] batch
 *   pos_embed_index   int64 [N, 4]        Qwen3-VL only: learned position rows of the bilinear corners
 *   pos_embed_weight  f32   [N, 4]        Qwen3-VL only: their bilinear weights
 * Outputs
 *   image_embeds      f32   [N/m², out]   merged tokens, what replaces the image placeholders
 *   deepstack.{i}     f32   [N/m², out]   Qwen3-VL: DeepStack merger i's output (of block deepstackBlocks[i])
 *
 * Named sites:
 *   patch_embed                [N, D]        (+ pos_embed for Qwen3-VL: pos_embed [N, D], embeddings [N, D])
 *   rope.cos / rope.sin        [N, 1, d]     d = head size; first half: row angles ×2, second half the same
 *   blocks.{l}.ln1 / ln2       [N, D]
 *   blocks.{l}.attn.q / k / v  [N, H, d]     q, k after rotary
 *   blocks.{l}.attn.fused      [1, N, H·d]   full-attention blocks: the fused kernel's output (vision-ops.ts
 *                                            fusedAttention: flash attention in query/key tiles, so neither the
 *                                            [H, N, N] scores nor a pattern site exist)
 *   blocks.{l}.attn.pattern    [Wn, H, Wl, Wl]  window blocks (Qwen2.5-VL); full-attention blocks too, as
 *                                            [1, H, N, N], only in a graph emitted with fullAttention 'explicit'
 *   blocks.{l}.attn.z          [N, H·d]      proj input
 *   blocks.{l}.attn.out        [N, D]
 *   blocks.{l}.resid_mid / resid_post / mlp.out [N, D]
 *   merger.ln                  [N, D]  merger.in [N/m², m²·D]  merger.hidden [N/m², m²·D]
 *   deepstack.{i}.in           [N/m², m²·D]  (normalised after the shuffle)
 */
import { GraphBuilder } from './graph-builder.js';
import { INT64_MAX, linearOf, tensorOf, visionOps, type VisionOps, type VisionWeightSource } from './vision-ops.js';
import type { QwenVisionSpec } from '../families/types.js';

export const QWEN_VISION_GRAPH_VERSION = 'vision-qwen/2'; // 2: full attention fused (flash), no [H, N, N] scores

/** Graph-side names of the tower's weights. */
const QW = {
  patch: 'v.patch', // [C·T·P·P, D]  Conv3d kernel flattened, transposed
  patchBias: 'v.patch_bias',
  posEmbed: 'v.pos_embed', // [G², D]  Qwen3-VL learned grid
  norm1: (l: number) => `v.${l}.norm1`,
  norm1Bias: (l: number) => `v.${l}.norm1_bias`,
  norm2: (l: number) => `v.${l}.norm2`,
  norm2Bias: (l: number) => `v.${l}.norm2_bias`,
  qkv: (l: number) => `v.${l}.qkv`, // [D, 3D]  q|k|v, each heads × d
  qkvBias: (l: number) => `v.${l}.qkv_bias`,
  proj: (l: number) => `v.${l}.proj`,
  projBias: (l: number) => `v.${l}.proj_bias`,
  gateUp: (l: number) => `v.${l}.gate_up`, // [D, 2F] gate|up (Qwen2.5-VL)
  gateUpBias: (l: number) => `v.${l}.gate_up_bias`,
  fc1: (l: number) => `v.${l}.fc1`, // [D, F] (down_proj of Qwen2.5-VL)
  fc1Bias: (l: number) => `v.${l}.fc1_bias`,
  fc2: (l: number) => `v.${l}.fc2`, // [F, D]
  fc2Bias: (l: number) => `v.${l}.fc2_bias`,
  merger: (m: string, part: 'norm' | 'norm_bias' | 'fc1' | 'fc1_bias' | 'fc2' | 'fc2_bias') => `v.${m}.${part}`,
} as const;

/** Checkpoint prefixes of the vision tower: transformers 5 first, then the older hub spelling. */
export const QWEN_VISION_PREFIXES = ['model.visual.', 'visual.'] as const;

/** Which checkpoint tensor feeds each graph weight, for `prefix` (one of QWEN_VISION_PREFIXES). */
export function qwenVisionWeightSources(spec: QwenVisionSpec, prefix: string): Map<string, VisionWeightSource> {
  const m = new Map<string, VisionWeightSource>();
  const p = prefix;
  const isQwen3 = spec.family === 'qwen3_vl';
  const hasNormBias = spec.norm === 'layernorm';
  m.set(QW.patch, linearOf(`${p}patch_embed.proj.weight`));
  if (spec.patchBias) m.set(QW.patchBias, tensorOf(`${p}patch_embed.proj.bias`));
  if (spec.numPositionEmbeddings > 0) m.set(QW.posEmbed, tensorOf(`${p}pos_embed.weight`));
  for (let l = 0; l < spec.depth; l++) {
    const b = `${p}blocks.${l}`;
    m.set(QW.norm1(l), tensorOf(`${b}.norm1.weight`));
    m.set(QW.norm2(l), tensorOf(`${b}.norm2.weight`));
    if (hasNormBias) {
      m.set(QW.norm1Bias(l), tensorOf(`${b}.norm1.bias`));
      m.set(QW.norm2Bias(l), tensorOf(`${b}.norm2.bias`));
    }
    m.set(QW.qkv(l), linearOf(`${b}.attn.qkv.weight`));
    m.set(QW.qkvBias(l), tensorOf(`${b}.attn.qkv.bias`));
    m.set(QW.proj(l), linearOf(`${b}.attn.proj.weight`));
    m.set(QW.projBias(l), tensorOf(`${b}.attn.proj.bias`));
    if (spec.gatedMlp) {
      m.set(QW.gateUp(l), linearOf(`${b}.mlp.gate_proj.weight`, `${b}.mlp.up_proj.weight`));
      m.set(QW.gateUpBias(l), tensorOf(`${b}.mlp.gate_proj.bias`, `${b}.mlp.up_proj.bias`));
      m.set(QW.fc2(l), linearOf(`${b}.mlp.down_proj.weight`));
      m.set(QW.fc2Bias(l), tensorOf(`${b}.mlp.down_proj.bias`));
    } else {
      const [fc1, fc2] = isQwen3 ? ['linear_fc1', 'linear_fc2'] : ['fc1', 'fc2'];
      m.set(QW.fc1(l), linearOf(`${b}.mlp.${fc1}.weight`));
      m.set(QW.fc1Bias(l), tensorOf(`${b}.mlp.${fc1}.bias`));
      m.set(QW.fc2(l), linearOf(`${b}.mlp.${fc2}.weight`));
      m.set(QW.fc2Bias(l), tensorOf(`${b}.mlp.${fc2}.bias`));
    }
  }
  // Mergers: Qwen2/2.5-VL `merger.ln_q` + `merger.mlp.{0,2}`; Qwen3-VL `norm` + `linear_fc{1,2}`.
  const merger = (graphName: string, src: string) => {
    const [norm, fc1, fc2] = isQwen3 ? ['norm', 'linear_fc1', 'linear_fc2'] : ['ln_q', 'mlp.0', 'mlp.2'];
    m.set(QW.merger(graphName, 'norm'), tensorOf(`${src}.${norm}.weight`));
    if (hasNormBias) m.set(QW.merger(graphName, 'norm_bias'), tensorOf(`${src}.${norm}.bias`));
    m.set(QW.merger(graphName, 'fc1'), linearOf(`${src}.${fc1}.weight`));
    m.set(QW.merger(graphName, 'fc1_bias'), tensorOf(`${src}.${fc1}.bias`));
    m.set(QW.merger(graphName, 'fc2'), linearOf(`${src}.${fc2}.weight`));
    m.set(QW.merger(graphName, 'fc2_bias'), tensorOf(`${src}.${fc2}.bias`));
  };
  merger('merger', `${p}merger`);
  spec.deepstackBlocks.forEach((_, i) => merger(`deepstack.${i}`, `${p}deepstack_merger_list.${i}`));
  return m;
}

/** The expected shape of each checkpoint tensor the graph reads (to refuse a config/weights mismatch early). */
export function qwenVisionExpectedShapes(spec: QwenVisionSpec, prefix: string): Map<string, number[]> {
  const {
    hiddenSize: D,
    intermediateSize: F,
    inChannels: C,
    temporalPatchSize: T,
    patchSize: P,
    outHiddenSize: O,
  } = spec;
  const M = spec.mergeSize * spec.mergeSize * D;
  const s = new Map<string, number[]>([[`${prefix}patch_embed.proj.weight`, [D, C, T, P, P]]]);
  for (let l = 0; l < spec.depth; l++) {
    s.set(`${prefix}blocks.${l}.attn.qkv.weight`, [3 * D, D]);
    s.set(`${prefix}blocks.${l}.attn.proj.weight`, [D, D]);
    if (spec.gatedMlp) s.set(`${prefix}blocks.${l}.mlp.gate_proj.weight`, [F, D]);
    else s.set(`${prefix}blocks.${l}.mlp.${spec.family === 'qwen3_vl' ? 'linear_fc1' : 'fc1'}.weight`, [F, D]);
  }
  const fc2 = spec.family === 'qwen3_vl' ? 'merger.linear_fc2.weight' : 'merger.mlp.2.weight';
  s.set(`${prefix}${fc2}`, [O, M]);
  if (spec.numPositionEmbeddings > 0) s.set(`${prefix}pos_embed.weight`, [spec.numPositionEmbeddings, D]);
  return s;
}

export interface QwenVisionGraphOptions {
  /**
   * 'fused' (default): full-attention blocks run onnxruntime's flash-attention kernel, memory linear in N.
   * 'explicit': softmax(q·kᵀ)·v over the whole [1, H, N, N] score tensor, with its pattern site (tests compare).
   */
  readonly fullAttention?: 'fused' | 'explicit';
}

/** Emits the tower; `weight(g, name)` registers graph weight `name` (QW) and returns its initializer. */
export function emitQwenVisionGraph(
  spec: QwenVisionSpec,
  weight: (g: GraphBuilder, name: string) => string,
  opts: QwenVisionGraphOptions = {},
): GraphBuilder {
  const g = new GraphBuilder(18);
  const o = visionOps(g, weight);
  const K = spec.inChannels * spec.temporalPatchSize * spec.patchSize * spec.patchSize;
  const hasWindows = spec.windowSize !== null && spec.fullAttentionBlocks.length < spec.depth;
  const pixels = g.input('pixel_values', 'FLOAT', ['patches', K]);
  const positions = g.input('patch_positions', 'INT64', ['patches', 2]);
  const windows = hasWindows
    ? {
        gather: g.input('window_gather', 'INT64', ['windows', 'window_len']),
        keyBias: g.input('window_key_bias', 'FLOAT', ['windows', 1, 1, 'window_len']),
        scatter: g.input('window_scatter', 'INT64', ['patches']),
      }
    : null;
  let x = emitPatchEmbedding(o, spec, pixels); // [N,D]
  const ctx: QwenTowerContext = { o, spec, rotary: emitRotaryTables(o, spec, positions), windows, opts };
  const deepstack: string[] = [];
  for (let l = 0; l < spec.depth; l++) {
    x = emitQwenBlock(ctx, l, x);
    const ds = spec.deepstackBlocks.indexOf(l);
    if (ds >= 0) deepstack.push(emitDeepstackMerger(ctx, ds, x));
  }
  const mergerIn = g.op(
    'Reshape',
    [qwenNorm(ctx, x, QW.merger('merger', 'norm'), QW.merger('merger', 'norm_bias'), 'merger.ln'), mergedRows(ctx)],
    {},
    'merger.in',
  );
  emitMergerMlp(ctx, mergerIn, 'merger', 'image_embeds');
  g.output('image_embeds', 'FLOAT', ['tokens', spec.outHiddenSize]);
  deepstack.forEach((name) => g.output(name, 'FLOAT', ['tokens', spec.outHiddenSize]));
  return g;
}

/** What the block emitters share. */
interface QwenTowerContext {
  readonly o: VisionOps;
  readonly spec: QwenVisionSpec;
  /** cos and sin of the 2-D rotary angles [N, 1, d]. */
  readonly rotary: { readonly cos: string; readonly sin: string };
  /** Qwen2.5-VL's window inputs; null when every block attends over the whole image. */
  readonly windows: { readonly gather: string; readonly keyBias: string; readonly scatter: string } | null;
  readonly opts: QwenVisionGraphOptions;
}

/** LayerNorm (with bias) or RMSNorm (the bias name is then unused). */
function qwenNorm(ctx: QwenTowerContext, x: string, weightName: string, biasName: string, out: string): string {
  return ctx.spec.norm === 'layernorm'
    ? ctx.o.layerNorm(x, weightName, biasName, ctx.spec.normEps, out)
    : ctx.o.rmsNorm(x, weightName, ctx.spec.normEps, out);
}

/** The int64 shape [-1, m²·D]: m×m neighbouring rows side by side, as the mergers read them. */
function mergedRows(ctx: QwenTowerContext): string {
  return ctx.o.i64([-1, ctx.spec.mergeSize * ctx.spec.mergeSize * ctx.spec.hiddenSize]);
}

/**
 * The Conv3d with stride = kernel is one MatMul per flattened patch → [N, D]; Qwen3-VL adds its learned position
 * grid, bilinearly interpolated to the image (inputs pos_embed_index / pos_embed_weight).
 */
function emitPatchEmbedding(o: VisionOps, spec: QwenVisionSpec, pixels: string): string {
  const { g, i64 } = o;
  const x = o.linear(pixels, QW.patch, spec.patchBias ? QW.patchBias : null, 'patch_embed'); // [N,D]
  if (spec.numPositionEmbeddings === 0) return x;
  const index = g.input('pos_embed_index', 'INT64', ['patches', 4]);
  const weights = g.input('pos_embed_weight', 'FLOAT', ['patches', 4]);
  const corners = g.op('Gather', [o.w(QW.posEmbed), index], { axis: 0 }); // [N,4,D]
  const posEmbed = g.op(
    'ReduceSum',
    [g.op('Mul', [corners, g.op('Unsqueeze', [weights, i64([2])])]), i64([1])],
    { keepdims: 0 },
    'pos_embed',
  );
  return g.op('Add', [x, posEmbed], {}, 'embeddings'); // [N,D]
}

/** 2-D rotary: the first d/4 frequencies turn with the row, the next d/4 with the column, twice → cos, sin. */
function emitRotaryTables(o: VisionOps, spec: QwenVisionSpec, positions: string): { cos: string; sin: string } {
  const { g, i64 } = o;
  const d = spec.headDim;
  const quarter = d / 4;
  const invFreq = Array.from({ length: quarter }, (_, j) => 1 / spec.ropeTheta ** ((2 * j) / (d / 2)));
  const angles = g.op('Mul', [
    g.op('Unsqueeze', [g.op('Cast', [positions], { to: 1 }), i64([2])]),
    g.floatConst(invFreq, [quarter], 'rope.inv_freq'),
  ]); // [N,2,d/4]
  const halfAngles = g.op('Reshape', [angles, i64([0, d / 2])]); // [N,d/2]
  const emb = g.op('Unsqueeze', [g.op('Concat', [halfAngles, halfAngles], { axis: -1 }), i64([1])]); // [N,1,d]
  return { cos: g.op('Cos', [emb], {}, 'rope.cos'), sin: g.op('Sin', [emb], {}, 'rope.sin') };
}

/** t [N, H, d] turned by the rotary tables; the result is named `name`. */
function applyRotary(ctx: QwenTowerContext, t: string, name: string): string {
  const { g, i64 } = ctx.o;
  const d = ctx.spec.headDim;
  const t1 = g.op('Slice', [t, i64([0]), i64([d / 2]), i64([-1])]);
  const t2 = g.op('Slice', [t, i64([d / 2]), i64([INT64_MAX]), i64([-1])]);
  const rotated = g.op('Concat', [g.op('Neg', [t2]), t1], { axis: -1 });
  return g.op('Add', [g.op('Mul', [t, ctx.rotary.cos]), g.op('Mul', [rotated, ctx.rotary.sin])], {}, name); // [N,H,d]
}

/** One ViT block on x [N, D]: x += attention(norm1(x)); x += mlp(norm2(x)). */
function emitQwenBlock(ctx: QwenTowerContext, l: number, x: string): string {
  const { g } = ctx.o;
  const p = `blocks.${l}`;
  const z = emitQwenAttention(ctx, l, qwenNorm(ctx, x, QW.norm1(l), QW.norm1Bias(l), `${p}.ln1`)); // [N,H·d]
  const mid = g.op('Add', [x, ctx.o.linear(z, QW.proj(l), QW.projBias(l), `${p}.attn.out`)], {}, `${p}.resid_mid`);
  const mlpOut = emitQwenMlp(ctx, l, qwenNorm(ctx, mid, QW.norm2(l), QW.norm2Bias(l), `${p}.ln2`));
  return g.op('Add', [mid, mlpOut], {}, `${p}.resid_post`); // [N,D]
}

/** Block l's attention on its normed input h [N, D]: rotary q and k, window or whole-image attention → z [N, H·d]. */
function emitQwenAttention(ctx: QwenTowerContext, l: number, h: string): string {
  const { g, i64 } = ctx.o;
  const { numHeads: H, headDim: d, hiddenSize: D } = ctx.spec;
  const p = `blocks.${l}`;
  const qkv = g.op('Reshape', [ctx.o.linear(h, QW.qkv(l), QW.qkvBias(l)), i64([0, 3, H, d])]); // [N,3,H,d]
  // [N,H,d]
  const part = (i: number) => g.op('Squeeze', [g.op('Slice', [qkv, i64([i]), i64([i + 1]), i64([1])]), i64([1])]);
  const q = applyRotary(ctx, part(0), `${p}.attn.q`);
  const k = applyRotary(ctx, part(1), `${p}.attn.k`);
  const v = g.op('Identity', [part(2)], {}, `${p}.attn.v`);
  const windowed = ctx.windows !== null && !ctx.spec.fullAttentionBlocks.includes(l);
  const mixed = windowed ? windowAttention(ctx, { q, k, v }, p) : fullAttention(ctx, { q, k, v }, p); // [N,H,d]
  return g.op('Reshape', [mixed, i64([0, D])], {}, `${p}.attn.z`); // [N,H·d]
}

/**
 * Whole-image attention over [N, H, d] rows. Fused: the rows as one batch of N tokens with H·d features, in
 * flash-attention tiles (vision-ops.ts), so peak memory does not grow with N²; explicit: one batch of H heads.
 */
function fullAttention(ctx: QwenTowerContext, t: { q: string; k: string; v: string }, p: string): string {
  const { g, i64 } = ctx.o;
  const { numHeads: H, headDim: d, hiddenSize: D } = ctx.spec;
  const scale = 1 / Math.sqrt(d);
  if (ctx.opts.fullAttention === 'explicit') {
    // [1,H,N,d]
    const asBatch = (x: string) => g.op('Unsqueeze', [g.op('Transpose', [x], { perm: [1, 0, 2] }), i64([0])]);
    const mixed = ctx.o.attention(asBatch(t.q), asBatch(t.k), asBatch(t.v), scale, null, `${p}.attn.pattern`);
    return g.op('Transpose', [g.op('Squeeze', [mixed, i64([0])])], { perm: [1, 0, 2] }); // [N,H,d]
  }
  const asTokens = (x: string) => g.op('Reshape', [x, i64([1, -1, D])]); // [1,N,H·d]
  // [1,N,H·d]
  const mixed = ctx.o.fusedAttention(asTokens(t.q), asTokens(t.k), asTokens(t.v), H, scale, `${p}.attn.fused`);
  return g.op('Reshape', [mixed, i64([-1, H, d])]); // [N,H,d]
}

/** Window attention: rows gathered into [Wn, Wl] windows (padding keys masked), results scattered back. */
function windowAttention(ctx: QwenTowerContext, t: { q: string; k: string; v: string }, p: string): string {
  const { g, i64 } = ctx.o;
  const { numHeads: H, headDim: d } = ctx.spec;
  const windows = ctx.windows!;
  const asWindows = (x: string) =>
    g.op('Transpose', [g.op('Gather', [x, windows.gather], { axis: 0 })], { perm: [0, 2, 1, 3] }); // [Wn,H,Wl,d]
  const scale = 1 / Math.sqrt(d);
  // [Wn,H,Wl,d]
  const mixed = ctx.o.attention(
    asWindows(t.q),
    asWindows(t.k),
    asWindows(t.v),
    scale,
    windows.keyBias,
    `${p}.attn.pattern`,
  );
  const rows = g.op('Reshape', [g.op('Transpose', [mixed], { perm: [0, 2, 1, 3] }), i64([-1, H, d])]); // [Wn·Wl,H,d]
  return g.op('Gather', [rows, windows.scatter], { axis: 0 }); // [N,H,d]
}

/** Block l's MLP on its normed input h [N, D]: SwiGLU gate/up/down (Qwen2.5-VL), else fc1 → act → fc2. */
function emitQwenMlp(ctx: QwenTowerContext, l: number, h: string): string {
  const { g, i64 } = ctx.o;
  const { spec } = ctx;
  const out = `blocks.${l}.mlp.out`;
  if (!spec.gatedMlp)
    return ctx.o.linear(
      ctx.o.act(ctx.o.linear(h, QW.fc1(l), QW.fc1Bias(l)), spec.activation),
      QW.fc2(l),
      QW.fc2Bias(l),
      out,
    );
  const gateUp = ctx.o.linear(h, QW.gateUp(l), QW.gateUpBias(l)); // [N,2F]
  const [gate, up] = g.opMulti('Split', [gateUp, i64([spec.intermediateSize, spec.intermediateSize])], { axis: 1 }, 2);
  return ctx.o.linear(g.op('Mul', [ctx.o.act(gate!, spec.activation), up!]), QW.fc2(l), QW.fc2Bias(l), out);
}

/**
 * DeepStack merger `ds` on a block's output x [N, D]: unlike the main merger, it normalises after the 2×2
 * shuffle (over m²·D). Returns its output, graph output deepstack.{ds} [N/m², out].
 */
function emitDeepstackMerger(ctx: QwenTowerContext, ds: number, x: string): string {
  const m = `deepstack.${ds}`;
  const shuffled = ctx.o.g.op('Reshape', [x, mergedRows(ctx)]); // [N/m²,m²D]
  const normed = ctx.o.layerNorm(
    shuffled,
    QW.merger(m, 'norm'),
    QW.merger(m, 'norm_bias'),
    ctx.spec.normEps,
    `${m}.in`,
  );
  return emitMergerMlp(ctx, normed, m, m);
}

/** A merger's MLP: [N/m², m²·D] → gelu → [N/m², out], named `out`. */
function emitMergerMlp(ctx: QwenTowerContext, input: string, m: string, out: string): string {
  const { o } = ctx;
  // [N/m²,m²D]
  const hidden = o.act(o.linear(input, QW.merger(m, 'fc1'), QW.merger(m, 'fc1_bias')), 'gelu', `${m}.hidden`);
  return o.linear(hidden, QW.merger(m, 'fc2'), QW.merger(m, 'fc2_bias'), out); // [N/m²,O]
}
