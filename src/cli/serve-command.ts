/** `arm serve`: the reward server (src/server) from the command line. */
import { collectValues, criterionArgs } from './criterion-args.js';
import fs from 'node:fs';
import path from 'node:path';
import { Option, type Command } from 'commander';
import { createRewardServer } from '../server/app.js';
import { SERVER_DEFAULTS, type RewardServerOptions } from '../server/options.js';
import type { Readout, ScoreTransform } from '../server/readout.js';
import { SPLIT_WITHOUT_PROMPTS, type SplitWithoutPrompts } from '../server/split.js';
import { LoadStoppedError, WorkerEngine } from '../server/engine.js';
import { StopSignals } from '../server/stop-signals.js';
import {
  addModelOptions,
  DEFAULT_MODEL,
  nonNegativeInt,
  positiveInt,
  weightFormatOptions,
  type ModelCliOptions,
} from './common.js';
import { addDeviceOption } from './device-option.js';

interface ServeCliOptions extends ModelCliOptions {
  rm: string[];
  combine?: string;
  host: string;
  port: number;
  apiKeyFile?: string;
  maxBatch: number;
  maxWaitMs: number;
  maxQueue: number;
  batchSize?: number;
  maxLength?: number;
  bodyLimitMib: number;
  rewardReadout: Readout;
  scoreTransform: string;
  tooLongReward?: string;
  imageRoot: string;
  splitWithoutPrompts: SplitWithoutPrompts;
  requestTimeoutS: number;
  idleTimeoutS: number;
  keepAliveTimeoutS: number;
  maxRequestsPerSocket: number;
  maxConnections: number;
  maxRequestItems: number;
}

export function registerServeCommand(program: Command): void {
  const command = program
    .command('serve')
    .description('serve criteria as a reward model over HTTP (OpenRLHF /get_reward, vLLM /classify, /v1/score)');
  addRewardOptions(
    addLimitOptions(addBatchingOptions(addEndpointOptions(addDeviceOption(addModelOptions(command, DEFAULT_MODEL))))),
  ).action(serveCommand);
}

/** What is served and where: criteria, their combination, address, API key. */
function addEndpointOptions(cmd: Command): Command {
  return cmd
    .requiredOption('--rm <name=file>', 'criterion file, optionally named (repeat for several)', collectValues)
    .option('--combine <name=w,...>', 'default reward: a weighted sum of criteria (extra_logs carries each one)')
    .option('--host <addr>', 'address to bind (loopback by default; anything else exposes the server)', '127.0.0.1')
    .option('--port <n>', 'port (0: any free port)', (v) => nonNegativeInt(v, '--port'), 5000)
    .option(
      '--api-key-file <file>',
      'require "Authorization: Bearer <key>" (the file\'s content) on every endpoint but /health',
    );
}

/** Micro-batching and the forward's batch size and token budget. */
function addBatchingOptions(cmd: Command): Command {
  return cmd
    .option(
      '--max-batch <n>',
      'most judge items per micro-batch',
      (v) => positiveInt(v, '--max-batch'),
      SERVER_DEFAULTS.maxBatch,
    )
    .option(
      '--max-wait-ms <ms>',
      'longest an item waits for its batch to fill',
      (v) => nonNegativeInt(v, '--max-wait-ms'),
      SERVER_DEFAULTS.maxWaitMs,
    )
    .option(
      '--max-queue <n>',
      'most judge items waiting; beyond it requests get 503 + Retry-After',
      (v) => positiveInt(v, '--max-queue'),
      SERVER_DEFAULTS.maxQueue,
    )
    .option('--batch-size <n>', "forward batch size (default: the criterion's, as arm score)", (v) =>
      positiveInt(v, '--batch-size'),
    )
    .option('--max-length <n>', "token budget per judge prompt (default: the criterion's)", (v) =>
      positiveInt(v, '--max-length'),
    );
}

/** Per-request limits, timeouts and connections (README "Reliability (reward server)"). */
function addLimitOptions(cmd: Command): Command {
  return cmd
    .option(
      '--body-limit-mib <n>',
      'largest request body; larger gets 413 (bodies over 256 KiB are parsed off the main thread, but an accepted ' +
        'one still costs it about 4 ms per MiB)',
      (v) => positiveInt(v, '--body-limit-mib'),
      SERVER_DEFAULTS.bodyLimit / 2 ** 20,
    )
    .option(
      '--max-request-items <n>',
      'most entries in one request (query, prompts, input, items, pairs, labels; never more than --max-queue); ' +
        'more gets 413 before any is looked at',
      (v) => positiveInt(v, '--max-request-items'),
      SERVER_DEFAULTS.maxRequestItems,
    )
    .option(
      '--request-timeout-s <s>',
      'a client must send a whole request (headers and body) within this; else 408 and the connection is closed',
      (v) => positiveInt(v, '--request-timeout-s'),
      SERVER_DEFAULTS.requestTimeoutMs / 1000,
    )
    .option(
      '--idle-timeout-s <s>',
      'a connection with no request being answered that sends nothing this long is closed',
      (v) => positiveInt(v, '--idle-timeout-s'),
      SERVER_DEFAULTS.idleTimeoutMs / 1000,
    )
    .option(
      '--keep-alive-timeout-s <s>',
      'an idle kept-alive connection is closed this long after its last response',
      (v) => positiveInt(v, '--keep-alive-timeout-s'),
      SERVER_DEFAULTS.keepAliveTimeoutMs / 1000,
    )
    .option(
      '--max-requests-per-socket <n>',
      'requests one kept-alive connection may carry before it is closed (0: no limit)',
      (v) => nonNegativeInt(v, '--max-requests-per-socket'),
      SERVER_DEFAULTS.maxRequestsPerSocket,
    )
    .option(
      '--max-connections <n>',
      'most open connections; beyond it new ones are closed at once',
      (v) => positiveInt(v, '--max-connections'),
      SERVER_DEFAULTS.maxConnections,
    );
}

