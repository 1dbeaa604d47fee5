/**
 * Fitting an Activation RM: judge items from the few-shot examples → mean activations → head selection →
 * criterion. REINFORCE runs on the key cost insight (DESIGN §1): each query's prompt without its last token
 * is prefilled once (LRU-cached), and every step is one shared-prefix forward of the 32 masks as 32 rows.
 */
import fs from 'node:fs';
import { createHash } from 'node:crypto';
import type { Decoder, KvCache } from '../model/decoder.js';
import { describeWeightFormat } from '../model/quant/weight-format.js';
import { imagesOf, promptIdentity, toScalarItems, type Example } from '../data/examples.js';
import { imageFilesOf, judgeImagesFor, toSequence, visionConfigHash, type JudgeImages } from './images.js';
import { Rng } from '../util/rng.js';
import { FORMAT_VERSION, promptFilesOf, type Criterion, type CriterionMeta } from './criterion.js';
import { DEFAULT_PASSES_PER_DEMO_SET, extractMeans, MeansInterrupted } from './means.js';
import { canonicalDenoise, denoiseMeans, parseDenoise } from './denoise.js';
import { FitError, FitInterrupted } from './fit-errors.js';
export { FitError, FitInterrupted } from './fit-errors.js';
import {
  initialState,
  probabilities,
  readoutMask,
  REINFORCE_DEFAULTS,
  runReinforce,
  type MaskLoss,
  type ReinforceOptions,
  type ReinforceState,
} from './reinforce.js';
import { ActivationRM, nonFiniteHint } from './rm.js';
import {
  makeTemplate,
  render,
  resolveAnswerTokens,
  TooLongError,
  type JudgeItem,
  type TemplateKind,
} from './template.js';

export type HeadStrategy = 'selected' | 'all' | `random:${number}`;

export interface FitOptions {
  template?: TemplateKind;
  /** Custom template text with {prompt} {response} (or {response_a} {response_b}) placeholders. */
  templateText?: string;
  /** Use the chat template: 'auto' (default) when the tokenizer has one. */
  chat?: boolean | 'auto';
  /**
   * Extra variables for the chat template (transformers' `apply_chat_template(**kwargs)`), over makeTemplate's
   * default of `enable_thinking: false` where the template reads it.
   */
  templateKwargs?: Record<string, unknown>;
  passes?: number; // 100
  shots?: number; // 4
  /**
   * Mean-extraction passes sharing one demo draw (default DEFAULT_PASSES_PER_DEMO_SET = 5; 1 = MTV's independent
   * draws); see MeanOptions.
   */
  passesPerDemoSet?: number;
  seed?: number; // 0
  batchSize?: number; // 8
  maxLength?: number; // the model's positions
  mode?: 'replace' | 'add';
  heads?: HeadStrategy; // selected
  /** `pca:r[:centred|:uncentred]` (centred when not said; see denoiseMeans), or null / 'none'. */
  denoise?: string | null;
  /** Denoise the means of every head before head selection, so REINFORCE selects on denoised means. */
  denoiseBeforeSelection?: boolean;
  reinforce?: Partial<ReinforceOptions>;
  /** Bytes of prefix KV caches kept for REINFORCE (least recently used evicted). */
  kvCacheBytes?: number;
  /** Where fit progress is saved; with `resume`, a matching checkpoint is continued. */
  checkpointFile?: string;
  resume?: boolean;
  modelId?: string;
  onProgress?: (phase: 'means' | 'reinforce' | 'readout', done: number, total: number, info: string) => void;
  warn?: (message: string) => void;
  /**
   * Polled after every mean-extraction batch and every REINFORCE step; when it returns true the fit saves its
   * checkpoint (the passes done so far, or the REINFORCE state) and throws FitInterrupted.
   */
  shouldStop?: () => boolean;
}

/** Judge items for a template kind: scalar → one per response; ranked → each pair in both orders. */
export function judgeItems(examples: Example[], kind: TemplateKind): JudgeItem[] {
  if (kind === 'scalar') {
    return toScalarItems(examples).map((s) => ({
      id: s.id,
      prompt: s.prompt,
      fields: { response: s.response },
      answer: s.label ? 0 : 1,
      ...imagesOf(s),
    }));
  }
  return examples.flatMap((e): JudgeItem[] => {
    if (e.kind !== 'pair')
      throw new FitError(
        `example ${e.id} (line ${e.line}): the ranked template needs pairs {prompt, chosen, rejected}`,
      );
    return [
      {
        id: `${e.id}:ab`,
        prompt: e.prompt,
        fields: { response_a: e.chosen, response_b: e.rejected },
        answer: 0,
        ...imagesOf(e),
      },
      {
        id: `${e.id}:ba`,
        prompt: e.prompt,
        fields: { response_a: e.rejected, response_b: e.chosen },
        answer: 1,
        ...imagesOf(e),
      },
    ];
  });
}

