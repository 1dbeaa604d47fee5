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

export interface PairExample { kind: 'pair'; id: string; line: number; row: Record<string, unknown>; prompt: Prompt; chosen: string; rejected: string; subset?: string }
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
}

export interface ReadResult { examples: Example[]; skipped: { line: number; reason: string }[] }

/** Reads a JSONL file of pairs and/or scalar items. */
export function readExamples(file: string, opts: ReadOptions = {}): ReadResult {
  let text: string;
  try { text = fs.readFileSync(file, 'utf8'); } catch (e) {
    throw new DataError(`${file}: cannot read (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
  const examples: Example[] = [];
  const skipped: ReadResult['skipped'] = [];
  const seen = new Set<string>();
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const raw = lines[i]!.trim();
    if (!raw) continue;
    const where = `${file}:${i + 1}`;
    try {
      let row: unknown;
      try { row = JSON.parse(raw); } catch (e) { throw new DataError(`${where}: not valid JSON (${(e as Error).message})`); }
      const ex = parseRow(row, i + 1, where, opts.labelsOptional ?? false);
      if (seen.has(ex.id)) throw new DataError(`${where}: field "id": duplicate id ${JSON.stringify(ex.id)}`);
      seen.add(ex.id);
      if (opts.subsets && !opts.subsets.includes(ex.subset ?? '')) continue;
      examples.push(ex);
      if (opts.limit !== undefined && examples.length >= opts.limit) break;
    } catch (e) {
      if (!(e instanceof DataError) || !opts.skipInvalid) throw e;
      skipped.push({ line: i + 1, reason: e.message });
    }
  }
  if (examples.length === 0) throw new DataError(`${file}: no usable rows${skipped.length ? ` (${skipped.length} skipped as invalid)` : ''}`);
  return { examples, skipped };
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
