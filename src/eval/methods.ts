/**
 * Every method the harness compares, behind one interface: prepare on a seed's few-shot pool (fit what needs
 * fitting), then score test pairs. All share the one loaded Decoder.
 */
import type { Decoder } from '../model/decoder.js';
import type { PairExample } from '../data/examples.js';
import { FitError, fitActivationRM, judgeItems, zeroShotRM, type FitOptions } from '../arm/fit.js';
import type { ActivationRM, PairScore, ScoreOptions } from '../arm/rm.js';
import { fitSav, scoreSav } from '../baselines/sav.js';
import { lengthScores } from '../baselines/heuristics.js';
import { Rng } from '../util/rng.js';

export interface MethodOptions {
  fit: Omit<FitOptions, 'seed' | 'heads' | 'mode' | 'onProgress' | 'shouldStop' | 'checkpointFile' | 'resume'>;
  batchSize: number;
  maxLength: number;
  iclShots: number;          // demonstrations in the ICL judge prompt (4)
  sampleN: number;           // sampled verdicts (8)
  sampleTemperature: number; // (1)
  savTopHeads: number;       // (20)
  onFitProgress?: FitOptions['onProgress'];
}

export interface PairRecord {
  chosen: number;
  rejected: number;
  truncated: boolean;
  tooLong: boolean;
  swapConsistent?: boolean;
  /** icl-judge: the greedy verdicts were Yes for chosen and No for rejected. */
  verdictCorrect?: boolean;
}

export interface PreparedMethod {
  scorePairs(pairs: PairExample[]): Promise<PairRecord[]>;
  /** Heads the method patches or reads, for the heat map. */
  heads?: [number, number][];
}

export interface MethodContext { decoder: Decoder; pool: PairExample[]; seed: number; options: MethodOptions; armHeadCount?: number }

export interface Method {
  name: string;
  definition: string;
  needsPool: boolean;
  prepare(ctx: MethodContext): Promise<PreparedMethod>;
}

/**
 * Whether a failure to prepare a method is about the pool itself (a single label class once too-long items
 * are left out, nothing left to fit on): the harness then skips that (method, pool, seed) and reports why.
 * Every fitter in the harness (ARM and its ablations, SAVs) raises FitError for those; anything else is a bug
 * or a broken model and must stop the run.
 */
export function isPoolDataError(e: unknown): e is Error {
  return e instanceof FitError;
}

const fromPairScores = (scores: PairScore[]): PairRecord[] => scores.map((s) => ({
  chosen: s.chosen, rejected: s.rejected, truncated: s.truncated, tooLong: s.tooLong,
  ...(s.swapConsistent === undefined ? {} : { swapConsistent: s.swapConsistent }),
}));

function rmMethod(rm: ActivationRM, ctx: MethodContext, extra: ScoreOptions = {}): PreparedMethod {
  return {
    heads: rm.criterion.meta.heads,
    async scorePairs(pairs) {
      const scores = (await rm.scoreExamples(pairs, { batchSize: ctx.options.batchSize, maxLength: ctx.options.maxLength, ...extra })) as PairScore[];
      const records = fromPairScores(scores);
      if (extra.demos) scores.forEach((s, i) => { records[i]!.verdictCorrect = s.detail[0]!.verdict === 0 && s.detail[1]!.verdict === 1; });
      return records;
    },
  };
}

const fitWith = (ctx: MethodContext, heads: FitOptions['heads'], mode: FitOptions['mode'] = 'replace') =>
  fitActivationRM(ctx.decoder, ctx.pool, { ...ctx.options.fit, batchSize: ctx.options.batchSize, maxLength: ctx.options.maxLength, seed: ctx.seed, heads, mode, onProgress: ctx.options.onFitProgress });

/** The ICL judge's fixed demonstrations for a seed: `iclShots` judge items drawn from the pool. */
function iclDemos(ctx: MethodContext) {
  const items = judgeItems(ctx.pool, ctx.options.fit.template ?? 'scalar');
  return new Rng(ctx.seed + 17).sample(items.length, Math.min(ctx.options.iclShots, items.length)).map((i) => items[i]!);
}

const zeroShot = (ctx: MethodContext) => zeroShotRM(ctx.decoder, { ...ctx.options.fit, batchSize: ctx.options.batchSize, maxLength: ctx.options.maxLength });

