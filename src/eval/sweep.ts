/**
 * A sweep in one run: `arm eval --pool-label-noise 0,0.1,0.25,0.4` or `--few-shot 2,4,8,16,32`. Each value is a
 * whole evaluation in its own folder (`p-0.1/`, `k-8/`: results.json, reports, resumable log), run with the same
 * seeds; a few-shot sweep draws every k's split for the largest k, so all k are tested on the same pairs and the
 * smaller pools are the first pairs of the larger. The values' accuracies per method are then gathered into
 * sweep.json, sweep.md and sweep.html (one table, one plot of accuracy against the swept value, with intervals).
 */
import fs from 'node:fs';
import path from 'node:path';
import type { Decoder } from '../model/decoder.js';
import type { Example } from '../data/examples.js';
import { evaluate, type ReportedEvalOptions } from './harness.js';
import type { Results, Score } from './aggregate.js';
import type { Provenance } from './provenance.js';
import { renderSweepHtml, renderSweepMarkdown } from './sweep-report.js';

/** What a sweep varies: the pool label noise p, or the few-shot pool size k. */
export type SweepAxis = 'pool-label-noise' | 'few-shot';

/** One method's accuracy at one value, over that value's common set. */
export interface SweepPoint {
  value: number;
  accuracy: Score;
  /** The paired difference to arm at this value, when arm ran. */
  vsReference?: { mean: number; ci95: [number, number]; n: number };
}

export interface SweepResults {
  axis: SweepAxis;
  values: number[];
  dataset: string;
  model: string;
  /** The few-shot pool size of a noise sweep; the noise level of a few-shot sweep. */
  fixed: { fewShot?: number; poolLabelNoise?: number };
  seeds: number[];
  /** Each value's folder, relative to the sweep's. */
  folders: Record<string, string>;
  /** Per method, its accuracy at each value (in value order). */
  methods: Record<string, { definition: string; control?: string; points: SweepPoint[] }>;
  provenance?: Provenance;
  generatedAt: string;
}

/** The folder of one value's run: `p-0.25`, `k-8`. */
const sweepFolder = (axis: SweepAxis, value: number) => `${axis === 'few-shot' ? 'k' : 'p'}-${value}`;

/** The options of one value's run in a sweep. */
function sweepPointOptions(
  requested: ReportedEvalOptions,
  axis: SweepAxis,
  values: number[],
  value: number,
): ReportedEvalOptions {
  const outputDir = path.join(requested.outputDir, sweepFolder(axis, value));
  return axis === 'few-shot'
    ? { ...requested, outputDir, fewShot: value, splitFewShot: Math.max(...values) }
    : { ...requested, outputDir, poolLabelNoise: value };
}

/** Runs every value of the sweep, in order, then writes sweep.json, sweep.md and sweep.html. */
export async function evaluateSweep(
  decoder: Decoder | null,
  examples: Example[],
  requested: ReportedEvalOptions,
  sweep: { axis: SweepAxis; values: number[] },
): Promise<SweepResults> {
  const { axis, values } = sweep;
  if (new Set(values).size !== values.length)
    throw new Error(`--${axis}: a value is given twice (${values.join(',')})`);
  const log = requested.log ?? (() => undefined);
  const runs: Results[] = [];
  for (const value of values) {
    log(`sweep: ${axis} ${value} (${runs.length + 1} of ${values.length})`);
    runs.push(await evaluate(decoder, examples, sweepPointOptions(requested, axis, values, value)));
  }
  const results = gatherSweep(axis, values, runs);
  fs.mkdirSync(requested.outputDir, { recursive: true });
  const write = (name: string, text: string) => fs.writeFileSync(path.join(requested.outputDir, name), text);
  write(
    'sweep.json',
    JSON.stringify(results, (_k, v) => (typeof v === 'number' && !Number.isFinite(v) ? null : v), 2),
  );
  write('sweep.md', renderSweepMarkdown(results));
  write('sweep.html', renderSweepHtml(results));
  return results;
}

/** The runs' accuracies per method and value (a method absent at some value has no point there). */
function gatherSweep(axis: SweepAxis, values: number[], runs: Results[]): SweepResults {
  const first = runs[0]!;
  const methods: SweepResults['methods'] = {};
  runs.forEach((r, i) => {
    for (const [name, m] of Object.entries(r.methods)) {
      methods[name] ??= { definition: m.definition, ...(m.control ? { control: m.control } : {}), points: [] };
      const d = m.vsReference;
      methods[name].points.push({
        value: values[i]!,
        accuracy: m.accuracy,
        ...(d ? { vsReference: { mean: d.mean, ci95: d.ci95, n: d.n } } : {}),
      });
    }
  });
  return {
    axis,
    values,
    dataset: first.dataset,
    model: first.model,
    fixed: axis === 'few-shot' ? { poolLabelNoise: first.poolLabelNoise } : { fewShot: first.fewShot },
    seeds: [...new Set(runs.flatMap((r) => r.seeds))].sort((a, b) => a - b),
    folders: Object.fromEntries(values.map((v) => [String(v), sweepFolder(axis, v)])),
    methods,
    ...(first.provenance ? { provenance: first.provenance } : {}),
    generatedAt: new Date().toISOString(),
  };
}
