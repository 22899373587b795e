/**
 * The shape (columns, types, key) each table had at its last change, so a change of shape can be
 * reported as a schema event (README "Beyond rows") before the first row event that uses it.
 *
 * It outlives sessions (the supervisor owns it) and is rewound to the slot's confirmed position
 * when a session starts: shapes first seen in transactions the new session will read again are
 * forgotten, so a re-read reports the same schema events at the same places (same ids). The first
 * change of a table that pgwarren sees after it starts sets its baseline and reports nothing:
 * there is nothing to compare it with (README "Schema changes").
 *
 * Per table: a short chain of shapes, newest first, each with the commit LSN of the transaction
 * that first used it.
 */
import type { SchemaColumn } from '../events/envelope.js';

interface Entry {
  /** The latest columns of this shape (key flags may change without a change of shape). */
  columns: readonly SchemaColumn[];
  readonly signature: string;
  /** Commit LSN of the transaction that first used this shape. */
  readonly since: bigint;
  previous: Entry | null;
}

/** Shapes older than this many changes back are never needed again (they are long acknowledged). */
const MAX_CHAIN = 16;
const MAX_TABLES = 100_000;

/**
 * What a change of shape is (README "Beyond rows"): columns added, dropped, renamed or retyped. The key
 * flags are reported but are not part of it: wal2json gives no sign of a key redefined without a
 * column change, so counting it would make the plugins disagree.
 */
export function shapeSignature(columns: readonly SchemaColumn[]): string {
  return columns.map((c) => `${c.name}\u0000${c.type}`).join('\u0001');
}

export class ShapeMemory {
  private readonly tables = new Map<string, Entry>();

  /**
   * A change of `table` (schema and table joined by NUL) in the transaction committed at `commitLsn` used this
   * shape. Returns the shape before it when that differs, else null (same shape, or first sight).
   */
  observe(table: string, columns: readonly SchemaColumn[], signature: string, commitLsn: bigint): readonly SchemaColumn[] | null {
    const current = this.tables.get(table);
    if (current?.signature === signature) {
      current.columns = columns;
      return null;
    }
    if (!current && this.tables.size >= MAX_TABLES) this.tables.clear();
    const entry: Entry = { columns, signature, since: commitLsn, previous: current ?? null };
    let e: Entry = entry;
    for (let depth = 1; e.previous; depth++) {
      if (depth >= MAX_CHAIN) e.previous = null;
      else e = e.previous;
    }
    this.tables.set(table, entry);
    return current ? current.columns : null;
  }

  /** Forget shapes first used by transactions after `confirmedLsn`: they will be read again. */
  rewind(confirmedLsn: bigint): void {
    for (const [table, entry] of this.tables) {
      let e: Entry | null = entry;
      while (e && e.since > confirmedLsn) e = e.previous;
      if (!e) this.tables.delete(table);
      else if (e !== entry) this.tables.set(table, e);
    }
  }
}
