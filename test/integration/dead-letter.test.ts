/**
 * README "Failure handling" through real Postgres and RabbitMQ: a change that can never be published as
 * configured (a routing key over 255 bytes, a body over the max message size) goes to the
 * dead-letter exchange with `pgwarren-error`, the changes after it arrive, and the slot moves past
 * both. And a broker that nacks (a `reject-publish` queue that is full): every change arrives,
 * first deliveries stay in order past the window that was on the wire, and a transaction bigger
 * than the queue completes once the consumer drains (README: Delivery).
 */
import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { slotInfo, type TestDatabase } from '../support/pg.js';
import { type TestBroker } from '../support/amqp.js';
import { start, type Daemon } from '../support/daemon.js';
import { uniqueName } from '../support/env.js';
import { waitUntil } from '../support/wait.js';
import { scene } from '../support/scene.js';
import { parseLsn } from '../../src/source/lsn.js';

const LONG = 'l'.repeat(63);

interface Fixture {
  db: TestDatabase;
  broker: TestBroker;
  slot: string;
  dead: string;
  env: Record<string, string>;
  cleanup(): Promise<void>;
}

async function fixture(prefix: string, extraEnv: Record<string, string> = {}): Promise<Fixture> {
  const dead = uniqueName(`${prefix}-dead`, 'amqp');
  const s = await scene(null, prefix, {
    schema: `CREATE TABLE "${LONG}" (id int PRIMARY KEY, note text); CREATE TABLE orders (id int PRIMARY KEY, note text)`,
    env: { PGWARREN_DEAD_LETTER_EXCHANGE: dead, ...extraEnv },
    exchangeType: null,
    asOwner: true,
  });
  s.broker.track(dead);
  return { ...s, dead };
}

/** Waits until the slot's confirmed position is past the commit at `lsn`. */
async function slotPasses(f: Fixture, lsn: string): Promise<void> {
  await waitUntil(
    async () => {
      const s = await slotInfo(f.db.name, f.slot);
      return s?.confirmedFlushLsn != null && parseLsn(s.confirmedFlushLsn) > parseLsn(lsn);
    },
    { timeoutMs: 30_000, message: () => `the slot did not move past ${lsn}` },
  );
}

