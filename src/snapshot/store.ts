/**
 * Where snapshots live: the table `pgwarren.snapshots` (README "Snapshots"). It is both the channel
 * between `pgwarren snapshot` and the running daemon and the durable progress of each snapshot, so
 * a snapshot outlives sessions, kill -9, restarts and HA takeover (whoever holds the slot resumes it).
 *
 * States of a snapshot row:
 *   pending   -> (daemon picks it up) running -> done
 *   pending | running -> (pgwarren snapshot --cancel) cancelled
 *   running   -> (a table vanished, lost its key, a --where that fails) failed
 *
 * Progress (`table_index`, `cursor`, `chunk`) moves only after the broker confirmed every event of
 * a chunk: after a crash the last chunk may be published again, never skipped.
 *
 * `setup` creates the schema and table (owned by the setup role); the run role needs one grant,
 * `GRANT SELECT, INSERT, UPDATE ON pgwarren.snapshots TO <run role>` (README).
 */
import type { QueryFn } from '../shared/pg-query.js';

export const SNAPSHOT_SCHEMA = 'pgwarren';
export const SNAPSHOT_TABLE = 'pgwarren.snapshots';

export type SnapshotState = 'pending' | 'running' | 'done' | 'cancelled' | 'failed';

export interface SnapshotRow {
  readonly id: number;
  readonly slot: string;
  readonly kind: 'request' | 'initial';
  readonly globs: readonly string[];
  /** The tables it covers, `schema.table`, in the order they are read. */
  readonly tables: readonly string[];
  readonly where: string | null;
  readonly chunkSize: number;
  readonly exchange: string | null;
  readonly routingKey: string | null;
  readonly rate: number | null;
  readonly state: SnapshotState;
  readonly tableIndex: number;
  /** Last confirmed key of the current table, as Postgres' text of each key column; null = start. */
  readonly cursor: readonly string[] | null;
  /**
   * The current table's greatest key when its reading began: the snapshot stops there. Rows
   * inserted later with greater keys reach consumers as inserts; without the bound a table
   * that keeps growing at its end would never finish.
   */
  readonly upper: readonly string[] | null;
  /** Chunks confirmed in the current table. */
  readonly chunk: number;
  readonly chunks: number;
  readonly rows: number;
  /** Rows expected in all its tables (planner estimate), null when unknown. */
  readonly estimate: number | null;
  readonly error: string | null;
  readonly createdAt: string;
  readonly startedAt: string | null;
  readonly updatedAt: string | null;
  readonly finishedAt: string | null;
}

/** Created by `setup` (idempotent). USAGE on the schema is harmless alone; the table needs the grant. */
export const CREATE_SQL = `
CREATE SCHEMA IF NOT EXISTS ${SNAPSHOT_SCHEMA};
GRANT USAGE ON SCHEMA ${SNAPSHOT_SCHEMA} TO PUBLIC;
CREATE TABLE IF NOT EXISTS ${SNAPSHOT_TABLE} (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  slot text NOT NULL,
  kind text NOT NULL DEFAULT 'request',
  globs text[] NOT NULL,
  tables text[] NOT NULL,
  where_sql text,
  chunk_size int NOT NULL CHECK (chunk_size > 0),
  exchange text,
  routing_key text,
  rate int CHECK (rate > 0),
  state text NOT NULL DEFAULT 'pending',
  table_index int NOT NULL DEFAULT 0,
  cursor text[],
  upper text[],
  chunk int NOT NULL DEFAULT 0,
  chunks bigint NOT NULL DEFAULT 0,
  rows bigint NOT NULL DEFAULT 0,
  estimate bigint,
  error text,
  created_at timestamptz NOT NULL DEFAULT now(),
  started_at timestamptz,
  updated_at timestamptz,
  finished_at timestamptz
)`;

const COLUMNS = `id, slot, kind, globs, tables, where_sql, chunk_size, exchange, routing_key, rate, state, table_index, cursor, upper,
  chunk, chunks::text, rows::text, estimate::text, error,
  to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS created_at,
  to_char(started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS started_at,
  to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS updated_at,
  to_char(finished_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS finished_at`;

