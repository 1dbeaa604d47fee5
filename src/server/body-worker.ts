/** The body parser thread (body.ts BodyReader): parses and counts large request bodies off the main thread. */
import fs from 'node:fs';
import os from 'node:os';
import { parentPort, workerData } from 'node:worker_threads';
import { parseBody, type FromBodyWorker, type SplitterSpec, type ToBodyWorker } from './body.js';
import { presplitBody, QuerySplitter, withoutSplitTexts } from './split.js';

const port = parentPort!;

// Below the main thread's priority: on a machine with few cores a large parse must not take the CPU from the
// thread that answers /health and reads requests (Linux: a thread's nice value is its own; elsewhere, no change).
try {
  const tid = Number(/task\/(\d+)$/.exec(fs.readlinkSync('/proc/thread-self'))?.[1]);
  if (tid > 0) os.setPriority(tid, 10);
} catch {
  /* not Linux, or not allowed: the parse still runs, at the usual priority */
}
const decoder = new TextDecoder('utf-8');
const spec = workerData as SplitterSpec;
const splitter = new QuerySplitter(spec.specials, spec.eosToken, spec.withoutPrompts);

port.on('message', ({ id, route, chunks, length, limits }: ToBodyWorker) => {
  const bytes = new Uint8Array(length);
  let at = 0;
  for (const c of chunks) {
    bytes.set(c, at);
    at += c.length;
  }
  const parsed = parseBody(decoder.decode(bytes), limits);
  if ('refusal' in parsed) {
    port.postMessage({ id, ...parsed } satisfies FromBodyWorker);
    return;
  }
  // The per-character work of /get_reward and /classify (special tokens, turn markers) is done here too; the main
  // thread gets the splits, not the texts again.
  const presplit = presplitBody(route, parsed.body, splitter);
  const body = presplit ? withoutSplitTexts(parsed.body as Record<string, unknown>) : parsed.body;
  port.postMessage({ id, body, ...(presplit ? { presplit } : {}) } satisfies FromBodyWorker);
});
