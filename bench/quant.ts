/**
 * Weight formats: accuracy and speed of --dtype int8 / int4 against fp32. `npm run bench:quant`.
 *
 * Variants: fp32, int8 with each int8 kernel (int8.rowwise: W8A8 MatMulInteger; int8.blockwise: MatMulNBits),
 * int4 at the model's defaults (small models: GPTQ, block 16; the Qwen shape: round-to-nearest, block 32), and on
 * the small models int4.rtn (round-to-nearest, block 32: what a 7B model gets) for comparison; stories260K's
 * default int4 also at 3 more calibration seeds. "int8" in the headline is the default kernel's variant
 * (weight-format.ts defaultInt8Kernel).
 * Phases (each heavy one in its own child process, so memory figures are that process's alone):
 *   small   stories260K (real weights) and icl-tiny (trained): next-token agreement over teacher-forced
 *           positions, ARM P(Yes) Spearman for one criterion fitted at fp32 and scored at each variant, and
 *           icl-tiny ARM pair accuracy fitted and scored at each variant (8 criteria).
 *   qwen    the Qwen2.5-0.5B-shaped random checkpoint (bench/qwen-shape.ts): 256-token forward, 32-row
 *           shared step and 1-row decode step (after a 255-token prefix) of every variant in interleaved
 *           rounds (median of per-round ratios), then agreement over decoded positions.
 *   7b      (unless --skip-7b) a Qwen2.5-7B-shaped random bf16 checkpoint written once into os.tmpdir()
 *           (~15 GB; the bench checks free space first and deletes it at the end unless --keep-7b), built at
 *           int4 in one child, then loaded from the cache in another that runs a 256-token forward and one
 *           REINFORCE step (32 patch rows after a 255-token prefix) and reports its peak RSS.
 * The last stdout line is one JSON object with the headline figures.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Decoder } from '../src/model/decoder.js';
import {
  defaultInt8Kernel,
  type Int4Method,
  type Int8Kernel,
  type WeightDType,
} from '../src/model/quant/weight-format.js';
import { fitActivationRM } from '../src/arm/fit.js';
import type { ActivationRM } from '../src/arm/rm.js';
import { Rng, writeRandomCheckpoint, type HfConfig } from '../tools/random-checkpoint.js';
import { runChild } from './child.js';
import { CONFIG as QWEN_05B, ensureQwenShapeCheckpoint, median } from './qwen-shape.js';
import { specFromConfig } from '../src/model/families/config.js';
import { flag, log, option, seconds, threadsOption } from './args.js';
import {
  agreement,
  criterionRewards,
  decodePositions,
  ICL_FIT_OPTIONS,
  ICL_TINY,
  iclCriteria,
  r,
  spearman,
  spearmanSummary,
  STORIES,
  STORY_TEXTS,
  type Positions,
} from './accuracy.js';

const SCRIPT = fileURLToPath(import.meta.url);
/** The weight formats compared: a dtype, and for int8 the kernel. */
const VARIANTS = {
  fp32: { dtype: 'fp32' },
  'int8.rowwise': { dtype: 'int8', int8Kernel: 'rowwise' },
  'int8.blockwise': { dtype: 'int8', int8Kernel: 'blockwise' },
  int4: { dtype: 'int4' },
  'int4.rtn': { dtype: 'int4', int4Method: 'rtn', blockSize: 32 },
} as const satisfies Record<
  string,
  { dtype: WeightDType; int8Kernel?: Int8Kernel; int4Method?: Int4Method; blockSize?: number }
>;
type Variant = keyof typeof VARIANTS;
const DTYPES = Object.keys(VARIANTS) as Variant[];
const QUANTIZED = DTYPES.filter((t) => t !== 'fp32') as Exclude<Variant, 'fp32'>[];
// The Qwen shape's int4 default is already round-to-nearest at block 32 (weight-format.ts defaultInt4Method): no
// 'int4.rtn' there.
const QWEN_DTYPES = DTYPES.filter((t) => t !== 'int4.rtn');
const QWEN_QUANTIZED = QUANTIZED.filter((t) => t !== 'int4.rtn');
/** Calibration seeds besides the default one, for the spread of GPTQ int4's agreement on stories260K. */
const EXTRA_GPTQ_SEEDS = [1, 2, 3];
const GOALS = {
  int8SpeedupVsFp32: 2.0,
  int8Top1Agreement: 0.99,
  int4Top1Agreement: 0.95,
  int8ScoreSpearman: 0.99,
  rss7bGiB: 8,
  rss7bOverQuantBytes: 1.3,
};

