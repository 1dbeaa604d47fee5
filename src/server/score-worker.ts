/** The scoring worker thread (engine.ts WorkerEngine): loads the decoder and criteria, scores batches one at a time. */
import { parentPort, workerData } from 'node:worker_threads';
import { Decoder } from '../model/decoder.js';
import { ActivationRM } from '../arm/rm.js';
import { disposeDecoder } from '../arm/images.js';
import { lowerThisThreadPriority } from './thread-priority.js';
import { engineInfo, InProcessEngine, type FromWorker, type ToWorker, type WorkerData } from './engine.js';

const port = parentPort!;
const data = workerData as WorkerData;
const send = (m: FromWorker) => port.postMessage(m);

// Before the model loads, so that onnxruntime's threads inherit it: HTTP keeps its latency while forwards run.
lowerThisThreadPriority(5);

// 'abort' (WorkerEngine.abort, or a stopped load): delivered only while this thread waits, never while it is inside
// onnxruntime (a forward, a session being built), so ending the thread here is safe, unlike terminating it from
// outside mid-call. Listening from the start lets a load be abandoned too.
port.on('message', (m: ToWorker) => {
  if (m.type === 'abort') process.exit(0);
});

let decoder: Decoder | null = null;
try {
  decoder = await Decoder.load(data.model, { ...data.load, quiet: true });
  const criteria = data.criteria.map((c) => ({ ...c, rm: ActivationRM.load(decoder!, c.file) }));
  const engine = new InProcessEngine(decoder, criteria);
  // Messages are handled in order; the scheduler sends one batch at a time anyway.
  let chain = Promise.resolve();
  port.on('message', (m: ToWorker) => {
    if (m.type === 'abort') return; // the listener above ends the thread
    chain = chain.then(async () => {
      if (m.type === 'close') {
        await disposeDecoder(decoder);
        send({ type: 'closed' });
        port.close();
        return;
      }
      try {
        const { scores, tokens } = await engine.scoreMany(m.criteria, m.examples, m.opts);
        send({ type: 'scored', id: m.id, scores, tokens });
      } catch (e) {
        send({ type: 'failed', id: m.id, message: (e as Error).message });
      }
    });
  });
  send({ type: 'ready', info: engineInfo(decoder, criteria) });
} catch (e) {
  await disposeDecoder(decoder);
  send({ type: 'load-failed', message: (e as Error).message });
  port.close();
}
