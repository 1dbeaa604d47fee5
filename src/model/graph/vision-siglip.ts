/**
 * LLaVA-OneVision's image encoder as an ONNX graph: the SigLIP vision transformer over a batch of tiles (the
 * base image and its anyres tiles), the hidden state(s) of `vision_feature_layer`, and the 2-layer projector
 * into the language model's width. Laying the tiles' features out (unpadding, image_newline) is the caller's.
 *
 * Inputs
 *   pixel_values   f32 [T, C, S, S]   T tiles of S = image_size pixels
 * Outputs
 *   image_features f32 [T, n, text]   n = (S/P)² patches per tile (one fewer with the "default" strategy)
 *   pooled         f32 [T, D]         only when built with `pooled`: SigLIP's attention-pooling head on the
 *                                     post-layernormed last layer (transformers' pooler_output; LLaVA-OV does
 *                                     not use it, the parity test does)
 *
 * Named sites:
 *   embeddings                       [T, n, D]  patch Conv + learned positions (hidden_states[0])
 *   layers.{l}.ln1 / ln2             [T, n, D]
 *   layers.{l}.attn.q / k / v        [T, n, D]  heads side by side (head i: features i·d … i·d+d−1)
 *   layers.{l}.attn.z                [T, n, D]  out_proj input: fused attention's output (vision-ops.ts
 *                                               fusedAttention, flash attention: no [T, h, n, n] scores; n is
 *                                               only 729, but an image's tiles (up to 37 with a 6×6 pinpoint
 *                                               grid) run as one batch: 37·16·729² floats = 1.3 GB, twice)
 *   With attention 'explicit' (tests compare) instead:
 *   layers.{l}.attn.q / k / v        [T, h, n, d]
 *   layers.{l}.attn.pattern          [T, h, n, n]
 *   layers.{l}.attn.out / resid_mid / mlp.out / resid_post   [T, n, D]  (resid_post = hidden_states[l+1])
 *   features                         [T, n, D·#layers]  selected hidden states, concatenated
 *   projector.hidden                 [T, n, text]
 *   post_layernorm / head.*          pooled branch only
 */
import { GraphBuilder } from './graph-builder.js';
import { INT64_MAX, linearOf, tensorOf, visionOps, type VisionOps, type VisionWeightSource } from './vision-ops.js';
import type { SiglipVisionSpec } from '../families/types.js';

export const SIGLIP_VISION_GRAPH_VERSION = 'vision-siglip/2'; // 2: encoder attention fused (flash)

/** Graph-side names of the tower's weights. */
const SW = {
  patch: 'v.patch', // [D, C, P, P]  Conv kernel as stored
  patchBias: 'v.patch_bias',
  posEmbed: 'v.pos_embed', // [n, D]
  ln1: (l: number) => `v.${l}.ln1`,
  ln1Bias: (l: number) => `v.${l}.ln1_bias`,
  ln2: (l: number) => `v.${l}.ln2`,
  ln2Bias: (l: number) => `v.${l}.ln2_bias`,
  qkv: (l: number) => `v.${l}.qkv`,
  qkvBias: (l: number) => `v.${l}.qkv_bias`, // [D, 3D] q|k|v
  out: (l: number) => `v.${l}.out`,
  outBias: (l: number) => `v.${l}.out_bias`,
  fc1: (l: number) => `v.${l}.fc1`,
  fc1Bias: (l: number) => `v.${l}.fc1_bias`,
  fc2: (l: number) => `v.${l}.fc2`,
  fc2Bias: (l: number) => `v.${l}.fc2_bias`,
  proj1: 'p.linear_1',
  proj1Bias: 'p.linear_1_bias',
  proj2: 'p.linear_2',
  proj2Bias: 'p.linear_2_bias',
  postLn: 'v.post_ln',
  postLnBias: 'v.post_ln_bias',
  headProbe: 'v.head.probe',
  headQ: 'v.head.q',
  headQBias: 'v.head.q_bias',
  headKv: 'v.head.kv',
  headKvBias: 'v.head.kv_bias',
  headOut: 'v.head.out',
  headOutBias: 'v.head.out_bias',
  headLn: 'v.head.ln',
  headLnBias: 'v.head.ln_bias',
  headFc1: 'v.head.fc1',
  headFc1Bias: 'v.head.fc1_bias',
  headFc2: 'v.head.fc2',
  headFc2Bias: 'v.head.fc2_bias',
} as const;

/**
 * Checkpoint prefixes of the SigLIP tower, transformers 5 first: `model.vision_tower.`, then the llava-hf hub
 * checkpoints' `vision_tower.vision_model.` (SiglipVisionModel's own prefix inside), then `vision_tower.`.
 */
