// test-runner: long ~60 s (crash, outage and slot-position tests, one after another)
/**
 * The delivery promise through real Postgres and RabbitMQ (README "Events", "Delivery"): every committed change
 * arrives, in commit order, with the contract's fields and properties; crashes, broker outages and
 * shutdowns may repeat messages but never lose one, and the slot never passes an unconfirmed one.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { assertSlotNotPassed as assertNotPassed, lsnLe, lsnValue, slotInfo, type TestDatabase } from '../support/pg.js';
import { type TestBroker } from '../support/amqp.js';
import { startProxy } from '../support/proxy.js';
import { start, type Daemon } from '../support/daemon.js';
import { testEnv } from '../support/env.js';
import { sleep, waitUntil } from '../support/wait.js';
import { scene } from '../support/scene.js';
import { parseLsn } from '../../src/source/lsn.js';

interface Fixture {
  db: TestDatabase;
  broker: TestBroker;
  slot: string;
  env: Record<string, string>;
  cleanup(): Promise<void>;
}

/**
 * A database with an `orders` table, an exchange with a catch-all queue, and daemon settings. As
 * in production, the owner runs `setup` and the daemon runs as a role with REPLICATION and SELECT
 * only (README: Postgres prerequisites).
 */
async function fixture(prefix: string, extraEnv: Record<string, string> = {}): Promise<Fixture> {
  return scene(null, prefix, { schema: 'CREATE TABLE orders (id int PRIMARY KEY, status text NOT NULL, amount numeric)', env: extraEnv, exchangeType: null, asOwner: true });
}

type Body = Record<string, any>;

/** A proxy in front of the broker, and the AMQP URL that goes through it. */
async function brokerProxy(t: { after: (fn: () => Promise<unknown>) => void }) {
  const target = new URL(testEnv().amqpUrl);
  const proxy = await startProxy({ host: target.hostname, port: Number(target.port || 5672) });
  t.after(() => proxy.close());
  target.host = `127.0.0.1:${proxy.port}`;
  return { proxy, url: target.toString() };
}

function ids(bodies: Body[]): string[] {
  return bodies.map((b) => `${b.new?.id ?? b.old?.id}`);
}

