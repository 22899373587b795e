/**
 * `setup`, `teardown` and `status`: one-shot commands on an ordinary Postgres connection. They
 * print for people (or JSON with --json) and return the exit code.
 */
import type pg from 'pg';
import type { Config } from '../config/load.js';
import { PrerequisiteError, UsageError, classifyPgError, sqlState } from '../errors.js';
import { OperationSelection, TableSelection, excludedColumnsLookup } from '../filter/selection.js';
import { quoteIdent } from '../source/decoder.js';
import { connectPg, type QueryFn } from '../shared/pg-query.js';
import { closeWithin, pgSocketOwner } from '../ops/close.js';
import { dropSlot, ensureSlot, requireLogicalWal, slotState } from '../source/slot-admin.js';
import { dropPublications, ensurePublication, keylessPublicationName, publicationTables, selectedTables, type ExcludedColumns } from '../source/publication.js';
import { rowFilterLookup } from '../filter/publication-plan.js';
import { pgConfig, pgTimeouts } from './settings.js';
import { REPLICA_IDENTITY } from '../source/relation-catalog.js';
import { tableName } from '../shared/table-name.js';
import { createStore, forgetSlot, listSnapshots, type SnapshotRow } from '../snapshot/store.js';
import { requestInitial } from '../snapshot/request.js';
import { describe as describeSnapshot, summaryLine } from './snapshot.js';

export type Print = (line: string) => void;

export async function withDatabase<T>(config: Config, fn: (query: QueryFn) => Promise<T>): Promise<T> {
  let opened: { client: pg.Client; query: QueryFn };
  try {
    opened = await connectPg(pgConfig(config), { applicationName: 'pgwarren-admin', timeouts: pgTimeouts(config) });
  } catch (err) {
    const e = classifyPgError(err, 'connecting to Postgres');
    if (e instanceof PrerequisiteError) throw e;
    throw new PrerequisiteError(`cannot connect to Postgres: ${(err as Error).message}. Check PGWARREN_DATABASE_URL and that the server is running.`);
  }
  const { client, query } = opened;
  try {
    return await fn(query);
  } finally {
    await closeWithin(() => client.end(), () => pgSocketOwner(client));
  }
}

const selectionOf = (config: Config) => new TableSelection(config.tables, config.excludeTables);

export async function setupCommand(config: Config, opts: { replicaIdentityFull: boolean }, print: Print): Promise<number> {
  return withDatabase(config, async (query) => {
    try {
      await requireLogicalWal(query);
      const slotBefore = await slotState(query, config.slot);
      const tables = selectionOf(config);
      const publish = async (excludedColumns: ExcludedColumns | undefined, report: boolean) => {
        if (config.plugin !== 'pgoutput') return;
        const pub = await ensurePublication(query, {
          publication: config.publication,
          tables,
          operations: new OperationSelection(config.operations),
          excludedColumns,
          rowFilters: rowFilterLookup(config.rules),
        });
        if (pub.denied) {
          throw new PrerequisiteError(
            `managing publication "${config.publication}": ${pub.denied.message}. Only the owner of the publication and the tables can change it: run "pgwarren setup" as the tables' owner (or a superuser), or as the owner: ${pub.denied.statements.join('; ')}`,
          );
        }
        if (!report) return;
        if (pub.created && slotBefore.exists) {
          print(
            `warning: slot "${config.slot}" is older than publication "${config.publication}": Postgres cannot decode changes the slot already holds with it. ` +
              `If run then stops with "holds changes made before publication", re-sync consumers, then "pgwarren teardown --yes" and "pgwarren setup".`,
          );
        }
        print(
          pub.created
            ? `created publication "${config.publication}" with ${pub.added.length} table(s)`
            : `publication "${config.publication}" exists${pub.added.length || pub.removed.length || pub.recolumned.length ? ` (added ${pub.added.length}, removed ${pub.removed.length}, column lists changed ${pub.recolumned.length})` : ''}`,
        );
        for (const t of pub.withoutIdentity) {
          print(`warning: ${tableName(t.schema, t.table)} has no primary key or replica identity: only its inserts and truncates are captured (publication "${keylessPublicationName(config.publication)}"), since Postgres refuses UPDATE and DELETE on a table that publishes them; add a primary key, or run setup --replica-identity-full`);
        }
        for (const t of pub.notes) print(`note: ${tableName(t.schema, t.table)}: excluded columns are left out of events but still sent by Postgres (${t.note})`);
      };
      if (opts.replicaIdentityFull) {
        // Postgres refuses UPDATE/DELETE where a column list does not cover the replica identity:
        // publish whole tables before the identity becomes FULL, then add the tables FULL made
        // publishable (those that had no identity).
        await publish(undefined, false);
        for (const t of await selectedTables(query, tables)) {
          await query(`ALTER TABLE ${quoteIdent(t.schema)}.${quoteIdent(t.table)} REPLICA IDENTITY FULL`);
          print(`replica identity FULL: ${tableName(t.schema, t.table)}`);
        }
      }
      await publish(excludedColumnsLookup(config.rules), true);
      // Snapshot requests and progress (README "Snapshots"); the run role needs one GRANT on it.
      await createStore(query);
      const slot = await ensureSlot(query, { slot: config.slot, plugin: config.plugin, database: config.database.database, mayCreate: true });
      print(slot.created ? `created slot "${config.slot}" (${config.plugin})` : `slot "${config.slot}" exists (${slot.state.plugin})`);
      if (slot.created && config.snapshot === 'initial') {
        const made = await requestInitial(query, { slot: config.slot, includeTables: config.tables, excludeTables: config.excludeTables, chunkSize: config.snapshotChunkSize });
        for (const t of made.skipped) print(`warning: the initial snapshot leaves out ${t.table}: ${t.reason}`);
        if (made.id !== null) print(`initial snapshot ${made.id} requested for ${made.tables.length} table(s); "pgwarren run" publishes it`);
      }
      return 0;
    } catch (err) {
      throw classifyPgError(err, 'setup');
    }
  });
}

