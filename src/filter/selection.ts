/**
 * Which tables and operations are published. Globs match `schema.table`: `*` is any run of
 * characters, `?` one character, matched separately on each side of the first dot, so
 * `public.*` and `*.orders` mean what they look like.
 *
 * The same selection is pushed into the publication (so Postgres does not send what would be
 * dropped) and applied again here, because a publication made by hand may hold more.
 */
import { OPS, type Op } from '../types.js';

export const SYSTEM_SCHEMAS = ['pg_catalog', 'information_schema', 'pg_toast'];
/** pgwarren's own bookkeeping (snapshot requests and progress): never published. */
export const PGWARREN_SCHEMA = 'pgwarren';

export function isSystemSchema(schema: string): boolean {
  return SYSTEM_SCHEMAS.includes(schema) || schema === PGWARREN_SCHEMA || schema.startsWith('pg_temp_') || schema.startsWith('pg_toast_temp_');
}

interface Glob {
  readonly schema: RegExp;
  readonly table: RegExp;
}

function globPart(pattern: string): RegExp {
  const body = pattern.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*').replace(/\?/g, '.');
  return new RegExp(`^${body}$`);
}

export function compileGlob(glob: string): Glob {
  const dot = glob.indexOf('.');
  if (dot < 0) throw new Error(`table glob "${glob}" needs the form schema.table`);
  return { schema: globPart(glob.slice(0, dot)), table: globPart(glob.slice(dot + 1)) };
}

export class TableSelection {
  private readonly include: readonly Glob[];
  private readonly exclude: readonly Glob[];
  private readonly cache = new Map<string, boolean>();

  constructor(includeGlobs: readonly string[], excludeGlobs: readonly string[]) {
    this.include = includeGlobs.map(compileGlob);
    this.exclude = excludeGlobs.map(compileGlob);
  }

  includes(schema: string, table: string): boolean {
    const name = `${schema}.${table}`;
    let hit = this.cache.get(name);
    if (hit === undefined) {
      const matches = (g: Glob) => g.schema.test(schema) && g.table.test(table);
      hit =
        !isSystemSchema(schema) &&
        (this.include.length === 0 || this.include.some(matches)) &&
        !this.exclude.some(matches);
      this.cache.set(name, hit);
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
  const cache = new Map<string, V>();
  const compiled = rules.map((r) => ({ sel: new TableSelection([r.match], []), rule: r }));
  return (schema, table) => {
    const key = `${schema}.${table}`;
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
