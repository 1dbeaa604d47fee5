// `--shard`: i/n checked, `auto` placed from a Kubernetes Indexed Job's or a Slurm array's environment (clear errors
// when neither is set or the index is out of range), and the command line recorded without it.
import { describe, expect, it } from 'vitest';
import { resolveShard, shardOption, withoutShardFlag, type ShardFlag } from '../../src/cli/shard.js';
import { shardRange } from '../../src/eval/shard-units.js';

const parse = (v: string) => shardOption('work').parseArg!<ShardFlag | undefined>(v, undefined)!;

describe('--shard i/n', () => {
  it('is 0-based and below n', () => {
    expect(parse('0/8')).toEqual({ index: 0, count: 8 });
    expect(parse('7/8')).toEqual({ index: 7, count: 8 });
    expect(() => parse('8/8')).toThrow('--shard 8/8: the index counts from 0, so it must be below 8 (0 to 7)');
    expect(() => parse('1/0')).toThrow('the count must be at least 1');
    for (const bad of ['3', '1/2/3', '-1/4', 'x/4', ''])
      expect(() => parse(bad), bad).toThrow(/--shard: expected i\/n \(0-based, e\.g\. 0\/8\) or auto\/n/);
    expect(() => parse('auto')).toThrow('--shard auto: write auto/n with n the number of shards');
  });

  it('covers every unit once, in order, with shards of near-equal size', () => {
    for (const [total, count] of [
      [12, 3],
      [10, 4],
      [2, 5],
      [0, 3],
    ]) {
      const ranges = Array.from({ length: count! }, (_, index) => shardRange(total!, { index, count: count! }));
      expect(ranges[0]!.start).toBe(0);
      expect(ranges.at(-1)!.end).toBe(total);
      ranges.slice(1).forEach((r, i) => expect(r.start).toBe(ranges[i]!.end));
      const sizes = ranges.map((r) => r.end - r.start);
      expect(Math.max(...sizes) - Math.min(...sizes)).toBeLessThanOrEqual(1);
    }
  });
});

describe('--shard auto', () => {
  it('reads a Kubernetes Indexed Job index (0-based), the count from auto/n', () => {
    expect(resolveShard(parse('auto/4'), { JOB_COMPLETION_INDEX: '3' })).toEqual({ index: 3, count: 4 });
    expect(() => resolveShard(parse('auto/3'), { JOB_COMPLETION_INDEX: '3' })).toThrow(
      'index 3 (JOB_COMPLETION_INDEX=3) is not below the count 3; shards are 0 to 2',
    );
    expect(() => resolveShard(parse('auto/3'), { JOB_COMPLETION_INDEX: 'two' })).toThrow(
      'JOB_COMPLETION_INDEX is "two", not a non-negative integer',
    );
  });

  it('reads a Slurm array task: its id is the shard index, the count from auto/n', () => {
    const full = { SLURM_ARRAY_TASK_MIN: '0', SLURM_ARRAY_TASK_MAX: '7', SLURM_ARRAY_TASK_COUNT: '8' };
    for (const id of [0, 3, 7])
      expect(resolveShard(parse('auto/8'), { ...full, SLURM_ARRAY_TASK_ID: String(id) })).toEqual({
        index: id,
        count: 8,
      });
    expect(() => resolveShard(parse('auto/8'), { ...full, SLURM_ARRAY_TASK_ID: '8' })).toThrow(
      'index 8 (SLURM_ARRAY_TASK_ID=8; write the array as --array=0-7) is not below the count 8',
    );
  });

  it('runs the failed shard of a task resubmitted alone (sbatch --array=3)', () => {
    const resubmit = { SLURM_ARRAY_TASK_ID: '3', SLURM_ARRAY_TASK_MIN: '3', SLURM_ARRAY_TASK_COUNT: '1' };
    expect(resolveShard(parse('auto/8'), resubmit)).toEqual({ index: 3, count: 8 });
    // Two of them (sbatch --array=3,5): each its own shard.
    const two = { SLURM_ARRAY_TASK_MIN: '3', SLURM_ARRAY_TASK_MAX: '5', SLURM_ARRAY_TASK_COUNT: '2' };
    expect(resolveShard(parse('auto/8'), { ...two, SLURM_ARRAY_TASK_ID: '5' })).toEqual({ index: 5, count: 8 });
  });

  it('refuses a whole array written with other ids than the shard indexes', () => {
    const fromOne = { SLURM_ARRAY_TASK_ID: '5', SLURM_ARRAY_TASK_MIN: '1', SLURM_ARRAY_TASK_COUNT: '8' };
    expect(() => resolveShard(parse('auto/8'), fromOne)).toThrow(
      "the Slurm array's ids are the shard indexes, so write --array=0-7; " +
        'this array of 8 tasks starts at SLURM_ARRAY_TASK_MIN=1 with SLURM_ARRAY_TASK_STEP=1',
    );
    const stepped = { SLURM_ARRAY_TASK_ID: '6', SLURM_ARRAY_TASK_MIN: '0', SLURM_ARRAY_TASK_STEP: '2' };
    expect(() => resolveShard(parse('auto/4'), { ...stepped, SLURM_ARRAY_TASK_COUNT: '4' })).toThrow(
      'write --array=0-3',
    );
  });

  it('outside a job array says so', () => {
    expect(() => resolveShard(parse('auto/2'), {})).toThrow(
      '--shard auto/2: neither JOB_COMPLETION_INDEX (Kubernetes Indexed Job) nor SLURM_ARRAY_TASK_ID ' +
        '(Slurm job array) is set; outside a job array give the shard as i/n',
    );
    expect(resolveShard(parse('1/2'), { JOB_COMPLETION_INDEX: '0' })).toEqual({ index: 1, count: 2 });
  });
});

it('the recorded command line leaves --shard out', () => {
  expect(withoutShardFlag(['eval', '--shard', 'auto/8', '--seeds', '3', '--shard=1/2', '--quiet'])).toEqual([
    'eval',
    '--seeds',
    '3',
    '--quiet',
  ]);
});
