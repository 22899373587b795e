// test-runner: long ~85 s (48 fault cells, four at a time)
/**
 * The fault matrix (issue 12, README "Delivery", "Failure handling"): a fault proxy (test/support/fault-proxy.ts) in
 * front of Postgres and in front of RabbitMQ, a fault applied in each lifecycle state, plus kill -9
 * at random points in each delivery mode. Every cell asserts, against the real servers:
 *   - no committed change lost: every inserted or updated row (table, op, key, value) committed
 *     while the daemon was meant to stream arrives at a queue bound to the exchange(s);
 *   - first deliveries in commit order per table: per queue, dedupe by event id, then the (commit
 *     LSN, seq) of each table's events only grows;
 *   - recovery after the fault is removed (the changes written after it arrive within RECOVER_MS,
 *     the same process still running), or, for the permanent faults, exit 3 within PERMANENT_MS;
 *   - SIGTERM -> exit 0 within PGWARREN_SHUTDOWN_TIMEOUT (2 s here) + 5 s.
 * Each cell has its own database, slot, publication, exchange and queues, and its own proxies, so
 * cells run concurrently (describe concurrency 4).
 *
 * Modes (fault-proxy): refuse = at connecting, the listening socket is closed (ECONNREFUSED, on a
 * port whose number contains "403"); while streaming, live connections are cut and new ones closed at
 * once. blackhole = live connections go silent for good (their server side is closed), new ones are
 * accepted and never answered. freeze = nothing forwarded either way, bytes held, then resumed.
 * cut = live connections destroyed. midframe = the next chunk from the server is forwarded only up to
 * a few bytes, then the connection is destroyed (at connecting: every connection's first chunk while
 * the fault lasts). slow = every chunk delayed (100 ms, 512-byte pieces).
 *
 * | state          | side     | modes                                        | expected outcome                                               |
 * |----------------|----------|----------------------------------------------|----------------------------------------------------------------|
 * | connecting     | postgres | refuse blackhole freeze midframe slow        | retries; streams once lifted; all rows, in order; SIGTERM -> 0 |
 * | connecting     | broker   | refuse blackhole freeze midframe slow        | same                                                           |
 * | connecting     | both     | blackhole, SIGTERM during the fault          | exit 0 within the bound; a new daemon then delivers everything |
 * | connecting     | postgres | wrong password 28P01, pg_hba reject 28000, missing database 3D000 | exit 3 within PERMANENT_MS    |
 * | connecting     | broker   | ACCESS_REFUSED (wrong password)              | exit 3 within PERMANENT_MS                                     |
 * | slot creation  | -        | SIGTERM while creation waits on an open tx   | exit 0 within the bound; a new daemon creates it and streams   |
 * | slot creation  | postgres | cut freeze blackhole                         | creation retried; streams once the tx ends; all rows; SIGTERM  |
 * | slot creation  | broker   | cut                                          | same                                                           |
 * | streaming      | postgres | refuse blackhole freeze cut midframe slow    | recovers (slow: delivers while slowed); all rows; SIGTERM -> 0 |
 * | streaming      | broker   | refuse blackhole freeze cut midframe slow    | same                                                           |
 * | draining       | broker   | freeze blackhole cut slow                    | SIGTERM with confirms outstanding -> exit 0 within the bound;  |
 * |                |          |                                              | a new daemon redelivers: nothing lost, order kept              |
 * | draining       | postgres | freeze blackhole (broker frozen: confirms held) | same                                                        |
 * | flood re-read  | -        | pass (divert + batch 10, threshold 2, buffer 3) | every diverted row once at least, per-table commit order    |
 * | flood re-read  | postgres | cut during the re-read                       | same, after a reconnect                                        |
 * | flood re-read  | broker   | midframe during the re-read                  | same                                                           |
 * | HA standby     | postgres | standby's path blackholed, primary kill -9   | standby takes over once lifted; all rows; SIGTERM -> 0         |
 * | HA standby     | postgres | primary's path cut                           | one of the two streams; all rows; both exit 0 on SIGTERM       |
 * | HA standby     | broker   | primary's broker refused and cut             | same                                                           |
 * | kill -9        | -        | batched (batch 20), divert (threshold 2), wal2json | 3 kills at random points of a steady workload; all rows, order |
 *
 * Left out as meaningless: refuse/blackhole on the broker while draining is covered by blackhole and
 * cut (a refused reconnect cannot happen while shutting down); midframe at slot creation (no server
 * bytes flow while creation waits); slow during slot creation or HA standby (nothing to slow).
 */
