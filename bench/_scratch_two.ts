import * as ort from 'onnxruntime-node';
import { Decoder } from '../src/model/decoder.js';
import { encodeModel } from '../src/model/onnx/proto.js';
const CK = '/tmp/arm-bench-ckpt-qwen2.5-0.5b-shape-75ce034450ce', CACHE = '/tmp/arm-bench-cache-9ErCDY';
const dec = await Decoder.load(CK, { cacheDir: CACHE, threads: 2 });
const ids = Array.from({ length: 256 }, (_, i) => (i * 7919) % 151936);
const fwd = async (tag: string, n = 4) => { const ts: number[] = []; for (let i = 0; i < n; i++) { const t = performance.now(); await dec.forward([ids]); ts.push(performance.now() - t); } console.log(tag, ts.map((x) => x.toFixed(0)).join(' ')); };
await fwd('warm', 2); await fwd('alone');
const [M, K, N] = [256, 896, 4864];
const w = new Float32Array(K * N).map(() => Math.random() * 0.02);
const tt = (dims: number[]) => ({ tensor_type: { elem_type: 1, shape: { dim: dims.map((v) => ({ dim_value: v })) } } });
const bytes = encodeModel({ ir_version: 8, opset_import: [{ domain: '', version: 18 }], graph: { name: 'm', node: [{ op_type: 'MatMul', name: 'mm', input: ['x', 'w'], output: ['y'] }], initializer: [{ name: 'w', dims: [K, N], data_type: 1, raw_data: new Uint8Array(w.buffer) }], input: [{ name: 'x', type: tt([M, K]) }], output: [{ name: 'y', type: tt([M, N]) }] } });
const s = await ort.InferenceSession.create(bytes, { intraOpNumThreads: 2, interOpNumThreads: 1, graphOptimizationLevel: 'all', executionMode: 'sequential' });
const x = new ort.Tensor('float32', new Float32Array(M * K).map(() => Math.random()), [M, K]);
const mm = async (n = 7) => { const ts: number[] = []; for (let i = 0; i < n; i++) { const t = performance.now(); await s.run({ x }); ts.push(performance.now() - t); } return ts.map((x) => x.toFixed(1)).join(' '); };
console.log('mm', await mm());
await fwd('session exists, no mm since');
for (const p of [0, 50, 500]) {
  for (let r = 0; r < 3; r++) { console.log(`mm`, await mm()); await new Promise((res) => setTimeout(res, p)); await fwd(`after mm + pause ${p}`, 1); await new Promise((res) => setTimeout(res, p)); }
}
await s.release();
await fwd('released');
