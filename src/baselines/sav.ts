/**
 * Sparse Attention Vectors (SAVs) as a voting classifier: per head, the mean last-token activation of each
 * class over the pool; each head classifies by the nearer class mean in cosine similarity; the `topHeads`
 * heads most accurate on the pool vote, and the score is the share of votes for the first answer. Vote shares
 * of a pair's two responses tie often (20 heads give 21 values); the summed cosine margin breaks such ties.
 */
import type { Decoder } from '../model/decoder.js';
import { forEachRenderedLastLogits, judgeImagesFor } from '../arm/images.js';
import { render, TooLongError, type JudgeItem, type TemplateSpec } from '../arm/template.js';
import { FitError } from '../arm/fit-errors.js';

export interface SavModel {
  heads: [number, number][]; // the voting heads, most accurate first
  classMeans: [Float32Array, Float32Array]; // [L·H·d] per answer class
  headAccuracy: Float32Array; // [L·H] nearest-mean accuracy on the pool
}

/** Zero-shot last-token activations per item; null for an item too long to render. */
async function activations(
  decoder: Decoder,
  template: TemplateSpec,
  items: JudgeItem[],
  batchSize: number,
  maxLength: number,
  groups?: number[][],
): Promise<(Float32Array | null)[]> {
  const out: (Float32Array | null)[] = new Array(items.length).fill(null);
  const live: number[] = [];
  const rendered: ReturnType<typeof render>[] = [];
  const images = await judgeImagesFor(decoder, items);
  items.forEach((it, i) => {
    try {
      rendered.push(render(decoder.tokenizer, template, [], it, maxLength, images));
      live.push(i);
    } catch (e) {
      if (!(e instanceof TooLongError)) throw e;
    }
  });
  const liveIndex = new Map(live.map((i, j) => [i, j]));
  const liveGroups = groups?.map((g) => g.filter((i) => liveIndex.has(i)).map((i) => liveIndex.get(i)!));
  await forEachRenderedLastLogits(decoder, images, rendered, { batchSize, groups: liveGroups }, (j, { heads }) => {
    out[live[j]!] = heads.slice();
  });
  return out;
}

function cosine(a: Float32Array, b: Float32Array, off: number, d: number): number {
  let dot = 0,
    na = 0,
    nb = 0;
  for (let i = off; i < off + d; i++) {
    dot += a[i]! * b[i]!;
    na += a[i]! * a[i]!;
    nb += b[i]! * b[i]!;
  }
  return dot / (Math.sqrt(na * nb) || 1);
}

/** 0 or 1: the class whose mean is nearer (cosine) for head index `h` (= l·H + head). Ties go to class 1. */
function headVote(x: Float32Array, m: SavModel, h: number, d: number): 0 | 1 {
  return cosine(x, m.classMeans[0], h * d, d) > cosine(x, m.classMeans[1], h * d, d) ? 0 : 1;
}

export async function fitSav(
  decoder: Decoder,
  template: TemplateSpec,
  pool: JudgeItem[],
  opts: { topHeads: number; batchSize: number; maxLength: number },
): Promise<SavModel> {
  const { numLayers: L, numHeads: H, headDim: d } = decoder.spec;
  const all = await activations(decoder, template, pool, opts.batchSize, opts.maxLength);
  const kept = pool.map((_, i) => i).filter((i) => all[i]);
  const leftOut = pool.length - kept.length;
  pool = kept.map((i) => pool[i]!);
  const acts = kept.map((i) => all[i]!);
  const means: [Float32Array, Float32Array] = [new Float32Array(L * H * d), new Float32Array(L * H * d)];
  const counts = [0, 0];
  pool.forEach((it, i) => {
    counts[it.answer]!++;
    acts[i]!.forEach((v, j) => {
      means[it.answer]![j]! += v;
    });
  });
  if (!counts[0] || !counts[1]) {
    // A data condition of this pool (FitError), not a bug: the harness skips it and reports the reason.
    const after = leftOut
      ? ` after ${leftOut} of ${leftOut + pool.length} items that do not fit --max-length ${opts.maxLength} ` +
        'were left out'
      : '';
    throw new FitError(
      `sav-vote: the pool needs items of both classes; it has ${counts[0]} "yes" and ${counts[1]} "no"${after}`,
    );
  }
  means.forEach((m, c) =>
    m.forEach((v, j) => {
      m[j] = v / counts[c]!;
    }),
  );
  const model: SavModel = { heads: [], classMeans: means, headAccuracy: new Float32Array(L * H) };
  for (let h = 0; h < L * H; h++) {
    model.headAccuracy[h] = pool.filter((it, i) => headVote(acts[i]!, model, h, d) === it.answer).length / pool.length;
  }
  const ranked = Array.from(model.headAccuracy.keys()).sort(
    (a, b) => model.headAccuracy[b]! - model.headAccuracy[a]! || a - b,
  );
  model.heads = ranked.slice(0, Math.min(opts.topHeads, L * H)).map((h) => [Math.floor(h / H), h % H]);
  return model;
}

/**
 * One item's vote: the share of the voting heads nearer the first answer class, and the summed cosine margin
 * Σ_heads [cos(x, mean₀) − cos(x, mean₁)] (how far towards the first class the heads lean, in total).
 */
export function savVote(
  x: Float32Array,
  model: SavModel,
  dims: { numHeads: number; headDim: number },
): { share: number; margin: number } {
  const { numHeads: H, headDim: d } = dims;
  let first = 0,
    margin = 0;
  for (const [l, h] of model.heads) {
    const off = (l * H + h) * d;
    const toFirst = cosine(x, model.classMeans[0], off, d),
      toSecond = cosine(x, model.classMeans[1], off, d);
    if (toFirst > toSecond) first++;
    margin += toFirst - toSecond;
  }
  return { share: first / model.heads.length, margin };
}

/**
 * Per item, the share of voting heads for the first answer class and the summed cosine margin (NaN when too long);
 * `groups` share a prompt prefix.
 */
export async function scoreSav(
  decoder: Decoder,
  template: TemplateSpec,
  model: SavModel,
  items: JudgeItem[],
  opts: { batchSize: number; maxLength: number },
  groups?: number[][],
): Promise<{ votes: number[]; margins: number[] }> {
  const acts = await activations(decoder, template, items, opts.batchSize, opts.maxLength, groups);
  const results = acts.map((x) => (x ? savVote(x, model, decoder.spec) : { share: NaN, margin: NaN }));
  return { votes: results.map((vote) => vote.share), margins: results.map((vote) => vote.margin) };
}
