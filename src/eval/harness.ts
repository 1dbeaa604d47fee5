/**
 * The evaluation harness: per seed, draw the few-shot pool (per subset or global), never test on it nor on a
 * pair sharing a pool pair's prompt, prepare each method on the pool, score every test pair, and append each
 * result to items.jsonl as it lands — which is also what makes an interrupted run resumable. Results are
 * aggregated from items.jsonl at the end. The splits are splits.ts's, the run log run-log.ts's.
 */
import fs from 'node:fs';
import path from 'node:path';
import type { Decoder } from '../model/decoder.js';
import type { Example, PairExample } from '../data/examples.js';
import { DEFAULT_PASSES_PER_DEMO_SET } from '../arm/means.js';
import { isPoolDataError, METHODS, type MethodOptions, type PreparedMethod } from './methods.js';
import { aggregate, type AggregateMeta, type Results } from './aggregate.js';
import { pairOutcome, type PairRecord, type RunRecord } from './records.js';
import { renderHtml, renderMarkdown } from './report.js';
import { drawSplits, dropDuplicatePairs, splitNotes, type PoolMode, type Split } from './splits.js';
import { flipPoolLabels } from './noise.js';
import { provenanceOf } from './provenance.js';
import { writeFileAtomic } from '../util/atomic-write.js';
import { groupKey, openRunLog, pairKey, runManifest, type RunLog } from './run-log.js';
import { evalShardUnits, type EvalShardUnits, type Shard } from './shard-units.js';

export interface EvalOptions {
  methods: string[];
  fewShot: number;
  seeds: number;
  /** Base seed: run s uses seed + s. */
  seed: number;
  pool: PoolMode;
  outputDir: string;
  /**
   * Keep items.jsonl (every pair's scores per method and seed) after a finished run; it is always written while
   * running, as the resume log.
   */
  saveAll: boolean;
  /** Pairs scored between two appends to items.jsonl. */
  chunkSize: number;
  method: MethodOptions;
  onProgress?: (what: string, done: number, total: number) => void;
  log?: (line: string) => void;
  /**
   * The version of a pool pair the methods learn from, when it is not the tested one: a bias probe's flipped run
   * learns from the biased split's pairs (the same ids and prompts), so both splits are judged by one fit.
   */
  poolFrom?: (pair: PairExample) => PairExample;
  /**
   * A dataset's own few-shot/test split (PreferenceHack: 80 few-shot, 920 test): pools are drawn only from pairs
   * for which this is true, and only the others are tested.
   */
  poolCandidate?: (pair: PairExample) => boolean;
  /**
   * The fraction of each pool whose labels are flipped before any method is prepared on it (noise.ts); 0 or
   * absent: none. Test pairs are never flipped.
   */
  poolLabelNoise?: number;
  /**
   * The pool size the pool/test split is drawn for, when larger than `fewShot`: the test set is what a pool of
   * this size leaves, and the methods learn from the first `fewShot` pairs of that pool. A few-shot sweep runs each
   * k with the largest k here, so every k is tested on the same pairs and the smaller pools nest in the larger.
   */
  splitFewShot?: number;
  /**
   * Run one shard of the work only (shard-units.ts): the test pairs of its units, each method prepared on the pools
   * of the seeds it holds; eval-shards.ts writes and merges shards.
   */
  shard?: Shard;
}

/** The pool size the run's splits are drawn for (EvalOptions.splitFewShot). */
const drawnFewShot = (opts: Pick<EvalOptions, 'fewShot' | 'splitFewShot'>) =>
  Math.max(opts.fewShot, opts.splitFewShot ?? 0);

/** The seeds a run draws: one when nothing in it depends on the draw. */
function runSeeds(opts: Pick<EvalOptions, 'fewShot' | 'seeds' | 'seed' | 'methods'>): number[] {
  const count = opts.fewShot === 0 && !opts.methods.includes('sample-vote') ? 1 : opts.seeds;
  return Array.from({ length: count }, (_, s) => opts.seed + s);
}

/**
 * A run whose methods need no pool (zero-shot, token-prob, the length rules) draws none: a pool would only take
 * pairs away from the test set. With a pool method in the run, every method is tested on the same test pairs.
 */
