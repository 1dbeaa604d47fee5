/**
 * Every method the harness compares, behind one interface: prepare on a seed's few-shot pool (fit what needs
 * fitting), then score test pairs. All share the one loaded Decoder.
 */
import type { Decoder } from '../model/decoder.js';
import type { PairExample } from '../data/examples.js';
import { FitError, fitActivationRM, judgeItems, zeroShotRM, type FitOptions } from '../arm/fit.js';
import type { ActivationRM, PairScore, ScoreOptions } from '../arm/rm.js';
import { scoresUnknown } from '../arm/unknown-tokens.js';
import type { JudgeItem } from '../arm/template.js';
import { fitSav, scoreSav } from '../baselines/sav.js';
import { lengthScores } from '../baselines/heuristics.js';
import { Rng } from '../util/rng.js';
import { createHash } from 'node:crypto';
import type { PairRecord } from './records.js';

export interface MethodOptions {
  fit: Omit<FitOptions, 'seed' | 'heads' | 'mode' | 'onProgress' | 'shouldStop' | 'checkpointFile' | 'resume'>;
  batchSize: number;
  maxLength: number;
  iclShots: number; // demonstrations in the ICL judge prompt (4)
  sampleN: number; // sampled verdicts (8)
  sampleTemperature: number; // (1)
  savTopHeads: number; // (20)
  onFitProgress?: FitOptions['onProgress'];
}

export interface PreparedMethod {
  scorePairs(pairs: PairExample[]): Promise<PairRecord[]>;
  /** Heads the method patches or reads, for the heat map. */
  heads?: [number, number][];
  /**
   * sha256 of what the method fitted on the pool (means, head probabilities and heads; SAVs' class means): shards of
   * one run that prepared it on the same pool must agree to the bit. Absent for methods that fit nothing.
   */
  fingerprint?: string;
}

interface MethodContext {
  decoder: Decoder;
  pool: PairExample[];
  seed: number;
  options: MethodOptions;
  armHeadCount?: number;
}