interface DbRow {
  id: string;
  slot: string;
  kind: string;
  globs: string[];
  tables: string[];
  where_sql: string | null;
  chunk_size: number;
  exchange: string | null;
  routing_key: string | null;
  rate: number | null;
  state: string;
  table_index: number;
  cursor: string[] | null;
  upper: string[] | null;
  chunk: number;
  chunks: string;
  rows: string;
  estimate: string | null;
  error: string | null;
  created_at: string;
  started_at: string | null;
  updated_at: string | null;
  finished_at: string | null;
}

function toRow(r: DbRow): SnapshotRow {
  return {
    id: Number(r.id),
    slot: r.slot,
    kind: r.kind === 'initial' ? 'initial' : 'request',
    globs: r.globs,
    tables: r.tables,
    where: r.where_sql,
    chunkSize: r.chunk_size,
    exchange: r.exchange,
    routingKey: r.routing_key,
    rate: r.rate,
    state: r.state as SnapshotState,
    tableIndex: r.table_index,
    cursor: r.cursor,
    upper: r.upper,
    chunk: r.chunk,
    chunks: Number(r.chunks),
    rows: Number(r.rows),
    estimate: r.estimate === null ? null : Number(r.estimate),
    error: r.error,
    createdAt: r.created_at,
    startedAt: r.started_at,
    updatedAt: r.updated_at,
    finishedAt: r.finished_at,
  };
}

export interface NewSnapshot {
  readonly slot: string;
  readonly kind: 'request' | 'initial';
  readonly globs: readonly string[];
  readonly tables: readonly string[];
  readonly where: string | null;
  readonly chunkSize: number;
  readonly exchange: string | null;
  readonly routingKey: string | null;
  readonly rate: number | null;
}

export async function createStore(query: QueryFn): Promise<void> {
  await query(CREATE_SQL);
}

export async function insertSnapshot(query: QueryFn, s: NewSnapshot): Promise<number> {
  const { rows } = await query<{ id: string }>(
    `INSERT INTO ${SNAPSHOT_TABLE} (slot, kind, globs, tables, where_sql, chunk_size, exchange, routing_key, rate)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id`,
    [s.slot, s.kind, s.globs, s.tables, s.where, s.chunkSize, s.exchange, s.routingKey, s.rate],
  );
  return Number(rows[0]!.id);
}

export async function listSnapshots(query: QueryFn, slot: string): Promise<SnapshotRow[]> {
  const { rows } = await query<DbRow>(`SELECT ${COLUMNS} FROM ${SNAPSHOT_TABLE} WHERE slot = $1 ORDER BY id`, [slot]);
  return rows.map(toRow);
}

export async function getSnapshot(query: QueryFn, id: number): Promise<SnapshotRow | undefined> {
  const { rows } = await query<DbRow>(`SELECT ${COLUMNS} FROM ${SNAPSHOT_TABLE} WHERE id = $1`, [id]);
  return rows[0] ? toRow(rows[0]) : undefined;
}

/** The snapshot the daemon of `slot` should work on: the oldest unfinished one. */
export async function nextSnapshot(query: QueryFn, slot: string): Promise<SnapshotRow | undefined> {
  const { rows } = await query<DbRow>(
    `SELECT ${COLUMNS} FROM ${SNAPSHOT_TABLE} WHERE slot = $1 AND state IN ('pending', 'running') ORDER BY id LIMIT 1`,
    [slot],
  );
  return rows[0] ? toRow(rows[0]) : undefined;
}

/** True when an initial snapshot was ever recorded for `slot`. */
export async function hasInitial(query: QueryFn, slot: string): Promise<boolean> {
  const { rows } = await query<{ yes: boolean }>(`SELECT EXISTS (SELECT 1 FROM ${SNAPSHOT_TABLE} WHERE slot = $1 AND kind = 'initial') AS yes`, [slot]);
  return rows[0]?.yes === true;
}

/** pending -> running; returns false when it was cancelled meanwhile. */
export async function markRunning(query: QueryFn, id: number, estimate: number | null): Promise<boolean> {
  const { rows } = await query(
    `UPDATE ${SNAPSHOT_TABLE} SET state = 'running', started_at = coalesce(started_at, now()), updated_at = now(),
            estimate = coalesce(estimate, $2) WHERE id = $1 AND state IN ('pending', 'running') RETURNING id`,
    [id, estimate],
  );
  return rows.length > 0;
}

