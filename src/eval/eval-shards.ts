/**
 * `arm eval --shard i/n` and `arm merge --output-dir`: one shard of an evaluation runs the harness on its units
 * (shard-units.ts) in `<output-dir>/shard-<i>-of-<n>/` (run.json, items.jsonl: resumable as any run) and, when it
 * is done, writes shard.json there: what the run is of, its units, and what the reports need besides the records
 * (AggregateMeta), so that merging reads neither the model nor the dataset. Merging checks that the shards are one
 * run's, each once, each complete and agreeing on what they fitted, puts their records in the order one unsharded
 * run writes them, and writes the same results.json, report.md and report.html (and items.jsonl, run.json with
 * --save-all).
 */
import fs from 'node:fs';
import path from 'node:path';
import type { Decoder } from '../model/decoder.js';
import type { Example } from '../data/examples.js';
import { aggregate, type AggregateMeta, type Results } from './aggregate.js';
import { renderedReports, resultsMeta, runEvalPlanned, type ReportedEvalOptions } from './harness.js';
import { writeFileAtomic } from '../util/atomic-write.js';
import { readRecords } from './run-log.js';
import { packageVersion } from './provenance.js';
import type { RunRecord } from './records.js';
import { shardLabel, type EvalUnit, type Shard } from './shard-units.js';
import { jsonDifferences, shardSetProblems } from './shard-checks.js';
import { checkRange, readShardManifest, type FieldShape } from './shard-manifest.js';

/** Bumped when shard.json's layout changes: shards of other versions are not merged. */
const EVAL_SHARD_VERSION = 2; // 2: run.runtime
const SHARD_FILE = 'shard.json';
const SHARD_FOLDER = /^shard-(\d+)-of-(\d+)$/;

/** `<output-dir>/shard-<i>-of-<n>/shard.json`: a finished shard of an evaluation. */
export interface EvalShardManifest {
  what: 'arm eval shard';
  version: number;
  shard: Shard;
  /** What every shard of one run has alike; merging refuses shards whose `run` differs (the command aside). */
  run: {
    /** run.json's manifest without the shard: model, dataset, options. */
    manifest: object;
    /** The methods in the order they ran (arm first), the seeds, pairs per scoring chunk. */
    methods: string[];
    seeds: number[];
    chunkSize: number;
    /** Units and (seed, test pair)s of the whole run. */
    units: number;
    testPairs: number;
    saveAll: boolean;
    /**
     * The package version, and the device and effective onnxruntime thread count (null without a model): fits are
     * deterministic on one build, device and thread count only.
     */
    runtime: { armVersion: string; device: string | null; threads: number | null };
    /** What the reports need besides the records; provenance.command is the command without --shard. */
    meta: AggregateMeta;
  };
  /** This shard's units [start, end) of the run's, and their pairs. */
  units: { start: number; end: number; list: EvalUnit[] };
  /** Wall time of the shard's run, seconds. */
  seconds: number;
}

/**
 * Runs shard `requested.shard` of an evaluation in `requested.outputDir` (the shard's own folder) and writes its
 * shard.json when done; a shard.json left by an earlier run is removed first, so an unfinished shard never looks
 * finished.
 */
export async function evaluateShard(
  decoder: Decoder | null,
  examples: Example[],
  requested: ReportedEvalOptions & { shard: Shard },
): Promise<EvalShardManifest> {
  const t0 = performance.now();
  const file = path.join(requested.outputDir, SHARD_FILE);
  fs.rmSync(file, { force: true });
  const outcome = await runEvalPlanned(decoder, examples, requested);
  const units = outcome.shard!;
  const { shard: _shard, ...manifest } = outcome.manifest as { shard?: Shard };
  const shardManifest: EvalShardManifest = {
    what: 'arm eval shard',
    version: EVAL_SHARD_VERSION,
    shard: requested.shard,
    run: {
      manifest,
      methods: outcome.order,
      seeds: outcome.seeds,
      chunkSize: requested.chunkSize,
      units: units.total,
      testPairs: units.testPairs,
      saveAll: requested.saveAll,
      runtime: {
        armVersion: packageVersion(),
        device: decoder?.info.device ?? null,
        threads: decoder?.info.threads ?? null,
      },
      meta: resultsMeta(decoder, examples, requested),
    },
    units: { start: units.start, end: units.end, list: units.units },
    seconds: (performance.now() - t0) / 1000,
  };
  writeFileAtomic(file, `${JSON.stringify(shardManifest, null, 2)}\n`);
  return shardManifest;
}

