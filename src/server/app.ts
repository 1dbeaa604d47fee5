/**
 * The reward server (`arm serve`): one decoder, several criteria, the micro-batching scheduler behind OpenRLHF's
 * `/get_reward`, vLLM's `/classify` and the native `/v1/score`. `createRewardServer` wires the parts together:
 * options (options.ts), scheduler, HTTP (http.ts, http-errors.ts), routes (routes/), lifecycle (warm, listen, close).
 *
 * How a request flows, e.g. `POST /get_reward {query, prompts}`:
 *  1. Parse (http.ts installJsonBodyParser, body.ts): the body is counted (413 beyond the limits) and parsed, on this
 *     thread up to 256 KiB, else in the body thread (body-worker.ts), which also splits its texts ahead (step 3).
 *  2. Validate: fastify checks it against the route's JSON schema; every error becomes `{error, field}`
 *     (http-errors.ts).
 *  3. Split (routes/get-reward.ts, split.ts): each `query[i]` is cut after `prompts[i]` into the judge's prompt and
 *     the response.
 *  4. Queue (routes/context.ts scoreAll, scheduler.ts MicroBatcher): the examples wait with other requests', per
 *     criterion; a micro-batch of up to `maxBatch` judge items starts when full or when its oldest waited `maxWaitMs`
 *     (503 beyond `maxQueue`).
 *  5. Score (engine.ts WorkerEngine, score-worker.ts): the batch is posted to the scoring thread, which runs
 *     `ActivationRM.scoreExamples` (the call `arm score` makes) and posts the scores back. (An InProcessEngine makes
 *     the same call on this thread.)
 *  6. Respond (routes/get-reward.ts, readout.ts): the request gets its own examples' scores from the batch; rewards
 *     read out, combined over criteria, transformed into scores → `{rewards, scores, extra_logs}`.
 * `/classify` (routes/classify.ts) and `/v1/score` (routes/score.ts) take the same road; `/health`, `/ready`,
 * `/metrics` and `/v1/criteria` are routes/status.ts; `/openapi.json`, the API's description, openapi.ts.
 */
import type { FastifyInstance } from 'fastify';
import { BodyReader, VALUES_PER_ITEM } from './body.js';
import type { EngineInfo, ScoringEngine } from './engine-types.js';
import { installErrorHandler } from './http-errors.js';
import {
  countRequests,
  createHttpApp,
  installApiKeyCheck,
  installJsonBodyParser,
  trackRequests,
  type RequestTracker,
} from './http.js';
import { createMetrics, type ServerMetrics } from './metrics.js';
import { installApiDescription } from './openapi.js';
import { checkLimits, resolveSettings, type RewardServerOptions, type ServerSettings } from './options.js';
import { registerClassifyRoute } from './routes/classify.js';
import { probeExample, type RouteContext } from './routes/context.js';
import { registerGetRewardRoute } from './routes/get-reward.js';
import { registerScoreRoute } from './routes/score.js';
import { registerStatusRoutes, type ServerPhase } from './routes/status.js';
import { MicroBatcher } from './scheduler.js';
import { BodySplits, QuerySplitter } from './split.js';

export interface RewardServer {
  app: FastifyInstance;
  scheduler: MicroBatcher;
  metrics: ServerMetrics;
  readonly ready: boolean;
  /** Scores one example per criterion outside the queue (first-run costs), then /ready answers 200. */
  warm(): Promise<void>;
  /** Listens; resolves with the base URL (http://host:port). */
  listen(opts?: { host?: string; port?: number }): Promise<string>;
  /**
   * Drains (still listening: /ready 503, new scoring requests 503), answers everything queued and in flight, stops
   * listening, closes the engine, then resolves.
   */
  close(): Promise<void>;
}

/** Whether warm() has finished and close() has begun. */
interface ServerState {
  ready: boolean;
  closing: boolean;
}

/** A reward server over `opts.engine`, not yet listening; throws when the options do not hold together. */
export async function createRewardServer(opts: RewardServerOptions): Promise<RewardServer> {
  const settings = resolveSettings(opts);
  const { engine } = opts;
  const metrics = createMetrics();
  const scheduler = createScheduler(engine, settings, metrics);
  // After the scheduler, whose own check of maxBatch, maxQueue and maxWaitMs answers first (as it always has).
  checkLimits(opts);
  const state: ServerState = { ready: false, closing: false };
  const app = createHttpApp(settings);
  await installApiDescription(app, { apiKey: opts.apiKey !== undefined }); // before the routes, to see them all
  const { bodies, splits } = installBodyReading(app, engine.info, settings);
  installApiKeyCheck(app, opts.apiKey);
  const requests = trackRequests(app, () => state.closing);
  countRequests(app, metrics);
  installErrorHandler(app, { bodyLimit: settings.bodyLimit, log: opts.log });
  registerRoutes(app, { info: engine.info, settings, scheduler, splits }, { metrics, phase: () => phaseOf(state) });
  return serverLifecycle({ app, scheduler, metrics, engine, bodies, requests, settings }, state);
}

