/**
 * Prometheus metrics (prom-client), on a registry of their own so that several servers in one process (tests)
 * do not collide. Rates (items/s, tokens/s) are counters: Prometheus' rate() turns them into per-second values.
 */
import client from 'prom-client';
import type { BatchReport } from './scheduler.js';

export interface ServerMetrics {
  registry: client.Registry;
  requests: client.Counter<'endpoint' | 'status'>;
  latency: client.Histogram<'endpoint'>;
  queueItems: client.Gauge;
  batchItems: client.Histogram;
  batchSeconds: client.Histogram;
  items: client.Counter<'criterion'>;
  tokens: client.Counter<'criterion'>;
  tooLong: client.Counter<'criterion'>;
  textTokens: client.Counter<'criterion'>;
  unknownTokens: client.Counter<'criterion'>;
  observeBatch(r: BatchReport): void;
}

export function createMetrics(): ServerMetrics {
  const registry = new client.Registry();
  client.collectDefaultMetrics({ register: registry, prefix: 'arm_' });
  const requests = new client.Counter({
    name: 'arm_http_requests_total',
    help: 'HTTP requests by endpoint and status code',
    labelNames: ['endpoint', 'status'] as const,
    registers: [registry],
  });
  const latency = new client.Histogram({
    name: 'arm_http_request_duration_seconds',
    help: 'HTTP request latency (receipt to response) by endpoint',
    labelNames: ['endpoint'] as const,
    buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 180],
    registers: [registry],
  });
  const queueItems = new client.Gauge({
    name: 'arm_queue_items',
    help: 'judge items waiting for a batch (a pair counts 2)',
    registers: [registry],
  });
  const batchItems = new client.Histogram({
    name: 'arm_batch_items',
    help: 'judge items per micro-batch',
    buckets: [1, 2, 4, 8, 16, 32, 64, 128, 256],
    registers: [registry],
  });
  const batchSeconds = new client.Histogram({
    name: 'arm_batch_seconds',
    help: 'time to score one micro-batch',
    buckets: [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30],
    registers: [registry],
  });
  const items = new client.Counter({
    name: 'arm_items_scored_total',
    help: 'judge items scored (rate() gives items per second)',
    labelNames: ['criterion'] as const,
    registers: [registry],
  });
  const { passItems, criteriaItems } = passCounters(registry);
  const tokens = new client.Counter({
    name: 'arm_tokens_total',
    help: 'tokens fed to the model (rate() gives tokens per second); criteria scored in one pass as "a+b"',
    labelNames: ['criterion'] as const,
    registers: [registry],
  });
  const tooLong = new client.Counter({
    name: 'arm_items_too_long_total',
    help: 'examples not scored because they do not fit the length budget',
    labelNames: ['criterion'] as const,
    registers: [registry],
  });
  const { textTokens, unknownTokens } = judgeTokenCounters(registry);
  return {
    registry,
    requests,
    latency,
    queueItems,
    batchItems,
    batchSeconds,
    items,
    tokens,
    tooLong,
    textTokens,
    unknownTokens,
    observeBatch(r) {
      batchItems.observe(r.items);
      batchSeconds.observe(r.seconds);
      passItems.inc(r.items);
      criteriaItems.inc(r.items * r.criteria.length);
      // Tokens are fed once for the criteria of a pass: counted under their names joined ("a+b").
      tokens.inc({ criterion: r.criteria.join('+') }, r.tokens);
      for (const criterion of r.criteria) {
        items.inc({ criterion }, r.items);
        if (r.tooLong) tooLong.inc({ criterion }, r.tooLong);
        textTokens.inc({ criterion }, r.textTokens);
        unknownTokens.inc({ criterion }, r.unknownTokens);
      }
    },
  };
}

/** Their ratio is the share of the judge prompts the model's vocabulary did not know (arm/unknown-tokens.ts). */
function judgeTokenCounters(registry: client.Registry): Pick<ServerMetrics, 'textTokens' | 'unknownTokens'> {
  const textTokens = new client.Counter({
    name: 'arm_judge_text_tokens_total',
    help: 'text tokens of the judge prompts scored (control tokens left out)',
    labelNames: ['criterion'] as const,
    registers: [registry],
  });
  const unknownTokens = new client.Counter({
    name: 'arm_judge_unknown_tokens_total',
    help: 'judge-prompt text tokens the vocabulary lacks (<unk>, or byte fallback); mostly unknown: scores mean little',
    labelNames: ['criterion'] as const,
    registers: [registry],
  });
  return { textTokens, unknownTokens };
}

/** Several criteria of one pass score an item with one prompt run: the model's work, and the scores given. */
function passCounters(registry: client.Registry): { passItems: client.Counter; criteriaItems: client.Counter } {
  const passItems = new client.Counter({
    name: 'arm_pass_items_total',
    help: 'judge items run through the model (once per item, whatever the number of criteria sharing its pass)',
    registers: [registry],
  });
  const criteriaItems = new client.Counter({
    name: 'arm_criteria_items_total',
    help: 'judge items times the criteria they were scored under',
    registers: [registry],
  });
  return { passItems, criteriaItems };
}
