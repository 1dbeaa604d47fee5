/**
 * The micro-batching scheduler: examples from concurrent requests wait in one FIFO queue; one worker takes up to
 * `maxBatch` judge items of one pass (criteria whose judge prompts agree, CriterionSet: the pass of the oldest
 * waiting example), either as soon as that many are waiting or when the oldest has waited `maxWaitMs`, and scores
 * them under every criterion those examples asked for with one call (through the engine, engine.ts): each prompt
 * runs once, its last token as one row per criterion — the call `arm score --rm a=… --rm b=…` makes on a file.
 * Batches run one at a time (one model, one onnxruntime session using every core); with the worker engine,
 * requests keep arriving and queueing while one runs.
 *
 * What a result depends on: `scoreExamples` batches by length and prefills shared prefixes, so a score is bitwise
 * that of `arm score` on the examples of the micro-batch it ran in (the same examples in the same order, same
 * --batch-size and --max-length). An example batched with other requests' examples may differ from a lone run in
 * float32 rounding (≈1e-6 relative), as `arm score` itself does between files.
 *
 * Bounds: at most `maxQueue` judge items wait (a pair counts 2); `submit` beyond that throws QueueFullError
 * (HTTP 503) instead of growing memory. A cancelled request (client gone) has its waiting examples removed at
 * once; a batch already running finishes, and its results for that request are dropped.
 *
 * Failure isolation: one request's item must not fail another's. When a batch's engine call fails, the batch is
 * halved and each half retried (recursively, items of requests already failed or cancelled left out), so the
 * items that can be scored are, in smaller batches, and an item that fails alone fails only its own request
 * (ItemFailedError naming it). Whose fault: an item that fails alone while batch-mates were scored, or while a
 * server-made probe example still scores, is the input's; when nothing scores, the engine's (the plain error).
 */
import { scoresUnknown } from '../arm/unknown-tokens.js';
import type { Example } from '../data/examples.js';
import { passKey } from '../arm/criterion-set.js';
import type { ExampleScore, ScoringEngine } from './engine-types.js';

export class QueueFullError extends Error {
  override name = 'QueueFullError';
  constructor(
    readonly queued: number,
    readonly asked: number,
    readonly maxQueue: number,
    readonly retryAfterS: number,
  ) {
    super(
      `the queue is full: ${queued} judge items waiting, this request adds ${asked}, the limit is ${maxQueue}; retry ` +
        `in ${retryAfterS} s`,
    );
  }
}

export class ShuttingDownError extends Error {
  override name = 'ShuttingDownError';
  constructor() {
    super('the server is shutting down and takes no new work');
  }
}

/**
 * An example that failed alone while the engine scored others (its batch-mates, retried without it, or the probe):
 * the input's fault. `slot` is its index in the request.
 */
export class ItemFailedError extends Error {
  override name = 'ItemFailedError';
  constructor(
    readonly slot: number,
    override readonly cause: Error,
  ) {
    super(`could not be scored: ${cause.message}`);
  }
}

export class CancelledError extends Error {
  override name = 'CancelledError';
  constructor() {
    super('the request was cancelled (client disconnected)');
  }
}

/** Judge items an example costs: a pair is two forwards, a scalar one. */
const itemCost = (e: Example) => (e.kind === 'pair' ? 2 : 1);

export interface SchedulerOptions {
  /** Most judge items per micro-batch (one scoreExamples call). */
  maxBatch: number;
  /** Longest an example waits for others to fill its batch, in ms. */
  maxWaitMs: number;
  /** Most judge items waiting in the queue (not counting the batch being scored). */
  maxQueue: number;
  /** Forward batch size and token budget handed to scoreExamples (undefined: the criterion's own, as `arm score`). */
  batchSize?: number;
  maxLength?: number;
  /**
   * A known-good example for a criterion: scored when every item of a failed batch also failed alone, to tell
   * an input the engine cannot take (4xx) from an engine that takes nothing (500). Without it, such a failure
   * counts as the engine's.
   */
  probe?: (criterion: string) => Example;
}

