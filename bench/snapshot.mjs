#!/usr/bin/env node
/**
 * Snapshot benchmark (README "Snapshots"): a table of N rows (default 1,000,000) is snapshotted
 * while 500 rows/s of changes stream into another table. Reported per chunk size:
 *   - snapshot rows/s (request to done), next to the per-row publish rate of plain streaming
 *     measured in the same run (N/10 rows inserted in 5,000-row transactions);
 *   - peak RSS of the daemon (sampled every 100 ms from /proc);
 *   - WAL the slot retains at the end (current WAL position minus the slot's restart_lsn);
 *   - commit-to-delivery latency p50/p99 of the streamed changes during the snapshot (on the queue
 *     that also gets the read events, and on a queue of their own);
 *   - the load average (1 min) at the snapshot's start and end: the machine may be shared.
 *
 * Usage: npm run build && node bench/snapshot.mjs [--rows 1000000] [--chunk-sizes 1000,5000] [--stream-rate 500]
 * Needs the Postgres 15 server binaries and RabbitMQ at AMQP_URL (default amqp://guest:guest@127.0.0.1:5672).
 */
import { spawn, spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { loadavg } from 'node:os';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import amqp from 'amqplib';
import { startCluster, freePort } from '../scripts/pg-cluster.mjs';

const args = Object.fromEntries(process.argv.slice(2).join(' ').split('--').filter(Boolean).map((a) => a.trim().split(/\s+/)));
const ROWS = Number(args.rows ?? 1_000_000);
const CHUNK_SIZES = (args['chunk-sizes'] ?? '1000').split(',').map(Number);
const STREAM_RATE = Number(args['stream-rate'] ?? 500);
const AMQP_URL = process.env.AMQP_URL ?? 'amqp://guest:guest@127.0.0.1:5672';
const cli = fileURLToPath(new URL('../dist/cli.js', import.meta.url));
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const log = (s) => process.stderr.write(`[bench] ${s}\n`);

function rssMb(pid) {
  try {
    return Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))[1]) / 1024;
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

const pct = (sorted, p) => (sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))] : NaN);

