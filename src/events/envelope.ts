/**
 * Change -> event document (README "Events"). Deterministic: the same change in the same transaction
 * always serializes to the same bytes, so a redelivery repeats the first delivery exactly.
 *
 * How replica identity shapes the event:
 * - `old` is the whole old row only when the plugin sent it (REPLICA IDENTITY FULL); otherwise the
 *   identity key columns the plugin sent (an update that kept its key sends none: `old` is null).
 * - An unchanged TOASTed value is not in the change. With a full old row it is taken from there;
 *   otherwise the column is left out of `new` and named in `unchanged_toast`. Never null.
 * - `changed` needs a full old row to compare against; without one it is null.
 *
 * The row parts (`key`, `old`, `new`) are written as JSON text straight from the raw tuple, with each
 * column's `"name":` quoted once per relation. Their bytes are those of the object the envelope used
 * to build and hand to `stringify`: same keys, same values, same key order (JS property order,
 * worked out once per relation by letting the engine order an object of the column names).
 */
import { UNCHANGED_TOAST, type Change, type Op, type RawTuple, type RelationInfo, type RowChange, type SourceInfo, type TxInfo } from '../types.js';
import { formatLsn } from '../source/lsn.js';
import { stringify } from './json.js';
import { converterFor, type Converter } from './values.js';
import type { TypeLookup } from '../source/type-catalog.js';
import { tableName } from '../shared/table-name.js';

/** What an event reports: a row operation, or one of the events beyond rows (README "Events", "Beyond rows"). */
export type EventOp = Op | 'bulk' | 'schema' | 'message' | 'commit' | 'read';

export interface BuiltEvent {
  readonly id: string;
  readonly op: EventOp;
  /** The table's schema; '' for events that belong to no table (application and commit events). */
  readonly schema: string;
  /** The table; for an application event its prefix, for a commit event ''. */
  readonly table: string;
  readonly body: string;
  /** The routing key of an event not routed by table (application and commit events). */
  readonly routingKey?: string;
  /** An update whose `changed` is `[]` (skip-unchanged drops it). */
  readonly unchanged?: boolean;
  /** Set by a transform (README "Shaping the stream"): its routing key instead of the route's, and extra AMQP headers. */
  readonly ownRoutingKey?: string;
  readonly ownHeaders?: Readonly<Record<string, string | number | boolean>>;
}

/** One column of a table's shape, as schema events report it. */
export interface SchemaColumn {
  readonly name: string;
  /** The type's name as Postgres spells it in pg_type (`int4`, `varchar`, `text[]` for arrays). */
  readonly type: string;
  /** Part of the event `key`. */
  readonly key: boolean;
}

/** The routing key of commit events (README "Beyond rows"); routing key templates do not apply. */
export const COMMIT_ROUTING_KEY = 'pgwarren.tx.commit';

/** The columns of one `key` variant. */
interface KeyColumns {
  /** Every column that must be known for the key to be (a repeated column counts each time). */
  readonly all: readonly number[];
  /** The columns written, in output order. */
  readonly order: readonly number[];
}

