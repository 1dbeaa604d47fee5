/** The micro-batching scheduler on a stand-in model (no onnxruntime): batching, bounds, cancellation, drain. */
import { describe, expect, it } from 'vitest';
import type { Example } from '../../src/data/examples.js';
import {
  CancelledError,
  ItemFailedError,
  MicroBatcher,
  QueueFullError,
  ShuttingDownError,
  type SchedulerOptions,
} from '../../src/server/scheduler.js';
import type { ExampleScore, ScoringEngine } from '../../src/server/engine-types.js';
import type { CriterionMeta } from '../../src/arm/criterion.js';
import { itemScore } from './stand-in-engine.js';

/** Just what the scheduler reads of a criterion: what decides its pass (template and length budget). */
const metaWith = (templateText: string) =>
  ({
    template: { kind: 'scalar', text: templateText, chat: false },
    hyper: { maxLength: 64 },
  }) as unknown as CriterionMeta;

/**
 * A stand-in whose score is a function of the response alone, taking `delayMs` per call; records each call's
 * example ids. A call holding an example whose response is POISON throws, as the engine does for an input it
 * cannot encode: the whole call fails, not only that example.
 */
function standIn(delayMs = 5) {
  const calls: string[][] = [];
  let fail = false;
  const engine = {
    info: { criteria: [{ name: 'c', meta: metaWith('T') }] } as ScoringEngine['info'],
    async score(_criterion: string, examples: Example[]) {
      calls.push(examples.map((e) => e.id));
      const failing = fail;
      await new Promise((r) => setTimeout(r, delayMs));
      if (failing) throw new Error('engine failure');
      if (examples.some((e) => e.kind === 'scalar' && e.response === 'POISON'))
        throw new Error('image placeholders: 2 in the text, 1 image');
      return {
        tokens: 0,
        scores: examples.map((e) =>
          e.kind === 'scalar'
            ? itemScore(e.id, e.response.length / 100)
            : {
                id: e.id,
                chosen: 1,
                rejected: 0,
                margin: 1,
                correct: true,
                truncated: false,
                tooLong: false,
                detail: [],
              },
        ),
      };
    },
  };
  return {
    engine,
    calls,
    setFail: (v: boolean) => {
      fail = v;
    },
  };
}

const item = (id: string, response = id): Example => ({
  kind: 'scalar',
  id,
  line: 0,
  row: {},
  prompt: 'p',
  response,
  label: null,
});
const pair = (id: string): Example => ({ kind: 'pair', id, line: 0, row: {}, prompt: 'p', chosen: 'a', rejected: 'b' });
const make = (opts: Partial<SchedulerOptions>, delayMs?: number) => {
  const s = standIn(delayMs);
  return { ...s, batcher: new MicroBatcher(s.engine, { maxBatch: 4, maxWaitMs: 20, maxQueue: 100, ...opts }) };
};

