/**
 * Table and operation selection, tables created or altered while streaming, and per-table rules
 * from the config file, through real Postgres and RabbitMQ.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type TestDatabase } from '../support/pg.js';
import { type TestBroker } from '../support/amqp.js';
import { start, type Daemon } from '../support/daemon.js';
import { testEnv, uniqueName } from '../support/env.js';
import { waitUntil } from '../support/wait.js';
import { scene, type After } from '../support/scene.js';

interface Ctx {
  db: TestDatabase;
  broker: TestBroker;
  slot: string;
  env: Record<string, string>;
}

async function context(t: After, prefix: string, env: Record<string, string> = {}): Promise<Ctx> {
  return scene(t, prefix, { env });
}

async function run(t: { after: (fn: () => Promise<unknown>) => void }, env: Record<string, string>): Promise<Daemon> {
  const d = await start(env);
  t.after(() => d.stop());
  await d.waitReady(30_000);
  return d;
}

const seen = (bodies: any[]) => bodies.map((b) => `${b.schema}.${b.table}:${b.op}`);

test('table globs, exclusions and operations decide what is published, and what the publication holds', async (t) => {
  const c = await context(t, 'sel', { PGWARREN_TABLES: 'public.*,sales.orders', PGWARREN_EXCLUDE_TABLES: 'public.secret*', PGWARREN_OPERATIONS: 'insert,delete' });
  await c.db.query('CREATE SCHEMA sales');
  await c.db.query('CREATE TABLE public.a (id int PRIMARY KEY)');
  await c.db.query('CREATE TABLE public.secrets (id int PRIMARY KEY)');
  await c.db.query('CREATE TABLE sales.orders (id int PRIMARY KEY, v int)');
  await c.db.query('CREATE TABLE sales.other (id int PRIMARY KEY)');
  const q = await c.broker.bindQueue('#');
  await run(t, c.env);
  const pub = await c.db.query("SELECT schemaname || '.' || tablename AS t FROM pg_publication_tables WHERE pubname = $1 ORDER BY 1", [c.slot]);
  assert.deepEqual(pub.rows.map((r) => r.t), ['public.a', 'sales.orders']);
  const ops = await c.db.query('SELECT pubinsert, pubupdate, pubdelete, pubtruncate FROM pg_publication WHERE pubname = $1', [c.slot]);
  assert.deepEqual(ops.rows[0], { pubinsert: true, pubupdate: false, pubdelete: true, pubtruncate: false });

  await c.db.query('INSERT INTO public.a VALUES (1)');
  await c.db.query('INSERT INTO public.secrets VALUES (1)');
  await c.db.query('INSERT INTO sales.orders VALUES (1, 1)');
  await c.db.query('UPDATE sales.orders SET v = 2');
  await c.db.query('INSERT INTO sales.other VALUES (1)');
  await c.db.query('DELETE FROM sales.orders');
  await c.db.query('TRUNCATE public.a');
  await c.db.query('INSERT INTO public.a VALUES (2)');
  await c.db.query('INSERT INTO public.a VALUES (3)'); // a marker: what came before it has arrived when it has
  await waitUntil(() => q.bodies().some((b) => b.table === 'a' && b.new?.id === 3), { timeoutMs: 20_000, message: 'the marker arrives' });
  assert.deepEqual(seen(q.bodies()), ['public.a:insert', 'sales.orders:insert', 'sales.orders:delete', 'public.a:insert', 'public.a:insert']);
});

test('a table created while streaming joins the publication without a restart', async (t) => {
  const c = await context(t, 'newtab', { PGWARREN_TABLES: 'public.*', PGWARREN_PUBLICATION_SYNC_INTERVAL: '1' });
  await c.db.query('CREATE TABLE public.first (id int PRIMARY KEY)');
  const q = await c.broker.bindQueue('#');
  const daemon = await run(t, c.env);
  await c.db.query('CREATE TABLE public.later (id int PRIMARY KEY, note text)');
  await daemon.waitForLog((l) => l.msg === 'publication updated' && JSON.stringify(l.added).includes('public.later'), 20_000);
  await c.db.query("INSERT INTO public.later VALUES (1, 'picked up')");
  await q.waitForCount(1, 20_000);
  assert.equal(q.messages[0]!.body.table, 'later');
  assert.deepEqual(q.messages[0]!.body.new, { id: 1, note: 'picked up' });
});

test('columns added, dropped, renamed or retyped mid-stream give correct events before and after', async (t) => {
  const c = await context(t, 'ddl');
  await c.db.query('CREATE TABLE t (id int PRIMARY KEY, a text, b int)');
  const q = await c.broker.bindQueue('#');
  await run(t, c.env);
  await c.db.query("INSERT INTO t VALUES (1, 'x', 10)");
  await c.db.query('ALTER TABLE t ADD COLUMN c boolean DEFAULT true');
  await c.db.query("INSERT INTO t VALUES (2, 'y', 20, false)");
  await c.db.query('ALTER TABLE t DROP COLUMN a');
  await c.db.query('INSERT INTO t VALUES (3, 30, true)');
  await c.db.query('ALTER TABLE t RENAME COLUMN b TO bee');
  await c.db.query('INSERT INTO t VALUES (4, 40, NULL)');
  await c.db.query('ALTER TABLE t ALTER COLUMN bee TYPE bigint');
  await c.db.query('INSERT INTO t VALUES (5, 9007199254740993, true)');
  await c.db.query('UPDATE t SET bee = bee + 1 WHERE id = 5');
  // Each change of shape is announced by a schema event before the first row of it (README "Schema changes").
  await q.waitForCount(10, 20_000);
  assert.deepEqual(
    q.bodies().map((b) => `${b.op} ${b.op === 'schema' ? b.columns.map((c: { name: string; type: string }) => `${c.name}:${c.type}`).join(',') : b.new.id}`),
    ['insert 1', 'schema id:int4,a:text,b:int4,c:bool', 'insert 2', 'schema id:int4,b:int4,c:bool', 'insert 3', 'schema id:int4,bee:int4,c:bool', 'insert 4', 'schema id:int4,bee:int8,c:bool', 'insert 5', 'update 5'],
  );
  assert.deepEqual(
    q.bodies().filter((b) => b.op !== 'schema').map((b) => b.new),
    [
      { id: 1, a: 'x', b: 10 },
      { id: 2, a: 'y', b: 20, c: false },
      { id: 3, b: 30, c: true },
      { id: 4, bee: 40, c: null },
      { id: 5, bee: '9007199254740993', c: true },
      { id: 5, bee: '9007199254740994', c: true },
    ],
  );
});

test('per-table rules: routing key and exchange, excluded columns, message TTL, flood threshold', async (t) => {
  const c = await context(t, 'rules', { PGWARREN_FLOOD_THRESHOLD: '0' });
  const usersExchange = uniqueName('rules-users', 'amqp');
  await c.broker.declareExchange(usersExchange, 'topic');
  const dir = mkdtempSync(join(tmpdir(), 'pgwarren-rules-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'rules.yaml');
  writeFileSync(
    file,
    [
      'rules:',
      '  - match: public.users',
      `    exchange: ${usersExchange}`,
      '    routing-key: "users.{op}"',
      '    exclude-columns: [password_hash]',
      '    ttl: 60000',
      '  - match: public.events',
      '    flood-threshold: 3',
    ].join('\n'),
  );
  await c.db.query('CREATE TABLE users (id int PRIMARY KEY, email text, password_hash text)');
  await c.db.query('CREATE TABLE events (id int PRIMARY KEY)');
  await c.db.query('CREATE TABLE other (id int PRIMARY KEY)');
  const users = await c.broker.bindQueue('users.*', usersExchange);
  const main = await c.broker.bindQueue('#');
  await run(t, { ...c.env, PGWARREN_CONFIG: file });
  await c.db.query("INSERT INTO users VALUES (1, 'a@example.com', 'secret-hash')");
  await c.db.query("UPDATE users SET password_hash = 'other-secret' WHERE id = 1");
  await c.db.query('INSERT INTO events SELECT g FROM generate_series(1, 5) g'); // over its own threshold
  await c.db.query('INSERT INTO other SELECT g FROM generate_series(1, 5) g'); // global threshold 0: no flood
  // Markers on both routes: events arrive in commit order, so nothing earlier can follow them.
  await c.db.query("INSERT INTO users VALUES (2, 'marker', 'x')");
  await c.db.query('INSERT INTO other VALUES (6)');
  await users.waitForCount(3, 20_000);
  await main.waitForCount(7, 20_000);
  assert.equal(users.messages.length, 3);
  assert.equal(users.messages[2]!.body.new.email, 'marker');
  const [ins] = users.messages;
  assert.equal(ins!.fields.routingKey, 'users.insert');
  assert.deepEqual(ins!.body.new, { id: 1, email: 'a@example.com' });
  assert.equal(ins!.properties.expiration, '60000');
  assert.ok(!users.messages.some((m) => m.content.toString().includes('secret')), 'excluded columns never leave the process');
  assert.deepEqual(seen(main.bodies()), ['public.events:bulk', 'public.other:insert', 'public.other:insert', 'public.other:insert', 'public.other:insert', 'public.other:insert', 'public.other:insert']);
  assert.equal(main.bodies()[6].new.id, 6, 'the marker is last');
  assert.equal(main.messages[1]!.properties.expiration, undefined, 'no TTL without a rule');
});

test('status warns for tables whose replica identity makes old values partial', async (t) => {
  const c = await context(t, 'ident');
  await c.db.query('CREATE TABLE full_t (id int PRIMARY KEY)');
  await c.db.query('ALTER TABLE full_t REPLICA IDENTITY FULL');
  await c.db.query('CREATE TABLE default_t (id int PRIMARY KEY)');
  await c.db.query('CREATE TABLE nothing_t (id int PRIMARY KEY)');
  await c.db.query('ALTER TABLE nothing_t REPLICA IDENTITY NOTHING');
  const { runCli } = await import('../support/daemon.js');
  const r = await runCli(['status', '--json'], c.env);
  assert.equal(r.code, 0, r.stderr);
  const tables = Object.fromEntries(JSON.parse(r.stdout).tables.map((x: { table: string; warning: string | null }) => [x.table, x.warning]));
  assert.equal(tables.full_t, null);
  assert.match(tables.default_t, /only key columns/);
  assert.match(tables.nothing_t, /NOTHING: only inserts and truncates are captured \(Postgres refuses UPDATE and DELETE on a table that publishes them\)/);
});

// Replica identity semantics per kind, pgoutput (the wal2json parity test holds the other plugin to the same).
test('replica identity DEFAULT, FULL, USING INDEX and a key change: key, old and changed as the contract says', async (t) => {
  const c = await context(t, 'ri');
  await c.db.query('CREATE TABLE d (id int PRIMARY KEY, v text)');
  await c.db.query('CREATE TABLE f (id int PRIMARY KEY, v text, w text)');
  await c.db.query('ALTER TABLE f REPLICA IDENTITY FULL');
  await c.db.query('CREATE TABLE i (id int PRIMARY KEY, code text NOT NULL, v text)');
  await c.db.query('CREATE UNIQUE INDEX i_code ON i (code)');
  await c.db.query('ALTER TABLE i REPLICA IDENTITY USING INDEX i_code');
  const q = await c.broker.bindQueue('#');
  await run(t, c.env);
  await c.db.query("INSERT INTO d VALUES (1, 'a'); UPDATE d SET v = 'b'; UPDATE d SET id = 2; DELETE FROM d");
  await c.db.query("INSERT INTO f VALUES (1, 'a', 'x'); UPDATE f SET v = 'b'; DELETE FROM f");
  await c.db.query("INSERT INTO i VALUES (1, 'c1', 'a'); UPDATE i SET v = 'b'; UPDATE i SET code = 'c2'; DELETE FROM i");
  await q.waitForCount(11, 20_000);
  const pick = (b: any) => ({ op: b.op, key: b.key, old: b.old, changed: b.changed });
  const byTable = (name: string) => q.bodies().filter((b) => b.table === name).slice(1).map(pick);
  assert.deepEqual(byTable('d'), [
    { op: 'update', key: { id: 1 }, old: null, changed: null },
    { op: 'update', key: { id: 2 }, old: { id: 1 }, changed: null },
    { op: 'delete', key: { id: 2 }, old: { id: 2 }, changed: null },
  ]);
  assert.deepEqual(byTable('f'), [
    { op: 'update', key: { id: 1 }, old: { id: 1, v: 'a', w: 'x' }, changed: ['v'] },
    { op: 'delete', key: { id: 1 }, old: { id: 1, v: 'b', w: 'x' }, changed: null },
  ]);
  assert.deepEqual(byTable('i'), [
    { op: 'update', key: { id: 1 }, old: null, changed: null },
    { op: 'update', key: { id: 1 }, old: { code: 'c1' }, changed: null },
    { op: 'delete', key: { code: 'c2' }, old: { code: 'c2' }, changed: null },
  ]);
});

test('excluded columns stay inside Postgres: the column list leaves them out where the replica identity allows', async (t) => {
  const c = await context(t, 'collist', { PGWARREN_PUBLICATION_SYNC_INTERVAL: '1' });
  const dir = mkdtempSync(join(tmpdir(), 'pgwarren-collist-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'rules.yaml');
  writeFileSync(
    file,
    [
      'rules:',
      '  - match: public.users',
      '    exclude-columns: [password_hash]',
      '  - match: public.audited',
      '    exclude-columns: [secret]',
      '  - match: public.keyed',
      '    exclude-columns: [token]',
    ].join('\n'),
  );
  await c.db.query('CREATE TABLE users (id int PRIMARY KEY, email text, password_hash text)');
  await c.db.query('CREATE TABLE audited (id int PRIMARY KEY, secret text); ALTER TABLE audited REPLICA IDENTITY FULL');
  await c.db.query('CREATE TABLE keyed (token text PRIMARY KEY, v int)');
  const main = await c.broker.bindQueue('#');
  const daemon = await run(t, { ...c.env, PGWARREN_CONFIG: file });
  const columns = async (table: string) =>
    (await c.db.query<{ attnames: string[] }>('SELECT attnames::text[] AS attnames FROM pg_publication_tables WHERE pubname = $1 AND tablename = $2', [c.slot, table])).rows[0]?.attnames;
  assert.deepEqual(await columns('users'), ['id', 'email'], 'the secret is not in the publication');
  // A column list must cover the replica identity, or Postgres refuses UPDATE and DELETE.
  assert.deepEqual(await columns('audited'), ['id', 'secret'], 'REPLICA IDENTITY FULL: every column');
  assert.deepEqual(await columns('keyed'), ['token', 'v'], 'an excluded key column: every column');
  for (const table of ['audited', 'keyed']) {
    assert.ok(daemon.logs.some((l) => l.table === `public.${table}` && /still sent by Postgres/.test(String(l.msg))), `${table}: says why its column stays published`);
  }

  await c.db.query("INSERT INTO users VALUES (1, 'a@example.com', 'secret-hash')");
  await c.db.query("UPDATE users SET email = 'b@example.com', password_hash = 'other-secret' WHERE id = 1");
  await c.db.query("INSERT INTO audited VALUES (1, 'secret-a')");
  await c.db.query("UPDATE audited SET secret = 'secret-b' WHERE id = 1");
  await c.db.query("INSERT INTO keyed VALUES ('secret-token', 1)");
  await c.db.query('DELETE FROM users WHERE id = 1');
  await main.waitForCount(6, 20_000);
  assert.ok(!main.messages.some((m) => m.content.toString().includes('secret-hash') || m.content.toString().includes('other-secret')), 'users: secret never in an event');
  assert.ok(!main.messages.some((m) => m.content.toString().includes('secret-a') || m.content.toString().includes('secret-b')), 'audited: secret never in an event');
  assert.ok(!main.messages.some((m) => /"token"/.test(m.content.toString().replace(/"key":\{[^}]*\}/g, ''))), 'keyed: excluded column left out of new/old');
  assert.deepEqual(main.bodies()[1].new, { id: 1, email: 'b@example.com' });

  // A column added later is published too: the list is kept equal to "every column but the excluded".
  await c.db.query('ALTER TABLE users ADD COLUMN nickname text');
  await daemon.waitForLog((l) => l.msg === 'publication updated' && JSON.stringify(l.columnLists ?? []).includes('nickname'), 20_000);
  assert.deepEqual(await columns('users'), ['id', 'email', 'nickname']);
  await c.db.query("INSERT INTO users VALUES (2, 'c@example.com', 'secret-hash', 'cee')");
  await main.waitForCount(8, 20_000);
  // The new column is announced first; the schema event leaves the excluded column out too.
  assert.deepEqual(main.bodies()[6].columns.map((c: { name: string }) => c.name), ['id', 'email', 'nickname']);
  assert.deepEqual(main.bodies()[7].new, { id: 2, email: 'c@example.com', nickname: 'cee' });

  // Switching the table to REPLICA IDENTITY FULL: the list is widened to every column, so the
  // table's UPDATEs work again (Postgres refuses them while the list does not cover the identity).
  await c.db.query('ALTER TABLE users REPLICA IDENTITY FULL');
  await daemon.waitForLog((l) => l.msg === 'publication updated' && JSON.stringify(l.columnLists ?? []).includes('"all"'), 20_000);
  assert.deepEqual(await columns('users'), ['id', 'email', 'password_hash', 'nickname']);
  await c.db.query("UPDATE users SET nickname = 'dee' WHERE id = 2");
  await main.waitForCount(9, 20_000);
  // A wider column list is no change of the table's shape: no schema event.
  assert.equal(main.bodies()[8].op, 'update');
  assert.ok(!main.messages.some((m) => m.content.toString().includes('secret-hash')), 'still never in an event');
});

test('a table without replica identity: its inserts are captured, and the application can still update and delete', async (t) => {
  const c = await context(t, 'noident', { PGWARREN_PUBLICATION_SYNC_INTERVAL: '1' });
  await c.db.query('CREATE TABLE keyless (a int, b text)');
  await c.db.query('CREATE TABLE keyed (id int PRIMARY KEY)');
  const main = await c.broker.bindQueue('#');
  const daemon = await run(t, c.env);
  const published = async (pub: string) =>
    (await c.db.query<{ tablename: string }>('SELECT tablename FROM pg_publication_tables WHERE pubname = $1 ORDER BY 1', [pub])).rows.map((r) => r.tablename);
  assert.deepEqual(await published(c.slot), ['keyed']);
  assert.deepEqual(await published(`${c.slot}_keyless`), ['keyless']);
  assert.ok(daemon.logs.some((l) => l.level === 40 && /only inserts and truncates are captured for public\.keyless/.test(String(l.msg))), 'warned about the keyless table');
  // Were the table in a publication that publishes updates, Postgres would refuse these two.
  await c.db.query("INSERT INTO keyless VALUES (1, 'x')");
  await c.db.query("UPDATE keyless SET b = 'y'");
  await c.db.query('DELETE FROM keyless');
  await c.db.query('INSERT INTO keyed VALUES (1)');
  await main.waitForCount(2, 20_000);

  // Given a key, the table moves to the main publication on the next sync and all its changes flow.
  await c.db.query('ALTER TABLE keyless ADD PRIMARY KEY (a)');
  await daemon.waitForLog((l) => l.msg === 'publication updated' && JSON.stringify(l.added).includes('public.keyless'), 20_000);
  assert.deepEqual(await published(`${c.slot}_keyless`), []);
  await c.db.query("INSERT INTO keyless VALUES (2, 'z')");
  await c.db.query("UPDATE keyless SET b = 'w' WHERE a = 2");
  await c.db.query('INSERT INTO keyed VALUES (2)'); // a marker: what came before it has arrived when it has
  await main.waitForCount(5, 20_000);
  assert.deepEqual(seen(main.bodies()), ['public.keyless:insert', 'public.keyed:insert', 'public.keyless:insert', 'public.keyless:update', 'public.keyed:insert']);
  assert.equal(main.bodies()[4].new.id, 2, 'the marker is last');
  assert.equal(main.bodies()[0].key, null, 'no key to report');
  assert.deepEqual(main.bodies()[3].key, { a: 2 });
});

// "a.b"."c" and "a"."b.c" share the text a.b.c: selection, pushdown (publication, wal2json's
// add-tables/filter-tables), flood counts and bulk ids must still tell them apart.
for (const plugin of ['pgoutput', 'wal2json'] as const) {
  const skip = plugin === 'wal2json' && !testEnv().wal2json && 'wal2json is not installed';
  async function dottedTables(c: Ctx): Promise<void> {
    await c.db.query('CREATE SCHEMA "a.b"');
    await c.db.query('CREATE SCHEMA a');
    await c.db.query('CREATE TABLE "a.b".c (id int PRIMARY KEY)');
    await c.db.query('CREATE TABLE a."b.c" (id int PRIMARY KEY)');
    await c.db.query('CREATE TABLE a.d (id int PRIMARY KEY)');
    await c.db.query('CREATE TABLE public.marker (id int PRIMARY KEY)');
  }
  const names = (bodies: any[]) => bodies.map((b) => `${JSON.stringify(b.schema)}.${JSON.stringify(b.table)}:${b.op}:${b.new?.id ?? b.counts?.insert}`);

  test(`${plugin}: an exclusion of schema a leaves "a.b".c in, whichever table the catalog lists first`, { skip }, async (t) => {
    const c = await context(t, `dotx${plugin.slice(0, 3)}`, { PGWARREN_PLUGIN: plugin, PGWARREN_EXCLUDE_TABLES: 'a.*' });
    await dottedTables(c);
    const q = await c.broker.bindQueue('#');
    await run(t, c.env);
    if (plugin === 'pgoutput') {
      const pub = await c.db.query('SELECT schemaname AS s, tablename AS t FROM pg_publication_tables WHERE pubname = $1 ORDER BY 1, 2', [c.slot]);
      assert.deepEqual(pub.rows.map((r) => `${r.s}|${r.t}`), ['a.b|c', 'public|marker']);
    }
    await c.db.query('INSERT INTO "a.b".c VALUES (1)');
    await c.db.query('INSERT INTO a."b.c" VALUES (2)');
    await c.db.query('INSERT INTO a.d VALUES (3)');
    await c.db.query('INSERT INTO public.marker VALUES (4)');
    await waitUntil(() => q.bodies().some((b) => b.table === 'marker'), { timeoutMs: 20_000, message: () => names(q.bodies()).join(' ') });
    assert.deepEqual(names(q.bodies()), ['"a.b"."c":insert:1', '"public"."marker":insert:4']);
  });

  test(`${plugin}: quoted globs name "a.b".c and a."b.c" apart; their flood counts and bulk ids stay apart`, { skip }, async (t) => {
    const c = await context(t, `dotq${plugin.slice(0, 3)}`, {
      PGWARREN_PLUGIN: plugin,
      PGWARREN_TABLES: '"a.b".c,a."b.c",a.d,public.marker',
      PGWARREN_EXCLUDE_TABLES: 'a.d',
      PGWARREN_FLOOD_THRESHOLD: '3',
    });
    await dottedTables(c);
    const q = await c.broker.bindQueue('#');
    await run(t, c.env);
    if (plugin === 'pgoutput') {
      const pub = await c.db.query('SELECT schemaname AS s, tablename AS t FROM pg_publication_tables WHERE pubname = $1 ORDER BY 1, 2', [c.slot]);
      assert.deepEqual(pub.rows.map((r) => `${r.s}|${r.t}`), ['a|b.c', 'a.b|c', 'public|marker']);
    }
    // Two rows of each: neither table is over the threshold of 3 (together they would be).
    await c.db.query('BEGIN');
    await c.db.query('INSERT INTO "a.b".c VALUES (1), (2)');
    await c.db.query('INSERT INTO a."b.c" VALUES (1), (2)');
    await c.db.query('INSERT INTO a.d VALUES (1)');
    await c.db.query('COMMIT');
    // Four rows of each: two floods, two bulk events with different ids.
    await c.db.query('BEGIN');
    await c.db.query('INSERT INTO "a.b".c SELECT g FROM generate_series(3, 6) g');
    await c.db.query('INSERT INTO a."b.c" SELECT g FROM generate_series(3, 6) g');
    await c.db.query('COMMIT');
    await c.db.query('INSERT INTO public.marker VALUES (1)');
    await waitUntil(() => q.bodies().some((b) => b.table === 'marker'), { timeoutMs: 20_000, message: () => names(q.bodies()).join(' ') });
    assert.deepEqual(names(q.bodies()), [
      '"a.b"."c":insert:1',
      '"a.b"."c":insert:2',
      '"a"."b.c":insert:1',
      '"a"."b.c":insert:2',
      '"a.b"."c":bulk:4',
      '"a"."b.c":bulk:4',
      '"public"."marker":insert:1',
    ]);
    const bulks = q.bodies().filter((b) => b.op === 'bulk');
    assert.deepEqual(bulks.map((b) => b.id.replace(/^[^:]*:/, '')), ['bulk:"a.b".c', 'bulk:a."b.c"']);
  });

  test(`${plugin}: a partial wildcard (public.mark*) selects what it says (wal2json cannot be told it)`, { skip }, async (t) => {
    const c = await context(t, `dotw${plugin.slice(0, 3)}`, { PGWARREN_PLUGIN: plugin, PGWARREN_TABLES: 'public.mark*,"a.b".c' });
    await dottedTables(c);
    await c.db.query('CREATE TABLE public.other (id int PRIMARY KEY)');
    const q = await c.broker.bindQueue('#');
    await run(t, c.env);
    await c.db.query('INSERT INTO public.other VALUES (1)');
    await c.db.query('INSERT INTO a."b.c" VALUES (1)');
    await c.db.query('INSERT INTO "a.b".c VALUES (1)');
    await c.db.query('INSERT INTO public.marker VALUES (1)');
    await waitUntil(() => q.bodies().some((b) => b.table === 'marker'), { timeoutMs: 20_000, message: () => names(q.bodies()).join(' ') });
    assert.deepEqual(names(q.bodies()), ['"a.b"."c":insert:1', '"public"."marker":insert:1']);
  });
}