/** A shard as merging reads it: its folder, manifest and records. */
interface ReadShard {
  dir: string;
  manifest: EvalShardManifest;
  records: RunRecord[];
}

/** What merging wrote. */
export interface MergedEval {
  results: Results;
  shards: number;
  files: string[];
}

/**
 * Merges the shards in `dirs` (default: every `shard-<i>-of-<n>` folder in `outputDir`) into `outputDir`: the files
 * one unsharded run writes. Throws, naming the shard and what is wrong, on a missing, duplicated or unfinished
 * shard, shards of another run (the differing fields named), and shards that fitted a method differently.
 */
export function mergeEvalShards(outputDir: string, dirs?: string[]): MergedEval {
  const shards = readShards(dirs ?? shardFolders(outputDir), outputDir);
  const first = shards[0]!;
  for (const s of shards.slice(1)) {
    const { meta: a, ...runA } = first.manifest.run;
    const { meta: b, ...runB } = s.manifest.run;
    const differs = [
      ...jsonDifferences(runA.manifest, runB.manifest),
      ...jsonDifferences({ ...runA, manifest: null }, { ...runB, manifest: null }),
      ...jsonDifferences(withoutCommand(a), withoutCommand(b), 'report.'),
    ];
    if (differs.length)
      throw new Error(
        `${path.join(s.dir, SHARD_FILE)} is a shard of another run than ${path.join(first.dir, SHARD_FILE)}: ` +
          `different ${differs.join('; ')}; run every shard with the same command (only --shard differs)`,
      );
  }
  checkUnitsTile(shards);
  const heads = checkedHeads(shards);
  for (const s of shards) checkCoverage(s, heads);
  const records = unshardedOrder(shards, heads);
  const { run } = first.manifest;
  const results = aggregate(records, run.meta);
  // Every file rendered before any is written: a refusal (or a renderer's error) leaves the folder as it was.
  const outputs = renderedReports(results);
  if (run.saveAll)
    outputs.push(
      ['items.jsonl', records.map((r) => `${JSON.stringify(r)}\n`).join('')],
      ['run.json', JSON.stringify(run.manifest, null, 2)],
    );
  fs.mkdirSync(outputDir, { recursive: true });
  for (const [name, text] of outputs) writeFileAtomic(path.join(outputDir, name), text);
  const files = outputs.map(([name]) => name);
  return { results, shards: shards.length, files };
}

const withoutCommand = (m: AggregateMeta) =>
  m.provenance ? { ...m, provenance: { ...m.provenance, command: null } } : m;

/** The `shard-<i>-of-<n>` folders in `outputDir`, in index order. */
function shardFolders(outputDir: string): string[] {
  let entries: fs.Dirent[];
  try {
    entries = fs.readdirSync(outputDir, { withFileTypes: true });
  } catch (e) {
    throw new Error(`${outputDir}: cannot list its shard folders (${(e as NodeJS.ErrnoException).code})`);
  }
  const found = entries
    .filter((e) => e.isDirectory() && SHARD_FOLDER.test(e.name))
    .map((e) => path.join(outputDir, e.name));
  if (!found.length)
    throw new Error(
      `${outputDir}: no shard folders (shard-<i>-of-<n>/, written by arm eval --shard i/n --output-dir ${outputDir})`,
    );
  return found.sort((a, b) => folderIndex(a) - folderIndex(b));
}

const folderIndex = (dir: string) => Number(SHARD_FOLDER.exec(path.basename(dir))?.[1] ?? -1);

/**
 * Reads every shard's manifest and records; refuses a folder without shard.json (unfinished), then shards of
 * different counts, a shard given twice and a shard missing (shard-checks.ts). Returns them in index order.
 */
function readShards(dirs: string[], outputDir: string): ReadShard[] {
  const shards: ReadShard[] = [];
  const unfinished: { shard: Shard | null; where: string; why: string }[] = [];
  for (const dir of dirs) {
    const file = path.join(dir, SHARD_FILE);
    if (!fs.existsSync(file)) {
      const m = SHARD_FOLDER.exec(path.basename(dir));
      const items = path.join(dir, 'items.jsonl');
      const results = fs.existsSync(items) ? readRecords(items).filter((r) => r.type === 'pair').length : 0;
      unfinished.push({
        shard: m ? { index: Number(m[1]), count: Number(m[2]) } : null,
        where: dir,
        why: `no ${SHARD_FILE} (${results} pair results in its items.jsonl so far); run its command again to finish it`,
      });
      continue;
    }
    const manifest = readManifest(dir);
    shards.push({ dir, manifest, records: readRecords(path.join(dir, 'items.jsonl')) });
  }
  const problems = shardSetProblems(
    shards.map((s) => ({ shard: s.manifest.shard, where: s.dir })),
    unfinished,
    (s) => path.join(outputDir, shardLabel(s)),
  );
  if (problems) throw new Error(`cannot merge the shards of ${outputDir}: ${problems}`);
  return shards.sort((a, b) => a.manifest.shard.index - b.manifest.shard.index);
}

