/**
 * Catalog facts the replication stream does not carry: a table's primary key (pgoutput only flags
 * replica identity columns) and, for wal2json, its columns and types. Looked up on an ordinary
 * connection when a relation first appears or changes shape, then served synchronously.
 *
 * The catalog is read as of now, not as of the change's commit; a key redefined while older
 * changes are still in the slot is reported with the current definition.
 */
import type { ReplicaIdentity } from '../types.js';
import type { QueryFn } from '../shared/pg-query.js';
import { tableKey } from '../shared/table-name.js';

/** pg_class.relreplident (and pgoutput's Relation flag) -> our name for it. */
export const REPLICA_IDENTITY: Readonly<Record<string, ReplicaIdentity>> = { d: 'default', f: 'full', i: 'index', n: 'nothing' };

export interface TableFacts {
  readonly oid: number;
  readonly schema: string;
  readonly table: string;
  /** 'd' default, 'f' full, 'i' index, 'n' nothing */
  readonly replicaIdentity: string;
  readonly primaryKey: readonly string[];
  readonly identityIndex: readonly string[];
  /** Live columns as pgoutput sends them: stored generated columns are left out (PG15 never sends them). */
  readonly columns: readonly { name: string; typeOid: number; typeMod: number }[];
  /** Stored generated columns, which wal2json sends and pgoutput does not. */
  readonly generated: readonly string[];
  /**
   * For a partition, the top of its partition tree. The publication publishes via the root, so
   * pgoutput names the root; wal2json names the leaf and is mapped back with this.
   */
  readonly partitionRoot: { readonly schema: string; readonly table: string } | null;
}

const FACTS_SQL = `
SELECT c.oid::int8 AS oid, n.nspname AS schema, c.relname AS table, c.relreplident AS ident,
  coalesce((SELECT array_agg(a.attname::text ORDER BY k.ord)
     FROM pg_index i
     CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
     JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
     WHERE i.indrelid = c.oid AND i.indisprimary), '{}') AS pk,
  coalesce((SELECT array_agg(a.attname::text ORDER BY k.ord)
     FROM pg_index i
     CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
     JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
     WHERE i.indrelid = c.oid AND i.indisreplident), '{}') AS ri,
  coalesce((SELECT json_agg(json_build_object('name', a.attname, 'typeOid', a.atttypid::int8, 'typeMod', a.atttypmod) ORDER BY a.attnum)
     FROM pg_attribute a
     WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''), '[]') AS columns,
  coalesce((SELECT array_agg(a.attname::text ORDER BY a.attnum)
     FROM pg_attribute a
     WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated <> ''), '{}') AS generated,
  (SELECT json_build_object('schema', rn.nspname, 'table', r.relname)
     FROM pg_class r JOIN pg_namespace rn ON rn.oid = r.relnamespace
     WHERE c.relispartition AND r.oid = pg_partition_root(c.oid)) AS root
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace`;

interface FactsRow {
  oid: string;
  schema: string;
  table: string;
  ident: string;
  pk: string[];
  ri: string[];
  columns: { name: string; typeOid: number; typeMod: number }[];
  generated: string[];
  root: { schema: string; table: string } | null;
}

function toFacts(row: FactsRow): TableFacts {
  return {
    oid: Number(row.oid),
    schema: row.schema,
    table: row.table,
    replicaIdentity: row.ident,
    primaryKey: row.pk,
    identityIndex: row.ri,
    columns: row.columns,
    generated: row.generated,
    partitionRoot: row.root,
  };
}

export class RelationCatalog {
  private readonly byOid = new Map<number, TableFacts>();
  private readonly byName = new Map<string, TableFacts>();

  constructor(private readonly query: QueryFn) {}

  /** Fresh facts for a table, replacing anything cached (called when its shape may have changed). */
  async refreshByOid(oid: number): Promise<TableFacts | undefined> {
    const { rows } = await this.query<FactsRow>(`${FACTS_SQL} WHERE c.oid = $1`, [oid]);
    return this.remember(rows[0]);
  }

  async refreshByName(schema: string, table: string): Promise<TableFacts | undefined> {
    const { rows } = await this.query<FactsRow>(`${FACTS_SQL} WHERE n.nspname = $1 AND c.relname = $2`, [schema, table]);
    return this.remember(rows[0]);
  }

  cachedByName(schema: string, table: string): TableFacts | undefined {
    return this.byName.get(tableKey(schema, table));
  }

  private remember(row: FactsRow | undefined): TableFacts | undefined {
    if (!row) return undefined;
    const facts = toFacts(row);
    this.byOid.set(facts.oid, facts);
    this.byName.set(tableKey(facts.schema, facts.table), facts);
    return facts;
  }
}

/** True when the database has partitions (whose changes wal2json reports under the leaf's name). */
export async function hasPartitions(query: QueryFn): Promise<boolean> {
  const { rows } = await query<{ yes: boolean }>('SELECT EXISTS (SELECT 1 FROM pg_class WHERE relispartition) AS yes');
  return rows[0]?.yes === true;
}

/** The event `key`: primary key, else the replica identity index, else none. */
export function keyColumnsOf(facts: TableFacts | undefined): readonly string[] {
  if (!facts) return [];
  return facts.primaryKey.length > 0 ? facts.primaryKey : facts.identityIndex;
}
