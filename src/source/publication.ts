/**
 * The publication and its keyless companion: created when missing, kept in step with what is to
 * be published, inspected, and dropped only by `teardown`.
 *
 * What is published is decided outside source/ (filter/publication-plan.ts builds it from the
 * table selection and the rules): this module takes a `PublicationPlan` of plain predicates and
 * row-filter texts, and only turns it into Postgres statements.
 */
import { PrerequisiteError, UsageError, classifyPgError, errorMessage, sqlState } from '../errors.js';
import { OPS, type Op } from '../types.js';
import { quoteIdent } from './decoder.js';
import type { QueryFn } from '../shared/pg-query.js';
import { tableKey } from '../shared/table-name.js';

/** Which tables are selected (the table globs). */
export interface TablePredicate {
  includes(schema: string, table: string): boolean;
}

/** Which operations are published. */
export interface OperationSet {
  includes(op: Op): boolean;
}

/**
 * A table's row filter: the rule's `where` as written, and the columns it uses when pgwarren can
 * parse it (null: an expression outside pgwarren's subset, left for Postgres to judge).
 */
export interface RowFilter {
  readonly where: string;
  readonly columns: ReadonlySet<string> | null;
}

/** What the publications should hold: computed from the configuration outside source/. */
export interface PublicationPlan {
  readonly tables: TablePredicate;
  readonly operations: OperationSet;
  readonly excludedColumns?: ExcludedColumns;
  readonly rowFilters?: RowFilters;
}

/** The publication's `publish` parameter, in Postgres' canonical order. */
const publishParameter = (ops: OperationSet, only: readonly Op[] = OPS) => OPS.filter((op) => only.includes(op) && ops.includes(op)).join(', ');

export interface TableName {
  readonly schema: string;
  readonly table: string;
}

/** Tables that may go into a publication and match the selection. */
export async function selectedTables(query: QueryFn, selection: TablePredicate): Promise<TableName[]> {
  const { rows } = await query<TableName>(
    `SELECT n.nspname AS schema, c.relname AS table
       FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition AND c.relpersistence = 'p'
        AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%'
      ORDER BY 1, 2`,
  );
  return rows.filter((t) => selection.includes(t.schema, t.table));
}

export async function publicationTables(query: QueryFn, publication: string): Promise<TableName[] | null> {
  const exists = await query<{ puballtables: boolean }>('SELECT puballtables FROM pg_publication WHERE pubname = $1', [publication]);
  if (exists.rows.length === 0) return null;
  const { rows } = await query<TableName>(
    'SELECT schemaname AS schema, tablename AS table FROM pg_publication_tables WHERE pubname = $1 ORDER BY 1, 2',
    [publication],
  );
  return rows;
}

const tableRef = (t: TableName) => `${quoteIdent(t.schema)}.${quoteIdent(t.table)}`;
const keyOf = (t: TableName) => tableKey(t.schema, t.table);

/** Columns to leave out of a table's events (per-table rules); empty when none. */
export type ExcludedColumns = (schema: string, table: string) => ReadonlySet<string>;

/**
 * A table in the publication: `columns` is its column list, or null for every column.
 * `note` says why excluded columns could not be left out of the publication (the daemon still
 * leaves them out of events).
 */
export interface PublishedTable extends TableName {
  readonly columns: readonly string[] | null;
  /** Row filter: the rule's `where` as written; in a publication read back, Postgres' text of it. */
  readonly where?: string | null;
  readonly note?: string;
}

/** Per table, the row filter of its rule, or null. */
export type RowFilters = (schema: string, table: string) => RowFilter | null;

/**
 * Postgres' rules for a row filter that pgwarren can check before Postgres applies it: the columns
 * exist, and with updates or deletes published only replica identity columns are used (unless the
 * identity is FULL), since otherwise Postgres refuses the application's UPDATEs and DELETEs on the
 * table. Expressions outside the subset pgwarren parses are left to Postgres. Returns the problem.
 */