async function runOne(cluster, chunkSize) {
  const db = `bench_snapshot_${chunkSize}`;
  const admin = new pg.Client({ connectionString: cluster.url });
  await admin.connect();
  await admin.query(`CREATE DATABASE ${db}`);
  await admin.end();
  const url = `postgres://postgres@127.0.0.1:${cluster.port}/${db}`;
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  await c.query('CREATE TABLE big (id int PRIMARY KEY, v int NOT NULL, pad text NOT NULL, at timestamptz NOT NULL DEFAULT now())');
  await c.query('CREATE TABLE base (id int PRIMARY KEY, v int NOT NULL, pad text NOT NULL, at timestamptz NOT NULL DEFAULT now())');
  await c.query('CREATE TABLE ticks (id bigserial PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp())');
  await c.query(`INSERT INTO big SELECT g, g % 1000, 'row ' || g FROM generate_series(1, ${ROWS}) g`);
  await c.query('ANALYZE big');

  // Not named pgwarren*: the test runner removes such exchanges from the shared broker (leak check).
  const exchange = `bench-snapshot-${chunkSize}-${process.pid}`;
  const env = {
    PATH: process.env.PATH, PGWARREN_DATABASE_URL: url, PGWARREN_AMQP_URL: AMQP_URL, PGWARREN_SLOT: 'bench',
    PGWARREN_PUBLICATION: 'bench', PGWARREN_EXCHANGE: exchange, PGWARREN_LOG_LEVEL: 'warn', MALLOC_ARENA_MAX: '2',
    // Its own dead-letter exchange, deleted below: the default (pgwarren.dead) would outlive the bench.
    PGWARREN_DEAD_LETTER_EXCHANGE: `${exchange}.dead`,
  };
  const setup = spawnSync(process.execPath, [cli, 'setup'], { env, encoding: 'utf8' });
  if (setup.status !== 0) throw new Error(`setup: ${setup.stdout}${setup.stderr}`);

  const conn = await amqp.connect(AMQP_URL);
  const ch = await conn.createChannel();
  await ch.assertExchange(exchange, 'topic', { durable: true });
  const q = await ch.assertQueue('', { exclusive: true });
  await ch.bindQueue(q.queue, exchange, '#');
  let reads = 0;
  let baseRows = 0;
  let baseLastAt = 0;
  let measuring = false;
  const latencies = [];
  await ch.consume(q.queue, (m) => {
    const rk = m.fields.routingKey;
    if (rk === 'public.big.read') reads++;
    else if (rk === 'public.base.insert') {
      baseRows++;
      baseLastAt = Date.now();
    } else if (rk === 'public.ticks.insert' && measuring) {
      const body = JSON.parse(m.content.toString('utf8'));
      latencies.push(Date.now() - Date.parse(body.tx.commit_time));
    }
  }, { noAck: true });
  // The same changes on a queue of their own, on a channel of its own: the delay a consumer of
  // the streamed table alone sees, without read events queued ahead of it in the broker.
  const ch2 = await conn.createChannel();
  const q2 = await ch2.assertQueue('', { exclusive: true });
  await ch2.bindQueue(q2.queue, exchange, 'public.ticks.#');
  const ownLatencies = [];
  await ch2.consume(q2.queue, (m) => {
    if (!measuring) return;
    const body = JSON.parse(m.content.toString('utf8'));
    ownLatencies.push(Date.now() - Date.parse(body.tx.commit_time));
  }, { noAck: true });

  const httpPort = await freePort();
  const daemon = spawn(process.execPath, [cli, 'run'], { env: { ...env, PGWARREN_HTTP_PORT: String(httpPort) }, stdio: ['ignore', 'inherit', 'inherit'] });
  await waitFor(async () => (await fetch(`http://127.0.0.1:${httpPort}/readyz`).catch(() => null))?.status === 200, 60_000, 'daemon ready');

  // Plain streaming, same run: the per-row publish rate a snapshot is compared with.
  const BASE = Math.max(10_000, Math.floor(ROWS / 10));
  const b0 = Date.now();
  for (let i = 0; i < BASE; i += 5000) {
    await c.query(`INSERT INTO base SELECT g, 0, 'row ' || g FROM generate_series(${i + 1}, ${Math.min(BASE, i + 5000)}) g`);
  }
  await waitFor(() => baseRows >= BASE, 600_000, 'streamed base rows');
  const streamRate = BASE / ((baseLastAt - b0) / 1000);

  // 500 rows/s of changes on another table while the snapshot runs.
  const writer = new pg.Client({ connectionString: url });
  await writer.connect();
  let writing = true;
  const streamer = (async () => {
    const perTick = Math.max(1, Math.round(STREAM_RATE / 100));
    let next = Date.now();
    while (writing) {
      for (let i = 0; i < perTick; i++) await writer.query('INSERT INTO ticks DEFAULT VALUES');
      next += 10;
      const wait = next - Date.now();
      if (wait > 0) await sleep(wait);
    }
  })();
  // Streamed-change latency without a snapshot, for comparison (the machine's own).
  measuring = true;
  await sleep(5000);
  measuring = false;
  const idle = latencies.splice(0).sort((x, y) => x - y);
  const idleOwn = ownLatencies.splice(0).sort((x, y) => x - y);
  measuring = true;
  const samples = [];
  const sampler = setInterval(() => samples.push(rssMb(daemon.pid)), 100);
  const t0 = Date.now();
  const loadStart = loadavg()[0];
  // Not spawnSync: the consumer must keep receiving (and timing) meanwhile.
  const req = await new Promise((resolve) => {
    const child = spawn(process.execPath, [cli, 'snapshot', 'public.big', '--chunk-size', String(chunkSize)], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (err += d));
    child.on('close', (status) => resolve({ status, out, err }));
  });
  if (req.status !== 0) throw new Error(`snapshot: ${req.out}${req.err}`);
  const id = Number(req.out.trim());
  await waitFor(async () => (await c.query('SELECT state FROM pgwarren.snapshots WHERE id = $1', [id])).rows[0].state === 'done', 3_600_000, 'snapshot done');
  const snapSeconds = (Date.now() - t0) / 1000;
  const loadEnd = loadavg()[0];
  measuring = false;
  clearInterval(sampler);
  await sleep(2000); // one status interval or so for the slot to report its position
  const wal = await c.query(
    "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint AS restart, pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint AS confirmed FROM pg_replication_slots WHERE slot_name = 'bench'",
  );
  writing = false;
  await streamer;
  await writer.end();

  daemon.kill('SIGTERM');
  await new Promise((r) => daemon.on('exit', r));
  await ch.deleteExchange(exchange);
  await ch.deleteExchange(`${exchange}.dead`);
  await conn.close();
  await c.query("SELECT pg_drop_replication_slot('bench')");
  await c.end();
  const sorted = latencies.sort((a, b) => a - b);
  const own = ownLatencies.sort((a, b) => a - b);
  return {
    chunkSize,
    rows: ROWS,
    reads,
    snapshotRowsPerS: Math.round(ROWS / snapSeconds),
    streamRowsPerS: Math.round(streamRate),
    ratio: +(ROWS / snapSeconds / streamRate).toFixed(2),
    peakRssMb: +Math.max(...samples.filter(Number.isFinite)).toFixed(1),
    walRetainedMb: +(Number(wal.rows[0].restart) / 1048576).toFixed(1),
    idleLatencyP50Ms: pct(idle, 0.5),
    idleLatencyP99Ms: pct(idle, 0.99),
    latencyP50Ms: pct(sorted, 0.5),
    latencyP99Ms: pct(sorted, 0.99),
    ownQueueP50Ms: pct(own, 0.5),
    ownQueueP99Ms: pct(own, 0.99),
    idleOwnQueueP50Ms: pct(idleOwn, 0.5),
    idleOwnQueueP99Ms: pct(idleOwn, 0.99),
    streamed: sorted.length,
    seconds: +snapSeconds.toFixed(1),
    load: `${loadStart.toFixed(1)} / ${loadEnd.toFixed(1)}`,
  };
}

