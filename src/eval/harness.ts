/**
 * The evaluation harness: per seed, draw the few-shot pool (per subset or global), never test on it, prepare
 * each method on the pool, score every test pair, and append each result to items.jsonl as it lands — which is
 * also what makes an interrupted run resumable. Results are aggregated from items.jsonl at the end.
 */
import fs from 'node:fs';
import path from 'node:path';
import { createHash } from 'node:crypto';
import type { Decoder } from '../model/decoder.js';
import type { Example, PairExample } from '../data/examples.js';
import { Rng } from '../util/rng.js';
import { isPoolDataError, METHODS, type MethodOptions, type PairRecord, type PreparedMethod } from './methods.js';
import { aggregate, type Results } from './aggregate.js';
import { renderHtml, renderMarkdown } from './report.js';

export interface EvalOptions {
  methods: string[];
  fewShot: number;
  seeds: number;
  /** Base seed: run s uses seed + s. */
  seed: number;
  pool: 'subset' | 'global';
  outputDir: string;
  /** Keep items.jsonl (every pair's scores per method and seed) after a finished run; it is always written while running, as the resume log. */
  saveAll: boolean;
  /** Pairs scored between two appends to items.jsonl. */
  chunkSize: number;
  method: MethodOptions;
  onProgress?: (what: string, done: number, total: number) => void;
  log?: (line: string) => void;
}

/** One line of items.jsonl. */
export type RunRecord =
  | ({ type: 'pair'; method: string; seed: number; group: string; id: string; subset: string; correct: boolean; margin: number } & PairRecord)
  | { type: 'prepared'; method: string; seed: number; group: string; heads: [number, number][] | null; seconds: number; tokens: number; poolIds: string[] }
  | { type: 'cost'; method: string; seed: number; group: string; seconds: number; tokens: number; pairs: number }
  /** The method could not be prepared on this pool for a data reason: its test pairs were not scored. Kept so a resumed run does not retry it. */
  | { type: 'skipped'; method: string; seed: number; group: string; reason: string; testPairs: number; poolIds: string[]; seconds: number; tokens: number };

export interface Split { group: string; pool: PairExample[]; test: PairExample[] }

/** Below this many test pairs a subset's accuracy is too noisy to read much into; the run warns about it. */
export const MIN_TEST_PAIRS = 10;

/** What the pool draws leave to test, per subset and group, so thin or empty ones are reported rather than silently dropped. */
export interface SplitNotes {
  minTestPairs: number;
  /** Subsets left with fewer than `minTestPairs` test pairs in some seed (`testPairs` is the fewest over seeds). */
  smallSubsets: { subset: string; rows: number; testPairs: number }[];
  /** Groups whose every pair went into the pool in some seed: nothing of them is tested in those seeds. */
  droppedGroups: { group: string; rows: number; seeds: number[] }[];
}

/**
 * The pool/test split for one seed. Per subset (default): `fewShot` pairs drawn from each subset; global: from
 * the whole set. A group with no pair left for testing is dropped. Deterministic in (seed, group).
 */
export function drawSplits(pairs: PairExample[], fewShot: number, mode: 'subset' | 'global', seed: number): Split[] {
  const groups = new Map<string, PairExample[]>();
  for (const p of pairs) {
    const g = mode === 'global' ? 'all' : p.subset ?? 'all';
    if (!groups.has(g)) groups.set(g, []);
    groups.get(g)!.push(p);
  }
  const splits: Split[] = [];
  for (const [group, members] of groups) {
    const groupSeed = parseInt(createHash('sha256').update(`${seed}:${group}`).digest('hex').slice(0, 8), 16);
    const shuffled = new Rng(groupSeed).shuffle(members);
    const pool = shuffled.slice(0, fewShot), test = shuffled.slice(fewShot);
    if (test.length) splits.push({ group, pool, test });
  }
  return splits;
}

/** The seeds a run draws: one when nothing in it depends on the draw. */
export function runSeeds(opts: Pick<EvalOptions, 'fewShot' | 'seeds' | 'seed' | 'methods'>): number[] {
  const count = opts.fewShot === 0 && !opts.methods.includes('sample-vote') ? 1 : opts.seeds;
  return Array.from({ length: count }, (_, s) => opts.seed + s);
}