/**
 * Each judge item's group, in judgeItems' order: items from one example (a pair's two responses, or a pair in
 * both orders) share a group, and so do all items of examples with the same prompt text (two pairs on one
 * prompt, or a duplicate). Mean extraction never shows a query an item of its own group as a demonstration.
 */
export function judgeItemGroups(examples: Example[], kind: TemplateKind): number[] {
  const byPrompt = new Map<string, number>();
  return examples.flatMap((e) => {
    const prompt = promptIdentity(e);
    if (!byPrompt.has(prompt)) byPrompt.set(prompt, byPrompt.size);
    const group = byPrompt.get(prompt)!;
    const count = kind === 'ranked' || e.kind === 'pair' ? 2 : 1;
    return Array.from({ length: count }, () => group);
  });
}

/**
 * What `--resume` continues from. While mean extraction runs, `meansDone` holds the passes finished so far
 * (their activations, [n, L·H·d] float32 as base64) and `mu` is empty; once it is done, `mu` holds the means.
 */
interface Checkpoint {
  key: string;
  mu: string;
  meanPasses: number;
  truncatedPasses: number;
  state: ReinforceState | null;
  passes?: string[];
  meansDone?: { passes: number[]; activations: string };
}
/**
 * Part of the checkpoint key: a checkpoint laid out by another build is not resumed. 3: pass plans never show
 * a query its own group (a checkpoint's finished passes follow the older plan).
 */
const CHECKPOINT_LAYOUT = 3;

/**
 * The fit's date: `SOURCE_DATE_EPOCH` (seconds since 1970, the reproducible-builds convention) when set, so that
 * two fits with the same inputs write byte-identical files; otherwise now.
 */
export function fitDate(env: NodeJS.ProcessEnv = process.env): { createdAt: string; reproducible: boolean } {
  const raw = env.SOURCE_DATE_EPOCH;
  if (raw === undefined || raw === '') return { createdAt: new Date().toISOString(), reproducible: false };
  const seconds = Number(raw);
  if (!/^\d+$/.test(raw.trim()) || !Number.isSafeInteger(seconds) || seconds > 8.64e12)
    throw new FitError(`SOURCE_DATE_EPOCH=${JSON.stringify(raw)}: expected whole seconds since 1970-01-01`);
  return { createdAt: new Date(seconds * 1000).toISOString(), reproducible: true };
}

