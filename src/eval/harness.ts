/**
 * The evaluation harness: per seed, draw the few-shot pool (per subset or global), never test on it nor on a
 * pair sharing a pool pair's prompt, prepare each method on the pool, score every test pair, and append each
 * result to items.jsonl as it lands — which is also what makes an interrupted run resumable. Results are
 * aggregated from items.jsonl at the end.
 */
import fs from 'node:fs';
import path from 'node:path';
import { createHash } from 'node:crypto';
import type { Decoder } from '../model/decoder.js';
import { promptIdentity, type Example, type PairExample } from '../data/examples.js';
import { Rng } from '../util/rng.js';
import { DEFAULT_PASSES_PER_DEMO_SET } from '../arm/means.js';
import { isPoolDataError, METHODS, type MethodOptions, type PreparedMethod } from './methods.js';
import { aggregate, type Results } from './aggregate.js';
import { pairOutcome, type RunRecord, type SplitNotes } from './records.js';
import { renderHtml, renderMarkdown } from './report.js';

export type { RunRecord, SplitNotes } from './records.js';

export interface EvalOptions {
  methods: string[];
  fewShot: number;
  seeds: number;
  /** Base seed: run s uses seed + s. */
  seed: number;
  pool: 'subset' | 'global';
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
}

/** `heldOut`: pairs in neither pool nor test because a pool pair has their prompt. */
export interface Split {
  group: string;
  pool: PairExample[];
  test: PairExample[];
  heldOut: number;
}

/** Below this many test pairs a subset's accuracy is too noisy to read much into; the run warns about it. */
export const MIN_TEST_PAIRS = 10;

/**
 * The pool/test split for one seed. Per subset (default): `fewShot` pairs drawn from each subset; global: from
 * the whole set. Pairs are drawn by prompt: the prompts are shuffled and their pairs go to the pool in that
 * order, so no test pair shares its prompt with a pool pair. When the pool fills part-way through a prompt's
 * pairs, the rest of that prompt's pairs are held out (`heldOut`), neither pool nor test. With one pair per
 * prompt this is a plain shuffle. A group with no pair left for testing is dropped. Deterministic in (seed, group).
 */
export function drawSplits(
  pairs: PairExample[],
  fewShot: number,
  mode: 'subset' | 'global',
  seed: number,
  poolCandidate?: (p: PairExample) => boolean,
): Split[] {
  const groups = new Map<string, PairExample[]>();
  for (const p of pairs) {
    const g = mode === 'global' ? 'all' : (p.subset ?? 'all');
    if (!groups.has(g)) groups.set(g, []);
    groups.get(g)!.push(p);
  }
  const splits: Split[] = [];
  for (const [group, members] of groups) {
    // With a fixed split the pool comes from the designated few-shot pairs and the test set is the rest.
    const candidates = poolCandidate ? members.filter(poolCandidate) : members;
    const byPrompt = new Map<string, PairExample[]>();
    for (const p of candidates) {
      const k = promptKey(p);
      if (!byPrompt.has(k)) byPrompt.set(k, []);
      byPrompt.get(k)!.push(p);
    }
    const groupSeed = parseInt(createHash('sha256').update(`${seed}:${group}`).digest('hex').slice(0, 8), 16);
    const order = new Rng(groupSeed).shuffle([...byPrompt.values()]);
    const pool: PairExample[] = [],
      test: PairExample[] = [];
    let heldOut = 0;
    for (const siblings of order) {
      if (pool.length >= fewShot) {
        if (!poolCandidate) test.push(...siblings);
        continue;
      }
      const room = fewShot - pool.length;
      pool.push(...siblings.slice(0, room));
      if (!poolCandidate) heldOut += Math.max(0, siblings.length - room);
    }
    if (poolCandidate) {
      const poolPrompts = new Set(pool.map(promptKey));
      for (const p of members) {
        if (poolCandidate(p)) continue;
        if (poolPrompts.has(promptKey(p))) heldOut++;
        else test.push(p);
      }
    }
    if (test.length) splits.push({ group, pool, test, heldOut });
  }
  return splits;
}

