// The reward server in code: the model in a worker thread, one criterion, a /v1/score request, a graceful close.
// Run after fit-and-score.mjs (it writes first-low.arm.safetensors), from the same project root.
import { WorkerEngine, createRewardServer } from 'activation-rm';

const engine = await WorkerEngine.start({
  model: 'node_modules/activation-rm/models/icl-tiny',
  load: {},
  criteria: [{ name: 'first-low', file: 'first-low.arm.safetensors' }],
});
const server = await createRewardServer({ engine, maxBatch: 32, maxWaitMs: 10 });
const url = await server.listen({ port: 0 }); // port 0: any free port; e.g. http://127.0.0.1:40123
await server.warm(); // /ready → 200
const response = await fetch(`${url}/v1/score`, {
  method: 'POST',
  headers: { 'content-type': 'application/json' },
  body: JSON.stringify({ pairs: [{ prompt: 'w16 w33 w23', chosen: 'w10 w22 w14', rejected: 'w34 w34 w32' }] }),
});
console.log(response.status, JSON.stringify(await response.json()));
await server.close(); // drains, then frees the model
