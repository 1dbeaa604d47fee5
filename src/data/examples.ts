/**
 * Preference data in: JSONL rows as RewardBench / TRL users write them, validated with file:line errors.
 *   pairs   {prompt, chosen, rejected, id?, subset?}   prompt: string or [{role, content}]
 *           TRL implicit prompt: chosen/rejected as message lists sharing their leading turns
 *           aliases: question / input for prompt
 *   scalars {prompt, response, label}                  label: yes/no/true/false/1/0
 *   images  images: ["file.png", …] or image: "file.png" (paths relative to the JSONL file), and/or
 *           {type: "image", path} content parts in message-list prompts (HF chat format); shown before the
 *           prompt's text, in order
 */
import fs from 'node:fs';
import path from 'node:path';

export interface ChatTurn {
  role: string;
  content: string;
}
export type Prompt = string | ChatTurn[];

/** `images`: absolute paths of the image files shown with the prompt (image-text checkpoints); absent: none. */
export interface PairExample {
  kind: 'pair';
  id: string;
  line: number;
  row: Record<string, unknown>;
  prompt: Prompt;
  chosen: string;
  rejected: string;
  subset?: string;
  cell?: PairCell;
  images?: string[];
}

/**
 * Set when a pair is one comparison of a multi-response row (RM-Bench's 3 chosen × 3 rejected styles,
 * RewardBench 2's best-of-4): the row it came from and the two responses' positions in their lists, so the
 * benchmark's own row-level score can be rebuilt from the pair results. `scoring` names that score.
 */
export interface PairCell {
  row: string;
  chosen: number;
  rejected: number;
  chosenCount: number;
  rejectedCount: number;
  cells: number;
  scoring: 'rm-bench' | 'best-of-n';
}
export interface ScalarExample {
  kind: 'scalar';
  id: string;
  line: number;
  row: Record<string, unknown>;
  prompt: Prompt;
  response: string;
  label: boolean | null;
  subset?: string;
  images?: string[];
}
export type Example = PairExample | ScalarExample;

/** One judged item: what the reward model sees (a pair contributes two). */
export interface ScalarItem {
  id: string;
  prompt: Prompt;
  response: string;
  label: boolean;
  source: Example;
  images?: string[];
}

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
  /** Folder that relative image paths are read under (default: the data file's folder). */
  imageRoot?: string;
}

export interface ReadResult {
  examples: Example[];
  skipped: { line: number; reason: string }[];
}

/**
 * The longest JSONL line read (16 MiB; `maxLineBytes` to change it): a longer one is an error naming its line,
 * instead of a string too large to parse or tokenise. Prompts are cut to the context anyway (template.ts).
 */
export const MAX_LINE_BYTES = 16 * 1024 * 1024;

/** Reads a JSONL file of pairs and/or scalar items. */
export function readExamples(file: string, opts: ReadOptions = {}): ReadResult {
  const examples: Example[] = [];
  const skipped: ReadResult['skipped'] = [];
  for (const r of streamExamples(file, opts)) {
    if ('skipped' in r) {
      skipped.push(r.skipped);
      continue;
    }
    if (opts.subsets && !opts.subsets.includes(r.example.subset ?? '')) continue;
    examples.push(r.example);
    if (opts.limit !== undefined && examples.length >= opts.limit) break;
  }
  if (examples.length === 0)
    throw new DataError(`${file}: no usable rows${skipped.length ? ` (${skipped.length} skipped as invalid)` : ''}`);
  return { examples, skipped };
}

/** One row of `streamExamples`: an example (with its line's length in bytes) or, with `skipInvalid`, a skipped row. */
export type StreamedRow = { example: Example; bytes: number } | { skipped: { line: number; reason: string } };

/**
 * The rows of a JSONL file one at a time, in file order, validated as `readExamples` does (blank lines left
 * out): only the current line is held, plus the ids seen so far for the duplicate check (`uniqueIds: false`
 * leaves that out, for a file already checked). `limit` and `subsets` are `readExamples`'; here every row comes.
 */
