import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir, userInfo } from 'node:os';
import { join } from 'node:path';
import yargs from 'yargs';
import { addOptions, flagsFromArgv } from '../../src/config/cli-options.js';
import { ConfigError, describeConfig, loadConfig, pgClientConfig, redactUrl, type Config } from '../../src/config/load.js';
import { OPTIONS, exampleEnvFile, optionsMarkdownTable } from '../../src/config/options.js';

const dir = mkdtempSync(join(tmpdir(), 'pgwarren-config-'));
after(() => rmSync(dir, { recursive: true, force: true }));
const file = (name: string, text: string) => {
  const p = join(dir, name);
  writeFileSync(p, text);
  return p;
};
const load = (env: Record<string, string> = {}, flags: Record<string, unknown> = {}): Config => loadConfig({ flags, env, cwd: dir });
const problems = (env: Record<string, string> = {}, flags: Record<string, unknown> = {}): string[] => {
  try {
    load(env, flags);
  } catch (err) {
    assert.ok(err instanceof ConfigError, `expected ConfigError, got ${String(err)}`);
    assert.match(err.message, new RegExp(`invalid configuration \\(${err.problems.length} problems?\\)`));
    for (const p of err.problems) assert.ok(err.message.includes(p), 'the message lists every problem');
    return [...err.problems];
  }
  assert.fail('expected a ConfigError');
};
/** Exactly one problem, matching `pattern`. */
const problem = (env: Record<string, string>, pattern: RegExp, flags: Record<string, unknown> = {}) => {
  const p = problems(env, flags);
  assert.equal(p.length, 1, p.join('\n'));
  assert.match(p[0]!, pattern);
};

test('defaults follow the contract', () => {
  const c = load();
  assert.deepEqual(c.amqpUrls, ['amqp://guest:guest@localhost:5672']);
  assert.equal(c.slot, 'pgwarren');
  assert.equal(c.publication, 'pgwarren');
  assert.equal(c.plugin, 'pgoutput');
  assert.deepEqual(c.tables, []);
  assert.deepEqual(c.excludeTables, []);
  assert.deepEqual(c.operations, ['insert', 'update', 'delete', 'truncate']);
  assert.equal(c.exchange, 'pgwarren');
  assert.equal(c.exchangeType, 'topic');
  assert.equal(c.routingKey, '{schema}.{table}.{op}');
  assert.equal(c.unroutable, 'warn');
  assert.equal(c.floodThreshold, 10000);
  assert.equal(c.floodAction, 'summarize');
  assert.equal(c.floodExchange, 'pgwarren.bulk');
  assert.equal(c.floodBufferEvents, 20000);
  assert.equal(c.httpPort, 9464);
  assert.equal(c.logLevel, 'info');
  assert.equal(c.config, undefined);
  assert.equal(c.batchMaxEvents, 1);
  assert.equal(c.batchMaxBytes, 1048576);
  assert.equal(c.maxInflight, 10000);
  assert.equal(c.shutdownTimeout, 30);
  assert.equal(c.reconnectMaxDelay, 30);
  assert.equal(c.statusInterval, 10);
  assert.equal(c.publicationSyncInterval, 10);
  assert.equal(c.lagWarnBytes, 1073741824);
  assert.equal(c.heartbeatInterval, 0);
  assert.equal(c.amqpCa, undefined);
  assert.deepEqual(c.rules, []);
  // libpq's defaults, except TLS: node-postgres cannot fall back from TLS as sslmode=prefer does.
  const os = userInfo().username;
  assert.deepEqual({ ...c.database }, { host: 'localhost', port: 5432, user: os, password: undefined, database: os, sslmode: undefined, sslRootCert: undefined, connectionString: undefined });
  assert.equal(pgClientConfig(c.database).ssl, false);
});

