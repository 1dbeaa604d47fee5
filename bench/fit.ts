/**
 * Fit benchmark (`npm run bench:fit`): the default Activation RM fit (100 passes × 4 shots in demo draws shared by
 * DEFAULT_PASSES_PER_DEMO_SET passes, 600 REINFORCE
 * steps × 32 masks, read-out 10 masks × ≤ 50 items) on the Qwen2.5-0.5B-shaped random model with ~300-token
 * queries, against the naive method in which every REINFORCE sample is a full forward of its query.
 *
 * A full fit takes hours on 2 cores, so each phase is measured on a fraction and extrapolated (the output
 * says so): mean extraction on a few passes; REINFORCE on a few steps (the per-step cost after each query's
 * prefix is cached) plus one prefill per distinct query; the naive per-sample cost from full forwards of the
 * same queries in batches of 8 (as the naive method would batch them). Both fits share the mean phase.
 * The variant with --passes-per-demo-set 1 (every pass its own demo draw, as MTV) is measured too.
 * Last line: {"fitSpeedupVsNaive":…,"reinforceSpeedupVsNaive":…,"fitWallS":…,"extrapolated":true,…}
 */
import os from 'node:os';
import { Decoder } from '../src/model/decoder.js';
import { fitActivationRM, judgeItems } from '../src/arm/fit.js';
import { reinforceLoss } from '../src/arm/reinforce-loss.js';
import { DEFAULT_PASSES_PER_DEMO_SET, extractMeans } from '../src/arm/means.js';
import { makeTemplate, render, resolveAnswerTokens } from '../src/arm/template.js';
import { REINFORCE_DEFAULTS } from '../src/arm/reinforce.js';
import type { PairExample } from '../src/data/examples.js';
import { Rng } from '../src/util/rng.js';
import { ensureQwenShapeCheckpoint, median } from './qwen-shape.js';
import { log, seconds } from './args.js';

const QUERY_TOKENS = 300;
const POOL_PAIRS = 16; // 32 judge items, as `--few-shot 16`
const MEASURED = { passes: 3, steps: 4, naiveBatches: 2 };
const G = DEFAULT_PASSES_PER_DEMO_SET;
const DEFAULT = {
  passes: 100,
  shots: 4,
  steps: REINFORCE_DEFAULTS.steps,
  samples: REINFORCE_DEFAULTS.samples,
  readoutMasks: 10,
  readoutItems: 50,
};

const dir = ensureQwenShapeCheckpoint();
const decoder = await Decoder.load(dir, { cacheDir: process.env.ARM_CACHE_DIR, quiet: true });
const tokenizer = decoder.tokenizer;

// Pairs whose rendered zero-shot query is ~300 tokens: words drawn from a small vocabulary.
const rng = new Rng(1);
const WORDS = 'the cat sat on a mat and looked at big red ball she said yes no tree park'.split(' ');
const text = (n: number) => Array.from({ length: n }, () => WORDS[rng.int(WORDS.length)]).join(' ');
const pairs: PairExample[] = Array.from({ length: POOL_PAIRS }, (_, i) => ({
  kind: 'pair',
  id: `p${i}`,
  line: i + 1,
  row: {},
  prompt: text(120),
  chosen: text(25),
  rejected: text(35),
}));
const template = makeTemplate('scalar', {}, tokenizer);
const items = judgeItems(pairs, 'scalar');
const lengths = items.map((it) => render(tokenizer, template, [], it, 4096).ids.length);
log(
  `queries: ${items.length} judge items, ${Math.min(...lengths)}–${Math.max(...lengths)} tokens (target ` +
    `~${QUERY_TOKENS}); template ${template.chat ? 'chat' : 'plain'}`,
);

// ---- mean extraction: one default demo draw (G passes, 4 shots + query ≈ 5 × 300 tokens each) and a few
// independent passes (--passes-per-demo-set 1) ----
let t0 = performance.now();
await extractMeans(decoder, template, items, {
  passes: G,
  shots: DEFAULT.shots,
  seed: 0,
  batchSize: G,
  maxLength: 4096,
  passesPerDemoSet: G,
});
const perPassS = seconds(t0) / G;
t0 = performance.now();
await extractMeans(decoder, template, items, {
  passes: MEASURED.passes,
  shots: DEFAULT.shots,
  seed: 0,
  batchSize: MEASURED.passes,
  maxLength: 4096,
  passesPerDemoSet: 1,
});
const perIndependentPassS = seconds(t0) / MEASURED.passes;

// ---- ours: prefill per distinct query + shared-prefix steps of 32 rows ----
const answers = resolveAnswerTokens(tokenizer, template, items[0]!).primary;
const { numLayers: L, numHeads: H, headDim: d } = decoder.spec;
const mu = Float32Array.from({ length: L * H * d }, () => 0.01 * rng.normal());
const loss = reinforceLoss(decoder, {
  items,
  template,
  answerIds: answers,
  mu,
  mode: 'replace',
  maxLength: 4096,
  cacheBytes: 2 ** 30,
});
const masks = (n: number) =>
  Array.from({ length: n }, () => Uint8Array.from({ length: L * H }, () => (rng.uniform() < 0.27 ? 1 : 0)));
t0 = performance.now();
await loss(0, masks(1)); // first call on item 0: its prefill
const prefillS = seconds(t0);
const stepTimes: number[] = [];
for (let i = 0; i < MEASURED.steps; i++) {
  t0 = performance.now();
  await loss(0, masks(DEFAULT.samples));
  stepTimes.push(seconds(t0));
}
const stepS = median(stepTimes);
t0 = performance.now();
await loss(0, masks(DEFAULT.readoutMasks));
const readoutStepS = seconds(t0);

