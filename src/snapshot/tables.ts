/**
 * Which tables a snapshot request covers, and why one is refused. A snapshot reads a table in
 * chunks by a unique key, so it needs a primary key or a replica identity index; it covers only
 * tables the configuration includes (a snapshot never publishes what the stream would not); a
 * partitioned table is read through its root, which the stream names too.
 */
import type { TableSelection } from '../filter/selection.js';
import { globMatches, parseTableGlob, tableKey, tableName, type GlobPattern } from '../shared/table-name.js';
import { selectedTables } from '../source/publication.js';
import type { QueryFn } from '../shared/pg-query.js';

export interface ResolvedTables {
  /** Every table to read as `tableName` writes it (quoted where needed), in a stable order. */
  readonly tables: string[];
  /** Tables that matched but cannot be snapshotted, each with the reason. */
  readonly refused: { table: string; reason: string }[];
  /** Globs that matched no table at all. */
  readonly unmatched: string[];
}

interface Candidate {
  schema: string;
  table: string;
  kind: string;
  partition_of: string | null;
  has_key: boolean;
}

export async function resolveTables(query: QueryFn, globs: readonly string[], selection: TableSelection): Promise<ResolvedTables> {
  const compiled = globs.map((g) => ({ glob: g, parsed: parseTableGlob(g) }));
  const { rows } = await query<Candidate>(
    `SELECT n.nspname AS schema, c.relname AS table, c.relkind::text AS kind,
            (SELECT rn.nspname || '.' || r.relname FROM pg_class r JOIN pg_namespace rn ON rn.oid = r.relnamespace
              WHERE c.relispartition AND r.oid = pg_partition_root(c.oid)) AS partition_of,
            EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND (i.indisprimary OR i.indisreplident)) AS has_key
       FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%'
      ORDER BY 1, 2`,
  );
  const included = new Set((await selectedTables(query, selection)).map((t) => tableKey(t.schema, t.table)));
  const tables: string[] = [];
  const refused: { table: string; reason: string }[] = [];
  const matchedGlobs = new Set<string>();
  for (const r of rows) {
    const name = tableName(r.schema, r.table);
    const hits = compiled.filter((g) => globMatches(g.parsed, r.schema, r.table));
    if (hits.length === 0) continue;
    for (const h of hits) matchedGlobs.add(h.glob);
    if (r.partition_of) {
      // Only named explicitly is it worth a word: a glob like public.* also matches the root.
      if (hits.some((h) => !h.glob.includes('*') && !h.glob.includes('?'))) {
        refused.push({ table: name, reason: `a partition of ${r.partition_of}: snapshot the partitioned table ${r.partition_of} (its root) instead` });
      }
      continue;
    }
    if (!included.has(tableKey(r.schema, r.table))) {
      refused.push({ table: name, reason: 'not included by the configuration (PGWARREN_TABLES / PGWARREN_EXCLUDE_TABLES): its changes are not published, so neither are its rows' });
      continue;
    }
    if (!r.has_key) {
      refused.push({
        table: name,
        reason: 'no primary key or replica identity index: a snapshot reads a table in chunks by a unique key, and consumers apply rows by key. Add a primary key (or ALTER TABLE ... REPLICA IDENTITY USING INDEX on a unique index of NOT NULL columns)',
      });
      continue;
    }
    tables.push(name);
  }
  return { tables, refused, unmatched: globs.filter((g) => !matchedGlobs.has(g)) };
}

/** The schema and table of a name as resolveTables writes it (tableName: quoted where needed). */
export function splitName(name: string): { schema: string; table: string } {
  const glob = parseTableGlob(name);
  return { schema: literal(glob.schema), table: literal(glob.table) };
}

function literal(part: GlobPattern): string {
  return part.tokens.map((t) => ('literal' in t ? t.literal : t.wildcard)).join('');
}