export interface Method {
  name: string;
  definition: string;
  /** Set for a control rather than a judge: what it controls for, shown beside its row. */
  control?: string;
  needsPool: boolean;
  /** false for the length rules: they read no model, so a run of them alone loads none (default true). */
  needsModel?: boolean;
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

const fromPairScores = (scores: PairScore[]): PairRecord[] =>
  scores.map((s) => ({
    chosen: s.chosen,
    rejected: s.rejected,
    truncated: s.truncated,
    tooLong: s.tooLong,
    ...unknownOf(s),
    ...(s.swapConsistent === undefined ? {} : { swapConsistent: s.swapConsistent }),
  }));

const unknownOf = (s: PairScore): Pick<PairRecord, 'textTokens' | 'unknownTokens'> => {
  const { text, unknown } = scoresUnknown([s]);
  return { textTokens: text, unknownTokens: unknown };
};

/** The sha256 over float arrays' bytes and the heads (PreparedMethod.fingerprint). */
function fittedFingerprint(arrays: Float32Array[], heads: [number, number][]): string {
  const hash = createHash('sha256');
  for (const a of arrays) hash.update(new Uint8Array(a.buffer, a.byteOffset, a.byteLength));
  return hash.update(JSON.stringify(heads)).digest('hex');
}

function rmMethod(rm: ActivationRM, ctx: MethodContext, extra: ScoreOptions = {}): PreparedMethod {
  const { mu, probs, meta } = rm.criterion;
  return {
    heads: meta.heads,
    // A zero-shot criterion fitted nothing: its fingerprint would only repeat the model's.
    ...(meta.heads.length ? { fingerprint: fittedFingerprint([mu, probs], meta.heads) } : {}),
    async scorePairs(pairs) {
      const scores = (await rm.scoreExamples(pairs, {
        batchSize: ctx.options.batchSize,
        maxLength: ctx.options.maxLength,
        ...extra,
      })) as PairScore[];
      const records = fromPairScores(scores);
      if (extra.demos)
        scores.forEach((s, i) => {
          records[i]!.verdictCorrect = s.detail[0]!.verdict === 0 && s.detail[1]!.verdict === 1;
        });
      // Sampled vote shares tie often (N draws take few values): P("Yes") from the same prompt decides those.
      if (extra.readout === 'sampled')
        scores.forEach((s, i) => {
          records[i]!.tieBreak = { chosen: s.detail[0]!.reward, rejected: s.detail[1]!.reward };
        });
      // A pairwise judge's two orders, kept apart for benchmarks that score each order's verdict (JudgeBench).
      if (rm.criterion.meta.template.kind === 'ranked')
        scores.forEach((s, i) => {
          records[i]!.orders = [s.detail[0]!.normalized, 1 - s.detail[1]!.normalized];
        });
      return records;
    },
  };
}

const fitWith = (ctx: MethodContext, heads: FitOptions['heads'], mode: FitOptions['mode'] = 'replace') =>
  fitActivationRM(ctx.decoder, ctx.pool, {
    ...ctx.options.fit,
    batchSize: ctx.options.batchSize,
    maxLength: ctx.options.maxLength,
    seed: ctx.seed,
    heads,
    mode,
    onProgress: ctx.options.onFitProgress,
  });

/**
 * The ICL judge's fixed demonstrations for a seed: `iclShots` judge items from the pool, balanced between the
 * two answers (an odd one out goes to a class drawn at random), in a seeded random order. Unbalanced demos
 * would tilt P("Yes") by the draw's label mix rather than by the item.
 */
export function iclDemos(pool: PairExample[], kind: 'scalar' | 'ranked', shots: number, seed: number): JudgeItem[] {
  const items = judgeItems(pool, kind);
  const rng = new Rng(seed + 17);
  const byAnswer = [items.filter((it) => it.answer === 0), items.filter((it) => it.answer === 1)] as const;
  const extraTo = rng.int(2);
  const want = [0, 1].map((a) => Math.floor(shots / 2) + (shots % 2 === 1 && a === extraTo ? 1 : 0));
  // A class with too few items gives what it has; the other fills up to the total where it can.
  const take = [Math.min(want[0]!, byAnswer[0].length), Math.min(want[1]!, byAnswer[1].length)];
  for (const a of [0, 1]) take[a] = Math.min(byAnswer[a]!.length, take[a]! + Math.max(0, shots - take[0]! - take[1]!));
  const chosen = [0, 1].flatMap((a) => rng.sample(byAnswer[a]!.length, take[a]!).map((i) => byAnswer[a]![i]!));
  return rng.shuffle(chosen);
}

/** The context with the fit's means denoised as DESIGN step 5 has it (pca:4:centred); `before`: on every head. */
const denoised = (ctx: MethodContext, before?: boolean): MethodContext => {
  const fit = { ...ctx.options.fit, denoise: 'pca:4:centred' };
  return { ...ctx, options: { ...ctx.options, fit: before ? { ...fit, denoiseBeforeSelection: true } : fit } };
};

const demosFor = (ctx: MethodContext) =>
  iclDemos(ctx.pool, ctx.options.fit.template ?? 'scalar', ctx.options.iclShots, ctx.seed);

const zeroShot = (ctx: MethodContext) =>
  zeroShotRM(ctx.decoder, { ...ctx.options.fit, batchSize: ctx.options.batchSize, maxLength: ctx.options.maxLength });

export const METHODS: Readonly<Record<string, Method>> = Object.freeze({
  arm: {
    name: 'arm',
    needsPool: true,
    definition:
      'Activation RM: REINFORCE-selected heads replaced by their few-shot mean activations; score = P("Yes").',
    prepare: async (ctx) => rmMethod(await fitWith(ctx, 'selected'), ctx),
  },
  'mean-add': {
    name: 'mean-add',
    needsPool: true,
    definition: 'Ablation: the same pipeline, but the means are added to the heads (z + μ) instead of replacing them.',
    prepare: async (ctx) => rmMethod(await fitWith(ctx, 'selected', 'add'), ctx),
  },
  'random-heads': {
    name: 'random-heads',
    needsPool: true,
    definition:
      'Ablation: as many heads as ARM selected (20, or every head of a smaller model, without an ARM run), ' +
      'chosen at random, replaced by their means.',
    // Capped: asking a model for more heads than it has is a FitError that would read as an unusable pool.
    prepare: async (ctx) =>
      rmMethod(
        await fitWith(
          ctx,
          `random:${ctx.armHeadCount ?? Math.min(20, ctx.decoder.spec.numLayers * ctx.decoder.spec.numHeads)}`,
        ),
        ctx,
      ),
  },
  'all-heads': {
    name: 'all-heads',
    needsPool: true,
    control: 'constant score',
    // Replacing every head at the last position leaves that position a function of its own token only (the
    // same for every item), so the score is one constant: every pair ties. Kept as a check that it does.
    definition:
      'Constant control: every head at the last position replaced by its mean, ' +
      'so the score no longer depends on the input and every pair ties (ties count wrong); a check, not a judge.',
    prepare: async (ctx) => rmMethod(await fitWith(ctx, 'all'), ctx),
  },
  'zero-shot': {
    name: 'zero-shot',
    needsPool: false,
    definition: 'The judge question asked zero-shot; score = full-softmax P("Yes").',
    prepare: async (ctx) => rmMethod(zeroShot(ctx), ctx),
  },
  'token-prob': {
    name: 'token-prob',
    needsPool: false,
    definition: 'Zero-shot, score = P(Yes variants) / (P(Yes variants) + P(No variants)).',
    prepare: async (ctx) => rmMethod(zeroShot(ctx), ctx, { readout: 'normalized' }),
  },
  'icl-judge': {
    name: 'icl-judge',
    needsPool: true,
    definition:
      'In-context judge: k pool items (half Yes, half No) with their answers before the question; score = P("Yes"); ' +
      'greedy verdicts reported too. It sees k items; arm learns from every pool item.',
    prepare: async (ctx) => rmMethod(zeroShot(ctx), ctx, { demos: demosFor(ctx) }),
  },
  'sample-vote': {
    name: 'sample-vote',
    needsPool: true,
    definition:
      'N verdicts sampled at temperature T from the ICL judge prompt; score = share of "Yes" among Yes/No verdicts; ' +
      'equal shares are decided by P("Yes").',
    prepare: async (ctx) =>
      rmMethod(zeroShot(ctx), ctx, {
        demos: demosFor(ctx),
        readout: 'sampled',
        sample: { n: ctx.options.sampleN, temperature: ctx.options.sampleTemperature, seed: ctx.seed },
      }),
  },
  'sav-vote': {
    name: 'sav-vote',
    needsPool: true,
    definition:
      'SAVs: per-head class means of pool activations; the top-20 heads by pool accuracy vote by nearest mean ' +
      '(cosine); score = share of "Yes" votes; equal shares are decided by the summed cosine margin.',
    async prepare(ctx) {
      // SAVs classify single responses: always the scalar template, whatever the run's --template.
      const scalarFit =
        ctx.options.fit.template === 'ranked'
          ? { ...ctx.options.fit, template: 'scalar' as const, templateText: undefined }
          : ctx.options.fit;
      const rm = zeroShotRM(ctx.decoder, {
        ...scalarFit,
        batchSize: ctx.options.batchSize,
        maxLength: ctx.options.maxLength,
      });
      const template = rm.criterion.meta.template;
      const opts = { batchSize: ctx.options.batchSize, maxLength: ctx.options.maxLength };
      const model = await fitSav(ctx.decoder, template, judgeItems(ctx.pool, 'scalar'), {
        ...opts,
        topHeads: ctx.options.savTopHeads,
      });
      return {
        heads: model.heads,
        fingerprint: fittedFingerprint([...model.classMeans, model.headAccuracy], model.heads),
        async scorePairs(pairs) {
          const { votes, margins } = await scoreSav(
            ctx.decoder,
            template,
            model,
            judgeItems(pairs, 'scalar'),
            opts,
            pairs.map((_, i) => [2 * i, 2 * i + 1]),
          );
          return pairs.map((_, i) => ({
            chosen: votes[2 * i]!,
            rejected: votes[2 * i + 1]!,
            tieBreak: { chosen: margins[2 * i]!, rejected: margins[2 * i + 1]! },
            truncated: false,
            tooLong: Number.isNaN(votes[2 * i]! + votes[2 * i + 1]!),
          }));
        },
      };
    },
  },
  'pick-longer': {
    name: 'pick-longer',
    needsPool: false,
    needsModel: false,
    control: 'length bias',
    definition: 'Bias control: prefer the longer response (characters); equal lengths count as wrong.',
    prepare: async () => ({
      scorePairs: async (pairs) =>
        lengthScores(pairs, 'longer').map((s) => ({ ...s, truncated: false, tooLong: false })),
    }),
  },
  'pick-shorter': {
    name: 'pick-shorter',
    needsPool: false,
    needsModel: false,
    control: 'length bias',
    definition: 'Bias control: prefer the shorter response (characters); equal lengths count as wrong.',
    prepare: async () => ({
      scorePairs: async (pairs) =>
        lengthScores(pairs, 'shorter').map((s) => ({ ...s, truncated: false, tooLong: false })),
    }),
  },
  'arm-denoised': {
    name: 'arm-denoised',
    needsPool: true,
    definition:
      'Ablation: arm with denoised means (DESIGN step 5, pca:4:centred: ' +
      'each pass rebuilt from the top 4 axes of the centred per-head PCA, passes far off them weighted down), ' +
      'on the selected heads, or on every head before selection with --denoise-before-selection.',
    prepare: async (ctx) => rmMethod(await fitWith(denoised(ctx), 'selected'), ctx),
  },
  'arm-denoised-before': {
    name: 'arm-denoised-before',
    needsPool: true,
    definition:
      'Ablation: arm-denoised with every head denoised before selection (--denoise-before-selection), ' +
      'so REINFORCE selects heads on the denoised means; in one run beside arm-denoised.',
    prepare: async (ctx) => rmMethod(await fitWith(denoised(ctx, true), 'selected'), ctx),
  },
});
