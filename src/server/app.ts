/**
 * The reward server (`arm serve`): one decoder, several criteria, the micro-batching scheduler behind
 * OpenRLHF's `/get_reward`, vLLM's `/classify` and the native `/v1/score`.
 *
 * HTTP is fastify: its JSON-schema validation (ajv) gives 400s that point at the offending field, its body limit
 * gives 413 before a large body is parsed, and its close() stops listening and lets in-flight requests finish,
 * which is the graceful drain. node:http + zod would need all three written around it.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import fs from 'node:fs';
import type { Socket } from 'node:net';
import path from 'node:path';
import Fastify, { type FastifyError, type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import type { Example, Prompt } from '../data/examples.js';
import type { CriterionMeta } from '../arm/criterion.js';
import {
  CancelledError,
  ItemFailedError,
  MicroBatcher,
  QueueFullError,
  ShuttingDownError,
  type ExampleScore,
} from './scheduler.js';
import { createMetrics, type ServerMetrics } from './metrics.js';
import { QuerySplitter, SplitError, type Presplit, type SplitEntry, type SplitWithoutPrompts } from './split.js';
import type { ScoringEngine } from './engine.js';
import { decodeImage } from '../model/vision/image.js';
import { BodyReader, VALUES_PER_ITEM } from './body.js';

/** What `/get_reward` returns as `rewards` (and `/classify` as P(Yes)): see README "Reward server". */
export type Readout = 'reward' | 'normalized' | 'logit-diff';
/** `scores` from `rewards`: unchanged, log-odds, or 1/0 at a threshold. */
export type ScoreTransform = { kind: 'none' } | { kind: 'logit' } | { kind: 'threshold'; at: number };

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
  /** Logs unexpected (500) errors. */
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

/** An error answered with `status` and `{error, field}`. */
export class HttpError extends Error {
  constructor(
    readonly status: number,
    readonly field: string | null,
    message: string,
  ) {
    super(message);
  }
}

export interface RewardServer {
  app: FastifyInstance;
  scheduler: MicroBatcher;
  metrics: ServerMetrics;
  readonly ready: boolean;
  /** Scores one example per criterion outside the queue (first-run costs), then /ready answers 200. */
  warm(): Promise<void>;
  /** Listens; resolves with the base URL (http://host:port). */
  listen(opts?: { host?: string; port?: number }): Promise<string>;
  /** Stops accepting, answers everything queued and in flight, closes the engine, then resolves. */
  close(): Promise<void>;
}

// ---------- request schemas (ajv, strict types: no coercion) ----------

const turnList = {
  type: 'array',
  minItems: 1,
  items: {
    type: 'object',
    required: ['role', 'content'],
    properties: { role: { type: 'string' }, content: { type: 'string' } },
  },
};
const promptSchema = { anyOf: [{ type: 'string' }, turnList] };
const idSchema = { anyOf: [{ type: 'string' }, { type: 'number' }] };
const criterionQuery = { type: 'object', properties: { criterion: { type: 'string' } } };

const getRewardBody = {
  type: 'object',
  required: ['query'],
  properties: {
    query: { type: 'array', items: { type: 'string' } },
    prompts: { type: 'array', items: { type: 'string' } },
    labels: {}, // accepted and ignored: an Activation RM scores without references
  },
};
const classifyBody = {
  type: 'object',
  required: ['input'],
  properties: {
    model: { type: 'string' },
    input: { anyOf: [{ type: 'string' }, { type: 'array', items: { type: 'string' } }] },
  },
};
const scoreBody = {
  type: 'object',
  properties: {
    criterion: { type: 'string' },
    items: {
      type: 'array',
      items: {
        type: 'object',
        required: ['prompt', 'response'],
        properties: { id: idSchema, prompt: promptSchema, response: promptSchema, images: {} },
      },
    },
    pairs: {
      type: 'array',
      items: {
        type: 'object',
        required: ['prompt', 'chosen', 'rejected'],
        properties: { id: idSchema, prompt: promptSchema, chosen: promptSchema, rejected: promptSchema, images: {} },
      },
    },
  },
};

type Turns = { role: string; content: string }[];
interface ScoreItemIn {
  id?: string | number;
  prompt: string | Turns;
  response: string | Turns;
  images?: unknown;
}
interface ScorePairIn {
  id?: string | number;
  prompt: string | Turns;
  chosen: string | Turns;
  rejected: string | Turns;
  images?: unknown;
}

