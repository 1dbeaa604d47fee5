/**
 * `arm eval`: methods × seeds on a preference dataset, with results.json, report.md and report.html; or, with
 * `--bias-pair`, both splits of a bias probe and the bias gap (bias.json, bias.md).
 */
import path from 'node:path';
import { Option, type Command } from 'commander';
import { loadDataset, type LoadedDataset } from '../data/dataset.js';
import { evaluate, needsModel, type EvalOptions } from '../eval/harness.js';
import { evaluateBiasPair, type BiasReport } from '../eval/bias.js';
import type { Results } from '../eval/aggregate.js';
import { BIASES } from '../data/bias-probe.js';
import { METHODS } from '../eval/methods.js';
import { evaluateSweep, type SweepResults } from '../eval/sweep.js';
import type { Decoder } from '../model/decoder.js';
import { disposeDecoder } from '../arm/images.js';
import { progressBar, type ProgressBar } from '../util/progress-bar.js';
import {
  addFitOptions,
  addJudgeOptions,
  addModelOptions,
  DEFAULT_MODEL,
  loadDecoder,
  nonNegativeInt,
  positiveInt,
  positiveNumber,
  type FitCliFlags,
  type JudgeCliOptions,
  type ModelCliOptions,
} from './common.js';
import { addDeviceOption } from './device-option.js';
import { resolveShard, shardOption, withoutShardFlag, type ShardFlag } from './shard.js';
import { evaluateShard, type EvalShardManifest } from '../eval/eval-shards.js';
import { shardLabel, type Shard } from '../eval/shard-units.js';

interface EvalCliOptions extends ModelCliOptions, JudgeCliOptions, FitCliFlags {
  dataset?: string;
  biasPair?: string;
  preferencehack?: boolean;
  methods: string;
  /** One value, or several: a few-shot sweep. */
  fewShot: number[];
  /** One value, or several: a noise sweep. */
  poolLabelNoise?: number[];
  seeds: number;
  seed: number;
  pool: 'subset' | 'global';
  outputDir: string;
  saveAll?: boolean;
  limit?: number;
  subsets?: string;
  skipInvalid?: boolean;
  imageRoot?: string;
  iclShots: number;
  sampleN: number;
  temperature: number;
  savHeads: number;
  shard?: ShardFlag;
}

/** What `evaluate` and `evaluateBiasPair` are given, beside the options the harness shares. */
type CliEvalOptions = EvalOptions & { dataset: string; modelId: string; command: string };

export function registerEvalCommand(program: Command): void {
  const command = program
    .command('eval')
    .description('compare the Activation RM with baselines on a preference dataset');
  // Each adds its flags to `command` (in help order).
  addModelOptions(command, DEFAULT_MODEL);
  addDeviceOption(command);
  addJudgeOptions(command);
  addFitOptions(command);
  addRunOptions(command);
  addRowOptions(command);
  addBaselineOptions(command);
  command.action(evalCommand);
}

