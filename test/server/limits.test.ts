/**
 * The server's per-connection and per-request limits, on a stand-in engine (no model: these are HTTP behaviours).
 * Clients are raw loopback sockets or fetch; every wait is bounded by a deadline, every loop by a count.
 */
import { afterEach, describe, expect, it } from 'vitest';
import net from 'node:net';
import type { Example } from '../../src/data/examples.js';
import type { CriterionMeta } from '../../src/arm/criterion.js';
import { createRewardServer, type RewardServer, type RewardServerOptions } from '../../src/server/app.js';
import type { ScoringEngine } from '../../src/server/engine.js';

/** Scores by response length (reward = length / 1000), after `delayMs`; a scalar criterion named "c". */
function standInEngine(delayMs = 0): ScoringEngine {
  const meta = { template: { kind: 'scalar', text: '', chat: false }, answerTokens: { strings: ['Yes', 'No'] }, heads: [], hyper: { maxLength: 64, batchSize: 8 }, examples: { count: 0, sha256: '' }, model: { id: 'stand-in' }, fit: {} } as unknown as CriterionMeta;
  return {
    info: { model: { id: 'stand-in', dir: '.', family: 'llama', numLayers: 1, numHeads: 1 }, imageText: false, specialTokens: [], eosToken: null, criteria: [{ name: 'c', file: 'c', meta }] },
    async score(_criterion: string, examples: Example[]) {
      if (delayMs) await new Promise((r) => setTimeout(r, delayMs));
      return { tokens: 0, scores: examples.map((e) => ({ id: e.id, reward: (e.kind === 'scalar' ? e.response.length : 0) / 1000, normalized: 0, logitYes: 0, logitNo: 0, truncatedTokens: 0, tooLong: false, verdict: null, label: null })) };
    },
    async close() {},
  };
}

const running: RewardServer[] = [];
afterEach(async () => { await Promise.all(running.splice(0).map((s) => s.close())); });

async function start(opts: Partial<RewardServerOptions> = {}, delayMs = 0): Promise<{ server: RewardServer; url: string; port: number }> {
  const server = await createRewardServer({ engine: standInEngine(delayMs), ...opts });
  running.push(server);
  const url = await server.listen({ host: '127.0.0.1', port: 0 });
  await server.warm();
  return { server, url, port: Number(new URL(url).port) };
}

/** A raw connection: what it received, and when (ms after opening) the server closed it (or null while open). */
function connect(port: number) {
  const socket = net.connect(port, '127.0.0.1');
  const t0 = performance.now();
  let received = '';
  let closedAfterMs: number | null = null;
  socket.on('data', (b) => { received += b.toString(); });
  socket.on('error', () => {}); // a reset is one way of being closed
  const closed = new Promise<number>((resolve) => socket.on('close', () => { closedAfterMs = performance.now() - t0; resolve(closedAfterMs); }));
  const opened = new Promise<void>((resolve) => socket.once('connect', () => resolve()));
  return { socket, opened, closed, get received() { return received; }, get closedAfterMs() { return closedAfterMs; } };
}

/** Resolves with `p`, or with 'still open' after `ms`. */
const within = <T>(p: Promise<T>, ms: number) => Promise.race([p, new Promise<'still open'>((r) => setTimeout(() => r('still open'), ms).unref())]);

/** Sends `headers` for a body of `length` bytes, then one byte every `everyMs` until the socket closes (at most `max` bytes). */
function trickle(c: ReturnType<typeof connect>, headers: string, length: number, everyMs: number, max = 200) {
  c.socket.write(`${headers}content-type: application/json\r\ncontent-length: ${length}\r\n\r\n{`);
  let sent = 1;
  const timer = setInterval(() => {
    if (c.socket.destroyed || sent >= max) { clearInterval(timer); return; }
    c.socket.write(' ');
    sent++;
  }, everyMs);
  void c.closed.then(() => clearInterval(timer));
}