export async function createRewardServer(opts: RewardServerOptions): Promise<RewardServer> {
  const { engine } = opts;
  const info = engine.info;
  if (info.criteria.length === 0) throw new Error('serve: no criterion loaded (--rm name=file)');
  const byName = new Map<string, CriterionMeta>();
  for (const c of info.criteria) {
    if (byName.has(c.name)) throw new Error(`serve: criterion name "${c.name}" is used twice`);
    byName.set(c.name, c.meta);
  }
  const combine = opts.combine && Object.keys(opts.combine).length ? opts.combine : undefined;
  for (const name of Object.keys(combine ?? {}))
    if (!byName.has(name))
      throw new Error(`--combine: no criterion named "${name}" (loaded: ${[...byName.keys()].join(', ')})`);
  const readout = opts.readout ?? 'reward';
  const transform = opts.scoreTransform ?? { kind: 'none' };
  if (transform.kind === 'logit' && readout === 'logit-diff')
    throw new Error('--score-transform logit needs a probability readout (--reward-readout reward|normalized)');
  const maxQueue = opts.maxQueue ?? SERVER_DEFAULTS.maxQueue;
  const bodyLimit = opts.bodyLimit ?? SERVER_DEFAULTS.bodyLimit;
  const tooLongReward = opts.tooLongReward === undefined ? null : opts.tooLongReward;
  const imageRoot = path.resolve(opts.imageRoot ?? process.cwd());
  const imagesOf = (images: unknown, where: string, found: Map<string, string>) =>
    imageFiles(images, `${where}.images`, imageRoot, info.imageText, found);
  const readable = new ReadableImages();
  const metrics = createMetrics();
  const scheduler = new MicroBatcher(
    engine,
    {
      maxBatch: opts.maxBatch ?? SERVER_DEFAULTS.maxBatch,
      maxWaitMs: opts.maxWaitMs ?? SERVER_DEFAULTS.maxWaitMs,
      maxQueue,
      batchSize: opts.batchSize,
      maxLength: opts.maxLength,
      probe: (name) => probeExample(byName.get(name)!),
    },
    (r) => metrics.observeBatch(r),
    (n) => metrics.queueItems.set(n),
  );
  const splitWithoutPrompts = opts.splitWithoutPrompts ?? 'refuse';
  const splitter = new QuerySplitter(info.specialTokens, info.eosToken, splitWithoutPrompts);
  const OPT_IN = `start the server with --split-without-prompts last-assistant-turn (library: splitWithoutPrompts) to cut at the last assistant-turn opener, which a response can move by spelling one`;
  const apiKeyDigest = opts.apiKey === undefined ? null : sha256(opts.apiKey);
  let ready = false;
  let closing = false;
  let classifyCount = 0;

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
  const requestTimeoutMs = opts.requestTimeoutMs ?? SERVER_DEFAULTS.requestTimeoutMs;
  const app = Fastify({
    bodyLimit,
    logger: false,
    return503OnClosing: true,
    ajv: { customOptions: { coerceTypes: false, removeAdditional: false, allErrors: false } },
    // Slow clients hold a connection (and its body buffer) only so long: a whole request within requestTimeoutMs,
    // checked every quarter of it (node checks every 30 s by default), headers within the same bound.
    requestTimeout: requestTimeoutMs,
    http: {
      requestTimeout: requestTimeoutMs,
      headersTimeout: Math.min(60_000, requestTimeoutMs),
      connectionsCheckingInterval: Math.max(50, Math.min(30_000, Math.floor(requestTimeoutMs / 4))),
    },
    connectionTimeout: opts.idleTimeoutMs ?? SERVER_DEFAULTS.idleTimeoutMs,
    keepAliveTimeout: opts.keepAliveTimeoutMs ?? SERVER_DEFAULTS.keepAliveTimeoutMs,
    maxRequestsPerSocket: opts.maxRequestsPerSocket ?? SERVER_DEFAULTS.maxRequestsPerSocket,
  });
  app.server.maxConnections = opts.maxConnections ?? SERVER_DEFAULTS.maxConnections;

  // JSON bodies: large ones parsed off the main thread, every one refused on its counts before any per-item work (body.ts).
  const maxItems = Math.min(opts.maxRequestItems ?? SERVER_DEFAULTS.maxRequestItems, maxQueue);
  const bodies = new BodyReader(
    { maxItems, maxValues: maxItems * VALUES_PER_ITEM + 64 },
    { specials: info.specialTokens, eosToken: info.eosToken, withoutPrompts: splitWithoutPrompts },
  );
  // Bodies whose texts the body worker split (their texts blanked), by body object.
  const presplits = new WeakMap<object, Presplit>();
  /** Entry `i`'s split: made ahead for a large body, else here. */
  const splitEntry = (body: object, text: string, prompt: string | undefined, i: number): SplitEntry => {
    const pre = presplits.get(body);
    if (!pre) return splitter.split(text, prompt, i);
    if (i < pre.entries.length) return pre.entries[i]!;
    throw new SplitError(pre.error!.field, pre.error!.message);
  };
  const tooLarge = () =>
    new HttpError(413, 'body', `body: larger than the limit of ${bodyLimit} bytes (--body-limit-mib)`);
  app.removeContentTypeParser('application/json');
  app.addContentTypeParser('application/json', (req, payload, done) => {
    const declared = Number(req.headers['content-length']);
    if (declared > bodyLimit) {
      done(tooLarge(), undefined);
      return;
    }
    // The chunks as they came: fastify's own reader joins them on this thread first (see body.ts).
    const chunks: Buffer[] = [];
    let received = 0;
    const stop = () => {
      payload.off('data', onData);
      payload.off('end', onEnd);
      payload.off('error', onEnd);
    };
    const onData = (chunk: Buffer) => {
      received += chunk.length;
      if (received > bodyLimit) {
        stop();
        done(tooLarge(), undefined);
        return;
      }
      chunks.push(chunk);
    };
    const onEnd = (err?: Error) => {
      stop();
      if (err) {
        done(new HttpError(400, 'body', `body: could not be read (${err.message})`), undefined);
        return;
      }
      if (!Number.isNaN(declared) && declared !== received) {
        done(new HttpError(400, 'body', `body: ${received} bytes arrived, content-length said ${declared}`), undefined);
        return;
      }
      bodies.read(chunks, received, req.routeOptions.url).then(
        (read) => {
          if ('refusal' in read) {
            done(new HttpError(read.refusal.status, read.refusal.field, read.refusal.message), undefined);
            return;
          }
          if (read.presplit && read.body !== null && typeof read.body === 'object')
            presplits.set(read.body, read.presplit);
          done(null, read.body);
        },
        (e: Error) => done(e, undefined),
      );
    };
    payload.on('data', onData);
    payload.on('end', onEnd);
    payload.on('error', onEnd);
    payload.resume();
  });

  // ---------- auth and metrics hooks ----------
  app.addHook('onRequest', async (req, reply) => {
    if (!apiKeyDigest || req.routeOptions.url === '/health') return;
    const header = req.headers.authorization ?? '';
    const given = header.startsWith('Bearer ') ? header.slice(7).trim() : null;
    // Digests have equal length, so timingSafeEqual applies whatever the key's length; no early exit on content.
    if (given === null || !timingSafeEqual(sha256(given), apiKeyDigest)) {
      reply.header('WWW-Authenticate', 'Bearer');
      throw new HttpError(
        401,
        'authorization',
        given === null ? 'authorization: send "Authorization: Bearer <key>"' : 'authorization: the API key is wrong',
      );
    }
  });
  // Requests between receipt and the end of their response, so that close() cuts connections only once all are answered.
  let inFlight = 0;
  let onIdle: (() => void) | null = null;
  // Requests being answered per connection: the idle timeout spares those (their client waits for a score).
  const answering = new WeakMap<Socket, number>();
  app.addHook('onRequest', async (req, reply) => {
    inFlight++;
    const socket = req.raw.socket;
    answering.set(socket, (answering.get(socket) ?? 0) + 1);
    // 'close' on the response: written out, or the connection died first.
    reply.raw.once('close', () => {
      answering.set(socket, answering.get(socket)! - 1);
      if (--inFlight === 0) onIdle?.();
    });
  });
  // A silent connection (no request, or kept alive after one) is closed; one whose request is being scored is not.
  app.server.on('timeout', (socket: Socket) => {
    if (!answering.get(socket)) socket.destroy();
  });
  app.addHook('onSend', async (req, reply) => {
    // While draining, answer and hang up: a kept-alive socket would hold close() open until its idle timeout.
    // Answered before its body arrived (401, 413): hang up rather than read the rest of a body nobody needs.
    if (closing || !req.raw.complete) reply.header('Connection', 'close');
  });
  app.addHook('onResponse', async (req, reply) => {
    const endpoint = req.routeOptions.url ?? 'unmatched';
    metrics.requests.inc({ endpoint, status: String(reply.statusCode) });
    metrics.latency.observe({ endpoint }, reply.elapsedTime / 1000);
  });

  app.setErrorHandler((err: FastifyError | HttpError | Error, req, reply) => {
    const send = (status: number, field: string | null, message: string) =>
      reply.code(status).send({ error: message, field });
    if (err instanceof HttpError) return send(err.status, err.field, err.message);
    if (err instanceof SplitError) return send(400, err.field, err.message);
    if (err instanceof QueueFullError) {
      reply.header('Retry-After', String(err.retryAfterS));
      return send(503, null, err.message);
    }
    if (err instanceof ShuttingDownError) {
      reply.header('Retry-After', '5');
      return send(503, null, err.message);
    }
    if (err instanceof CancelledError) return send(499, null, err.message);
    const fe = err as FastifyError;
    if (fe.validation?.length) {
      const { field, message } = describeValidation(fe.validation, fe.validationContext);
      return send(400, field, `${field}: ${message}`);
    }
    if (fe.code === 'FST_ERR_CTP_BODY_TOO_LARGE')
      return send(413, 'body', `body: larger than the limit of ${bodyLimit} bytes (--body-limit-mib)`);
    if (
      fe.code === 'FST_ERR_CTP_INVALID_JSON_BODY' ||
      fe.code === 'FST_ERR_CTP_EMPTY_JSON_BODY' ||
      err instanceof SyntaxError
    )
      return send(400, 'body', `body: not valid JSON (${err.message})`);
    if (fe.statusCode && fe.statusCode >= 400 && fe.statusCode < 500) return send(fe.statusCode, null, err.message);
    opts.log?.(`error on ${req.method} ${req.url}: ${err.stack ?? err.message}`);
    return send(500, null, `internal error: ${err.message}`);
  });

  // ---------- helpers ----------

  /** The criteria a request scores and how their values combine: ?criterion=, else the combination, else the only one. */
  const targets = (asked: string | undefined, field = 'criterion'): { names: string[]; weights: number[] | null } => {
    if (asked !== undefined) {
      if (!byName.has(asked))
        throw new HttpError(
          400,
          field,
          `${field}: no criterion named ${JSON.stringify(asked)} (loaded: ${[...byName.keys()].join(', ')})`,
        );
      return { names: [asked], weights: null };
    }
    if (combine) return { names: Object.keys(combine), weights: Object.values(combine) };
    if (byName.size === 1) return { names: [...byName.keys()], weights: null };
    throw new HttpError(
      400,
      field,
      `${field}: ${byName.size} criteria are loaded (${[...byName.keys()].join(', ')}) and no --combine is set; name one with ?criterion=`,
    );
  };

  const requireScalar = (names: string[], endpoint: string) => {
    for (const n of names) {
      if (byName.get(n)!.template.kind !== 'scalar')
        throw new HttpError(
          400,
          'criterion',
          `criterion: "${n}" uses the ranked template, which scores pairs only; ${endpoint} needs a scalar (Yes/No) criterion (POST /v1/score with pairs for this one)`,
        );
    }
  };

  /** Refuses a request that could never be queued, from its counts alone: before any per-item work. */
  const checkCapacity = (cost: number, field: string) => {
    if (cost > maxQueue)
      throw new HttpError(
        413,
        field,
        `${field}: ${cost} judge items in one request exceed --max-queue ${maxQueue}; send smaller requests`,
      );
  };

  /** Submits to every criterion in `names` (the handler checked capacity); a client that goes away cancels them all. */
  const scoreAll = async (
    req: FastifyRequest,
    reply: FastifyReply,
    names: string[],
    examples: Example[],
    field: string,
  ): Promise<ExampleScore[][]> => {
    const abort = new AbortController();
    // 'close' on the response before it finished: the client went away.
    reply.raw.on('close', () => {
      if (!reply.raw.writableFinished) abort.abort();
    });
    try {
      return await Promise.all(names.map((n) => scheduler.submit(n, examples, abort.signal)));
    } catch (e) {
      abort.abort(); // one criterion refused (queue full) or failed: withdraw what the others queued
      if (e instanceof ItemFailedError) {
        const at = `${field}[${e.slot}]`;
        throw new HttpError(
          422,
          at,
          `${at}: ${e.message} (the engine scores other items; the rest of its micro-batch was scored without it)`,
        );
      }
      throw e;
    }
  };

  const readValue = (s: ExampleScore, how: Readout): number | null => {
    if (s.tooLong || !('reward' in s)) return null;
    return how === 'reward' ? s.reward : how === 'normalized' ? s.normalized : s.logitYes - s.logitNo;
  };
  const combineValues = (perCriterion: (number | null)[][], weights: number[] | null, i: number): number | null => {
    if (!weights) return perCriterion[0]![i]!;
    let sum = 0;
    for (let j = 0; j < weights.length; j++) {
      const v = perCriterion[j]![i];
      if (v === null || v === undefined) return null;
      sum += weights[j]! * v;
    }
    return sum;
  };
  const transformScore = (v: number | null): number | null => {
    if (v === null) return tooLongReward;
    if (transform.kind === 'logit') {
      const p = Math.min(1 - 1e-6, Math.max(1e-6, v));
      return Math.log(p / (1 - p));
    }
    if (transform.kind === 'threshold') return v >= transform.at ? 1 : 0;
    return v;
  };

  // ---------- endpoints ----------

  app.get('/health', async () => ({ status: 'ok' }));

  app.get('/ready', async (_req, reply) => {
    if (closing) return reply.code(503).send({ status: 'draining' });
    if (!ready) return reply.code(503).send({ status: 'warming' });
    return { status: 'ready', queueItems: scheduler.queueDepth };
  });

  app.get('/metrics', async (_req, reply) => {
    reply.header('Content-Type', metrics.registry.contentType);
    return metrics.registry.metrics();
  });

  app.get('/v1/criteria', async () => ({
    model: { id: info.model.id, family: info.model.family, layers: info.model.numLayers, heads: info.model.numHeads },
    default: combine ? 'combine' : byName.size === 1 ? info.criteria[0]!.name : null,
    combine: combine ?? null,
    readout,
    criteria: info.criteria.map(({ name, file, meta: m }) => {
      return {
        name,
        file,
        template: m.template.kind,
        chat: m.template.chat,
        answers: m.answerTokens.strings,
        heads: m.heads.length,
        headStrategy: m.headStrategy,
        mode: m.mode,
        seed: m.seed,
        maxLength: opts.maxLength ?? m.hyper.maxLength,
        batchSize: opts.batchSize ?? m.hyper.batchSize,
        examples: m.examples.count,
        examplesSha256: m.examples.sha256,
        fittedOn: m.model.id,
        createdAt: m.fit.createdAt,
        weight: combine?.[name] ?? null,
      };
    }),
  }));

  // OpenRLHF: {query[], prompts[]?, labels[]?} → {rewards[], scores[], extra_logs{}}
  app.post<{ Body: { query: string[]; prompts?: string[] }; Querystring: { criterion?: string } }>(
    '/get_reward',
    { schema: { body: getRewardBody, querystring: criterionQuery } },
    async (req, reply) => {
      const { query, prompts } = req.body;
      const { names, weights } = targets(req.query.criterion);
      checkCapacity(query.length * names.length, 'query');
      if (prompts && prompts.length !== query.length)
        throw new HttpError(
          400,
          'prompts',
          `prompts: has ${prompts.length} entries, query has ${query.length}; send one prompt per query`,
        );
      if (!prompts && splitWithoutPrompts === 'refuse' && query.length > 0) {
        throw new HttpError(
          400,
          'prompts',
          `prompts: is required: query[i] alone cannot say where the question ends and the response begins (a response can spell a turn opener); send the templated prompts (OpenRLHF does), or ${OPT_IN}`,
        );
      }
      requireScalar(names, '/get_reward');
      const examples = query.map((q, i) => {
        const { prompt, response } = splitEntry(req.body, q, prompts?.[i], i);
        return scalarExample(`q${i}`, prompt, response);
      });
      const scored = await scoreAll(req, reply, names, examples, 'query');
      const values = scored.map((ss) => ss.map((s) => readValue(s, readout)));
      const combined = query.map((_, i) => combineValues(values, weights, i));
      const extra: Record<string, (number | null)[]> = {
        tooLong: scored[0]!.map((_, i) => (scored.some((ss) => ss[i]!.tooLong) ? 1 : 0)),
        truncated: scored[0]!.map((_, i) =>
          scored.some((ss) => 'truncatedTokens' in ss[i]! && ss[i]!.truncatedTokens > 0) ? 1 : 0,
        ),
      };
      if (names.length > 1)
        names.forEach((n, j) => {
          extra[`reward_${n}`] = values[j]!.map((v) => v ?? tooLongReward);
        });
      return {
        rewards: combined.map((v) => v ?? tooLongReward),
        scores: combined.map(transformScore),
        extra_logs: extra,
      };
    },
  );

  // vLLM: {model, input: str | [str]} → {data: [{index, label, probs: [P(No), P(Yes)], num_classes: 2}]}
  app.post<{ Body: { model?: string; input: string | string[] }; Querystring: { criterion?: string } }>(
    '/classify',
    { schema: { body: classifyBody, querystring: criterionQuery } },
    async (req, reply) => {
      const inputs = typeof req.body.input === 'string' ? [req.body.input] : req.body.input;
      const { names, weights } = targets(req.query.criterion);
      checkCapacity(inputs.length * names.length, 'input');
      if (splitWithoutPrompts === 'refuse' && inputs.length > 0) {
        throw new HttpError(
          400,
          'input',
          `input: /classify has no prompt to tell the question from the response (a response can spell a turn opener); use /get_reward with prompts or /v1/score, or ${OPT_IN}`,
        );
      }
      requireScalar(names, '/classify');
      const examples = inputs.map((text, i) => {
        try {
          const { prompt, response } = splitEntry(req.body, text, undefined, i);
          return scalarExample(`c${i}`, prompt, response);
        } catch (e) {
          if (e instanceof SplitError)
            throw new SplitError(
              `input[${i}]`,
              e.message
                .replaceAll(`query[${i}]`, `input[${i}]`)
                .replace(/ and prompts\[\d+\] was not sent, so/, ', so')
                .replace(/; send prompts$/, '; send the conversation through the chat template'),
            );
          throw e;
        }
      });
      const scored = await scoreAll(req, reply, names, examples, 'input');
      // A distribution over the two classes: P(Yes) as read out (logit-diff → its sigmoid, the two-way softmax), combined as a weighted mean.
      const pYes = scored.map((ss) =>
        ss.map((s) => {
          const v = readValue(s, readout);
          return v === null ? null : readout === 'logit-diff' ? 1 / (1 + Math.exp(-v)) : v;
        }),
      );
      const totalWeight = weights?.reduce((a, b) => a + b, 0) ?? 1;
      const data = inputs.map((_, index) => {
        const c = combineValues(pYes, weights, index);
        const p = c === null ? null : c / (weights ? totalWeight : 1);
        return p === null
          ? { index, label: null, probs: null, num_classes: 2, too_long: true }
          : { index, label: p >= 0.5 ? 'Yes' : 'No', probs: [1 - p, p], num_classes: 2 };
      });
      return {
        id: `classify-${++classifyCount}`,
        object: 'list',
        created: Math.floor(Date.now() / 1000),
        model: req.body.model ?? opts.modelName ?? info.model.id,
        data,
      };
    },
  );

  // Native: {criterion?, items: [{prompt, response}]} | {criterion?, pairs: [{prompt, chosen, rejected}]} → the fields `arm score` writes.
  app.post<{
    Body: { criterion?: string; items?: ScoreItemIn[]; pairs?: ScorePairIn[] };
    Querystring: { criterion?: string };
  }>('/v1/score', { schema: { body: scoreBody, querystring: criterionQuery } }, async (req, reply) => {
    const { items, pairs } = req.body;
    if ((items === undefined) === (pairs === undefined))
      throw new HttpError(
        400,
        'items',
        'items: send either "items" [{prompt, response}] or "pairs" [{prompt, chosen, rejected}] (exactly one of them)',
      );
    const asked = req.body.criterion ?? req.query.criterion;
    if (asked === undefined && byName.size > 1)
      throw new HttpError(
        400,
        'criterion',
        `criterion: ${byName.size} criteria are loaded (${[...byName.keys()].join(', ')}); name one`,
      );
    const name = targets(asked).names[0]!;
    checkCapacity(items ? items.length : 2 * pairs!.length, items ? 'items' : 'pairs'); // a pair is two judge items
    const found = new Map<string, string>(); // image file → the first field naming it
    const examples: Example[] = items
      ? items.map((it, i) => {
          const where = `items[${i}]`;
          const images = imagesOf(it.images, where, found);
          if (byName.get(name)!.template.kind === 'ranked')
            throw new HttpError(
              400,
              'items',
              `items: criterion "${name}" uses the ranked template, which scores pairs only; send pairs`,
            );
          const ex = scalarExample(
            String(it.id ?? i),
            judgePrompt(it.prompt, `${where}.prompt`),
            responseText(it.response),
          );
          return images ? { ...ex, images } : ex;
        })
      : pairs!.map((p, i) => {
          const where = `pairs[${i}]`;
          const images = imagesOf(p.images, where, found);
          const ex: Example = {
            kind: 'pair',
            id: String(p.id ?? i),
            line: 0,
            row: {},
            prompt: judgePrompt(p.prompt, `${where}.prompt`),
            chosen: responseText(p.chosen),
            rejected: responseText(p.rejected),
          };
          return images ? { ...ex, images } : ex;
        });
    // An unreadable image is this request's 400, not a failure of the micro-batch it would share with others.
    await readable.check(found);
    const [scores] = await scoreAll(req, reply, [name], examples, items ? 'items' : 'pairs');
    const ids = (items ?? pairs!).map((x) => x.id);
    return {
      criterion: name,
      results: scores!.map((s, i) => ({ ...(ids[i] === undefined ? {} : { id: ids[i] }), ...armFields(s) })),
    };
  });

  return {
    app,
    scheduler,
    metrics,
    get ready() {
      return ready && !closing;
    },
    async warm() {
      for (const { name, meta } of info.criteria) {
        await engine.score(name, [probeExample(meta)], { batchSize: opts.batchSize, maxLength: opts.maxLength });
      }
      ready = true;
    },
    async listen({ host = '127.0.0.1', port = 0 } = {}) {
      await app.listen({ host, port });
      bodies.prepare();
      const addr = app.server.address();
      if (!addr || typeof addr === 'string') throw new Error('serve: no TCP address');
      return `http://${addr.family === 'IPv6' ? `[${addr.address}]` : addr.address}:${addr.port}`;
    },
    async close() {
      closing = true;
      // fastify: stop listening, 503 for new requests on open connections, wait for in-flight handlers
      // (which wait on the scheduler, which keeps running); then nothing can still be queued.
      const closed = app.close();
      app.server.closeIdleConnections();
      await scheduler.drain();
      // Every handler has its result now; once their responses are written, cut kept-alive sockets (clients such as
      // undici hold them for seconds) instead of waiting for the clients to hang up.
      if (inFlight > 0)
        await new Promise<void>((resolve) => {
          onIdle = resolve;
          setTimeout(resolve, 30_000).unref();
        });
      app.server.closeAllConnections();
      await closed;
      await bodies.close();
      await engine.close();
    },
  };
}

