/**
 * One error shape for every refusal, fastify's and node's included (404, 405, 415, a URL that does not decode, what
 * the HTTP parser refuses), and the drain as clients see it: still listening, /ready 503, /health 200, new scoring
 * requests 503 without Retry-After, everything in flight answered, then nothing listens. On a stand-in engine whose
 * scoring waits on a gate the test opens, so no timing decides what the server is doing.
 */
import { afterEach, describe, expect, it } from 'vitest';
import net from 'node:net';
import { createRewardServer, type RewardServer } from '../../src/server/app.js';
import type { ScoringEngine } from '../../src/server/engine-types.js';
import type { RewardServerOptions } from '../../src/server/options.js';
import { standInEngine } from './stand-in-engine.js';

const running: RewardServer[] = [];
afterEach(async () => {
  await Promise.all(running.splice(0).map((s) => s.close()));
});

async function start(
  opts: Partial<RewardServerOptions> = {},
  engine: ScoringEngine = standInEngine(),
): Promise<{ server: RewardServer; url: string }> {
  const server = await createRewardServer({ engine, ...opts });
  running.push(server);
  const url = await server.listen({ host: '127.0.0.1', port: 0 });
  await server.warm();
  return { server, url };
}

interface Answer {
  status: number;
  body: Record<string, unknown>;
  headers: Headers;
}

async function send(url: string, method: string, body?: string, headers: Record<string, string> = {}): Promise<Answer> {
  const res = await fetch(url, { method, body, headers, signal: AbortSignal.timeout(10_000) });
  return { status: res.status, body: (await res.json()) as Record<string, unknown>, headers: res.headers };
}

/** Bytes written on a raw connection, and everything the server answers until it closes it. */
function raw(port: number, bytes: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1', () => socket.write(bytes));
    let got = '';
    socket.on('data', (b) => (got += b.toString()));
    socket.on('close', () => resolve(got));
    socket.on('error', reject);
    setTimeout(() => {
      socket.destroy();
      reject(new Error(`no close within 10 s; got ${JSON.stringify(got)}`));
    }, 10_000).unref();
  });
}

/** An error answer: exactly `{error, field}`, the message starting with the field it names. */
function expectErrorShape(body: Record<string, unknown>, field: string | null): void {
  expect(Object.keys(body).sort()).toEqual(['error', 'field']);
  expect(body.field).toBe(field);
  expect(typeof body.error).toBe('string');
  if (field !== null) expect(body.error).toMatch(new RegExp(`^${field}: `));
}

