// test-runner: long ~58 s (silent peers timed out, slot creation held by an open transaction, a decoding stall)
/**
 * Failure handling (README "Failure handling", issue 12): every fault ends in a retry or in exit 3 with the
 * fix, classified by code; a silent peer is timed out, not waited on forever; SIGTERM is honoured
 * while connecting and while slot creation waits; a failing session reports its confirmed
 * position; silence while Postgres decodes is not a stall.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import pg from 'pg';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import net from 'node:net';
import { createTestDatabase, listSlots, slotInfo, withAdmin, type TestDatabase } from '../support/pg.js';
import { type TestBroker } from '../support/amqp.js';
import { startProxy, type Proxy } from '../support/proxy.js';
import { freePort, start, type Daemon } from '../support/daemon.js';
import { testEnv, uniqueName } from '../support/env.js';
import { sleep, waitUntil } from '../support/wait.js';
import { scene, type After } from '../support/scene.js';
import { parseLsn } from '../../src/source/lsn.js';


interface Fixture {
  db: TestDatabase;
  broker: TestBroker;
  slot: string;
  env: Record<string, string>;
}

/** Shutdown bound of README "Failure handling" with PGWARREN_SHUTDOWN_TIMEOUT=5: 5 s + 5 s. */
const SHUTDOWN_TIMEOUT = 5;
const SIGTERM_BOUND_MS = (SHUTDOWN_TIMEOUT + 5) * 1000;

async function fixture(t: After, prefix: string, extraEnv: Record<string, string> = {}): Promise<Fixture> {
  return scene(t, prefix, {
    schema: 'CREATE TABLE orders (id int PRIMARY KEY, status text NOT NULL)',
    env: { PGWARREN_SHUTDOWN_TIMEOUT: String(SHUTDOWN_TIMEOUT), PGWARREN_RECONNECT_MAX_DELAY: '1', ...extraEnv },
  });
}

async function proxyFor(t: After, url: string): Promise<{ proxy: Proxy; url: string }> {
  const target = new URL(url);
  const proxy = await startProxy({ host: target.hostname, port: Number(target.port || 5672) });
  t.after(() => proxy.close());
  target.host = `127.0.0.1:${proxy.port}`;
  return { proxy, url: target.toString() };
}

/**
 * A peer that accepts TCP and never says a word, nor closes (a stalled proxy is not enough: the
 * real server behind it gives up on a silent client after its own handshake timeout).
 */