describe('precedence: flag > env > fallback env > config file > default', () => {
  const cfg = file('layers.yaml', 'amqp-url: amqp://file\nslot: from_file\nexchange: file_ex\n');

  test('each layer wins over the ones below it', () => {
    const env = { PGWARREN_CONFIG: cfg, PGWARREN_AMQP_URL: 'amqp://env', AMQP_URL: 'amqp://fallback' };
    assert.deepEqual(load(env, { 'amqp-url': 'amqp://flag' }).amqpUrls, ['amqp://flag']);
    assert.deepEqual(load(env).amqpUrls, ['amqp://env']);
    assert.deepEqual(load({ PGWARREN_CONFIG: cfg, AMQP_URL: 'amqp://fallback' }).amqpUrls, ['amqp://fallback']);
    assert.deepEqual(load({ PGWARREN_CONFIG: cfg }).amqpUrls, ['amqp://file']);
    assert.deepEqual(load().amqpUrls, ['amqp://guest:guest@localhost:5672']);
  });

  test('options without a conventional fallback', () => {
    const c = load({ PGWARREN_CONFIG: cfg, PGWARREN_SLOT: 'from_env' }, { slot: 'from_flag' });
    assert.equal(c.slot, 'from_flag');
    assert.equal(c.exchange, 'file_ex');
    assert.equal(c.config, cfg);
    assert.equal(load({ PGWARREN_CONFIG: cfg, PGWARREN_SLOT: 'from_env' }).slot, 'from_env');
  });

  test('--config beats PGWARREN_CONFIG; relative paths are resolved against cwd', () => {
    const other = file('other.yaml', 'slot: other\n');
    assert.equal(load({ PGWARREN_CONFIG: cfg }, { config: 'other.yaml' }).slot, 'other');
    assert.equal(load({ PGWARREN_CONFIG: 'layers.yaml' }).config, cfg);
    assert.equal(load({}, { config: other }).config, other);
  });

  test('flags in camelCase or kebab-case; an empty env var counts as unset', () => {
    assert.equal(load({}, { floodThreshold: '3' }).floodThreshold, 3);
    assert.equal(load({}, { 'flood-threshold': '4', floodThreshold: '4' }).floodThreshold, 4);
    assert.equal(load({}, { 'http-port': 8080 }).httpPort, 8080, 'a number from a caller is taken as its text');
    assert.equal(load({ PGWARREN_SLOT: '' }).slot, 'pgwarren');
    assert.equal(load({ PGWARREN_TABLES: 'public.*' }, { tables: '' }).tables.length, 0, 'an explicit empty flag is a value');
  });
});

describe('_FILE secrets', () => {
  test('any option can be read from a file, trailing newline trimmed, path relative to cwd', () => {
    const secret = file('url.txt', 'postgres://cdc:hunter2@db/app\n');
    assert.equal(load({ PGWARREN_DATABASE_URL_FILE: secret }).database.password, 'hunter2');
    file('slot.txt', 'from_secret\r\n');
    assert.equal(load({ PGWARREN_SLOT_FILE: 'slot.txt' }).slot, 'from_secret');
    assert.equal(load({ PGWARREN_FLOOD_THRESHOLD_FILE: file('n.txt', '42\n') }).floodThreshold, 42);
    assert.equal(load({ PGWARREN_SLOT_FILE: 'slot.txt' }, { slot: 'flag_wins' }).slot, 'flag_wins');
    assert.equal(load({ PGWARREN_SLOT_FILE: 'slot.txt', PGWARREN_SLOT: '' }).slot, 'from_secret', 'an empty PGWARREN_X does not count');
  });

  test('both forms at once, or an unreadable file, is an error', () => {
    problem({ PGWARREN_SLOT: 'a', PGWARREN_SLOT_FILE: file('s.txt', 'b') }, /^PGWARREN_SLOT and PGWARREN_SLOT_FILE are both set; set only one of them$/);
    problem({ PGWARREN_SLOT_FILE: 'missing.txt' }, /^PGWARREN_SLOT_FILE: cannot read ".*missing\.txt" \(ENOENT\)/);
  });

  test('a bad value from a file names the variable and the file', () => {
    problem({ PGWARREN_SLOT_FILE: file('bad-slot.txt', 'Bad Slot\n') }, /^PGWARREN_SLOT_FILE \(--slot\), file .*bad-slot\.txt: "Bad Slot" is not a slot name/);
  });
});

