/**
 * An evaluation's run log in its output folder: run.json (the manifest: what the run is of) and items.jsonl (every
 * record as it lands). A run started again in the same folder continues from items.jsonl when its manifest is the
 * same, and is refused when it is not; the log is read back for the aggregation at the end.
 */
import fs from 'node:fs';
import path from 'node:path';
import { createHash } from 'node:crypto';
import type { Decoder } from '../model/decoder.js';
import type { PairExample } from '../data/examples.js';
import type { MethodOptions } from './methods.js';
import type { RunRecord } from './records.js';
import type { PoolMode } from './splits.js';
import type { Shard } from './shard-units.js';

/** The options that decide a run's records (the harness's EvalOptions hold them). */
export interface ManifestOptions {
  fewShot: number;
  seed: number;
  pool: PoolMode;
  method: MethodOptions;
  poolCandidate?: (pair: PairExample) => boolean;
  poolFrom?: (pair: PairExample) => PairExample;
  poolLabelNoise?: number;
  splitFewShot?: number;
  shard?: Shard;
}

/** An open run log: the records so far, what they cover, and `append` for new ones (file and memory). */
export interface RunLog {
  file: string;
  records: RunRecord[];
  /** `method|seed|id` of every pair scored. */
  done: Set<string>;
  /** `method|seed|group` of every (method, seed, pool group) skipped (its pool unusable). */
  skipped: Set<string>;
  append(records: RunRecord[]): void;
}

export const pairKey = (method: string, seed: number, id: string) => `${method}|${seed}|${id}`;
export const groupKey = (method: string, seed: number, group: string) => `${method}|${seed}|${group}`;

const sha256 = (text: string) => createHash('sha256').update(text).digest('hex');

/**
 * What a run is of: the model (weights and the files that decide prompt ids), the dataset's pairs (images by
 * content), and every option its records depend on. Keys keep their order: an older run.json is compared as text.
 */
export function runManifest(decoder: Decoder | null, pairs: PairExample[], opts: ManifestOptions): object {
  const imageIdentity = imageHasher();
  const pairIdentity = (p: PairExample) =>
    p.images?.length
      ? [p.id, p.prompt, p.chosen, p.rejected, p.images.map(imageIdentity)]
      : [p.id, p.prompt, p.chosen, p.rejected];
  const poolFrom = opts.poolFrom;
  return {
    // The tokenizer, chat template and processor files decide the prompts' ids: an edit there is another model.
    model: decoder?.info.weightsFingerprint ?? null,
    promptFiles: decoder?.info.promptFiles ?? null,
    dataset: sha256(JSON.stringify(pairs.map(pairIdentity))),
    fewShot: opts.fewShot,
    seed: opts.seed,
    pool: opts.pool,
    method: { ...opts.method, onFitProgress: undefined },
    ...(opts.poolCandidate
      ? { fixedPool: sha256(JSON.stringify(pairs.filter(opts.poolCandidate).map((p) => p.id))) }
      : {}),
    ...(poolFrom
      ? {
          poolSource: sha256(
            JSON.stringify(
              pairs.map((p) => {
                const q = poolFrom(p);
                return [q.id, q.prompt, q.chosen, q.rejected];
              }),
            ),
          ),
        }
      : {}),
    // Absent when unused, so that a run.json written before these options existed still matches.
    ...(opts.poolLabelNoise ? { poolLabelNoise: opts.poolLabelNoise } : {}),
    ...(opts.splitFewShot && opts.splitFewShot > opts.fewShot ? { splitFewShot: opts.splitFewShot } : {}),
    // Runs logged before splits kept prompt siblings apart and dropped duplicates drew other test sets: not resumable.
    splits: 'prompt-groups, duplicates dropped',
    // A shard's log holds its part of the run only: another shard (or the whole run) must not continue it.
    ...(opts.shard ? { shard: { index: opts.shard.index, count: opts.shard.count } } : {}),
  };
}

/**
 * Images enter the dataset's identity by content: a picture redrawn under the same name is another dataset, and a
 * resumed run must not mix scores of the old and the new pixels. Each file is read once.
 */
function imageHasher(): (file: string) => string {
  const imageSha = new Map<string, string>();
  return (file) => {
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
}

/**
 * Opens the run log in `outputDir` (created first, then `manifestOf` is taken): writes run.json for a new run, or
 * refuses a folder whose run.json is another run's; reads the records of items.jsonl and drops a half-written last
 * line.
 */
export function openRunLog(outputDir: string, manifestOf: () => object): RunLog {
  fs.mkdirSync(outputDir, { recursive: true });
  const file = path.join(outputDir, 'items.jsonl');
  const manifestFile = path.join(outputDir, 'run.json');
  const manifest = manifestOf();
  if (fs.existsSync(manifestFile)) {
    const old = JSON.parse(fs.readFileSync(manifestFile, 'utf8'));
    if (JSON.stringify(old) !== JSON.stringify(manifest)) {
      throw new Error(
        `${outputDir} holds a run with another model (weights, tokenizer or processor files), dataset or options; ` +
          'use another --output-dir (or delete it)',
      );
    }
  } else {
    fs.writeFileSync(manifestFile, JSON.stringify(manifest, null, 2));
  }
  const records = readRecords(file);
  // A crash can leave half a line at the end: drop it, or the next append would glue onto it.
  if (fs.existsSync(file) && !fs.readFileSync(file, 'utf8').endsWith('\n') && fs.statSync(file).size > 0) {
    fs.writeFileSync(file, records.map((r) => JSON.stringify(r)).join('\n') + (records.length ? '\n' : ''));
  }
  const done = new Set(records.filter((r) => r.type === 'pair').map((r) => pairKey(r.method, r.seed, r.id)));
  const skipped = new Set(records.filter((r) => r.type === 'skipped').map((r) => groupKey(r.method, r.seed, r.group)));
  return {
    file,
    records,
    done,
    skipped,
    append(rs) {
      if (rs.length) fs.appendFileSync(file, rs.map((r) => JSON.stringify(r)).join('\n') + '\n');
      records.push(...rs);
    },
  };
}

/** The records of an items.jsonl (none when it does not exist); a line cut by a crash at the end is ignored. */
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
