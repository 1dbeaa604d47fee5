/** The random checkpoint with the Qwen2.5-0.5B shape that the benchmarks share (values random, fp32). */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { writeRandomCheckpoint, type HfConfig } from '../tools/random-checkpoint.js';

export const CONFIG: HfConfig = {
  model_type: 'qwen2',
  hidden_size: 896,
  intermediate_size: 4864,
  num_hidden_layers: 24,
  num_attention_heads: 14,
  num_key_value_heads: 2,
  head_dim: 64,
  vocab_size: 151936,
  tie_word_embeddings: true,
  rope_theta: 1000000,
  rms_norm_eps: 1e-6,
  max_position_embeddings: 4096,
};
export const CKPT_OPTS = { seed: 0, dtype: 'F32', std: 0.02 } as const; // std 0.02: HF's initializer_range

/** The checkpoint folder in os.tmpdir(), keyed by config; written once (~2 GB) and reused. */
export function qwenShapeDir(): string {
  const key = createHash('sha256').update(JSON.stringify({ CONFIG, CKPT_OPTS })).digest('hex').slice(0, 12);
  return path.join(os.tmpdir(), `arm-bench-ckpt-qwen2.5-0.5b-shape-${key}`);
}

export function ensureQwenShapeCheckpoint(log: (s: string) => void = (s) => process.stderr.write(`${s}\n`)): string {
  const dir = qwenShapeDir();
  if (fs.existsSync(path.join(dir, '.complete'))) return dir;
  log(`writing the random Qwen2.5-0.5B-shaped checkpoint to ${dir} (~2 GB, once)`);
  const t0 = performance.now();
  writeRandomCheckpoint(dir, CONFIG, CKPT_OPTS);
  fs.writeFileSync(
    path.join(dir, '.complete'),
    JSON.stringify({ config: CONFIG, ...CKPT_OPTS, writeS: (performance.now() - t0) / 1000 }, null, 2),
  );
  return dir;
}

export const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};