/** Pairs with the same prompt (text and images) are siblings: they never straddle the pool and the test set. */
const promptKey = (p: PairExample) => promptIdentity(p);

/**
 * Exact duplicate pairs (same prompt text, chosen and rejected) after the first are left out: a duplicate would
 * count twice, or sit in both pool and test. Duplicates are looked for within the group a pool is drawn from
 * (a subset, or the whole set with a global pool): the same pair in two subsets is two subsets' data, and each
 * subset's pool serves only its own test pairs.
 */
export function dropDuplicatePairs(
  pairs: PairExample[],
  mode: 'subset' | 'global' = 'global',
): { pairs: PairExample[]; dropped: PairExample[] } {
  const seen = new Set<string>();
  const kept: PairExample[] = [],
    dropped: PairExample[] = [];
  for (const p of pairs) {
    // A multi-response row's comparisons are its benchmark's cells, equal texts or not (RM-Bench repeats a
    // response across styles in 63 rows): they are never each other's duplicates, nor another row's.
    const k = p.cell
      ? JSON.stringify(['cell', p.cell.row, p.cell.chosen, p.cell.rejected])
      : JSON.stringify([mode === 'global' ? '' : (p.subset ?? 'all'), promptKey(p), p.chosen, p.rejected]);
    if (seen.has(k)) dropped.push(p);
    else {
      seen.add(k);
      kept.push(p);
    }
  }
  return { pairs: kept, dropped };
}

/** The seeds a run draws: one when nothing in it depends on the draw. */
export function runSeeds(opts: Pick<EvalOptions, 'fewShot' | 'seeds' | 'seed' | 'methods'>): number[] {
  const count = opts.fewShot === 0 && !opts.methods.includes('sample-vote') ? 1 : opts.seeds;
  return Array.from({ length: count }, (_, s) => opts.seed + s);
}

export function splitNotes(
  pairs: PairExample[],
  fewShot: number,
  mode: 'subset' | 'global',
  seeds: number[],
  minTestPairs = MIN_TEST_PAIRS,
  poolCandidate?: (p: PairExample) => boolean,
): SplitNotes {
  const rows = new Map<string, number>(),
    groupRows = new Map<string, number>();
  for (const p of pairs) {
    rows.set(p.subset ?? 'all', (rows.get(p.subset ?? 'all') ?? 0) + 1);
    const g = mode === 'global' ? 'all' : (p.subset ?? 'all');
    groupRows.set(g, (groupRows.get(g) ?? 0) + 1);
  }
  const fewestTest = new Map([...rows.keys()].map((s) => [s, Infinity]));
  const dropped = new Map<string, number[]>();
  let promptSiblingsHeldOut = 0;
  for (const seed of seeds) {
    const splits = drawSplits(pairs, fewShot, mode, seed, poolCandidate);
    promptSiblingsHeldOut += splits.reduce((a, s) => a + s.heldOut, 0);
    const tested = new Map<string, number>();
    for (const split of splits)
      for (const p of split.test) tested.set(p.subset ?? 'all', (tested.get(p.subset ?? 'all') ?? 0) + 1);
    for (const s of rows.keys()) fewestTest.set(s, Math.min(fewestTest.get(s)!, tested.get(s) ?? 0));
    const kept = new Set(splits.map((s) => s.group));
    for (const g of groupRows.keys()) if (!kept.has(g)) dropped.set(g, [...(dropped.get(g) ?? []), seed]);
  }
  const droppedGroups = [...dropped]
    .map(([group, s]) => ({ group, rows: groupRows.get(group)!, seeds: s }))
    .sort((a, b) => a.group.localeCompare(b.group));
  // In per-subset mode a dropped group is a subset already listed as dropped; do not list it twice.
  const droppedSubsets = new Set(mode === 'subset' ? droppedGroups.map((d) => d.group) : []);
  const smallSubsets = [...fewestTest]
    .filter(([s, n]) => n < minTestPairs && !droppedSubsets.has(s))
    .map(([subset, testPairs]) => ({ subset, rows: rows.get(subset)!, testPairs }))
    .sort((a, b) => a.subset.localeCompare(b.subset));
  return { minTestPairs, smallSubsets, droppedGroups, promptSiblingsHeldOut };
}

