/**
 * Preference data in: JSONL rows as RewardBench / TRL users write them, validated with file:line errors.
 *   pairs   {prompt, chosen, rejected, id?, subset?}   prompt: string or [{role, content}]
 *           TRL implicit prompt: chosen/rejected as message lists sharing their leading turns
 *           aliases: question / input for prompt
 *   scalars {prompt, response, label}                  label: yes/no/true/false/1/0
 */
import fs from 'node:fs';

export interface ChatTurn { role: string; content: string }
export type Prompt = string | ChatTurn[];

export interface PairExample { kind: 'pair'; id: string; line: number; row: Record<string, unknown>; prompt: Prompt; chosen: string; rejected: string; subset?: string; cell?: PairCell }

/**
 * Set when a pair is one comparison of a multi-response row (RM-Bench's 3 chosen × 3 rejected styles,
 * RewardBench 2's best-of-4): the row it came from and the two responses' positions in their lists, so the
 * benchmark's own row-level score can be rebuilt from the pair results. `scoring` names that score.
 */
export interface PairCell { row: string; chosen: number; rejected: number; chosenCount: number; rejectedCount: number; cells: number; scoring: 'rm-bench' | 'best-of-n' }
export interface ScalarExample { kind: 'scalar'; id: string; line: number; row: Record<string, unknown>; prompt: Prompt; response: string; label: boolean | null; subset?: string }
export type Example = PairExample | ScalarExample;

/** One judged item: what the reward model sees (a pair contributes two). */
export interface ScalarItem { id: string; prompt: Prompt; response: string; label: boolean; source: Example }

export class DataError extends Error {
  override name = 'DataError';
}

export interface ReadOptions {
  /** Skip invalid rows instead of failing; they are reported in `skipped`. */
  skipInvalid?: boolean;
  limit?: number;
  subsets?: string[];
  /** Scalar rows may leave out "label" (scoring input); fitting needs labels. */
  labelsOptional?: boolean;
  /** Longest line accepted, in bytes (default MAX_LINE_BYTES). */
  maxLineBytes?: number;
}

export interface ReadResult { examples: Example[]; skipped: { line: number; reason: string }[] }

/**
 * The longest JSONL line read (16 MiB; `maxLineBytes` to change it): a longer one is an error naming its line,
 * instead of a string too large to parse or tokenise. Prompts are cut to the context anyway (template.ts).
 */
export const MAX_LINE_BYTES = 16 * 1024 * 1024;

/** Reads a JSONL file of pairs and/or scalar items. */
export function readExamples(file: string, opts: ReadOptions = {}): ReadResult {
  const examples: Example[] = [];
  const skipped: ReadResult['skipped'] = [];
  const seen = new Set<string>();
  for (const { line, text, error } of jsonlLines(file, opts.maxLineBytes ?? MAX_LINE_BYTES)) {
    const where = `${file}:${line}`;
    try {
      if (error) throw new DataError(`${where}: ${error}`);
      const raw = text!.trim();
      if (!raw) continue;
      let row: unknown;
      try { row = JSON.parse(raw); } catch (e) { throw new DataError(`${where}: not valid JSON (${(e as Error).message})`); }
      const ex = parseRow(row, line, where, opts.labelsOptional ?? false);
      if (seen.has(ex.id)) throw new DataError(`${where}: field "id": duplicate id ${JSON.stringify(ex.id)}`);
      seen.add(ex.id);
      if (opts.subsets && !opts.subsets.includes(ex.subset ?? '')) continue;
      examples.push(ex);
      if (opts.limit !== undefined && examples.length >= opts.limit) break;
    } catch (e) {
      if (!(e instanceof DataError) || !opts.skipInvalid) throw e;
      skipped.push({ line, reason: e.message });
    }
  }
  if (examples.length === 0) throw new DataError(`${file}: no usable rows${skipped.length ? ` (${skipped.length} skipped as invalid)` : ''}`);
  return { examples, skipped };
}

/**
 * The lines of a file, read in chunks (never the whole file as one string) and decoded as strict UTF-8: a line
 * that is not UTF-8 or is over `maxLineBytes` comes back as an `error` (its bytes are not kept), so the caller
 * can fail or skip it with its line number.
 */
