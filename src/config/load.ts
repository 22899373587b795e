/**
 * Configuration, layered and validated in one place:
 *
 *   flag  >  PGWARREN_X (or PGWARREN_X_FILE)  >  DATABASE_URL / AMQP_URL  >  config file  >  default
 *
 * For the database, PG* variables then fill whatever the chosen URL leaves out (as in libpq).
 * Every problem is collected before anything is reported, so an operator fixes them all in one
 * round; each names the setting as it was given, the bad value (passwords redacted) and what is
 * expected. The result is a deeply frozen `Config`.
 */
import { accessSync, constants } from 'node:fs';
import { resolve } from 'node:path';
import type { Op, Plugin } from '../types.js';
import { readConfigFile, type ConfigFile, type TableRule } from './config-file.js';
import { databaseSettings, type DatabaseSettings } from './database.js';
import { checkUnknownEnv, defaultLayer, envLayer, errorCode, fallbackLayer, flagLayer, type Raw } from './layers.js';
import { OPTIONS, type SNAPSHOT_MODES, type FLOOD_ACTIONS, type LOG_LEVELS, type SINKS, type OptionName, type OptionValue, type UNROUTABLE_ACTIONS } from './options.js';
import { redactSecrets, redactUrl } from '../shared/redact.js';
import { quote } from './validators.js';
import type { COMPRESSIONS } from '../sink/compression.js';
import { FilterSyntaxError, parseFilter, sqlExpressionProblem, SUBSET_TEXT } from '../filter/row-filter.js';

export { pgClientConfig, SSL_MODES, type DatabaseSettings, type SslMode } from './database.js';
export type { TableRule } from './config-file.js';
export { redactUrl } from '../shared/redact.js';

export class ConfigError extends Error {
  constructor(readonly problems: readonly string[]) {
    super(`invalid configuration (${problems.length} ${problems.length === 1 ? 'problem' : 'problems'}):\n${problems.map((p) => `  - ${p}`).join('\n')}`);
    this.name = 'ConfigError';
  }
}

export interface Config {
  readonly database: DatabaseSettings;
  readonly amqpUrls: readonly string[];
  readonly amqpCa?: string;
  readonly amqpCert?: string;
  readonly amqpKey?: string;
  readonly slot: string;
  readonly publication: string;
  readonly plugin: Plugin;
  /** schema.table globs; empty = every table outside the system schemas. */
  readonly tables: readonly string[];
  readonly excludeTables: readonly string[];
  readonly operations: readonly Op[];
  /** PGWARREN_SNAPSHOT: an initial snapshot when the slot is created, or none. */
  readonly snapshot: (typeof SNAPSHOT_MODES)[number];
  readonly snapshotChunkSize: number;
  readonly exchange: string;
  readonly exchangeType: string;
  readonly routingKey: string;
  /** Routing key template of application events whose payload names none ({db}, {prefix}). */
  readonly messageRoutingKey: string;
  /** Publish a commit event after each transaction that published anything. */
  readonly transactionEvents: boolean;
  readonly unroutable: (typeof UNROUTABLE_ACTIONS)[number];
  readonly deadLetterExchange: string;
  readonly maxMessageBytes: number;
  readonly floodThreshold: number;
  readonly floodAction: (typeof FLOOD_ACTIONS)[number];
  readonly floodExchange: string;
  readonly floodBufferEvents: number;
  readonly floodBufferBytes: number;
  readonly httpPort: number;
  readonly logLevel: (typeof LOG_LEVELS)[number];
  /** Absolute path of the config file read, if any. */
  readonly config?: string;
  /** Seconds. */
  readonly shutdownTimeout: number;
  /** Seconds. */
  readonly connectTimeout: number;
  /** Seconds. */
  readonly queryTimeout: number;
  /** Seconds between broker heartbeats: how quickly a silent broker is noticed (sink/heartbeat.ts). */
  readonly brokerHeartbeat: number;
  /** Seconds. */
  readonly reconnectMaxDelay: number;
  /** Seconds. */
  readonly statusInterval: number;
  /** Seconds; 0 = only at start. */
  readonly publicationSyncInterval: number;
  readonly lagWarnBytes: number;
  /** Seconds; 0 = off. */
  readonly heartbeatInterval: number;
  readonly maxInflight: number;
  readonly batchMaxEvents: number;
  readonly batchMaxBytes: number;
  readonly skipUnchanged: boolean;
  readonly compression: (typeof COMPRESSIONS)[number];
  /** Absolute path of the transform module, if any. */
  readonly transform?: string;
  /** Seconds. */
  readonly transformTimeout: number;
  readonly sink: (typeof SINKS)[number];
  readonly streamUrl: string;
  readonly stream: string;
  readonly streamPartitions: number;
  readonly streamMaxAge?: string;
  readonly streamMaxBytes?: number;
  readonly rules: readonly TableRule[];
}

