/**
 * Watches the slot from an ordinary connection: lag in bytes for the gauge, and a warning when it
 * passes the configured threshold, since a slot that falls behind holds WAL on the source.
 * Failures are logged by the periodic task and retried on the next tick with a new connection.
 */
import type pg from 'pg';
import { LazyPgClient } from '../shared/lazy-client.js';
import type { PgTimeouts } from '../shared/pg-query.js';
import type { Logger } from '../ops/logger.js';
import type { Metrics } from '../ops/metrics.js';
import { queryFn } from '../shared/pg-query.js';
import { slotState } from './slot-admin.js';
import { PeriodicTask } from '../ops/periodic.js';

export class SlotMonitor {
  private task: PeriodicTask | null = null;
  private readonly db: LazyPgClient;
  private warned = false;

  constructor(
    private readonly opts: { pg: pg.ClientConfig; timeouts: PgTimeouts; slot: string; intervalMs: number; lagWarnBytes: number; metrics: Metrics; log: Logger },
  ) {
    this.db = new LazyPgClient(opts.pg, 'pgwarren-monitor', opts.timeouts);
  }

  start(): void {
    this.task = new PeriodicTask(() => this.poll(), this.opts.intervalMs, this.opts.log, 'slot monitor', 0);
  }

  async stop(): Promise<void> {
    this.task?.stop();
    this.task = null;
    await this.db.close();
  }

  private async poll(): Promise<void> {
    const state = await slotState(queryFn(this.db), this.opts.slot);
    if (!state.exists || state.lagBytes == null) return;
    const lag = Number(state.lagBytes);
    this.opts.metrics.slotLagBytes.set(lag);
    const limit = this.opts.lagWarnBytes;
    if (limit > 0 && lag > limit && !this.warned) {
      this.warned = true;
      this.opts.metrics.slotLagWarning.set(1);
      this.opts.log.warn(
        { slot: this.opts.slot, lagBytes: lag, limitBytes: limit, walStatus: state.walStatus },
        'slot lag is above PGWARREN_LAG_WARN_BYTES: Postgres keeps WAL for it; check that pgwarren is streaming and the broker keeps up',
      );
    } else if (limit > 0 && lag <= limit && this.warned) {
      this.warned = false;
      this.opts.metrics.slotLagWarning.set(0);
      this.opts.log.info({ slot: this.opts.slot, lagBytes: lag }, 'slot lag back under PGWARREN_LAG_WARN_BYTES');
    }
  }
}
