/**
 * Vision benchmark (`npm run bench:vision`):
 *  1. the Qwen2.5-VL-7B vision tower (vision_config of Qwen/Qwen2.5-VL-7B-Instruct: depth 32, width 1280, 16 heads,
 *     MLP 3420, patch 14, merge 2, temporal patch 2, window 112, full attention in blocks 7/15/23/31, output 3584)
 *     with random bf16 weights: seconds per image at 448×448 and 1024×768 (grids by the Qwen smart_resize rule with
 *     the checkpoint's default min/max pixels; pixel values random, which does not change the cost), and the peak
 *     resident memory of each run: Linux's VmHWM after resetting it to the current RSS just before the run
 *     (/proc/self/clear_refs), so graph building and session loading do not mask it, next to
 *     process.resourceUsage().maxRSS, the process-wide high-water mark so far (both MiB);
 *  2. the REINFORCE step (32 masked rows after a cached prefix, Decoder.stepShared) with an image in the prefix vs
 *     a text-only prefix of the same token count. The language model here is the Qwen2.5-0.5B shape (hidden 896,
 *     24 layers, 14 heads, fp32) dressed as a qwen2_5_vl checkpoint (M-RoPE sections [8,12,12]); the image rows
 *     are 256 random rows with a 16×16 merged grid (what a 448×448 image gives), placed in the prefix by
 *     Decoder.prefill. The 7B language model would only scale both step times alike: the point is their ratio.
 *
 * ARM_BENCH_VISION_DEPTH=n cuts the tower's depth (default 32; the output says which depth ran);
 * ARM_BENCH_VISION_STEP=0 skips part 2 (its fields are then absent from the last line).
 * Everything is written into one temp folder (~1.3 GB of bf16 tower weights + its ~2.7 GB fp32 graph cache),
 * deleted at the end. Last line:
 * {"tower448S":…,"tower1024x768S":…,"towerRunPeakRssMiB448":…,"maxRssMiB448":…,
 *  "stepWithImageMs":…,"stepTextMs":…,"stepImageOverText":…}
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Decoder } from '../src/model/decoder.js';
import { VisionTower } from '../src/model/vision/tower.js';
import { smartResize } from '../src/model/vision/qwen-processor.js';
import { qwenVisionLayout, writeRandomTensorsBf16 } from '../tools/random-checkpoint.js';
import { Rng } from '../src/util/rng.js';
import { CONFIG as LM_CONFIG, ensureQwenShapeCheckpoint, median } from './qwen-shape.js';
import { log, seconds } from './args.js';

const MIB = 1024 * 1024;
const t00 = performance.now();

const DEPTH = Number(process.env.ARM_BENCH_VISION_DEPTH ?? 32);
const FULL_ATT = [7, 15, 23, 31].filter((b) => b < DEPTH);
const VISION_CONFIG = {
  depth: DEPTH,
  hidden_size: 1280,
  num_heads: 16,
  intermediate_size: 3420,
  patch_size: 14,
  spatial_merge_size: 2,
  temporal_patch_size: 2,
  window_size: 112,
  fullatt_block_indexes: FULL_ATT,
  out_hidden_size: 3584,
  in_chans: 3,
  hidden_act: 'silu',
  tokens_per_second: 2,
  model_type: 'qwen2_5_vl',
};
const MIN_PIXELS = 56 * 56,
  MAX_PIXELS = 28 * 28 * 1280; // Qwen2.5-VL-7B-Instruct preprocessor_config.json
const IDS = { image: 151655, visionStart: 151652, visionEnd: 151653 };
const MROPE = [8, 12, 12]; // head_dim 64 → 32 rotary frequencies (the 7B's [16,24,24] at head_dim 128, halved)

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'arm-bench-vision-'));
const cacheDir = path.join(root, 'cache');
try {
  // ---- 1. the 7B vision tower ----
  const towerDir = path.join(root, 'tower');
  fs.mkdirSync(towerDir);
  fs.writeFileSync(
    path.join(towerDir, 'config.json'),
    JSON.stringify(
      {
        architectures: ['Qwen2_5_VLForConditionalGeneration'],
        model_type: 'qwen2_5_vl',
        image_token_id: IDS.image,
        vision_start_token_id: IDS.visionStart,
        vision_end_token_id: IDS.visionEnd,
        text_config: { hidden_size: 3584, model_type: 'qwen2_5_vl_text' },
        vision_config: VISION_CONFIG,
      },
      null,
      2,
    ),
  );
  let t0 = performance.now();
  writeRandomTensorsBf16(path.join(towerDir, 'model.safetensors'), qwenVisionLayout(VISION_CONFIG, 'visual.'));
  log(`tower weights (depth ${DEPTH}, bf16) written in ${seconds(t0).toFixed(1)} s`);
  t0 = performance.now();
  const tower = await VisionTower.load(towerDir, { cacheDir });
  const towerLoadS = seconds(t0);
  log(`tower graph built and loaded in ${towerLoadS.toFixed(1)} s`);
  const runTower = async (height: number, width: number) => {
    const [h, w] = smartResize(height, width, 28, MIN_PIXELS, MAX_PIXELS);
    const grid: [number, number, number] = [1, h / 14, w / 14];
    const N = grid[1] * grid[2];
    const rng = new Rng(N);
    const pixels = Float32Array.from({ length: N * 3 * 2 * 14 * 14 }, () => rng.uniform() * 4 - 2);
    const rssBefore = process.memoryUsage().rss / MIB;
    const hwmReset = resetPeakRss();
    const t = performance.now();
    const out = await tower.runQwen(pixels, grid);
    const s = seconds(t);
    const runPeak = hwmReset ? peakRssMiB() : null;
    const maxRss = process.resourceUsage().maxRSS / 1024; // KiB → MiB
    log(
      `tower ${width}×${height} → resized ${w}×${h}, ${N} patches → ${out.dims[0]} tokens: ${s.toFixed(2)} s; ` +
        `RSS ${rssBefore.toFixed(0)} MiB before, run peak ${runPeak === null ? 'n/a' : runPeak.toFixed(0)} MiB, ` +
        `process maxRSS ${maxRss.toFixed(0)} MiB`,
    );
    return {
      s,
      patches: N,
      tokens: out.dims[0],
      runPeak: runPeak === null ? null : Math.round(runPeak),
      maxRss: Math.round(maxRss),
      rssBefore: Math.round(rssBefore),
    };
  };
  const t448 = await runTower(448, 448);
  const t1024 = await runTower(768, 1024);
  await tower.release();
  fs.rmSync(towerDir, { recursive: true, force: true });
  fs.rmSync(cacheDir, { recursive: true, force: true });

  const towerFields = {
    tower448S: round(t448.s),
    tower1024x768S: round(t1024.s),
    towerDepth: DEPTH,
    towerPatches448: t448.patches,
    towerPatches1024x768: t1024.patches,
    towerRssBeforeMiB448: t448.rssBefore,
    towerRunPeakRssMiB448: t448.runPeak,
    maxRssMiB448: t448.maxRss,
    towerRssBeforeMiB1024x768: t1024.rssBefore,
    towerRunPeakRssMiB1024x768: t1024.runPeak,
    maxRssMiB1024x768: t1024.maxRss,
    towerBuildLoadS: round(towerLoadS),
  };
  if (process.env.ARM_BENCH_VISION_STEP === '0') {
    console.log(JSON.stringify({ ...towerFields, threads: os.availableParallelism(), wallS: round(seconds(t00)) }));
  } else {
    // ---- 2. REINFORCE step with an image prefix vs a text prefix ----
    const lmSrc = ensureQwenShapeCheckpoint(log);
    const lmDir = path.join(root, 'lm');
    fs.mkdirSync(lmDir);
    fs.symlinkSync(path.join(lmSrc, 'model.safetensors'), path.join(lmDir, 'model.safetensors'));
    for (const f of ['tokenizer.json', 'tokenizer_config.json'])
      fs.copyFileSync(path.join(lmSrc, f), path.join(lmDir, f));
    const { model_type: _t, rope_theta, ...text } = LM_CONFIG;
    fs.writeFileSync(
      path.join(lmDir, 'config.json'),
      JSON.stringify(
        {
          architectures: ['Qwen2_5_VLForConditionalGeneration'],
          model_type: 'qwen2_5_vl',
          tie_word_embeddings: true,
          image_token_id: IDS.image,
          vision_start_token_id: IDS.visionStart,
          vision_end_token_id: IDS.visionEnd,
          text_config: {
            ...text,
            model_type: 'qwen2_5_vl_text',
            hidden_act: 'silu',
            rope_parameters: { mrope_section: MROPE, rope_theta, rope_type: 'default' },
          },
          vision_config: {
            ...VISION_CONFIG,
            depth: 32,
            fullatt_block_indexes: [7, 15, 23, 31],
            out_hidden_size: LM_CONFIG.hidden_size,
          },
        },
        null,
        2,
      ),
    );
    t0 = performance.now();
    const decoder = await Decoder.load(lmDir, { cacheDir, quiet: true });
    log(`language model (Qwen2.5-0.5B shape as qwen2_5_vl, fp32) loaded in ${seconds(t0).toFixed(1)} s`);
    const { numLayers: L, numHeads: H, headDim: d, hiddenSize: D } = decoder.spec;
    const rng = new Rng(7);
    const PREFIX = 300,
      IMAGE_TOKENS = 256,
      IMAGE_START = 20;
    const textIds = Array.from({ length: PREFIX }, () => 10 + rng.int(490));
    const imageIds = textIds.map((id, i) => (i >= IMAGE_START && i < IMAGE_START + IMAGE_TOKENS ? IDS.image : id));
    imageIds[IMAGE_START - 1] = IDS.visionStart;
    imageIds[IMAGE_START + IMAGE_TOKENS] = IDS.visionEnd;
    const embeds = Float32Array.from({ length: IMAGE_TOKENS * D }, () => 0.02 * rng.normal());
    t0 = performance.now();
    const kvImage = await decoder.prefill(imageIds, { images: [{ start: IMAGE_START, embeds, grid: [1, 16, 16] }] });
    const prefillImageS = seconds(t0);
    t0 = performance.now();
    const kvText = await decoder.prefill(textIds);
    const prefillTextS = seconds(t0);
    const mu = Float32Array.from({ length: L * H * d }, () => 0.01 * rng.normal());
    const SAMPLES = 32,
      STEPS = 10;
    const patch = () => ({
      mask: Float32Array.from({ length: SAMPLES * L * H }, () => (rng.uniform() < 0.27 ? 1 : 0)),
      values: mu,
      mode: 'replace' as const,
    });
    await decoder.stepShared(kvImage, 42, patch()); // warm-up
    await decoder.stepShared(kvText, 42, patch());
    const withImage: number[] = [],
      textOnly: number[] = [];
    for (let i = 0; i < STEPS; i++) {
      // interleaved, so drift hits both alike
      t0 = performance.now();
      await decoder.stepShared(kvImage, 42, patch());
      withImage.push(seconds(t0) * 1000);
      t0 = performance.now();
      await decoder.stepShared(kvText, 42, patch());
      textOnly.push(seconds(t0) * 1000);
    }
    const stepWithImageMs = median(withImage),
      stepTextMs = median(textOnly);
    log(
      `prefix ${PREFIX} tokens (${IMAGE_TOKENS} image rows): prefill ${prefillImageS.toFixed(2)} s with image, ` +
        `${prefillTextS.toFixed(2)} s text`,
    );
    log(
      `REINFORCE step (${SAMPLES} rows): ${stepWithImageMs.toFixed(1)} ms with image prefix, ` +
        `${stepTextMs.toFixed(1)} ms text prefix (median of ${STEPS})`,
    );
    console.log(
      JSON.stringify({
        ...towerFields,
        stepWithImageMs: round(stepWithImageMs),
        stepTextMs: round(stepTextMs),
        stepImageOverText: round(stepWithImageMs / stepTextMs),
        prefixTokens: PREFIX,
        imageTokens: IMAGE_TOKENS,
        samples: SAMPLES,
        prefillImageS: round(prefillImageS),
        prefillTextS: round(prefillTextS),
        lm: 'qwen2.5-0.5b-shape fp32',
        threads: os.availableParallelism(),
        wallS: round(seconds(t00)),
      }),
    );
  }
} finally {
  fs.rmSync(root, { recursive: true, force: true });
}

function round(x: number): number {
  return Math.round(x * 1000) / 1000;
}

/** Linux: resets VmHWM (peak RSS) to the current RSS; false where /proc/self/clear_refs is not writable. */
function resetPeakRss(): boolean {
  try {
    fs.writeFileSync('/proc/self/clear_refs', '5');
    return true;
  } catch {
    return false;
  }
}

/** Linux: VmHWM of /proc/self/status in MiB (the peak since the last resetPeakRss). */
function peakRssMiB(): number | null {
  try {
    const m = /^VmHWM:\s+(\d+) kB/m.exec(fs.readFileSync('/proc/self/status', 'utf8'));
    return m ? Number(m[1]) / 1024 : null;
  } catch {
    return null;
  }
}

/** Random Qwen2.5-VL vision weights (HF names under `visual.`), bf16; norms near 1, matrices ~0.02. */