describe('timeouts and the connection cap', () => {
  it('a body trickled slower than the request timeout is cut off within it (408)', async () => {
    const { port } = await start({ requestTimeoutMs: 800, idleTimeoutMs: 60_000 });
    const c = connect(port);
    await c.opened;
    trickle(c, 'POST /get_reward HTTP/1.1\r\nhost: x\r\n', 100_000, 50); // a byte every 50 ms: never idle, never done
    const closedAfter = await within(c.closed, 5000);
    expect(closedAfter).not.toBe('still open');
    expect(closedAfter as number).toBeGreaterThan(700);
    expect(closedAfter as number).toBeLessThan(800 + 200 + 500); // the timeout, node's check interval (timeout / 4), slack
    expect(c.received).toMatch(/^HTTP\/1\.1 408/);
  });

  it('after a 401, a trickled body does not hold the connection: it is closed once the 401 is sent', async () => {
    const { port } = await start({ apiKey: 'key', requestTimeoutMs: 60_000 });
    const c = connect(port);
    await c.opened;
    trickle(c, 'POST /get_reward HTTP/1.1\r\nhost: x\r\n', 100_000, 50);
    const closedAfter = await within(c.closed, 5000);
    expect(closedAfter).not.toBe('still open');
    expect(closedAfter as number).toBeLessThan(1000);
    expect(c.received).toMatch(/^HTTP\/1\.1 401/);
    expect(c.received.toLowerCase()).toContain('connection: close');
  });

  it('a silent connection is closed after the idle timeout; a request waiting longer than it for scores is answered', async () => {
    const { port, url } = await start({ idleTimeoutMs: 300 }, 1200);
    const silent = connect(port);
    await silent.opened;
    const closedAfter = await within(silent.closed, 5000);
    expect(closedAfter).not.toBe('still open');
    expect(closedAfter as number).toBeGreaterThan(250);
    expect(closedAfter as number).toBeLessThan(1500);
    // The engine takes 1.2 s, four idle timeouts: the waiting client is not cut.
    const res = await fetch(`${url}/v1/score`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ items: [{ prompt: 'p', response: 'abc' }] }), signal: AbortSignal.timeout(10_000) });
    expect(res.status).toBe(200);
    expect((await res.json()).results[0].reward).toBe(0.003);
  });

  it('a kept-alive connection is closed after the keep-alive timeout; after maxRequestsPerSocket requests the server says Connection: close', async () => {
    const { port } = await start({ keepAliveTimeoutMs: 300, maxRequestsPerSocket: 2, idleTimeoutMs: 60_000 });
    const c = connect(port);
    await c.opened;
    const get = 'GET /health HTTP/1.1\r\nhost: x\r\n\r\n';
    c.socket.write(get);
    for (let i = 0; i < 100 && !c.received.includes('{"status":"ok"}'); i++) await new Promise((r) => setTimeout(r, 10));
    expect(c.received).toMatch(/^HTTP\/1\.1 200/);
    expect(c.received.toLowerCase()).toContain('connection: keep-alive');
    const closedAfter = await within(c.closed, 5000);
    expect(closedAfter).not.toBe('still open'); // idle after its response: closed by the keep-alive timeout

    const d = connect(port);
    await d.opened;
    d.socket.write(get + get);
    await within(d.closed, 5000);
    const answers = d.received.split('HTTP/1.1 ').slice(1);
    expect(answers).toHaveLength(2);
    expect(answers[1]!.toLowerCase()).toContain('connection: close');
  });

  it('connections beyond maxConnections are closed at once; a freed slot is usable again', async () => {
    const { port, url } = await start({ maxConnections: 2, idleTimeoutMs: 60_000 });
    const held = [connect(port), connect(port)];
    await Promise.all(held.map((c) => c.opened));
    await new Promise((r) => setTimeout(r, 50)); // the server has accepted both
    const extra = connect(port);
    extra.socket.write('GET /health HTTP/1.1\r\nhost: x\r\n\r\n');
    const closedAfter = await within(extra.closed, 2000);
    expect(closedAfter).not.toBe('still open');
    expect(extra.received).toBe('');
    held[0]!.socket.destroy();
    await held[0]!.closed;
    await new Promise((r) => setTimeout(r, 50));
    expect((await fetch(`${url}/health`, { signal: AbortSignal.timeout(5000) })).status).toBe(200);
    held[1]!.socket.destroy();
  });
});