export function* jsonlLines(file: string, maxLineBytes: number): Generator<{ line: number; text?: string; error?: string }> {
  let fd: number;
  try {
    fd = fs.openSync(file, 'r');
    if (fs.fstatSync(fd).isDirectory()) { fs.closeSync(fd); throw Object.assign(new Error('is a directory'), { code: 'EISDIR' }); }
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new DataError(`${file}: cannot read (${code === 'ENOENT' ? 'no such file' : code === 'EISDIR' ? 'a directory, expected a JSONL file' : code ?? (e as Error).message})`);
  }
  const decoder = new TextDecoder('utf-8', { fatal: true });
  const chunk = Buffer.allocUnsafe(1024 * 1024);
  let parts: Buffer[] = [];
  let partBytes = 0;
  let tooLong = false;
  let line = 1;
  const finish = (): { line: number; text?: string; error?: string } => {
    const bytes = Buffer.concat(parts, partBytes);
    parts = []; partBytes = 0;
    if (tooLong) { tooLong = false; return { line, error: `line is longer than the limit of ${maxLineBytes} bytes` }; }
    const body = line === 1 && bytes[0] === 0xef && bytes[1] === 0xbb && bytes[2] === 0xbf ? bytes.subarray(3) : bytes; // UTF-8 BOM
    try { return { line, text: decoder.decode(body) }; } catch {
      const bad = firstInvalidUtf8(body);
      return { line, error: `not valid UTF-8 (byte ${bad} of the line); save the file as UTF-8` };
    }
  };
  try {
    for (let at = 0; ;) {
      const n = fs.readSync(fd, chunk, 0, chunk.length, at);
      if (n === 0) break;
      at += n;
      let start = 0;
      for (let nl = chunk.indexOf(0x0a, 0); nl !== -1 && nl < n; nl = chunk.indexOf(0x0a, start)) {
        if (!tooLong) parts.push(Buffer.from(chunk.subarray(start, nl)));
        partBytes += tooLong ? 0 : nl - start;
        if (partBytes > maxLineBytes) tooLong = true;
        yield finish();
        line++;
        start = nl + 1;
      }
      if (start < n && !tooLong) {
        parts.push(Buffer.from(chunk.subarray(start, n)));
        partBytes += n - start;
        if (partBytes > maxLineBytes) { tooLong = true; parts = []; partBytes = 0; }
      }
    }
    if (partBytes > 0 || tooLong) yield finish();
  } finally {
    fs.closeSync(fd);
  }
}

/** Offset of the first byte that breaks UTF-8 (lead/continuation structure; for the error message). */
function firstInvalidUtf8(bytes: Buffer): number {
  for (let i = 0; i < bytes.length;) {
    const b = bytes[i]!;
    const n = b < 0x80 ? 1 : b >= 0xc2 && b < 0xe0 ? 2 : b >= 0xe0 && b < 0xf0 ? 3 : b >= 0xf0 && b < 0xf5 ? 4 : 0;
    if (n === 0 || i + n > bytes.length) return i;
    for (let k = 1; k < n; k++) if ((bytes[i + k]! & 0xc0) !== 0x80) return i;
    i += n;
  }
  return bytes.length;
}