const QWEN_7B: HfConfig = {
  model_type: 'qwen2',
  hidden_size: 3584,
  intermediate_size: 18944,
  num_hidden_layers: 28,
  num_attention_heads: 28,
  num_key_value_heads: 4,
  head_dim: 128,
  vocab_size: 152064,
  tie_word_embeddings: false,
  rope_theta: 1000000,
  rms_norm_eps: 1e-6,
  max_position_embeddings: 4096,
};
const QWEN_7B_DIR = path.join(os.tmpdir(), 'arm-bench-ckpt-qwen2.5-7b-shape-bf16');

const threads = threadsOption();

// ---------------------------------------------------------------- phase: small real models

async function phaseSmall(cacheDir: string) {
  const load = (dir: string, t: Variant) => Decoder.load(dir, { cacheDir, threads, ...VARIANTS[t], quiet: true });
  // stories260K: teacher-forced agreement over ~300 positions
  const stories: Record<string, unknown> = {};
  const sd = Object.fromEntries(
    await Promise.all(DTYPES.map(async (t) => [t, await load(STORIES, t)] as const)),
  ) as Record<Variant, Decoder>;
  const seqs = STORY_TEXTS.map((t) => sd.fp32.tokenizer.encode(t));
  const pos = Object.fromEntries(
    await Promise.all(DTYPES.map(async (t) => [t, await decodePositions(sd[t], seqs, 400)] as const)),
  ) as Record<Variant, Positions>;
  for (const t of QUANTIZED)
    stories[t] = {
      ...agreement(pos.fp32, pos[t]),
      weightBytes: sd[t].weightBytes,
      format: sd[t].info.weightFormat.quant,
    };
  stories.fp32 = { weightBytes: sd.fp32.weightBytes };
  // GPTQ's result depends on its (self-sampled) calibration text: the default int4 again at other seeds.
  const seedRows = [{ seed: 0, ...(stories.int4 as ReturnType<typeof agreement>) }];
  for (const seed of EXTRA_GPTQ_SEEDS) {
    const d = await Decoder.load(STORIES, {
      cacheDir,
      threads,
      dtype: 'int4',
      int4Method: 'gptq',
      gptqCalibration: { seed },
      quiet: true,
    });
    seedRows.push({ seed, ...agreement(pos.fp32, await decodePositions(d, seqs, 400)) });
    await d.dispose();
  }
  stories['int4.gptqSeeds'] = {
    top1Agreement: seedRows.map((x) => x.top1Agreement),
    meanKL: seedRows.map((x) => x.meanKL),
    meanTop1: r(seedRows.reduce((a, x) => a + x.top1Agreement, 0) / seedRows.length, 4),
    meanOfMeanKL: Number((seedRows.reduce((a, x) => a + x.meanKL, 0) / seedRows.length).toPrecision(3)),
  };

  // icl-tiny: one criterion fitted at fp32, scored at each dtype (Spearman of P(Yes) over every item), and
  // every criterion fitted and scored at each dtype (pair accuracy, ties wrong).
  const { all, criteria } = iclCriteria();
  const id = Object.fromEntries(
    await Promise.all(DTYPES.map(async (t) => [t, await load(ICL_TINY, t)] as const)),
  ) as Record<Variant, Decoder>;
  const correct = (scores: Awaited<ReturnType<ActivationRM['scoreExamples']>>) =>
    scores.filter((x) => 'chosen' in x && x.correct).length;

  const spearmanBy: Record<string, Record<string, number>> = Object.fromEntries(QUANTIZED.map((t) => [t, {}]));
  const accuracy: Record<string, number> = {};
  const agreementIcl: Record<string, unknown> = {};
  const items: Record<string, number> = {};
  const tFit = performance.now();
  const counts = Object.fromEntries(DTYPES.map((t) => [t, 0])) as Record<Variant, number>;
  let testPairs = 0;
  for (const { subset: s, train, test } of criteria) {
    testPairs += test.length;
    const fpFile = path.join(cacheDir, `icl-${s}-fp32.arm.safetensors`);
    for (const t of DTYPES) {
      const rm = await fitActivationRM(id[t], train, ICL_FIT_OPTIONS);
      if (t === 'fp32') rm.save(fpFile);
      counts[t] += correct(await rm.scoreExamples(test));
    }
    // Same fp32 criterion file at each dtype (the mismatch warning is expected here)
    const scored = Object.fromEntries(
      await Promise.all(DTYPES.map(async (t) => [t, await criterionRewards(id[t], fpFile, test)] as const)),
    );
    for (const t of QUANTIZED) spearmanBy[t]![s] = r(spearman(scored.fp32!, scored[t]!), 4);
    items[s] = scored.fp32!.length;
  }
  for (const t of DTYPES) accuracy[t] = r(counts[t] / testPairs, 4);
  // Spearman over all items of all criteria pooled (each criterion's own fp32 file)
  // is not meaningful across files; report the per-criterion median and minimum.
  const scoreSpearman = Object.fromEntries(QUANTIZED.map((t) => [t, spearmanSummary(spearmanBy[t]!)]));
  // Next-token agreement on icl-tiny too (its vocabulary is 64 tokens; rendered judge prompts)
  const iclSeqs = all
    .slice(0, 40)
    .map((e) => id.fp32.tokenizer.encode(`${e.prompt} ${e.kind === 'pair' ? e.chosen : ''} A: Yes |`));
  const iclPos = Object.fromEntries(
    await Promise.all(DTYPES.map(async (t) => [t, await decodePositions(id[t], iclSeqs, 300)] as const)),
  ) as Record<Variant, Positions>;
  for (const t of QUANTIZED) agreementIcl[t] = agreement(iclPos.fp32, iclPos[t]);
  const fitS = seconds(tFit);
  for (const d of [...Object.values(sd), ...Object.values(id)]) await d.dispose();
  return {
    stories,
    icl: {
      testPairs,
      itemsPerCriterion: items,
      armAccuracy: accuracy,
      scoreSpearman,
      agreement: agreementIcl,
      seconds: r(fitS, 1),
    },
  };
}

