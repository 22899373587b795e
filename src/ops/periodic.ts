/**
 * A background loop that never throws into the void: each run's failure is logged (once per
 * streak, then at debug) and the next run happens on schedule. Runs never overlap.
 */
import type { Logger } from './logger.js';

export class PeriodicTask {
  private timer: NodeJS.Timeout | null;
  private failing = false;

  constructor(
    private readonly run: () => Promise<void>,
    private readonly intervalMs: number,
    private readonly log: Logger,
    private readonly name: string,
    firstRunMs = intervalMs,
  ) {
    this.timer = setTimeout(() => void this.tick(), firstRunMs);
  }

  private async tick(): Promise<void> {
    try {
      await this.run();
      if (this.failing) this.log.info(`${this.name} recovered`);
      this.failing = false;
    } catch (err) {
      if (!this.failing) this.log.warn({ err: (err as Error).message }, `${this.name} failed; will retry`);
      else this.log.debug({ err: (err as Error).message }, `${this.name} still failing`);
      this.failing = true;
    }
    if (this.timer) this.timer = setTimeout(() => void this.tick(), this.intervalMs);
  }

  stop(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
  }
}