export const SIGLIP_VISION_PREFIXES = [
  'model.vision_tower.',
  'model.vision_tower.vision_model.',
  'vision_tower.vision_model.',
  'vision_tower.',
] as const;
export const LLAVA_PROJECTOR_PREFIXES = ['model.multi_modal_projector.', 'multi_modal_projector.'] as const;
export const LLAVA_IMAGE_NEWLINE = ['model.image_newline', 'image_newline'] as const;

/** Encoder layers the graph must run: up to the deepest selected hidden state (all of them for `pooled`). */
function siglipLayersRun(spec: SiglipVisionSpec, opts: { pooled: boolean }): number {
  return opts.pooled ? spec.numLayers : Math.max(...spec.featureLayers);
}

/** Which checkpoint tensor feeds each graph weight, for the tower's and projector's prefixes. */
export function siglipVisionWeightSources(
  spec: SiglipVisionSpec,
  prefixes: { tower: string; projector: string },
  opts: { pooled: boolean },
): Map<string, VisionWeightSource> {
  const { tower, projector } = prefixes;
  const { pooled } = opts;
  const m = new Map<string, VisionWeightSource>();
  const t = tower;
  const D = spec.hiddenSize;
  m.set(SW.patch, tensorOf(`${t}embeddings.patch_embedding.weight`));
  m.set(SW.patchBias, tensorOf(`${t}embeddings.patch_embedding.bias`));
  m.set(SW.posEmbed, tensorOf(`${t}embeddings.position_embedding.weight`));
  for (let l = 0; l < siglipLayersRun(spec, opts); l++) {
    const b = `${t}encoder.layers.${l}`;
    m.set(SW.ln1(l), tensorOf(`${b}.layer_norm1.weight`));
    m.set(SW.ln1Bias(l), tensorOf(`${b}.layer_norm1.bias`));
    m.set(SW.ln2(l), tensorOf(`${b}.layer_norm2.weight`));
    m.set(SW.ln2Bias(l), tensorOf(`${b}.layer_norm2.bias`));
    m.set(
      SW.qkv(l),
      linearOf(`${b}.self_attn.q_proj.weight`, `${b}.self_attn.k_proj.weight`, `${b}.self_attn.v_proj.weight`),
    );
    m.set(
      SW.qkvBias(l),
      tensorOf(`${b}.self_attn.q_proj.bias`, `${b}.self_attn.k_proj.bias`, `${b}.self_attn.v_proj.bias`),
    );
    m.set(SW.out(l), linearOf(`${b}.self_attn.out_proj.weight`));
    m.set(SW.outBias(l), tensorOf(`${b}.self_attn.out_proj.bias`));
    m.set(SW.fc1(l), linearOf(`${b}.mlp.fc1.weight`));
    m.set(SW.fc1Bias(l), tensorOf(`${b}.mlp.fc1.bias`));
    m.set(SW.fc2(l), linearOf(`${b}.mlp.fc2.weight`));
    m.set(SW.fc2Bias(l), tensorOf(`${b}.mlp.fc2.bias`));
  }
  m.set(SW.proj1, linearOf(`${projector}linear_1.weight`));
  m.set(SW.proj2, linearOf(`${projector}linear_2.weight`));
  if (spec.projectorBias) {
    m.set(SW.proj1Bias, tensorOf(`${projector}linear_1.bias`));
    m.set(SW.proj2Bias, tensorOf(`${projector}linear_2.bias`));
  }
  if (pooled) {
    // nn.MultiheadAttention keeps q|k|v in one in_proj [3D, D]: the probe's query uses the first D rows.
    m.set(SW.postLn, tensorOf(`${t}post_layernorm.weight`));
    m.set(SW.postLnBias, tensorOf(`${t}post_layernorm.bias`));
    m.set(SW.headProbe, tensorOf(`${t}head.probe`));
    m.set(SW.headQ, { kind: 'linear', names: [`${t}head.attention.in_proj_weight#rows:0:${D}`] });
    m.set(SW.headKv, { kind: 'linear', names: [`${t}head.attention.in_proj_weight#rows:${D}:${3 * D}`] });
    m.set(SW.headQBias, tensorOf(`${t}head.attention.in_proj_bias#rows:0:${D}`));
    m.set(SW.headKvBias, tensorOf(`${t}head.attention.in_proj_bias#rows:${D}:${3 * D}`));
    m.set(SW.headOut, linearOf(`${t}head.attention.out_proj.weight`));
    m.set(SW.headOutBias, tensorOf(`${t}head.attention.out_proj.bias`));
    m.set(SW.headLn, tensorOf(`${t}head.layernorm.weight`));
    m.set(SW.headLnBias, tensorOf(`${t}head.layernorm.bias`));
    m.set(SW.headFc1, linearOf(`${t}head.mlp.fc1.weight`));
    m.set(SW.headFc1Bias, tensorOf(`${t}head.mlp.fc1.bias`));
    m.set(SW.headFc2, linearOf(`${t}head.mlp.fc2.weight`));
    m.set(SW.headFc2Bias, tensorOf(`${t}head.mlp.fc2.bias`));
  }
  return m;
}

