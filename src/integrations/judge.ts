/**
 * One (prompt, output) scored under one criterion, for the evaluation-tool integrations (promptfoo.ts, scorers.ts):
 * either in this process (the criterion file on its model, loaded once per process) or by a running `arm serve`
 * (its `/v1/score`). In-process scores take the path `arm score` takes (ActivationRM.scoreExamples with the
 * criterion's own batch size and length budget), one item per call: an item's score never depends on what else an
 * eval runs at the same time, and equals `arm score --batch-size 1` bitwise (`arm score`'s batched rows within
 * float32 rounding).
 */
import path from 'node:path';
import { Decoder } from '../model/decoder.js';
import { ActivationRM, armFields } from '../arm/rm.js';
import { disposeDecoder } from '../arm/images.js';
import { criterionNameOf } from '../arm/criterion.js';
import type { ChatTurn, Example, Prompt } from '../data/examples.js';

/** Where a judge's scores come from, as an integration's config gives it (every field checked by judgeSettings). */
export interface JudgeOptions {
  /** In-process: the criterion file (`arm fit --out`); a relative path is read from the working directory. */
  criterion?: string;
  /** In-process: the model the criterion was fitted on (a folder or a Hugging Face id, as `arm score --model`). */
  model?: string;
  /** In-process: the graph cache folder (default: ARM_CACHE_DIR or the user cache, as the CLI). */
  cacheDir?: string;
  /** In-process: onnxruntime threads (default: all cores). */
  threads?: number;
  /** Remote: the base URL of a running `arm serve`, e.g. http://127.0.0.1:5000. */
  url?: string;
  /** Remote: which of the server's criteria (default: the only one it serves). */
  serverCriterion?: string;
  /** Remote: the name of the environment variable holding the server's API key (`arm serve --api-key-file`). */
  apiKeyEnv?: string;
  /** Remote: how long one request may take, in milliseconds (default 60,000). */
  timeoutMs?: number;
  /** What the score is: P(Yes) over the full vocabulary (`reward`, default) or P(Yes | Yes or No) (`normalized`). */
  readout?: 'reward' | 'normalized';
}

/** How a readout is written in reasons and descriptions. */
export function readoutLabel(readout: JudgeScore['readout'] | undefined): string {
  return readout === 'normalized' ? 'P(Yes | Yes or No)' : 'P(Yes)';
}

/** One judged output: `score` is the readout (null when the output did not fit the length budget), then the fields. */
export interface JudgeScore {
  /** The criterion's name: the file's name without `.arm.safetensors`, or the server's name for it. */
  criterion: string;
  score: number | null;
  readout: 'reward' | 'normalized';
  reward: number | null;
  normalized: number | null;
  logitYes: number | null;
  logitNo: number | null;
  /** The prompt was cut from the left to fit the length budget. */
  truncated: boolean;
  /** The output and the question alone exceed the length budget: not scored. */
  tooLong: boolean;
}

/** Scores outputs under one criterion (see judgeFor). */
export interface Judge {
  readonly criterion: string;
  score(prompt: Prompt, output: string): Promise<JudgeScore>;
}

type Settings =
  | { mode: 'local'; model: string; criterionFile: string; cacheDir?: string; threads?: number; readout: Readout }
  | { mode: 'remote'; url: string; serverCriterion?: string; apiKey?: string; timeoutMs: number; readout: Readout };
type Readout = JudgeScore['readout'];

const DEFAULT_TIMEOUT_MS = 60_000;
const LOCAL_FIELDS = ['criterion', 'model', 'cacheDir', 'threads'];
const REMOTE_FIELDS = ['url', 'serverCriterion', 'apiKeyEnv', 'timeoutMs'];

/** Every field known, and only one mode's fields: a typo or a mixed config is named, not silently ignored. */
function checkFields(o: Record<string, unknown>, where: string): void {
  const known = [...LOCAL_FIELDS, ...REMOTE_FIELDS, 'readout'];
  for (const field of Object.keys(o)) {
    if (!known.includes(field))
      throw new Error(`${where}: ${field}: not a field of this config (known: ${known.join(', ')})`);
  }
  const remote = o.url !== undefined;
  for (const field of remote ? LOCAL_FIELDS : REMOTE_FIELDS.slice(1)) {
    if (o[field] === undefined) continue;
    throw new Error(
      remote
        ? `${where}: ${field}: a remote judge (url) takes its criterion and model from the server; drop "${field}" ` +
            '(name one of its criteria with "serverCriterion")'
        : `${where}: ${field}: only for a remote judge (with "url")`,
    );
  }
}

