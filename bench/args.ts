/** What every bench script reads from its command line and how it logs: flags, `--name value` options, timing. */
import os from 'node:os';

/** The script's own arguments (what a child process of the bench is given again). */
export const benchArgs: readonly string[] = process.argv.slice(2);
const args = benchArgs;
export const flag = (name: string): boolean => args.includes(name);
export const option = (name: string): string | undefined => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
};
/** `--threads n`, else every core. */
export const threadsOption = (): number => Number(option('--threads') ?? os.availableParallelism());
export const log = (s: string): void => void process.stderr.write(`${s}\n`);
/** Seconds since `t0` (a `performance.now()` reading). */
export const seconds = (t0: number): number => (performance.now() - t0) / 1000;