/** What the rewards are (readout, transform, too long), how queries without prompts are split, image paths. */
function addRewardOptions(cmd: Command): Command {
  return cmd
    .addOption(
      new Option(
        '--reward-readout <kind>',
        '/get_reward "rewards": P(Yes), the Yes/No-normalised probability, or logit(Yes) − logit(No)',
      )
        .choices(['reward', 'normalized', 'logit-diff'])
        .default('reward'),
    )
    .option('--score-transform <t>', '/get_reward "scores" from rewards: none | logit | threshold:<x>', 'none')
    .option('--too-long-reward <x>', 'reward sent for an item too long to score (default null)')
    .addOption(
      new Option(
        '--split-without-prompts <rule>',
        '/get_reward without "prompts" and /classify: refuse (400), or cut at the last assistant-turn opener — ' +
          'RISK: a response that spells a turn opener moves the question and gets its own question graded; use ' +
          'only with trusted policies',
      )
        .choices([...SPLIT_WITHOUT_PROMPTS])
        .default('refuse'),
    )
    .option(
      '--image-root <dir>',
      '/v1/score "images" paths (image-text checkpoints) are read under this folder; paths outside it are refused',
      '.',
    );
}

/** The flags that need reading or checking before the model loads. */
interface ServeInputs {
  apiKey: string | undefined;
  combine: Record<string, number> | undefined;
  scoreTransform: ScoreTransform;
  tooLongReward: number | null;
  criteria: { name: string; file: string }[];
  imageRoot: string;
}

/**
 * Checks the flags, loads the model in the scoring thread, serves until a signal, then drains (what each signal
 * does: src/server/stop-signals.ts).
 */
async function serveCommand(o: ServeCliOptions): Promise<void> {
  const inputs = serveInputs(o);
  const log = (line: string) => process.stderr.write(`${line}\n`);
  const stops = new StopSignals(log);
  if (!o.quiet) {
    if (process.env.npm_command !== undefined) log(NPM_NOTE);
    log(
      `arm serve: loading ${o.model} and ${inputs.criteria.length} criteria in the scoring thread (the first run ` +
        `builds the graph)…`,
    );
  }
  // The model lives in a worker thread so that HTTP stays responsive while it computes (engine.ts).
  const engine = await loadEngine(o, inputs, stops);
  if (!engine) return;
  stops.beforeForcedExit = () => engine.abort();
  let closed = false;
  try {
    const server = await createRewardServer(rewardServerOptions(o, inputs, engine));
    const url = await server.listen({ host: o.host, port: o.port });
    const names = inputs.criteria.map((c) => c.name);
    log(
      `arm serve: listening on ${url} (model ${engine.info.model.id}; criteria ${names.join(', ')}` +
        `${inputs.combine ? `; combine ${o.combine}` : ''}${inputs.apiKey ? '; API key required' : ''})`,
    );
    await server.warm();
    log(`arm serve: ready`);
    const why = await stops.first;
    log(
      `arm serve: ${why}: no new requests (draining: /ready and new scoring requests answer 503); finishing ` +
        `${server.scheduler.queueDepth} queued items and requests in flight`,
    );
    await server.close();
    closed = true;
    log('arm serve: drained, exiting');
  } finally {
    if (!closed) await engine.close();
  }
}

/** Said at start under npm, whose shell does not pass SIGTERM on (stop-signals.ts). */
const NPM_NOTE =
  'arm serve: started through npm, which passes SIGTERM to its shell, not to this server (it then stops when npm ' +
  'has gone); to stop it with signals from a supervisor, start it without npm: node node_modules/.bin/arm serve …';

