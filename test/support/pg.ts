/**
 * One database per test in the private cluster; `drop()` removes it with every slot it holds, so
 * no slot is left to pin WAL.
 */
import pg from 'pg';
import { testEnv, uniqueName } from './env.js';
import { sleep } from './wait.js';

export interface TestDatabase {
  readonly name: string;
  /** Superuser URL of the new database. */
  readonly url: string;
  /** Connected to the new database; closed by `drop()`. */
  readonly client: pg.Client;
  query<R extends pg.QueryResultRow = any>(sql: string, params?: unknown[]): Promise<pg.QueryResult<R>>;
  drop(): Promise<void>;
}

export interface SlotInfo {
  readonly active: boolean;
  readonly activePid: number | null;
  readonly confirmedFlushLsn: string | null;
  readonly plugin: string;
}

export function urlFor(database: string, user?: string, password?: string): string {
  const u = new URL(testEnv().pgUrl);
  u.pathname = `/${database}`;
  if (user) u.username = user;
  if (password) u.password = password;
  return u.toString();
}

/** Run `fn` with a short-lived superuser connection to the cluster's `postgres` database. */
export async function withAdmin<T>(fn: (c: pg.Client) => Promise<T>): Promise<T> {
  const c = new pg.Client({ connectionString: testEnv().pgUrl });
  c.on('error', () => undefined);
  await c.connect();
  try {
    return await fn(c);
  } finally {
    await c.end().catch(() => undefined);
  }
}

export async function createTestDatabase(prefix: string): Promise<TestDatabase> {
  const name = uniqueName(prefix);
  await withAdmin((c) => c.query(`CREATE DATABASE ${name}`));
  const url = urlFor(name);
  const client = new pg.Client({ connectionString: url });
  // A test may terminate backends on purpose; an unhandled 'error' would crash the test process.
  client.on('error', () => undefined);
  try {
    await client.connect();
  } catch (err) {
    await dropDatabase(name);
    throw err;
  }
  let dropped = false;
  return {
    name,
    url,
    client,
    query: (sql, params) => client.query(sql, params),
    async drop() {
      if (dropped) return;
      dropped = true;
      await client.end().catch(() => undefined);
      await dropDatabase(name);
    },
  };
}

/**
 * Drop a database and its slots. A daemon that is still running may re-acquire a slot right after
 * its walsender is terminated, hence the retries.
 */
export async function dropDatabase(name: string): Promise<void> {
  await withAdmin(async (c) => {
    await c.query('SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()', [name]);
    const deadline = Date.now() + 10_000;
    for (;;) {
      const { rows } = await c.query<{ slot_name: string; active_pid: number | null }>(
        'SELECT slot_name, active_pid FROM pg_replication_slots WHERE database = $1',
        [name],
      );
      if (rows.length === 0) break;
      if (Date.now() > deadline) throw new Error(`could not drop the slots of ${name}, still active: ${rows.map((r) => `${r.slot_name} (pid ${r.active_pid})`).join(', ')}`);
      for (const r of rows) {
        if (r.active_pid) await c.query('SELECT pg_terminate_backend($1)', [r.active_pid]);
        else await c.query('SELECT pg_drop_replication_slot($1)', [r.slot_name]).catch(() => undefined);
      }
      await sleep(50);
    }
    await c.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
  });
}

export async function slotInfo(database: string, slot: string): Promise<SlotInfo | undefined> {
  return withAdmin(async (c) => {
    const { rows } = await c.query(
      'SELECT active, active_pid, confirmed_flush_lsn::text AS lsn, plugin FROM pg_replication_slots WHERE database = $1 AND slot_name = $2',
      [database, slot],
    );
    const r = rows[0];
    return r ? { active: r.active, activePid: r.active_pid, confirmedFlushLsn: r.lsn, plugin: r.plugin } : undefined;
  });
}

export async function listSlots(database: string): Promise<string[]> {
  return withAdmin(async (c) => (await c.query('SELECT slot_name FROM pg_replication_slots WHERE database = $1 ORDER BY 1', [database])).rows.map((r) => r.slot_name));
}
