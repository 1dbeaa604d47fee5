/**
 * The native `POST /v1/score` (TRL's reward function, scripts): `{criterion?, items: [{prompt, response, images?}]}`
 * or `{criterion?, pairs: [{prompt, chosen, rejected, images?}]}` → `{criterion, results}`, each result the fields
 * `arm score` writes; with `criteria: [a, b]` instead → `{criteria, results}`, each result `{id?, scores: {a: fields,
 * b: fields}}`, every criterion of one pass scored with one run of each prompt. Prompts may be message lists; image
 * paths are checked and each image decoded before anything is queued (image-paths.ts), so a bad image is this
 * request's 400.
 */
import type { FastifyInstance, FastifyReply } from 'fastify';
import type { Example, Prompt } from '../../data/examples.js';
import { HttpError } from '../http-errors.js';
import { imageFiles, ReadableImages, type ImageRoot } from '../image-paths.js';
import { armFields } from '../readout.js';
import { checkCapacity, criterionQuery, scalarExample, scoreAll, targets, type RouteContext } from './context.js';

const turnList = {
  type: 'array',
  minItems: 1,
  items: {
    type: 'object',
    required: ['role', 'content'],
    properties: { role: { type: 'string' }, content: { type: 'string' } },
  },
};
const promptSchema = { anyOf: [{ type: 'string' }, turnList] };
const idSchema = { anyOf: [{ type: 'string' }, { type: 'number' }] };

const scoreBody = {
  type: 'object',
  properties: {
    criterion: { type: 'string' },
    criteria: { type: 'array', minItems: 1, uniqueItems: true, items: { type: 'string' } },
    items: {
      type: 'array',
      items: {
        type: 'object',
        required: ['prompt', 'response'],
        properties: { id: idSchema, prompt: promptSchema, response: promptSchema, images: {} },
      },
    },
    pairs: {
      type: 'array',
      items: {
        type: 'object',
        required: ['prompt', 'chosen', 'rejected'],
        properties: { id: idSchema, prompt: promptSchema, chosen: promptSchema, rejected: promptSchema, images: {} },
      },
    },
  },
};

type Turns = { role: string; content: string }[];
interface ScoreItemIn {
  id?: string | number;
  prompt: string | Turns;
  response: string | Turns;
  images?: unknown;
}
interface ScorePairIn {
  id?: string | number;
  prompt: string | Turns;
  chosen: string | Turns;
  rejected: string | Turns;
  images?: unknown;
}
interface ScoreBody {
  criterion?: string;
  criteria?: string[];
  items?: ScoreItemIn[];
  pairs?: ScorePairIn[];
}

export function registerScoreRoute(app: FastifyInstance, ctx: RouteContext): void {
  const readable = new ReadableImages();
  app.post<{ Body: ScoreBody; Querystring: { criterion?: string } }>(
    '/v1/score',
    { schema: { body: scoreBody, querystring: criterionQuery } },
    (req, reply) => score(ctx, readable, req.body, req.query.criterion, reply),
  );
}

/** The criteria a /v1/score request names: `criteria`, or `criterion` (body or query), or the only one loaded. */
function askedCriteria(ctx: RouteContext, body: ScoreBody, queryCriterion: string | undefined): string[] {
  const { criteria } = ctx.settings;
  if (body.criteria !== undefined) {
    if (body.criterion !== undefined || queryCriterion !== undefined)
      throw new HttpError(400, 'criteria', 'criteria: send "criteria" or "criterion", not both');
    for (const [i, name] of body.criteria.entries()) {
      if (!criteria.has(name))
        throw new HttpError(
          400,
          `criteria[${i}]`,
          `criteria[${i}]: no criterion named ${JSON.stringify(name)} (loaded: ${[...criteria.keys()].join(', ')})`,
        );
    }
    return body.criteria;
  }
  const asked = body.criterion ?? queryCriterion;
  if (asked === undefined && criteria.size > 1)
    throw new HttpError(
      400,
      'criterion',
      `criterion: ${criteria.size} criteria are loaded (${[...criteria.keys()].join(', ')}); name one, or several ` +
        'with "criteria"',
    );
  return targets(ctx, asked).names.slice(0, 1);
}

