/**
 * The routes that score nothing: `/health` (the process answers; never needs the API key), `/ready` (200 once warm,
 * 503 while warming or draining), `/metrics` (Prometheus text) and `/v1/criteria` (what is loaded, from each
 * criterion file's metadata).
 */
import type { FastifyInstance } from 'fastify';
import type { ServerMetrics } from '../metrics.js';
import type { RouteContext } from './context.js';

/** Where the server is in its life: /ready answers 200 only when 'ready'. */
export type ServerPhase = 'warming' | 'ready' | 'draining';

export function registerStatusRoutes(
  app: FastifyInstance,
  ctx: RouteContext,
  { metrics, phase }: { metrics: ServerMetrics; phase: () => ServerPhase },
): void {
  app.get('/health', async () => ({ status: 'ok' }));

  app.get('/ready', async (_req, reply) => {
    const now = phase();
    if (now !== 'ready') return reply.code(503).send({ status: now });
    return { status: 'ready', queueItems: ctx.scheduler.queueDepth };
  });

  app.get('/metrics', async (_req, reply) => {
    reply.header('Content-Type', metrics.registry.contentType);
    return metrics.registry.metrics();
  });

  app.get('/v1/criteria', async () => loadedCriteria(ctx));
}

/** The model, the default target, and each criterion as its file describes it (with the server's overrides). */
function loadedCriteria({ info, settings }: RouteContext) {
  const { combine, criteria } = settings;
  return {
    model: { id: info.model.id, family: info.model.family, layers: info.model.numLayers, heads: info.model.numHeads },
    default: combine ? 'combine' : criteria.size === 1 ? info.criteria[0]!.name : null,
    combine: combine ?? null,
    readout: settings.readout,
    criteria: info.criteria.map(({ name, file, meta: m }) => {
      return {
        name,
        file,
        template: m.template.kind,
        chat: m.template.chat,
        answers: m.answerTokens.strings,
        heads: m.heads.length,
        headStrategy: m.headStrategy,
        mode: m.mode,
        seed: m.seed,
        maxLength: settings.maxLength ?? m.hyper.maxLength,
        batchSize: settings.batchSize ?? m.hyper.batchSize,
        examples: m.examples.count,
        examplesSha256: m.examples.sha256,
        fittedOn: m.model.id,
        createdAt: m.fit.createdAt,
        weight: combine?.[name] ?? null,
      };
    }),
  };
}
