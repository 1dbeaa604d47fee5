/**
 * HTTP errors. Every error a request meets is answered `{"error": "field: what is wrong", "field"}` with its status
 * (`field` null when no one part of the request is at fault): `HttpError` (thrown by the routes and the body parser),
 * the splitter's (400) and the scheduler's (503 queue full, with Retry-After; 503 shutting down; 499 cancelled), and
 * fastify's own: JSON-schema validation (400 naming the field as the client wrote it, `items[0].prompt`), body limit
 * (413), malformed JSON (400), another content type than JSON (415), no such route (404) or method (405), a URL
 * that does not decode (400), and what node's HTTP parser refuses before fastify sees a request (408 request
 * timeout, 431 headers too large, 400). Anything else is a 500, logged.
 */
import type { Socket } from 'node:net';
import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { CancelledError, QueueFullError, ShuttingDownError } from './scheduler.js';
import { SplitError } from './split.js';

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

/** The 413 for a body over the limit, whether its content-length says so or its bytes do. */
export function bodyTooLarge(bodyLimit: number): HttpError {
  return new HttpError(413, 'body', `body: larger than the limit of ${bodyLimit} bytes (--body-limit-mib)`);
}

/**
 * The 503 of a scoring request while the server drains. No Retry-After: this process is going away and cannot say
 * when (or whether) something will listen here again; a client with other servers should send it there.
 */
export function draining(): HttpError {
  return new HttpError(
    503,
    null,
    'the server is shutting down: it answers the requests it already has and takes no new ones (send this one to ' +
      'another server, or again once this one has restarted)',
  );
}

/** The 415 for a body that is not JSON: says what to send. */
function notJson(contentType: string | undefined): HttpError {
  const got = contentType === undefined ? 'none' : JSON.stringify(contentType);
  return new HttpError(415, 'content-type', `content-type: send "content-type: application/json" (got ${got})`);
}

/** Answers every error as `{error, field}` (see the module comment); `log` gets the unexpected ones (500). */
export function installErrorHandler(
  app: FastifyInstance,
  { bodyLimit, log }: { bodyLimit: number; log?: (line: string) => void },
): void {
  app.setNotFoundHandler((req, reply) => notFound(app, req, reply));
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
      const refused = draining();
      return send(refused.status, refused.field, refused.message);
    }
    if (err instanceof CancelledError) return send(499, null, err.message);
    const fe = err as FastifyError;
    if (fe.code === 'FST_ERR_CTP_INVALID_MEDIA_TYPE') {
      const refused = notJson(req.headers['content-type']);
      return send(refused.status, refused.field, refused.message);
    }
    if (fe.validation?.length) {
      const { field, message } = describeValidation(fe.validation, fe.validationContext);
      return send(400, field, `${field}: ${message}`);
    }
    if (fe.code === 'FST_ERR_CTP_BODY_TOO_LARGE') {
      const tooLarge = bodyTooLarge(bodyLimit);
      return send(tooLarge.status, tooLarge.field, tooLarge.message);
    }
    if (
      fe.code === 'FST_ERR_CTP_INVALID_JSON_BODY' ||
      fe.code === 'FST_ERR_CTP_EMPTY_JSON_BODY' ||
      err instanceof SyntaxError
    )
      return send(400, 'body', `body: not valid JSON (${err.message})`);
    if (fe.statusCode && fe.statusCode >= 400 && fe.statusCode < 500) return send(fe.statusCode, null, err.message);
    log?.(`error on ${req.method} ${req.url}: ${err.stack ?? err.message}`);
    return send(500, null, `internal error: ${err.message}`);
  });
}

const METHODS = ['GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'PATCH', 'OPTIONS'] as const;

/** No route: 405 with Allow when the path takes other methods, else 404. */
function notFound(app: FastifyInstance, req: FastifyRequest, reply: FastifyReply): FastifyReply {
  const url = req.url.split('?')[0]!;
  const allowed = METHODS.filter((method) => app.hasRoute({ method, url }));
  if (allowed.length) {
    reply.header('Allow', allowed.join(', '));
    return reply
      .code(405)
      .send({ error: `method: ${url} takes ${allowed.join(' or ')}, not ${req.method}`, field: 'method' });
  }
  return reply
    .code(404)
    .send({ error: `url: no route ${req.method} ${url} (GET /openapi.json lists the routes)`, field: 'url' });
}

/**
 * fastify's `frameworkErrors`: a URL that does not decode (400) and the like, answered `{error, field}` instead of
 * fastify's own shape.
 */
export function frameworkError(err: FastifyError, req: FastifyRequest, reply: FastifyReply): void {
  if (err.code === 'FST_ERR_BAD_URL') {
    void reply
      .code(400)
      .send({ error: `url: ${JSON.stringify(req.url)} is not a valid URL (bad %-encoding)`, field: 'url' });
    return;
  }
  void reply.code(err.statusCode ?? 400).send({ error: err.message, field: null });
}

/**
 * fastify's `clientErrorHandler`: what node's HTTP parser refuses before there is a request (a request not received
 * in time, headers too large, bytes that are not HTTP), written straight to the socket as `{error, field}`.
 */
export function clientError(err: NodeJS.ErrnoException, socket: Socket): void {
  if (err.code === 'ECONNRESET' || socket.destroyed) return;
  const [status, reason, message] =
    err.code === 'ERR_HTTP_REQUEST_TIMEOUT'
      ? [408, 'Request Timeout', 'the request (headers and body) did not arrive within the request timeout']
      : err.code === 'HPE_HEADER_OVERFLOW'
        ? [431, 'Request Header Fields Too Large', 'the request headers are larger than the server accepts']
        : [400, 'Bad Request', `the request is not valid HTTP (${err.code ?? err.message})`];
  const body = JSON.stringify({ error: message, field: null });
  if (socket.writable)
    socket.write(
      `HTTP/1.1 ${status} ${reason}\r\nContent-Length: ${Buffer.byteLength(body)}\r\n` +
        `Content-Type: application/json; charset=utf-8\r\nConnection: close\r\n\r\n${body}`,
    );
  socket.destroy(err);
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
  const listed = shapes.map((type) => shapeName(type, anyOf.instancePath)).join(' or ');
  return {
    field: fieldName(anyOf.instancePath, undefined, context),
    message: `must be ${shapes.length ? listed : 'of another shape'}`,
  };
}

/** A JSON type as the message names it; a list under prompt/response/chosen/rejected is one of turns. */
function shapeName(type: string, instancePath: string): string {
  if (type !== 'array') return `a ${type}`;
  return /\/(prompt|response|chosen|rejected)$/.test(instancePath)
    ? 'a list of {role, content} turns'
    : 'a list of strings';
}

/** ajv's instance path (/items/0/prompt) as the field a user wrote: items[0].prompt. */
function fieldName(instancePath: string, missing: string | undefined, context: string | undefined): string {
  const parts = instancePath.split('/').filter(Boolean);
  if (missing) parts.push(missing);
  const name = parts.reduce((s, p) => (/^\d+$/.test(p) ? `${s}[${p}]` : s ? `${s}.${p}` : p), '');
  return name || (context === 'querystring' ? 'query string' : 'body');
}
