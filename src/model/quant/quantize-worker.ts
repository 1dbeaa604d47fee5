/**
 * Worker side of quantize-pool.ts: quantises the row ranges it is sent into the shared output arrays, then
 * counts the job done (and flags a failure) in the job's shared counter, where the waiting thread reads it.
 */
import { parentPort, workerData } from 'node:worker_threads';
import type { QuantizedMatrix } from './layout.js';
import { quantizeRowsInto } from './round-to-nearest.js';

/** One job: rows [rowStart, rowEnd) of `w` into `q`; `done` [jobs finished, jobs failed]. All shared memory. */
export interface QuantizeJob {
  w: Float32Array;
  q: QuantizedMatrix;
  rowStart: number;
  rowEnd: number;
  done: Int32Array;
}

parentPort!.on('message', (job: QuantizeJob) => {
  try {
    quantizeRowsInto(job.w, job.q, job.rowStart, job.rowEnd);
  } catch {
    Atomics.add(job.done, 1, 1);
  }
  Atomics.add(job.done, 0, 1);
  Atomics.notify(job.done, 0);
});

// Loaded: tell the pool, which waits for every worker before sending work.
const ready = (workerData as { ready: Int32Array }).ready;
Atomics.add(ready, 0, 1);
Atomics.notify(ready, 0);
