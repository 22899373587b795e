/**
 * Shaping the stream (README "Shaping the stream", README "Shaping the stream"):
 * - a row filter gives the same events with pgoutput (a publication row filter, applied inside
 *   Postgres) and wal2json (evaluated by pgwarren), including updates that move a row into the
 *   filter (an insert) or out of it (a delete), and ids that skip the filtered rows alike;
 * - filters that cannot work are configuration errors (exit 2) and never reach the publication;
 * - skip-unchanged, compression and the transform hook, each outcome of it.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { brotliDecompressSync, gunzipSync } from 'node:zlib';
import type { TestDatabase } from '../support/pg.js';
import type { Collector, Received, TestBroker } from '../support/amqp.js';
import { runCli, start, type Daemon } from '../support/daemon.js';
import { pluginScenes, scene, type PluginScenes, type PluginSide, type Scene } from '../support/scene.js';
import { testEnv, uniqueName } from '../support/env.js';
import { waitUntil } from '../support/wait.js';

const wal2jsonMissing = !testEnv().wal2json;

const RULES = `
rules:
  - match: public.orders
    where: "status <> 'draft' AND amount >= 10"
  - match: public.items
    where: "id IN (1, 2, 3) OR id > 100"
  - match: public.typed
    where: "m IN ('ok', 'happy') AND b AND c = 'ab' AND r > 0.5 AND n <> 1.10 AND u <> 'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11' AND NOT (t < 'b' OR t IS NULL)"
`;

type Side = PluginSide;

const tmp = mkdtempSync(join(tmpdir(), 'pgwarren-shaping-'));
after(() => rmSync(tmp, { recursive: true, force: true }));
function file(name: string, text: string): string {
  const path = join(tmp, name);
  writeFileSync(path, text);
  return path;
}

describe('row filters: the same events with pgoutput and wal2json', { skip: wal2jsonMissing && 'wal2json is not installed on the test Postgres server' }, () => {
  let db: TestDatabase;
  const sides: Side[] = [];

  let scenes: PluginScenes | undefined;
  before(async () => {
    scenes = await pluginScenes('rowfilter', {
      schema: `
      CREATE TABLE orders (id int4 PRIMARY KEY, status text, amount numeric);
      ALTER TABLE orders REPLICA IDENTITY FULL;
      CREATE TABLE items (id int4 PRIMARY KEY, note text);
      CREATE TABLE unfiltered (id int4 PRIMARY KEY);
      CREATE TABLE typed (id int4 PRIMARY KEY, m text, u uuid, b bool, c char(4), r real, n numeric, t text);
      ALTER TABLE typed REPLICA IDENTITY FULL;`,
      env: { PGWARREN_CONFIG: file('rowfilter.yaml', RULES) },
    });
    db = scenes.db;
    sides.push(...scenes.sides);
  });

  after(() => scenes?.cleanup());

  test('inserts, updates moving rows in and out, deletes: identical events, ids included', async () => {
    const [pgo, w2j] = sides as [Side, Side];
    const q = (sql: string) => db.query(sql);
    // The publication carries the filters (pgoutput): filtered rows never leave Postgres.
    const filters = await db.query('SELECT tablename, rowfilter FROM pg_publication_tables WHERE pubname = $1 ORDER BY 1', [pgo.slot]);
    assert.deepEqual(
      filters.rows.map((r: { tablename: string; rowfilter: string | null }) => [r.tablename, r.rowfilter !== null]),
      [['items', true], ['orders', true], ['typed', true], ['unfiltered', false]],
    );

    await q(`INSERT INTO orders VALUES (1, 'draft', 50)`); // filtered
    await q(`INSERT INTO orders VALUES (2, 'paid', 50)`); // insert
    await q(`INSERT INTO orders VALUES (3, 'paid', 5)`); // filtered
    await q(`UPDATE orders SET status = 'paid' WHERE id = 1`); // moves in: insert
    await q(`UPDATE orders SET status = 'draft' WHERE id = 2`); // moves out: delete
    await q(`UPDATE orders SET amount = 20 WHERE id = 3`); // moves in: insert
    await q(`UPDATE orders SET amount = 30 WHERE id = 3`); // stays in: update
    await q(`UPDATE orders SET amount = 40 WHERE id = 2`); // stays out: nothing
    await q(`DELETE FROM orders WHERE id = 1`); // delete
    // One transaction mixing filtered and published rows: seq counts only the published ones.
    await q(`BEGIN; INSERT INTO items VALUES (1, 'a'), (5, 'b'), (200, 'c'); INSERT INTO unfiltered VALUES (1); COMMIT;`);
    await q(`UPDATE items SET note = 'x' WHERE id = 5`); // key kept, new row decides: filtered
    await q(`UPDATE items SET id = 101 WHERE id = 5`); // key 5 -> 101: insert
    await q(`UPDATE items SET id = 6 WHERE id = 1`); // key 1 -> 6: delete
    await q(`DELETE FROM items WHERE id = 200`);
    await q(`INSERT INTO unfiltered VALUES (999)`); // marker

    const done = (s: Side) => s.queue.messages.some((m) => m.body?.table === 'unfiltered' && m.body?.new?.id === 999);
    await waitUntil(() => done(pgo) && done(w2j), {
      timeoutMs: 30_000,
      message: () => `marker: pgoutput ${pgo.queue.messages.length}, wal2json ${w2j.queue.messages.length} messages`,
    });
    const summary = (m: Received) => `${m.fields.routingKey} ${JSON.stringify(m.body.key)} seq=${m.body.tx.seq}`;
    assert.deepEqual(pgo.queue.messages.map(summary), [
      'public.orders.insert {"id":2} seq=0',
      'public.orders.insert {"id":1} seq=0',
      'public.orders.delete {"id":2} seq=0',
      'public.orders.insert {"id":3} seq=0',
      'public.orders.update {"id":3} seq=0',
      'public.orders.delete {"id":1} seq=0',
      'public.items.insert {"id":1} seq=0',
      'public.items.insert {"id":200} seq=1',
      'public.unfiltered.insert {"id":1} seq=2',
      'public.items.insert {"id":101} seq=0',
      'public.items.delete {"id":1} seq=0',
      'public.items.delete {"id":200} seq=0',
      'public.unfiltered.insert {"id":999} seq=0',
    ]);
    // The insert made of an update carries the new row only; the delete the old row.
    const movedIn = pgo.queue.messages[1]!.body;
    assert.deepEqual([movedIn.old, movedIn.new, movedIn.changed], [null, { id: 1, status: 'paid', amount: '50' }, null]);
    const movedOut = pgo.queue.messages[2]!.body;
    assert.deepEqual([movedOut.old, movedOut.new], [{ id: 2, status: 'paid', amount: '50' }, null]);

    const source = (s: Side) => `"source":{"name":"pgwarren","db":"${db.name}","slot":"${s.slot}","plugin":"${s.plugin}"}}`;
    const normalized = (s: Side, m: Received) => m.content.toString('utf8').replace(source(s), '<source>');
    assert.deepEqual(w2j.queue.messages.map((m) => normalized(w2j, m)), pgo.queue.messages.map((m) => normalized(pgo, m)), 'wal2json bodies equal pgoutput bodies');
    assert.deepEqual(w2j.queue.messages.map((m) => m.fields.routingKey), pgo.queue.messages.map((m) => m.fields.routingKey));
    assert.deepEqual(w2j.queue.messages.map((m) => m.properties.messageId), pgo.queue.messages.map((m) => m.properties.messageId));
  });

  test('typed comparisons give what Postgres gives: text IN, uuid, bool, char(n), real, numeric, text, NULLs', async () => {
    const [pgo, w2j] = sides as [Side, Side];
    const U = 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11';
    const V = '00000000-0000-0000-0000-000000000001';
    const rows: string[] = [
      `(1, 'ok', '${V}', true, 'ab', 0.6, 2, 'b')`, // passes
      `(2, 'sad', '${V}', true, 'ab', 0.6, 2, 'b')`, // IN
      `(3, 'happy', '${U}', true, 'ab', 0.6, 2, 'b')`, // uuid (case-insensitive equal)
      `(4, 'ok', '${V}', false, 'ab', 0.6, 2, 'b')`, // bool
      `(5, 'ok', '${V}', NULL, 'ab', 0.6, 2, 'b')`, // NULL bool
      `(6, 'ok', '${V}', true, 'ab  ', 0.6, 2, 'b')`, // char(n) padding: passes
      `(7, 'ok', '${V}', true, 'abc', 0.6, 2, 'b')`, // char differs
      `(8, 'ok', '${V}', true, 'ab', 0.5, 2, 'b')`, // real 0.5 not > 0.5
      `(9, 'ok', '${V}', true, 'ab', 0.50001, 2, 'b')`, // real just above: passes
      `(10, 'ok', '${V}', true, 'ab', 0.6, 1.1, 'b')`, // numeric 1.1 = 1.10
      `(11, 'ok', '${V}', true, 'ab', 0.6, NULL, 'b')`, // NULL numeric
      `(12, 'ok', '${V}', true, 'ab', 0.6, 2, 'a')`, // text below 'b'
      `(13, 'ok', '${V}', true, 'ab', 0.6, 2, NULL)`, // NOT (... OR NULL) is NULL
      `(14, 'ok', '${V}', true, 'ab', 0.6, 2, 'é')`, // passes
    ];
    await db.query(`INSERT INTO typed VALUES ${rows.join(', ')}`);
    await db.query(`UPDATE typed SET r = 0.4 WHERE id = 1`); // moves out: delete
    await db.query(`UPDATE typed SET t = 'c' WHERE id = 12`); // moves in: insert
    await db.query(`INSERT INTO unfiltered VALUES (1000)`); // marker
    const done = (s: Side) => s.queue.messages.some((m) => m.body?.table === 'unfiltered' && m.body?.new?.id === 1000);
    await waitUntil(() => done(pgo) && done(w2j), { timeoutMs: 30_000, message: 'typed marker' });
    const mine = (s: Side) => s.queue.messages.filter((m) => m.body?.table === 'typed');
    assert.deepEqual(
      mine(pgo).map((m) => `${m.body.op} ${m.body.key.id}`),
      ['insert 1', 'insert 6', 'insert 9', 'insert 14', 'delete 1', 'insert 12'],
      'what Postgres itself passes',
    );
    const text = (s: Side) => mine(s).map((m) => m.content.toString('utf8').replace(/"source":\{[^}]*\}/, ''));
    assert.deepEqual(text(w2j), text(pgo));
  });
});

describe('row filters that cannot work are configuration errors', () => {
  let db: TestDatabase;
  let broker: TestBroker;
  let sc: Scene | undefined;
  // Each test starts what it needs with its own settings: the scene gives the database and exchange.
  before(async () => {
    sc = await scene(null, 'rfbad', { schema: 'CREATE TABLE t (id int4 PRIMARY KEY, status text)', exchangeType: null });
    ({ db, broker } = sc);
  });
  after(() => sc?.cleanup());

  test('wal2json: an expression outside the subset exits 2 at load, naming the rule and the subset', async () => {
    const config = file('bad-subset.yaml', `rules:\n  - match: public.t\n    where: "lower(status) = 'x'"\n`);
    const r = await runCli(['check'], { PGWARREN_DATABASE_URL: db.url, PGWARREN_PLUGIN: 'wal2json', PGWARREN_CONFIG: config });
    assert.equal(r.code, 2, r.stdout + r.stderr);
    assert.match(r.stderr + r.stdout, /rules\[0\]\.where \(public\.t\).*function calls \(lower\(\.\.\.\)\) are not supported.*supported: column names/s);
  });

  test('any plugin: a second statement smuggled into where exits 2', async () => {
    const config = file('bad-sql.yaml', `rules:\n  - match: public.t\n    where: "true); DROP TABLE t; --"\n`);
    const r = await runCli(['check'], { PGWARREN_DATABASE_URL: db.url, PGWARREN_CONFIG: config });
    assert.equal(r.code, 2, r.stdout + r.stderr);
    assert.match(r.stderr + r.stdout, /not a usable row filter/);
  });

  test('pgoutput: a filter on a column outside the replica identity exits 2 and leaves UPDATEs working', async () => {
    const config = file('bad-identity.yaml', `rules:\n  - match: public.t\n    where: "status = 'x'"\n`);
    const slot = uniqueName('rfbad');
    const daemon = await start({
      PGWARREN_DATABASE_URL: db.url,
      PGWARREN_AMQP_URL: testEnv().amqpUrl,
      PGWARREN_SLOT: slot,
      PGWARREN_PUBLICATION: slot,
      PGWARREN_EXCHANGE: broker.exchange,
      PGWARREN_CONFIG: config,
    });
    const { code } = await daemon.exited;
    assert.equal(code, 2, daemon.output());
    assert.match(daemon.output(), /status, outside the table's replica identity/);
    await db.query(`INSERT INTO t VALUES (1, 'a'); UPDATE t SET status = 'b' WHERE id = 1`);
    await db.query(`DROP PUBLICATION IF EXISTS ${slot}; DROP PUBLICATION IF EXISTS ${slot}_keyless`);
  });

  test('check reports a row filter outside the replica identity', async () => {
    const config = file('check-identity.yaml', `rules:\n  - match: public.t\n    where: "status = 'x'"\n`);
    const r = await runCli(['check'], { PGWARREN_DATABASE_URL: db.url, PGWARREN_AMQP_URL: testEnv().amqpUrl, PGWARREN_CONFIG: config });
    assert.equal(r.code, 3, r.stdout + r.stderr);
    assert.match(r.stdout, /FAIL {2}row filters: [\s\S]*status, outside the table's replica identity/);
  });

  test('pgoutput: an expression outside the subset on a non-identity column is refused by a probe, never committed', async () => {
    const config = file('bad-identity-sql.yaml', `rules:\n  - match: public.t\n    where: "lower(status) = 'x'"\n`);
    const pub = uniqueName('rfprobe');
    const r = await runCli(['setup'], { PGWARREN_DATABASE_URL: db.url, PGWARREN_SLOT: pub, PGWARREN_PUBLICATION: pub, PGWARREN_CONFIG: config });
    try {
      assert.equal(r.code, 2, r.stdout + r.stderr);
      assert.match(r.stdout + r.stderr, /outside its table's replica identity/);
      const filters = await db.query('SELECT count(*)::int AS n FROM pg_publication_tables WHERE pubname = $1', [pub]);
      assert.equal(filters.rows[0].n, 0, 'nothing was committed');
      await db.query(`UPDATE t SET status = 'c' WHERE id = 1; DELETE FROM t WHERE id = 1`);
    } finally {
      await db.query(`SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1`, [pub]);
      await db.query(`DROP PUBLICATION IF EXISTS ${pub}; DROP PUBLICATION IF EXISTS ${pub}_keyless`);
    }
  });

  test('wal2json: a filter naming a column the table lacks exits 2 at its first change, naming the rule', { skip: wal2jsonMissing && 'wal2json is not installed' }, async () => {
    const config = file('missing-column.yaml', `rules:\n  - match: public.t\n    where: "nope = 1"\n`);
    const slot = uniqueName('rfmissing');
    const daemon = await start({
      PGWARREN_DATABASE_URL: db.url,
      PGWARREN_AMQP_URL: testEnv().amqpUrl,
      PGWARREN_PLUGIN: 'wal2json',
      PGWARREN_SLOT: slot,
      PGWARREN_EXCHANGE: broker.exchange,
      PGWARREN_CONFIG: config,
    });
    try {
      await daemon.waitReady(30_000);
      await db.query(`INSERT INTO t VALUES (50, 'a')`);
      const { code } = await daemon.exited;
      assert.equal(code, 2, daemon.output());
      assert.match(daemon.output(), /rules\[0\]\.where \(public\.t\): column \\?"nope\\?" does not exist in public\.t/);
    } finally {
      await daemon.stop();
      await db.query(`SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1`, [slot]);
    }
  });

  test('pgoutput: a changed where is applied to the publication, an unchanged one left alone', async () => {
    const pub = uniqueName('rfsync');
    const env = (where: string) => ({
      PGWARREN_DATABASE_URL: db.url,
      PGWARREN_SLOT: pub,
      PGWARREN_PUBLICATION: pub,
      PGWARREN_CONFIG: file(`sync-${where.length}.yaml`, `rules:\n  - match: public.t\n    where: "${where}"\n`),
    });
    const state = async () =>
      (await db.query(`SELECT pr.xmin::text AS xmin, pg_get_expr(pr.prqual, pr.prrelid) AS expr FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid WHERE p.pubname = $1`, [pub])).rows[0];
    try {
      assert.equal((await runCli(['setup'], env('id > 1'))).code, 0);
      assert.equal((await state()).expr, '(id > 1)');
      assert.equal((await runCli(['setup'], env('id > 100'))).code, 0);
      const changed = await state();
      assert.equal(changed.expr, '(id > 100)');
      assert.equal((await runCli(['setup'], env('id > 100'))).code, 0);
      assert.equal((await state()).xmin, changed.xmin, 'the same filter is not set again');
      await db.query(`ALTER PUBLICATION ${pub} SET TABLE t WHERE (id > 5)`); // changed by hand
      assert.equal((await runCli(['setup'], env('id > 100'))).code, 0);
      assert.equal((await state()).expr, '(id > 100)', 'a filter changed by hand is set back');
    } finally {
      await db.query(`SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1`, [pub]);
      await db.query(`DROP PUBLICATION IF EXISTS ${pub}; DROP PUBLICATION IF EXISTS ${pub}_keyless`);
    }
  });
});

const TRANSFORM = `
export function transform(event) {
  const mode = event.new?.mode;
  if (mode === 'drop') return null;
  if (mode === 'throw') throw new Error('boom');
  if (mode === 'bad') return 42;
  if (mode === 'reid') return { ...event, id: 'x' };
  if (mode === 'slow') return new Promise(() => {});
  if (mode === 'route') {
    const { source, ...rest } = event;
    return { ...rest, extra: true, _routing_key: 'custom.key', _headers: { 'x-tenant': 'acme' } };
  }
  if (mode === 'async') return Promise.resolve({ ...event, async: true });
  return event;
}
`;

describe('skip-unchanged, compression and the transform hook', () => {
  let db: TestDatabase;
  let broker: TestBroker;
  let events: Collector;
  let dead: Collector;
  let daemon: Daemon;
  let deadExchange: string;

  let sc: Scene | undefined;

  before(async () => {
    sc = await scene(null, 'shape', {
      schema: `CREATE TABLE t (id int4 PRIMARY KEY, mode text, v int4, j jsonb); ALTER TABLE t REPLICA IDENTITY FULL;`,
      env: {
        PGWARREN_COMPRESSION: 'gzip',
        PGWARREN_SKIP_UNCHANGED: 'true',
        PGWARREN_TRANSFORM: file('transform.mjs', TRANSFORM),
        PGWARREN_TRANSFORM_TIMEOUT: '0.3',
      },
    });
    ({ db, broker } = sc);
    deadExchange = uniqueName('shape-dead', 'amqp');
    await broker.declareExchange(deadExchange, 'topic');
    events = await sc.queue('#');
    dead = await broker.bindQueue('#', deadExchange);
    daemon = await sc.daemon({ PGWARREN_DEAD_LETTER_EXCHANGE: deadExchange });
  });

  after(() => sc?.cleanup());

  test('each outcome: published, changed, dropped, dead-lettered; bodies gzip-compressed', async () => {
    const q = (sql: string) => db.query(sql);
    await q(`INSERT INTO t VALUES (1, 'keep', 1, '{"big": 123456789012345678901234567890, "f": 1.50}')`);
    await q(`UPDATE t SET v = v WHERE id = 1`); // changed = []: skipped
    await q(`UPDATE t SET v = 2 WHERE id = 1`); // published
    await q(`INSERT INTO t VALUES (2, 'drop', 1, null)`); // transform returns null
    await q(`INSERT INTO t VALUES (3, 'throw', 1, null)`); // dead letter
    await q(`INSERT INTO t VALUES (4, 'bad', 1, null)`); // dead letter
    await q(`INSERT INTO t VALUES (5, 'reid', 1, null)`); // dead letter
    await q(`INSERT INTO t VALUES (6, 'slow', 1, null)`); // dead letter (timeout)
    await q(`INSERT INTO t VALUES (7, 'route', 1, null)`);
    await q(`INSERT INTO t VALUES (8, 'async', 1, null)`);
    await q(`INSERT INTO t VALUES (9, 'keep', 1, null)`); // marker
    const decoded = (m: Received) => JSON.parse(gunzipSync(m.content).toString('utf8'));
    await waitUntil(() => events.messages.some((m) => decoded(m).new?.id === 9), { timeoutMs: 30_000, message: () => `${events.messages.length} events` });

    assert.ok(events.messages.every((m) => m.properties.contentEncoding === 'gzip'), 'contentEncoding gzip on every message');
    const bodies = events.messages.map(decoded);
    assert.deepEqual(bodies.map((b) => `${b.op} ${b.new.id}`), ['insert 1', 'update 1', 'insert 7', 'insert 8', 'insert 9']);
    // Unchanged by an identity transform: jsonb digits and number spelling kept.
    assert.match(gunzipSync(events.messages[0]!.content).toString('utf8'), /"j":\{"f":1\.50,"big":123456789012345678901234567890\}/);
    const routed = events.messages[2]!;
    assert.equal(routed.fields.routingKey, 'custom.key');
    assert.equal(routed.properties.headers?.['x-tenant'], 'acme');
    assert.equal(routed.properties.headers?.['pgwarren-op'], 'insert');
    assert.equal(bodies[2].extra, true);
    assert.equal('source' in bodies[2], false);
    assert.equal('_routing_key' in bodies[2], false);
    assert.equal(bodies[3].async, true);
    // Ids untouched: every id is the change's own position.
    assert.deepEqual(events.messages.map((m) => m.properties.messageId), bodies.map((b) => b.id));

    await waitUntil(() => dead.messages.length >= 4, { timeoutMs: 30_000, message: () => `${dead.messages.length} dead letters` });
    const errors = dead.messages.map((m) => [m.body.new.id, String(m.properties.headers?.['pgwarren-error'])]);
    assert.deepEqual(errors.map((e) => e[0]), [3, 4, 5, 6]);
    assert.match(errors[0]![1], /transform threw: Error: boom/);
    assert.match(errors[1]![1], /transform returned number/);
    assert.match(errors[2]![1], /changed the event id/);
    assert.match(errors[3]![1], /did not settle within 300 ms/);

    const metrics = await (await fetch(`http://127.0.0.1:${daemon.httpPort}/metrics`)).text();
    assert.match(metrics, /pgwarren_events_filtered_total\{reason="unchanged"\} 1\b/);
    assert.match(metrics, /pgwarren_events_filtered_total\{reason="transform"\} 1\b/);
    assert.match(metrics, /pgwarren_dead_lettered_total\{reason="transform"\} 4\b/);
  });
});

describe('compression in batched mode, read by the demo consumer', () => {
  let db: TestDatabase;
  let broker: TestBroker;
  let daemon: Daemon;
  let consumer: ChildProcess | undefined;
  const queue = uniqueName('shape-consumer', 'amqp');

  let sc: Scene | undefined;

  before(async () => {
    sc = await scene(null, 'shapebr', { schema: 'CREATE TABLE t (id int4 PRIMARY KEY, v text)', env: { PGWARREN_COMPRESSION: 'br', PGWARREN_BATCH_MAX_EVENTS: '10' } });
    ({ db, broker } = sc);
    daemon = await sc.daemon();
  });

  after(async () => {
    if (consumer && consumer.exitCode === null) consumer.kill('SIGKILL');
    await daemon?.stop();
    // The consumer's own queue, which the broker helper did not make.
    await broker?.channel.deleteQueue(queue).catch(() => undefined);
    await sc?.cleanup();
  });

  test('one Brotli-compressed batch per transaction; examples/consumer.mjs prints its events', async () => {
    const raw = await broker.bindQueue('#');
    const lines: string[] = [];
    consumer = spawn(process.execPath, [fileURLToPath(new URL('../../examples/consumer.mjs', import.meta.url))], {
      env: { PATH: process.env.PATH ?? '/usr/bin:/bin', AMQP_URL: testEnv().amqpUrl, EXCHANGE: broker.exchange, QUEUE: queue, OUTPUT: 'json' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let pending = '';
    let ready = false;
    consumer.stdout!.on('data', (d: Buffer) => {
      pending += d.toString('utf8');
      const parts = pending.split('\n');
      pending = parts.pop()!;
      lines.push(...parts);
    });
    consumer.stderr!.on('data', (d: Buffer) => (ready ||= /consuming from queue/.test(d.toString('utf8'))));
    await waitUntil(() => ready, { timeoutMs: 20_000, message: 'the consumer is consuming' });

    await db.query(`INSERT INTO t SELECT g, repeat('x', 200) FROM generate_series(1, 3) g`);
    await raw.waitForCount(1);
    const m = raw.messages[0]!;
    assert.equal(m.properties.contentEncoding, 'br');
    assert.equal(m.properties.headers?.['pgwarren-batch'], 3);
    const batch = JSON.parse(brotliDecompressSync(m.content).toString('utf8'));
    assert.deepEqual(batch.map((e: { new: { id: number } }) => e.new.id), [1, 2, 3]);
    assert.ok(m.content.length < Buffer.byteLength(JSON.stringify(batch)) / 2, `compressed: ${m.content.length} bytes`);

    await waitUntil(() => lines.length >= 3, { timeoutMs: 20_000, message: () => `consumer printed: ${lines.join('\n')}` });
    assert.deepEqual(lines.map((l) => JSON.parse(l).new.id), [1, 2, 3]);
  });
});