function rowFilterProblem(t: TableName, filter: RowFilter, columns: readonly string[], identity: readonly string[], identityRule: boolean): string | null {
  if (filter.columns === null) return null;
  const used = filter.columns;
  const where = filter.where;
  const missing = [...used].filter((c) => !columns.includes(c));
  if (missing.length > 0) return `row filter ${JSON.stringify(where)} of ${keyOf(t)} uses column ${missing.join(', ')}, which ${keyOf(t)} does not have`;
  const outside = [...used].filter((c) => !identity.includes(c));
  if (identityRule && outside.length > 0) {
    return (
      `row filter ${JSON.stringify(where)} of ${keyOf(t)} uses ${outside.join(', ')}, outside the table's replica identity; Postgres would then refuse every ` +
      `UPDATE and DELETE on it. Use only key columns, or ALTER TABLE ${keyOf(t)} REPLICA IDENTITY FULL, or publish only inserts (PGWARREN_OPERATIONS)`
    );
  }
  return null;
}

/**
 * Each wanted table with the column list that keeps its excluded columns inside Postgres. Postgres
 * refuses UPDATE and DELETE on a table whose published column list does not cover its replica
 * identity, so a list is only used where it provably does: never for REPLICA IDENTITY FULL, never
 * when an excluded column is part of the identity, never for partitioned tables (each partition
 * has its own identity), and only on Postgres 15+.
 *
 * For the same reason a table with no replica identity at all (no primary key under DEFAULT,
 * NOTHING, or a dropped identity index) is left out when updates or deletes are published:
 * adding it would make every UPDATE and DELETE on it fail in the application.
 */
export async function planTables(
  query: QueryFn,
  tables: readonly TableName[],
  excluded: ExcludedColumns | undefined,
  operations: OperationSet,
  rowFilters: RowFilters = () => null,
): Promise<{ publish: PublishedTable[]; withoutIdentity: PublishedTable[]; probes: string[] }> {
  const guardIdentity = operations.includes('update') || operations.includes('delete');
  if (tables.length === 0) return { publish: [], withoutIdentity: [], probes: [] };
  const version = await query<{ v: string }>("SELECT current_setting('server_version_num') AS v");
  const listsSupported = Number(version.rows[0]?.v ?? 0) >= 150000;
  const { rows } = await query<{ schema: string; table: string; kind: string; ident: string; columns: string[]; identity: string[] }>(
    `SELECT n.nspname AS schema, c.relname AS table, c.relkind AS kind, c.relreplident AS ident,
            ARRAY(SELECT a.attname::text FROM pg_attribute a
                   WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
                   ORDER BY a.attnum) AS columns,
            ARRAY(SELECT a.attname::text FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey::int2[])
                   WHERE i.indrelid = c.oid AND CASE c.relreplident WHEN 'd' THEN i.indisprimary WHEN 'i' THEN i.indisreplident ELSE false END) AS identity
       FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE (n.nspname, c.relname) IN (SELECT * FROM unnest($1::text[], $2::text[]))`,
    [tables.map((t) => t.schema), tables.map((t) => t.table)],
  );
  const facts = new Map(rows.map((r) => [keyOf(r), r]));
  const publish: PublishedTable[] = [];
  const withoutIdentity: PublishedTable[] = [];
  const filterProblems: string[] = [];
  // Statements that fail (SQLSTATE 42P10) where Postgres would refuse the application's UPDATEs or
  // DELETEs because of a row filter: run after the filters are set, in the same transaction, so
  // such a filter is never committed. They cover expressions outside the subset checked above.
  const probes: string[] = [];
  for (const t of tables) {
    const f = facts.get(keyOf(t));
    if (!f) continue; // dropped meanwhile
    const filter = rowFilters(t.schema, t.table);
    const where = filter?.where ?? null;
    const keyless = guardIdentity && f.ident !== 'f' && f.identity.length === 0;
    if (filter) {
      // The keyless companion publishes inserts only: any column may be used there.
      const problem = rowFilterProblem(t, filter, f.columns, f.identity, guardIdentity && f.ident !== 'f' && !keyless);
      if (problem) filterProblems.push(problem);
    }
    if (keyless) {
      withoutIdentity.push({ ...t, columns: null, where });
      continue;
    }
    if (where !== null && f.columns.length > 0) {
      const col = quoteIdent(f.columns[0]!);
      if (operations.includes('update')) probes.push(`EXPLAIN UPDATE ${tableRef(t)} SET ${col} = ${col} WHERE false`);
      if (operations.includes('delete')) probes.push(`EXPLAIN DELETE FROM ${tableRef(t)} WHERE false`);
    }
    const drop = excluded ? excluded(t.schema, t.table) : new Set<string>();
    const whole = (note?: string): PublishedTable => ({ ...t, columns: null, where, ...(note && { note }) });
    const columns = f.columns.filter((c) => !drop.has(c));
    const inIdentity = f.identity.filter((c) => drop.has(c));
    if (columns.length === f.columns.length) publish.push(whole());
    else if (!listsSupported) publish.push(whole('publication column lists need Postgres 15'));
    else if (f.kind === 'p') publish.push(whole('partitioned tables keep every column in the publication'));
    else if (f.ident === 'f') publish.push(whole('REPLICA IDENTITY FULL publishes every column'));
    else if (inIdentity.length > 0) publish.push(whole(`${inIdentity.join(', ')} belongs to the replica identity`));
    else if (columns.length === 0) publish.push(whole('every column is excluded'));
    else publish.push({ ...t, columns, where });
  }
  if (filterProblems.length > 0) throw new UsageError(`row filters that do not fit their tables:\n${filterProblems.map((p) => `  - ${p}`).join('\n')}`);
  return { publish, withoutIdentity, probes };
}