function effectiveOptions<T extends Pick<EvalOptions, 'methods' | 'fewShot' | 'splitFewShot'>>(opts: T): T {
  const needsPool = opts.methods.some((m) => METHODS[m]?.needsPool);
  return needsPool || opts.fewShot === 0 ? opts : { ...opts, fewShot: 0, splitFewShot: undefined };
}

/** Whether any of `methods` runs the model (the length rules do not). */
export const needsModel = (methods: string[]) => methods.some((m) => METHODS[m]?.needsModel !== false);

/** A run in progress: the model (null when no method needs one), its options, where it reports, its log. */
interface EvalRun {
  decoder: Decoder | null;
  opts: EvalOptions;
  log: (line: string) => void;
  runLog: RunLog;
  /** The shard this process runs, when it runs one. */
  shard?: EvalShardUnits;
}

/**
 * One method on one seed's split of one pool group. `split.pool` is what the methods learn from (the first
 * `fewShot` of the drawn pool, labels flipped where the run adds noise); `flipped`: the ids whose labels were.
 */
interface MethodOnSplit {
  name: string;
  seed: number;
  split: Split;
  flipped: string[];
}

const tokensSoFar = (run: EvalRun) => run.decoder?.stats.tokens ?? 0;
const secondsSince = (t0: number) => (performance.now() - t0) / 1000;
const where = (run: EvalRun, at: MethodOnSplit) =>
  `${run.opts.pool === 'global' ? 'global pool' : `subset ${at.split.group}`}, seed ${at.seed}`;
const errorText = (e: unknown) => (e instanceof Error ? e.message : String(e));

/**
 * `decoder` may be null when no method in the run needs the model (the length rules alone): then nothing is
 * loaded, and no model limit (context length) applies to any pair.
 */
export async function runEval(
  decoder: Decoder | null,
  examples: Example[],
  requested: EvalOptions,
): Promise<RunRecord[]> {
  return (await runEvalPlanned(decoder, examples, requested)).records;
}

/** A finished run's records, what its run log is of, the methods in the order run, and its shard's units if any. */
export interface EvalRunOutcome {
  records: RunRecord[];
  manifest: object;
  order: string[];
  seeds: number[];
  shard?: EvalShardUnits;
}

/** runEval, also returning what the run covered (for a shard, its units). */
export async function runEvalPlanned(
  decoder: Decoder | null,
  examples: Example[],
  requested: EvalOptions,
): Promise<EvalRunOutcome> {
  const log = requested.log ?? (() => undefined);
  const opts = checkedOptions(decoder, requested, log);
  const pairs = evalPairs(examples, opts.pool, log);
  const manifest = runManifest(decoder, pairs, opts);
  const runLog = openRunLog(opts.outputDir, () => manifest);
  if (runLog.done.size) {
    const left = `(method, ${opts.pool === 'global' ? 'pool' : 'subset'}, seed) left out before stay left out`;
    log(
      `resuming: ${runLog.done.size} pair results already in ${runLog.file}` +
        (runLog.skipped.size ? `; ${runLog.skipped.size} ${left}` : ''),
    );
  }
  // ARM first: random-heads matches its head count.
  const order = [...opts.methods].sort((a, b) => Number(b === 'arm') - Number(a === 'arm'));
  const seeds = runSeeds(opts);
  if (seeds.length < opts.seeds) log('note: --few-shot 0 with deterministic methods: one seed is enough');
  reportSplits(pairs, opts, seeds, log);
  const shard = opts.shard
    ? evalShardUnits(pairs, { ...opts, fewShot: drawnFewShot(opts) }, seeds, opts.chunkSize, opts.shard)
    : undefined;
  if (shard && shard.start === shard.end)
    log(
      `note: shard ${shard.shard.index} of ${shard.shard.count} has no test pairs: the run has ${shard.total} ` +
        `units (${opts.chunkSize} test pairs of a seed's subset each), fewer than the shards`,
    );
  const run: EvalRun = { decoder, opts, log, runLog, shard };
  for (const seed of seeds) await runSeed(run, pairs, seed, order);
  return { records: runLog.records, manifest, order, seeds, shard };
}

/**
 * One seed: its pools and test sets drawn, each pool cut to `fewShot` and its labels flipped where the run adds
 * noise (once, so every method learns from the same pool), then every method (in `order`) on every split.
 */
