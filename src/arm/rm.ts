/**
 * A fitted Activation Reward Model: score = P(answer word) at the last prompt token with the selected heads'
 * last-token outputs replaced by their means (DESIGN steps 3–4). With no heads it is the zero-shot judge.
 */
import type { Decoder, HeadPatch } from '../model/decoder.js';
import type { Example } from '../data/examples.js';
import {
  checkCriterionMatches,
  loadCriterion,
  saveCriterion,
  type Criterion,
  type CriterionMeta,
} from './criterion.js';
import { render, TooLongError, type JudgeItem, type Rendered } from './template.js';
import { forEachRenderedLastLogits, forEachRenderedPerPatch, judgeImagesFor } from './images.js';
import { imagesOf } from '../data/examples.js';
import { argmax } from '../model/decoder.js';
import { Rng } from '../util/rng.js';
import { createHash } from 'node:crypto';

export interface ItemScore {
  id: string;
  /**
   * Full-vocabulary softmax probability of the first answer word's token ("Yes" / "A"): the reward. NaN when too long.
   */
  reward: number;
  /** Probability of the first answer's variants over both answers' variants ("Yes"+" Yes"+… vs "No"+…). */
  normalized: number;
  logitYes: number;
  logitNo: number;
  truncatedTokens: number;
  /**
   * The judge prompt's text tokens, and those the vocabulary did not know (unknown-tokens.ts); 0 when too long.
   * Optional for scorers that do not measure them (stand-in engines).
   */
  textTokens?: number;
  unknownTokens?: number;
  /** The response and question alone exceed the length budget: not scored (reward NaN). */
  tooLong: boolean;
  /** Greedy verdict: 0 when the argmax token is a variant of the first answer word, 1 of the second, null otherwise. */
  verdict: 0 | 1 | null;
  /** With `sample`: fraction of sampled first tokens that are first-answer variants, among those that are answers. */
  sampledYes?: number;
}

export interface PairScore {
  id: string;
  chosen: number;
  rejected: number;
  /** chosen − rejected (TRL's margin). */
  margin: number;
  /** chosen > rejected; a tie is wrong. */
  correct: boolean;
  truncated: boolean;
  /** A response did not fit the length budget: not scored, counted as wrong. */
  tooLong: boolean;
  /** Ranked template: whether both orders preferred the same response. */
  swapConsistent?: boolean;
  detail: ItemScore[];
}

export interface ScoreOptions {
  batchSize?: number;
  maxLength?: number;
  /** Demonstrations (with answers) placed before every item: the in-context judge. */
  demos?: JudgeItem[];
  /** Sampled verdicts: `n` first tokens drawn at `temperature` from the full softmax, seeded. */
  sample?: { n: number; temperature: number; seed: number };
  /** What a scalar-template pair compares: P(Yes) (default), the Yes/No-normalised probability, or sampled verdicts. */
  readout?: 'reward' | 'normalized' | 'sampled';
  onProgress?: (done: number, total: number) => void;
}

class ScoreError extends Error {
  override name = 'ScoreError';
}

/** The message for NaN/Inf met during a fit or a score, with where it likely comes from. */
export function nonFiniteHint(what: string): string {
  return (
    `${what} is not finite (NaN or Inf); likely cause: NaN/Inf in the model's weights (e.g. a value that ` +
    'overflowed float16) or an unusable config.json value (e.g. rms_norm_eps ≤ 0)'
  );
}

export class ActivationRM {
  constructor(
    readonly decoder: Decoder,
    readonly criterion: Criterion,
  ) {}

  /** `warn` receives non-fatal mismatches (a criterion fitted at another --dtype); default: stderr. */
  static load(decoder: Decoder, file: string, opts: { warn?: (message: string) => void } = {}): ActivationRM {
    const criterion = loadCriterion(file);
    const warn = opts.warn ?? ((m: string) => process.stderr.write(`warning: ${m}\n`));
    for (const w of checkCriterionMatches(criterion.meta, decoder, file)) warn(w);
    return new ActivationRM(decoder, criterion);
  }

  save(file: string, opts: { keepAllMeans?: boolean } = {}): void {
    saveCriterion(file, this.criterion, opts);
  }

  /** The patch for `rows` rows: the selected heads replaced (or added) with their means. */
  patch(rows: number): HeadPatch {
    const { numLayers: L, numHeads: H } = this.decoder.spec;
    const one = new Float32Array(L * H);
    for (const [l, h] of this.criterion.meta.heads) one[l * H + h] = 1;
    const mask = new Float32Array(rows * L * H);
    for (let row = 0; row < rows; row++) mask.set(one, row * L * H);
    return { mask, values: this.criterion.mu, mode: this.criterion.meta.mode };
  }

