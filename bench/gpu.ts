/**
 * GPU benchmark: the engine figures on `--device webgpu|cuda` beside the CPU, on a random checkpoint of a shape.
 * `npm run bench:gpu -- [--device webgpu] [--shape tiny|0.5b|7b] [--dtypes fp32,fp16,int4] [--kv-cache host]
 * [--no-cpu] [--accuracy]` (fp16 runs on the GPU device only).
 *
 * First it reports which devices run here (session.ts deviceProblem: a one-node graph on each provider); a device
 * that does not run ends the bench with its reason in the JSON line. Then, per device (the asked one, then the CPU
 * unless --no-cpu) and weight format:
 *   loadS              Decoder.load from the bench's cache (the first dtype of a shape builds the entry: buildS).
 *   prefill256TokS     tokens/s of a batch-1 256-token forward (median of ROUNDS after a warm-up).
 *   prefill1650TokS    the same for 1650 tokens (a mean-extraction pass), capped at the shape's positions.
 *   stepMs             one REINFORCE step: stepShared with 32 patch rows after a 255-token prefill.
 *   fitEstimateS       a default fit from these: 100 mean passes of 1650 tokens + 600 steps (prefills aside).
 *   kvUploadBytesPerStep  past keys/values fed host→device per step, counted by the decoder from the fed tensors
 *                      (Decoder.stats.kvUploadBytes): 0 with WebGPU's device-resident cache (kvCache 'device', the
 *                      default); the whole prefix with `--kv-cache host` and on cuda; 0 on the CPU (read in place).
 *   hostPeakRssMiB     the process's peak RSS so far (all devices run in this one process).
 * Device memory is not reported: onnxruntime-node exposes no allocator statistics.
 * `--shape tiny` (a 2-layer random Llama) proves the bench runs, e.g. on lavapipe, whose speed means nothing.
 *
 * `--accuracy` measures instead what each GPU weight format costs in accuracy, on the real small models (as
 * bench:quant does on the CPU; bench/accuracy.ts): fp32, fp16, int8 (block-wise, the GPU's int8) and int4 at their
 * defaults on the device, each against fp32 on the device, and fp32 on the device against fp32 on the CPU (the
 * reference row):
 *   top1Agreement      stories260K's next-token top-1 agreement over ~300 teacher-forced positions (with meanKL
 *                      and the head taps' maxTapErrorRel);
 *   scoreSpearman      icl-tiny: per criterion, one criterion fitted at fp32 on the CPU, its P(Yes) scores of the
 *                      test pairs on each format; the median (and minimum) over the 8 criteria.
 * Accuracy is meaningful on lavapipe (its speed is not), within what docs/gpu.md says of its fp16 arithmetic.
 * The last stdout line is one JSON object with every figure.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Decoder, disposeKv, type KvPlace } from '../src/model/decoder.js';
import { DEVICES, deviceProblem, parseDevice, type Device } from '../src/model/session.js';
import { describeWeightFormat, WEIGHT_DTYPES, type WeightDType } from '../src/model/quant/weight-format.js';
import { writeRandomCheckpoint, type HfConfig } from '../tools/random-checkpoint.js';
import { CONFIG as QWEN_05B, median } from './qwen-shape.js';
import { flag, log, option, seconds } from './args.js';
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
} from './accuracy.js';
import { fitActivationRM } from '../src/arm/fit.js';

const ROUNDS = 3;
const PATCH_ROWS = 32;
const MEAN_PASSES = 100;
const REINFORCE_STEPS = 600;

const QWEN_7B: HfConfig = {
  ...QWEN_05B,
  hidden_size: 3584,
  intermediate_size: 18944,
  num_hidden_layers: 28,
  num_attention_heads: 28,
  num_key_value_heads: 4,
  head_dim: 128,
  vocab_size: 152064,
  tie_word_embeddings: false,
};
const TINY: HfConfig = {
  model_type: 'llama',
  hidden_size: 64,
  intermediate_size: 128,
  num_hidden_layers: 2,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  vocab_size: 256,
  max_position_embeddings: 2048,
  rms_norm_eps: 1e-5,
  rope_theta: 10000,
  tie_word_embeddings: true,
};
const SHAPES: Record<string, HfConfig> = { tiny: TINY, '0.5b': QWEN_05B, '7b': QWEN_7B };

interface Figures {
  device: Device;
  dtype: WeightDType;
  kvCache: KvPlace;
  loadS: number;
  prefill256TokS: number;
  prefill1650TokS: number;
  stepMs: number;
  fitEstimateS: number;
  kvUploadBytesPerStep: number;
  hostPeakRssMiB: number;
}

/** The shape's random checkpoint in os.tmpdir(), written once (fp32, HF's initializer std). */
function checkpoint(shape: string): string {
  const dir = path.join(os.tmpdir(), `arm-bench-gpu-${shape}`);
  if (fs.existsSync(path.join(dir, '.complete'))) return dir;
  log(`writing the random ${shape} checkpoint to ${dir} (once)`);
  writeRandomCheckpoint(dir, SHAPES[shape]!, { seed: 0, dtype: 'F32', std: 0.02 });
  fs.writeFileSync(path.join(dir, '.complete'), '');
  return dir;
}

