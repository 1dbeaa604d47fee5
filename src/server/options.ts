/**
 * The reward server's options (`createRewardServer`, app.ts), their defaults, and the checks made once at start:
 * the criteria's names, `combine`, readout against transform, the integer limits. `ServerSettings` is the options
 * with every default filled in, which the rest of the server reads.
 */
import path from 'node:path';
import type { CriterionMeta } from '../arm/criterion.js';
import type { ScoringEngine } from './engine-types.js';
import type { Readout, ScoreTransform } from './readout.js';
import type { SplitWithoutPrompts } from './split.js';

export interface RewardServerOptions {
  /** The model and criteria (engine.ts): a WorkerEngine for serving, an InProcessEngine for library use and tests. */
  engine: ScoringEngine;
  /** Weights per criterion name: the default target of /get_reward and /classify when set. */
  combine?: Record<string, number>;
  maxBatch?: number;
  maxWaitMs?: number;
  maxQueue?: number;
  /** Forward batch size and token budget (default: each criterion's own, as `arm score`). */
  batchSize?: number;
  maxLength?: number;
  /** Largest request body in bytes (413 above it). */
  bodyLimit?: number;
  /**
   * Most entries in one request (query, prompts, input, items, pairs, labels), and never more than maxQueue:
   * refused with 413 right after parsing, before any per-item work.
   */
  maxRequestItems?: number;
  apiKey?: string;
  readout?: Readout;
  scoreTransform?: ScoreTransform;
  /** What /get_reward sends for an item too long to score (default null). */
  tooLongReward?: number | null;
  /** The `model` /classify reports (default the model's id). */
  modelName?: string;
  /** Logs unexpected (500) errors, and warnings (judge prompts that are mostly unknown tokens). */
  log?: (line: string) => void;
  /**
   * Folder that /v1/score `images` paths are read under (relative paths resolve against it; a path outside it,
   * symbolic links followed, is refused). Default: the current directory.
   */
  imageRoot?: string;
  /**
   * How /get_reward without `prompts` and /classify find where the question ends: 'refuse' (default: 400, send
   * `prompts`) or 'last-assistant-turn', a heuristic a response can steer by spelling a turn opener (split.ts).
   */
  splitWithoutPrompts?: SplitWithoutPrompts;
  /** Longest a client may take to send a whole request, headers and body, in ms (408 and closed after). */
  requestTimeoutMs?: number;
  /** A connection with no request being answered that stays silent this long (ms) is closed. */
  idleTimeoutMs?: number;
  /** How long an idle kept-alive connection stays open after a response (ms). */
  keepAliveTimeoutMs?: number;
  /** Requests one kept-alive connection may carry before the server closes it (0: no limit). */
  maxRequestsPerSocket?: number;
  /** Most open connections; beyond it new connections are closed at once. */
  maxConnections?: number;
}

export const SERVER_DEFAULTS = {
  maxBatch: 32,
  maxWaitMs: 10,
  maxQueue: 1024,
  bodyLimit: 8 * 1024 * 1024,
  maxRequestItems: 1024,
  requestTimeoutMs: 30_000,
  idleTimeoutMs: 60_000,
  keepAliveTimeoutMs: 10_000,
  maxRequestsPerSocket: 1000,
  maxConnections: 1024,
} as const;

/** The options with their defaults, checked, and the loaded criteria by name (see RewardServerOptions). */
export interface ServerSettings {
  criteria: Map<string, CriterionMeta>;
  /** The weights of `combine`; undefined when it is unset or empty. */
  combine: Record<string, number> | undefined;
  readout: Readout;
  scoreTransform: ScoreTransform;
  tooLongReward: number | null;
  maxBatch: number;
  maxWaitMs: number;
  maxQueue: number;
  batchSize: number | undefined;
  maxLength: number | undefined;
  bodyLimit: number;
  /** Most entries per list in one request: `maxRequestItems`, and never more than `maxQueue`. */
  maxRequestItems: number;
  /** Absolute. */
  imageRoot: string;
  splitWithoutPrompts: SplitWithoutPrompts;
  requestTimeoutMs: number;
  idleTimeoutMs: number;
  keepAliveTimeoutMs: number;
  maxRequestsPerSocket: number;
  maxConnections: number;
  modelName: string | undefined;
  /** RewardServerOptions.log. */
  log: ((line: string) => void) | undefined;
}

