#!/usr/bin/env node
/**
 * The performance bench (issue 7): `npm run bench`. Starts a private Postgres cluster with
 * wal_level=logical (scripts/pg-cluster.mjs), uses RabbitMQ at AMQP_URL (default
 * amqp://guest:guest@127.0.0.1:5672) with its own exchanges and exclusive queues, runs each
 * scenario `--runs` times (default 3) and prints one table of medians. Every ratio compares
 * figures measured in the same run, on the same machine, with the same message size.
 *
 * Scenarios (--scenarios throughput,latency,memory):
 *   throughput  200,000 row inserts in 2,000 transactions, committed while the daemon is stopped;
 *               then the daemon is started and timed from streaming (/readyz 200) until a consumer
 *               draining the queue has every row (each message is confirmed before that, and the
 *               consumer sees it after the broker routed it). Baselines of the same run:
 *                 - raw amqplib: one confirm channel publishing the same number of messages of the
 *                   same size (the mean body size pgwarren produced) and the same properties
 *                   (persistent, mandatory, messageId, timestamp, type, appId, the five headers),
 *                   waiting for drain when publish() says so, to the last confirm, with the same
 *                   kind of consumer draining its queue;
 *                 - pg_recvlogical: Postgres decoding the same WAL (a second slot created at the
 *                   same point, same publication) to a file: the decode limit.
 *               Run once per batch mode (--batch 1,200: PGWARREN_BATCH_MAX_EVENTS values).
 *   latency     a steady 1,000 rows/s (10-row transactions every 10 ms) for --latency-seconds
 *               (default 60); commit-to-confirm p50/p99/max from the daemon's histogram
 *               pgwarren_commit_to_confirm_seconds (scraped before and after; one observation per
 *               transaction, when its last message is confirmed), plus the exact commit-to-consumer
 *               distribution the bench measures itself (event tx.commit_time -> message received).
 *   stream      the stream sink (PGWARREN_SINK=stream, one event per message): the same rows as the
 *               throughput scenario, timed from streaming until the daemon counts every event
 *               confirmed by the stream (pgwarren_events_published_total). In the same run:
 *                 - a raw stream publisher with the same client (rabbitmq-stream-js-client), a
 *                   named producer with deduplication like pgwarren's, the same number of messages
 *                   of the same size with the same properties and the same window of unconfirmed
 *                   messages (10,000), to its last confirm, publishing with the client's basicSend;
 *                 - the same raw publisher writing its frames with pgwarren's own encoder
 *                   (src/sink/stream/frame.ts, the same bytes), as the sink does: the stricter
 *                   baseline, whose ratio is the cost of everything the sink does besides
 *                   encoding and writing (decoding, events, the pipeline, confirms);
 *                 - pgwarren's own per-row AMQP throughput (the throughput scenario without its
 *                   baselines), whose mean body size the raw stream publisher uses.
 *               Targets (issue 15): >= 0.9x the raw stream publisher, >= 3x per-row AMQP, peak RSS
 *               <= 150 MB. Needs the stream plugin (STREAM_URL, default
 *               rabbitmq-stream://guest:guest@127.0.0.1:5552/).
 *   memory      peak and final RSS (sampled every 100 ms from /proc) across the throughput
 *               scenario and across one 1,000,000-row transaction (INSERT, flood action pass,
 *               so every row is published: the worst case).
 *
 *   shaping     the throughput scenario once per --shaping variant (default none,gzip,br,transform):
 *               PGWARREN_COMPRESSION gzip / br, or an identity PGWARREN_TRANSFORM (examples'
 *               shape: parse, return the event); rows/s and mean body bytes per message of each.
 *
 * Usage: npm run bench -- [--runs 3] [--scenarios throughput,latency,memory,shaping,stream] [--batch 1,200]
 *        [--shaping none,gzip,br,transform]
 *        [--rows 200000] [--txs 2000] [--latency-seconds 60] [--big-rows 1000000]
 * BENCH_NODE_ARGS passes node flags to the daemon (e.g. "--cpu-prof --cpu-prof-dir=/tmp/prof").
 * The daemon runs with MALLOC_ARENA_MAX=2, as the Docker image and `npm start` run it; set
 * MALLOC_ARENA_MAX in the bench's environment to measure another value.
 */
