/**
 * HTTP errors. Every error a request meets is answered `{"error": "field: what is wrong", "field"}` with its status:
 * `HttpError` (thrown by the routes and the body parser), the splitter's (400) and the scheduler's (503 queue full
 * or shutting down, with Retry-After; 499 cancelled), and fastify's own: JSON-schema validation (400 naming the
 * field as the client wrote it, `items[0].prompt`), body limit (413), malformed JSON (400). Anything else is a 500,
 * logged.
 */
import type { FastifyError, FastifyInstance } from 'fastify';
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

/** Answers every error as `{error, field}` (see the module comment); `log` gets the unexpected ones (500). */
export function installErrorHandler(
  app: FastifyInstance,
  { bodyLimit, log }: { bodyLimit: number; log?: (line: string) => void },
): void {
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