/** The micro-batching scheduler over `engine`, reporting to `metrics`; a failed batch is told apart by a probe. */
function createScheduler(engine: ScoringEngine, settings: ServerSettings, metrics: ServerMetrics): MicroBatcher {
  return new MicroBatcher(
    engine,
    {
      maxBatch: settings.maxBatch,
      maxWaitMs: settings.maxWaitMs,
      maxQueue: settings.maxQueue,
      batchSize: settings.batchSize,
      maxLength: settings.maxLength,
      probe: (name) => probeExample(settings.criteria.get(name)!),
    },
    (r) => metrics.observeBatch(r),
    (n) => metrics.queueItems.set(n),
  );
}

/**
 * JSON bodies read by a BodyReader (large ones in the body thread, every one refused on its counts first), and the
 * splits of /get_reward and /classify entries it makes ahead.
 */
function installBodyReading(
  app: FastifyInstance,
  info: EngineInfo,
  settings: ServerSettings,
): { bodies: BodyReader; splits: BodySplits } {
  const maxItems = settings.maxRequestItems;
  const bodies = new BodyReader(
    { maxItems, maxValues: maxItems * VALUES_PER_ITEM + 64 },
    { specials: info.specialTokens, eosToken: info.eosToken, withoutPrompts: settings.splitWithoutPrompts },
  );
  const splits = new BodySplits(new QuerySplitter(info.specialTokens, info.eosToken, settings.splitWithoutPrompts));
  installJsonBodyParser(app, { reader: bodies, splits, bodyLimit: settings.bodyLimit });
  return { bodies, splits };
}

function registerRoutes(
  app: FastifyInstance,
  ctx: RouteContext,
  status: { metrics: ServerMetrics; phase: () => ServerPhase },
): void {
  registerStatusRoutes(app, ctx, status);
  registerGetRewardRoute(app, ctx);
  registerClassifyRoute(app, ctx);
  registerScoreRoute(app, ctx);
}

function phaseOf(state: ServerState): ServerPhase {
  return state.closing ? 'draining' : state.ready ? 'ready' : 'warming';
}

/** What warm, listen and close act on. */
interface ServerParts {
  app: FastifyInstance;
  scheduler: MicroBatcher;
  metrics: ServerMetrics;
  engine: ScoringEngine;
  bodies: BodyReader;
  requests: RequestTracker;
  settings: ServerSettings;
}

/** The server's life: warm (then /ready is 200), listen, and close (the graceful drain). */
function serverLifecycle(parts: ServerParts, state: ServerState): RewardServer {
  const { app, scheduler, metrics, engine, bodies, requests, settings } = parts;
  return {
    app,
    scheduler,
    metrics,
    get ready() {
      return state.ready && !state.closing;
    },
    async warm() {
      for (const { name, meta } of engine.info.criteria) {
        await engine.score(name, [probeExample(meta)], {
          batchSize: settings.batchSize,
          maxLength: settings.maxLength,
        });
      }
      state.ready = true;
    },
    async listen({ host = '127.0.0.1', port = 0 } = {}) {
      await app.listen({ host, port });
      bodies.prepare();
      const addr = app.server.address();
      if (!addr || typeof addr === 'string') throw new Error('serve: no TCP address');
      return `http://${addr.family === 'IPv6' ? `[${addr.address}]` : addr.address}:${addr.port}`;
    },
    async close() {
      state.closing = true;
      // Still listening while it drains: /ready answers 503 (draining), /health 200, a new scoring request 503
      // (http.ts trackRequests); everything queued and running is scored, every request in flight answered.
      await scheduler.drain();
      if (requests.inFlight > 0) await requests.allAnswered();
      // Then stop listening and cut kept-alive sockets (clients such as undici hold them for seconds) instead of
      // waiting for the clients to hang up.
      const closed = app.close();
      app.server.closeAllConnections();
      await closed;
      await bodies.close();
      await engine.close();
    },
  };
}
