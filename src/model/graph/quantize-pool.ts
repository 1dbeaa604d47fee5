/**
 * Block quantisation over several cores, with a synchronous API (the graph cache writes its entry in one
 * synchronous pass). A 7B int4 build is almost all quantiseMatrix time (~6.5 B weights through the clip search),
 * so it scales with the cores. The matrix is copied into shared memory, its rows are split into contiguous
 * ranges (one per worker plus one for the calling thread), and the calling thread waits on a shared counter
 * (Atomics.wait) for the workers' ranges. Rows write disjoint bytes, so the result is bit for bit
 * quantizeMatrix's.
 */
import type { Worker } from 'node:worker_threads';
import { spawnModuleWorker } from '../../util/module-worker.js';
import { allocQuantized, quantizeRowsInto, type QuantizedMatrix, type QuantOptions } from './quantized-linear.js';
import type { QuantizeJob } from './quantize-worker.js';

/** Workers must have loaded within this long (tsx compiles them from source in tests), else none are used. */
const READY_TIMEOUT_MS = 60_000;

export class QuantizePool {
  private constructor(private readonly workers: Worker[]) {}

  /**
   * `threads` − 1 workers (the calling thread is the last one); null for one thread, or when the workers
   * could not start (then the caller quantises alone, as before).
   */
  static open(threads: number): QuantizePool | null {
    if (!(threads > 1)) return null;
    const ready = new Int32Array(new SharedArrayBuffer(4));
    const workers = Array.from({ length: threads - 1 }, () => spawnModuleWorker(import.meta.url, 'quantize-worker', { ready }));
    for (const w of workers) { w.unref(); w.on('error', () => { /* a failed load shows as a missing ready count */ }); }
    const deadline = Date.now() + READY_TIMEOUT_MS;
    for (let seen = Atomics.load(ready, 0); seen < workers.length; seen = Atomics.load(ready, 0)) {
      const left = deadline - Date.now();
      if (left <= 0) { for (const w of workers) void w.terminate(); return null; }
      Atomics.wait(ready, 0, seen, left);
    }
    return new QuantizePool(workers);
  }

  get threads(): number { return this.workers.length + 1; }

  /** quantizeMatrix(w, rows, cols, opts), its rows shared out among the workers and this thread. */
  quantize(w: Float32Array, rows: number, cols: number, opts: Pick<QuantOptions, 'bits' | 'blockSize'>): QuantizedMatrix {
    const local = allocQuantized(rows, cols, opts.bits, opts.blockSize);
    const sharedBytes = (a: Uint8Array) => new Uint8Array(new SharedArrayBuffer(a.byteLength));
    const q: QuantizedMatrix = {
      ...local,
      codes: sharedBytes(local.codes), zeroPoints: sharedBytes(local.zeroPoints),
      scales: new Float32Array(new SharedArrayBuffer(local.scales.byteLength)),
    };
    const input = new Float32Array(new SharedArrayBuffer(w.byteLength));
    input.set(w);
    const done = new Int32Array(new SharedArrayBuffer(8)); // [jobs finished, jobs failed]
    const per = Math.ceil(rows / this.threads);
    let sent = 0;
    this.workers.forEach((worker, i) => {
      const rowStart = (i + 1) * per, rowEnd = Math.min(rows, rowStart + per);
      if (rowStart >= rowEnd) return;
      worker.postMessage({ w: input, q, rowStart, rowEnd, done } satisfies QuantizeJob);
      sent++;
    });
    quantizeRowsInto(input, q, 0, Math.min(rows, per));
    // A worker that died mid-job (it cannot be seen dying from here: this thread's event loop is blocked) would
    // leave the count short for ever: give up long after any live worker would have finished (~10 M weights/s).
    const deadline = Date.now() + 60_000 + (rows * cols) / 1_000;
    for (let seen = Atomics.load(done, 0); seen < sent; seen = Atomics.load(done, 0)) {
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`quantising a ${rows}×${cols} matrix: a worker thread did not finish its rows`);
      Atomics.wait(done, 0, seen, left);
    }
    if (Atomics.load(done, 1) > 0) throw new Error(`quantising a ${rows}×${cols} matrix failed in a worker thread`);
    return q;
  }

  async close(): Promise<void> {
    await Promise.all(this.workers.map((w) => w.terminate()));
  }
}
