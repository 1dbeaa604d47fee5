/**
 * Fitting an Activation RM (DESIGN §1): the driver. A fit's flow:
 *   1. judge items from the few-shot examples, those that fit --max-length (judge-items.ts);
 *   2. mean activations over T passes (means.ts), resumable from the fit checkpoint (fit-checkpoint.ts);
 *   3. optionally, every head's mean denoised before selection (denoise.ts);
 *   4. head selection (head-selection.ts): REINFORCE (reinforce.ts, where the policy updates) on the patched
 *      model's loss (reinforce-loss.ts), checkpointed every 10 steps;
 *   5. otherwise, the selected heads' means denoised;
 *   6. the criterion: means, σ(θ) and the metadata (metadata.ts).
 * A failed fit removes the checkpoint it wrote; an interrupted one (`shouldStop`) keeps it for `--resume`.
 */
import type { Decoder } from '../model/decoder.js';
import type { Example } from '../data/examples.js';
import { denoiseMeans, parseDenoise } from './denoise.js';
import {
  checkpointKey,
  decodeF32,
  encodeF32,
  FitCheckpoint,
  finishedPasses,
  meansInProgress,
  type Checkpoint,
} from './fit-checkpoint.js';
import { FitError } from './fit-errors.js';
import { fitSettings, type FitOptions, type FitSettings } from './fit-options.js';
import { headList, selectHeads } from './head-selection.js';
import { fitPool, type FitPool } from './judge-items.js';
import { extractMeans, MeansInterrupted, passCutWarning, type PassCuts } from './means.js';
import { examplesSha256, fitDate, fitMeta, zeroShotMeta, type FitDate } from './metadata.js';
import { REINFORCE_DEFAULTS, type ReinforceOptions } from './reinforce.js';
import { ActivationRM, nonFiniteHint } from './rm.js';
import { makeTemplate, resolveAnswerTokens, type AnswerTokens, type JudgeItem, type TemplateSpec } from './template.js';
import { checkFitVocabulary, type UnknownTokenReport } from './unknown-tokens.js';

// The fit's public face: its errors, options and judge items are imported from here.
export { FitError, FitInterrupted } from './fit-errors.js';
export type { FitOptions, HeadStrategy } from './fit-options.js';
export { judgeItemGroups, judgeItems } from './judge-items.js';

/** One fit's inputs, settings and checkpoint, as the phases below share them. */
interface FitRun {
  decoder: Decoder;
  examples: Example[];
  options: FitOptions;
  settings: FitSettings;
  reinforce: ReinforceOptions;
  warn: (message: string) => void;
  template: TemplateSpec;
  pool: FitPool;
  answerTokens: AnswerTokens;
  unknownTokens: UnknownTokenReport;
  examplesSha256: string;
  checkpoint: FitCheckpoint;
  key: string;
  clock: { started: number; date: FitDate };
}

export async function fitActivationRM(
  decoder: Decoder,
  examples: Example[],
  options: FitOptions = {},
): Promise<ActivationRM> {
  const started = performance.now();
  const date = fitDate(); // read first: a malformed SOURCE_DATE_EPOCH fails before any work
  const settings = fitSettings(decoder, options);
  const reinforce: ReinforceOptions = { ...REINFORCE_DEFAULTS, ...options.reinforce };
  const warn = options.warn ?? ((m: string) => process.emitWarning(m));
  const template = makeTemplate(
    settings.template,
    { text: options.templateText, chat: options.chat, templateKwargs: options.templateKwargs },
    decoder.tokenizer,
  );
  const pool = await fitPool(decoder, examples, template, {
    maxLength: settings.maxLength,
    shots: settings.shots,
    warn,
  });
  // Before minutes of work: a judge that would read mostly unknown tokens is refused (or warned about) now.
  const unknownTokens = checkFitVocabulary(decoder.tokenizer, template, pool.unknown, {
    refuse: options.refuseMostlyUnknown ?? false,
    warn,
  });
  const answerTokens = resolveAnswerTokens(decoder.tokenizer, template, pool.items[0]!);
  const examplesHash = examplesSha256(examples);
  const key = checkpointKey({
    settings,
    reinforce,
    template,
    examplesSha256: examplesHash,
    decoder,
    allItems: pool.allItems,
    images: pool.images,
  });
  const checkpoint = FitCheckpoint.open(options.checkpointFile, { resume: options.resume, key, warn });
  const run: FitRun = {
    decoder,
    examples,
    options,
    settings,
    reinforce,
    warn,
    template,
    pool,
    answerTokens,
    unknownTokens,
    examplesSha256: examplesHash,
    checkpoint,
    key,
    clock: { started, date },
  };
  try {
    return await fitFromCheckpoint(run);
  } catch (e) {
    checkpoint.cleanUpAfter(e);
    throw e;
  }
}

