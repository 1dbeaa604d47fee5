/**
 * The REINFORCE optimiser alone (reinforce.ts), on synthetic objectives: recovering planted heads, determinism and
 * resume, and its update checked against the design's formulas step by step.
 */
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
  return async (item, masks) =>
    masks.map((m) => {
      let loss = itemOffset[item]!;
      m.forEach((on, i) => {
        loss += planted.has(i) ? (on ? 0 : 1) : on ? 0.3 : 0;
      });
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
    const partial = await runReinforce(n, 20, objective, opts, initialState(n, opts, 5), {
      shouldStop: () => stopAt-- <= 1,
    });
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

  it("the first Adam step moves θ by exactly lr against the gradient's sign", async () => {
    // n = 1; the loss is 0 with the head on and 1 with it off. Standardised rewards are high when the head is
    // off, so g = Σ R_s (M_s − p) < 0, and Adam's bias-corrected first step is −lr · g/|g| = +lr.
    const opts = { ...REINFORCE_DEFAULTS, steps: 1, samples: 32 };
    const seen: Uint8Array[] = [];
    const state = await runReinforce(
      1,
      1,
      async (_i, masks) => {
        seen.push(...masks);
        return masks.map((m) => (m[0] ? 0 : 1));
      },
      opts,
      initialState(1, opts, 3),
    );
    // The step is informative only if the 32 masks disagree (with p = σ(−1) ≈ 0.27 they do for this seed).
    expect(new Set(seen.map((m) => m[0])).size).toBe(2);
    expect(state.theta[0]).toBeCloseTo(-1 + opts.lr, 9);
  });

  it("three steps replayed from the design's formulas on the masks the optimiser drew", async () => {
    // Two heads, loss = 1 − 0.5·M[0] + 0.25·M[1] + item offset. Replay: p = clip(σ(θ)), R = (ℓ − mean)/(sample std +
    // 1e-8),
    // g = Σ R (M − p), Adam(β1 0.9, β2 0.999, ε 1e-8) with bias correction, θ ← θ − lr·m̂/(√v̂ + ε).
    const opts = { ...REINFORCE_DEFAULTS, steps: 3, samples: 8 };
    const steps: { masks: Uint8Array[]; losses: number[] }[] = [];
    const loss = async (item: number, masks: Uint8Array[]) => {
      const losses = masks.map((m) => 1 - 0.5 * m[0]! + 0.25 * m[1]! + item);
      steps.push({ masks: masks.map((m) => m.slice()), losses });
      return losses;
    };
    const state = await runReinforce(2, 3, loss, opts, initialState(2, opts, 11));
    expect(steps).toHaveLength(3);
    const theta = [-1, -1],
      m = [0, 0],
      v = [0, 0];
    steps.forEach(({ masks, losses }, k) => {
      const p = theta.map((t) => Math.min(1 - 1e-3, Math.max(1e-3, 1 / (1 + Math.exp(-t)))));
      const mean = losses.reduce((a, b) => a + b, 0) / losses.length;
      const std = Math.sqrt(losses.reduce((a, b) => a + (b - mean) ** 2, 0) / (losses.length - 1));
      const R = losses.map((l) => (l - mean) / (std + 1e-8));
      for (let i = 0; i < 2; i++) {
        const g = masks.reduce((a, mask, s) => a + R[s]! * (mask[i]! - p[i]!), 0);
        m[i] = 0.9 * m[i]! + 0.1 * g;
        v[i] = 0.999 * v[i]! + 0.001 * g * g;
        theta[i]! -= (0.1 * (m[i]! / (1 - 0.9 ** (k + 1)))) / (Math.sqrt(v[i]! / (1 - 0.999 ** (k + 1))) + 1e-8);
      }
    });
    expect(theta.some((t) => Math.abs(t + 1) > 0.05)).toBe(true); // the replay moved: it is not comparing two unmoved θ
    state.theta.forEach((t, i) => expect(t).toBeCloseTo(theta[i]!, 9));
  });
});
