/**
 * How `arm serve` is stopped (docs/server.md "Lifecycle"): the first SIGTERM or SIGINT stops it gracefully (while the
 * model loads: the load is abandoned and the process exits 0; once serving: the server drains, then exits 0), a
 * second exits 130 once the scoring thread is between two onnxruntime calls, a third kills at once.
 *
 * Started through npm (`npx arm serve`, `npm run`), the process is not npm's child but its shell's (`sh -c`), and
 * npm passes SIGTERM to that shell only: the shell dies, this process is left running, orphaned. So under npm the
 * parent is watched too: when it goes away, this process stops as if it had got SIGTERM.
 */

/** How often the parent is looked at under npm (a loaded machine may take a while more to notice). */
const PARENT_POLL_MS = 500;

export class StopSignals {
  private count = 0;
  private readonly loading = new AbortController();
  private resolveFirst!: (reason: string) => void;
  /** Why the server stops: "SIGTERM", "SIGINT", or that npm's shell went away. Resolves on the first stop. */
  readonly first = new Promise<string>((resolve) => (this.resolveFirst = resolve));
  /**
   * What a second signal waits for before exiting 130: the scoring thread's end between two onnxruntime calls
   * (process.exit while one runs aborts the process; engine.ts WorkerEngine.abort). Set once the engine exists.
   */
  beforeForcedExit: () => Promise<void> = async () => {};

  constructor(private readonly log: (line: string) => void) {
    process.on('SIGTERM', () => this.onSignal('SIGTERM'));
    process.on('SIGINT', () => this.onSignal('SIGINT'));
    if (process.env.npm_command !== undefined) this.watchParent();
  }

  /** Aborted on the first stop: the model load listens to it. */
  get signal(): AbortSignal {
    return this.loading.signal;
  }

  get stopping(): boolean {
    return this.loading.signal.aborted;
  }

  private stop(reason: string): void {
    this.loading.abort();
    this.resolveFirst(reason);
  }

  private onSignal(sig: string): void {
    this.count++;
    if (this.count === 1) {
      this.stop(sig);
      return;
    }
    if (this.count === 2) {
      this.log(
        `arm serve: ${sig} again, exiting without draining once the running forward returns (a third signal kills at ` +
          `once)`,
      );
      void this.beforeForcedExit().finally(() => process.exit(130));
      return;
    }
    this.log(`arm serve: ${sig} a third time, killing`);
    process.kill(process.pid, 'SIGKILL');
  }

  /** Under npm: stops when the parent (npm's shell) goes away, the parent id changing to whoever adopts orphans. */
  private watchParent(): void {
    const parent = process.ppid;
    const timer = setInterval(() => {
      if (process.ppid === parent) return;
      clearInterval(timer);
      if (this.stopping) return;
      this.log(
        'arm serve: the npm process that started this server is gone (npm passes SIGTERM to its shell, not here): ' +
          'stopping as on SIGTERM',
      );
      this.stop('npm gone');
    }, PARENT_POLL_MS);
    timer.unref();
  }
}