const publishedRef = (t: PublishedTable) => `${tableRef(t)}${t.columns ? ` (${t.columns.map(quoteIdent).join(', ')})` : ''}${t.where ? ` WHERE (${t.where})` : ''}`;
const sameColumns = (a: readonly string[] | null, b: readonly string[] | null) =>
  a === null || b === null ? a === b : a.length === b.length && a.every((c) => b.includes(c));

/**
 * What pgwarren last set as row filters, kept in the publication's comment: per table the rule's
 * `where` as written and Postgres' text of it then. A filter is up to date when both still hold
 * (Postgres re-prints an expression its own way, so the two texts cannot be compared directly).
 */
type FilterRecord = Record<string, { readonly where: string; readonly expr: string }>;
const FILTER_COMMENT_KEY = 'pgwarren-row-filters';

function parseFilterRecord(comment: string | null): FilterRecord {
  if (!comment) return {};
  try {
    const parsed = JSON.parse(comment) as Record<string, unknown>;
    const rec = parsed?.[FILTER_COMMENT_KEY];
    return rec && typeof rec === 'object' ? (rec as FilterRecord) : {};
  } catch {
    return {};
  }
}

function sameFilter(have: PublishedTable, want: PublishedTable, record: FilterRecord): boolean {
  const expr = have.where ?? null;
  const wanted = want.where ?? null;
  if (expr === null || wanted === null) return expr === wanted;
  const r = record[keyOf(want)];
  return r !== undefined && r.where === wanted && r.expr === expr;
}

/** Record the row filters now in `publication` (after they were set). */
async function recordFilters(query: QueryFn, publication: string, wanted: readonly PublishedTable[]): Promise<void> {
  const now = await publicationContents(query, publication);
  if (!now) return;
  const record: FilterRecord = {};
  for (const t of wanted) {
    const have = now.tables.find((h) => keyOf(h) === keyOf(t));
    if (t.where && have?.where) record[keyOf(t)] = { where: t.where, expr: have.where };
  }
  const text = JSON.stringify({ [FILTER_COMMENT_KEY]: record });
  if (text === now.comment) return;
  // A comment that is not ours is left alone while there is nothing to record.
  if (Object.keys(record).length === 0 && !now.comment?.includes(FILTER_COMMENT_KEY)) return;
  // standard_conforming_strings is on (the default since Postgres 9.1): only quotes need doubling.
  try {
    await query(`COMMENT ON PUBLICATION ${quoteIdent(publication)} IS '${text.replace(/'/g, "''")}'`);
  } catch (err) {
    // A run role that may not change the publication (README "Failure handling"): the record is
    // a convenience for the next sync, never a reason to stop streaming.
    if (sqlState(err) !== '42501') throw err;
  }
}

