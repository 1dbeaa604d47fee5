/**
 * A stand-in scoring engine for the server's HTTP tests (no model: limits, errors, lifecycle, the API description).
 */
import type { Example } from '../../src/data/examples.js';
import type { CriterionMeta } from '../../src/arm/criterion.js';
import type { ExampleScore, ScoringEngine } from '../../src/server/engine-types.js';

/** An item's score with only its reward set (the rest neutral), as a stand-in engine returns it. */
export function itemScore(id: string, reward: number): ExampleScore {
  return {
    id,
    reward,
    normalized: 0,
    logitYes: 0,
    logitNo: 0,
    truncatedTokens: 0,
    tooLong: false,
    verdict: null,
    label: null,
  };
}

/** Scores by response length (reward = length / 1000), after `delayMs`; a scalar criterion named "c". */
export function standInEngine(delayMs = 0): ScoringEngine {
  const meta = {
    template: { kind: 'scalar', text: '', chat: false },
    answerTokens: { strings: ['Yes', 'No'] },
    heads: [],
    hyper: { maxLength: 64, batchSize: 8 },
    examples: { count: 0, sha256: '' },
    model: { id: 'stand-in' },
    fit: {},
  } as unknown as CriterionMeta;
  return {
    info: {
      model: { id: 'stand-in', dir: '.', family: 'llama', numLayers: 1, numHeads: 1 },
      imageText: false,
      specialTokens: [],
      eosToken: null,
      criteria: [{ name: 'c', file: 'c', meta }],
    },
    async score(_criterion: string, examples: Example[]) {
      if (delayMs) await new Promise((r) => setTimeout(r, delayMs));
      return {
        tokens: 0,
        scores: examples.map((e) => itemScore(e.id, (e.kind === 'scalar' ? e.response.length : 0) / 1000)),
      };
    },
    async close() {},
  };
}
