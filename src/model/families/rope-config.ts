/**
 * config.json's rotary-embedding fields → RopeSpec, the rotary dimension and M-RoPE's frequency rows. Reads
 * both spellings (classic `rope_theta` + `rope_scaling`, transformers v5 `rope_parameters`, Gemma 3's per
 * layer-type entries). The maths on the parsed values (inverse frequencies, the rotation) is the graph's:
 * src/model/graph/rope.ts.
 */
import { ModelError } from '../errors.js';
import { isObject, kind, optionalPositive, type RawConfig } from './config-fields.js';
import type { RopeSpec } from './types.js';

/** Both spellings: classic `rope_theta` + `rope_scaling`, and transformers v5 `rope_parameters`. */
export function parseRope(config: RawConfig, file: string, maxPositions: number): RopeSpec {
  const key =
    config.rope_parameters !== undefined && config.rope_parameters !== null ? 'rope_parameters' : 'rope_scaling';
  const raw = config[key] ?? null;
  if (raw !== null && !isObject(raw))
    throw new ModelError(`${file}: field "${key}" must be an object or null, got ${kind(raw)}`);
  // v5 Gemma 3 keys the parameters by layer type; the global layers' entry is this spec's `rope`.
  if (raw !== null && isObject(raw.full_attention))
    return ropeFrom(raw.full_attention, `${key}.full_attention`, config, file, maxPositions);
  return ropeFrom(raw ?? {}, key, config, file, maxPositions);
}

/** One RoPE parameter object; a number missing there comes from the config's top level, else a default. */
function ropeFrom(
  params: RawConfig,
  key: string,
  config: RawConfig,
  file: string,
  maxPositions: number,
  thetaFallback?: number,
): RopeSpec {
  const positive = (name: string, fallback: number, where: 'params' | 'either' = 'params'): number => {
    const inParams = params[name] !== undefined && params[name] !== null;
    const v = inParams ? params[name] : where === 'either' ? (config[name] ?? fallback) : fallback;
    if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0) {
      const at = inParams ? `${key}.${name}` : name;
      throw new ModelError(`${file}: field "${at}" must be a positive finite number, got ${JSON.stringify(v)}`);
    }
    return v;
  };
  const theta =
    thetaFallback === undefined ? positive('rope_theta', 10000, 'either') : positive('rope_theta', thetaFallback);
  const rawType = params.rope_type ?? params.type ?? 'default';
  if (rawType !== 'default' && rawType !== 'linear' && rawType !== 'llama3') {
    throw new ModelError(
      `${file}: rope type ${JSON.stringify(rawType)} is not supported; supported: default, linear, llama3`,
    );
  }
  return {
    theta,
    type: rawType,
    factor: positive('factor', 1),
    lowFreqFactor: positive('low_freq_factor', 1),
    highFreqFactor: positive('high_freq_factor', 4),
    originalMaxPositions: positive('original_max_position_embeddings', maxPositions),
  };
}

/**
 * Gemma 3's sliding layers: v5 `rope_parameters.sliding_attention`, else the older `rope_local_base_freq`
 * (default 10000) with plain RoPE — rope_scaling applies to the global layers only.
 */
export function gemma3SlidingRope(config: RawConfig, file: string, maxPositions: number): RopeSpec {
  const params = config.rope_parameters;
  if (isObject(params) && isObject(params.sliding_attention))
    return ropeFrom(params.sliding_attention, 'rope_parameters.sliding_attention', config, file, maxPositions);
  const base = optionalPositive(config, 'rope_local_base_freq', 10000, file)!;
  return ropeFrom({}, 'rope_local_base_freq', config, file, maxPositions, base);
}

/**
 * How many leading dimensions of a head RoPE rotates: int(head_dim · partial_rotary_factor), as transformers
 * computes it; the factor sits in rope_parameters (v5) or at the top level.
 */
