/**
 * Engine benchmark on a random checkpoint with the Qwen2.5-0.5B shape (fp32). `npm run bench:engine`.
 *
 * Figures (all from one run; the last stdout line is one JSON object with them):
 *   coldBuildS        first Decoder.load into a fresh cache dir (safetensors → model.onnx + weights.bin, then
 *                     the onnxruntime session), in its own process.
 *   cachedLoadS       a second Decoder.load on the same cache dir, in a new process (weights.bin is in the
 *                     page cache by then: this is a warm-cache load).
 *   forwardEfficiency model FLOP/s of a batch-1, 256-token Decoder.forward divided by the FLOP/s of a plain
 *                     onnxruntime MatMul [256,896]·[896,4864] (weight as an initializer, same thread count and
 *                     session options), measured in the same process in interleaved rounds; median of the
 *                     per-round ratios.
 *   sharedStepSpeedup 32 × (one batch-1 256-token forward) / (one Decoder.stepShared with 32 patch rows after a
 *                     255-token prefill), interleaved rounds, median of the per-round ratios. The 32 forwards are
 *                     extrapolated from one, not run.
 *   rssOverWeights    peak RSS (maxRSS) of the process that loads from cache and runs the engine, read before
 *                     the reference MatMul session exists, divided by Decoder.weightBytes (fp32 weights.bin).
 *   long1650OverShort256  tokens/s of a batch-1 1650-token Decoder.forward (a mean-extraction pass: 4 shots + query
 *                     at ~330 tokens each) divided by tokens/s of a batch-1 256-token forward, in interleaved rounds
 *                     (one of each per round), median of the per-round ratios; run last, after the RSS reading.
 *
 * Processes: the parent only orchestrates. The checkpoint writer, the cold build and the cached run each
 * run in a child process (this script with a mode argument), so the RSS figure is that process's alone.
 * Ratios pair measurements taken seconds apart because small shared VMs drift a lot (we saw the same
 * MatMul take 10 ms and 32 ms minutes apart); the table prints each ratio's range over the rounds.
 *
 * Options: --threads N (default: all cores, as Decoder.load), --keep-cache (keep the fresh cache dir this run
 * builds; by default the bench removes that one folder, which it created itself, at the end).
 * The random checkpoint (~2 GB) stays in os.tmpdir() keyed by its config and is reused by later runs.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import cliProgress from 'cli-progress';
import { specFromConfig } from '../src/model/families/config.js';
import type { ModelSpec } from '../src/model/families/types.js';
import { checkpointLayout, Rng, writeRandomCheckpoint } from '../tools/random-checkpoint.js';
import { CKPT_OPTS, CONFIG, median, qwenShapeDir } from './qwen-shape.js';
import { seconds } from './args.js';

const SCRIPT = fileURLToPath(import.meta.url);

const SEQ = 256; // forward length
const PATCH_ROWS = 32; // stepShared batch
const WARMUP = { forward: 2, step: 2 };
const ROUNDS = 7; // each: 1 forward, STEPS_PER_ROUND stepShared, 1 decode step
const STEPS_PER_ROUND = 3;
const EFF_ROUNDS = 9; // each: 1 forward, MATMULS_PER_ROUND reference MatMuls
const MATMULS_PER_ROUND = 7;
const MATMUL_ROUND_WARMUP = 3;
const MATMUL_WARMUP = 5;
const REF_MATMUL: [number, number, number] = [SEQ, 896, 4864]; // [M, K, N]
const LONG_SEQ = 1650; // long1650OverShort256: a mean-extraction pass (4 shots + query, ~330 tokens each)
const LONG_ROUNDS = 5; // each: 1 forward of SEQ tokens, 1 of LONG_SEQ (after 1 warm-up of each)

const GOALS = { forwardEfficiency: 0.75, sharedStepSpeedup: 50, rssOverWeights: 1.3, long1650OverShort256: 0.85 };

// ---------------------------------------------------------------- shared helpers

const maxRssKiB = () => process.resourceUsage().maxRSS;

/** Child → parent protocol on stdout: `progress <done> <total> <what>` lines, then one `result <json>` line. */
function emitProgress(done: number, total: number, what: string): void {
  fs.writeSync(1, `progress ${done} ${total} ${what}\n`);
}
function emitResult(result: object): void {
  fs.writeSync(1, `result ${JSON.stringify({ ...result, cpuS: cpuSeconds() })}\n`);
}
const cpuSeconds = () => {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
};
/** Busy CPU seconds of the whole machine so far (all processes), from /proc/stat; null off Linux. */
function machineBusyS(): number | null {
  try {
    const f = fs.readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
    return (f[0]! + f[1]! + f[2]! + f[5]! + f[6]!) / 100; // user nice system irq softirq, in USER_HZ = 100
  } catch {
    return null;
  }
}

