/**
 * The flood guard through real Postgres and RabbitMQ, with thresholds scaled down: each action,
 * the marker, mixed transactions, normal traffic after a flood, a transaction that outgrows the
 * buffer, and a kill -9 in the middle of a flood.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { slotInfo, type TestDatabase } from '../support/pg.js';
import { createTestBroker, type Collector, type TestBroker } from '../support/amqp.js';
import { start, type Daemon } from '../support/daemon.js';
import { testEnv, uniqueName } from '../support/env.js';
import { sleep, waitUntil } from '../support/wait.js';
import { scene, type After } from '../support/scene.js';
import { parseLsn } from '../../src/source/lsn.js';

interface Setup {
  db: TestDatabase;
  broker: TestBroker;
  queue: Collector;
  daemon: Daemon;
  slot: string;
  /** The daemon role's URL (the owner ran setup). */
  url: string;
}

async function setup(t: After, prefix: string, env: Record<string, string>): Promise<Setup> {
  const s = await scene(t, prefix, {
    schema:
      'CREATE TABLE orders (id int PRIMARY KEY, note text); CREATE TABLE items (id int PRIMARY KEY, qty int); CREATE TABLE extra (id int PRIMARY KEY); ' +
      'INSERT INTO items SELECT g, 0 FROM generate_series(1, 50) g',
    env: { PGWARREN_FLOOD_THRESHOLD: '5', ...env },
    asOwner: true,
  });
  const queue = await s.queue();
  const daemon = await s.daemon();
  return { db: s.db, broker: s.broker, queue, daemon, slot: s.slot, url: s.env.PGWARREN_DATABASE_URL! };
}

/** One transaction: 2 orders, 10 item updates (a flood at threshold 5), 1 more order. */
async function mixedFlood(db: TestDatabase): Promise<void> {
  await db.query('BEGIN');
  await db.query("INSERT INTO orders VALUES (1, 'a'), (2, 'b')");
  await db.query('UPDATE items SET qty = qty + 1 WHERE id <= 10');
  await db.query("INSERT INTO orders VALUES (3, 'c')");
  await db.query('COMMIT');
  await db.query("INSERT INTO orders VALUES (4, 'after')");
}

const summary = (q: Collector) => q.messages.map((m) => `${m.body.table}:${m.body.op}:${m.body.new?.id ?? m.body.old?.id ?? ''}`);
/** `summary` of the events, batched or not. */
const summary2 = (q: Collector) =>
  q.messages.flatMap((m) => (Array.isArray(m.body) ? m.body : [m.body])).map((e) => `${e.table}:${e.op}:${e.new?.id ?? e.old?.id ?? ''}`);

test('summarize: one bulk event after the transaction\'s other events; traffic after it flows', async (t) => {
  const s = await setup(t, 'fsum', {});
  await mixedFlood(s.db);
  await s.queue.waitForCount(5, 20_000);
  await sleep(300);
  assert.deepEqual(summary(s.queue), ['orders:insert:1', 'orders:insert:2', 'orders:insert:3', 'items:bulk:', 'orders:insert:4']);
  const [o1, , o3, bulk] = s.queue.messages;
  assert.deepEqual([o1!.body.tx.seq, o3!.body.tx.seq], [0, 12], 'seq counts the flooded rows too');
  assert.deepEqual(
    { ...bulk!.body, tx: undefined, source: undefined },
    { id: `${o1!.body.tx.lsn}:bulk:public.items`, op: 'bulk', schema: 'public', table: 'items', counts: { insert: 0, update: 10, delete: 0 }, reason: 'threshold', tx: undefined, source: undefined },
  );
  assert.equal(bulk!.body.tx.seq, 2, "the seq of the table's first change");
  assert.equal(bulk!.body.tx.lsn, o1!.body.tx.lsn);
  assert.equal(bulk!.fields.routingKey, 'public.items.bulk');
  assert.equal(bulk!.properties.type, 'bulk');
  assert.equal(bulk!.properties.messageId, bulk!.body.id);
  assert.deepEqual(Object.keys(bulk!.body), ['id', 'op', 'schema', 'table', 'counts', 'reason', 'tx', 'source']);
  const flood = s.daemon.logs.filter((l) => /^flood:/.test(String(l.msg)));
  assert.equal(flood.length, 1, 'each flood is logged once');
  assert.equal(flood[0]!.table, 'public.items');
  assert.equal(flood[0]!.action, 'summarize');
  const metrics = await (await fetch(`http://127.0.0.1:${s.daemon.httpPort}/metrics`)).text();
  assert.match(metrics, /^pgwarren_flood_transactions_total 1$/m);
  assert.match(metrics, /^pgwarren_events_filtered_total\{reason="flood"\} 10$/m);
  // The slot moves past the flood and the transaction after it.
  const last = lsnValue(s.queue.messages[4]!.body.tx.lsn);
  await waitUntil(async () => lsnValue((await slotInfo(s.db.name, s.slot))!.confirmedFlushLsn) > last, {
    timeoutMs: 20_000,
    message: 'the confirmed position passes the flood',
  });
});