export function splitNotes(pairs: PairExample[], fewShot: number, mode: 'subset' | 'global', seeds: number[], minTestPairs = MIN_TEST_PAIRS): SplitNotes {
  const rows = new Map<string, number>(), groupRows = new Map<string, number>();
  for (const p of pairs) {
    rows.set(p.subset ?? 'all', (rows.get(p.subset ?? 'all') ?? 0) + 1);
    const g = mode === 'global' ? 'all' : p.subset ?? 'all';
    groupRows.set(g, (groupRows.get(g) ?? 0) + 1);
  }
  const fewestTest = new Map([...rows.keys()].map((s) => [s, Infinity]));
  const dropped = new Map<string, number[]>();
  for (const seed of seeds) {
    const splits = drawSplits(pairs, fewShot, mode, seed);
    const tested = new Map<string, number>();
    for (const split of splits) for (const p of split.test) tested.set(p.subset ?? 'all', (tested.get(p.subset ?? 'all') ?? 0) + 1);
    for (const s of rows.keys()) fewestTest.set(s, Math.min(fewestTest.get(s)!, tested.get(s) ?? 0));
    const kept = new Set(splits.map((s) => s.group));
    for (const g of groupRows.keys()) if (!kept.has(g)) dropped.set(g, [...(dropped.get(g) ?? []), seed]);
  }
  const droppedGroups = [...dropped].map(([group, s]) => ({ group, rows: groupRows.get(group)!, seeds: s })).sort((a, b) => a.group.localeCompare(b.group));
  // In per-subset mode a dropped group is a subset already listed as dropped; do not list it twice.
  const droppedSubsets = new Set(mode === 'subset' ? droppedGroups.map((d) => d.group) : []);
  const smallSubsets = [...fewestTest].filter(([s, n]) => n < minTestPairs && !droppedSubsets.has(s))
    .map(([subset, testPairs]) => ({ subset, rows: rows.get(subset)!, testPairs })).sort((a, b) => a.subset.localeCompare(b.subset));
  return { minTestPairs, smallSubsets, droppedGroups };
}

export function readRecords(file: string): RunRecord[] {
  if (!fs.existsSync(file)) return [];
  const lines = fs.readFileSync(file, 'utf8').split('\n');
  const out: RunRecord[] = [];
  lines.forEach((l, i) => {
    if (!l.trim()) return;
    try {
      // JSON has no NaN: unscorable scores were written as null and must come back as NaN, not 0.
      out.push(JSON.parse(l, (k, v) => (v === null && (k === 'chosen' || k === 'rejected' || k === 'margin') ? NaN : v)));
    } catch {
      // A line cut by a crash is the last one; anything else is real damage.
      if (i < lines.length - 2) throw new Error(`${file}:${i + 1}: not valid JSON; the run log is damaged`);
    }
  });
  return out;
}