export async function fitActivationRM(
  decoder: Decoder,
  examples: Example[],
  options: FitOptions = {},
): Promise<ActivationRM> {
  const started = performance.now();
  const date = fitDate(); // read first: a malformed SOURCE_DATE_EPOCH fails before any work
  const { numLayers: L, numHeads: H, headDim: d } = decoder.spec;
  const o = {
    template: options.template ?? 'scalar',
    passes: options.passes ?? 100,
    shots: options.shots ?? 4,
    seed: options.seed ?? 0,
    batchSize: options.batchSize ?? 8,
    maxLength: options.maxLength ?? decoder.spec.maxPositions,
    mode: options.mode ?? 'replace',
    heads: options.heads ?? 'selected',
    denoise: canonicalDenoise(options.denoise ?? null),
    kvCacheBytes: options.kvCacheBytes ?? 512 * 2 ** 20,
    passesPerDemoSet: options.passesPerDemoSet ?? DEFAULT_PASSES_PER_DEMO_SET,
    denoiseBeforeSelection: options.denoiseBeforeSelection ?? false,
  } as const;
  const rOpts: ReinforceOptions = { ...REINFORCE_DEFAULTS, ...options.reinforce };
  const warn = options.warn ?? ((m: string) => process.emitWarning(m));

  const template = makeTemplate(
    o.template,
    { text: options.templateText, chat: options.chat, templateKwargs: options.templateKwargs },
    decoder.tokenizer,
  );
  const allItems = judgeItems(examples, o.template);
  const allGroups = judgeItemGroups(examples, o.template);
  // Image rows: every image's size and hash read now (length budgets); the vision tower runs later, once per image.
  const images = await judgeImagesFor(decoder, allItems);
  const fits = allItems.map((it) => {
    try {
      render(decoder.tokenizer, template, [], it, o.maxLength, images);
      return true;
    } catch (e) {
      if (!(e instanceof TooLongError)) throw e;
      return false;
    }
  });
  const items = allItems.filter((_, i) => fits[i]);
  const groupOf = allGroups.filter((_, i) => fits[i]);
  if (items.length < allItems.length)
    warn(
      `${allItems.length - items.length} of ${allItems.length} judge items do not fit --max-length ${o.maxLength} even without their prompt; they are left out of the fit`,
    );
  const answers = new Set(items.map((i) => i.answer));
  if (answers.size < 2)
    throw new FitError(
      `the few-shot examples hold a single label class (${items.length} item${items.length === 1 ? '' : 's'}, all "${items[0]?.answer === 0 ? 'yes' : 'no'}"); give both yes and no examples`,
    );
  if (o.shots > 0) {
    const groupSize = new Map<number, number>();
    for (const g of groupOf) groupSize.set(g, (groupSize.get(g) ?? 0) + 1);
    const fewest = items.length - Math.max(...groupSize.values());
    if (fewest < o.shots)
      warn(
        `only ${items.length} judge items in ${groupSize.size} prompt group${groupSize.size === 1 ? '' : 's'}: a query is never shown an item of its own group, so some passes use ${fewest} demonstrations instead of ${o.shots}`,
      );
  }
  const denoise = parseDenoise(o.denoise);

  const answerTokens = resolveAnswerTokens(decoder.tokenizer, template, items[0]!);
  const exampleIds = examples.map((e) => e.id);
  const examplesHash = createHash('sha256')
    .update(JSON.stringify(examples.map((e) => [e.id, e])))
    .digest('hex');
  // Means taken at another dtype are other numbers: the weight format joins the key (left out at fp32, so
  // checkpoints written before int8/int4 existed still resume).
  const format = decoder.info.weightFormat;
  const quantized = format.dtype !== 'fp32' || format.prequant ? { weightFormat: format } : {};
  // Image rows: the images' content joins the key (the examples name only their paths).
  const imageHashes = images ? { images: [...imageFilesOf(allItems)].map((f) => images.info(f).sha256) } : {};
  // The tokenizer and processor files decide the prompts' ids and pixels: a resume after editing them starts over.
  const promptFiles = decoder.info.promptFiles;
  const key = createHash('sha256')
    .update(
      JSON.stringify({
        o,
        rOpts,
        template,
        examplesHash,
        model: decoder.info.weightsFingerprint,
        promptFiles,
        ...quantized,
        ...imageHashes,
        layout: CHECKPOINT_LAYOUT,
      }),
    )
    .digest('hex');

  // ---- resume ----
  // A fit that fails with an error removes the checkpoint it wrote, unless it resumed from that file: a
  // checkpoint is for continuing an interrupted fit, and one from a failed run would only fail again.
  const checkpointFile = options.checkpointFile;
  let resumed: Checkpoint | null = null;
  if (options.resume && checkpointFile && fs.existsSync(checkpointFile)) {
    try {
      resumed = JSON.parse(fs.readFileSync(checkpointFile, 'utf8')) as Checkpoint;
    } catch (e) {
      throw new FitError(
        `${checkpointFile}: not a readable fit checkpoint (${(e as Error).message}); remove it or drop --resume`,
      );
    }
    if (resumed.key !== key)
      throw new FitError(
        `${checkpointFile}: this checkpoint was made with other examples, options, model or build; remove it or drop --resume`,
      );
  }
  let wroteCheckpoint = false;
  const tmpCheckpoint = checkpointFile ? `${checkpointFile}.tmp-${process.pid}` : '';
  // A checkpoint that cannot be written (disk full, folder gone) costs the ability to resume, not the fit.
  const saveCheckpoint = (c: Checkpoint): boolean => {
    if (!checkpointFile) return false;
    try {
      fs.writeFileSync(tmpCheckpoint, JSON.stringify(c));
      fs.renameSync(tmpCheckpoint, checkpointFile);
    } catch (e) {
      fs.rmSync(tmpCheckpoint, { force: true });
      warn(
        `${checkpointFile}: could not write the fit checkpoint (${(e as NodeJS.ErrnoException).code ?? (e as Error).message}); the fit goes on, but cannot be resumed from this point`,
      );
      return false;
    }
    wroteCheckpoint = true;
    return true;
  };
  const interrupted = (c: Checkpoint) => {
    const saved = saveCheckpoint(c);
    return new FitInterrupted(
      saved
        ? `interrupted; progress saved to ${checkpointFile} (continue with --resume)`
        : `interrupted${checkpointFile ? `; the progress could not be saved to ${checkpointFile}` : ''}`,
    );
  };
  try {
    return await fitFromCheckpoint();
  } catch (e) {
    if (checkpointFile && !(e instanceof FitInterrupted)) {
      fs.rmSync(tmpCheckpoint, { force: true });
      if (wroteCheckpoint && !resumed) fs.rmSync(checkpointFile, { force: true });
    }
    throw e;
  }

  async function fitFromCheckpoint(): Promise<ActivationRM> {
    // ---- 1. mean activations ----
    let mu: Float32Array,
      passes: Float32Array[] | null = null,
      meanPasses: number,
      truncatedPasses: number;
    let ckpt: Checkpoint;
    if (resumed && resumed.mu) {
      ckpt = resumed;
      mu = decodeF32(ckpt.mu);
      passes = ckpt.passes?.map(decodeF32) ?? null;
      ({ meanPasses, truncatedPasses } = ckpt);
    } else {
      const width = L * H * d;
      const donePasses = new Map<number, Float32Array>();
      if (resumed?.meansDone) {
        const acts = decodeF32(resumed.meansDone.activations);
        resumed.meansDone.passes.forEach((p, j) => donePasses.set(p, acts.slice(j * width, (j + 1) * width)));
      }
      let means;
      try {
        means = await extractMeans(decoder, template, items, {
          images,
          passes: o.passes,
          shots: o.shots,
          seed: o.seed,
          batchSize: o.batchSize,
          maxLength: o.maxLength,
          keepPasses: denoise !== null,
          passesPerDemoSet: o.passesPerDemoSet,
          groupOf,
          onProgress: (done, total) => options.onProgress?.('means', done, total, `passes`),
          shouldStop: options.shouldStop,
          donePasses,
        });
      } catch (e) {
        if (!(e instanceof MeansInterrupted)) throw e;
        const indices = [...e.done.keys()].sort((a, b) => a - b);
        const acts = new Float32Array(indices.length * width);
        indices.forEach((p, j) => acts.set(e.done.get(p)!, j * width));
        throw interrupted({
          key,
          mu: '',
          meanPasses: e.total,
          truncatedPasses: 0,
          state: null,
          meansDone: { passes: indices, activations: encodeF32(acts) },
        });
      }
      ({ mu, passes, truncatedPasses } = means);
      meanPasses = means.plan.length;
      const bad = mu.findIndex((x) => !Number.isFinite(x));
      if (bad >= 0)
        throw new FitError(
          nonFiniteHint(`the mean activation of layer ${Math.floor(bad / (H * d))}, head ${Math.floor(bad / d) % H}`),
        );
      ckpt = { key, mu: encodeF32(mu), meanPasses, truncatedPasses, state: null, passes: passes?.map(encodeF32) };
      saveCheckpoint(ckpt);
    }
    if (truncatedPasses > 0)
      warn(
        `${truncatedPasses} of ${meanPasses} mean-extraction passes were cut to --max-length ${o.maxLength} (prompts truncated from their start)`,
      );
    const denoiseHeads = (heads: [number, number][]) => {
      if (!denoise) return;
      if (!passes)
        throw new FitError(
          'denoising needs the per-pass activations (resume a checkpoint made with the same --denoise)',
        );
      mu = denoiseMeans(mu, passes, heads, { H, d }, denoise.rank, { centring: denoise.centring });
    };
    // ---- optional denoising of every head, so that selection sees the denoised means ----
    if (o.denoiseBeforeSelection)
      denoiseHeads(Array.from({ length: L * H }, (_, i): [number, number] => [Math.floor(i / H), i % H]));

    // ---- 2. head selection ----
    const n = L * H;
    let selected: Uint8Array;
    let probs: Float32Array;
    let readout: CriterionMeta['readout'] = null;
    let steps = 0;
    if (o.heads === 'selected') {
      const loss = reinforceLoss(
        decoder,
        items,
        template,
        answerTokens.primary,
        mu,
        o.mode,
        o.maxLength,
        o.kvCacheBytes,
        images,
      );
      const state = ckpt.state ?? initialState(n, rOpts, o.seed);
      await runReinforce(n, items.length, loss, rOpts, state, {
        onStep: (s) => {
          const h = s.history[s.history.length - 1]!;
          options.onProgress?.(
            'reinforce',
            s.step,
            rOpts.steps,
            `loss ${h.meanLoss.toFixed(3)} | E[heads] ${h.expectedHeads.toFixed(1)}`,
          );
          if (s.step % 10 === 0) saveCheckpoint({ ...ckpt!, state: s });
        },
        shouldStop: () => options.shouldStop?.() ?? false,
      });
      if (options.shouldStop?.()) throw interrupted({ ...ckpt, state });
      steps = state.step;
      options.onProgress?.('readout', 0, 1, `${rOpts.readoutMasks} masks`);
      const r = await readoutMask(state.theta, items.length, loss, rOpts, o.seed);
      if (!Number.isFinite(r.meanLoss) || !r.candidates.every(Number.isFinite))
        throw new FitError(nonFiniteHint('the read-out loss'));
      options.onProgress?.('readout', 1, 1, `best mean loss ${r.meanLoss.toFixed(3)}`);
      selected = r.mask;
      readout = { meanLoss: r.meanLoss, candidates: r.candidates };
      probs = Float32Array.from(probabilities(state.theta, rOpts.clip));
    } else if (o.heads === 'all') {
      selected = new Uint8Array(n).fill(1);
      probs = new Float32Array(n).fill(1);
    } else {
      const count = Number(o.heads.slice('random:'.length));
      if (!Number.isInteger(count) || count < 0 || count > n)
        throw new FitError(`--heads ${o.heads}: N must be an integer in 0..${n}`);
      selected = new Uint8Array(n);
      for (const i of new Rng(o.seed).sample(n, count)) selected[i] = 1;
      probs = Float32Array.from(selected);
    }
    const heads: [number, number][] = [];
    selected.forEach((on, i) => {
      if (on) heads.push([Math.floor(i / H), i % H]);
    });

    // ---- 3. optional denoising of the selected heads ----
    if (!o.denoiseBeforeSelection) denoiseHeads(heads);

    const criterion: Criterion = {
      mu,
      probs,
      meta: {
        formatVersion: FORMAT_VERSION,
        model: {
          id: options.modelId ?? decoder.id,
          family: decoder.spec.family,
          configHash: decoder.info.configHash,
          weightsFingerprint: decoder.info.weightsFingerprint,
          numLayers: L,
          numHeads: H,
          headDim: d,
          dtype: decoder.info.weightFormat.dtype,
          weightFormat: describeWeightFormat(decoder.info.weightFormat),
          ...visionHashOf(decoder),
          ...promptFilesOf(decoder),
        },
        template,
        answerTokens,
        heads,
        mode: o.mode,
        headStrategy: o.heads,
        denoise: o.denoise,
        seed: o.seed,
        hyper: {
          passes: o.passes,
          shots: o.shots,
          passesPerDemoSet: o.passesPerDemoSet,
          maxLength: o.maxLength,
          batchSize: o.batchSize,
          reinforce: o.heads === 'selected' ? rOpts : null,
          ...(denoise ? { denoiseBeforeSelection: o.denoiseBeforeSelection } : {}),
        },
        examples: {
          count: examples.length,
          items: items.length,
          itemsTooLong: allItems.length - items.length,
          ids: exampleIds,
          sha256: examplesHash,
        },
        readout,
        // Wall time only when the date is real: SOURCE_DATE_EPOCH asks for byte-identical files.
        fit: {
          seconds: date.reproducible ? 0 : (performance.now() - started) / 1000,
          createdAt: date.reproducible ? date.createdAt : new Date().toISOString(),
          meanPasses,
          truncatedPasses,
          reinforceSteps: steps,
        },
        muLayout: 'selected',
      },
    };
    return new ActivationRM(decoder, criterion);
  }
}