/** Per-relation conversion plan, made once per relation announcement. */
interface RelationPlan {
  readonly converters: readonly Converter[];
  readonly names: readonly string[];
  /** `"name":` per column: json.ts's quoteKey text, as `stringify` of a string is its quote. */
  readonly keyTexts: readonly string[];
  /** `"name"` per column, for the name lists `changed` and `unchanged_toast`. */
  readonly nameTexts: readonly string[];
  /** Columns events carry (per-table rules leave some out), in table order. */
  readonly included: readonly number[];
  /** `included` in output order. */
  readonly rowOrder: readonly number[];
  /** Replica identity columns, in table order. */
  readonly identity: readonly number[];
  /** The included identity columns (an old key row), in table order and in output order. */
  readonly oldKey: readonly number[];
  readonly oldKeyOrder: readonly number[];
  /** The key's columns; null when a key column is missing from the relation. */
  readonly key: KeyColumns | null;
  /** The key of a delete that carries only the replica identity (oldKind 'key'). */
  readonly identityDeleteKey: KeyColumns | null;
  /**
   * Two columns share a name. Postgres forbids it, so no decoder produces it, but RelationInfo does
   * not: such a relation keeps the object semantics (the last value wins, the first position stays)
   * by ordering each row's present columns afresh.
   */
  readonly repeatedNames: boolean;
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
    const parts = rowParts(change, plan);
    const body =
      `${head},"key":${parts.key},"old":${parts.old},"new":${parts.new},` +
      `"changed":${parts.changed},"unchanged_toast":${parts.unchangedToast},"tx":${txJson},"source":${this.sourceJson}}`;
    return { id, op: change.op, schema: rel.schema, table: rel.table, body, unchanged: parts.changed === '[]' };
  }

  /** The summary that replaces a flooded table's rows (README "Events", the bulk event). */
  buildBulk(
    flood: { schema: string; table: string; counts: { insert: number; update: number; delete: number; firstSeq: number }; reason: string },
    tx: TxInfo,
  ): BuiltEvent {
    const lsn = formatLsn(tx.commitLsn);
    // tableName quotes a name only when needed: ordinary names read `schema.table`, and two
    // tables whose dotted names coincide ("a.b".c, a."b.c") get different ids.
    const id = `${lsn}:bulk:${tableName(flood.schema, flood.table)}`;
    const { insert, update, delete: del, firstSeq } = flood.counts;
    const body =
      `{"id":${JSON.stringify(id)},"op":"bulk","schema":${JSON.stringify(flood.schema)},"table":${JSON.stringify(flood.table)},` +
      `"counts":{"insert":${insert},"update":${update},"delete":${del}},"reason":"${flood.reason}",` +
      `"tx":{"xid":${tx.xid},"lsn":"${lsn}","commit_time":"${tx.commitTime}","seq":${firstSeq}},"source":${this.sourceJson}}`;
    return { id, op: 'bulk', schema: flood.schema, table: flood.table, body };
  }

  /**
   * A table's shape as schema events report it: the columns its events can carry, so a rule's
   * excluded columns are left out (their names are not for consumers either, and whether
   * Postgres sends them at all depends on the publication's column list and the plugin).
   * The relation's types must be loaded (`typeOids`) first.
   */
  schemaColumns(rel: RelationInfo): SchemaColumn[] {
    const key = new Set(rel.keyColumns);
    const excluded = this.excludedColumns(rel.schema, rel.table);
    return rel.columns.filter((c) => !excluded.has(c.name)).map((c) => ({ name: c.name, type: typeName(this.types, c.typeOid), key: key.has(c.name) }));
  }

  /** A table changed shape before change `seq` of the transaction (README "Beyond rows"). */
  buildSchema(schema: string, table: string, columns: readonly SchemaColumn[], previous: readonly SchemaColumn[], tx: TxInfo, seq: number): BuiltEvent {
    const lsn = formatLsn(tx.commitLsn);
    // The schema event precedes change `seq`, which belongs to exactly one table: unique, and the
    // same on every read of the transaction.
    const id = `${lsn}:${seq}:schema`;
    const body =
      `{"id":"${id}","op":"schema","schema":${stringify(schema)},"table":${stringify(table)},` +
      `"columns":${columnsText(columns)},"previous":${columnsText(previous)},` +
      `"tx":{"xid":${tx.xid},"lsn":"${lsn}","commit_time":"${tx.commitTime}","seq":${seq}},"source":${this.sourceJson}}`;
    return { id, op: 'schema', schema, table, body };
  }

  /**
   * An application event (README "Beyond rows"). `payload` is valid JSON text (validated by the caller),
   * embedded as it was given: no number is ever parsed into a double.
   */
  buildMessage(prefix: string, payload: string, routingKey: string, tx: TxInfo, seq: number): BuiltEvent {
    const lsn = formatLsn(tx.commitLsn);
    const id = `${lsn}:${seq}`;
    const body =
      `{"id":"${id}","op":"message","prefix":${stringify(prefix)},"payload":${payload},` +
      `"tx":{"xid":${tx.xid},"lsn":"${lsn}","commit_time":"${tx.commitTime}","seq":${seq}},"source":${this.sourceJson}}`;
    return { id, op: 'message', schema: '', table: prefix, body, routingKey };
  }

  /**
   * The transaction boundary (README "Beyond rows"): how many events of each table (or application event
   * prefix) and op the transaction published, in the order they first appeared.
   */
  buildCommit(counts: ReadonlyMap<string, ReadonlyMap<string, number>>, tx: TxInfo): BuiltEvent {
    const lsn = formatLsn(tx.commitLsn);
    const id = `${lsn}:commit`;
    let countsText = '{';
    let sep = '';
    for (const [name, ops] of counts) {
      let inner = '{';
      let sep2 = '';
      for (const [op, n] of ops) {
        inner += `${sep2}"${op}":${n}`;
        sep2 = ',';
      }
      countsText += `${sep}${stringify(name)}:${inner}}`;
      sep = ',';
    }
    countsText += '}';
    const body =
      `{"id":"${id}","op":"commit","counts":${countsText},` +
      `"tx":{"xid":${tx.xid},"lsn":"${lsn}","commit_time":"${tx.commitTime}"},"source":${this.sourceJson}}`;
    return { id, op: 'commit', schema: '', table: '', body, routingKey: COMMIT_ROUTING_KEY };
  }

  /**
   * A snapshot's `read` event (README "Snapshots"): the row as `new`, its key, no old values, and which
   * snapshot and chunk it belongs to. `row` holds Postgres' text of each column, like a change's.
   */
  buildRead(rel: RelationInfo, row: RawTuple, id: string, snapshot: { id: string; chunk: number; last: boolean }): BuiltEvent {
    const plan = this.plan(rel);
    const parts = rowParts({ kind: 'change', op: 'insert', relation: rel, old: null, oldKind: 'none', new: row }, plan);
    const body =
      `{"id":${JSON.stringify(id)},"op":"read","schema":${JSON.stringify(rel.schema)},"table":${JSON.stringify(rel.table)},` +
      `"key":${parts.key},"old":null,"new":${parts.new},"changed":null,"unchanged_toast":[],` +
      `"snapshot":{"id":${JSON.stringify(snapshot.id)},"chunk":${snapshot.chunk},"last":${snapshot.last}},"tx":null,"source":${this.sourceJson}}`;
    return { id, op: 'read', schema: rel.schema, table: rel.table, body };
  }

  private plan(rel: RelationInfo): RelationPlan {
    let plan = this.plans.get(rel);
    if (!plan) {
      plan = makePlan(rel, this.types, this.excludedColumns(rel.schema, rel.table));
      this.plans.set(rel, plan);
    }
    return plan;
  }
}