export interface LoadInput {
  /** Only the flags the user passed, keyed by option name (kebab or camel case). */
  readonly flags: Readonly<Record<string, unknown>>;
  readonly env: NodeJS.ProcessEnv;
  /** Relative paths (config file, secret files, certificates) are resolved against it. */
  readonly cwd?: string;
}

const NO_FILE: ConfigFile = { options: new Map(), rules: [] };

export function loadConfig(input: LoadInput): Config {
  const problems: string[] = [];
  const { env } = input;
  const cwd = input.cwd ?? process.cwd();
  const resolvePath = (p: string) => resolve(cwd, p);

  checkUnknownEnv(env, problems);
  const flags = flagLayer(input.flags, problems);
  const fromEnv = new Map<OptionName, Raw | undefined>(OPTIONS.map((spec) => [spec.name, envLayer(env, spec, resolvePath, problems)]));

  // The file's own location is layered like any option, minus the file layer itself.
  const fileRaw = flags.get('config') ?? fromEnv.get('config');
  const configPath = fileRaw && resolvePath(fileRaw.value);
  const file = fileRaw && configPath ? readConfigFile(configPath, fileRaw.label, problems) : NO_FILE;

  const values = new Map<OptionName, unknown>();
  const labels = new Map<OptionName, string>();
  for (const spec of OPTIONS) {
    const raw = flags.get(spec.name) ?? fromEnv.get(spec.name) ?? fallbackLayer(env, spec) ?? file.options.get(spec.name) ?? defaultLayer(spec);
    if (!raw) continue;
    const parsed = spec.schema.safeParse(raw.value);
    if (!parsed.success) {
      for (const issue of parsed.error.issues) problems.push(`${raw.label}: ${issue.message}`);
      continue;
    }
    labels.set(spec.name, raw.label);
    values.set(spec.name, spec.type === 'path' && spec.name !== 'config' ? readableFile(resolvePath(parsed.data as string), raw.label, problems) : parsed.data);
  }

  // Typed by the option's own schema, so the Config below cannot disagree with the table.
  const get = <N extends OptionName>(name: N) => values.get(name) as OptionValue<N>;
  const optional = <N extends OptionName>(name: N) => values.get(name) as OptionValue<N> | undefined;

  const urlLabel = labels.get('database-url');
  const url = optional('database-url');
  const database = databaseSettings(
    {
      url: url !== undefined && urlLabel !== undefined ? { value: url, label: urlLabel } : undefined,
      sslRootCert: optional('pg-ssl-root-cert'),
      env,
      resolveFile: (p, label) => readableFile(resolvePath(p), label, problems),
    },
    problems,
  );

  checkRowFilters(file.rules, values.get('plugin') as Plugin | undefined, configPath ?? 'config file', problems);

  // A stream holds one ordered log: diverting rows to another exchange has no meaning there.
  if (optional('sink') === 'stream' && optional('flood-action') === 'divert') {
    problems.push(`${labels.get('flood-action') ?? 'PGWARREN_FLOOD_ACTION'}: "divert" needs the amqp sink (PGWARREN_SINK=${optional('sink')}); use summarize, drop or pass`);
  }
  // stdout writes one JSON line per message: a compressed body is not a line of text.
  if (optional('sink') === 'stdout' && (optional('compression') ?? 'none') !== 'none') {
    problems.push(`${labels.get('compression') ?? 'PGWARREN_COMPRESSION'}: "${optional('compression')}" cannot be written as JSON lines (PGWARREN_SINK=stdout); use none`);
  }
  if (problems.length > 0 || !database) throw new ConfigError(problems.map(redactSecrets));

  return deepFreeze<Config>({
    database,
    amqpUrls: get('amqp-url'),
    ...definedOnly({ amqpCa: optional('amqp-ca'), amqpCert: optional('amqp-cert'), amqpKey: optional('amqp-key') }),
    slot: get('slot'),
    publication: get('publication'),
    plugin: get('plugin'),
    tables: get('tables'),
    excludeTables: get('exclude-tables'),
    operations: get('operations'),
    snapshot: get('snapshot'),
    snapshotChunkSize: get('snapshot-chunk-size'),
    exchange: get('exchange'),
    exchangeType: get('exchange-type'),
    routingKey: get('routing-key'),
    messageRoutingKey: get('message-routing-key'),
    transactionEvents: get('transaction-events'),
    unroutable: get('unroutable'),
    deadLetterExchange: get('dead-letter-exchange'),
    maxMessageBytes: get('max-message-bytes'),
    floodThreshold: get('flood-threshold'),
    floodAction: get('flood-action'),
    floodExchange: get('flood-exchange'),
    floodBufferEvents: get('flood-buffer-events'),
    floodBufferBytes: get('flood-buffer-bytes'),
    httpPort: get('http-port'),
    logLevel: get('log-level'),
    ...definedOnly({ config: configPath }),
    shutdownTimeout: get('shutdown-timeout'),
    connectTimeout: get('connect-timeout'),
    queryTimeout: get('query-timeout'),
    brokerHeartbeat: get('broker-heartbeat'),
    reconnectMaxDelay: get('reconnect-max-delay'),
    statusInterval: get('status-interval'),
    publicationSyncInterval: get('publication-sync-interval'),
    lagWarnBytes: get('lag-warn-bytes'),
    heartbeatInterval: get('heartbeat-interval'),
    maxInflight: get('max-inflight'),
    batchMaxEvents: get('batch-max-events'),
    batchMaxBytes: get('batch-max-bytes'),
    skipUnchanged: get('skip-unchanged'),
    compression: get('compression'),
    ...definedOnly({ transform: optional('transform') }),
    transformTimeout: get('transform-timeout'),
    sink: get('sink'),
    streamUrl: get('stream-url'),
    stream: get('stream'),
    streamPartitions: get('stream-partitions'),
    ...definedOnly({ streamMaxAge: get('stream-max-age'), streamMaxBytes: get('stream-max-bytes') }),
    rules: file.rules,
  });
}