// ---------------------------------------------------------------- phase: Qwen2.5-0.5B shape

async function phaseQwen(cacheDir: string) {
  const dir = ensureQwenShapeCheckpoint(log);
  const d = {} as Record<Variant, Decoder>;
  const loadS: Record<string, number> = {};
  for (const t of QWEN_DTYPES) {
    const t0 = performance.now();
    d[t] = await Decoder.load(dir, { cacheDir, threads, ...VARIANTS[t], quiet: true });
    loadS[t] = r(seconds(t0), 1);
    log(
      `qwen shape ${t}: loaded in ${loadS[t]} s (built: ${d[t].info.built}), ` +
        `${(d[t].weightBytes / 2 ** 20).toFixed(0)} MiB`,
    );
  }
  const { numLayers: L, numHeads: H, headDim: hd, vocabSize: V } = d.fp32.spec;
  const rng = new Rng(7);
  const ids = Array.from({ length: 256 }, () => Math.floor(rng.uniform() * V));
  const mask = Float32Array.from({ length: 32 * L * H }, () => (rng.uniform() < 0.5 ? 1 : 0));
  const values = Float32Array.from({ length: L * H * hd }, () => rng.normal());
  const kv = {} as Record<Variant, Awaited<ReturnType<Decoder['prefill']>>>;
  for (const t of QWEN_DTYPES) {
    await d[t].forward([ids]);
    kv[t] = await d[t].prefill(ids.slice(0, -1));
    await d[t].stepShared(kv[t], ids.at(-1)!, { mask, values });
    await d[t].extend(kv[t], [ids.at(-1)!]);
  }
  const fwd: Record<string, number[]> = Object.fromEntries(QWEN_DTYPES.map((t) => [t, []]));
  const step: Record<string, number[]> = Object.fromEntries(QWEN_DTYPES.map((t) => [t, []]));
  const decode: Record<string, number[]> = Object.fromEntries(QWEN_DTYPES.map((t) => [t, []]));
  const ROUNDS = 7;
  for (let round = 0; round < ROUNDS; round++) {
    for (const t of QWEN_DTYPES) {
      let t0 = performance.now();
      await d[t].forward([ids]);
      fwd[t]!.push(performance.now() - t0);
      t0 = performance.now();
      await d[t].stepShared(kv[t], ids.at(-1)!, { mask, values });
      step[t]!.push(performance.now() - t0);
      // one decoded token after the 255-token prefix (batch 1, one row): median of 5
      const one: number[] = [];
      for (let i = 0; i < 5; i++) {
        t0 = performance.now();
        await d[t].extend(kv[t], [ids.at(-1)!]);
        one.push(performance.now() - t0);
      }
      decode[t]!.push(median(one));
    }
    log(
      `qwen shape round ${round + 1}/${ROUNDS}: forward ` +
        `${QWEN_DTYPES.map((t) => `${t} ${fwd[t]!.at(-1)!.toFixed(0)}`).join(', ')} ms`,
    );
  }
  const ratio = (a: number[], b: number[]) => median(a.map((x, i) => x / b[i]!));
  const perVariant = <T>(f: (t: Exclude<Variant, 'fp32'>) => T) =>
    Object.fromEntries(QWEN_QUANTIZED.map((t) => [t, f(t)])) as Record<Exclude<Variant, 'fp32'>, T>;
  const speed = {
    forwardMs: Object.fromEntries(QWEN_DTYPES.map((t) => [t, r(median(fwd[t]!), 0)])),
    stepSharedMs: Object.fromEntries(QWEN_DTYPES.map((t) => [t, r(median(step[t]!), 0)])),
    decodeStepMs: Object.fromEntries(QWEN_DTYPES.map((t) => [t, r(median(decode[t]!), 2)])),
    forwardSpeedupVsFp32: perVariant((t) => r(ratio(fwd.fp32!, fwd[t]!), 2)),
    forwardSpeedupRange: perVariant((t) => [
      r(Math.min(...fwd.fp32!.map((x, i) => x / fwd[t]![i]!)), 2),
      r(Math.max(...fwd.fp32!.map((x, i) => x / fwd[t]![i]!)), 2),
    ]),
    stepSpeedupVsFp32: perVariant((t) => r(ratio(step.fp32!, step[t]!), 2)),
    decodeSpeedupVsFp32: perVariant((t) => r(ratio(decode.fp32!, decode[t]!), 2)),
  };
  // Agreement over 200 decoded positions of random token ids (random weights: logits are flat, so this is
  // a harder test of top-1 than real text, where the top token usually stands out).
  const seqs = [
    Array.from({ length: 101 }, () => Math.floor(rng.uniform() * V)),
    Array.from({ length: 101 }, () => Math.floor(rng.uniform() * V)),
  ];
  const pos = {} as Record<Variant, Positions>;
  for (const t of QWEN_DTYPES) pos[t] = await decodePositions(d[t], seqs, 200);
  const acc = perVariant((t) => agreement(pos.fp32, pos[t]));
  const bytes = Object.fromEntries(QWEN_DTYPES.map((t) => [t, d[t].weightBytes]));
  for (const t of QWEN_DTYPES) await d[t].dispose();
  return { speed, agreement: acc, weightBytes: bytes, loadS, maxRssMiB: r(process.resourceUsage().maxRSS / 1024, 0) };
}

