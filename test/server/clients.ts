/**
 * Clients for the server's tests, each in a thread of its own (as remote clients are: their work is not the server
 * thread's) and below its priority (thread-priority.ts: this machine has few cores). Loopback only, bounded in count.
 */
import { Worker } from 'node:worker_threads';

/**
 * A thread that posts `rounds` rounds of three bodies of a million `query` entries each (3 MB, 5 MB and 30 MB),
 * concurrently, to `${url}/get_reward`; `statuses` are their HTTP statuses (-1: the connection was cut). A thread of
 * its own, so that building and sending 38 MB is not counted as the server's time.
 */
export function millionEntryAttacker(
  url: string,
  rounds: number,
): { ready: Promise<void>; statuses: Promise<number[]> } {
  const worker = new Worker(
    `
    const { parentPort, workerData: { url, rounds } } = require('node:worker_threads');
    // A remote client in a real deployment: here it must not take this machine's few cores from the server's thread.
    try {
      const tid = Number(/task\\/(\\d+)$/.exec(require('node:fs').readlinkSync('/proc/thread-self'))[1]);
      require('node:os').setPriority(tid, 15);
    } catch {}
    const million = (s) => Buffer.from(JSON.stringify({ query: Array.from({ length: 1000000 }, () => s) }));
    const bodies = [million(''), million('ab'), million('<|im_start|>user\\nq<|im_end|>')];
    const post = (body) => fetch(url + '/get_reward', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body,
      signal: AbortSignal.timeout(60000),
    });
    parentPort.postMessage({ ready: true });
    (async () => {
      const statuses = [];
      for (let r = 0; r < rounds; r++) {
        statuses.push(...await Promise.all(bodies.map((body) => post(body).then((res) => res.status, () => -1))));
      }
      parentPort.postMessage({ statuses });
    })();
  `,
    { eval: true, workerData: { url, rounds } },
  );
  const ready = new Promise<void>((resolve) => worker.once('message', () => resolve()));
  const statuses = new Promise<number[]>((resolve, reject) => {
    worker.on('message', (m: { statuses?: number[] }) => {
      if (m.statuses) {
        resolve(m.statuses);
        void worker.terminate();
      }
    });
    worker.once('error', reject);
  });
  return { ready, statuses };
}

/** One client's requests: `route` and `body`, posted `repeat` times one after another. */
export interface ClientJob {
  name: string;
  route: string;
  body: unknown;
  repeat: number;
}
/** What each post got: its status and parsed body (null if the body was not JSON). */
export interface ClientAnswer {
  status: number;
  body: any;
}

/** Runs `jobs` concurrently in a thread (each job's posts in sequence); resolves with each job's answers, by name. */
export function clientThread(url: string, jobs: ClientJob[]): Promise<Map<string, ClientAnswer[]>> {
  const worker = new Worker(
    `
    const { parentPort, workerData: { url, jobs } } = require('node:worker_threads');
    try {
      const tid = Number(/task\\/(\\d+)$/.exec(require('node:fs').readlinkSync('/proc/thread-self'))[1]);
      require('node:os').setPriority(tid, 15);
    } catch {}
    const post = async (route, body) => {
      const res = await fetch(url + route, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify(body),
        signal: AbortSignal.timeout(60000),
      });
      const text = await res.text();
      try {
        return { status: res.status, body: JSON.parse(text) };
      } catch {
        return { status: res.status, body: null };
      }
    };
    Promise.all(jobs.map(async (job) => {
      const answers = [];
      for (let i = 0; i < job.repeat; i++) {
        answers.push(await post(job.route, job.body).catch((e) => ({ status: -1, body: String(e) })));
      }
      return [job.name, answers];
    })).then((results) => parentPort.postMessage(results));
  `,
    { eval: true, workerData: { url, jobs } },
  );
  return new Promise((resolve, reject) => {
    worker.once('message', (results: [string, ClientAnswer[]][]) => {
      resolve(new Map(results));
      void worker.terminate();
    });
    worker.once('error', reject);
  });
}
