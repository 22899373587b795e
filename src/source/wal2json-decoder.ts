/**
 * wal2json (format-version 2, one JSON document per action) -> plugin-blind `Decoded` items that
 * match what the pgoutput decoder yields for the same SQL, so events are identical.
 *
 * What wal2json 2.5 does differently, and how it is evened out here:
 * - numbers are bare JSON numbers: parsed losslessly, kept as the digits Postgres printed;
 *   booleans are JSON booleans: turned back into Postgres' `t` / `f`;
 * - bytea is hex without the `\x` prefix: the prefix is restored;
 * - an unchanged TOASTed column is simply absent: the table's columns come from the catalog and
 *   an absent one is marked unchanged TOAST;
 * - an update always carries `identity`, even when the key did not change: the event builder
 *   treats an old key equal to the new one as "not sent", as pgoutput does;
 * - NaN and ±Infinity floats are printed as null by wal2json: that loss cannot be undone (README).
 * - wal2json sends no Relation messages: the shape of a table at the time of each change is
 *   worked out from the change itself. An insert carries every live column of the row as the
 *   table was then (in table order, types included), so it defines the shape; an update or delete
 *   that fits the shape known so far keeps it, and one that does not (a column unknown or of
 *   another type, a column missing that the catalog no longer has) re-reads the catalog. The
 *   catalog alone is not enough: it describes the table as it is now, not as it was when the
 *   change was made (a column dropped since would be reported as null).
 */
import { parse as parseLossless } from 'lossless-json';
import { UNCHANGED_TOAST, type Decoded, type RawValue, type RelationInfo, type ColumnInfo } from '../types.js';
import { optionLiteral, quoteIdent, type Decoder } from './decoder.js';
import { parseLsn } from './lsn.js';
import { REPLICA_IDENTITY, keyColumnsOf, type RelationCatalog, type TableFacts } from './relation-catalog.js';
import type { TypeLookup } from './type-catalog.js';
import { parseTableGlob, tableKey, type GlobPattern } from '../shared/table-name.js';

interface W2jColumn {
  readonly name: string;
  readonly typeoid: number | string;
  readonly value?: unknown;
}

/** One wal2json v2 action, as far as pgwarren reads it. */
export interface W2jAction {
  readonly action: 'B' | 'C' | 'I' | 'U' | 'D' | 'T' | 'M';
  readonly xid?: number | string | null;
  readonly timestamp?: string | null;
  readonly lsn?: string;
  readonly nextlsn?: string;
  readonly schema?: string;
  readonly table?: string;
  readonly columns?: readonly W2jColumn[];
  readonly identity?: readonly W2jColumn[];
  readonly transactional?: boolean;
  readonly prefix?: string;
  readonly content?: string;
}

const BYTEA_OID = 17;

/** wal2json's timestamp text ("2026-11-22 09:23:15.56151+00", session TimeZone=UTC) -> ISO micro. */
export function wal2jsonTimeToIso(text: string): string {
  const m = /^(\d{4,})-(\d\d)-(\d\d) (\d\d):(\d\d):(\d\d)(?:\.(\d{1,6}))?\+00$/.exec(text);
  if (!m) throw new Error(`unexpected wal2json timestamp ${JSON.stringify(text)} (is the session TimeZone UTC?)`);
  return `${m[1]}-${m[2]}-${m[3]}T${m[4]}:${m[5]}:${m[6]}.${(m[7] ?? '').padEnd(6, '0')}Z`;
}

export class Wal2jsonDecoder implements Decoder<W2jAction> {
  readonly plugin = 'wal2json' as const;
  /** (schema, table) as wal2json names it -> the table's shape at its last change. */
  private readonly shapes = new Map<string, Shape>();

  constructor(
    private readonly catalog: RelationCatalog,
    private readonly types: TypeLookup,
    private readonly options: {
      readonly addTables?: readonly string[] | null;
      readonly filterTables?: readonly string[] | null;
      readonly actions?: readonly string[];
    } = {},
  ) {}

