/**
 * Request bodies: JSON parsed with bounded work on the main thread, refused on their counts before any per-item
 * work.
 *
 * Parsing is the one cost of a request the main thread cannot bound by looking first: JSON.parse of a 28 MB body
 * of a million short strings takes about 0.3 s on this machine's cores (70–200 MiB/s, slowest for many small
 * values), time in which no other request, not even /health, is answered. So a body over
 * `MAIN_THREAD_PARSE_BYTES` is parsed in a worker thread, which also counts it: a body with more entries than a
 * request may carry, or more JSON values in all than such entries need, is refused there, and the main thread
 * never holds its values. A body that passes comes back (a structured clone: ~3 ms per MiB on the main thread),
 * bounded by the body limit and the item count; the texts of /get_reward and /classify come back split (their
 * special-token stripping is per-character work too, split.ts presplitBody).
 */
import { Worker } from 'node:worker_threads';
import { spawnModuleWorker } from '../util/module-worker.js';
import type { Presplit, SplitWithoutPrompts } from './split.js';

/** Bodies up to this size are parsed on the main thread (at worst a few ms); larger ones in the body worker. */
const MAIN_THREAD_PARSE_BYTES = 256 * 1024;

/** JSON values a body may hold per entry it may carry (a prompt given as turns is 3 values a turn, plus ids). */
export const VALUES_PER_ITEM = 128;

export interface BodyLimits {
  /** Most entries in any one list at the top of the body (query, prompts, labels, input, items, pairs, …). */
  maxItems: number;
  /** Most JSON values in the whole body. */
  maxValues: number;
}

/** Why a body is refused: answered with `status` and `{error, field}`. */
export interface BodyRefusal {
  status: number;
  field: string;
  message: string;
}

/** Parses and checks a body; what the body worker runs, and the main thread for small bodies. */
export function parseBody(text: string, limits: BodyLimits): { body: unknown } | { refusal: BodyRefusal } {
  if (text.trim() === '')
    return { refusal: { status: 400, field: 'body', message: 'body: is empty; send a JSON object' } };
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch (e) {
    return { refusal: { status: 400, field: 'body', message: `body: not valid JSON (${(e as Error).message})` } };
  }
  const refusal = refuseByCounts(body, limits);
  return refusal ? { refusal } : { body };
}

/**
 * A refusal from the body's counts alone, or null. The lists at its top are checked first (the entries of a
 * request), then every value is counted, stopping at the limit; keys that could reach an object's prototype
 * (`__proto__`, `constructor.prototype`) are refused as fastify's own parser refuses them.
 */
function refuseByCounts(body: unknown, limits: BodyLimits): BodyRefusal | null {
  if (body !== null && typeof body === 'object' && !Array.isArray(body)) {
    for (const [key, value] of Object.entries(body)) {
      if (Array.isArray(value) && value.length > limits.maxItems) {
        return {
          status: 413,
          field: key,
          message:
            `${key}: ${value.length} entries in one request; at most ${limits.maxItems} (--max-request-items, ` +
            `and never more than --max-queue); send smaller requests`,
        };
      }
    }
  }
  let values = 0;
  const stack: unknown[] = [body];
  while (stack.length) {
    const v = stack.pop();
    if (++values > limits.maxValues) {
      return {
        status: 413,
        field: 'body',
        message:
          `body: more than ${limits.maxValues} JSON values (${VALUES_PER_ITEM} per entry a request may ` +
          `carry); send smaller requests`,
      };
    }
    if (v === null || typeof v !== 'object') continue;
    if (Array.isArray(v)) {
      for (const x of v) stack.push(x);
      continue;
    }
    for (const key of Object.keys(v)) {
      const x = (v as Record<string, unknown>)[key];
      if (
        key === '__proto__' ||
        (key === 'constructor' && x !== null && typeof x === 'object' && Object.hasOwn(x, 'prototype'))
      ) {
        return { status: 400, field: 'body', message: `body: the key "${key}" is not allowed` };
      }
      stack.push(x);
    }
  }
  return null;
}

/** What the body worker needs to split /get_reward and /classify bodies as the server's QuerySplitter does. */
export interface SplitterSpec {
  specials: string[];
  eosToken: string | null;
  withoutPrompts: SplitWithoutPrompts;
}

/** What a body read gives: the body (and its splits when made ahead), or why it is refused. */
export type BodyRead = { body: unknown; presplit?: Presplit } | { refusal: BodyRefusal };

/** Messages main → body worker and back. */
export type ToBodyWorker = {
  id: number;
  route: string | undefined;
  chunks: Uint8Array[];
  length: number;
  limits: BodyLimits;
};
export type FromBodyWorker = { id: number } & BodyRead;

/** Parses large bodies in a worker thread, one at a time, started on first use. */
export class BodyReader {
  private worker: Worker | null = null;
  private nextId = 1;
  private readonly pending = new Map<number, { resolve(r: BodyRead): void; reject(e: Error): void }>();

  constructor(
    private readonly limits: BodyLimits,
    private readonly splitter: SplitterSpec,
  ) {}

  /**
   * The body received as `chunks` (`length` bytes in all) for `route`: parsed here when small, else in the worker,
   * which also splits /get_reward and /classify texts (`presplit`). Large bodies are never joined on this thread: a
   * fresh 30 MB allocation and copy alone took 100–150 ms here (page faults); the chunks are handed over instead (do
   * not use them after).
   */
  async read(chunks: Buffer[], length: number, route: string | undefined): Promise<BodyRead> {
    if (length <= MAIN_THREAD_PARSE_BYTES)
      return parseBody(Buffer.concat(chunks, length).toString('utf8'), this.limits);
    const worker = this.worker ?? this.start();
    const id = this.nextId++;
    const views: Uint8Array[] = [];
    const handOver: ArrayBuffer[] = [];
    for (const c of chunks) {
      // node's HTTP parser gives each body chunk memory of its own (a copy of the socket read): moved, not copied.
      // A view of part of a larger buffer (shared with something else) is copied.
      if (c.byteOffset === 0 && c.byteLength === c.buffer.byteLength && c.buffer instanceof ArrayBuffer) {
        views.push(new Uint8Array(c.buffer));
        handOver.push(c.buffer);
      } else {
        views.push(new Uint8Array(c));
      }
    }
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      worker.postMessage({ id, route, chunks: views, length, limits: this.limits } satisfies ToBodyWorker, handOver);
    });
  }

  /** Starts the parser thread now (the server does at listen), so that the first large body does not wait for it. */
  prepare(): void {
    if (!this.worker) this.start();
  }

  async close(): Promise<void> {
    const w = this.worker;
    this.worker = null;
    if (w) await w.terminate(); // it only parses JSON: nothing to finish
  }

  private start(): Worker {
    const worker = spawnModuleWorker(import.meta.url, 'body-worker', this.splitter);
    worker.unref(); // an idle parser does not keep the process alive
    worker.on('message', ({ id, ...read }: FromBodyWorker) => {
      const p = this.pending.get(id);
      if (!p) return;
      this.pending.delete(id);
      p.resolve(read);
    });
    const fail = (e: Error) => {
      if (this.worker === worker) this.worker = null; // the next body starts a new one
      for (const p of this.pending.values()) p.reject(e);
      this.pending.clear();
    };
    worker.on('error', (e) => fail(new Error(`body parser thread failed: ${e.message}`)));
    worker.on('exit', (code) => fail(new Error(`body parser thread exited (code ${code})`)));
    this.worker = worker;
    return worker;
  }
}
