/**
 * The records an evaluation run writes to items.jsonl, shared by the harness (which writes them) and the
 * aggregation (which reads them). On their own so neither module imports the other.
 */
import type { PairCell } from '../data/examples.js';

/** What a method returns for one test pair. */
export interface PairRecord {
  /** The method's score of each response; NaN when the pair could not be scored (too long). */
  chosen: number;
  rejected: number;
  /**
   * Scores that decide a pair whose primary scores are equal (vote shares tie often): SAVs' summed cosine
   * margins, sample voting's P("Yes"). Absent: a tie stays a tie, and a tie is wrong.
   */
  tieBreak?: { chosen: number; rejected: number };
  truncated: boolean;
  tooLong: boolean;
  /**
   * Text tokens of the pair's judge prompts (both responses), and those the vocabulary did not know (<unk>, or byte
   * fallback: arm/unknown-tokens.ts). Absent for methods that read no prompt, and in logs written before.
   */
  textTokens?: number;
  unknownTokens?: number;
  swapConsistent?: boolean;
  /** icl-judge: the greedy verdicts were Yes for chosen and No for rejected. */
  verdictCorrect?: boolean;
  /**
   * Ranked (pairwise) template: P(chosen) read in each order, [chosen shown first, chosen shown second], each
   * normalised over the two answers. JudgeBench scores pairwise judges by these two verdicts (records.ts
   * bothOrderOutcome).
   */
  orders?: [number, number];
}

/** One line of items.jsonl. */
export type RunRecord =
  /**
   * `tied`: the primary scores were equal (absent in logs written before tie-breaking: read as chosen === rejected).
   */
  | ({
      type: 'pair';
      method: string;
      seed: number;
      group: string;
      id: string;
      subset: string;
      correct: boolean;
      margin: number;
      tied?: boolean;
      cell?: PairCell;
    } & PairRecord)
  | {
      type: 'prepared';
      method: string;
      seed: number;
      group: string;
      heads: [number, number][] | null;
      seconds: number;
      tokens: number;
      poolIds: string[];
      /** Pool pairs whose labels were flipped (chosen ↔ rejected) before preparing; only in runs with label noise. */
      flipped?: string[];
      /** What was fitted (PreparedMethod.fingerprint); only in a shard's log (eval-shards.ts), dropped when merged. */
      fingerprint?: string;
    }
  | { type: 'cost'; method: string; seed: number; group: string; seconds: number; tokens: number; pairs: number }
  /**
   * The method could not be prepared on this pool for a data reason: its test pairs were not scored. Kept so a resumed
   * run does not retry it.
   */
  | {
      type: 'skipped';
      method: string;
      seed: number;
      group: string;
      reason: string;
      testPairs: number;
      poolIds: string[];
      seconds: number;
      tokens: number;
    };

export type PairRunRecord = Extract<RunRecord, { type: 'pair' }>;

/**
 * What the pool draws leave to test, per subset and group, so thin or empty ones are reported rather than silently
 * dropped.
 */
export interface SplitNotes {
  minTestPairs: number;
  /** Subsets left with fewer than `minTestPairs` test pairs in some seed (`testPairs` is the fewest over seeds). */
  smallSubsets: { subset: string; rows: number; testPairs: number }[];
  /** Groups whose every pair went into the pool in some seed: nothing of them is tested in those seeds. */
  droppedGroups: { group: string; rows: number; seeds: number[] }[];
  /** Exact duplicate pairs (same prompt, chosen and rejected) left out before splitting; the first of each is kept. */
  duplicatePairs?: number;
  /** Test pairs held out (neither pool nor test) because a pool pair has the same prompt, summed over seeds. */
  promptSiblingsHeldOut?: number;
}

/**
 * Whether a pair counts as correct: chosen strictly above rejected; on equal primary scores the tie-break
 * scores decide, strictly; anything else (a tie left, NaN) is wrong.
 */
export function pairOutcome(r: Pick<PairRecord, 'chosen' | 'rejected' | 'tieBreak'>): {
  correct: boolean;
  tied: boolean;
} {
  const tied = r.chosen === r.rejected; // NaN never equals: an unscorable pair is wrong, not tied
  const correct =
    r.chosen > r.rejected || (tied && r.tieBreak !== undefined && r.tieBreak.chosen > r.tieBreak.rejected);
  return { correct, tied };
}

/** A pair record's primary tie, also for logs written before `tied` was stored. */
export const isTied = (r: PairRunRecord) => r.tied ?? r.chosen === r.rejected;

/** The method produced a score for both responses. */
export const isScored = (r: PairRunRecord) => !r.tooLong && Number.isFinite(r.chosen) && Number.isFinite(r.rejected);

/**
 * JudgeBench's both-order rule for pairwise judges (ScalerLab/JudgeBench utils/metrics.py, compute_final_metrics
 * with both orders): each order's verdict counts +1 when it picks the correct response, −1 when it picks the
 * other, 0 when it picks neither (here: P exactly 0.5, or unscorable); the pair is correct when the sum is > 0.
 */
export function bothOrderOutcome(orders: [number, number]): boolean {
  // An unscorable order (NaN, or null as read back from JSON) is no verdict: 0.
  const vote = (p: number | null) => (typeof p !== 'number' || Number.isNaN(p) ? 0 : p > 0.5 ? 1 : p < 0.5 ? -1 : 0);
  return vote(orders[0]) + vote(orders[1]) > 0;
}
