/**
 * Vision towers as ONNX graphs against transformers 5.17 on the hf-parity fixtures (../shared/fixtures/hf-parity,
 * README there), fed HF's own pixel_values:
 *  - Qwen2-VL, Qwen2.5-VL (window attention + a full-attention block), Qwen3-VL (interpolated learned
 *    positions): the merged tokens equal `vision_tower_output.image0` (float64) within 1e-4 relative;
 *  - Qwen3-VL's DeepStack features and LLaVA-OneVision's projector output, which the fixtures do not record,
 *    against float64 NumPy references (tools/qwen3_vl_deepstack_reference.py,
 *    tools/llava_onevision_features_reference.py → test/fixtures/vision/*.json) that first reproduce what the
 *    fixtures do record (HF merger output to 2e-8, SigLIP pooled output to 5e-9);
 *  - LLaVA-OneVision: the fixture holds SigLIP's pooled output per tile, which the model does not use; the tower
 *    built with its pooling head must match it (patch embedding, positions, every encoder layer, post-LN).
 * Both weight spellings (transformers-5 `model.visual.*`/`model.vision_tower.*` and the older hub
 * `visual.*`/`vision_tower.vision_model.*`) load, by renaming the fixture keys into a temporary checkpoint.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { relativeError, renamedCheckpoint } from '../../helpers/image-text.js';
import { VisionTower } from '../../../src/model/vision/tower.js';
import { qwenVisionFeeds } from '../../../src/model/vision/qwen-tower-feeds.js';
import { visionSpecFromConfig } from '../../../src/model/families/vision-config.js';
import type { QwenVisionSpec } from '../../../src/model/families/types.js';
import { decodeImage } from '../../../src/model/vision/image.js';
import { loadImageProcessor } from '../../../src/model/vision/processor.js';
import { readReferenceTensors, type ReferenceTensor } from '../../helpers/safetensors-f64.js';

const FIXTURES = path.resolve(import.meta.dirname, '../../../../shared/fixtures/hf-parity');
const present = fs.existsSync(path.join(FIXTURES, 'qwen2_5_vl-tiny'));
const TOLERANCE = 1e-4;

let cacheDir: string;
beforeAll(() => {
  cacheDir = fs.mkdtempSync(path.join(os.tmpdir(), 'arm-vision-'));
});
afterAll(() => {
  fs.rmSync(cacheDir, { recursive: true, force: true });
});

function fixture(name: string) {
  const dir = path.join(FIXTURES, name);
  const tensors = readReferenceTensors(path.join(dir, 'tensors.safetensors'));
  const processor = (JSON.parse(fs.readFileSync(path.join(dir, 'parity.json'), 'utf8')) as { processor: string })
    .processor;
  const get = (key: string): ReferenceTensor => {
    const t = tensors.get(key);
    if (!t) throw new Error(`${name}: no reference tensor ${key}`);
    return t;
  };
  return {
    dir,
    pixels: get(`${processor}.image0.pixel_values`),
    extra: (k: string) => get(`${processor}.image0.${k}`),
    expected: get('vision_tower_output.image0'),
  };
}

describe.runIf(present).each(['qwen2_vl-tiny', 'qwen2_5_vl-tiny', 'qwen3_vl-tiny'])(
  'Qwen vision tower parity: %s',
  (name) => {
    it(`merged tokens match HF within ${TOLERANCE} relative`, async () => {
      const f = fixture(name);
      const grid = Array.from(f.extra('image_grid_thw').values) as [number, number, number];
      const tower = await VisionTower.load(f.dir, { cacheDir, threads: 1 });
      try {
        const out = await tower.runQwen(Float32Array.from(f.pixels.values), grid);
        expect(out.dims).toEqual(f.expected.shape);
        const err = relativeError(out.embeddings, f.expected.values);
        console.log(`${name}: vision tower max |diff| / max |ref| = ${err.toExponential(2)}`);
        expect(err).toBeLessThan(TOLERANCE);
        const spec = tower.spec as QwenVisionSpec;
        expect(out.deepstack.length).toBe(spec.deepstackBlocks.length);
        if (spec.deepstackBlocks.length > 0) {
          // HF's fixture has no DeepStack features: tools/qwen3_vl_deepstack_reference.py computes them in float64
          // (its main merger output matches HF's to 2e-8).
          const golden = JSON.parse(
            fs.readFileSync(
              path.resolve(import.meta.dirname, '../../fixtures/vision/qwen3_vl-tiny-deepstack.json'),
              'utf8',
            ),
          ) as { deepstack: number[][] };
          out.deepstack.forEach((ds, i) => {
            const dsErr = relativeError(ds, golden.deepstack[i]!);
            console.log(`${name}: DeepStack ${i} max |diff| / max |ref| = ${dsErr.toExponential(2)}`);
            expect(dsErr).toBeLessThan(TOLERANCE);
          });
        }
      } finally {
        await tower.release();
      }
    });

    it('loads the other weight spelling (model.visual.* ↔ visual.*) to the same output', async () => {
      const f = fixture(name);
      const grid = Array.from(f.extra('image_grid_thw').values) as [number, number, number];
      const swap = (n: string) =>
        n.startsWith('model.visual.') ? n.slice('model.'.length) : n.startsWith('visual.') ? `model.${n}` : n;
      const dir = renamedCheckpoint(f.dir, swap);
      try {
        const tower = await VisionTower.load(dir, { cacheDir, threads: 1 });
        try {
          const original = fs.readFileSync(path.join(f.dir, 'model.safetensors')).includes('"model.visual.')
            ? 'model.visual.'
            : 'visual.';
          expect(tower.info.prefix).toBe(original === 'visual.' ? 'model.visual.' : 'visual.');
          const out = await tower.runQwen(Float32Array.from(f.pixels.values), grid);
          expect(relativeError(out.embeddings, f.expected.values)).toBeLessThan(TOLERANCE);
        } finally {
          await tower.release();
        }
      } finally {
        fs.rmSync(dir, { recursive: true, force: true });
      }
    });
  },
);

describe.runIf(present)('Qwen2.5-VL window attention bites on the fixture', () => {
  it('the same weights with every block attending over the whole image miss HF by more than tolerance', async () => {
    const f = fixture('qwen2_5_vl-tiny');
    const grid = Array.from(f.extra('image_grid_thw').values) as [number, number, number];
    const dir = renamedCheckpoint(f.dir, (n) => n);
    try {
      const config = JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8')) as {
        vision_config: Record<string, unknown>;
      };
      config.vision_config['fullatt_block_indexes'] = [0, 1];
      fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(config));
      const tower = await VisionTower.load(dir, { cacheDir, threads: 1 });
      try {
        const out = await tower.runQwen(Float32Array.from(f.pixels.values), grid);
        expect(relativeError(out.embeddings, f.expected.values)).toBeGreaterThan(100 * TOLERANCE);
      } finally {
        await tower.release();
      }
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe.runIf(present)('LLaVA-OneVision vision tower (SigLIP + projector)', () => {
  const name = 'llava_onevision-tiny';

  it(`SigLIP pooled output per tile = HF, projector features = float64, within ${TOLERANCE} relative`, async () => {
    const f = fixture(name);
    const [, tiles, C, S] = f.pixels.shape as [number, number, number, number];
    const tower = await VisionTower.load(f.dir, { cacheDir, threads: 1, pooledOutput: true });
    try {
      const out = await tower.runSiglip(Float32Array.from(f.pixels.values), tiles);
      expect(C).toBe(3);
      expect(out.pooled).toBeDefined();
      const err = relativeError(out.pooled!, f.expected.values);
      console.log(
        `${name}: pooled output max |diff| / max |ref| = ${err.toExponential(2)} (${tiles} tiles of ${S}×${S})`,
      );
      expect(err).toBeLessThan(TOLERANCE);
      expect(out.dims).toEqual([tiles, (S / 14) ** 2, 64]);
      expect(tower.imageNewline?.length).toBe(64);
      const golden = JSON.parse(
        fs.readFileSync(
          path.resolve(import.meta.dirname, '../../fixtures/vision/llava_onevision-tiny-features.json'),
          'utf8',
        ),
      ) as { shape: number[]; features: number[] };
      expect(out.dims).toEqual(golden.shape);
      const featErr = relativeError(out.features, golden.features);
      console.log(`${name}: projector features max |diff| / max |ref| = ${featErr.toExponential(2)}`);
      expect(featErr).toBeLessThan(TOLERANCE);
    } finally {
      await tower.release();
    }
  });

  it('without the pooling head (as the model runs): same features; loads vision_tower.vision_model.*', async () => {
    const f = fixture(name);
    const tiles = f.pixels.shape[1]!;
    const pixels = Float32Array.from(f.pixels.values);
    const withHead = await VisionTower.load(f.dir, { cacheDir, threads: 1, pooledOutput: true });
    const reference = (await withHead.runSiglip(pixels, tiles)).features;
    await withHead.release();
    const dirs = [
      renamedCheckpoint(f.dir, (n) => n.replace(/^vision_tower\./, 'vision_tower.vision_model.')),
      renamedCheckpoint(f.dir, (n) => n.replace(/^(vision_tower|multi_modal_projector|image_newline)/, 'model.$1')),
    ];
    try {
      for (const [i, dir] of dirs.entries()) {
        const tower = await VisionTower.load(dir, { cacheDir, threads: 1 });
        try {
          expect(tower.info.prefix).toBe(i === 0 ? 'vision_tower.vision_model.' : 'model.vision_tower.');
          const out = await tower.runSiglip(pixels, tiles);
          expect(out.pooled).toBeUndefined();
          expect(relativeError(out.features, reference)).toBeLessThan(1e-6);
          expect(tower.imageNewline?.length).toBe(64);
        } finally {
          await tower.release();
        }
      }
    } finally {
      for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
    }
  });
});

describe.runIf(present)('Qwen vision feeds', () => {
  const spec = (name: string) =>
    visionSpecFromConfig(
      JSON.parse(fs.readFileSync(path.join(FIXTURES, name, 'config.json'), 'utf8')),
    ) as QwenVisionSpec;

  it('Qwen2.5-VL windows: each patch in exactly one window of whole merged units, as get_window_index groups', () => {
    const s = spec('qwen2_5_vl-tiny'); // window 56 px = 2×2 merged units of 2×2 patches
    const f = qwenVisionFeeds(s, [1, 6, 10]); // 3×5 merged units → windows of 2×2, 2×2, 2×1, 1×2, 1×2, 1×1
    const w = f.window!;
    expect(w.windows).toBe(6);
    expect(w.windowLen).toBe(16);
    const seen = new Set<number>();
    for (let i = 0; i < w.windows * w.windowLen; i++) {
      if (w.keyBias[i] === 0) {
        const row = Number(w.gather[i]);
        expect(seen.has(row)).toBe(false);
        seen.add(row);
        expect(Number(w.scatter[row])).toBe(i);
      }
    }
    expect(seen.size).toBe(60);
    // Window sizes in rows: 16, 16, 8, 8, 8, 4.
    const sizes = Array.from(
      { length: w.windows },
      (_, k) => w.keyBias.subarray(k * 16, (k + 1) * 16).filter((b) => b === 0).length,
    );
    expect(sizes).toEqual([16, 16, 8, 8, 8, 4]);
  });

  it('Qwen3-VL position interpolation: corners weigh 1 in total; a grid the size of the table picks its rows', () => {
    const s = spec('qwen3_vl-tiny'); // 64 learned positions = 8×8
    const f = qwenVisionFeeds(s, [1, 8, 8]).posEmbed!;
    for (let i = 0; i < 64; i++) {
      const wsum = f.weight[4 * i]! + f.weight[4 * i + 1]! + f.weight[4 * i + 2]! + f.weight[4 * i + 3]!;
      expect(wsum).toBeCloseTo(1, 6);
    }
    // Row 1 in merger order is patch (0, 1): table row 1 with weight 1.
    expect(Number(f.index[4])).toBe(1);
    expect(f.weight[4]).toBeCloseTo(1, 6);
  });

  it('refuses video grids (several temporal patches)', () => {
    expect(() => qwenVisionFeeds(spec('qwen2_vl-tiny'), [2, 4, 4])).toThrow(/still images/);
  });
});

describe.runIf(present)('VisionTower from the PNG, cache and refusals', () => {
  it.each(['qwen2_5_vl-tiny', 'llava_onevision-tiny'])(
    '%s: our preprocessing → run() equals the run on HF pixel_values; the second load reuses the cache',
    async (name) => {
      const f = fixture(name);
      const processor = loadImageProcessor(f.dir);
      const image = processor.preprocess(await decodeImage(path.join(f.dir, 'image0.png')));
      const first = await VisionTower.load(f.dir, { cacheDir, threads: 1 });
      await first.release();
      const tower = await VisionTower.load(f.dir, { cacheDir, threads: 1 });
      try {
        expect(tower.info.built).toBe(false);
        expect(tower.info.visionConfigHash).toMatch(/^[0-9a-f]{64}$/);
        const ours = await tower.run(image);
        const theirs =
          image.family === 'qwen-vl'
            ? (await tower.runQwen(Float32Array.from(f.pixels.values), image.gridThw)).embeddings
            : (await tower.runSiglip(Float32Array.from(f.pixels.values), f.pixels.shape[1]!)).features;
        const got = ours.kind === 'qwen' ? ours.embeddings : ours.features;
        expect(relativeError(got, theirs)).toBeLessThan(1e-6);
        if (ours.kind === 'qwen') expect(ours.dims[0]).toBe(image.tokenCount);
      } finally {
        await tower.release();
      }
    },
  );

  it('refuses a checkpoint without vision weights, a mis-shaped tensor, pixels that do not fit the grid', async () => {
    const f = fixture('qwen2_vl-tiny');
    const noVision = renamedCheckpoint(f.dir, (n) => n.replace(/^visual\./, 'vision.'));
    const badShape = renamedCheckpoint(f.dir, (n) => n);
    try {
      await expect(VisionTower.load(noVision, { cacheDir, threads: 1 })).rejects.toThrow(
        new RegExp(
          'no vision tower weights \\(looked for "model\\.visual\\.patch_embed\\.proj\\.weight", ' +
            '"visual\\.patch_embed\\.proj\\.weight"\\)',
        ),
      );
      const config = JSON.parse(fs.readFileSync(path.join(badShape, 'config.json'), 'utf8')) as {
        vision_config: Record<string, unknown>;
      };
      config.vision_config['hidden_size'] = 48; // the merger's output width
      fs.writeFileSync(path.join(badShape, 'config.json'), JSON.stringify(config));
      await expect(VisionTower.load(badShape, { cacheDir, threads: 1 })).rejects.toThrow(
        /tensor "visual\.merger\.mlp\.2\.weight" has shape \[64,128\] but config\.json implies \[48,128\]/,
      );
    } finally {
      fs.rmSync(noVision, { recursive: true, force: true });
      fs.rmSync(badShape, { recursive: true, force: true });
    }
    const tower = await VisionTower.load(f.dir, { cacheDir, threads: 1 });
    try {
      await expect(tower.runQwen(new Float32Array(10), [1, 4, 6])).rejects.toThrow(
        /pixel_values holds 10 values; grid 1×4×6/,
      );
      await expect(tower.runSiglip(new Float32Array(10), 1)).rejects.toThrow(/takes a patch grid, not tiles/);
    } finally {
      await tower.release();
    }
  });

  it('refuses a text-only config', () => {
    expect(() => visionSpecFromConfig({ model_type: 'qwen2' })).toThrow(/"vision_config" is missing/);
    expect(() => visionSpecFromConfig({ model_type: 'mllama', vision_config: {} })).toThrow(
      /no supported vision tower/,
    );
  });
});