/**
 * Model FLOPs of one Decoder run: rows × S new tokens after a shared past of P tokens.
 * linear: 2·(params of every per-layer matrix)·tokens; attention: q·kᵀ and p·v over the S×(P+S) block the
 * graph computes (masked entries included; causal-only would halve it); lm_head: 2·D·V per row, last
 * position only. Norms, RoPE, softmax, biases and the embedding gather are not counted.
 */
function modelFlops(spec: ModelSpec, rows: number, S: number, P = 0) {
  const {
    hiddenSize: D,
    intermediateSize: F,
    numHeads: H,
    numKvHeads: KV,
    headDim: d,
    numLayers: L,
    vocabSize: V,
  } = spec;
  const paramsPerLayer = D * (H + 2 * KV) * d + H * d * D + D * 2 * F + F * D;
  const linear = 2 * paramsPerLayer * L * rows * S;
  const attention = L * rows * H * 2 * (2 * S * (P + S) * d);
  const lmHead = 2 * D * V * rows;
  return { linear, attention, lmHead, total: linear + attention + lmHead, paramsPerLayer };
}

// ---------------------------------------------------------------- child modes

interface ChildArgs {
  ckptDir: string;
  cacheDir: string;
  threads: number;
}

async function childWriteCheckpoint(a: { ckptDir: string }): Promise<void> {
  const total = checkpointLayout(CONFIG).reduce((n, [, shape]) => n + shape.reduce((x, y) => x * y, 1), 0);
  // Progress without touching tools/: every value writeRandomCheckpoint draws is one Rng.normal() call.
  let drawn = 0;
  const normal = Rng.prototype.normal;
  Rng.prototype.normal = function (this: Rng) {
    if ((++drawn & 0x3fffff) === 0) emitProgress(drawn, total, 'values');
    return normal.call(this);
  };
  const t0 = performance.now();
  writeRandomCheckpoint(a.ckptDir, CONFIG, CKPT_OPTS);
  const writeS = seconds(t0);
  fs.writeFileSync(
    path.join(a.ckptDir, '.complete'),
    JSON.stringify({ config: CONFIG, ...CKPT_OPTS, writeS }, null, 2),
  );
  emitProgress(total, total, 'values');
  emitResult({ writeS });
}

async function childColdBuild(a: ChildArgs): Promise<void> {
  const { Decoder } = await import('../src/model/decoder.js');
  const rssBeforeKiB = maxRssKiB();
  const t0 = performance.now();
  const dec = await Decoder.load(a.ckptDir, {
    cacheDir: a.cacheDir,
    threads: a.threads,
    quiet: true,
    dtype: 'fp32', // the engine's figures are fp32 (bench:quant has the others)
    onBuildProgress: (done, total, what) => emitProgress(done, total, what),
  });
  const loadS = seconds(t0);
  if (!dec.info.built) throw new Error(`cold build: ${a.cacheDir} already held the model; the cache dir was not fresh`);
  emitResult({
    loadS,
    buildS: dec.info.buildSeconds,
    sessionS: dec.info.loadSeconds,
    rssBeforeKiB,
    maxRssKiB: maxRssKiB(),
    weightBytes: dec.weightBytes,
  });
  await dec.dispose();
}

