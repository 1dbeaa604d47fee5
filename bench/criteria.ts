/**
 * Many criteria in one pass (`npm run bench:criteria`): on the random Qwen2.5-0.5B-shaped checkpoint at the default
 * dtype, N judge items of ~300 tokens scored under K = 1, 2, 4, 8 criteria in one pass (CriterionSet: each prompt
 * prefilled once, its last token as K patched rows), and under the same criteria one pass each (ActivationRM
 * alone, the batched single-criterion path), in one run. Criteria: the zero-shot judge with 24 random heads each
 * replaced by random means (what scoring costs does not depend on how heads were chosen).
 * Goals: eightOverOne = time(8 in one pass) / time(1) ≤ 1.3; speedupVsSeparate8 = time(8 passes) / time(8 in one
 * pass) ≥ 5; maxAbsDiffVsSeparate: the largest |Δ reward| between a criterion's score in the shared pass and alone.
 * Options: --items N (default 16), --rounds R (default 2: every timing is the median over R rounds, each round
 * running everything once, so that a change of load hits every figure alike), --threads n. Last line: one JSON object.
 */
import os from 'node:os';
import { Decoder } from '../src/model/decoder.js';
import { zeroShotRM } from '../src/arm/fit.js';
import { ActivationRM, type ExampleScore } from '../src/arm/rm.js';
import { CriterionSet } from '../src/arm/criterion-set.js';
import type { Example } from '../src/data/examples.js';
import { Rng } from '../src/util/rng.js';
import { ensureQwenShapeCheckpoint, median } from './qwen-shape.js';
import { log, option, seconds, threadsOption } from './args.js';

const N = Number(option('--items') ?? 16);
const ROUNDS = Number(option('--rounds') ?? 2);
const KS = [1, 2, 4, 8];
const HEADS_PER_CRITERION = 24;

const dir = ensureQwenShapeCheckpoint();
const decoder = await Decoder.load(dir, { cacheDir: process.env.ARM_CACHE_DIR, quiet: true, threads: threadsOption() });
const { numLayers: L, numHeads: H, headDim: d } = decoder.spec;
const base = zeroShotRM(decoder, { batchSize: 8 });

// K criteria: each its own random heads and means (N(0, 0.5): the scale of the model's head outputs here).
const rng = new Rng(7);
const criteria = Array.from({ length: Math.max(...KS) }, (_, k) => {
  const heads = new Set<number>();
  while (heads.size < HEADS_PER_CRITERION) heads.add(rng.int(L * H));
  const mu = Float32Array.from({ length: L * H * d }, () => 0.5 * rng.normal());
  const meta = {
    ...base.criterion.meta,
    heads: [...heads].sort((a, b) => a - b).map((i) => [Math.floor(i / H), i % H]),
  };
  return {
    name: `c${k}`,
    file: `random-${k}`,
    rm: new ActivationRM(decoder, { meta: meta as typeof base.criterion.meta, mu, probs: new Float32Array(L * H) }),
  };
});
const set = new CriterionSet(decoder, criteria);

// Items whose rendered judge prompt is ~300 tokens, each with its own prompt (no prefix shared between items).
const WORDS = 'the cat sat on a mat and looked at big red ball she said yes no tree park'.split(' ');
const text = (n: number) => Array.from({ length: n }, () => WORDS[rng.int(WORDS.length)]).join(' ');
const items: Example[] = Array.from({ length: N }, (_, i) => ({
  kind: 'scalar',
  id: `i${i}`,
  line: i + 1,
  row: {},
  prompt: text(220),
  response: text(50),
  label: null,
}));

const timed = async <T>(run: () => Promise<T>): Promise<{ s: number; out: T }> => {
  const t0 = performance.now();
  const out = await run();
  return { s: seconds(t0), out };
};
const rewards = (scores: ExampleScore[]) => scores.map((s) => ('reward' in s ? s.reward : NaN));

log(`criteria bench: ${N} items, K = ${KS.join(', ')}; ${os.cpus()[0]?.model}, ${threadsOption()} threads`);
await set.scoreExamples(items.slice(0, 2)); // warm-up: first-run costs of both paths
await criteria[0]!.rm.scoreExamples(items.slice(0, 2));
const onePassRounds = new Map<number, number[]>(KS.map((K) => [K, []]));
const singleRounds: number[][] = criteria.map(() => []);
let maxAbsDiff = 0;
for (let round = 0; round < ROUNDS; round++) {
  let shared = new Map<string, ExampleScore[]>();
  for (const K of KS) {
    const names = criteria.slice(0, K).map((c) => c.name);
    const { s, out } = await timed(() => set.scoreExamples(items, { names }));
    onePassRounds.get(K)!.push(s);
    if (K === Math.max(...KS)) shared = out;
    log(`  round ${round + 1}: K = ${K} in one pass: ${s.toFixed(2)} s (${(N / s).toFixed(2)} items/s)`);
  }
  for (const [k, c] of criteria.entries()) {
    const { s, out } = await timed(() => c.rm.scoreExamples(items));
    singleRounds[k]!.push(s);
    const together = rewards(shared.get(c.name)!);
    rewards(out).forEach((r, i) => (maxAbsDiff = Math.max(maxAbsDiff, Math.abs(r - together[i]!))));
    log(`  round ${round + 1}: ${c.name} alone: ${s.toFixed(2)} s`);
  }
}
const onePass = new Map(KS.map((K) => [K, median(onePassRounds.get(K)!)]));
const single = singleRounds.map(median);
const separate = (K: number) => single.slice(0, K).reduce((a, b) => a + b, 0);

log('\n| K | one pass (s) | K separate passes (s) | speed-up | one pass / K = 1 |');
log('|---|---|---|---|---|');
for (const K of KS) {
  const one = onePass.get(K)!;
  log(
    `| ${K} | ${one.toFixed(2)} | ${separate(K).toFixed(2)} | ${(separate(K) / one).toFixed(2)}× | ` +
      `${(one / onePass.get(1)!).toFixed(3)} |`,
  );
}
const result = {
  eightOverOne: Number((onePass.get(8)! / onePass.get(1)!).toFixed(3)),
  speedupVsSeparate8: Number((separate(8) / onePass.get(8)!).toFixed(2)),
  maxAbsDiffVsSeparate: maxAbsDiff,
  items: N,
  rounds: ROUNDS,
  dtype: decoder.info.weightFormat,
  onePassS: Object.fromEntries(KS.map((K) => [K, Number(onePass.get(K)!.toFixed(2))])),
  separateS: Object.fromEntries(KS.map((K) => [K, Number(separate(K).toFixed(2))])),
};
await decoder.dispose();
process.stdout.write(`${JSON.stringify(result)}\n`);