describe('MicroBatcher', () => {
  it('items of different requests share a batch; results go back to their request in order', async () => {
    const { batcher, calls } = make({ maxBatch: 8, maxWaitMs: 50 });
    const [a, b, c] = await Promise.all([
      batcher.submit('c', [item('a1', 'x'), item('a2', 'xx')]),
      batcher.submit('c', [item('b1', 'xxx')]),
      batcher.submit('c', [item('c1', 'xxxx'), item('c2', 'xxxxx')]),
    ]);
    expect(calls).toEqual([['a1', 'a2', 'b1', 'c1', 'c2']]);
    expect([a, b, c].map((r) => r.map((s) => ('reward' in s ? s.reward : null)))).toEqual([
      [0.01, 0.02],
      [0.03],
      [0.04, 0.05],
    ]);
  });

  it('a full batch starts without waiting; at most maxBatch items per call (a pair counts 2), FIFO', async () => {
    const { batcher, calls } = make({ maxBatch: 3, maxWaitMs: 10_000 });
    const t0 = performance.now();
    await batcher.submit('c', [item('1'), pair('2'), item('3'), item('4'), item('5'), item('6'), item('7'), item('8')]);
    expect(calls).toEqual([
      ['1', '2'],
      ['3', '4', '5'],
      ['6', '7', '8'],
    ]);
    expect(performance.now() - t0).toBeLessThan(2_000); // no batch waited for the 10 s timer
  });

  it('a lone item waits maxWaitMs for company, then runs', async () => {
    const { batcher, calls } = make({ maxBatch: 8, maxWaitMs: 60 });
    const t0 = performance.now();
    await batcher.submit('c', [item('solo')]);
    const waited = performance.now() - t0;
    expect(calls).toEqual([['solo']]);
    expect(waited).toBeGreaterThanOrEqual(55);
    expect(waited).toBeLessThan(1000);
  });

  it('over maxQueue waiting items: QueueFullError with a Retry-After, nothing queued', () => {
    const { batcher } = make({ maxQueue: 3, maxWaitMs: 1000, maxBatch: 100 });
    void batcher.submit('c', [item('1'), item('2')]);
    let err: unknown;
    try {
      void batcher.submit('c', [pair('3')]);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(QueueFullError);
    expect((err as QueueFullError).retryAfterS).toBeGreaterThanOrEqual(1);
    expect(batcher.queueDepth).toBe(2);
    return batcher.drain();
  });

  it('a cancelled request leaves the queue at once and does not block others', async () => {
    const { batcher, calls } = make({ maxBatch: 8, maxWaitMs: 80 });
    const abort = new AbortController();
    const gone = batcher.submit('c', [item('gone1'), item('gone2')], abort.signal);
    const kept = batcher.submit('c', [item('kept')]);
    expect(batcher.queueDepth).toBe(3);
    abort.abort();
    await expect(gone).rejects.toBeInstanceOf(CancelledError);
    expect(batcher.queueDepth).toBe(1);
    expect((await kept).length).toBe(1);
    expect(calls).toEqual([['kept']]);
  });

  it('an engine failure rejects that batch only; the next batch runs', async () => {
    const { batcher, setFail } = make({ maxBatch: 1, maxWaitMs: 0 }, 20);
    setFail(true);
    const first = batcher.submit('c', [item('1')]);
    setTimeout(() => setFail(false), 5);
    const second = batcher.submit('c', [item('2')]);
    await expect(first).rejects.toThrow('engine failure');
    expect((await second).length).toBe(1);
  });

  it(
    'an item that cannot be scored fails alone: its batch-mates get the scores they get alone, its request an error ' +
      'naming it',
    async () => {
      const { batcher, calls } = make({ maxBatch: 16, maxWaitMs: 50 });
      const innocentA = [item('a1', 'x'), item('a2', 'xxxx'), item('a3', 'xxxxxxx')];
      const innocentB = [item('b1', 'xx'), pair('b2'), item('b3', 'xxxxxxxxxx')];
      const [a, poisoned, b] = await Promise.allSettled([
        batcher.submit('c', innocentA),
        batcher.submit('c', [item('p1', 'fine'), item('p2', 'POISON'), item('p3', 'also fine')]),
        batcher.submit('c', innocentB),
      ]);
      expect(calls[0]).toHaveLength(9); // all three requests shared the first batch, which failed
      // Scored alone (a fresh scheduler, one request at a time) for the reference.
      const alone = make({ maxBatch: 16, maxWaitMs: 0 });
      expect(a).toEqual({ status: 'fulfilled', value: await alone.batcher.submit('c', innocentA) });
      expect(b).toEqual({ status: 'fulfilled', value: await alone.batcher.submit('c', innocentB) });
      expect(poisoned.status).toBe('rejected');
      const err = (poisoned as PromiseRejectedResult).reason as ItemFailedError;
      expect(err).toBeInstanceOf(ItemFailedError);
      // p2; the engine scored its batch-mates, so it is the input's fault (not a plain engine error).
      expect(err.slot).toBe(1);
      expect(err.message).toMatch(/image placeholders: 2 in the text, 1 image/);
      // Bisection: a bounded number of retries, never the poisoned item with company at the end.
      expect(calls.length).toBeLessThanOrEqual(2 * Math.ceil(Math.log2(9)) + 1);
      expect(calls.at(-1)).not.toContain('a1');
    },
  );

  it("a lone item that fails: the probe tells its fault from the engine's", async () => {
    const s = standIn(1);
    const probe = () => item('probe', 'ok');
    const batcher = new MicroBatcher(s.engine, { maxBatch: 4, maxWaitMs: 0, maxQueue: 100, probe });
    const lone = await batcher.submit('c', [item('p', 'POISON')]).catch((e: unknown) => e);
    expect(lone).toBeInstanceOf(ItemFailedError); // the input's fault: the probe still scored
    expect(s.calls).toEqual([['p'], ['probe']]);
    // The engine failing on everything: the error is the engine's, for every request, after a bounded number of calls.
    s.setFail(true);
    s.calls.length = 0;
    const all = await Promise.allSettled([
      batcher.submit('c', [item('x1'), item('x2')]),
      batcher.submit('c', [item('y1'), item('y2')]),
    ]);
    for (const r of all) {
      expect(r.status).toBe('rejected');
      const e = (r as PromiseRejectedResult).reason as Error;
      expect(e).not.toBeInstanceOf(ItemFailedError);
      expect(e.message).toMatch(/engine failure/);
    }
    expect(s.calls.length).toBeLessThanOrEqual(2 * 4);
  });

  it('drain: refuses new work, finishes everything queued', async () => {
    const { batcher } = make({ maxBatch: 2, maxWaitMs: 5_000 });
    const pending = [batcher.submit('c', [item('1'), item('2'), item('3')]), batcher.submit('c', [item('4')])];
    await batcher.drain();
    expect(() => batcher.submit('c', [item('5')])).toThrow(ShuttingDownError);
    expect((await Promise.all(pending)).flat().length).toBe(4);
  });
});

describe('MicroBatcher with several criteria', () => {
  /** Criteria a and b share a template (one pass), c has another; a score tells which criterion gave it. */
  function manyStandIn() {
    const calls: { criteria: string[]; ids: string[] }[] = [];
    const rewardOf = (criterion: string, e: Example): ExampleScore =>
      itemScore(e.id, ({ a: 0.1, b: 0.2, c: 0.3 } as Record<string, number>)[criterion]!);
    const engine: Pick<ScoringEngine, 'info' | 'score' | 'scoreMany'> = {
      info: {
        criteria: [
          { name: 'a', meta: metaWith('T') },
          { name: 'b', meta: metaWith('T') },
          { name: 'c', meta: metaWith('U') },
        ],
      } as ScoringEngine['info'],
      async score(criterion, examples) {
        calls.push({ criteria: [criterion], ids: examples.map((e) => e.id) });
        return { tokens: 0, scores: examples.map((e) => rewardOf(criterion, e)) };
      },
      async scoreMany(criteria, examples) {
        calls.push({ criteria: [...criteria], ids: examples.map((e) => e.id) });
        return { tokens: 0, scores: criteria.map((c) => examples.map((e) => rewardOf(c, e))) };
      },
    };
    return { calls, engine, batcher: new MicroBatcher(engine, { maxBatch: 8, maxWaitMs: 30, maxQueue: 100 }) };
  }
  const rewards = (r: ExampleScore[]) => r.map((s) => ('reward' in s ? s.reward : null));

  it('one call per pass, under every criterion its requests ask for; each request gets its own criteria', async () => {
    const { calls, batcher } = manyStandIn();
    const [ab, b, abc] = await Promise.all([
      batcher.submitMany(['a', 'b'], [item('x1'), item('x2')]),
      batcher.submit('b', [item('y1')]),
      batcher.submitMany(['c', 'a', 'b'], [item('z1')]),
    ]);
    expect(calls).toEqual([
      { criteria: ['a', 'b'], ids: ['x1', 'x2', 'y1', 'z1'] },
      { criteria: ['c'], ids: ['z1'] },
    ]);
    expect(ab.map(rewards)).toEqual([
      [0.1, 0.1],
      [0.2, 0.2],
    ]);
    expect(rewards(b)).toEqual([0.2]);
    expect(abc.map(rewards)).toEqual([[0.3], [0.1], [0.2]]);
  });

  it('counts a request once per pass against maxQueue, and refuses an unknown criterion', () => {
    const { batcher, engine } = manyStandIn();
    const small = new MicroBatcher(engine, { maxBatch: 8, maxWaitMs: 30, maxQueue: 3 });
    expect(() => small.submitMany(['a', 'c'], [item('1'), item('2')])).toThrow(QueueFullError);
    expect(() => batcher.submitMany(['a', 'nope'], [item('1')])).toThrow(/unknown criterion nope/);
  });
});