// ---- naive: every sample a full forward of its ~300-token query (batches of 8) ----
const ids = render(tokenizer, template, [], items[0]!, 4096).ids;
const naiveTimes: number[] = [];
for (let i = 0; i < MEASURED.naiveBatches; i++) {
  const m = masks(8);
  const mask = new Float32Array(8 * L * H);
  m.forEach((x, r) => mask.set(x, r * L * H));
  t0 = performance.now();
  await decoder.forward(
    Array.from({ length: 8 }, () => ids),
    { mask, values: mu },
  );
  naiveTimes.push(seconds(t0) / 8);
}
const naivePerSampleS = median(naiveTimes);

// ---- extrapolate the default fit ----
const distinct = Math.min(items.length, DEFAULT.steps); // each distinct query is prefilled once (cache holds them all)
const readoutItems = Math.min(DEFAULT.readoutItems, items.length);
const meansS = DEFAULT.passes * perPassS;
const oursReinforceS = distinct * prefillS + DEFAULT.steps * stepS + readoutItems * readoutStepS;
const naiveReinforceS = (DEFAULT.steps * DEFAULT.samples + readoutItems * DEFAULT.readoutMasks) * naivePerSampleS;
const fitWallS = meansS + oursReinforceS;
const naiveWallS = meansS + naiveReinforceS;
const independentMeansS = DEFAULT.passes * perIndependentPassS;
const independentFitWallS = independentMeansS + oursReinforceS;

// A real (tiny) end-to-end fit through the public API, so the bench also proves the path it extrapolates.
t0 = performance.now();
await fitActivationRM(decoder, pairs.slice(0, 2), {
  passes: 1,
  shots: 1,
  maxLength: 4096,
  reinforce: { steps: 1, samples: 4, readoutMasks: 2, readoutItems: 2 },
  warn: () => undefined,
});
const smokeS = seconds(t0);

console.table([
  {
    phase: `mean extraction (100 passes, g = ${G})`,
    measured: `${G} passes`,
    'ours s': meansS.toFixed(0),
    'naive s': meansS.toFixed(0),
  },
  {
    phase: `prefill (${distinct} queries)`,
    measured: '1 prefill',
    'ours s': (distinct * prefillS).toFixed(1),
    'naive s': '–',
  },
  {
    phase: 'REINFORCE 600 × 32',
    measured: `${MEASURED.steps} steps`,
    'ours s': (DEFAULT.steps * stepS).toFixed(0),
    'naive s': (DEFAULT.steps * DEFAULT.samples * naivePerSampleS).toFixed(0),
  },
  {
    phase: `read-out 10 × ${readoutItems}`,
    measured: '1 step',
    'ours s': (readoutItems * readoutStepS).toFixed(1),
    'naive s': (readoutItems * DEFAULT.readoutMasks * naivePerSampleS).toFixed(0),
  },
  { phase: 'whole fit', measured: 'extrapolated', 'ours s': fitWallS.toFixed(0), 'naive s': naiveWallS.toFixed(0) },
  {
    phase: 'means, --passes-per-demo-set 1',
    measured: `${MEASURED.passes} passes`,
    'ours s': independentMeansS.toFixed(0),
    'naive s': '–',
  },
  {
    phase: 'whole fit, --passes-per-demo-set 1',
    measured: 'extrapolated',
    'ours s': independentFitWallS.toFixed(0),
    'naive s': naiveWallS.toFixed(0),
  },
]);
log(
  `per pass ${perPassS.toFixed(2)} s (${perIndependentPassS.toFixed(2)} s with independent draws); prefill ` +
    `${prefillS.toFixed(2)} s; step (32 rows) ${(stepS * 1000).toFixed(0)} ms; naive sample ` +
    `${(naivePerSampleS * 1000).toFixed(0)} ms; smoke fit ${smokeS.toFixed(1)} s; ${os.cpus().length} cores`,
);
const fitDtype = decoder.info.weightFormat.dtype;
await decoder.dispose();

// Issue 9's yardstick: the default fit's wall time over one fp32 256-token forward of the same model, same run.
const fp32 = await Decoder.load(dir, { cacheDir: process.env.ARM_CACHE_DIR, quiet: true, dtype: 'fp32' });
const ids256 = Array.from({ length: 256 }, (_, i) => 1 + ((i * 7919) % (fp32.spec.vocabSize - 2)));
await fp32.forward([ids256]);
const forwardTimes: number[] = [];
for (let i = 0; i < 3; i++) {
  t0 = performance.now();
  await fp32.forward([ids256]);
  forwardTimes.push(seconds(t0));
}
const forward256S = median(forwardTimes);
await fp32.dispose();
log(`fit at ${fitDtype}; fp32 256-token forward ${forward256S.toFixed(2)} s`);

console.log(
  JSON.stringify({
    fitOverForward256: Math.round(fitWallS / forward256S),
    fitDtype,
    forward256S: Number(forward256S.toFixed(2)),
    fitSpeedupVsNaive: Number((naiveWallS / fitWallS).toFixed(1)),
    fitOverForward256IndependentDraws: Math.round(independentFitWallS / forward256S),
    passesPerDemoSet: G,
    reinforceSpeedupVsNaive: Number((naiveReinforceS / oursReinforceS).toFixed(1)),
    fitWallS: Math.round(fitWallS),
    naiveWallS: Math.round(naiveWallS),
    meansS: Math.round(meansS),
    reinforceS: Math.round(oursReinforceS),
    stepMs: Math.round(stepS * 1000),
    naiveSampleMs: Math.round(naivePerSampleS * 1000),
    queryTokens: Math.round(lengths.reduce((a, b) => a + b, 0) / lengths.length),
    extrapolated: true,
  }),
);
