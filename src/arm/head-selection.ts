/**
 * Head selection (DESIGN §1 step 2) by the fit's --heads strategy: `selected` runs REINFORCE (reinforce.ts) on the
 * patched model's loss (reinforce-loss.ts) and reads out one mask; `all` patches every head and `random:N` N seeded
 * random heads (controls).
 */
import type { Decoder } from '../model/decoder.js';
import { Rng } from '../util/rng.js';
import type { CriterionMeta } from './criterion.js';
import { FitError } from './fit-errors.js';
import type { FitProgress, FitSettings } from './fit-options.js';
import type { JudgeImages } from './images.js';
import {
  initialState,
  probabilities,
  readoutMask,
  runReinforce,
  type ReinforceOptions,
  type ReinforceState,
} from './reinforce.js';
import { reinforceLoss } from './reinforce-loss.js';
import { nonFiniteHint } from './rm.js';
import type { JudgeItem, TemplateSpec } from './template.js';

/** The heads chosen, as a mask over L·H, with what the criterion records about the choice. */
export interface HeadSelection {
  selected: Uint8Array; // [L, H] 0/1
  probs: Float32Array; // [L, H]: σ(θ) for REINFORCE, the mask itself otherwise
  readout: CriterionMeta['readout'];
  reinforceSteps: number;
}

/** What head selection runs on, and how it reports, saves and stops. */
export interface SelectionRun {
  decoder: Decoder;
  settings: FitSettings;
  reinforce: ReinforceOptions;
  template: TemplateSpec;
  items: JudgeItem[];
  images: JudgeImages | null;
  /** The token of each answer word (AnswerTokens.primary). */
  answerIds: [number, number];
  /** The means patched in: [L, H, d]. */
  mu: Float32Array;
  /** A resumed REINFORCE state, or null to start afresh. */
  resumedState: ReinforceState | null;
  /** Saves the REINFORCE state (called every 10 steps). */
  saveProgress: (state: ReinforceState) => void;
  /** Saves the state and returns the error that stops the fit. */
  interrupted: (state: ReinforceState) => Error;
  onProgress?: FitProgress;
  shouldStop?: () => boolean;
}

export async function selectHeads(run: SelectionRun): Promise<HeadSelection> {
  const { numLayers: L, numHeads: H } = run.decoder.spec;
  const n = L * H;
  const strategy = run.settings.heads;
  if (strategy === 'selected') return selectByReinforce(run);
  if (strategy === 'all') {
    return {
      selected: new Uint8Array(n).fill(1),
      probs: new Float32Array(n).fill(1),
      readout: null,
      reinforceSteps: 0,
    };
  }
  const count = Number(strategy.slice('random:'.length));
  if (!Number.isInteger(count) || count < 0 || count > n)
    throw new FitError(`--heads ${strategy}: N must be an integer in 0..${n}`);
  const selected = new Uint8Array(n);
  for (const i of new Rng(run.settings.seed).sample(n, count)) selected[i] = 1;
  return { selected, probs: Float32Array.from(selected), readout: null, reinforceSteps: 0 };
}

/** REINFORCE from a fresh or resumed state up to its steps, then the read-out of one mask. */
async function selectByReinforce(run: SelectionRun): Promise<HeadSelection> {
  const { settings, reinforce: rOpts, items } = run;
  const { numLayers: L, numHeads: H } = run.decoder.spec;
  const loss = reinforceLoss(run.decoder, {
    items,
    template: run.template,
    answerIds: run.answerIds,
    mu: run.mu,
    mode: settings.mode,
    maxLength: settings.maxLength,
    cacheBytes: settings.kvCacheBytes,
    images: run.images,
  });
  const state = run.resumedState ?? initialState(L * H, rOpts, settings.seed);
  await runReinforce(L * H, items.length, loss, rOpts, state, {
    onStep: (current) => {
      const last = current.history[current.history.length - 1]!;
      const info = `loss ${last.meanLoss.toFixed(3)} | E[heads] ${last.expectedHeads.toFixed(1)}`;
      run.onProgress?.('reinforce', current.step, rOpts.steps, info);
      if (current.step % 10 === 0) run.saveProgress(current);
    },
    shouldStop: () => run.shouldStop?.() ?? false,
  });
  if (run.shouldStop?.()) throw run.interrupted(state);
  run.onProgress?.('readout', 0, 1, `${rOpts.readoutMasks} masks`);
  const best = await readoutMask(state.theta, items.length, loss, rOpts, settings.seed);
  if (!Number.isFinite(best.meanLoss) || !best.candidates.every(Number.isFinite))
    throw new FitError(nonFiniteHint('the read-out loss'));
  run.onProgress?.('readout', 1, 1, `best mean loss ${best.meanLoss.toFixed(3)}`);
  return {
    selected: best.mask,
    probs: Float32Array.from(probabilities(state.theta, rOpts.clip)),
    readout: { meanLoss: best.meanLoss, candidates: best.candidates },
    reinforceSteps: state.step,
  };
}

/** The heads a mask over L·H selects, as [layer, head] in order. */
export function headList(selected: Uint8Array, H: number): [number, number][] {
  const heads: [number, number][] = [];
  selected.forEach((on, i) => {
    if (on) heads.push([Math.floor(i / H), i % H]);
  });
  return heads;
}
