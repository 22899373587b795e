/**
 * Config (what the operator said) -> the settings each subsystem takes. Kept apart so the
 * subsystems never depend on the option table's shape.
 */
import type pg from 'pg';
import { pgClientConfig, type Config } from '../config/load.js';
import type { SessionSettings } from '../pipeline/session.js';

export function pgConfig(config: Config): pg.ClientConfig {
  return pgClientConfig(config.database);
}

export function sessionSettings(config: Config): SessionSettings {
  return {
    pg: pgConfig(config),
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
    rules: config.rules.map((r) => ({
      match: r.match,
      exchange: r.exchange,
      routingKey: r.routingKey,
      ttl: r.ttl,
      excludeColumns: r.excludeColumns,
      floodThreshold: r.floodThreshold,
    })),
    floodThreshold: config.floodThreshold,
    floodAction: config.floodAction,
    floodExchange: config.floodExchange,
    floodBufferEvents: config.floodBufferEvents,
    floodBufferBytes: config.floodBufferBytes,
    unroutable: config.unroutable,
    maxInflight: config.maxInflight,
    batchMaxEvents: config.batchMaxEvents,
    batchMaxBytes: config.batchMaxBytes,
    shutdownTimeoutSeconds: config.shutdownTimeout,
    statusIntervalSeconds: config.statusInterval,
    publicationSyncSeconds: config.publicationSyncInterval,
    snapshot: config.snapshot,
    snapshotChunkSize: config.snapshotChunkSize,
  };
}
