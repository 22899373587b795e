/**
 * Config (what the operator said) -> the settings each subsystem takes. Kept apart so the
 * subsystems never depend on the option table's shape.
 */
import type pg from 'pg';
import { pgClientConfig, type Config } from '../config/load.js';
import { SESSION_CONFIG_KEYS, type SessionSettings } from '../pipeline/assemble.js';
import type { PgTimeouts } from '../shared/pg-query.js';
import type { TransformFn } from '../pipeline/transform.js';

export function pgConfig(config: Config): pg.ClientConfig {
  return pgClientConfig(config.database);
}

/** Connect and query bounds for every ordinary Postgres connection (README "Failure handling"). */
export function pgTimeouts(config: Config): PgTimeouts {
  return { connectMs: config.connectTimeout * 1000, queryMs: config.queryTimeout * 1000 };
}

/** `transform`: the loaded PGWARREN_TRANSFORM function (run.ts loads the module once). */
export function sessionSettings(config: Config, transform: TransformFn | null = null): SessionSettings {
  return {
    ...pick(config, SESSION_CONFIG_KEYS),
    pg: pgConfig(config),
    transform,
    database: config.database.database,
    amqpTls: { ca: config.amqpCa, cert: config.amqpCert, key: config.amqpKey },
    transformTimeoutSeconds: config.transformTimeout,
    shutdownTimeoutSeconds: config.shutdownTimeout,
    timeouts: pgTimeouts(config),
    brokerHeartbeatSeconds: config.brokerHeartbeat,
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
  };
}

/** The `keys` of `config`, and nothing else (a session must not see options it does not use). */
function pick<K extends keyof Config>(config: Config, keys: readonly K[]): Pick<Config, K> {
  return Object.fromEntries(keys.map((k) => [k, config[k]])) as Pick<Config, K>;
}
