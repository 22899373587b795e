/**
 * The option table: the one place that names every setting, its environment variable, default,
 * meaning and validation. Flags and `--help` (cli-options.ts), env and file parsing (load.ts), the
 * README option table and the example env file are all derived from it, so they cannot disagree.
 */
import * as kinds from './validators.js';
import { COMPRESSIONS } from '../sink/compression.js';
import type { Kind } from './validators.js';

export type OptionGroup = 'connection' | 'source' | 'routing' | 'shaping' | 'flood' | 'operations' | 'performance';

/** Help sections, in the order they are shown. */
export const GROUP_TITLES: Readonly<Record<OptionGroup, string>> = {
  connection: 'Connections:',
  source: 'Source (Postgres):',
  routing: 'Routing (RabbitMQ):',
  shaping: 'Shaping the stream:',
  flood: 'Flood guard:',
  operations: 'Operations:',
  performance: 'Performance:',
};

export interface OptionSpec<N extends string = string, T = unknown> extends Kind<T> {
  /** kebab-case; the flag is `--name`. */
  readonly name: N;
  /** PGWARREN_NAME; PGWARREN_NAME_FILE names a file holding the value. */
  readonly env: string;
  readonly group: OptionGroup;
  /** One line an operator understands; lower case, like the rows of the contract's table. */
  readonly description: string;
  /** Raw text fed through the same schema as user input; absent = the setting is optional. */
  readonly default?: string;
  /** How the default reads in help and docs when it is not simply `default`. */
  readonly defaultText?: string;
  /** Conventional env vars tried, in order, when PGWARREN_NAME is absent. */
  readonly fallbacks?: readonly string[];
}

export function envName(option: string): string {
  return 'PGWARREN_' + option.toUpperCase().replace(/-/g, '_');
}

function option<const N extends string, T>(spec: Omit<OptionSpec<N, T>, 'env'>): OptionSpec<N, T> {
  return { ...spec, env: envName(spec.name) };
}

export const OPERATIONS = ['insert', 'update', 'delete', 'truncate'] as const;
export const PLUGINS = ['pgoutput', 'wal2json'] as const;
export const UNROUTABLE_ACTIONS = ['warn', 'block'] as const;
export const FLOOD_ACTIONS = ['summarize', 'drop', 'divert', 'pass'] as const;
export const SINKS = ['amqp', 'stream', 'stdout'] as const;
export const SNAPSHOT_MODES = ['initial', 'never'] as const;
export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;

const exchangeName: Kind<string> = { type: 'string', schema: kinds.exchangeName };