export function readRecords(file: string): RunRecord[] {
  if (!fs.existsSync(file)) return [];
  const lines = fs.readFileSync(file, 'utf8').split('\n');
  const out: RunRecord[] = [];
  lines.forEach((l, i) => {
    if (!l.trim()) return;
    try {
      // JSON has no NaN: unscorable scores were written as null and must come back as NaN, not 0.
      out.push(
        JSON.parse(l, (k, v) => (v === null && (k === 'chosen' || k === 'rejected' || k === 'margin') ? NaN : v)),
      );
    } catch {
      // A line cut by a crash is the last one; anything else is real damage.
      if (i < lines.length - 2) throw new Error(`${file}:${i + 1}: not valid JSON; the run log is damaged`);
    }
  });
  return out;
}

/**
 * A run whose methods need no pool (zero-shot, token-prob, the length rules) draws none: a pool would only take
 * pairs away from the test set. With a pool method in the run, every method is tested on the same test pairs.
 */
export function effectiveOptions<T extends Pick<EvalOptions, 'methods' | 'fewShot'>>(opts: T): T {
  const needsPool = opts.methods.some((m) => METHODS[m]?.needsPool);
  return needsPool || opts.fewShot === 0 ? opts : { ...opts, fewShot: 0 };
}

/** Whether any of `methods` runs the model (the length rules do not). */
export const needsModel = (methods: string[]) => methods.some((m) => METHODS[m]?.needsModel !== false);

/**
 * `decoder` may be null when no method in the run needs the model (the length rules alone): then nothing is
 * loaded, and no model limit (context length) applies to any pair.
 */