describe('one error shape', () => {
  it('404 for an unknown route, 405 with Allow for a known route and another method', async () => {
    const { url } = await start();
    const missing = await send(`${url}/nowhere?x=1`, 'GET');
    expect(missing.status).toBe(404);
    expectErrorShape(missing.body, 'url');
    expect(missing.body.error).toBe('url: no route GET /nowhere (GET /openapi.json lists the routes)');
    const wrongMethod = await send(`${url}/v1/score`, 'GET');
    expect([wrongMethod.status, wrongMethod.headers.get('allow')]).toEqual([405, 'POST']);
    expectErrorShape(wrongMethod.body, 'method');
    expect(wrongMethod.body.error).toBe('method: /v1/score takes POST, not GET');
    const postToHealth = await send(`${url}/health`, 'POST', '{}', { 'content-type': 'application/json' });
    expect([postToHealth.status, postToHealth.headers.get('allow')]).toEqual([405, 'GET, HEAD']);
    expectErrorShape(postToHealth.body, 'method');
  });

  it('415 for a body that is not JSON (text/plain and form posts included) says to send application/json', async () => {
    const { url } = await start();
    const json = JSON.stringify({ items: [{ prompt: 'p', response: 'r' }] });
    for (const type of ['text/plain', 'application/x-www-form-urlencoded', 'application/xml', 'multipart/form-data']) {
      const got = await send(`${url}/v1/score`, 'POST', json, { 'content-type': type });
      expect([type, got.status]).toEqual([type, 415]);
      expectErrorShape(got.body, 'content-type');
      expect(got.body.error).toBe(`content-type: send "content-type: application/json" (got "${type}")`);
    }
    // The same body as JSON is scored (with a charset too): only the type was wrong.
    for (const type of ['application/json', 'application/json; charset=utf-8']) {
      const ok = await send(`${url}/v1/score`, 'POST', json, { 'content-type': type });
      expect([type, ok.status]).toEqual([type, 200]);
    }
  });

  it('a URL that does not decode: 400 naming the url', async () => {
    const { url } = await start();
    const got = await send(`${url}/v1/criteria%zz`, 'GET');
    expect(got.status).toBe(400);
    expectErrorShape(got.body, 'url');
  });

  it("what node's HTTP parser refuses (not HTTP, headers too large) is answered in the same shape", async () => {
    const { url } = await start();
    const port = Number(new URL(url).port);
    for (const [bytes, status] of [
      ['NOT HTTP AT ALL\r\n\r\n', 400],
      [`GET /health HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(40_000)}\r\n\r\n`, 431],
    ] as const) {
      const got = await raw(port, bytes);
      expect(got).toMatch(new RegExp(`^HTTP/1\\.1 ${status} `));
      expectErrorShape(JSON.parse(got.slice(got.indexOf('\r\n\r\n') + 4)) as Record<string, unknown>, null);
    }
  });
});

describe('drain (close)', () => {
  it(
    'while requests are scored: /ready 503 draining, /health 200, new scoring requests 503 without Retry-After; ' +
      'those in flight answered; then nothing listens',
    async () => {
      // The client's items wait at a gate inside the engine (the warm-up's probe does not).
      let open!: () => void;
      const gate = new Promise<void>((resolve) => (open = resolve));
      let scoring!: () => void;
      const batchRunning = new Promise<void>((resolve) => (scoring = resolve));
      const inner = standInEngine();
      const engine: ScoringEngine = {
        ...inner,
        async score(criterion, examples, opts) {
          if (examples[0]?.id !== 'probe') {
            scoring();
            await gate;
          }
          return inner.score(criterion, examples, opts);
        },
      };
      const { server, url } = await start({ maxWaitMs: 0 }, engine);
      const inFlight = send(`${url}/v1/score`, 'POST', JSON.stringify({ items: [{ prompt: 'p', response: 'abc' }] }), {
        'content-type': 'application/json',
      });
      await batchRunning;
      running.splice(running.indexOf(server), 1);
      const closed = server.close();
      expect(server.ready).toBe(false);

      const ready = await send(`${url}/ready`, 'GET');
      expect([ready.status, ready.body]).toEqual([503, { status: 'draining' }]);
      const health = await send(`${url}/health`, 'GET');
      expect([health.status, health.body]).toEqual([200, { status: 'ok' }]);
      expect((await send(`${url}/v1/criteria`, 'GET')).status).toBe(200);
      for (const route of ['/v1/score', '/get_reward', '/classify']) {
        const refused = await send(`${url}${route}`, 'POST', JSON.stringify({ items: [] }), {
          'content-type': 'application/json',
        });
        expect([route, refused.status, refused.headers.get('retry-after')]).toEqual([route, 503, null]);
        expectErrorShape(refused.body, null);
        expect(refused.body.error).toMatch(/^the server is shutting down: .*takes no new ones/);
      }

      open();
      const answered = await inFlight;
      expect([answered.status, answered.body]).toEqual([200, expect.objectContaining({ criterion: 'c' })]);
      expect((answered.body.results as { reward: number }[])[0]!.reward).toBe(0.003);
      await closed;
      await expect(fetch(`${url}/health`, { signal: AbortSignal.timeout(10_000) })).rejects.toThrow();
    },
  );
});
