/**
 * Where scoring runs. onnxruntime-node's `session.run` executes synchronously on the calling thread (its promise
 * only defers the call with setImmediate), so a server that scores on its main thread cannot read requests,
 * answer /health, notice a departed client or send 503s while a forward runs (seconds, for a real model). The
 * `WorkerEngine` keeps the decoder and criteria in a worker thread: the main thread only does HTTP, validation
 * and batching. `InProcessEngine` scores on the calling thread (library use, tests).
 *
 * Both run the very same `ActivationRM.scoreExamples` call, so scores do not depend on the engine. The contract
 * they implement (`ScoringEngine`) and the scores they give are in engine-types.ts.
 */
import { Worker } from 'node:worker_threads';
import type { ActivationRM } from '../arm/rm.js';
import { CriterionSet } from '../arm/criterion-set.js';
import type { Decoder, LoadOptions } from '../model/decoder.js';
import type { Example } from '../data/examples.js';
import type { EngineInfo, ExampleScore, ScoreCallOptions, ScoringEngine } from './engine-types.js';
import { specialTokensOf } from './split.js';
import { spawnModuleWorker } from '../util/module-worker.js';

export interface LoadedCriterion {
  name: string;
  file: string;
  rm: ActivationRM;
}

/**
 * Scores on the calling thread with an already loaded decoder and criteria. `close` does not dispose the decoder (the
 * caller owns it).
 */
export class InProcessEngine implements ScoringEngine {
  readonly info: EngineInfo;
  private readonly set: CriterionSet;

  constructor(decoder: Decoder, criteria: LoadedCriterion[]) {
    this.set = new CriterionSet(decoder, criteria);
    this.info = engineInfo(decoder, criteria);
  }

  async score(criterion: string, examples: Example[], opts: ScoreCallOptions) {
    const { scores, tokens } = await this.scoreMany([criterion], examples, opts);
    return { scores: scores[0]!, tokens };
  }

  async scoreMany(criteria: readonly string[], examples: Example[], opts: ScoreCallOptions) {
    for (const c of criteria) if (!this.set.names.includes(c)) throw new Error(`engine: no criterion named ${c}`);
    const before = this.set.decoder.stats.tokens;
    const scores = await this.set.scoreExamples(examples, { ...opts, names: criteria });
    return { scores: criteria.map((c) => scores.get(c)!), tokens: this.set.decoder.stats.tokens - before };
  }

  async close(): Promise<void> {}
}

export function engineInfo(decoder: Decoder, criteria: { name: string; file: string; rm: ActivationRM }[]): EngineInfo {
  const eos = decoder.tokenizer.eosTokenId;
  return {
    model: {
      id: decoder.id,
      dir: decoder.info.modelDir,
      family: decoder.spec.family,
      numLayers: decoder.spec.numLayers,
      numHeads: decoder.spec.numHeads,
    },
    imageText: Boolean(decoder.spec.imageText),
    specialTokens: specialTokensOf(decoder.info.modelDir),
    eosToken: eos === null ? null : decoder.tokenizer.decode([eos], { skipSpecialTokens: false }),
    criteria: criteria.map((c) => ({ name: c.name, file: c.file, meta: c.rm.criterion.meta })),
  };
}

// ---------- worker thread ----------

/** Messages main → worker. */
export type ToWorker =
  | { type: 'score'; id: number; criteria: readonly string[]; examples: Example[]; opts: ScoreCallOptions }
  | { type: 'close' }
  /** Stop now, between two forwards: handled at once, not after the queued messages. */
  | { type: 'abort' };
/** Messages worker → main. */
export type FromWorker =
  | { type: 'ready'; info: EngineInfo }
  | { type: 'load-failed'; message: string }
  | { type: 'scored'; id: number; scores: ExampleScore[][]; tokens: number }
  | { type: 'failed'; id: number; message: string }
  | { type: 'closed' };

export interface WorkerData {
  model: string;
  /** Everything Decoder.load takes that can cross to a thread: the cache, threads, revision, device, weight format. */
  load: Pick<
    LoadOptions,
    | 'cacheDir'
    | 'threads'
    | 'revision'
    | 'device'
    | 'dtype'
    | 'blockSize'
    | 'accuracyLevel'
    | 'int8Kernel'
    | 'int4Method'
  >;
  criteria: { name: string; file: string }[];
}

/** The load was abandoned (WorkerEngine.start's signal aborted); the worker has exited. */
export class LoadStoppedError extends Error {
  override name = 'LoadStoppedError';
  constructor() {
    super('the model load was stopped');
  }
}

