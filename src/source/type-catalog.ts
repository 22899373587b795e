/**
 * Catalog facts about column types, for value conversion (events/values.ts).
 *
 * Builtin types are known from a static table (their OIDs are fixed across Postgres versions), so
 * only user-defined types (enums, domains, composites, ranges, multiranges, arrays of those,
 * extension types) need the database. `ensure` loads the unknown ones, and everything they refer
 * to (array element, domain base, composite fields, range subtype), in one recursive query; `get`
 * then answers synchronously on the hot path.
 *
 * Conventions of `TypeInfo`:
 * - kind 'array' is a true array (output function array_out); `elementOid` is its element and
 *   `delimiter` the element type's delimiter, the one array_out puts between elements (',' except
 *   for box, ';'). int2vector/oidvector (space-separated, not array_out) are kind 'base'.
 * - kind 'range': `subtypeOid` is rngsubtype. kind 'multirange': `subtypeOid` is its range type.
 * - kind 'composite': `fields` are the live attributes in attnum order (dropped ones left out,
 *   exactly the fields record_out prints).
 * - kind 'domain': `baseOid` is typbasetype (itself possibly a domain).
 *
 * The catalog is read as of now: a composite altered while older changes are still in the slot is
 * described with its current fields (values.ts falls back to text when the counts disagree).
 * `refresh` re-reads types after a known change; replaced entries are new objects, so converters
 * memoized on the old ones are rebuilt.
 */

export interface TypeInfo {
  oid: number;
  name: string;
  kind: 'base' | 'enum' | 'domain' | 'array' | 'composite' | 'range' | 'multirange' | 'pseudo';
  /** pg_type.typcategory */
  category: string;
  elementOid?: number;
  delimiter?: string;
  baseOid?: number;
  fields?: { name: string; typeOid: number }[];
  subtypeOid?: number;
}

export interface TypeLookup {
  get(oid: number): TypeInfo | undefined;
}

/** Runs one SQL statement: a bound `client.query`, `pool.query`, the project's QueryFn, a test double. */
export type TypeQuery = (sql: string, params: unknown[]) => Promise<{ rows: any[] }>;

/** Anything with a pg-style `query` method (pg.Client, pg.Pool). */
export interface TypeQueryable {
  query(sql: string, params?: unknown[]): Promise<{ rows: any[] }>;
}