import { describe, test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import pg from 'pg';
import { createTestDatabase, urlFor, withAdmin, type TestDatabase } from '../support/pg.js';
import { createTestBroker, type Collector, type TestBroker } from '../support/amqp.js';
import { ports403, startFaultProxy, type FaultProxy } from '../support/fault-proxy.js';
import { setupAsOwner, start, type Daemon } from '../support/daemon.js';
import { testEnv, uniqueName } from '../support/env.js';
import { sleep, waitUntil } from '../support/wait.js';
import { parseLsn } from '../../src/source/lsn.js';

const SHUTDOWN_TIMEOUT_S = 2;
const STOP_BOUND_MS = (SHUTDOWN_TIMEOUT_S + 5) * 1000;
const RECOVER_MS = 45_000;
const PERMANENT_MS = 20_000;
const FAULT_MS = 3_000;
const CELL_TIMEOUT_MS = 180_000;

type Body = Record<string, any>;

/**
 * Short bounds so that every fault ends quickly. A silent broker is noticed after 2 to 3 heartbeats
 * (README "Failure handling"): 4 to 6 s here, not 20 to 30 s. The connect timeout stays above what
 * an open through the slow proxy takes (see SLOW).
 */
function daemonBaseEnv(): Record<string, string> {
  return {
    PGWARREN_STATUS_INTERVAL: '1',
    PGWARREN_RECONNECT_MAX_DELAY: '1',
    PGWARREN_SHUTDOWN_TIMEOUT: String(SHUTDOWN_TIMEOUT_S),
    PGWARREN_CONNECT_TIMEOUT: '5',
    PGWARREN_QUERY_TIMEOUT: '5',
    PGWARREN_BROKER_HEARTBEAT: '2',
    PGWARREN_LOG_LEVEL: 'info',
  };
}

// ---------------------------------------------------------------------------------------------
// The workload: rows in tables a and b, keys growing with commit order, updates now and then.

class Writer {
  private next = 1;
  private calls = 0;
  private readonly values = new Map<number, number>();
  /** `table:op:id:v` of every change committed and expected downstream. */
  readonly expected = new Set<string>();
  constructor(private readonly client: pg.Client) {}

  /** One transaction of `rows` inserts alternating a and b; every other call also updates a row of a. */
  async commit(rows = 3): Promise<void> {
    const stmts: string[] = [];
    const keys: string[] = [];
    for (let i = 0; i < rows; i++) {
      const id = this.next++;
      const table = id % 2 === 1 ? 'a' : 'b';
      stmts.push(`INSERT INTO ${table} VALUES (${id}, 0)`);
      this.values.set(id, 0);
      keys.push(`${table}:insert:${id}:0`);
    }
    if (++this.calls % 2 === 0) {
      const id = 1 + 2 * Math.floor(Math.random() * Math.floor((this.next - 1) / 2)); // an odd id: table a
      if (this.values.has(id)) {
        const v = this.values.get(id)! + 1;
        this.values.set(id, v);
        stmts.push(`UPDATE a SET v = ${v} WHERE id = ${id}`);
        keys.push(`a:update:${id}:${v}`);
      }
    }
    // One simple query: the transaction cannot interleave with anything else on the client.
    await this.client.query(`BEGIN; ${stmts.join('; ')}; COMMIT`);
    for (const k of keys) this.expected.add(k);
  }

  /** One transaction of inserts into the tables named, in that order (ids keep growing). */
  async commitPattern(tables: ReadonlyArray<'a' | 'b' | 'c'>): Promise<void> {
    const keys = tables.map((table) => {
      const id = this.next++;
      return { table, id };
    });
    await this.client.query(`BEGIN; ${keys.map((k) => `INSERT INTO ${k.table} VALUES (${k.id}, 0)`).join('; ')}; COMMIT`);
    for (const k of keys) this.expected.add(`${k.table}:insert:${k.id}:0`);
  }

  /** Commit small transactions every `gapMs` until the returned stop function is called. */
  steady(gapMs = 40, rows: () => number = () => 1 + Math.floor(Math.random() * 4)): () => Promise<void> {
    let stopping = false;
    const loop = (async () => {
      while (!stopping) {
        await this.commit(rows());
        await sleep(gapMs);
      }
    })();
    return async () => {
      stopping = true;
      await loop;
    };
  }
}

function flatten(c: Collector): Body[] {
  const out: Body[] = [];
  for (const m of c.messages) {
    const b = m.body;
    if (Array.isArray(b)) out.push(...(b as Body[]));
    else if (b && typeof b === 'object') out.push(b as Body);
  }
  return out;
}

const keyOf = (e: Body) => `${e.table}:${e.op}:${e.new?.id ?? e.old?.id}:${e.new?.v ?? e.old?.v}`;

// ---------------------------------------------------------------------------------------------
// A cell's world.

interface Rig {
  readonly db: TestDatabase;
  readonly broker: TestBroker;
  readonly slot: string;
  readonly pg: FaultProxy;
  readonly mq: FaultProxy;
  /** The daemon's environment, both connections through `pg` and `mq`. */
  readonly env: Record<string, string>;
  readonly queues: Collector[];
  readonly writer: Writer;
  /** Start a daemon; `via` replaces the proxies (a second instance with its own path). */
  start(extra?: Record<string, string>, via?: { pg: FaultProxy; mq: FaultProxy }): Promise<Daemon>;
  /** Extra proxies for a second instance, closed at cleanup. */
  proxies(): Promise<{ pg: FaultProxy; mq: FaultProxy }>;
  /** Wait until every expected change arrived; fails early when a daemon that should run exited. */
  waitAll(timeoutMs: number, watch: Daemon[]): Promise<void>;
  assertOrder(): void;
}

interface RigOptions {
  env?: Record<string, string>;
  divert?: boolean;
  plugin?: 'wal2json';
  /** Drop the slot `setup` made: the daemon creates it on its first start. */
  freshSlot?: boolean;
}

function tail(d: Daemon, lines = 20): string {
  return d
    .output()
    .split('\n')
    .slice(-lines)
    .map((l) => (l.length > 300 ? `${l.slice(0, 300)}...` : l))
    .join('\n');
}

async function rig(t: TestContext, prefix: string, opts: RigOptions = {}): Promise<Rig> {
  const cleanups: Array<() => Promise<unknown>> = [];
  t.after(async () => {
    for (const fn of cleanups.reverse()) await fn().catch((err) => console.error(`cleanup of ${prefix}: ${(err as Error).message}`));
  });
  const db = await createTestDatabase(prefix);
  cleanups.push(() => db.drop());
  await db.query('CREATE TABLE a (id int PRIMARY KEY, v int NOT NULL); CREATE TABLE b (id int PRIMARY KEY, v int NOT NULL); CREATE TABLE c (id int PRIMARY KEY, v int NOT NULL)');
  const broker = await createTestBroker(prefix);
  cleanups.push(() => broker.cleanup());
  await broker.declareExchange(broker.exchange, 'topic');
  const queues = [await broker.bindQueue('#')];
  const slot = uniqueName(prefix);
  const settings: Record<string, string> = {
    ...daemonBaseEnv(),
    PGWARREN_AMQP_URL: testEnv().amqpUrl,
    PGWARREN_SLOT: slot,
    PGWARREN_PUBLICATION: slot,
    PGWARREN_EXCHANGE: broker.exchange,
    PGWARREN_TABLES: 'public.a,public.b,public.c',
    ...(opts.plugin ? { PGWARREN_PLUGIN: opts.plugin } : {}),
    ...opts.env,
  };
  if (opts.divert) {
    const flood = uniqueName(`${prefix}-flood`, 'amqp');
    await broker.declareExchange(flood, 'topic');
    queues.push(await broker.bindQueue('#', flood));
    settings.PGWARREN_FLOOD_ACTION = 'divert';
    settings.PGWARREN_FLOOD_EXCHANGE = flood;
  }
  const roleEnv = await setupAsOwner(db, settings);
  if (opts.freshSlot) await withAdmin((c) => c.query('SELECT pg_drop_replication_slot($1)', [slot]));

  const pgTarget = new URL(testEnv().pgUrl);
  const mqTarget = new URL(testEnv().amqpUrl);
  const proxyPair = async () => {
    const pair = {
      pg: await startFaultProxy({ host: pgTarget.hostname, port: Number(pgTarget.port || 5432) }, { preferPorts: ports403() }),
      mq: await startFaultProxy({ host: mqTarget.hostname, port: Number(mqTarget.port || 5672) }, { preferPorts: ports403() }),
    };
    cleanups.push(() => pair.pg.close(), () => pair.mq.close());
    return pair;
  };
  const main = await proxyPair();
  const env = { ...roleEnv, PGWARREN_DATABASE_URL: main.pg.via(roleEnv.PGWARREN_DATABASE_URL!), PGWARREN_AMQP_URL: main.mq.via(testEnv().amqpUrl) };
  const writer = new Writer(db.client);
  const daemons: Daemon[] = [];
  // Daemons go first at cleanup (registered last): nothing may hold the slot while the database drops.
  cleanups.push(async () => {
    for (const d of daemons) d.kill('SIGKILL');
    await Promise.all(daemons.map((d) => d.exited));
  });

  const missing = () => {
    const seen = new Set<string>();
    for (const q of queues) for (const e of flatten(q)) seen.add(keyOf(e));
    return [...writer.expected].filter((k) => !seen.has(k));
  };

  return {
    db,
    broker,
    slot,
    pg: main.pg,
    mq: main.mq,
    env,
    queues,
    writer,
    async start(extra = {}, via) {
      const e = via
        ? { ...env, PGWARREN_DATABASE_URL: via.pg.via(roleEnv.PGWARREN_DATABASE_URL!), PGWARREN_AMQP_URL: via.mq.via(testEnv().amqpUrl) }
        : env;
      const d = await start({ ...e, ...extra });
      daemons.push(d);
      return d;
    },
    proxies: proxyPair,
    async waitAll(timeoutMs, watch) {
      let exited: Daemon | undefined;
      const codes = new Map<Daemon, number | null>();
      for (const d of watch) void d.exited.then((r) => codes.set(d, r.code));
      await waitUntil(
        () => {
          exited = watch.find((d) => codes.has(d));
          if (exited) return true;
          return missing().length === 0;
        },
        {
          timeoutMs,
          intervalMs: 200,
          message: () => {
            const m = missing();
            return `${m.length} of ${writer.expected.size} committed changes missing (e.g. ${m.slice(0, 5).join(', ')}); last daemon's log:\n${watch.length ? tail(watch[watch.length - 1]!) : ''}`;
          },
        },
      );
      if (exited) assert.fail(`the daemon exited (code ${codes.get(exited)}) while it should have been recovering; log:\n${tail(exited)}`);
    },
    assertOrder() {
      for (const q of queues) {
        const seen = new Set<string>();
        const last = new Map<string, { lsn: bigint; seq: number; id: string }>();
        for (const e of flatten(q)) {
          if (!['insert', 'update', 'delete'].includes(e.op) || seen.has(e.id)) continue;
          seen.add(e.id);
          const at = { lsn: parseLsn(e.tx.lsn), seq: Number(e.tx.seq), id: String(e.id) };
          const prev = last.get(e.table);
          if (prev && (at.lsn < prev.lsn || (at.lsn === prev.lsn && at.seq <= prev.seq))) {
            assert.fail(`first deliveries of table ${e.table} on ${q.queue} out of commit order: ${at.id} after ${prev.id}`);
          }
          last.set(e.table, at);
        }
      }
    },
  };
}

/** SIGTERM, then exit 0 within the bound (SIGKILL and fail otherwise). */
async function sigterm(d: Daemon, what: string): Promise<void> {
  let before: { code: number | null } | undefined;
  void d.exited.then((r) => (before ??= r));
  await sleep(0);
  if (before) assert.fail(`${what}: the daemon had already exited (code ${before.code}) before SIGTERM; log:\n${tail(d)}`);
  d.kill('SIGTERM');
  const r = await Promise.race([d.exited, sleep(STOP_BOUND_MS).then(() => null)]);
  if (!r) {
    d.kill('SIGKILL');
    await d.exited;
    assert.fail(`${what}: still running ${STOP_BOUND_MS} ms after SIGTERM (shutdown timeout ${SHUTDOWN_TIMEOUT_S} s + 5 s); log:\n${tail(d)}`);
  }
  assert.equal(r.code, 0, `${what}: exit code after SIGTERM; log:\n${tail(d)}`);
}

async function exits3(d: Daemon, what: string): Promise<void> {
  const r = await Promise.race([d.exited, sleep(PERMANENT_MS).then(() => null)]);
  if (!r) {
    d.kill('SIGKILL');
    await d.exited;
    assert.fail(`${what}: still running ${PERMANENT_MS} ms after start instead of exit 3; log:\n${tail(d)}`);
  }
  assert.equal(r.code, 3, `${what}: exit code; log:\n${tail(d)}`);
}

async function inflight(d: Daemon): Promise<number> {
  try {
    const text = await (await fetch(`http://127.0.0.1:${d.httpPort}/metrics`, { signal: AbortSignal.timeout(2000) })).text();
    const m = /^pgwarren_inflight_messages(?:\{[^}]*\})? (\d+(?:\.\d+)?)/m.exec(text);
    return m ? Number(m[1]) : 0;
  } catch {
    return 0;
  }
}