/** The fields `arm score` writes in its "arm" column, NaN → null. */
export function armFields(s: ExampleScore): Record<string, number | boolean | null> {
  const arm =
    'chosen' in s
      ? {
          chosen: s.chosen,
          rejected: s.rejected,
          margin: s.margin,
          correct: s.correct,
          truncated: s.truncated,
          tooLong: s.tooLong,
          ...(s.swapConsistent === undefined ? {} : { swapConsistent: s.swapConsistent }),
        }
      : {
          reward: s.reward,
          normalized: s.normalized,
          logitYes: s.logitYes,
          logitNo: s.logitNo,
          truncated: s.truncatedTokens > 0,
          tooLong: s.tooLong,
        };
  return Object.fromEntries(
    Object.entries(arm).map(([k, v]) => [k, typeof v === 'number' && !Number.isFinite(v) ? null : v]),
  );
}

/** A small example every criterion scores: the warm-up, and the scheduler's probe of a working engine. */
function probeExample(meta: CriterionMeta): Example {
  return meta.template.kind === 'ranked'
    ? { kind: 'pair', id: 'probe', line: 0, row: {}, prompt: 'Warm-up.', chosen: 'Yes.', rejected: 'No.' }
    : scalarExample('probe', 'Warm-up.', 'Yes.');
}

