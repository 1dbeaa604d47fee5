/**
 * The language side of image-text checkpoints without running a model: config.json → ModelSpec (text_config or
 * the older flat configs, M-RoPE rows, DeepStack layers, weight spellings) and LLaVA-OneVision's feature packing
 * (the fixtures never shrink a feature map, so the bilinear path is checked here on maps with a known answer).
 */
import { describe, expect, it } from 'vitest';
import { specFromConfig } from '../../../src/model/families/config.js';
import { languageModelSpelling, textWeightName } from '../../../src/model/families/weights.js';
import { bilinearResize, packLlavaOnevisionFeatures } from '../../../src/model/vision/llava-onevision-features.js';
import {
  llavaOnevisionLayout,
  type LlavaOnevisionFeatureConfig,
} from '../../../src/model/vision/llava-onevision-processor.js';

const TEXT = {
  hidden_size: 64,
  intermediate_size: 96,
  num_hidden_layers: 2,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  vocab_size: 512,
  rms_norm_eps: 1e-6,
  max_position_embeddings: 256,
};

describe("image-text config.json → the language model's spec", () => {
  it('Qwen2.5-VL (transformers 5: text_config, rope_parameters.mrope_section): qwen2, contiguous M-RoPE rows', () => {
    const spec = specFromConfig({
      model_type: 'qwen2_5_vl',
      text_config: {
        ...TEXT,
        model_type: 'qwen2_5_vl_text',
        rope_parameters: { rope_type: 'default', rope_theta: 10000, mrope_section: [2, 3, 3] },
      },
    });
    expect(spec.family).toBe('qwen2');
    expect(spec.qkvBias).toBe(true);
    expect(spec.imageText).toMatchObject({
      modelType: 'qwen2_5_vl',
      mropeRows: [0, 0, 1, 1, 1, 2, 2, 2],
      deepstackLayers: 0,
    });
  });

  it('older hub Qwen2-VL (flat config, rope_scaling {type: "mrope"}, tie at the top level)', () => {
    const spec = specFromConfig({
      ...TEXT,
      model_type: 'qwen2_vl',
      tie_word_embeddings: true,
      rope_theta: 1e6,
      rope_scaling: { type: 'mrope', mrope_section: [2, 3, 3] },
      vision_config: {},
    });
    expect(spec.family).toBe('qwen2');
    expect(spec.rope.theta).toBe(1e6);
    expect(spec.tieWordEmbeddings).toBe(true);
    expect(spec.imageText!.mropeRows).toEqual([0, 0, 1, 1, 1, 2, 2, 2]);
  });

  it('Qwen3-VL: qwen3 (q/k norm), interleaved rows, one DeepStack layer per deepstack_visual_indexes entry', () => {
    const spec = specFromConfig({
      model_type: 'qwen3_vl',
      vision_config: { deepstack_visual_indexes: [0, 1] },
      text_config: {
        ...TEXT,
        head_dim: 16,
        rope_parameters: { rope_type: 'default', mrope_section: [2, 3, 3], mrope_interleaved: true },
      },
    });
    expect(spec.family).toBe('qwen3');
    expect(spec.qkNorm).toBe(true);
    expect(spec.imageText).toMatchObject({ mropeRows: [0, 1, 2, 0, 1, 2, 0, 1], deepstackLayers: 2 });
  });

  it("LLaVA-OneVision: its text_config's family, plain RoPE (no M-RoPE rows)", () => {
    const spec = specFromConfig({ model_type: 'llava_onevision', text_config: { ...TEXT, model_type: 'qwen2' } });
    expect(spec.family).toBe('qwen2');
    expect(spec.imageText).toMatchObject({ modelType: 'llava_onevision', mropeRows: null, deepstackLayers: 0 });
  });

  it('refusals name the field: no mrope_section, sections not summing to d/2, unknown LLM, M-RoPE + window', () => {
    expect(() => specFromConfig({ model_type: 'qwen2_vl', text_config: { ...TEXT } }, 'c.json')).toThrow(
      /c\.json text_config: "rope_parameters\.mrope_section".*missing/,
    );
    expect(() =>
      specFromConfig({
        model_type: 'qwen2_vl',
        text_config: { ...TEXT, rope_parameters: { mrope_section: [2, 3, 4] } },
      }),
    ).toThrow(/must sum to head_dim \/ 2 = 8/);
    expect(() =>
      specFromConfig({ model_type: 'llava_onevision', text_config: { ...TEXT, model_type: 'gpt2' } }),
    ).toThrow(/model_type "gpt2" is not a supported language model for llava_onevision/);
    expect(() =>
      specFromConfig({
        model_type: 'qwen2_vl',
        text_config: {
          ...TEXT,
          use_sliding_window: true,
          sliding_window: 8,
          rope_parameters: { mrope_section: [2, 3, 3] },
        },
      }),
    ).toThrow(/sliding-window attention with M-RoPE/);
  });

  it('weight spellings: the first whose embed_tokens exists; names map to text names, vision tensors to none', () => {
    const spec = specFromConfig({ model_type: 'llava_onevision', text_config: { ...TEXT, model_type: 'qwen2' } });
    const hub = languageModelSpelling(spec, ['language_model.model.embed_tokens.weight', 'vision_tower.x'], 'dir');
    expect(textWeightName(hub, 'language_model.model.layers.0.mlp.up_proj.weight')).toBe(
      'model.layers.0.mlp.up_proj.weight',
    );
    expect(textWeightName(hub, 'language_model.lm_head.weight')).toBe('lm_head.weight');
    expect(textWeightName(hub, 'vision_tower.x')).toBeNull();
    const v5 = languageModelSpelling(spec, ['model.language_model.embed_tokens.weight'], 'dir');
    expect(textWeightName(v5, 'model.language_model.norm.weight')).toBe('model.norm.weight');
    expect(textWeightName(v5, 'model.vision_tower.x')).toBeNull();
    expect(() => languageModelSpelling(spec, ['x'], 'dir')).toThrow(/dir: no language-model weights/);
  });
});