async function blackhole(t: After): Promise<number> {
  const sockets = new Set<net.Socket>();
  const server = net.createServer((s) => {
    sockets.add(s);
    s.on('error', () => undefined).on('close', () => sockets.delete(s));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.after(async () => {
    for (const s of sockets) s.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });
  return (server.address() as net.AddressInfo).port;
}

/** SIGTERM, and the exit code if the daemon exited within the contract's bound (null: it had to be killed). */
async function sigterm(daemon: Daemon): Promise<number | null> {
  return daemon.stop(SIGTERM_BOUND_MS);
}

const ids = (d: { bodies(): any[] }) => new Set(d.bodies().map((b) => b.new?.id ?? b.old?.id));
const sessionEnded = (d: Daemon) => d.logs.filter((l) => /session ended/.test(String(l.msg)));

test('permanent faults exit 3 with the fix: wrong Postgres password (28P01), missing database (3D000), broker login refused (403), unknown vhost (530)', async (t) => {
  const f = await fixture(t, 'permanent');
  // The test cluster trusts everyone: a second database that asks for passwords (first match wins).
  const guarded = await createTestDatabase('permanent_pw');
  t.after(() => guarded.drop());
  const role = await guarded.daemonRole();
  const hba = join(testEnv().pgDatadir, 'pg_hba.conf');
  const original = readFileSync(hba, 'utf8');
  writeFileSync(hba, `host ${guarded.name} all 127.0.0.1/32 scram-sha-256\n${original}`);
  const reload = () => withAdmin((c) => c.query('SELECT pg_reload_conf()'));
  t.after(async () => {
    writeFileSync(hba, readFileSync(hba, 'utf8').split('\n').filter((line) => !line.includes(guarded.name)).join('\n'));
    await reload();
  });
  await reload();
  const wrongPassword = new URL(role.url);
  wrongPassword.password = 'not-the-password';
  const missingDb = new URL(f.db.url);
  missingDb.pathname = `/${f.db.name}_missing`;
  const amqp = new URL(testEnv().amqpUrl);
  const wrongBrokerPassword = new URL(amqp);
  wrongBrokerPassword.password = 'not-the-password';
  const unknownVhost = new URL(amqp);
  unknownVhost.pathname = `/${uniqueName('novhost', 'amqp')}`;
  const cases: [string, Record<string, string>, RegExp][] = [
    ['28P01', { PGWARREN_DATABASE_URL: wrongPassword.toString() }, /Postgres refused the password.*SQLSTATE 28P01.*Fix: check the user and password/],
    ['3D000', { PGWARREN_DATABASE_URL: missingDb.toString() }, /the database does not exist.*SQLSTATE 3D000/],
    ['403', { PGWARREN_AMQP_URL: wrongBrokerPassword.toString() }, /ACCESS_REFUSED.*Fix: check the user and password in PGWARREN_AMQP_URL/],
    ['530', { PGWARREN_AMQP_URL: unknownVhost.toString() }, /NOT_ALLOWED.*virtual host/],
  ];
  const problems = await Promise.all(
    cases.map(async ([code, env, fix]) => {
      const daemon = await start({ ...f.env, ...env });
      t.after(() => daemon.stop(2_000));
      // Before the fix a wrong password was retried forever: bound the wait, then look.
      const exited = await Promise.race([daemon.exited, sleep(30_000).then(() => null)]);
      const fatal = daemon.logs.find((l) => l.level === 60);
      if (!exited) return `${code}: still running after 30 s (${sessionEnded(daemon).length} retries)`;
      if (exited.code !== 3) return `${code}: exit ${exited.code}`;
      if (!fix.test(String(fatal?.msg))) return `${code}: the fix is not named: ${String(fatal?.msg)}`;
      if (sessionEnded(daemon).length > 0) return `${code}: retried before exiting`;
      return null;
    }),
  );
  assert.deepEqual(problems.filter(Boolean), []);
});

test('a refused connection is transient whatever its port number: retried, never exit 3 (ECONNREFUSED to a port like 40325)', async (t) => {
  const f = await fixture(t, 'refused');
  const port = await freePort(); // nothing listens there
  const refused = new URL(testEnv().amqpUrl);
  refused.host = `127.0.0.1:${port}`;
  const daemon = await start({ ...f.env, PGWARREN_AMQP_URL: refused.toString() });
  await waitUntil(() => sessionEnded(daemon).length >= 2, { timeoutMs: 30_000, message: () => `retries; output:\n${daemon.output().slice(-2000)}` });
  assert.ok(sessionEnded(daemon).every((l) => l.target === 'rabbitmq'));
  assert.equal(await sigterm(daemon), 0);
});

for (const side of ['postgres', 'rabbitmq'] as const) {
  test(`a ${side === 'postgres' ? 'Postgres' : 'broker'} that accepts TCP and never answers: the session times out and retries, SIGTERM exits 0 in bound; healthy again -> streams`, async (t) => {
    // Short bounds: what is asserted is that each silence ends in a timeout and a retry, not how
    // long the defaults take (README "Failure handling": a silent broker is noticed after 2 to 3
    // heartbeats, a silent replication stream after 6 status intervals).
    const f = await fixture(t, `silent_${side}`, {
      PGWARREN_STATUS_INTERVAL: '0.5',
      PGWARREN_CONNECT_TIMEOUT: '3',
      PGWARREN_QUERY_TIMEOUT: '3',
      PGWARREN_BROKER_HEARTBEAT: '1',
    });
    const queue = await f.broker.bindQueue('#');
    const { proxy, url } = await proxyFor(t, side === 'postgres' ? f.db.url : testEnv().amqpUrl);
    const env = { ...f.env, ...(side === 'postgres' ? { PGWARREN_DATABASE_URL: url } : { PGWARREN_AMQP_URL: url }) };
    const silent = new URL(side === 'postgres' ? f.db.url : testEnv().amqpUrl);
    silent.host = `127.0.0.1:${await blackhole(t)}`;

    // Blackholed from the start: timed out, retried (before the fix: a hang, no retry at all).
    const daemon = await start({ ...f.env, ...(side === 'postgres' ? { PGWARREN_DATABASE_URL: silent.toString() } : { PGWARREN_AMQP_URL: silent.toString() }) });
    const ended = await daemon.waitForLog((l) => /session ended/.test(String(l.msg)), 30_000);
    assert.equal(ended.target, side);
    assert.match(String(ended.err), /timeout|ETIMEDOUT|no answer within/i);
    // SIGTERM while the next connect to the silent peer is in progress (the backoff is <= 1 s, the
    // connect then lasts the 3 s connect timeout).
    await sleep(1_500);
    assert.equal(await sigterm(daemon), 0, `exit 0 within ${SIGTERM_BOUND_MS} ms; output:\n${daemon.output().slice(-3000)}`);

    // Silent while streaming, then healthy again: the session is replaced and streams again.
    const again = await start(env);
    t.after(() => again.stop());
    await again.waitReady(30_000);
    await f.db.query("INSERT INTO orders VALUES (1, 'before')");
    await queue.waitForCount(1, 20_000);
    proxy.stall();
    await f.db.query("INSERT INTO orders VALUES (2, 'while silent')");
    const before = sessionEnded(again).length;
    // The current connections are frozen too: the session ends (stall watch, heartbeat, or timeout).
    await waitUntil(() => sessionEnded(again).length > before, { timeoutMs: 60_000, message: () => `a reconnect; output:\n${again.output().slice(-3000)}` });
    proxy.cut();
    proxy.resume();
    await f.db.query("INSERT INTO orders VALUES (3, 'after')");
    await waitUntil(() => ids(queue).size === 3, { timeoutMs: 60_000, message: () => `rows ${[...ids(queue)]}; output:\n${again.output().slice(-3000)}` });
    assert.equal(await sigterm(again), 0);
  });
}

test('first start while slot creation waits for an open transaction: the wait is logged with the blocker, SIGTERM exits 0 in bound, no slot left', async (t) => {
  const f = await fixture(t, 'slotwait');
  // A transaction with an xid, left open: Postgres cannot start a new slot until it ends.
  const blocker = new pg.Client({ connectionString: f.db.url, application_name: 'the-blocker' });
  blocker.on('error', () => undefined);
  await blocker.connect();
  t.after(() => blocker.end().catch(() => undefined));
  await blocker.query('BEGIN');
  await blocker.query("INSERT INTO orders VALUES (1, 'held open')");
  const { rows } = await blocker.query<{ pid: number }>('SELECT pg_backend_pid() AS pid');

  const daemon = await start(f.env);
  // The daemon's catalog connection is blocked by the open transaction.
  await waitUntil(
    async () =>
      (
        await f.db.query('SELECT 1 FROM pg_stat_activity WHERE datname = $1 AND $2 = ANY (pg_blocking_pids(pid))', [f.db.name, rows[0]!.pid])
      ).rows.length > 0,
    { timeoutMs: 30_000, message: 'slot creation waits' },
  );
  const waiting = await daemon.waitForLog((l) => /creating slot .* waits for/.test(String(l.msg)), 30_000).catch((err: Error) => err);
  assert.equal(await sigterm(daemon), 0, `exit 0 within ${SIGTERM_BOUND_MS} ms; output:\n${daemon.output().slice(-3000)}`);
  assert.ok(!(waiting instanceof Error), String(waiting));
  assert.match(String(waiting.msg), new RegExp(`pid ${rows[0]!.pid} \\(user [^,]+, the-blocker, idle in transaction`));
  assert.ok(!daemon.logs.some((l) => /connected to broker/.test(String(l.msg))), 'it did not go on to connect');
  await blocker.query('ROLLBACK');
  // The creation was cancelled, not left to finish once the transaction ended.
  await sleep(500);
  assert.deepEqual(await listSlots(f.db.name), []);
});

test('broker cuts faster than any status report: every failing session reports its confirmed position, so duplicates stay bounded', async (t) => {
  const f = await fixture(t, 'cuts', { PGWARREN_STATUS_INTERVAL: '30', PGWARREN_RECONNECT_MAX_DELAY: '0.5' });
  const queue = await f.broker.bindQueue('#');
  const { proxy, url } = await proxyFor(t, testEnv().amqpUrl);
  const daemon = await start({ ...f.env, PGWARREN_AMQP_URL: url });
  t.after(() => daemon.stop());
  await daemon.waitReady(30_000);
  const start0 = (await slotInfo(f.db.name, f.slot))!.confirmedFlushLsn!;

  // Rows keep coming while the broker connection is cut every 400 ms, less than the 1 s status
  // tick: before the fix no session ever reported, and each one re-sent everything from the start.
  let next = 1;
  const writer = (async () => {
    for (let i = 0; i < 60; i++) {
      await f.db.query("INSERT INTO orders SELECT g, 'x' FROM generate_series($1::int, $1::int + 9) g", [next]);
      next += 10;
      await sleep(100);
    }
  })();
  const firstRows = new Set<number>();
  for (let cut = 0; cut < 15; cut++) {
    await sleep(400);
    proxy.cut();
    if (cut === 7) for (const id of ids(queue)) firstRows.add(id as number);
  }
  await writer;
  // Still inside the cutting: the slot has moved past rows delivered by the middle of it.
  const during = (await slotInfo(f.db.name, f.slot))!.confirmedFlushLsn!;
  assert.ok(parseLsn(during) > parseLsn(start0), `confirmed_flush_lsn advanced across failing sessions (${start0} -> ${during})`);
  const reported = daemon.logs.filter((l) => /confirmed position reported at session end/.test(String(l.msg)));
  assert.ok(reported.length > 0, 'failing sessions reported their position');

  await waitUntil(() => ids(queue).size === 600, { timeoutMs: 60_000, message: () => `rows ${ids(queue).size}/600` });
  const deliveries = queue.bodies().length;
  // Each session re-sends at most what was unconfirmed at its end; before the fix this grew with
  // every session (quadratically).
  assert.ok(deliveries < 600 * 3, `duplicates bounded: ${deliveries} deliveries for 600 rows`);
});

test('silence while Postgres decodes a large transaction of unselected tables is not a stall: no reconnect, the slot moves past it', async (t) => {
  // Half-second status interval: 6 intervals of silence (3 s) is shorter than Postgres takes here.
  const f = await fixture(t, 'decoding', { PGWARREN_STATUS_INTERVAL: '0.5', PGWARREN_TABLES: 'public.orders' });
  await f.db.query('CREATE TABLE bulk (id int, pad text)');
  // Spill the transaction to disk early, as a big one would on a busy server: decoding it at
  // commit then takes long enough for the silence to pass 6 status intervals.
  await f.db.query(`ALTER DATABASE ${f.db.name} SET logical_decoding_work_mem = '64kB'`);
  const queue = await f.broker.bindQueue('#');
  const daemon = await start(f.env);
  t.after(() => daemon.stop());
  await daemon.waitReady(30_000);
  await f.db.query("INSERT INTO orders VALUES (1, 'before')");
  await queue.waitForCount(1, 20_000);

  // One big transaction on a table outside the selection: Postgres decodes and filters it at
  // commit, sending nothing on the replication connection while it does. How long that silence
  // lasts depends on the machine: if the watch never had to ask (decoding was quicker than two
  // status intervals), the transaction doubles until it does, so the test cannot pass without
  // having walked the path it is about.
  const busy = () => daemon.logs.some((l) => /walsender is busy decoding: not a stall/.test(String(l.msg)));
  let marker = 2;
  for (let rowCount = 2_000_000; ; rowCount *= 2) {
    const { rows } = await f.db.query<{ lsn: string }>(
      `WITH ins AS (INSERT INTO bulk SELECT g, repeat('x', 40) FROM generate_series(1, $1::int) g RETURNING 1)
       SELECT pg_current_wal_lsn()::text AS lsn FROM (SELECT count(*) FROM ins) c`,
      [rowCount],
    );
    await f.db.query("INSERT INTO orders VALUES ($1, 'after')", [marker]);
    const want = marker;
    await waitUntil(() => ids(queue).has(want), { timeoutMs: 150_000, intervalMs: 500, message: () => `the marker row; output:\n${daemon.output().slice(-3000)}` });
    await waitUntil(async () => parseLsn((await slotInfo(f.db.name, f.slot))!.confirmedFlushLsn!) > parseLsn(rows[0]!.lsn), {
      timeoutMs: 20_000,
      message: 'the slot moved past the big transaction',
    });
    assert.deepEqual(sessionEnded(daemon).map((l) => l.msg), [], 'no reconnect while Postgres decoded');
    if (busy() || rowCount >= 8_000_000) break;
    await f.db.query('TRUNCATE bulk');
    marker++;
  }
  // The silence did happen (else this test proves nothing): the watch asked and heard "busy".
  assert.ok(busy(), 'the silence was long enough to matter');
  assert.equal(await sigterm(daemon), 0);
});
