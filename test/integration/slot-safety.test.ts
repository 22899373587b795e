/**
 * Source safety (CONTRACT §8): a slot Postgres invalidated because it fell behind
 * max_slot_wal_keep_size has lost changes. `run` must stop with exit 3 and say what to do, and
 * must never quietly re-create the slot, which would hide the gap from consumers.
 *
 * This file changes a cluster-wide setting (max_slot_wal_keep_size) and restores it; test files
 * run one at a time, so no other test's slot is exposed to it.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createTestDatabase, withAdmin } from '../support/pg.js';
import { freePort, runCli } from '../support/daemon.js';
import { testEnv, uniqueName } from '../support/env.js';
import { waitUntil } from '../support/wait.js';

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