// Builtin base, array, range and multirange types of pg_catalog (generated from PostgreSQL 15):
// `oid:name:kind:category:ref[:delimiter]`, kind b=base a=array r=range m=multirange, ref =
// element (array), subtype (range), range (multirange), delimiter only when not ','.
// Arrays of system catalogs' row types are left out: the catalog loads them if ever needed.
const BUILTIN_SPEC =
  '16:bool:b:B:0 17:bytea:b:U:0 18:char:b:Z:0 19:name:b:S:0 20:int8:b:N:0 21:int2:b:N:0 ' +
  '22:int2vector:b:A:0 23:int4:b:N:0 24:regproc:b:N:0 25:text:b:S:0 26:oid:b:N:0 27:tid:b:U:0 ' +
  '28:xid:b:U:0 29:cid:b:U:0 30:oidvector:b:A:0 114:json:b:U:0 142:xml:b:U:0 143:_xml:a:A:142 ' +
  '194:pg_node_tree:b:Z:0 199:_json:a:A:114 271:_xid8:a:A:5069 600:point:b:G:0 601:lseg:b:G:0 ' +
  '602:path:b:G:0 603:box:b:G:0:; 604:polygon:b:G:0 628:line:b:G:0 629:_line:a:A:628 650:cidr:b:I:0 ' +
  '651:_cidr:a:A:650 700:float4:b:N:0 701:float8:b:N:0 718:circle:b:G:0 719:_circle:a:A:718 ' +
  '774:macaddr8:b:U:0 775:_macaddr8:a:A:774 790:money:b:N:0 791:_money:a:A:790 829:macaddr:b:U:0 ' +
  '869:inet:b:I:0 1000:_bool:a:A:16 1001:_bytea:a:A:17 1002:_char:a:A:18 1003:_name:a:A:19 ' +
  '1005:_int2:a:A:21 1006:_int2vector:a:A:22 1007:_int4:a:A:23 1008:_regproc:a:A:24 1009:_text:a:A:25 ' +
  '1010:_tid:a:A:27 1011:_xid:a:A:28 1012:_cid:a:A:29 1013:_oidvector:a:A:30 1014:_bpchar:a:A:1042 ' +
  '1015:_varchar:a:A:1043 1016:_int8:a:A:20 1017:_point:a:A:600 1018:_lseg:a:A:601 1019:_path:a:A:602 ' +
  '1020:_box:a:A:603:; 1021:_float4:a:A:700 1022:_float8:a:A:701 1027:_polygon:a:A:604 ' +
  '1028:_oid:a:A:26 1033:aclitem:b:U:0 1034:_aclitem:a:A:1033 1040:_macaddr:a:A:829 1041:_inet:a:A:869 ' +
  '1042:bpchar:b:S:0 1043:varchar:b:S:0 1082:date:b:D:0 1083:time:b:D:0 1114:timestamp:b:D:0 ' +
  '1115:_timestamp:a:A:1114 1182:_date:a:A:1082 1183:_time:a:A:1083 1184:timestamptz:b:D:0 ' +
  '1185:_timestamptz:a:A:1184 1186:interval:b:T:0 1187:_interval:a:A:1186 1231:_numeric:a:A:1700 ' +
  '1266:timetz:b:D:0 1270:_timetz:a:A:1266 1560:bit:b:V:0 1561:_bit:a:A:1560 1562:varbit:b:V:0 ' +
  '1563:_varbit:a:A:1562 1700:numeric:b:N:0 1790:refcursor:b:U:0 2201:_refcursor:a:A:1790 ' +
  '2202:regprocedure:b:N:0 2203:regoper:b:N:0 2204:regoperator:b:N:0 2205:regclass:b:N:0 ' +
  '2206:regtype:b:N:0 2207:_regprocedure:a:A:2202 2208:_regoper:a:A:2203 2209:_regoperator:a:A:2204 ' +
  '2210:_regclass:a:A:2205 2211:_regtype:a:A:2206 2949:_txid_snapshot:a:A:2970 2950:uuid:b:U:0 ' +
  '2951:_uuid:a:A:2950 2970:txid_snapshot:b:U:0 3220:pg_lsn:b:U:0 3221:_pg_lsn:a:A:3220 ' +
  '3361:pg_ndistinct:b:Z:0 3402:pg_dependencies:b:Z:0 3614:tsvector:b:U:0 3615:tsquery:b:U:0 ' +
  '3642:gtsvector:b:U:0 3643:_tsvector:a:A:3614 3644:_gtsvector:a:A:3642 3645:_tsquery:a:A:3615 ' +
  '3734:regconfig:b:N:0 3735:_regconfig:a:A:3734 3769:regdictionary:b:N:0 3770:_regdictionary:a:A:3769 ' +
  '3802:jsonb:b:U:0 3807:_jsonb:a:A:3802 3904:int4range:r:R:23 3905:_int4range:a:A:3904 ' +
  '3906:numrange:r:R:1700 3907:_numrange:a:A:3906 3908:tsrange:r:R:1114 3909:_tsrange:a:A:3908 ' +
  '3910:tstzrange:r:R:1184 3911:_tstzrange:a:A:3910 3912:daterange:r:R:1082 3913:_daterange:a:A:3912 ' +
  '3926:int8range:r:R:20 3927:_int8range:a:A:3926 4072:jsonpath:b:U:0 4073:_jsonpath:a:A:4072 ' +
  '4089:regnamespace:b:N:0 4090:_regnamespace:a:A:4089 4096:regrole:b:N:0 4097:_regrole:a:A:4096 ' +
  '4191:regcollation:b:N:0 4192:_regcollation:a:A:4191 4451:int4multirange:m:R:3904 ' +
  '4532:nummultirange:m:R:3906 4533:tsmultirange:m:R:3908 4534:tstzmultirange:m:R:3910 ' +
  '4535:datemultirange:m:R:3912 4536:int8multirange:m:R:3926 4600:pg_brin_bloom_summary:b:Z:0 ' +
  '4601:pg_brin_minmax_multi_summary:b:Z:0 5017:pg_mcv_list:b:Z:0 5038:pg_snapshot:b:U:0 ' +
  '5039:_pg_snapshot:a:A:5038 5069:xid8:b:U:0 6150:_int4multirange:a:A:4451 ' +
  '6151:_nummultirange:a:A:4532 6152:_tsmultirange:a:A:4533 6153:_tstzmultirange:a:A:4534 ' +
  '6155:_datemultirange:a:A:4535 6157:_int8multirange:a:A:4536';

