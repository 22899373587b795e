/**
 * No Docker engine runs in CI, so this checks what `docker compose config` and a first
 * `docker compose up` would: docker-compose.yml parses, every service can be built or pulled, start
 * order is expressed with depends_on conditions that can be met, every file it mounts exists, the
 * secrets agree with each other (database and broker passwords), pgwarren's environment is one the
 * real config loader accepts, and the monitoring profile only graphs metrics pgwarren exports.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { existsSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import YAML from 'yaml';
import { ConfigError, loadConfig } from '../../src/config/load.js';
import { OPTIONS, findOption } from '../../src/config/options.js';
import { Metrics } from '../../src/ops/metrics.js';

const root = fileURLToPath(new URL('../../', import.meta.url));
const read = (p: string) => readFileSync(join(root, p), 'utf8');
/** Compose merges `<<: *anchor` keys (YAML 1.1 merge keys). */
const compose = YAML.parse(read('docker-compose.yml'), { merge: true }) as Compose;
const services = compose.services;

interface Service {
  image?: string;
  build?: string | { context?: string; dockerfile?: string; target?: string };
  command?: string[] | string;
  environment?: Record<string, string | number | boolean | null> | string[];
  secrets?: (string | { source: string; target?: string })[];
  volumes?: string[];
  ports?: string[];
  depends_on?: string[] | Record<string, { condition?: string }>;
  healthcheck?: { test?: string[] | string; interval?: string; timeout?: string; retries?: number; start_period?: string; disable?: boolean };
  profiles?: string[];
  restart?: string;
  stop_signal?: string;
  stop_grace_period?: string;
  [key: string]: unknown;
}
interface Compose {
  name?: string;
  services: Record<string, Service>;
  secrets?: Record<string, { file?: string; environment?: string }>;
  volumes?: Record<string, unknown>;
  [key: string]: unknown;
}

/** Top-level and service keys of the Compose specification that this file may use. */
const TOP_KEYS = new Set(['name', 'services', 'secrets', 'volumes', 'networks', 'configs']);
const SERVICE_KEYS = new Set([
  'image', 'build', 'command', 'entrypoint', 'environment', 'env_file', 'secrets', 'volumes', 'ports', 'depends_on',
  'healthcheck', 'profiles', 'restart', 'stop_signal', 'stop_grace_period', 'hostname', 'init', 'user', 'working_dir',
  'networks', 'labels', 'expose', 'configs', 'deploy', 'pull_policy', 'read_only', 'tmpfs', 'logging',
]);
const CONDITIONS = new Set(['service_started', 'service_healthy', 'service_completed_successfully']);