// ---------------------------------------------------------------- phase: 7B shape at int4

function write7b(): number {
  const t0 = performance.now();
  // memory and speed do not depend on the values
  writeRandomCheckpoint(QWEN_7B_DIR, QWEN_7B, { seed: 0, dtype: 'BF16', std: 0.02, shards: 32, fast: true });
  fs.writeFileSync(path.join(QWEN_7B_DIR, '.complete'), JSON.stringify({ config: QWEN_7B }));
  return seconds(t0);
}

async function phase7bBuild(cacheDir: string) {
  const t0 = performance.now();
  const d = await Decoder.load(QWEN_7B_DIR, { cacheDir, threads, dtype: 'int4', quiet: true });
  const out = {
    buildS: r(d.info.buildSeconds, 0),
    sessionS: r(d.info.loadSeconds, 0),
    totalS: r(seconds(t0), 0),
    weightBytes: d.weightBytes,
    buildMaxRssMiB: r(process.resourceUsage().maxRSS / 1024, 0),
  };
  await d.dispose();
  return out;
}

async function phase7bRun(cacheDir: string) {
  const t0 = performance.now();
  const d = await Decoder.load(QWEN_7B_DIR, { cacheDir, threads, dtype: 'int4', quiet: true });
  const loadS = seconds(t0);
  // Built here (the graph changed since the build child, e.g. a concurrent edit): this process's peak RSS
  // is the build's, so the parent runs this phase again from the cache.
  if (d.info.built) {
    await d.dispose();
    return { rebuilt: true };
  }
  const { numLayers: L, numHeads: H, headDim: hd, vocabSize: V } = d.spec;
  const rng = new Rng(3);
  const ids = Array.from({ length: 256 }, () => Math.floor(rng.uniform() * V));
  let t = performance.now();
  await d.forward([ids]);
  const forwardS = seconds(t);
  t = performance.now();
  const kv = await d.prefill(ids.slice(0, -1));
  const prefillS = seconds(t);
  const mask = Float32Array.from({ length: 32 * L * H }, () => (rng.uniform() < 0.5 ? 1 : 0));
  const values = Float32Array.from({ length: L * H * hd }, () => rng.normal());
  const steps: number[] = [];
  for (let i = 0; i < 3; i++) {
    t = performance.now();
    await d.stepShared(kv, ids.at(-1)!, { mask, values });
    steps.push(seconds(t));
  }
  const maxRss = process.resourceUsage().maxRSS * 1024;
  const out = {
    loadS: r(loadS, 1),
    forward256S: r(forwardS, 1),
    tokensPerS256: r(256 / forwardS, 1),
    prefill255S: r(prefillS, 1),
    reinforceStepS: r(median(steps), 2),
    weightBytes: d.weightBytes,
    maxRssBytes: maxRss,
  };
  await d.dispose();
  return out;
}