function scalarExample(id: string, prompt: Prompt, response: string): Example {
  return { kind: 'scalar', id, line: 0, row: {}, prompt, response, label: null };
}

/** As the data reader takes a prompt: a non-empty string or a non-empty list of turns. */
function judgePrompt(p: string | Turns, field: string): Prompt {
  if (typeof p === 'string' && !p.trim()) throw new HttpError(400, field, `${field}: is empty`);
  return p;
}

/** A response given as turns (TRL conversational) is their contents joined, as the data reader does. */
function responseText(r: string | Turns): string {
  return typeof r === 'string' ? r : r.map((t) => t.content).join('\n');
}

/**
 * `images` of a /v1/score item or pair: a list of image file paths on the server's filesystem, resolved against
 * `root` as `arm score` resolves a row's paths against --image-root; each must exist and lie inside `root` (after
 * following symbolic links). Absolute paths inside `root` are accepted. Absent or empty: no images.
 */
function imageFiles(
  images: unknown,
  field: string,
  root: string,
  imageText: boolean,
  found: Map<string, string>,
): string[] | undefined {
  if (images === undefined || images === null || (Array.isArray(images) && images.length === 0)) return undefined;
  if (!imageText) throw new HttpError(400, field, `${field}: this server's model reads text only`);
  if (!Array.isArray(images)) throw new HttpError(400, field, `${field}: must be a list of image file paths`);
  let realRoot: string;
  try {
    realRoot = fs.realpathSync(root);
  } catch {
    throw new HttpError(500, null, `--image-root ${root} does not exist`);
  }
  return images.map((v, i) => {
    const at = `${field}[${i}]`;
    if (typeof v !== 'string' || !v.trim())
      throw new HttpError(400, at, `${at}: must be an image file path (a non-empty string)`);
    if (/^(https?|data):/i.test(v))
      throw new HttpError(
        400,
        at,
        `${at}: ${JSON.stringify(v.slice(0, 80))} is not a local file; images are read from the server's disk under --image-root`,
      );
    let given = v;
    if (v.startsWith('file://')) {
      try {
        given = decodeURIComponent(v.slice('file://'.length));
      } catch {
        throw new HttpError(400, at, `${at}: ${JSON.stringify(v.slice(0, 80))} is not a valid file:// URL`);
      }
    }
    const file = path.resolve(root, given);
    // `..foo.png` is a legal name inside the root; only a first segment that is exactly `..` leaves it.
    const inside = (p: string, dir: string) => {
      const rel = path.relative(dir, p);
      return rel !== '' && rel !== '..' && !rel.startsWith(`..${path.sep}`) && !path.isAbsolute(rel);
    };
    if (!inside(file, root)) throw new HttpError(400, at, `${at}: ${JSON.stringify(v)} is outside --image-root`);
    let real: string;
    try {
      real = fs.realpathSync(file);
    } catch {
      throw new HttpError(400, at, `${at}: image file ${JSON.stringify(v)} not found under --image-root`);
    }
    if (!inside(real, realRoot)) throw new HttpError(400, at, `${at}: ${JSON.stringify(v)} is outside --image-root`);
    let isFile = false;
    try {
      isFile = fs.statSync(real).isFile();
    } catch {
      /* removed meanwhile: reported below as not a file */
    }
    if (!isFile) throw new HttpError(400, at, `${at}: ${JSON.stringify(v)} is not a file`);
    if (!found.has(real)) found.set(real, at);
    return real;
  });
}