function env(name: string): Record<string, string> {
  const e = services[name]?.environment ?? {};
  if (Array.isArray(e)) return Object.fromEntries(e.map((kv) => [kv.slice(0, kv.indexOf('=')), kv.slice(kv.indexOf('=') + 1)]));
  return Object.fromEntries(Object.entries(e).map(([k, v]) => [k, v === null ? '' : String(v)]));
}
function dependsOn(s: Service): Record<string, string | undefined> {
  const d = s.depends_on ?? {};
  return Array.isArray(d) ? Object.fromEntries(d.map((n) => [n, undefined])) : Object.fromEntries(Object.entries(d).map(([n, v]) => [n, v?.condition]));
}
function build(s: Service): { context: string; dockerfile: string; target?: string } | undefined {
  if (s.build === undefined) return undefined;
  const b = typeof s.build === 'string' ? { context: s.build } : s.build;
  const context = resolve(root, b.context ?? '.');
  return { context, dockerfile: resolve(context, b.dockerfile ?? 'Dockerfile'), ...(b.target && { target: b.target }) };
}
/** Bind mounts as [host path, container path]; named volumes are skipped. */
function binds(s: Service): [string, string][] {
  return (s.volumes ?? [])
    .map((v) => v.split(':'))
    .filter(([src]) => src!.startsWith('.') || src!.startsWith('/'))
    .map(([src, dst]) => [resolve(root, src!), dst!]);
}
function secretNames(s: Service): string[] {
  return (s.secrets ?? []).map((x) => (typeof x === 'string' ? x : x.source));
}
/** Where a path inside a service's container comes from on this machine (secret or bind mount). */
function hostPath(name: string, containerPath: string): string | undefined {
  const s = services[name]!;
  const secret = /^\/run\/secrets\/([^/]+)$/.exec(containerPath);
  if (secret) {
    if (!secretNames(s).includes(secret[1]!)) return undefined;
    const file = compose.secrets?.[secret[1]!]?.file;
    return file ? resolve(root, file) : undefined;
  }
  for (const [src, dst] of binds(s)) {
    if (containerPath === dst) return src;
    if (containerPath.startsWith(`${dst}/`)) return join(src, containerPath.slice(dst.length + 1));
  }
  return undefined;
}
function secretFile(name: string): string {
  const file = compose.secrets?.[name]?.file;
  assert.ok(file, `secret ${name} is declared with a file`);
  return readFileSync(resolve(root, file), 'utf8').replace(/[\r\n]+$/, '');
}
/** Compose durations: 1m30s, 40s, 500ms. */
function seconds(d: string): number {
  let total = 0;
  const re = /(\d+(?:\.\d+)?)(ms|s|m|h)/g;
  let matched = '';
  for (let m; (m = re.exec(d)); ) {
    matched += m[0];
    total += Number(m[1]) * { ms: 0.001, s: 1, m: 60, h: 3600 }[m[2] as 'ms' | 's' | 'm' | 'h'];
  }
  assert.equal(matched, d, `${d} is a compose duration`);
  return total;
}
/** The stages of a Dockerfile, by name. */
function stages(dockerfile: string): string[] {
  return [...readFileSync(dockerfile, 'utf8').matchAll(/^FROM\s+\S+(?:\s+AS\s+(\S+))?/gim)].map((m) => m[1] ?? '');
}
/** RabbitMQ's rabbit_password_hashing_sha256: base64(salt(4) + sha256(salt + password)). */
function rabbitHashMatches(hash: string, password: string): boolean {
  const raw = Buffer.from(hash, 'base64');
  const salt = raw.subarray(0, 4);
  return createHash('sha256').update(Buffer.concat([salt, Buffer.from(password, 'utf8')])).digest().equals(raw.subarray(4));
}