/** What the reports read of a shard's AggregateMeta (aggregate.ts, report.ts). */
const META_SHAPE: FieldShape = {
  fields: {
    dataset: 'string',
    model: 'string',
    shape: { fields: { layers: 'nat', heads: 'nat' } },
    fewShot: 'nat',
    poolLabelNoise: { optional: 'number' },
    pool: 'string',
    provenance: {
      optional: {
        fields: {
          command: { oneOf: ['string', 'null'] },
          version: 'string',
          model: { fields: { id: 'string', weightsSha256: { oneOf: ['string', 'null'] } } },
          template: { oneOf: ['null', { fields: { kind: 'string', text: 'string', chat: 'boolean' } }] },
          seeds: { arrayOf: 'int' },
          dataset: { fields: { title: 'string', sha256: 'string', pairs: 'nat' } },
        },
      },
    },
    splits: {
      optional: {
        fields: {
          minTestPairs: 'nat',
          smallSubsets: { arrayOf: { fields: { subset: 'string', rows: 'nat', testPairs: 'nat' } } },
          droppedGroups: { arrayOf: { fields: { group: 'string', rows: 'nat', seeds: { arrayOf: 'int' } } } },
          duplicatePairs: { optional: 'nat' },
          promptSiblingsHeldOut: { optional: 'nat' },
        },
      },
    },
    budget: { optional: { arrayOf: 'string' } },
  },
};

/** Every field of shard.json that merging reads (shard-manifest.ts checks them before any is used). */
const EVAL_SHARD_SHAPE: Record<string, FieldShape> = {
  run: {
    fields: {
      manifest: 'object',
      methods: { arrayOf: 'string' },
      seeds: { arrayOf: 'int' },
      chunkSize: 'count',
      units: 'nat',
      testPairs: 'nat',
      saveAll: 'boolean',
      runtime: {
        fields: {
          armVersion: 'string',
          device: { oneOf: ['string', 'null'] },
          threads: { oneOf: ['count', 'null'] },
        },
      },
      meta: META_SHAPE,
    },
  },
  units: {
    fields: {
      start: 'nat',
      end: 'nat',
      list: { arrayOf: { fields: { seed: 'int', group: 'string', ids: { arrayOf: 'string' } } } },
    },
  },
  seconds: 'number',
};

/** Reads and checks `dir`'s shard.json: every field's type, its shard against the folder's name, its units. */
function readManifest(dir: string): EvalShardManifest {
  const file = path.join(dir, SHARD_FILE);
  const m = readShardManifest<EvalShardManifest>(file, {
    what: 'arm eval shard',
    version: EVAL_SHARD_VERSION,
    shape: EVAL_SHARD_SHAPE,
    label: SHARD_FOLDER.test(path.basename(dir)) ? path.basename(dir) : null,
  });
  checkRange(file, 'units', m.units, m.run.units);
  if (m.units.list.length !== m.units.end - m.units.start)
    throw new Error(
      `${file}: "units.list" holds ${m.units.list.length} units, but "units" is ${m.units.start}–${m.units.end}`,
    );
  return m;
}

/** The shards' unit ranges, in index order, cover the run's units once: each starts where the one before ended. */
function checkUnitsTile(shards: ReadShard[]): void {
  let at = 0;
  for (const s of shards) {
    const { start, end } = s.manifest.units;
    if (start !== at)
      throw new Error(
        `${path.join(s.dir, SHARD_FILE)}: holds units ${start}–${end} of the run, expected to start at ${at}`,
      );
    at = end;
  }
  const total = shards[0]!.manifest.run.units;
  if (at !== total) throw new Error(`the shards hold ${at} of the run's ${total} units`);
}

const groupKey = (r: { method: string; seed: number; group: string }) => `${r.method}|${r.seed}|${r.group}`;
type HeadRecord = Extract<RunRecord, { type: 'prepared' | 'skipped' }>;
type Heads = Map<string, { record: HeadRecord; dir: string }>;

/**
 * The prepared or skipped record of every (method, seed, group), from the first shard that has it, after checking
 * that every shard that prepared it there fitted the same (heads, pool, flipped labels, fingerprint) or skipped it
 * for the same reason.
 */