import { spawn, execFileSync } from 'node:child_process';
import { readFileSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { join } from 'node:path';
import { tmpdir, cpus, totalmem } from 'node:os';
import pg from 'pg';
import amqp from 'amqplib';
import { startCluster, freePort } from '../scripts/pg-cluster.mjs';

const argv = process.argv.slice(2);
const arg = (name, dflt) => {
  const i = argv.indexOf(`--${name}`);
  return i >= 0 && argv[i + 1] !== undefined ? argv[i + 1] : dflt;
};
const RUNS = Number(arg('runs', 3));
const SCENARIOS = arg('scenarios', 'throughput,latency,memory,stream').split(',');
const BATCHES = arg('batch', '1,200').split(',').map(Number);
const ROWS = Number(arg('rows', 200_000));
const TXS = Number(arg('txs', 2_000));
const LATENCY_S = Number(arg('latency-seconds', 60));
const BIG_ROWS = Number(arg('big-rows', 1_000_000));
const SHAPING = arg('shaping', 'none,gzip,br,transform').split(',');
const AMQP_URL = process.env.AMQP_URL ?? 'amqp://guest:guest@127.0.0.1:5672';
const STREAM_URL = process.env.STREAM_URL ?? 'rabbitmq-stream://guest:guest@127.0.0.1:5552/';
const cli = fileURLToPath(new URL('../dist/cli.js', import.meta.url));
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const log = (s) => process.stderr.write(`[bench] ${s}\n`);
const median = (xs) => {
  const s = xs.filter(Number.isFinite).sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
const quantile = (sorted, q) => (sorted.length ? sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))] : NaN);

function rssMb(pid) {
  try {
    return Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))[1]) / 1024;
  } catch {
    return NaN;
  }
}

async function waitFor(fn, timeoutMs, what, stepMs = 20) {
  const deadline = Date.now() + timeoutMs;
  while (!(await fn())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(stepMs);
  }
}

const TABLE_DDL = `CREATE TABLE items (
  id bigint PRIMARY KEY, account int NOT NULL, name text NOT NULL, amount numeric(12,2) NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(), active boolean NOT NULL DEFAULT true)`;
const insertSql = (from, to) =>
  `INSERT INTO items (id, account, name, amount) SELECT g, g % 1000, 'item number ' || g, (g % 100000) / 100.0 FROM generate_series(${from}, ${to}) g`;

class Bench {
  constructor(cluster, amqpConn) {
    this.cluster = cluster;
    this.amqpConn = amqpConn;
    this.n = 0;
    /** Every exchange this bench declared, deleted again at the end even after a failure. */
    this.exchanges = new Set();
  }

  async cleanupBroker() {
    const ch = await this.amqpConn.createChannel();
    ch.on('error', () => undefined);
    for (const name of this.exchanges) {
      await ch.deleteExchange(name).catch(() => undefined);
      await ch.deleteExchange(`${name}.dead`).catch(() => undefined);
    }
    await ch.close().catch(() => undefined);
  }

  /** A fresh database with the table, the publication and `slots` created now (same WAL point). */
  async database(slots) {
    const db = `bench_${process.pid}_${++this.n}`;
    const admin = new pg.Client({ connectionString: this.cluster.url });
    await admin.connect();
    await admin.query(`CREATE DATABASE ${db}`);
    await admin.end();
    const url = `postgres://postgres@127.0.0.1:${this.cluster.port}/${db}`;
    const c = new pg.Client({ connectionString: url });
    await c.connect();
    await c.query(TABLE_DDL);
    await c.query('CREATE PUBLICATION bench FOR TABLE items');
    // pgwarren streams from its publication and the keyless companion (slot-admin.ts); both must
    // exist before the slot, or decoding WAL written before they did fails.
    await c.query("CREATE PUBLICATION bench_keyless WITH (publish = 'insert, truncate')");
    for (const s of slots) await c.query(`SELECT pg_create_logical_replication_slot($1, 'pgoutput')`, [s]);
    const cleanup = async () => {
      for (const s of slots) await c.query('SELECT pg_drop_replication_slot($1)', [s]).catch(() => undefined);
      await c.query('DROP TABLE items').catch(() => undefined);
      await c.end();
      const a = new pg.Client({ connectionString: this.cluster.url });
      await a.connect();
      await a.query(`DROP DATABASE IF EXISTS ${db}`).catch(() => undefined);
      await a.end();
    };
    return { db, url, client: c, cleanup };
  }

  /** An exchange with an exclusive queue bound to everything, drained by a noAck consumer. */
  async queue(name, onMessage) {
    this.exchanges.add(name);
    const ch = await this.amqpConn.createChannel();
    await ch.assertExchange(name, 'topic', { durable: true });
    const q = await ch.assertQueue('', { exclusive: true });
    await ch.bindQueue(q.queue, name, '#');
    await ch.consume(q.queue, (m) => m && onMessage(m), { noAck: true });
    return async () => {
      await ch.deleteQueue(q.queue).catch(() => undefined);
      await ch.deleteExchange(name).catch(() => undefined);
      await ch.deleteExchange(`${name}.dead`).catch(() => undefined);
      await ch.close().catch(() => undefined);
    };
  }