export function* streamExamples(
  file: string,
  opts: Omit<ReadOptions, 'limit' | 'subsets'> & { uniqueIds?: boolean } = {},
): Generator<StreamedRow> {
  const seen = opts.uniqueIds === false ? null : new Set<string>();
  const baseDir = path.resolve(opts.imageRoot ?? path.dirname(file));
  for (const { line, text, error } of jsonlLines(file, opts.maxLineBytes ?? MAX_LINE_BYTES)) {
    const where = `${file}:${line}`;
    let ex: Example;
    try {
      if (error) throw new DataError(`${where}: ${error}`);
      const raw = text!.trim();
      if (!raw) continue;
      let row: unknown;
      try {
        row = JSON.parse(raw);
      } catch (e) {
        throw new DataError(`${where}: not valid JSON (${(e as Error).message})`);
      }
      ex = parseRow(row, { line, where, baseDir, labelsOptional: opts.labelsOptional ?? false });
      if (seen?.has(ex.id)) throw new DataError(`${where}: field "id": duplicate id ${JSON.stringify(ex.id)}`);
      seen?.add(ex.id);
    } catch (e) {
      if (!(e instanceof DataError) || !opts.skipInvalid) throw e;
      yield { skipped: { line, reason: e.message } };
      continue;
    }
    yield { example: ex, bytes: Buffer.byteLength(text!) };
  }
}

/**
 * The lines of a file, read in chunks (never the whole file as one string) and decoded as strict UTF-8: a line
 * that is not UTF-8 or is over `maxLineBytes` comes back as an `error` (its bytes are not kept), so the caller
 * can fail or skip it with its line number.
 */