export function siglipExpectedShapes(spec: SiglipVisionSpec, tower: string, projector: string): Map<string, number[]> {
  const { hiddenSize: D, numChannels: C, patchSize: P, intermediateSize: F } = spec;
  const n = (spec.imageSize / P) ** 2;
  const s = new Map<string, number[]>([
    [`${tower}embeddings.patch_embedding.weight`, [D, C, P, P]],
    [`${tower}embeddings.position_embedding.weight`, [n, D]],
    [`${projector}linear_1.weight`, [spec.textHiddenSize, D * spec.featureLayers.length]],
    [`${projector}linear_2.weight`, [spec.textHiddenSize, spec.textHiddenSize]],
  ]);
  for (let l = 0; l < Math.max(...spec.featureLayers); l++) {
    s.set(`${tower}encoder.layers.${l}.self_attn.q_proj.weight`, [D, D]);
    s.set(`${tower}encoder.layers.${l}.mlp.fc1.weight`, [F, D]);
  }
  return s;
}

export interface SiglipVisionGraphOptions {
  /** Also emit SigLIP's attention-pooling head (output `pooled`); for parity checks only. */
  readonly pooled?: boolean;
  /** 'fused' (default): encoder attention in onnxruntime's flash-attention kernel; 'explicit': whole score tensors. */
  readonly attention?: 'fused' | 'explicit';
}

/** Emits the tower; `weight(g, name)` registers graph weight `name` (SW) and returns its initializer. */
export function emitSiglipVisionGraph(
  spec: SiglipVisionSpec,
  weight: (g: GraphBuilder, name: string) => string,
  opts: SiglipVisionGraphOptions = {},
): GraphBuilder {
  const g = new GraphBuilder(18);
  const o = visionOps(g, weight);
  const { i64 } = o;
  const { hiddenSize: D, patchSize: P, imageSize: S } = spec;
  const n = (S / P) ** 2;
  const ctx: SiglipContext = { o, spec, explicitAttention: opts.attention === 'explicit' };
  const pixels = g.input('pixel_values', 'FLOAT', ['tiles', spec.numChannels, S, S]);
  // [T,D,S/P,S/P]
  const conv = g.op('Conv', [pixels, o.w(SW.patch), o.w(SW.patchBias)], { kernel_shape: [P, P], strides: [P, P] });
  const patches = g.op('Transpose', [g.op('Reshape', [conv, i64([0, D, n])])], { perm: [0, 2, 1] }); // [T,n,D]
  let x = g.op('Add', [patches, o.w(SW.posEmbed)], {}, 'embeddings');
  const hiddenStates = [x];
  for (let l = 0; l < siglipLayersRun(spec, { pooled: opts.pooled === true }); l++) {
    x = emitEncoderLayer(ctx, l, x); // [T,n,D]
    hiddenStates.push(x);
  }
  const selected = spec.featureLayers.map((k) => hiddenStates[k]!);
  emitProjector(ctx, selected);
  g.output('image_features', 'FLOAT', ['tiles', spec.dropsFirstFeature ? n - 1 : n, spec.textHiddenSize]);
  if (opts.pooled) {
    emitPoolingHead(ctx, x);
    g.output('pooled', 'FLOAT', ['tiles', D]);
  }
  return g;
}

/** What the layer emitters share. */
interface SiglipContext {
  readonly o: VisionOps;
  readonly spec: SiglipVisionSpec;
  readonly explicitAttention: boolean;
}

/** LayerNorm with the tower's epsilon. */
function siglipNorm(ctx: SiglipContext, x: string, weightName: string, biasName: string, out?: string): string {
  return ctx.o.layerNorm(x, weightName, biasName, ctx.spec.layerNormEps, out);
}

/** [T, n, D] → [T, h, n, d]. */
function splitHeads(ctx: SiglipContext, x: string, name?: string): string {
  const { g, i64 } = ctx.o;
  return g.op(
    'Transpose',
    [g.op('Reshape', [x, i64([0, 0, ctx.spec.numHeads, ctx.spec.headDim])])],
    { perm: [0, 2, 1, 3] },
    name,
  );
}

/** [T, h, n, d] → [T, n, D]. */
function mergeHeads(ctx: SiglipContext, x: string, name?: string): string {
  const { g, i64 } = ctx.o;
  return g.op('Reshape', [g.op('Transpose', [x], { perm: [0, 2, 1, 3] }), i64([0, 0, ctx.spec.hiddenSize])], {}, name);
}