  async daemon(url, exchange, extraEnv = {}) {
    const httpPort = await freePort();
    const nodeArgs = (process.env.BENCH_NODE_ARGS ?? '').split(' ').filter(Boolean);
    const proc = spawn(process.execPath, [...nodeArgs, cli, 'run'], {
      env: {
        PATH: process.env.PATH, PGWARREN_DATABASE_URL: url, PGWARREN_AMQP_URL: AMQP_URL, PGWARREN_SLOT: 'bench',
        PGWARREN_PUBLICATION: 'bench', PGWARREN_EXCHANGE: exchange, PGWARREN_HTTP_PORT: String(httpPort),
        // Its own dead-letter exchange, deleted with the bench's exchanges: the default (pgwarren.dead) would outlive the bench.
        PGWARREN_DEAD_LETTER_EXCHANGE: `${exchange}.dead`,
        PGWARREN_LOG_LEVEL: 'warn', PGWARREN_PUBLICATION_SYNC_INTERVAL: '0',
        MALLOC_ARENA_MAX: '2', // as the Docker image and `npm start` run it; override from the environment
        ...Object.fromEntries(Object.entries(process.env).filter(([k]) => k.startsWith('PGWARREN_') || k.startsWith('MALLOC_') || k === 'NODE_OPTIONS')),
        ...extraEnv,
      },
      stdio: ['ignore', 'inherit', 'inherit'],
    });
    const exited = new Promise((r) => proc.on('exit', r));
    const samples = [];
    const sampler = setInterval(() => samples.push(rssMb(proc.pid)), 100);
    const metrics = async () => (await fetch(`http://127.0.0.1:${httpPort}/metrics`)).text();
    await waitFor(async () => (await fetch(`http://127.0.0.1:${httpPort}/readyz`).catch(() => null))?.status === 200, 60_000, 'daemon ready', 10);
    const readyAt = performance.now();
    return {
      readyAt,
      metrics,
      samples,
      async stop() {
        proc.kill('SIGTERM');
        await exited;
        clearInterval(sampler);
        const s = samples.filter(Number.isFinite);
        return { peakRss: Math.max(...s), finalRss: s.at(-1) };
      },
    };
  }

  async recvlogical(url, slot, endpos) {
    const dir = mkdtempSync(join(tmpdir(), 'pgwarren-bench-'));
    const file = join(dir, 'decoded.out');
    const t0 = performance.now();
    execFileSync(join(this.cluster.bindir, 'pg_recvlogical'), [
      '-d', url, '-S', 'baseline', '--start', '-f', file, '-o', 'proto_version=1', '-o', 'publication_names=bench',
      '--endpos', endpos, '--no-loop',
    ], { stdio: 'ignore' });
    const s = (performance.now() - t0) / 1000;
    const bytes = statSync(file).size;
    rmSync(dir, { recursive: true, force: true });
    return { s, bytes };
  }

  /** Raw amqplib confirm-channel publisher: `count` persistent messages of `size` bytes. */
  async rawPublisher(count, size) {
    const exchange = `pgwarren-bench-raw-${process.pid}`;
    let received = 0;
    let doneAt = 0;
    const drop = await this.queue(exchange, () => {
      if (++received === count) doneAt = performance.now();
    });
    const conn = await amqp.connect(AMQP_URL);
    const ch = await conn.createConfirmChannel();
    const body = Buffer.alloc(size, 'x');
    const t0 = performance.now();
    let confirmed = 0;
    let lastConfirm = 0;
    const allConfirmed = new Promise((resolve, reject) => {
      let i = 0;
      const onConfirm = (err) => {
        if (err) return reject(err);
        if (++confirmed === count) {
          lastConfirm = performance.now();
          resolve();
        }
      };
      const pump = () => {
        while (i < count) {
          const id = `0/${(0x1000000 + i).toString(16).toUpperCase()}:${i % 100}`;
          const ok = ch.publish(exchange, 'public.items.insert', body, {
            messageId: id, contentType: 'application/json', persistent: true, timestamp: Math.floor(Date.now() / 1000),
            type: 'insert', appId: 'pgwarren', mandatory: true,
            headers: { 'pgwarren-schema': 'public', 'pgwarren-table': 'items', 'pgwarren-op': 'insert', 'pgwarren-lsn': id.split(':')[0], 'pgwarren-xid': 1000 + (i >> 7) },
          }, onConfirm);
          i++;
          if (!ok) return void ch.once('drain', pump);
        }
      };
      pump();
    });
    await allConfirmed;
    await waitFor(() => received >= count, 600_000, 'raw consumer');
    const s = (Math.max(lastConfirm, doneAt) - t0) / 1000;
    await conn.close();
    await drop();
    return { s, rate: count / s };
  }

  /** The daemon's extra environment of one --shaping variant. */
  shapingEnv(variant) {
    if (variant === 'gzip' || variant === 'br') return { PGWARREN_COMPRESSION: variant };
    if (variant === 'transform') {
      const dir = mkdtempSync(join(tmpdir(), 'pgwarren-bench-transform-'));
      const file = join(dir, 'identity.mjs');
      writeFileSync(file, 'export function transform(event) { return event; }\n');
      return { PGWARREN_TRANSFORM: file };
    }
    return {};
  }