describe('every operation arrives once, in commit order, with the contract fields', () => {
  let f: Fixture;
  let daemon: Daemon;
  before(async () => {
    f = await fixture('ops');
    await f.broker.declareExchange(f.broker.exchange, 'topic');
  });
  after(async () => {
    await daemon?.stop();
    await f.cleanup();
  });

  test('insert, update, delete and truncate', async () => {
    const queue = await f.broker.bindQueue('#');
    daemon = await start(f.env);
    await daemon.waitReady(30_000);

    await f.db.query("INSERT INTO orders VALUES (1, 'new', 10.50)");
    await f.db.query("UPDATE orders SET status = 'paid' WHERE id = 1");
    await f.db.query('BEGIN');
    await f.db.query("INSERT INTO orders VALUES (2, 'new', NULL)");
    await f.db.query('DELETE FROM orders WHERE id = 1');
    await f.db.query('COMMIT');
    await f.db.query('TRUNCATE orders');

    await queue.waitForCount(5, 20_000);
    // A marker change after the workload: events arrive in commit order, so a duplicate of any
    // earlier change would arrive before it.
    await f.db.query("INSERT INTO orders VALUES (99, 'marker', NULL)");
    await waitUntil(() => queue.messages.some((m) => m.body.new?.status === 'marker'), { timeoutMs: 20_000, message: 'the marker arrives' });
    assert.equal(queue.messages.length, 6, 'no duplicates without failures');
    assert.equal(queue.messages[5]!.body.new.status, 'marker');
    const [ins, upd, ins2, del, trunc] = queue.messages;
    const db = f.db.name;

    assert.equal(ins!.fields.routingKey, 'public.orders.insert');
    assert.deepEqual(
      { ...ins!.body, tx: undefined },
      {
        id: `${ins!.body.tx.lsn}:0`,
        op: 'insert',
        schema: 'public',
        table: 'orders',
        key: { id: 1 },
        old: null,
        new: { id: 1, status: 'new', amount: '10.50' },
        changed: null,
        unchanged_toast: [],
        tx: undefined,
        source: { name: 'pgwarren', db, slot: f.slot, plugin: 'pgoutput' },
      },
    );
    assert.match(ins!.body.tx.lsn, /^[0-9A-F]+\/[0-9A-F]+$/);
    assert.match(ins!.body.tx.commit_time, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$/);
    assert.equal(ins!.body.tx.seq, 0);
    assert.equal(typeof ins!.body.tx.xid, 'number');
    assert.deepEqual(Object.keys(ins!.body), ['id', 'op', 'schema', 'table', 'key', 'old', 'new', 'changed', 'unchanged_toast', 'tx', 'source']);

    // Default replica identity: an update that keeps its key has no old values.
    assert.equal(upd!.fields.routingKey, 'public.orders.update');
    assert.equal(upd!.body.op, 'update');
    assert.deepEqual(upd!.body.key, { id: 1 });
    assert.equal(upd!.body.old, null);
    assert.deepEqual(upd!.body.new, { id: 1, status: 'paid', amount: '10.50' });
    assert.equal(upd!.body.changed, null);

    // Two changes of one transaction: same LSN and xid, seq 0 and 1.
    assert.equal(ins2!.body.tx.lsn, del!.body.tx.lsn);
    assert.equal(ins2!.body.tx.xid, del!.body.tx.xid);
    assert.deepEqual([ins2!.body.tx.seq, del!.body.tx.seq], [0, 1]);
    assert.equal(del!.body.id, `${del!.body.tx.lsn}:1`);
    assert.equal(del!.fields.routingKey, 'public.orders.delete');
    assert.deepEqual(del!.body.key, { id: 1 });
    assert.deepEqual(del!.body.old, { id: 1 });
    assert.equal(del!.body.new, null);

    assert.equal(trunc!.fields.routingKey, 'public.orders.truncate');
    assert.equal(trunc!.body.op, 'truncate');
    assert.deepEqual([trunc!.body.key, trunc!.body.old, trunc!.body.new, trunc!.body.changed], [null, null, null, null]);

    // Commit order: LSNs never go backwards.
    const lsns = queue.messages.map((m) => parseLsn(m.body.tx.lsn));
    for (let i = 1; i < lsns.length; i++) assert.ok(lsns[i]! >= lsns[i - 1]!, 'commit order');

    // AMQP properties and headers (README "Events").
    const p = ins!.properties;
    assert.equal(p.messageId, ins!.body.id);
    assert.equal(p.contentType, 'application/json');
    assert.equal(p.deliveryMode, 2);
    assert.equal(p.type, 'insert');
    assert.equal(p.appId, 'pgwarren');
    assert.equal(p.timestamp, Math.floor(Date.parse(ins!.body.tx.commit_time) / 1000));
    assert.equal(p.headers!['pgwarren-schema'], 'public');
    assert.equal(p.headers!['pgwarren-table'], 'orders');
    assert.equal(p.headers!['pgwarren-op'], 'insert');
    assert.equal(p.headers!['pgwarren-lsn'], ins!.body.tx.lsn);
    assert.equal(Number(p.headers!['pgwarren-xid']), ins!.body.tx.xid);
  });
});