/** What a finished batch reports (for metrics). */
export interface BatchReport {
  /** The criteria the batch was scored under, in one pass. */
  criteria: string[];
  examples: number;
  /** Judge items run through the model (once, whatever the number of criteria). */
  items: number;
  tokens: number;
  seconds: number;
  tooLong: number;
  /** The judge prompts' text tokens, and those the vocabulary did not know (arm/unknown-tokens.ts). */
  textTokens: number;
  unknownTokens: number;
}

interface Entry {
  /** The pass (passKey) of the job's criteria: entries of one pass share a batch. */
  pass: string;
  example: Example;
  cost: number;
  enqueuedAt: number;
  job: Job;
  slot: number;
}

/** One pass of a submit call: per slot, its examples' scores under each of `criteria`; it settles when all have. */
interface Job {
  criteria: readonly string[];
  results: (ExampleScore[] | undefined)[];
  left: number;
  cancelled: boolean;
  resolve(r: ExampleScore[][]): void;
  reject(e: Error): void;
}

export class MicroBatcher {
  private queue: Entry[] = [];
  private queuedItems = 0;
  private running = false;
  private timer: NodeJS.Timeout | null = null;
  private closing = false;
  private idleWaiters: (() => void)[] = [];
  /** Items per second over recent batches (for Retry-After); exponentially weighted. */
  private itemsPerSecond = 0;

  /** Each criterion's pass: criteria of one pass are scored together. */
  private readonly passOf: Map<string, string>;

  constructor(
    private readonly engine: Pick<ScoringEngine, 'score' | 'scoreMany' | 'info'>,
    private readonly opts: SchedulerOptions,
    private readonly onBatch: (r: BatchReport) => void = () => {},
    private readonly onQueueChange: (items: number) => void = () => {},
  ) {
    this.passOf = new Map(engine.info.criteria.map((c) => [c.name, passKey(c.meta, opts.maxLength)]));
    if (!(opts.maxBatch >= 1 && opts.maxQueue >= 1 && opts.maxWaitMs >= 0))
      throw new Error('scheduler: maxBatch and maxQueue must be ≥ 1, maxWaitMs ≥ 0');
  }

  get queueDepth(): number {
    return this.queuedItems;
  }
  get busy(): boolean {
    return this.running;
  }

  /** Queues `examples` for one criterion (submitMany with one name); resolves with their scores in order. */
  submit(criterion: string, examples: Example[], signal?: AbortSignal): Promise<ExampleScore[]> {
    // Not async: QueueFullError and ShuttingDownError are thrown synchronously, before anything is queued.
    return this.submitMany([criterion], examples, signal).then((perCriterion) => perCriterion[0]!);
  }

  /**
   * Queues `examples` for every criterion in `criteria` (one job per pass: criteria of one pass are scored together,
   * each prompt once); resolves with their scores, [criterion][example]. `signal` aborting (client gone) removes
   * what still waits and rejects with CancelledError. Throws QueueFullError / ShuttingDownError synchronously,
   * before anything is queued.
   */
  submitMany(criteria: readonly string[], examples: Example[], signal?: AbortSignal): Promise<ExampleScore[][]> {
    if (this.closing) throw new ShuttingDownError();
    const passes = new Map<string, string[]>();
    for (const c of criteria) {
      const pass = this.passOf.get(c);
      if (pass === undefined) throw new Error(`scheduler: unknown criterion ${c}`);
      if (!passes.has(pass)) passes.set(pass, []);
      passes.get(pass)!.push(c);
    }
    if (examples.length === 0) return Promise.resolve(criteria.map(() => []));
    const cost = examples.reduce((n, e) => n + itemCost(e), 0) * passes.size;
    if (this.queuedItems + cost > this.opts.maxQueue) {
      throw new QueueFullError(this.queuedItems, cost, this.opts.maxQueue, this.retryAfterSeconds(cost));
    }
    const jobs = [...passes].map(([pass, names]) => this.enqueue(pass, names, examples, signal));
    return Promise.all(jobs).then((perPass) => {
      const byName = new Map<string, ExampleScore[]>();
      [...passes.values()].forEach((names, p) =>
        names.forEach((name, k) =>
          byName.set(
            name,
            perPass[p]!.map((slot) => slot[k]!),
          ),
        ),
      );
      return criteria.map((c) => byName.get(c)!);
    });
  }

