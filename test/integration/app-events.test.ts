/**
 * Beyond rows (README "Beyond rows"), through a real Postgres and RabbitMQ, with both plugins side by side:
 * application events (`pg_logical_emit_message(true, 'pgwarren.event', json)`), schema events for
 * a table altered repeatedly mid-stream (columns dropped, added, renamed, retyped, also several
 * times inside one transaction), and commit events (PGWARREN_TRANSACTION_EVENTS=true).
 *
 * One script runs once; a pgoutput daemon and a wal2json daemon (own slot, publication, exchange)
 * must publish the same messages, byte for byte once `source` is normalized, and that sequence is
 * checked against the contract event by event: ids (application events count in seq, the flood
 * marker does not, a rejected payload keeps its seq), order, routing keys, headers, payloads kept
 * digit for digit, nothing from a rolled-back transaction or a non-transactional message.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import type { TestDatabase } from '../support/pg.js';
import type { Collector, Received } from '../support/amqp.js';
import { pluginScenes, type PluginScenes, type PluginSide } from '../support/scene.js';
import { deadLetterExchangeOf, testEnv } from '../support/env.js';
import { waitUntil } from '../support/wait.js';

const wal2jsonMissing = !testEnv().wal2json;

/** `queue` (from pluginScenes) collects every event. */
interface Side extends PluginSide {
  readonly checkout: Collector;
  /** Bound to the daemon's own dead-letter exchange (README "Failure handling"). */
  readonly dead: Collector;
}

/** A payload with what JSON.parse would lose: digits beyond a double, unicode, escapes, spacing. */
const CHECKOUT_PAYLOAD =
  '{"routing_key": "checkout.completed", "order_id": 2,\n  "total": 123456789012345678901234567890.000000000000000001, "n": -0.0e-7,' +
  ' "customer": "Zoë ✓ 😀 \\u0001 \\"q\\"", "lines": [ {"sku": "A-1", "qty": 9007199254740993} ]}';
const CHECKOUT_MINIFIED =
  '{"routing_key":"checkout.completed","order_id":2,"total":123456789012345678901234567890.000000000000000001,"n":-0.0e-7,' +
  '"customer":"Zoë ✓ 😀 \\u0001 \\"q\\"","lines":[{"sku":"A-1","qty":9007199254740993}]}';
/** A little over 1 MB of payload. */
const BIG_BLOB = 'ü'.repeat(300_000) + 'x'.repeat(450_000);
const BIG_PAYLOAD = `{"routing_key":"big.payload","blob":"${BIG_BLOB}"}`;

const emit = (payload: string, transactional = true) => `SELECT pg_logical_emit_message(${transactional}, 'pgwarren.event', ${literal(payload)})`;
const literal = (s: string) => `'${s.replace(/'/g, "''")}'`;

/** Ids with each transaction's LSN replaced by its number in order of appearance. */
function summarize(messages: readonly Received[]): string[] {
  const txs = new Map<string, number>();
  return messages.map((m) => {
    const id = String(m.properties.messageId);
    const lsn = id.slice(0, id.indexOf(':'));
    if (!txs.has(lsn)) txs.set(lsn, txs.size);
    return `${m.properties.type} ${txs.get(lsn)}${id.slice(lsn.length)} ${m.fields.routingKey}`;
  });
}