/** The publication's tables, their column lists (null: every column) and row filters; null when it does not exist. */
async function publicationContents(query: QueryFn, publication: string): Promise<{ allTables: boolean; tables: PublishedTable[]; comment: string | null } | null> {
  const exists = await query<{ puballtables: boolean; comment: string | null }>(
    "SELECT puballtables, obj_description(oid, 'pg_publication') AS comment FROM pg_publication WHERE pubname = $1",
    [publication],
  );
  if (exists.rows.length === 0) return null;
  const { rows } = await query<{ schema: string; table: string; columns: string[] | null; where: string | null }>(
    `SELECT n.nspname AS schema, c.relname AS table, pg_get_expr(pr.prqual, pr.prrelid) AS where,
            CASE WHEN pr.prattrs IS NULL THEN NULL
                 ELSE ARRAY(SELECT a.attname::text FROM pg_attribute a
                             WHERE a.attrelid = pr.prrelid AND a.attnum = ANY (pr.prattrs::int2[]) ORDER BY a.attnum) END AS columns
       FROM pg_publication p JOIN pg_publication_rel pr ON pr.prpubid = p.oid
       JOIN pg_class c ON c.oid = pr.prrelid JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE p.pubname = $1 ORDER BY 1, 2`,
    [publication],
  );
  return { allTables: exists.rows[0]!.puballtables, tables: rows, comment: exists.rows[0]!.comment };
}

export interface PublicationChange {
  readonly created: boolean;
  readonly added: PublishedTable[];
  readonly removed: TableName[];
  /** Tables already in the publication whose column list changed. */
  readonly recolumned: PublishedTable[];
  /** Tables whose excluded columns Postgres still sends, and why. */
  readonly notes: PublishedTable[];
  /** Selected tables without a replica identity: in the keyless publication (see planTables). */
  readonly withoutIdentity: TableName[];
  /** Every publication the stream names. */
  readonly publications: string[];
  /**
   * Set when the publications exist but the role may not change them (42501, e.g. "must be owner
   * of publication"): nothing was changed; `statements` are what the owner would run.
   */
  readonly denied?: { readonly message: string; readonly statements: readonly string[] };
}

/**
 * The companion publication for tables without a replica identity. It publishes only inserts and
 * truncates, which Postgres allows on any table, so their inserts are still captured while the
 * application's UPDATEs and DELETEs on them keep working.
 */
export function keylessPublicationName(publication: string): string {
  const suffix = '_keyless';
  return `${Buffer.from(publication).subarray(0, 63 - suffix.length).toString()}${suffix}`;
}

interface PublicationSettings {
  readonly ops: string;
  readonly pubviaroot: boolean;
}

async function publicationSettings(query: QueryFn, publication: string): Promise<PublicationSettings | undefined> {
  const { rows } = await query<PublicationSettings>(
    `SELECT pubviaroot,
            concat_ws(', ', CASE WHEN pubinsert THEN 'insert' END, CASE WHEN pubupdate THEN 'update' END,
                            CASE WHEN pubdelete THEN 'delete' END, CASE WHEN pubtruncate THEN 'truncate' END) AS ops
       FROM pg_publication WHERE pubname = $1`,
    [publication],
  );
  return rows[0];
}

/**
 * Statements that bring one existing publication to `wanted` with `publish`: only what differs, so
 * a role that may read but not own the publication can still run when nothing differs.
 */