/** Streaming established: ready, and a first change went through. */
async function streaming(r: Rig, d: Daemon): Promise<void> {
  await d.waitReady(30_000);
  await r.writer.commit();
  await r.waitAll(30_000, [d]);
}

/** After recovery: changes committed now arrive, order holds, SIGTERM ends it cleanly. */
async function finish(r: Rig, daemons: Daemon[], what: string): Promise<void> {
  await r.writer.commit();
  await r.waitAll(RECOVER_MS, daemons);
  r.assertOrder();
  for (const d of daemons) await sigterm(d, what);
}

// ---------------------------------------------------------------------------------------------
// The cells.

type Side = 'postgres' | 'broker';
type Mode = 'refuse' | 'blackhole' | 'freeze' | 'cut' | 'midframe' | 'slow';
const proxyOf = (r: Rig, side: Side) => (side === 'postgres' ? r.pg : r.mq);
// Slow, not down: each round trip stays well inside the connect timeout (5 s), which covers the
// whole open sequence (TCP, AMQP handshake, channel, declarations: about ten round trips).
const SLOW = { delayMs: 100, chunkBytes: 512 };

async function connecting(t: TestContext, side: Side, mode: Exclude<Mode, 'cut'>): Promise<void> {
  const r = await rig(t, `c-${side.slice(0, 2)}-${mode}`);
  const p = proxyOf(r, side);
  if (mode === 'refuse') await p.down();
  else if (mode === 'blackhole') await p.blackhole();
  else if (mode === 'freeze') p.freeze();
  else if (mode === 'midframe') void p.cutMidFrame(5, { direction: 'toClient', every: true });
  else p.slow(SLOW);
  const d = await r.start();
  await r.writer.commit(); // committed while the daemon cannot connect: the slot keeps it
  // The fault lasts FAULT_MS from the daemon's first attempt through it (a closed port counts none).
  if (mode !== 'refuse') await waitUntil(() => p.accepted() > 0, { timeoutMs: 20_000, message: () => `the daemon never connected through the proxy; log:\n${tail(d)}` });
  else await d.waitForLog((l) => l.level !== undefined && l.level >= 40, 20_000);
  await sleep(FAULT_MS);
  if (mode === 'slow') {
    // Slow is not down: it must get through while slowed.
    await r.waitAll(RECOVER_MS, [d]);
  }
  await p.pass();
  await finish(r, [d], `connecting, ${side} ${mode}`);
}