export async function teardownCommand(config: Config, opts: { yes: boolean }, print: Print): Promise<number> {
  if (!opts.yes) {
    throw new UsageError(
      `teardown drops slot "${config.slot}" (changes it holds that were not yet published are lost) and publication "${config.publication}". Re-run with --yes to do it.`,
    );
  }
  return withDatabase(config, async (query) => {
    print((await dropSlot(query, config.slot)) ? `dropped slot "${config.slot}"` : `slot "${config.slot}" did not exist`);
    // A new slot starts with no snapshot history (PGWARREN_SNAPSHOT=initial applies to it again).
    const forgotten = await forgetSlot(query, config.slot).catch((err: unknown) => {
      if (sqlState(err) === '42P01' || sqlState(err) === '3F000' || sqlState(err) === '42501') return 0;
      throw err;
    });
    if (forgotten > 0) print(`forgot ${forgotten} snapshot(s) of slot "${config.slot}"`);
    const dropped = await dropPublications(query, config.publication);
    if (config.plugin === 'pgoutput' || dropped.length > 0) {
      print(dropped.length > 0 ? dropped.map((p) => `dropped publication "${p}"`).join('\n') : `publication "${config.publication}" did not exist`);
    }
    return 0;
  });
}

export interface TableStatus {
  schema: string;
  table: string;
  replicaIdentity: 'default' | 'full' | 'index' | 'nothing';
  hasPrimaryKey: boolean;
  inPublication: boolean;
  warning: string | null;
}

export interface StatusReport {
  slot: {
    name: string;
    exists: boolean;
    plugin: string | null;
    active: boolean;
    activePid: number | null;
    confirmedFlushLsn: string | null;
    lagBytes: number | null;
    walStatus: string | null;
  };
  publication: { name: string; exists: boolean; tables: string[] };
  tables: TableStatus[];
  /** Snapshots of this slot (README "Snapshots"); null when their table is missing or not readable. */
  snapshots: Record<string, unknown>[] | null;
}