  /**
   * Scores judged items under the intervention; batched by length, results in input order. `groups` lists
   * item indices that share their prompt (a pair's two responses): each such set runs its common prefix once.
   */
  async scoreItems(items: JudgeItem[], opts: ScoreOptions = {}, groups?: number[][]): Promise<ItemScore[]> {
    return (await scoreItemsUnder([this], items, opts, groups))[0]!;
  }

  /** Scores preference pairs (and scalar examples, as single items). */
  async scoreExamples(examples: Example[], opts: ScoreOptions = {}): Promise<ExampleScore[]> {
    return (await scoreExamplesUnder([this], examples, opts))[0]!;
  }
}

/** One example's score: a pair's, or a scalar example's item score with its label. */
export type ExampleScore = PairScore | (ItemScore & { label: boolean | null });

/**
 * Scores `items` under each of `rms`, which must render identical judge prompts (one template, chat setting and
 * length budget: CriterionSet groups them so) on one decoder: [criterion][item]. One criterion runs batched by
 * length (forEachRenderedLastLogits); K > 1 run every prompt once and its last token as K patched rows.
 */
async function scoreItemsUnder(
  rms: readonly ActivationRM[],
  items: JudgeItem[],
  opts: ScoreOptions = {},
  groups?: number[][],
): Promise<ItemScore[][]> {
  const { decoder } = rms[0]!;
  const meta = rms[0]!.criterion.meta;
  const maxLength = opts.maxLength ?? meta.hyper.maxLength;
  const out: ItemScore[][] = rms.map(() => new Array<ItemScore>(items.length));
  const images = await judgeImagesFor(decoder, [...items, ...(opts.demos ?? [])]);
  const rendered = items.map((it, i) => {
    try {
      return render(decoder.tokenizer, meta.template, opts.demos ?? [], it, maxLength, images);
    } catch (e) {
      if (!(e instanceof TooLongError)) throw e;
      for (const o of out) o[i] = tooLongScore(it.id);
      return null;
    }
  });
  const live = rendered.map((_, i) => i).filter((i) => rendered[i]);
  const liveIndex = new Map(live.map((i, j) => [i, j]));
  const liveGroups = groups?.map((g) => g.filter((i) => liveIndex.has(i)).map((i) => liveIndex.get(i)!));
  const read = (k: number, j: number, row: Float32Array, logSumExp: number) => {
    const i = live[j]!;
    out[k]![i] = readItemScore(rms[k]!.criterion.meta.answerTokens, items[i]!, rendered[i]!, { row, logSumExp }, opts);
  };
  const liveRendered = live.map((i) => rendered[i]!);
  if (rms.length === 1) {
    const batchSize = opts.batchSize ?? meta.hyper.batchSize;
    const patch = (rows: number) => rms[0]!.patch(rows);
    await forEachRenderedLastLogits(
      decoder,
      images,
      liveRendered,
      { batchSize, patch, groups: liveGroups, onProgress: opts.onProgress },
      (j, { logits, logSumExp }) => read(0, j, logits, logSumExp),
    );
    return out;
  }
  const patch = rowPerCriterionPatch(rms);
  const V = decoder.spec.vocabSize;
  await forEachRenderedPerPatch(
    decoder,
    images,
    liveRendered,
    { patch, groups: liveGroups, onProgress: opts.onProgress },
    (j, rows) => rms.forEach((_, k) => read(k, j, rows.logits.subarray(k * V, (k + 1) * V), rows.logSumExp[k]!)),
  );
  return out;
}

/** K criteria's patches as K rows: row k carries criterion k's heads, means and mode. */
function rowPerCriterionPatch(rms: readonly ActivationRM[]): HeadPatch {
  const { numLayers: L, numHeads: H, headDim: d } = rms[0]!.decoder.spec;
  const mask = new Float32Array(rms.length * L * H); // [K, L, H]
  const values = new Float32Array(rms.length * L * H * d); // [K, L, H, d]
  rms.forEach((rm, k) => {
    mask.set(rm.patch(1).mask, k * L * H);
    values.set(rm.criterion.mu, k * L * H * d);
  });
  return { mask, values, mode: rms.map((rm) => rm.criterion.meta.mode) };
}

