/**
 * The one progress bar of the package: a line on stderr with count, rate and ETA, for the long steps the CLI
 * shows (graph builds, the fit's phases, scoring, evaluation). It draws only when stderr is a terminal and the
 * caller is not quiet; otherwise every call is a no-op.
 */
import cliProgress from 'cli-progress';

export interface ProgressBar {
  /** Shows `done` of `total`, with `info` (what is being worked on) after the ETA; the first call starts the bar. */
  update(done: number, total: number, info?: string): void;
  /** Ends the bar's line (a no-op when it never started). */
  stop(): void;
}

/** A progress bar labelled `label` (padded by the caller, so bars stacked on one screen line up). */
export function progressBar(label: string, opts: { quiet?: boolean } = {}): ProgressBar {
  if (opts.quiet || !process.stderr.isTTY) return { update() {}, stop() {} };
  const bar = new cliProgress.SingleBar(
    {
      format: `${label} {bar} {value}/{total} | {rate}/s | ETA {eta_formatted} | {info}`,
      stream: process.stderr,
      etaBuffer: 50,
    },
    cliProgress.Presets.shades_classic,
  );
  let started = false;
  const t0 = Date.now();
  return {
    update(done, total, info = '') {
      if (!started) {
        bar.start(total, 0, { info, rate: '0' });
        started = true;
      }
      bar.setTotal(total);
      bar.update(done, { info, rate: (done / Math.max(1e-3, (Date.now() - t0) / 1000)).toFixed(1) });
    },
    stop() {
      if (started) bar.stop();
    },
  };
}
