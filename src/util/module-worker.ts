/**
 * A worker thread running one of this package's modules, given the calling module's URL and the worker module's
 * name beside it. Built (dist/*.js), that is a .js file; from TypeScript sources (tsx, vitest) there is none, so
 * the worker registers tsx's loader first and imports the .ts file.
 */
import { Worker } from 'node:worker_threads';

export function spawnModuleWorker(callerUrl: string, name: string, workerData: unknown): Worker {
  if (!callerUrl.endsWith('.ts')) return new Worker(new URL(`./${name}.js`, callerUrl), { workerData });
  const tsx = import.meta.resolve('tsx/esm/api');
  const entry = new URL(`./${name}.ts`, callerUrl).href;
  return new Worker(
    `import(${JSON.stringify(tsx)}).then((m) => { m.register(); return import(${JSON.stringify(entry)}); });`,
    { eval: true, workerData },
  );
}