/** What is evaluated, and how the pool is drawn and the run kept. */
function addRunOptions(cmd: Command): Command {
  return cmd
    .option(
      '--dataset <file|hub-id>',
      'pairs {prompt, chosen, rejected, subset?, images?} (RewardBench / TRL shapes) as JSONL; ' +
        'RM-Bench rows (3 × 3 styles); parquet (RewardBench, RewardBench 2); ' +
        'Multimodal RewardBench all_data.json (with --image-root); ' +
        'or a hub dataset: allenai/reward-bench-2, allenai/reward-bench',
    )
    .option(
      '--bias-pair <biased,flipped>',
      `a probe pair from arm bias-probe (${BIASES.join(', ')}): ` +
        'both splits are run and the bias gap (flipped − biased) reported',
    )
    .option(
      '--preferencehack',
      'read --dataset as a released PreferenceHack file (also when its path says preferencehack): ' +
        'its 80 few-shot pairs are the pool, the rest the test set',
    )
    .option(
      '--methods <list>',
      `comma-separated: ${Object.keys(METHODS).join(', ')}`,
      'arm,zero-shot,pick-longer,pick-shorter',
    )
    .addOption(
      new Option(
        '--few-shot <n|list>',
        'pool pairs drawn per seed (per subset, or globally with --pool global); 0 = no pool; a list ' +
          '(2,4,8,16,32) is a sweep: one run per k, all tested on the same pairs, one table and plot (sweep.html)',
      )
        .argParser((v) => numberList(v, '--few-shot', (x) => nonNegativeInt(x, '--few-shot')))
        .default([16], '16'),
    )
    .option(
      '--pool-label-noise <p|list>',
      'flip the labels (chosen ↔ rejected) of this fraction of each few-shot pool, the same pairs for every method; ' +
        'test pairs never; a list (0,0.1,0.25,0.4, or the flag repeated) is a sweep with one table and plot',
      (v, before: number[] | undefined) => [...(before ?? []), ...numberList(v, '--pool-label-noise', fraction)],
    )
    .option('--seeds <n>', 'few-shot draws', (v) => positiveInt(v, '--seeds'), 5)
    .option('--seed <n>', 'first seed', (v) => nonNegativeInt(v, '--seed'), 0)
    .addOption(
      new Option('--pool <where>', 'draw the pool per subset or globally')
        .choices(['subset', 'global'])
        .default('subset'),
    )
    .option('--output-dir <dir>', 'where results go', 'results')
    .option('--save-all', "keep items.jsonl: every pair's scores per method and seed")
    .addOption(shardOption('evaluation (units of 32 test pairs of a seed) into <output-dir>/shard-<i>-of-<n>/'));
}

/** A comma-separated list of numbers, each parsed by `one`. */
function numberList(v: string, flag: string, one: (x: string) => number): number[] {
  const parts = v.split(',').map((x) => x.trim());
  if (parts.some((x) => x === '')) throw new Error(`${flag}: expected a number or a comma-separated list, got "${v}"`);
  return parts.map(one);
}

/** A fraction in [0, 1] (the pool label noise). */
function fraction(v: string): number {
  const x = Number(v);
  if (!/^\s*[0-9.]+(e-?[0-9]+)?\s*$/i.test(v) || !(x >= 0 && x <= 1))
    throw new Error(`--pool-label-noise: expected a fraction in [0, 1], got "${v}"`);
  return x;
}

/**
 * The command line as typed, arguments with spaces or quotes single-quoted, for the reports; without --shard, so a
 * merged run's reports name the command one unsharded run is started with.
 */
