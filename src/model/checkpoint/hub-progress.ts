/**
 * The progress bar of a hub download (checkpoint/hub.ts): one bar on stderr for all of a snapshot's shards, bytes,
 * rate and ETA over the lot, none when quiet.
 */
import cliProgress from 'cli-progress';

/** One bar for all shards: bytes, rate and ETA over the lot; totals grow as each shard's size becomes known. */
export class ProgressBar {
  private readonly bar?: cliProgress.SingleBar;
  private readonly files = new Map<string, { done: number; total: number }>();
  private started = false;
  private readonly startedAt = Date.now();
  /** Bytes that were already on disk (resumed parts) when each file first reported: not part of the rate. */
  private resumedBytes = 0;

  constructor(
    quiet: boolean,
    private readonly label: string,
  ) {
    if (!quiet) {
      this.bar = new cliProgress.SingleBar(
        {
          format: `{label} {bar} {percentage}% | {doneMb}/{totalMb} MB | {rate} MB/s | ETA {eta_formatted}`,
          hideCursor: true,
        },
        cliProgress.Presets.shades_classic,
      );
    }
  }

  update(file: string, done: number, total: number | undefined): void {
    if (!this.bar) return;
    if (!this.files.has(file)) this.resumedBytes += done;
    this.files.set(file, { done, total: total ?? Math.max(done, this.files.get(file)?.total ?? 0) });
    let sumDone = 0,
      sumTotal = 0;
    for (const f of this.files.values()) {
      sumDone += f.done;
      sumTotal += Math.max(f.total, f.done);
    }
    const seconds = Math.max(1e-3, (Date.now() - this.startedAt) / 1000);
    const payload = {
      label: this.label,
      doneMb: (sumDone / 1e6).toFixed(1),
      totalMb: (sumTotal / 1e6).toFixed(1),
      rate: (Math.max(0, sumDone - this.resumedBytes) / 1e6 / seconds).toFixed(1),
    };
    if (!this.started) {
      this.bar.start(Math.max(1, sumTotal), sumDone, payload);
      this.started = true;
      return;
    }
    this.bar.setTotal(Math.max(1, sumTotal));
    this.bar.update(sumDone, payload);
  }

  stop(): void {
    if (this.started) this.bar?.stop();
  }
}
