/**
 * The bias report: a biased/flipped probe pair (`arm bias-probe`) evaluated as two runs over the same pairs,
 * and per method the accuracy on each and the bias gap, flipped − biased, paired pair by pair.
 *
 * In the biased split the bias sits on the rejected response, in the flipped split on the chosen one. A method
 * that follows the bias is wrong on the first and right on the second (gap near +1); a method that reads the
 * content scores both alike (gap near 0); a method that learned "biased ⇒ wrong" from the few-shot pool shows a
 * negative gap. Both runs learn from the biased split's pool (as PreferenceHack's 80 few-shot pairs are biased):
 * the flipped run tests whether what was learned was correctness or the bias's absence.
 */
import fs from 'node:fs';
import path from 'node:path';
import type { Decoder } from '../model/decoder.js';
import { promptIdentity, type Example, type PairExample } from '../data/examples.js';
import { biasOf, type BiasRecord } from '../data/bias-probe.js';
import { bootstrapSeedsAndPairs } from './metrics.js';
import { isScored, type PairRunRecord, type RunRecord } from './records.js';
import { runEval, writeResults, type EvalOptions } from './harness.js';
import type { Results } from './aggregate.js';

interface Rate {
  mean: number;
  ci95: [number, number];
}
export interface MethodBias {
  control?: string;
  biased: Rate;
  flipped: Rate;
  gap: Rate;
  pairs: number;
  seeds: number;
}

export interface BiasReport {
  bias: { kind: string; transform: string[] } | null;
  biasedDataset: string;
  flippedDataset: string;
  model: string;
  /** (seed, pair)s every method scored in both runs: what every number is over. */
  commonPairs: number;
  methods: Record<string, MethodBias>;
  generatedAt: string;
}

const key = (r: { seed: number; id: string }) => `${r.seed}|${r.id}`;

/** Per method, accuracy on each split and the paired gap over the (seed, pair)s every method scored in both runs. */
export function biasGaps(
  biased: RunRecord[],
  flipped: RunRecord[],
): { methods: Record<string, MethodBias>; commonPairs: number } {
  const pairsOf = (rs: RunRecord[]) => rs.filter((r): r is PairRunRecord => r.type === 'pair');
  const b = pairsOf(biased),
    f = pairsOf(flipped);
  const names = [...new Set([...b, ...f].map((r) => r.method))];
  const scored = (rs: PairRunRecord[], m: string) => new Set(rs.filter((r) => r.method === m && isScored(r)).map(key));
  const inBoth = names.filter((m) => scored(b, m).size && scored(f, m).size);
  const bothOf = (m: string) => {
    const inF = scored(f, m);
    return new Set([...scored(b, m)].filter((k) => inF.has(k)));
  };
  const common = inBoth.slice(1).reduce(
    (acc, m) => {
      const both = bothOf(m);
      return new Set([...acc].filter((k) => both.has(k)));
    },
    inBoth.length ? bothOf(inBoth[0]!) : new Set<string>(),
  );
  const methods: Record<string, MethodBias> = {};
  for (const m of inBoth) {
    const fb = new Map(f.filter((r) => r.method === m).map((r) => [key(r), r]));
    const rows = b
      .filter((r) => r.method === m && common.has(key(r)))
      .map((r) => ({ seed: r.seed, b: Number(r.correct), f: Number(fb.get(key(r))!.correct) }));
    const seeds = [...new Set(rows.map((r) => r.seed))].sort((x, y) => x - y);
    const perSeed = (v: (r: (typeof rows)[number]) => number) =>
      seeds.map((s) => rows.filter((r) => r.seed === s).map(v));
    const rate = (v: (r: (typeof rows)[number]) => number, bootstrapSeed: number): Rate => {
      const groups = perSeed(v);
      const means = groups.map((g) => g.reduce((a, x) => a + x, 0) / g.length);
      return {
        mean: means.length ? means.reduce((a, x) => a + x, 0) / means.length : NaN,
        ci95: bootstrapSeedsAndPairs(groups, { seed: bootstrapSeed }),
      };
    };
    methods[m] = {
      biased: rate((r) => r.b, 0),
      flipped: rate((r) => r.f, 1),
      gap: rate((r) => r.f - r.b, 2),
      pairs: rows.length,
      seeds: seeds.length,
    };
  }
  return { methods, commonPairs: common.size };
}

/**
 * Checks that two example sets are a biased/flipped probe pair; returns their pairs matched by id, in the biased file's
 * order.
 */