  /** `baselines`: also measure pg_recvlogical and (batch 1, no extra env) the raw publisher in this run. */
  async throughput(batch, { baselines = true, extraEnv = {} } = {}) {
    const d = await this.database(baselines ? ['bench', 'baseline'] : ['bench']);
    const per = ROWS / TXS;
    for (let t = 0; t < TXS; t++) await d.client.query(insertSql(t * per + 1, (t + 1) * per));
    const endpos = (await d.client.query('SELECT pg_current_wal_lsn()::text AS lsn')).rows[0].lsn;
    const exchange = `pgwarren-bench-tp-${process.pid}`;
    let rows = 0;
    let messages = 0;
    let bodyBytes = 0;
    let doneAt = 0;
    let dupes = 0;
    const drop = await this.queue(exchange, (m) => {
      const n = Number(m.properties.headers?.['pgwarren-batch'] ?? 1);
      messages++;
      bodyBytes += m.content.length;
      rows += n;
      if (rows >= ROWS && !doneAt) doneAt = performance.now();
    });
    const daemon = await this.daemon(d.url, exchange, { PGWARREN_BATCH_MAX_EVENTS: String(batch), ...extraEnv });
    await waitFor(() => rows >= ROWS, 1_800_000, `${ROWS} rows through pgwarren`);
    const s = (doneAt - daemon.readyAt) / 1000;
    const mem = await daemon.stop();
    if (rows > ROWS) dupes = rows - ROWS;
    const decode = baselines ? await this.recvlogical(d.url, 'baseline', endpos) : { s: NaN };
    const meanBody = Math.round(bodyBytes / messages);
    let raw = null;
    if (batch === 1 && baselines && Object.keys(extraEnv).length === 0) raw = await this.rawPublisher(ROWS, meanBody);
    await drop();
    await d.cleanup();
    return { batch, s, rate: ROWS / s, messages, meanBody, dupes, decodeS: decode.s, decodeRate: ROWS / decode.s, raw, ...mem };
  }

  async latency() {
    const d = await this.database(['bench']);
    const exchange = `pgwarren-bench-lat-${process.pid}`;
    const lat = [];
    let rows = 0;
    const drop = await this.queue(exchange, (m) => {
      const now = Date.now();
      const ev = JSON.parse(m.content.toString('utf8'));
      for (const e of Array.isArray(ev) ? ev : [ev]) {
        rows++;
        // commit_time has microseconds; Date.parse keeps milliseconds.
        lat.push(now - Date.parse(e.tx.commit_time));
      }
    });
    const daemon = await this.daemon(d.url, exchange);
    const before = parseHistogram(await daemon.metrics());
    const perTx = 10;
    const total = LATENCY_S * 1000;
    const t0 = performance.now();
    let id = 0;
    let late = 0;
    for (let k = 0; k < total / 10; k++) {
      const due = t0 + k * 10;
      const wait = due - performance.now();
      if (wait > 0) await sleep(wait);
      else if (wait < -50) late++;
      await d.client.query(insertSql(id + 1, id + perTx));
      id += perTx;
    }
    const insertedS = (performance.now() - t0) / 1000;
    await waitFor(() => rows >= id, 120_000, 'latency rows');
    await sleep(300);
    const after = parseHistogram(await daemon.metrics());
    const mem = await daemon.stop();
    await drop();
    await d.cleanup();
    const h = diffHistogram(after, before);
    lat.sort((a, b) => a - b);
    return {
      rows: id,
      achievedRate: id / insertedS,
      late,
      hist: { count: h.count, p50: histQuantile(h, 0.5), p99: histQuantile(h, 0.99), maxBucket: histMaxBucket(h), mean: h.count ? h.sum / h.count : NaN },
      consumer: { p50: quantile(lat, 0.5) / 1000, p99: quantile(lat, 0.99) / 1000, max: lat.at(-1) / 1000 },
      ...mem,
    };
  }

  /** A stream client (with pgwarren's RabbitMQ 3.9/3.10 workaround, a no-op on 3.11+). */
  async streamClient() {
    const { installStreamCompat } = await import('../dist/sink/stream/compat.js');
    installStreamCompat();
    const { connect } = await import('rabbitmq-stream-js-client');
    const u = new URL(STREAM_URL);
    const port = Number(u.port || 5552);
    return connect({
      hostname: u.hostname, port, username: decodeURIComponent(u.username || 'guest'), password: decodeURIComponent(u.password || 'guest'),
      vhost: decodeURIComponent(u.pathname.slice(1)) || '/', addressResolver: { enabled: true, endpoint: { host: u.hostname, port } },
    });
  }