// synchronous_commit on, as in production (and bench/run.mjs): the test cluster's default (off)
// leaves a commit in WAL buffers until the WAL writer's next round (wal_writer_delay, 200 ms), and
// a walsender sends only flushed WAL, so every latency would carry up to 200 ms of the cluster's own.
const cluster = await startCluster({ shared_buffers: '256MB', max_wal_size: '8GB', synchronous_commit: 'on' });
const results = [];
try {
  for (const size of CHUNK_SIZES) {
    log(`chunk size ${size}: ${ROWS} rows, ${STREAM_RATE} rows/s streaming`);
    results.push(await runOne(cluster, size));
    log(JSON.stringify(results.at(-1)));
  }
} finally {
  cluster.stop();
}
console.log('| chunk size | rows | snapshot rows/s | streaming rows/s (same run) | ratio | peak RSS MB | WAL retained at end MB | streamed change latency p50 / p99 ms | same, own queue | same without a snapshot | seconds | load avg start / end |');
console.log('|---|---|---|---|---|---|---|---|---|---|---|---|');
for (const r of results) {
  console.log(`| ${r.chunkSize} | ${r.rows} | ${r.snapshotRowsPerS} | ${r.streamRowsPerS} | ${r.ratio} | ${r.peakRssMb} | ${r.walRetainedMb} | ${r.latencyP50Ms} / ${r.latencyP99Ms} | ${r.ownQueueP50Ms} / ${r.ownQueueP99Ms} | ${r.idleLatencyP50Ms} / ${r.idleLatencyP99Ms} | ${r.seconds} | ${r.load} |`);
}
