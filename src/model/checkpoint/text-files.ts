/**
 * The small text files of a checkpoint (config.json, tokenizer files, chat templates), read as strict UTF-8:
 * bad bytes must not silently become U+FFFD inside a vocabulary or a config. Every failure is a ModelError that
 * names the file and says what was expected there.
 */
import fs from 'node:fs';
import { ModelError } from '../errors.js';

export type JsonObject = Record<string, unknown>;
export const isJsonObject = (x: unknown): x is JsonObject => typeof x === 'object' && x !== null && !Array.isArray(x);

/** The file's text; with `optional`, null when it does not exist. `expected` says what the file should be. */
export function readUtf8File(file: string, expected: string, opts: { optional: true }): string | null;
export function readUtf8File(file: string, expected: string, opts?: { optional?: false }): string;
export function readUtf8File(file: string, expected: string, opts: { optional?: boolean } = {}): string | null {
  let bytes: Buffer;
  try {
    bytes = fs.readFileSync(file);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' && opts.optional) return null;
    const why =
      code === 'ENOENT'
        ? 'missing'
        : code === 'EISDIR'
          ? 'is a directory, not a file'
          : `cannot be read (${code ?? (e as Error).message})`;
    throw new ModelError(`${file}: ${why}; expected ${expected}`);
  }
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch {
    throw new ModelError(`${file}: not valid UTF-8 text; expected ${expected}`);
  }
}

/** A JSON object from the file (null when `optional` and absent). */
export function readJsonObjectFile(
  file: string,
  expected: string,
  opts: { optional?: boolean } = {},
): JsonObject | null {
  const text = opts.optional ? readUtf8File(file, expected, { optional: true }) : readUtf8File(file, expected);
  if (text === null) return null;
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (e) {
    throw new ModelError(`${file}: not valid JSON (${(e as Error).message}); expected ${expected}`);
  }
  if (!isJsonObject(value))
    throw new ModelError(
      `${file}: expected a JSON object, found ` +
        `${Array.isArray(value) ? 'an array' : JSON.stringify(value)?.slice(0, 40)} (${expected})`,
    );
  return value;
}