export function* jsonlLines(
  file: string,
  maxLineBytes: number,
): Generator<{ line: number; text?: string; error?: string }> {
  let fd: number;
  try {
    fd = fs.openSync(file, 'r');
    if (fs.fstatSync(fd).isDirectory()) {
      fs.closeSync(fd);
      throw Object.assign(new Error('is a directory'), { code: 'EISDIR' });
    }
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    const why =
      code === 'ENOENT'
        ? 'no such file'
        : code === 'EISDIR'
          ? 'a directory, expected a JSONL file'
          : (code ?? (e as Error).message);
    throw new DataError(`${file}: cannot read (${why})`);
  }
  const decoder = new TextDecoder('utf-8', { fatal: true });
  const chunk = Buffer.allocUnsafe(1024 * 1024);
  let parts: Buffer[] = [];
  let partBytes = 0;
  let tooLong = false;
  let line = 1;
  const finish = (): { line: number; text?: string; error?: string } => {
    const bytes = Buffer.concat(parts, partBytes);
    parts = [];
    partBytes = 0;
    if (tooLong) {
      tooLong = false;
      return { line, error: `line is longer than the limit of ${maxLineBytes} bytes` };
    }
    // UTF-8 BOM
    const body = line === 1 && bytes[0] === 0xef && bytes[1] === 0xbb && bytes[2] === 0xbf ? bytes.subarray(3) : bytes;
    try {
      return { line, text: decoder.decode(body) };
    } catch {
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
        if (partBytes > maxLineBytes) {
          tooLong = true;
          parts = [];
          partBytes = 0;
        }
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

/**
 * Where a row is and how it is read: its line, its `file:line` for messages, the folder its image paths are under,
 * and whether a {prompt, response} item may come without a label.
 */
interface RowContext {
  line: number;
  where: string;
  baseDir: string;
  labelsOptional: boolean;
}

function parseRow(row: unknown, at: RowContext): Example {
  if (typeof row !== 'object' || row === null || Array.isArray(row))
    throw new DataError(`${at.where}: a row must be a JSON object`);
  const r = row as Record<string, unknown>;
  const ex = parseFields(r, at);
  const images = [...imagesField(r, at.where, at.baseDir), ...ex.images];
  const { images: _parts, ...rest } = ex;
  return images.length ? { ...rest, images } : rest;
}

/** `images` (a list of paths) or `image` (one path), resolved against the JSONL file's folder and checked to exist. */
function imagesField(r: Record<string, unknown>, where: string, baseDir: string): string[] {
  if (r.images !== undefined && r.image !== undefined)
    throw new DataError(`${where}: give "images" or "image", not both`);
  if (r.image !== undefined) return [imageFile(r.image, `${where}: field "image"`, baseDir)];
  if (r.images === undefined || r.images === null) return [];
  if (!Array.isArray(r.images)) throw new DataError(`${where}: field "images": must be a list of image file paths`);
  return r.images.map((v, i) => imageFile(v, `${where}: field "images[${i}]"`, baseDir));
}

function imageFile(v: unknown, where: string, baseDir: string): string {
  if (typeof v !== 'string' || !v.trim())
    throw new DataError(`${where}: must be an image file path (a non-empty string)`);
  if (/^(https?|data):/i.test(v))
    throw new DataError(
      `${where}: ${JSON.stringify(v.slice(0, 80))} is not a local file; ` +
        'images are read from disk only (download it and give its path)',
    );
  const file = path.resolve(baseDir, v);
  let ok = false;
  try {
    ok = fs.statSync(file).isFile();
  } catch {
    ok = false;
  }
  if (!ok) throw new DataError(`${where}: image file ${file} not found`);
  return file;
}

/** Content parts of one turn collected while parsing a row: image files found in message lists. */
type Parsed = Example & { images: string[] };

function parseFields(r: Record<string, unknown>, at: RowContext): Parsed {
  const { line, where, labelsOptional, baseDir } = at;
  const images: string[] = [];
  const parsePrompt = (v: unknown, at: string) => parsePromptIn(v, at, images, baseDir);
  const parseTurns = (v: unknown, at: string) => parseTurnsIn(v, at, images, baseDir);
  const parseResponse = (v: unknown, at: string) => parseResponseIn(v, at);
  const id = r.id === undefined ? `line-${line}` : String(r.id);
  const subset = typeof r.subset === 'string' ? r.subset : undefined;
  const promptField =
    r.prompt !== undefined ? 'prompt' : r.question !== undefined ? 'question' : r.input !== undefined ? 'input' : null;

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
      throw new DataError(
        `${where}: field "prompt" is missing (a pair needs {prompt, chosen, rejected}; ` +
          '"question" or "input" also name the prompt, or give chosen/rejected as message lists that share their ' +
          'leading turns)',
      );
    } else {
      // TRL implicit prompt: the shared leading turns are the prompt, the final assistant turn the answer.
      const c = parseTurns(r.chosen, `${where}: field "chosen"`);
      // its shared turns' images are chosen's
      const rj = parseTurnsIn(r.rejected, `${where}: field "rejected"`, [], baseDir);
      let k = 0;
      while (k < c.length - 1 && k < rj.length - 1 && c[k]!.role === rj[k]!.role && c[k]!.content === rj[k]!.content)
        k++;
      if (k === 0)
        throw new DataError(`${where}: field "prompt" is missing (and chosen/rejected share no leading turns)`);
      prompt = c.slice(0, k);
      chosen = c
        .slice(k)
        .map((t) => t.content)
        .join('\n');
      rejected = rj
        .slice(k)
        .map((t) => t.content)
        .join('\n');
    }
    return { kind: 'pair', id, line, row: r, prompt, chosen, rejected, subset, images };
  }
  if (r.response !== undefined || r.label !== undefined) {
    if (!promptField) throw new DataError(`${where}: field "prompt" is missing`);
    if (r.response === undefined) throw new DataError(`${where}: field "response" is missing`);
    if (r.label === undefined && !labelsOptional) throw new DataError(`${where}: field "label" is missing`);
    return {
      kind: 'scalar',
      id,
      line,
      row: r,
      subset,
      prompt: parsePrompt(r[promptField], `${where}: field "${promptField}"`),
      response: parseResponse(r.response, `${where}: field "response"`),
      label: r.label === undefined ? null : parseLabel(r.label, `${where}: field "label"`),
      images,
    };
  }
  throw new DataError(
    `${where}: a row needs {prompt, chosen, rejected} or {prompt, response, label}; ` +
      `found fields ${Object.keys(r).join(', ') || '(none)'}`,
  );
}

function parsePromptIn(v: unknown, where: string, images: string[], baseDir: string): Prompt {
  if (typeof v === 'string') {
    if (!v.trim()) throw new DataError(`${where}: is empty`);
    return v;
  }
  return parseTurnsIn(v, where, images, baseDir);
}

/**
 * Message lists; a turn's content is a string or HF content parts: `{type: "text", text}` and
 * `{type: "image", path}` (also `image` or `url` naming a local file). Image parts go to `images` (null: not
 * allowed here) in order; the turn keeps its text parts, joined by newlines.
 */
function parseTurnsIn(v: unknown, where: string, images: string[] | null, baseDir: string): ChatTurn[] {
  if (!Array.isArray(v) || v.length === 0)
    throw new DataError(`${where}: must be a string or a non-empty list of {role, content}`);
  return v.map((t, i) => {
    const turn = t as Record<string, unknown>;
    if (
      typeof turn !== 'object' ||
      turn === null ||
      typeof turn.role !== 'string' ||
      (typeof turn.content !== 'string' && !Array.isArray(turn.content))
    ) {
      throw new DataError(`${where}[${i}]: must be {role: string, content: string or a list of content parts}`);
    }
    if (typeof turn.content === 'string') return { role: turn.role, content: turn.content };
    const texts: string[] = [];
    turn.content.forEach((part, j) => {
      const at = `${where}[${i}].content[${j}]`;
      const p = part as Record<string, unknown>;
      if (typeof p !== 'object' || p === null || Array.isArray(p))
        throw new DataError(`${at}: must be {type: "text", text} or {type: "image", path}`);
      if (p.type === 'text' && typeof p.text === 'string') {
        texts.push(p.text);
        return;
      }
      if (p.type === 'image' || p.type === 'image_url') {
        if (!images) throw new DataError(`${at}: images are read from the prompt only, not from responses`);
        // OpenAI-style {type: "image_url", image_url: {url}} parts name a local file too (file:// or a path).
        const nested =
          p.type === 'image_url' && typeof p.image_url === 'object' && p.image_url !== null
            ? (p.image_url as Record<string, unknown>).url
            : undefined;
        const key =
          nested !== undefined
            ? 'image_url.url'
            : ['path', 'image', 'url', 'image_url'].find((k) => p[k] !== undefined);
        if (!key) throw new DataError(`${at}: an image part needs "path" (the image file)`);
        let value = nested ?? p[key];
        if (typeof value === 'string' && value.startsWith('file://')) {
          const url = value;
          try {
            value = decodeURIComponent(url.slice('file://'.length));
          } catch {
            throw new DataError(`${at}.${key}: ${JSON.stringify(url.slice(0, 80))} is not a valid file:// URL`);
          }
        }
        images.push(imageFile(value, `${at}.${key}`, baseDir));
        return;
      }
      throw new DataError(`${at}: must be {type: "text", text} or {type: "image", path}`);
    });
    return { role: turn.role, content: texts.join('\n') };
  });
}

function parseResponseIn(v: unknown, where: string): string {
  if (typeof v === 'string') return v;
  // TRL conversational: a list holding the assistant turn(s).
  return parseTurnsIn(v, where, null, '')
    .map((t) => t.content)
    .join('\n');
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
  for (const e of examples)
    if (e.kind === 'scalar' && e.label === null) throw new DataError(`line ${e.line}: field "label" is missing`);
  return examples.flatMap((e): ScalarItem[] =>
    e.kind === 'pair'
      ? [
          { id: `${e.id}:chosen`, prompt: e.prompt, response: e.chosen, label: true, source: e, ...imagesOf(e) },
          { id: `${e.id}:rejected`, prompt: e.prompt, response: e.rejected, label: false, source: e, ...imagesOf(e) },
        ]
      : [{ id: e.id, prompt: e.prompt, response: e.response, label: e.label!, source: e, ...imagesOf(e) }],
  );
}

/** `{images}` when the example has any, else nothing (text rows stay as they were). */
export function imagesOf(e: { images?: readonly string[] }): { images?: string[] } {
  return e.images?.length ? { images: [...e.images] } : {};
}

/**
 * What makes two prompts the same prompt: the text and the images shown with it. Rows with one text and other
 * images are different questions (never siblings, never a shared prefix).
 */
export function promptIdentity(e: { prompt: Prompt; images?: readonly string[] }): string {
  return e.images?.length ? `${promptText(e.prompt)}\0images:${e.images.join('\0')}` : promptText(e.prompt);
}

/** Renders a message-list prompt as plain text for the template's "Prompt:" field. */
export function promptText(prompt: Prompt): string {
  if (typeof prompt === 'string') return prompt;
  if (prompt.length === 1 && prompt[0]!.role === 'user') return prompt[0]!.content;
  return prompt.map((t) => `${t.role[0]!.toUpperCase()}${t.role.slice(1)}: ${t.content}`).join('\n');
}
