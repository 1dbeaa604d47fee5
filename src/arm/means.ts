/**
 * Mean head activations (DESIGN step 1): T passes, each k demonstrations with their answers followed by
 * one query without its answer; the last-token activation of every head, averaged over passes.
 */
import type { Decoder } from '../model/decoder.js';
import { Rng } from '../util/rng.js';
import { render, type JudgeItem, type TemplateSpec } from './template.js';
import { forEachLastLogits, type Sequence } from '../model/batch.js';
import { toSequence, type JudgeImages } from './images.js';

/**
 * The fit's default g (passes per demo draw). With g = 5, 100 passes use 20 demo draws, each run once as a
 * shared prefix for its 5 queries: mean extraction ~4× cheaper (bench:fit). On icl-tiny (8 criteria, 3 seeds,
 * 2016 test pairs) ARM accuracy was 98.4 ± 0.6 at g = 1, 98.8 ± 0.4 at g = 5 and 98.8 ± 0.6 at g = 10:
 * the mean over 20 draws is not measurably worse than over 100. g = 1 (MTV's independent draws) stays an option.
 */
export const DEFAULT_PASSES_PER_DEMO_SET = 5;

export interface MeanOptions {
  passes: number; // T (100); with shots = 0, one pass per example
  shots: number; // k (4)
  seed: number;
  batchSize: number;
  maxLength: number;
  /**
   * Passes that share one draw of demonstrations (absent: 1, every pass draws its own, as MTV; the fit passes
   * DEFAULT_PASSES_PER_DEMO_SET). With g > 1 the
   * demonstrations are drawn once per g passes and their tokens run once for all g queries (shared prefix),
   * which makes mean extraction several times cheaper at the price of fewer distinct demo sets.
   */
  passesPerDemoSet?: number;
  /**
   * Each item's group (see planPasses): an item is never a demonstration for a query of its own group. Absent,
   * every item is its own group.
   */
  groupOf?: readonly number[];
  /** Image rows: the decoder's image handling (see images.ts); null or absent for text. */
  images?: JudgeImages | null;
  /** Keep every pass's activations ([T, L, H, d]) for denoising. */
  keepPasses?: boolean;
  onProgress?: (done: number, total: number) => void;
  /** Polled after every batch: when it returns true, extraction throws MeansInterrupted with the passes done. */
  shouldStop?: () => boolean;
  /** Per-pass activations from an interrupted run (pass index → [L·H·d]); those passes are not run again. */
  donePasses?: ReadonlyMap<number, Float32Array>;
}

export interface MeanResult {
  mu: Float32Array; // [L, H, d]
  passes: Float32Array[] | null; // T × [L, H, d] when kept
  truncatedPasses: number;
  /** What --max-length cut from the passes (truncatedPasses of them), for the fit's warning. */
  cuts: PassCuts;
  /** For each pass: the query index and its demo indices (provenance, and the hand-computed test). */
  plan: { query: number; demos: number[] }[];
}

/**
 * What --max-length cut from mean-extraction passes. A cut pass shows the model less than the examples hold: its
 * prompts are cut from their start, or, when that is not enough, whole demonstrations are dropped (render).
 */
export interface PassCuts {
  /** Passes cut at all (prompts, demonstrations or both). */
  passes: number;
  /** Passes with prompts cut from their start, and the tokens cut from them in all (at least: see render). */
  promptCutPasses: number;
  truncatedTokens: number;
  /** Passes that dropped demonstrations, and how many demonstrations they dropped of how many planned. */
  dropPasses: number;
  droppedDemos: number;
  plannedDemos: number;
  /**
   * Tokens the longest cut pass needs whole, with the demonstrations it planned; null when that is over
   * CUT_MEASURE_FACTOR × --max-length (not measured further: a huge prompt costs what a budget-sized one does).
   * "Longest" by the sum of its items' lengths alone; the CUT_PASSES_MEASURED longest so are rendered whole.
   */
  longestNeeded: number | null;
  /** Demonstrations the longest cut pass planned. */
  longestShots: number;
}

/** How far past --max-length a cut pass's whole length is measured, and how many of the longest cut passes are. */
const CUT_MEASURE_FACTOR = 8;
const CUT_PASSES_MEASURED = 4;

