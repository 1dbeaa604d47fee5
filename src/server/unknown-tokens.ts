/**
 * The unknown-token measure (arm/unknown-tokens.ts) on the server. Every scoring request answers with the
 * `x-arm-unknown-token-rate` header: the share of its judge prompts' text tokens that the vocabulary did not know
 * (<unk>, or byte fallback), over every criterion it scored, as a decimal (e.g. "0.8571"); the body's shape is
 * unchanged. A request whose prompts or template are mostly unknown is logged as a warning, at most once a minute
 * per criterion (a trainer sends thousands). /metrics counts the tokens (metrics.ts).
 */
import type { FastifyReply } from 'fastify';
import { scoresUnknown, UnknownTokenWatch } from '../arm/unknown-tokens.js';
import type { ExampleScore } from './engine-types.js';
import type { ServerSettings } from './options.js';

const UNKNOWN_RATE_HEADER = 'x-arm-unknown-token-rate';
const WARN_INTERVAL_MS = 60_000;

/** Each server's watches, by criterion (keyed by the server's settings, which live as long as it does). */
const watches = new WeakMap<ServerSettings, Map<string, UnknownTokenWatch>>();

function watchOf(settings: ServerSettings, name: string): UnknownTokenWatch {
  let byName = watches.get(settings);
  if (!byName) watches.set(settings, (byName = new Map()));
  let watch = byName.get(name);
  if (!watch) {
    const meta = settings.criteria.get(name)!;
    // The HTTP side has no tokenizer: the template's own text is known from the criterion's fit, when recorded.
    watch = new UnknownTokenWatch(null, meta.template, (m) => settings.log?.(`warning: ${m}`), {
      intervalMs: WARN_INTERVAL_MS,
      templateCount: meta.unknownTokens?.template,
    });
    byName.set(name, watch);
  }
  return watch;
}

/** Sets the request's unknown-token header and warns (throttled) per criterion; `scored[j]`: criterion `names[j]`. */
export function reportUnknownTokens(
  settings: ServerSettings,
  reply: FastifyReply,
  names: string[],
  scored: ExampleScore[][],
): void {
  let unknown = 0,
    text = 0;
  names.forEach((name, j) => {
    const count = scoresUnknown(scored[j]!);
    unknown += count.unknown;
    text += count.text;
    watchOf(settings, name).add(scored[j]!, `${reply.request.method} ${reply.request.url}, criterion "${name}"`);
  });
  void reply.header(UNKNOWN_RATE_HEADER, (text ? unknown / text : 0).toFixed(4));
}