  startOptions(): string[] {
    const opts: Array<[string, string]> = [
      ['format-version', '2'],
      ['include-xids', '1'],
      ['include-timestamp', '1'],
      ['include-lsn', '1'],
      ['include-transaction', '1'],
      ['include-types', '0'],
      ['include-type-oids', '1'],
      ['include-pk', '0'],
      // Only our own logical messages: the flood marker, application events and snapshot watermarks.
      ['add-msg-prefixes', 'pgwarren,pgwarren.event,pgwarren.snapshot'],
    ];
    if (this.options.addTables && this.options.addTables.length > 0) opts.push(['add-tables', this.options.addTables.join(',')]);
    if (this.options.filterTables && this.options.filterTables.length > 0) opts.push(['filter-tables', this.options.filterTables.join(',')]);
    if (this.options.actions && this.options.actions.length > 0) opts.push(['actions', this.options.actions.join(',')]);
    // Option names are identifiers in the replication grammar: hyphenated ones must be
    // double-quoted ('format-version' in single quotes is a syntax error).
    return opts.map(([k, v]) => `${quoteIdent(k)} ${optionLiteral(v)}`);
  }

  parse(payload: Buffer): W2jAction {
    // Numbers stay as the digits Postgres printed: no float rounding, no lost int8 digits.
    return parseLossless(payload.toString('utf8'), null, (digits: string) => new PgNumber(digits)) as W2jAction;
  }

  async decode(a: W2jAction): Promise<Decoded[]> {
    switch (a.action) {
      case 'B':
        return [{ kind: 'begin', xid: asNumber(a.xid), commitLsn: parseLsn(a.lsn!), commitTime: wal2jsonTimeToIso(a.timestamp!) }];
      case 'C':
        return [{ kind: 'commit', commitLsn: parseLsn(a.lsn!), endLsn: parseLsn(a.nextlsn!) }];
      case 'M':
        return [{ kind: 'message', transactional: a.transactional === true, prefix: a.prefix ?? '', content: Buffer.from(a.content ?? '', 'utf8') }];
      case 'T':
        return [{ kind: 'truncate', relation: await this.relation(a.schema!, a.table!, 'T', []), cascade: false, restartIdentity: false }];
      case 'I':
      case 'U':
      case 'D':
        return [await this.rowChange(a)];
    }
  }

  private async rowChange(a: W2jAction): Promise<Decoded> {
    const columns = a.columns ?? [];
    const identity = a.identity ?? [];
    const relation = await this.relation(a.schema!, a.table!, a.action, columns.length > 0 ? columns : identity);
    const oldKind = relation.replicaIdentity === 'full' ? 'full' : 'key';
    if (a.action === 'I') return { kind: 'change', op: 'insert', relation, old: null, oldKind: 'none', new: this.tuple(relation, columns, false) };
    if (a.action === 'D') {
      return { kind: 'change', op: 'delete', relation, old: this.tuple(relation, identity, null), oldKind: identity.length ? oldKind : 'none', new: null };
    }
    return {
      kind: 'change',
      op: 'update',
      relation,
      old: identity.length ? this.tuple(relation, identity, null) : null,
      oldKind: identity.length ? oldKind : 'none',
      new: this.tuple(relation, columns, true),
    };
  }

  /**
   * Values aligned with the relation's columns. `absent` decides what a missing column means:
   * true = unchanged TOAST (new row of an update), false = null (cannot happen for an insert),
   * null = not sent (old key tuple).
   */
  private tuple(rel: RelationInfo, cols: readonly W2jColumn[], absent: boolean | null): RawValue[] {
    const byName = new Map(cols.map((c) => [c.name, c]));
    return rel.columns.map((col) => {
      const c = byName.get(col.name);
      if (!c) return absent === true ? UNCHANGED_TOAST : (null as RawValue);
      return this.text(c.value, col.typeOid);
    });
  }

  private text(value: unknown, typeOid: number): RawValue {
    if (value === null || value === undefined) return null;
    if (value instanceof PgNumber) return value.digits;
    if (typeof value === 'boolean') return value ? 't' : 'f';
    const s = String(value);
    return this.baseOid(typeOid) === BYTEA_OID ? `\\x${s}` : s;
  }

  private baseOid(oid: number): number {
    let info = this.types.get(oid);
    for (let depth = 0; info?.kind === 'domain' && info.baseOid && depth < 16; depth++) {
      oid = info.baseOid;
      info = this.types.get(oid);
    }
    return oid;
  }