function alignPublication(
  name: string,
  current: { tables: readonly PublishedTable[]; comment: string | null },
  settings: PublicationSettings | undefined,
  wanted: readonly PublishedTable[],
  publish: string,
): { statements: string[]; added: PublishedTable[]; removed: PublishedTable[]; recolumned: PublishedTable[] } {
  const pub = quoteIdent(name);
  const have = new Map(current.tables.map((t) => [keyOf(t), t]));
  const want = new Set(wanted.map(keyOf));
  const added = wanted.filter((t) => !have.has(keyOf(t)));
  const removed = current.tables.filter((t) => !want.has(keyOf(t)));
  const record = parseFilterRecord(current.comment);
  const recolumned = wanted.filter((t) => {
    const h = have.get(keyOf(t));
    return h !== undefined && (!sameColumns(h.columns, t.columns) || !sameFilter(h, t, record));
  });
  const statements: string[] = [];
  if (removed.length > 0) statements.push(`ALTER PUBLICATION ${pub} DROP TABLE ${removed.map(tableRef).join(', ')}`);
  if (!settings || settings.ops !== publish || !settings.pubviaroot) {
    statements.push(`ALTER PUBLICATION ${pub} SET (publish = '${publish}', publish_via_partition_root = true)`);
  }
  if (added.length > 0) statements.push(`ALTER PUBLICATION ${pub} ADD TABLE ${added.map(publishedRef).join(', ')}`);
  for (const t of recolumned) statements.push(`ALTER PUBLICATION ${pub} DROP TABLE ${tableRef(t)}`, `ALTER PUBLICATION ${pub} ADD TABLE ${publishedRef(t)}`);
  return { statements, added, removed, recolumned };
}

/**
 * Create the publication (and its keyless companion) for the selected tables, or bring existing
 * ones in step: add tables that now match, remove ones that no longer do, move a table between the
 * two when it gains or loses its replica identity, and keep each table's column list equal to its
 * columns minus the excluded ones (so a column added later is published too). All changes to
 * existing publications run as one transaction, so no change to a table falls between two steps
 * and no moment publishes updates of a table without identity. Returns what changed.
 */
export async function ensurePublication(
  query: QueryFn,
  opts: { publication: string } & PublicationPlan,
): Promise<PublicationChange> {
  const doing = `managing publication "${opts.publication}"`;
  const keylessName = keylessPublicationName(opts.publication);
  const publish = publishParameter(opts.operations);
  const keylessPublish = publishParameter(opts.operations, ['insert', 'truncate']);
  const create = (name: string, tables: readonly PublishedTable[], ops: string) =>
    `CREATE PUBLICATION ${quoteIdent(name)}${tables.length > 0 ? ` FOR TABLE ${tables.map(publishedRef).join(', ')}` : ''} ` +
    `WITH (publish = '${ops}', publish_via_partition_root = true)`;
  try {
    const plan = await planTables(query, await selectedTables(query, opts.tables), opts.excludedColumns, opts.operations, opts.rowFilters);
    const wanted = plan.publish;
    const keyless: PublishedTable[] = plan.withoutIdentity;
    const notes = wanted.filter((t) => t.note);
    const current = await publicationContents(query, opts.publication);
    if (current?.allTables) {
      return { created: false, added: [], removed: [], recolumned: [], notes: [], withoutIdentity: [], publications: [opts.publication] };
    }
    const keylessCurrent = await publicationContents(query, keylessName);
    const statements: string[] = [];
    let created = false;
    let change = { added: wanted as PublishedTable[], removed: [] as PublishedTable[], recolumned: [] as PublishedTable[] };
    if (current === null) {
      statements.push(create(opts.publication, wanted, publish));
      created = true;
    } else {
      const aligned = alignPublication(opts.publication, current, await publicationSettings(query, opts.publication), wanted, publish);
      statements.push(...aligned.statements);
      change = aligned;
    }
    // The companion always exists, even empty, so the stream can name it from the start and a
    // keyless table that appears later is captured without restarting the stream.
    if (keylessCurrent === null) {
      statements.push(create(keylessName, keyless, keylessPublish));
    } else {
      statements.push(...alignPublication(keylessName, keylessCurrent, await publicationSettings(query, keylessName), keyless, keylessPublish).statements);
    }
    if (statements.length > 0) {
      statements.push(...plan.probes);
      try {
        // One simple query is one transaction.
        await query(statements.join(';\n'));
      } catch (err) {
        if (sqlState(err) === '42710') return ensurePublication(query, opts); // created concurrently
        // Both publications exist, so the stream can run with them as they are: report, not fail.
        if (sqlState(err) === '42501' && current !== null && keylessCurrent !== null) {
          return {
            created: false,
            added: [],
            removed: [],
            recolumned: [],
            notes,
            withoutIdentity: plan.withoutIdentity,
            publications: [opts.publication, keylessName],
            denied: { message: (err as Error).message, statements },
          };
        }
        const code = sqlState(err) ?? '';
        const filtered = [...wanted, ...keyless].filter((t) => t.where);
        if (filtered.length > 0 && code === '42P10') {
          throw new UsageError(
            `a row filter uses columns outside its table's replica identity, so Postgres would refuse the application's UPDATEs or DELETEs ` +
              `(${(err as Error).message}); nothing was changed. Use only key columns, or set REPLICA IDENTITY FULL on the table, ` +
              `or publish only inserts (PGWARREN_OPERATIONS). The filters: ${filtered.map((t) => `${keyOf(t)} WHERE (${t.where})`).join('; ')}`,
          );
        }
        if (filtered.length > 0 && code !== '42501' && (code.startsWith('42') || code.startsWith('22') || code === '0A000')) {
          // Postgres rejected an expression (syntax, type, a function it does not allow in a row filter).
          throw new UsageError(
            `Postgres refused a row filter (SQLSTATE ${code}: ${(err as Error).message}${pgDetail(err)}); the filters set: ` +
              filtered.map((t) => `${keyOf(t)} WHERE (${t.where})`).join('; '),
          );
        }
        throw err;
      }
    }
    // Outside the transaction: a failure here only means the next sync sets the filters again.
    if (statements.length > 0 || [...wanted, ...keyless].some((t) => t.where)) {
      await recordFilters(query, opts.publication, wanted);
      await recordFilters(query, keylessName, keyless);
    }
    return { created, ...change, notes, withoutIdentity: plan.withoutIdentity, publications: [opts.publication, keylessName] };
  } catch (err) {
    if (sqlState(err) === '42501') {
      throw new PrerequisiteError(
        `${doing}: ${(err as Error).message}. Publications can only list tables the role owns: run "pgwarren setup" as the tables' owner (or a superuser), then run pgwarren as its REPLICATION role.`,
        { cause: err },
      );
    }
    throw classifyPgError(err, doing);
  }
}

