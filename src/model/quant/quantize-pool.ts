/**
 * Block quantisation over several cores, with a synchronous API (the graph cache writes its entry in one
 * synchronous pass). A 7B int4 build is almost all quantizeMatrix time (~6.5 B weights through the clip search),
 * so it scales with the cores.
 *
 * A matrix goes through in chunks of at most CHUNK_ELEMENTS weights: the chunk's rows are copied into one
 * shared input buffer, split into contiguous row ranges (one per worker plus one for the calling thread), and
 * quantised into shared output buffers, which are copied into the result while the calling thread waits on a
 * shared counter (Atomics.wait). The shared buffers live as long as the pool: workers only free what they were
 * sent when their isolate collects garbage, which an idle worker never does, so fresh buffers per matrix would
 * pile up (a 7B build ran out of 24 GB that way). Rows write disjoint bytes, so the result is bit for bit
 * quantizeMatrix's.
 */
import type { Worker } from 'node:worker_threads';
import { spawnModuleWorker } from '../../util/module-worker.js';
import {
  allocQuantized,
  blobBytes,
  blocksPerRow,
  zeroPointBytesPerRow,
  type QuantizedMatrix,
  type QuantOptions,
} from './layout.js';
import { quantizeRowsInto } from './round-to-nearest.js';
import type { QuantizeJob } from './quantize-worker.js';

/** Workers must have loaded within this long (tsx compiles them from source in tests), else none are used. */
const READY_TIMEOUT_MS = 60_000;
/** Weights per chunk: 64 MiB of float32 input, shared once, whatever the matrix's size. */
const CHUNK_ELEMENTS = 1 << 24;

export class QuantizePool {
  private input: Float32Array = new Float32Array(0);
  private codes: Uint8Array = new Uint8Array(0);
  private scales: Float32Array = new Float32Array(0);
  private zeroPoints: Uint8Array = new Uint8Array(0);
  private readonly done = new Int32Array(new SharedArrayBuffer(8)); // [jobs finished, jobs failed], reset per chunk

  private constructor(
    private readonly workers: Worker[],
    private readonly chunkElements: number,
  ) {}

  /**
   * `threads` − 1 workers (the calling thread is the last one); null for one thread, or when the workers
   * could not start (then the caller quantises alone, as before). `chunkElements` is for tests.
   */
  static open(threads: number, chunkElements = CHUNK_ELEMENTS): QuantizePool | null {
    if (!(threads > 1)) return null;
    const ready = new Int32Array(new SharedArrayBuffer(4));
    const workers = Array.from({ length: threads - 1 }, () =>
      spawnModuleWorker(import.meta.url, 'quantize-worker', { ready }),
    );
    for (const w of workers) {
      w.unref();
      w.on('error', () => {
        /* a failed load shows as a missing ready count */
      });
    }
    const deadline = Date.now() + READY_TIMEOUT_MS;
    for (let seen = Atomics.load(ready, 0); seen < workers.length; seen = Atomics.load(ready, 0)) {
      const left = deadline - Date.now();
      if (left <= 0) {
        for (const w of workers) void w.terminate();
        return null;
      }
      Atomics.wait(ready, 0, seen, left);
    }
    return new QuantizePool(workers, chunkElements);
  }

  get threads(): number {
    return this.workers.length + 1;
  }

  /** quantizeMatrix(w, rows, cols, opts), chunk by chunk, each chunk's rows shared out among the threads. */
  quantize(
    w: Float32Array,
    rows: number,
    cols: number,
    opts: Pick<QuantOptions, 'bits' | 'blockSize'>,
  ): QuantizedMatrix {
    const { bits, blockSize } = opts;
    const out = allocQuantized(rows, cols, bits, blockSize);
    const nb = blocksPerRow(cols, blockSize);
    // per row
    const per = { codes: nb * blobBytes(bits, blockSize), scales: nb, zeroPoints: zeroPointBytesPerRow(nb, bits) };
    const chunkRows = Math.max(1, Math.floor(this.chunkElements / cols));
    this.reserve(Math.min(rows, chunkRows), cols, per);
    for (let r0 = 0; r0 < rows; r0 += chunkRows) {
      const n = Math.min(chunkRows, rows - r0);
      this.input.set(w.subarray(r0 * cols, (r0 + n) * cols));
      const q: QuantizedMatrix = {
        rows: n,
        cols,
        bits,
        blockSize,
        codes: this.codes.subarray(0, n * per.codes),
        scales: this.scales.subarray(0, n * per.scales),
        zeroPoints: this.zeroPoints.subarray(0, n * per.zeroPoints),
      };
      // As in a fresh allocation: 4-bit padding past K stays code 0, and a row's unused last zero-point nibble 0
      q.codes.fill(0);
      q.zeroPoints.fill(0);
      this.run(q, n);
      out.codes.set(q.codes, r0 * per.codes);
      out.scales.set(q.scales, r0 * per.scales);
      out.zeroPoints.set(q.zeroPoints, r0 * per.zeroPoints);
    }
    return out;
  }

  async close(): Promise<void> {
    await Promise.all(this.workers.map((w) => w.terminate()));
  }

  /** Shared buffers big enough for `rows` rows (grown rarely: the first, largest matrix usually sets them). */
  private reserve(rows: number, cols: number, per: { codes: number; scales: number; zeroPoints: number }): void {
    const shared = <T extends Uint8Array | Float32Array>(
      have: T,
      n: number,
      make: (b: SharedArrayBuffer) => T,
      bytes: number,
    ): T => (have.length >= n ? have : make(new SharedArrayBuffer(n * bytes)));
    this.input = shared(this.input, rows * cols, (b) => new Float32Array(b), 4);
    this.codes = shared(this.codes, rows * per.codes, (b) => new Uint8Array(b), 1);
    this.scales = shared(this.scales, rows * per.scales, (b) => new Float32Array(b), 4);
    this.zeroPoints = shared(this.zeroPoints, rows * per.zeroPoints, (b) => new Uint8Array(b), 1);
  }

  /** Rows [0, n) of the shared input into `q`: the workers' ranges sent, this thread's done here, then wait. */
  private run(q: QuantizedMatrix, n: number): void {
    const done = this.done;
    Atomics.store(done, 0, 0);
    Atomics.store(done, 1, 0);
    const per = Math.ceil(n / this.threads);
    let sent = 0;
    this.workers.forEach((worker, i) => {
      const rowStart = (i + 1) * per,
        rowEnd = Math.min(n, rowStart + per);
      if (rowStart >= rowEnd) return;
      worker.postMessage({ w: this.input, q, rowStart, rowEnd, done } satisfies QuantizeJob);
      sent++;
    });
    quantizeRowsInto(this.input, q, 0, Math.min(n, per));
    // A worker that died mid-job (it cannot be seen dying from here: this thread's event loop is blocked) would
    // leave the count short for ever: give up long after any live worker would have finished (~10 M weights/s).
    const deadline = Date.now() + 60_000 + (n * q.cols) / 1_000;
    for (let seen = Atomics.load(done, 0); seen < sent; seen = Atomics.load(done, 0)) {
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`quantising a ${n}×${q.cols} chunk: a worker thread did not finish its rows`);
      Atomics.wait(done, 0, seen, left);
    }
    if (Atomics.load(done, 1) > 0) throw new Error(`quantising a ${n}×${q.cols} chunk failed in a worker thread`);
  }
}
