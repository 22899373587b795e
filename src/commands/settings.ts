/**
 * Config (what the operator said) -> the settings each subsystem takes. Kept apart so the
 * subsystems never depend on the option table's shape.
 */
import type pg from 'pg';
import { pgClientConfig, type Config } from '../config/load.js';
import type { SessionSettings } from '../pipeline/session.js';
import type { PgTimeouts } from '../shared/pg-query.js';
import type { TransformFn } from '../pipeline/transform.js';

export function pgConfig(config: Config): pg.ClientConfig {
  return pgClientConfig(config.database);
}

/** Connect and query bounds for every ordinary Postgres connection (CONTRACT §9). */
export function pgTimeouts(config: Config): PgTimeouts {
  return { connectMs: config.connectTimeout * 1000, queryMs: config.queryTimeout * 1000 };
}

/** `transform`: the loaded PGWARREN_TRANSFORM function (run.ts loads the module once). */
export function sessionSettings(config: Config, transform: TransformFn | null = null): SessionSettings {
  return {
    pg: pgConfig(config),
    transform,
    database: config.database.database,
    amqpUrls: config.amqpUrls,
    amqpTls: { ca: config.amqpCa, cert: config.amqpCert, key: config.amqpKey },
    slot: config.slot,
    publication: config.publication,
    plugin: config.plugin,
    tables: config.tables,
    excludeTables: config.excludeTables,
    operations: config.operations,
    exchange: config.exchange,
    exchangeType: config.exchangeType,
    routingKey: config.routingKey,
    messageRoutingKey: config.messageRoutingKey,
    transactionEvents: config.transactionEvents,
    rules: config.rules.map((r) => ({
      match: r.match,
      exchange: r.exchange,
      routingKey: r.routingKey,
      ttl: r.ttl,
      excludeColumns: r.excludeColumns,
      floodThreshold: r.floodThreshold,
      where: r.where,
      skipUnchanged: r.skipUnchanged,
    })),
    skipUnchanged: config.skipUnchanged,
    compression: config.compression,
    transformTimeoutSeconds: config.transformTimeout,
    floodThreshold: config.floodThreshold,
    floodAction: config.floodAction,
    floodExchange: config.floodExchange,
    floodBufferEvents: config.floodBufferEvents,
    floodBufferBytes: config.floodBufferBytes,
    unroutable: config.unroutable,
    deadLetterExchange: config.deadLetterExchange,
    maxMessageBytes: config.maxMessageBytes,
    maxInflight: config.maxInflight,
    batchMaxEvents: config.batchMaxEvents,
    batchMaxBytes: config.batchMaxBytes,
    shutdownTimeoutSeconds: config.shutdownTimeout,
    timeouts: pgTimeouts(config),
    statusIntervalSeconds: config.statusInterval,
    publicationSyncSeconds: config.publicationSyncInterval,
    sink: config.sink,
    stream: {
      url: config.streamUrl,
      stream: config.stream,
      partitions: config.streamPartitions,
      maxAge: config.streamMaxAge,
      maxBytes: config.streamMaxBytes,
    },
    snapshot: config.snapshot,
    snapshotChunkSize: config.snapshotChunkSize,
  };
}
