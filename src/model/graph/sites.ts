/**
 * The decoder graph's names, in one frozen table each (as TransformerLens names `blocks.{l}.attn.hook_z`): the
 * graph's inputs and outputs (DECODER_INPUTS, DECODER_OUTPUTS) and its named sites (SITES), node outputs that
 * can be read (Decoder.forwardSites, GPTQ's calibration inputs: linearInputSites) or are patched (attn.z_last).
 * decoder-graph.ts emits them and every reader takes the names from here.
 *
 * Inputs
 *   inputs_embeds    f32   [B, S, D]   embed_tokens rows of the left-padded ids (the last position is S-1 in
 *                                      every row), gathered in JS from weights.bin: with tied embeddings the
 *                                      matrix then lives once, prepacked for the lm_head, not also for a Gather
 *   attention_mask   int64 [B, P+S]    1 = real token (past and new positions)
 *   position_ids     int64 [B, S]      M-RoPE families (ModelSpec.imageText.mropeRows): [3, B, S], rows
 *                                      temporal/height/width
 *   deepstack_embeds f32   [k, B, S, D]  Qwen3-VL only: slice l is added after layer l < k (vision features at
 *                                      image rows, zeros elsewhere; [k, 1, 1, D] zeros broadcast when no row has
 *                                      an image)
 *   past.{l}.key     f32   [1, KV, P, d]   keys after RoPE; P may be 0
 *   past.{l}.value   f32   [1, KV, P, d]
 *   patch_mask       f32   [B, L, H]   1 = patch that head at the last position
 *   patch_values     f32   [R, L, H, d]  R = 1: the same values for every row; R = B: per row (K criteria's
 *                                      patches as K rows after one shared prefix)
 *   patch_replace    f32   [R]         1: z ← mask·v + (1−mask)·z (replace); 0: z ← z + mask·v (add)
 * Outputs
 *   logits           f32   [B, V]      last position only
 *   logsumexp        f32   [B]         log Σ exp(logits): log-probabilities without a JS pass over V
 *   heads            f32   [B, L, H, d] o_proj input at the last position (after any patch)
 *   new.{l}.key      f32   [B, KV, S, d]
 *   new.{l}.value    f32   [B, KV, S, d]
 *   present.{l}.key  f32   [1, KV, P+S, d]  WebGPU graphs only (AttentionLayout.presentOutputs): past ++ row 0's
 *   present.{l}.value f32  [1, KV, P+S, d]  new keys/values, the next run's past, kept on the device
 *   and, in a graph emitted with siteOutputs (GPTQ calibration), those sites over all positions [B, S, K]
 *
 * Named sites (node outputs; shapes per row of the batch):
 *   inputs_embeds                  [B, S, D]      (already × √D for Gemma: scaled where looked up)
 *   mask_bias / mask_bias.sliding  [B, 1, 1, S, T]  0 or −1e9: causal, and within the window for sliding layers
 *   rope.cos / rope.sin            [B, 1, S, r]   r = rotaryDim (rope.sliding.* for Gemma 3's local base)
 *   blocks.{l}.ln1 / ln2           [B, S, D]
 *   blocks.{l}.attn.q              [B, H, S, d]   after q_norm and RoPE
 *   blocks.{l}.attn.k / v          [B, KV, S, d]  (= new.{l}.key / value)
 *   blocks.{l}.attn.pattern.{form}.{c}  [B, KV, g, C_c, T_c]  softmax probabilities of query chunk c, g = H / KV:
 *                                  positions s_c..s_{c+1}−1 over keys up to the chunk's last one (form noPast:
 *                                  T_c = s_{c+1}, used when P = 0; withPast: T_c = P + s_{c+1}); the other form's
 *                                  chunks are empty (causal-attention.ts, ATTENTION_QUERY_CHUNKS)
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
 * SITES below also names the intermediate nodes this list leaves out (past_len, attn.qkv, q_norm/k_norm,
 * mlp.gate_up).
 */

/** The two forms of a causal-attention query chunk: without a past (P = 0) and with one. */
export type ChunkForm = 'noPast' | 'withPast';

export const DECODER_INPUTS = Object.freeze({
  inputsEmbeds: 'inputs_embeds',
  attentionMask: 'attention_mask',
  positionIds: 'position_ids',
  deepstackEmbeds: 'deepstack_embeds',
  pastKey: (l: number) => `past.${l}.key`,
  pastValue: (l: number) => `past.${l}.value`,
  patchMask: 'patch_mask',
  patchValues: 'patch_values',
  patchReplace: 'patch_replace',
});

export const DECODER_OUTPUTS = Object.freeze({
  logits: 'logits',
  logsumexp: 'logsumexp',
  heads: 'heads',
  newKey: (l: number) => `new.${l}.key`,
  newValue: (l: number) => `new.${l}.value`,
  /** GPU graphs with AttentionLayout.presentOutputs only: the past and the first row's new keys/values. */
  presentKey: (l: number) => `present.${l}.key`,
  presentValue: (l: number) => `present.${l}.value`,
});

