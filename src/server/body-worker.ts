/** The body parser thread (body.ts BodyReader): parses and counts large request bodies off the main thread. */
import { parentPort, workerData } from 'node:worker_threads';
import { parseBody, type FromBodyWorker, type SplitterSpec, type ToBodyWorker } from './body.js';
import { presplitBody, QuerySplitter, withoutSplitTexts } from './split.js';
import { lowerThisThreadPriority } from './thread-priority.js';

const port = parentPort!;

// Below the HTTP thread (thread-priority.ts): a large parse must not delay /health.
lowerThisThreadPriority(10);
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