function columnsText(columns: readonly SchemaColumn[]): string {
  return '[' + columns.map((c) => `{"name":${stringify(c.name)},"type":${stringify(c.type)},"key":${c.key}}`).join(',') + ']';
}

/** pg_type's name, arrays as their element's name and `[]`; an unknown OID as itself. */
function typeName(types: TypeLookup, oid: number): string {
  const info = types.get(oid);
  if (!info) return String(oid);
  if (info.kind === 'array' && info.elementOid !== undefined) return typeName(types, info.elementOid) + '[]';
  return info.name;
}

function makePlan(rel: RelationInfo, types: TypeLookup, excludedNames: ReadonlySet<string>): RelationPlan {
  const names = rel.columns.map((c) => c.name);
  const all = names.map((_, i) => i);
  const included = all.filter((i) => !excludedNames.has(names[i]!));
  const identity = all.filter((i) => rel.columns[i]!.inReplicaIdentity);
  const oldKey = identity.filter((i) => included.includes(i));
  const keyIndexes = rel.keyColumns.map((k) => names.indexOf(k));
  const key = keyIndexes.length > 0 && keyIndexes.every((i) => i >= 0) ? keyColumns(names, keyIndexes) : null;
  // A delete under REPLICA IDENTITY USING INDEX sends only that index's columns; when the primary
  // key is not among them, the identity columns are the key we honestly know.
  let identityDeleteKey = key;
  if (key && !key.all.every((i) => identity.includes(i))) {
    identityDeleteKey = identity.length > 0 ? keyColumns(names, identity) : null;
  }
  return {
    converters: rel.columns.map((c) => converterFor(c.typeOid, types)),
    names,
    keyTexts: names.map((n) => stringify(n) + ':'),
    nameTexts: names.map((n) => stringify(n)),
    included,
    rowOrder: objectOrder(names, included),
    identity,
    oldKey,
    oldKeyOrder: objectOrder(names, oldKey),
    key,
    identityDeleteKey,
    repeatedNames: new Set(names).size < names.length,
  };
}

function keyColumns(names: readonly string[], indexes: readonly number[]): KeyColumns {
  return { all: indexes, order: objectOrder(names, indexes) };
}

/**
 * The columns an object built by `out[names[i]] = value`, for each `i` of `indexes` in turn, would
 * hold, in that object's key order. The engine orders the keys itself, so JS's rule (array-index
 * keys such as "1" and "42" first, ascending; then insertion order) is matched exactly rather than
 * re-implemented. A repeated name keeps its first position and its last column, as assignment does.
 *
 * With distinct names, leaving some columns out does not reorder the others, so the order of all
 * candidate columns, made once per relation, holds for every row.
 */
function objectOrder(names: readonly string[], indexes: readonly number[]): number[] {
  const slots: Record<string, number> = Object.create(null); // a column may be named __proto__
  for (const i of indexes) slots[names[i]!] = i;
  const order: number[] = [];
  for (const name in slots) order.push(slots[name]!);
  return order;
}

interface RowParts {
  readonly key: string;
  readonly old: string;
  readonly new: string;
  readonly changed: string;
  readonly unchangedToast: string;
}