export const OPTIONS = [
  // connection
  option({
    name: 'database-url',
    group: 'connection',
    ...kinds.postgresUrl(),
    description:
      'Postgres connection URL for a role with REPLICATION (superuser not needed); parts it leaves out come from the PG* variables, as in libpq',
    defaultText: 'DATABASE_URL, else PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE, PGSSLMODE (unset: localhost, 5432, the OS user, database named like the user, no TLS)',
    fallbacks: ['DATABASE_URL'],
  }),
  option({
    name: 'amqp-url',
    group: 'connection',
    ...kinds.amqpUrls(),
    description: 'RabbitMQ URL (amqps:// for TLS); a comma-separated list for a cluster, tried in turn',
    default: 'amqp://guest:guest@localhost:5672',
    fallbacks: ['AMQP_URL'],
  }),
  option({
    name: 'pg-ssl-root-cert',
    group: 'connection',
    ...kinds.path(),
    description: "CA certificate file that Postgres' server certificate must chain to (sslmode require, verify-ca, verify-full)",
    defaultText: 'sslrootcert in the URL, else PGSSLROOTCERT, else none',
  }),
  option({
    name: 'amqp-ca',
    group: 'connection',
    ...kinds.path(),
    description: "CA certificate file that RabbitMQ's server certificate must chain to (amqps://); default: the system CAs",
  }),
  option({ name: 'amqp-cert', group: 'connection', ...kinds.path(), description: 'client certificate file for RabbitMQ (amqps:// with certificate authentication)' }),
  option({ name: 'amqp-key', group: 'connection', ...kinds.path(), description: 'private key file of the RabbitMQ client certificate' }),

  // source
  option({
    name: 'slot',
    group: 'source',
    ...kinds.text(/^[a-z0-9_]{1,63}$/, 'a slot name (1 to 63 lowercase letters, digits and underscores)'),
    description: 'logical replication slot name (lowercase letters, digits, underscores; at most 63)',
    default: 'pgwarren',
  }),
  option({
    name: 'publication',
    group: 'source',
    ...kinds.text(/^[a-z_][a-z0-9_$]{0,62}$/, 'a publication name (a lowercase identifier of at most 63 characters)'),
    description: 'publication name (pgoutput); a lowercase identifier of at most 63 characters',
    default: 'pgwarren',
  }),
  option({
    name: 'publication-sync-interval',
    group: 'source',
    ...kinds.seconds(true),
    description: 'seconds between checks that add newly created matching tables to the publication (and drop ones no longer matching); 0 = only at start',
    default: '10',
  }),
  option({ name: 'plugin', group: 'source', ...kinds.oneOf(PLUGINS), description: 'logical decoding output plugin: pgoutput or wal2json', default: 'pgoutput' }),
  option({
    name: 'tables',
    group: 'source',
    ...kinds.globList(),
    description: 'comma-separated schema.table globs to publish, * and ? wildcards (public.*, *.orders); double-quote a name holding a dot or other special character ("my.schema".orders)',
    default: '',
    defaultText: 'all tables outside system schemas',
  }),
  option({
    name: 'exclude-tables',
    group: 'source',
    ...kinds.globList(),
    description: 'comma-separated schema.table globs removed from the included tables',
    default: '',
    defaultText: 'none',
  }),
  option({
    name: 'operations',
    group: 'source',
    ...kinds.subsetOf(OPERATIONS),
    description: 'which operations to publish: a comma-separated subset of insert, update, delete, truncate',
    default: OPERATIONS.join(','),
  }),
  option({
    name: 'snapshot',
    group: 'source',
    ...kinds.oneOf(SNAPSHOT_MODES),
    description: 'initial: publish the current rows of every included table once, when the slot is created (by run or setup); never: only on request (pgwarren snapshot)',
    default: 'never',
  }),
  option({
    name: 'snapshot-chunk-size',
    group: 'source',
    ...kinds.integer(1),
    description: 'rows a snapshot reads per chunk (one short query each) when pgwarren snapshot does not say --chunk-size; up to 4 chunks are held in memory',
    default: '1000',
  }),

  // routing
  option({ name: 'exchange', group: 'routing', ...exchangeName, description: 'exchange to publish to; declared durable at start', default: 'pgwarren' }),
  option({
    name: 'exchange-type',
    group: 'routing',
    ...kinds.text(/^(direct|topic|fanout|headers|x-[A-Za-z0-9_.-]+)$/, 'an exchange type (direct, topic, fanout, headers, or a plugin type x-...)'),
    description: 'exchange type used when declaring: direct, topic, fanout, headers or a plugin type x-...',
    default: 'topic',
  }),
  option({
    name: 'routing-key',
    group: 'routing',
    type: 'string',
    schema: kinds.routingKey,
    description: 'routing key template; placeholders {db} {schema} {table} {op}',
    default: '{schema}.{table}.{op}',
  }),
  option({
    name: 'message-routing-key',
    group: 'routing',
    type: 'string',
    schema: kinds.messageRoutingKey,
    description: 'routing key of an application event (pg_logical_emit_message with prefix pgwarren.event) whose payload has no "routing_key" string; placeholders {db} {prefix}',
    default: 'message.{prefix}',
  }),
  option({
    name: 'transaction-events',
    group: 'routing',
    ...kinds.boolean(),
    description: 'true or false; true: after the last event of each transaction that published any, a commit event (routing key pgwarren.tx.commit) with counts per table and operation',
    default: 'false',
  }),
  option({
    name: 'dead-letter-exchange',
    group: 'routing',
    ...exchangeName,
    description:
      'durable topic exchange for changes that can never be published as configured (routing key over 255 bytes, body over the max message size, ...), routed by schema.table.op with header pgwarren-error',
    default: 'pgwarren.dead',
  }),
  option({
    name: 'max-message-bytes',
    group: 'routing',
    ...kinds.integer(4096),
    description:
      "largest message body in bytes pgwarren publishes (an event above it is dead-lettered); keep it at or below the broker's max_message_size",
    default: '134217728',
    defaultText: "134217728 (RabbitMQ's default max_message_size, 128 MiB)",
  }),
  option({
    name: 'unroutable',
    group: 'routing',
    ...kinds.oneOf(UNROUTABLE_ACTIONS),
    description: 'a message no queue is bound for: warn (count, log, move on) or block (hold the slot and retry until routable)',
    default: 'warn',
  }),
  // stream sink (README "Replay with streams")
  option({
    name: 'sink',
    group: 'routing',
    ...kinds.oneOf(SINKS),
    description: 'where events go: amqp (exchanges), stream (a RabbitMQ stream, exactly once) or stdout (JSON lines, for development)',
    default: 'amqp',
  }),
  option({
    name: 'stream-url',
    group: 'routing',
    ...kinds.text(/^rabbitmq-stream(\+tls)?:\/\/[^/\s]+(\/\S*)?$/, 'a rabbitmq-stream://host:port/vhost URL, credentials before the host (rabbitmq-stream+tls:// for TLS)'),
    description: 'RabbitMQ stream protocol URL (the stream plugin listens on 5552); used when the sink is stream',
    default: 'rabbitmq-stream://guest:guest@localhost:5552/',
  }),
  option({
    name: 'stream',
    group: 'routing',
    ...kinds.text(/^[A-Za-z0-9_.:-]{1,200}$/, 'a stream name (letters, digits, _ . : -)'),
    description: 'stream to publish to (with partitions: the super stream, whose partitions are <stream>-0 .. <stream>-N-1); declared at start',
    default: 'pgwarren',
  }),
  option({
    name: 'stream-partitions',
    group: 'routing',
    ...kinds.integer(1, 1000),
    description: 'partitions of the super stream; 1 = one plain stream. Events are routed by a hash of schema.table and the key, so a row stays in one partition',
    default: '1',
  }),
  option({
    name: 'stream-max-age',
    group: 'routing',
    ...kinds.text(/^\d+[YMDhms]$/, 'a retention age like 7D, 12h, 30m (units Y M D h m s)'),
    description: 'retention by age set when the stream is declared (7D, 12h, ...); unset keeps everything until max bytes',
  }),
  option({
    name: 'stream-max-bytes',
    group: 'routing',
    ...kinds.integer(1),
    description: 'retention by size in bytes set when the stream (each partition) is declared; unset = no size limit',
  }),

  // shaping
  option({
    name: 'skip-unchanged',
    group: 'shaping',
    ...kinds.boolean(),
    description: 'true: do not publish an update whose changed list is empty (needs REPLICA IDENTITY FULL; per-table rules may override); false: publish it',
    default: 'false',
  }),
  option({
    name: 'compression',
    group: 'shaping',
    ...kinds.oneOf(COMPRESSIONS),
    description: 'message body compression: none, gzip or br (Brotli); the AMQP contentEncoding property says which',
    default: 'none',
  }),
  option({
    name: 'transform',
    group: 'shaping',
    ...kinds.path(),
    description: 'JavaScript module (.mjs) exporting transform(event): returns the event to publish, changed or not, or null to drop it',
  }),
  option({
    name: 'transform-timeout',
    group: 'shaping',
    ...kinds.seconds(false),
    description: 'seconds a transform returning a promise may take before the event is dead-lettered (a synchronous one is only logged when slower)',
    default: '1',
  }),

  // flood
  option({
    name: 'flood-threshold',
    group: 'flood',
    ...kinds.integer(0),
    description: "changes of one table in one transaction above which that table's changes in it are a flood; 0 disables the count (not the bulk marker)",
    default: '10000',
  }),
  option({
    name: 'flood-action',
    group: 'flood',
    ...kinds.oneOf(FLOOD_ACTIONS),
    description: 'what a flood becomes: summarize (one bulk event per flooded table instead of its rows), drop, divert (rows go to the flood exchange) or pass',
    default: 'summarize',
  }),
  option({ name: 'flood-exchange', group: 'flood', ...exchangeName, description: 'exchange for flooded rows when the flood action is divert', default: 'pgwarren.bulk' }),
  option({
    name: 'flood-buffer-events',
    group: 'flood',
    ...kinds.integer(1),
    description: 'events held for one transaction while it is not yet known whether a table floods; beyond it the transaction is counted first and read again',
    default: '20000',
  }),
  option({
    name: 'flood-buffer-bytes',
    group: 'flood',
    ...kinds.integer(1024),
    description: 'bytes of event bodies held for one transaction while it is not yet known whether a table floods (wide rows reach this before the event count); beyond it the transaction is counted first and read again',
    default: '16777216',
  }),

  // operations
  option({ name: 'http-port', group: 'operations', ...kinds.integer(0, 65535, 'a port number from 0 to 65535'), description: 'port of /healthz, /readyz and /metrics; 0 disables', default: '9464' }),
  option({
    name: 'log-level',
    group: 'operations',
    ...kinds.oneOf(LOG_LEVELS),
    description: 'pino log level: fatal, error, warn, info, debug, trace or silent',
    default: 'info',
  }),
  option({ name: 'config', group: 'operations', ...kinds.path(), description: 'YAML or JSON file with these options (kebab-case keys) and per-table rules' }),
  option({
    name: 'shutdown-timeout',
    group: 'operations',
    ...kinds.seconds(false),
    description: 'seconds to wait for outstanding broker confirms on SIGTERM/SIGINT',
    default: '30',
  }),
  option({
    name: 'connect-timeout',
    group: 'operations',
    ...kinds.seconds(false),
    description:
      'seconds to open a connection (TCP, TLS, login; for RabbitMQ also the channel and exchange declarations) before giving up and retrying',
    default: '10',
  }),
  option({
    name: 'query-timeout',
    group: 'operations',
    ...kinds.seconds(false),
    description: 'seconds a catalog query or the start of replication may take before the connection is dropped and the session retried (slot creation waits as long as it must)',
    default: '30',
  }),
  option({
    name: 'broker-heartbeat',
    group: 'operations',
    // A whole number: the AMQP heartbeat is negotiated in whole seconds, in a 16-bit field.
    ...kinds.integer(1, 65535),
    description:
      'seconds between heartbeats on the broker connections, i.e. how quickly a silent broker is noticed: AMQP gives up after 2 to 3 missed heartbeats (a heartbeat= in PGWARREN_AMQP_URL wins), the stream sink after 3 x this with no confirm',
    default: '10',
  }),
  option({
    name: 'reconnect-max-delay',
    group: 'operations',
    ...kinds.seconds(false),
    description: 'cap in seconds of the exponential backoff between reconnect attempts',
    default: '30',
  }),
  option({
    name: 'status-interval',
    group: 'operations',
    ...kinds.seconds(false),
    description: 'how often, in seconds, the confirmed position is reported to Postgres',
    default: '10',
  }),
  option({
    name: 'lag-warn-bytes',
    group: 'operations',
    ...kinds.integer(0),
    description: 'warn (log and metric) when the slot holds back more than this many bytes of WAL; 0 disables',
    default: '1073741824',
    defaultText: '1073741824 (1 GiB)',
  }),
  option({
    name: 'heartbeat-interval',
    group: 'operations',
    ...kinds.seconds(true),
    description: 'seconds between heartbeat messages that keep the slot advancing while the published tables are idle; 0 disables',
    default: '0',
    defaultText: '0 (off)',
  }),

  // performance
  option({
    name: 'max-inflight',
    group: 'performance',
    ...kinds.integer(1),
    description: 'messages published but not yet confirmed by the broker, and transactions read but not yet acknowledgeable, before reading from the slot pauses',
    default: '10000',
  }),
  option({
    name: 'batch-max-events',
    group: 'performance',
    ...kinds.integer(1),
    description: 'events per AMQP message (a JSON array of consecutive events sharing a routing key); 1 = one event per message',
    default: '1',
  }),
  option({ name: 'batch-max-bytes', group: 'performance', ...kinds.integer(1024), description: 'upper bound in bytes of a batched message body', default: '1048576' }),
] as const;

