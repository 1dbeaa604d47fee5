/**
 * `--shard i/n` for `arm score` and `arm eval`: run part i (0-based) of n of the work, for a batch system's job
 * array (docs/batch-jobs.md). `--shard auto/n` takes i from the scheduler's environment: a Kubernetes Indexed Job's
 * 0-based completion index, or a Slurm array task's id (the array's ids are the shard indexes, 0 to n − 1).
 */
import { Option } from 'commander';
import type { Shard } from '../eval/shard-units.js';

/** The flag as given: a place, or `auto` with the count (the index left to the environment). */
export type ShardFlag = Shard | { auto: true; count: number };

/**
 * What each batch system tells an array task. Kubernetes Indexed Jobs set a 0-based index and no count (the count
 * is the Job's `completions`, given as `auto/n`). Slurm sets the task's id, and the first id, step and task count
 * of the array the task was submitted in. The id itself is the index: a task resubmitted alone (`sbatch --array=3`)
 * is in an array of one task whose first id is 3, so neither the first id nor the count says which shard it is;
 * they only catch a whole array written with other ids (`--array=1-8`, `--array=0-14:2`).
 */
const SCHEDULERS = [
  { name: 'Kubernetes Indexed Job', indexEnv: 'JOB_COMPLETION_INDEX' },
  {
    name: 'Slurm job array',
    indexEnv: 'SLURM_ARRAY_TASK_ID',
    firstEnv: 'SLURM_ARRAY_TASK_MIN',
    stepEnv: 'SLURM_ARRAY_TASK_STEP',
    countEnv: 'SLURM_ARRAY_TASK_COUNT',
  },
] as const;

/** The `--shard` option, for a command whose work is `what`. */
export function shardOption(what: string): Option {
  return new Option(
    '--shard <i/n|auto/n>',
    `run part i (0-based) of n of the ${what}, for a job array; "arm merge" assembles the parts. ` +
      'auto/n: i from JOB_COMPLETION_INDEX (Kubernetes) or SLURM_ARRAY_TASK_ID (Slurm, with --array=0-<n-1>)',
  ).argParser(parseShardFlag);
}

/** `--shard`'s value: `i/n` or `auto/n`. */
function parseShardFlag(v: string): ShardFlag {
  const m = /^\s*(\d+|auto)(?:\/(\d+))?\s*$/.exec(v);
  const usage = `--shard: expected i/n (0-based, e.g. 0/8) or auto/n, got "${v}"`;
  if (!m) throw new Error(usage);
  if (m[1] === 'auto' && m[2] === undefined)
    throw new Error(
      `--shard ${v}: write auto/n with n the number of shards; a job array gives the index, not the count ` +
        '(a Kubernetes Job sets none, and a Slurm task resubmitted alone sees an array of one task)',
    );
  if (m[2] === undefined) throw new Error(usage);
  const count = Number(m[2]);
  if (!(count >= 1)) throw new Error(`--shard ${v}: the count must be at least 1`);
  if (m[1] === 'auto') return { auto: true, count };
  const index = Number(m[1]);
  if (index >= count)
    throw new Error(`--shard ${v}: the index counts from 0, so it must be below ${count} (0 to ${count - 1})`);
  return { index, count };
}

/** A non-negative integer from the environment, or an error naming the variable. */
function envInt(env: NodeJS.ProcessEnv, name: string): number | undefined {
  const v = env[name];
  if (v === undefined || v === '') return undefined;
  if (!/^\d+$/.test(v.trim())) throw new Error(`--shard auto: ${name} is "${v}", not a non-negative integer`);
  return Number(v);
}

/** The shard this process runs: the flag's, or with `auto/n` the scheduler's index (see SCHEDULERS). */
export function resolveShard(flag: ShardFlag, env: NodeJS.ProcessEnv = process.env): Shard {
  if (!('auto' in flag)) return flag;
  const { count } = flag;
  const [k8s, slurm] = SCHEDULERS;
  const k8sIndex = envInt(env, k8s.indexEnv);
  if (k8sIndex !== undefined) return placed(k8sIndex, count, `${k8s.indexEnv}=${k8sIndex}`);
  const id = envInt(env, slurm.indexEnv);
  if (id === undefined)
    throw new Error(
      `--shard auto/${count}: neither ${k8s.indexEnv} (${k8s.name}) nor ${slurm.indexEnv} (${slurm.name}) is set; ` +
        'outside a job array give the shard as i/n',
    );
  const first = envInt(env, slurm.firstEnv) ?? 0;
  const step = envInt(env, slurm.stepEnv) ?? 1;
  // A whole array of n tasks must be ids 0 to n − 1; a smaller one is a resubmission of some of them.
  if (envInt(env, slurm.countEnv) === count && (first !== 0 || step > 1))
    throw new Error(
      `--shard auto/${count}: the Slurm array's ids are the shard indexes, so write --array=0-${count - 1}; ` +
        `this array of ${count} tasks starts at ${slurm.firstEnv}=${first} with ${slurm.stepEnv}=${step}`,
    );
  return placed(id, count, `${slurm.indexEnv}=${id}; write the array as --array=0-${count - 1}`);
}

function placed(index: number, count: number, from: string): Shard {
  if (index >= count)
    throw new Error(
      `--shard auto: index ${index} (${from}) is not below the count ${count}; shards are 0 to ${count - 1}`,
    );
  return { index, count };
}

/**
 * The command line without `--shard` and its value: what one unsharded run of the same work is started with, as
 * the merged reports record it.
 */
export function withoutShardFlag(args: string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < args.length; i++) {
    if (args[i] === '--shard') i++;
    else if (!args[i]!.startsWith('--shard=')) out.push(args[i]!);
  }
  return out;
}
