/**
 * Why the Activation RM trails the in-context judge on an image-text judge (docs/images.md). Per seed and criterion,
 * on the harness's own pool/test split (16 pool pairs per subset, `arm eval`'s seeds), the fitted ARM (defaults,
 * `--steps` aside) against:
 *   - means whose demonstrations carry no image (the query keeps its image; same pass plan), with heads re-selected
 *     on them, and the same means on the ARM's own heads: do image tokens in the prefix change what means carry?
 *   - the fit's means on the top N heads by σ(θ), and on each whole layer: how many heads, and where;
 *   - an oracle (not a method: it needs demonstrations at scoring time): heads given each test item's own
 *     activations from the ICL judge's prompt (its 4 demos) instead of one constant mean; on the ARM's heads, on
 *     every head (which must reproduce the ICL judge: the last position sees its context only through its heads),
 *     per layer and per single head. Where the oracle reaches the ICL judge and the means do not, what those heads
 *     carry with demos in context depends on the item, which no constant can replace;
 * and the layer × head maps of the selected heads and of the per-head oracle. Prints markdown tables; `--out` keeps
 * every record.
 *   npx tsx tools/vl-arm-study.ts --model ../shared/models/icl-tiny-vl \
 *     --dataset ../shared/data/icl-tiny-vl/pairs.jsonl [--seeds 3] [--subsets a,b] [--steps 600] [--out f.json]
 */
import fs from 'node:fs';
import { parseArgs } from 'node:util';
import { Decoder } from '../src/model/decoder.js';
import { forEachLastLogits, type ImageSequence, type Sequence } from '../src/model/batch.js';
import { readExamples, type PairExample } from '../src/data/examples.js';
import { drawSplits } from '../src/eval/splits.js';
import { iclDemos } from '../src/eval/methods.js';
import { fitActivationRM, zeroShotRM } from '../src/arm/fit.js';
import { fitSettings } from '../src/arm/fit-options.js';
import { fitPool, type FitPool } from '../src/arm/judge-items.js';
import { DEFAULT_PASSES_PER_DEMO_SET, planPasses } from '../src/arm/means.js';
import { headList, selectHeads } from '../src/arm/head-selection.js';
import { REINFORCE_DEFAULTS } from '../src/arm/reinforce.js';
import { ActivationRM, type PairScore } from '../src/arm/rm.js';
import { judgeItems } from '../src/arm/judge-items.js';
import { forEachRenderedLastLogits, judgeImagesFor, toSequence } from '../src/arm/images.js';
import { makeTemplate, render, resolveAnswerTokens, type JudgeItem, type TemplateSpec } from '../src/arm/template.js';

const TEMPLATE_TEXT = '{prompt} {response}';
const FEW_SHOT = 16;
const PASSES = 100;
const SHOTS = 4;
const BATCH = 8; // arm eval's --batch-size default
const TOP_N = [2, 4, 8, 16, 32];

interface Study {
  decoder: Decoder;
  template: TemplateSpec;
  steps: number;
}

/** One (seed, criterion): accuracies of every variant (0..1), heads, and how far the image-free means moved. */
interface CriterionRecord {
  seed: number;
  criterion: string;
  testPairs: number;
  accuracy: Record<string, number>;
  heads: [number, number][];
  headsNoDemoImages: [number, number][];
  /** Oracle accuracy with one head given its ICL activations, per head [L·H]. */
  oraclePerHead: number[];
  /** Mean over heads of cos(μ with demo images, μ without); on the ARM's heads, and on every head. */
  cosine: { selected: number; all: number };
  /** Largest |Δ| between this tool's means and the fit's own (a check that it reproduces extractMeans). */
  replicaError: number;
}

const accuracyOf = (scores: PairScore[]) => scores.filter((s) => s.correct).length / scores.length;

/** An ARM like `rm` with other means and heads. */
const variant = (rm: ActivationRM, mu: Float32Array, heads: [number, number][]) =>
  new ActivationRM(rm.decoder, { mu, probs: rm.criterion.probs, meta: { ...rm.criterion.meta, heads } });

/**
 * The fit's mean activations (same pass plan as extractMeans at the fit's defaults), with the demonstrations'
 * images kept or removed; the query always keeps its image. [L, H, d]
 */
