/**
 * Asking for a snapshot: resolve the globs to included tables, refuse what cannot be snapshotted
 * (with the reason), check that a `--where` is valid SQL for every table, and record the request
 * for the daemon that holds the slot. Used by `pgwarren snapshot` and by PGWARREN_SNAPSHOT=initial.
 */
import { TableSelection } from '../filter/selection.js';
import type { QueryFn } from '../shared/pg-query.js';
import { quoteIdent } from '../source/decoder.js';
import { sqlState } from '../errors.js';
import { hasInitial, insertSnapshot } from './store.js';
import { resolveTables, splitName } from './tables.js';

export interface SnapshotRequest {
  readonly slot: string;
  readonly includeTables: readonly string[];
  readonly excludeTables: readonly string[];
  readonly globs: readonly string[];
  readonly where: string | null;
  readonly chunkSize: number;
  readonly exchange: string | null;
  readonly routingKey: string | null;
  readonly rate: number | null;
}

/** The request cannot be made as asked; the message says why (exit 2). */
export class SnapshotRefused extends Error {}

export async function requestSnapshot(query: QueryFn, r: SnapshotRequest): Promise<{ id: number; tables: string[] }> {
  const selection = new TableSelection(r.includeTables, r.excludeTables);
  const resolved = await resolveTables(query, r.globs, selection);
  const problems: string[] = [];
  for (const g of resolved.unmatched) problems.push(`${g}: matches no table`);
  for (const t of resolved.refused) problems.push(`${t.table}: ${t.reason}`);
  if (problems.length > 0) throw new SnapshotRefused(`snapshot refused:\n${problems.map((p) => `  - ${p}`).join('\n')}`);
  if (resolved.tables.length === 0) throw new SnapshotRefused('snapshot refused: no table matches');
  if (r.where !== null) await checkWhere(query, resolved.tables, r.where);
  const id = await insertSnapshot(query, {
    slot: r.slot,
    kind: 'request',
    globs: r.globs,
    tables: resolved.tables,
    where: r.where,
    chunkSize: r.chunkSize,
    exchange: r.exchange,
    routingKey: r.routingKey,
    rate: r.rate,
  });
  return { id, tables: resolved.tables };
}

/**
 * The initial snapshot of every included table, recorded once per slot (when the slot is created,
 * by `run` or `setup`). Tables that cannot be snapshotted are left out and returned with the reason.
 */
export async function requestInitial(
  query: QueryFn,
  r: { slot: string; includeTables: readonly string[]; excludeTables: readonly string[]; chunkSize: number },
): Promise<{ id: number | null; tables: string[]; skipped: { table: string; reason: string }[] }> {
  if (await hasInitial(query, r.slot)) return { id: null, tables: [], skipped: [] };
  const selection = new TableSelection(r.includeTables, r.excludeTables);
  const resolved = await resolveTables(query, ['*.*'], selection);
  const skipped = resolved.refused.filter((t) => !t.reason.startsWith('not included'));
  const id = await insertSnapshot(query, {
    slot: r.slot,
    kind: 'initial',
    globs: r.includeTables.length > 0 ? r.includeTables : ['*.*'],
    tables: resolved.tables,
    where: null,
    chunkSize: r.chunkSize,
    exchange: null,
    routingKey: null,
    rate: null,
  });
  return { id, tables: resolved.tables, skipped };
}

/** Plan (not run) the filter on each table in a read-only transaction: a typo fails here, not in the daemon. */
async function checkWhere(query: QueryFn, tables: readonly string[], where: string): Promise<void> {
  await query('BEGIN READ ONLY');
  try {
    for (const name of tables) {
      const { schema, table } = splitName(name);
      try {
        // A parameter forces the extended protocol: one statement, whatever the text holds.
        await query(`EXPLAIN SELECT $1::int FROM ${quoteIdent(schema)}.${quoteIdent(table)} WHERE (${where})`, [1]);
      } catch (err) {
        const code = sqlState(err);
        if (code && /^(42|22)/.test(code) && code !== '42501') throw new SnapshotRefused(`snapshot refused: --where does not fit ${name}: ${(err as Error).message}`);
        throw err;
      }
    }
  } finally {
    await query('ROLLBACK').catch(() => undefined);
  }
}