/** Mean extraction stopped on request; `done` holds every pass finished so far (resumed ones included). */
export class MeansInterrupted extends Error {
  override name = 'MeansInterrupted';
  constructor(
    readonly done: Map<number, Float32Array>,
    readonly total: number,
  ) {
    super(`mean extraction interrupted after ${done.size} of ${total} passes`);
  }
}

/**
 * The seeded pass plan: which query and which demos each pass uses. `groupOf[i]` names item i's group (the
 * source pair and every item sharing its prompt; default: each item alone): a query is never shown an item of
 * its own group as a demonstration, since its sibling (the other response of the same pair, or the same pair in
 * the other order) would give its answer away. A pass therefore has k = min(shots, nItems − its group's size)
 * demos. With `perDemoSet` = g > 1, passes come in blocks of g that share one demo draw: a block first reserves
 * one group at random (so some query is always left), draws k = min(shots, nItems − that group's size) demos
 * outside it, then takes up to g distinct queries among the items of groups no demo belongs to.
 */
export function planPasses(
  nItems: number,
  passes: number,
  shots: number,
  seed: number,
  perDemoSet = 1,
  groupOf?: readonly number[],
): { query: number; demos: number[] }[] {
  if (shots === 0) return Array.from({ length: nItems }, (_, q) => ({ query: q, demos: [] }));
  if (groupOf && groupOf.length !== nItems) throw new Error(`planPasses: ${groupOf.length} groups for ${nItems} items`);
  const group = (i: number) => groupOf?.[i] ?? i;
  const members = new Map<number, number[]>();
  for (let i = 0; i < nItems; i++) members.set(group(i), [...(members.get(group(i)) ?? []), i]);
  const rng = new Rng(seed);
  if (perDemoSet <= 1) {
    return Array.from({ length: passes }, () => {
      const query = rng.int(nItems);
      const own = members.get(group(query))!;
      return { query, demos: rng.sample(nItems, Math.min(shots, nItems - own.length), new Set(own)) };
    });
  }
  const groups = [...members.values()];
  const plan: { query: number; demos: number[] }[] = [];
  while (plan.length < passes) {
    const reserved = groups[rng.int(groups.length)]!;
    const demos = rng.sample(nItems, Math.min(shots, nItems - reserved.length), new Set(reserved));
    const demoGroups = new Set(demos.map(group));
    const eligible = Array.from({ length: nItems }, (_, i) => i).filter((i) => !demoGroups.has(group(i)));
    const g = Math.min(perDemoSet, passes - plan.length, eligible.length);
    for (const j of rng.sample(eligible.length, g)) plan.push({ query: eligible[j]!, demos });
  }
  return plan;
}

/**
 * The batches mean extraction runs, as pass indices. Independent passes are batched only with passes of the
 * same token length: a left-padded row's activations differ from the unpadded ones in the last bits (the
 * attention reductions change length), so with padding the means, and through REINFORCE the selected heads,
 * would depend on --batch-size. Equal-length rows need no padding and give the same bits in any batch.
 * Passes sharing a demo draw run as one unit (prefix once, then their queries), whole per batch when the
 * draw's g passes fit one batch.
 */
function meanBatches(
  lengths: number[],
  plan: { demos: number[] }[],
  opts: { batchSize: number; sharedDemos: boolean },
): number[][] {
  const { batchSize, sharedDemos } = opts;
  const units = new Map<string, number[]>();
  plan.forEach((p, i) => {
    const key = sharedDemos ? `demos ${p.demos.join(',')}` : `length ${lengths[i]!}`;
    units.set(key, [...(units.get(key) ?? []), i]);
  });
  const ordered = [...units.values()].sort((a, b) => lengths[a[0]!]! - lengths[b[0]!]! || a[0]! - b[0]!);
  if (sharedDemos) return ordered;
  return ordered.flatMap((unit) =>
    Array.from({ length: Math.ceil(unit.length / batchSize) }, (_, j) =>
      unit.slice(j * batchSize, (j + 1) * batchSize),
    ),
  );
}