/** Encoder layer l on x [T, n, D]: x += attention(ln1(x)); x += mlp(ln2(x)) (resid_post = hidden_states[l+1]). */
function emitEncoderLayer(ctx: SiglipContext, l: number, x: string): string {
  const { o, spec } = ctx;
  const { g, i64 } = o;
  const D = spec.hiddenSize;
  const p = `layers.${l}`;
  const qkv = o.linear(siglipNorm(ctx, x, SW.ln1(l), SW.ln1Bias(l), `${p}.ln1`), SW.qkv(l), SW.qkvBias(l)); // [T,n,3D]
  const scale = 1 / Math.sqrt(spec.headDim);
  let z: string; // [T,n,D]
  if (ctx.explicitAttention) {
    const [qf, kf, vf] = g.opMulti('Split', [qkv, i64([D, D, D])], { axis: 2 }, 3);
    const mixed = o.attention(
      splitHeads(ctx, qf!, `${p}.attn.q`),
      splitHeads(ctx, kf!, `${p}.attn.k`),
      splitHeads(ctx, vf!, `${p}.attn.v`),
      scale,
      null,
      `${p}.attn.pattern`,
    );
    z = mergeHeads(ctx, mixed, `${p}.attn.z`);
  } else {
    const names = [`${p}.attn.q`, `${p}.attn.k`, `${p}.attn.v`];
    const [qf, kf, vf] = g.opMulti('Split', [qkv, i64([D, D, D])], { axis: 2 }, names);
    z = o.fusedAttention(qf!, kf!, vf!, spec.numHeads, scale, `${p}.attn.z`);
  }
  const attnOut = o.linear(z, SW.out(l), SW.outBias(l), `${p}.attn.out`);
  const mid = g.op('Add', [x, attnOut], {}, `${p}.resid_mid`);
  const hidden = o.act(
    o.linear(siglipNorm(ctx, mid, SW.ln2(l), SW.ln2Bias(l), `${p}.ln2`), SW.fc1(l), SW.fc1Bias(l)),
    spec.activation,
  );
  return g.op('Add', [mid, o.linear(hidden, SW.fc2(l), SW.fc2Bias(l), `${p}.mlp.out`)], {}, `${p}.resid_post`);
}

/** The selected hidden states, concatenated ('features'), less the first ("default" strategy), projected. */
function emitProjector(ctx: SiglipContext, selected: string[]): void {
  const { o, spec } = ctx;
  const { g, i64 } = o;
  let features =
    selected.length === 1
      ? g.op('Identity', selected, {}, 'features')
      : g.op('Concat', selected, { axis: -1 }, 'features');
  if (spec.dropsFirstFeature) features = g.op('Slice', [features, i64([1]), i64([INT64_MAX]), i64([1])]); // [T,n−1,·]
  const projHidden = o.act(
    o.linear(features, SW.proj1, spec.projectorBias ? SW.proj1Bias : null),
    spec.projectorActivation,
    'projector.hidden',
  );
  o.linear(projHidden, SW.proj2, spec.projectorBias ? SW.proj2Bias : null, 'image_features');
}

/** Multihead attention pooling: one learned probe query attends over the tile's normalised tokens → pooled [T, D]. */
function emitPoolingHead(ctx: SiglipContext, x: string): void {
  const { o, spec } = ctx;
  const { g, i64 } = o;
  const D = spec.hiddenSize;
  const scale = 1 / Math.sqrt(spec.headDim);
  const normed = siglipNorm(ctx, x, SW.postLn, SW.postLnBias, 'post_layernorm'); // [T,n,D]
  const query = o.linear(g.op('Reshape', [o.w(SW.headProbe), i64([1, 1, D])]), SW.headQ, SW.headQBias); // [1,1,D]
  // [T,n,D] each
  const [kf, vf] = g.opMulti('Split', [o.linear(normed, SW.headKv, SW.headKvBias), i64([D, D])], { axis: 2 }, 2);
  // [T,h,1,d]
  const mixed = o.attention(
    splitHeads(ctx, query),
    splitHeads(ctx, kf!),
    splitHeads(ctx, vf!),
    scale,
    null,
    'head.pattern',
  );
  const attended = o.linear(mergeHeads(ctx, mixed), SW.headOut, SW.headOutBias, 'head.attn'); // [T,1,D]
  const mlp = o.linear(
    o.act(o.linear(siglipNorm(ctx, attended, SW.headLn, SW.headLnBias), SW.headFc1, SW.headFc1Bias), spec.activation),
    SW.headFc2,
    SW.headFc2Bias,
  );
  g.op('Squeeze', [g.op('Add', [attended, mlp]), i64([1])], {}, 'pooled'); // [T,D]
}