export async function runEval(
  decoder: Decoder | null,
  examples: Example[],
  requested: EvalOptions,
): Promise<RunRecord[]> {
  const log = requested.log ?? (() => undefined);
  const unknown = requested.methods.filter((m) => !METHODS[m]);
  if (unknown.length)
    throw new Error(`--methods: unknown ${unknown.join(', ')}; known: ${Object.keys(METHODS).join(', ')}`);
  if (!decoder && needsModel(requested.methods))
    throw new Error(`${requested.methods.filter((m) => METHODS[m]!.needsModel !== false).join(', ')} need a model`);
  const tokensSoFar = () => decoder?.stats.tokens ?? 0;
  const opts = effectiveOptions(requested);
  if (opts.fewShot !== requested.fewShot)
    log(
      `note: ${requested.methods.join(', ')} need no few-shot pool: every pair is tested (--few-shot ${requested.fewShot} ignored)`,
    );
  if (opts.fewShot === 0) {
    const needPool = opts.methods.filter((m) => METHODS[m]!.needsPool);
    if (needPool.length)
      throw new Error(
        `--few-shot 0 leaves no pool for ${needPool.join(', ')}; only ${Object.values(METHODS)
          .filter((m) => !m.needsPool)
          .map((m) => m.name)
          .join(', ')} run without one`,
      );
  }
  const allPairs = examples.filter((e): e is PairExample => e.kind === 'pair');
  if (allPairs.length < examples.length)
    log(`note: ${examples.length - allPairs.length} scalar rows left out (the harness compares pairs)`);
  if (!allPairs.length) throw new Error('the dataset holds no pairs {prompt, chosen, rejected}');
  const { pairs, dropped: duplicates } = dropDuplicatePairs(allPairs, opts.pool);
  if (duplicates.length)
    log(
      `note: ${duplicates.length} exact duplicate pairs left out (same prompt, chosen and rejected as an earlier row${opts.pool === 'subset' ? ' of their subset' : ''}): ${duplicates
        .slice(0, 5)
        .map((p) => p.id)
        .join(', ')}${duplicates.length > 5 ? ', …' : ''}`,
    );

  fs.mkdirSync(opts.outputDir, { recursive: true });
  const itemsFile = path.join(opts.outputDir, 'items.jsonl');
  const manifestFile = path.join(opts.outputDir, 'run.json');
  // Images enter the dataset's identity by content: a picture redrawn under the same name is another dataset,
  // and a resumed run must not mix scores of the old and the new pixels.
  const imageSha = new Map<string, string>();
  const imageIdentity = (file: string) => {
    let sha = imageSha.get(file);
    if (sha === undefined) {
      try {
        sha = createHash('sha256').update(fs.readFileSync(file)).digest('hex');
      } catch (e) {
        throw new Error(`${file}: cannot read image (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
      }
      imageSha.set(file, sha);
    }
    return sha;
  };
  const manifest = {
    // The tokenizer, chat template and processor files decide the prompts' ids: an edit there is another model.
    model: decoder?.info.weightsFingerprint ?? null,
    promptFiles: decoder?.info.promptFiles ?? null,
    dataset: createHash('sha256')
      .update(
        JSON.stringify(
          pairs.map((p) =>
            p.images?.length
              ? [p.id, p.prompt, p.chosen, p.rejected, p.images.map(imageIdentity)]
              : [p.id, p.prompt, p.chosen, p.rejected],
          ),
        ),
      )
      .digest('hex'),
    fewShot: opts.fewShot,
    seed: opts.seed,
    pool: opts.pool,
    method: { ...opts.method, onFitProgress: undefined },
    ...(opts.poolCandidate
      ? {
          fixedPool: createHash('sha256')
            .update(JSON.stringify(pairs.filter(opts.poolCandidate).map((p) => p.id)))
            .digest('hex'),
        }
      : {}),
    ...(opts.poolFrom
      ? {
          poolSource: createHash('sha256')
            .update(
              JSON.stringify(
                pairs.map((p) => {
                  const q = opts.poolFrom!(p);
                  return [q.id, q.prompt, q.chosen, q.rejected];
                }),
              ),
            )
            .digest('hex'),
        }
      : {}),
    // Runs logged before splits kept prompt siblings apart and dropped duplicates drew other test sets: not resumable.
    splits: 'prompt-groups, duplicates dropped',
  };
  if (fs.existsSync(manifestFile)) {
    const old = JSON.parse(fs.readFileSync(manifestFile, 'utf8'));
    if (JSON.stringify(old) !== JSON.stringify(manifest)) {
      throw new Error(
        `${opts.outputDir} holds a run with another model (weights, tokenizer or processor files), dataset or options; use another --output-dir (or delete it)`,
      );
    }
  } else {
    fs.writeFileSync(manifestFile, JSON.stringify(manifest, null, 2));
  }
  const records = readRecords(itemsFile);
  // A crash can leave half a line at the end: drop it, or the next append would glue onto it.
  if (
    fs.existsSync(itemsFile) &&
    !fs.readFileSync(itemsFile, 'utf8').endsWith('\n') &&
    fs.statSync(itemsFile).size > 0
  ) {
    fs.writeFileSync(itemsFile, records.map((r) => JSON.stringify(r)).join('\n') + (records.length ? '\n' : ''));
  }
  const done = new Set(records.filter((r) => r.type === 'pair').map((r) => `${r.method}|${r.seed}|${r.id}`));
  const skipped = new Set(records.filter((r) => r.type === 'skipped').map((r) => `${r.method}|${r.seed}|${r.group}`));
  if (done.size)
    log(
      `resuming: ${done.size} pair results already in ${itemsFile}${skipped.size ? `; ${skipped.size} (method, ${opts.pool === 'global' ? 'pool' : 'subset'}, seed) left out before stay left out` : ''}`,
    );
  const append = (rs: RunRecord[]) => {
    if (rs.length) fs.appendFileSync(itemsFile, rs.map((r) => JSON.stringify(r)).join('\n') + '\n');
    records.push(...rs);
  };

  // ARM first: random-heads matches its head count.
  const order = [...opts.methods].sort((a, b) => Number(b === 'arm') - Number(a === 'arm'));
  const seeds = runSeeds(opts);
  if (seeds.length < opts.seeds) log('note: --few-shot 0 with deterministic methods: one seed is enough');
  const notes = splitNotes(pairs, opts.fewShot, opts.pool, seeds, undefined, opts.poolCandidate);
  for (const d of notes.droppedGroups) {
    log(
      `warning: ${opts.pool === 'global' ? 'the dataset' : `subset ${d.group}`} has ${d.rows} pairs, all taken by the --few-shot ${opts.fewShot} pool in seed${d.seeds.length > 1 ? 's' : ''} ${d.seeds.join(', ')}: nothing of it is tested there`,
    );
  }
  if (notes.promptSiblingsHeldOut)
    log(
      `note: ${notes.promptSiblingsHeldOut} test pairs (over all seeds) held out because a pool pair has the same prompt`,
    );
  for (const s of notes.smallSubsets)
    log(
      `warning: subset ${s.subset} has ${s.rows} pairs, leaving ${s.testPairs} test pairs after the pool (fewer than ${notes.minTestPairs}): its accuracy is noisy`,
    );
  if (seeds.every((seed) => drawSplits(pairs, opts.fewShot, opts.pool, seed, opts.poolCandidate).length === 0)) {
    throw new Error(
      `--few-shot ${opts.fewShot} leaves no pair to test: every ${opts.pool === 'global' ? 'pair' : "subset's pairs"} went into the pool; lower --few-shot`,
    );
  }
  const where = (group: string, seed: number) =>
    `${opts.pool === 'global' ? 'global pool' : `subset ${group}`}, seed ${seed}`;
  for (const seed of seeds) {
    const splits = drawSplits(pairs, opts.fewShot, opts.pool, seed, opts.poolCandidate);
    for (const name of order) {
      const method = METHODS[name]!;
      for (const split of splits) {
        if (skipped.has(`${name}|${seed}|${split.group}`)) continue;
        const todo = split.test.filter((p) => !done.has(`${name}|${seed}|${p.id}`));
        if (!todo.length) continue;
        const t0 = performance.now(),
          tok0 = tokensSoFar();
        const armPrepared = records.find(
          (r) => r.type === 'prepared' && r.method === 'arm' && r.seed === seed && r.group === split.group,
        );
        const armHeadCount =
          armPrepared && armPrepared.type === 'prepared' && armPrepared.heads ? armPrepared.heads.length : undefined;
        opts.onProgress?.(`${name} seed ${seed} ${split.group}: preparing`, 0, todo.length);
        // The fit's warnings (e.g. items left out as too long) explain a failure on this pool, so they go into the
        // reason.
        const warnings: string[] = [];
        const fitWarn = opts.method.fit.warn;
        const options: MethodOptions = {
          ...opts.method,
          fit: {
            ...opts.method.fit,
            warn: (m) => {
              warnings.push(m);
              fitWarn?.(m);
            },
          },
        };
        let prepared: PreparedMethod;
        try {
          prepared = await method.prepare({
            decoder: decoder!,
            pool: opts.poolFrom ? split.pool.map(opts.poolFrom) : split.pool,
            seed,
            options,
            armHeadCount,
          });
        } catch (e) {
          if (!isPoolDataError(e))
            throw new Error(
              `${name}, ${where(split.group, seed)}: preparing failed: ${e instanceof Error ? e.message : String(e)}`,
              { cause: e },
            );
          const reason = [e.message, ...warnings].join('; ');
          log(`skipped ${name} on ${where(split.group, seed)} (${split.test.length} test pairs not scored): ${reason}`);
          append([
            {
              type: 'skipped',
              method: name,
              seed,
              group: split.group,
              reason,
              testPairs: split.test.length,
              poolIds: split.pool.map((p) => p.id),
              seconds: (performance.now() - t0) / 1000,
              tokens: tokensSoFar() - tok0,
            },
          ]);
          skipped.add(`${name}|${seed}|${split.group}`);
          continue;
        }
        // A split resumed half-way was prepared before: keep its first record (heads, cost) only.
        const preparedBefore = records.some(
          (r) => r.type === 'prepared' && r.method === name && r.seed === seed && r.group === split.group,
        );
        if (!preparedBefore)
          append([
            {
              type: 'prepared',
              method: name,
              seed,
              group: split.group,
              heads: prepared.heads ?? null,
              seconds: (performance.now() - t0) / 1000,
              tokens: tokensSoFar() - tok0,
              poolIds: split.pool.map((p) => p.id),
            },
          ]);
        for (let start = 0; start < todo.length; start += opts.chunkSize) {
          const chunk = todo.slice(start, start + opts.chunkSize);
          const c0 = performance.now(),
            ct0 = tokensSoFar();
          const scored = await prepared.scorePairs(chunk).catch((e: unknown) => {
            throw new Error(
              `${name}, ${where(split.group, seed)}: scoring failed: ${e instanceof Error ? e.message : String(e)}`,
              { cause: e },
            );
          });
          append([
            ...chunk.map((p, i): RunRecord => {
              const r = scored[i]!;
              const { correct, tied } = pairOutcome(r);
              const base = {
                type: 'pair' as const,
                method: name,
                seed,
                group: split.group,
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
              };
              return { ...base, ...optional, chosen: r.chosen, rejected: r.rejected };
            }),
            {
              type: 'cost',
              method: name,
              seed,
              group: split.group,
              seconds: (performance.now() - c0) / 1000,
              tokens: tokensSoFar() - ct0,
              pairs: chunk.length,
            },
          ]);
          chunk.forEach((p) => done.add(`${name}|${seed}|${p.id}`));
          opts.onProgress?.(
            `${name} seed ${seed} ${split.group}`,
            Math.min(start + opts.chunkSize, todo.length),
            todo.length,
          );
        }
      }
    }
  }
  return records;
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
      `arm (and its ablations) learns from all ${items}: means over ${passes} passes of ${fit.shots ?? 4} in-context demonstrations each${draws}, and head selection on every item; at test time it reads one question with no demonstrations.`,
    );
  }
  if (opts.methods.some((m) => m === 'icl-judge' || m === 'sample-vote')) {
    notes.push(
      `icl-judge and sample-vote see ${opts.method.iclShots} of those ${items} in context (balanced Yes/No), the same ones for every test pair of a seed: a smaller budget than arm's, paid again at every query.`,
    );
  }
  if (opts.methods.includes('sav-vote')) notes.push(`sav-vote fits its class means on all ${items}.`);
  return notes;
}

/** Runs the evaluation, then writes results.json, report.md and report.html into the output folder. */
export async function evaluate(
  decoder: Decoder | null,
  examples: Example[],
  requested: EvalOptions & { dataset: string; modelId: string },
): Promise<Results> {
  const records = await runEval(decoder, examples, requested);
  return writeResults(decoder, examples, requested, records);
}

/**
 * Aggregates a finished run's records and writes results.json, report.md and report.html (and drops the run log unless
 * saveAll).
 */
export function writeResults(
  decoder: Decoder | null,
  examples: Example[],
  requested: EvalOptions & { dataset: string; modelId: string },
  records: RunRecord[],
): Results {
  const opts = effectiveOptions(requested);
  const { pairs, dropped } = dropDuplicatePairs(
    examples.filter((e): e is PairExample => e.kind === 'pair'),
    opts.pool,
  );
  const results = aggregate(records, {
    dataset: opts.dataset,
    model: opts.modelId,
    shape: { layers: decoder?.spec.numLayers ?? 0, heads: decoder?.spec.numHeads ?? 0 },
    fewShot: opts.fewShot,
    pool: opts.pool,
    splits: {
      ...splitNotes(pairs, opts.fewShot, opts.pool, runSeeds(opts), undefined, opts.poolCandidate),
      duplicatePairs: dropped.length,
    },
    budget: budgetNotes(opts),
  });
  const write = (name: string, text: string) => {
    const file = path.join(opts.outputDir, name);
    fs.writeFileSync(`${file}.tmp`, text);
    fs.renameSync(`${file}.tmp`, file);
  };
  write(
    'results.json',
    JSON.stringify(results, (_k, v) => (typeof v === 'number' && !Number.isFinite(v) ? null : v), 2),
  );
  write('report.md', renderMarkdown(results));
  write('report.html', renderHtml(results));
  if (!opts.saveAll) {
    fs.rmSync(path.join(opts.outputDir, 'items.jsonl'), { force: true });
    fs.rmSync(path.join(opts.outputDir, 'run.json'), { force: true });
  }
  return results;
}