/** An interrupted run's finished passes (pass index → [L·H·d]), checked against this plan. */
function resumedPasses(
  donePasses: ReadonlyMap<number, Float32Array> | undefined,
  passes: number,
  width: number,
): Map<number, Float32Array> {
  const done = new Map<number, Float32Array>();
  for (const [i, row] of donePasses ?? []) {
    if (!(Number.isInteger(i) && i >= 0 && i < passes) || row.length !== width)
      throw new Error(`extractMeans: resumed pass ${i} does not fit this plan (${passes} passes of ${width} values)`);
    done.set(i, row);
  }
  return done;
}

export async function extractMeans(
  decoder: Decoder,
  template: TemplateSpec,
  pool: JudgeItem[],
  opts: MeanOptions,
): Promise<MeanResult> {
  const { numLayers: L, numHeads: H, headDim: d } = decoder.spec;
  const width = L * H * d;
  const plan = planPasses(pool.length, opts.passes, opts.shots, opts.seed, opts.passesPerDemoSet, opts.groupOf);
  let truncatedPasses = 0;
  const images = opts.images ?? null;
  // Rendered up front (token ids and lengths); image rows are placed per batch, just before it runs, so a
  // fit holds one batch's vision rows (beyond the rows cache), and a resumed fit places none for done passes.
  const rendered = plan.map((p) =>
    render(
      decoder.tokenizer,
      template,
      p.demos.map((i) => pool[i]!),
      pool[p.query]!,
      opts.maxLength,
      images,
    ),
  );
  const cuts = passCuts(decoder, template, pool, plan, rendered, opts);
  const lengths: number[] = [];
  for (const pass of rendered) {
    if (pass.truncatedTokens > 0 || pass.droppedDemos > 0) truncatedPasses++;
    lengths.push(
      pass.images.length && images ? (await images.expandedIds(pass.ids, pass.images)).length : pass.ids.length,
    );
  }
  const done = resumedPasses(opts.donePasses, plan.length, width);
  // Zero-shot passes have no demonstrations to share: every pass is its own unit (length-batched as usual).
  const sharedDemos = (opts.passesPerDemoSet ?? 1) > 1 && opts.shots > 0;
  for (const batch of meanBatches(lengths, plan, { batchSize: opts.batchSize, sharedDemos })) {
    const todo = batch.filter((i) => !done.has(i));
    if (!todo.length) continue;
    if (opts.shouldStop?.()) throw new MeansInterrupted(done, plan.length);
    const seqs: Sequence[] = [];
    for (const i of todo) seqs.push(await toSequence(images, rendered[i]!));
    await forEachLastLogits(
      decoder,
      seqs,
      {
        batchSize: opts.batchSize,
        sharePrefix: false,
        groups: sharedDemos ? [todo.map((_, j) => j)] : undefined,
      },
      (j, { heads }) => {
        done.set(todo[j]!, heads.slice());
      },
    );
    opts.onProgress?.(done.size, plan.length);
  }
  // Sum in plan order, so the result does not depend on how (or in how many runs) passes were batched.
  const perPass = plan.map((_, i) => done.get(i)!);
  const sum = new Float64Array(width);
  for (const row of perPass) for (let i = 0; i < width; i++) sum[i]! += row[i]!;
  return {
    mu: Float32Array.from(sum, (s) => s / plan.length),
    passes: opts.keepPasses ? perPass : null,
    truncatedPasses,
    cuts,
    plan,
  };
}

