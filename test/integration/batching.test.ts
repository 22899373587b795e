/**
 * Batched mode (PGWARREN_BATCH_MAX_EVENTS > 1) through real Postgres and RabbitMQ: batches are
 * JSON arrays with the `pgwarren-batch` header and the first event's id as messageId, bounded by
 * both limits, in order, split where the routing key changes and at commit; nothing is lost
 * across a kill -9; the flood guard's summarize and divert still work.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { type TestDatabase } from '../support/pg.js';
import { type Collector, type Received, type TestBroker } from '../support/amqp.js';
import { start, type Daemon } from '../support/daemon.js';
import { uniqueName } from '../support/env.js';
import { sleep, waitUntil } from '../support/wait.js';
import { scene, type After } from '../support/scene.js';

interface Setup {
  db: TestDatabase;
  broker: TestBroker;
  queue: Collector;
  env: Record<string, string>;
}

async function setup(t: After, prefix: string, env: Record<string, string>): Promise<Setup> {
  const s = await scene(t, prefix, {
    schema: 'CREATE TABLE orders (id int PRIMARY KEY, note text); CREATE TABLE items (id int PRIMARY KEY, qty int); INSERT INTO items SELECT g, 0 FROM generate_series(1, 50) g',
    env,
    asOwner: true,
  });
  return { ...s, queue: await s.queue() };
}

async function daemon(t: { after: (fn: () => Promise<unknown>) => void }, env: Record<string, string>): Promise<Daemon> {
  const d = await start(env);
  t.after(() => d.stop());
  await d.waitReady(30_000);
  return d;
}

/** The events of a batched message, checking the batch's own shape on the way. */
function eventsOf(m: Received): any[] {
  assert.ok(Array.isArray(m.body), `a batched message is a JSON array: ${m.content.toString().slice(0, 200)}`);
  assert.equal(m.properties.contentType, 'application/json');
  assert.equal(m.properties.headers?.['pgwarren-batch'], m.body.length, 'pgwarren-batch header = the number of events');
  assert.equal(m.properties.messageId, m.body[0].id, "messageId = the first event's id");
  assert.equal(m.properties.deliveryMode, 2);
  for (const e of m.body) {
    assert.equal(m.properties.type, e.op, 'one op per batch');
    assert.equal(m.properties.headers?.['pgwarren-table'], e.table, 'one table per batch');
    assert.equal(m.properties.headers?.['pgwarren-lsn'], e.tx.lsn, 'one transaction per batch');
    assert.equal(m.fields.routingKey, `${e.schema}.${e.table}.${e.op}`, 'one routing key per batch');
  }
  return m.body;
}

const allEvents = (q: Collector) => q.messages.flatMap(eventsOf);
const rowCount = (q: Collector) => q.messages.reduce((n, m) => n + (Array.isArray(m.body) ? m.body.length : 1), 0);

test('batches: arrays with the header, bounded by max events and max bytes, in order, split by routing key and commit', async (t) => {
  const s = await setup(t, 'batch', { PGWARREN_BATCH_MAX_EVENTS: '7', PGWARREN_BATCH_MAX_BYTES: '4096' });
  await daemon(t, s.env);
  // One transaction: 20 small inserts, 3 updates of another table, 12 inserts with ~300-byte
  // notes (the byte limit bites before the count limit), then a second transaction of 3 inserts.
  await s.db.query('BEGIN');
  await s.db.query("INSERT INTO orders SELECT g, 'n' || g FROM generate_series(1, 20) g");
  await s.db.query('UPDATE items SET qty = 1 WHERE id <= 3');
  await s.db.query("INSERT INTO orders SELECT g, repeat('x', 300) FROM generate_series(21, 32) g");
  await s.db.query('COMMIT');
  await s.db.query("INSERT INTO orders SELECT g, 'late' FROM generate_series(33, 35) g");
  await waitUntil(() => rowCount(s.queue) >= 38, { timeoutMs: 20_000, message: () => `${rowCount(s.queue)} of 38 events` });
  await sleep(300);

  const events = allEvents(s.queue);
  assert.equal(events.length, 38, 'every event exactly once');
  const first = events.slice(0, 35);
  assert.deepEqual(first.map((e) => e.tx.seq), [...Array(35).keys()], 'events in transaction order');
  assert.deepEqual(events.slice(35).map((e) => e.new.id), [33, 34, 35]);
  for (const m of s.queue.messages) {
    assert.ok(m.body.length <= 7, `at most 7 events per message, got ${m.body.length}`);
    assert.ok(m.content.length <= 4096 || m.body.length === 1, `at most 4096 bytes per batch, got ${m.content.length}`);
  }
  // Small inserts fill batches by count: 7 + 7 + 6 (the routing key changes after 20 rows).
  const sizes = s.queue.messages.map((m) => `${m.fields.routingKey}:${m.body.length}`);
  assert.deepEqual(sizes.slice(0, 4), ['public.orders.insert:7', 'public.orders.insert:7', 'public.orders.insert:6', 'public.items.update:3']);
  // The big rows are split by bytes (each event is ~650 bytes: 6 fit in 4096).
  const big = s.queue.messages.slice(4, -1);
  assert.ok(big.length >= 2, `the 12 big rows took several messages: ${sizes.join(' ')}`);
  assert.ok(big.every((m) => m.body.length < 7), 'the byte limit split them before the count limit');
  assert.equal(big.reduce((n, m) => n + m.body.length, 0), 12);
  // The next transaction starts a new batch even though the routing key is the same.
  const last = s.queue.messages.at(-1)!;
  assert.deepEqual(last.body.map((e: any) => e.new.id), [33, 34, 35]);
  assert.notEqual(last.body[0].tx.lsn, first[0].tx.lsn);
  // Every event inside keeps its own id.
  for (const e of events) assert.equal(e.id, `${e.tx.lsn}:${e.tx.seq}`);
});

