import { describe, expect, it } from 'vitest';
import { initialState, readoutMask, REINFORCE_DEFAULTS, runReinforce, type MaskLoss } from '../../src/arm/reinforce.js';
import { Rng } from '../../src/util/rng.js';

/**
 * A synthetic objective with no model: 40 "heads", a planted set must be on; each planted head that is off
 * costs 1, each other head that is on costs 0.3, plus per-item noise. The optimum is exactly the planted set.
 */
function plantedObjective(planted: Set<number>, seed: number): MaskLoss {
  const noise = new Rng(seed);
  const itemOffset = Array.from({ length: 20 }, () => noise.normal());
  return async (item, masks) => masks.map((m) => {
    let loss = itemOffset[item]!;
    m.forEach((on, i) => { loss += planted.has(i) ? (on ? 0 : 1) : on ? 0.3 : 0; });
    return loss + 0.1 * noise.normal();
  });
}

describe('REINFORCE head selection on a planted objective', () => {
  it.each([0, 1, 2, 3])('recovers the planted heads within the default budget (seed %i)', async (seed) => {
    const n = 40;
    const planted = new Set(new Rng(100 + seed).sample(n, 5));
    const loss = plantedObjective(planted, seed);
    const state = await runReinforce(n, 20, loss, REINFORCE_DEFAULTS, initialState(n, REINFORCE_DEFAULTS, seed));
    expect(state.step).toBe(600);
    const { mask } = await readoutMask(state.theta, 20, loss, REINFORCE_DEFAULTS, seed);
    const chosen = new Set([...mask.keys()].filter((i) => mask[i]));
    expect([...chosen].sort((a, b) => a - b)).toEqual([...planted].sort((a, b) => a - b));
  });

  it('is deterministic for a seed, and resuming from a saved state gives the same result', async () => {
    const n = 12;
    const opts = { ...REINFORCE_DEFAULTS, steps: 50 };
    const make = () => plantedObjective(new Set([1, 4]), 9);
    const full = await runReinforce(n, 20, make(), opts, initialState(n, opts, 5));
    const again = await runReinforce(n, 20, make(), opts, initialState(n, opts, 5));
    expect(again.theta).toEqual(full.theta);
    // Stop after 20 steps, serialise, continue. Losses are deterministic per call order, so reuse one objective.
    const objective = make();
    let stopAt = 20;
    const partial = await runReinforce(n, 20, objective, opts, initialState(n, opts, 5), { shouldStop: () => stopAt-- <= 1 });
    expect(partial.step).toBe(20);
    const resumed = await runReinforce(n, 20, objective, opts, JSON.parse(JSON.stringify(partial)));
    expect(resumed.theta).toEqual(full.theta);
  });

  it('standardised rewards: a constant loss leaves θ unchanged', async () => {
    const n = 6;
    const opts = { ...REINFORCE_DEFAULTS, steps: 10 };
    const state = await runReinforce(n, 3, async (_i, masks) => masks.map(() => 2), opts, initialState(n, opts, 0));
    expect(state.theta).toEqual(Array(n).fill(-1));
  });

  it('one hand-computed Adam step', async () => {
    // n = 1, S = 2 masks with losses 0 (on) and 1 (off): R = ∓0.5/0.7071; Adam's first step moves θ by −lr·sign(g).
    const opts = { ...REINFORCE_DEFAULTS, steps: 1, samples: 2 };
    let call = 0;
    const state = await runReinforce(1, 1, async (_i, masks) => { call++; return masks.map((m) => (m[0] ? 0 : 1)); }, opts, initialState(1, opts, 3));
    expect(call).toBe(1);
    const moved = state.theta[0]! - -1;
    // Loss is lower with the head on, so g = −0.7071·(1−p) + 0.7071·(0−p) < 0 and θ rises by exactly lr;
    // if both masks agree the losses are equal and nothing moves.
    expect([0, 0.1]).toContainEqual(Number(moved.toFixed(6)));
  });
});