export function parseRotaryDim(
  config: RawConfig,
  file: string,
  head: { headDim: number; partialRotary: boolean },
): number {
  const { headDim, partialRotary } = head;
  const params = isObject(config.rope_parameters) ? config.rope_parameters : {};
  const key =
    params.partial_rotary_factor !== undefined && params.partial_rotary_factor !== null
      ? 'rope_parameters.partial_rotary_factor'
      : 'partial_rotary_factor';
  const factor = key === 'partial_rotary_factor' ? config.partial_rotary_factor : params.partial_rotary_factor;
  if (factor === undefined || factor === null || factor === 1) return headDim;
  if (!partialRotary)
    throw new ModelError(
      `${file}: ${key} ${JSON.stringify(factor)} is not supported ` +
        `for model_type ${JSON.stringify(config.model_type)} (only 1)`,
    );
  if (typeof factor !== 'number' || !(factor > 0 && factor <= 1))
    throw new ModelError(`${file}: field "${key}" must be a number in (0, 1], got ${JSON.stringify(factor)}`);
  const dim = Math.floor(headDim * factor);
  if (dim < 2 || dim % 2 !== 0)
    throw new ModelError(
      `${file}: ${key} ${factor} × head_dim ${headDim} gives ${dim} rotary dimensions; expected an even number ≥ 2`,
    );
  return dim;
}

export interface MropeLayout {
  /** `mrope_section`: rotary frequencies per row [temporal, height, width]; they sum to head_dim / 2. */
  readonly sections: readonly [number, number, number];
  /** Qwen3-VL: frequencies cycle T, H, W, T, H, W… instead of contiguous T…, H…, W… blocks. */
  readonly interleaved: boolean;
}

/** M-RoPE settings from a config.json (`text_config` or top level; `rope_parameters` (v5) or `rope_scaling`). */
export function mropeLayout(config: Record<string, unknown>): MropeLayout | undefined {
  const text = (config['text_config'] ?? config) as Record<string, unknown>;
  for (const holder of [text, config]) {
    for (const key of ['rope_parameters', 'rope_scaling']) {
      const rope = holder[key] as Record<string, unknown> | undefined | null;
      const sections = rope?.['mrope_section'];
      if (sections === undefined) continue;
      if (!Array.isArray(sections) || sections.length !== 3 || !sections.every((s) => Number.isInteger(s) && s >= 0)) {
        throw new ModelError(
          `config.json: "${key}.mrope_section" must be three non-negative integers, got ${JSON.stringify(sections)}`,
        );
      }
      return { sections: [sections[0], sections[1], sections[2]], interleaved: rope?.['mrope_interleaved'] === true };
    }
  }
  return undefined;
}

/**
 * For each of the `halfDim` rotary frequencies (head_dim / 2, frequency j has inverse frequency θ^(−2j/d)),
 * the position row that drives it: 0 temporal, 1 height, 2 width. The rotary angle of frequency j at a token is
 * `positions[row[j]] · invFreq[j]`, applied to both halves of the head as in plain RoPE.
 *  - contiguous (Qwen2-VL, Qwen2.5-VL): the first sections[0] frequencies follow t, the next sections[1] h, …;
 *  - interleaved (Qwen3-VL): j % 3 == 1 follows h while j < 3·sections[1], j % 3 == 2 follows w while
 *    j < 3·sections[2], every other frequency follows t.
 */
export function mropeFrequencyRows(halfDim: number, layout: MropeLayout): Uint8Array {
  const [st, sh, sw] = layout.sections;
  if (st + sh + sw !== halfDim)
    throw new ModelError(`mrope_section [${st}, ${sh}, ${sw}] must sum to head_dim / 2 = ${halfDim}`);
  const rows = new Uint8Array(halfDim);
  for (let j = 0; j < halfDim; j++) {
    if (layout.interleaved) rows[j] = j % 3 === 1 && j < 3 * sh ? 1 : j % 3 === 2 && j < 3 * sw ? 2 : 0;
    else rows[j] = j < st ? 0 : j < st + sh ? 1 : 2;
  }
  return rows;
}