describe('database connection', () => {
  test('DATABASE_URL is the fallback; PGWARREN_DATABASE_URL beats it', () => {
    const c = load({ DATABASE_URL: 'postgres://u:pw@fallback:6000/db1' });
    assert.deepEqual({ ...c.database }, { host: 'fallback', port: 6000, user: 'u', password: 'pw', database: 'db1', sslmode: undefined, sslRootCert: undefined, connectionString: 'postgres://u:pw@fallback:6000/db1' });
    assert.equal(load({ PGWARREN_DATABASE_URL: 'postgresql://u@primary/db2', DATABASE_URL: 'postgres://u@fallback/db1' }).database.host, 'primary');
  });

  test('PG* variables build the connection when no URL is given', () => {
    const c = load({ PGHOST: 'db.internal', PGPORT: '6543', PGUSER: 'cdc', PGPASSWORD: 's3cret', PGDATABASE: 'shop', PGSSLMODE: 'require' });
    assert.deepEqual({ ...c.database }, { host: 'db.internal', port: 6543, user: 'cdc', password: 's3cret', database: 'shop', sslmode: 'require', sslRootCert: undefined, connectionString: undefined });
    assert.equal(load({ PGUSER: 'cdc' }).database.database, 'cdc', 'the database defaults to the user name');
  });

  test('PG* variables fill what the URL leaves out, and only that', () => {
    const c = load({ DATABASE_URL: 'postgres://app@db/shop?sslmode=verify-full', PGPASSWORD: 'fromenv', PGPORT: '7777', PGHOST: 'ignored', PGSSLMODE: 'disable' });
    assert.equal(c.database.host, 'db');
    assert.equal(c.database.password, 'fromenv');
    assert.equal(c.database.port, 7777);
    assert.equal(c.database.sslmode, 'verify-full');
    assert.equal(load({ DATABASE_URL: 'postgres://db/shop?ssl=true' }).database.sslmode, 'verify-full', "node-postgres' ssl=true");
  });

  test('bad connection settings are reported with their source', () => {
    problem({ PGPORT: 'x' }, /^PGPORT: "x" is not a port number from 1 to 65535$/);
    problem({ PGSSLMODE: 'sometimes' }, /^PGSSLMODE: "sometimes" is not one of disable, allow, prefer, require, verify-ca, verify-full$/);
    problem({ DATABASE_URL: 'postgres://db/x?sslmode=always' }, /^DATABASE_URL \(fallback for PGWARREN_DATABASE_URL\): sslmode: "always" is not one of/);
    problem({ PGWARREN_DATABASE_URL: 'mysql://db/x' }, /^PGWARREN_DATABASE_URL \(--database-url\): "mysql:\/\/db\/x" is not a postgres:\/\/ or postgresql:\/\/ URL$/);
    problem({ PGWARREN_DATABASE_URL: 'postgres://db:99999/x' }, /is not a valid postgres:\/\/ URL/);
    problem({ PGSSLMODE: 'verify-ca' }, /sslmode verify-ca needs a CA file/);
    problem({ DATABASE_URL: 'postgres://db/x?sslcert=/c.pem' }, /sslcert .* is not supported/);
  });

  test('sslmode maps to node-postgres TLS settings as libpq means it', () => {
    const ca = file('ca.pem', '-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n');
    const ssl = (env: Record<string, string>) => pgClientConfig(load(env).database).ssl;
    assert.equal(ssl({ PGSSLMODE: 'disable' }), false);
    assert.equal(ssl({ PGSSLMODE: 'allow' }), false);
    assert.deepEqual(ssl({ PGSSLMODE: 'prefer' }), { rejectUnauthorized: false });
    assert.deepEqual(ssl({ PGSSLMODE: 'require' }), { rejectUnauthorized: false });
    const verifyFull = ssl({ PGSSLMODE: 'verify-full', PGWARREN_PG_SSL_ROOT_CERT: 'ca.pem' });
    assert.deepEqual(verifyFull, { ca: readCa(ca), rejectUnauthorized: true });
    const verifyCa = ssl({ PGSSLMODE: 'verify-ca', PGSSLROOTCERT: ca });
    assert.ok(typeof verifyCa === 'object' && verifyCa.rejectUnauthorized === true && verifyCa.ca === readCa(ca));
    assert.equal(typeof verifyCa === 'object' && verifyCa.checkServerIdentity?.('other.host', {} as never), undefined, 'verify-ca skips the host name check');
    const requireWithCa = ssl({ DATABASE_URL: `postgres://db/x?sslmode=require&sslrootcert=${ca}` });
    assert.ok(typeof requireWithCa === 'object' && requireWithCa.rejectUnauthorized === true, 'require with a CA verifies it, like libpq');
    const base = pgClientConfig(load({ DATABASE_URL: 'postgres://u:pw@h:1/d' }).database);
    assert.deepEqual({ ...base, ssl: undefined }, { host: 'h', port: 1, user: 'u', password: 'pw', database: 'd', ssl: undefined });
    assert.equal('connectionString' in base, false, "pg must not re-read the URL with its own sslmode rules");
    problem({ PGSSLMODE: 'verify-full', PGWARREN_PG_SSL_ROOT_CERT: 'nope.pem' }, /^PGWARREN_PG_SSL_ROOT_CERT \(--pg-ssl-root-cert\): cannot read ".*nope\.pem" \(ENOENT\)/);
  });
});

const readCa = (path: string) => readFileSync(path, 'utf8');

test('a comma-separated broker list', () => {
  assert.deepEqual(load({ PGWARREN_AMQP_URL: 'amqp://a:1, amqps://b:2 ,' }).amqpUrls, ['amqp://a:1', 'amqps://b:2']);
  problem({ PGWARREN_AMQP_URL: 'amqp://a, http://b' }, /^PGWARREN_AMQP_URL \(--amqp-url\): "http:\/\/b" is not an amqp:\/\/ or amqps:\/\/ URL$/);
  problem({ PGWARREN_AMQP_URL: ' , ' }, /^PGWARREN_AMQP_URL \(--amqp-url\): an empty list is not allowed/);
});