const KIND_BY_LETTER: Record<string, TypeInfo['kind']> = {
  b: 'base',
  a: 'array',
  r: 'range',
  m: 'multirange',
  e: 'enum',
  d: 'domain',
  c: 'composite',
  p: 'pseudo',
};

function parseBuiltins(spec: string): Map<number, TypeInfo> {
  const out = new Map<number, TypeInfo>();
  for (const entry of spec.split(' ')) {
    const [oidText, name, letter, category, refText, delimiter] = entry.split(':') as [string, string, string, string, string, string?];
    const oid = Number(oidText);
    const ref = Number(refText);
    const kind = KIND_BY_LETTER[letter]!;
    const info: TypeInfo = { oid, name, kind, category };
    if (kind === 'array') {
      info.elementOid = ref;
      info.delimiter = delimiter ?? ',';
    } else {
      info.delimiter = delimiter ?? ',';
      if (kind === 'range' || kind === 'multirange') info.subtypeOid = ref;
    }
    out.set(oid, Object.freeze(info));
  }
  return out;
}

const BUILTINS: ReadonlyMap<number, TypeInfo> = parseBuiltins(BUILTIN_SPEC);

/** The static description of a builtin type, or undefined when `oid` is not one this table knows. */
export function builtinType(oid: number): TypeInfo | undefined {
  return BUILTINS.get(oid);
}

/**
 * The requested types and, recursively, every type they refer to, in one round trip. pg_range's
 * multirange column (PG 14+) is read through to_jsonb so the statement also runs on older servers.
 */
const TYPES_SQL = `
WITH RECURSIVE closure(oid) AS (
  SELECT DISTINCT unnest($1::oid[])
  UNION
  SELECT ref.oid
    FROM closure c
    JOIN pg_type t ON t.oid = c.oid
    CROSS JOIN LATERAL (
      SELECT t.typelem WHERE t.typelem <> 0 AND t.typoutput = 'array_out'::regproc
      UNION ALL SELECT t.typbasetype WHERE t.typbasetype <> 0
      UNION ALL SELECT a.atttypid FROM pg_attribute a
                 WHERE t.typrelid <> 0 AND a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped
      UNION ALL SELECT r.rngsubtype FROM pg_range r WHERE r.rngtypid = t.oid
      UNION ALL SELECT r.rngtypid FROM pg_range r WHERE (to_jsonb(r) ->> 'rngmultitypid')::oid = t.oid
    ) AS ref(oid)
)
SELECT t.oid::int8 AS oid, t.typname::text AS name, t.typtype::text AS typtype, t.typcategory::text AS category,
       (t.typelem <> 0 AND t.typoutput = 'array_out'::regproc) AS is_array,
       t.typelem::int8 AS elem, t.typbasetype::int8 AS base, t.typdelim::text AS delim,
       (SELECT e.typdelim::text FROM pg_type e WHERE e.oid = t.typelem) AS elem_delim,
       (SELECT r.rngsubtype::int8 FROM pg_range r WHERE r.rngtypid = t.oid) AS subtype,
       (SELECT r.rngtypid::int8 FROM pg_range r WHERE (to_jsonb(r) ->> 'rngmultitypid')::oid = t.oid) AS range_of,
       CASE WHEN t.typtype = 'c' THEN
         (SELECT json_agg(json_build_object('name', a.attname, 'typeOid', a.atttypid::int8) ORDER BY a.attnum)::text
            FROM pg_attribute a WHERE a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped)
       END AS fields
  FROM closure c JOIN pg_type t ON t.oid = c.oid`;

interface TypeRow {
  oid: string | number;
  name: string;
  typtype: string;
  category: string;
  is_array: boolean;
  elem: string | number;
  base: string | number;
  delim: string;
  elem_delim: string | null;
  subtype: string | number | null;
  range_of: string | number | null;
  fields: string | { name: string; typeOid: string | number }[] | null;
}