/**
 * Postgres decodes each change with the publications as they were when it was made. When the
 * slot holds changes older than a publication it is told to use (the publication was created
 * after the slot, or dropped and re-created), decoding fails on every attempt: the slot is stuck
 * and holds WAL, so this is a prerequisite failure, not something to retry.
 */
export function publicationMissingInHistory(err: Error, slot: string, publication: string): PrerequisiteError {
  return new PrerequisiteError(
    `${errorMessage(err)}: slot "${slot}" holds changes made before publication "${publication}" existed ` +
      `(or its companion "${keylessPublicationName(publication)}": it was created after the slot, or dropped and re-created), ` +
      `and Postgres cannot decode them with it, so the slot cannot advance. Re-sync consumers from the tables, then re-create the slot ` +
      `after the publications: "pgwarren teardown --yes" and "pgwarren setup".`,
    { cause: err },
  );
}

/** Postgres' DETAIL line of an error, as ": detail", or nothing. */
function pgDetail(err: unknown): string {
  const detail = (err as { detail?: unknown } | null)?.detail;
  return typeof detail === 'string' && detail !== '' ? `: ${detail}` : '';
}

/** The publication and its keyless companion, whichever exist; returns the names dropped. */
export async function dropPublications(query: QueryFn, publication: string): Promise<string[]> {
  const dropped: string[] = [];
  for (const name of [publication, keylessPublicationName(publication)]) {
    if (await dropPublication(query, name)) dropped.push(name);
  }
  return dropped;
}

export async function dropPublication(query: QueryFn, publication: string): Promise<boolean> {
  const current = await publicationTables(query, publication);
  if (current === null) return false;
  await query(`DROP PUBLICATION ${quoteIdent(publication)}`);
  return true;
}