export async function statusReport(config: Config, query: QueryFn): Promise<StatusReport> {
  const slot = await slotState(query, config.slot);
  const pubTables = await publicationTables(query, config.publication);
  const keylessTables = (await publicationTables(query, keylessPublicationName(config.publication))) ?? [];
  const selected = await selectedTables(query, selectionOf(config));
  const { rows } = await query<{ schema: string; table: string; ident: string; has_pk: boolean }>(
    `SELECT n.nspname AS schema, c.relname AS table, c.relreplident AS ident,
            EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary) AS has_pk
       FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE c.relkind IN ('r', 'p')`,
  );
  const facts = new Map(rows.map((r) => [tableName(r.schema, r.table), r]));
  const snapshots = await snapshotRows(query, config.slot);
  const inPub = new Set([...(pubTables ?? []), ...keylessTables].map((t) => tableName(t.schema, t.table)));
  const tables = selected.map((t): TableStatus => {
    const f = facts.get(tableName(t.schema, t.table))!;
    const ident = REPLICA_IDENTITY[f.ident] ?? 'default';
    let warning: string | null = null;
    const guarded = config.operations.includes('update') || config.operations.includes('delete');
    const unpublishable =
      guarded && config.plugin === 'pgoutput'
        ? ': only inserts and truncates are captured (Postgres refuses UPDATE and DELETE on a table that publishes them); add a primary key or run setup --replica-identity-full'
        : ': updates and deletes carry no old values or key';
    if (ident === 'nothing') warning = `REPLICA IDENTITY NOTHING${unpublishable}`;
    else if (ident === 'default' && !f.has_pk) warning = `no primary key and REPLICA IDENTITY DEFAULT${unpublishable}`;
    else if (ident !== 'full') warning = `REPLICA IDENTITY ${ident.toUpperCase()}: "old" holds only key columns; "changed" is null and unchanged TOASTed values are missing from "new" (setup --replica-identity-full fixes this)`;
    return { schema: t.schema, table: t.table, replicaIdentity: ident, hasPrimaryKey: f.has_pk, inPublication: inPub.has(tableName(t.schema, t.table)), warning };
  });
  return {
    slot: {
      name: config.slot,
      exists: slot.exists,
      plugin: slot.plugin ?? null,
      active: slot.active ?? false,
      activePid: slot.activePid ?? null,
      confirmedFlushLsn: slot.confirmedFlushLsn ?? null,
      lagBytes: slot.lagBytes == null ? null : Number(slot.lagBytes),
      walStatus: slot.walStatus ?? null,
    },
    publication: { name: config.publication, exists: pubTables !== null, tables: (pubTables ?? []).map((t) => tableName(t.schema, t.table)) },
    tables,
    snapshots: snapshots && snapshots.map(describeSnapshot),
  };
}

async function snapshotRows(query: QueryFn, slot: string): Promise<SnapshotRow[] | null> {
  try {
    return await listSnapshots(query, slot);
  } catch (err) {
    if (sqlState(err) === '42P01' || sqlState(err) === '3F000' || sqlState(err) === '42501') return null;
    throw err;
  }
}

export async function statusCommand(config: Config, opts: { json: boolean }, print: Print): Promise<number> {
  return withDatabase(config, async (query) => {
    const report = await statusReport(config, query);
    if (opts.json) {
      print(JSON.stringify(report, null, 2));
      return 0;
    }
    const s = report.slot;
    print(`slot         ${s.name}: ${s.exists ? `exists, plugin ${s.plugin}, ${s.active ? `active (pid ${s.activePid})` : 'inactive'}` : 'MISSING (run "pgwarren setup")'}`);
    if (s.exists) {
      print(`  confirmed  ${s.confirmedFlushLsn ?? '-'}`);
      print(`  lag        ${s.lagBytes == null ? '-' : formatBytes(s.lagBytes)}`);
      print(`  wal_status ${s.walStatus ?? '-'}`);
    }
    const p = report.publication;
    if (config.plugin === 'pgoutput') {
      print(`publication  ${p.name}: ${p.exists ? `${p.tables.length} table(s)` : 'MISSING (run "pgwarren setup")'}`);
    }
    print(`tables       ${report.tables.length} selected`);
    for (const t of report.tables) {
      const pub = config.plugin === 'pgoutput' && !t.inPublication ? ' (not in publication)' : '';
      print(`  ${tableName(t.schema, t.table)}  replica identity ${t.replicaIdentity}${pub}${t.warning ? `\n    warning: ${t.warning}` : ''}`);
    }
    const snaps = await snapshotRows(query, config.slot);
    if (snaps === null) print('snapshots    unavailable (run "pgwarren setup"; the role needs its snapshot GRANT, README "Snapshots")');
    else {
      print(`snapshots    ${snaps.length}`);
      for (const s of snaps) print(summaryLine(s));
    }
    return 0;
  });
}

function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${i === 0 ? v : v.toFixed(1)} ${units[i]}`;
}
