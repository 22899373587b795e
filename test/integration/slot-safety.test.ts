/**
 * Source safety (README "Commands"): a slot Postgres invalidated because it fell behind
 * max_slot_wal_keep_size has lost changes. `run` must stop with exit 3 and say what to do, and
 * must never quietly re-create the slot, which would hide the gap from consumers. A slot is
 * only ever created after its publications (a slot older than its publication cannot decode the
 * changes in between and would be stuck holding WAL), and a slot that is stuck that way is
 * exit 3, not an endless retry.
 *
 * The invalidated slot needs a cluster-wide setting: that test is in machine-wide.test.ts.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createTestDatabase, slotInfo } from '../support/pg.js';
import { createTestBroker } from '../support/amqp.js';
import { freePort, runCli, start } from '../support/daemon.js';
import { testEnv, uniqueName } from '../support/env.js';
import { sleep, waitUntil } from '../support/wait.js';

test('a first start under steady writes: the publication comes before the slot, so the slot never gets stuck', async (t) => {
  const db = await createTestDatabase('order');
  t.after(() => db.drop());
  await db.query('CREATE TABLE t (id int PRIMARY KEY)');
  const broker = await createTestBroker('order');
  t.after(() => broker.cleanup());
  await broker.declareExchange(broker.exchange);
  const queue = await broker.bindQueue('#');
  const slot = uniqueName('order');
  // A row every few ms from before the daemon starts: with the slot made first, a row committed
  // between the two would have been undecodable ("publication ... does not exist").
  let next = 0;
  let writing = true;
  const writer = (async () => {
    while (writing) {
      await db.query('INSERT INTO t VALUES ($1)', [++next]);
      await sleep(3);
    }
  })();
  t.after(async () => {
    writing = false;
    await writer;
  });
  await sleep(200);
  const daemon = await start({ PGWARREN_DATABASE_URL: db.url, PGWARREN_AMQP_URL: testEnv().amqpUrl, PGWARREN_SLOT: slot, PGWARREN_PUBLICATION: slot, PGWARREN_EXCHANGE: broker.exchange, PGWARREN_RECONNECT_MAX_DELAY: '1' });
  t.after(() => daemon.stop());
  await daemon.waitReady(30_000);
  await sleep(500);
  writing = false;
  await writer;
  const last = next;
  await waitUntil(() => queue.bodies().some((b) => b.new.id === last), { timeoutMs: 30_000, message: () => `row ${last} never arrived; ${queue.messages.length} messages` });
  const ids = queue.bodies().map((b) => b.new.id as number);
  const first = ids[0]!;
  assert.deepEqual(ids, Array.from({ length: last - first + 1 }, (_, i) => first + i), 'every row from the first one in the slot on, in order');
  // (Only the publication's: other lines may say that something else does not exist, such as the
  // snapshot table of a deployment that never set snapshots up.)
  assert.ok(!daemon.logs.some((l) => /publication "[^"]*" does not exist/.test(`${String(l.msg)} ${String(l.err ?? '')}`)), 'no undecodable change');
  assert.ok(daemon.logs.some((l) => l.msg === 'created replication slot'), 'a plain info line: nothing ran here before');
  assert.equal(await daemon.stop(), 0);
});

test('a slot older than its publication: exit 3 with what to do, not an endless retry', async (t) => {
  const db = await createTestDatabase('older');
  t.after(() => db.drop());
  await db.query('CREATE TABLE t (id int PRIMARY KEY)');
  const broker = await createTestBroker('older');
  t.after(() => broker.cleanup());
  await broker.declareExchange(broker.exchange);
  const slot = uniqueName('older');
  // Made by hand (or by a tool that orders it wrong), then a change, then the publication.
  await db.query(`SELECT pg_create_logical_replication_slot($1, 'pgoutput')`, [slot]);
  await db.query('INSERT INTO t VALUES (1)');
  const run = await runCli(['run'], {
    PGWARREN_DATABASE_URL: db.url,
    PGWARREN_AMQP_URL: testEnv().amqpUrl,
    PGWARREN_SLOT: slot,
    PGWARREN_PUBLICATION: slot,
    PGWARREN_EXCHANGE: broker.exchange,
    PGWARREN_HTTP_PORT: String(await freePort()),
  });
  const said = (run.stdout + run.stderr).replace(/\\"/g, '"'); // JSON log lines escape quotes
  assert.equal(run.code, 3, said);
  assert.match(said, new RegExp(`slot "${slot}" holds changes made before publication "${slot}(_keyless)?" existed`));
  assert.match(said, /teardown --yes.*setup/);
  assert.ok(await slotInfo(db.name, slot), 'run never drops a slot');
});

test('a missing slot where the publication exists is re-created with a warning to re-sync consumers', async (t) => {
  const db = await createTestDatabase('recreate');
  t.after(() => db.drop());
  await db.query('CREATE TABLE t (id int PRIMARY KEY)');
  const broker = await createTestBroker('recreate');
  t.after(() => broker.cleanup());
  await broker.declareExchange(broker.exchange);
  const slot = uniqueName('recreate');
  const env = { PGWARREN_DATABASE_URL: db.url, PGWARREN_AMQP_URL: testEnv().amqpUrl, PGWARREN_SLOT: slot, PGWARREN_PUBLICATION: slot, PGWARREN_EXCHANGE: broker.exchange };
  assert.equal((await runCli(['setup'], env)).code, 0);
  // A failover to a standby, or someone dropping the slot while pgwarren was stopped.
  await db.query('SELECT pg_drop_replication_slot($1)', [slot]);
  const daemon = await start(env);
  t.after(() => daemon.stop());
  const warning = await daemon.waitForLog((l) => /was missing though publication/.test(String(l.msg)), 20_000);
  assert.equal(warning.level, 40);
  assert.match(String(warning.msg), /re-sync consumers/);
  await daemon.waitReady(20_000);
  assert.equal(await daemon.stop(), 0);
});