/** The score of an item that does not fit the length budget: not scored. */
function tooLongScore(id: string): ItemScore {
  return {
    id,
    reward: NaN,
    normalized: NaN,
    logitYes: NaN,
    logitNo: NaN,
    truncatedTokens: 0,
    textTokens: 0,
    unknownTokens: 0,
    tooLong: true,
    verdict: null,
  };
}

/** An item's score from its last-position logits row under one criterion's answer tokens. */
function readItemScore(
  answerTokens: CriterionMeta['answerTokens'],
  item: JudgeItem,
  rendered: Rendered,
  { row, logSumExp }: { row: Float32Array; logSumExp: number },
  opts: ScoreOptions,
): ItemScore {
  const [yesId, noId] = answerTokens.primary;
  const [yesVariants, noVariants] = answerTokens.variants;
  // A NaN score would be written as null and counted as a lost pair without a word: refuse it here.
  if (!Number.isFinite(logSumExp) || !Number.isFinite(row[yesId]!) || !Number.isFinite(row[noId]!)) {
    throw new ScoreError(
      nonFiniteHint(
        `the score of item ${item.id} (log-sum-exp ${logSumExp}, answer logits ${row[yesId]}/${row[noId]})`,
      ),
    );
  }
  const p = (t: number) => Math.exp(row[t]! - logSumExp);
  const yes = yesVariants.reduce((s, t) => s + p(t), 0),
    no = noVariants.reduce((s, t) => s + p(t), 0);
  const top = argmax(row);
  const score: ItemScore = {
    id: item.id,
    reward: p(yesId),
    normalized: yes / (yes + no || 1),
    logitYes: row[yesId]!,
    logitNo: row[noId]!,
    truncatedTokens: rendered.truncatedTokens,
    textTokens: rendered.unknown.text,
    unknownTokens: rendered.unknown.unknown,
    tooLong: false,
    verdict: yesVariants.includes(top) ? 0 : noVariants.includes(top) ? 1 : null,
  };
  if (opts.sample) score.sampledYes = sampleVerdicts(row, opts.sample, item.id, yesVariants, noVariants);
  return score;
}

/**
 * Scores preference pairs (and scalar examples, as single items) under each of `rms` (identical judge prompts, as
 * scoreItemsUnder): [criterion][example]. Items that share a prompt share its prefix.
 */
export async function scoreExamplesUnder(
  rms: readonly ActivationRM[],
  examples: Example[],
  opts: ScoreOptions = {},
): Promise<ExampleScore[][]> {
  const kind = rms[0]!.criterion.meta.template.kind;
  const { items, groups } = judgeItemsOf(examples, kind);
  // With demonstrations every item shares the (long) demo prefix instead: no per-pair groups then.
  const scores = await scoreItemsUnder(rms, items, opts, opts.demos?.length ? undefined : groups);
  return scores.map((perItem) => exampleScores(examples, perItem, kind, opts.readout));
}

/** The judge items of `examples` (a pair: two) and the sets of items that share a prompt. */
function judgeItemsOf(examples: Example[], kind: 'scalar' | 'ranked'): { items: JudgeItem[]; groups: number[][] } {
  const items: JudgeItem[] = [];
  // Items that share a prompt (a pair's two responses, GRPO's many samples of one prompt) share its prefix.
  const byPrompt = new Map<string, number[]>();
  for (const e of examples) {
    const key = JSON.stringify([e.prompt, e.images ?? []]);
    if (!byPrompt.has(key)) byPrompt.set(key, []);
    byPrompt.get(key)!.push(...(e.kind === 'pair' ? [items.length, items.length + 1] : [items.length]));
    const item = (id: string, fields: Record<string, string>, answer: 0 | 1): JudgeItem => ({
      id,
      prompt: e.prompt,
      fields,
      answer,
      ...imagesOf(e),
    });
    if (e.kind === 'scalar') {
      if (kind === 'ranked') throw new Error(`example ${e.id} (line ${e.line}): the ranked template scores pairs only`);
      items.push(item(e.id, { response: e.response }, e.label === false ? 1 : 0));
    } else if (kind === 'scalar') {
      items.push(
        item(`${e.id}:chosen`, { response: e.chosen }, 0),
        item(`${e.id}:rejected`, { response: e.rejected }, 1),
      );
    } else {
      items.push(
        item(`${e.id}:ab`, { response_a: e.chosen, response_b: e.rejected }, 0),
        item(`${e.id}:ba`, { response_a: e.rejected, response_b: e.chosen }, 1),
      );
    }
  }
  return { items, groups: [...byPrompt.values()].filter((g) => g.length > 1) };
}