async function connectingSigterm(t: TestContext, side: Side): Promise<void> {
  const r = await rig(t, `cs-${side.slice(0, 2)}`);
  const p = proxyOf(r, side);
  await p.blackhole();
  const d = await r.start();
  await waitUntil(() => p.accepted() > 0, { timeoutMs: 15_000, message: 'the daemon connects to the blackhole' });
  await sleep(1_000);
  await sigterm(d, `SIGTERM while connecting to a silent ${side}`);
  await p.pass();
  await r.writer.commit();
  const d2 = await r.start();
  await finish(r, [d2], 'the next daemon');
}

async function permanent(t: TestContext, kind: '28P01' | '28000' | '3D000' | 'ACCESS_REFUSED'): Promise<void> {
  const r = await rig(t, `p-${kind.toLowerCase()}`);
  const pgUrl = new URL(r.env.PGWARREN_DATABASE_URL!);
  const env: Record<string, string> = {};
  let hbaLine: string | undefined;
  if (kind === '28P01' || kind === '28000') {
    // The private cluster trusts everyone; this cell's own database gets a stricter rule, first.
    const role = decodeURIComponent(pgUrl.username);
    hbaLine = kind === '28P01' ? `host ${r.db.name} ${role} 127.0.0.1/32 scram-sha-256` : `host ${r.db.name} ${role} 127.0.0.1/32 reject`;
    const hba = join(testEnv().pgDatadir, 'pg_hba.conf');
    const add = () => writeFileSync(hba, `${hbaLine}\n${readFileSync(hba, 'utf8')}`);
    const remove = () => writeFileSync(hba, readFileSync(hba, 'utf8').split('\n').filter((l) => l !== hbaLine).join('\n'));
    add();
    t.after(async () => {
      remove();
      await withAdmin((c) => c.query('SELECT pg_reload_conf()'));
    });
    await withAdmin((c) => c.query('SELECT pg_reload_conf()'));
    await sleep(300); // the postmaster rereads pg_hba.conf on SIGHUP, asynchronously
    if (kind === '28P01') pgUrl.password = 'wrong-password';
    env.PGWARREN_DATABASE_URL = pgUrl.toString();
  } else if (kind === '3D000') {
    const u = new URL(urlFor(`${r.db.name}_missing`, decodeURIComponent(pgUrl.username), decodeURIComponent(pgUrl.password)));
    env.PGWARREN_DATABASE_URL = r.pg.via(u.toString());
  } else {
    const u = new URL(r.env.PGWARREN_AMQP_URL!);
    u.password = 'wrong-password';
    env.PGWARREN_AMQP_URL = u.toString();
  }
  const d = await r.start(env);
  await exits3(d, kind);
}