/** The decoder and criteria in a worker thread (see the module comment). */
export class WorkerEngine implements ScoringEngine {
  private nextId = 1;
  private readonly pending = new Map<
    number,
    { resolve(r: { scores: ExampleScore[][]; tokens: number }): void; reject(e: Error): void }
  >();
  private exited: Error | null = null;

  private constructor(
    private readonly worker: Worker,
    readonly info: EngineInfo,
  ) {
    worker.on('message', (m: FromWorker) => {
      if (m.type !== 'scored' && m.type !== 'failed') return;
      const p = this.pending.get(m.id);
      if (!p) return;
      this.pending.delete(m.id);
      if (m.type === 'scored') p.resolve({ scores: m.scores, tokens: m.tokens });
      else p.reject(new Error(m.message));
    });
    const fail = (e: Error) => {
      this.exited = e;
      for (const p of this.pending.values()) p.reject(e);
      this.pending.clear();
    };
    worker.on('error', (e) => fail(new Error(`scoring worker failed: ${e.message}`)));
    worker.on('exit', (code) => fail(new Error(`scoring worker exited (code ${code})`)));
  }

  /**
   * Starts the worker, which loads the model and criteria; resolves when it is ready, rejects with its load error.
   * When `signal` aborts first, the worker ends at its next wait (not inside an onnxruntime call) and this rejects
   * with a LoadStoppedError.
   */
  static async start(data: WorkerData, { signal }: { signal?: AbortSignal } = {}): Promise<WorkerEngine> {
    const worker = spawnScoreWorker(data);
    const stopLoading = () => worker.postMessage({ type: 'abort' } satisfies ToWorker);
    signal?.addEventListener('abort', stopLoading, { once: true });
    if (signal?.aborted) stopLoading();
    const listeners: { message?: (m: FromWorker) => void; error?: (e: Error) => void; exit?: (code: number) => void } =
      {};
    const info = await new Promise<EngineInfo>((resolve, reject) => {
      listeners.message = (m) => {
        if (m.type === 'ready') resolve(m.info);
        else if (m.type === 'load-failed') reject(new Error(m.message));
      };
      listeners.error = reject;
      listeners.exit = (code) =>
        reject(
          signal?.aborted ? new LoadStoppedError() : new Error(`scoring worker exited while loading (code ${code})`),
        );
      worker.on('message', listeners.message).on('error', listeners.error).on('exit', listeners.exit);
    })
      .catch(async (e: Error) => {
        await worker.terminate();
        throw e;
      })
      .finally(() => signal?.removeEventListener('abort', stopLoading));
    // Only our own listeners: Worker keeps internal ones (removeAllListeners would stop its message port).
    worker.off('message', listeners.message!).off('error', listeners.error!).off('exit', listeners.exit!);
    return new WorkerEngine(worker, info);
  }

  async score(criterion: string, examples: Example[], opts: ScoreCallOptions) {
    const { scores, tokens } = await this.scoreMany([criterion], examples, opts);
    return { scores: scores[0]!, tokens };
  }

  scoreMany(
    criteria: readonly string[],
    examples: Example[],
    opts: ScoreCallOptions,
  ): Promise<{ scores: ExampleScore[][]; tokens: number }> {
    if (this.exited) return Promise.reject(this.exited);
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.worker.postMessage({ type: 'score', id, criteria, examples, opts } satisfies ToWorker);
    });
  }

  /**
   * Ends the worker without finishing its work, as soon as no onnxruntime call runs in it; resolves once it has
   * exited. process.exit or worker.terminate while a forward runs abort the process (onnxruntime-node, ending its
   * call into a stopped thread, throws Napi::Error out of C++: "terminate called", exit 134); a message is only
   * handled between two calls.
   */
  async abort(): Promise<void> {
    if (this.exited) return;
    const done = new Promise<void>((resolve) => this.worker.once('exit', () => resolve()));
    this.worker.postMessage({ type: 'abort' } satisfies ToWorker);
    await done;
  }

  async close(): Promise<void> {
    if (this.exited) return;
    const done = new Promise<void>((resolve) => this.worker.once('exit', () => resolve()));
    this.worker.postMessage({ type: 'close' } satisfies ToWorker);
    // The worker disposes the decoder and exits; if it hangs, terminate it after a grace period.
    const grace = setTimeout(() => void this.worker.terminate(), 10_000);
    await done;
    clearTimeout(grace);
  }
}

/** The worker runs score-worker next to this file (see spawnModuleWorker). */
function spawnScoreWorker(data: WorkerData): Worker {
  return spawnModuleWorker(import.meta.url, 'score-worker', data);
}
