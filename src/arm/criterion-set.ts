/**
 * Several criteria of one model scored together. A judge prompt depends on the template (kind, text, chat setting,
 * chat-template arguments), the length budget and the model, never on the criterion's heads or means, which act at
 * the last position only. Criteria that agree on those are one *pass*: every prompt is prefilled once and its last
 * token runs as K rows, row k patched with criterion k's heads and means (scoreExamplesUnder), so K criteria cost
 * about one prefill plus K one-token rows. Criteria with another template form a pass of their own; the scores are
 * the same either way, within float32 rounding.
 */
import type { Decoder } from '../model/decoder.js';
import type { Example } from '../data/examples.js';
import type { CriterionMeta } from './criterion.js';
import { ActivationRM, scoreExamplesUnder, type ExampleScore, type ScoreOptions } from './rm.js';

/** A criterion with the name its scores are reported under. */
export interface NamedCriterion {
  name: string;
  /** The criterion file (error messages, provenance). */
  file: string;
  rm: ActivationRM;
}

/**
 * What makes two criteria's judge prompts identical token for token (on one decoder): the template and the
 * length budget (`maxLength` overrides every criterion's own, as `--max-length` does).
 */
export function passKey(meta: CriterionMeta, maxLength?: number): string {
  const t = meta.template;
  return canonicalJson({
    kind: t.kind,
    text: t.text,
    chat: t.chat,
    templateKwargs: t.templateKwargs ?? null,
    maxLength: maxLength ?? meta.hyper.maxLength,
  });
}

/** JSON with object keys sorted, so that equal values give equal strings whatever order a file wrote them in. */
function canonicalJson(value: unknown): string {
  return JSON.stringify(value, (_key, v: unknown) =>
    v && typeof v === 'object' && !Array.isArray(v)
      ? Object.fromEntries(Object.entries(v as Record<string, unknown>).sort(([a], [b]) => (a < b ? -1 : 1)))
      : v,
  );
}

export class CriterionSet {
  private readonly byName: Map<string, NamedCriterion>;

  /** Criteria already loaded on `decoder` (names unique). */
  constructor(
    readonly decoder: Decoder,
    readonly criteria: readonly NamedCriterion[],
  ) {
    if (criteria.length === 0) throw new Error('a criterion set needs at least one criterion');
    this.byName = new Map();
    for (const c of criteria) {
      if (this.byName.has(c.name))
        throw new Error(
          `two criteria are named ${JSON.stringify(c.name)} (${this.byName.get(c.name)!.file}, ${c.file})`,
        );
      if (c.rm.decoder !== decoder) throw new Error(`${c.file}: the criterion is loaded on another decoder`);
      this.byName.set(c.name, c);
    }
  }

  /**
   * Loads criterion files for `decoder`; a file fitted on another model (config, weights, tokenizer or chat
   * template) is refused with an error naming it. `warn` receives non-fatal mismatches (another --dtype).
   */
  static load(
    decoder: Decoder,
    files: readonly { name: string; file: string }[],
    opts: { warn?: (message: string) => void } = {},
  ): CriterionSet {
    return new CriterionSet(
      decoder,
      files.map(({ name, file }) => ({ name, file, rm: ActivationRM.load(decoder, file, opts) })),
    );
  }

  get names(): string[] {
    return this.criteria.map((c) => c.name);
  }

  get(name: string): NamedCriterion {
    const c = this.byName.get(name);
    if (!c) throw new Error(`no criterion named ${JSON.stringify(name)} (loaded: ${this.names.join(', ')})`);
    return c;
  }

  /** The criteria (of `names`, default all) grouped into passes, in first-appearance order. */
  passes(names: readonly string[] = this.names, maxLength?: number): NamedCriterion[][] {
    const byKey = new Map<string, NamedCriterion[]>();
    for (const name of names) {
      const c = this.get(name);
      const key = passKey(c.rm.criterion.meta, maxLength);
      if (!byKey.has(key)) byKey.set(key, []);
      byKey.get(key)!.push(c);
    }
    return [...byKey.values()];
  }

  /**
   * Scores `examples` under the criteria `names` (default all): one pass per group of criteria whose judge prompts
   * agree. Returns each criterion's scores, as ActivationRM.scoreExamples gives them for that criterion alone.
   */
  async scoreExamples(
    examples: Example[],
    opts: ScoreOptions & { names?: readonly string[] } = {},
  ): Promise<Map<string, ExampleScore[]>> {
    const out = new Map<string, ExampleScore[]>();
    const passes = this.passes(opts.names ?? this.names, opts.maxLength);
    let before = 0;
    const total = passes.length;
    for (const pass of passes) {
      const onProgress =
        opts.onProgress && ((done: number, n: number) => opts.onProgress!(before * n + done, total * n));
      const scores = await scoreExamplesUnder(
        pass.map((c) => c.rm),
        examples,
        { ...opts, onProgress },
      );
      pass.forEach((c, k) => out.set(c.name, scores[k]!));
      before++;
    }
    // In the order asked, whatever the passes' order.
    return new Map((opts.names ?? this.names).map((n) => [n, out.get(n)!]));
  }
}
