/**
 * The transformers parity fixtures (tools/hf_parity.py, ../shared/fixtures/hf-parity/make_fixtures.py): which
 * families there are, where each lives, and what its parity.json holds. Text families in test/fixtures/hf-parity
 * (llama, mistral, qwen) and in ../shared/fixtures/hf-parity (gemma, phi3), image-text families in the latter.
 */
import fs from 'node:fs';
import path from 'node:path';
import { HF_PARITY } from './image-text.js';

export const LOCAL_HF_PARITY = path.resolve(import.meta.dirname, '../fixtures/hf-parity');

/** The text families in test/fixtures/hf-parity (shipped with the repository). */
export const LOCAL_TEXT_FAMILIES = [
  'llama-gqa2-tied',
  'llama3-rope-gqa3-bias',
  'mistral-gqa4-headdim',
  'qwen2-bias-tied',
  'qwen3-qknorm-headdim',
];

/** The text families in ../shared/fixtures/hf-parity (no tokenizer: they run on token ids). */
export const SHARED_TEXT_FAMILIES = [
  'gemma-gqa2',
  'gemma2-softcap-window',
  'gemma3-text-qknorm-window',
  'phi3-fused',
  'phi3-partial-rotary',
];

/** The image-text families in ../shared/fixtures/hf-parity (`<family>-tiny`, with image0.png and tensors). */
export const IMAGE_TEXT_FAMILIES = ['qwen2_vl-tiny', 'qwen2_5_vl-tiny', 'qwen3_vl-tiny', 'llava_onevision-tiny'];

/** Every text family with its folder: the local ones first, then the shared ones. */
export const TEXT_FIXTURES: { name: string; dir: string }[] = [
  ...LOCAL_TEXT_FAMILIES.map((name) => ({ name, dir: path.join(LOCAL_HF_PARITY, name) })),
  ...SHARED_TEXT_FAMILIES.map((name) => ({ name, dir: path.join(HF_PARITY, name) })),
];

/** Every image-text family with its folder. */
export const IMAGE_TEXT_FIXTURES = IMAGE_TEXT_FAMILIES.map((name) => ({ name, dir: path.join(HF_PARITY, name) }));

/** One prompt of a parity.json: transformers' float64 outputs at the last position, and its 8 greedy tokens. */
export interface ParityResult {
  input_ids: number[];
  last_logits: number[];
  o_proj_input_last: number[][];
  patched_last_logits: number[];
  patched_o_proj_input_last: number[][];
  greedy8: number[];
}

/** An image-text prompt: `input_ids` expanded by HF's processor from `input_ids_one_placeholder`. */
export interface ImageTextParityResult extends ParityResult {
  input_ids_one_placeholder: number[];
  image_token_count: number;
}

export interface Parity<R = ParityResult> {
  transformers: string;
  dtype: string;
  results: R[];
}

export function readParity<R = ParityResult>(dir: string): Parity<R> {
  return JSON.parse(fs.readFileSync(path.join(dir, 'parity.json'), 'utf8')) as Parity<R>;
}
