/**
 * What the scoring routes (get-reward.ts, classify.ts, score.ts) share: the server's parts they use
 * (`RouteContext`), which criteria a request scores, the checks made from a request's counts before any per-item
 * work, and `scoreAll`, which queues a request's examples on the scheduler and turns an item's failure into the
 * HTTP error naming it.
 */
import type { FastifyReply } from 'fastify';
import type { CriterionMeta } from '../../arm/criterion.js';
import type { Example, Prompt } from '../../data/examples.js';
import type { EngineInfo, ExampleScore } from '../engine-types.js';
import { HttpError } from '../http-errors.js';
import type { ServerSettings } from '../options.js';
import { ItemFailedError, type MicroBatcher } from '../scheduler.js';
import type { BodySplits } from '../split.js';
import { reportUnknownTokens } from '../unknown-tokens.js';

/** The server's parts a route uses. */
export interface RouteContext {
  info: EngineInfo;
  settings: ServerSettings;
  scheduler: MicroBatcher;
  /** The splits of /get_reward and /classify entries (made ahead by the body thread for large bodies). */
  splits: BodySplits;
}

/** The query string every scoring route takes: `?criterion=name`. */
export const criterionQuery = { type: 'object', properties: { criterion: { type: 'string' } } };

/** How to opt in to splitting without a prompt, as the 400s of /get_reward and /classify say. */
export const SPLIT_OPT_IN =
  'start the server with --split-without-prompts last-assistant-turn (library: splitWithoutPrompts) to cut at the ' +
  'last assistant-turn opener, which a response can move by spelling one';

/** The criteria a request scores and how their values combine: ?criterion=, else the combination, else the only one. */
export function targets(
  { settings: { criteria, combine } }: RouteContext,
  asked: string | undefined,
): { names: string[]; weights: number[] | null } {
  const loaded = () => [...criteria.keys()].join(', ');
  if (asked !== undefined) {
    if (!criteria.has(asked))
      throw new HttpError(
        400,
        'criterion',
        `criterion: no criterion named ${JSON.stringify(asked)} (loaded: ${loaded()})`,
      );
    return { names: [asked], weights: null };
  }
  if (combine) return { names: Object.keys(combine), weights: Object.values(combine) };
  if (criteria.size === 1) return { names: [...criteria.keys()], weights: null };
  throw new HttpError(
    400,
    'criterion',
    `criterion: ${criteria.size} criteria are loaded (${loaded()}) and no --combine is set; name one with ?criterion=`,
  );
}

/** Refuses a ranked (pairs-only) criterion on an endpoint that scores single responses. */
export function requireScalar({ settings: { criteria } }: RouteContext, names: string[], endpoint: string): void {
  for (const n of names) {
    if (criteria.get(n)!.template.kind !== 'scalar')
      throw new HttpError(
        400,
        'criterion',
        `criterion: "${n}" uses the ranked template, which scores pairs only; ${endpoint} needs a scalar (Yes/No) ` +
          `criterion (POST /v1/score with pairs for this one)`,
      );
  }
}

/** Refuses a request that could never be queued, from its counts alone: before any per-item work. */
export function checkCapacity({ settings: { maxQueue } }: RouteContext, cost: number, field: string): void {
  if (cost > maxQueue)
    throw new HttpError(
      413,
      field,
      `${field}: ${cost} judge items in one request exceed --max-queue ${maxQueue}; send smaller requests`,
    );
}

/**
 * Submits `examples` to every criterion in `names` (the handler checked capacity) and resolves with their scores,
 * one list per criterion; a client that goes away cancels them all. An item that fails alone is a 422 naming it as
 * `field[i]`.
 */
export async function scoreAll(
  { scheduler, settings }: RouteContext,
  reply: FastifyReply,
  names: string[],
  examples: Example[],
  field: string,
): Promise<ExampleScore[][]> {
  const abort = new AbortController();
  // 'close' on the response before it finished: the client went away.
  reply.raw.on('close', () => {
    if (!reply.raw.writableFinished) abort.abort();
  });
  try {
    // Criteria that share a pass are one job: each prompt runs once, its last token as one row per criterion.
    const scored = await scheduler.submitMany(names, examples, abort.signal);
    reportUnknownTokens(settings, reply, names, scored);
    return scored;
  } catch (e) {
    abort.abort(); // one criterion refused (queue full) or failed: withdraw what the others queued
    if (e instanceof ItemFailedError) {
      const at = `${field}[${e.slot}]`;
      throw new HttpError(
        422,
        at,
        `${at}: ${e.message} (the engine scores other items; the rest of its micro-batch was scored without it)`,
      );
    }
    throw e;
  }
}

export function scalarExample(id: string, prompt: Prompt, response: string): Example {
  return { kind: 'scalar', id, line: 0, row: {}, prompt, response, label: null };
}

/** A small example every criterion scores: the warm-up, and the scheduler's probe of a working engine. */
export function probeExample(meta: CriterionMeta): Example {
  return meta.template.kind === 'ranked'
    ? { kind: 'pair', id: 'probe', line: 0, row: {}, prompt: 'Warm-up.', chosen: 'Yes.', rejected: 'No.' }
    : scalarExample('probe', 'Warm-up.', 'Yes.');
}
