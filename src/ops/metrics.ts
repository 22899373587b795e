/**
 * Every metric pgwarren exports, in one registry per process (tests create their own). Names and
 * labels are part of the contract (README "Health and metrics").
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

export class Metrics {
  readonly registry = new Registry();

  readonly eventsPublished = new Counter({
    name: 'pgwarren_events_published_total',
    help: 'Events the broker confirmed, by table (schema.table) and operation.',
    labelNames: ['table', 'op'] as const,
    registers: [this.registry],
  });
  readonly eventsFiltered = new Counter({
    name: 'pgwarren_events_filtered_total',
    help: 'Changes read from the slot and not published, by reason (table, operation, row_filter, unchanged, transform, flood).',
    labelNames: ['reason'] as const,
    registers: [this.registry],
  });
  readonly floodTransactions = new Counter({
    name: 'pgwarren_flood_transactions_total',
    help: 'Transactions in which at least one table flooded (threshold or marker).',
    registers: [this.registry],
  });
  readonly commitToConfirm = new Histogram({
    name: 'pgwarren_commit_to_confirm_seconds',
    help: 'Seconds from a transaction committing in Postgres to the broker confirming its last message.',
    // Fine below 100 ms, where a healthy daemon lives and p99 targets are set; coarse above,
    // where only "how bad" matters. One observation per transaction, so 20 buckets cost little.
    buckets: [0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300],
    registers: [this.registry],
  });
  /** Read at scrape time from `inflightSource`, so the hot path pays nothing for it. */
  readonly inflight: Gauge = new Gauge({
    name: 'pgwarren_inflight_messages',
    help: 'Messages published to the broker and not yet confirmed.',
    registers: [this.registry],
    collect: (): void => this.inflight.set(this.inflightSource()),
  });
  inflightSource: () => number = () => 0;
  /** Events confirmed since the process started, for log lines (the counter is async to read). */
  publishedCount = 0;
  /**
   * The counter of confirmed events of one table and op; it also feeds `publishedCount`. Callers
   * keep it per route because label hashing per event is costly.
   */
  publishedCounter(table: string, op: string): { inc(n?: number): void } {
    const child = this.eventsPublished.labels(table, op);
    return {
      inc: (n = 1) => {
        child.inc(n);
        this.publishedCount += n;
      },
    };
  }
  readonly slotLagBytes = new Gauge({
    name: 'pgwarren_slot_lag_bytes',
    help: "Bytes of WAL between the server's current position and the slot's confirmed position.",
    registers: [this.registry],
  });
  readonly slotLagWarning = new Gauge({
    name: 'pgwarren_slot_lag_warning',
    help: '1 while the slot lag is above PGWARREN_LAG_WARN_BYTES (Postgres is keeping WAL for pgwarren), else 0.',
    registers: [this.registry],
  });
  readonly reconnects = new Counter({
    name: 'pgwarren_reconnects_total',
    help: 'Sessions ended by a failure of one side, by target (postgres, rabbitmq).',
    labelNames: ['target'] as const,
    registers: [this.registry],
  });
  readonly unroutable = new Counter({
    name: 'pgwarren_unroutable_total',
    help: 'Messages the broker returned because no queue was bound for their routing key.',
    registers: [this.registry],
  });
  readonly deadLettered = new Counter({
    name: 'pgwarren_dead_lettered_total',
    help:
      'Events that could not be published as configured, by reason (routing_key, size, broker_rejected, and those of application events and transforms): ' +
      'sent to the dead-letter exchange, or logged and skipped where even that is impossible.',
    labelNames: ['reason'] as const,
    registers: [this.registry],
  });
  readonly nacks = new Counter({
    name: 'pgwarren_nacks_total',
    help: 'Broker nacks (basic.nack) of published messages; each ends the session, which resumes after a backoff.',
    registers: [this.registry],
  });
  readonly streamDeduplicated = new Counter({
    name: 'pgwarren_stream_deduplicated_total',
    help: 'Stream sink: messages read again from the slot after a failure and not sent, because the stream already held them.',
    registers: [this.registry],
  });
  readonly confirmedLsn = new Gauge({
    name: 'pgwarren_confirmed_lsn',
    help: 'The last LSN acknowledged to Postgres, as a number (for rate() and alerting on a stall).',
    registers: [this.registry],
  });
  readonly streaming = new Gauge({
    name: 'pgwarren_streaming',
    help: '1 while a session streams from the slot to the broker, else 0.',
    registers: [this.registry],
  });

  constructor(options: { processMetrics?: boolean } = {}) {
    if (options.processMetrics ?? true) collectDefaultMetrics({ register: this.registry, prefix: 'pgwarren_' });
  }
}
