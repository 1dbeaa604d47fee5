import fs from 'node:fs';
import * as ort from 'onnxruntime-node';

const entry = process.argv[3] ?? ('/tmp/arm-bench-cache-9ErCDY/graphs/' + fs.readdirSync('/tmp/arm-bench-cache-9ErCDY/graphs')[0]);
const variant = process.argv[2] ?? 'default';
const status = () => Object.fromEntries(fs.readFileSync('/proc/self/status', 'utf8').split('\n').filter((l) => /^(VmHWM|VmRSS|RssAnon|RssFile)/.test(l)).map((l) => { const [k, v] = l.split(':'); return [k, Math.round(parseInt(v!) / 1024)]; }));
console.log(variant, 'before', JSON.stringify(status()));
const opts: ort.InferenceSession.SessionOptions = { intraOpNumThreads: 2, interOpNumThreads: 1, graphOptimizationLevel: 'all', executionMode: 'sequential' };
if (variant === 'noprepack') opts.extra = { session: { disable_prepacking: '1' } };
if (variant === 'basic') opts.graphOptimizationLevel = 'basic';
if (variant === 'disabled') opts.graphOptimizationLevel = 'disabled';
if (variant === 'noarena') opts.enableCpuMemArena = false;
if (variant === 'profile') { opts.enableProfiling = true; opts.profileFilePrefix = '/tmp/scratch/ortprof'; }
const t0 = performance.now();
const s = await ort.InferenceSession.create(entry + '/model.onnx', opts);
console.log(variant, 'create', ((performance.now() - t0) / 1000).toFixed(2), 's', JSON.stringify(status()));
const L = 24, KV = 2, d = 64, H = 14, S = 256;
const feeds: Record<string, ort.Tensor> = {
  input_ids: new ort.Tensor('int64', BigInt64Array.from({ length: S }, (_, i) => BigInt((i * 7919) % 151936)), [1, S]),
  attention_mask: new ort.Tensor('int64', new BigInt64Array(S).fill(1n), [1, S]),
  position_ids: new ort.Tensor('int64', BigInt64Array.from({ length: S }, (_, i) => BigInt(i)), [1, S]),
  patch_mask: new ort.Tensor('float32', new Float32Array(L * H), [1, L, H]),
  patch_values: new ort.Tensor('float32', new Float32Array(L * H * d), [L, H, d]),
  patch_replace: new ort.Tensor('float32', Float32Array.of(1), []),
};
for (let l = 0; l < L; l++) { feeds[`past.${l}.key`] = new ort.Tensor('float32', new Float32Array(0), [1, KV, 0, d]); feeds[`past.${l}.value`] = new ort.Tensor('float32', new Float32Array(0), [1, KV, 0, d]); }
const ts: number[] = [];
for (let i = 0; i < 6; i++) { const t = performance.now(); await s.run(feeds, ['logits', 'heads']); ts.push(performance.now() - t); }
console.log(variant, 'forward ms', ts.map((x) => x.toFixed(0)).join(' '), JSON.stringify(status()));
if (variant === 'profile') console.log(s.endProfiling?.());