export async function runEval(decoder: Decoder, examples: Example[], opts: EvalOptions): Promise<RunRecord[]> {
  const log = opts.log ?? (() => undefined);
  const unknown = opts.methods.filter((m) => !METHODS[m]);
  if (unknown.length) throw new Error(`--methods: unknown ${unknown.join(', ')}; known: ${Object.keys(METHODS).join(', ')}`);
  if (opts.fewShot === 0) {
    const needPool = opts.methods.filter((m) => METHODS[m]!.needsPool);
    if (needPool.length) throw new Error(`--few-shot 0 leaves no pool for ${needPool.join(', ')}; only ${Object.values(METHODS).filter((m) => !m.needsPool).map((m) => m.name).join(', ')} run without one`);
  }
  const pairs = examples.filter((e): e is PairExample => e.kind === 'pair');
  if (pairs.length < examples.length) log(`note: ${examples.length - pairs.length} scalar rows left out (the harness compares pairs)`);
  if (!pairs.length) throw new Error('the dataset holds no pairs {prompt, chosen, rejected}');

  fs.mkdirSync(opts.outputDir, { recursive: true });
  const itemsFile = path.join(opts.outputDir, 'items.jsonl');
  const manifestFile = path.join(opts.outputDir, 'run.json');
  const manifest = {
    model: decoder.info.weightsFingerprint, dataset: createHash('sha256').update(JSON.stringify(pairs.map((p) => [p.id, p.prompt, p.chosen, p.rejected]))).digest('hex'),
    fewShot: opts.fewShot, seed: opts.seed, pool: opts.pool, method: { ...opts.method, onFitProgress: undefined },
  };
  if (fs.existsSync(manifestFile)) {
    const old = JSON.parse(fs.readFileSync(manifestFile, 'utf8'));
    if (JSON.stringify(old) !== JSON.stringify(manifest)) {
      throw new Error(`${opts.outputDir} holds a run with another model, dataset or options; use another --output-dir (or delete it)`);
    }
  } else {
    fs.writeFileSync(manifestFile, JSON.stringify(manifest, null, 2));
  }
  const records = readRecords(itemsFile);
  // A crash can leave half a line at the end: drop it, or the next append would glue onto it.
  if (fs.existsSync(itemsFile) && !fs.readFileSync(itemsFile, 'utf8').endsWith('\n') && fs.statSync(itemsFile).size > 0) {
    fs.writeFileSync(itemsFile, records.map((r) => JSON.stringify(r)).join('\n') + (records.length ? '\n' : ''));
  }
  const done = new Set(records.filter((r) => r.type === 'pair').map((r) => `${r.method}|${r.seed}|${r.id}`));
  const skipped = new Set(records.filter((r) => r.type === 'skipped').map((r) => `${r.method}|${r.seed}|${r.group}`));
  if (done.size) log(`resuming: ${done.size} pair results already in ${itemsFile}${skipped.size ? `; ${skipped.size} (method, ${opts.pool === 'global' ? 'pool' : 'subset'}, seed) left out before stay left out` : ''}`);
  const append = (rs: RunRecord[]) => { if (rs.length) fs.appendFileSync(itemsFile, rs.map((r) => JSON.stringify(r)).join('\n') + '\n'); records.push(...rs); };

  // ARM first: random-heads matches its head count.
  const order = [...opts.methods].sort((a, b) => Number(b === 'arm') - Number(a === 'arm'));
  const seeds = runSeeds(opts);
  if (seeds.length < opts.seeds) log('note: --few-shot 0 with deterministic methods: one seed is enough');
  const notes = splitNotes(pairs, opts.fewShot, opts.pool, seeds);
  for (const d of notes.droppedGroups) {
    log(`warning: ${opts.pool === 'global' ? 'the dataset' : `subset ${d.group}`} has ${d.rows} pairs, all taken by the --few-shot ${opts.fewShot} pool in seed${d.seeds.length > 1 ? 's' : ''} ${d.seeds.join(', ')}: nothing of it is tested there`);
  }
  for (const s of notes.smallSubsets) log(`warning: subset ${s.subset} has ${s.rows} pairs, leaving ${s.testPairs} test pairs after the pool (fewer than ${notes.minTestPairs}): its accuracy is noisy`);
  if (seeds.every((seed) => drawSplits(pairs, opts.fewShot, opts.pool, seed).length === 0)) {
    throw new Error(`--few-shot ${opts.fewShot} leaves no pair to test: every ${opts.pool === 'global' ? 'pair' : 'subset\'s pairs'} went into the pool; lower --few-shot`);
  }
  const where = (group: string, seed: number) => `${opts.pool === 'global' ? 'global pool' : `subset ${group}`}, seed ${seed}`;
  for (const seed of seeds) {
    const splits = drawSplits(pairs, opts.fewShot, opts.pool, seed);
    for (const name of order) {
      const method = METHODS[name]!;
      for (const split of splits) {
        if (skipped.has(`${name}|${seed}|${split.group}`)) continue;
        const todo = split.test.filter((p) => !done.has(`${name}|${seed}|${p.id}`));
        if (!todo.length) continue;
        const t0 = performance.now(), tok0 = decoder.stats.tokens;
        const armPrepared = records.find((r) => r.type === 'prepared' && r.method === 'arm' && r.seed === seed && r.group === split.group);
        const armHeadCount = armPrepared && armPrepared.type === 'prepared' && armPrepared.heads ? armPrepared.heads.length : undefined;
        opts.onProgress?.(`${name} seed ${seed} ${split.group}: preparing`, 0, todo.length);
        // The fit's warnings (e.g. items left out as too long) explain a failure on this pool, so they go into the reason.
        const warnings: string[] = [];
        const fitWarn = opts.method.fit.warn;
        const options: MethodOptions = { ...opts.method, fit: { ...opts.method.fit, warn: (m) => { warnings.push(m); fitWarn?.(m); } } };
        let prepared: PreparedMethod;
        try {
          prepared = await method.prepare({ decoder, pool: split.pool, seed, options, armHeadCount });
        } catch (e) {
          if (!isPoolDataError(e)) throw new Error(`${name}, ${where(split.group, seed)}: preparing failed: ${e instanceof Error ? e.message : String(e)}`, { cause: e });
          const reason = [e.message, ...warnings].join('; ');
          log(`skipped ${name} on ${where(split.group, seed)} (${split.test.length} test pairs not scored): ${reason}`);
          append([{ type: 'skipped', method: name, seed, group: split.group, reason, testPairs: split.test.length, poolIds: split.pool.map((p) => p.id), seconds: (performance.now() - t0) / 1000, tokens: decoder.stats.tokens - tok0 }]);
          skipped.add(`${name}|${seed}|${split.group}`);
          continue;
        }
        // A split resumed half-way was prepared before: keep its first record (heads, cost) only.
        const preparedBefore = records.some((r) => r.type === 'prepared' && r.method === name && r.seed === seed && r.group === split.group);
        if (!preparedBefore) append([{ type: 'prepared', method: name, seed, group: split.group, heads: prepared.heads ?? null, seconds: (performance.now() - t0) / 1000, tokens: decoder.stats.tokens - tok0, poolIds: split.pool.map((p) => p.id) }]);
        for (let start = 0; start < todo.length; start += opts.chunkSize) {
          const chunk = todo.slice(start, start + opts.chunkSize);
          const c0 = performance.now(), ct0 = decoder.stats.tokens;
          const scored = await prepared.scorePairs(chunk).catch((e: unknown) => {
            throw new Error(`${name}, ${where(split.group, seed)}: scoring failed: ${e instanceof Error ? e.message : String(e)}`, { cause: e });
          });
          append([
            ...chunk.map((p, i): RunRecord => {
              const r = scored[i]!;
              const base = { type: 'pair' as const, method: name, seed, group: split.group, id: p.id, subset: p.subset ?? 'all', correct: r.chosen > r.rejected, margin: r.chosen - r.rejected, truncated: r.truncated, tooLong: r.tooLong };
              const optional = {
                ...(r.swapConsistent === undefined ? {} : { swapConsistent: r.swapConsistent }),
                ...(r.verdictCorrect === undefined ? {} : { verdictCorrect: r.verdictCorrect }),
              };
              return { ...base, ...optional, chosen: r.chosen, rejected: r.rejected };
            }),
            { type: 'cost', method: name, seed, group: split.group, seconds: (performance.now() - c0) / 1000, tokens: decoder.stats.tokens - ct0, pairs: chunk.length },
          ]);
          chunk.forEach((p) => done.add(`${name}|${seed}|${p.id}`));
          opts.onProgress?.(`${name} seed ${seed} ${split.group}`, Math.min(start + opts.chunkSize, todo.length), todo.length);
        }
      }
    }
  }
  return records;
}