async function meansOf(study: Study, pool: FitPool, seed: number, demoImages: boolean): Promise<Float32Array> {
  const { decoder, template } = study;
  const { numLayers: L, numHeads: H, headDim: d } = decoder.spec;
  const plan = planPasses(pool.items.length, PASSES, SHOTS, seed, DEFAULT_PASSES_PER_DEMO_SET, pool.groupOf);
  const strip = (it: JudgeItem): JudgeItem => (demoImages ? it : { ...it, images: undefined });
  const seqs: Sequence[] = [];
  for (const p of plan) {
    const demos = p.demos.map((i) => strip(pool.items[i]!));
    const prompt = render(
      decoder.tokenizer,
      template,
      demos,
      pool.items[p.query]!,
      decoder.spec.maxPositions,
      pool.images,
    );
    seqs.push(await toSequence(pool.images, prompt));
  }
  const sum = new Float64Array(L * H * d);
  const rows: Float32Array[] = new Array(seqs.length);
  // One sequence per call: no padding, so the bits match the fit's equal-length batches.
  for (let i = 0; i < seqs.length; i++)
    await forEachLastLogits(decoder, [seqs[i]!], { batchSize: 1, sharePrefix: false }, (_, row) => {
      rows[i] = row.heads.slice();
    });
  for (const row of rows) for (let j = 0; j < sum.length; j++) sum[j]! += row[j]!;
  return Float32Array.from(sum, (s) => s / rows.length);
}

/** Heads chosen by REINFORCE on `mu` with the fit's settings. */
async function reselect(study: Study, pool: FitPool, seed: number, mu: Float32Array): Promise<[number, number][]> {
  const { decoder, template } = study;
  const settings = fitSettings(decoder, { seed, batchSize: BATCH, templateText: TEMPLATE_TEXT });
  const selection = await selectHeads({
    decoder,
    settings,
    reinforce: { ...REINFORCE_DEFAULTS, steps: study.steps },
    template,
    items: pool.items,
    images: pool.images,
    answerIds: resolveAnswerTokens(decoder.tokenizer, template, pool.items[0]!).primary,
    mu,
    resumedState: null,
    saveProgress: () => undefined,
    interrupted: () => new Error('vl-arm-study: interrupted'),
  });
  return headList(selection.selected, decoder.spec.numHeads);
}

/** Test items' zero-shot prompts (as sequences) and their last-token activations under the ICL judge's prompt. */
interface OracleInputs {
  seqs: Sequence[];
  icl: Float32Array[]; // per item [L·H·d]
  yes: number;
}

async function oracleInputs(study: Study, demos: JudgeItem[], test: PairExample[]): Promise<OracleInputs> {
  const { decoder, template } = study;
  const items = judgeItems(test, 'scalar');
  const images = await judgeImagesFor(decoder, [...items, ...demos]);
  const max = decoder.spec.maxPositions;
  const inContext = items.map((it) => render(decoder.tokenizer, template, demos, it, max, images));
  const icl: Float32Array[] = new Array(items.length);
  await forEachRenderedLastLogits(decoder, images, inContext, { batchSize: 1, sharePrefix: false }, (i, row) => {
    icl[i] = row.heads.slice();
  });
  const seqs: Sequence[] = [];
  for (const it of items) seqs.push(await toSequence(images, render(decoder.tokenizer, template, [], it, max, images)));
  return { seqs, icl, yes: resolveAnswerTokens(decoder.tokenizer, template, items[0]!).primary[0] };
}

/**
 * The oracle's pair accuracy: each test item scored zero-shot with the heads of `heads` ([L·H] indices) replaced by
 * that item's own ICL activations. Rows of one length run as one batch (no padding), each with its own values.
 */
async function oracleAccuracy(decoder: Decoder, inputs: OracleInputs, heads: number[]): Promise<number> {
  const { numLayers: L, numHeads: H, headDim: d, vocabSize: V } = decoder.spec;
  const ids = (s: Sequence) => (Array.isArray(s) ? s : s.ids);
  const byLength = new Map<number, number[]>();
  inputs.seqs.forEach((s, i) => byLength.set(ids(s).length, [...(byLength.get(ids(s).length) ?? []), i]));
  const one = new Float32Array(L * H);
  for (const h of heads) one[h] = 1;
  const logP: number[] = [];
  for (const idx of byLength.values()) {
    const mask = new Float32Array(idx.length * L * H);
    const values = new Float32Array(idx.length * L * H * d);
    idx.forEach((i, b) => {
      mask.set(one, b * L * H);
      values.set(inputs.icl[i]!, b * L * H * d);
    });
    const images = idx.map((i) => (Array.isArray(inputs.seqs[i]) ? [] : [...(inputs.seqs[i] as ImageSequence).images]));
    const out = await decoder.forward(
      idx.map((i) => ids(inputs.seqs[i]!)),
      { mask, values },
      { images },
    );
    idx.forEach((i, b) => (logP[i] = out.logits[b * V + inputs.yes]! - out.logSumExp[b]!));
  }
  // judgeItems puts a pair's chosen (answer 0) before its rejected.
  const pairs = inputs.seqs.length / 2;
  let correct = 0;
  for (let p = 0; p < pairs; p++) if (logP[2 * p]! > logP[2 * p + 1]!) correct++;
  return correct / pairs;
}