async function runSeed(run: EvalRun, pairs: PairExample[], seed: number, order: string[]): Promise<void> {
  const { opts } = run;
  const splits = drawSplits(pairs, drawnFewShot(opts), opts.pool, seed, opts.poolCandidate).map((drawn) => {
    const pool = drawn.pool.slice(0, opts.fewShot);
    const noisy = flipPoolLabels(pool.map(opts.poolFrom ?? ((p) => p)), opts.poolLabelNoise ?? 0, seed, drawn.group);
    return { split: { ...drawn, pool }, learnFrom: noisy.pool, flipped: noisy.flipped };
  });
  for (const name of order)
    for (const { split, learnFrom, flipped } of splits)
      await runMethodOnSplit(run, { name, seed, split: { ...split, pool: learnFrom }, flipped });
}

/**
 * The options the run goes by: methods known, a model when one is needed, no pool drawn when no method needs one,
 * and a pool when one does. Throws (before any work) on what cannot run.
 */
function checkedOptions(decoder: Decoder | null, requested: EvalOptions, log: (line: string) => void): EvalOptions {
  const unknown = requested.methods.filter((m) => !METHODS[m]);
  if (unknown.length)
    throw new Error(`--methods: unknown ${unknown.join(', ')}; known: ${Object.keys(METHODS).join(', ')}`);
  if (!decoder && needsModel(requested.methods))
    throw new Error(`${requested.methods.filter((m) => METHODS[m]!.needsModel !== false).join(', ')} need a model`);
  const noise = requested.poolLabelNoise ?? 0;
  if (!(noise >= 0 && noise <= 1)) throw new Error(`--pool-label-noise must be in [0, 1], got ${noise}`);
  const opts = effectiveOptions(requested);
  if (noise > 0 && opts.fewShot === 0)
    throw new Error(
      `--pool-label-noise ${noise}: no method in the run learns from a pool, so there is nothing to flip`,
    );
  if (opts.fewShot !== requested.fewShot)
    log(
      `note: ${requested.methods.join(', ')} need no few-shot pool: ` +
        `every pair is tested (--few-shot ${requested.fewShot} ignored)`,
    );
  if (opts.fewShot === 0) {
    const needPool = opts.methods.filter((m) => METHODS[m]!.needsPool);
    const poolFree = Object.values(METHODS)
      .filter((m) => !m.needsPool)
      .map((m) => m.name);
    if (needPool.length)
      throw new Error(
        `--few-shot 0 leaves no pool for ${needPool.join(', ')}; only ${poolFree.join(', ')} run without one`,
      );
  }
  return opts;
}

/** The dataset's pairs the harness compares: scalar rows and exact duplicates left out (and said so). */
function evalPairs(examples: Example[], pool: PoolMode, log: (line: string) => void): PairExample[] {
  const allPairs = examples.filter((e): e is PairExample => e.kind === 'pair');
  if (allPairs.length < examples.length)
    log(`note: ${examples.length - allPairs.length} scalar rows left out (the harness compares pairs)`);
  if (!allPairs.length) throw new Error('the dataset holds no pairs {prompt, chosen, rejected}');
  const { pairs, dropped: duplicates } = dropDuplicatePairs(allPairs, pool);
  if (duplicates.length) {
    const ids = duplicates.slice(0, 5).map((p) => p.id);
    log(
      `note: ${duplicates.length} exact duplicate pairs left out ` +
        `(same prompt, chosen and rejected as an earlier row${pool === 'subset' ? ' of their subset' : ''}): ` +
        `${ids.join(', ')}${duplicates.length > 5 ? ', …' : ''}`,
    );
  }
  return pairs;
}

/**
 * Warns about groups the pool takes whole, held-out prompt siblings and thin subsets; throws when nothing is tested.
 */