/** REINFORCE's per-mask loss: −log P(correct answer token) with the mask's heads patched, via shared prefixes. */
export function reinforceLoss(
  decoder: Decoder,
  items: JudgeItem[],
  template: ReturnType<typeof makeTemplate>,
  answerIds: [number, number],
  mu: Float32Array,
  mode: 'replace' | 'add',
  maxLength: number,
  cacheBytes: number,
  images: JudgeImages | null = null,
): MaskLoss {
  const { numLayers: L, numHeads: H, numKvHeads: KV, headDim: d, vocabSize: V } = decoder.spec;
  const cache = new Map<number, { kv: KvCache; last: number }>(); // insertion order = recency
  let cachedBytes = 0;
  const bytesOf = (kv: KvCache) => kv.length * KV * d * 4 * 2 * L;
  const prefixOf = async (item: number) => {
    const hit = cache.get(item);
    if (hit) {
      cache.delete(item);
      cache.set(item, hit);
      return hit;
    }
    // An image lives in the prefix: its rows are placed once here, and every step after it is text only.
    const seq = await toSequence(images, render(decoder.tokenizer, template, [], items[item]!, maxLength, images));
    const ids = Array.isArray(seq) ? seq : seq.ids;
    const prefixImages = Array.isArray(seq) ? [] : seq.images;
    if (prefixImages.some((img) => img.start + img.embeds.length / decoder.spec.hiddenSize >= ids.length))
      throw new FitError(`item ${items[item]!.id}: its prompt ends inside an image`);
    const entry = { kv: await decoder.prefill(ids.slice(0, -1), { images: prefixImages }), last: ids[ids.length - 1]! };
    cache.set(item, entry);
    cachedBytes += bytesOf(entry.kv);
    for (const [k, v] of cache) {
      if (cachedBytes <= cacheBytes || k === item) break;
      cache.delete(k);
      cachedBytes -= bytesOf(v.kv);
    }
    return entry;
  };
  return async (item, masks) => {
    const { kv, last } = await prefixOf(item);
    const mask = new Float32Array(masks.length * L * H);
    masks.forEach((m, s) => mask.set(m, s * L * H));
    const { logits, logSumExp } = await decoder.stepShared(kv, last, { mask, values: mu, mode });
    const target = answerIds[items[item]!.answer];
    const losses = masks.map((_, s) => logSumExp[s]! - logits[s * V + target]!); // −log softmax(logits)[target]
    // A NaN loss would turn θ into NaN and the fit into an empty head set without a word: stop here instead.
    const bad = losses.findIndex((l) => !Number.isFinite(l));
    if (bad >= 0)
      throw new FitError(
        nonFiniteHint(
          `the REINFORCE loss of item ${items[item]!.id} (mask ${bad}, ${masks[bad]!.reduce((a, b) => a + b, 0)} heads patched)`,
        ),
      );
    return losses;
  };
}