/** Steps 2–6 of the flow, continuing from the checkpoint where there is one. */
async function fitFromCheckpoint(run: FitRun): Promise<ActivationRM> {
  const { decoder, settings, options, pool } = run;
  const { numLayers: L, numHeads: H, headDim: d } = decoder.spec;
  const means = await meanActivations(run);
  const limits = { maxLength: settings.maxLength, maxPositions: decoder.spec.maxPositions, shots: settings.shots };
  const cutWarning = means.cuts
    ? passCutWarning(means.cuts, means.meanPasses, limits)
    : means.truncatedPasses > 0 // means resumed from a checkpoint: only the count was kept
      ? `${means.truncatedPasses} of ${means.meanPasses} mean-extraction passes did not fit --max-length ` +
        `${settings.maxLength} (prompts cut from their start, or demonstrations dropped); raise --max-length (the ` +
        `model reads up to ${limits.maxPositions} positions) or lower --shots`
      : null;
  if (cutWarning) run.warn(cutWarning);
  let mu = means.mu; // [L, H, d]
  const denoise = parseDenoise(settings.denoise);
  const denoiseHeads = (heads: [number, number][]) => {
    if (!denoise) return;
    if (!means.passes)
      throw new FitError('denoising needs the per-pass activations (resume a checkpoint made with the same --denoise)');
    mu = denoiseMeans(mu, means.passes, heads, { H, d }, denoise.rank, { centring: denoise.centring });
  };
  // Denoising every head before selection, so that REINFORCE selects on the denoised means.
  if (settings.denoiseBeforeSelection)
    denoiseHeads(Array.from({ length: L * H }, (_, i): [number, number] => [Math.floor(i / H), i % H]));
  const selection = await selectHeads({
    decoder,
    settings,
    reinforce: run.reinforce,
    template: run.template,
    items: pool.items,
    images: pool.images,
    answerIds: run.answerTokens.primary,
    mu,
    resumedState: means.saved.state,
    saveProgress: (state) => run.checkpoint.save({ ...means.saved, state }),
    interrupted: (state) => run.checkpoint.interrupted({ ...means.saved, state }),
    onProgress: options.onProgress,
    shouldStop: options.shouldStop,
  });
  const heads = headList(selection.selected, H);
  if (!settings.denoiseBeforeSelection) denoiseHeads(heads);
  const meta = fitMeta({
    decoder,
    modelId: options.modelId,
    settings,
    reinforce: run.reinforce,
    template: run.template,
    answerTokens: run.answerTokens,
    heads,
    examples: {
      count: run.examples.length,
      items: pool.items.length,
      itemsTooLong: pool.allItems.length - pool.items.length,
      ids: run.examples.map((e) => e.id),
      sha256: run.examplesSha256,
    },
    readout: selection.readout,
    clock: run.clock,
    counts: {
      meanPasses: means.meanPasses,
      truncatedPasses: means.truncatedPasses,
      reinforceSteps: selection.reinforceSteps,
    },
    unknownTokens: run.unknownTokens,
  });
  return new ActivationRM(decoder, { mu, probs: selection.probs, meta });
}

