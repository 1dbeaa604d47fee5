import fs from 'node:fs';
import * as ort from 'onnxruntime-node';
const entry = '/tmp/arm-bench-cache-9ErCDY/graphs/' + fs.readdirSync('/tmp/arm-bench-cache-9ErCDY/graphs')[0];
const base: ort.InferenceSession.SessionOptions = { intraOpNumThreads: 2, interOpNumThreads: 1, graphOptimizationLevel: 'all', executionMode: 'sequential' };
const sessions = {
  prepack: await ort.InferenceSession.create(entry + '/model.onnx', base),
  noprepack: await ort.InferenceSession.create(entry + '/model.onnx', { ...base, extra: { session: { disable_prepacking: '1' } } }),
};
const L = 24, KV = 2, d = 64, H = 14;
const rnd = (n: number) => Float32Array.from({ length: n }, () => Math.random() - 0.5);
function feeds(B: number, S: number, P: number) {
  const f: Record<string, ort.Tensor> = {
    input_ids: new ort.Tensor('int64', BigInt64Array.from({ length: B * S }, (_, i) => BigInt((i * 7919) % 151936)), [B, S]),
    attention_mask: new ort.Tensor('int64', new BigInt64Array(B * (P + S)).fill(1n), [B, P + S]),
    position_ids: new ort.Tensor('int64', BigInt64Array.from({ length: B * S }, (_, i) => BigInt(P + (i % S))), [B, S]),
    patch_mask: new ort.Tensor('float32', new Float32Array(B * L * H), [B, L, H]),
    patch_values: new ort.Tensor('float32', new Float32Array(L * H * d), [L, H, d]),
    patch_replace: new ort.Tensor('float32', Float32Array.of(1), []),
  };
  for (let l = 0; l < L; l++) { f[`past.${l}.key`] = new ort.Tensor('float32', rnd(KV * P * d), [1, KV, P, d]); f[`past.${l}.value`] = new ort.Tensor('float32', rnd(KV * P * d), [1, KV, P, d]); }
  return f;
}
const cases = { forward: feeds(1, 256, 0), step32: feeds(32, 1, 255), decode: feeds(1, 1, 255) };
const times: Record<string, number[]> = {};
for (let r = 0; r < 8; r++) {
  for (const [cn, f] of Object.entries(cases)) for (const [sn, s] of Object.entries(sessions)) {
    await new Promise((res) => setTimeout(res, 30));
    const reps = cn === 'forward' ? 1 : 3;
    for (let i = 0; i < reps; i++) { const t = performance.now(); await s.run(f, ['logits', 'heads']); if (r > 0) (times[`${cn}/${sn}`] ??= []).push(performance.now() - t); }
  }
}
const med = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1]!;
for (const [k, v] of Object.entries(times)) console.log(k.padEnd(20), 'median', med(v).toFixed(1), 'min', Math.min(...v).toFixed(1), 'all', v.map((x) => x.toFixed(0)).join(' '));