async function slotCreation(t: TestContext, variant: 'sigterm' | 'pg-cut' | 'pg-freeze' | 'pg-blackhole' | 'broker-cut'): Promise<void> {
  const r = await rig(t, `sc-${variant}`, { freshSlot: true });
  const blocker = new pg.Client({ connectionString: r.db.url });
  blocker.on('error', () => undefined);
  await blocker.connect();
  t.after(() => blocker.end().catch(() => undefined));
  await blocker.query('BEGIN');
  // An xid: slot creation (over SQL or the replication protocol) waits for this transaction to end.
  const blockerPid = (await blocker.query<{ pid: number }>('SELECT txid_current(), pg_backend_pid() AS pid')).rows[0]!.pid;
  const waiting = async () =>
    (
      await r.db.query<{ n: number }>(
        "SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock' AND wait_event = 'transactionid' AND pid <> $2",
        [r.db.name, blockerPid],
      )
    ).rows[0]!.n > 0;
  const d = await r.start();
  await waitUntil(waiting, { timeoutMs: 20_000, message: () => `slot creation never waited on the open transaction; log:\n${tail(d)}` });
  if (variant === 'sigterm') {
    await sleep(500);
    await sigterm(d, 'SIGTERM while slot creation waits');
    await blocker.query('COMMIT');
    const d2 = await r.start();
    await d2.waitReady(30_000);
    await finish(r, [d2], 'the next daemon');
    return;
  }
  if (variant === 'pg-cut') r.pg.cut();
  else if (variant === 'pg-freeze') r.pg.freeze();
  else if (variant === 'pg-blackhole') await r.pg.blackhole();
  else r.mq.cut();
  await sleep(FAULT_MS);
  await blocker.query('COMMIT');
  await r.pg.pass();
  await d.waitReady(RECOVER_MS);
  await finish(r, [d], `slot creation, ${variant}`);
}