const commandLine = () =>
  ['arm', ...withoutShardFlag(process.argv.slice(2))]
    .map((a) => (/^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replace(/'/g, "'\\''")}'`))
    .join(' ');

/** Which rows are read, and where their images are. */
function addRowOptions(cmd: Command): Command {
  return cmd
    .option('--limit <n>', 'read at most n rows', (v) => positiveInt(v, '--limit'))
    .option('--subsets <list>', 'only these subsets (comma-separated)')
    .option('--skip-invalid', 'skip invalid rows (reported) instead of stopping')
    .option(
      '--image-root <dir>',
      "folder that image paths in the dataset are read under (default: the dataset file's folder); " +
        "e.g. Multimodal RewardBench's data/ for its all_data.json",
    );
}

/** The baselines' own settings. */
function addBaselineOptions(cmd: Command): Command {
  return cmd
    .option('--icl-shots <k>', 'demonstrations in the ICL judge prompt', (v) => positiveInt(v, '--icl-shots'), 4)
    .option('--sample-n <N>', 'sample-vote: verdicts sampled', (v) => positiveInt(v, '--sample-n'), 8)
    .option('--temperature <T>', 'sample-vote: temperature (> 0)', (v) => positiveNumber(v, '--temperature'), 1)
    .option('--sav-heads <n>', 'sav-vote: voting heads', (v) => positiveInt(v, '--sav-heads'), 20);
}

async function evalCommand(o: EvalCliOptions): Promise<void> {
  if (!o.dataset === !o.biasPair)
    throw new Error('give --dataset, or --bias-pair biased.jsonl,flipped.jsonl (one of them)');
  const probeFiles = parseBiasPair(o.biasPair);
  // Checked before the model loads: a flag error should not wait for it.
  const sweep = sweepOf(o);
  if (sweep && probeFiles) throw new Error('a sweep (several --few-shot or --pool-label-noise values) needs --dataset');
  if (o.shard && (sweep || probeFiles))
    throw new Error(
      `--shard runs one evaluation's part; it does not cut ${sweep ? 'a sweep' : 'a --bias-pair run'}: ` +
        `run ${sweep ? `each --${sweep.axis} value` : 'each probe file with --dataset'} as its own sharded run`,
    );
  const shard = o.shard ? resolveShard(o.shard) : undefined;
  const loaded = await loadEvalData(o, probeFiles);
  const { examples, fewShotIds } = loaded[0]!;
  const methods = o.methods
    .split(',')
    .map((m) => m.trim())
    .filter(Boolean);
  // The length rules read no model: a run of them alone loads none, and no context length limits its pairs.
  const decoder = needsModel(methods) ? await loadDecoder(o) : null;
  if (!decoder)
    process.stderr.write(`note: ${methods.join(', ')} read no model: none is loaded, and every pair is scored\n`);
  const bar = progressBar('eval      ', { quiet: o.quiet });
  try {
    const dataset = path.basename(o.dataset ?? probeFiles![0]!);
    const evalOptions = evalOptionsFrom(o, { methods, decoder, dataset, fewShotIds, bar });
    if (sweep) {
      printSweep(await evaluateSweep(decoder, examples, evalOptions, sweep), o.outputDir);
      return;
    }
    if (probeFiles) {
      const { report } = await evaluateBiasPair(decoder, examples, loaded[1]!.examples, {
        ...evalOptions,
        datasets: [probeFiles[0]!, probeFiles[1]!],
      });
      bar.stop();
      printBiasReport(report, o.outputDir);
      return;
    }
    if (shard) {
      const outputDir = path.join(o.outputDir, shardLabel(shard));
      const manifest = await evaluateShard(decoder, examples, {
        ...evalOptions,
        outputDir,
        shard,
        saveAll: o.saveAll ?? false,
      });
      bar.stop();
      printShard(manifest, o.outputDir, outputDir);
      return;
    }
    const results = await evaluate(decoder, examples, evalOptions);
    bar.stop();
    printResults(results, o);
  } finally {
    bar.stop();
    await disposeDecoder(decoder);
  }
}

/** `--bias-pair biased,flipped` as its two files (undefined without the flag). */
function parseBiasPair(biasPair: string | undefined): string[] | undefined {
  const probeFiles = biasPair
    ?.split(',')
    .map((f) => f.trim())
    .filter(Boolean);
  if (probeFiles && probeFiles.length !== 2)
    throw new Error(
      '--bias-pair: expected two files, biased then flipped (biased.jsonl,flipped.jsonl), ' +
        `got ${JSON.stringify(biasPair)}`,
    );
  return probeFiles;
}

/** Reads `--dataset` (or both probe files), reports skipped rows and how the rows are scored. */
async function loadEvalData(o: EvalCliOptions, probeFiles: string[] | undefined): Promise<LoadedDataset[]> {
  const readOpts = {
    skipInvalid: o.skipInvalid,
    limit: o.limit,
    subsets: o.subsets?.split(','),
    hub: { cacheDir: o.cacheDir },
    preferenceHack: o.preferencehack,
    imageRoot: o.imageRoot,
  };
  const loaded = await Promise.all((probeFiles ?? [o.dataset!]).map((f) => loadDataset(f, readOpts)));
  // `arm eval` lists a file's skipped rows in one block (fit and score report theirs through skipReporter).
  for (const { skipped } of loaded) {
    if (skipped.length)
      process.stderr.write(
        `skipped ${skipped.length} invalid rows:\n${skipped
          .slice(0, 10)
          .map((s) => `  ${s.reason}`)
          .join('\n')}${skipped.length > 10 ? '\n  …' : ''}\n`,
      );
  }
  const { examples, fewShotIds, format } = loaded[0]!;
  if (format !== 'pairs')
    process.stderr.write(
      `note: ${
        format === 'rm-bench'
          ? 'RM-Bench rows: each row is scored as its 9 chosen × rejected style comparisons, ' +
            'reported as hard / normal / easy'
          : 'best-of-n rows (RewardBench 2): each row is scored as its chosen-vs-rejected comparisons, ' +
            'reported best-of-n with ties sharing credit'
      }\n`,
    );
  if (fewShotIds)
    process.stderr.write(
      `note: PreferenceHack: pools are drawn from its ${fewShotIds.size} few-shot pairs; ` +
        `the other ${examples.length - fewShotIds.size} are the test set\n`,
    );
  return loaded;
}

/** The harness's options from the flags; progress goes to `bar`, one bar per stage. */
function evalOptionsFrom(
  o: EvalCliOptions,
  run: {
    methods: string[];
    decoder: Decoder | null;
    dataset: string;
    fewShotIds: Set<string> | undefined;
    bar: ProgressBar;
  },
): CliEvalOptions {
  const { fewShotIds, bar } = run;
  let current = '';
  return {
    methods: run.methods,
    fewShot: o.fewShot[0]!,
    poolLabelNoise: o.poolLabelNoise?.[0] ?? 0,
    command: commandLine(),
    seeds: o.seeds,
    seed: o.seed,
    pool: o.pool,
    ...(fewShotIds ? { poolCandidate: (p: { id: string }) => fewShotIds.has(p.id) } : {}),
    outputDir: o.outputDir,
    saveAll: o.saveAll ?? false,
    chunkSize: 32,
    dataset: run.dataset,
    modelId: run.decoder ? o.model : '(none: no method reads a model)',
    method: {
      fit: {
        template: o.template,
        templateText: o.templateText,
        chat: o.chat,
        passes: o.passes,
        shots: o.shots,
        passesPerDemoSet: o.passesPerDemoSet,
        templateKwargs: o.templateKwargs,
        denoiseBeforeSelection: o.denoiseBeforeSelection,
        reinforce: { steps: o.steps, samples: o.samples, lr: o.lr },
        modelId: o.model,
        warn: () => undefined,
      },
      batchSize: o.batchSize,
      maxLength: o.maxLength ?? run.decoder?.spec.maxPositions ?? Infinity,
      iclShots: o.iclShots,
      sampleN: o.sampleN,
      sampleTemperature: o.temperature,
      savTopHeads: o.savHeads,
    },
    onProgress: (what: string, done: number, total: number) => {
      if (what !== current) {
        bar.stop();
        current = what;
      }
      bar.update(done, total, what);
    },
    log: (line: string) => process.stderr.write(`${line}\n`),
  };
}

/** The swept flag and its values, or undefined when neither --few-shot nor --pool-label-noise has several. */
function sweepOf(o: EvalCliOptions): { axis: 'few-shot' | 'pool-label-noise'; values: number[] } | undefined {
  const noise = o.poolLabelNoise ?? [0];
  if (o.fewShot.length > 1 && noise.length > 1)
    throw new Error('sweep one flag at a time: several --few-shot values, or several --pool-label-noise values');
  if (o.fewShot.length > 1) return { axis: 'few-shot', values: o.fewShot };
  if (noise.length > 1) return { axis: 'pool-label-noise', values: noise };
  return undefined;
}

/** The sweep's table on stdout (accuracy and interval per method and value), and where its reports went. */
function printSweep(s: SweepResults, outputDir: string): void {
  const sym = s.axis === 'few-shot' ? 'k' : 'p';
  console.table(
    Object.entries(s.methods).map(([name, m]) => ({
      method: name,
      ...Object.fromEntries(
        m.points.map((p) => [
          `${sym}=${p.value}`,
          `${pct(p.accuracy.mean)} [${pct(p.accuracy.ci95[0])}, ${pct(p.accuracy.ci95[1])}]`,
        ]),
      ),
    })),
  );
  process.stderr.write(
    `wrote ${path.join(outputDir, 'sweep.json')}, sweep.md, sweep.html, and each value's reports in ` +
      `${Object.values(s.folders)
        .map((f) => `${path.join(outputDir, f)}/`)
        .join(', ')}\n`,
  );
}

/** The bias gaps as a table on stdout, and what they mean and where the reports went on stderr. */
function printBiasReport(report: BiasReport, outputDir: string): void {
  const f = (x: number) => (Number.isFinite(x) ? (100 * x).toFixed(1) : '–');
  console.table(
    Object.entries(report.methods)
      .sort((a, b) => b[1].gap.mean - a[1].gap.mean)
      .map(([name, g]) => ({
        method: g.control ? `${name} (control)` : name,
        biased: f(g.biased.mean),
        flipped: f(g.flipped.mean),
        'gap (flipped − biased)': `${f(g.gap.mean)} [${f(g.gap.ci95[0])}, ${f(g.gap.ci95[1])}]`,
        pairs: g.pairs,
      })),
  );
  process.stderr.write(
    `bias${report.bias ? ` ${report.bias.kind}` : ''}: gap near +100 follows the bias, near 0 ignores it; ` +
      `over ${report.commonPairs} (seed, pair)s every method scored in both splits\n`,
  );
  process.stderr.write(
    `wrote ${path.join(outputDir, 'bias.json')}, bias.md, and each split's reports in ` +
      `${path.join(outputDir, 'biased')}/ and ${path.join(outputDir, 'flipped')}/\n`,
  );
}

/** What a finished shard covered, and the command that merges the shards. */
function printShard(m: EvalShardManifest, outputDir: string, shardDir: string): void {
  const pairs = m.units.list.reduce((n, u) => n + u.ids.length, 0);
  const s: Shard = m.shard;
  process.stderr.write(
    `shard ${s.index} of ${s.count}: units ${m.units.start}–${m.units.end} of ${m.run.units} ` +
      `(${pairs} of ${m.run.testPairs} (seed, test pair)s, every method) in ${shardDir}/; ` +
      `when all ${s.count} shards are done: arm merge --output-dir ${outputDir}\n`,
  );
}

/** One decimal of a share, in percent. */
const pct = (x: number) => (100 * x).toFixed(1);

/** The results table on stdout, and what it is over and where the reports went on stderr. */
function printResults(results: Results, o: EvalCliOptions): void {
  // A method skipped on every pool has no accuracy (NaN): list it last.
  const key = (acc: number) => (Number.isFinite(acc) ? acc : -Infinity);
  const table = Object.entries(results.methods)
    .sort((a, b) => key(b[1].accuracy.mean) - key(a[1].accuracy.mean))
    .map(([name, m]) => ({
      method: m.control ? `${name} (control)` : name,
      // One seed has no spread: no "± 0.0".
      accuracy: `${pct(m.accuracy.mean)}${m.accuracy.seeds > 1 ? ` ± ${pct(m.accuracy.std)}` : ''}`,
      seeds: m.accuracy.seeds,
      ci95: `[${pct(m.accuracy.ci95[0])}, ${pct(m.accuracy.ci95[1])}]`,
      ...(results.reference
        ? {
            [`${results.reference} − it`]: m.vsReference
              ? `${pct(m.vsReference.mean)} [${pct(m.vsReference.ci95[0])}, ${pct(m.vsReference.ci95[1])}]`
              : '',
          }
        : {}),
      pairs: m.accuracy.n,
      coverage: `${pct(m.coverage.rate)}%`,
      ties: Number.isFinite(m.ties.rate) ? `${pct(m.ties.rate)}%` : '–',
      skipped: m.skipped.length,
      'tokens/pair': Math.round(m.cost.forwardTokensPerPair),
      's/pair': Number(m.cost.secondsPerPair.toFixed(3)),
    }));
  console.table(table);
  const cs = results.commonSet;
  process.stderr.write(
    `accuracy over the common set: ${cs.pairs} of ${cs.testPairs} (seed, pair)s, those every method scored; ` +
      'intervals bootstrap seeds and pairs together\n',
  );
  if (results.skipped.length) {
    process.stderr.write(
      `${results.skipped.length} (method, ${o.pool === 'global' ? 'pool' : 'subset'}, seed) runs were skipped ` +
        '(pool unusable); see report.md\n',
    );
  }
  process.stderr.write(
    `wrote ${path.join(o.outputDir, 'results.json')}, report.md, report.html${o.saveAll ? ', items.jsonl' : ''}\n`,
  );
}
