/**
 * Reading a shard's manifest for `arm merge` (score shards' `<stem>.shard-<i>-of-<n>.json`, eval shards'
 * `shard-<i>-of-<n>/shard.json`): a manifest is a file on a shared volume that anything may have edited, copied or
 * cut short, so every field the merge reads is checked for its type and range before any is used, and the shard it
 * says it is must be the one its name says. A refusal names the file and the field.
 */
import fs from 'node:fs';
import { shardLabel, type Shard } from './shard-units.js';

/**
 * The shape a field must have: a JSON type (`nat`: an integer ≥ 0, `count`: an integer ≥ 1, `any`: present, any
 * value), one of several (`oneOf`, e.g. a string or null), an array of one shape, an object whose listed fields
 * have their shapes (fields not listed are not read, so not checked), or an optional field's shape.
 */
export type FieldShape =
  | 'string'
  | 'boolean'
  | 'number'
  | 'int'
  | 'nat'
  | 'count'
  | 'null'
  | 'object'
  | 'any'
  | { oneOf: FieldShape[] }
  | { arrayOf: FieldShape }
  | { fields: Record<string, FieldShape> }
  | { optional: FieldShape };

const SIMPLE: Record<string, [(v: unknown) => boolean, string]> = {
  string: [(v) => typeof v === 'string', 'a string'],
  boolean: [(v) => typeof v === 'boolean', 'true or false'],
  number: [(v) => typeof v === 'number' && Number.isFinite(v), 'a number'],
  int: [(v) => Number.isSafeInteger(v), 'an integer'],
  nat: [(v) => Number.isSafeInteger(v) && (v as number) >= 0, 'an integer ≥ 0'],
  count: [(v) => Number.isSafeInteger(v) && (v as number) >= 1, 'an integer ≥ 1'],
  null: [(v) => v === null, 'null'],
  object: [(v) => typeof v === 'object' && v !== null && !Array.isArray(v), 'an object'],
  any: [(v) => v !== undefined, 'present'],
};

const isObject = (v: unknown): v is Record<string, unknown> => SIMPLE.object![0](v);

/** What a shape asks for, in words. */
function described(shape: FieldShape): string {
  if (typeof shape === 'string') return SIMPLE[shape]![1];
  if ('oneOf' in shape) return shape.oneOf.map(described).join(' or ');
  if ('arrayOf' in shape) return `a list of ${described(shape.arrayOf).replace(/^an? /, '')}s`;
  if ('optional' in shape) return described(shape.optional);
  return 'an object';
}

/** The first field of `value` (under `at`) that is not of `shape`, in words; null when all are. */
function shapeProblem(value: unknown, shape: FieldShape, at: string): string | null {
  const wrong = () => {
    const got = value === undefined ? 'absent' : JSON.stringify(value).slice(0, 60);
    return `"${at}" should be ${described(shape)}, got ${got}`;
  };
  if (typeof shape === 'string') return SIMPLE[shape]![0](value) ? null : wrong();
  if ('optional' in shape) return value === undefined ? null : shapeProblem(value, shape.optional, at);
  if ('oneOf' in shape) return shape.oneOf.some((s) => !shapeProblem(value, s, at)) ? null : wrong();
  if ('arrayOf' in shape) {
    if (!Array.isArray(value)) return wrong();
    for (const [i, item] of value.entries()) {
      const problem = shapeProblem(item, shape.arrayOf, `${at}[${i}]`);
      if (problem) return problem;
    }
    return null;
  }
  if (!isObject(value)) return wrong();
  for (const [key, field] of Object.entries(shape.fields)) {
    const problem = shapeProblem(value[key], field, at ? `${at}.${key}` : key);
    if (problem) return problem;
  }
  return null;
}

/** A shard's place: both integers, the index below the count. */
const SHARD_SHAPE: FieldShape = { fields: { index: 'nat', count: 'count' } };

/**
 * Reads the manifest `file` as JSON, and checks that it is a `what` of layout `version` whose fields have `shape`;
 * throws naming the file (and the field) otherwise. `label`: the `shard-<i>-of-<n>` its file or folder name says,
 * which its `shard` must be (a manifest copied under another shard's name is refused here, not merged as that one).
 */
export function readShardManifest<T>(
  file: string,
  expected: { what: string; version: number; shape: Record<string, FieldShape>; label: string | null },
): T {
  let m: unknown;
  try {
    m = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (e) {
    throw new Error(`${file}: not a readable ${expected.what} manifest (${(e as Error).message})`);
  }
  if (!isObject(m) || m.what !== expected.what)
    throw new Error(`${file}: not an ${expected.what} manifest (no "what": "${expected.what}")`);
  if (m.version !== expected.version)
    throw new Error(
      `${file}: shard layout version ${JSON.stringify(m.version)}; this build merges version ${expected.version} ` +
        '(run the shard again with this build)',
    );
  const problem = shapeProblem(m, { fields: { shard: SHARD_SHAPE, ...expected.shape } }, '');
  if (problem) throw new Error(`${file}: ${problem}; not a manifest this build wrote`);
  const shard = m.shard as Shard;
  if (shard.index >= shard.count)
    throw new Error(`${file}: "shard" is ${shard.index} of ${shard.count}, which no run has (0 to ${shard.count - 1})`);
  if (expected.label === null)
    throw new Error(
      `${file}: its name says no shard (expected it under a shard-<i>-of-<n> name, as ${shardLabel(shard)})`,
    );
  if (expected.label !== shardLabel(shard))
    throw new Error(
      `${file}: "shard" says ${shardLabel(shard)} but its name says ${expected.label} ` +
        "(a manifest copied under another shard's name?); merge each shard's own files",
    );
  return m as T;
}

/** A range [start, end) within [0, total]: start ≤ end ≤ total; throws naming the file and field otherwise. */
export function checkRange(file: string, field: string, r: { start: number; end: number }, total: number): void {
  if (!(r.start <= r.end && r.end <= total))
    throw new Error(`${file}: "${field}" is ${r.start}–${r.end}, not a range within 0–${total}`);
}