export type AnyOption = (typeof OPTIONS)[number];
export type OptionName = AnyOption['name'];
/** The parsed type of an option's value, straight from its schema. */
export type OptionValue<N extends OptionName> = Extract<AnyOption, { readonly name: N }> extends OptionSpec<N, infer T> ? T : never;

const BY_NAME: ReadonlyMap<string, AnyOption> = new Map(OPTIONS.map((o) => [o.name, o]));

export function findOption(name: string): AnyOption | undefined {
  return BY_NAME.get(name);
}

/** The default as help and docs show it: plain text, `undefined` when there is none. */
export function defaultLabel(o: OptionSpec): string | undefined {
  return o.defaultText ?? o.default;
}

/** Options in help order: by group, table order within a group. */
export function optionsByGroup(): ReadonlyArray<readonly [OptionGroup, readonly AnyOption[]]> {
  return (Object.keys(GROUP_TITLES) as OptionGroup[]).map((g) => [g, OPTIONS.filter((o) => o.group === g)] as const);
}

const cell = (s: string) => s.replace(/\|/g, '\\|');
/** Env var names in prose (DATABASE_URL, PGHOST) become code in Markdown. */
const codeEnvNames = (s: string) => s.replace(/\b(PG[A-Z]+|[A-Z]+_[A-Z_]+)\b/g, '`$1`');