async function childCachedRun(a: ChildArgs): Promise<void> {
  const { Decoder } = await import('../src/model/decoder.js');
  const ort = await import('onnxruntime-node');
  const rssBeforeKiB = maxRssKiB();
  const t0 = performance.now();
  const dec = await Decoder.load(a.ckptDir, { cacheDir: a.cacheDir, threads: a.threads, quiet: true, dtype: 'fp32' });
  const loadS = seconds(t0);
  if (dec.info.built)
    throw new Error(
      'the cached load built a new cache entry: the cache key changed after the cold build (was src/model edited ' +
        'meanwhile?)',
    );
  const rssAfterLoadKiB = maxRssKiB();
  const { numLayers: L, numHeads: H, headDim: d, vocabSize: V } = dec.spec;

  const rng = new Rng(1234);
  const ids = Array.from({ length: SEQ }, () => Math.floor(rng.uniform() * V));
  const mask = Float32Array.from({ length: PATCH_ROWS * L * H }, () => (rng.uniform() < 0.5 ? 1 : 0));
  const values = Float32Array.from({ length: L * H * d }, () => rng.normal());
  const totalRuns =
    WARMUP.forward +
    3 +
    WARMUP.step +
    1 +
    ROUNDS * (1 + STEPS_PER_ROUND + 1) +
    MATMUL_WARMUP +
    EFF_ROUNDS * (1 + MATMUL_ROUND_WARMUP + MATMULS_PER_ROUND) +
    2 * (1 + LONG_ROUNDS);
  let done = 0;
  const timed = async <T>(what: string, fn: () => Promise<T>): Promise<[T, number]> => {
    const t = performance.now();
    const r = await fn();
    const ms = performance.now() - t;
    emitProgress(++done, totalRuns, what);
    return [r, ms];
  };
  const forward = () => timed(`forward 1×${SEQ}`, () => dec.forward([ids]));
  let finite = true;

  // Warm-up, then rounds that interleave the things compared with each other, so that a slow patch of
  // the (shared, noisy) machine hits both sides of a ratio alike.
  for (let i = 0; i < WARMUP.forward; i++) finite &&= (await forward())[0].logits.every(Number.isFinite);
  const prefillMs: number[] = [];
  let kv = await dec.prefill(ids.slice(0, SEQ - 1));
  for (let i = 0; i < 3; i++) {
    const [k, ms] = await timed(`prefill ${SEQ - 1}`, () => dec.prefill(ids.slice(0, SEQ - 1)));
    kv = k;
    if (i > 0) prefillMs.push(ms);
  }
  const step = () => timed(`stepShared ${PATCH_ROWS} rows`, () => dec.stepShared(kv, ids[SEQ - 1]!, { mask, values }));
  const decode = () => timed('extend 1 token', () => dec.extend(kv, [ids[SEQ - 1]!]));
  for (let i = 0; i < WARMUP.step; i++) {
    const [out] = await step();
    finite &&= out.logits.every(Number.isFinite) && out.batchSize === PATCH_ROWS;
  }
  await decode();
  const forwardMs: number[] = [],
    stepMs: number[] = [],
    decodeMs: number[] = [],
    speedups: number[] = [];
  for (let r = 0; r < ROUNDS; r++) {
    const f = (await forward())[1];
    const s: number[] = [];
    for (let i = 0; i < STEPS_PER_ROUND; i++) s.push((await step())[1]);
    decodeMs.push((await decode())[1]);
    forwardMs.push(f);
    stepMs.push(...s);
    speedups.push((PATCH_ROWS * f) / median(s));
  }
  const engineMaxRssKiB = maxRssKiB(); // read before the reference session below exists

  // Reference: a plain one-node MatMul session, same thread count and session options as Decoder.load,
  // interleaved with forwards (a pause between sessions lets the other's spinning thread pool go idle).
  const [M, K, N] = REF_MATMUL;
  const session = await ort.InferenceSession.create(await matmulModel(M, K, N, rng), {
    intraOpNumThreads: a.threads,
    interOpNumThreads: 1,
    graphOptimizationLevel: 'all',
    executionMode: 'sequential',
  });
  const x = new ort.Tensor(
    'float32',
    Float32Array.from({ length: M * K }, () => rng.normal()),
    [M, K],
  );
  const matmul = () =>
    timed(`MatMul [${M},${K}]·[${K},${N}]`, async () => {
      const out = await session.run({ x });
      out.y!.dispose();
    });
  const pause = () => new Promise((resolve) => setTimeout(resolve, 50));
  for (let i = 0; i < MATMUL_WARMUP; i++) await matmul();
  const effForwardMs: number[] = [],
    matmulMs: number[] = [],
    efficiencies: number[] = [];
  const fwdFlops = modelFlops(dec.spec, 1, SEQ).total;
  for (let r = 0; r < EFF_ROUNDS; r++) {
    await pause();
    const f = (await forward())[1];
    await pause();
    const m: number[] = [];
    // The first MatMuls after a forward run slow (its packed weight was evicted from cache): not counted.
    for (let i = 0; i < MATMUL_ROUND_WARMUP + MATMULS_PER_ROUND; i++) {
      const ms = (await matmul())[1];
      if (i >= MATMUL_ROUND_WARMUP) m.push(ms);
    }
    effForwardMs.push(f);
    matmulMs.push(...m);
    efficiencies.push(fwdFlops / f / ((2 * M * K * N) / median(m)));
  }
  await session.release();

  // Long vs short forwards (tokens/s), interleaved; last, so the 1650-token activations do not enter the RSS figure.
  const longIds = Array.from({ length: LONG_SEQ }, () => Math.floor(rng.uniform() * V));
  const longForward = () => timed(`forward 1×${LONG_SEQ}`, () => dec.forward([longIds]));
  await forward();
  finite &&= (await longForward())[0].logits.every(Number.isFinite);
  const shortMs: number[] = [],
    longMs: number[] = [],
    longRatios: number[] = [];
  for (let r = 0; r < LONG_ROUNDS; r++) {
    const f = (await forward())[1];
    const lf = (await longForward())[1];
    shortMs.push(f);
    longMs.push(lf);
    longRatios.push(LONG_SEQ / lf / (SEQ / f));
  }

  emitResult({
    loadS,
    sessionS: dec.info.loadSeconds,
    weightBytes: dec.weightBytes,
    finite,
    forwardMs: median(forwardMs),
    prefillMs: median(prefillMs),
    stepSharedMs: median(stepMs),
    decodeStepMs: median(decodeMs),
    sharedStepSpeedup: median(speedups),
    speedupRange: [Math.min(...speedups), Math.max(...speedups)],
    effForwardMs: median(effForwardMs),
    matmulMs: median(matmulMs),
    effForwardMinMs: Math.min(...effForwardMs),
    matmulMinMs: Math.min(...matmulMs),
    forwardMinMs: Math.min(...forwardMs),
    stepSharedMinMs: Math.min(...stepMs),
    forwardEfficiency: median(efficiencies),
    efficiencyRange: [Math.min(...efficiencies), Math.max(...efficiencies)],
    rssBeforeKiB,
    rssAfterLoadKiB,
    maxRssKiB: engineMaxRssKiB,
    long1650OverShort256: median(longRatios),
    longRatioRange: [Math.min(...longRatios), Math.max(...longRatios)],
    longForwardMs: median(longMs),
    longShortForwardMs: median(shortMs),
    longMaxRssKiB: maxRssKiB(),
  } satisfies RunResult);
  await dec.dispose();
}