/**
 * A chunk's events were all confirmed by the broker: move the cursor past it. Returns false when
 * the snapshot is no longer running (cancelled).
 */
export async function recordChunk(
  query: QueryFn,
  id: number,
  p: { tableIndex: number; cursor: readonly string[] | null; chunk: number; rows: number; final: boolean },
): Promise<boolean> {
  const { rows } = await query(
    `UPDATE ${SNAPSHOT_TABLE}
        SET table_index = $2 + (CASE WHEN $5 THEN 1 ELSE 0 END),
            cursor = CASE WHEN $5 THEN NULL ELSE $3::text[] END,
            upper = CASE WHEN $5 THEN NULL ELSE upper END,
            chunk = CASE WHEN $5 THEN 0 ELSE $4 END,
            chunks = chunks + 1, rows = rows + $6, updated_at = now()
      WHERE id = $1 AND state = 'running' RETURNING id`,
    [id, p.tableIndex, p.cursor, p.chunk, p.final, p.rows],
  );
  return rows.length > 0;
}

/** Record where the current table's reading stops (its greatest key now). */
export async function setUpper(query: QueryFn, id: number, tableIndex: number, upper: readonly string[]): Promise<boolean> {
  const { rows } = await query(
    `UPDATE ${SNAPSHOT_TABLE} SET upper = $3::text[], updated_at = now() WHERE id = $1 AND table_index = $2 AND state = 'running' RETURNING id`,
    [id, tableIndex, upper],
  );
  return rows.length > 0;
}

export async function finishSnapshot(query: QueryFn, id: number, state: 'done' | 'failed', error: string | null = null): Promise<void> {
  await query(
    `UPDATE ${SNAPSHOT_TABLE} SET state = $2, error = $3, updated_at = now(), finished_at = now() WHERE id = $1 AND state IN ('pending', 'running')`,
    [id, state, error],
  );
}

/** Returns the state the snapshot had, or undefined when no such snapshot exists for `slot`. */
export async function cancelSnapshot(query: QueryFn, slot: string, id: number): Promise<SnapshotState | undefined> {
  const { rows } = await query<{ state: string }>(
    `WITH before AS (SELECT id, state FROM ${SNAPSHOT_TABLE} WHERE id = $1 AND slot = $2),
          upd AS (UPDATE ${SNAPSHOT_TABLE} s SET state = 'cancelled', updated_at = now(), finished_at = now()
                   FROM before WHERE s.id = before.id AND before.state IN ('pending', 'running'))
     SELECT state FROM before`,
    [id, slot],
  );
  return rows[0]?.state as SnapshotState | undefined;
}

/** `teardown` forgets the slot's snapshots with the slot (a new slot gets a new initial snapshot). */
export async function forgetSlot(query: QueryFn, slot: string): Promise<number> {
  const { rows } = await query(`DELETE FROM ${SNAPSHOT_TABLE} WHERE slot = $1 RETURNING id`, [slot]);
  return rows.length;
}

/** Progress figures derived from a row: rate (rows/s since it started) and ETA (s), when known. */
export function progressOf(s: SnapshotRow, now = Date.now()): { rate: number | null; etaSeconds: number | null; percent: number | null } {
  const started = s.startedAt ? Date.parse(s.startedAt) : NaN;
  const until = s.finishedAt ? Date.parse(s.finishedAt) : s.state === 'running' ? now : s.updatedAt ? Date.parse(s.updatedAt) : NaN;
  const secs = (until - started) / 1000;
  const rate = Number.isFinite(secs) && secs > 0 ? s.rows / secs : null;
  const percent = s.state === 'done' ? 100 : s.estimate && s.estimate > 0 ? Math.min(99, (100 * s.rows) / s.estimate) : null;
  const left = s.estimate !== null ? Math.max(0, s.estimate - s.rows) : null;
  const etaSeconds = s.state === 'done' ? 0 : s.state === 'running' && rate && left !== null ? left / rate : null;
  return { rate, etaSeconds, percent };
}