function parseRow(row: unknown, line: number, where: string, labelsOptional: boolean): Example {
  if (typeof row !== 'object' || row === null || Array.isArray(row)) throw new DataError(`${where}: a row must be a JSON object`);
  const r = row as Record<string, unknown>;
  const id = r.id === undefined ? `line-${line}` : String(r.id);
  const subset = typeof r.subset === 'string' ? r.subset : undefined;
  const promptField = r.prompt !== undefined ? 'prompt' : r.question !== undefined ? 'question' : r.input !== undefined ? 'input' : null;

  if (r.chosen !== undefined || r.rejected !== undefined) {
    if (r.chosen === undefined) throw new DataError(`${where}: field "chosen" is missing`);
    if (r.rejected === undefined) throw new DataError(`${where}: field "rejected" is missing`);
    let prompt: Prompt;
    let chosen: string, rejected: string;
    if (promptField) {
      prompt = parsePrompt(r[promptField], `${where}: field "${promptField}"`);
      chosen = parseResponse(r.chosen, `${where}: field "chosen"`);
      rejected = parseResponse(r.rejected, `${where}: field "rejected"`);
    } else if (typeof r.chosen === 'string' || typeof r.rejected === 'string') {
      throw new DataError(`${where}: field "prompt" is missing (a pair needs {prompt, chosen, rejected}; "question" or "input" also name the prompt, or give chosen/rejected as message lists that share their leading turns)`);
    } else {
      // TRL implicit prompt: the shared leading turns are the prompt, the final assistant turn the answer.
      const c = parseTurns(r.chosen, `${where}: field "chosen"`);
      const rj = parseTurns(r.rejected, `${where}: field "rejected"`);
      let k = 0;
      while (k < c.length - 1 && k < rj.length - 1 && c[k]!.role === rj[k]!.role && c[k]!.content === rj[k]!.content) k++;
      if (k === 0) throw new DataError(`${where}: field "prompt" is missing (and chosen/rejected share no leading turns)`);
      prompt = c.slice(0, k);
      chosen = c.slice(k).map((t) => t.content).join('\n');
      rejected = rj.slice(k).map((t) => t.content).join('\n');
    }
    return { kind: 'pair', id, line, row: r, prompt, chosen, rejected, subset };
  }
  if (r.response !== undefined || r.label !== undefined) {
    if (!promptField) throw new DataError(`${where}: field "prompt" is missing`);
    if (r.response === undefined) throw new DataError(`${where}: field "response" is missing`);
    if (r.label === undefined && !labelsOptional) throw new DataError(`${where}: field "label" is missing`);
    return {
      kind: 'scalar', id, line, row: r, subset,
      prompt: parsePrompt(r[promptField], `${where}: field "${promptField}"`),
      response: parseResponse(r.response, `${where}: field "response"`),
      label: r.label === undefined ? null : parseLabel(r.label, `${where}: field "label"`),
    };
  }
  throw new DataError(`${where}: a row needs {prompt, chosen, rejected} or {prompt, response, label}; found fields ${Object.keys(r).join(', ') || '(none)'}`);
}

function parsePrompt(v: unknown, where: string): Prompt {
  if (typeof v === 'string') {
    if (!v.trim()) throw new DataError(`${where}: is empty`);
    return v;
  }
  return parseTurns(v, where);
}

function parseTurns(v: unknown, where: string): ChatTurn[] {
  if (!Array.isArray(v) || v.length === 0) throw new DataError(`${where}: must be a string or a non-empty list of {role, content}`);
  return v.map((t, i) => {
    const turn = t as Record<string, unknown>;
    if (typeof turn !== 'object' || turn === null || typeof turn.role !== 'string' || typeof turn.content !== 'string') {
      throw new DataError(`${where}[${i}]: must be {role: string, content: string}`);
    }
    return { role: turn.role, content: turn.content };
  });
}

function parseResponse(v: unknown, where: string): string {
  if (typeof v === 'string') return v;
  // TRL conversational: a list holding the assistant turn(s).
  return parseTurns(v, where).map((t) => t.content).join('\n');
}

const LABELS: Record<string, boolean> = { yes: true, no: false, true: true, false: false, '1': true, '0': false };

function parseLabel(v: unknown, where: string): boolean {
  if (typeof v === 'boolean') return v;
  const key = String(v).trim().toLowerCase();
  if (key in LABELS) return LABELS[key]!;
  throw new DataError(`${where}: ${JSON.stringify(v)} is not a label (yes/no/true/false/1/0)`);
}

/** Pairs become two scalar items (chosen → yes, rejected → no); scalar examples stay as they are. */
export function toScalarItems(examples: Example[]): ScalarItem[] {
  for (const e of examples) if (e.kind === 'scalar' && e.label === null) throw new DataError(`line ${e.line}: field "label" is missing`);
  return examples.flatMap((e): ScalarItem[] => e.kind === 'pair'
    ? [
      { id: `${e.id}:chosen`, prompt: e.prompt, response: e.chosen, label: true, source: e },
      { id: `${e.id}:rejected`, prompt: e.prompt, response: e.rejected, label: false, source: e },
    ]
    : [{ id: e.id, prompt: e.prompt, response: e.response, label: e.label!, source: e }]);
}

/** Renders a message-list prompt as plain text for the template's "Prompt:" field. */
export function promptText(prompt: Prompt): string {
  if (typeof prompt === 'string') return prompt;
  if (prompt.length === 1 && prompt[0]!.role === 'user') return prompt[0]!.content;
  return prompt.map((t) => `${t.role[0]!.toUpperCase()}${t.role.slice(1)}: ${t.content}`).join('\n');
}