/** What --max-length cut from the rendered passes, with the whole length of the longest cut one. */
function passCuts(
  decoder: Decoder,
  template: TemplateSpec,
  pool: JudgeItem[],
  plan: { query: number; demos: number[] }[],
  rendered: ReturnType<typeof render>[],
  opts: MeanOptions,
): PassCuts {
  const cut = rendered.map((r, i) => ({ r, i })).filter(({ r }) => r.truncatedTokens > 0 || r.droppedDemos > 0);
  const cuts: PassCuts = {
    passes: cut.length,
    promptCutPasses: cut.filter(({ r }) => r.truncatedTokens > 0).length,
    truncatedTokens: cut.reduce((n, { r }) => n + r.truncatedTokens, 0),
    dropPasses: cut.filter(({ r }) => r.droppedDemos > 0).length,
    droppedDemos: cut.reduce((n, { r }) => n + r.droppedDemos, 0),
    plannedDemos: cut.reduce((n, { i }) => n + plan[i]!.demos.length, 0),
    longestNeeded: 0,
    longestShots: 0,
  };
  // Rendering every cut pass whole would double the rendering of a fit whose passes are all cut: rank them by an
  // estimate (the sum of their items' lengths alone) and render whole only the longest few.
  const images = opts.images ?? null;
  const cap = CUT_MEASURE_FACTOR * opts.maxLength;
  const whole = (demos: number[], query: number) => {
    const r = render(
      decoder.tokenizer,
      template,
      demos.map((j) => pool[j]!),
      pool[query]!,
      cap,
      images,
    );
    const length = r.ids.length + r.images.reduce((n, f) => n + (images ? images.tokens(f) - 1 : 0), 0);
    return r.truncatedTokens > 0 || r.droppedDemos > 0 ? Infinity : length;
  };
  const alone = new Map<number, number>();
  const aloneLength = (j: number) => alone.get(j) ?? alone.set(j, whole([], j)).get(j)!;
  const estimate = ({ demos, query }: { demos: number[]; query: number }) =>
    demos.reduce((n, j) => n + aloneLength(j), aloneLength(query));
  const ranked = cut.map(({ i }) => ({ i, estimate: estimate(plan[i]!) })).sort((a, b) => b.estimate - a.estimate);
  for (const { i } of ranked.slice(0, CUT_PASSES_MEASURED)) {
    const length = whole(plan[i]!.demos, plan[i]!.query);
    if (length > (cuts.longestNeeded ?? Infinity)) {
      cuts.longestNeeded = Number.isFinite(length) ? length : null;
      cuts.longestShots = plan[i]!.demos.length;
    }
    if (cuts.longestNeeded === null) break;
  }
  return cuts;
}

/**
 * The fit's warning about passes --max-length cut (null when none was): what was cut, and the flag and value that
 * would keep them whole (--max-length, when the model's positions allow it) or make them fit (fewer --shots).
 */
export function passCutWarning(
  cuts: PassCuts,
  totalPasses: number,
  limits: { maxLength: number; maxPositions: number; shots: number },
): string | null {
  if (cuts.passes === 0) return null;
  const { maxLength, maxPositions } = limits;
  const what = [
    cuts.promptCutPasses
      ? `${cuts.promptCutPasses} had prompts cut from their start (at least ${cuts.truncatedTokens} tokens in all)`
      : '',
    cuts.dropPasses
      ? `${cuts.dropPasses} dropped demonstrations (${cuts.droppedDemos} of the ${cuts.plannedDemos} they planned)`
      : '',
  ].filter(Boolean);
  const needed = cuts.longestNeeded;
  const longest =
    needed === null
      ? `the longest needs over ${CUT_MEASURE_FACTOR * maxLength} tokens whole`
      : `the longest needs ${needed} tokens whole`;
  const raise = needed !== null && needed <= maxPositions;
  // Fewer demonstrations: the shots whose longest pass would fit (--max-length as it is, or the model's positions
  // when raising it is no way out), from that pass's tokens per judge item.
  const limit = raise ? maxLength : maxPositions;
  const perItem = (needed ?? CUT_MEASURE_FACTOR * maxLength) / (cuts.longestShots + 1);
  const shots = Math.max(0, Math.min(limits.shots - 1, Math.floor(limit / perItem) - 1));
  const fewer =
    limits.shots > 0
      ? `fewer demonstrations per pass (--shots ${shots}${shots === 0 ? ': no demonstrations' : ''})`
      : '';
  const advice = raise
    ? `To keep them whole: --max-length ${needed}` + (fewer ? `, or ${fewer}` : '')
    : `The model reads at most ${maxPositions} positions: use ${fewer || 'shorter examples'}` +
      (maxLength < maxPositions ? ` with --max-length ${maxPositions}` : '') +
      (fewer ? ', or shorter examples' : '');
  return (
    `${cuts.passes} of ${totalPasses} mean-extraction passes did not fit --max-length ${maxLength}: ` +
    `${what.join(' and ')}; ${longest}. Cut passes show the model less than the examples hold. ${advice}`
  );
}