/** A RoPE table's node names: cos and sin [B, 1, S, r], and the hint naming its inverse-frequency constant [r/2]. */
export interface RopeTableNames {
  readonly cos: string;
  readonly sin: string;
  readonly invFreq: string;
}

export const SITES = Object.freeze({
  /** [B, S, D] (already × √D for Gemma). */
  inputsEmbeds: DECODER_INPUTS.inputsEmbeds,
  /** [] int64: P = T − S, the past's length. */
  pastLen: 'past_len',
  /** [B, 1, 1, S, T] 0 or −1e9 (the only mask when every layer is of one kind). */
  maskBias: 'mask_bias',
  /** [B, 1, 1, S, T] the sliding layers' mask, when full layers exist too. */
  maskBiasSliding: 'mask_bias.sliding',
  /** RoPE of the full-attention layers (and of all layers unless ModelSpec.slidingRope). */
  rope: Object.freeze<RopeTableNames>({ cos: 'rope.cos', sin: 'rope.sin', invFreq: 'rope.inv_freq' }),
  /** Gemma 3's sliding layers' RoPE (local base frequency). */
  ropeSliding: Object.freeze<RopeTableNames>({
    cos: 'rope.sliding.cos',
    sin: 'rope.sliding.sin',
    invFreq: 'rope.sliding.inv_freq',
  }),
  /** [B, S, D] the norm before attention. */
  ln1: (l: number) => `blocks.${l}.ln1`,
  /** [B, S, (H+2KV)·d] fused q|k|v projection. */
  attnQkv: (l: number) => `blocks.${l}.attn.qkv`,
  /** [B, S, H, d] per-head q_norm (Qwen3, Gemma 3), before RoPE. */
  attnQNorm: (l: number) => `blocks.${l}.attn.q_norm`,
  /** [B, S, KV, d] per-head k_norm. */
  attnKNorm: (l: number) => `blocks.${l}.attn.k_norm`,
  /** [B, H, S, d] after q_norm and RoPE. */
  attnQ: (l: number) => `blocks.${l}.attn.q`,
  /** [B, KV, S, d] after k_norm and RoPE: the output new.{l}.key. */
  attnK: DECODER_OUTPUTS.newKey,
  /** [B, KV, S, d]: the output new.{l}.value. */
  attnV: DECODER_OUTPUTS.newValue,
  /** [B, KV, g, C_c, T_c] softmax probabilities of query chunk c (see the header). */
  attnPattern: (l: number, form: ChunkForm, chunk: number) => `blocks.${l}.attn.pattern.${form}.${chunk}`,
  /** [B, S, H·d] per-head attention output, the o_proj input. */
  attnZ: (l: number) => `blocks.${l}.attn.z`,
  /** [B, H, d] its last position: the read/patch site. */
  attnZLast: (l: number) => `blocks.${l}.attn.z_last`,
  /** [B, H, d] after the patch; what `heads` returns. */
  attnZLastPatched: (l: number) => `blocks.${l}.attn.z_last_patched`,
  /** [B, S, D] o_proj output. */
  attnOut: (l: number) => `blocks.${l}.attn.out`,
  /** [B, S, D] its norm before the residual add (Gemma 2/3). */
  ln1Post: (l: number) => `blocks.${l}.ln1_post`,
  /** [B, S, D] residual stream after attention. */
  residMid: (l: number) => `blocks.${l}.resid_mid`,
  /** [B, S, D] the norm before the MLP. */
  ln2: (l: number) => `blocks.${l}.ln2`,
  /** [B, S, 2F] fused gate|up projection. */
  mlpGateUp: (l: number) => `blocks.${l}.mlp.gate_up`,
  /** [B, S, F] act(gate)·up, the down_proj input. */
  mlpAct: (l: number) => `blocks.${l}.mlp.act`,
  /** [B, S, D] down_proj output. */
  mlpOut: (l: number) => `blocks.${l}.mlp.out`,
  /** [B, S, D] its norm before the residual add (Gemma 2/3). */
  ln2Post: (l: number) => `blocks.${l}.ln2_post`,
  /** [B, S, D] residual stream after the layer. */
  residPost: (l: number) => `blocks.${l}.resid_post`,
  /** [B, S, D] resid_post + DeepStack features (Qwen3-VL, layers l < k). */
  residDeepstack: (l: number) => `blocks.${l}.resid_deepstack`,
  /** [B, D] final norm of the last position. */
  finalNormLast: 'final.norm_last',
  /** [B, V] logits before final soft-capping (Gemma 2/3). */
  logitsRaw: 'logits_raw',
});