/** The mean activations, with the checkpoint that holds them (`saved`, which REINFORCE's progress extends). */
interface Means {
  mu: Float32Array; // [L, H, d]
  passes: Float32Array[] | null; // T × [L, H, d], kept for denoising
  meanPasses: number;
  truncatedPasses: number;
  /** What --max-length cut (null when the means came whole from a checkpoint, which keeps only the count). */
  cuts: PassCuts | null;
  saved: Checkpoint;
}

/** Step 2: the means from a resumed checkpoint, or extracted (continuing the passes an interrupted run finished). */
async function meanActivations(run: FitRun): Promise<Means> {
  const { decoder, settings, options, checkpoint, key } = run;
  const resumed = checkpoint.resumed;
  if (resumed && resumed.mu) {
    const { meanPasses, truncatedPasses } = resumed;
    const passes = resumed.passes?.map(decodeF32) ?? null;
    return { mu: decodeF32(resumed.mu), passes, meanPasses, truncatedPasses, cuts: null, saved: resumed };
  }
  const { numLayers: L, numHeads: H, headDim: d } = decoder.spec;
  const width = L * H * d;
  let means;
  try {
    means = await extractMeans(decoder, run.template, run.pool.items, {
      images: run.pool.images,
      passes: settings.passes,
      shots: settings.shots,
      seed: settings.seed,
      batchSize: settings.batchSize,
      maxLength: settings.maxLength,
      keepPasses: settings.denoise !== null,
      passesPerDemoSet: settings.passesPerDemoSet,
      groupOf: run.pool.groupOf,
      onProgress: (done, total) => options.onProgress?.('means', done, total, `passes`),
      shouldStop: options.shouldStop,
      donePasses: finishedPasses(resumed, width),
    });
  } catch (e) {
    if (!(e instanceof MeansInterrupted)) throw e;
    throw checkpoint.interrupted(meansInProgress(key, e, width));
  }
  const { mu, passes, truncatedPasses, cuts } = means;
  const meanPasses = means.plan.length;
  const bad = mu.findIndex((x) => !Number.isFinite(x));
  if (bad >= 0)
    throw new FitError(
      nonFiniteHint(`the mean activation of layer ${Math.floor(bad / (H * d))}, head ${Math.floor(bad / d) % H}`),
    );
  const saved: Checkpoint = {
    key,
    mu: encodeF32(mu),
    meanPasses,
    truncatedPasses,
    state: null,
    passes: passes?.map(encodeF32),
  };
  checkpoint.save(saved);
  return { mu, passes, meanPasses, truncatedPasses, cuts, saved };
}

/**
 * The judge without an intervention (no heads): zero-shot P(answer) with the same template and answer
 * tokens an ARM would use. Baselines read it plain, normalised, with demonstrations, or sampled.
 */
export function zeroShotRM(
  decoder: Decoder,
  options: Pick<
    FitOptions,
    'template' | 'templateText' | 'chat' | 'templateKwargs' | 'maxLength' | 'batchSize' | 'modelId'
  > = {},
): ActivationRM {
  const { numLayers: L, numHeads: H, headDim: d } = decoder.spec;
  const kind = options.template ?? 'scalar';
  const template = makeTemplate(
    kind,
    { text: options.templateText, chat: options.chat, templateKwargs: options.templateKwargs },
    decoder.tokenizer,
  );
  const probe: JudgeItem = {
    id: 'probe',
    prompt: 'Question',
    fields: kind === 'scalar' ? { response: 'Answer' } : { response_a: 'One', response_b: 'Two' },
    answer: 0,
  };
  const meta = zeroShotMeta(decoder, {
    modelId: options.modelId,
    template,
    answerTokens: resolveAnswerTokens(decoder.tokenizer, template, probe),
    maxLength: options.maxLength ?? decoder.spec.maxPositions,
    batchSize: options.batchSize ?? 8,
  });
  return new ActivationRM(decoder, { mu: new Float32Array(L * H * d), probs: new Float32Array(L * H), meta });
}