function cosines(a: Float32Array, b: Float32Array, d: number, heads: number[]): number {
  let total = 0;
  for (const h of heads) {
    let ab = 0;
    let aa = 0;
    let bb = 0;
    for (let j = h * d; j < (h + 1) * d; j++) {
      ab += a[j]! * b[j]!;
      aa += a[j]! * a[j]!;
      bb += b[j]! * b[j]!;
    }
    total += ab / Math.sqrt(aa * bb);
  }
  return total / heads.length;
}

async function studyCriterion(study: Study, seed: number, pool: PairExample[], test: PairExample[]) {
  const { decoder, template } = study;
  const { numHeads: H, headDim: d } = decoder.spec;
  const fitOpts = { templateText: TEMPLATE_TEXT, seed, batchSize: BATCH, reinforce: { steps: study.steps } };
  const rm = await fitActivationRM(decoder, pool, { ...fitOpts, warn: () => undefined });
  const acc = async (r: ActivationRM, demos?: JudgeItem[]) =>
    accuracyOf((await r.scoreExamples(test, { batchSize: BATCH, demos })) as PairScore[]);
  const fitPoolItems = await fitPool(decoder, pool, template, {
    maxLength: decoder.spec.maxPositions,
    shots: SHOTS,
    warn: () => undefined,
  });
  const withImages = await meansOf(study, fitPoolItems, seed, true);
  const noImages = await meansOf(study, fitPoolItems, seed, false);
  const heads = rm.criterion.meta.heads;
  const headsNoDemoImages = await reselect(study, fitPoolItems, seed, noImages);
  const zero = zeroShotRM(decoder, { templateText: TEMPLATE_TEXT });
  const demos = iclDemos(pool, 'scalar', SHOTS, seed);
  const accuracy: Record<string, number> = {
    'zero-shot': await acc(zero),
    'icl-judge': await acc(zero, demos),
    arm: await acc(rm),
    'no demo images, reselected': await acc(variant(rm, noImages, headsNoDemoImages)),
    'no demo images, arm heads': await acc(variant(rm, noImages, heads)),
  };
  const { oracle, perHead } = await oracleRows(study, await oracleInputs(study, demos, test), heads);
  Object.assign(accuracy, oracle, await meanRows(rm, acc));
  const all = [...Array(decoder.spec.numLayers * H).keys()];
  const record: CriterionRecord = {
    seed,
    criterion: pool[0]!.subset ?? 'all',
    testPairs: test.length,
    accuracy,
    heads,
    headsNoDemoImages,
    oraclePerHead: perHead,
    cosine: {
      selected: cosines(
        withImages,
        noImages,
        d,
        heads.map(([l, h]) => l * H + h),
      ),
      all: cosines(withImages, noImages, d, all),
    },
    replicaError: Math.max(...withImages.map((x, i) => Math.abs(x - rm.criterion.mu[i]!))),
  };
  return record;
}

/** Oracle accuracies: on the ARM's heads, on every head (must equal the ICL judge), per layer, per head. */
async function oracleRows(study: Study, inputs: OracleInputs, heads: [number, number][]) {
  const { numLayers: L, numHeads: H } = study.decoder.spec;
  const run = (set: number[]) => oracleAccuracy(study.decoder, inputs, set);
  const oracle: Record<string, number> = {
    'oracle: icl activations on arm heads': await run(heads.map(([l, h]) => l * H + h)),
    'oracle: on every head (= icl-judge)': await run([...Array(L * H).keys()]),
  };
  for (let l = 0; l < L; l++) oracle[`oracle: on layer ${l}'s heads`] = await run(range(l * H, (l + 1) * H));
  // Every layer but the last from the ICL prompt, the last computed live: can the last layer's heads rebuild the
  // answer from what the earlier ones wrote at the last position, or do they need the demonstrations themselves?
  oracle[`oracle: on layers 0–${L - 2} (last layer live)`] = await run(range(0, (L - 1) * H));
  const perHead: number[] = [];
  for (let i = 0; i < L * H; i++) perHead.push(await run([i]));
  return { oracle, perHead };
}

/** The fit's means on the top N heads by σ(θ), and on each whole layer: how many heads, and where. */
async function meanRows(rm: ActivationRM, acc: (r: ActivationRM) => Promise<number>) {
  const { numLayers: L, numHeads: H } = rm.decoder.spec;
  const { probs, mu } = rm.criterion;
  const byProb = [...probs.keys()].sort((a, b) => probs[b]! - probs[a]!);
  const rows: Record<string, number> = {};
  for (const n of TOP_N)
    rows[`means on top ${n} heads by σ(θ)`] = await acc(variant(rm, mu, asHeads(byProb.slice(0, n), H)));
  for (let l = 0; l < L; l++)
    rows[`means on layer ${l}'s heads`] = await acc(variant(rm, mu, asHeads(range(l * H, (l + 1) * H), H)));
  return rows;
}

