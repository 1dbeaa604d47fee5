/** Bias controls: how far a length rule alone gets. A tie (equal lengths) counts as wrong, as everywhere. */
import type { PairExample } from '../data/examples.js';

export type LengthRule = 'longer' | 'shorter';

/** Per pair, the rule's scores for chosen and rejected (length in characters, negated for "shorter"). */
export function lengthScores(pairs: PairExample[], rule: LengthRule): { chosen: number; rejected: number }[] {
  const sign = rule === 'longer' ? 1 : -1;
  return pairs.map((p) => ({ chosen: sign * [...p.chosen].length, rejected: sign * [...p.rejected].length }));
}
