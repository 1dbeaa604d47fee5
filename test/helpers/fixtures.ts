// Shared test fixtures: the shared models and data, temporary folders, small configs of every family, ChatML,
// random checkpoints and comparison helpers.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { writeRandomCheckpoint, type HfConfig, type RandomCheckpointOptions } from '../../tools/random-checkpoint.js';

export const STORIES = path.resolve(import.meta.dirname, '../../../shared/models/stories260K');
export const PREFERENCE_DATA = path.resolve(import.meta.dirname, '../../../shared/data/preference');

export function tempDir(prefix = 'arm-test-'): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix));
}

/** Small configs covering every family and quirk the engine supports. */
export const FAMILY_CONFIGS: Record<string, HfConfig> = {
  'llama (GQA 2, tied)': {
    model_type: 'llama',
    hidden_size: 32,
    intermediate_size: 48,
    num_hidden_layers: 2,
    num_attention_heads: 4,
    num_key_value_heads: 2,
    vocab_size: 512,
    max_position_embeddings: 128,
    rms_norm_eps: 1e-5,
    rope_theta: 10000,
    tie_word_embeddings: true,
  },
  'llama3 (rope llama3, GQA 3, untied, attention+mlp bias)': {
    model_type: 'llama',
    hidden_size: 48,
    intermediate_size: 64,
    num_hidden_layers: 3,
    num_attention_heads: 6,
    num_key_value_heads: 2,
    vocab_size: 520,
    max_position_embeddings: 256,
    rms_norm_eps: 1e-5,
    rope_theta: 500000,
    rope_scaling: {
      rope_type: 'llama3',
      factor: 8,
      low_freq_factor: 1,
      high_freq_factor: 4,
      original_max_position_embeddings: 16,
    },
    tie_word_embeddings: false,
    attention_bias: true,
    mlp_bias: true,
  },
  'llama (rope_parameters form, linear scaling, MHA)': {
    model_type: 'llama',
    hidden_size: 32,
    intermediate_size: 40,
    num_hidden_layers: 2,
    num_attention_heads: 4,
    num_key_value_heads: 4,
    vocab_size: 512,
    max_position_embeddings: 128,
    rms_norm_eps: 1e-6,
    rope_parameters: { rope_type: 'linear', rope_theta: 1000, factor: 2 },
    tie_word_embeddings: false,
  },
  'mistral (GQA 4, untied)': {
    model_type: 'mistral',
    hidden_size: 32,
    intermediate_size: 56,
    num_hidden_layers: 2,
    num_attention_heads: 8,
    num_key_value_heads: 2,
    head_dim: 4,
    vocab_size: 512,
    max_position_embeddings: 128,
    rms_norm_eps: 1e-5,
    rope_theta: 1000000,
    sliding_window: null,
    tie_word_embeddings: false,
  },
  'qwen2 (qkv bias, tied, GQA 2)': {
    model_type: 'qwen2',
    hidden_size: 32,
    intermediate_size: 48,
    num_hidden_layers: 2,
    num_attention_heads: 4,
    num_key_value_heads: 2,
    vocab_size: 512,
    max_position_embeddings: 128,
    rms_norm_eps: 1e-6,
    rope_theta: 1000000,
    tie_word_embeddings: true,
  },
  'qwen3 (q/k norm, explicit head_dim, GQA 2)': {
    model_type: 'qwen3',
    hidden_size: 32,
    intermediate_size: 48,
    num_hidden_layers: 2,
    num_attention_heads: 4,
    num_key_value_heads: 2,
    head_dim: 16,
    vocab_size: 512,
    max_position_embeddings: 128,
    rms_norm_eps: 1e-6,
    rope_theta: 1000000,
    tie_word_embeddings: true,
  },
};

export const CHATML =
  "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}" +
  "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

export function makeCheckpoint(
  config: HfConfig,
  opts: RandomCheckpointOptions = {},
): { dir: string; weights: Map<string, Float32Array> } {
  const dir = tempDir('arm-ckpt-');
  const weights = writeRandomCheckpoint(dir, config, { keep: true, ...opts });
  return { dir, weights };
}

/** max |a − b| relative to max(1, max |b|). */
export function relError(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`length ${a.length} vs ${b.length}`);
  let diff = 0,
    scale = 1;
  for (let i = 0; i < a.length; i++) {
    diff = Math.max(diff, Math.abs(a[i]! - b[i]!));
    scale = Math.max(scale, Math.abs(b[i]!));
  }
  return diff / scale;
}

export function row(x: Float32Array, i: number, width: number): Float32Array {
  return x.subarray(i * width, (i + 1) * width);
}

/**
 * The hf-parity fixtures' patch (tools/hf_parity.py, ../shared/fixtures/hf-parity/make_fixtures.py): heads (0, 1)
 * and (L−1, H−1) replaced by sin(i)·0.7 over the flattened [L, H, d].
 */
export function fixturePatch(L: number, H: number, d: number): { mask: Float32Array; values: Float32Array } {
  const values = Float32Array.from({ length: L * H * d }, (_, i) => Math.sin(i) * 0.7);
  const mask = new Float32Array(L * H);
  mask[0 * H + 1] = 1;
  mask[(L - 1) * H + (H - 1)] = 1;
  return { mask, values };
}