/** Examples' scores from their items' scores (in judgeItemsOf's order). */
function exampleScores(
  examples: Example[],
  scores: ItemScore[],
  kind: 'scalar' | 'ranked',
  readout: ScoreOptions['readout'],
): ExampleScore[] {
  let at = 0;
  return examples.map((e) => {
    if (e.kind === 'scalar') return { ...scores[at++]!, label: e.label };
    const a = scores[at++]!,
      b = scores[at++]!;
    if (kind === 'scalar') {
      const read = (x: ItemScore) =>
        readout === 'normalized' ? x.normalized : readout === 'sampled' ? (x.sampledYes ?? NaN) : x.reward;
      return pairScore(e.id, read(a), read(b), [a, b]);
    }
    // Ranked: P(A) with chosen first and 1 − P(A) with chosen second, each normalised over A/B; averaged.
    const chosenFirst = a.normalized,
      chosenSecond = 1 - b.normalized;
    const chosen = (chosenFirst + chosenSecond) / 2;
    const scorable = !a.tooLong && !b.tooLong;
    return {
      ...pairScore(e.id, chosen, 1 - chosen, [a, b]),
      swapConsistent: scorable && chosenFirst > 0.5 === chosenSecond > 0.5,
    };
  });
}

/** A pair's result from its two responses' scores (a tie is wrong; a response too long makes the pair unscorable). */
function pairScore(id: string, chosen: number, rejected: number, detail: ItemScore[]): PairScore {
  return {
    id,
    chosen,
    rejected,
    margin: chosen - rejected,
    correct: chosen > rejected,
    truncated: detail.some((d) => d.truncatedTokens > 0),
    tooLong: detail.some((d) => d.tooLong),
    detail,
  };
}

/**
 * Draws `n` first tokens from softmax(row / temperature) with a per-item seeded stream; returns the share of
 * first-answer variants among the draws that were answers at all (0.5 when none were).
 */
function sampleVerdicts(
  row: Float32Array,
  s: { n: number; temperature: number; seed: number },
  itemId: string,
  yes: number[],
  no: number[],
): number {
  const scaled = Float32Array.from(row, (v) => v / s.temperature);
  const p = softmax(scaled);
  const cdf = new Float64Array(p.length);
  let acc = 0;
  for (let i = 0; i < p.length; i++) {
    acc += p[i]!;
    cdf[i] = acc;
  }
  // Seeded by (seed, item id): the same item draws the same verdicts whatever batch or chunk it is scored in.
  const rng = new Rng(parseInt(createHash('sha256').update(`${s.seed}:${itemId}`).digest('hex').slice(0, 8), 16));
  let y = 0,
    nCount = 0;
  for (let k = 0; k < s.n; k++) {
    const u = rng.uniform() * acc;
    let lo = 0,
      hi = cdf.length - 1;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (cdf[mid]! < u) lo = mid + 1;
      else hi = mid;
    }
    if (yes.includes(lo)) y++;
    else if (no.includes(lo)) nCount++;
  }
  return y + nCount === 0 ? 0.5 : y / (y + nCount);
}

/** Softmax over a logits row in float64. */
function softmax(row: Float32Array): Float64Array {
  let max = -Infinity;
  for (const v of row) if (v > max) max = v;
  const out = new Float64Array(row.length);
  let sum = 0;
  for (let i = 0; i < row.length; i++) {
    out[i] = Math.exp(row[i]! - max);
    sum += out[i]!;
  }
  for (let i = 0; i < row.length; i++) out[i]! /= sum;
  return out;
}

/** The fields `arm score` writes in its "arm" column, NaN → null. */
export function armFields(s: PairScore | ItemScore): Record<string, number | boolean | null> {
  const arm =
    'chosen' in s
      ? {
          chosen: s.chosen,
          rejected: s.rejected,
          margin: s.margin,
          correct: s.correct,
          truncated: s.truncated,
          tooLong: s.tooLong,
          ...(s.swapConsistent === undefined ? {} : { swapConsistent: s.swapConsistent }),
        }
      : {
          reward: s.reward,
          normalized: s.normalized,
          logitYes: s.logitYes,
          logitNo: s.logitNo,
          truncated: s.truncatedTokens > 0,
          tooLong: s.tooLong,
        };
  return Object.fromEntries(
    Object.entries(arm).map(([k, v]) => [k, typeof v === 'number' && !Number.isFinite(v) ? null : v]),
  );
}
