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
 */
import { parse as parseLossless } from 'lossless-json';
import { UNCHANGED_TOAST, type Decoded, type RawValue, type RelationInfo, type ColumnInfo } from '../types.js';
import { optionLiteral, quoteIdent, type Decoder } from './decoder.js';
import { parseLsn } from './lsn.js';
import { REPLICA_IDENTITY, keyColumnsOf, type RelationCatalog, type TableFacts } from './relation-catalog.js';
import type { TypeLookup } from './type-catalog.js';

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
  private readonly relations = new Map<string, RelationInfo>();

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
      // Only our own logical messages: the flood marker and snapshot watermarks.
      ['add-msg-prefixes', 'pgwarren,pgwarren.snapshot'],
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
        return [{ kind: 'truncate', relation: await this.relation(a.schema!, a.table!, []), cascade: false, restartIdentity: false }];
      case 'I':
      case 'U':
      case 'D':
        return [await this.rowChange(a)];
    }
  }

  private async rowChange(a: W2jAction): Promise<Decoded> {
    const columns = a.columns ?? [];
    const identity = a.identity ?? [];
    const relation = await this.relation(a.schema!, a.table!, columns.length > 0 ? columns : identity);
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
   * The relation as pgoutput would describe it: every live column of the table in order (from
   * the catalog), with the types wal2json reported for the ones it sent. Reused while the shape
   * stays the same, so per-relation work downstream is done once.
   */
  private async relation(schema: string, table: string, sent: readonly W2jColumn[]): Promise<RelationInfo> {
    const signature = `${schema}.${table}|${sent.map((c) => `${c.name}:${asNumber(c.typeoid)}`).join(',')}`;
    const cached = this.relations.get(signature);
    if (cached) return cached;
    const leaf = await this.facts(schema, table, sent);
    // A partition's change is reported as its root's, as pgoutput does with publish_via_partition_root.
    const root = leaf?.partitionRoot;
    const rel = root
      ? buildRelation(root.schema, root.table, sent, await this.facts(root.schema, root.table, sent))
      : buildRelation(schema, table, sent, leaf);
    if (this.relations.size > 10_000) this.relations.clear();
    this.relations.set(signature, rel);
    return rel;
  }

  /** Catalog facts, re-read when wal2json sent a column the cached facts do not know. */
  private async facts(schema: string, table: string, sent: readonly W2jColumn[]): Promise<TableFacts | undefined> {
    const facts = this.catalog.cachedByName(schema, table);
    if (facts && sent.every((c) => facts.columns.some((k) => k.name === c.name) || facts.generated.includes(c.name))) return facts;
    return (await this.catalog.refreshByName(schema, table)) ?? facts;
  }
}

/** A JSON number kept as text. */
class PgNumber {
  constructor(readonly digits: string) {}
}

function asNumber(v: unknown): number {
  return Number(v instanceof PgNumber ? v.digits : v);
}

/**
 * Table globs as wal2json's add-tables/filter-tables understand them (`*` wildcards, `,`
 * escaped), or null when a glob uses `?`, which wal2json lacks: then filtering stays ours alone.
 */
export function wal2jsonTableFilter(globs: readonly string[]): string[] | null {
  if (globs.some((g) => g.includes('?'))) return null;
  return globs.map((g) => g.replace(/,/g, '\\,'));
}

function buildRelation(schema: string, table: string, sent: readonly W2jColumn[], facts: TableFacts | undefined): RelationInfo {
  const sentTypes = new Map(sent.map((c) => [c.name, asNumber(c.typeoid)]));
  const identityCols = new Set(
    facts ? (facts.replicaIdentity === 'f' ? facts.columns.map((c) => c.name) : facts.replicaIdentity === 'i' ? facts.identityIndex : facts.primaryKey) : [],
  );
  // Catalog columns in table order; a sent column the catalog no longer has (dropped since) is
  // kept at the end so its value is not lost.
  const columns: ColumnInfo[] = (facts?.columns ?? []).map((c) => ({
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
