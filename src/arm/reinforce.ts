/**
 * Head selection by REINFORCE over independent Bernoulli gates (MTV's defaults): logits θ[n] start at −1,
 * p = clip(σ(θ), 1e-3, 1 − 1e-3); each step draws one item and S masks M ~ Bernoulli(p), gets one loss per
 * mask, standardises the losses within the step (sample std), and takes an Adam step on Σ_s R_s (M_s − p)
 * (zero where p is clipped), minimising the expected loss.
 *
 * Where REINFORCE updates: `updatePolicy` (losses → rewards → gradient → Adam step on θ), called once per step
 * by `runReinforce`, which draws the item and the masks; `readoutMask` picks the final mask. Model-free: the loss
 * comes from a callback (reinforce-loss.ts on the model), so the optimiser is tested on synthetic objectives.
 */
import { Rng } from '../util/rng.js';

export interface ReinforceOptions {
  steps: number; // 600
  samples: number; // 32 masks per step
  lr: number; // 0.1
  init: number; // −1
  clip: number; // 1e-3
  beta1: number; // 0.9
  beta2: number; // 0.999
  adamEps: number; // 1e-8
  readoutMasks: number; // 10
  readoutItems: number; // 50
}

export const REINFORCE_DEFAULTS: Readonly<ReinforceOptions> = Object.freeze({
  steps: 600,
  samples: 32,
  lr: 0.1,
  init: -1,
  clip: 1e-3,
  beta1: 0.9,
  beta2: 0.999,
  adamEps: 1e-8,
  readoutMasks: 10,
  readoutItems: 50,
});

/** Losses of `masks` (each Uint8Array[n] of 0/1) on item `item`. */
export type MaskLoss = (item: number, masks: Uint8Array[]) => Promise<number[]>;

export interface ReinforceState {
  step: number;
  theta: number[];
  m: number[];
  v: number[];
  rng: { s: number; spare: number | null };
  history: { step: number; item: number; meanLoss: number; expectedHeads: number }[];
}

export function initialState(n: number, opts: ReinforceOptions, seed: number): ReinforceState {
  return {
    step: 0,
    theta: Array(n).fill(opts.init),
    m: Array(n).fill(0),
    v: Array(n).fill(0),
    rng: new Rng(seed).state,
    history: [],
  };
}

const sigmoid = (x: number) => 1 / (1 + Math.exp(-x));

export function probabilities(theta: number[], clip: number): number[] {
  return theta.map((t) => Math.min(1 - clip, Math.max(clip, sigmoid(t))));
}

export interface RunHooks {
  onStep?: (state: ReinforceState) => void;
  /** Checked after every step; when true the loop returns early with the state so far. */
  shouldStop?: () => boolean;
}

/** Runs steps from `state` (a fresh or resumed one) up to opts.steps; mutates and returns the state. */
export async function runReinforce(
  nHeads: number,
  nItems: number,
  loss: MaskLoss,
  opts: ReinforceOptions,
  state: ReinforceState,
  hooks: RunHooks = {},
): Promise<ReinforceState> {
  if (nItems < 1) throw new Error('reinforce: no items');
  const rng = Rng.fromState(state.rng);
  while (state.step < opts.steps) {
    const p = probabilities(state.theta, opts.clip);
    const item = rng.int(nItems);
    const masks = Array.from({ length: opts.samples }, () => Uint8Array.from(p, (pi) => (rng.uniform() < pi ? 1 : 0)));
    const losses = await loss(item, masks);
    const meanLoss = updatePolicy(state, { heads: nHeads, p, masks, losses }, opts);
    state.step += 1;
    state.rng = rng.state;
    state.history.push({ step: state.step, item, meanLoss, expectedHeads: p.reduce((a, b) => a + b, 0) });
    hooks.onStep?.(state);
    if (hooks.shouldStop?.()) break;
  }
  return state;
}

/**
 * The REINFORCE update of one step: the losses of the step's masks (drawn from p) are standardised within the step
 * into rewards R_s = (ℓ_s − mean) / (std + 1e-8); each head's gradient is Σ_s R_s (M_s[i] − p[i]); Adam moves θ
 * against it (the expected loss is minimised). A head whose σ(θ) is clipped gets no gradient and keeps its moments.
 * Mutates θ and the Adam moments of `state` (not its step count); returns the step's mean loss.
 */
function updatePolicy(
  state: ReinforceState,
  step: { heads: number; p: number[]; masks: Uint8Array[]; losses: number[] },
  opts: ReinforceOptions,
): number {
  const { heads, p, masks, losses } = step;
  const mean = losses.reduce((a, b) => a + b, 0) / losses.length;
  const std = Math.sqrt(losses.reduce((a, b) => a + (b - mean) ** 2, 0) / Math.max(1, losses.length - 1));
  const rewards = losses.map((l) => (l - mean) / (std + 1e-8));
  const t = state.step + 1; // Adam's bias correction counts this step
  for (let i = 0; i < heads; i++) {
    const raw = sigmoid(state.theta[i]!);
    if (raw < opts.clip || raw > 1 - opts.clip) continue; // clipped: no gradient, no moment update
    let g = 0;
    for (let s = 0; s < masks.length; s++) g += rewards[s]! * (masks[s]![i]! - p[i]!);
    state.m[i] = opts.beta1 * state.m[i]! + (1 - opts.beta1) * g;
    state.v[i] = opts.beta2 * state.v[i]! + (1 - opts.beta2) * g * g;
    const mHat = state.m[i]! / (1 - opts.beta1 ** t),
      vHat = state.v[i]! / (1 - opts.beta2 ** t);
    state.theta[i]! -= (opts.lr * mHat) / (Math.sqrt(vHat) + opts.adamEps);
  }
  return mean;
}

/**
 * Read-out: sample `readoutMasks` masks from σ(θ) and keep the one with the lowest mean loss over at most
 * `readoutItems` items (the first ones of a seeded shuffle).
 */
export async function readoutMask(
  theta: number[],
  nItems: number,
  loss: MaskLoss,
  opts: ReinforceOptions,
  seed: number,
): Promise<{ mask: Uint8Array; meanLoss: number; candidates: number[] }> {
  const rng = new Rng(seed ^ 0x5eed);
  const p = theta.map(sigmoid);
  const masks = Array.from({ length: opts.readoutMasks }, () =>
    Uint8Array.from(p, (pi) => (rng.uniform() < pi ? 1 : 0)),
  );
  const items = rng.shuffle(Array.from({ length: nItems }, (_, i) => i)).slice(0, opts.readoutItems);
  const totals = new Array(masks.length).fill(0);
  for (const item of items)
    (await loss(item, masks)).forEach((l, i) => {
      totals[i] += l;
    });
  const means = totals.map((t) => t / items.length);
  const best = means.reduce((b, m, i) => (m < means[b]! ? i : b), 0);
  return { mask: masks[best]!, meanLoss: means[best]!, candidates: means };
}
