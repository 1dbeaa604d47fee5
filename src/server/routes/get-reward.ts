/**
 * OpenRLHF's `POST /get_reward`: `{query[], prompts[], labels[]?}` → `{rewards[], scores[], extra_logs{}}`.
 *
 * `query[i]` is the whole text the policy produced, `prompts[i]` the templated prompt it saw: each entry is split
 * into the judge's prompt and the response (split.ts; for a large body the body thread did it already), the
 * examples are queued on the micro-batching scheduler once per criterion (`scoreAll`), and the scores are read out
 * (readout.ts): `rewards` (combined over criteria under --combine), `scores` (the transform of `rewards`), and
 * `extra_logs` (which items were too long or truncated; each criterion's reward when several are combined).
 */
import type { FastifyInstance, FastifyReply } from 'fastify';
import type { ExampleScore } from '../engine-types.js';
import { HttpError } from '../http-errors.js';
import { combineValues, readValue, transformScore } from '../readout.js';
import {
  checkCapacity,
  criterionQuery,
  requireScalar,
  scalarExample,
  scoreAll,
  SPLIT_OPT_IN,
  targets,
  type RouteContext,
} from './context.js';

const getRewardBody = {
  type: 'object',
  required: ['query'],
  properties: {
    query: { type: 'array', items: { type: 'string' } },
    prompts: { type: 'array', items: { type: 'string' } },
    labels: {}, // accepted and ignored: an Activation RM scores without references
  },
};

interface GetRewardBody {
  query: string[];
  prompts?: string[];
}

interface GetRewardAnswer {
  rewards: (number | null)[];
  scores: (number | null)[];
  extra_logs: Record<string, (number | null)[]>;
}

export function registerGetRewardRoute(app: FastifyInstance, ctx: RouteContext): void {
  app.post<{ Body: GetRewardBody; Querystring: { criterion?: string } }>(
    '/get_reward',
    { schema: { body: getRewardBody, querystring: criterionQuery } },
    (req, reply) => getReward(ctx, req.body, req.query.criterion, reply),
  );
}

/** Checks the request from its counts, splits each query, scores every criterion, answers in OpenRLHF's shape. */
async function getReward(
  ctx: RouteContext,
  body: GetRewardBody,
  criterion: string | undefined,
  reply: FastifyReply,
): Promise<GetRewardAnswer> {
  const { query, prompts } = body;
  const { names, weights } = targets(ctx, criterion);
  checkCapacity(ctx, query.length * names.length, 'query');
  if (prompts && prompts.length !== query.length)
    throw new HttpError(
      400,
      'prompts',
      `prompts: has ${prompts.length} entries, query has ${query.length}; send one prompt per query`,
    );
  if (!prompts && ctx.settings.splitWithoutPrompts === 'refuse' && query.length > 0) {
    throw new HttpError(
      400,
      'prompts',
      'prompts: is required: query[i] alone cannot say where the question ends and the response begins (a ' +
        'response can spell a turn opener); send the templated prompts (OpenRLHF does), or ' +
        SPLIT_OPT_IN,
    );
  }
  requireScalar(ctx, names, '/get_reward');
  const examples = query.map((q, i) => {
    const { prompt, response } = ctx.splits.entry(body, q, prompts?.[i], i);
    return scalarExample(`q${i}`, prompt, response);
  });
  const scored = await scoreAll(ctx, reply, names, examples, 'query');
  return rewardAnswer(ctx, scored, names, weights);
}

/** `scored[j]`: criterion `names[j]`'s scores, one per query. */
function rewardAnswer(
  { settings: { readout, scoreTransform, tooLongReward } }: RouteContext,
  scored: ExampleScore[][],
  names: string[],
  weights: number[] | null,
): GetRewardAnswer {
  const values = scored.map((ss) => ss.map((s) => readValue(s, readout)));
  const combined = scored[0]!.map((_, i) => combineValues(values, weights, i));
  const extra: Record<string, (number | null)[]> = {
    tooLong: scored[0]!.map((_, i) => (scored.some((ss) => ss[i]!.tooLong) ? 1 : 0)),
    truncated: scored[0]!.map((_, i) =>
      scored.some((ss) => 'truncatedTokens' in ss[i]! && ss[i]!.truncatedTokens > 0) ? 1 : 0,
    ),
  };
  if (names.length > 1)
    names.forEach((n, j) => {
      extra[`reward_${n}`] = values[j]!.map((v) => v ?? tooLongReward);
    });
  return {
    rewards: combined.map((v) => v ?? tooLongReward),
    scores: combined.map((v) => transformScore(v, scoreTransform, tooLongReward)),
    extra_logs: extra,
  };
}