function rowParts(change: RowChange, plan: RelationPlan): RowParts {
  const fullOld = change.oldKind === 'full' ? change.old : null;
  let old = 'null';
  if (change.old && change.oldKind === 'full') old = objectText(plan, plan.included, plan.rowOrder, change.old, null);
  else if (change.old && change.oldKind === 'key' && !(change.op === 'update' && sameIdentity(change.old, change.new, plan))) {
    // An update that kept its key has no old values to report, even if the plugin sent the
    // key anyway (wal2json always does; pgoutput does for a TOASTed key).
    old = objectText(plan, plan.oldKey, plan.oldKeyOrder, change.old, null);
  }

  let newRow = 'null';
  let unchangedToast = '[]';
  if (change.new) {
    newRow = objectText(plan, plan.included, plan.rowOrder, change.new, fullOld);
    // Most rows carry every value: only a row with an unchanged TOASTed one needs the name pass.
    if (change.new.includes(UNCHANGED_TOAST)) unchangedToast = unchangedToastText(plan, change.new, fullOld);
  }

  // The key after the change (before it for a delete), completed from the old row if the new
  // one lacks a key value (an unchanged TOASTed key column).
  const keyCols = change.op === 'delete' && change.oldKind === 'key' ? plan.identityDeleteKey : plan.key;
  const primary = change.op === 'delete' ? change.old : change.new;
  const key = keyCols ? keyText(plan, keyCols, primary, change.old) : 'null';

  const changed = change.op === 'update' && fullOld && change.new ? changedText(plan, change.new, fullOld) : 'null';
  return { key, old, new: newRow, changed, unchangedToast };
}

function sameIdentity(old: RawTuple, next: RawTuple | null, plan: RelationPlan): boolean {
  if (!next) return false;
  return plan.identity.every((i) => next[i] === UNCHANGED_TOAST || next[i] === old[i]);
}

/** A row value as written: an unchanged TOASTed value comes from `fallback`; undefined = left out. */
function rowValue(tuple: RawTuple, fallback: RawTuple | null, i: number): string | null | undefined {
  let raw = tuple[i];
  if (raw === UNCHANGED_TOAST && fallback) raw = fallback[i];
  return raw === UNCHANGED_TOAST ? undefined : raw;
}

function valueText(plan: RelationPlan, i: number, raw: string | null): string {
  return raw === null ? 'null' : stringify(plan.converters[i]!(raw));
}

/** The object of the `columns` of `tuple` that have a value; `order` is `columns` in output order. */
function objectText(plan: RelationPlan, columns: readonly number[], order: readonly number[], tuple: RawTuple, fallback: RawTuple | null): string {
  // See RelationPlan.repeatedNames: which columns are present decides the order.
  if (plan.repeatedNames) order = objectOrder(plan.names, columns.filter((i) => rowValue(tuple, fallback, i) !== undefined));
  let out = '{';
  let sep = '';
  for (let n = 0; n < order.length; n++) {
    const i = order[n]!;
    const raw = rowValue(tuple, fallback, i);
    if (raw === undefined) continue;
    out += sep + plan.keyTexts[i] + valueText(plan, i, raw);
    sep = ',';
  }
  return out + '}';
}

/** The key object, or null when some key column's value is not known. */
function keyText(plan: RelationPlan, key: KeyColumns, primary: RawTuple | null, secondary: RawTuple | null): string {
  // `all`, not `order`: a column whose name a later key column repeats must be known as well.
  for (const i of key.all) if (keyValue(primary, secondary, i) === undefined) return 'null';
  let out = '{';
  let sep = '';
  for (const i of key.order) {
    out += sep + plan.keyTexts[i] + valueText(plan, i, keyValue(primary, secondary, i)!);
    sep = ',';
  }
  return out + '}';
}

function keyValue(primary: RawTuple | null, secondary: RawTuple | null, i: number): string | null | undefined {
  let raw = primary?.[i];
  if (raw === undefined || raw === UNCHANGED_TOAST) raw = secondary?.[i];
  return raw === UNCHANGED_TOAST ? undefined : raw;
}

/** Names of the columns whose value the update changed, in table order. */
function changedText(plan: RelationPlan, next: RawTuple, old: RawTuple): string {
  let out = '[';
  let sep = '';
  for (const i of plan.included) {
    const after = next[i] === UNCHANGED_TOAST ? old[i] : next[i];
    if (after !== old[i]) {
      out += sep + plan.nameTexts[i];
      sep = ',';
    }
  }
  return out + ']';
}

/** Names of the columns left out of `new` as unchanged TOASTed values, in table order. */
function unchangedToastText(plan: RelationPlan, next: RawTuple, fallback: RawTuple | null): string {
  let out = '[';
  let sep = '';
  for (const i of plan.included) {
    if (next[i] === UNCHANGED_TOAST && (!fallback || fallback[i] === UNCHANGED_TOAST)) {
      out += sep + plan.nameTexts[i];
      sep = ',';
    }
  }
  return out + ']';
}