  /**
   * The relation as pgoutput would describe it at the time of this change (see the header): the
   * shape known so far while the change fits it, else a new one. A new shape equal to the old
   * one keeps the old object, so per-relation work downstream is done once per real shape.
   */
  private async relation(schema: string, table: string, action: W2jAction['action'], sent: readonly W2jColumn[]): Promise<RelationInfo> {
    const name = tableKey(schema, table); // a pair: "a.b"."c" is not "a"."b.c"
    const known = this.shapes.get(name);
    if (known && (await this.fits(known, action, sent))) return known.relation;
    const leaf = await this.freshFacts(schema, table);
    // A partition's change is reported as its root's, as pgoutput does with publish_via_partition_root.
    // (The leaf may order its columns differently from the root: the root's order is used.)
    const root = leaf?.partitionRoot;
    let rel: RelationInfo;
    if (root) rel = buildRelation(root.schema, root.table, sent, await this.freshFacts(root.schema, root.table));
    else if (action === 'I') rel = relationOfInsert(schema, table, sent, leaf);
    // An update or delete may lack columns (unchanged TOAST, identity only): the catalog fills
    // them in, but only with columns the known shape had (one added since is not in this row).
    else rel = buildRelation(schema, table, sent, leaf, known ? (n) => known.byName.has(n) : undefined);
    if (known && relationSignature(known.relation) === relationSignature(rel)) rel = known.relation;
    if (this.shapes.size > 10_000) this.shapes.clear();
    this.shapes.set(name, {
      relation: rel,
      byName: new Map(rel.columns.map((c) => [c.name, c])),
      generated: new Set(leaf?.generated ?? []),
      absentChecked: new Set(),
    });
    return rel;
  }

  /** Whether a change with these columns can have been made with this shape. */
  private async fits(shape: Shape, action: W2jAction['action'], sent: readonly W2jColumn[]): Promise<boolean> {
    if (action === 'T') return true;
    let matched = 0;
    for (const c of sent) {
      if (shape.generated.has(c.name)) continue;
      const col = shape.byName.get(c.name);
      if (!col || col.typeOid !== asNumber(c.typeoid)) return false;
      matched++;
    }
    const columns = shape.relation.columns.length;
    if (action === 'D' || matched === columns) return true;
    if (action === 'I') return false; // an insert carries every column: one is gone
    // An update without some columns: unchanged TOASTed values, or columns dropped since. The
    // catalog tells (once per set of absent columns): still there means TOAST.
    const sentNames = new Set(sent.map((c) => c.name));
    const absent = shape.relation.columns.filter((c) => !sentNames.has(c.name));
    const key = absent.map((c) => c.name).join('\u0000');
    if (shape.absentChecked.has(key)) return true;
    const facts = await this.freshFacts(shape.relation.schema, shape.relation.table);
    const stillThere = absent.every((c) => facts?.columns.some((k) => k.name === c.name && k.typeOid === c.typeOid));
    if (stillThere && shape.absentChecked.size < 64) shape.absentChecked.add(key);
    return stillThere;
  }

  private async freshFacts(schema: string, table: string): Promise<TableFacts | undefined> {
    return (await this.catalog.refreshByName(schema, table)) ?? this.catalog.cachedByName(schema, table);
  }
}

/** A table's shape at some change, with what `fits` needs to check the next change quickly. */
interface Shape {
  readonly relation: RelationInfo;
  readonly byName: ReadonlyMap<string, ColumnInfo>;
  /** Stored generated columns: wal2json sends them, pgoutput does not, events leave them out. */
  readonly generated: ReadonlySet<string>;
  /** Sets of columns an update left out that the catalog said still exist (unchanged TOAST). */
  readonly absentChecked: Set<string>;
}

/** Everything of a relation events depend on. */
function relationSignature(rel: RelationInfo): string {
  return [
    rel.oid,
    rel.schema,
    rel.table,
    rel.replicaIdentity,
    rel.keyColumns.join('\u0000'),
    ...rel.columns.map((c) => `${c.name}\u0000${c.typeOid}\u0000${c.typeMod}\u0000${c.inReplicaIdentity}`),
  ].join('\u0001');
}

/**
 * The relation an insert shows: exactly the columns it carries (every live column of the table
 * when the row was written, in table order), less stored generated ones; key and replica identity
 * from the catalog.
 */