  /** pgwarren with the stream sink, one event per message: rows/s until all are confirmed. */
  async streamSink() {
    const d = await this.database(['bench']);
    const per = ROWS / TXS;
    for (let t = 0; t < TXS; t++) await d.client.query(insertSql(t * per + 1, (t + 1) * per));
    const stream = `pgwarren-bench-stream-${process.pid}`;
    const daemon = await this.daemon(d.url, 'unused', { PGWARREN_SINK: 'stream', PGWARREN_STREAM_URL: STREAM_URL, PGWARREN_STREAM: stream });
    const published = async () => {
      let n = 0;
      for (const line of (await daemon.metrics()).split('\n')) {
        const m = /^pgwarren_events_published_total\{[^}]*\} (\S+)/.exec(line);
        if (m) n += Number(m[1]);
      }
      return n;
    };
    let doneAt = 0;
    await waitFor(async () => (await published()) >= ROWS && (doneAt = performance.now()), 1_800_000, `${ROWS} rows into the stream`, 50);
    const s = (doneAt - daemon.readyAt) / 1000;
    const mem = await daemon.stop();
    const client = await this.streamClient();
    await client.deleteStream({ stream }).catch(() => undefined);
    await closeStreamClient(client);
    await d.cleanup();
    return { s, rate: ROWS / s, ...mem };
  }

  /**
   * Raw stream publisher, same client and settings as pgwarren's sink: `count` messages of `size`
   * bytes. `frames`: encode the publish frames with pgwarren's own encoder (src/sink/stream/
   * frame.ts), as the sink does, instead of the client's basicSend: the same bytes, at the
   * sink's per-message cost, so the ratio against it is the cost of everything else pgwarren does.
   */
  async rawStreamPublisher(count, size, { frames = false, window = 10_000 } = {}) {
    const client = await this.streamClient();
    // A stream of its own each: a client whose close timed out may still hear about the last one.
    const stream = `pgwarren-bench-stream-raw-${process.pid}-${++this.n}`;
    await client.createStream({ stream, arguments: {} });
    if (frames) return this.rawFramePublisher(client, stream, count, size, window);
    // Framed as a careful basicSend user must (and pgwarren's sink did before it encoded its own
    // frames): the client's count limit out of the way, a flush before the queue outgrows 80 % of
    // the frame size (the client does not look at sizes), the queue counted empty after each turn.
    const producer = await client.declarePublisher({ stream, publisherRef: 'bench-raw', maxChunkLength: 100_000 });
    const budget = Math.floor(client.maxFrameSize * 0.8);
    let queued = 0;
    let resetScheduled = false;
    const body = Buffer.alloc(size, 'x');
    let confirmed = 0;
    let sent = 0n;
    let wake = null;
    const t0 = performance.now();
    const done = new Promise((resolve, reject) => {
      producer.on('publish_confirm', (err, ids) => {
        if (err !== null) return reject(new Error(`raw stream publish error ${err}`));
        confirmed += ids.length;
        if (wake) { const w = wake; wake = null; w(); }
        if (confirmed >= count) resolve();
      });
    });
    done.catch(() => wake?.());
    let last = await producer.getLastPublishingId();
    for (let i = 0; i < count; i++) {
      while (Number(sent) - confirmed >= window) await Promise.race([new Promise((r) => (wake = r)), done]);
      const id = `0/${(0x1000000 + i).toString(16).toUpperCase()}:${i % 100}`;
      if (producer.queue?.length === 0) queued = 0;
      if (queued + size + 1024 > budget && queued > 0) {
        void producer.flush();
        queued = 0;
      }
      queued += size + 1024;
      void producer.basicSend(++last, body, {
        messageProperties: { messageId: id, contentType: 'application/json', creationTime: new Date() },
        applicationProperties: {
          'pgwarren-schema': 'public', 'pgwarren-table': 'items', 'pgwarren-op': 'insert', 'pgwarren-lsn': id.split(':')[0],
          'pgwarren-xid': 1000 + (i >> 7), 'pgwarren-tx-index': String(i % 100), 'pgwarren-publishing-id': String(last),
        },
      });
      // After basicSend: runs after the client's own flush, which that call scheduled.
      if (!producer.queue && !resetScheduled) {
        resetScheduled = true;
        setImmediate(() => {
          resetScheduled = false;
          queued = 0;
        });
      }
      sent++;
    }
    await done;
    const s = (performance.now() - t0) / 1000;
    await client.deleteStream({ stream }).catch(() => undefined);
    await closeStreamClient(client);
    return { s, rate: count / s };
  }

  /** rawStreamPublisher with pgwarren's frame encoder: the messages the sink writes, nothing else. */
  async rawFramePublisher(client, stream, count, size, window) {
    const { PublishFrames } = await import('../dist/sink/stream/frame.js');
    const producer = await client.declarePublisher({ stream, publisherRef: 'bench-raw' });
    const connection = producer.connection;
    let failed = null;
    const frames = new PublishFrames(producer.publisherId, client.maxFrameSize, (frame) => {
      connection.send({ key: 2, toBuffer: () => frame }).catch((err) => failed?.(err));
    });
    let flushScheduled = false;
    const flush = () => {
      flushScheduled = false;
      frames.flush();
    };
    const body = Buffer.alloc(size, 'x');
    let confirmed = 0;
    let sent = 0;
    let wake = null;
    const t0 = performance.now();
    const done = new Promise((resolve, reject) => {
      failed = reject;
      producer.on('publish_confirm', (err, ids) => {
        if (err !== null) return reject(new Error(`raw stream publish error ${err}`));
        confirmed += ids.length;
        if (wake) { const w = wake; wake = null; w(); }
        if (confirmed >= count) resolve();
      });
    });
    done.catch(() => wake?.());
    let last = await producer.getLastPublishingId();
    for (let i = 0; i < count; i++) {
      while (sent - confirmed >= window) {
        await Promise.race([new Promise((r) => (wake = r)), done]);
      }
      const id = `0/${(0x1000000 + i).toString(16).toUpperCase()}:${i % 100}`;
      ++last;
      frames.add(last, {
        content: body, messageId: id, contentType: 'application/json', creationTimeMs: Date.now(),
        properties: { 'pgwarren-schema': 'public', 'pgwarren-table': 'items', 'pgwarren-op': 'insert', 'pgwarren-lsn': id.split(':')[0], 'pgwarren-xid': 1000 + (i >> 7) },
        more: ['pgwarren-tx-index', String(i % 100), 'pgwarren-publishing-id', String(last)],
      });
      if (!flushScheduled) {
        flushScheduled = true;
        setImmediate(flush);
      }
      sent++;
    }
    await done;
    const s = (performance.now() - t0) / 1000;
    await client.deleteStream({ stream }).catch(() => undefined);
    await closeStreamClient(client);
    return { s, rate: count / s };
  }

  async stream() {
    const amqpRun = await this.throughput(1, { baselines: false });
    const sink = await this.streamSink();
    const raw = await this.rawStreamPublisher(ROWS, amqpRun.meanBody);
    const rawFrames = await this.rawStreamPublisher(ROWS, amqpRun.meanBody, { frames: true });
    return { sink, raw, rawFrames, amqp: { rate: amqpRun.rate, meanBody: amqpRun.meanBody } };
  }

  async bigTransaction() {
    const d = await this.database(['bench']);
    const exchange = `pgwarren-bench-big-${process.pid}`;
    let rows = 0;
    const drop = await this.queue(exchange, (m) => {
      rows += Number(m.properties.headers?.['pgwarren-batch'] ?? 1);
    });
    const daemon = await this.daemon(d.url, exchange, { PGWARREN_FLOOD_ACTION: 'pass' });
    const t0 = performance.now();
    await d.client.query(insertSql(1, BIG_ROWS));
    await waitFor(() => rows >= BIG_ROWS, 1_800_000, 'big transaction rows', 100);
    const s = (performance.now() - t0) / 1000;
    const mem = await daemon.stop();
    await drop();
    await d.cleanup();
    return { rows: BIG_ROWS, s, ...mem };
  }
}

