/**
 * Accuracy measures shared by bench:quant and bench:gpu --accuracy: next-token agreement of a weight format with a
 * reference over teacher-forced positions (stories260K's texts), and the Spearman correlation of ARM P(Yes) scores
 * from one criterion file scored on two decoders (icl-tiny's 8 criteria).
 */
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { disposeKv, type Decoder } from '../src/model/decoder.js';
import { readExamples, type Example } from '../src/data/examples.js';
import { ActivationRM } from '../src/arm/rm.js';
import { median } from './qwen-shape.js';

const SHARED = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../shared');
export const STORIES = path.join(SHARED, 'models/stories260K');
export const ICL_TINY = path.join(SHARED, 'models/icl-tiny');
const ICL_PAIRS = path.join(SHARED, 'data/icl-tiny/pairs.jsonl');

export const r = (x: number, digits = 3) => Number(x.toFixed(digits));

/** Next-token agreement of `test` with `ref` over the same positions: rows of logits [n, V] with log Σ exp. */
export interface Positions {
  logits: Float32Array[];
  logSumExp: number[];
  heads: Float32Array[];
}

export function agreement(ref: Positions, test: Positions) {
  let top1 = 0,
    kl = 0,
    tapErr = 0,
    tapScale = 0;
  for (let i = 0; i < ref.logits.length; i++) {
    const p = ref.logits[i]!,
      q = test.logits[i]!;
    if (argmax(p) === argmax(q)) top1++;
    // KL(p_fp32 ‖ p_dtype) = Σ p (log p − log q), full vocabulary
    let s = 0;
    for (let v = 0; v < p.length; v++) {
      const lp = p[v]! - ref.logSumExp[i]!,
        lq = q[v]! - test.logSumExp[i]!;
      s += Math.exp(lp) * (lp - lq);
    }
    kl += s;
    const a = ref.heads[i]!,
      b = test.heads[i]!;
    for (let j = 0; j < a.length; j++) {
      tapErr = Math.max(tapErr, Math.abs(a[j]! - b[j]!));
      tapScale = Math.max(tapScale, Math.abs(a[j]!));
    }
  }
  const n = ref.logits.length;
  return {
    positions: n,
    top1Agreement: r(top1 / n, 4),
    meanKL: Number((kl / n).toPrecision(3)),
    maxTapError: Number(tapErr.toPrecision(3)),
    maxTapErrorRel: Number((tapErr / tapScale).toPrecision(3)),
  };
}

const argmax = (x: Float32Array) => {
  let b = 0;
  for (let i = 1; i < x.length; i++) if (x[i]! > x[b]!) b = i;
  return b;
};

/** Teacher-forced positions of `seqs`: every prefix's next-token logits, via a KV cache (one token a step). */
export async function decodePositions(d: Decoder, seqs: number[][], maxPositions: number): Promise<Positions> {
  const out: Positions = { logits: [], logSumExp: [], heads: [] };
  const V = d.spec.vocabSize;
  for (const seq of seqs) {
    let kv = await d.prefill(seq.slice(0, 1));
    for (let t = 1; t < seq.length && out.logits.length < maxPositions; t++) {
      const step = await d.extend(kv, [seq[t]!]);
      disposeKv(kv); // a WebGPU cache's buffers now, not when the GC finds them
      kv = step.kv;
      const logits = step.logits.slice(0, V);
      let m = -Infinity;
      for (const x of logits) m = Math.max(m, x);
      let s = 0;
      for (const x of logits) s += Math.exp(x - m);
      out.logits.push(logits);
      out.logSumExp.push(m + Math.log(s));
      out.heads.push(step.heads.slice());
    }
    disposeKv(kv);
  }
  return out;
}

/** Spearman rank correlation (average ranks for ties). */
export function spearman(a: number[], b: number[]): number {
  const rank = (x: number[]) => {
    const order = x.map((v, i) => [v, i] as const).sort((p, q) => p[0] - q[0]);
    const ranks = new Array<number>(x.length);
    for (let i = 0; i < order.length;) {
      let j = i;
      while (j + 1 < order.length && order[j + 1]![0] === order[i]![0]) j++;
      for (let k = i; k <= j; k++) ranks[order[k]![1]] = (i + j) / 2;
      i = j + 1;
    }
    return ranks;
  };
  const ra = rank(a),
    rb = rank(b);
  const mean = (x: number[]) => x.reduce((s, v) => s + v, 0) / x.length;
  const ma = mean(ra),
    mb = mean(rb);
  let num = 0,
    da = 0,
    db = 0;
  for (let i = 0; i < ra.length; i++) {
    num += (ra[i]! - ma) * (rb[i]! - mb);
    da += (ra[i]! - ma) ** 2;
    db += (rb[i]! - mb) ** 2;
  }
  return num / Math.sqrt(da * db);
}

/** Texts in stories260K's style: ~300 teacher-forced positions. */
export const STORY_TEXTS = [
  'Once upon a time, there was a little girl named Lily. She loved to play outside in the park with her friends. One ' +
    'day, she saw a big red ball under a tree.',
  'Tom had a small dog called Max. Every morning they went for a walk to the lake. Max liked to chase the ducks, but ' +
    'the ducks always flew away.',
  'The sun was shining and the birds were singing. Sara wanted to bake a cake for her mom. She took flour, eggs and ' +
    'sugar and mixed them in a big bowl.',
  'There was a boy who did not like to share his toys. His sister was sad. Then he saw her cry and gave her his ' +
    'favorite car. They played together all day.',
  'A little bear lived in the forest. He was hungry and looked for honey. He found a tree full of bees and asked ' +
    'them nicely for some honey.',
];

/** icl-tiny's pairs: every example, and per criterion (subset) 16 to fit on and the rest to test. */
export function iclCriteria(): { all: Example[]; criteria: { subset: string; train: Example[]; test: Example[] }[] } {
  const all = readExamples(ICL_PAIRS).examples;
  const criteria = [...new Set(all.map((e) => e.subset!))].map((subset) => {
    const ex = all.filter((e) => e.subset === subset);
    return { subset, train: ex.slice(0, 16), test: ex.slice(16) };
  });
  return { all, criteria };
}
/** How bench:quant and bench:gpu fit an icl-tiny criterion. */
export const ICL_FIT_OPTIONS = { templateText: '{prompt} {response}', seed: 1, batchSize: 32 } as const;

/** Every score of `file`'s criterion on `decoder` over `examples` (a pair's chosen and rejected; a dtype mismatch
 * with the file's is expected and not warned about). */
export async function criterionRewards(decoder: Decoder, file: string, examples: Example[]): Promise<number[]> {
  const scores = await ActivationRM.load(decoder, file, { warn: () => {} }).scoreExamples(examples);
  return scores.flatMap((x) => ('chosen' in x ? [x.chosen, x.rejected] : [x.reward]));
}

/** Per-criterion Spearman correlations summarised: median, minimum, and each. */
export function spearmanSummary(perCriterion: Record<string, number>) {
  const v = Object.values(perCriterion);
  return { median: r(median(v), 4), min: r(Math.min(...v), 4), perCriterion };
}