export const METHODS: Readonly<Record<string, Method>> = Object.freeze({
  arm: {
    name: 'arm', needsPool: true,
    definition: 'Activation RM: REINFORCE-selected heads replaced by their few-shot mean activations; score = P("Yes").',
    prepare: async (ctx) => rmMethod(await fitWith(ctx, 'selected'), ctx),
  },
  'mean-add': {
    name: 'mean-add', needsPool: true,
    definition: 'Ablation: the same pipeline, but the means are added to the heads (z + μ) instead of replacing them.',
    prepare: async (ctx) => rmMethod(await fitWith(ctx, 'selected', 'add'), ctx),
  },
  'random-heads': {
    name: 'random-heads', needsPool: true,
    definition: 'Ablation: as many heads as ARM selected (20, or every head of a smaller model, without an ARM run), chosen at random, replaced by their means.',
    // Capped: asking a model for more heads than it has is a FitError that would read as an unusable pool.
    prepare: async (ctx) => rmMethod(await fitWith(ctx, `random:${ctx.armHeadCount ?? Math.min(20, ctx.decoder.spec.numLayers * ctx.decoder.spec.numHeads)}`), ctx),
  },
  'all-heads': {
    name: 'all-heads', needsPool: true,
    definition: 'Ablation: every head replaced by its mean activation.',
    prepare: async (ctx) => rmMethod(await fitWith(ctx, 'all'), ctx),
  },
  'zero-shot': {
    name: 'zero-shot', needsPool: false,
    definition: 'The judge question asked zero-shot; score = full-softmax P("Yes").',
    prepare: async (ctx) => rmMethod(zeroShot(ctx), ctx),
  },
  'token-prob': {
    name: 'token-prob', needsPool: false,
    definition: 'Zero-shot, score = P(Yes variants) / (P(Yes variants) + P(No variants)).',
    prepare: async (ctx) => rmMethod(zeroShot(ctx), ctx, { readout: 'normalized' }),
  },
  'icl-judge': {
    name: 'icl-judge', needsPool: true,
    definition: 'In-context judge: k pool items with their answers before the question; score = P("Yes"); greedy verdicts reported too.',
    prepare: async (ctx) => rmMethod(zeroShot(ctx), ctx, { demos: iclDemos(ctx) }),
  },
  'sample-vote': {
    name: 'sample-vote', needsPool: true,
    definition: 'N verdicts sampled at temperature T from the ICL judge prompt; score = share of "Yes" among Yes/No verdicts.',
    prepare: async (ctx) => rmMethod(zeroShot(ctx), ctx, {
      demos: iclDemos(ctx), readout: 'sampled', sample: { n: ctx.options.sampleN, temperature: ctx.options.sampleTemperature, seed: ctx.seed },
    }),
  },
  'sav-vote': {
    name: 'sav-vote', needsPool: true,
    definition: 'SAVs: per-head class means of pool activations; the top-20 heads by pool accuracy vote by nearest mean (cosine); score = share of "Yes" votes.',
    async prepare(ctx) {
      // SAVs classify single responses: always the scalar template, whatever the run's --template.
      const scalarFit = ctx.options.fit.template === 'ranked' ? { ...ctx.options.fit, template: 'scalar' as const, templateText: undefined } : ctx.options.fit;
      const rm = zeroShotRM(ctx.decoder, { ...scalarFit, batchSize: ctx.options.batchSize, maxLength: ctx.options.maxLength });
      const template = rm.criterion.meta.template;
      const opts = { batchSize: ctx.options.batchSize, maxLength: ctx.options.maxLength };
      const model = await fitSav(ctx.decoder, template, judgeItems(ctx.pool, 'scalar'), { ...opts, topHeads: ctx.options.savTopHeads });
      return {
        heads: model.heads,
        async scorePairs(pairs) {
          const votes = await scoreSav(ctx.decoder, template, model, judgeItems(pairs, 'scalar'), opts, pairs.map((_, i) => [2 * i, 2 * i + 1]));
          return pairs.map((_, i) => ({ chosen: votes[2 * i]!, rejected: votes[2 * i + 1]!, truncated: false, tooLong: Number.isNaN(votes[2 * i]! + votes[2 * i + 1]!) }));
        },
      };
    },
  },
  'pick-longer': {
    name: 'pick-longer', needsPool: false,
    definition: 'Bias control: prefer the longer response (characters); equal lengths count as wrong.',
    prepare: async () => ({ scorePairs: async (pairs) => lengthScores(pairs, 'longer').map((s) => ({ ...s, truncated: false, tooLong: false })) }),
  },
  'pick-shorter': {
    name: 'pick-shorter', needsPool: false,
    definition: 'Bias control: prefer the shorter response (characters); equal lengths count as wrong.',
    prepare: async () => ({ scorePairs: async (pairs) => lengthScores(pairs, 'shorter').map((s) => ({ ...s, truncated: false, tooLong: false })) }),
  },
});