/** Checks the request from its counts, builds the examples (images checked and decoded), scores its criteria. */
async function score(
  ctx: RouteContext,
  readable: ReadableImages,
  body: ScoreBody,
  queryCriterion: string | undefined,
  reply: FastifyReply,
): Promise<Record<string, unknown>> {
  const { items, pairs } = body;
  if ((items === undefined) === (pairs === undefined))
    throw new HttpError(
      400,
      'items',
      'items: send either "items" [{prompt, response}] or "pairs" [{prompt, chosen, rejected}] (exactly one of them)',
    );
  const names = askedCriteria(ctx, body, queryCriterion);
  checkCapacity(ctx, items ? items.length : 2 * pairs!.length, items ? 'items' : 'pairs'); // a pair is two judge items
  const imageRoot = { root: ctx.settings.imageRoot, imageText: ctx.info.imageText };
  const found = new Map<string, string>(); // image file → the first field naming it
  const ranked = names.find((n) => ctx.settings.criteria.get(n)!.template.kind === 'ranked');
  const examples = items
    ? itemExamples(items, { ranked: ranked !== undefined, name: ranked ?? names[0]! }, imageRoot, found)
    : pairExamples(pairs!, imageRoot, found);
  // An unreadable image is this request's 400, not a failure of the micro-batch it would share with others.
  await readable.check(found);
  const scores = await scoreAll(ctx, reply, names, examples, items ? 'items' : 'pairs');
  const ids = (items ?? pairs!).map((x) => x.id);
  const withId = (i: number) => (ids[i] === undefined ? {} : { id: ids[i] });
  if (body.criteria === undefined)
    return { criterion: names[0]!, results: scores[0]!.map((s, i) => ({ ...withId(i), ...armFields(s) })) };
  return {
    criteria: names,
    results: examples.map((_, i) => ({
      ...withId(i),
      scores: Object.fromEntries(names.map((n, k) => [n, armFields(scores[k]![i]!)])),
    })),
  };
}

/** Items as scalar examples; a ranked criterion (pairs only) is refused after the first item's images are checked. */
function itemExamples(
  items: ScoreItemIn[],
  criterion: { ranked: boolean; name: string },
  imageRoot: ImageRoot,
  found: Map<string, string>,
): Example[] {
  return items.map((it, i) => {
    const where = `items[${i}]`;
    const images = imageFiles(it.images, `${where}.images`, imageRoot, found);
    if (criterion.ranked)
      throw new HttpError(
        400,
        'items',
        `items: criterion "${criterion.name}" uses the ranked template, which scores pairs only; send pairs`,
      );
    const ex = scalarExample(String(it.id ?? i), judgePrompt(it.prompt, `${where}.prompt`), responseText(it.response));
    return images ? { ...ex, images } : ex;
  });
}

function pairExamples(pairs: ScorePairIn[], imageRoot: ImageRoot, found: Map<string, string>): Example[] {
  return pairs.map((p, i) => {
    const where = `pairs[${i}]`;
    const images = imageFiles(p.images, `${where}.images`, imageRoot, found);
    const ex: Example = {
      kind: 'pair',
      id: String(p.id ?? i),
      line: 0,
      row: {},
      prompt: judgePrompt(p.prompt, `${where}.prompt`),
      chosen: responseText(p.chosen),
      rejected: responseText(p.rejected),
    };
    return images ? { ...ex, images } : ex;
  });
}

/** As the data reader takes a prompt: a non-empty string or a non-empty list of turns. */
function judgePrompt(p: string | Turns, field: string): Prompt {
  if (typeof p === 'string' && !p.trim()) throw new HttpError(400, field, `${field}: is empty`);
  return p;
}

/** A response given as turns (TRL conversational) is their contents joined, as the data reader does. */
function responseText(r: string | Turns): string {
  return typeof r === 'string' ? r : r.map((t) => t.content).join('\n');
}
