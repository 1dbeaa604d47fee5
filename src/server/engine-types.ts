/**
 * The scoring engine's contract, shared by the engines (engine.ts), the scheduler (scheduler.ts) and the routes:
 * what an engine says about its model and criteria, what one scoring call takes, and the scores it gives. Types
 * only, below all of them, so that their imports point one way (scheduler.ts → engine-types.ts ← engine.ts).
 */
import type { CriterionMeta } from '../arm/criterion.js';
import type { ExampleScore } from '../arm/rm.js';
import type { Example } from '../data/examples.js';

/** One example's score, as `ActivationRM.scoreExamples` gives it (`arm score` writes the same fields). */
export type { ExampleScore };

export interface ScoreCallOptions {
  batchSize?: number;
  maxLength?: number;
}

/** What the HTTP side needs to know about the model and criteria. */
export interface EngineInfo {
  model: { id: string; dir: string; family: string; numLayers: number; numHeads: number };
  /** An image-text checkpoint: /v1/score items and pairs may carry `images`. */
  imageText: boolean;
  /** Special-token strings of the tokenizer and its end-of-sequence token, for the OpenRLHF split. */
  specialTokens: string[];
  eosToken: string | null;
  criteria: { name: string; file: string; meta: CriterionMeta }[];
}

export interface ScoringEngine {
  readonly info: EngineInfo;
  /** Scores `examples` under `criterion` with one scoreExamples call; `tokens`: tokens fed to the model. */
  score(
    criterion: string,
    examples: Example[],
    opts: ScoreCallOptions,
  ): Promise<{ scores: ExampleScore[]; tokens: number }>;
  /**
   * Scores `examples` under several criteria of one pass (CriterionSet: each prompt runs once, its last token as one
   * row per criterion): [criterion][example], each as `score` gives it for that criterion alone. Optional: an engine
   * without it is called once per criterion.
   */
  scoreMany?(
    criteria: readonly string[],
    examples: Example[],
    opts: ScoreCallOptions,
  ): Promise<{ scores: ExampleScore[][]; tokens: number }>;
  /** Frees the model (the worker exits). */
  close(): Promise<void>;
}
