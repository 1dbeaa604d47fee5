/**
 * PreferenceHack (Chai et al. 2025, arXiv 2507.01368; released on the hub as `all.jsonl`, `helpful.jsonl`,
 * `length.jsonl`, `positivity.jsonl`, and a format split where present): pairs whose rejected answer is wrong
 * but carries a bias (longer, markdown-formatted, upbeat) and whose chosen answer is correct and plain; per
 * split 80 few-shot pairs and 920 test pairs.
 *
 * Its fields are not documented anywhere we could read, so the reader accepts the usual names for each role
 * (below) and fails naming the fields it found. The few-shot/test split comes from a split field when the rows
 * carry one, else from the order of the file (the first 80 rows are the few-shot pairs), and a file's subset is
 * `preferencehack-<file name>` unless its rows name their own.
 */
import path from 'node:path';
import {
  DataError,
  jsonlLines,
  MAX_LINE_BYTES,
  type ChatTurn,
  type PairExample,
  type Prompt,
  type ReadOptions,
} from './examples.js';

/** The released files' few-shot pairs (the first 80 of each subset); the rest (920 per file) are the test set. */
export const PREFERENCEHACK_FEW_SHOT = 80;

const PROMPT_FIELDS = ['prompt', 'question', 'instruction', 'input', 'query', 'context'];
const CHOSEN_FIELDS = [
  'chosen',
  'correct',
  'correct_response',
  'correct_answer',
  'chosen_response',
  'response_chosen',
  'preferred',
  'good',
  'win',
  'better',
  'truthful',
  'original',
];
const REJECTED_FIELDS = [
  'rejected',
  'incorrect',
  'incorrect_response',
  'incorrect_answer',
  'rejected_response',
  'response_rejected',
  'hacked',
  'hacked_response',
  'biased',
  'biased_response',
  'dispreferred',
  'bad',
  'lose',
  'worse',
];
/** Two responses and a label saying which is right: A/B, 1/2, 0/1 (index). */
const PAIR_FIELDS: [string, string][] = [
  ['response_a', 'response_b'],
  ['response_A', 'response_B'],
  ['response_1', 'response_2'],
  ['response1', 'response2'],
  ['answer_a', 'answer_b'],
  ['output_1', 'output_2'],
];
const LABEL_FIELDS = ['label', 'preference', 'winner', 'gold', 'answer'];
const SPLIT_FIELDS = ['split', 'partition', 'set'];
const CATEGORY_FIELDS = ['subset', 'category', 'bias', 'bias_type', 'type'];

export interface PreferenceHackData {
  examples: PairExample[];
  /** Ids of the few-shot pairs: the pool the harness draws from; the other pairs are the test set. */
  fewShotIds: Set<string>;
  /** Where the split came from. */
  splitFrom: 'field' | 'order';
  skipped: { line: number; reason: string }[];
}

const first = (r: Record<string, unknown>, names: string[]) => names.find((n) => r[n] !== undefined && r[n] !== null);

function text(v: unknown, where: string): string {
  if (typeof v === 'string') {
    if (!v.trim()) throw new DataError(`${where}: is empty`);
    return v;
  }
  // {role, content} lists: the assistant turns' text.
  if (
    Array.isArray(v) &&
    v.every((t) => typeof t === 'object' && t !== null && typeof (t as ChatTurn).content === 'string')
  ) {
    return (
      (v as ChatTurn[])
        .filter((t) => t.role !== 'user')
        .map((t) => t.content)
        .join('\n') || (v as ChatTurn[]).map((t) => t.content).join('\n')
    );
  }
  throw new DataError(`${where}: must be a string`);
}

function promptOf(v: unknown, where: string): Prompt {
  if (
    Array.isArray(v) &&
    v.every(
      (t) =>
        typeof t === 'object' &&
        t !== null &&
        typeof (t as ChatTurn).role === 'string' &&
        typeof (t as ChatTurn).content === 'string',
    )
  ) {
    if (!v.length) throw new DataError(`${where}: is empty`);
    return (v as ChatTurn[]).map((t) => ({ role: t.role, content: t.content }));
  }
  return text(v, where);
}

/** Which of two responses a label points at: 0 (the first), 1 (the second), or null if it is not a label. */
function labelIndex(v: unknown): 0 | 1 | null {
  const k = String(v)
    .trim()
    .toLowerCase()
    .replace(/^response[ _]?/, '');
  if (['a', '1', 'first', 'response_a'].includes(k)) return 0;
  if (['b', '2', 'second', 'response_b'].includes(k)) return 1;
  return null;
}

