/**
 * `--shard i/n` for `arm score` and `arm eval`: run part i (0-based) of n of the work, for a batch system's job
 * array (docs/batch-jobs.md). `--shard auto/n` (or `auto` under Slurm) takes i from the scheduler's environment:
 * a Kubernetes Indexed Job's 0-based completion index, or a Slurm array task's id counted from the array's first.
 */
import { Option } from 'commander';
import type { Shard } from '../eval/shard-units.js';

/** The flag as given: a place, or `auto` (with the count, or the count left to the environment). */
export type ShardFlag = Shard | { auto: true; count?: number };

/**
 * What each batch system tells an array task. Kubernetes Indexed Jobs set a 0-based index and no count (the count
 * is the Job's `completions`, given as `auto/n`). Slurm sets the task's id, the array's first id and its task count;
 * the index is (id − first) / step, so `--array=1-8` works as `--array=0-7` does.
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
    '--shard <i/n|auto/n|auto>',
    `run part i (0-based) of n of the ${what}, for a job array; "arm merge" assembles the parts. ` +
      'auto: i from JOB_COMPLETION_INDEX (Kubernetes) or SLURM_ARRAY_TASK_ID (Slurm)',
  ).argParser(parseShardFlag);
}

/** `--shard`'s value: `i/n`, `auto/n` or `auto`. */
function parseShardFlag(v: string): ShardFlag {
  const m = /^\s*(\d+|auto)(?:\/(\d+))?\s*$/.exec(v);
  const usage = `--shard: expected i/n (0-based, e.g. 0/8), auto/n or auto, got "${v}"`;
  if (!m) throw new Error(usage);
  const count = m[2] === undefined ? undefined : Number(m[2]);
  if (count !== undefined && !(count >= 1)) throw new Error(`--shard ${v}: the count must be at least 1`);
  if (m[1] === 'auto') return { auto: true, count };
  if (count === undefined) throw new Error(usage);
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

/** The shard this process runs: the flag's, or with `auto` the scheduler's (see SCHEDULERS). */
export function resolveShard(flag: ShardFlag, env: NodeJS.ProcessEnv = process.env): Shard {
  if (!('auto' in flag)) return flag;
  const [k8s, slurm] = SCHEDULERS;
  const k8sIndex = envInt(env, k8s.indexEnv);
  if (k8sIndex !== undefined) {
    if (flag.count === undefined)
      throw new Error(
        `--shard auto: ${k8s.indexEnv} is set (${k8s.name}) but Kubernetes gives no count: ` +
          "write --shard auto/n with n the Job's completions",
      );
    return placed(k8sIndex, flag.count, `${k8s.indexEnv}=${k8sIndex}`);
  }
  const id = envInt(env, slurm.indexEnv);
  if (id === undefined)
    throw new Error(
      `--shard auto: neither ${k8s.indexEnv} (${k8s.name}) nor ${slurm.indexEnv} (${slurm.name}) is set; ` +
        'outside a job array give the shard as i/n',
    );
  const first = envInt(env, slurm.firstEnv) ?? 0;
  const step = envInt(env, slurm.stepEnv) || 1;
  const slurmCount = envInt(env, slurm.countEnv);
  if (flag.count !== undefined && slurmCount !== undefined && slurmCount !== flag.count)
    throw new Error(`--shard auto/${flag.count}: but ${slurm.countEnv}=${slurmCount}; the two counts must agree`);
  const count = flag.count ?? slurmCount;
  if (count === undefined) throw new Error(`--shard auto: ${slurm.countEnv} is not set; write --shard auto/n`);
  if ((id - first) % step !== 0 || id < first)
    throw new Error(
      `--shard auto: ${slurm.indexEnv}=${id} is not on the array's range (first ${first}, step ${step}); ` +
        'use a range such as --array=0-7',
    );
  return placed((id - first) / step, count, `${slurm.indexEnv}=${id} − ${slurm.firstEnv}=${first}`);
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