/** Image files known to decode (PNG, JPEG or WebP), by path and size + mtime; a bounded memo so a hot loop decodes each once. */
class ReadableImages {
  private readonly ok = new Map<string, string>();
  // One file at a time: a request naming many large images would otherwise hold all their decoded pixels at once.
  async check(files: Map<string, string>): Promise<void> {
    for (const [file, at] of files) {
      const st = fs.statSync(file);
      const stamp = `${st.size}:${st.mtimeMs}`;
      if (this.ok.get(file) === stamp) continue;
      try {
        await decodeImage(file);
      } catch (e) {
        throw new HttpError(400, at, `${at}: ${(e as Error).message.replace(`${file}: `, '')}`);
      }
      this.ok.delete(file);
      this.ok.set(file, stamp);
      if (this.ok.size > 4096) this.ok.delete(this.ok.keys().next().value!);
    }
  }
}

type AjvError = NonNullable<FastifyError['validation']>[number];

/**
 * The first validation error as "field: what is wrong". For a value that may take several shapes (anyOf), a
 * failure inside one shape (a turn without "role") is the useful one; else the shapes it may take are listed.
 */
function describeValidation(errors: AjvError[], context: string | undefined): { field: string; message: string } {
  const describe = (v: AjvError) => {
    const missing = (v.params as { missingProperty?: string } | undefined)?.missingProperty;
    return {
      field: fieldName(v.instancePath, missing, context),
      message: missing ? 'is required' : (v.message ?? 'is invalid'),
    };
  };
  const anyOf = errors.find((v) => v.keyword === 'anyOf');
  if (!anyOf) return describe(errors[0]!);
  const inside = errors.filter((v) => v.keyword !== 'anyOf' && v.instancePath.startsWith(anyOf.instancePath));
  const deeper = inside.filter(
    (v) =>
      v.instancePath.length > anyOf.instancePath.length || (v.params as { missingProperty?: string }).missingProperty,
  );
  if (deeper.length) return describe(deeper[0]!);
  const shapes = [
    ...new Set(inside.filter((v) => v.keyword === 'type').map((v) => String((v.params as { type?: string }).type))),
  ];
  return {
    field: fieldName(anyOf.instancePath, undefined, context),
    message: `must be ${shapes.length ? shapes.map((t) => (t !== 'array' ? `a ${t}` : /\/(prompt|response|chosen|rejected)$/.test(anyOf.instancePath) ? 'a list of {role, content} turns' : 'a list of strings')).join(' or ') : 'of another shape'}`,
  };
}

/** ajv's instance path (/items/0/prompt) as the field a user wrote: items[0].prompt. */
function fieldName(instancePath: string, missing: string | undefined, context: string | undefined): string {
  const parts = instancePath.split('/').filter(Boolean);
  if (missing) parts.push(missing);
  const name = parts.reduce((s, p) => (/^\d+$/.test(p) ? `${s}[${p}]` : s ? `${s}.${p}` : p), '');
  return name || (context === 'querystring' ? 'query string' : 'body');
}

function sha256(s: string): Buffer {
  return createHash('sha256').update(s).digest();
}