function reportSplits(pairs: PairExample[], opts: EvalOptions, seeds: number[], log: (line: string) => void): void {
  const notes = splitNotes(pairs, drawnFewShot(opts), opts.pool, seeds, opts.poolCandidate);
  for (const d of notes.droppedGroups) {
    log(
      `warning: ${opts.pool === 'global' ? 'the dataset' : `subset ${d.group}`} has ${d.rows} pairs, ` +
        `all taken by the --few-shot ${opts.fewShot} pool in seed${d.seeds.length > 1 ? 's' : ''} ` +
        `${d.seeds.join(', ')}: nothing of it is tested there`,
    );
  }
  if (notes.promptSiblingsHeldOut)
    log(
      `note: ${notes.promptSiblingsHeldOut} test pairs (over all seeds) ` +
        'held out because a pool pair has the same prompt',
    );
  for (const s of notes.smallSubsets)
    log(
      `warning: subset ${s.subset} has ${s.rows} pairs, leaving ${s.testPairs} test pairs after the pool ` +
        `(fewer than ${notes.minTestPairs}): its accuracy is noisy`,
    );
  if (seeds.every((seed) => drawSplits(pairs, drawnFewShot(opts), opts.pool, seed, opts.poolCandidate).length === 0)) {
    throw new Error(
      `--few-shot ${opts.fewShot} leaves no pair to test: ` +
        `every ${opts.pool === 'global' ? 'pair' : "subset's pairs"} went into the pool; lower --few-shot`,
    );
  }
}

/** Prepares one method on one split's pool and scores the test pairs the log does not hold yet. */
async function runMethodOnSplit(run: EvalRun, at: MethodOnSplit): Promise<void> {
  const { runLog } = run;
  if (runLog.skipped.has(groupKey(at.name, at.seed, at.split.group))) return;
  const todo = at.split.test.filter(
    (p) => !runLog.done.has(pairKey(at.name, at.seed, p.id)) && (run.shard?.has(at.seed, p.id) ?? true),
  );
  if (!todo.length) return;
  const prepared = await prepareOnPool(run, at, todo.length);
  if (prepared) await scoreTestPairs(run, at, prepared, todo);
}

/**
 * Prepares the method on the split's pool and logs a `prepared` record (once per split, also when resumed). A pool
 * the method cannot use for a data reason is logged as `skipped`, with the reason, and gives null; any other
 * failure stops the run.
 */
async function prepareOnPool(run: EvalRun, at: MethodOnSplit, todo: number): Promise<PreparedMethod | null> {
  const { opts, runLog } = run;
  const { name, seed, split } = at;
  const t0 = performance.now(),
    tok0 = tokensSoFar(run);
  opts.onProgress?.(`${name} seed ${seed} ${split.group}: preparing`, 0, todo);
  // The fit's warnings (e.g. items left out as too long) explain a failure on this pool, so they go into the
  // reason.
  const { options, warnings } = collectingFitWarnings(opts.method);
  let prepared: PreparedMethod;
  try {
    prepared = await METHODS[name]!.prepare({
      decoder: run.decoder!,
      pool: split.pool,
      seed,
      options,
      armHeadCount: armHeadCount(runLog.records, seed, split.group),
    });
  } catch (e) {
    if (!isPoolDataError(e))
      throw new Error(`${name}, ${where(run, at)}: preparing failed: ${errorText(e)}`, { cause: e });
    const reason = [e.message, ...warnings].join('; ');
    run.log(`skipped ${name} on ${where(run, at)} (${split.test.length} test pairs not scored): ${reason}`);
    const cost = { seconds: secondsSince(t0), tokens: tokensSoFar(run) - tok0 };
    const poolIds = split.pool.map((p) => p.id);
    runLog.append([
      {
        type: 'skipped',
        method: name,
        seed,
        group: split.group,
        reason,
        testPairs: split.test.length,
        poolIds,
        ...cost,
      },
    ]);
    runLog.skipped.add(groupKey(name, seed, split.group));
    return null;
  }
  // A split resumed half-way was prepared before: keep its first record (heads, cost) only.
  const preparedBefore = runLog.records.some(
    (r) => r.type === 'prepared' && r.method === name && r.seed === seed && r.group === split.group,
  );
  if (!preparedBefore)
    runLog.append([
      {
        type: 'prepared',
        method: name,
        seed,
        group: split.group,
        heads: prepared.heads ?? null,
        seconds: secondsSince(t0),
        tokens: tokensSoFar(run) - tok0,
        poolIds: split.pool.map((p) => p.id),
        ...(opts.poolLabelNoise ? { flipped: at.flipped } : {}),
        // Shards prepare a method on a seed's pool each: merging checks that they all fitted the same thing.
        ...(opts.shard && prepared.fingerprint ? { fingerprint: prepared.fingerprint } : {}),
      },
    ]);
  return prepared;
}

