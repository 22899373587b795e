/**
 * The one-shot commands and exit codes (README "Commands") against real Postgres and RabbitMQ.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createTestDatabase, slotInfo } from '../support/pg.js';
import { createTestBroker } from '../support/amqp.js';
import { runCli, start } from '../support/daemon.js';
import { testEnv, uniqueName } from '../support/env.js';

async function setupFixture(prefix: string) {
  const db = await createTestDatabase(prefix);
  await db.query('CREATE TABLE orders (id int PRIMARY KEY, note text)');
  await db.query('CREATE TABLE logs (line text)');
  await db.query('CREATE SCHEMA audit');
  await db.query('CREATE TABLE audit.events (id int PRIMARY KEY)');
  const slot = uniqueName(prefix);
  const env = { PGWARREN_DATABASE_URL: db.url, PGWARREN_AMQP_URL: testEnv().amqpUrl, PGWARREN_SLOT: slot, PGWARREN_PUBLICATION: slot };
  return { db, slot, env };
}

test('setup is idempotent, status reports it, teardown needs --yes', async (t) => {
  const { db, slot, env } = await setupFixture('cmds');
  t.after(() => db.drop());
  const first = await runCli(['setup', '--tables', 'public.*'], env);
  assert.equal(first.code, 0, first.stderr);
  // logs has no key: publishing its updates would make Postgres refuse its UPDATEs and DELETEs,
  // so it goes to the insert-only companion publication.
  assert.match(first.stdout, /created publication .* with 1 table\(s\)/);
  assert.match(first.stdout, /warning: public\.logs has no primary key or replica identity: only its inserts and truncates are captured/);
  assert.match(first.stdout, /created slot/);
  const again = await runCli(['setup', '--tables', 'public.*'], env);
  assert.equal(again.code, 0, again.stderr);
  assert.match(again.stdout, /publication .* exists/);
  assert.match(again.stdout, /slot .* exists/);
  const pubTables = await db.query("SELECT schemaname || '.' || tablename AS t FROM pg_publication_tables WHERE pubname = $1 ORDER BY 1", [slot]);
  assert.deepEqual(pubTables.rows.map((r) => r.t), ['public.orders']);
  const keylessTables = await db.query("SELECT schemaname || '.' || tablename AS t FROM pg_publication_tables WHERE pubname = $1 ORDER BY 1", [`${slot}_keyless`]);
  assert.deepEqual(keylessTables.rows.map((r) => r.t), ['public.logs']);
  await db.query("INSERT INTO logs VALUES ('a'); UPDATE logs SET line = 'b'; DELETE FROM logs");

  const status = await runCli(['status', '--json', '--tables', 'public.*'], env);
  assert.equal(status.code, 0, status.stderr);
  const report = JSON.parse(status.stdout);
  assert.equal(report.slot.exists, true);
  assert.equal(report.slot.plugin, 'pgoutput');
  assert.equal(report.slot.active, false);
  assert.match(report.slot.confirmedFlushLsn, /^[0-9A-F]+\/[0-9A-F]+$/);
  assert.equal(typeof report.slot.lagBytes, 'number');
  assert.deepEqual(report.publication.tables.sort(), ['public.orders']);
  const logs = report.tables.find((x: { table: string }) => x.table === 'logs');
  assert.match(logs.warning, /no primary key .*only inserts and truncates are captured/);
  assert.equal(logs.inPublication, true);
  const human = await runCli(['status', '--tables', 'public.*'], env);
  assert.match(human.stdout, /slot +.*exists, plugin pgoutput/);
  assert.match(human.stdout, /warning: .*no primary key/);

  // FULL gives the keyless table an identity: setup then publishes it.
  const full = await runCli(['setup', '--tables', 'public.*', '--replica-identity-full'], env);
  assert.equal(full.code, 0, full.stderr);
  const withFull = await db.query("SELECT schemaname || '.' || tablename AS t FROM pg_publication_tables WHERE pubname = $1 ORDER BY 1", [slot]);
  assert.deepEqual(withFull.rows.map((r) => r.t), ['public.logs', 'public.orders']);
  const keylessAfter = await db.query('SELECT count(*)::int AS n FROM pg_publication_tables WHERE pubname = $1', [`${slot}_keyless`]);
  assert.equal(keylessAfter.rows[0].n, 0, 'moved out of the companion');
  await db.query("INSERT INTO logs VALUES ('a'); UPDATE logs SET line = 'b'; DELETE FROM logs");

  const refused = await runCli(['teardown'], env);
  assert.equal(refused.code, 2);
  assert.match(refused.stderr, /--yes/);
  assert.ok(await slotInfo(db.name, slot), 'nothing dropped without --yes');
  const down = await runCli(['teardown', '--yes'], env);
  assert.equal(down.code, 0, down.stderr);
  assert.equal(await slotInfo(db.name, slot), undefined);
  assert.equal((await db.query('SELECT 1 FROM pg_publication WHERE pubname = $1', [slot])).rowCount, 0);
  assert.equal((await db.query('SELECT 1 FROM pg_publication WHERE pubname = $1', [`${slot}_keyless`])).rowCount, 0);
});

test('setup --replica-identity-full sets FULL on every included table', async (t) => {
  const { db, env } = await setupFixture('ident');
  t.after(() => db.drop());
  const r = await runCli(['setup', '--replica-identity-full', '--exclude-tables', 'audit.*'], env);
  assert.equal(r.code, 0, r.stderr);
  const { rows } = await db.query(
    "SELECT n.nspname || '.' || c.relname AS t, c.relreplident AS ident FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'r' AND n.nspname IN ('public', 'audit') ORDER BY 1",
  );
  assert.deepEqual(rows, [{ t: 'audit.events', ident: 'd' }, { t: 'public.logs', ident: 'f' }, { t: 'public.orders', ident: 'f' }]);
  await runCli(['teardown', '--yes'], env);
});

test('bad configuration exits 2 before connecting, naming every problem, without a stack trace', async () => {
  const r = await runCli(['run'], { PGWARREN_DATABASE_URL: 'postgres://nobody@127.0.0.1:1/x', PGWARREN_FLOOD_ACTION: 'boom', PGWARREN_HTTP_PORT: 'abc' });
  assert.equal(r.code, 2);
  assert.match(r.stderr, /PGWARREN_FLOOD_ACTION/);
  assert.match(r.stderr, /PGWARREN_HTTP_PORT/);
  assert.ok(!/\n\s+at /.test(r.stderr), `no stack trace:\n${r.stderr}`);
  const usage = await runCli(['run', '--frobnicate'], {});
  assert.equal(usage.code, 2);
  assert.match(usage.stderr, /frobnicate/);
});

test('a slot made by another plugin is a prerequisite failure: exit 3 with the fix', async (t) => {
  const { db, slot, env } = await setupFixture('plugin');
  t.after(() => db.drop());
  await db.query("SELECT pg_create_logical_replication_slot($1, 'test_decoding')", [slot]);
  const broker = await createTestBroker('plugin');
  t.after(() => broker.cleanup());
  const daemon = await start({ ...env, PGWARREN_EXCHANGE: broker.exchange });
  const exit = await daemon.exited;
  assert.equal(exit.code, 3);
  assert.match(daemon.output(), /created with plugin test_decoding/);
  assert.ok(await slotInfo(db.name, slot), 'run never drops a slot');
});

test('check: every prerequisite ok/fail; exit 0 when all pass, 3 otherwise', async (t) => {
  const { db, env } = await setupFixture('check');
  t.after(() => db.drop());
  const broker = await createTestBroker('check');
  t.after(() => broker.cleanup());
  const ok = await runCli(['check'], { ...env, PGWARREN_EXCHANGE: broker.exchange });
  assert.equal(ok.code, 0, ok.stdout + ok.stderr);
  for (const name of ['wal_level', 'REPLICATION privilege', 'SELECT on tables', 'slot', 'publication', 'broker']) {
    assert.match(ok.stdout, new RegExp(`ok +${name}`), `${name} checked:\n${ok.stdout}`);
  }
  // Once set up, the publication check passes and names the table it leaves out (no key).
  const { slot } = { slot: env.PGWARREN_SLOT };
  t.after(() => runCli(['teardown', '--yes'], env));
  assert.equal((await runCli(['setup'], env)).code, 0);
  const afterSetup = await runCli(['check'], { ...env, PGWARREN_EXCHANGE: broker.exchange });
  assert.equal(afterSetup.code, 0, afterSetup.stdout + afterSetup.stderr);
  assert.match(afterSetup.stdout, new RegExp(`ok +publication.*"${slot}" covers the 3 selected table\\(s\\); inserts and truncates only \\(no primary key or replica identity\\): public\\.logs`));
  // An existing exchange of another type cannot be used.
  await broker.declareExchange(broker.exchange, 'fanout');
  const bad = await runCli(['check', '--json'], { ...env, PGWARREN_EXCHANGE: broker.exchange });
  assert.equal(bad.code, 3);
  const report = JSON.parse(bad.stdout);
  const exchange = report.checks.find((c: { name: string }) => c.name.startsWith('exchange'));
  assert.equal(exchange.ok, false);
  assert.match(exchange.fix, /PGWARREN_EXCHANGE_TYPE/);
});

test('check and status against a broken setup: each failure named with its fix, exit 3', async (t) => {
  const { db, slot, env } = await setupFixture('broken');
  t.after(() => db.drop());
  // A role that lost REPLICATION and cannot read audit.events (its grants cover public only),
  // a broker nobody listens on, and a slot made by hand before any publication.
  const role = await db.daemonRole();
  await db.query(`ALTER ROLE ${role.name} NOREPLICATION`);
  await db.query(`SELECT pg_create_logical_replication_slot($1, 'pgoutput')`, [slot]);
  const broken = { ...env, PGWARREN_DATABASE_URL: role.url, PGWARREN_AMQP_URL: 'amqp://guest:secret@127.0.0.1:1' };

  const check = await runCli(['check', '--json'], broken);
  assert.equal(check.code, 3, check.stdout + check.stderr);
  const checks = new Map<string, { ok: boolean; detail: string; fix?: string }>(
    JSON.parse(check.stdout).checks.map((c: { name: string; ok: boolean; detail: string; fix?: string }) => [c.name, c]),
  );
  const failed = (name: string) => {
    const c = checks.get(name);
    assert.ok(c, `${name} was checked: ${[...checks.keys()].join(', ')}`);
    assert.equal(c.ok, false, `${name} fails: ${c.detail}`);
    return c;
  };
  assert.match(failed('REPLICATION privilege').fix!, new RegExp(`ALTER ROLE ${role.name} WITH REPLICATION`));
  const select = failed('SELECT on tables');
  assert.match(select.detail, /no SELECT on audit\.events/);
  assert.match(select.fix!, new RegExp(`GRANT SELECT ON audit\\.events TO ${role.name}`));
  assert.match(failed('publication').fix!, /re-sync consumers, then "pgwarren teardown --yes" and "pgwarren setup"/);
  const broker = failed('broker');
  assert.match(broker.fix!, /PGWARREN_AMQP_URL/);
  assert.doesNotMatch(check.stdout, /secret/, 'the broker password is redacted');
  assert.equal(checks.get('wal_level')?.ok, true);

  // The human-readable form says the same, one line per check.
  const human = await runCli(['check'], broken);
  assert.equal(human.code, 3);
  assert.match(human.stdout, /FAIL +REPLICATION privilege/);
  assert.match(human.stdout, /ok +wal_level/);

  // status still reports what is there: the slot exists, nothing is published yet.
  const status = await runCli(['status', '--json'], env);
  assert.equal(status.code, 0, status.stderr);
  const report = JSON.parse(status.stdout);
  assert.equal(report.slot.exists, true);
  assert.equal(report.slot.active, false);
  assert.ok(report.tables.every((x: { inPublication: boolean }) => !x.inPublication), 'no table is published');

  // setup warns that the hand-made slot is older than the publication it creates.
  const setup = await runCli(['setup'], env);
  assert.equal(setup.code, 0, setup.stderr);
  assert.match(setup.stdout, /warning: slot ".*" is older than publication/);
  assert.equal((await runCli(['teardown', '--yes'], env)).code, 0);
});
