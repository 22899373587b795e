// test-runner: alone (changes what every test on the machine shares: a broker restart, a broker-wide disk alarm, a cluster-wide WAL budget)
/**
 * The few tests that change the broker or the Postgres cluster for everybody. They run by
 * themselves, after the other files (scripts/test.mjs, docs/architecture.md), and are kept short:
 * while they run, nothing else does.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { assertSlotNotPassed as assertNotPassed, createTestDatabase, slotInfo, withAdmin } from '../support/pg.js';
import { rabbitmqctl } from '../support/amqp.js';
import { freePort, runCli, start } from '../support/daemon.js';
import { testEnv, uniqueName } from '../support/env.js';
import { sleep, waitUntil } from '../support/wait.js';
import { assertExactlyOnceInOrder, events, rowsOf, streamFixture } from '../support/stream.js';
import { scene } from '../support/scene.js';

type Body = Record<string, any>;
const ids = (bodies: Body[]): string[] => bodies.map((b) => `${b.new?.id ?? b.old?.id}`);

test('a broker resource alarm (blocked) pauses reading; readiness drops; nothing lost when it clears', async (t) => {
  const f = await scene(t, 'alarm', {
    schema: 'CREATE TABLE orders (id int PRIMARY KEY, status text NOT NULL, amount numeric)',
    env: { PGWARREN_STATUS_INTERVAL: '1' },
    asOwner: true,
  });
  const queue = await f.queue();
  const daemon = await f.daemon();
  await f.db.query("INSERT INTO orders VALUES (1, 'before', 0)");
  await queue.waitForCount(1, 20_000);

  // A disk alarm makes RabbitMQ block every publishing connection.
  const limit = rabbitmqctl(['eval', 'rabbit_disk_monitor:get_disk_free_limit().']).trim();
  t.after(() => rabbitmqctl(['set_disk_free_limit', /^\d+$/.test(limit) ? limit : '50000000']));
  rabbitmqctl(['set_disk_free_limit', '100000GB']);
  await waitUntil(() => /disk space alarm/i.test(rabbitmqctl(['status'])), { timeoutMs: 30_000, message: 'the broker raised the disk alarm' });
  // RabbitMQ tells a connection it is blocked when it next publishes.
  await f.db.query("INSERT INTO orders SELECT g, 'blocked', 0 FROM generate_series(2, 50) g");
  await daemon.waitForLog('broker blocked', 30_000);
  await waitUntil(async () => (await fetch(`http://127.0.0.1:${daemon.httpPort}/readyz`)).status === 503, { timeoutMs: 10_000, message: 'readyz drops while blocked' });
  // Reading is paused: a transaction committed now is neither published nor acknowledged.
  await f.db.query("INSERT INTO orders SELECT g, 'while blocked', 0 FROM generate_series(51, 60) g");
  await sleep(3_000);
  const held = (await slotInfo(f.db.name, f.slot))!.confirmedFlushLsn;
  const seenWhileBlocked = new Set(ids(queue.bodies()));
  assert.ok(![...seenWhileBlocked].some((id) => Number(id) > 50), 'nothing committed while blocked was published');

  rabbitmqctl(['set_disk_free_limit', /^\d+$/.test(limit) ? limit : '50000000']);
  await queue.waitForCount(60, 60_000);
  await daemon.waitReady(30_000);
  assert.deepEqual(new Set(ids(queue.bodies())).size, 60);
  if (!seenWhileBlocked.has('50')) assertNotPassed(held, queue.bodies(), 50, 'the transaction the broker blocked');
  assertNotPassed(held, queue.bodies(), 60, 'the transaction committed while blocked');
});


async function walStatus(database: string, slot: string): Promise<string | null | undefined> {
  return withAdmin(async (c) => {
    const { rows } = await c.query('SELECT wal_status FROM pg_replication_slots WHERE database = $1 AND slot_name = $2', [database, slot]);
    return rows[0]?.wal_status;
  });
}

test('a slot Postgres invalidated (wal_status lost): run and check exit 3 with instructions; the slot is not re-created', async (t) => {
  const db = await createTestDatabase('lost');
  t.after(() => db.drop());
  await db.query('CREATE TABLE t (id int PRIMARY KEY, pad text)');
  const slot = uniqueName('lost');
  const env = { PGWARREN_DATABASE_URL: db.url, PGWARREN_AMQP_URL: testEnv().amqpUrl, PGWARREN_SLOT: slot, PGWARREN_PUBLICATION: slot };
  const setup = await runCli(['setup'], env);
  assert.equal(setup.code, 0, setup.stderr);

  // Let the idle slot fall behind a tiny WAL budget until a checkpoint invalidates it.
  await withAdmin(async (c) => {
    await c.query("ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'");
    await c.query('SELECT pg_reload_conf()');
  });
  t.after(() =>
    withAdmin(async (c) => {
      await c.query('ALTER SYSTEM RESET max_slot_wal_keep_size');
      await c.query('SELECT pg_reload_conf()');
    }),
  );
  let round = 0;
  await waitUntil(
    async () => {
      for (let i = 0; i < 3; i++) {
        await db.query("INSERT INTO t VALUES ($1, repeat('x', 1000)) ON CONFLICT (id) DO UPDATE SET pad = excluded.pad", [++round]);
        await db.query('SELECT pg_switch_wal()');
      }
      await db.query('CHECKPOINT');
      return (await walStatus(db.name, slot)) === 'lost';
    },
    { timeoutMs: 60_000, intervalMs: 100, message: async () => `slot wal_status is ${await walStatus(db.name, slot)}, not lost` },
  );

  const run = await runCli(['run'], { ...env, PGWARREN_HTTP_PORT: String(await freePort()) });
  assert.equal(run.code, 3, run.stdout + run.stderr);
  const said = run.stdout + run.stderr;
  assert.match(said, /invalidated by Postgres \(wal_status = lost\)/);
  assert.match(said, /Re-sync consumers/);
  assert.match(said, /teardown --yes/);
  assert.equal(await walStatus(db.name, slot), 'lost', 'the slot is left as it is, not dropped or re-created');

  const check = await runCli(['check', '--json'], env);
  assert.equal(check.code, 3);
  const slotCheck = JSON.parse(check.stdout).checks.find((c: { name: string }) => c.name === 'slot');
  assert.equal(slotCheck.ok, false);
  assert.match(slotCheck.fix, /re-sync consumers/i);

  const down = await runCli(['teardown', '--yes'], env);
  assert.equal(down.code, 0, down.stderr);
});

test('stream sink: a broker restart mid-stream (stop_app, start_app): every change once, in commit order', async (t) => {
  const f = await streamFixture('streamr');
  t.after(() => f.cleanup());
  const daemon = await start(f.env);
  t.after(() => daemon.stop());
  await daemon.waitReady(30_000);
  let written = 0;
  let stopWriting = false;
  const writer = (async () => {
    while (written < 400 && !stopWriting) {
      await f.db.query("INSERT INTO orders SELECT g, 'new' FROM generate_series($1::int, $1::int + 4) g", [written + 1]);
      written += 5;
      await sleep(10);
    }
  })();
  t.after(async () => {
    stopWriting = true;
    await writer.catch(() => undefined);
  });
  await sleep(500 + Math.random() * 500);
  try {
    rabbitmqctl(['-q', 'stop_app']);
    await sleep(1000);
  } finally {
    rabbitmqctl(['-q', 'start_app']);
    rabbitmqctl(['-q', 'await_startup']);
  }
  await daemon.waitForLog((l) => /session ended/.test(String(l.msg)), 60_000);
  await daemon.waitReady(60_000);
  await writer;
  await f.db.query("INSERT INTO orders VALUES (1000000, 'marker')");
  // Read only now, from the first message: a consumer from before the restart would have died with it.
  await f.stream.read();
  await f.stream.waitFor((ms) => events(ms).some((e) => e.new?.id === 1000000), () => `marker not in the stream (${events(f.stream.messages).length} events)`);
  const rows = rowsOf(assertExactlyOnceInOrder(f.stream.messages));
  for (let i = 1; i <= written; i++) assert.ok(rows.has(i), `row ${i} is in the stream`);
  assert.equal(await daemon.stop(), 0);
});
