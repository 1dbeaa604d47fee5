/**
 * `arm merge`: assembles the shards of `arm score --shard` (with --output) or `arm eval --shard` (with --output-dir)
 * into what one unsharded run writes, refusing shards that are missing, given twice, unfinished or of another run.
 * The checks and the assembling are score-shards.ts's and eval/eval-shards.ts's.
 */
import path from 'node:path';
import type { Command } from 'commander';
import { mergeScoreShards } from './score-shards.js';
import { mergeEvalShards } from '../eval/eval-shards.js';

interface MergeCliOptions {
  output?: string;
  outputDir?: string;
}

export function registerMergeCommand(program: Command): void {
  program
    .command('merge')
    .description('assemble the shards of "arm score --shard" or "arm eval --shard" into one run\'s output')
    .argument(
      '[shards...]',
      'the shards to merge: score shard manifests (<stem>.shard-<i>-of-<n>.json) or eval shard folders ' +
        '(shard-<i>-of-<n>/); default: those beside --output or in --output-dir',
    )
    .option('--output <file.jsonl>', "arm score's --output: the scored rows of every shard, in input order")
    .option('--output-dir <dir>', "arm eval's --output-dir: results.json, report.md, report.html of every shard")
    .action(mergeCommand);
}

function mergeCommand(shards: string[], o: MergeCliOptions): void {
  if (!o.output === !o.outputDir)
    throw new Error('give --output (the shards of arm score) or --output-dir (the shards of arm eval), one of them');
  const given = shards.length ? shards : undefined;
  if (o.output) {
    process.stderr.write(mergeScoreShards(o.output, given));
    return;
  }
  const merged = mergeEvalShards(o.outputDir!, given);
  const r = merged.results;
  const accuracy = Object.entries(r.methods)
    .map(([name, m]) => `${name} ${(100 * m.accuracy.mean).toFixed(1)}`)
    .join(', ');
  process.stderr.write(
    `merged ${merged.shards} shards: ${r.commonSet.pairs} of ${r.commonSet.testPairs} (seed, pair)s in the common ` +
      `set; accuracy % ${accuracy}\n` +
      `wrote ${merged.files.map((f) => path.join(o.outputDir!, f)).join(', ')}\n`,
  );
}