/** The method options with the fit's warnings also collected (still passed on to the caller's `warn`). */
function collectingFitWarnings(method: MethodOptions): { options: MethodOptions; warnings: string[] } {
  const warnings: string[] = [];
  const fitWarn = method.fit.warn;
  const warn = (m: string) => {
    warnings.push(m);
    fitWarn?.(m);
  };
  return { options: { ...method, fit: { ...method.fit, warn } }, warnings };
}

/** How many heads the ARM chose on this seed's pool of this group, when it ran first (random-heads matches it). */
function armHeadCount(records: RunRecord[], seed: number, group: string): number | undefined {
  const armPrepared = records.find(
    (r) => r.type === 'prepared' && r.method === 'arm' && r.seed === seed && r.group === group,
  );
  return armPrepared && armPrepared.type === 'prepared' && armPrepared.heads ? armPrepared.heads.length : undefined;
}

/** Scores `todo` in chunks of `chunkSize`, appending each chunk's pair records and its cost as it lands. */
async function scoreTestPairs(
  run: EvalRun,
  at: MethodOnSplit,
  prepared: PreparedMethod,
  todo: PairExample[],
): Promise<void> {
  const { opts, runLog } = run;
  const { name, seed, split } = at;
  for (let start = 0; start < todo.length; start += opts.chunkSize) {
    const chunk = todo.slice(start, start + opts.chunkSize);
    const c0 = performance.now(),
      ct0 = tokensSoFar(run);
    const scored = await prepared.scorePairs(chunk).catch((e: unknown) => {
      throw new Error(`${name}, ${where(run, at)}: scoring failed: ${errorText(e)}`, { cause: e });
    });
    runLog.append([
      ...chunk.map((p, i) => pairRecord(at, p, scored[i]!)),
      {
        type: 'cost',
        method: name,
        seed,
        group: split.group,
        seconds: secondsSince(c0),
        tokens: tokensSoFar(run) - ct0,
        pairs: chunk.length,
      },
    ]);
    chunk.forEach((p) => runLog.done.add(pairKey(name, seed, p.id)));
    opts.onProgress?.(
      `${name} seed ${seed} ${split.group}`,
      Math.min(start + opts.chunkSize, todo.length),
      todo.length,
    );
  }
}

/** The items.jsonl record of one scored pair (its fields in a fixed order; optional ones only when present). */
function pairRecord(at: MethodOnSplit, p: PairExample, r: PairRecord): RunRecord {
  const { correct, tied } = pairOutcome(r);
  const base = {
    type: 'pair' as const,
    method: at.name,
    seed: at.seed,
    group: at.split.group,
    id: p.id,
    subset: p.subset ?? 'all',
    correct,
    tied,
    margin: r.chosen - r.rejected,
    truncated: r.truncated,
    tooLong: r.tooLong,
  };
  const optional = {
    ...(p.cell === undefined ? {} : { cell: p.cell }),
    ...(r.orders === undefined ? {} : { orders: r.orders }),
    ...(r.tieBreak === undefined ? {} : { tieBreak: r.tieBreak }),
    ...(r.swapConsistent === undefined ? {} : { swapConsistent: r.swapConsistent }),
    ...(r.verdictCorrect === undefined ? {} : { verdictCorrect: r.verdictCorrect }),
    ...(r.textTokens === undefined ? {} : { textTokens: r.textTokens, unknownTokens: r.unknownTokens }),
  };
  return { ...base, ...optional, chosen: r.chosen, rejected: r.rejected };
}