/** A polite close can wait forever for the broker (seen under load): give it a few seconds. */
async function closeStreamClient(client) {
  let timer;
  await Promise.race([client.close().catch(() => undefined), new Promise((r) => (timer = setTimeout(r, 5000)))]);
  clearTimeout(timer);
}

function parseHistogram(text) {
  const buckets = [];
  let sum = 0;
  let count = 0;
  for (const line of text.split('\n')) {
    let m = /^pgwarren_commit_to_confirm_seconds_bucket\{le="([^"]+)"\} (\S+)/.exec(line);
    if (m) buckets.push({ le: m[1] === '+Inf' ? Infinity : Number(m[1]), n: Number(m[2]) });
    m = /^pgwarren_commit_to_confirm_seconds_sum (\S+)/.exec(line);
    if (m) sum = Number(m[1]);
    m = /^pgwarren_commit_to_confirm_seconds_count (\S+)/.exec(line);
    if (m) count = Number(m[1]);
  }
  return { buckets, sum, count };
}
const diffHistogram = (a, b) => ({
  buckets: a.buckets.map((x, i) => ({ le: x.le, n: x.n - (b.buckets[i]?.n ?? 0) })),
  sum: a.sum - b.sum,
  count: a.count - b.count,
});
/** Linear interpolation inside the bucket holding the quantile (as Prometheus' histogram_quantile). */
function histQuantile(h, q) {
  const rank = q * h.count;
  let prevLe = 0;
  let prevN = 0;
  for (const b of h.buckets) {
    if (b.n >= rank) {
      if (b.le === Infinity) return prevLe;
      return prevLe + (b.le - prevLe) * ((rank - prevN) / Math.max(1, b.n - prevN));
    }
    prevLe = b.le;
    prevN = b.n;
  }
  return NaN;
}
/** Upper bound of the highest non-empty bucket: the histogram's word on the maximum. */
function histMaxBucket(h) {
  let prevN = 0;
  let max = 0;
  for (const b of h.buckets) {
    if (b.n > prevN) max = b.le;
    prevN = b.n;
  }
  return max;
}