interface RunResult {
  loadS: number;
  sessionS: number;
  weightBytes: number;
  finite: boolean;
  forwardMs: number;
  prefillMs: number;
  stepSharedMs: number;
  decodeStepMs: number;
  sharedStepSpeedup: number;
  speedupRange: number[];
  effForwardMs: number;
  matmulMs: number;
  forwardEfficiency: number;
  efficiencyRange: number[];
  effForwardMinMs: number;
  matmulMinMs: number;
  forwardMinMs: number;
  stepSharedMinMs: number;
  rssBeforeKiB: number;
  rssAfterLoadKiB: number;
  maxRssKiB: number;
  long1650OverShort256: number;
  longRatioRange: number[];
  longForwardMs: number;
  longShortForwardMs: number;
  longMaxRssKiB: number;
}

/** A one-node ONNX model y = x·W with W [K, N] as an in-memory initializer. */
async function matmulModel(M: number, K: number, N: number, rng: Rng): Promise<Uint8Array> {
  const { encodeModel, OnnxDType } = await import('../src/model/graph/proto.js');
  const w = new Float32Array(K * N);
  for (let i = 0; i < w.length; i++) w[i] = 0.02 * rng.normal();
  const tensorType = (dims: number[]) => ({
    tensor_type: { elem_type: OnnxDType.FLOAT, shape: { dim: dims.map((v) => ({ dim_value: v })) } },
  });
  return encodeModel({
    ir_version: 8,
    producer_name: 'arm-bench',
    opset_import: [{ domain: '', version: 18 }],
    graph: {
      name: 'matmul',
      node: [{ op_type: 'MatMul', name: 'matmul', input: ['x', 'w'], output: ['y'] }],
      initializer: [{ name: 'w', dims: [K, N], data_type: OnnxDType.FLOAT, raw_data: new Uint8Array(w.buffer) }],
      input: [{ name: 'x', type: tensorType([M, K]) }],
      output: [{ name: 'y', type: tensorType([M, N]) }],
    },
  });
}