/** The worker engine once loaded; null when a signal stopped the load (said on stderr; the command then exits 0). */
async function loadEngine(o: ServeCliOptions, inputs: ServeInputs, stops: StopSignals): Promise<WorkerEngine | null> {
  const loading = WorkerEngine.start(
    {
      model: o.model,
      load: { cacheDir: o.cacheDir, threads: o.threads, revision: o.revision, ...weightFormatOptions(o) },
      criteria: inputs.criteria,
    },
    { signal: stops.signal },
  );
  stops.beforeForcedExit = () => loading.then((e) => e.abort()).catch(() => undefined);
  let loaded = false;
  void stops.first.then((why) => {
    if (!loaded) process.stderr.write(`arm serve: ${why} while loading the model: stopping without serving\n`);
  });
  let engine: WorkerEngine;
  try {
    engine = await loading;
  } catch (e) {
    if (!(e instanceof LoadStoppedError)) throw e;
    process.stderr.write('arm serve: stopped before serving, exiting\n');
    return null;
  }
  loaded = true;
  if (!stops.stopping) return engine;
  // The signal came as the load finished: the worker may have ended already (close() then returns at once).
  await engine.close();
  process.stderr.write('arm serve: stopped before serving, exiting\n');
  return null;
}

/** Reads the API key, parses --combine, --score-transform and --too-long-reward, checks --rm files and --image-root. */
function serveInputs(o: ServeCliOptions): ServeInputs {
  const apiKey = o.apiKeyFile === undefined ? undefined : readApiKey(o.apiKeyFile);
  const combine = o.combine === undefined ? undefined : parseCombine(o.combine);
  const scoreTransform = parseTransform(o.scoreTransform);
  const tooLongReward = o.tooLongReward === undefined ? null : finiteNumber(o.tooLongReward, '--too-long-reward');
  const { criteria } = criterionArgs(o.rm);
  const imageRoot = path.resolve(o.imageRoot);
  if (!fs.existsSync(imageRoot) || !fs.statSync(imageRoot).isDirectory())
    throw new Error(`--image-root ${o.imageRoot}: no such folder`);
  return { apiKey, combine, scoreTransform, tooLongReward, criteria, imageRoot };
}

function rewardServerOptions(o: ServeCliOptions, inputs: ServeInputs, engine: WorkerEngine): RewardServerOptions {
  return {
    engine,
    combine: inputs.combine,
    maxBatch: o.maxBatch,
    maxWaitMs: o.maxWaitMs,
    maxQueue: o.maxQueue,
    batchSize: o.batchSize,
    maxLength: o.maxLength,
    bodyLimit: o.bodyLimitMib * 2 ** 20,
    apiKey: inputs.apiKey,
    readout: o.rewardReadout,
    scoreTransform: inputs.scoreTransform,
    tooLongReward: inputs.tooLongReward,
    modelName: o.model,
    log: (line) => process.stderr.write(`${line}\n`),
    imageRoot: inputs.imageRoot,
    splitWithoutPrompts: o.splitWithoutPrompts,
    requestTimeoutMs: o.requestTimeoutS * 1000,
    idleTimeoutMs: o.idleTimeoutS * 1000,
    keepAliveTimeoutMs: o.keepAliveTimeoutS * 1000,
    maxRequestsPerSocket: o.maxRequestsPerSocket,
    maxConnections: o.maxConnections,
    maxRequestItems: o.maxRequestItems,
  };
}

/** `name=file` or `file` (named after the file: concise.arm.safetensors → concise). */
function parseCombine(v: string): Record<string, number> {
  const out: Record<string, number> = {};
  for (const part of v
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean)) {
    const [name, w] = part.split('=');
    if (!name || w === undefined) throw new Error(`--combine: "${part}" is not name=weight`);
    out[name] = finiteNumber(w, `--combine weight of ${name}`);
  }
  if (!Object.keys(out).length) throw new Error('--combine: give name=weight pairs, e.g. concise=0.5,safe=0.5');
  // /classify reports the combination as a probability: weights must be a convex combination's (≥ 0, sum > 0).
  const negative = Object.entries(out).find(([, w]) => w < 0);
  if (negative)
    throw new Error(
      `--combine: the weight of ${negative[0]} is ${negative[1]}; weights must be ≥ 0 (the combined reward is a ` +
        `weighted mean of probabilities)`,
    );
  if (Object.values(out).reduce((a, b) => a + b, 0) <= 0)
    throw new Error('--combine: the weights sum to 0; give at least one positive weight');
  return out;
}

function parseTransform(v: string): ScoreTransform {
  if (v === 'none' || v === 'logit') return { kind: v };
  const m = /^threshold:(.+)$/.exec(v);
  if (m) return { kind: 'threshold', at: finiteNumber(m[1]!, '--score-transform threshold') };
  throw new Error(`--score-transform must be none, logit or threshold:<x>, got ${JSON.stringify(v)}`);
}

function finiteNumber(v: string, flag: string): number {
  const n = Number(v);
  if (v.trim() === '' || !Number.isFinite(n)) throw new Error(`${flag} must be a number, got ${JSON.stringify(v)}`);
  return n;
}

function readApiKey(file: string): string {
  let key: string;
  try {
    key = fs.readFileSync(file, 'utf8').trim();
  } catch (e) {
    throw new Error(
      `--api-key-file ${file}: cannot read (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`,
    );
  }
  if (!key) throw new Error(`--api-key-file ${file}: the file is empty`);
  return key;
}
