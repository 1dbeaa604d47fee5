/**
 * Readers of single config.json fields, shared by the text (config.ts), RoPE (rope-config.ts), family-table
 * (tables.ts) and vision-tower (vision-config.ts) parsers and the image processors: each checks type and range
 * and names the file and field in its error, so odd input fails here rather than as NaN scores later.
 */
import { ModelError } from '../errors.js';
import type { LayerType } from './types.js';

/** A parsed config.json object (or a nested one: text_config, vision_config, rope_parameters). */
export type RawConfig = Record<string, unknown>;

export function isObject(v: unknown): v is RawConfig {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** How an unexpected value reads in an error: `null`, `an array`, `number 3`, `object`. */
export function kind(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  return `${typeof v}${typeof v === 'object' ? '' : ` ${JSON.stringify(v)}`}`;
}

/**
 * A positive number (an integer when `integer`); absent or null gives `fallback`, or an error when there is none.
 */
export function positiveField(
  config: RawConfig,
  key: string,
  fallback: number | undefined,
  opts: { integer: boolean; file: string },
): number {
  const v = config[key];
  if (v === undefined || v === null) {
    if (fallback !== undefined) return fallback;
    throw new ModelError(`${opts.file}: field "${key}" is missing`);
  }
  const ok = typeof v === 'number' && Number.isFinite(v) && v > 0 && (!opts.integer || Number.isInteger(v));
  if (!ok)
    throw new ModelError(
      `${opts.file}: field "${key}" must be a positive ${opts.integer ? 'integer' : 'finite number'}, ` +
        `got ${JSON.stringify(v)}`,
    );
  return v as number;
}

/** A number the config may leave out (then `fallback`, transformers' class default) or set to null (none). */
export function optionalPositive(config: RawConfig, key: string, fallback: number | null, file: string): number | null {
  const v = config[key];
  if (v === undefined) return fallback;
  if (v === null) return null;
  if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0)
    throw new ModelError(`${file}: field "${key}" must be a positive finite number or null, got ${JSON.stringify(v)}`);
  return v;
}

/** `layer_types` as written (v5 configs), else the family's pattern. */
export function layerTypesFrom(
  config: RawConfig,
  numLayers: number,
  file: string,
  pattern: (layer: number) => LayerType,
): LayerType[] {
  const raw = config.layer_types;
  if (raw === undefined || raw === null) return Array.from({ length: numLayers }, (_, l) => pattern(l));
  const names: Record<string, LayerType> = { full_attention: 'full', sliding_attention: 'sliding' };
  if (
    !Array.isArray(raw) ||
    raw.length !== numLayers ||
    !raw.every((t) => typeof t === 'string' && Object.hasOwn(names, t))
  ) {
    throw new ModelError(
      `${file}: field "layer_types" must list "full_attention" or "sliding_attention" for each of the ` +
        `${numLayers} layers, got ${JSON.stringify(raw).slice(0, 120)}`,
    );
  }
  return raw.map((t) => names[t as string]!);
}

/** A number, or `fallback` when absent or null (an error when there is none); `where` names the source. */
export function readNumber(json: RawConfig, key: string, fallback: number | undefined, where: string): number {
  const v = json[key];
  if (v === undefined || v === null) {
    if (fallback === undefined) throw new ModelError(`${where}: "${key}" is missing`);
    return fallback;
  }
  if (typeof v !== 'number' || !Number.isFinite(v))
    throw new ModelError(`${where}: "${key}" must be a number, got ${JSON.stringify(v)}`);
  return v;
}

/** readNumber for a positive integer. */
export function readPositiveInt(json: RawConfig, key: string, fallback: number | undefined, where: string): number {
  const v = readNumber(json, key, fallback, where);
  if (!Number.isInteger(v) || v < 1) throw new ModelError(`${where}: "${key}" must be a positive integer, got ${v}`);
  return v;
}