function relationOfInsert(schema: string, table: string, sent: readonly W2jColumn[], facts: TableFacts | undefined): RelationInfo {
  const generated = new Set(facts?.generated ?? []);
  const catalogColumns = new Map((facts?.columns ?? []).map((c) => [c.name, c]));
  const identityCols = identityColumns(facts);
  const columns: ColumnInfo[] = sent
    .filter((c) => !generated.has(c.name))
    .map((c) => {
      const typeOid = asNumber(c.typeoid);
      const known = catalogColumns.get(c.name);
      return { name: c.name, typeOid, typeMod: known && known.typeOid === typeOid ? known.typeMod : -1, inReplicaIdentity: identityCols.has(c.name) };
    });
  const names = new Set(columns.map((c) => c.name));
  return {
    oid: facts?.oid ?? 0,
    schema,
    table,
    replicaIdentity: REPLICA_IDENTITY[facts?.replicaIdentity ?? 'd'] ?? 'default',
    columns,
    // A key column the row does not have (renamed since) is not a key of this shape.
    keyColumns: keyColumnsOf(facts).every((k) => names.has(k)) ? keyColumnsOf(facts) : [],
  };
}

function identityColumns(facts: TableFacts | undefined): Set<string> {
  return new Set(
    facts ? (facts.replicaIdentity === 'f' ? facts.columns.map((c) => c.name) : facts.replicaIdentity === 'i' ? facts.identityIndex : facts.primaryKey) : [],
  );
}

/** A JSON number kept as text. */
class PgNumber {
  constructor(readonly digits: string) {}
}

function asNumber(v: unknown): number {
  return Number(v instanceof PgNumber ? v.digits : v);
}

/**
 * Table globs as wal2json's add-tables/filter-tables understand them, or null when one of them
 * cannot be said there: then filtering stays ours alone. wal2json splits its list at unescaped
 * commas and white space and each entry at its first unescaped dot, drops a backslash before any
 * character, and knows one wildcard: a whole schema or table part `*`. So a literal name is
 * written with its special characters escaped (a dot in `"a.b".c` becomes `a\.b.c`), a part that
 * is just `*` stays `*`, and anything else (`?`, `ord*`) is not pushed down.
 */
export function wal2jsonTableFilter(globs: readonly string[]): string[] | null {
  const out: string[] = [];
  for (const text of globs) {
    const glob = parseTableGlob(text);
    const schema = wal2jsonPart(glob.schema);
    const table = wal2jsonPart(glob.table);
    if (schema === null || table === null) return null;
    out.push(`${schema}.${table}`);
  }
  return out;
}

function wal2jsonPart(part: GlobPattern): string | null {
  const [only, ...more] = part.tokens;
  if (!only || more.length > 0) return null;
  if ('wildcard' in only) return only.wildcard === '*' ? '*' : null;
  return only.literal.replace(/[\\,.*'\s]/gu, '\\$&');
}

function buildRelation(
  schema: string,
  table: string,
  sent: readonly W2jColumn[],
  facts: TableFacts | undefined,
  knownBefore?: (name: string) => boolean,
): RelationInfo {
  const sentTypes = new Map(sent.map((c) => [c.name, asNumber(c.typeoid)]));
  const identityCols = identityColumns(facts);
  // Catalog columns in table order; a sent column the catalog no longer has (dropped since) is
  // kept at the end so its value is not lost.
  const catalogColumns = (facts?.columns ?? []).filter((c) => !knownBefore || sentTypes.has(c.name) || knownBefore(c.name));
  const columns: ColumnInfo[] = catalogColumns.map((c) => ({
    name: c.name,
    typeOid: sentTypes.get(c.name) ?? c.typeOid,
    typeMod: c.typeMod,
    inReplicaIdentity: identityCols.has(c.name),
  }));
  const generated = new Set(facts?.generated ?? []);
  for (const c of sent) {
    if (generated.has(c.name)) continue; // pgoutput does not send stored generated columns
    if (!columns.some((k) => k.name === c.name)) {
      columns.push({ name: c.name, typeOid: asNumber(c.typeoid), typeMod: -1, inReplicaIdentity: false });
    }
  }
  return {
    oid: facts?.oid ?? 0,
    schema,
    table,
    replicaIdentity: REPLICA_IDENTITY[facts?.replicaIdentity ?? 'd'] ?? 'default',
    columns,
    keyColumns: keyColumnsOf(facts),
  };
}
