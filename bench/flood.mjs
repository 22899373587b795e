#!/usr/bin/env node
/**
 * Flood benchmark (issue: bounded memory at any transaction size). For each flood action, one
 * transaction updates N rows (default 1,000,000) of one table; right after it commits, one row is
 * inserted into another table. Reported per action:
 *   - peak and final RSS of the daemon (sampled every 100 ms from /proc), and RSS at each quarter
 *     of the run, to show it stays flat;
 *   - seconds from the flood's commit until the row after it reached the consumer, next to how
 *     long Postgres itself needs to decode and send that transaction (pg_recvlogical, same WAL).
 *
 * Usage: npm run build && node bench/flood.mjs [--rows 1000000] [--actions summarize,drop,divert,pass]
 * Needs the Postgres 15 server binaries and RabbitMQ at AMQP_URL (default amqp://guest:guest@127.0.0.1:5672).
 */
import { spawn, execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { join } from 'node:path';
import pg from 'pg';
import amqp from 'amqplib';
import { startCluster, freePort } from '../scripts/pg-cluster.mjs';

const args = Object.fromEntries(process.argv.slice(2).join(' ').split('--').filter(Boolean).map((a) => a.trim().split(/\s+/)));
const ROWS = Number(args.rows ?? 1_000_000);
const ACTIONS = (args.actions ?? 'summarize,drop,divert,pass').split(',');
const AMQP_URL = process.env.AMQP_URL ?? 'amqp://guest:guest@127.0.0.1:5672';
const cli = fileURLToPath(new URL('../dist/cli.js', import.meta.url));
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const log = (s) => process.stderr.write(`[bench] ${s}\n`);

function rssMb(pid) {
  try {
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    return Number(/VmRSS:\s+(\d+)/.exec(status)[1]) / 1024;
  } catch {
    return NaN;
  }
}

async function waitFor(fn, timeoutMs, what) {
  const deadline = Date.now() + timeoutMs;
  while (!(await fn())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

async function decodeBaseline(cluster, db, slot) {
  // How long Postgres takes to decode and send the flood to a client that does nothing with it.
  const t0 = Date.now();
  execFileSync(join(cluster.bindir, 'pg_recvlogical'), [
    '-d', `postgres://postgres@127.0.0.1:${cluster.port}/${db}`, '-S', slot, '--start', '-f', '/dev/null',
    '-o', 'proto_version=1', '-o', 'publication_names=bench', '--endpos', (await currentLsn(cluster, db)), '--no-loop',
  ], { stdio: 'ignore' });
  return (Date.now() - t0) / 1000;
}

async function currentLsn(cluster, db) {
  const c = new pg.Client({ connectionString: `postgres://postgres@127.0.0.1:${cluster.port}/${db}` });
  await c.connect();
  const { rows } = await c.query('SELECT pg_current_wal_lsn()::text AS lsn');
  await c.end();
  return rows[0].lsn;
}

async function runAction(cluster, action) {
  const db = `bench_${action}`;
  const admin = new pg.Client({ connectionString: cluster.url });
  await admin.connect();
  await admin.query(`CREATE DATABASE ${db}`);
  await admin.end();
  const url = `postgres://postgres@127.0.0.1:${cluster.port}/${db}`;
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  await c.query('CREATE TABLE big (id int PRIMARY KEY, v int NOT NULL, pad text NOT NULL)');
  await c.query('CREATE TABLE after_flood (id int PRIMARY KEY, at timestamptz NOT NULL DEFAULT now())');
  await c.query(`INSERT INTO big SELECT g, 0, 'row ' || g FROM generate_series(1, ${ROWS}) g`);
  await c.query('CREATE PUBLICATION bench FOR TABLE big, after_flood');
  // pgwarren streams from its publication and the keyless companion (slot-admin.ts); both must
  // exist before the slot, or decoding WAL written before they did fails.
  await c.query("CREATE PUBLICATION bench_keyless WITH (publish = 'insert, truncate')");
  // Both slots at the same point, as `pgwarren setup` would make the daemon's: publications first.
  await c.query("SELECT pg_create_logical_replication_slot('baseline', 'pgoutput')");
  await c.query("SELECT pg_create_logical_replication_slot('bench', 'pgoutput')");

  const conn = await amqp.connect(AMQP_URL);
  const ch = await conn.createChannel();
  const exchange = `pgwarren-bench-${action}`;
  const floodExchange = `${exchange}.bulk`;
  await ch.assertExchange(exchange, 'topic', { durable: true });
  await ch.assertExchange(floodExchange, 'topic', { durable: true });
  const q = await ch.assertQueue('', { exclusive: true });
  const fq = await ch.assertQueue('', { exclusive: true });
  await ch.bindQueue(q.queue, exchange, '#');
  await ch.bindQueue(fq.queue, floodExchange, '#');
  let received = 0;
  let diverted = 0;
  let afterAt = 0;
  await ch.consume(q.queue, (m) => {
    received++;
    if (m.fields.routingKey === 'public.after_flood.insert') afterAt = Date.now();
  }, { noAck: true });
  await ch.consume(fq.queue, () => diverted++, { noAck: true });

  const httpPort = await freePort();
  // BENCH_NODE_ARGS="--cpu-prof --cpu-prof-dir=/tmp/prof" profiles the daemon.
  const nodeArgs = (process.env.BENCH_NODE_ARGS ?? '').split(' ').filter(Boolean);
  const daemon = spawn(process.execPath, [...nodeArgs, cli, 'run'], {
    env: {
      PATH: process.env.PATH, PGWARREN_DATABASE_URL: url, PGWARREN_AMQP_URL: AMQP_URL, PGWARREN_SLOT: 'bench',
      PGWARREN_PUBLICATION: 'bench', PGWARREN_EXCHANGE: exchange, PGWARREN_FLOOD_EXCHANGE: floodExchange,
      // Its own dead-letter exchange, deleted below: the default (pgwarren.dead) would outlive the bench.
      PGWARREN_DEAD_LETTER_EXCHANGE: `${exchange}.dead`,
      PGWARREN_FLOOD_ACTION: action, PGWARREN_HTTP_PORT: String(httpPort), PGWARREN_LOG_LEVEL: 'warn',
      MALLOC_ARENA_MAX: '2', // as the Docker image and `npm start` run it
      // Tuning knobs under study pass through from the bench's own environment.
      ...Object.fromEntries(Object.entries(process.env).filter(([k]) => /^PGWARREN_(MAX_INFLIGHT|BATCH_|FLOOD_BUFFER)/.test(k) || k === 'NODE_OPTIONS' || k === 'MALLOC_ARENA_MAX')),
    },
    stdio: ['ignore', 'inherit', 'inherit'],
  });
  await waitFor(async () => (await fetch(`http://127.0.0.1:${httpPort}/readyz`).catch(() => null))?.status === 200, 60_000, 'daemon ready');

  const samples = [];
  const sampler = setInterval(() => samples.push(rssMb(daemon.pid)), 100);
  const t0 = Date.now();
  await c.query('UPDATE big SET v = v + 1');
  const floodCommitted = Date.now();
  await c.query('INSERT INTO after_flood (id) VALUES (1)');
  const expected = action === 'pass' ? ROWS + 1 : action === 'summarize' ? 2 : 1;
  await waitFor(() => afterAt > 0 && received >= expected && (action !== 'divert' || diverted >= ROWS), 1_800_000, `${action} deliveries`);
  const done = Date.now();
  clearInterval(sampler);
  const baseline = await decodeBaseline(cluster, db, 'baseline');

  daemon.kill('SIGTERM');
  await new Promise((r) => daemon.on('exit', r));
  await ch.deleteExchange(exchange);
  await ch.deleteExchange(floodExchange);
  await ch.deleteExchange(`${exchange}.dead`);
  await conn.close();
  await c.query("SELECT pg_drop_replication_slot('bench')");
  await c.query("SELECT pg_drop_replication_slot('baseline')");
  await c.end();

  const quarter = (f) => samples[Math.min(samples.length - 1, Math.floor(samples.length * f))];
  return {
    action,
    rows: ROWS,
    peakRssMb: Math.max(...samples.filter(Number.isFinite)),
    rssQuartersMb: [0.25, 0.5, 0.75, 1].map((f) => +quarter(f).toFixed(1)),
    afterFloodDeliveredS: +((afterAt - floodCommitted) / 1000).toFixed(2),
    pgDecodeS: baseline,
    totalS: +((done - t0) / 1000).toFixed(1),
    published: received,
    diverted,
  };
}

const cluster = await startCluster({ shared_buffers: '256MB', max_wal_size: '8GB', logical_decoding_work_mem: '64MB' });
const results = [];
try {
  for (const action of ACTIONS) {
    log(`${action}: ${ROWS} rows`);
    results.push(await runAction(cluster, action));
    log(JSON.stringify(results.at(-1)));
  }
} finally {
  cluster.stop();
}
console.log('| action | rows | peak RSS MB | RSS at 25/50/75/100 % MB | row after flood delivered (s after flood commit) | Postgres decode of the flood (s, pg_recvlogical) | total s | messages |');
console.log('|---|---|---|---|---|---|---|---|');
for (const r of results) {
  console.log(`| ${r.action} | ${r.rows} | ${r.peakRssMb.toFixed(1)} | ${r.rssQuartersMb.join(' / ')} | ${r.afterFloodDeliveredS} | ${r.pgDecodeS} | ${r.totalS} | ${r.published + r.diverted} |`);
}