function parseRow(
  r: Record<string, unknown>,
  where: string,
  defaultSubset: string,
  line: number,
): { pair: PairExample; split: string | undefined } {
  const found = `found fields ${Object.keys(r).join(', ') || '(none)'}`;
  const pf = first(r, PROMPT_FIELDS);
  if (!pf) throw new DataError(`${where}: no prompt field (looked for ${PROMPT_FIELDS.join(', ')}); ${found}`);
  const prompt = promptOf(r[pf], `${where}: field "${pf}"`);
  let chosen: string, rejected: string;
  const cf = first(r, CHOSEN_FIELDS),
    rf = first(r, REJECTED_FIELDS);
  const ab = PAIR_FIELDS.find(([a, b]) => r[a] !== undefined && r[b] !== undefined);
  if (cf && rf) {
    chosen = text(r[cf], `${where}: field "${cf}"`);
    rejected = text(r[rf], `${where}: field "${rf}"`);
  } else if (ab) {
    const lf = first(r, LABEL_FIELDS);
    const which = lf ? labelIndex(r[lf]) : null;
    if (which === null)
      throw new DataError(
        `${where}: fields "${ab[0]}"/"${ab[1]}" need a label saying which is correct (${LABEL_FIELDS.join(', ')}: ` +
          `A/B, 1/2); ${found}`,
      );
    chosen = text(r[ab[which]], `${where}: field "${ab[which]}"`);
    rejected = text(r[ab[1 - which]!], `${where}: field "${ab[1 - which]}"`);
  } else {
    throw new DataError(
      `${where}: no chosen/rejected responses (looked for ${CHOSEN_FIELDS.slice(0, 6).join(', ')}, ` +
        `… and ${REJECTED_FIELDS.slice(0, 6).join(', ')}, …, or response_a/response_b with a label); ${found}`,
    );
  }
  const id = r.id !== undefined ? String(r.id) : r.idx !== undefined ? String(r.idx) : `line-${line}`;
  const catField = first(r, CATEGORY_FIELDS);
  const subset = catField && typeof r[catField] === 'string' ? `preferencehack-${r[catField]}` : defaultSubset;
  const sf = first(r, SPLIT_FIELDS);
  return {
    pair: { kind: 'pair', id, line, row: r, prompt, chosen, rejected, subset },
    split: sf ? String(r[sf]).toLowerCase() : undefined,
  };
}

const FEW_SHOT_SPLITS = new Set(['train', 'few-shot', 'fewshot', 'few_shot', 'demo', 'demos', 'dev', 'shots', 'icl']);

/** Reads one released PreferenceHack file (JSONL, or a JSON array). */
export function readPreferenceHack(
  file: string,
  opts: Pick<ReadOptions, 'skipInvalid' | 'maxLineBytes'> = {},
): PreferenceHackData {
  const name = path.basename(file).replace(/\.(jsonl|json)$/i, '');
  const defaultSubset = `preferencehack-${name}`;
  const rows: { r: unknown; line: number }[] = [];
  const lines = [...jsonlLines(file, opts.maxLineBytes ?? MAX_LINE_BYTES)];
  const whole = lines
    .map((l) => l.text ?? '')
    .join('\n')
    .trim();
  if (whole.startsWith('[')) {
    // A JSON array file: one row per element.
    let arr: unknown;
    try {
      arr = JSON.parse(whole);
    } catch (e) {
      throw new DataError(`${file}: not valid JSON (${(e as Error).message})`);
    }
    (arr as unknown[]).forEach((r, i) => rows.push({ r, line: i + 1 }));
  } else {
    for (const { line, text: t, error } of lines) {
      if (error) {
        if (!opts.skipInvalid) throw new DataError(`${file}:${line}: ${error}`);
        continue;
      }
      if (!t!.trim()) continue;
      try {
        rows.push({ r: JSON.parse(t!), line });
      } catch (e) {
        if (!opts.skipInvalid) throw new DataError(`${file}:${line}: not valid JSON (${(e as Error).message})`);
      }
    }
  }
  const parsed: { pair: PairExample; split: string | undefined }[] = [];
  const skipped: PreferenceHackData['skipped'] = [];
  const seen = new Set<string>();
  for (const { r, line } of rows) {
    const where = `${file}:${line}`;
    try {
      if (typeof r !== 'object' || r === null || Array.isArray(r))
        throw new DataError(`${where}: a row must be a JSON object`);
      const p = parseRow(r as Record<string, unknown>, where, defaultSubset, line);
      if (seen.has(p.pair.id)) throw new DataError(`${where}: duplicate id ${JSON.stringify(p.pair.id)}`);
      seen.add(p.pair.id);
      parsed.push(p);
    } catch (e) {
      if (!(e instanceof DataError) || !opts.skipInvalid) throw e;
      skipped.push({ line, reason: e.message });
    }
  }
  if (!parsed.length)
    throw new DataError(`${file}: no usable rows${skipped.length ? ` (${skipped.length} skipped as invalid)` : ''}`);
  const withSplit = parsed.filter((p) => p.split !== undefined);
  let fewShotIds: Set<string>, splitFrom: PreferenceHackData['splitFrom'];
  if (withSplit.length === parsed.length && parsed.some((p) => FEW_SHOT_SPLITS.has(p.split!))) {
    fewShotIds = new Set(parsed.filter((p) => FEW_SHOT_SPLITS.has(p.split!)).map((p) => p.pair.id));
    splitFrom = 'field';
  } else {
    // The paper's protocol: 80 few-shot pairs, the rest (920) tested; per subset when the file holds several.
    const bySubset = new Map<string, PairExample[]>();
    for (const p of parsed) {
      const s = p.pair.subset!;
      if (!bySubset.has(s)) bySubset.set(s, []);
      bySubset.get(s)!.push(p.pair);
    }
    fewShotIds = new Set([...bySubset.values()].flatMap((ps) => ps.slice(0, PREFERENCEHACK_FEW_SHOT).map((p) => p.id)));
    splitFrom = 'order';
  }
  return { examples: parsed.map((p) => p.pair), fewShotIds, splitFrom, skipped };
}

/** Whether a path names a PreferenceHack file (a folder or file name containing "preferencehack"). */
export const looksLikePreferenceHack = (file: string) => /preference[-_]?hack/i.test(file);
