/**
 * Optional heartbeat (PGWARREN_HEARTBEAT_INTERVAL): every interval, a tiny non-transactional
 * logical message is written in the source database. It gives the slot something of its own to
 * decode, so its confirmed position keeps moving even when the published tables are idle and
 * the server sends no keepalive with a newer position. The message's prefix is not pgwarren's
 * marker, so it never becomes an event. Failures are logged by the periodic task and retried.
 */
import type pg from 'pg';
import { LazyPgClient } from '../shared/lazy-client.js';
import type { PgTimeouts } from '../shared/pg-query.js';
import type { Logger } from '../ops/logger.js';
import { PeriodicTask } from '../ops/periodic.js';

export const HEARTBEAT_PREFIX = 'pgwarren-heartbeat';

export class Heartbeat {
  private task: PeriodicTask | null = null;
  private readonly db: LazyPgClient;

  constructor(private readonly opts: { pg: pg.ClientConfig; timeouts: PgTimeouts; intervalMs: number; log: Logger }) {
    this.db = new LazyPgClient(opts.pg, 'pgwarren-heartbeat', opts.timeouts);
  }

  start(): void {
    if (this.opts.intervalMs <= 0) return;
    const beat = async () => {
      await this.db.query('SELECT pg_logical_emit_message(false, $1, now()::text)', [HEARTBEAT_PREFIX]);
    };
    this.task = new PeriodicTask(beat, this.opts.intervalMs, this.opts.log, 'heartbeat');
  }

  async stop(): Promise<void> {
    this.task?.stop();
    this.task = null;
    await this.db.close();
  }
}