describe('failures never lose a committed change', () => {
  test('kill -9 at random moments during a steady workload, then restart', async (t) => {
    const f = await fixture('kill9');
    t.after(() => f.cleanup());
    await f.broker.declareExchange(f.broker.exchange, 'topic');
    const queue = await f.broker.bindQueue('#');
    const total = 600;
    let written = 0;
    // The slot must exist before the first change: nothing committed earlier is in it.
    const first = await start(f.env);
    t.after(() => first.stop());
    await first.waitForLog('streaming', 30_000);
    const writer = (async () => {
      while (written < total) {
        await f.db.query('INSERT INTO orders SELECT g, $2, g FROM generate_series($1::int, $1::int + 4) g', [written + 1, 'n']);
        written += 5;
        await sleep(10);
      }
    })();
    for (let round = 0; round < 4; round++) {
      const daemon = round === 0 ? first : await start(f.env);
      t.after(() => daemon.stop());
      await daemon.waitForLog('streaming', 30_000);
      await sleep(300 + Math.random() * 1200);
      daemon.kill('SIGKILL');
      await daemon.exited;
    }
    await writer;
    const last = await start(f.env);
    t.after(() => last.stop());
    await last.waitForLog('streaming', 30_000);
    await waitUntil(() => new Set(ids(queue.bodies())).size >= total, { timeoutMs: 60_000, message: () => `${new Set(ids(queue.bodies())).size} of ${total} rows arrived` });
    const seen = new Set(ids(queue.bodies()));
    for (let i = 1; i <= total; i++) assert.ok(seen.has(String(i)), `row ${i} arrived`);
    // Redeliveries repeat the first delivery byte for byte.
    const byId = new Map<string, string>();
    for (const m of queue.messages) {
      const prior = byId.get(m.properties.messageId);
      if (prior !== undefined) assert.equal(m.content.toString(), prior, 'redelivery is identical');
      byId.set(m.properties.messageId, m.content.toString());
    }
    assert.equal(await last.stop(), 0, `clean exit after SIGTERM; output:\n${last.output().slice(-3000)}`);
  });

  test('broker connection cut mid-stream: recovers without a restart, nothing missing', async (t) => {
    const f = await fixture('cut');
    t.after(() => f.cleanup());
    await f.broker.declareExchange(f.broker.exchange, 'topic');
    const queue = await f.broker.bindQueue('#');
    const { proxy, url: amqpUrl } = await brokerProxy(t);
    const daemon = await start({ ...f.env, PGWARREN_AMQP_URL: amqpUrl, PGWARREN_RECONNECT_MAX_DELAY: '1' });
    t.after(() => daemon.stop());
    await daemon.waitReady(30_000);
    const total = 400;
    let next = 1;
    const insert = async (n: number) => {
      for (const end = next + n; next < end; next++) await f.db.query("INSERT INTO orders VALUES ($1, 'x', 0)", [next]);
    };
    const arrived = () => new Set(ids(queue.bodies())).size;
    await insert(100);
    await waitUntil(() => arrived() >= 50, { timeoutMs: 20_000 });
    proxy.cut(); // mid-stream, while rows are still flowing
    await insert(100);
    await daemon.waitReady(30_000);
    await insert(100);
    proxy.refuse(); // broker unreachable for a while
    proxy.cut();
    await insert(50);
    await sleep(2_000);
    assert.equal((await fetch(`http://127.0.0.1:${daemon.httpPort}/readyz`)).status, 503, 'not ready while the broker is away');
    proxy.accept();
    await insert(50);
    await waitUntil(() => new Set(ids(queue.bodies())).size >= total, { timeoutMs: 60_000, message: () => `${new Set(ids(queue.bodies())).size} of ${total} arrived` });
    assert.equal(daemon.pid > 0 && (await Promise.race([daemon.exited.then(() => 'exited'), sleep(10).then(() => 'running')])), 'running');
    const reconnectLogs = daemon.logs.filter((l) => /session ended/.test(String(l.msg)));
    assert.ok(reconnectLogs.length >= 2, `it noticed the cuts and reconnected; output:\n${daemon.output().slice(-4000)}`);
    await daemon.waitReady(30_000);
  });

  test('confirmed_flush_lsn never passes a transaction the broker has not confirmed', async (t) => {
    const f = await fixture('hold');
    t.after(() => f.cleanup());
    await f.broker.declareExchange(f.broker.exchange, 'topic');
    const queue = await f.broker.bindQueue('#');
    const { proxy, url: amqpUrl } = await brokerProxy(t);
    const daemon = await start({ ...f.env, PGWARREN_AMQP_URL: amqpUrl, PGWARREN_RECONNECT_MAX_DELAY: '1', PGWARREN_STATUS_INTERVAL: '1' });
    t.after(() => daemon.stop());
    await daemon.waitReady(30_000);
    await f.db.query("INSERT INTO orders VALUES (1, 'before', 0)");
    await queue.waitForCount(1, 20_000);
    await waitUntil(async () => (await slotInfo(f.db.name, f.slot))!.active, { timeoutMs: 10_000 });

    // Broker unreachable: the daemon may read the change but must not acknowledge it.
    proxy.refuse();
    proxy.cut();
    await f.db.query("INSERT INTO orders VALUES (2, 'during', 0)");
    // Longer than the replication library's own 10 s acknowledgement timer, which must stay off.
    await sleep(12_000);
    const held = (await slotInfo(f.db.name, f.slot))!.confirmedFlushLsn;
    assert.equal(queue.messages.length, 1);

    proxy.accept();
    // Row 1 may arrive twice: its confirm can reach the broker but not yet the slot before the cut,
    // and the new session re-reads it (at-least-once). Wait for row 2 itself, not a count.
    await waitUntil(() => ids(queue.bodies()).includes('2'), { timeoutMs: 30_000, message: 'row 2 arrives once the broker is back' });
    const commit = assertNotPassed(held, queue.bodies(), 2, 'the transaction written while the broker was away').tx.lsn as string;
    await waitUntil(async () => !lsnLe((await slotInfo(f.db.name, f.slot))!.confirmedFlushLsn, commit), { timeoutMs: 15_000, message: 'slot advances once confirmed' });
  });

  test('received but unconfirmed changes are never acknowledged, even past the library timer', async (t) => {
    const f = await fixture('stall');
    t.after(() => f.cleanup());
    await f.broker.declareExchange(f.broker.exchange, 'topic');
    const queue = await f.broker.bindQueue('#');
    const { proxy, url: amqpUrl } = await brokerProxy(t);
    const daemon = await start({ ...f.env, PGWARREN_AMQP_URL: amqpUrl, PGWARREN_STATUS_INTERVAL: '1' });
    t.after(() => daemon.stop());
    await daemon.waitReady(30_000);
    await f.db.query("INSERT INTO orders VALUES (1, 'before', 0)");
    await queue.waitForCount(1, 20_000);

    // The broker connection stays open but silent: the daemon reads and publishes the change,
    // the confirm does not come back. pg-logical-replication's own timer would acknowledge the
    // received LSN after 10 s; pgwarren must not.
    proxy.stall();
    await f.db.query("INSERT INTO orders VALUES (2, 'during', 0)");
    await sleep(12_000);
    const held = await slotInfo(f.db.name, f.slot);
    assert.ok(held!.active, 'the stream stayed open (this is the stalled-confirm case, not a reconnect)');

    proxy.resume();
    await waitUntil(() => ids(queue.bodies()).includes('2'), { timeoutMs: 30_000, message: 'row 2 arrives once the broker answers again' });
    const commit = assertNotPassed(held!.confirmedFlushLsn, queue.bodies(), 2, 'the transaction whose confirm stalled').tx.lsn as string;
    await waitUntil(async () => !lsnLe((await slotInfo(f.db.name, f.slot))!.confirmedFlushLsn, commit), { timeoutMs: 15_000, message: 'slot advances once confirmed' });
  });

  test('the replication connection killed mid-stream: reconnects, nothing missing', async (t) => {
    const f = await fixture('pgcut', { PGWARREN_RECONNECT_MAX_DELAY: '1' });
    t.after(() => f.cleanup());
    await f.broker.declareExchange(f.broker.exchange, 'topic');
    const queue = await f.broker.bindQueue('#');
    const daemon = await start(f.env);
    t.after(() => daemon.stop());
    await daemon.waitReady(30_000);
    for (let i = 1; i <= 300; i++) {
      await f.db.query("INSERT INTO orders VALUES ($1, 'x', 0)", [i]);
      if (i % 100 === 0) {
        await f.db.query("SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1 AND active_pid IS NOT NULL", [f.slot]);
      }
    }
    await waitUntil(() => new Set(ids(queue.bodies())).size >= 300, { timeoutMs: 60_000, message: () => `${new Set(ids(queue.bodies())).size} of 300 arrived` });
    assert.ok(daemon.logs.some((l) => l.target === 'postgres' && /session ended/.test(String(l.msg))), 'the loss of Postgres was noticed');
  });

  test('two instances on one slot: one streams, the other takes over within seconds of a kill -9', async (t) => {
    const f = await fixture('ha');
    t.after(() => f.cleanup());
    await f.broker.declareExchange(f.broker.exchange, 'topic');
    const queue = await f.broker.bindQueue('#');
    const a = await start(f.env);
    t.after(() => a.stop());
    await a.waitReady(30_000);
    const b = await start(f.env);
    t.after(() => b.stop());
    await b.waitForLog('standing by', 30_000);
    assert.equal((await fetch(`http://127.0.0.1:${b.httpPort}/readyz`)).status, 503, 'the standby is not ready');
    await f.db.query("INSERT INTO orders SELECT g, 'a', 0 FROM generate_series(1, 100) g");
    await queue.waitForCount(100, 20_000);
    a.kill('SIGKILL');
    const killedAt = Date.now();
    await f.db.query("INSERT INTO orders SELECT g, 'b', 0 FROM generate_series(101, 200) g");
    await b.waitReady(30_000);
    const takeover = (Date.now() - killedAt) / 1000;
    assert.ok(takeover < 10, `took over in ${takeover} s`);
    await waitUntil(() => new Set(ids(queue.bodies())).size >= 200, { timeoutMs: 30_000, message: () => `${new Set(ids(queue.bodies())).size} of 200` });
  });

  test('an idle slot advances while other tables are busy', async (t) => {
    const f = await fixture('idle', { PGWARREN_TABLES: 'public.orders', PGWARREN_STATUS_INTERVAL: '1' });
    t.after(() => f.cleanup());
    await f.db.query('CREATE TABLE noise (id serial PRIMARY KEY, v text)');
    await f.broker.declareExchange(f.broker.exchange, 'topic');
    const daemon = await start(f.env);
    t.after(() => daemon.stop());
    await daemon.waitReady(30_000);
    const startLsn = (await slotInfo(f.db.name, f.slot))!.confirmedFlushLsn;
    for (let i = 0; i < 20; i++) await f.db.query("INSERT INTO noise (v) VALUES ('x')");
    const end = (await f.db.query<{ lsn: string }>('SELECT pg_current_wal_lsn()::text AS lsn')).rows[0]!.lsn;
    await waitUntil(async () => lsnLe(end, (await slotInfo(f.db.name, f.slot))!.confirmedFlushLsn), {
      timeoutMs: 30_000,
      message: async () => `slot stayed at ${(await slotInfo(f.db.name, f.slot))!.confirmedFlushLsn} (started ${startLsn}), server at ${end}`,
    });
  });

  test('SIGTERM drains, reports the confirmed position, exits 0 and keeps the slot', async (t) => {
    const f = await fixture('term');
    t.after(() => f.cleanup());
    await f.broker.declareExchange(f.broker.exchange, 'topic');
    const queue = await f.broker.bindQueue('#');
    const daemon = await start(f.env);
    t.after(() => daemon.stop());
    await daemon.waitReady(30_000);
    await f.db.query("INSERT INTO orders SELECT g, 'x', g FROM generate_series(1, 200) g");
    await queue.waitForCount(200, 20_000);
    const commitLsn = queue.messages.at(-1)!.body.tx.lsn as string;
    daemon.kill('SIGTERM');
    const exit = await daemon.exited;
    assert.equal(exit.code, 0);
    const slot = await slotInfo(f.db.name, f.slot);
    assert.ok(slot, 'the slot remains');
    assert.equal(slot!.active, false);
    // Everything was confirmed before the signal, so the slot is past that transaction's commit.
    assert.ok(lsnValue(slot!.confirmedFlushLsn) > lsnValue(commitLsn), `slot at ${slot!.confirmedFlushLsn} is past commit ${commitLsn}`);
    assert.ok(daemon.logs.some((l) => l.msg === 'stopped'), 'logs the stop with the confirmed position');
  });
});