/** The criterion's `visionConfigHash` for an image-text checkpoint (see images.ts); nothing for a text-only one. */
export function visionHashOf(decoder: Decoder): { visionConfigHash?: string } {
  if (!decoder.spec.imageText) return {};
  // A checkpoint without preprocessor_config.json still scores text: it then has no vision config to record.
  try {
    return { visionConfigHash: visionConfigHash(decoder.info.modelDir) };
  } catch {
    return {};
  }
}

const encodeF32 = (x: Float32Array) => Buffer.from(x.buffer, x.byteOffset, x.byteLength).toString('base64');
const decodeF32 = (s: string) => {
  const b = Buffer.from(s, 'base64');
  const out = new Float32Array(b.length / 4);
  new Uint8Array(out.buffer).set(b);
  return out;
};

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
  return new ActivationRM(decoder, {
    mu: new Float32Array(L * H * d),
    probs: new Float32Array(L * H),
    meta: {
      formatVersion: FORMAT_VERSION,
      model: {
        id: options.modelId ?? decoder.id,
        family: decoder.spec.family,
        configHash: decoder.info.configHash,
        weightsFingerprint: decoder.info.weightsFingerprint,
        numLayers: L,
        numHeads: H,
        headDim: d,
        dtype: decoder.info.weightFormat.dtype,
        weightFormat: describeWeightFormat(decoder.info.weightFormat),
        ...visionHashOf(decoder),
        ...promptFilesOf(decoder),
      },
      template,
      answerTokens: resolveAnswerTokens(decoder.tokenizer, template, probe),
      heads: [],
      mode: 'replace',
      headStrategy: 'none',
      denoise: null,
      seed: 0,
      hyper: {
        passes: 0,
        shots: 0,
        maxLength: options.maxLength ?? decoder.spec.maxPositions,
        batchSize: options.batchSize ?? 8,
        reinforce: null,
      },
      examples: { count: 0, items: 0, itemsTooLong: 0, ids: [], sha256: '' },
      readout: null,
      fit: { seconds: 0, createdAt: fitDate().createdAt, meanPasses: 0, truncatedPasses: 0, reinforceSteps: 0 },
      muLayout: 'selected',
    },
  });
}
