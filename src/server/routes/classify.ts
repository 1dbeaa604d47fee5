/**
 * vLLM's `POST /classify`, which verl's reward client calls: `{model, input: str | [str]}` →
 * `{id, object, created, model, data: [{index, label, probs: [P(No), P(Yes)], num_classes: 2}]}` (verl reads
 * `probs[-1]`).
 *
 * `input` has no prompt field, so the question can only be told from the response by the last-assistant-turn
 * heuristic (split.ts), which a response can steer: refused (400) unless the server opted in
 * (--split-without-prompts last-assistant-turn). Scored as /get_reward scores, P(Yes) combined as a weighted mean.
 */
import type { FastifyInstance } from 'fastify';
import type { Example } from '../../data/examples.js';
import type { ExampleScore } from '../engine-types.js';
import { HttpError } from '../http-errors.js';
import { combineValues, probabilityOfYes } from '../readout.js';
import { SplitError } from '../split.js';
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

const classifyBody = {
  type: 'object',
  required: ['input'],
  properties: {
    model: { type: 'string' },
    input: { anyOf: [{ type: 'string' }, { type: 'array', items: { type: 'string' } }] },
  },
};

interface ClassifyBody {
  model?: string;
  input: string | string[];
}

type ClassifyEntry =
  | { index: number; label: string; probs: number[]; num_classes: number }
  | { index: number; label: null; probs: null; num_classes: number; too_long: boolean };

export function registerClassifyRoute(app: FastifyInstance, ctx: RouteContext): void {
  let answered = 0; // numbers the answers' ids: classify-1, classify-2, …
  app.post<{ Body: ClassifyBody; Querystring: { criterion?: string } }>(
    '/classify',
    { schema: { body: classifyBody, querystring: criterionQuery } },
    async (req, reply) => {
      const inputs = typeof req.body.input === 'string' ? [req.body.input] : req.body.input;
      const { names, weights } = targets(ctx, req.query.criterion);
      checkCapacity(ctx, inputs.length * names.length, 'input');
      if (ctx.settings.splitWithoutPrompts === 'refuse' && inputs.length > 0) {
        throw new HttpError(
          400,
          'input',
          'input: /classify has no prompt to tell the question from the response (a response can spell a turn ' +
            'opener); use /get_reward with prompts or /v1/score, or ' +
            SPLIT_OPT_IN,
        );
      }
      requireScalar(ctx, names, '/classify');
      const scored = await scoreAll(ctx, reply, names, splitInputs(ctx, req.body, inputs), 'input');
      return {
        id: `classify-${++answered}`,
        object: 'list',
        created: Math.floor(Date.now() / 1000),
        model: req.body.model ?? ctx.settings.modelName ?? ctx.info.model.id,
        data: classes(ctx, scored, weights),
      };
    },
  );
}

/** Each input split by the heuristic; a split error names `input[i]` and speaks of inputs, not queries and prompts. */
function splitInputs(ctx: RouteContext, body: ClassifyBody, inputs: string[]): Example[] {
  return inputs.map((text, i) => {
    try {
      const { prompt, response } = ctx.splits.entry(body, text, undefined, i);
      return scalarExample(`c${i}`, prompt, response);
    } catch (e) {
      if (e instanceof SplitError)
        throw new SplitError(
          `input[${i}]`,
          e.message
            .replaceAll(`query[${i}]`, `input[${i}]`)
            .replace(/ and prompts\[\d+\] was not sent, so/, ', so')
            .replace(/; send prompts$/, '; send the conversation through the chat template'),
        );
      throw e;
    }
  });
}

/**
 * A distribution over the two classes per input: P(Yes) as read out (logit-diff → its sigmoid), combined over
 * criteria as a weighted mean; an input too long to score has none.
 */
function classes(
  { settings: { readout } }: RouteContext,
  scored: ExampleScore[][],
  weights: number[] | null,
): ClassifyEntry[] {
  const pYes = scored.map((ss) => ss.map((s) => probabilityOfYes(s, readout)));
  const totalWeight = weights?.reduce((a, b) => a + b, 0) ?? 1;
  return scored[0]!.map((_, index) => {
    const c = combineValues(pYes, weights, index);
    const p = c === null ? null : c / (weights ? totalWeight : 1);
    return p === null
      ? { index, label: null, probs: null, num_classes: 2, too_long: true }
      : { index, label: p >= 0.5 ? 'Yes' : 'No', probs: [1 - p, p], num_classes: 2 };
  });
}
