/**
 * The OpenAPI description at /openapi.json against the server itself (a stand-in engine: no model needed): every
 * route fastify serves is described with its methods and nothing else is; the request schemas described are the ones
 * validated (a body without a field the description requires, or with a field of a type it does not allow, is the
 * 400 naming that field); the API key is marked where the server asks for it.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { createRewardServer, type RewardServer } from '../../src/server/app.js';
import { standInEngine } from './stand-in-engine.js';

interface JsonSchema {
  type?: string | string[];
  anyOf?: JsonSchema[];
  required?: string[];
  properties?: Record<string, JsonSchema>;
}
interface Operation {
  summary?: string;
  security?: Record<string, string[]>[];
  requestBody?: { content: Record<string, { schema: JsonSchema }> };
  responses: Record<string, unknown>;
}
interface Description {
  openapi: string;
  info: { title: string; version: string };
  paths: Record<string, Record<string, Operation>>;
}

const running: RewardServer[] = [];
afterEach(async () => {
  await Promise.all(running.splice(0).map((s) => s.close()));
});

async function start(apiKey?: string): Promise<{ server: RewardServer; url: string }> {
  const server = await createRewardServer({ engine: standInEngine(), apiKey });
  running.push(server);
  return { server, url: await server.listen({ host: '127.0.0.1', port: 0 }) };
}

async function description(url: string, headers: Record<string, string> = {}): Promise<Description> {
  const res = await fetch(`${url}/openapi.json`, { headers, signal: AbortSignal.timeout(10_000) });
  expect(res.status).toBe(200);
  return (await res.json()) as Description;
}

/** `METHOD /path` for every route fastify serves, read from its router (HEAD comes with each GET: left out). */
function servedRoutes(server: RewardServer): string[] {
  const routes: string[] = [];
  for (const line of server.app.printRoutes({ commonPrefix: false }).split('\n')) {
    const m = /(\/\S*) \(([A-Z, ]+)\)/.exec(line);
    if (!m) continue;
    for (const method of m[2]!.split(', ')) if (method !== 'HEAD') routes.push(`${method} ${m[1]}`);
  }
  return routes.sort();
}

function describedRoutes(doc: Description): string[] {
  return Object.entries(doc.paths)
    .flatMap(([p, ops]) => Object.keys(ops).map((method) => `${method.toUpperCase()} ${p}`))
    .sort();
}

/** A value of `schema`'s type (the first one it allows), and one of a type it does not allow (null: any is fine). */
function valueOf(schema: JsonSchema): unknown {
  const type = [schema.type ?? schema.anyOf?.[0]?.type].flat()[0];
  return type === 'array' ? [] : type === 'object' ? {} : type === 'number' ? 1 : 'text';
}
function wrongValueFor(schema: JsonSchema): unknown {
  const allowed = new Set([schema.type ?? schema.anyOf?.map((s) => s.type)].flat(2).filter(Boolean));
  if (!allowed.size) return null;
  return allowed.has('number') ? true : 5;
}

describe('GET /openapi.json', () => {
  it('describes every route fastify serves with its methods, and no other; each with a summary, answers', async () => {
    const { server, url } = await start();
    const doc = await description(url);
    expect(doc.openapi).toBe('3.0.3');
    expect(doc.info.title).toBe('activation-rm reward server');
    const served = servedRoutes(server);
    expect(served).toContain('POST /v1/score');
    expect(served).toContain('GET /openapi.json');
    expect(describedRoutes(doc)).toEqual(served);
    for (const [p, ops] of Object.entries(doc.paths))
      for (const [method, op] of Object.entries(ops)) {
        expect([method, p, op.summary?.length]).toEqual([method, p, expect.any(Number)]);
        expect(Object.keys(op.responses).sort()).toEqual(['200', '4XX', '5XX']);
      }
  });

  it('the request bodies described are the ones validated: each required field and each type', async () => {
    const { url } = await start();
    const doc = await description(url);
    const checked: string[] = [];
    for (const [p, ops] of Object.entries(doc.paths)) {
      for (const [method, op] of Object.entries(ops)) {
        const schema = op.requestBody?.content['application/json']?.schema;
        if (!schema) continue;
        expect(method).toBe('post');
        const properties = schema.properties ?? {};
        const minimal = Object.fromEntries((schema.required ?? []).map((f) => [f, valueOf(properties[f]!)]));
        const post = async (body: unknown) => {
          const res = await fetch(url + p, {
            method: 'POST',
            headers: { 'content-type': 'application/json' },
            body: JSON.stringify(body),
            signal: AbortSignal.timeout(10_000),
          });
          return { status: res.status, ...((await res.json()) as { error?: string; field?: string }) };
        };
        for (const field of schema.required ?? []) {
          const without = await post({ ...minimal, [field]: undefined });
          expect([p, without.status, without.field, without.error]).toEqual([p, 400, field, `${field}: is required`]);
          checked.push(`${p} requires ${field}`);
        }
        for (const [field, fieldSchema] of Object.entries(properties)) {
          const wrong = wrongValueFor(fieldSchema);
          if (wrong === null) continue; // described as anything: accepted
          const got = await post({ ...minimal, [field]: wrong });
          expect([p, field, got.status, got.field]).toEqual([p, field, 400, field]);
          expect(got.error).toMatch(new RegExp(`^${field}: must be `));
          checked.push(`${p} types ${field}`);
        }
      }
    }
    // The scoring routes' bodies as the server's own tests know them (test/server/server.test.ts "bad requests").
    expect(checked).toEqual(
      expect.arrayContaining([
        '/get_reward requires query',
        '/get_reward types prompts',
        '/classify requires input',
        '/v1/score types items',
        '/v1/score types pairs',
      ]),
    );
  });

  it('with an API key: every operation but /health is marked as needing it, as the server asks for it', async () => {
    const { url } = await start('s3cret-key');
    expect((await fetch(`${url}/openapi.json`)).status).toBe(401);
    const doc = await description(url, { authorization: 'Bearer s3cret-key' });
    for (const [p, ops] of Object.entries(doc.paths))
      for (const [method, op] of Object.entries(ops)) {
        const marked = JSON.stringify(op.security ?? []) === JSON.stringify([{ apiKey: [] }]);
        const status = (await fetch(url + p, { method: method.toUpperCase(), signal: AbortSignal.timeout(10_000) }))
          .status;
        expect([method, p, marked, status === 401]).toEqual([method, p, p !== '/health', p !== '/health']);
      }
  });
});