async function timed(run: () => Promise<unknown>): Promise<number> {
  await run(); // warm-up (a GPU compiles its shaders on the first run of a shape)
  const times: number[] = [];
  for (let r = 0; r < ROUNDS; r++) {
    const t0 = performance.now();
    await run();
    times.push(seconds(t0));
  }
  return median(times);
}

/** What one measured load is: its device, weight format and (WebGPU) KV cache place. */
interface Run {
  device: Device;
  dtype: WeightDType;
  kvCache?: KvPlace;
}

async function measure(dir: string, run: Run, cacheDir: string): Promise<Figures> {
  const { device, dtype } = run;
  const t0 = performance.now();
  const decoder = await Decoder.load(dir, { cacheDir, device, dtype, kvCache: run.kvCache, quiet: true });
  const loadS = seconds(t0);
  try {
    const { numLayers: L, numHeads: H, headDim: d, vocabSize: V, maxPositions } = decoder.spec;
    const ids = (n: number) => Array.from({ length: n }, (_, i) => (i * 7919) % V);
    const short = Math.min(256, maxPositions - 1);
    const long = Math.min(1650, maxPositions - 1);
    const prefill256 = await timed(() => decoder.forward([ids(short)]));
    const prefill1650 = await timed(() => decoder.forward([ids(long)]));
    const kv = await decoder.prefill(ids(short - 1));
    const mask = Float32Array.from({ length: PATCH_ROWS * L * H }, (_, i) => (i % 3 === 0 ? 1 : 0));
    const values = new Float32Array(L * H * d).fill(0.01);
    const uploaded = decoder.stats.kvUploadBytes;
    const step = await timed(() => decoder.stepShared(kv, 1, { mask, values }));
    const kvUploadBytesPerStep = (decoder.stats.kvUploadBytes - uploaded) / (ROUNDS + 1); // + timed's warm-up
    disposeKv(kv);
    return {
      device,
      dtype,
      kvCache: decoder.info.kvCache,
      loadS,
      prefill256TokS: short / prefill256,
      prefill1650TokS: long / prefill1650,
      stepMs: step * 1000,
      fitEstimateS: MEAN_PASSES * prefill1650 + REINFORCE_STEPS * step,
      kvUploadBytesPerStep,
      hostPeakRssMiB: process.resourceUsage().maxRSS / 1024,
    };
  } finally {
    await decoder.dispose();
  }
}

/** The GPU weight formats --accuracy compares (int8 is block-wise on a GPU, int4 at its defaults). */
const ACCURACY_DTYPES: readonly WeightDType[] = ['fp32', 'fp16', 'int8', 'int4'];

/** One decoder per format on `device`, and the CPU's fp32 reference, of `model`. */
async function loadFormats(model: string, device: Device, cacheDir: string) {
  const cpu = await Decoder.load(model, { cacheDir, dtype: 'fp32', quiet: true });
  const formats: Record<string, Decoder> = {};
  for (const dtype of ACCURACY_DTYPES)
    formats[dtype] = await Decoder.load(model, { cacheDir, device, dtype, quiet: true });
  const disposeAll = async () => {
    for (const d of [cpu, ...Object.values(formats)]) await d.dispose();
  };
  return { cpu, formats, disposeAll };
}

/** stories260K: next-token agreement of each format on `device` with fp32 there, and of fp32 there with the CPU's. */
async function storiesAgreement(device: Device, cacheDir: string) {
  const { cpu, formats, disposeAll } = await loadFormats(STORIES, device, cacheDir);
  try {
    const seqs = STORY_TEXTS.map((t) => cpu.tokenizer.encode(t));
    const reference = await decodePositions(cpu, seqs, 400);
    const fp32 = await decodePositions(formats.fp32!, seqs, 400);
    const rows: Record<string, unknown> = { 'fp32 vs cpu fp32': agreement(reference, fp32) };
    for (const dtype of ACCURACY_DTYPES.slice(1)) {
      const d = formats[dtype]!;
      rows[dtype] = {
        ...agreement(fp32, await decodePositions(d, seqs, 400)),
        weightBytes: d.weightBytes,
        format: describeWeightFormat(d.info.weightFormat),
      };
      log(`stories260K ${device} ${dtype}: ${JSON.stringify(rows[dtype])}`);
    }
    return rows;
  } finally {
    await disposeAll();
  }
}

/**
 * icl-tiny: per criterion, one criterion fitted at fp32 on the CPU, scored on every format on `device`; the Spearman
 * correlation of each format's scores with fp32's on the device, and of those with the CPU's.
 */