/** Runs the evaluation, then writes results.json, report.md and report.html into the output folder. */
export async function evaluate(decoder: Decoder, examples: Example[], opts: EvalOptions & { dataset: string; modelId: string }): Promise<Results> {
  const records = await runEval(decoder, examples, opts);
  const pairs = examples.filter((e): e is PairExample => e.kind === 'pair');
  const results = aggregate(records, {
    dataset: opts.dataset, model: opts.modelId, shape: { layers: decoder.spec.numLayers, heads: decoder.spec.numHeads }, fewShot: opts.fewShot, pool: opts.pool,
    splits: splitNotes(pairs, opts.fewShot, opts.pool, runSeeds(opts)),
  });
  const write = (name: string, text: string) => {
    const file = path.join(opts.outputDir, name);
    fs.writeFileSync(`${file}.tmp`, text);
    fs.renameSync(`${file}.tmp`, file);
  };
  write('results.json', JSON.stringify(results, (_k, v) => (typeof v === 'number' && !Number.isFinite(v) ? null : v), 2));
  write('report.md', renderMarkdown(results));
  write('report.html', renderHtml(results));
  if (!opts.saveAll) {
    fs.rmSync(path.join(opts.outputDir, 'items.jsonl'), { force: true });
    fs.rmSync(path.join(opts.outputDir, 'run.json'), { force: true });
  }
  return results;
}
