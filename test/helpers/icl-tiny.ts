/**
 * icl-tiny, the small judge trained to judge eight criteria in context, and its labelled pairs, as ../shared
 * holds them (models/icl-tiny, data/icl-tiny/pairs.jsonl; one subset per criterion, e.g. resp-first-low).
 */
import fs from 'node:fs';
import path from 'node:path';
import type { PairExample } from '../../src/data/examples.js';
import { datasetOf } from './stories-eval.js';

export const ICL_TINY_MODEL = path.resolve(import.meta.dirname, '../../../shared/models/icl-tiny');
const ICL_TINY_PAIRS = path.resolve(import.meta.dirname, '../../../shared/data/icl-tiny/pairs.jsonl');

/** One row of pairs.jsonl. */
export interface IclTinyRow {
  id: string;
  subset: string;
  prompt: string;
  chosen: string;
  rejected: string;
}

/** The rows of pairs.jsonl in file order; only those of `subsets` when given. */
export function iclTinyRows(subsets?: readonly string[]): IclTinyRow[] {
  const rows = fs
    .readFileSync(ICL_TINY_PAIRS, 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as IclTinyRow);
  return subsets ? rows.filter((r) => subsets.includes(r.subset)) : rows;
}

/** The pairs of `subsets` as the harness reads a dataset file. */
export function iclTinyPairs(subsets: readonly string[]): PairExample[] {
  return datasetOf(iclTinyRows(subsets)) as PairExample[];
}