describe('docker-compose.yml', () => {
  test('uses only Compose keys, and has the services of the demo', () => {
    for (const key of Object.keys(compose)) assert.ok(TOP_KEYS.has(key) || key.startsWith('x-'), `unknown top-level key ${key}`);
    for (const [name, s] of Object.entries(services)) {
      for (const key of Object.keys(s)) assert.ok(SERVICE_KEYS.has(key), `service ${name}: unknown key ${key}`);
    }
    for (const name of ['postgres', 'rabbitmq', 'pgwarren-setup', 'pgwarren', 'consumer', 'load-generator', 'prometheus', 'grafana']) {
      assert.ok(services[name], `service ${name} exists`);
    }
  });

  test('every service has an image or a build whose Dockerfile and target exist', () => {
    for (const [name, s] of Object.entries(services)) {
      const b = build(s);
      assert.ok(b || s.image, `service ${name} has an image or a build`);
      if (s.image) assert.match(s.image, /^[a-z0-9./_-]+(:[\w.-]+)?$/, `service ${name}: image ${s.image} has a tag`);
      if (s.image && !b) assert.doesNotMatch(s.image, /:latest$|^[^:]+$/, `service ${name}: a pulled image is pinned to a version, not latest`);
      if (!b) continue;
      assert.ok(existsSync(b.dockerfile), `service ${name}: ${b.dockerfile} exists`);
      if (b.target) assert.ok(stages(b.dockerfile).includes(b.target), `service ${name}: target ${b.target} is a stage of ${b.dockerfile}`);
    }
    assert.equal(build(services.postgres!)!.dockerfile, join(root, 'docker/postgres/Dockerfile'));
  });

  test('start order: depends_on targets exist, with conditions they can meet, and no cycles', () => {
    for (const [name, s] of Object.entries(services)) {
      for (const [dep, condition] of Object.entries(dependsOn(s))) {
        const target = services[dep];
        assert.ok(target, `${name} depends on ${dep}, which exists`);
        assert.ok(condition && CONDITIONS.has(condition), `${name} -> ${dep} has a condition (${condition})`);
        if (condition === 'service_healthy') assert.ok(target.healthcheck?.test && !target.healthcheck.disable, `${name} waits for ${dep} to be healthy: ${dep} has a healthcheck`);
        if (condition === 'service_completed_successfully') assert.ok([undefined, 'no'].includes(target.restart), `${dep} is one-shot (no restart policy)`);
        // A service outside a profile must not need one that only runs with that profile.
        if (target.profiles?.length) assert.ok(s.profiles?.some((p) => target.profiles!.includes(p)), `${name} depends on ${dep}, which only runs with profile ${target.profiles}`);
      }
    }
    const visiting = new Set<string>();
    const done = new Set<string>();
    const visit = (n: string, path: string[]) => {
      assert.ok(!visiting.has(n), `depends_on cycle: ${[...path, n].join(' -> ')}`);
      if (done.has(n)) return;
      visiting.add(n);
      for (const dep of Object.keys(dependsOn(services[n]!))) visit(dep, [...path, n]);
      visiting.delete(n);
      done.add(n);
    };
    for (const n of Object.keys(services)) visit(n, []);

    // The order the demo needs: pgwarren only after both servers are up and setup made the slot.
    assert.deepEqual(dependsOn(services.pgwarren!), { postgres: 'service_healthy', rabbitmq: 'service_healthy', 'pgwarren-setup': 'service_completed_successfully' });
    assert.equal(dependsOn(services['pgwarren-setup']!).postgres, 'service_healthy');
    assert.equal(dependsOn(services.consumer!).rabbitmq, 'service_healthy');
    assert.equal(dependsOn(services['load-generator']!).postgres, 'service_healthy');
  });

  test('the long-running services have healthchecks', () => {
    for (const name of ['postgres', 'rabbitmq', 'pgwarren', 'prometheus']) {
      const h = services[name]!.healthcheck;
      assert.ok(h?.test && !h.disable, `${name} has a healthcheck`);
      for (const d of [h.interval, h.timeout, h.start_period]) if (d !== undefined) seconds(d);
    }
    // pg_isready over TCP: the image's init-time server listens on the Unix socket only.
    assert.match(String(services.postgres!.healthcheck!.test), /pg_isready -h 127\.0\.0\.1/);
  });

  test('every mounted file, secret file and build context exists', () => {
    for (const [name, s] of Object.entries(services)) {
      for (const [src] of binds(s)) assert.ok(existsSync(src), `service ${name} mounts ${src}, which exists`);
      for (const secret of secretNames(s)) {
        const file = compose.secrets?.[secret]?.file;
        assert.ok(file, `service ${name} uses secret ${secret}, declared at the top level with a file`);
        assert.ok(existsSync(resolve(root, file)), `secret file ${file} exists`);
      }
      // Every *_FILE variable names a file the container has.
      for (const [k, v] of Object.entries(env(name))) {
        if (!k.endsWith('_FILE')) continue;
        const p = hostPath(name, v);
        assert.ok(p && existsSync(p), `service ${name}: ${k}=${v} is a secret or mounted file of that service`);
      }
    }
    for (const f of ['docker/postgres/Dockerfile', 'docker/postgres/initdb/10-schema.sql', 'docker/postgres/initdb/20-pgwarren-role.sh', 'docker/rabbitmq/definitions.json', 'docker/rabbitmq/rabbitmq.conf']) {
      assert.ok(existsSync(join(root, f)), `${f} exists`);
    }
    assert.equal(hostPath('postgres', '/docker-entrypoint-initdb.d'), join(root, 'docker/postgres/initdb'));
    assert.equal(hostPath('rabbitmq', '/etc/rabbitmq/definitions.json'), join(root, 'docker/rabbitmq/definitions.json'));
  });

  test('every PGWARREN_* variable is a pgwarren option, and the URLs come from secret files', () => {
    const known = new Set(OPTIONS.flatMap((o) => [o.env, `${o.env}_FILE`]));
    for (const name of Object.keys(services)) {
      for (const k of Object.keys(env(name))) if (k.startsWith('PGWARREN_')) assert.ok(known.has(k), `service ${name}: ${k} is not a pgwarren option`);
    }
    for (const name of ['pgwarren', 'pgwarren-setup']) {
      const e = env(name);
      assert.ok(e.PGWARREN_DATABASE_URL_FILE, `${name} reads the database URL from a file`);
      for (const [k, v] of Object.entries(e)) assert.doesNotMatch(v, /:\/\/[^/@]*:[^/@]*@/, `${name}: ${k} carries a password in plain text`);
      assert.ok(!('DATABASE_URL' in e) && !('AMQP_URL' in e) && !Object.keys(e).some((k) => /^PG[A-Z]+$/.test(k)), `${name} is configured through PGWARREN_* only`);
    }
    assert.ok(env('pgwarren').PGWARREN_AMQP_URL_FILE, 'pgwarren reads the AMQP URL from a file');
  });

  /** The service's environment as the process in the container would see it, paths mapped to this machine. */
  const containerEnv = (name: string) =>
    Object.fromEntries(Object.entries(env(name)).map(([k, v]) => [k, v.startsWith('/') ? (hostPath(name, v) ?? v) : v]));

  test("pgwarren's and pgwarren-setup's environments load through the real config loader", () => {
    const configs = ['pgwarren', 'pgwarren-setup'].map((name) => {
      try {
        return loadConfig({ flags: {}, env: containerEnv(name), cwd: root });
      } catch (err) {
        assert.fail(`${name}: ${err instanceof ConfigError ? err.message : String(err)}`);
      }
    });
    const [run, setup] = configs as [ReturnType<typeof loadConfig>, ReturnType<typeof loadConfig>];
    assert.equal(run.database.host, 'postgres');
    assert.equal(run.database.user, 'pgwarren');
    assert.equal(setup.database.user, env('postgres').POSTGRES_USER, 'setup runs as the tables\' owner');
    assert.equal(run.database.database, env('postgres').POSTGRES_DB);
    assert.equal(setup.database.database, env('postgres').POSTGRES_DB);
    assert.equal(new URL(run.amqpUrls[0]!).hostname, 'rabbitmq');
    // setup must make exactly the publication and slot run expects, or run (not the owner) fails.
    for (const k of ['slot', 'publication', 'plugin', 'tables', 'excludeTables', 'operations', 'rules'] as const) {
      assert.deepEqual(run[k], setup[k], `pgwarren and pgwarren-setup agree on ${k}`);
    }
    assert.ok(run.rules.length > 0, 'the rules example is mounted and read');
  });

  test('a stop grace longer than the confirm drain, and health on the HTTP port', () => {
    const s = services.pgwarren!;
    const e = env('pgwarren');
    const shutdown = Number(e.PGWARREN_SHUTDOWN_TIMEOUT ?? findOption('shutdown-timeout')!.default);
    assert.ok(s.stop_grace_period, 'pgwarren has a stop_grace_period');
    assert.ok(seconds(s.stop_grace_period) > shutdown, `stop_grace_period ${s.stop_grace_period} exceeds PGWARREN_SHUTDOWN_TIMEOUT ${shutdown} s`);
    assert.ok([undefined, 'SIGTERM', 'SIGINT'].includes(s.stop_signal), 'stopped by a signal pgwarren drains on');
    const port = e.PGWARREN_HTTP_PORT ?? findOption('http-port')!.default!;
    assert.match(String(s.healthcheck!.test), new RegExp(`127\\.0\\.0\\.1:${port}/healthz`), 'the healthcheck asks /healthz on PGWARREN_HTTP_PORT');
    assert.ok((s.ports ?? []).some((p) => p.endsWith(`:${port}`)), 'the metrics port is published');
    assert.deepEqual(s.command, ['run']);
    assert.deepEqual(services['pgwarren-setup']!.command, ['setup']);
  });

  test('postgres: logical WAL, wal2json for its major version, seed schema and the REPLICATION role', () => {
    const command = services.postgres!.command as string[];
    assert.ok(command.includes('wal_level=logical'), 'started with wal_level=logical');
    assert.ok(command.some((c) => /^max_slot_wal_keep_size=/.test(c)), 'a slot cannot hold WAL without bound');
    const dockerfile = read('docker/postgres/Dockerfile');
    const major = /^FROM\s+postgres:(\d+)/m.exec(dockerfile)?.[1];
    assert.ok(major, 'built from the official postgres image');
    assert.match(dockerfile, /apt-get install[^\n]*postgresql-\$\{PG_MAJOR\}-wal2json/, 'installs wal2json for the image\'s own major version');
    const initdb = readdirSync(join(root, 'docker/postgres/initdb')).sort();
    assert.deepEqual(initdb, ['10-schema.sql', '20-pgwarren-role.sh'], 'schema first, then the role and its grants');
    assert.ok(statSync(join(root, 'docker/postgres/initdb/20-pgwarren-role.sh')).mode & 0o111, 'the role script is executable');
    const schema = read('docker/postgres/initdb/10-schema.sql');
    for (const t of ['customers', 'products', 'orders', 'order_items']) assert.match(schema, new RegExp(`CREATE TABLE ${t} \\(`));
    const role = read('docker/postgres/initdb/20-pgwarren-role.sh');
    assert.match(role, /CREATE ROLE pgwarren WITH LOGIN REPLICATION PASSWORD/);
    assert.doesNotMatch(role, /SUPERUSER/);
    assert.match(role, /\/run\/secrets\/pgwarren_db_password/);
    assert.ok(secretNames(services.postgres!).includes('pgwarren_db_password'));
  });

  test('the secrets agree: database URLs carry the passwords the database was given', () => {
    const pgEnv = env('postgres');
    assert.equal(pgEnv.POSTGRES_PASSWORD_FILE, '/run/secrets/app_db_password');
    const owner = new URL(secretFile('app_database_url'));
    assert.equal(decodeURIComponent(owner.username), pgEnv.POSTGRES_USER);
    assert.equal(decodeURIComponent(owner.password), secretFile('app_db_password'));
    assert.equal(owner.hostname, 'postgres');
    assert.equal(owner.pathname, `/${pgEnv.POSTGRES_DB}`);
    const daemon = new URL(secretFile('pgwarren_database_url'));
    assert.equal(daemon.username, 'pgwarren');
    assert.equal(decodeURIComponent(daemon.password), secretFile('pgwarren_db_password'));
    assert.equal(daemon.pathname, `/${pgEnv.POSTGRES_DB}`);
  });

  describe('rabbitmq', () => {
    const defs = JSON.parse(read('docker/rabbitmq/definitions.json')) as {
      users: { name: string; password_hash: string; hashing_algorithm: string; tags: string[] | string }[];
      permissions: { user: string; vhost: string; configure: string; write: string; read: string }[];
      exchanges: { name: string; vhost: string; type: string; durable: boolean; auto_delete: boolean; internal: boolean }[];
      queues: { name: string; vhost: string; durable: boolean }[];
      bindings: { source: string; destination: string; destination_type: string; routing_key: string }[];
    };

    test('the management image loads the definitions file', () => {
      assert.match(services.rabbitmq!.image!, /-management/);
      assert.match(read('docker/rabbitmq/rabbitmq.conf'), /^load_definitions = \/etc\/rabbitmq\/definitions\.json$/m);
      assert.equal(hostPath('rabbitmq', '/etc/rabbitmq/conf.d/20-pgwarren.conf'), join(root, 'docker/rabbitmq/rabbitmq.conf'));
      assert.ok((services.rabbitmq!.ports ?? []).includes('15672:15672'), 'the management UI is published');
    });

    test('users exist with the passwords the AMQP URLs carry', () => {
      const urls = [new URL(secretFile('pgwarren_amqp_url')), new URL(env('consumer').AMQP_URL!)];
      for (const u of urls) {
        const user = defs.users.find((x) => x.name === decodeURIComponent(u.username));
        assert.ok(user, `user ${u.username} is defined`);
        assert.equal(user.hashing_algorithm, 'rabbit_password_hashing_sha256');
        assert.ok(rabbitHashMatches(user.password_hash, decodeURIComponent(u.password)), `the password hash of ${u.username} matches its URL`);
        assert.ok(defs.permissions.some((p) => p.user === user.name && p.vhost === '/'), `${u.username} has permissions on /`);
        assert.equal(u.hostname, 'rabbitmq');
      }
      assert.ok(!rabbitHashMatches(defs.users[0]!.password_hash, 'wrong password'), 'the hash check can fail');
    });

    test("pgwarren's exchanges are declared as pgwarren declares them, and the demo queue is bound", () => {
      const e = env('pgwarren');
      const exchange = e.PGWARREN_EXCHANGE ?? findOption('exchange')!.default!;
      const type = e.PGWARREN_EXCHANGE_TYPE ?? findOption('exchange-type')!.default!;
      const flood = e.PGWARREN_FLOOD_EXCHANGE ?? findOption('flood-exchange')!.default!;
      for (const [name, t] of [[exchange, type], [flood, 'topic']] as const) {
        const x = defs.exchanges.find((d) => d.name === name && d.vhost === '/');
        assert.ok(x, `exchange ${name} is declared`);
        // pgwarren asserts its exchange durable with this type; anything else is a 406 at start.
        assert.deepEqual({ type: x.type, durable: x.durable, auto_delete: x.auto_delete, internal: x.internal }, { type: t, durable: true, auto_delete: false, internal: false });
      }
      const queue = env('consumer').QUEUE!;
      assert.ok(defs.queues.some((q) => q.name === queue && q.durable), `the consumer's queue ${queue} is declared durable`);
      assert.ok(defs.bindings.some((b) => b.source === exchange && b.destination === queue && b.destination_type === 'queue' && b.routing_key === '#'), `${queue} is bound to ${exchange} for every event`);
      // The pgwarren user may declare and publish to its exchanges, and nothing else.
      const perm = defs.permissions.find((p) => p.user === new URL(secretFile('pgwarren_amqp_url')).username)!;
      for (const name of [exchange, flood]) {
        assert.match(name, new RegExp(perm.configure), `pgwarren may declare ${name}`);
        assert.match(name, new RegExp(perm.write), `pgwarren may publish to ${name}`);
      }
      assert.doesNotMatch('amq.default', new RegExp(perm.configure));
    });
  });

  describe('streams', () => {
    const defs = JSON.parse(read('docker/rabbitmq/definitions.json')) as {
      users: { name: string; password_hash: string }[];
      permissions: { user: string; configure: string; write: string; read: string }[];
    };
    test('the broker runs the stream plugin on a published 5552', () => {
      assert.equal(hostPath('rabbitmq', '/etc/rabbitmq/enabled_plugins'), join(root, 'docker/rabbitmq/enabled_plugins'));
      const plugins = /^\[([a-z_,\s]+)\]\.\s*$/.exec(read('docker/rabbitmq/enabled_plugins'));
      assert.ok(plugins, 'enabled_plugins is an Erlang list of atoms ending in a dot');
      const names = plugins[1]!.split(',').map((p) => p.trim());
      for (const p of ['rabbitmq_stream', 'rabbitmq_management', 'rabbitmq_prometheus']) assert.ok(names.includes(p), `${p} is enabled`);
      assert.ok((services.rabbitmq!.ports ?? []).includes('5552:5552'), 'the stream port is published');
    });

    test('pgwarren-stream loads as a stream sink whose user may declare, write and read its stream', () => {
      const config = loadConfig({ flags: {}, env: containerEnv('pgwarren-stream'), cwd: root });
      assert.equal(config.sink, 'stream');
      const url = new URL(config.streamUrl);
      assert.equal(url.hostname, 'rabbitmq');
      assert.equal(url.port, '5552');
      const user = defs.users.find((x) => x.name === decodeURIComponent(url.username));
      assert.ok(user && rabbitHashMatches(user.password_hash, decodeURIComponent(url.password)), 'the stream URL carries the user\'s password');
      const perm = defs.permissions.find((p) => p.user === user.name)!;
      // The sink declares the stream and reads its last message back at every connect.
      for (const re of [perm.configure, perm.write, perm.read]) assert.match(config.stream, new RegExp(re));
      assert.notEqual(config.slot, loadConfig({ flags: {}, env: containerEnv('pgwarren'), cwd: root }).slot, 'a slot of its own');
      assert.equal(env('stream-consumer').STREAM, config.stream, 'the demo consumer reads that stream');
      assert.equal(new URL(env('stream-consumer').STREAM_URL!).hostname, 'rabbitmq');
      assert.ok(existsSync(join(root, (services['stream-consumer']!.command as string[])[1]!)));
    });
  });

  describe('monitoring profile', () => {
    test('Prometheus scrapes pgwarren on PGWARREN_HTTP_PORT', () => {
      assert.deepEqual(services.prometheus!.profiles, ['monitoring']);
      assert.deepEqual(services.grafana!.profiles, ['monitoring']);
      const prom = YAML.parse(read('docker/prometheus/prometheus.yml')) as { scrape_configs: { job_name: string; metrics_path?: string; static_configs: { targets: string[] }[] }[] };
      assert.equal(hostPath('prometheus', '/etc/prometheus/prometheus.yml'), join(root, 'docker/prometheus/prometheus.yml'));
      const job = prom.scrape_configs.find((j) => j.job_name === 'pgwarren');
      assert.ok(job);
      assert.equal(job.metrics_path ?? '/metrics', '/metrics');
      const port = env('pgwarren').PGWARREN_HTTP_PORT ?? findOption('http-port')!.default!;
      assert.deepEqual(job.static_configs.flatMap((c) => c.targets), [`pgwarren:${port}`]);
    });

    test('Grafana provisions the datasource and the dashboard the panels use', () => {
      const datasources = YAML.parse(read('docker/grafana/provisioning/datasources/prometheus.yaml')) as { datasources: { uid: string; type: string; url: string }[] };
      const ds = datasources.datasources[0]!;
      assert.equal(ds.type, 'prometheus');
      assert.equal(new URL(ds.url).hostname, 'prometheus');
      const providers = YAML.parse(read('docker/grafana/provisioning/dashboards/pgwarren.yaml')) as { providers: { options: { path: string } }[] };
      const dashDir = hostPath('grafana', providers.providers[0]!.options.path);
      assert.equal(dashDir, join(root, 'docker/grafana/dashboards'));
      assert.equal(hostPath('grafana', '/etc/grafana/provisioning'), join(root, 'docker/grafana/provisioning'));
      const dashboard = JSON.parse(read('docker/grafana/dashboards/pgwarren.json')) as { uid: string; panels: { type: string; datasource?: { uid: string }; targets?: { expr: string }[] }[] };
      for (const p of dashboard.panels.filter((x) => x.type !== 'row')) {
        assert.equal(p.datasource?.uid, ds.uid, 'each panel uses the provisioned datasource');
        assert.ok(p.targets && p.targets.length > 0);
      }
    });

    test('the dashboard graphs only metrics pgwarren exports, and every contract metric', async () => {
      const metrics = new Metrics();
      const exported = new Set<string>();
      for (const m of await metrics.registry.getMetricsAsJSON()) {
        exported.add(m.name);
        if (String(m.type) === 'histogram') for (const s of ['_bucket', '_sum', '_count']) exported.add(m.name + s);
      }
      const dashboard = read('docker/grafana/dashboards/pgwarren.json');
      const exprs = (JSON.parse(dashboard) as { panels: { targets?: { expr: string }[] }[] }).panels.flatMap((p) => (p.targets ?? []).map((t) => t.expr));
      const used = new Set(exprs.flatMap((e) => e.match(/\bpgwarren_[a-z0-9_]+/g) ?? []));
      for (const name of used) assert.ok(exported.has(name), `the dashboard queries ${name}, which pgwarren does not export`);
      for (const name of [
        'pgwarren_events_published_total', 'pgwarren_events_filtered_total', 'pgwarren_flood_transactions_total', 'pgwarren_commit_to_confirm_seconds_bucket',
        'pgwarren_inflight_messages', 'pgwarren_slot_lag_bytes', 'pgwarren_reconnects_total', 'pgwarren_unroutable_total',
      ]) {
        assert.ok(used.has(name), `the dashboard shows ${name}`);
      }
    });
  });

  test('the demo scripts compose runs exist and the examples image stage copies them', () => {
    for (const name of ['consumer', 'load-generator']) {
      const command = services[name]!.command as string[];
      assert.equal(command[0], 'node');
      assert.ok(existsSync(join(root, command[1]!)), `${command[1]} exists`);
      assert.equal(build(services[name]!)!.target, 'examples');
    }
    assert.match(read('Dockerfile'), /^COPY examples \.\/examples$/m);
  });
});

describe('config/rules.example.yaml', () => {
  test('loads through the real config loader with every rule field it shows', () => {
    const config = loadConfig({ flags: {}, env: { PGWARREN_CONFIG: 'config/rules.example.yaml', PGWARREN_DATABASE_URL: 'postgres://pgwarren@localhost/app' }, cwd: root });
    assert.equal(config.floodThreshold, 5000);
    assert.equal(config.floodAction, 'summarize');
    assert.deepEqual(config.rules, [
      { match: 'public.customers', excludeColumns: ['email'] },
      { match: 'public.orders', routingKey: 'orders.{op}' },
      { match: 'public.order_items', ttl: 3600000 },
      { match: 'public.products', floodThreshold: 100 },
    ]);
    // Every rule names a table of the demo schema, so the example does something in the demo.
    const schema = read('docker/postgres/initdb/10-schema.sql');
    for (const r of config.rules) assert.match(schema, new RegExp(`CREATE TABLE ${r.match.split('.')[1]} \\(`));
  });
});