async function streamingCell(t: TestContext, side: Side, mode: Mode): Promise<void> {
  const r = await rig(t, `s-${side.slice(0, 2)}-${mode}`);
  const p = proxyOf(r, side);
  const d = await r.start();
  await streaming(r, d);
  if (mode === 'refuse') {
    await p.refuse();
    p.cut();
  } else if (mode === 'blackhole') await p.blackhole();
  else if (mode === 'freeze') p.freeze();
  else if (mode === 'cut') assert.ok(p.cut() > 0, 'there was a live connection to cut');
  else if (mode === 'midframe') {
    const fired = p.cutMidFrame(7, { direction: 'toClient' });
    const stop = r.writer.steady(100);
    const ok = await Promise.race([fired.then(() => true), sleep(15_000).then(() => false)]);
    await stop();
    assert.ok(ok, 'a chunk from the server came through the armed proxy');
  } else p.slow(SLOW);
  for (let i = 0; i < 3; i++) {
    await r.writer.commit();
    await sleep(FAULT_MS / 3);
  }
  if (mode === 'slow') await r.waitAll(RECOVER_MS, [d]);
  await p.pass();
  await finish(r, [d], `streaming, ${side} ${mode}`);
}

async function draining(t: TestContext, side: Side, mode: 'freeze' | 'blackhole' | 'cut' | 'slow'): Promise<void> {
  const r = await rig(t, `d-${side.slice(0, 2)}-${mode}`);
  const d = await r.start();
  await streaming(r, d);
  // Confirms outstanding: the broker path holds them (or, slow, delays them past the shutdown timeout).
  if (side === 'postgres' || mode === 'freeze' || mode === 'cut') r.mq.freeze();
  else if (mode === 'blackhole') await r.mq.blackhole();
  else r.mq.slow({ delayMs: 4_000 });
  await r.writer.commit(5);
  await waitUntil(async () => (await inflight(d)) > 0, { timeoutMs: 15_000, message: () => `no confirm outstanding; log:\n${tail(d)}` });
  if (side === 'postgres') {
    if (mode === 'freeze') r.pg.freeze();
    else await r.pg.blackhole();
  }
  const stopped = sigterm(d, `draining, ${side} ${mode}`);
  if (side === 'broker' && mode === 'cut') {
    await sleep(300);
    r.mq.cut(); // the broker connection dies in the middle of the drain
  }
  await stopped;
  await r.pg.pass();
  await r.mq.pass();
  const d2 = await r.start();
  await finish(r, [d2], 'the next daemon');
}