function toInfo(row: TypeRow): TypeInfo {
  const oid = Number(row.oid);
  const info: TypeInfo = {
    oid,
    name: row.name,
    kind: row.is_array ? 'array' : (KIND_BY_LETTER[row.typtype] ?? 'base'),
    category: row.category,
  };
  switch (info.kind) {
    case 'array':
      info.elementOid = Number(row.elem);
      info.delimiter = row.elem_delim ?? row.delim ?? ',';
      break;
    case 'domain':
      info.baseOid = Number(row.base);
      info.delimiter = row.delim;
      break;
    case 'composite': {
      const fields = typeof row.fields === 'string' ? (JSON.parse(row.fields) as { name: string; typeOid: number }[]) : (row.fields ?? []);
      info.fields = fields.map((f) => ({ name: String(f.name), typeOid: Number(f.typeOid) }));
      info.delimiter = row.delim;
      break;
    }
    case 'range':
      if (row.subtype !== null) info.subtypeOid = Number(row.subtype);
      info.delimiter = row.delim;
      break;
    case 'multirange':
      if (row.range_of !== null) info.subtypeOid = Number(row.range_of);
      info.delimiter = row.delim;
      break;
    default:
      info.delimiter = row.delim;
  }
  return Object.freeze(info);
}

/** The OIDs a type refers to (and needs known to be converted). */
function references(info: TypeInfo): number[] {
  const refs: number[] = [];
  if (info.elementOid) refs.push(info.elementOid);
  if (info.baseOid) refs.push(info.baseOid);
  if (info.subtypeOid) refs.push(info.subtypeOid);
  if (info.fields) for (const f of info.fields) refs.push(f.typeOid);
  return refs;
}

export class TypeCatalog implements TypeLookup {
  private readonly query: TypeQuery;
  private readonly loaded = new Map<number, TypeInfo>();
  /** OIDs the database did not know (dropped types): not asked again until `refresh`. */
  private readonly missing = new Set<number>();
  private readonly pending = new Map<number, Promise<void>>();

  constructor(db: TypeQuery | TypeQueryable) {
    this.query = typeof db === 'function' ? db : (sql, params) => db.query(sql, params);
  }

  get(oid: number): TypeInfo | undefined {
    return BUILTINS.get(oid) ?? this.loaded.get(oid);
  }

  /** Whether `oid` is known, or known not to exist; `ensure` queries for the others. */
  has(oid: number): boolean {
    return BUILTINS.has(oid) || this.loaded.has(oid) || this.missing.has(oid);
  }

  /** Load every OID in `oids` not known yet, with everything it refers to, in one query. */
  async ensure(oids: Iterable<number>): Promise<void> {
    const wanted = new Set<number>();
    const waits: Promise<void>[] = [];
    for (const oid of oids) {
      if (!(oid > 0) || this.has(oid)) continue;
      const inflight = this.pending.get(oid);
      if (inflight) waits.push(inflight);
      else wanted.add(oid);
    }
    if (wanted.size > 0) {
      const load = this.load([...wanted], false);
      for (const oid of wanted) this.pending.set(oid, load);
      waits.push(load);
      void load.then(
        () => this.clearPending(wanted, load),
        () => this.clearPending(wanted, load),
      );
    }
    if (waits.length > 0) await Promise.all(waits);
  }

  /**
   * Read `oids` again (after ALTER TYPE, say), together with every loaded type that refers to one
   * of them, so nothing keeps describing the old shape.
   */
  async refresh(oids: Iterable<number>): Promise<void> {
    const stale = new Set<number>();
    for (const oid of oids) if (!BUILTINS.has(oid)) stale.add(oid);
    let grew = true;
    while (grew) {
      grew = false;
      for (const [oid, info] of this.loaded) {
        if (!stale.has(oid) && references(info).some((r) => stale.has(r))) {
          stale.add(oid);
          grew = true;
        }
      }
    }
    for (const oid of stale) this.missing.delete(oid);
    if (stale.size === 0) return;
    await this.load([...stale], true);
  }

  private clearPending(oids: Set<number>, load: Promise<void>): void {
    for (const oid of oids) if (this.pending.get(oid) === load) this.pending.delete(oid);
  }

  /**
   * Query `oids` and their closure. Types already loaded keep their entry unless `replace` (so
   * converters memoized on them stay valid); the requested ones are always (re)set.
   */
  private async load(oids: number[], replace: boolean): Promise<void> {
    const { rows } = await this.query(TYPES_SQL, [oids]);
    const requested = new Set(oids);
    const found = new Set<number>();
    for (const row of rows as TypeRow[]) {
      const info = toInfo(row);
      found.add(info.oid);
      if (BUILTINS.has(info.oid)) continue;
      if (!replace && !requested.has(info.oid) && this.loaded.has(info.oid)) continue;
      this.loaded.set(info.oid, info);
      this.missing.delete(info.oid);
    }
    for (const oid of oids) {
      if (!found.has(oid)) {
        this.loaded.delete(oid);
        this.missing.add(oid);
      }
    }
  }
}