/** `options` checked: in-process (criterion + model) or remote (url), never both; `where` names the config. */
function judgeSettings(options: JudgeOptions, where: string): Settings {
  if (options === null || typeof options !== 'object')
    throw new Error(`${where}: expected an object with "criterion" and "model", or "url"`);
  const o = options as Record<string, unknown>;
  checkFields(o, where);
  const text = (field: string) => {
    const v = o[field];
    if (v !== undefined && (typeof v !== 'string' || v === ''))
      throw new Error(`${where}: ${field}: expected a non-empty string, got ${JSON.stringify(v)}`);
    return v as string | undefined;
  };
  const positive = (field: string) => {
    const v = o[field];
    if (v !== undefined && !(typeof v === 'number' && Number.isFinite(v) && v > 0))
      throw new Error(`${where}: ${field}: expected a positive number, got ${JSON.stringify(v)}`);
    return v as number | undefined;
  };
  const readout = o.readout ?? 'reward';
  if (readout !== 'reward' && readout !== 'normalized')
    throw new Error(`${where}: readout: expected "reward" or "normalized", got ${JSON.stringify(readout)}`);
  const [criterion, model, url] = [text('criterion'), text('model'), text('url')];
  if (url !== undefined) {
    if (!/^https?:\/\//.test(url)) throw new Error(`${where}: url: expected http(s)://host:port, got ${url}`);
    const keyEnv = text('apiKeyEnv');
    // The key is named, never written in the config: configs are committed, environments hold secrets.
    const apiKey = keyEnv === undefined ? undefined : process.env[keyEnv] || undefined;
    if (keyEnv !== undefined && apiKey === undefined)
      throw new Error(`${where}: apiKeyEnv: the environment variable ${keyEnv} is not set`);
    const timeoutMs = positive('timeoutMs') ?? DEFAULT_TIMEOUT_MS;
    return {
      mode: 'remote',
      url: url.replace(/\/+$/, ''),
      serverCriterion: text('serverCriterion'),
      apiKey,
      timeoutMs,
      readout,
    };
  }
  if (criterion === undefined) throw new Error(`${where}: criterion: the criterion file is required (or "url")`);
  if (model === undefined)
    throw new Error(`${where}: model: the model ${criterion} was fitted on is required (a folder or hub id)`);
  const threads = positive('threads');
  if (threads !== undefined && !Number.isInteger(threads))
    throw new Error(`${where}: threads: expected a whole number, got ${threads}`);
  return { mode: 'local', model, criterionFile: path.resolve(criterion), cacheDir: text('cacheDir'), threads, readout };
}

/**
 * The judge for `options` (`where` names the config in errors). In-process judges share one model per (model,
 * cacheDir, threads) and one criterion per file for the life of the process: calls that arrive together wait for
 * the one load, and then run one at a time.
 */
export function judgeFor(options: JudgeOptions, where: string): Judge {
  const settings = judgeSettings(options, where);
  if (settings.mode === 'remote') return remoteJudge(settings);
  const criterion = criterionNameOf(settings.criterionFile);
  return { criterion, score: (prompt, output) => scoreInProcess(settings, criterion, prompt, output) };
}

/** A model loaded once, its criteria by file, and the tail of its queue (one forward at a time). */
interface LoadedModel {
  decoder: Decoder;
  criteria: Map<string, ActivationRM>;
  tail: Promise<unknown>;
}
const loadedModels = new Map<string, Promise<LoadedModel>>();

function loadedModel(s: Extract<Settings, { mode: 'local' }>): Promise<LoadedModel> {
  const key = JSON.stringify([s.model, s.cacheDir ?? null, s.threads ?? null]);
  let loaded = loadedModels.get(key);
  if (!loaded) {
    loaded = Decoder.load(s.model, { quiet: true, cacheDir: s.cacheDir, threads: s.threads }).then((decoder) => ({
      decoder,
      criteria: new Map(),
      tail: Promise.resolve(),
    }));
    // A failed load is not kept: the next call tries again (and reports its own error).
    loaded.catch(() => loadedModels.delete(key));
    loadedModels.set(key, loaded);
  }
  return loaded;
}

async function scoreInProcess(
  s: Extract<Settings, { mode: 'local' }>,
  criterion: string,
  prompt: Prompt,
  output: string,
): Promise<JudgeScore> {
  const loaded = await loadedModel(s);
  let rm = loaded.criteria.get(s.criterionFile);
  if (!rm) {
    rm = ActivationRM.load(loaded.decoder, s.criterionFile);
    loaded.criteria.set(s.criterionFile, rm);
  }
  const example: Example = { kind: 'scalar', id: 'output', line: 0, row: {}, prompt, response: output, label: null };
  const { batchSize, maxLength } = rm.criterion.meta.hyper;
  const scored = loaded.tail.then(() => rm.scoreExamples([example], { batchSize, maxLength }));
  loaded.tail = scored.catch(() => undefined);
  return judgeScore(criterion, armFields((await scored)[0]!), s.readout);
}

/** A JudgeScore from the fields `arm score` writes for an item (the same fields `/v1/score` answers). */
function judgeScore(criterion: string, fields: Record<string, unknown>, readout: Readout): JudgeScore {
  const num = (k: string) => (typeof fields[k] === 'number' ? (fields[k] as number) : null);
  const tooLong = fields.tooLong === true;
  return {
    criterion,
    score: tooLong ? null : num(readout),
    readout,
    reward: num('reward'),
    normalized: num('normalized'),
    logitYes: num('logitYes'),
    logitNo: num('logitNo'),
    truncated: fields.truncated === true,
    tooLong,
  };
}

function remoteJudge(s: Extract<Settings, { mode: 'remote' }>): Judge {
  return {
    criterion: s.serverCriterion ?? 'arm',
    async score(prompt, output) {
      const endpoint = `${s.url}/v1/score`;
      const body = {
        ...(s.serverCriterion ? { criterion: s.serverCriterion } : {}),
        items: [{ prompt, response: output }],
      };
      let res: Response;
      try {
        res = await fetch(endpoint, {
          method: 'POST',
          headers: { 'content-type': 'application/json', ...(s.apiKey ? { authorization: `Bearer ${s.apiKey}` } : {}) },
          body: JSON.stringify(body),
          signal: AbortSignal.timeout(s.timeoutMs),
        });
      } catch (e) {
        throw new Error(`${endpoint}: no answer (${(e as Error).message})`, { cause: e });
      }
      const text = await res.text();
      let answer: { criterion?: unknown; results?: unknown; error?: unknown };
      try {
        answer = JSON.parse(text) as typeof answer;
      } catch {
        throw new Error(`${endpoint}: HTTP ${res.status}, not JSON: ${text.slice(0, 200)}`);
      }
      if (!res.ok) throw new Error(`${endpoint}: HTTP ${res.status}: ${String(answer.error ?? text.slice(0, 200))}`);
      const fields = Array.isArray(answer.results) ? (answer.results[0] as Record<string, unknown>) : undefined;
      if (!fields || typeof fields !== 'object') throw new Error(`${endpoint}: no results in ${text.slice(0, 200)}`);
      const name = typeof answer.criterion === 'string' ? answer.criterion : (s.serverCriterion ?? 'arm');
      return judgeScore(name, fields, s.readout);
    },
  };
}

/**
 * A prompt as the tools hand it over: a string, or a chat given as a list (or as the JSON text of a list) of
 * {role, content} messages, which the criterion's template renders as `arm score` renders a message-list prompt.
 */
export function promptFrom(value: unknown, what: string): Prompt {
  if (typeof value === 'string') {
    const trimmed = value.trimStart();
    if (trimmed.startsWith('[')) {
      try {
        const parsed: unknown = JSON.parse(trimmed);
        if (isChat(parsed)) return parsed;
      } catch {
        // Not JSON: a prompt that starts with "[" is text.
      }
    }
    return value;
  }
  if (isChat(value)) return value;
  throw new Error(`${what}: expected a string or a list of {role, content} messages, got ${describe(value)}`);
}

function isChat(value: unknown): value is ChatTurn[] {
  return (
    Array.isArray(value) &&
    value.length > 0 &&
    value.every(
      (m) =>
        m !== null &&
        typeof m === 'object' &&
        typeof (m as ChatTurn).role === 'string' &&
        typeof (m as ChatTurn).content === 'string',
    )
  );
}

/** An output as text: strings as they are, other values (a JSON-mode answer) as their JSON, as promptfoo does. */
export function outputText(value: unknown, what: string): string {
  if (typeof value === 'string') return value;
  if (value === undefined || value === null) throw new Error(`${what}: no output to score (${String(value)})`);
  return JSON.stringify(value);
}

export function describe(value: unknown): string {
  const json = JSON.stringify(value);
  return json === undefined ? typeof value : json.length > 80 ? `${json.slice(0, 80)}…` : json;
}

/** Frees every model the in-process judges loaded (tests, long-lived processes); the next call loads again. */
export async function closeJudges(): Promise<void> {
  const all = [...loadedModels.values()];
  loadedModels.clear();
  for (const loaded of all) {
    const model = await loaded.catch(() => null);
    if (!model) continue;
    await model.tail;
    await disposeDecoder(model.decoder);
  }
}