/** What each learning method is given, in words, so a reader can weigh the ICL judge against the ARM. */
export function budgetNotes(opts: Pick<EvalOptions, 'methods' | 'fewShot' | 'pool' | 'method'>): string[] {
  const per = opts.pool === 'global' ? 'per run' : 'per subset';
  const items = `${2 * opts.fewShot} judge items (${opts.fewShot} pairs ${per})`;
  const notes: string[] = [];
  const fit = opts.method.fit;
  if (opts.methods.some((m) => ['arm', 'mean-add', 'random-heads', 'all-heads'].includes(m))) {
    const passes = fit.passes ?? 100,
      g = fit.passesPerDemoSet ?? DEFAULT_PASSES_PER_DEMO_SET;
    const draws =
      g > 1 && (fit.shots ?? 4) > 0
        ? ` (${Math.ceil(passes / g)} demonstration draws, each shared by ${g} passes)`
        : '';
    notes.push(
      `arm (and its ablations) learns from all ${items}: means over ${passes} passes of ${fit.shots ?? 4} ` +
        `in-context demonstrations each${draws}, and head selection on every item; ` +
        'at test time it reads one question with no demonstrations.',
    );
  }
  if (opts.methods.some((m) => m === 'icl-judge' || m === 'sample-vote')) {
    notes.push(
      `icl-judge and sample-vote see ${opts.method.iclShots} of those ${items} in context (balanced Yes/No), ` +
        "the same ones for every test pair of a seed: a smaller budget than arm's, paid again at every query.",
    );
  }
  if (opts.methods.includes('sav-vote')) notes.push(`sav-vote fits its class means on all ${items}.`);
  return notes;
}

/**
 * An evaluation's options with what its reports name: the dataset's title, the model as given and, from the CLI,
 * the command line.
 */
export type ReportedEvalOptions = EvalOptions & { dataset: string; modelId: string; command?: string };

/** Runs the evaluation, then writes results.json, report.md and report.html into the output folder. */
export async function evaluate(
  decoder: Decoder | null,
  examples: Example[],
  requested: ReportedEvalOptions,
): Promise<Results> {
  const records = await runEval(decoder, examples, requested);
  return writeResults(decoder, examples, requested, records);
}

/**
 * Aggregates a finished run's records and writes results.json, report.md and report.html (and drops the run log
 * unless saveAll).
 */
export function writeResults(
  decoder: Decoder | null,
  examples: Example[],
  requested: ReportedEvalOptions,
  records: RunRecord[],
): Results {
  const opts = effectiveOptions(requested);
  const results = aggregate(records, resultsMeta(decoder, examples, requested));
  writeReports(opts.outputDir, results);
  if (!opts.saveAll) {
    fs.rmSync(path.join(opts.outputDir, 'items.jsonl'), { force: true });
    fs.rmSync(path.join(opts.outputDir, 'run.json'), { force: true });
  }
  return results;
}

/**
 * What the reports say about a run beside its records: dataset, model and its shape, pool, provenance, splits and
 * budget. A shard records it (eval-shards.ts), so that merging needs neither the model nor the dataset.
 */
export function resultsMeta(
  decoder: Decoder | null,
  examples: Example[],
  requested: ReportedEvalOptions,
): AggregateMeta {
  const opts = effectiveOptions(requested);
  const { pairs, dropped } = dropDuplicatePairs(
    examples.filter((e): e is PairExample => e.kind === 'pair'),
    opts.pool,
  );
  return {
    dataset: opts.dataset,
    model: opts.modelId,
    shape: { layers: decoder?.spec.numLayers ?? 0, heads: decoder?.spec.numHeads ?? 0 },
    fewShot: opts.fewShot,
    poolLabelNoise: opts.poolLabelNoise ?? 0,
    pool: opts.pool,
    provenance: provenanceOf(decoder, pairs, {
      command: opts.command,
      title: opts.dataset,
      modelId: opts.modelId,
      seeds: runSeeds(opts),
      method: opts.method,
    }),
    splits: {
      ...splitNotes(pairs, drawnFewShot(opts), opts.pool, runSeeds(opts), opts.poolCandidate),
      duplicatePairs: dropped.length,
    },
    budget: budgetNotes(opts),
  };
}

/** results.json, report.md and report.html of `results`: names and texts, rendered before any is written. */
export function renderedReports(results: Results): [string, string][] {
  return [
    ['results.json', JSON.stringify(results, (_k, v) => (typeof v === 'number' && !Number.isFinite(v) ? null : v), 2)],
    ['report.md', renderMarkdown(results)],
    ['report.html', renderHtml(results)],
  ];
}

/** Writes results.json, report.md and report.html into `outputDir`, each through a temporary file. */
function writeReports(outputDir: string, results: Results): void {
  for (const [name, text] of renderedReports(results)) writeFileAtomic(path.join(outputDir, name), text);
}
