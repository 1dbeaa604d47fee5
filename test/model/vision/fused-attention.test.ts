/**
 * The Qwen vision graph's full attention runs fused (vision-ops.ts fusedAttention: onnxruntime's
 * MultiHeadAttention, whose CPU kernel is MLAS flash attention in query tiles of min(2d, L2/(16·2d)) rows and key
 * blocks of L2/(16·2d) rows, with a running softmax). The HF parity fixtures have too few patches to span several
 * tiles, so here a synthetic Qwen2-VL tower (full attention in every block, head size 64) runs a 34×38 grid:
 * N = 1292 patches, which spans 11 query tiles of 128 rows with a partial last one, and with a 1 MiB L2 (this
 * machine's) 3 key blocks of 512 with a partial last one; neither is a multiple. The production (fused) tower's
 * merged tokens must equal the same graph emitted with fullAttention 'explicit' (the whole [1, H, N, N] score
 * tensor, the form the parity tests checked against HF before) within the parity tests' 1e-4 relative tolerance.
 * The weights are scaled so that attention is far from uniform (scores with a standard deviation near 1), and a
 * control checks that the comparison can see the partial tiles: redrawing only the last 268 patches moves the
 * first 256 tokens (which reach those patches through attention alone) by far more than the tolerance.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { relativeError } from '../../helpers/image-text.js';
import * as ort from 'onnxruntime-node';
import {
  SafetensorsCheckpoint,
  writeSafetensors,
  type WritableTensor,
} from '../../../src/model/checkpoint/safetensors.js';
import { VisionTower } from '../../../src/model/vision/tower.js';
import { ensureCachedVisionModel, VISION_MODEL_FILE } from '../../../src/model/cache/vision-cache.js';
import { emitQwenVisionGraph, qwenVisionWeightSources } from '../../../src/model/graph/vision-qwen.js';
import { qwenVisionFeeds } from '../../../src/model/vision/qwen-tower-feeds.js';
import { visionSpecFromConfig } from '../../../src/model/families/vision-config.js';
import type { QwenVisionSpec } from '../../../src/model/families/types.js';
import { Rng } from '../../../src/util/rng.js';

const TOLERANCE = 1e-4;
const GRID: [number, number, number] = [1, 34, 38];
const VISION_CONFIG = {
  depth: 2,
  embed_dim: 128,
  num_heads: 2,
  mlp_ratio: 2,
  hidden_size: 32,
  hidden_act: 'quick_gelu',
  in_channels: 3,
  patch_size: 2,
  temporal_patch_size: 2,
  spatial_merge_size: 2,
  model_type: 'qwen2_vl_vision',
};

let root: string;
let modelDir: string;
let spec: QwenVisionSpec;
beforeAll(() => {
  root = fs.mkdtempSync(path.join(os.tmpdir(), 'arm-fused-attn-'));
  modelDir = path.join(root, 'model');
  fs.mkdirSync(modelDir);
  const config = {
    architectures: ['Qwen2VLForConditionalGeneration'],
    model_type: 'qwen2_vl',
    vision_config: VISION_CONFIG,
  };
  fs.writeFileSync(path.join(modelDir, 'config.json'), JSON.stringify(config));
  spec = visionSpecFromConfig(config, 'config.json') as QwenVisionSpec;
  writeSafetensors(path.join(modelDir, 'model.safetensors'), randomWeights());
});
afterAll(() => {
  fs.rmSync(root, { recursive: true, force: true });
});

/**
 * Qwen2-VL vision weights under `visual.`: norms 1 ± 0.1, q/k/v rows with std 0.1 (sharp attention), the rest
 * 0.05.
 */