  /** Queues one pass's job; resolves with its scores per slot, each [criterion]. */
  private enqueue(
    pass: string,
    criteria: readonly string[],
    examples: Example[],
    signal: AbortSignal | undefined,
  ): Promise<ExampleScore[][]> {
    return new Promise<ExampleScore[][]>((resolve, reject) => {
      const job: Job = {
        criteria,
        results: new Array(examples.length),
        left: examples.length,
        cancelled: false,
        resolve,
        reject,
      };
      const now = performance.now();
      examples.forEach((example, slot) =>
        this.queue.push({ pass, example, cost: itemCost(example), enqueuedAt: now, job, slot }),
      );
      this.queuedItems += examples.reduce((n, e) => n + itemCost(e), 0);
      this.onQueueChange(this.queuedItems);
      if (signal) {
        const cancel = () => this.cancel(job);
        if (signal.aborted) cancel();
        else signal.addEventListener('abort', cancel, { once: true });
      }
      this.kick();
    });
  }

  /** Stops taking new work; resolves once everything queued and running has been scored. */
  async drain(): Promise<void> {
    this.closing = true;
    this.kick();
    if (!this.running && this.queue.length === 0) return;
    await new Promise<void>((resolve) => this.idleWaiters.push(resolve));
  }

  /** Seconds a client should wait before retrying `asked` more items: the time to clear what waits now. */
  retryAfterSeconds(asked = 1): number {
    const rate = this.itemsPerSecond > 0 ? this.itemsPerSecond : 1;
    return Math.min(60, Math.max(1, Math.ceil((this.queuedItems + asked - this.opts.maxQueue) / rate)));
  }

  private cancel(job: Job): void {
    if (job.cancelled || job.left === 0) return;
    job.cancelled = true;
    const before = this.queue.length;
    this.queue = this.queue.filter((e) => {
      if (e.job !== job) return true;
      this.queuedItems -= e.cost;
      return false;
    });
    if (this.queue.length !== before) this.onQueueChange(this.queuedItems);
    job.reject(new CancelledError());
    this.notifyIdle();
  }

  /** Starts a batch when one is due, else arms the timer for when the oldest example's wait runs out. */
  private kick(): void {
    if (this.running || this.queue.length === 0) {
      this.notifyIdle();
      return;
    }
    const oldest = this.queue[0]!;
    let ready = 0;
    for (const e of this.queue) if (e.pass === oldest.pass && (ready += e.cost) >= this.opts.maxBatch) break;
    const waited = performance.now() - oldest.enqueuedAt;
    if (ready >= this.opts.maxBatch || waited >= this.opts.maxWaitMs || this.closing) {
      if (this.timer) {
        clearTimeout(this.timer);
        this.timer = null;
      }
      void this.runBatch(oldest.pass);
    } else if (!this.timer) {
      this.timer = setTimeout(
        () => {
          this.timer = null;
          this.kick();
        },
        Math.max(0, this.opts.maxWaitMs - waited),
      );
    }
  }

  private async runBatch(pass: string): Promise<void> {
    this.running = true;
    // Oldest first, one pass, whole examples, at least one even if it alone exceeds maxBatch.
    const batch: Entry[] = [];
    let items = 0;
    const rest: Entry[] = [];
    let full = false;
    for (const e of this.queue) {
      if (!full && e.pass === pass && (batch.length === 0 || items + e.cost <= this.opts.maxBatch)) {
        batch.push(e);
        items += e.cost;
      } else {
        // Keep FIFO order within a pass: nothing jumps a pair that did not fit.
        if (e.pass === pass) full = true;
        rest.push(e);
      }
    }
    this.queue = rest;
    this.queuedItems -= items;
    this.onQueueChange(this.queuedItems);
    try {
      const failed = new Map<Job, { entry: Entry; error: Error }>();
      const anyScored = await this.scoreIsolating(batch, failed);
      if (failed.size === 0) return;
      // Failed alone while others (batch-mates, or the probe) were scored: the input's fault; else the engine's.
      const inputFault = anyScored || (await this.probeScores(batch[0]!.job.criteria[0]!));
      for (const [job, { entry, error }] of failed) {
        if (job.cancelled || job.left === 0) continue;
        job.left = 0;
        job.reject(inputFault ? new ItemFailedError(entry.slot, error) : error);
        this.cancelWaiting(job);
      }
    } finally {
      this.running = false;
      this.kick();
    }
  }