/** Fills in the defaults; throws when the criteria, `combine` or readout and transform do not go together. */
export function resolveSettings(opts: RewardServerOptions): ServerSettings {
  const criteria = criteriaByName(opts.engine);
  const combine = opts.combine && Object.keys(opts.combine).length ? opts.combine : undefined;
  for (const name of Object.keys(combine ?? {}))
    if (!criteria.has(name))
      throw new Error(`--combine: no criterion named "${name}" (loaded: ${[...criteria.keys()].join(', ')})`);
  const readout = opts.readout ?? 'reward';
  const scoreTransform = opts.scoreTransform ?? { kind: 'none' };
  if (scoreTransform.kind === 'logit' && readout === 'logit-diff')
    throw new Error('--score-transform logit needs a probability readout (--reward-readout reward|normalized)');
  const maxQueue = opts.maxQueue ?? SERVER_DEFAULTS.maxQueue;
  return {
    criteria,
    combine,
    readout,
    scoreTransform,
    tooLongReward: opts.tooLongReward === undefined ? null : opts.tooLongReward,
    maxBatch: opts.maxBatch ?? SERVER_DEFAULTS.maxBatch,
    maxWaitMs: opts.maxWaitMs ?? SERVER_DEFAULTS.maxWaitMs,
    maxQueue,
    batchSize: opts.batchSize,
    maxLength: opts.maxLength,
    bodyLimit: opts.bodyLimit ?? SERVER_DEFAULTS.bodyLimit,
    maxRequestItems: Math.min(opts.maxRequestItems ?? SERVER_DEFAULTS.maxRequestItems, maxQueue),
    imageRoot: path.resolve(opts.imageRoot ?? process.cwd()),
    splitWithoutPrompts: opts.splitWithoutPrompts ?? 'refuse',
    requestTimeoutMs: opts.requestTimeoutMs ?? SERVER_DEFAULTS.requestTimeoutMs,
    idleTimeoutMs: opts.idleTimeoutMs ?? SERVER_DEFAULTS.idleTimeoutMs,
    keepAliveTimeoutMs: opts.keepAliveTimeoutMs ?? SERVER_DEFAULTS.keepAliveTimeoutMs,
    maxRequestsPerSocket: opts.maxRequestsPerSocket ?? SERVER_DEFAULTS.maxRequestsPerSocket,
    maxConnections: opts.maxConnections ?? SERVER_DEFAULTS.maxConnections,
    modelName: opts.modelName,
    log: opts.log,
  };
}

/** The engine's criteria by name; throws when there are none or a name is used twice. */
function criteriaByName(engine: ScoringEngine): Map<string, CriterionMeta> {
  if (engine.info.criteria.length === 0) throw new Error('serve: no criterion loaded (--rm name=file)');
  const byName = new Map<string, CriterionMeta>();
  for (const c of engine.info.criteria) {
    if (byName.has(c.name)) throw new Error(`serve: criterion name "${c.name}" is used twice`);
    byName.set(c.name, c.meta);
  }
  return byName;
}

/** Throws unless every limit and timeout given is an integer at or above its least value. */
export function checkLimits(opts: RewardServerOptions): void {
  for (const [name, min] of [
    ['requestTimeoutMs', 1],
    ['idleTimeoutMs', 1],
    ['keepAliveTimeoutMs', 1],
    ['maxRequestsPerSocket', 0],
    ['maxConnections', 1],
    ['bodyLimit', 1],
    ['maxQueue', 1],
    ['maxRequestItems', 1],
  ] as const) {
    const v = opts[name];
    if (v !== undefined && !(Number.isInteger(v) && v >= min))
      throw new Error(`serve: ${name} must be an integer ≥ ${min}, got ${v}`);
  }
}