// ---------------------------------------------------------------- parent

let childCpuS = 0; // CPU seconds the children reported, to tell the bench's own load from other processes'

interface Progress {
  (done: number, total: number, what: string): void;
}

function runChild<T>(mode: string, args: object, label: string, unit: string): Promise<T> {
  const bar = new cliProgress.SingleBar(
    {
      format: `${label.padEnd(22)} [{bar}] {percentage}% | {value}/{total} ${unit} | {duration_formatted} | {what}`,
      noTTYOutput: true,
      notTTYSchedule: 10_000,
      hideCursor: true,
      barsize: 30,
    },
    cliProgress.Presets.shades_classic,
  );
  bar.start(1, 0, { what: 'starting' });
  const onProgress: Progress = (done, total, what) => {
    bar.setTotal(total);
    bar.update(done, { what });
  };
  return new Promise<T>((resolve, reject) => {
    const child = spawn(process.execPath, [...process.execArgv, SCRIPT, mode, JSON.stringify(args)], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    let result: T | undefined;
    readline.createInterface({ input: child.stdout! }).on('line', (line) => {
      if (line.startsWith('progress ')) {
        const [, done, total, ...what] = line.split(' ');
        onProgress(Number(done), Number(total), what.join(' '));
      } else if (line.startsWith('result ')) {
        result = JSON.parse(line.slice('result '.length)) as T;
        childCpuS += (result as { cpuS?: number }).cpuS ?? 0;
      } else {
        process.stderr.write(`[${mode}] ${line}\n`);
      }
    });
    child.on('error', (e) => {
      bar.stop();
      reject(e);
    });
    child.on('close', (code, signal) => {
      bar.update({ what: code === 0 ? 'done' : 'failed' });
      bar.stop();
      if (code === 0 && result !== undefined) resolve(result);
      else
        reject(
          new Error(
            `bench child "${mode}" exited with ` +
              `${signal ?? `code ${code}`}${result === undefined ? ' without a result' : ''}`,
          ),
        );
    });
  });
}

function machine() {
  const cpuModel = (() => {
    try {
      return (
        fs
          .readFileSync('/proc/cpuinfo', 'utf8')
          .match(/^model name\s*:\s*(.+)$/m)?.[1]
          ?.trim() ??
        os.cpus()[0]?.model ??
        '?'
      );
    } catch {
      return os.cpus()[0]?.model ?? '?';
    }
  })();
  return {
    nproc: os.availableParallelism(),
    cpuModel,
    totalMemGiB: +(os.totalmem() / 2 ** 30).toFixed(1),
    node: process.version,
    platform: `${os.platform()} ${os.arch()}`,
    date: new Date().toISOString(),
  };
}

async function main(argv: string[]): Promise<void> {
  const threadsArg = argv.indexOf('--threads');
  const threads = threadsArg >= 0 ? Number(argv[threadsArg + 1]) : os.availableParallelism();
  if (!Number.isInteger(threads) || threads < 1) throw new Error('--threads needs a positive integer');
  const keepCache = argv.includes('--keep-cache');
  const spec = specFromConfig(CONFIG);
  const m = machine();
  const tStart = performance.now();
  const busyStart = machineBusyS();
  console.error(
    `engine bench: Qwen2.5-0.5B shape (qwen2, ${spec.numLayers} layers, ${spec.numHeads}/${spec.numKvHeads} heads, d ` +
      `${spec.headDim}, D ${spec.hiddenSize}, F ${spec.intermediateSize}, V ${spec.vocabSize}), fp32, ${threads} ` +
      `threads`,
  );
  console.error(`machine: ${m.cpuModel}, ${m.nproc} cores, ${m.totalMemGiB} GiB, node ${m.node}`);

  // 1. The random checkpoint, reused across runs (keyed by config and generator options).
  const ckptDir = qwenShapeDir(); // shared with bench/fit.ts and bench/eval.ts
  let checkpointWriteS: number | null = null;
  if (fs.existsSync(path.join(ckptDir, '.complete'))) {
    console.error(`checkpoint: reusing ${ckptDir}`);
  } else {
    console.error(`checkpoint: writing ${ckptDir} (~2 GB, once; later runs reuse it)`);
    checkpointWriteS = (
      await runChild<{ writeS: number }>('write-checkpoint', { ckptDir }, 'random checkpoint', 'values')
    ).writeS;
  }

  // 2. Cold build into a fresh cache dir; 3. in a new process, a cached load and every run-time figure.
  const cacheDir = fs.mkdtempSync(path.join(os.tmpdir(), 'arm-bench-cache-'));
  let cold: { loadS: number; buildS: number; sessionS: number; maxRssKiB: number; weightBytes: number };
  let run: RunResult;
  try {
    cold = await runChild('cold-build', { ckptDir, cacheDir, threads } satisfies ChildArgs, 'cold build', 'weights');
    run = await runChild(
      'cached-run',
      { ckptDir, cacheDir, threads } satisfies ChildArgs,
      'cached load + runs',
      'runs',
    );
  } finally {
    if (!keepCache)
      fs.rmSync(cacheDir, { recursive: true, force: true }); // the fresh dir this run created, nothing else
    else console.error(`cache kept: ${cacheDir}`);
  }
  if (!run.finite) console.error('warning: non-finite logits from the random model');

  // ---- figures
  // Share of the machine that other processes used while the bench ran: timings from a busy machine are slow.
  const busyEnd = machineBusyS();
  const wallS = seconds(tStart);
  const otherCpuShare =
    busyStart === null || busyEnd === null
      ? null
      : Math.max(0, (busyEnd - busyStart - childCpuS - cpuSeconds()) / (wallS * m.nproc));
  const fwdFlops = modelFlops(spec, 1, SEQ);
  const stepFlops = modelFlops(spec, PATCH_ROWS, 1, SEQ - 1);
  const longFlops = modelFlops(spec, 1, LONG_SEQ);
  const [M, K, N] = REF_MATMUL;
  const gflops = (flops: number, ms: number) => flops / (ms / 1000) / 1e9;
  const rssOverWeights = (run.maxRssKiB * 1024) / run.weightBytes;
  // Best-of ratios (fastest run of each side): interference on a shared host only ever adds time, so these
  // are a cross-check for the medians when a run was disturbed.
  const efficiencyBest = gflops(fwdFlops.total, run.effForwardMinMs) / gflops(2 * M * K * N, run.matmulMinMs);
  const speedupBest = (PATCH_ROWS * run.forwardMinMs) / run.stepSharedMinMs;
  const MiB = (kib: number) => (kib / 1024).toFixed(0);
  const r = (x: number, n = 2) => +x.toFixed(n);
  const range = (xs: number[], n: number) => `${r(xs[0]!, n)}–${r(xs[1]!, n)}`;

  const rows: [string, string, string, string][] = [
    [
      'coldBuildS',
      `${r(cold.loadS, 1)} s`,
      '',
      `first Decoder.load, fresh cache dir, own process (convert ${r(cold.buildS, 1)} s + session ` +
        `${r(cold.sessionS, 1)} s)`,
    ],
    [
      'cachedLoadS',
      `${r(run.loadS, 2)} s`,
      '',
      `second Decoder.load, new process, warm page cache (session ${r(run.sessionS, 2)} s)`,
    ],
    [
      'forwardMs',
      `${r(run.effForwardMs, 0)} ms`,
      '',
      `Decoder.forward batch 1 × ${SEQ} tokens, median of ${EFF_ROUNDS}`,
    ],
    [
      'forwardGflopPerS',
      `${r(gflops(fwdFlops.total, run.effForwardMs), 1)}`,
      '',
      `${r(fwdFlops.total / 1e9, 1)} model GFLOP (linear ${r(fwdFlops.linear / 1e9, 1)}, attention ` +
        `${r(fwdFlops.attention / 1e9, 2)}, lm_head ${r(fwdFlops.lmHead / 1e9, 2)}) / forwardMs`,
    ],
    [
      'matmulGflopPerS',
      `${r(gflops(2 * M * K * N, run.matmulMs), 1)}`,
      '',
      `onnxruntime MatMul [${M},${K}]·[${K},${N}] (weight initializer), ${r(run.matmulMs, 2)} ms, median of ` +
        `${EFF_ROUNDS * MATMULS_PER_ROUND}`,
    ],
    [
      'forwardEfficiency',
      `${r(run.forwardEfficiency, 3)}`,
      `≥ ${GOALS.forwardEfficiency}`,
      `forward FLOP/s ÷ MatMul FLOP/s, median of ${EFF_ROUNDS} interleaved rounds (range ` +
        `${range(run.efficiencyRange, 2)}; ratio of the medians ` +
        `${r(gflops(fwdFlops.total, run.effForwardMs) / gflops(2 * M * K * N, run.matmulMs), 2)}, best-of ` +
        `${r(efficiencyBest, 2)})`,
    ],
    ['prefillMs', `${r(run.prefillMs, 0)} ms`, '', `Decoder.prefill of ${SEQ - 1} tokens (returns the KV cache)`],
    [
      'stepSharedMs',
      `${r(run.stepSharedMs, 1)} ms`,
      '',
      `Decoder.stepShared, ${PATCH_ROWS} patch rows after the ${SEQ - 1}-token prefix, median of ` +
        `${ROUNDS * STEPS_PER_ROUND} (${r(gflops(stepFlops.total, run.stepSharedMs), 1)} GFLOP/s)`,
    ],
    [
      'sharedStepSpeedup',
      `${r(run.sharedStepSpeedup, 1)}`,
      `≥ ${GOALS.sharedStepSpeedup}`,
      `${PATCH_ROWS} × forward ÷ stepShared, median of ${ROUNDS} interleaved rounds (range ` +
        `${range(run.speedupRange, 0)}, best-of ${r(speedupBest, 0)}); the ${PATCH_ROWS} forwards are one forward × ` +
        `${PATCH_ROWS}`,
    ],
    [
      'decodeStepMs',
      `${r(run.decodeStepMs, 1)} ms`,
      '',
      `Decoder.extend by 1 token after ${SEQ - 1}, batch 1 (context: ` +
        `${r(run.weightBytes / 1e9 / (run.decodeStepMs / 1000), 1)} GB/s of weights)`,
    ],
    [
      'peakRssMiB',
      `${MiB(run.maxRssKiB)} MiB`,
      '',
      `maxRSS of the cached-run process after all engine runs (before load ${MiB(run.rssBeforeKiB)}, after load ` +
        `${MiB(run.rssAfterLoadKiB)})`,
    ],
    ['weightsMiB', `${(run.weightBytes / 2 ** 20).toFixed(0)} MiB`, '', 'Decoder.weightBytes (fp32 weights.bin)'],
    ['rssOverWeights', `${r(rssOverWeights, 3)}`, `≤ ${GOALS.rssOverWeights}`, 'peakRss ÷ weightBytes'],
    ['coldBuildPeakRssMiB', `${MiB(cold.maxRssKiB)} MiB`, '', 'maxRSS of the cold-build process'],
    [
      'longForwardMs',
      `${r(run.longForwardMs, 0)} ms`,
      '',
      `Decoder.forward batch 1 × ${LONG_SEQ} tokens, median of ${LONG_ROUNDS} ` +
        `(${r(gflops(longFlops.total, run.longForwardMs), 1)} GFLOP/s of ${r(longFlops.total / 1e9, 1)}, attention ` +
        `${r(longFlops.attention / 1e9, 1)}); the paired ${SEQ}-token forwards: ${r(run.longShortForwardMs, 0)} ms`,
    ],
    [
      'long1650OverShort256',
      `${r(run.long1650OverShort256, 3)}`,
      `≥ ${GOALS.long1650OverShort256}`,
      `tokens/s at ${LONG_SEQ} ÷ tokens/s at ${SEQ}, median of ${LONG_ROUNDS} interleaved rounds (range ` +
        `${range(run.longRatioRange, 2)}); process maxRSS after them ${MiB(run.longMaxRssKiB)} MiB`,
    ],
  ];
  const values: Record<string, number> = {
    forwardEfficiency: run.forwardEfficiency,
    sharedStepSpeedup: run.sharedStepSpeedup,
    rssOverWeights,
    long1650OverShort256: run.long1650OverShort256,
  };
  const status = (name: string) => {
    const goal = GOALS[name as keyof typeof GOALS];
    if (goal === undefined) return '';
    return (name === 'rssOverWeights' ? values[name]! <= goal : values[name]! >= goal) ? 'ok' : 'MISS';
  };
  const w = [0, 1, 2].map((i) => Math.max(...rows.map((row) => row[i]!.length)));
  console.log(
    `\nEngine bench — random Qwen2.5-0.5B-shaped checkpoint, fp32; ${m.cpuModel}, ${m.nproc} cores, ${m.totalMemGiB} ` +
      `GiB, ${threads} threads, ${m.date}`,
  );
  for (const [name, value, goal, meaning] of rows) {
    console.log(
      `${name.padEnd(w[0]!)}  ${value.padStart(w[1]!)}  ${goal.padEnd(w[2]!)}  ${status(name).padEnd(4)}  ${meaning}`,
    );
  }
  const busy = ' (busy machine: absolute times are pessimistic, the paired ratios less so)';
  const others =
    otherCpuShare === null
      ? ''
      : `; other processes in this OS used ${(100 * otherCpuShare).toFixed(0)}% of its CPUs ` +
        `meanwhile${otherCpuShare > 0.05 ? busy : ''} (a VM's host contention does not show here)`;
  console.log(
    `total bench time ${r(seconds(tStart), 0)} ` +
      `s${checkpointWriteS !== null ? ` (checkpoint written in ${r(checkpointWriteS, 0)} s)` : ''}${others}`,
  );

  console.log(
    JSON.stringify({
      forwardEfficiency: r(run.forwardEfficiency, 3),
      sharedStepSpeedup: r(run.sharedStepSpeedup, 1),
      rssOverWeights: r(rssOverWeights, 3),
      long1650OverShort256: r(run.long1650OverShort256, 3),
      longForwardMs: r(run.longForwardMs, 1),
      longShortForwardMs: r(run.longShortForwardMs, 1),
      coldBuildS: r(cold.loadS, 2),
      cachedLoadS: r(run.loadS, 2),
      forwardEfficiencyBest: r(efficiencyBest, 3),
      sharedStepSpeedupBest: r(speedupBest, 1),
      forwardMs: r(run.effForwardMs, 1),
      forwardGflop: r(fwdFlops.total / 1e9, 2),
      forwardGflopPerS: r(gflops(fwdFlops.total, run.effForwardMs), 1),
      matmulMs: r(run.matmulMs, 2),
      matmulGflopPerS: r(gflops(2 * M * K * N, run.matmulMs), 1),
      prefillMs: r(run.prefillMs, 1),
      stepSharedMs: r(run.stepSharedMs, 1),
      stepForwardMs: r(run.forwardMs, 1),
      decodeStepMs: r(run.decodeStepMs, 1),
      peakRssKiB: run.maxRssKiB,
      rssAfterLoadKiB: run.rssAfterLoadKiB,
      rssBeforeLoadKiB: run.rssBeforeKiB,
      weightBytes: run.weightBytes,
      convertS: r(cold.buildS, 2),
      coldSessionS: r(cold.sessionS, 2),
      cachedSessionS: r(run.sessionS, 2),
      coldBuildPeakRssKiB: cold.maxRssKiB,
      checkpointWriteS: checkpointWriteS === null ? null : r(checkpointWriteS, 1),
      finiteLogits: run.finite,
      otherCpuShare: otherCpuShare === null ? null : r(otherCpuShare, 3),
      threads,
      nproc: m.nproc,
      cpu: m.cpuModel,
      totalMemGiB: m.totalMemGiB,
      node: m.node,
      date: m.date,
    }),
  );
}

// ---------------------------------------------------------------- entry

const [mode, rawArgs] = process.argv.slice(2);
const CHILDREN: Record<string, (a: never) => Promise<void>> = {
  'write-checkpoint': childWriteCheckpoint,
  'cold-build': childColdBuild,
  'cached-run': childCachedRun,
};
const child = mode !== undefined ? CHILDREN[mode] : undefined;
(child ? child(JSON.parse(rawArgs ?? '{}') as never) : main(process.argv.slice(2))).catch((e) => {
  console.error(e instanceof Error ? (e.stack ?? e.message) : e);
  process.exit(1);
});
