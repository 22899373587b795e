/**
 * Change -> event document (CONTRACT §4). Deterministic: the same change in the same transaction
 * always serializes to the same bytes, so a redelivery repeats the first delivery exactly.
 *
 * How replica identity shapes the event:
 * - `old` is the whole old row only when the plugin sent it (REPLICA IDENTITY FULL); otherwise the
 *   identity key columns the plugin sent (an update that kept its key sends none: `old` is null).
 * - An unchanged TOASTed value is not in the change. With a full old row it is taken from there;
 *   otherwise the column is left out of `new` and named in `unchanged_toast`. Never null.
 * - `changed` needs a full old row to compare against; without one it is null.
 */
import { UNCHANGED_TOAST, type Change, type Op, type RawTuple, type RelationInfo, type RowChange, type SourceInfo, type TxInfo } from '../types.js';
import { formatLsn } from '../source/lsn.js';
import { stringify, type JsonValue } from './json.js';
import { converterFor, type Converter } from './values.js';
import type { TypeLookup } from '../source/type-catalog.js';

export interface BuiltEvent {
  readonly id: string;
  readonly op: Op | 'bulk';
  readonly schema: string;
  readonly table: string;
  readonly body: string;
}

/** Per-relation conversion plan, made once per relation announcement. */
interface RelationPlan {
  readonly converters: readonly Converter[];
  readonly names: readonly string[];
  /** Indexes of `keyColumns` in the column list; null when a key column is missing. */
  readonly keyIndexes: readonly number[] | null;
  readonly identityIndexes: readonly number[];
  /** Column indexes left out of events (per-table rules). */
  readonly excluded: ReadonlySet<number>;
}

export class EventBuilder {
  private readonly plans = new WeakMap<RelationInfo, RelationPlan>();
  private readonly sourceJson: string;

  constructor(
    source: SourceInfo,
    private readonly types: TypeLookup,
    private readonly excludedColumns: (schema: string, table: string) => ReadonlySet<string> = () => new Set(),
  ) {
    this.sourceJson = stringify({ name: source.name, db: source.db, slot: source.slot, plugin: source.plugin });
  }

  /** Type OIDs the builder needs the catalog to know before `build` can convert this relation. */
  typeOids(relation: RelationInfo): number[] {
    return relation.columns.map((c) => c.typeOid);
  }

  build(change: Change, tx: TxInfo, seq: number): BuiltEvent {
    const rel = change.relation;
    const lsn = formatLsn(tx.commitLsn);
    const id = `${lsn}:${seq}`;
    const txJson = `{"xid":${tx.xid},"lsn":"${lsn}","commit_time":"${tx.commitTime}","seq":${seq}}`;
    const head = `{"id":"${id}","op":"${change.kind === 'truncate' ? 'truncate' : change.op}","schema":${JSON.stringify(rel.schema)},"table":${JSON.stringify(rel.table)}`;
    if (change.kind === 'truncate') {
      return {
        id,
        op: 'truncate',
        schema: rel.schema,
        table: rel.table,
        body: `${head},"key":null,"old":null,"new":null,"changed":null,"unchanged_toast":[],"tx":${txJson},"source":${this.sourceJson}}`,
      };
    }
    const plan = this.plan(rel);
    const parts = this.rowParts(change, plan);
    const body =
      `${head},"key":${stringify(parts.key)},"old":${stringify(parts.old)},"new":${stringify(parts.new)},` +
      `"changed":${stringify(parts.changed)},"unchanged_toast":${stringify(parts.unchangedToast)},"tx":${txJson},"source":${this.sourceJson}}`;
    return { id, op: change.op, schema: rel.schema, table: rel.table, body };
  }

  /** The summary that replaces a flooded table's rows (CONTRACT §4, the bulk event). */
  buildBulk(
    flood: { schema: string; table: string; counts: { insert: number; update: number; delete: number; firstSeq: number }; reason: string },
    tx: TxInfo,
  ): BuiltEvent {
    const lsn = formatLsn(tx.commitLsn);
    const id = `${lsn}:bulk:${flood.schema}.${flood.table}`;
    const { insert, update, delete: del, firstSeq } = flood.counts;
    const body =
      `{"id":${JSON.stringify(id)},"op":"bulk","schema":${JSON.stringify(flood.schema)},"table":${JSON.stringify(flood.table)},` +
      `"counts":{"insert":${insert},"update":${update},"delete":${del}},"reason":"${flood.reason}",` +
      `"tx":{"xid":${tx.xid},"lsn":"${lsn}","commit_time":"${tx.commitTime}","seq":${firstSeq}},"source":${this.sourceJson}}`;
    return { id, op: 'bulk', schema: flood.schema, table: flood.table, body };
  }

