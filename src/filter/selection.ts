/**
 * Which tables and operations are published. Globs (shared/table-name.ts) match the schema and
 * the table name separately, so `public.*` and `*.orders` mean what they look like and a name
 * holding a dot is written quoted (`"a.b".c`).
 *
 * The same selection is pushed into the publication (so Postgres does not send what would be
 * dropped) and applied again here, because a publication made by hand may hold more.
 */
import { OPS, type Op } from '../types.js';
import { globMatches, parseTableGlob, tableKey, type TableGlob, type TableKey } from '../shared/table-name.js';

export const SYSTEM_SCHEMAS = ['pg_catalog', 'information_schema', 'pg_toast'];
/** pgwarren's own bookkeeping (snapshot requests and progress): never published. */
export const PGWARREN_SCHEMA = 'pgwarren';

export function isSystemSchema(schema: string): boolean {
  return SYSTEM_SCHEMAS.includes(schema) || schema === PGWARREN_SCHEMA || schema.startsWith('pg_temp_') || schema.startsWith('pg_toast_temp_');
}

export class TableSelection {
  private readonly include: readonly TableGlob[];
  private readonly exclude: readonly TableGlob[];
  private readonly cache = new Map<TableKey, boolean>();

  constructor(includeGlobs: readonly string[], excludeGlobs: readonly string[]) {
    this.include = includeGlobs.map(parseTableGlob);
    this.exclude = excludeGlobs.map(parseTableGlob);
  }

  includes(schema: string, table: string): boolean {
    const key = tableKey(schema, table);
    let hit = this.cache.get(key);
    if (hit === undefined) {
      const matches = (g: TableGlob) => globMatches(g, schema, table);
      hit =
        !isSystemSchema(schema) &&
        (this.include.length === 0 || this.include.some(matches)) &&
        !this.exclude.some(matches);
      this.cache.set(key, hit);
    }
    return hit;
  }
}

export class OperationSelection {
  private readonly ops: ReadonlySet<Op>;
  constructor(ops: readonly Op[]) {
    this.ops = new Set(ops);
  }
  includes(op: Op): boolean {
    return this.ops.has(op);
  }
  /** The publication's `publish` parameter, in Postgres' canonical order. */
  publishParameter(): string {
    return OPS.filter((op) => this.ops.has(op)).join(', ');
  }
}

/**
 * Per table, what its rule says about one field: the first rule whose glob matches the table is
 * the table's rule (as for routing in events/router.ts), and a field it leaves unset takes
 * `fallback`. Answers are cached per table.
 */
export function ruleLookup<R extends { match: string }, V>(rules: readonly R[], pick: (r: R) => V | undefined, fallback: V): (schema: string, table: string) => V {
  const cache = new Map<TableKey, V>();
  const compiled = rules.map((r) => ({ sel: new TableSelection([r.match], []), rule: r }));
  return (schema, table) => {
    const key = tableKey(schema, table);
    let v = cache.get(key);
    if (v === undefined) {
      const rule = compiled.find((c) => c.sel.includes(schema, table))?.rule;
      v = (rule && pick(rule)) ?? fallback;
      cache.set(key, v);
    }
    return v;
  };
}

/** Per table, the columns its rules leave out of events (and, where safe, out of the publication). */
export function excludedColumnsLookup(rules: readonly { match: string; excludeColumns?: readonly string[] }[]): (schema: string, table: string) => ReadonlySet<string> {
  return ruleLookup(rules, (r) => (r.excludeColumns ? new Set(r.excludeColumns) : undefined), new Set<string>());
}