const range = (from: number, to: number) => Array.from({ length: to - from }, (_, i) => from + i);
const asHeads = (indices: number[], H: number): [number, number][] =>
  [...indices].sort((a, b) => a - b).map((i) => [Math.floor(i / H), i % H]);

const pct = (xs: number[]) => {
  const mean = xs.reduce((a, b) => a + b, 0) / xs.length;
  const std = xs.length > 1 ? Math.sqrt(xs.reduce((a, b) => a + (b - mean) ** 2, 0) / (xs.length - 1)) : 0;
  return `${(100 * mean).toFixed(1)} ± ${(100 * std).toFixed(1)}`;
};

/** Markdown: accuracy per criterion and variant (mean ± std over seeds), then each criterion's head map. */
function report(records: CriterionRecord[], L: number, H: number): string {
  const criteria = [...new Set(records.map((r) => r.criterion))];
  const variants = Object.keys(records[0]!.accuracy);
  const of = (c: string) => records.filter((r) => r.criterion === c);
  const lines = [`| variant | ${criteria.join(' | ')} |`, `|---|${'---:|'.repeat(criteria.length)}`];
  for (const v of variants)
    lines.push(`| ${v} | ${criteria.map((c) => pct(of(c).map((r) => r.accuracy[v]!))).join(' | ')} |`);
  const stat = (f: (r: CriterionRecord) => number, digits: number) =>
    criteria.map((c) => (of(c).reduce((a, r) => a + f(r), 0) / of(c).length).toFixed(digits)).join(' | ');
  lines.push(`| heads selected (mean) | ${stat((r) => r.heads.length, 1)} |`);
  lines.push(`| heads, no demo images | ${stat((r) => r.headsNoDemoImages.length, 1)} |`);
  lines.push(`| cos(μ, μ no demo images), arm heads | ${stat((r) => r.cosine.selected, 3)} |`);
  lines.push(`| cos(μ, μ no demo images), all heads | ${stat((r) => r.cosine.all, 3)} |`);
  lines.push(`| check: max abs(μ − fit's μ) | ${stat((r) => r.replicaError, 7)} |`);
  for (const c of criteria) {
    const count = new Array<number>(L * H).fill(0);
    for (const r of of(c)) for (const [l, h] of r.heads) count[l * H + h]!++;
    lines.push(
      '',
      `${c}: heads selected in how many of ${of(c).length} fits (rows: layers 0..${L - 1}; columns: heads)`,
    );
    lines.push('```');
    for (let l = 0; l < L; l++) lines.push(`L${l}  ${count.slice(l * H, (l + 1) * H).join(' ')}`);
    lines.push('```', '', `${c}: oracle accuracy (%) with only that head given its ICL activations, mean over fits`);
    lines.push('```');
    const mean = (i: number) => (100 * of(c).reduce((a, r) => a + r.oraclePerHead[i]!, 0)) / of(c).length;
    for (let l = 0; l < L; l++)
      lines.push(
        `L${l}  ${range(l * H, (l + 1) * H)
          .map((i) => mean(i).toFixed(0).padStart(3))
          .join(' ')}`,
      );
    lines.push('```');
  }
  return lines.join('\n');
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      model: { type: 'string' },
      dataset: { type: 'string' },
      seeds: { type: 'string', default: '3' },
      subsets: { type: 'string' },
      steps: { type: 'string', default: String(REINFORCE_DEFAULTS.steps) },
      threads: { type: 'string' },
      out: { type: 'string' },
    },
  });
  if (!values.model || !values.dataset) throw new Error('vl-arm-study: --model and --dataset are required');
  const decoder = await Decoder.load(values.model, { threads: values.threads ? Number(values.threads) : undefined });
  const template = makeTemplate('scalar', { text: TEMPLATE_TEXT }, decoder.tokenizer);
  const study: Study = { decoder, template, steps: Number(values.steps) };
  const pairs = readExamples(values.dataset).examples.filter((e): e is PairExample => e.kind === 'pair');
  const wanted = values.subsets?.split(',');
  const records: CriterionRecord[] = [];
  for (let seed = 0; seed < Number(values.seeds); seed++)
    for (const split of drawSplits(pairs, FEW_SHOT, 'subset', seed)) {
      if (wanted && !wanted.includes(split.group)) continue;
      records.push(await studyCriterion(study, seed, split.pool, split.test));
      process.stderr.write(`${JSON.stringify(records.at(-1))}\n`);
      if (values.out) fs.writeFileSync(values.out, JSON.stringify(records, null, 1));
    }
  console.log(report(records, decoder.spec.numLayers, decoder.spec.numHeads));
  await decoder.dispose();
}

await main();