function checkedHeads(shards: ReadShard[]): Heads {
  const heads: Heads = new Map();
  const identity = (r: HeadRecord) =>
    r.type === 'prepared'
      ? JSON.stringify([r.type, r.heads, r.poolIds, r.flipped ?? null, r.fingerprint ?? null])
      : JSON.stringify([r.type, r.reason, r.testPairs, r.poolIds]);
  for (const s of shards)
    for (const r of s.records) {
      if (r.type !== 'prepared' && r.type !== 'skipped') continue;
      const before = heads.get(groupKey(r));
      if (!before) heads.set(groupKey(r), { record: r, dir: s.dir });
      else if (identity(before.record) !== identity(r))
        throw new Error(
          `${r.method} on seed ${r.seed}, ${r.group}: ${before.dir} and ${s.dir} prepared it differently ` +
            `(${differenceOf(before.record, r)}); shards must run the same build with the same --threads and --device`,
        );
    }
  return heads;
}

/** What differs between two records of a preparation, in words. */
function differenceOf(a: HeadRecord, b: HeadRecord): string {
  if (a.type !== b.type) return `one ${a.type}, the other ${b.type}`;
  if (a.type === 'skipped' || b.type === 'skipped') return 'skipped for another reason';
  if (JSON.stringify(a.heads) !== JSON.stringify(b.heads)) return 'other heads';
  if (JSON.stringify(a.poolIds) !== JSON.stringify(b.poolIds)) return 'another pool';
  if (JSON.stringify(a.flipped) !== JSON.stringify(b.flipped)) return 'other flipped labels';
  return 'other fitted means: fingerprint differs';
}

/**
 * Checks that a shard's items.jsonl holds exactly one result of every method for every pair of its units (none
 * for a (method, seed, group) skipped), and nothing else.
 */
function checkCoverage(s: ReadShard, heads: Map<string, { record: HeadRecord }>): void {
  const where = path.join(s.dir, 'items.jsonl');
  const expected = new Set<string>();
  for (const u of s.manifest.units.list)
    for (const method of s.manifest.run.methods) {
      if (heads.get(groupKey({ method, seed: u.seed, group: u.group }))?.record.type === 'skipped') continue;
      for (const id of u.ids) expected.add(`${method}|${u.seed}|${id}`);
    }
  const seen = new Set<string>();
  for (const r of s.records) {
    if (r.type !== 'pair') continue;
    const key = `${r.method}|${r.seed}|${r.id}`;
    if (!expected.has(key))
      throw new Error(`${where}: a ${r.method} result for seed ${r.seed} pair ${r.id}, which is not in this shard`);
    if (seen.has(key)) throw new Error(`${where}: two ${r.method} results for seed ${r.seed} pair ${r.id}`);
    seen.add(key);
  }
  const missing = [...expected].filter((k) => !seen.has(k));
  if (missing.length)
    throw new Error(
      `${where}: ${missing.length} results missing (the first: ${missing[0]!.split('|').join(', seed ')}); ` +
        'run the shard again to finish it',
    );
}

/**
 * The shards' records in the order one unsharded run appends them: per seed, per method in run order, per split
 * in draw order: the prepared (or skipped) record, then each shard's pair and cost records of it, by shard index.
 * The fingerprint is dropped: an unsharded run does not write it.
 */
function unshardedOrder(shards: ReadShard[], heads: Heads): RunRecord[] {
  const { seeds, methods } = shards[0]!.manifest.run;
  const groupsOf = new Map<number, string[]>();
  // Pair and cost records by (method, seed, group), each shard's in file order, shards in index order.
  const scored = new Map<string, RunRecord[]>();
  for (const s of shards) {
    for (const u of s.manifest.units.list) {
      const groups = groupsOf.get(u.seed) ?? [];
      if (!groups.includes(u.group)) groups.push(u.group);
      groupsOf.set(u.seed, groups);
    }
    for (const r of s.records) {
      if (r.type !== 'pair' && r.type !== 'cost') continue;
      const bucket = scored.get(groupKey(r));
      if (bucket) bucket.push(r);
      else scored.set(groupKey(r), [r]);
    }
  }
  const out: RunRecord[] = [];
  for (const seed of seeds)
    for (const method of methods)
      for (const group of groupsOf.get(seed) ?? []) {
        const key = groupKey({ method, seed, group });
        const head = heads.get(key)?.record;
        if (head?.type === 'prepared') {
          const { fingerprint: _fingerprint, ...prepared } = head;
          out.push(prepared);
        } else if (head) out.push(head);
        out.push(...(scored.get(key) ?? []));
      }
  return out;
}
