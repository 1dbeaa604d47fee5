/**
 * A 7B image-text judge on this machine, end to end (`npm run bench:vl7b`): the memory claim of the
 * image-text issue, measured rather than added up.
 *
 * The checkpoint has Qwen2.5-VL-7B-Instruct's shapes (language model: 28 layers, hidden 3584, 28/4 heads,
 * MLP 18944, untied 152,064 vocabulary; vision tower: 32 blocks of width 1280, window attention with full
 * attention in blocks 7/15/23/31, merger to 3584) and its hub weight names (`model.layers.*`, `visual.*`,
 * `lm_head.weight`), with random bf16 values (tiled from a seeded pool: cost and memory do not depend on them),
 * ~16.6 GB written once into os.tmpdir() and deleted at the end unless --keep.
 *
 * Children (each its own process, so each peak RSS is that process's alone):
 *   write   the checkpoint and its preprocessor_config.json (Qwen2.5-VL-7B-Instruct's processor settings).
 *   build   Decoder.load with the default dtype for this size (the bench checks it is int4) and the vision
 *           tower (fp32), into a fresh cache dir: the cold build a first `arm fit` pays.
 *   run     both loaded from that cache, as `arm score` on an image row would: PNGs decoded and preprocessed,
 *           the tower run once per image, placeholders expanded, then for each image a full forward of
 *           image + ~300 text tokens, the prefix prefill and three REINFORCE steps (32 patched rows). Peak
 *           RSS (maxRSS) after each image, and seconds per phase.
 * Last stdout line: one JSON object with the headline figures. Options: --threads N, --keep (checkpoint),
 * --sizes 448x448,1024x768 (width×height of the judged images).
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import sharp from 'sharp';
import { Decoder } from '../src/model/decoder.js';
import { ImageInputs } from '../src/model/vision/image-inputs.js';
import { decodeImage } from '../src/model/vision/image.js';
import {
  qwenVisionLayout,
  Rng,
  writeRandomCheckpoint,
  writeRandomTensorsBf16,
  type HfConfig,
} from '../tools/random-checkpoint.js';
import { runChild } from './child.js';
import { median } from './qwen-shape.js';
import { benchArgs, flag, log, option, seconds, threadsOption } from './args.js';

const SCRIPT = fileURLToPath(import.meta.url);
const SHARED = path.resolve(path.dirname(SCRIPT), '../../shared');
const threads = threadsOption();
const r = (x: number, digits = 2) => Number(x.toFixed(digits));
const GiB = 2 ** 30;
const maxRssBytes = () => process.resourceUsage().maxRSS * 1024;

const IDS = { image: 151655, visionStart: 151652, visionEnd: 151653 };
// --smoke: the same code paths on a 1-layer, 2-block model with a small vocabulary (seconds; checks the script)
const SMOKE = flag('--smoke');
const TEXT: HfConfig = {
  model_type: 'qwen2',
  hidden_size: 3584,
  intermediate_size: SMOKE ? 512 : 18944,
  num_hidden_layers: SMOKE ? 1 : 28,
  num_attention_heads: 28,
  num_key_value_heads: 4,
  head_dim: 128,
  vocab_size: SMOKE ? 152000 : 152064,
  tie_word_embeddings: false,
  rope_theta: 1000000,
  rms_norm_eps: 1e-6,
  max_position_embeddings: 128000,
};
const VISION = {
  model_type: 'qwen2_5_vl',
  depth: SMOKE ? 2 : 32,
  hidden_size: 1280,
  num_heads: 16,
  intermediate_size: 3420,
  patch_size: 14,
  spatial_merge_size: 2,
  temporal_patch_size: 2,
  window_size: 112,
  fullatt_block_indexes: SMOKE ? [1] : [7, 15, 23, 31],
  out_hidden_size: 3584,
  in_chans: 3,
  hidden_act: 'silu',
  tokens_per_second: 2,
};
const DIR = path.join(os.tmpdir(), `arm-bench-ckpt-qwen2.5-vl-7b-shape-bf16${SMOKE ? '-smoke' : ''}`);
const TEXT_TOKENS = 300,
  SAMPLES = 32;

function writeCheckpoint(): Record<string, unknown> {
  const t0 = performance.now();
  fs.rmSync(DIR, { recursive: true, force: true });
  writeRandomCheckpoint(DIR, TEXT, { seed: 0, dtype: 'BF16', std: 0.02, shards: 16, fast: true });
  writeRandomTensorsBf16(path.join(DIR, 'model-visual.safetensors'), qwenVisionLayout(VISION, 'visual.'));
  // Weight map: the language model's shards plus the tower's file; config: the image-text checkpoint's
  const indexFile = path.join(DIR, 'model.safetensors.index.json');
  const index = JSON.parse(fs.readFileSync(indexFile, 'utf8')) as { weight_map: Record<string, string> };
  for (const [name] of qwenVisionLayout(VISION, 'visual.')) index.weight_map[name] = 'model-visual.safetensors';
  fs.writeFileSync(indexFile, JSON.stringify(index, null, 2));
  const { model_type: _t, rope_theta, ...text } = TEXT;
  fs.writeFileSync(
    path.join(DIR, 'config.json'),
    JSON.stringify(
      {
        architectures: ['Qwen2_5_VLForConditionalGeneration'],
        model_type: 'qwen2_5_vl',
        tie_word_embeddings: false,
        image_token_id: IDS.image,
        vision_start_token_id: IDS.visionStart,
        vision_end_token_id: IDS.visionEnd,
        text_config: {
          ...text,
          model_type: 'qwen2_5_vl_text',
          hidden_act: 'silu',
          rope_parameters: { mrope_section: [16, 24, 24], rope_theta, rope_type: 'default' },
        },
        vision_config: VISION,
      },
      null,
      2,
    ),
  );
  // Qwen2.5-VL-7B-Instruct's processor: the fixture's file with the hub model's pixel limits
  const processor = JSON.parse(
    fs.readFileSync(path.join(SHARED, 'fixtures/hf-parity/qwen2_5_vl-tiny/preprocessor_config.json'), 'utf8'),
  );
  processor.size = { shortest_edge: 3136, longest_edge: 12845056 };
  fs.writeFileSync(path.join(DIR, 'preprocessor_config.json'), JSON.stringify(processor, null, 2));
  fs.writeFileSync(path.join(DIR, '.complete'), '');
  const bytes = fs
    .readdirSync(DIR)
    .filter((f) => f.endsWith('.safetensors'))
    .reduce((n, f) => n + fs.statSync(path.join(DIR, f)).size, 0);
  return { writeS: r(seconds(t0), 0), checkpointGB: r(bytes / 1e9) };
}

async function build(cacheDir: string) {
  const t0 = performance.now();
  const d = await Decoder.load(DIR, { cacheDir, threads, quiet: true });
  const lmS = seconds(t0);
  const t1 = performance.now();
  const inputs = await ImageInputs.load(DIR, { cacheDir, threads });
  const towerS = seconds(t1);
  const out = {
    dtype: d.info.weightFormat.dtype,
    lmBuildS: r(lmS, 0),
    towerBuildS: r(towerS, 0),
    lmWeightBytes: d.weightBytes,
    buildMaxRssGiB: r(maxRssBytes() / GiB),
  };
  await inputs.release();
  await d.dispose();
  return out;
}

async function run(cacheDir: string, sizes: [number, number][]) {
  let t = performance.now();
  const d = await Decoder.load(DIR, { cacheDir, threads, quiet: true });
  const inputs = await ImageInputs.load(DIR, { cacheDir, threads });
  const loadS = seconds(t);
  if (d.info.built) throw new Error('the language model was rebuilt in the run child (is src/model being edited?)');
  const afterLoad = maxRssBytes();
  const { numLayers: L, numHeads: H, headDim: hd } = d.spec;
  const rng = new Rng(5);
  const images = [];
  for (const [width, height] of sizes) {
    const file = path.join(os.tmpdir(), `arm-bench-vl7b-${width}x${height}-${process.pid}.png`);
    const pixels = Uint8Array.from({ length: width * height * 3 }, () => rng.int(256));
    await sharp(pixels, { raw: { width, height, channels: 3 } })
      .png()
      .toFile(file);
    // the judged prompt: <|vision_start|><|image_pad|><|vision_end|> then ~300 tokens of question and response
    const ids = [
      IDS.visionStart,
      IDS.image,
      IDS.visionEnd,
      ...Array.from({ length: TEXT_TOKENS }, () => 10 + rng.int(150000)),
    ];
    t = performance.now();
    const image = await decodeImage(file);
    fs.rmSync(file, { force: true });
    const prompt = await inputs.prepare(ids, [image]);
    const towerS = seconds(t);
    t = performance.now();
    await d.forward([prompt.inputIds], undefined, { images: [prompt.images] });
    const forwardS = seconds(t);
    t = performance.now();
    const kv = await d.prefill(prompt.inputIds.slice(0, -1), { images: prompt.images });
    const prefillS = seconds(t);
    const mask = Float32Array.from({ length: SAMPLES * L * H }, () => (rng.uniform() < 0.5 ? 1 : 0));
    const values = Float32Array.from({ length: L * H * hd }, () => 0.01 * rng.normal());
    const steps: number[] = [];
    for (let i = 0; i < 3; i++) {
      t = performance.now();
      await d.stepShared(kv, prompt.inputIds.at(-1)!, { mask, values });
      steps.push(seconds(t));
    }
    const row = {
      image: `${width}x${height}`,
      imageTokens: prompt.images[0]!.embeds.length / d.spec.hiddenSize,
      promptTokens: prompt.inputIds.length,
      towerS: r(towerS, 1),
      forwardS: r(forwardS, 1),
      prefillS: r(prefillS, 1),
      reinforceStepS: r(median(steps)),
      maxRssGiB: r(maxRssBytes() / GiB),
    };
    log(JSON.stringify(row));
    images.push(row);
  }
  const out = {
    loadS: r(loadS, 1),
    afterLoadGiB: r(afterLoad / GiB),
    lmWeightBytes: d.weightBytes,
    images,
    maxRssGiB: r(maxRssBytes() / GiB),
  };
  await inputs.release();
  await d.dispose();
  return out;
}

const child = (mode: string, cacheDir: string) => runChild(SCRIPT, mode, [...benchArgs, '--cache-dir', cacheDir]);

const sizes = (option('--sizes') ?? '448x448,1024x768')
  .split(',')
  .map((s) => s.split('x').map(Number) as [number, number]);
const mode = option('--child');
if (mode) {
  const cacheDir = option('--cache-dir')!;
  const result =
    mode === 'write' ? writeCheckpoint() : mode === 'build' ? await build(cacheDir) : await run(cacheDir, sizes);
  fs.writeSync(1, `${JSON.stringify(result)}\n`);
} else {
  const cacheDir = fs.mkdtempSync(path.join(os.tmpdir(), 'arm-bench-vl7b-cache-'));
  const report: Record<string, unknown> = {
    machine: {
      cpu: os.cpus()[0]?.model,
      cores: os.availableParallelism(),
      threads,
      memGiB: r(os.totalmem() / GiB, 1),
      node: process.version,
    },
    date: new Date().toISOString(),
  };
  try {
    const free = fs.statfsSync(os.tmpdir());
    const freeGiB = (free.bavail * free.bsize) / GiB;
    const have = fs.existsSync(path.join(DIR, '.complete'));
    if (!have && freeGiB < 16.6 + 8 + 3)
      throw new Error(
        `only ${freeGiB.toFixed(0)} GiB free in ${os.tmpdir()}: the checkpoint (16.6 GB) and its cache entries (~8 ` +
          `GB) need ~28`,
      );
    if (!have) {
      log(`writing the Qwen2.5-VL-7B-shaped checkpoint to ${DIR}…`);
      report.write = await child('write', cacheDir);
      log(JSON.stringify(report.write));
    }
    log('building the language model (default dtype) and the vision tower…');
    report.build = await child('build', cacheDir);
    log(JSON.stringify(report.build));
    if ((report.build as { dtype: string }).dtype !== 'int4' && !SMOKE)
      throw new Error(
        `the default dtype for a 7B model is ${(report.build as { dtype: string }).dtype}, expected int4`,
      );
    log('loading both from the cache and judging images…');
    report.run = await child('run', cacheDir);
  } finally {
    fs.rmSync(cacheDir, { recursive: true, force: true });
    if (!flag('--keep')) fs.rmSync(DIR, { recursive: true, force: true });
  }
  console.log(JSON.stringify(report, null, 1));
  const runOut = report.run as {
    maxRssGiB: number;
    images: { image: string; towerS: number; reinforceStepS: number }[];
  };
  console.log(
    JSON.stringify({
      vl7bMaxRssGiB: runOut.maxRssGiB,
      fitsIn24GiB: runOut.maxRssGiB < 24,
      ...Object.fromEntries(
        runOut.images.flatMap((i) => [
          [`towerS${i.image}`, i.towerS],
          [`reinforceStepS${i.image}`, i.reinforceStepS],
        ]),
      ),
    }),
  );
}