/**
 * Rule `where:` expressions. With wal2json pgwarren evaluates them itself, so each must be in the
 * subset it parses (README "Shaping the stream"); with pgoutput Postgres does, and the text goes
 * into the publication as it is, so it must be one expression and nothing more.
 */
function checkRowFilters(rules: readonly TableRule[], plugin: Plugin | undefined, path: string, problems: string[]): void {
  rules.forEach((rule, i) => {
    if (rule.where === undefined) return;
    const where = `${path}: rules[${i}].where (${rule.match})`;
    const lexical = sqlExpressionProblem(rule.where);
    if (lexical) {
      problems.push(`${where}: ${quote(rule.where)} is not a usable row filter: ${lexical}`);
      return;
    }
    if (plugin !== 'wal2json') return;
    try {
      parseFilter(rule.where);
    } catch (err) {
      if (!(err instanceof FilterSyntaxError)) throw err;
      problems.push(
        `${where}: ${quote(rule.where)} is outside what pgwarren evaluates with PGWARREN_PLUGIN=wal2json (${err.message}); ` +
          `supported: ${SUBSET_TEXT}. With pgoutput, Postgres evaluates any row filter it allows`,
      );
    }
  });
}

/** Certificates and keys are checked now: a typo must exit 2 at start, not fail a reconnect later. */
function readableFile(path: string, label: string, problems: string[]): string | undefined {
  try {
    accessSync(path, constants.R_OK);
    return path;
  } catch (err) {
    problems.push(`${label}: cannot read ${quote(path)} (${errorCode(err)}); expected a readable file`);
    return undefined;
  }
}

/** A log-safe view of the configuration: no passwords, no connection string. */
export function describeConfig(config: Config): Record<string, unknown> {
  const { database, amqpUrls, ...rest } = config;
  const { password, connectionString: _omitted, ...db } = database;
  return {
    ...rest,
    database: { ...db, ...(password !== undefined && { password: '***' }) },
    amqpUrls: amqpUrls.map(redactUrl),
    streamUrl: redactUrl(config.streamUrl),
  };
}

function definedOnly<T extends Record<string, unknown>>(fields: T): Partial<T> {
  return Object.fromEntries(Object.entries(fields).filter(([, v]) => v !== undefined)) as Partial<T>;
}

function deepFreeze<T>(value: T): T {
  if (value !== null && typeof value === 'object' && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const v of Object.values(value)) deepFreeze(v);
  }
  return value;
}
