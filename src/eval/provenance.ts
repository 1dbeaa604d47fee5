/**
 * What a reader needs to reproduce an evaluation, recorded in results.json and shown at the top of its reports:
 * the command line, the package version, the model and its weights hash, the judge template's text, the seeds, and
 * the dataset's title and hash.
 */
import fs from 'node:fs';
import { createHash } from 'node:crypto';
import type { Decoder } from '../model/decoder.js';
import type { PairExample } from '../data/examples.js';
import { zeroShotRM } from '../arm/fit.js';
import type { MethodOptions } from './methods.js';

export interface Provenance {
  /** The command line (`arm eval …`), when the run came from the CLI; null from the library. */
  command: string | null;
  /** activation-rm's package version. */
  version: string;
  /** The model as given, and the sha256 over its weight files' contents (null when no method read a model). */
  model: { id: string; weightsSha256: string | null };
  /** The judge template the model-reading methods rendered (null when no method read a model). */
  template: { kind: string; text: string; chat: boolean } | null;
  seeds: number[];
  /**
   * `title`: the dataset as named on the command line; `sha256`: of the pairs compared (ids, prompts, responses,
   * in order, after duplicates were dropped), so the same pairs from another file format hash the same.
   */
  dataset: { title: string; sha256: string; pairs: number };
}

/** The package's version, read from its package.json (two folders above this module in src/ and in dist/). */
export function packageVersion(): string {
  try {
    const pkg = JSON.parse(fs.readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as {
      version?: unknown;
    };
    return typeof pkg.version === 'string' ? pkg.version : 'unknown';
  } catch {
    return 'unknown';
  }
}

/** The sha256 of the compared pairs: ids, prompts and responses in order. */
const pairsSha256 = (pairs: PairExample[]) =>
  createHash('sha256')
    .update(JSON.stringify(pairs.map((p) => [p.id, p.prompt, p.chosen, p.rejected])))
    .digest('hex');

/** The run's provenance; `command` and `title` come from the caller (the CLI knows them). */
export function provenanceOf(
  decoder: Decoder | null,
  pairs: PairExample[],
  run: { command?: string; title: string; modelId: string; seeds: number[]; method: MethodOptions },
): Provenance {
  const template = decoder
    ? zeroShotRM(decoder, { ...run.method.fit, batchSize: run.method.batchSize, maxLength: run.method.maxLength })
        .criterion.meta.template
    : null;
  return {
    command: run.command ?? null,
    version: packageVersion(),
    model: { id: run.modelId, weightsSha256: decoder?.info.weightsFingerprint || null },
    template: template ? { kind: template.kind, text: template.text, chat: template.chat } : null,
    seeds: run.seeds,
    dataset: { title: run.title, sha256: pairsSha256(pairs), pairs: pairs.length },
  };
}
