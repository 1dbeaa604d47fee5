/**
 * What a fit can be asked (FitOptions: the library's and the CLI's options) and what it runs with once the
 * defaults are filled in (FitSettings: part of the checkpoint key and of the criterion's metadata).
 */
import type { Decoder } from '../model/decoder.js';
import { canonicalDenoise } from './denoise.js';
import { DEFAULT_PASSES_PER_DEMO_SET } from './means.js';
import type { ReinforceOptions } from './reinforce.js';
import type { TemplateKind } from './template.js';

export type HeadStrategy = 'selected' | 'all' | `random:${number}`;

export interface FitOptions {
  template?: TemplateKind;
  /** Custom template text with {prompt} {response} (or {response_a} {response_b}) placeholders. */
  templateText?: string;
  /** Use the chat template: 'auto' (default) when the tokenizer has one. */
  chat?: boolean | 'auto';
  /**
   * Extra variables for the chat template (transformers' `apply_chat_template(**kwargs)`), over makeTemplate's
   * default of `enable_thinking: false` where the template reads it.
   */
  templateKwargs?: Record<string, unknown>;
  passes?: number; // 100
  shots?: number; // 4
  /**
   * Mean-extraction passes sharing one demo draw (default DEFAULT_PASSES_PER_DEMO_SET = 5; 1 = MTV's independent
   * draws); see MeanOptions.
   */
  passesPerDemoSet?: number;
  seed?: number; // 0
  batchSize?: number; // 8
  maxLength?: number; // the model's positions
  mode?: 'replace' | 'add';
  heads?: HeadStrategy; // selected
  /** `pca:r[:centred|:uncentred]` (centred when not said; see denoiseMeans), or null / 'none'. */
  denoise?: string | null;
  /** Denoise the means of every head before head selection, so REINFORCE selects on denoised means. */
  denoiseBeforeSelection?: boolean;
  reinforce?: Partial<ReinforceOptions>;
  /** Bytes of prefix KV caches kept for REINFORCE (least recently used evicted). */
  kvCacheBytes?: number;
  /** Where fit progress is saved; with `resume`, a matching checkpoint is continued. */
  checkpointFile?: string;
  resume?: boolean;
  modelId?: string;
  /**
   * When the judge template or the examples' judge prompts are mostly unknown tokens (unknown-tokens.ts): true
   * refuses (FitError), false or absent warns and fits. `arm fit` refuses unless --force; the library default
   * warns, so an evaluation goes on and records the rate.
   */
  refuseMostlyUnknown?: boolean;
  onProgress?: (phase: 'means' | 'reinforce' | 'readout', done: number, total: number, info: string) => void;
  warn?: (message: string) => void;
  /**
   * Polled after every mean-extraction batch and every REINFORCE step; when it returns true the fit saves its
   * checkpoint (the passes done so far, or the REINFORCE state) and throws FitInterrupted.
   */
  shouldStop?: () => boolean;
}

/** The phases a fit reports progress in (FitOptions.onProgress). */
export type FitProgress = NonNullable<FitOptions['onProgress']>;

/**
 * FitOptions with every default filled in. The order of the fields is part of the checkpoint key (a checkpoint
 * written by an earlier build must still resume): keep it.
 */
export interface FitSettings {
  readonly template: TemplateKind;
  readonly passes: number;
  readonly shots: number;
  readonly seed: number;
  readonly batchSize: number;
  readonly maxLength: number;
  readonly mode: 'replace' | 'add';
  readonly heads: HeadStrategy;
  /** The canonical spelling (see canonicalDenoise), null for none. */
  readonly denoise: string | null;
  readonly kvCacheBytes: number;
  readonly passesPerDemoSet: number;
  readonly denoiseBeforeSelection: boolean;
}

export function fitSettings(decoder: Decoder, options: FitOptions): FitSettings {
  return {
    template: options.template ?? 'scalar',
    passes: options.passes ?? 100,
    shots: options.shots ?? 4,
    seed: options.seed ?? 0,
    batchSize: options.batchSize ?? 8,
    maxLength: options.maxLength ?? decoder.spec.maxPositions,
    mode: options.mode ?? 'replace',
    heads: options.heads ?? 'selected',
    denoise: canonicalDenoise(options.denoise ?? null),
    kvCacheBytes: options.kvCacheBytes ?? 512 * 2 ** 20,
    passesPerDemoSet: options.passesPerDemoSet ?? DEFAULT_PASSES_PER_DEMO_SET,
    denoiseBeforeSelection: options.denoiseBeforeSelection ?? false,
  };
}