describe('application, schema and commit events (README "Beyond rows"), pgoutput and wal2json', { skip: wal2jsonMissing && 'wal2json is not installed on the test Postgres server' }, () => {
  let db: TestDatabase;
  const sides: Side[] = [];

  let scenes: PluginScenes | undefined;
  before(async () => {
    scenes = await pluginScenes('appev', {
      schema: `
      CREATE TABLE shape_t (id int4 PRIMARY KEY, a1 int4, a2 text, b text);
      CREATE TABLE other_t (id int4 PRIMARY KEY, v text);
      CREATE TABLE done_t (id int4 PRIMARY KEY);`,
      env: { PGWARREN_TRANSACTION_EVENTS: 'true' },
    });
    db = scenes.db;
    for (const side of scenes.sides) {
      // A consumer of business events that knows nothing of tables.
      const checkout = await side.scene.queue('checkout.*');
      // The daemon declared its dead-letter exchange before it became ready.
      const dead = await side.broker.bindQueue('#', deadLetterExchangeOf(side.broker.exchange));
      sides.push({ ...side, checkout, dead });
    }
  });

  after(() => scenes?.cleanup());

  test('one script: the same events from both plugins, as the contract says', async () => {
    const q = (sql: string) => db.query(sql);
    const tx = async (...statements: string[]) => {
      await q('BEGIN');
      for (const s of statements) await q(s);
      await q('COMMIT');
    };
    // 0: the table's first change sets its baseline shape: no schema event.
    await q(`INSERT INTO shape_t VALUES (1, 1, 'x', '1')`);
    // 1: an application event between two row changes takes the seq between them.
    await tx(`INSERT INTO shape_t VALUES (2, 2, 'y', '2')`, emit(CHECKOUT_PAYLOAD), `INSERT INTO other_t VALUES (1, 'o')`);
    // Rolled back: neither the row nor the event.
    await q('BEGIN');
    await q(`INSERT INTO shape_t VALUES (3, 3, 'z', '3')`);
    await q(emit('{"routing_key":"checkout.rolled_back"}'));
    await q('ROLLBACK');
    // Not transactional: not atomic with anything, ignored.
    await q(emit('{"routing_key":"checkout.not_transactional"}', false));
    // 2: the flood marker floods the rows, never the application event, and takes no seq.
    await tx(emit('{"kind":"no routing key"}'), "SELECT pg_logical_emit_message(true, 'pgwarren', 'bulk')", `INSERT INTO other_t VALUES (2, 'p'), (3, 'q')`);
    // 3: the reproduced wal2json defect: after a dropped column, rows must not carry it as null.
    await q('ALTER TABLE shape_t DROP COLUMN a2');
    await q(`INSERT INTO shape_t VALUES (7, 7, '7')`);
    // 4: altered three times inside one transaction, a row of each shape in between.
    await tx(
      'ALTER TABLE shape_t ADD COLUMN c numeric',
      `INSERT INTO shape_t VALUES (8, 8, '8', 123456789012345678901234567890.5)`,
      'ALTER TABLE shape_t RENAME COLUMN b TO bb',
      'UPDATE shape_t SET a1 = 9 WHERE id = 8',
      'ALTER TABLE shape_t ALTER COLUMN a1 TYPE int8',
      `INSERT INTO shape_t VALUES (10, 9223372036854775807, '10', 1)`,
    );
    // 5: a malformed payload is refused, never fatal; it keeps its seq, the rows around it publish.
    await tx(`INSERT INTO other_t VALUES (4, 'r')`, emit('{"broken": '), `INSERT INTO other_t VALUES (5, 's')`);
    // 6: a payload over 1 MB.
    await tx(emit(BIG_PAYLOAD));
    // 7: the end marker, also for the checkout.* consumer.
    await tx(`INSERT INTO done_t VALUES (1)`, emit('{"routing_key":"checkout.marker"}'));

    const expected = [
      'insert 0:0 public.shape_t.insert',
      'commit 0:commit pgwarren.tx.commit',
      'insert 1:0 public.shape_t.insert',
      'message 1:1 checkout.completed',
      'insert 1:2 public.other_t.insert',
      'commit 1:commit pgwarren.tx.commit',
      'message 2:0 message.pgwarren.event',
      'bulk 2:bulk:public.other_t public.other_t.bulk',
      'commit 2:commit pgwarren.tx.commit',
      'schema 3:0:schema public.shape_t.schema',
      'insert 3:0 public.shape_t.insert',
      'commit 3:commit pgwarren.tx.commit',
      'schema 4:0:schema public.shape_t.schema',
      'insert 4:0 public.shape_t.insert',
      'schema 4:1:schema public.shape_t.schema',
      'update 4:1 public.shape_t.update',
      'schema 4:2:schema public.shape_t.schema',
      'insert 4:2 public.shape_t.insert',
      'commit 4:commit pgwarren.tx.commit',
      'insert 5:0 public.other_t.insert',
      'insert 5:2 public.other_t.insert',
      'commit 5:commit pgwarren.tx.commit',
      'message 6:0 big.payload',
      'commit 6:commit pgwarren.tx.commit',
      'insert 7:0 public.done_t.insert',
      'message 7:1 checkout.marker',
      'commit 7:commit pgwarren.tx.commit',
    ];
    for (const s of sides) {
      await waitUntil(() => s.queue.messages.some((m) => m.body?.op === 'commit' && m.body.counts['public.done_t']), {
        timeoutMs: 30_000,
        message: () => `${s.plugin}: the end marker did not arrive; got:\n${summarize(s.queue.messages).join('\n')}\n${s.daemon.output().slice(-3000)}`,
      });
      assert.deepEqual(summarize(s.queue.messages), expected, `${s.plugin}: events, ids, order and routing keys`);
    }

    const [pgo, w2j] = sides as [Side, Side];
    // Byte for byte the same from both plugins, once each daemon's own slot and plugin are set aside.
    const sourceOf = (s: Side) => `"source":{"name":"pgwarren","db":"${db.name}","slot":"${s.slot}","plugin":"${s.plugin}"}}`;
    for (let i = 0; i < expected.length; i++) {
      const a = pgo.queue.messages[i]!;
      const b = w2j.queue.messages[i]!;
      const ta = a.content.toString('utf8');
      const tb = b.content.toString('utf8');
      assert.ok(ta.endsWith(sourceOf(pgo)) && tb.endsWith(sourceOf(w2j)), `message ${i} ends with its source`);
      assert.equal(tb.slice(0, -sourceOf(w2j).length), ta.slice(0, -sourceOf(pgo).length), `message ${i} (${expected[i]}): same body from both plugins`);
      assert.deepEqual(
        { id: b.properties.messageId, type: b.properties.type, headers: b.properties.headers, ts: b.properties.timestamp },
        { id: a.properties.messageId, type: a.properties.type, headers: a.properties.headers, ts: a.properties.timestamp },
        `message ${i}: same AMQP properties`,
      );
    }

    const bodies = pgo.queue.messages.map((m) => m.content.toString('utf8'));
    const event = (i: number) => JSON.parse(bodies[i]!);
    // The application event: payload as given (whitespace aside), digits intact; §5 properties.
    assert.ok(bodies[3]!.includes(`"op":"message","prefix":"pgwarren.event","payload":${CHECKOUT_MINIFIED},"tx":`), bodies[3]);
    const msg = event(3);
    assert.equal(msg.tx.seq, 1);
    assert.equal(msg.id, `${msg.tx.lsn}:1`);
    const props = pgo.queue.messages[3]!.properties;
    assert.equal(props.type, 'message');
    assert.equal(props.contentType, 'application/json');
    assert.equal(props.deliveryMode, 2);
    assert.equal(props.appId, 'pgwarren');
    assert.deepEqual(props.headers, { 'pgwarren-schema': '', 'pgwarren-table': 'pgwarren.event', 'pgwarren-op': 'message', 'pgwarren-lsn': msg.tx.lsn, 'pgwarren-xid': msg.tx.xid });
    const commitProps = pgo.queue.messages[5]!.properties;
    assert.equal(commitProps.type, 'commit');
    assert.deepEqual(commitProps.headers, { 'pgwarren-schema': '', 'pgwarren-table': '', 'pgwarren-op': 'commit', 'pgwarren-lsn': msg.tx.lsn, 'pgwarren-xid': msg.tx.xid });
    // Commit events count what the transaction published, per table (or prefix) and op.
    assert.deepEqual(event(5).counts, { 'public.shape_t': { insert: 1 }, 'pgwarren.event': { message: 1 }, 'public.other_t': { insert: 1 } });
    assert.equal(event(5).id, `${msg.tx.lsn}:commit`);
    assert.deepEqual(event(8).counts, { 'pgwarren.event': { message: 1 }, 'public.other_t': { bulk: 1 } });
    assert.equal(event(7).tx.seq, 1, 'the bulk event starts at seq 1: the marker took none');
    assert.deepEqual(event(21).counts, { 'public.other_t': { insert: 2 } });
    assert.deepEqual(event(26).counts, { 'public.done_t': { insert: 1 }, 'pgwarren.event': { message: 1 } });

    // The dropped column is gone from the shape and from the row (the wal2json defect).
    const col = (name: string, type: string, key = false) => ({ name, type, key });
    assert.deepEqual(event(9).previous, [col('id', 'int4', true), col('a1', 'int4'), col('a2', 'text'), col('b', 'text')]);
    assert.deepEqual(event(9).columns, [col('id', 'int4', true), col('a1', 'int4'), col('b', 'text')]);
    assert.equal(event(9).tx.seq, 0);
    assert.ok(bodies[10]!.includes('"new":{"id":7,"a1":7,"b":"7"}'), bodies[10]);
    // Added, renamed, retyped: each shape precedes the first row of it.
    assert.deepEqual(event(12).columns, [col('id', 'int4', true), col('a1', 'int4'), col('b', 'text'), col('c', 'numeric')]);
    assert.ok(bodies[13]!.includes('"new":{"id":8,"a1":8,"b":"8","c":"123456789012345678901234567890.5"}'), bodies[13]);
    assert.deepEqual(event(14).columns, [col('id', 'int4', true), col('a1', 'int4'), col('bb', 'text'), col('c', 'numeric')]);
    assert.deepEqual(event(14).previous, event(12).columns);
    assert.ok(bodies[15]!.includes('"new":{"id":8,"a1":9,"bb":"8","c":"123456789012345678901234567890.5"}'), bodies[15]);
    assert.deepEqual(event(16).columns, [col('id', 'int4', true), col('a1', 'int8'), col('bb', 'text'), col('c', 'numeric')]);
    assert.ok(bodies[17]!.includes('"new":{"id":10,"a1":"9223372036854775807","bb":"10","c":"1"}'), bodies[17]);
    // The 1 MB payload, whole.
    assert.equal(event(22).payload.blob, BIG_BLOB);

    // The malformed payload was dead-lettered with its id (seq 1 of its transaction), not published.
    const refusedId = `${event(19).tx.lsn}:1`;
    for (const s of sides) {
      await s.dead.waitForCount(1);
      assert.equal(s.dead.messages.length, 1, `${s.plugin}: one dead letter`);
      const letter = s.dead.messages[0]!;
      assert.equal(letter.properties.messageId, refusedId);
      assert.equal(letter.fields.routingKey, 'pgwarren.event.message');
      assert.match(String(letter.properties.headers?.['pgwarren-error']), /not JSON/);
      assert.equal(letter.body.payload_text, '{"broken": ');
      assert.equal(s.daemon.logs.filter((l) => l.msg === 'ignored a non-transactional pgwarren.event message (use pg_logical_emit_message(true, ...))').length, 1);
    }

    // The checkout.* consumer saw exactly the checkout events of committed transactions.
    for (const s of sides) {
      await s.checkout.waitForCount(2);
      assert.deepEqual(
        s.checkout.messages.map((m) => m.fields.routingKey),
        ['checkout.completed', 'checkout.marker'],
      );
    }
  });
});
