/** Shared CLI plumbing: model options, progress bars on stderr, error reporting. */
import cliProgress from 'cli-progress';
import type { Command } from 'commander';
import { Decoder } from '../model/decoder.js';

export interface ModelCliOptions { model: string; cacheDir?: string; threads?: number; revision?: string; quiet?: boolean }

export function addModelOptions(cmd: Command, defaultModel?: string): Command {
  const model = 'Hugging Face checkpoint folder or hub id (owner/name[@revision])';
  return (defaultModel ? cmd.option('--model <dir|hub-id>', model, defaultModel) : cmd.requiredOption('--model <dir|hub-id>', model))
    .option('--revision <rev>', 'hub revision (branch, tag or commit)')
    .option('--cache-dir <dir>', 'where built graphs and downloads are kept (default ~/.cache/activation-rm, or $ARM_CACHE_DIR)')
    .option('--threads <n>', 'onnxruntime intra-op threads (default: all cores)', (v) => positiveInt(v, '--threads'))
    .option('--quiet', 'no progress bars');
}

export function positiveInt(v: string, flag: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1) throw new Error(`${flag} must be a positive integer, got ${JSON.stringify(v)}`);
  return n;
}

/** A progress bar on stderr (only when stderr is a terminal and not --quiet). */
export function progressBar(label: string, quiet?: boolean): { update(done: number, total: number, info?: string): void; stop(): void } {
  if (quiet || !process.stderr.isTTY) return { update() {}, stop() {} };
  const bar = new cliProgress.SingleBar({
    format: `${label} {bar} {value}/{total} | {rate}/s | ETA {eta_formatted} | {info}`, stream: process.stderr, etaBuffer: 50,
  }, cliProgress.Presets.shades_classic);
  let started = false;
  const t0 = Date.now();
  return {
    update(done, total, info = '') {
      if (!started) { bar.start(total, 0, { info, rate: '0' }); started = true; }
      bar.setTotal(total);
      bar.update(done, { info, rate: (done / Math.max(1e-3, (Date.now() - t0) / 1000)).toFixed(1) });
    },
    stop() { if (started) bar.stop(); },
  };
}

export async function loadDecoder(opts: ModelCliOptions): Promise<Decoder> {
  const bar = progressBar('building graph', opts.quiet);
  try {
    return await Decoder.load(opts.model, {
      cacheDir: opts.cacheDir, threads: opts.threads, revision: opts.revision, quiet: opts.quiet,
      onBuildProgress: (done, total, what) => bar.update(done, total, what),
    });
  } finally {
    bar.stop();
  }
}
