/**
 * The language model's tensors in a checkpoint: every tensor a ModelSpec implies, with its Hugging Face name and
 * shape (for validation before export), and where image-text checkpoints keep them (their spellings map to the
 * text names `model.…` / `lm_head.weight` the exporter reads).
 */
import { ModelError } from '../errors.js';
import type { LanguageModelSpelling, ModelSpec } from './types.js';

/**
 * The spelling of the language model's weights in a checkpoint holding `names`: the text names of `spec`
 * (`model.layers.0…`, `lm_head.weight`) map to these. Text checkpoints use the text names as they are.
 */
export function languageModelSpelling(spec: ModelSpec, names: Iterable<string>, dir: string): LanguageModelSpelling {
  const spellings = spec.imageText?.spellings ?? [{ prefix: 'model.', lmHead: 'lm_head.weight' }];
  if (spellings.length === 1) return spellings[0]!;
  const all = new Set(names);
  const hit = spellings.find((s) => all.has(`${s.prefix}embed_tokens.weight`));
  if (!hit)
    throw new ModelError(
      `${dir}: no language-model weights ` +
        `(looked for ${spellings.map((s) => `"${s.prefix}embed_tokens.weight"`).join(', ')})`,
    );
  return hit;
}

/**
 * Checkpoint name → the text name the exporter reads (`model.…`, `lm_head.weight`), or null for other tensors
 * (the vision tower's).
 */
export function textWeightName(spelling: LanguageModelSpelling, stored: string): string | null {
  if (stored === spelling.lmHead) return 'lm_head.weight';
  if (stored.startsWith(spelling.prefix)) return `model.${stored.slice(spelling.prefix.length)}`;
  return null;
}

/** Every tensor a checkpoint of this spec must hold, with its HF shape. */
export function expectedTensors(spec: ModelSpec): Map<string, number[]> {
  const { hiddenSize: D, intermediateSize: F, numHeads: H, numKvHeads: KV, headDim: d, vocabSize: V } = spec;
  const t = new Map<string, number[]>();
  t.set('model.embed_tokens.weight', [V, D]);
  t.set('model.norm.weight', [D]);
  if (!spec.tieWordEmbeddings) t.set('lm_head.weight', [V, D]);
  for (let l = 0; l < spec.numLayers; l++) {
    const p = `model.layers.${l}`;
    t.set(`${p}.input_layernorm.weight`, [D]);
    t.set(`${p}.post_attention_layernorm.weight`, [D]);
    if (spec.sandwichNorms) {
      t.set(`${p}.pre_feedforward_layernorm.weight`, [D]);
      t.set(`${p}.post_feedforward_layernorm.weight`, [D]);
    }
    if (spec.fusedProjections) {
      t.set(`${p}.self_attn.qkv_proj.weight`, [(H + 2 * KV) * d, D]);
      if (spec.qkvBias) t.set(`${p}.self_attn.qkv_proj.bias`, [(H + 2 * KV) * d]);
    } else {
      t.set(`${p}.self_attn.q_proj.weight`, [H * d, D]);
      t.set(`${p}.self_attn.k_proj.weight`, [KV * d, D]);
      t.set(`${p}.self_attn.v_proj.weight`, [KV * d, D]);
      if (spec.qkvBias) {
        t.set(`${p}.self_attn.q_proj.bias`, [H * d]);
        t.set(`${p}.self_attn.k_proj.bias`, [KV * d]);
        t.set(`${p}.self_attn.v_proj.bias`, [KV * d]);
      }
    }
    t.set(`${p}.self_attn.o_proj.weight`, [D, H * d]);
    if (spec.oBias) t.set(`${p}.self_attn.o_proj.bias`, [D]);
    if (spec.qkNorm) {
      t.set(`${p}.self_attn.q_norm.weight`, [d]);
      t.set(`${p}.self_attn.k_norm.weight`, [d]);
    }
    if (spec.fusedProjections) {
      t.set(`${p}.mlp.gate_up_proj.weight`, [2 * F, D]);
      if (spec.mlpBias) t.set(`${p}.mlp.gate_up_proj.bias`, [2 * F]);
    } else {
      t.set(`${p}.mlp.gate_proj.weight`, [F, D]);
      t.set(`${p}.mlp.up_proj.weight`, [F, D]);
      if (spec.mlpBias) {
        t.set(`${p}.mlp.gate_proj.bias`, [F]);
        t.set(`${p}.mlp.up_proj.bias`, [F]);
      }
    }
    t.set(`${p}.mlp.down_proj.weight`, [D, F]);
    if (spec.mlpBias) t.set(`${p}.mlp.down_proj.bias`, [D]);
  }
  return t;
}
