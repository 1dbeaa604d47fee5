/**
 * The server's OpenAPI description, served at `GET /openapi.json`. The request side (bodies, query strings) comes
 * from the very schemas fastify validates each route with (@fastify/swagger collects them as routes are added);
 * this module adds what a schema does not say: each operation's summary, its answers (documentation only: the
 * routes' responses are not validated against them), the one error shape, and the API key when one is required.
 * test/server/openapi.test.ts checks the document against the routes fastify actually serves.
 */
import fs from 'node:fs';
import swagger from '@fastify/swagger';
import type { FastifyInstance } from 'fastify';

/** Every error answer (http-errors.ts): components/schemas/ErrorAnswer in the document. */
const errorBody = {
  $id: 'ErrorAnswer',
  type: 'object',
  required: ['error', 'field'],
  properties: {
    error: { type: 'string', description: '"field: what is wrong" (no prefix when field is null)' },
    field: { type: ['string', 'null'], description: 'the part of the request at fault, as the client wrote it' },
  },
};

const number = { type: 'number' };
const nullableNumber = { type: ['number', 'null'] };

/** What each operation is for and what it answers besides errors; keyed `METHOD /path`. */
const OPERATIONS: Record<string, { summary: string; description?: string; ok: Record<string, unknown> }> = {
  'GET /health': {
    summary: 'The process is alive (never needs the API key; answers while the server drains)',
    ok: { type: 'object', properties: { status: { type: 'string', enum: ['ok'] } } },
  },
  'GET /ready': {
    summary: 'Ready to score: 200 once warm; 503 {status: warming | draining} otherwise',
    ok: { type: 'object', properties: { status: { type: 'string', enum: ['ready'] }, queueItems: number } },
  },
  'GET /metrics': {
    summary: 'Prometheus metrics (text exposition format)',
    ok: { type: 'string' },
  },
  'GET /v1/criteria': {
    summary: 'The model and the criteria loaded, from each criterion file',
    ok: { type: 'object', properties: { model: { type: 'object' }, criteria: { type: 'array' } } },
  },
  'POST /get_reward': {
    summary: "OpenRLHF's reward protocol: rewards for whole policy outputs",
    description:
      'query[i] is the whole text, prompts[i] the templated prompt it starts with; the response is what follows it.',
    ok: {
      type: 'object',
      properties: {
        rewards: { type: 'array', items: nullableNumber },
        scores: { type: 'array', items: nullableNumber },
        extra_logs: { type: 'object', additionalProperties: { type: 'array', items: nullableNumber } },
      },
    },
  },
  'POST /classify': {
    summary: "vLLM's /classify (verl): probs = [P(No), P(Yes)] per input",
    description: 'Needs the server started with --split-without-prompts last-assistant-turn.',
    ok: {
      type: 'object',
      properties: { id: { type: 'string' }, object: { type: 'string' }, model: { type: 'string' }, data: {} },
    },
  },
  'POST /v1/score': {
    summary: 'Native scoring of items {prompt, response} or pairs {prompt, chosen, rejected}',
    description:
      'Each result carries the fields `arm score` writes; with `criteria` (several names) each result is ' +
      '`{id, scores: {name: fields}}`, the criteria of one pass scored with one run of each prompt.',
    ok: {
      type: 'object',
      properties: {
        criterion: { type: 'string' },
        criteria: { type: 'array', items: { type: 'string' } },
        results: { type: 'array', items: { type: 'object' } },
      },
    },
  },
  'GET /openapi.json': {
    summary: 'This description',
    ok: { type: 'object' },
  },
};

/**
 * Registers @fastify/swagger (before any route, so that it sees them all) and `GET /openapi.json`. `apiKey`: every
 * operation but /health is marked as needing the bearer key.
 */
export async function installApiDescription(app: FastifyInstance, { apiKey }: { apiKey: boolean }): Promise<void> {
  await app.register(swagger, {
    openapi: {
      openapi: '3.0.3',
      info: {
        title: 'activation-rm reward server',
        version: packageVersion(),
        description: 'Activation reward models served over HTTP (`arm serve`; docs/server.md).',
      },
      components: apiKey ? { securitySchemes: { apiKey: { type: 'http', scheme: 'bearer' } } } : {},
    },
    // Shared schemas under their own names (components/schemas/ErrorAnswer), not def-0.
    refResolver: { buildLocalReference: (json, _baseUri, _fragment, i) => String(json.$id ?? `def-${i}`) },
    transform: ({ schema, url, route }) => {
      const method = [route.method].flat().find((m) => m !== 'HEAD')!;
      const operation = OPERATIONS[`${method} ${url}`];
      return {
        url,
        schema: {
          ...schema,
          ...(operation && {
            summary: operation.summary,
            ...(operation.description && { description: operation.description }),
            response: {
              200: { description: 'OK', ...operation.ok },
              '4XX': { description: 'Refused', $ref: 'ErrorAnswer#' },
              '5XX': { description: 'Not answered', $ref: 'ErrorAnswer#' },
            },
          }),
          ...(url === '/metrics' && { produces: ['text/plain'] }),
          ...(apiKey && url !== '/health' && { security: [{ apiKey: [] }] }),
        },
      };
    },
  });
  app.addSchema(errorBody);
  app.get('/openapi.json', async () => app.swagger());
}

/** The version in package.json (two folders up from src/server and from dist/server alike). */
function packageVersion(): string {
  const pkg = JSON.parse(fs.readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as {
    version: string;
  };
  return pkg.version;
}