const f = (x, d = 1) => (Number.isFinite(x) ? x.toFixed(d) : '–');
const ms = (s) => (Number.isFinite(s) ? (s * 1000).toFixed(1) : '–');

const cluster = await startCluster({ shared_buffers: '256MB', max_wal_size: '8GB', logical_decoding_work_mem: '64MB', synchronous_commit: 'on' });
// stop() is synchronous: the private cluster goes away even if the bench dies on an exception.
process.on('exit', () => cluster.stop());
const amqpConn = await amqp.connect(AMQP_URL);
amqpConn.on('error', (err) => log(`broker connection error: ${err.message}`));
const bench = new Bench(cluster, amqpConn);
const results = { throughput: new Map(), latency: [], memory: [], shaping: new Map(), stream: [] };
try {
  for (let run = 1; run <= RUNS; run++) {
    if (SCENARIOS.includes('throughput')) {
      for (const b of BATCHES) {
        log(`run ${run}: throughput, batch ${b}`);
        const r = await bench.throughput(b);
        log(JSON.stringify(r));
        if (!results.throughput.has(b)) results.throughput.set(b, []);
        results.throughput.get(b).push(r);
      }
    }
    if (SCENARIOS.includes('shaping')) {
      for (const v of SHAPING) {
        log(`run ${run}: shaping, ${v}`);
        const r = await bench.throughput(1, { extraEnv: bench.shapingEnv(v) });
        log(JSON.stringify(r));
        if (!results.shaping.has(v)) results.shaping.set(v, []);
        results.shaping.get(v).push(r);
      }
    }
    if (SCENARIOS.includes('latency')) {
      log(`run ${run}: latency, 1000 rows/s for ${LATENCY_S} s`);
      const r = await bench.latency();
      log(JSON.stringify(r));
      results.latency.push(r);
    }
    if (SCENARIOS.includes('stream')) {
      log(`run ${run}: stream sink vs raw stream publisher vs per-row AMQP`);
      const r = await bench.stream();
      log(JSON.stringify(r));
      results.stream.push(r);
    }
    if (SCENARIOS.includes('memory')) {
      log(`run ${run}: memory, one ${BIG_ROWS}-row transaction`);
      const r = await bench.bigTransaction();
      log(JSON.stringify(r));
      results.memory.push(r);
    }
  }
} finally {
  await bench.cleanupBroker().catch(() => undefined);
  await amqpConn.close().catch(() => undefined);
  cluster.stop();
}

