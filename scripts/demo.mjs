#!/usr/bin/env node
/**
 * `npm run demo`: the compose demo on a machine without Docker. It starts what it needs here and
 * takes it all away again on Ctrl-C:
 *
 *   start   a private Postgres cluster with wal_level=logical (as the tests do: scripts/pg-cluster.mjs),
 *           the demo shop schema (docker/postgres/initdb/10-schema.sql) and a REPLICATION+SELECT role;
 *           RabbitMQ is the one at AMQP_URL (default amqp://guest:guest@127.0.0.1:5672)
 *   run     `pgwarren setup` as the tables' owner, `pgwarren run` as the role (as docker-compose.yml
 *           splits them), the demo consumer (examples/consumer.mjs) on a queue of its own, and the
 *           load generator (examples/load-generator.mjs); the consumer's lines are printed here
 *   stop    SIGINT/SIGTERM (or DEMO_SECONDS elapsed): load generator, pgwarren (drains), consumer,
 *           then the demo's queue and exchange are deleted and the cluster removed
 *
 * Settings (environment): AMQP_URL; RATE, BULK_EVERY (passed to the load generator); OUTPUT=json for
 * the events themselves instead of one readable line each; DEMO_SECONDS stops after that many seconds
 * (0: until Ctrl-C); DEMO_HTTP_PORT for pgwarren's /metrics and /readyz (default: a free port).
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createWriteStream, existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import amqp from 'amqplib';
import pg from 'pg';
import { freePort, startCluster } from './pg-cluster.mjs';

const root = fileURLToPath(new URL('..', import.meta.url));
const file = (p) => join(root, p);
const say = (line) => process.stderr.write(`[demo] ${line}\n`);
const env = process.env;
const amqpUrl = env.AMQP_URL || 'amqp://guest:guest@127.0.0.1:5672';
const seconds = Number(env.DEMO_SECONDS || 0);
if (!Number.isFinite(seconds) || seconds < 0) fail(`DEMO_SECONDS must be a number >= 0, not ${JSON.stringify(env.DEMO_SECONDS)}`);
if (!existsSync(file('dist/cli.js'))) fail('dist/cli.js is missing: run `npm run demo` (it builds first) or `npm run build`');

function fail(message) {
  say(message);
  process.exit(2);
}

const children = new Set();
/** A child node process with only the environment given (plus PATH and HOME). */
function run(name, args, childEnv, { stdout = 'inherit', stderr = 'inherit' } = {}) {
  const child = spawn(process.execPath, args, {
    cwd: root,
    env: { PATH: env.PATH ?? '/usr/bin:/bin', HOME: env.HOME ?? '/tmp', ...childEnv },
    stdio: ['ignore', stdout, stderr],
  });
  const exited = new Promise((resolve) => child.on('close', (code, signal) => resolve(code ?? signal)));
  const entry = { name, child, exited };
  children.add(entry);
  void exited.then((code) => {
    children.delete(entry);
    if (!stopping) {
      say(`${name} exited unexpectedly (${code}); stopping the demo`);
      void stop(1);
    }
  });
  return entry;
}

/** A one-shot pgwarren command; resolves with its exit code and output. */
function cli(args, childEnv) {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [file('dist/cli.js'), ...args], {
      cwd: root,
      env: { PATH: env.PATH ?? '/usr/bin:/bin', HOME: env.HOME ?? '/tmp', ...childEnv },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (out += d));
    child.on('close', (code) => resolve({ code, out }));
  });
}

async function endChild(entry, graceMs) {
  if (!children.has(entry)) return;
  entry.child.kill('SIGTERM');
  const timer = setTimeout(() => entry.child.kill('SIGKILL'), graceMs);
  await entry.exited;
  clearTimeout(timer);
}

let cluster = null;
let stopping = false;
let broker = null; // { exchange, queue, deadLetters }
let workdir = null;
const parts = {};
process.on('exit', () => cluster?.stop());

async function stop(code) {
  if (stopping) return;
  stopping = true;
  say('stopping: load generator, pgwarren, consumer');
  if (parts.load) await endChild(parts.load, 10_000);
  if (parts.daemon) await endChild(parts.daemon, 40_000);
  if (parts.consumer) await endChild(parts.consumer, 10_000);
  for (const entry of [...children]) await endChild(entry, 5_000);
  if (broker) {
    try {
      const conn = await amqp.connect(amqpUrl, { timeout: 5000 });
      conn.on('error', () => {});
      const ch = await conn.createChannel();
      ch.on('error', () => {});
      await ch.deleteQueue(broker.queue).catch(() => undefined);
      await ch.deleteExchange(broker.exchange).catch(() => undefined);
      await ch.deleteExchange(broker.deadLetters).catch(() => undefined);
      await conn.close();
    } catch (err) {
      say(`could not delete the demo's queue and exchange (${err.message}): ${broker.queue}, ${broker.exchange}`);
    }
  }
  cluster?.stop();
  cluster = null;
  if (workdir) rmSync(workdir, { recursive: true, force: true });
  say('done');
  process.exit(code);
}