async function metric(daemon: Daemon, line: RegExp): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${daemon.httpPort}/metrics`)).text();
  const m = line.exec(text);
  return m ? Number(m[1]) : 0;
}

describe('dead letters', () => {
  const cleanups: Array<() => Promise<unknown>> = [];
  after(async () => {
    for (const c of cleanups.reverse()) await c();
  });

  test('a routing key over 255 bytes is dead-lettered and the stream goes on past it', async () => {
    // {schema}.{table} x3 for a 63-byte table name: 6 + 3 * 64 + ... > 255 bytes; "orders" stays short.
    const f = await fixture('dlkey', { PGWARREN_ROUTING_KEY: '{db}.{schema}.{table}.{table}.{table}.{table}.{op}' });
    cleanups.push(() => f.cleanup());
    await f.broker.declareExchange(f.broker.exchange);
    await f.broker.declareExchange(f.dead);
    const deadQ = await f.broker.bindQueue('#', f.dead);
    const queue = await f.broker.bindQueue('#');
    const daemon = await start(f.env);
    cleanups.push(() => daemon.stop());
    await daemon.waitReady(30_000);

    await f.db.query(`INSERT INTO "${LONG}" VALUES (1, 'poison')`);
    await f.db.query(`INSERT INTO orders VALUES (2, 'after')`);
    await queue.waitForCount(1, 30_000);
    await deadQ.waitForCount(1, 30_000);
    const dead = deadQ.messages[0]!;
    assert.equal(dead.fields.routingKey, `public.${LONG}.insert`);
    assert.match(String(dead.properties.headers?.['pgwarren-error']), /routing key is \d+ bytes/);
    assert.equal(dead.properties.headers?.['pgwarren-table'], LONG);
    assert.equal(dead.properties.messageId, dead.body.id);
    assert.equal(dead.properties.type, 'insert');
    assert.deepEqual(dead.body.new, { id: 1, note: 'poison' });
    const later = queue.messages[0]!.body;
    assert.deepEqual(later.new, { id: 2, note: 'after' });
    await slotPasses(f, later.tx.lsn);
    assert.equal(await metric(daemon, /^pgwarren_dead_lettered_total\{reason="routing_key"\} (\d+)/m), 1);
    assert.ok(!daemon.logs.some((l) => typeof l.msg === 'string' && l.msg.startsWith('session ended')), 'no session ended over it');
  });

  test('a body over PGWARREN_MAX_MESSAGE_BYTES is dead-lettered as a stub', async () => {
    const f = await fixture('dlsize', { PGWARREN_MAX_MESSAGE_BYTES: '4096' });
    cleanups.push(() => f.cleanup());
    await f.broker.declareExchange(f.broker.exchange);
    await f.broker.declareExchange(f.dead);
    const deadQ = await f.broker.bindQueue('#', f.dead);
    const queue = await f.broker.bindQueue('#');
    const daemon = await start(f.env);
    cleanups.push(() => daemon.stop());
    await daemon.waitReady(30_000);

    await f.db.query(`INSERT INTO orders VALUES (1, repeat('é', 3000))`); // 3000 characters, 6000 bytes
    await f.db.query(`INSERT INTO orders VALUES (2, 'after')`);
    await queue.waitForCount(1, 30_000);
    await deadQ.waitForCount(1, 30_000);
    const stub = deadQ.messages[0]!.body;
    assert.equal(stub.new, undefined);
    assert.ok(stub.dead_letter.bytes > 6000, `size ${stub.dead_letter.bytes}`);
    assert.match(String(deadQ.messages[0]!.properties.headers?.['pgwarren-error']), /above PGWARREN_MAX_MESSAGE_BYTES \(4096\)/);
    assert.deepEqual(queue.messages[0]!.body.new, { id: 2, note: 'after' });
    await slotPasses(f, queue.messages[0]!.body.tx.lsn);
    assert.equal(await metric(daemon, /^pgwarren_dead_lettered_total\{reason="size"\} (\d+)/m), 1);
    assert.ok(!daemon.logs.some((l) => typeof l.msg === 'string' && l.msg.startsWith('session ended')), 'no session ended over it');
  });

  test('batched mode with flood divert: the flooded rows that cannot be routed are dead-lettered, the rest arrives', async () => {
    const f = await fixture('dldiv', {
      PGWARREN_ROUTING_KEY: '{schema}.{table}.{table}.{table}.{table}.{op}',
      PGWARREN_BATCH_MAX_EVENTS: '10',
      PGWARREN_FLOOD_ACTION: 'divert',
      PGWARREN_FLOOD_THRESHOLD: '2',
    });
    const flood = uniqueName('dldiv-flood', 'amqp');
    f.broker.track(flood);
    const env = { ...f.env, PGWARREN_FLOOD_EXCHANGE: flood };
    cleanups.push(() => f.cleanup());
    await f.broker.declareExchange(f.broker.exchange);
    await f.broker.declareExchange(f.dead);
    await f.broker.declareExchange(flood);
    const deadQ = await f.broker.bindQueue('#', f.dead);
    const floodQ = await f.broker.bindQueue('#', flood);
    const queue = await f.broker.bindQueue('#');
    const daemon = await start(env);
    cleanups.push(() => daemon.stop());
    await daemon.waitReady(30_000);

    await f.db.query('BEGIN');
    await f.db.query(`INSERT INTO "${LONG}" SELECT g, 'bulk' FROM generate_series(1, 4) g`);
    await f.db.query('INSERT INTO orders SELECT g, \'bulk\' FROM generate_series(1, 3) g');
    await f.db.query('COMMIT');
    await f.db.query(`INSERT INTO orders VALUES (10, 'after')`);
    await queue.waitForCount(1, 30_000);
    await deadQ.waitForCount(4, 30_000);
    await floodQ.waitForCount(1, 30_000);
    const deadIds = deadQ.messages.map((m) => m.body.new.id);
    assert.deepEqual(deadIds, [1, 2, 3, 4]);
    assert.deepEqual(floodQ.bodies().flat().map((e: any) => e.new.id), [1, 2, 3], 'the routable flooded rows, batched');
    assert.deepEqual(queue.messages[0]!.body.map((e: any) => e.new.id), [10]);
    await slotPasses(f, queue.messages[0]!.body[0].tx.lsn);
  });
});

describe('broker nacks (reject-publish queue)', () => {
  test('every change arrives, in order past the window on the wire, and a transaction bigger than the queue completes', async () => {
    const maxInflight = 30;
    const f = await fixture('nack', { PGWARREN_MAX_INFLIGHT: String(maxInflight), PGWARREN_RECONNECT_MAX_DELAY: '1' });
    try {
      await f.broker.declareExchange(f.broker.exchange);
      const queue = uniqueName('nack-q', 'amqp');
      const ch = f.broker.channel;
      await ch.assertQueue(queue, { durable: false, arguments: { 'x-overflow': 'reject-publish', 'x-max-length': 5 } });
      await ch.bindQueue(queue, f.broker.exchange, '#');
      // A slow consumer: one message at a time, acknowledged a little later.
      await ch.prefetch(1);
      const arrived: number[] = [];
      await ch.consume(queue, (m) => {
        if (!m) return;
        arrived.push(JSON.parse(m.content.toString('utf8')).new.id);
        setTimeout(() => ch.ack(m), 1);
      });
      const daemon = await start(f.env);
      try {
        await daemon.waitReady(30_000);
        const rows = 60;
        // One transaction of 60 rows into a queue that holds 5, then a marker. Big rows keep the
        // broker busy per message, so the consumer frees room while a window is on the wire.
        await f.db.query(`INSERT INTO orders SELECT g, repeat('x', 200000) FROM generate_series(1, ${rows}) g`);
        await f.db.query(`INSERT INTO orders VALUES (1000, 'marker')`);
        await waitUntil(() => arrived.includes(1000), { timeoutMs: 120_000, message: () => `${new Set(arrived).size} distinct of ${rows + 1} arrived` });
        const firsts = [...new Set(arrived)];
        assert.deepEqual([...firsts].sort((a, b) => a - b), [...Array.from({ length: rows }, (_, i) => i + 1), 1000], 'every change arrived');
        // A first delivery may overtake an earlier message only within the window on the wire when
        // the first nack came: at most PGWARREN_MAX_INFLIGHT of them, all before the nacked
        // message's first delivery, after which first deliveries are in order: one descent at most.
        const overtaking = firsts.filter((id, i) => firsts.slice(i + 1).some((later) => later < id));
        const descents = firsts.filter((id, i) => i > 0 && id < firsts[i - 1]!).length;
        assert.ok(descents <= 1, `first deliveries out of order after the first nack (${descents} descents): ${firsts.join(',')}`);
        assert.ok(overtaking.length <= maxInflight, `${overtaking.length} first deliveries overtook an earlier message: ${firsts.join(',')}`);
        assert.ok((await metric(daemon, /^pgwarren_nacks_total (\d+)/m)) > 0, 'nacks counted');
        assert.ok(daemon.logs.some((l) => typeof l.msg === 'string' && l.msg.includes('skipping the')), 'a re-read skipped a confirmed prefix');
      } finally {
        await daemon.stop();
        await ch.deleteQueue(queue).catch(() => undefined);
      }
    } finally {
      await f.cleanup();
    }
  });
});
