/** `arm eval`: methods × seeds on a preference dataset, with results.json, report.md and report.html. */
import path from 'node:path';
import { Option, type Command } from 'commander';
import { readExamples } from '../data/examples.js';
import { evaluate, needsModel } from '../eval/harness.js';
import { METHODS } from '../eval/methods.js';
import { DEFAULT_MODEL } from './arm-commands.js';
import { addFitOptions, addJudgeOptions, addModelOptions, loadDecoder, nonNegativeInt, positiveInt, positiveNumber, progressBar, type FitCliFlags, type JudgeCliOptions, type ModelCliOptions } from './common.js';

interface EvalCliOptions extends ModelCliOptions, JudgeCliOptions, FitCliFlags {
  dataset: string; methods: string; fewShot: number; seeds: number; seed: number; pool: 'subset' | 'global'; outputDir: string;
  saveAll?: boolean; limit?: number; subsets?: string; skipInvalid?: boolean;
  iclShots: number; sampleN: number; temperature: number; savHeads: number;
}

export function registerEvalCommand(program: Command): void {
  addFitOptions(addJudgeOptions(addModelOptions(program.command('eval').description('compare the Activation RM with baselines on a preference dataset'), DEFAULT_MODEL)))
    .requiredOption('--dataset <file.jsonl>', 'pairs {prompt, chosen, rejected, subset?} (RewardBench / TRL shapes)')
    .option('--methods <list>', `comma-separated: ${Object.keys(METHODS).join(', ')}`, 'arm,zero-shot,pick-longer,pick-shorter')
    .option('--few-shot <n>', 'pool pairs drawn per seed (per subset, or globally with --pool global); 0 = no pool', (v) => nonNegativeInt(v, '--few-shot'), 16)
    .option('--seeds <n>', 'few-shot draws', (v) => positiveInt(v, '--seeds'), 5)
    .option('--seed <n>', 'first seed', (v) => nonNegativeInt(v, '--seed'), 0)
    .addOption(new Option('--pool <where>', 'draw the pool per subset or globally').choices(['subset', 'global']).default('subset'))
    .option('--output-dir <dir>', 'where results go', 'results')
    .option('--save-all', 'keep items.jsonl: every pair\'s scores per method and seed')
    .option('--limit <n>', 'read at most n rows', (v) => positiveInt(v, '--limit'))
    .option('--subsets <list>', 'only these subsets (comma-separated)')
    .option('--skip-invalid', 'skip invalid rows (reported) instead of stopping')
    .option('--icl-shots <k>', 'demonstrations in the ICL judge prompt', (v) => positiveInt(v, '--icl-shots'), 4)
    .option('--sample-n <N>', 'sample-vote: verdicts sampled', (v) => positiveInt(v, '--sample-n'), 8)
    .option('--temperature <T>', 'sample-vote: temperature (> 0)', (v) => positiveNumber(v, '--temperature'), 1)
    .option('--sav-heads <n>', 'sav-vote: voting heads', (v) => positiveInt(v, '--sav-heads'), 20)
    .action(async (o: EvalCliOptions) => {
      const { examples, skipped } = readExamples(o.dataset, { skipInvalid: o.skipInvalid, limit: o.limit, subsets: o.subsets?.split(',') });
      if (skipped.length) {
        process.stderr.write(`skipped ${skipped.length} invalid rows:\n${skipped.slice(0, 10).map((s) => `  ${s.reason}`).join('\n')}${skipped.length > 10 ? '\n  …' : ''}\n`);
      }
      const methods = o.methods.split(',').map((m) => m.trim()).filter(Boolean);
      // The length rules read no model: a run of them alone loads none, and no context length limits its pairs.
      const decoder = needsModel(methods) ? await loadDecoder(o) : null;
      if (!decoder) process.stderr.write(`note: ${methods.join(', ')} read no model: none is loaded, and every pair is scored\n`);
      const bar = progressBar('eval      ', o.quiet);
      let current = '';
      try {
        const maxLength = o.maxLength ?? decoder?.spec.maxPositions ?? Infinity;
        const results = await evaluate(decoder, examples, {
          methods, fewShot: o.fewShot, seeds: o.seeds, seed: o.seed, pool: o.pool,
          outputDir: o.outputDir, saveAll: o.saveAll ?? false, chunkSize: 32, dataset: path.basename(o.dataset), modelId: decoder ? o.model : '(none: no method reads a model)',
          method: {
            fit: {
              template: o.template, templateText: o.templateText, chat: o.chat, passes: o.passes, shots: o.shots, passesPerDemoSet: o.passesPerDemoSet,
              templateKwargs: o.templateKwargs, denoiseBeforeSelection: o.denoiseBeforeSelection,
              reinforce: { steps: o.steps, samples: o.samples, lr: o.lr }, modelId: o.model, warn: () => undefined,
            },
            batchSize: o.batchSize, maxLength, iclShots: o.iclShots, sampleN: o.sampleN, sampleTemperature: o.temperature, savTopHeads: o.savHeads,
          },
          onProgress: (what, done, total) => {
            if (what !== current) { bar.stop(); current = what; }
            bar.update(done, total, what);
          },
          log: (line) => process.stderr.write(`${line}\n`),
        });
        bar.stop();
        // A method skipped on every pool has no accuracy (NaN): list it last.
        const key = (acc: number) => (Number.isFinite(acc) ? acc : -Infinity);
        const table = Object.entries(results.methods).sort((a, b) => key(b[1].accuracy.mean) - key(a[1].accuracy.mean)).map(([name, m]) => ({
          method: m.control ? `${name} (control)` : name, accuracy: `${(100 * m.accuracy.mean).toFixed(1)} ± ${(100 * m.accuracy.std).toFixed(1)}`, seeds: m.accuracy.seeds,
          ci95: `[${(100 * m.accuracy.ci95[0]).toFixed(1)}, ${(100 * m.accuracy.ci95[1]).toFixed(1)}]`,
          ...(results.reference ? { [`${results.reference} − it`]: m.vsReference ? `${(100 * m.vsReference.mean).toFixed(1)} [${(100 * m.vsReference.ci95[0]).toFixed(1)}, ${(100 * m.vsReference.ci95[1]).toFixed(1)}]` : '' } : {}),
          pairs: m.accuracy.n, coverage: `${(100 * m.coverage.rate).toFixed(1)}%`, ties: Number.isFinite(m.ties.rate) ? `${(100 * m.ties.rate).toFixed(1)}%` : '–', skipped: m.skipped.length,
          'tokens/pair': Math.round(m.cost.forwardTokensPerPair), 's/pair': Number(m.cost.secondsPerPair.toFixed(3)),
        }));
        console.table(table);
        const cs = results.commonSet;
        process.stderr.write(`accuracy over the common set: ${cs.pairs} of ${cs.testPairs} (seed, pair)s, those every method scored; intervals bootstrap seeds and pairs together\n`);
        if (results.skipped.length) {
          process.stderr.write(`${results.skipped.length} (method, ${o.pool === 'global' ? 'pool' : 'subset'}, seed) runs were skipped (pool unusable); see report.md\n`);
        }
        process.stderr.write(`wrote ${path.join(o.outputDir, 'results.json')}, report.md, report.html${o.saveAll ? ', items.jsonl' : ''}\n`);
      } finally {
        bar.stop();
        await decoder?.dispose();
      }
    });
}