async function iclSpearman(device: Device, cacheDir: string) {
  const { cpu, formats, disposeAll } = await loadFormats(ICL_TINY, device, cacheDir);
  const perCriterion: Record<string, Record<string, number>> = {};
  for (const row of ['fp32 vs cpu fp32', ...ACCURACY_DTYPES.slice(1)]) perCriterion[row] = {};
  try {
    for (const { subset, train, test } of iclCriteria().criteria) {
      const file = path.join(cacheDir, `icl-${subset}-cpu-fp32.arm.safetensors`);
      (await fitActivationRM(cpu, train, ICL_FIT_OPTIONS)).save(file);
      const fp32 = await criterionRewards(formats.fp32!, file, test);
      perCriterion['fp32 vs cpu fp32']![subset] = r(spearman(await criterionRewards(cpu, file, test), fp32), 4);
      for (const dtype of ACCURACY_DTYPES.slice(1))
        perCriterion[dtype]![subset] = r(spearman(fp32, await criterionRewards(formats[dtype]!, file, test)), 4);
      const row = Object.fromEntries(Object.entries(perCriterion).map(([k, v]) => [k, v[subset]]));
      log(`icl-tiny ${subset}: ${JSON.stringify(row)}`);
    }
    return Object.fromEntries(Object.entries(perCriterion).map(([row, v]) => [row, spearmanSummary(v)]));
  } finally {
    await disposeAll();
  }
}

/** The installed Mesa Vulkan driver's package version (lavapipe's), where dpkg's status file lists it. */
function mesaVersion(): string | undefined {
  try {
    const status = fs.readFileSync('/var/lib/dpkg/status', 'utf8');
    const stanza = status.split('\n\n').find((s) => /^Package: mesa-vulkan-drivers$/m.test(s));
    return stanza?.match(/^Version: (.+)$/m)?.[1];
  } catch {
    return undefined;
  }
}

/** --accuracy: the JSON line of storiesAgreement and iclSpearman on `device`. */
async function accuracyMode(device: Device, devices: Record<string, string | null>): Promise<void> {
  const cacheDir = fs.mkdtempSync(path.join(os.tmpdir(), 'arm-bench-gpu-cache-'));
  try {
    const t0 = performance.now();
    const stories = await storiesAgreement(device, cacheDir);
    const icl = await iclSpearman(device, cacheDir);
    const mesa = devices[device] === null && device === 'webgpu' ? mesaVersion() : undefined;
    console.log(
      JSON.stringify({
        bench: 'gpu',
        mode: 'accuracy',
        device,
        devices,
        mesa,
        stories,
        icl,
        seconds: r(seconds(t0), 1),
      }),
    );
  } finally {
    fs.rmSync(cacheDir, { recursive: true, force: true });
  }
}

async function main(): Promise<void> {
  const device = parseDevice(option('--device') ?? 'webgpu');
  const shape = option('--shape') ?? '0.5b';
  if (!SHAPES[shape]) throw new Error(`--shape must be one of ${Object.keys(SHAPES).join(', ')}`);
  const dtypes = (option('--dtypes') ?? (shape === 'tiny' ? 'fp32' : 'fp32,int4')).split(',') as WeightDType[];
  const kvCache = option('--kv-cache') as KvPlace | undefined;
  if (kvCache !== undefined && kvCache !== 'device' && kvCache !== 'host')
    throw new Error('--kv-cache must be device or host');
  for (const t of dtypes) if (!WEIGHT_DTYPES.includes(t)) throw new Error(`--dtypes: unknown ${t}`);
  const devices: Record<string, string | null> = {};
  for (const d of DEVICES) devices[d] = await deviceProblem(d);
  for (const [d, p] of Object.entries(devices)) log(`${d}: ${p ?? 'runs here'}`);
  if (devices[device] !== null) {
    console.log(JSON.stringify({ bench: 'gpu', shape, device, devices, error: devices[device] }));
    process.exitCode = 1;
    return;
  }
  if (flag('--accuracy')) {
    if (device === 'cpu') throw new Error('--accuracy compares the formats of a GPU device (fp16 runs on GPUs only)');
    return accuracyMode(device, devices);
  }
  const dir = checkpoint(shape);
  const cacheDir = fs.mkdtempSync(path.join(os.tmpdir(), 'arm-bench-gpu-cache-'));
  const runs: Figures[] = [];
  try {
    for (const d of flag('--no-cpu') || device === 'cpu' ? [device] : [device, 'cpu' as const])
      for (const dtype of dtypes) {
        if (d === 'cpu' && dtype === 'fp16') {
          log('cpu fp16: skipped (--dtype fp16 runs on GPU devices only; docs/gpu.md)');
          continue;
        }
        const f = await measure(dir, { device: d, dtype, kvCache: d === 'webgpu' ? kvCache : undefined }, cacheDir);
        log(
          `${d} ${dtype} (KV cache: ${f.kvCache}): load ${f.loadS.toFixed(1)} s, ` +
            `prefill ${f.prefill256TokS.toFixed(0)} tok/s (256), ` +
            `${f.prefill1650TokS.toFixed(0)} tok/s (1650), step ${f.stepMs.toFixed(1)} ms, ` +
            `fit ≈ ${f.fitEstimateS.toFixed(0)} s, KV upload ${(f.kvUploadBytesPerStep / 2 ** 20).toFixed(1)} MiB/step`,
        );
        runs.push(f);
      }
  } finally {
    fs.rmSync(cacheDir, { recursive: true, force: true });
  }
  console.log(JSON.stringify({ bench: 'gpu', shape, device, devices, runs }));
}

await main();
