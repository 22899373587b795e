/**
 * Snapshots inside one session: the tap the pipeline feeds (watermarks, changes) and the runner
 * that reads chunks. The session creates one, hands `tap` to the pipeline, calls `start` once it
 * streams and `stop` when it ends. Nothing here outlives the session except the rows of
 * `pgwarren.snapshots`, which the next session resumes from.
 */
import type pg from 'pg';
import type { Config } from '../config/load.js';
import type { Logger } from '../ops/logger.js';
import type { Metrics } from '../ops/metrics.js';
import type { EventBuilder } from '../events/envelope.js';
import type { TypeCatalog } from '../source/type-catalog.js';
import type { PgTimeouts, QueryFn } from '../shared/pg-query.js';
import { sqlState } from '../errors.js';
import { ruleLookup } from '../filter/selection.js';
import { SnapshotTap } from './tap.js';
import { SnapshotRunner } from './reader.js';
import { snapshotMetrics } from './metrics.js';
import { createStore } from './store.js';
import { requestInitial } from './request.js';

/**
 * What a snapshot session needs: settings of `Config` (the option table lists each once) and the
 * connection values commands/settings.ts derives from it for every session.
 */
export type SnapshotSessionSettings = Pick<Config, 'slot' | 'exchangeType' | 'tables' | 'excludeTables' | 'snapshotChunkSize' | 'rules'> & {
  /** Snapshots need the AMQP sink or stdout (see the runner's `unsupported`); absent: amqp. */
  readonly sink?: Config['sink'];
  readonly pg: pg.ClientConfig;
  /** PGWARREN_CONNECT_TIMEOUT / PGWARREN_QUERY_TIMEOUT, for the snapshot's connections. */
  readonly timeouts: PgTimeouts;
};

export class SnapshotSession {
  readonly tap = new SnapshotTap();
  private readonly runner: SnapshotRunner;

  constructor(deps: {
    settings: SnapshotSessionSettings;
    builder: EventBuilder;
    types: TypeCatalog;
    sink: { declareExchange?(ex: { name: string; type: string }): Promise<void> };
    metrics: Metrics;
    log: Logger;
  }) {
    const { settings, sink } = deps;
    this.runner = new SnapshotRunner({
      pg: settings.pg,
      timeouts: settings.timeouts,
      slot: settings.slot,
      tap: this.tap,
      builder: deps.builder,
      types: deps.types,
      declareExchange: sink.declareExchange ? (name) => sink.declareExchange!({ name, type: settings.exchangeType }) : undefined,
      metrics: snapshotMetrics(deps.metrics),
      log: deps.log.child({ component: 'snapshot' }),
      // The stream sink's exactly-once positions are (commit LSN, index in the transaction); read
      // events stand between transactions and would break them (README "Replay with streams").
      rowFilter: ruleLookup(settings.rules ?? [], (r) => r.where, null as string | null),
      unsupported:
        settings.sink === 'stream'
          ? 'snapshots are not available with PGWARREN_SINK=stream yet: read events have no place in the stream\'s exactly-once positions; use the amqp sink for snapshots'
          : undefined,
    });
  }

  start(): void {
    this.runner.start();
  }

  stop(): Promise<void> {
    return this.runner.stop();
  }

  /**
   * PGWARREN_SNAPSHOT=initial, the slot was just created: record the initial snapshot. Failing to
   * is logged, never fatal: streaming matters more, and `pgwarren snapshot` can ask again.
   */
  static async requestInitial(query: QueryFn, settings: SnapshotSessionSettings, log: Logger): Promise<void> {
    try {
      await createStore(query).catch((err: unknown) => {
        // The run role may not create the schema; setup (as the owner) does.
        if (sqlState(err) !== '42501') throw err;
      });
      const made = await requestInitial(query, {
        slot: settings.slot,
        includeTables: settings.tables,
        excludeTables: settings.excludeTables,
        chunkSize: settings.snapshotChunkSize,
      });
      for (const t of made.skipped) log.warn({ table: t.table, reason: t.reason }, `initial snapshot leaves out ${t.table}: ${t.reason}`);
      if (made.id !== null) log.info({ snapshot: made.id, tables: made.tables }, `initial snapshot ${made.id} requested for ${made.tables.length} table(s)`);
    } catch (err) {
      log.error(
        { err: (err as Error).message },
        'could not record the initial snapshot (PGWARREN_SNAPSHOT=initial); run "pgwarren setup" as the tables\' owner and grant the run role its snapshot privilege (README "Snapshots"), then use "pgwarren snapshot"',
      );
    }
  }
}