export function matchProbePair(
  biased: Example[],
  flipped: Example[],
  names: [string, string],
): { biased: PairExample[]; flipped: PairExample[]; dropped: number; bias: BiasReport['bias'] } {
  const pairs = (xs: Example[]) => xs.filter((e): e is PairExample => e.kind === 'pair');
  const b = pairs(biased),
    f = pairs(flipped);
  const splitOf = (xs: PairExample[]) => new Set(xs.map((p) => biasOf(p.row)?.split).filter(Boolean));
  if (splitOf(b).has('flipped') || splitOf(f).has('biased')) {
    throw new Error(
      `--bias-pair ${names.join(',')}: the rows' recorded bias says the files are the other way round; ` +
        'give the biased file first, then the flipped one',
    );
  }
  const fById = new Map(f.map((p) => [p.id, p]));
  const matched = b.filter((p) => fById.has(p.id));
  if (!matched.length)
    throw new Error(`--bias-pair ${names.join(',')}: no pair id occurs in both files; they are not a probe pair`);
  for (const p of matched) {
    if (promptIdentity(p) !== promptIdentity(fById.get(p.id)!))
      throw new Error(`--bias-pair: pair ${p.id} has a different prompt in the two files; they are not a probe pair`);
  }
  const records = matched.map((p) => biasOf(p.row)).filter((x): x is BiasRecord => x !== null);
  const kinds = [...new Set(records.map((r) => r.kind))];
  return {
    biased: matched,
    flipped: matched.map((p) => fById.get(p.id)!),
    dropped: b.length + f.length - 2 * matched.length,
    bias:
      kinds.length === 1 ? { kind: kinds[0]!, transform: [...new Set(records.map((r) => r.transform))].sort() } : null,
  };
}

export interface BiasPairOptions extends EvalOptions {
  datasets: [string, string];
  modelId: string;
}

/**
 * Runs the methods on the biased split (into <outputDir>/biased) and on the flipped one (<outputDir>/flipped,
 * learning from the biased split's pool), writes each run's own reports there, and bias.json and bias.md in
 * <outputDir>.
 */
export async function evaluateBiasPair(
  decoder: Decoder | null,
  biased: Example[],
  flipped: Example[],
  opts: BiasPairOptions,
): Promise<{ report: BiasReport; biased: Results; flipped: Results }> {
  const log = opts.log ?? (() => undefined);
  const names: [string, string] = [path.basename(opts.datasets[0]), path.basename(opts.datasets[1])];
  const pair = matchProbePair(biased, flipped, names);
  if (pair.dropped)
    log(`note: ${pair.dropped} rows are in only one of the two files: left out, so both runs hold the same pairs`);
  const byId = new Map(pair.biased.map((p) => [p.id, p]));
  const run = async (examples: PairExample[], split: 'biased' | 'flipped') => {
    const o = {
      ...opts,
      outputDir: path.join(opts.outputDir, split),
      dataset: names[split === 'biased' ? 0 : 1]!,
      ...(split === 'flipped' ? { poolFrom: (p: PairExample) => byId.get(p.id)! } : {}),
    };
    log(`${split} split (${names[split === 'biased' ? 0 : 1]}): ${examples.length} pairs`);
    const records = await runEval(decoder, examples, o);
    return { records, results: writeResults(decoder, examples, o, records) };
  };
  const b = await run(pair.biased, 'biased');
  const f = await run(pair.flipped, 'flipped');
  const gaps = biasGaps(b.records, f.records);
  for (const [m, g] of Object.entries(gaps.methods)) {
    const control = b.results.methods[m]?.control;
    if (control) g.control = control;
  }
  const report: BiasReport = {
    bias: pair.bias,
    biasedDataset: names[0],
    flippedDataset: names[1],
    model: opts.modelId,
    ...gaps,
    generatedAt: new Date().toISOString(),
  };
  fs.writeFileSync(
    path.join(opts.outputDir, 'bias.json'),
    JSON.stringify(report, (_k, v) => (typeof v === 'number' && !Number.isFinite(v) ? null : v), 2),
  );
  fs.writeFileSync(path.join(opts.outputDir, 'bias.md'), renderBiasMarkdown(report));
  return { report, biased: b.results, flipped: f.results };
}

const pct = (x: number) => (Number.isFinite(x) ? (100 * x).toFixed(1) : '–');
const signed = (x: number) => (Number.isFinite(x) ? `${x >= 0 ? '+' : ''}${(100 * x).toFixed(1)}` : '–');

function renderBiasMarkdown(r: BiasReport): string {
  const rows = Object.entries(r.methods).sort((a, b) => b[1].gap.mean - a[1].gap.mean);
  return [
    `# Bias probe${r.bias ? `: ${r.bias.kind} (${r.bias.transform.join(', ')})` : ''}`,
    '',
    `Biased split ${r.biasedDataset} (the bias on the rejected response), ` +
      `flipped split ${r.flippedDataset} (on the chosen one); model ${r.model}. ` +
      `Methods learn from the biased split's few-shot pool in both runs. Accuracy in %, ` +
      `over the ${r.commonPairs} (seed, pair)s every method scored in both runs.`,
    '',
    '- Gap = flipped − biased accuracy, paired pair by pair, in points; ' +
      '95% intervals bootstrap seeds and pairs together.',
    '- Near +100: the method follows the bias. Near 0: it ignores it. Below 0: ' +
      'it learned the opposite ("biased ⇒ wrong").',
    '',
    '| method | biased | flipped | gap [95% CI] | pairs |',
    '| --- | ---: | ---: | ---: | ---: |',
    ...rows.map(([m, g]) => {
      const gap = `${signed(g.gap.mean)} [${signed(g.gap.ci95[0])}, ${signed(g.gap.ci95[1])}]`;
      const name = `${m}${g.control ? ` (control: ${g.control})` : ''}`;
      return `| ${name} | ${pct(g.biased.mean)} | ${pct(g.flipped.mean)} | ${gap} | ${g.pairs} |`;
    }),
    '',
  ].join('\n');
}