const FLOOD_ENV = { PGWARREN_BATCH_MAX_EVENTS: '10', PGWARREN_FLOOD_THRESHOLD: '2', PGWARREN_FLOOD_BUFFER_EVENTS: '3' };

async function floodReread(t: TestContext, variant: 'pass' | 'pg-cut' | 'broker-midframe'): Promise<void> {
  const r = await rig(t, `f-${variant}`, { divert: true, env: FLOOD_ENV });
  const d = await r.start();
  await d.waitReady(30_000);
  const rereads = () => d.logs.filter((l) => typeof l.msg === 'string' && /again/.test(l.msg)).length;
  for (let round = 0; round < 6; round++) {
    const before = rereads();
    if (variant === 'broker-midframe') void r.mq.cutMidFrame(9, { direction: 'toServer' });
    // Two shapes, both read twice: rows of a and b alternating (both flood at their 3rd row, the
    // buffer of 3 overflows first); and a flooding at its 3rd row (diverted at once), c's rows
    // overflowing the buffer, b flooding after that while the guard only counts (issue 12 defects 1, 2).
    if (round % 2 === 0) await r.writer.commit(9);
    else await r.writer.commitPattern(['a', 'a', 'a', 'a', 'a', 'a', 'b', 'b', 'c', 'c', 'b']);
    await r.writer.commit(1);
    if (variant === 'pg-cut') {
      await waitUntil(() => rereads() > before, { timeoutMs: 15_000, message: () => `no re-read; log:\n${tail(d)}` });
      r.pg.cut();
    }
  }
  await sleep(1_000);
  r.mq.disarm();
  await finish(r, [d], `flood re-read, ${variant}`);
  assert.ok(rereads() > 0, 'a transaction was read twice');
}

async function standby(t: TestContext, variant: 'pg-blackhole-standby' | 'pg-cut-primary' | 'broker-refuse-primary'): Promise<void> {
  const r = await rig(t, `ha-${variant}`);
  const second = await r.proxies();
  const d1 = await r.start();
  await streaming(r, d1);
  const d2 = await r.start({}, second);
  await d2.waitForLog('standing by', 20_000);
  if (variant === 'pg-blackhole-standby') {
    await second.pg.blackhole();
    await sleep(500);
    d1.kill('SIGKILL');
    await d1.exited;
    for (let i = 0; i < 3; i++) {
      await r.writer.commit();
      await sleep(FAULT_MS / 3);
    }
    await second.pg.pass();
    await d2.waitReady(RECOVER_MS);
    await finish(r, [d2], 'the standby after takeover');
    return;
  }
  const stop = r.writer.steady(100);
  if (variant === 'pg-cut-primary') r.pg.cut();
  else {
    await r.mq.refuse();
    r.mq.cut();
  }
  await sleep(FAULT_MS);
  await r.pg.pass();
  await r.mq.pass();
  await stop();
  await finish(r, [d1, d2], `HA, ${variant}`);
}