function randomWeights(): WritableTensor[] {
  const {
    hiddenSize: D,
    intermediateSize: F,
    outHiddenSize: O,
    inChannels: C,
    temporalPatchSize: T,
    patchSize: P,
  } = spec;
  const M = D * spec.mergeSize ** 2;
  const shapes: [string, number[]][] = [['visual.patch_embed.proj.weight', [D, C, T, P, P]]];
  for (let l = 0; l < spec.depth; l++) {
    const b = `visual.blocks.${l}`;
    shapes.push(
      [`${b}.norm1.weight`, [D]],
      [`${b}.norm1.bias`, [D]],
      [`${b}.norm2.weight`, [D]],
      [`${b}.norm2.bias`, [D]],
      [`${b}.attn.qkv.weight`, [3 * D, D]],
      [`${b}.attn.qkv.bias`, [3 * D]],
      [`${b}.attn.proj.weight`, [D, D]],
      [`${b}.attn.proj.bias`, [D]],
      [`${b}.mlp.fc1.weight`, [F, D]],
      [`${b}.mlp.fc1.bias`, [F]],
      [`${b}.mlp.fc2.weight`, [D, F]],
      [`${b}.mlp.fc2.bias`, [D]],
    );
  }
  shapes.push(
    ['visual.merger.ln_q.weight', [D]],
    ['visual.merger.ln_q.bias', [D]],
    ['visual.merger.mlp.0.weight', [M, M]],
    ['visual.merger.mlp.0.bias', [M]],
    ['visual.merger.mlp.2.weight', [O, M]],
    ['visual.merger.mlp.2.bias', [O]],
  );
  const rng = new Rng(11);
  return shapes.map(([name, shape]) => {
    const n = shape.reduce((a, b) => a * b, 1);
    const isNorm = /norm\d\.weight$|ln_q\.weight$/.test(name);
    const std = name.includes('attn.qkv') ? 0.1 : 0.05;
    const data = Float32Array.from({ length: n }, () => (isNorm ? 1 : 0) + (isNorm ? 0.1 : std) * rng.normal());
    return { name, shape, dtype: 'F32', bytes: new Uint8Array(data.buffer) };
  });
}

function randomPixels(): Float32Array {
  const rng = new Rng(5);
  const K = spec.inChannels * spec.temporalPatchSize * spec.patchSize * spec.patchSize;
  return Float32Array.from({ length: GRID[1] * GRID[2] * K }, () => rng.normal());
}

/** The same tower emitted with the whole-score-tensor attention, run on the same pixels. */
async function explicitTokens(pixels: Float32Array): Promise<Float32Array> {
  const ckpt = SafetensorsCheckpoint.open(modelDir);
  let dir: string;
  try {
    dir = ensureCachedVisionModel({
      cacheDir: path.join(root, 'explicit'),
      key: 'explicit',
      ckpt,
      sources: qwenVisionWeightSources(spec, 'visual.'),
      doc: 'explicit',
      metadata: {},
      emit: (weight) => emitQwenVisionGraph(spec, weight, { fullAttention: 'explicit' }),
    }).dir;
  } finally {
    ckpt.close();
  }
  const session = await ort.InferenceSession.create(path.join(dir, VISION_MODEL_FILE), {
    intraOpNumThreads: 2,
    interOpNumThreads: 1,
  });
  try {
    const N = GRID[1] * GRID[2];
    const f = qwenVisionFeeds(spec, GRID);
    const out = await session.run({
      pixel_values: new ort.Tensor('float32', pixels, [N, pixels.length / N]),
      patch_positions: new ort.Tensor('int64', f.patchPositions, [N, 2]),
    });
    return out['image_embeds']!.data as Float32Array;
  } finally {
    await session.release();
  }
}

describe('Qwen vision full attention, fused in flash-attention tiles', () => {
  it(`equals whole-score attention within ${TOLERANCE} relative on ${GRID[1]}×${GRID[2]} patches`, async () => {
    const N = GRID[1] * GRID[2],
      O = spec.outHiddenSize;
    const pixels = randomPixels();
    // The last 268 patches (the partial last key block, which holds the partial last query tile) redrawn.
    const K = pixels.length / N;
    const tail = Float32Array.from(pixels);
    const rng = new Rng(9);
    for (let i = 1024 * K; i < tail.length; i++) tail[i] = rng.normal();
    const tower = await VisionTower.load(modelDir, { cacheDir: path.join(root, 'cache'), threads: 2 });
    let fused: Float32Array, fusedTail: Float32Array;
    try {
      const graph = fs.readFileSync(path.join(tower.info.cacheEntry, VISION_MODEL_FILE));
      expect(graph.includes('MultiHeadAttention')).toBe(true); // the production graph is the fused one
      const out = await tower.runQwen(pixels, GRID);
      expect(out.dims).toEqual([N / 4, O]);
      fused = out.embeddings;
      fusedTail = (await tower.runQwen(tail, GRID)).embeddings;
    } finally {
      await tower.release();
    }
    const reference = await explicitTokens(pixels);
    const err = relativeError(fused, reference);
    console.log(`fused vs explicit full attention, N = ${N}: max |diff| / max |ref| = ${err.toExponential(2)}`);
    expect(err).toBeLessThan(TOLERANCE);
    // Control: the first 256 tokens (patches 0…1023) see the last key block through attention alone, far above
    // the tolerance, so a kernel that dropped or misweighted that partial block could not pass the comparison.
    const head = (t: Float32Array) => t.subarray(0, 256 * O);
    expect(relativeError(head(fusedTail), head(reference))).toBeGreaterThan(100 * TOLERANCE);
  }, 120_000);
});
