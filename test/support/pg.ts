/**
 * One database per test in the private cluster; `drop()` removes it with every slot it holds, so
 * no slot is left to pin WAL.
 */
import { randomBytes } from 'node:crypto';
import assert from 'node:assert/strict';
import pg from 'pg';
import { parseLsn } from '../../src/source/lsn.js';
import { testEnv, uniqueName } from './env.js';
import { sleep } from './wait.js';

export interface TestDatabase {
  readonly name: string;
  /** Superuser URL of the new database. */
  readonly url: string;
  /** Connected to the new database; closed by `drop()`. */
  readonly client: pg.Client;
  query<R extends pg.QueryResultRow = any>(sql: string, params?: unknown[]): Promise<pg.QueryResult<R>>;
  /**
   * The role a daemon should run as: LOGIN REPLICATION, not superuser, with SELECT on the public
   * schema's tables (those there now and those the superuser creates later). It owns nothing, so
   * the publication must come from `setup` run with `url`. Made on first call; dropped by `drop()`.
   */
  daemonRole(): Promise<DaemonRole>;
  /** Drops the database with its slots, and the daemon role if one was made. */
  drop(): Promise<void>;
}

export interface DaemonRole {
  readonly name: string;
  readonly password: string;
  /** URL of the database as this role, password included. */
  readonly url: string;
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
  // FILE_COPY: Postgres 15's default (WAL_LOG) writes the whole template, about 4.4 MB, into the WAL,
  // which every test's walsender then reads past; a copy of the files writes none and takes half
  // the time.
  await withAdmin((c) => c.query(`CREATE DATABASE ${name} STRATEGY = FILE_COPY`));
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
  let role: Promise<DaemonRole> | undefined;
  return {
    name,
    url,
    client,
    query: (sql, params) => client.query(sql, params),
    daemonRole() {
      role ??= (async () => {
        const r = { name: `${name}_d`, password: `pw-${randomBytes(6).toString('hex')}` };
        await client.query(`CREATE ROLE ${r.name} LOGIN REPLICATION PASSWORD '${r.password}'`);
        await client.query(`GRANT SELECT ON ALL TABLES IN SCHEMA public TO ${r.name}`);
        await client.query(`ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO ${r.name}`);
        return { ...r, url: urlFor(name, r.name, r.password) };
      })();
      return role;
    },
    async drop() {
      if (dropped) return;
      dropped = true;
      await client.end().catch(() => undefined);
      await dropDatabase(name);
      // Its grants and default privileges went with the database; nothing else refers to it.
      if (role) {
        const r = await role.catch(() => undefined);
        if (r) await withAdmin((c) => c.query(`DROP ROLE IF EXISTS ${r.name}`));
        else await withAdmin((c) => c.query(`DROP ROLE IF EXISTS ${name}_d`));
      }
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

/** An LSN's value; null and undefined (a slot that never confirmed anything) count as 0. */
export const lsnValue = (lsn: string | null | undefined): bigint => (lsn ? parseLsn(lsn) : 0n);

export function lsnLe(a: string | null | undefined, b: string | null | undefined): boolean {
  return lsnValue(a) <= lsnValue(b);
}

/**
 * Postgres re-sends every transaction whose commit record is at or after the slot's
 * confirmed_flush_lsn, so the delivery promise is exactly: while a transaction is unconfirmed, the
 * slot stays at or before its commit LSN (tx.lsn). A position inside a transaction still being
 * written (a keepalive can report one) is not a pass. `held` was read while the transaction was
 * unconfirmed; returns the event of row `rowId`.
 */
export function assertSlotNotPassed<B extends { new?: { id?: unknown }; old?: { id?: unknown }; tx: { lsn: string } }>(
  held: string | null,
  bodies: B[],
  rowId: number,
  what: string,
): B {
  const event = bodies.find((b) => `${b.new?.id ?? b.old?.id}` === String(rowId));
  assert.ok(event, `the event for row ${rowId} arrived`);
  // null: the slot never confirmed anything
  if (held !== null) assert.ok(lsnLe(held, event.tx.lsn), `slot at ${held} passed ${what} (commit ${event.tx.lsn}) before the broker confirmed it`);
  return event;
}