/** The README's option table, generated so it cannot drift from the code. */
export function optionsMarkdownTable(): string {
  const rows = optionsByGroup().flatMap(([, options]) =>
    options.map((o) => {
      const name = [o.env, ...(o.fallbacks ?? [])].map((n) => `\`${n}\``).join(' or ');
      const dflt = o.defaultText !== undefined ? codeEnvNames(o.defaultText) : o.default !== undefined ? `\`${o.default}\`` : 'none';
      return `| ${cell(name)} | ${cell(dflt)} | ${cell(o.description)} |`;
    }),
  );
  return ['| option (env) | default | meaning |', '|---|---|---|', ...rows].join('\n');
}

/** An env file with every option commented out at its default, grouped like `--help`. */
export function exampleEnvFile(): string {
  const lines = [
    '# pgwarren settings (generated from src/config/options.ts). Uncomment to change a default.',
    '# Any setting can instead come from a file, e.g. PGWARREN_DATABASE_URL_FILE=/run/secrets/db_url',
  ];
  for (const [group, options] of optionsByGroup()) {
    lines.push('', `## ${GROUP_TITLES[group].replace(/:$/, '')}`);
    for (const o of options) {
      lines.push('', `# ${o.description}`);
      if (o.defaultText !== undefined) lines.push(`# default: ${o.defaultText}`);
      lines.push(`#${o.env}=${o.default ?? ''}`);
    }
  }
  return lines.join('\n') + '\n';
}