  private plan(rel: RelationInfo): RelationPlan {
    let plan = this.plans.get(rel);
    if (plan) return plan;
    const names = rel.columns.map((c) => c.name);
    const keyIndexes = rel.keyColumns.map((k) => names.indexOf(k));
    const excludedNames = this.excludedColumns(rel.schema, rel.table);
    plan = {
      converters: rel.columns.map((c) => converterFor(c.typeOid, this.types)),
      names,
      keyIndexes: keyIndexes.length > 0 && keyIndexes.every((i) => i >= 0) ? keyIndexes : null,
      identityIndexes: rel.columns.flatMap((c, i) => (c.inReplicaIdentity ? [i] : [])),
      excluded: new Set(names.flatMap((n, i) => (excludedNames.has(n) ? [i] : []))),
    };
    this.plans.set(rel, plan);
    return plan;
  }

  private rowParts(change: RowChange, plan: RelationPlan) {
    const fullOld = change.oldKind === 'full' ? change.old : null;
    let old: JsonValue = null;
    if (change.old && change.oldKind === 'full') old = this.row(change.old, plan, null);
    else if (change.old && change.oldKind === 'key' && !(change.op === 'update' && this.sameIdentity(change.old, change.new, plan))) {
      // An update that kept its key has no old values to report, even if the plugin sent the
      // key anyway (wal2json always does; pgoutput does for a TOASTed key).
      old = this.subset(change.old, plan, plan.identityIndexes);
    }

    let newRow: JsonValue = null;
    const unchangedToast: string[] = [];
    if (change.new) newRow = this.row(change.new, plan, fullOld, unchangedToast);

    // The key after the change (before it for a delete), completed from the old row if the new
    // one lacks a key value (an unchanged TOASTed key column).
    let key: JsonValue = null;
    if (plan.keyIndexes) {
      // A delete under REPLICA IDENTITY USING INDEX sends only that index's columns; when the
      // primary key is not among them, the identity columns are the key we honestly know.
      const keyIndexes =
        change.op === 'delete' && change.oldKind === 'key' && !plan.keyIndexes.every((i) => plan.identityIndexes.includes(i))
          ? plan.identityIndexes
          : plan.keyIndexes;
      const primary = change.op === 'delete' ? change.old : change.new;
      key = keyIndexes.length > 0 ? this.key(plan.names, plan.converters, keyIndexes, primary, change.old) : null;
    }

    let changed: JsonValue = null;
    if (change.op === 'update' && fullOld && change.new) {
      const names: string[] = [];
      for (let i = 0; i < plan.names.length; i++) {
        if (plan.excluded.has(i)) continue;
        const after = change.new[i] === UNCHANGED_TOAST ? fullOld[i] : change.new[i];
        if (after !== fullOld[i]) names.push(plan.names[i]!);
      }
      changed = names;
    }
    return { key, old, new: newRow, changed, unchangedToast };
  }

  private sameIdentity(old: RawTuple, next: RawTuple | null, plan: RelationPlan): boolean {
    if (!next) return false;
    return plan.identityIndexes.every((i) => next[i] === UNCHANGED_TOAST || next[i] === old[i]);
  }

  private row(tuple: RawTuple, plan: RelationPlan, fallback: RawTuple | null, unchangedToast?: string[]): JsonValue {
    const out: Record<string, JsonValue> = Object.create(null); // a column may be named __proto__
    for (let i = 0; i < plan.names.length; i++) {
      if (plan.excluded.has(i)) continue;
      let raw = tuple[i];
      if (raw === UNCHANGED_TOAST && fallback) raw = fallback[i];
      if (raw === undefined) continue;
      if (raw === UNCHANGED_TOAST) {
        unchangedToast?.push(plan.names[i]!);
        continue;
      }
      out[plan.names[i]!] = raw === null ? null : plan.converters[i]!(raw);
    }
    return out;
  }

  private subset(tuple: RawTuple, plan: RelationPlan, indexes: readonly number[]): JsonValue {
    const out: Record<string, JsonValue> = Object.create(null); // a column may be named __proto__
    for (const i of indexes) {
      if (plan.excluded.has(i)) continue;
      const raw = tuple[i];
      if (raw === undefined || raw === UNCHANGED_TOAST) continue;
      out[plan.names[i]!] = raw === null ? null : plan.converters[i]!(raw);
    }
    return out;
  }

  private key(
    names: readonly string[],
    converters: readonly Converter[],
    indexes: readonly number[],
    primary: RawTuple | null,
    secondary: RawTuple | null,
  ): JsonValue {
    const out: Record<string, JsonValue> = Object.create(null); // a column may be named __proto__
    for (const i of indexes) {
      let raw = primary?.[i];
      if (raw === undefined || raw === UNCHANGED_TOAST) raw = secondary?.[i];
      if (raw === undefined || raw === UNCHANGED_TOAST) return null; // key not fully known
      out[names[i]!] = raw === null ? null : converters[i]!(raw);
    }
    return out;
  }
}