test('drop: no events for the flooded table, logged and counted', async (t) => {
  const s = await setup(t, 'fdrop', { PGWARREN_FLOOD_ACTION: 'drop' });
  await mixedFlood(s.db);
  await s.queue.waitForCount(4, 20_000);
  await sleep(300);
  assert.deepEqual(summary(s.queue), ['orders:insert:1', 'orders:insert:2', 'orders:insert:3', 'orders:insert:4']);
  assert.ok(s.daemon.logs.some((l) => /^flood:/.test(String(l.msg)) && l.action === 'drop'));
});

test('divert: the flooded rows go to the flood exchange, in order', async (t) => {
  const floodExchange = uniqueName('fdiv-bulk', 'amqp');
  const broker = await createTestBroker('fdiv-x');
  t.after(() => broker.cleanup());
  await broker.declareExchange(floodExchange, 'topic');
  const diverted = await broker.bindQueue('#', floodExchange);
  const s = await setup(t, 'fdiv', { PGWARREN_FLOOD_ACTION: 'divert', PGWARREN_FLOOD_EXCHANGE: floodExchange });
  await mixedFlood(s.db);
  await s.queue.waitForCount(4, 20_000);
  await diverted.waitForCount(10, 20_000);
  await sleep(300);
  assert.deepEqual(summary(s.queue), ['orders:insert:1', 'orders:insert:2', 'orders:insert:3', 'orders:insert:4']);
  assert.deepEqual(diverted.messages.map((m) => m.body.new.id), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
  assert.deepEqual(diverted.messages.map((m) => m.body.tx.seq), [2, 3, 4, 5, 6, 7, 8, 9, 10, 11]);
  assert.equal(diverted.messages[0]!.fields.routingKey, 'public.items.update');
});

for (const batch of ['1', '10']) {
  test(`divert with a transaction that outgrows the buffer (batch ${batch}): every row once, each table in commit order`, async (t) => {
    const floodExchange = uniqueName(`fdivo${batch}-bulk`, 'amqp');
    const broker = await createTestBroker(`fdivo${batch}-x`);
    t.after(() => broker.cleanup());
    await broker.declareExchange(floodExchange, 'topic');
    const diverted = await broker.bindQueue('#', floodExchange);
    const s = await setup(t, `fdivo${batch}`, {
      PGWARREN_FLOOD_ACTION: 'divert',
      PGWARREN_FLOOD_EXCHANGE: floodExchange,
      PGWARREN_FLOOD_THRESHOLD: '2',
      PGWARREN_FLOOD_BUFFER_EVENTS: '3',
      PGWARREN_BATCH_MAX_EVENTS: batch,
    });
    await s.db.query('BEGIN');
    await s.db.query('UPDATE items SET qty = 7 WHERE id <= 6'); // floods at its third row: diverted at once
    await s.db.query("INSERT INTO orders VALUES (1, 'a'), (2, 'b')");
    await s.db.query('INSERT INTO extra VALUES (1), (2)'); // the buffer overflows here
    await s.db.query("INSERT INTO orders VALUES (3, 'c')"); // orders floods too, after the overflow
    await s.db.query('COMMIT');
    await s.db.query('INSERT INTO extra VALUES (3)');
    const events = (q: Collector) => q.messages.flatMap((m) => (Array.isArray(m.body) ? m.body : [m.body]));
    // The marker: the transaction after the flood arrived, so the flood's second read is done.
    await waitUntil(() => events(s.queue).some((e) => e.table === 'extra' && e.new.id === 3), { timeoutMs: 30_000, message: () => summary2(s.queue).join(' ') });
    // Everything diverted was confirmed before the marker was even read; give the consumer time
    // to see it (on failure, the assertions below say what is missing).
    await waitUntil(() => events(diverted).length >= 9, { timeoutMs: 5_000 }).catch(() => undefined);
    assert.ok(s.daemon.logs.some((l) => /reading an oversized transaction again/.test(String(l.msg))), 'the transaction was read twice');
    // First deliveries (a redelivery repeats an id) must be every flooded row, each table's in
    // commit order; a batch redelivered under the same messageId must be the same message.
    const seen = new Set<string>();
    const first: string[] = [];
    for (const e of events(diverted)) {
      if (seen.has(e.id)) continue;
      seen.add(e.id);
      first.push(`${e.table}:${e.new.id}`);
    }
    const ofTable = (table: string) => first.filter((k) => k.startsWith(`${table}:`));
    assert.deepEqual(ofTable('items'), ['items:1', 'items:2', 'items:3', 'items:4', 'items:5', 'items:6'], `items in commit order, none lost: ${first.join(' ')}`);
    assert.deepEqual(ofTable('orders'), ['orders:1', 'orders:2', 'orders:3'], `orders in commit order, none lost: ${first.join(' ')}`);
    assert.equal(events(diverted).length, 9, 'nothing diverted twice');
    const byMessageId = new Map<string, string>();
    for (const m of diverted.messages) {
      const id = String(m.properties.messageId);
      const body = m.content.toString('utf8');
      assert.equal(byMessageId.get(id) ?? body, body, `messageId ${id} always carries the same content`);
      byMessageId.set(id, body);
    }
    assert.deepEqual(summary2(s.queue), ['extra:insert:1', 'extra:insert:2', 'extra:insert:3']);
  });
}

test('pass: every row is published, the flood is still logged', async (t) => {
  const s = await setup(t, 'fpass', { PGWARREN_FLOOD_ACTION: 'pass' });
  await mixedFlood(s.db);
  await s.queue.waitForCount(14, 20_000);
  assert.equal(s.queue.messages.filter((m) => m.body.table === 'items').length, 10);
  assert.ok(s.daemon.logs.some((l) => /^flood:/.test(String(l.msg)) && l.action === 'pass'));
});

test('the marker floods every table of its transaction, whatever the counts (threshold 0)', async (t) => {
  const s = await setup(t, 'fmark', { PGWARREN_FLOOD_THRESHOLD: '0' });
  await s.db.query('BEGIN');
  await s.db.query("INSERT INTO orders VALUES (1, 'x')");
  await s.db.query("SELECT pg_logical_emit_message(true, 'pgwarren', 'bulk')");
  await s.db.query('UPDATE items SET qty = 9 WHERE id IN (1, 2)');
  await s.db.query('TRUNCATE extra');
  await s.db.query('COMMIT');
  await s.db.query("INSERT INTO orders VALUES (2, 'next')");
  await s.db.query('UPDATE items SET qty = 1 WHERE id <= 20'); // threshold 0: no flood
  await s.queue.waitForCount(24, 20_000);
  // A marker change: everything before it in commit order has arrived once it has.
  await s.db.query("INSERT INTO orders VALUES (3, 'marker')");
  await s.queue.waitForCount(25, 20_000);
  assert.equal(s.queue.messages.at(-1)!.body.new?.note, 'marker', 'nothing extra before the marker');
  const first = s.queue.messages.slice(0, 3).map((m) => [m.body.op, m.body.table, m.body.reason, m.body.counts]);
  assert.deepEqual(first, [
    ['truncate', 'extra', undefined, undefined],
    ['bulk', 'orders', 'marker', { insert: 1, update: 0, delete: 0 }],
    ['bulk', 'items', 'marker', { insert: 0, update: 2, delete: 0 }],
  ]);
  assert.equal(s.queue.messages[3]!.body.new.note, 'next');
  assert.equal(s.queue.messages.length, 25);
});

for (const [bound, env] of [
  ['events', { PGWARREN_FLOOD_BUFFER_EVENTS: '4' }],
  ['bytes', { PGWARREN_FLOOD_BUFFER_BYTES: '1024' }],
] as const) {
  test(`a transaction that outgrows the buffer (${bound} bound) is read again with its verdict: nothing lost or doubled`, async (t) => {
    const s = await setup(t, `fover${bound}`, env);
    await s.db.query('BEGIN');
    await s.db.query("INSERT INTO orders VALUES (1, 'a'), (2, 'b'), (3, 'c')");
    await s.db.query('INSERT INTO extra VALUES (1), (2), (3)');
    await s.db.query('UPDATE items SET qty = 5 WHERE id <= 8');
    await s.db.query('COMMIT');
    await s.db.query("INSERT INTO orders VALUES (4, 'after')");
    await s.queue.waitForCount(8, 30_000);
    await sleep(500);
    assert.deepEqual(summary(s.queue), ['orders:insert:1', 'orders:insert:2', 'orders:insert:3', 'extra:insert:1', 'extra:insert:2', 'extra:insert:3', 'items:bulk:', 'orders:insert:4']);
    assert.ok(s.daemon.logs.some((l) => /reading an oversized transaction again/.test(String(l.msg))));
  });
}

test('kill -9 in the middle of a flood, then restart: the same result as without the crash', async (t) => {
  const s = await setup(t, 'fkill', { PGWARREN_FLOOD_THRESHOLD: '100' });
  await s.db.query('INSERT INTO items SELECT g, 0 FROM generate_series(51, 30000) g');
  await s.queue.waitForCount(1, 30_000); // a flood of inserts: one bulk event
  const before = s.queue.messages.length;
  await s.db.query('BEGIN');
  await s.db.query("INSERT INTO orders VALUES (1, 'in flood tx')");
  await s.db.query('UPDATE items SET qty = qty + 1');
  await s.db.query('COMMIT');
  await s.db.query("INSERT INTO orders VALUES (2, 'after')");
  await sleep(150);
  s.daemon.kill('SIGKILL');
  await s.daemon.exited;
  const again = await start(envOf(s));
  t.after(() => again.stop());
  await waitUntil(() => s.queue.messages.some((m) => m.body.new?.note === 'after'), { timeoutMs: 60_000, message: () => summary(s.queue).join(' ') });
  await sleep(500);
  // Redeliveries (same id) are allowed, also of the earlier insert flood if its acknowledgement
  // had not reached Postgres before the kill; the distinct new events must be exactly these.
  const earlier = new Set(s.queue.messages.slice(0, before).map((m) => m.body.id));
  const fresh: string[] = [];
  const kinds: string[] = [];
  for (const m of s.queue.messages.slice(before)) {
    if (earlier.has(m.body.id) || fresh.includes(m.body.id)) continue;
    fresh.push(m.body.id);
    kinds.push(`${m.body.table}:${m.body.op}`);
  }
  assert.deepEqual(kinds, ['orders:insert', 'items:bulk', 'orders:insert'], `distinct events in order: ${fresh.join(' ')}`);
  const bulk = s.queue.messages.find((m) => m.body.op === 'bulk' && m.body.counts.update > 0)!;
  assert.deepEqual(bulk.body.counts, { insert: 0, update: 30000, delete: 0 });
});

const lsnValue = (lsn: string | null | undefined): bigint => (lsn ? parseLsn(lsn) : 0n);

function envOf(s: Setup): Record<string, string> {
  return {
    PGWARREN_DATABASE_URL: s.url,
    PGWARREN_AMQP_URL: testEnv().amqpUrl,
    PGWARREN_SLOT: s.slot,
    PGWARREN_PUBLICATION: s.slot,
    PGWARREN_EXCHANGE: s.broker.exchange,
    PGWARREN_FLOOD_THRESHOLD: '100',
  };
}