  /**
   * Scores `entries` in one engine call under every criterion they ask for; if that fails, each half in turn, down
   * to single entries, which are recorded in `failed` (one per request: the rest of a failed request is not
   * scored). Whether anything scored.
   */
  private async scoreIsolating(entries: Entry[], failed: Map<Job, { entry: Entry; error: Error }>): Promise<boolean> {
    const live = entries.filter((e) => !e.job.cancelled && e.job.left > 0 && !failed.has(e.job));
    if (live.length === 0) return false;
    // The criteria any live entry asks for, in the engine's order (one pass: the engine runs each prompt once).
    const asked = new Set(live.flatMap((e) => e.job.criteria));
    const criteria = this.engine.info.criteria.map((c) => c.name).filter((n) => asked.has(n));
    let scored: { scores: ExampleScore[][]; tokens: number };
    const t0 = performance.now();
    try {
      scored = await this.scoreUnder(
        criteria,
        live.map((e) => e.example),
      );
    } catch (err) {
      if (live.length === 1) {
        failed.set(live[0]!.job, { entry: live[0]!, error: err as Error });
        return false;
      }
      const half = Math.ceil(live.length / 2);
      const first = await this.scoreIsolating(live.slice(0, half), failed);
      const second = await this.scoreIsolating(live.slice(half), failed);
      return first || second;
    }
    const items = live.reduce((n, e) => n + e.cost, 0);
    const seconds = (performance.now() - t0) / 1000;
    const rate = items / Math.max(seconds, 1e-6);
    this.itemsPerSecond = this.itemsPerSecond ? 0.8 * this.itemsPerSecond + 0.2 * rate : rate;
    const first = scored.scores[0]!;
    this.onBatch({
      criteria,
      examples: live.length,
      items,
      tokens: scored.tokens,
      seconds,
      tooLong: first.filter((s) => s.tooLong).length,
      ...unknownOf(first),
    });
    const column = new Map(criteria.map((c, k) => [c, k]));
    live.forEach((e, i) => {
      const job = e.job;
      if (job.cancelled || job.left === 0) return;
      job.results[e.slot] = job.criteria.map((c) => scored.scores[column.get(c)!]![i]!);
      if (--job.left === 0) job.resolve(job.results as ExampleScore[][]);
    });
    return true;
  }

  /** One engine call for several criteria of a pass (or one per criterion, for an engine without scoreMany). */
  private async scoreUnder(
    criteria: string[],
    examples: Example[],
  ): Promise<{ scores: ExampleScore[][]; tokens: number }> {
    const opts = { batchSize: this.opts.batchSize, maxLength: this.opts.maxLength };
    if (criteria.length > 1 && this.engine.scoreMany) return this.engine.scoreMany(criteria, examples, opts);
    const out = { scores: [] as ExampleScore[][], tokens: 0 };
    for (const c of criteria) {
      const { scores, tokens } = await this.engine.score(c, examples, opts);
      out.scores.push(scores);
      out.tokens += tokens;
    }
    return out;
  }

  /** Whether the engine still scores the criterion's probe example (false without a probe). */
  private async probeScores(criterion: string): Promise<boolean> {
    if (!this.opts.probe) return false;
    try {
      await this.engine.score(criterion, [this.opts.probe(criterion)], {
        batchSize: this.opts.batchSize,
        maxLength: this.opts.maxLength,
      });
      return true;
    } catch {
      return false;
    }
  }

  /** Drops a failed job's examples that still wait. */
  private cancelWaiting(job: Job): void {
    this.queue = this.queue.filter((e) => {
      if (e.job !== job) return true;
      this.queuedItems -= e.cost;
      return false;
    });
    this.onQueueChange(this.queuedItems);
  }

  private notifyIdle(): void {
    if (this.running || this.queue.length > 0 || this.idleWaiters.length === 0) return;
    const waiters = this.idleWaiters;
    this.idleWaiters = [];
    waiters.forEach((w) => w());
  }
}

/** A batch's text tokens and unknown ones, as BatchReport names them. */
function unknownOf(scores: ExampleScore[]): { textTokens: number; unknownTokens: number } {
  const { text, unknown } = scoresUnknown(scores);
  return { textTokens: text, unknownTokens: unknown };
}