async function kill9(t: TestContext, mode: 'batched' | 'divert' | 'wal2json'): Promise<void> {
  if (mode === 'wal2json' && !testEnv().wal2json) {
    t.skip('wal2json is not installed');
    return;
  }
  const opts: RigOptions =
    mode === 'batched'
      ? { env: { PGWARREN_BATCH_MAX_EVENTS: '20' } }
      : mode === 'divert'
        ? { divert: true, env: { PGWARREN_FLOOD_THRESHOLD: '2' } }
        : { plugin: 'wal2json' };
  const r = await rig(t, `k-${mode}`, opts);
  let d = await r.start();
  await streaming(r, d);
  const stop = r.writer.steady(30, () => 1 + Math.floor(Math.random() * 8));
  for (let i = 0; i < 3; i++) {
    await sleep(500 + Math.random() * 2_000);
    d.kill('SIGKILL');
    await d.exited;
    d = await r.start();
  }
  await sleep(1_000);
  await stop();
  await finish(r, [d], `kill -9, ${mode}`);
}

// ---------------------------------------------------------------------------------------------

interface Cell {
  readonly name: string;
  readonly run: (t: TestContext) => Promise<void>;
  /** A cell that still fails for want of a fix: it runs and reports, without failing the file. */
  readonly todo?: string;
}

const cells: Cell[] = [];
const sides: Side[] = ['postgres', 'broker'];
for (const side of sides) {
  for (const mode of ['refuse', 'blackhole', 'freeze', 'midframe', 'slow'] as const) {
    cells.push({ name: `connecting | ${side} | ${mode}`, run: (t) => connecting(t, side, mode) });
  }
  cells.push({ name: `connecting | ${side} | blackhole, SIGTERM during the fault`, run: (t) => connectingSigterm(t, side) });
}
for (const kind of ['28P01', '28000', '3D000', 'ACCESS_REFUSED'] as const) {
  cells.push({ name: `connecting | ${kind === 'ACCESS_REFUSED' ? 'broker' : 'postgres'} | permanent ${kind} -> exit 3`, run: (t) => permanent(t, kind) });
}
for (const variant of ['sigterm', 'pg-cut', 'pg-freeze', 'pg-blackhole', 'broker-cut'] as const) {
  cells.push({ name: `slot creation | ${variant}`, run: (t) => slotCreation(t, variant) });
}
for (const side of sides) {
  for (const mode of ['refuse', 'blackhole', 'freeze', 'cut', 'midframe', 'slow'] as const) {
    cells.push({ name: `streaming | ${side} | ${mode}`, run: (t) => streamingCell(t, side, mode) });
  }
}
for (const mode of ['freeze', 'blackhole', 'cut', 'slow'] as const) {
  cells.push({ name: `draining | broker | ${mode}`, run: (t) => draining(t, 'broker', mode) });
}
for (const mode of ['freeze', 'blackhole'] as const) {
  cells.push({ name: `draining | postgres | ${mode}`, run: (t) => draining(t, 'postgres', mode) });
}
for (const variant of ['pass', 'pg-cut', 'broker-midframe'] as const) {
  cells.push({ name: `flood re-read | ${variant}`, run: (t) => floodReread(t, variant) });
}
for (const variant of ['pg-blackhole-standby', 'pg-cut-primary', 'broker-refuse-primary'] as const) {
  cells.push({ name: `HA standby | ${variant}`, run: (t) => standby(t, variant) });
}
for (const mode of ['batched', 'divert', 'wal2json'] as const) {
  cells.push({ name: `kill -9 | ${mode}`, run: (t) => kill9(t, mode) });
}

// MATRIX_ONLY=<regexp> runs a subset while working on one cell.
const only = process.env.MATRIX_ONLY ? new RegExp(process.env.MATRIX_ONLY) : null;

describe('fault matrix', { concurrency: 4 }, () => {
  for (const cell of cells) {
    if (only && !only.test(cell.name)) continue;
    test(cell.name, { timeout: CELL_TIMEOUT_MS, todo: cell.todo }, (t) => cell.run(t));
  }
});
