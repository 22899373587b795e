/**
 * The replication slot: created when missing, inspected, and dropped only by `teardown`. `run`
 * calls checkSlot/ensureSlot and never a drop. The publications are in publication.ts.
 */
import { PrerequisiteError, classifyPgError, sqlState } from '../errors.js';
import type { Plugin } from '../types.js';
import type { QueryFn } from '../shared/pg-query.js';

export interface SlotState {
  readonly exists: boolean;
  readonly plugin?: string;
  readonly database?: string;
  readonly active?: boolean;
  readonly activePid?: number | null;
  readonly confirmedFlushLsn?: string | null;
  readonly restartLsn?: string | null;
  readonly walStatus?: string | null;
  readonly lagBytes?: string | null;
}

export async function walLevel(query: QueryFn): Promise<string> {
  const { rows } = await query<{ wal_level: string }>('SHOW wal_level');
  return rows[0]!.wal_level;
}

export async function requireLogicalWal(query: QueryFn): Promise<void> {
  const level = await walLevel(query);
  if (level !== 'logical') {
    throw new PrerequisiteError(
      `wal_level is "${level}", logical decoding needs "logical". Run ALTER SYSTEM SET wal_level = logical; and restart Postgres.`,
    );
  }
}

export async function slotState(query: QueryFn, slot: string): Promise<SlotState> {
  const { rows } = await query<{
    plugin: string;
    database: string;
    active: boolean;
    active_pid: number | null;
    confirmed_flush_lsn: string | null;
    restart_lsn: string | null;
    wal_status: string | null;
    lag_bytes: string | null;
  }>(
    `SELECT plugin, database, active, active_pid, confirmed_flush_lsn::text, restart_lsn::text, wal_status,
            (CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn) END)::text AS lag_bytes
       FROM pg_replication_slots WHERE slot_name = $1`,
    [slot],
  );
  const r = rows[0];
  if (!r) return { exists: false };
  return {
    exists: true,
    plugin: r.plugin,
    database: r.database,
    active: r.active,
    activePid: r.active_pid,
    confirmedFlushLsn: r.confirmed_flush_lsn,
    restartLsn: r.restart_lsn,
    walStatus: r.wal_status,
    lagBytes: r.lag_bytes,
  };
}

/**
 * The slot's state when it exists and is usable by these settings; a PrerequisiteError when it
 * is not (another plugin or database, invalidated), or when it is missing and `mayCreate` is
 * false (it disappeared under a running daemon).
 */
export async function checkSlot(
  query: QueryFn,
  opts: { slot: string; plugin: Plugin; database: string; mayCreate: boolean },
): Promise<SlotState> {
  const state = await slotState(query, opts.slot);
  if (state.exists) {
    if (state.plugin !== opts.plugin) {
      throw new PrerequisiteError(
        `slot "${opts.slot}" was created with plugin ${state.plugin}, but PGWARREN_PLUGIN is ${opts.plugin}. ` +
          `Set PGWARREN_PLUGIN=${state.plugin}, or choose another PGWARREN_SLOT, or drop it deliberately with "pgwarren teardown --yes" (its unread changes are lost).`,
      );
    }
    if (state.database !== opts.database) {
      throw new PrerequisiteError(
        `slot "${opts.slot}" belongs to database "${state.database}", not "${opts.database}". Choose another PGWARREN_SLOT.`,
      );
    }
    if (state.walStatus === 'lost') {
      throw new PrerequisiteError(
        `slot "${opts.slot}" was invalidated by Postgres (wal_status = lost): WAL it still needed was removed, so changes were lost. ` +
          `Re-sync consumers from the tables, then drop and re-create the slot deliberately ("pgwarren teardown --yes" and "pgwarren setup"). ` +
          `Raise max_slot_wal_keep_size to make this less likely.`,
      );
    }
    return state;
  }
  if (!opts.mayCreate) {
    throw new PrerequisiteError(
      `slot "${opts.slot}" disappeared while pgwarren was running; changes made since it was dropped are not in any slot. ` +
        `Re-create it deliberately with "pgwarren setup" after re-syncing consumers.`,
    );
  }
  return state;
}

/**
 * Checks the slot (see `checkSlot`) and creates it when missing. With pgoutput, create the
 * publications first: Postgres decodes with the publications as they were when each change was
 * made, so changes made between a slot's creation and its publication's can never be decoded
 * ("publication ... does not exist") and the slot would be stuck holding WAL.
 */
export async function ensureSlot(
  query: QueryFn,
  opts: { slot: string; plugin: Plugin; database: string; mayCreate: boolean },
): Promise<{ created: boolean; state: SlotState }> {
  const state = await checkSlot(query, opts);
  if (state.exists) return { created: false, state };
  try {
    // No timeout: Postgres waits for every transaction running now to end (see SourcePreparation.createSlot in prepare.ts).
    await query('SELECT pg_create_logical_replication_slot($1, $2)', [opts.slot, opts.plugin], { timeoutMs: 0 });
  } catch (err) {
    if (sqlState(err) === '42710') return { created: false, state: await slotState(query, opts.slot) }; // created concurrently
    throw classifyPgError(err, `creating replication slot "${opts.slot}" with output plugin ${opts.plugin}`);
  }
  return { created: true, state: await slotState(query, opts.slot) };
}

export async function dropSlot(query: QueryFn, slot: string): Promise<boolean> {
  const state = await slotState(query, slot);
  if (!state.exists) return false;
  if (state.active) {
    throw new PrerequisiteError(`slot "${slot}" is in use by process ${state.activePid}; stop that pgwarren first.`);
  }
  await query('SELECT pg_drop_replication_slot($1)', [slot]);
  return true;
}
