/**
 * Shaping the stream (README "Shaping the stream", README "Shaping the stream"): the steps between table and
 * operation selection and the flood guard, in this order:
 *
 *   row filter      (wal2json only: with pgoutput the publication filters, inside Postgres)
 *   column exclusion (the event builder leaves excluded columns out)
 *   skip-unchanged  (an update whose `changed` is [] is dropped)
 *   transform       (PGWARREN_TRANSFORM)
 *
 * The pipeline calls `filter` before a change gets its `tx.seq` (a filtered row never reached
 * pgoutput's stream, so it must not use up a seq with wal2json either), and `shape` on the built
 * event. Neither touches ids or the checkpoint.
 */
import { UsageError } from '../errors.js';
import { FilterTableError, TableRowFilter, type Expr } from '../filter/row-filter.js';
import type { BuiltEvent } from '../events/envelope.js';
import type { TypeLookup } from '../source/type-catalog.js';
import type { RelationInfo, RowChange } from '../types.js';
import type { Transformer } from './transform.js';

export type Shaped =
  | { readonly kind: 'event'; readonly event: BuiltEvent }
  | { readonly kind: 'drop'; readonly reason: 'unchanged' | 'transform' }
  | { readonly kind: 'fail'; readonly error: string };

export interface ShaperOptions {
  /** The in-process row filter of a table and the rule it came from; null: none (or pgoutput). */
  readonly rowFilter: (schema: string, table: string) => { readonly expr: Expr; readonly rule: string } | null;
  /** Updates or deletes are published: Postgres' replica identity rule for row filters applies. */
  readonly identityRule: boolean;
  readonly skipUnchanged: (schema: string, table: string) => boolean;
  readonly transformer: Transformer | null;
  readonly types: TypeLookup;
  /** Loads catalog facts (user types) of a relation before its filter is compiled. */
  readonly prepare: (relation: RelationInfo) => Promise<void>;
}

export class Shaper {
  private readonly filters = new WeakMap<RelationInfo, TableRowFilter | null>();

  constructor(private readonly opts: ShaperOptions) {}

  /** True when `filter` must see this table's row changes. */
  filtersRows(schema: string, table: string): boolean {
    return this.opts.rowFilter(schema, table) !== null;
  }

  /** True when `shape` must see this table's events. */
  shapes(schema: string, table: string): boolean {
    return this.opts.transformer !== null || this.opts.skipUnchanged(schema, table);
  }

  /** The change to go on with (an update may become an insert or a delete), or null. */
  filter(change: RowChange): RowChange | null | Promise<RowChange | null> {
    const compiled = this.filters.get(change.relation);
    if (compiled === undefined) {
      return this.opts.prepare(change.relation).then(() => {
        this.filters.set(change.relation, this.compile(change.relation));
        return this.filter(change);
      });
    }
    return compiled === null ? change : compiled.apply(change);
  }

  /** skip-unchanged, then the transform. */
  shape(event: BuiltEvent): Shaped | Promise<Shaped> {
    if (event.unchanged && this.opts.skipUnchanged(event.schema, event.table)) return { kind: 'drop', reason: 'unchanged' };
    const t = this.opts.transformer;
    if (!t) return { kind: 'event', event };
    const out = t.apply(event);
    return out instanceof Promise ? out.then(fromTransform) : fromTransform(out);
  }

  private compile(rel: RelationInfo): TableRowFilter | null {
    const f = this.opts.rowFilter(rel.schema, rel.table);
    if (!f) return null;
    try {
      return new TableRowFilter(f.expr, rel, this.opts.types, this.opts.identityRule);
    } catch (err) {
      if (err instanceof FilterTableError) throw new UsageError(`${f.rule}: ${err.message}`);
      throw err;
    }
  }
}

function fromTransform(out: ReturnType<Transformer['apply']> extends infer R ? Awaited<R> : never): Shaped {
  if (out.kind === 'drop') return { kind: 'drop', reason: 'transform' };
  return out;
}
