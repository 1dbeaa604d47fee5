/**
 * `arm bias-probe`: biased and flipped probe splits of a pair set (length, format, positivity), for `arm eval
 * --bias-pair`.
 */
import fs from 'node:fs';
import path from 'node:path';
import type { Command } from 'commander';
import { readExamples, type PairExample } from '../data/examples.js';
import { BIASES, buildProbe, probeFileNames, type BiasKind } from '../data/bias-probe.js';
import { positiveInt, prepareOutput } from './common.js';
import { writeFileAtomic } from '../util/atomic-write.js';

interface BiasProbeCliOptions {
  dataset: string;
  bias: string;
  out: string;
  limit?: number;
  subsets?: string;
  skipInvalid?: boolean;
}

export function registerBiasProbeCommand(program: Command): void {
  program
    .command('bias-probe')
    .description(
      'write biased and flipped probe splits of a pair set: the bias added to the rejected response, ' +
        'then to the chosen one',
    )
    .requiredOption('--dataset <file.jsonl>', 'pairs {prompt, chosen, rejected, subset?}')
    .requiredOption('--bias <list>', `comma-separated: ${BIASES.join(', ')}`)
    .option('--out <dir>', 'folder for <name>-<bias>.jsonl and <name>-<bias>-flipped.jsonl', 'probes')
    .option('--limit <n>', 'read at most n rows', (v) => positiveInt(v, '--limit'))
    .option('--subsets <list>', 'only these subsets (comma-separated)')
    .option('--skip-invalid', 'skip invalid rows (reported) instead of stopping')
    .action((o: BiasProbeCliOptions) => {
      const kinds = o.bias
        .split(',')
        .map((b) => b.trim())
        .filter(Boolean);
      const unknown = kinds.filter((k) => !(BIASES as readonly string[]).includes(k));
      if (unknown.length || !kinds.length)
        throw new Error(`--bias: unknown ${unknown.join(', ') || '(none given)'}; known: ${BIASES.join(', ')}`);
      const { examples, skipped } = readExamples(o.dataset, {
        skipInvalid: o.skipInvalid,
        limit: o.limit,
        subsets: o.subsets?.split(','),
      });
      if (skipped.length) process.stderr.write(`skipped ${skipped.length} invalid rows\n`);
      const pairs = examples.filter((e): e is PairExample => e.kind === 'pair');
      if (!pairs.length) throw new Error(`${o.dataset}: no pairs {prompt, chosen, rejected} to probe`);
      if (pairs.length < examples.length)
        process.stderr.write(`note: ${examples.length - pairs.length} scalar rows left out (probes are pairs)\n`);
      for (const kind of kinds as BiasKind[]) {
        const probe = buildProbe(pairs, kind);
        const names = probeFileNames(o.dataset, kind);
        for (const [split, rows] of [
          ['biased', probe.biased],
          ['flipped', probe.flipped],
        ] as const) {
          const file = path.join(o.out, names[split]);
          prepareOutput(file, { flag: '--out', inputs: [{ path: o.dataset, what: 'the --dataset file' }] });
          writeFileAtomic(file, rows.map((r) => JSON.stringify(r)).join('\n') + (rows.length ? '\n' : ''));
        }
        const skipped = probe.skipped.length
          ? `; ${probe.skipped.length} left out (${probe.skipped[0]!.reason}${probe.skipped.length > 1 ? ', …' : ''})`
          : '';
        process.stderr.write(
          `${kind}: ${probe.biased.length} pairs → ${path.join(o.out, names.biased)} ` +
            `(bias on the rejected response), ${path.join(o.out, names.flipped)} (on the chosen one)${skipped}\n`,
        );
      }
      if (!fs.existsSync(o.out)) throw new Error(`--out ${o.out}: nothing was written`);
    });
}