test('batches: nothing lost across kill -9 mid-stream (duplicates allowed, repeated byte for byte)', async (t) => {
  const s = await setup(t, 'batchkill', { PGWARREN_BATCH_MAX_EVENTS: '50' });
  const total = 3000;
  let written = 0;
  const first = await daemon(t, s.env);
  const writer = (async () => {
    while (written < total) {
      await s.db.query("INSERT INTO orders SELECT g, 'k' FROM generate_series($1::int, $1::int + 99) g", [written + 1]);
      written += 100;
      await sleep(20);
    }
  })();
  for (let round = 0; round < 3; round++) {
    const d = round === 0 ? first : await daemon(t, s.env);
    await sleep(300 + Math.random() * 700);
    d.kill('SIGKILL');
    await d.exited;
  }
  await writer;
  await daemon(t, s.env);
  const ids = () => new Set(allEvents(s.queue).map((e) => e.new.id as number));
  await waitUntil(() => ids().size >= total, { timeoutMs: 60_000, message: () => `${ids().size} of ${total} rows arrived` });
  const seen = ids();
  for (let i = 1; i <= total; i++) assert.ok(seen.has(i), `row ${i} arrived`);
  const byId = new Map<string, string>();
  for (const m of s.queue.messages) {
    const prior = byId.get(m.properties.messageId);
    if (prior !== undefined) assert.equal(m.content.toString(), prior, 'a redelivered batch is identical');
    byId.set(m.properties.messageId, m.content.toString());
  }
});

test('batches with the flood guard: summarize sends the bulk event, divert batches the flooded rows to the flood exchange', async (t) => {
  await t.test('summarize', async (t) => {
    const s = await setup(t, 'batchsum', { PGWARREN_BATCH_MAX_EVENTS: '10', PGWARREN_FLOOD_THRESHOLD: '5' });
    await daemon(t, s.env);
    await s.db.query('BEGIN');
    await s.db.query("INSERT INTO orders VALUES (1, 'a'), (2, 'b')");
    await s.db.query('UPDATE items SET qty = qty + 1 WHERE id <= 10');
    await s.db.query("INSERT INTO orders VALUES (3, 'c')");
    await s.db.query('COMMIT');
    await s.db.query("INSERT INTO orders VALUES (4, 'after')");
    await waitUntil(() => rowCount(s.queue) >= 5, { timeoutMs: 20_000, message: () => `${rowCount(s.queue)} of 5 events` });
    await sleep(300);
    const summary = allEvents(s.queue).map((e) => `${e.table}:${e.op}:${e.new?.id ?? ''}`);
    assert.deepEqual(summary, ['orders:insert:1', 'orders:insert:2', 'orders:insert:3', 'items:bulk:', 'orders:insert:4']);
    assert.deepEqual(s.queue.messages.map((m) => m.body.length), [3, 1, 1], 'held rows batch together; the bulk event and the next transaction stand alone');
    const bulk = s.queue.messages[1]!;
    assert.equal(bulk.fields.routingKey, 'public.items.bulk');
    assert.equal(bulk.body[0].counts.update, 10);
  });

  await t.test('divert', async (t) => {
    const s = await setup(t, 'batchdiv', { PGWARREN_BATCH_MAX_EVENTS: '4', PGWARREN_FLOOD_THRESHOLD: '5', PGWARREN_FLOOD_ACTION: 'divert' });
    const floodExchange = uniqueName('batchdivfl', 'amqp');
    await s.broker.declareExchange(floodExchange, 'topic');
    const flooded = await s.broker.bindQueue('#', floodExchange);
    await daemon(t, { ...s.env, PGWARREN_FLOOD_EXCHANGE: floodExchange });
    await s.db.query('BEGIN');
    await s.db.query("INSERT INTO orders VALUES (1, 'a'), (2, 'b')");
    await s.db.query('UPDATE items SET qty = qty + 1 WHERE id <= 10');
    await s.db.query("INSERT INTO orders VALUES (3, 'c')");
    await s.db.query('COMMIT');
    await waitUntil(() => rowCount(flooded) >= 10 && rowCount(s.queue) >= 3, {
      timeoutMs: 20_000,
      message: () => `${rowCount(flooded)} of 10 diverted, ${rowCount(s.queue)} of 3 normal`,
    });
    await sleep(300);
    const diverted = allEvents(flooded);
    assert.deepEqual(diverted.map((e) => e.new.id), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 'diverted rows in order, each once');
    assert.ok(flooded.messages.every((m) => m.body.length <= 4));
    assert.ok(flooded.messages.length >= 3, 'the diverted rows were batched by the count limit');
    assert.deepEqual(allEvents(s.queue).map((e) => e.new.id), [1, 2, 3]);
  });
});

test('batch-max-events 1 (the default) sends one plain event per message, without the batch header', async (t) => {
  const s = await setup(t, 'batchone', {});
  await daemon(t, s.env);
  await s.db.query("INSERT INTO orders SELECT g, 'x' FROM generate_series(1, 3) g");
  await s.queue.waitForCount(3, 20_000);
  for (const m of s.queue.messages) {
    assert.ok(!Array.isArray(m.body));
    assert.equal(m.properties.messageId, m.body.id);
    assert.equal(m.properties.headers?.['pgwarren-batch'], undefined);
    assert.deepEqual(Object.keys(m.properties.headers ?? {}).sort(), ['pgwarren-lsn', 'pgwarren-op', 'pgwarren-schema', 'pgwarren-table', 'pgwarren-xid']);
  }
});