// ---------------------------------------------------------------- orchestration

const child = (mode: string, cacheDir: string) =>
  runChild(SCRIPT, mode, ['--cache-dir', cacheDir, '--threads', String(threads)]);

async function main() {
  const mode = option('--child');
  if (mode) {
    const cacheDir = option('--cache-dir')!;
    const result =
      mode === 'small'
        ? await phaseSmall(cacheDir)
        : mode === 'qwen'
          ? await phaseQwen(cacheDir)
          : mode === '7b-write'
            ? { writeS: write7b() }
            : mode === '7b-build'
              ? await phase7bBuild(cacheDir)
              : await phase7bRun(cacheDir);
    fs.writeSync(1, `${JSON.stringify(result)}\n`);
    return;
  }
  const cacheDir = fs.mkdtempSync(path.join(os.tmpdir(), 'arm-bench-quant-cache-'));
  const report: Record<string, unknown> = {
    machine: {
      cpu: os.cpus()[0]?.model,
      cores: os.availableParallelism(),
      threads,
      memGiB: r(os.totalmem() / 2 ** 30, 1),
      node: process.version,
    },
    date: new Date().toISOString(),
  };
  try {
    if (!flag('--skip-small')) {
      log('phase small (stories260K, icl-tiny)…');
      report.small = await child('small', cacheDir);
      log(JSON.stringify(report.small));
    }
    if (!flag('--skip-qwen')) {
      log('phase qwen (Qwen2.5-0.5B shape)…');
      report.qwen = await child('qwen', cacheDir);
      log(JSON.stringify(report.qwen));
    }
    if (!flag('--skip-7b')) {
      const free = fs.statfsSync(os.tmpdir());
      const freeGiB = (free.bavail * free.bsize) / 2 ** 30;
      const have = fs.existsSync(path.join(QWEN_7B_DIR, '.complete'));
      if (!have && freeGiB < 15.3 + 6 + 5) {
        report.sevenB = {
          skipped:
            `only ${freeGiB.toFixed(0)} GiB free in ${os.tmpdir()}; the bf16 checkpoint (15.3 GB) and its ` +
            `int4 cache entry (~5 GB) need ~26`,
        };
      } else {
        if (!have) {
          log(`writing the 7B-shaped bf16 checkpoint to ${QWEN_7B_DIR} (~15 GB)…`);
          report.sevenBWrite = await child('7b-write', cacheDir);
        }
        log('building the 7B int4 cache entry…');
        const build = await child('7b-build', cacheDir);
        log(JSON.stringify(build));
        log('loading it from the cache and running…');
        let run = await child('7b-run', cacheDir);
        if (run.rebuilt) {
          log('the graph had changed since the build; running again from the fresh entry…');
          run = await child('7b-run', cacheDir);
        }
        if (run.rebuilt) throw new Error('7b run: the int4 cache entry was rebuilt twice (is src/model being edited?)');
        report.sevenB = {
          build,
          run,
          rssGiB: r((run.maxRssBytes as number) / 2 ** 30, 2),
          rssOverQuantBytes: r((run.maxRssBytes as number) / (run.weightBytes as number), 2),
        };
        if (!flag('--keep-7b')) fs.rmSync(QWEN_7B_DIR, { recursive: true, force: true });
      }
    }
  } finally {
    fs.rmSync(cacheDir, { recursive: true, force: true });
  }
  console.log(JSON.stringify(report, null, 1));
  const small = report.small as Awaited<ReturnType<typeof phaseSmall>> | undefined;
  const qwen = report.qwen as Awaited<ReturnType<typeof phaseQwen>> | undefined;
  const seven = report.sevenB as
    | { rssGiB?: number; rssOverQuantBytes?: number; run?: { tokensPerS256: number; reinforceStepS: number } }
    | undefined;
  // "int8": the kernel --dtype int8 gives a model of the Qwen2.5-0.5B shape (the small models' rows are at that kernel
  // too).
  const int8 = `int8.${defaultInt8Kernel(specFromConfig(QWEN_05B))}` as const;
  const headline = {
    int8Kernel: int8,
    int8SpeedupVsFp32: qwen?.speed.forwardSpeedupVsFp32[int8],
    int4SpeedupVsFp32: qwen?.speed.forwardSpeedupVsFp32.int4,
    int8StepSpeedupVsFp32: qwen?.speed.stepSpeedupVsFp32[int8],
    int8Top1Agreement: (small?.stories[int8] as { top1Agreement: number } | undefined)?.top1Agreement,
    int4Top1Agreement: (small?.stories.int4 as { top1Agreement: number } | undefined)?.top1Agreement,
    int4Top1AgreementBySeed: (small?.stories['int4.gptqSeeds'] as { top1Agreement: number[] } | undefined)
      ?.top1Agreement,
    int4RtnTop1Agreement: (small?.stories['int4.rtn'] as { top1Agreement: number } | undefined)?.top1Agreement,
    int8ScoreSpearman: (small?.icl.scoreSpearman[int8] as { median: number } | undefined)?.median,
    int4ScoreSpearman: (small?.icl.scoreSpearman.int4 as { median: number } | undefined)?.median,
    iclArmAccuracy: small?.icl.armAccuracy,
    rss7bGiB: seven?.rssGiB ?? null,
    rss7bOverQuantBytes: seven?.rssOverQuantBytes ?? null,
    tokensPerS7b256: seven?.run?.tokensPerS256 ?? null,
    reinforceStepS7b: seven?.run?.reinforceStepS ?? null,
  };
  log(
    `goals: ${Object.entries(GOALS)
      .map(
        ([k, g]) => `${k} ${(headline as Record<string, unknown>)[k]} (goal ${k.startsWith('rss') ? '≤' : '≥'} ${g})`,
      )
      .join('; ')}`,
  );
  console.log(JSON.stringify(headline));
}

await main();