describe('validation', () => {
  test('each kind of bad value is named with what is expected', () => {
    const cases: Array<[Record<string, string>, RegExp]> = [
      [{ PGWARREN_PLUGIN: 'decoderbufs' }, /^PGWARREN_PLUGIN \(--plugin\): "decoderbufs" is not one of pgoutput, wal2json$/],
      [{ PGWARREN_FLOOD_THRESHOLD: 'lots' }, /^PGWARREN_FLOOD_THRESHOLD \(--flood-threshold\): "lots" is not a whole number >= 0$/],
      [{ PGWARREN_FLOOD_THRESHOLD: '-1' }, /"-1" is not a whole number >= 0$/],
      [{ PGWARREN_MAX_INFLIGHT: '2.5' }, /^PGWARREN_MAX_INFLIGHT \(--max-inflight\): "2.5" is not a whole number >= 1$/],
      [{ PGWARREN_MAX_INFLIGHT: '0' }, /"0" is not a whole number >= 1$/],
      [{ PGWARREN_FLOOD_BUFFER_EVENTS: '0' }, /^PGWARREN_FLOOD_BUFFER_EVENTS .*"0" is not a whole number >= 1$/],
      [{ PGWARREN_BATCH_MAX_BYTES: '512' }, /^PGWARREN_BATCH_MAX_BYTES .*"512" is not a whole number >= 1024$/],
      [{ PGWARREN_HTTP_PORT: '70000' }, /^PGWARREN_HTTP_PORT \(--http-port\): "70000" is not a port number from 0 to 65535$/],
      [{ PGWARREN_LAG_WARN_BYTES: '1e9' }, /"1e9" is not a whole number >= 0$/],
      [{ PGWARREN_SHUTDOWN_TIMEOUT: '0' }, /^PGWARREN_SHUTDOWN_TIMEOUT .*"0" is not a number of seconds > 0/],
      [{ PGWARREN_STATUS_INTERVAL: '-1' }, /"-1" is not a number of seconds > 0/],
      [{ PGWARREN_RECONNECT_MAX_DELAY: '99999999' }, /"99999999" is not a number of seconds > 0 \(at most 2147483\)/],
      [{ PGWARREN_HEARTBEAT_INTERVAL: 'often' }, /"often" is not a number of seconds >= 0/],
      [{ PGWARREN_ROUTING_KEY: '{schema}.{tabel}' }, /^PGWARREN_ROUTING_KEY \(--routing-key\): "{schema}.{tabel}" uses unknown placeholder {tabel}; the placeholders are {db}, {schema}, {table}, {op}$/],
      [{ PGWARREN_ROUTING_KEY: '{schema.{table}' }, /unmatched brace/],
      [{ PGWARREN_ROUTING_KEY: '{schema}}.x' }, /unmatched brace/],
      [{ PGWARREN_TABLES: 'orders' }, /^PGWARREN_TABLES \(--tables\): "orders" is not a schema.table glob \(one dot/],
      [{ PGWARREN_EXCLUDE_TABLES: 'public.*, a.b.c' }, /^PGWARREN_EXCLUDE_TABLES .*"a.b.c" is not a schema.table glob/],
      [{ PGWARREN_TABLES: '.orders' }, /"\.orders" is not a schema.table glob/],
      [{ PGWARREN_SLOT: 'Bad-Slot' }, /^PGWARREN_SLOT \(--slot\): "Bad-Slot" is not a slot name \(1 to 63 lowercase letters, digits and underscores\)$/],
      [{ PGWARREN_SLOT: 'a'.repeat(64) }, /is not a slot name/],
      [{ PGWARREN_PUBLICATION: '1pub' }, /^PGWARREN_PUBLICATION .*"1pub" is not a publication name/],
      [{ PGWARREN_OPERATIONS: 'insert,upsert' }, /^PGWARREN_OPERATIONS \(--operations\): "upsert" is not one of insert, update, delete, truncate$/],
      [{ PGWARREN_OPERATIONS: ',' }, /^PGWARREN_OPERATIONS .*an empty list is not allowed; expected one or more of insert, update, delete, truncate$/],
      [{ PGWARREN_EXCHANGE: 'my exchange' }, /^PGWARREN_EXCHANGE .*"my exchange" is not an exchange name/],
      [{ PGWARREN_EXCHANGE_TYPE: 'topics' }, /^PGWARREN_EXCHANGE_TYPE .*"topics" is not an exchange type/],
      [{ PGWARREN_UNROUTABLE: 'ignore' }, /"ignore" is not one of warn, block$/],
      [{ PGWARREN_LOG_LEVEL: 'verbose' }, /"verbose" is not one of fatal, error, warn, info, debug, trace, silent$/],
      [{ PGWARREN_SINK: 'kafka' }, /^PGWARREN_SINK \(--sink\): "kafka" is not one of amqp, stream, stdout$/],
      [{ PGWARREN_STREAM_URL: 'amqp://h:5552' }, /^PGWARREN_STREAM_URL .*is not a rabbitmq-stream:\/\/host:port\/vhost URL, credentials before the host/],
      [{ PGWARREN_STREAM_MAX_AGE: '7 days' }, /^PGWARREN_STREAM_MAX_AGE .*"7 days" is not a retention age like 7D/],
      [{ PGWARREN_STREAM_PARTITIONS: '0' }, /^PGWARREN_STREAM_PARTITIONS .*"0" is not/],
      [{ PGWARREN_SINK: 'stream', PGWARREN_FLOOD_ACTION: 'divert' }, /^PGWARREN_FLOOD_ACTION \(--flood-action\): "divert" needs the amqp sink/],
      [{ PGWARREN_SINK: 'stdout', PGWARREN_COMPRESSION: 'gzip' }, /^PGWARREN_COMPRESSION \(--compression\): "gzip" cannot be written as JSON lines/],
      [{ PGWARREN_AMQP_CA: 'no-ca.pem' }, /^PGWARREN_AMQP_CA \(--amqp-ca\): cannot read ".*no-ca\.pem" \(ENOENT\); expected a readable file$/],
    ];
    for (const [env, pattern] of cases) problem(env, pattern);
  });

  test('the wording of the contract example, and the flag form', () => {
    problem({ PGWARREN_FLOOD_ACTION: 'explode' }, /^PGWARREN_FLOOD_ACTION \(--flood-action\): "explode" is not one of summarize, drop, divert, pass$/);
    problem({}, /^--flood-action: "explode" is not one of summarize, drop, divert, pass$/, { floodAction: 'explode' });
    problem({}, /^--slot: given 2 times; give it once/, { slot: ['a', 'b'] });
    problem({}, /^--slot: needs a value$/, { slot: true });
    problem({}, /^--slott: not a pgwarren option; did you mean --slot\?$/, { slott: 'x' });
  });

  test('good values are normalised: case of enums, duplicates, spaces, decimals', () => {
    const c = load({ PGWARREN_LOG_LEVEL: 'DEBUG', PGWARREN_OPERATIONS: 'Insert, delete,insert', PGWARREN_TABLES: ' public.* , *.orders,sales.order_?', PGWARREN_SHUTDOWN_TIMEOUT: '0.5', PGWARREN_EXCHANGE_TYPE: 'x-consistent-hash', PGWARREN_ROUTING_KEY: 'cdc.{db}.{schema}.{table}.{op}' });
    assert.equal(c.logLevel, 'debug');
    assert.deepEqual(c.operations, ['insert', 'delete']);
    assert.deepEqual(c.tables, ['public.*', '*.orders', 'sales.order_?']);
    assert.equal(c.shutdownTimeout, 0.5);
    assert.equal(c.exchangeType, 'x-consistent-hash');
    assert.equal(load({ PGWARREN_FLOOD_THRESHOLD: '0', PGWARREN_HTTP_PORT: '0' }).httpPort, 0);
  });

  test('unknown PGWARREN_ variables are errors with a suggestion; PGWARREN_TEST_ ones are the harness', () => {
    problem({ PGWARREN_SLOTT: 'x' }, /^PGWARREN_SLOTT is not a pgwarren setting; did you mean PGWARREN_SLOT\?$/);
    problem({ PGWARREN_FLOOD_TRESHOLD: '5' }, /did you mean PGWARREN_FLOOD_THRESHOLD\?$/);
    problem({ PGWARREN_SLOT_FIEL: 'x' }, /did you mean PGWARREN_SLOT_FILE\?$/);
    problem({ PGWARREN_WHATEVER_ELSE_ENTIRELY: 'x' }, /^PGWARREN_WHATEVER_ELSE_ENTIRELY is not a pgwarren setting$/);
    assert.equal(load({ PGWARREN_TEST_PG_URL: 'postgres://x', DATABASE: 'unrelated' }).slot, 'pgwarren');
  });

  test('every problem is reported at once', () => {
    const p = problems({
      PGWARREN_FLOOD_ACTION: 'explode',
      PGWARREN_FLOOD_THRESHOLD: '-1',
      PGWARREN_HTTP_PORT: '70000',
      PGWARREN_ROUTING_KEY: '{schema}.{tabel}',
      PGWARREN_TABLES: 'orders,x.y.z',
      PGWARREN_SLOT: 'Bad-Slot',
      PGWARREN_OPERATIONS: 'insert,upsert',
      PGWARREN_PLUGIN: 'decoderbufs',
      PGWARREN_SLOTT: 'x',
      PGWARREN_CONFIG: file('also-bad.yaml', 'exchange-type: nope\nrules:\n  - match: nodot\n'),
      PGPORT: 'none',
    }, { 'batch-max-events': '0' });
    assert.equal(p.length, 14, p.join('\n'));
    for (const name of ['FLOOD_ACTION', 'FLOOD_THRESHOLD', 'HTTP_PORT', 'ROUTING_KEY', 'SLOT (', 'OPERATIONS', 'PLUGIN', 'SLOTT']) {
      assert.ok(p.some((x) => x.includes(`PGWARREN_${name}`)), name);
    }
    assert.equal(p.filter((x) => x.startsWith('PGWARREN_TABLES')).length, 2, 'both bad globs');
    assert.ok(p.some((x) => /also-bad\.yaml: exchange-type: "nope"/.test(x)));
    assert.ok(p.some((x) => /also-bad\.yaml: rules\[0\]\.match: "nodot"/.test(x)));
    assert.ok(p.some((x) => x.startsWith('--batch-max-events: "0"')));
    assert.ok(p.some((x) => x.startsWith('PGPORT:')));
  });
});

test('passwords never appear in errors or in describeConfig', () => {
  const secretFile = file('secret-url.txt', 'postgresql://cdc:hunter2@db:notaport/app\n');
  const p = problems({
    PGWARREN_DATABASE_URL_FILE: secretFile,
    PGWARREN_AMQP_URL: 'amqp://u:topsecret@b, http://u:topsecret@c, ftp://u:p%40ss@word@d',
    PGWARREN_CONFIG: file('leaky.yaml', 'database-url: postgres://x:filepass@h/d\nslot: [\n'),
  }).join('\n');
  assert.ok(!/hunter2|topsecret|filepass|p%40ss|word@/.test(p), p);
  problem({ DATABASE_URL: 'mysql://root:hunter2@db/x' }, /"mysql:\/\/root:\*\*\*@db\/x" is not a postgres/);
  problem({ DATABASE_URL: 'postgres://root:hunter2@db/x?sslmode=no' }, /^DATABASE_URL \(fallback for PGWARREN_DATABASE_URL\): sslmode: "no"/);
  const safe = JSON.stringify(describeConfig(load({ PGWARREN_DATABASE_URL: 'postgres://u:hunter2@db/app', PGWARREN_AMQP_URL: 'amqp://u:topsecret@b,amqp://v:topsecret@c' })));
  assert.ok(!/hunter2|topsecret/.test(safe), safe);
  assert.match(safe, /"password":"\*\*\*"/);
  assert.match(safe, /amqp:\/\/u:\*\*\*@b/);
});

test('redactUrl', () => {
  assert.equal(redactUrl('amqp://u:pw@h:5672/v,amqps://x:y@z'), 'amqp://u:***@h:5672/v,amqps://x:***@z');
  assert.equal(redactUrl('postgres://u:p@ss@h/db'), 'postgres://u:***@h/db');
  assert.equal(redactUrl('postgres://h/db?user=u&password=pw&sslmode=require'), 'postgres://h/db?user=u&password=***&sslmode=require');
  assert.equal(redactUrl('amqp://u@h:5672'), 'amqp://u@h:5672');
  assert.equal(redactUrl('amqp://h:5672/v'), 'amqp://h:5672/v');
});

describe('config file', () => {
  test('YAML options and per-table rules', () => {
    const good = file('rules.yaml', [
      '# per-table overrides',
      'flood-action: drop',
      'slot: 007',
      'tables: [public.*, sales.orders]',
      'shutdown-timeout: 1.50',
      'routing-key: "{table}.{op}"',
      'amqp-ca:',
      'rules:',
      '  - match: public.users',
      '    exclude-columns: [password_hash]',
      '    routing-key: "users.{op}"',
      '    exchange: users',
      '    ttl: 60000',
      '    flood-threshold: 100',
      '  - match: "*.audit_?"',
      '    exclude-columns: a, b',
    ].join('\n'));
    const c = load({ PGWARREN_CONFIG: good });
    assert.equal(c.floodAction, 'drop');
    assert.equal(c.slot, '007', 'scalars are read as written, not as YAML numbers');
    assert.deepEqual(c.tables, ['public.*', 'sales.orders']);
    assert.equal(c.shutdownTimeout, 1.5);
    assert.equal(c.routingKey, '{table}.{op}');
    assert.equal(c.amqpCa, undefined, 'an empty key leaves the setting alone');
    assert.deepEqual(c.rules, [
      { match: 'public.users', routingKey: 'users.{op}', exchange: 'users', excludeColumns: ['password_hash'], ttl: 60000, floodThreshold: 100 },
      { match: '*.audit_?', excludeColumns: ['a', 'b'] },
    ]);
  });

  test('JSON, and an empty file', () => {
    const json = file('c.json', JSON.stringify({ slot: 'json_slot', 'flood-threshold': 5, operations: ['insert'], rules: [{ match: 'a.b', ttl: 10 }] }));
    const c = load({ PGWARREN_CONFIG: json });
    assert.equal(c.slot, 'json_slot');
    assert.equal(c.floodThreshold, 5);
    assert.deepEqual(c.operations, ['insert']);
    assert.deepEqual(c.rules, [{ match: 'a.b', ttl: 10 }]);
    assert.equal(load({ PGWARREN_CONFIG: file('empty.yaml', '# nothing yet\n') }).slot, 'pgwarren');
  });

  test('unknown keys, bad values and bad rules are named with the file', () => {
    const bad = file('bad.yaml', [
      'slott: x',
      'floodThreshold: 5',
      'config: other.yaml',
      'flood-threshold: lots',
      'routing-key: {schema}',
      'slot: [a, b]',
      'rules:',
      '  - match: users',
      '    ttl: -5',
      '    colour: red',
      '  - routing-key: "{tabel}"',
      '  - match: a.b',
      '    exclude-columns: []',
      '    flood-threshold: [1]',
      '  - just a string',
    ].join('\n'));
    const p = problems({ PGWARREN_CONFIG: bad });
    const text = p.join('\n');
    const expected = [
      /bad\.yaml: unknown key "slott"; did you mean "slot"\?/,
      /bad\.yaml: unknown key "floodThreshold"; option keys are kebab-case: use "flood-threshold"/,
      /bad\.yaml: config cannot be set inside the config file/,
      /bad\.yaml: flood-threshold: "lots" is not a whole number >= 0/,
      /bad\.yaml: routing-key: a mapping is not allowed here; expected a single value \(a value starting with \{ must be quoted/,
      /bad\.yaml: slot: a list is not allowed here; expected a single value/,
      /bad\.yaml: rules\[0\]: unknown key "colour"; allowed: match, routing-key, exchange, exclude-columns, ttl, flood-threshold/,
      /bad\.yaml: rules\[0\]\.match: "users" is not a schema.table glob/,
      /bad\.yaml: rules\[0\]\.ttl: "-5" is not a whole number of milliseconds from 1 to 4294967295/,
      /bad\.yaml: rules\[1\]\.match: missing; expected a schema.table glob/,
      /bad\.yaml: rules\[1\]\.routing-key: "{tabel}" uses unknown placeholder {tabel}/,
      /bad\.yaml: rules\[2\]\.exclude-columns: an empty list is not allowed/,
      /bad\.yaml: rules\[2\]\.flood-threshold: a list is not allowed here; expected a single value/,
      /bad\.yaml: rules\[3\]: expected a mapping/,
    ];
    for (const re of expected) assert.match(text, re);
    assert.equal(p.length, expected.length, text);
  });

  test('unreadable, malformed or oddly shaped files', () => {
    problem({ PGWARREN_CONFIG: 'nope.yaml' }, /^PGWARREN_CONFIG \(--config\): cannot read ".*nope\.yaml" \(ENOENT\); expected a YAML or JSON file$/);
    problem({}, /^--config: cannot read/, { config: 'nope.yaml' });
    assert.match(problems({ PGWARREN_CONFIG: file('broken.yaml', 'slot: [\n') }).join(), /broken\.yaml: not valid YAML or JSON/);
    assert.match(problems({ PGWARREN_CONFIG: file('broken.json', '{"slot": ') }).join(), /broken\.json: not valid YAML or JSON/);
    const unquoted = problems({ PGWARREN_CONFIG: file('unquoted.yaml', 'routing-key: {schema}.{table}\n') }).join();
    assert.match(unquoted, /unquoted\.yaml: not valid YAML or JSON: .* at line 1, .*a value starting with \{ must be quoted/);
    problem({ PGWARREN_CONFIG: file('list.yaml', '- a\n- b\n') }, /list\.yaml: expected a mapping of option names to values/);
    problem({ PGWARREN_CONFIG: file('rules-map.yaml', 'rules:\n  match: a.b\n') }, /rules-map\.yaml: rules: expected a list of rules/);
  });
});

test('the Config is deeply frozen', () => {
  const c = load({ PGWARREN_CONFIG: file('f.yaml', 'rules:\n  - match: a.b\n    exclude-columns: [x]\n') });
  for (const part of [c, c.database, c.amqpUrls, c.operations, c.tables, c.rules, c.rules[0], c.rules[0]!.excludeColumns]) assert.ok(Object.isFrozen(part));
  assert.throws(() => ((c as { slot: string }).slot = 'x'), TypeError);
  assert.throws(() => (c.operations as string[]).push('x'), TypeError);
});

describe('the option table', () => {
  test('optionsMarkdownTable lists every option with its env var and default', () => {
    const table = optionsMarkdownTable();
    const lines = table.split('\n');
    assert.equal(lines[0], '| option (env) | default | meaning |');
    assert.equal(lines.length, OPTIONS.length + 2);
    for (const o of OPTIONS) {
      const row = lines.find((l) => l.startsWith(`| \`${o.env}\``));
      assert.ok(row, o.name);
      if (o.default !== undefined && o.defaultText === undefined) assert.ok(row.includes(`\`${o.default}\``), `${o.name} default`);
    }
    assert.match(table, /\| `PGWARREN_DATABASE_URL` or `DATABASE_URL` \| `DATABASE_URL`, else `PGHOST`/);
    assert.match(table, /\| `PGWARREN_FLOOD_THRESHOLD` \| `10000` \|/);
  });

  test('the contract options are all there', () => {
    const contract = ['database-url', 'amqp-url', 'slot', 'publication', 'plugin', 'tables', 'exclude-tables', 'operations', 'exchange', 'exchange-type', 'routing-key', 'unroutable', 'flood-threshold', 'flood-action', 'flood-exchange', 'http-port', 'log-level', 'config'];
    const names = OPTIONS.map((o) => o.name as string);
    for (const name of contract) assert.ok(names.includes(name), name);
    assert.equal(new Set(names).size, names.length, 'no duplicates');
  });

  test('enum descriptions name every allowed value', () => {
    for (const o of OPTIONS) for (const value of o.allowed ?? []) assert.ok(o.description.includes(value), `${o.name}: ${value}`);
  });

  test('exampleEnvFile has every option, commented out at its default', () => {
    const example = exampleEnvFile();
    for (const o of OPTIONS) assert.ok(example.includes(`\n#${o.env}=${o.default ?? ''}\n`), o.name);
  });

  test('yargs flags: every option, no defaults, only what the user typed comes back', async () => {
    for (const forHelp of [false, true]) {
      const y = addOptions(yargs(['--slot', 'from_flag', '--flood-threshold', '007', '--tables', 'a.b']).strict().exitProcess(false), { forHelp });
      const argv = await y.parseAsync();
      assert.deepEqual(flagsFromArgv(argv), { slot: 'from_flag', 'flood-threshold': '007', tables: 'a.b' }, `forHelp ${forHelp}`);
    }
    // Without a request for help the options are hidden: the help yargs renders at every start stays small.
    const quiet = await addOptions(yargs([]).exitProcess(false), { forHelp: false }).getHelp();
    assert.ok(!quiet.includes('--slot'), quiet);
    const help = await addOptions(yargs([]).exitProcess(false), { forHelp: true }).getHelp();
    for (const o of OPTIONS) assert.ok(help.includes(`--${o.name}`), o.name);
    assert.match(help.replace(/\s+/g, ' '), /Routing key template; placeholders {db} {schema} {table} {op} \[env PGWARREN_ROUTING_KEY\] \[default: {schema}.{table}.{op}\]/);
    assert.match(help, /Flood guard:/);
  });
});

test('application and commit event options (README "Beyond rows")', () => {
  const d = load();
  assert.equal(d.messageRoutingKey, 'message.{prefix}');
  assert.equal(d.transactionEvents, false);
  for (const [text, value] of [['true', true], ['YES', true], ['on', true], ['1', true], ['false', false], ['no', false], ['0', false]] as const) {
    assert.equal(load({ PGWARREN_TRANSACTION_EVENTS: text }).transactionEvents, value, text);
  }
  problem({ PGWARREN_TRANSACTION_EVENTS: 'maybe' }, /PGWARREN_TRANSACTION_EVENTS.*"maybe" is not true or false/);
  assert.equal(load({ PGWARREN_MESSAGE_ROUTING_KEY: 'events.{db}.{prefix}' }).messageRoutingKey, 'events.{db}.{prefix}');
  problem({ PGWARREN_MESSAGE_ROUTING_KEY: 'events.{table}' }, /PGWARREN_MESSAGE_ROUTING_KEY.*unknown placeholder \{table\}; the placeholders are \{db\}, \{prefix\}/);
  problem({ PGWARREN_MESSAGE_ROUTING_KEY: 'events.{prefix' }, /PGWARREN_MESSAGE_ROUTING_KEY.*unmatched brace/);
});