describe('LLaVA-OneVision feature packing', () => {
  it('bilinear resize (align_corners=False) reproduces a linear map at the sampled points, clamped at edges', () => {
    const [h0, w0] = [3, 5];
    const map = Float32Array.from({ length: h0 * w0 }, (_, i) => 10 * Math.floor(i / w0) + (i % w0));
    const out = bilinearResize(map, h0, w0, 1, 2, 3);
    // rows sample y = 0.25, 1.75; columns x = 1/3, 2, 11/3
    const expected = [0.25, 1.75].flatMap((y) => [1 / 3, 2, 11 / 3].map((x) => 10 * y + x));
    out.forEach((v, i) => expect(v).toBeCloseTo(expected[i]!, 5));
    const up = bilinearResize(Float32Array.of(0, 1), 1, 2, 1, 1, 4); // x = −0.25 → 0, 0.25, 0.75, 1.25 → 1
    expect(Array.from(up)).toEqual([0, 0.25, 0.75, 1]);
  });

  it('base tile, then the grid map cropped (and shrunk) with image_newline after each row', () => {
    const cfg: LlavaOnevisionFeatureConfig = {
      gridPinpoints: [[4, 4]],
      tileSize: 2,
      featuresPerSide: 2,
      maxTiles: undefined,
      dropsClsToken: false,
    };
    // a 2×2 grid of 2×2-feature tiles: map 4×4; a wide image keeps its middle 2 rows
    const layout = llavaOnevisionLayout([1, 4], cfg);
    expect(layout.tileGrid).toEqual([2, 2]);
    expect(layout.crop).toEqual([1, 1, 0, 0]);
    const D = 1,
      n = 4;
    // tile t, feature (py, px) holds 100·t + 10·py + px
    const features = Float32Array.from(
      { length: 5 * n * D },
      (_, i) => 100 * Math.floor(i / n) + 10 * Math.floor((i % n) / 2) + (i % 2),
    );
    const packed = packLlavaOnevisionFeatures(features, [5, n, D], layout, Float32Array.of(-1));
    const gridRow = (y: number) =>
      [0, 1, 2, 3].map((x) => 100 * (1 + 2 * Math.floor(y / 2) + Math.floor(x / 2)) + 10 * (y % 2) + (x % 2));
    expect(Array.from(packed)).toEqual([0, 1, 10, 11, ...gridRow(1), -1, ...gridRow(2), -1]);
    expect(packed.length).toBe(layout.tokenCount);

    const shrinking = llavaOnevisionLayout([4, 4], { ...cfg, gridPinpoints: [[4, 4]], maxTiles: 1 });
    expect(shrinking.interpolated).toBe(true);
    const tiles = 1 + shrinking.tileGrid[0] * shrinking.tileGrid[1];
    const out = packLlavaOnevisionFeatures(
      new Float32Array(tiles * n).fill(3),
      [tiles, n, 1],
      shrinking,
      Float32Array.of(-1),
    );
    expect(out.length).toBe(shrinking.tokenCount);
    expect(Array.from(out.subarray(n)).filter((v) => v === -1)).toHaveLength(shrinking.final[0]);
  });

  it('refuses features that do not fit the layout or a missing image_newline', () => {
    const cfg: LlavaOnevisionFeatureConfig = {
      gridPinpoints: [[2, 4]],
      tileSize: 2,
      featuresPerSide: 2,
      maxTiles: undefined,
      dropsClsToken: false,
    };
    const layout = llavaOnevisionLayout([1, 4], cfg); // base + 1×2 tiles
    expect(() => packLlavaOnevisionFeatures(new Float32Array(8), [2, 4, 1], layout, Float32Array.of(0))).toThrow(
      /2 tiles/,
    );
    expect(() => packLlavaOnevisionFeatures(new Float32Array(12), [3, 4, 1], layout, null)).toThrow(/image_newline/);
  });
});