const m = (rs, pick) => median(rs.map(pick));
console.log(`\nMachine: ${cpus().length} cores (${cpus()[0]?.model ?? '?'}), ${Math.round(totalmem() / 2 ** 30)} GiB, Node ${process.version}; daemon MALLOC_ARENA_MAX=${process.env.MALLOC_ARENA_MAX ?? 2}; medians of ${RUNS} run(s).\n`);
if (results.throughput.size) {
  console.log(`| throughput (${ROWS} rows, ${TXS} transactions) | rows/s | × raw amqplib | × pg_recvlogical decode | messages | mean body B | peak RSS MB | final RSS MB |`);
  console.log('|---|---|---|---|---|---|---|---|');
  const raws = results.throughput.get(1)?.map((r) => r.raw).filter(Boolean) ?? [];
  const rawRate = median(raws.map((r) => r.rate));
  const decodeRate = median([...results.throughput.values()].flat().map((r) => r.decodeRate));
  if (raws.length) console.log(`| raw amqplib confirm-channel publisher (baseline) | ${f(rawRate, 0)} | 1.00 | ${f(rawRate / decodeRate, 2)} | ${ROWS} | ${m(results.throughput.get(1), (r) => r.meanBody)} | – | – |`);
  console.log(`| pg_recvlogical decode to a file (baseline) | ${f(decodeRate, 0)} | ${f(decodeRate / rawRate, 2)} | 1.00 | – | – | – | – |`);
  for (const [b, rs] of results.throughput) {
    // Ratios per run (same-run baselines), then the median.
    const vsRaw = median(rs.map((r, i) => r.rate / (results.throughput.get(1)?.[i]?.raw?.rate ?? NaN)));
    const vsDecode = median(rs.map((r) => r.rate / r.decodeRate));
    console.log(`| pgwarren, batch-max-events ${b} | ${f(m(rs, (r) => r.rate), 0)} | ${f(vsRaw, 2)} | ${f(vsDecode, 2)} | ${m(rs, (r) => r.messages)} | ${m(rs, (r) => r.meanBody)} | ${f(m(rs, (r) => r.peakRss))} | ${f(m(rs, (r) => r.finalRss))} |`);
  }
  console.log('');
}
if (results.shaping.size) {
  console.log(`| shaping (${ROWS} rows, ${TXS} transactions, one event per message) | rows/s | × none | bytes per message |`);
  console.log('|---|---|---|---|');
  const none = results.shaping.get('none');
  for (const [v, rs] of results.shaping) {
    const vsNone = none ? median(rs.map((r, i) => r.rate / (none[i]?.rate ?? NaN))) : NaN;
    const label = v === 'none' ? 'no compression, no transform' : v === 'transform' ? 'identity PGWARREN_TRANSFORM' : `PGWARREN_COMPRESSION=${v}`;
    console.log(`| ${label} | ${f(m(rs, (r) => r.rate), 0)} | ${f(vsNone, 2)} | ${m(rs, (r) => r.meanBody)} |`);
  }
  console.log('');
}
if (results.latency.length) {
  const L = results.latency;
  console.log('| latency at 1,000 rows/s | p50 ms | p99 ms | max ms | transactions | achieved rows/s | peak RSS MB |');
  console.log('|---|---|---|---|---|---|---|');
  console.log(`| commit → confirm (daemon histogram, interpolated; max = highest bucket bound) | ${ms(m(L, (r) => r.hist.p50))} | ${ms(m(L, (r) => r.hist.p99))} | ≤ ${ms(m(L, (r) => r.hist.maxBucket))} | ${m(L, (r) => r.hist.count)} | ${f(m(L, (r) => r.achievedRate), 0)} | ${f(m(L, (r) => r.peakRss))} |`);
  console.log(`| commit → consumer received (exact, per row) | ${ms(m(L, (r) => r.consumer.p50))} | ${ms(m(L, (r) => r.consumer.p99))} | ${ms(m(L, (r) => r.consumer.max))} | – | – | – |`);
  console.log('');
}
if (results.stream.length) {
  const S = results.stream;
  console.log(`| stream sink (${ROWS} rows, ${TXS} transactions, one event per message) | rows/s | × raw stream publisher | × raw, pgwarren's frame encoder | × pgwarren per-row AMQP | peak RSS MB | final RSS MB |`);
  console.log('|---|---|---|---|---|---|---|');
  const fr = (r) => r.rawFrames?.rate ?? NaN;
  console.log(`| raw stream publisher, same client (basicSend), same messages (baseline) | ${f(m(S, (r) => r.raw.rate), 0)} | 1.00 | ${f(m(S, (r) => r.raw.rate / fr(r)), 2)} | ${f(m(S, (r) => r.raw.rate / r.amqp.rate), 2)} | – | – |`);
  console.log(`| raw stream publisher, same client, frames by pgwarren's encoder (baseline) | ${f(m(S, fr), 0)} | ${f(m(S, (r) => fr(r) / r.raw.rate), 2)} | 1.00 | ${f(m(S, (r) => fr(r) / r.amqp.rate), 2)} | – | – |`);
  console.log(`| pgwarren, per-row AMQP (same run) | ${f(m(S, (r) => r.amqp.rate), 0)} | ${f(m(S, (r) => r.amqp.rate / r.raw.rate), 2)} | ${f(m(S, (r) => r.amqp.rate / fr(r)), 2)} | 1.00 | – | – |`);
  console.log(`| pgwarren, PGWARREN_SINK=stream | ${f(m(S, (r) => r.sink.rate), 0)} | ${f(m(S, (r) => r.sink.rate / r.raw.rate), 2)} | ${f(m(S, (r) => r.sink.rate / fr(r)), 2)} | ${f(m(S, (r) => r.sink.rate / r.amqp.rate), 2)} | ${f(m(S, (r) => r.sink.peakRss))} | ${f(m(S, (r) => r.sink.finalRss))} |`);
  console.log('');
}
if (results.memory.length) {
  const M = results.memory;
  console.log(`| memory | peak RSS MB | final RSS MB | seconds |`);
  console.log('|---|---|---|---|');
  for (const [b, rs] of results.throughput) console.log(`| throughput scenario, batch-max-events ${b} | ${f(m(rs, (r) => r.peakRss))} | ${f(m(rs, (r) => r.finalRss))} | ${f(m(rs, (r) => r.s))} |`);
  console.log(`| one ${BIG_ROWS}-row transaction (flood action pass) | ${f(m(M, (r) => r.peakRss))} | ${f(m(M, (r) => r.finalRss))} | ${f(m(M, (r) => r.s))} |`);
}
// Everything is measured and printed: a stream client whose polite close timed out (closeStreamClient)
// may still hold a socket open, which would keep the bench alive.
process.exit(0);
