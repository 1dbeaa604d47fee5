/**
 * The HTTP side of the reward server, around fastify: the instance with its timeouts and connection limits, the
 * JSON body parser (bodies counted before any per-item work, large ones parsed in the body thread: body.ts), the
 * API key check, connection tracking for the drain, and request metrics. The routes are in routes/, the error
 * answers in http-errors.ts.
 *
 * HTTP is fastify: its JSON-schema validation (ajv) gives 400s that point at the offending field, its body limit
 * gives 413 before a large body is parsed, and its close() stops listening and lets in-flight requests finish,
 * which is the graceful drain. node:http + zod would need all three written around it.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import type { Socket } from 'node:net';
import Fastify, { type FastifyInstance } from 'fastify';
import type { BodyReader } from './body.js';
import { bodyTooLarge, clientError, draining, frameworkError, HttpError } from './http-errors.js';
import type { ServerMetrics } from './metrics.js';
import type { ServerSettings } from './options.js';
import type { BodySplits } from './split.js';

/** A fastify instance with the settings' body limit, timeouts and connection limits, strict JSON-schema types. */
export function createHttpApp(settings: ServerSettings): FastifyInstance {
  const { requestTimeoutMs } = settings;
  const app = Fastify({
    bodyLimit: settings.bodyLimit,
    logger: false,
    // While the server drains it keeps listening (app.ts close): /ready says 503 and the scoring routes refuse with
    // the error shape of every other answer, not fastify's own 503.
    return503OnClosing: false,
    // Errors fastify and node answer before a route runs, in the same `{error, field}` shape (http-errors.ts).
    frameworkErrors: frameworkError,
    clientErrorHandler: clientError,
    ajv: { customOptions: { coerceTypes: false, removeAdditional: false, allErrors: false } },
    // Slow clients hold a connection (and its body buffer) only so long: a whole request within requestTimeoutMs,
    // checked every quarter of it (node checks every 30 s by default), headers within the same bound.
    requestTimeout: requestTimeoutMs,
    http: {
      requestTimeout: requestTimeoutMs,
      headersTimeout: Math.min(60_000, requestTimeoutMs),
      connectionsCheckingInterval: Math.max(50, Math.min(30_000, Math.floor(requestTimeoutMs / 4))),
    },
    connectionTimeout: settings.idleTimeoutMs,
    keepAliveTimeout: settings.keepAliveTimeoutMs,
    maxRequestsPerSocket: settings.maxRequestsPerSocket,
  });
  app.server.maxConnections = settings.maxConnections;
  return app;
}

/**
 * JSON bodies read by `reader` (body.ts): large ones parsed off the main thread, every one refused on its counts
 * before any per-item work; a body whose texts the body thread split is remembered in `splits`. Over `bodyLimit`
 * bytes (declared or received): 413. Any other content type: 415.
 */
export function installJsonBodyParser(
  app: FastifyInstance,
  { reader, splits, bodyLimit }: { reader: BodyReader; splits: BodySplits; bodyLimit: number },
): void {
  // JSON only: a body of another type (text/plain included) is a 415 that says what to send.
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('application/json', (req, payload, done) => {
    const declared = Number(req.headers['content-length']);
    if (declared > bodyLimit) {
      done(bodyTooLarge(bodyLimit), undefined);
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
        done(bodyTooLarge(bodyLimit), undefined);
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
      reader.read(chunks, received, req.routeOptions.url).then(
        (read) => {
          if ('refusal' in read) {
            done(new HttpError(read.refusal.status, read.refusal.field, read.refusal.message), undefined);
            return;
          }
          if (read.presplit && read.body !== null && typeof read.body === 'object')
            splits.remember(read.body, read.presplit);
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
}

/** With an `apiKey`, every route but /health needs `Authorization: Bearer <key>` (401 otherwise). */
export function installApiKeyCheck(app: FastifyInstance, apiKey: string | undefined): void {
  const apiKeyDigest = apiKey === undefined ? null : sha256(apiKey);
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
}

/** What the drain needs to know about the requests received. */
export interface RequestTracker {
  /** Requests received and not yet answered. */
  readonly inFlight: number;
  /** Resolves once every request received has been answered (or after 30 s). */
  allAnswered(): Promise<void>;
}

/**
 * Counts requests from receipt to the end of their response, so that close() cuts connections only once all are
 * answered; closes silent connections (idle timeout) but not one whose request is being scored; while the server
 * drains (`closing()`), refuses new scoring requests (every POST) with 503; and hangs up after answering while it
 * drains or when the answer came before the body.
 */
export function trackRequests(app: FastifyInstance, closing: () => boolean): RequestTracker {
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
    if (closing() && req.method === 'POST') throw draining();
  });
  // A silent connection (no request, or kept alive after one) is closed; one whose request is being scored is not.
  app.server.on('timeout', (socket: Socket) => {
    if (!answering.get(socket)) socket.destroy();
  });
  app.addHook('onSend', async (req, reply) => {
    // While draining, answer and hang up: a kept-alive socket would hold close() open until its idle timeout.
    // Answered before its body arrived (401, 413): hang up rather than read the rest of a body nobody needs.
    if (closing() || !req.raw.complete) reply.header('Connection', 'close');
  });
  return {
    get inFlight() {
      return inFlight;
    },
    allAnswered() {
      return new Promise<void>((resolve) => {
        if (inFlight === 0) return resolve();
        onIdle = resolve;
        setTimeout(resolve, 30_000).unref();
      });
    },
  };
}

/** `arm_http_requests_total` and `arm_http_request_duration_seconds` for every response. */
export function countRequests(app: FastifyInstance, metrics: ServerMetrics): void {
  app.addHook('onResponse', async (req, reply) => {
    const endpoint = req.routeOptions.url ?? 'unmatched';
    metrics.requests.inc({ endpoint, status: String(reply.statusCode) });
    metrics.latency.observe({ endpoint }, reply.elapsedTime / 1000);
  });
}

function sha256(s: string): Buffer {
  return createHash('sha256').update(s).digest();
}