async function main() {
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) process.on(sig, () => void stop(0));

  say('starting a private Postgres cluster (wal_level=logical)');
  cluster = await startCluster();
  const admin = new pg.Client({ connectionString: cluster.url, connectionTimeoutMillis: 10_000 });
  await admin.connect();
  await admin.query('CREATE DATABASE app');
  await admin.end();
  const ownerUrl = cluster.url.replace(/\/postgres$/, '/app');
  const owner = new pg.Client({ connectionString: ownerUrl, connectionTimeoutMillis: 10_000 });
  await owner.connect();
  await owner.query(readFileSync(file('docker/postgres/initdb/10-schema.sql'), 'utf8'));
  // The role pgwarren runs as, as docker/postgres/initdb/20-pgwarren-role.sh makes it.
  await owner.query(`
    CREATE ROLE pgwarren WITH LOGIN REPLICATION;
    GRANT CONNECT ON DATABASE app TO pgwarren;
    GRANT USAGE ON SCHEMA public TO pgwarren;
    GRANT SELECT ON ALL TABLES IN SCHEMA public TO pgwarren;
    ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO pgwarren;`);
  await owner.end();
  if (stopping) return;

  const id = randomBytes(3).toString('hex');
  broker = { exchange: `pgwarren-demo-${id}`, queue: `pgwarren-demo-${id}`, deadLetters: `pgwarren-demo-${id}.dead` };
  const httpPort = env.DEMO_HTTP_PORT || String(await freePort());
  const settings = {
    PGWARREN_SLOT: 'pgwarren_demo',
    PGWARREN_PUBLICATION: 'pgwarren_demo',
    PGWARREN_TABLES: 'public.*',
    PGWARREN_CONFIG: file('config/rules.example.yaml'),
    PGWARREN_AMQP_URL: amqpUrl,
    PGWARREN_EXCHANGE: broker.exchange,
    PGWARREN_DEAD_LETTER_EXCHANGE: broker.deadLetters,
    PGWARREN_HTTP_PORT: httpPort,
    PGWARREN_SHUTDOWN_TIMEOUT: '30',
  };
  const setup = await cli(['setup'], { ...settings, PGWARREN_DATABASE_URL: ownerUrl });
  if (setup.code !== 0) {
    say(`pgwarren setup failed (exit ${setup.code}):\n${setup.out}`);
    return stop(1);
  }
  workdir = mkdtempSync(join(tmpdir(), 'pgwarren-demo-'));
  const logPath = join(workdir, 'pgwarren.log');
  const daemonLog = createWriteStream(logPath);
  parts.daemon = run('pgwarren', [file('dist/cli.js'), 'run'], { ...settings, PGWARREN_DATABASE_URL: ownerUrl.replace('postgres@', 'pgwarren@'), MALLOC_ARENA_MAX: '2' }, { stdout: 'pipe', stderr: 'pipe' });
  parts.daemon.child.stdout.pipe(daemonLog);
  parts.daemon.child.stderr.pipe(daemonLog);
  await waitReady(httpPort, 60_000);
  say(`pgwarren is streaming to exchange ${broker.exchange} (log: ${logPath}; metrics: http://127.0.0.1:${httpPort}/metrics)`);

  say(`consumer reads queue ${broker.queue}`);
  parts.consumer = run('consumer', [file('examples/consumer.mjs')], {
    AMQP_URL: amqpUrl,
    EXCHANGE: broker.exchange,
    QUEUE: broker.queue,
    OUTPUT: env.OUTPUT || 'text',
  });
  parts.load = run('load generator', [file('examples/load-generator.mjs')], {
    DATABASE_URL: ownerUrl,
    RATE: env.RATE || '2',
    BULK_EVERY: env.BULK_EVERY || '25',
  }, { stdout: 'ignore' });
  say(seconds > 0 ? `printing events for ${seconds} s` : 'printing events; Ctrl-C stops the demo and removes what it made');
  if (seconds > 0) setTimeout(() => void stop(0), seconds * 1000).unref();
}

async function waitReady(port, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline && !stopping) {
    try {
      const res = await fetch(`http://127.0.0.1:${port}/readyz`, { signal: AbortSignal.timeout(2000) });
      if (res.status === 200) return;
    } catch {
      /* not listening yet */
    }
    await new Promise((r) => setTimeout(r, 250));
  }
  if (!stopping) throw new Error(`pgwarren did not become ready within ${timeoutMs / 1000} s`);
}

main().catch((err) => {
  say(`failed: ${err.message}`);
  void stop(1);
});
