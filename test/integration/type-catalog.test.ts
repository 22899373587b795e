/**
 * Value conversion against real Postgres output: a table with a column of every type the contract
 * names (plus user-defined enum, domain, composite, range and their arrays), edge values inserted,
 * each column read back `::text` on a session pinned like the replication connection, and the
 * converter's JSON compared byte for byte.
 *
 * The values are read as the server sent them on the wire (text format, the type's output
 * function: exactly what pgoutput carries), through a per-query identity type parser, rather than
 * with a `::text` cast: the cast is not the output function for every type (bool::text is
 * 'true' where boolout prints 't', char(n)::text drops the padding, inet::text always adds the
 * mask). pg's global type parsers are left alone. Also proves the TypeCatalog loads user-defined types
 * in one query.
 *
 * Needs PGWARREN_TEST_PG_URL (a role that may create databases), e.g.
 * postgres://postgres@127.0.0.1:5432/postgres. Creates and always drops its own database.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { converterFor } from '../../src/events/values.js';
import { stringify } from '../../src/events/json.js';
import { TypeCatalog } from '../../src/source/type-catalog.js';

const ADMIN_URL = process.env.PGWARREN_TEST_PG_URL;
const skip = ADMIN_URL
  ? false
  : 'PGWARREN_TEST_PG_URL is not set (e.g. postgres://postgres@127.0.0.1:5432/postgres): skipping the real-Postgres type tests';

/** column type, SQL literal to insert, expected JSON of the converted ::text value. */
type Case = readonly [type: string, literal: string, expected: string];

const big = '9'.repeat(500) + '.' + '1'.repeat(500);

const CASES: readonly Case[] = [
  ['bool', 'true', 'true'],
  ['bool', 'false', 'false'],
  ['int2', '-32768', '-32768'],
  ['int2', '32767', '32767'],
  ['int4', '-2147483648', '-2147483648'],
  ['int4', '2147483647', '2147483647'],
  ['oid', '4294967295', '4294967295'],
  ['int8', '9223372036854775807', '"9223372036854775807"'],
  ['int8', '-9223372036854775808', '"-9223372036854775808"'],
  ['numeric', `'${big}'`, `"${big}"`],
  ['numeric', "'NaN'", '"NaN"'],
  ['numeric', "'-1.2300'", '"-1.2300"'],
  ['numeric(40,30)', "'0.000000000000000000000000000001'", '"0.000000000000000000000000000001"'],
  ['float4', "'NaN'", '"NaN"'],
  ['float4', "'1.1'", '1.1'],
  ['float4', "'3.4028235e38'", '3.4028235e+38'],
  ['float4', "'-Infinity'", '"-Infinity"'],
  ['float8', "'-0'", '-0'],
  ['float8', "'Infinity'", '"Infinity"'],
  ['float8', "'1e-5'", '0.00001'],
  ['float8', "'0.1'", '0.1'],
  ['float8', "'4.9e-324'", '5e-324'],
  ['float8', "'1.7976931348623157e308'", '1.7976931348623157e+308'],
  ['money', "'1234.56'", '"$1,234.56"'],
  ['money', "'-0.01'", '"-$0.01"'],
  ['json', `'{"b":  1,\n "a": [1, 2.50, 123456789012345678901234567890]}'`, '{"b":1,"a":[1,2.50,123456789012345678901234567890]}'],
  [
    'jsonb',
    `'{"n": 123456789012345678901234567890, "f": 0.1000000000000000055511151231257827, "s": "a b, \\"c\\" \\\\ {}"}'`,
    '{"f":0.1000000000000000055511151231257827,"n":123456789012345678901234567890,"s":"a b, \\"c\\" \\\\ {}"}',
  ],
  ['jsonb', `'"x y"'`, '"x y"'],
  ['jsonb', `'[]'`, '[]'],
  ['text', `E'a "quoted" \\\\ back, {brace} (paren)\\n\\ttab é 😀'`, JSON.stringify('a "quoted" \\ back, {brace} (paren)\n\ttab é 😀')],
  ['text', "''", '""'],
  ['varchar(10)', "'x y'", '"x y"'],
  ['char(5)', "'ab'", '"ab   "'],
  ['"char"', "'x'", '"x"'],
  ['name', "'pg_class'", '"pg_class"'],
  ['uuid', "'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11'", '"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"'],
  ['inet', "'192.168.0.1/24'", '"192.168.0.1/24"'],
  ['inet', "'192.168.0.1'", '"192.168.0.1"'],
  ['cidr', "'10.0.0.0/8'", '"10.0.0.0/8"'],
  ['macaddr', "'08:00:2b:01:02:03'", '"08:00:2b:01:02:03"'],
  ['macaddr8', "'08:00:2b:01:02:03:04:05'", '"08:00:2b:01:02:03:04:05"'],
  ['xml', `'<a b="c">d</a>'`, '"<a b=\\"c\\">d</a>"'],
  ['tsvector', "'a fat cat'", `"'a' 'cat' 'fat'"`],
  ['tsquery', "'fat & rat'", `"'fat' & 'rat'"`],
  ['point', "'(1,2)'", '"(1,2)"'],
  ['lseg', "'[(0,0),(1,1)]'", '"[(0,0),(1,1)]"'],
  ['box', "'((0,0),(1,1))'", '"(1,1),(0,0)"'],
  ['path', "'((0,0),(1,1))'", '"((0,0),(1,1))"'],
  ['polygon', "'((0,0),(1,1),(1,0))'", '"((0,0),(1,1),(1,0))"'],
  ['line', "'{1,2,3}'", '"{1,2,3}"'],
  ['circle', "'<(0,0),1>'", '"<(0,0),1>"'],
  ['bit(3)', "B'101'", '"101"'],
  ['varbit', "B'1'", '"1"'],
  ['timestamp', "'2026-11-22 09:23:15.56151'", '"2026-11-22 09:23:15.56151"'],
  ['timestamp', "'infinity'", '"infinity"'],
  ['date', "'2026-11-22'", '"2026-11-22"'],
  ['date', "'0044-03-15 BC'", '"0044-03-15 BC"'],
  ['time', "'24:00:00'", '"24:00:00"'],
  ['time', "'09:23:15.000001'", '"09:23:15.000001"'],
  ['timetz', "'09:23:15.5+05:30'", '"09:23:15.5+05:30"'],
  ['interval', "'1 year 2 mons 3 days 04:05:06.789'", '"1 year 2 mons 3 days 04:05:06.789"'],
  ['interval', "'-1 microsecond'", '"-00:00:00.000001"'],
  ['timestamptz', "'2026-11-22 09:23:15.56151+00'", '"2026-11-22T09:23:15.561510Z"'],
  ['timestamptz', "'2026-11-22 09:23:15+00'", '"2026-11-22T09:23:15.000000Z"'],
  ['timestamptz', "'2026-11-22 10:00:00.000001+05:30'", '"2026-11-22T04:30:00.000001Z"'],
  ['timestamptz', "'infinity'", '"infinity"'],
  ['timestamptz', "'-infinity'", '"-infinity"'],
  ['timestamptz', "'0044-03-15 12:00:00+00 BC'", '"-000043-03-15T12:00:00.000000Z"'],
  ['timestamptz', "'4713-11-24 00:00:00+00 BC'", '"-004712-11-24T00:00:00.000000Z"'],
  ['timestamptz', "'294276-12-31 23:59:59.999999+00'", '"+294276-12-31T23:59:59.999999Z"'],
  ['bytea', "'\\x'", '""'],
  ['bytea', "'\\x00ff0a5c41'", '"AP8KXEE="'],
  ['bytea', `decode('${Buffer.from(Array.from({ length: 256 }, (_, i) => i)).toString('hex')}', 'hex')`, JSON.stringify(Buffer.from(Array.from({ length: 256 }, (_, i) => i)).toString('base64'))],
  ['int4range', "'[1,5)'", '"[1,5)"'],
  ['numrange', "'empty'", '"empty"'],
  ['tstzrange', "'[2026-01-01 00:00:00+00,infinity)'", '"[\\"2026-01-01 00:00:00+00\\",infinity)"'],
  ['int4multirange', "'{[1,3),[5,7)}'", '"{[1,3),[5,7)}"'],
  ['pg_lsn', "'0/1A2B3C4'", '"0/1A2B3C4"'],
  // arrays
  ['int4[]', "'{}'", '[]'],
  ['int4[]', "'{{1,NULL},{3,4}}'", '[[1,null],[3,4]]'],
  ['int4[]', "'[2:3]={1,2}'", '[1,2]'],
  ['int4[]', "'[0:1][1:2]={{1,2},{3,4}}'", '[[1,2],[3,4]]'],
  ['int4[]', "'{{{1,2},{3,4}},{{5,6},{7,8}}}'", '[[[1,2],[3,4]],[[5,6],[7,8]]]'],
  ['int8[]', "'{9223372036854775807,NULL}'", '["9223372036854775807",null]'],
  ['numeric[]', "'{1.50,NaN}'", '["1.50","NaN"]'],
  ['float8[]', "'{NaN,Infinity,-Infinity,-0,1.5}'", '["NaN","Infinity","-Infinity",-0,1.5]'],
  ['bool[]', "'{t,f,NULL}'", '[true,false,null]'],
  [
    'text[]',
    `ARRAY['a,b', 'q"u', E'b\\\\s', '{x}', '', 'NULL', NULL, ' sp', 'plain', E'tab\\there', '}{', '(p)']`,
    JSON.stringify(['a,b', 'q"u', 'b\\s', '{x}', '', 'NULL', null, ' sp', 'plain', 'tab\there', '}{', '(p)']),
  ],
  ['text[]', `ARRAY[ARRAY['a', 'b c'], ARRAY[NULL, 'd"}']]`, '[["a","b c"],[null,"d\\"}"]]'],
  ['varchar[]', `ARRAY[E'\\\\', '""']`, '["\\\\","\\"\\""]'],
  ['jsonb[]', `ARRAY['{"a": 1}', '[123456789012345678901234567890, 2]', NULL]::jsonb[]`, '[{"a":1},[123456789012345678901234567890,2],null]'],
  ['json[]', `ARRAY['{"s": "x\\"y"}']::json[]`, '[{"s":"x\\"y"}]'],
  ['bytea[]', `ARRAY['\\x00ff'::bytea, NULL, '\\x'::bytea]`, '["AP8=",null,""]'],
  ['timestamptz[]', `ARRAY['2026-11-22 09:23:15.56151+00', 'infinity', NULL]::timestamptz[]`, '["2026-11-22T09:23:15.561510Z","infinity",null]'],
  ['box[]', `ARRAY['((0,0),(1,1))'::box, '((2,2),(3,3))'::box]`, '["(1,1),(0,0)","(3,3),(2,2)"]'],
  ['point[]', `ARRAY['(1,2)'::point]`, '["(1,2)"]'],
  ['date[]', `ARRAY['2026-11-22', '0044-03-15 BC', 'infinity']::date[]`, '["2026-11-22","0044-03-15 BC","infinity"]'],
  ['uuid[]', `ARRAY['a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11']::uuid[]`, '["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"]'],
  ['int4range[]', `ARRAY['[1,5)', 'empty']::int4range[]`, '["[1,5)","empty"]'],
  ['interval[]', `ARRAY['1 day 02:00:00']::interval[]`, '["1 day 02:00:00"]'],
  // user-defined types
  ['mood', `'it''s ok'`, `"it's ok"`],
  ['mood[]', `ARRAY['happy', NULL, 'it''s ok', 'a,b']::mood[]`, `["happy",null,"it's ok","a,b"]`],
  ['posint', '42', '42'],
  ['small_posint', '7', '7'],
  ['posint[]', `ARRAY[1, NULL, 3]::posint[]`, '[1,null,3]'],
  ['intlist', `'{{1,2},{3,4}}'`, '[[1,2],[3,4]]'],
  ['floatrange', `'[1.5,2.5)'`, '"[1.5,2.5)"'],
  ['floatmultirange', `'{[1.5,2.5),[3,4)}'`, '"{[1.5,2.5),[3,4)}"'],
  ['floatrange[]', `ARRAY['[1.5,2.5)']::floatrange[]`, '["[1.5,2.5)"]'],
  [
    'address',
    `ROW(E'Main "St" 1, \\\\ apt', 7, ARRAY['a', 'b c', NULL], '2026-11-22 09:23:15.56151+00', '{"n": 123456789012345678901234567890}', 'sad', 'happy')::address`,
    '{"street":"Main \\"St\\" 1, \\\\ apt","num":7,"tags":["a","b c",null],"at":"2026-11-22T09:23:15.561510Z",' +
      '"data":{"n":123456789012345678901234567890},"mood":"sad","later":"happy"}',
  ],
  ['address', `ROW('', NULL, NULL, NULL, NULL, NULL, NULL)::address`, '{"street":"","num":null,"tags":null,"at":null,"data":null,"mood":null,"later":null}'],
  ['address', `ROW(NULL, NULL, '{}', 'infinity', 'null', NULL, NULL)::address`, '{"street":null,"num":null,"tags":[],"at":"infinity","data":null,"mood":null,"later":null}'],
  [
    'address[]',
    `ARRAY[ROW('x', 1, NULL, NULL, NULL, NULL, NULL)::address, NULL, ROW('y z', 2, NULL, NULL, NULL, 'happy', NULL)::address]`,
    '[{"street":"x","num":1,"tags":null,"at":null,"data":null,"mood":null,"later":null},null,' +
      '{"street":"y z","num":2,"tags":null,"at":null,"data":null,"mood":"happy","later":null}]',
  ],
  [
    'line_item',
    `ROW(ROW('a "b" c', 1, ARRAY['x', 'y z'], NULL, NULL, NULL, NULL)::address, 12.50, '\\x00ff'::bytea, ARRAY[1, 2]::posint[])::line_item`,
    '{"addr":{"street":"a \\"b\\" c","num":1,"tags":["x","y z"],"at":null,"data":null,"mood":null,"later":null},' +
      '"qty":"12.50","blob":"AP8=","ids":[1,2]}',
  ],
];

/** Per-query type parsers that hand back the server's text unchanged. */
const RAW_TEXT = { getTypeParser: () => (value: string) => value } as unknown as pg.CustomTypesConfig;

describe('conversion of real Postgres text output', { skip }, () => {
  const dbName = `pgwarren_test_types_${randomBytes(6).toString('hex')}`;
  let admin: pg.Client | undefined;
  let client: pg.Client | undefined;
  let created = false;
  let queries = 0;

  before(async () => {
    admin = new pg.Client({ connectionString: ADMIN_URL });
    await admin.connect();
    await admin.query(`CREATE DATABASE ${dbName}`);
    created = true;
    const url = new URL(ADMIN_URL!);
    url.pathname = `/${dbName}`;
    client = new pg.Client({ connectionString: url.toString() });
    await client.connect();
    await client.query(`SET TimeZone = 'UTC'; SET DateStyle = 'ISO'; SET IntervalStyle = 'postgres'; SET extra_float_digits = 3; SET lc_monetary = 'C'`);
    await client.query(`
      CREATE TYPE mood AS ENUM ('happy', 'sad', 'it''s ok', 'a,b');
      CREATE DOMAIN posint AS int4 CHECK (VALUE > 0);
      CREATE DOMAIN small_posint AS posint CHECK (VALUE < 100);
      CREATE DOMAIN intlist AS int4[];
      CREATE TYPE floatrange AS RANGE (subtype = float8, multirange_type_name = floatmultirange);
      CREATE TYPE address AS (street text, num int4, gone text, tags text[], at timestamptz, data jsonb, mood mood);
      ALTER TYPE address DROP ATTRIBUTE gone;
      ALTER TYPE address ADD ATTRIBUTE later mood;
      CREATE TYPE line_item AS (addr address, qty numeric, blob bytea, ids posint[]);
    `);
    const columns = CASES.map(([type], i) => `c${i} ${type}`).join(', ');
    await client.query(`CREATE TABLE every_type (${columns})`);
    await client.query(`INSERT INTO every_type VALUES (${CASES.map(([, literal]) => literal).join(', ')})`);
  });

  after(async () => {
    await client?.end().catch(() => undefined);
    if (admin) {
      if (created) await admin.query(`DROP DATABASE IF EXISTS ${dbName} WITH (FORCE)`);
      await admin.end();
    }
  });

  const counting = () => async (sql: string, params: unknown[]) => {
    queries++;
    return client!.query(sql, params);
  };

  async function columnTypes(): Promise<number[]> {
    const { rows } = await client!.query<{ oid: number }>(
      `SELECT atttypid::int8 AS oid FROM pg_attribute WHERE attrelid = 'every_type'::regclass AND attnum > 0 ORDER BY attnum`,
    );
    return rows.map((r) => Number(r.oid));
  }

  test('every column converts to the expected JSON', async () => {
    const oids = await columnTypes();
    const catalog = new TypeCatalog(counting());
    queries = 0;
    await catalog.ensure(oids);
    assert.equal(queries, 1, 'user-defined types and everything they refer to load in one query');
    await catalog.ensure(oids);
    assert.equal(queries, 1, 'known types are not queried again');

    const { rows } = await client!.query<Record<string, string | null>>({ text: 'SELECT * FROM every_type', types: RAW_TEXT });
    const row = rows[0]!;
    assert.equal(row.c0, 't', 'boolout text, not a parsed value');
    const failures: string[] = [];
    CASES.forEach(([type, literal, expected], i) => {
      const text = row[`c${i}`];
      assert.equal(typeof text, 'string', `c${i} ${type} arrives as the server's text`);
      const actual = stringify(converterFor(oids[i]!, catalog)(text!));
      if (actual !== expected) failures.push(`c${i} ${type} ${literal}\n   pg text: ${text}\n    actual: ${actual}\n  expected: ${expected}`);
      else JSON.parse(actual); // and it is valid JSON
    });
    assert.deepEqual(failures, []);
  });

  test('the catalog describes user-defined types', async () => {
    const catalog = new TypeCatalog(client!);
    const oid = async (name: string) => Number((await client!.query(`SELECT $1::regtype::oid::int8 AS oid`, [name])).rows[0].oid);
    const names = ['mood', 'mood[]', 'posint', 'small_posint', 'intlist', 'floatrange', 'floatmultirange', 'address', 'address[]', 'line_item'];
    const oids: number[] = [];
    for (const name of names) oids.push(await oid(name));
    const [mood, moodArray, posint, small, intlist, floatrange, floatmulti, address, addressArray, lineItem] = oids;
    await catalog.ensure([lineItem!, moodArray!, small!, intlist!, floatmulti!, addressArray!]);
    assert.deepEqual(catalog.get(mood!), { oid: mood, name: 'mood', kind: 'enum', category: 'E', delimiter: ',' });
    assert.deepEqual(catalog.get(moodArray!), { oid: moodArray, name: '_mood', kind: 'array', category: 'A', elementOid: mood, delimiter: ',' });
    assert.equal(catalog.get(small!)?.kind, 'domain');
    assert.equal(catalog.get(small!)?.baseOid, posint);
    assert.equal(catalog.get(posint!)?.baseOid, 23, 'the domain base was loaded with it');
    assert.equal(catalog.get(intlist!)?.baseOid, 1007);
    assert.equal(catalog.get(floatrange!)?.subtypeOid, 701, 'the multirange brought its range along');
    assert.equal(catalog.get(floatmulti!)?.kind, 'multirange');
    assert.equal(catalog.get(floatmulti!)?.subtypeOid, floatrange);
    assert.deepEqual(catalog.get(address!)?.fields, [
      { name: 'street', typeOid: 25 },
      { name: 'num', typeOid: 23 },
      { name: 'tags', typeOid: 1009 },
      { name: 'at', typeOid: 1184 },
      { name: 'data', typeOid: 3802 },
      { name: 'mood', typeOid: mood },
      { name: 'later', typeOid: mood },
    ]);
    assert.equal(catalog.get(lineItem!)?.kind, 'composite');
    assert.equal(catalog.get(addressArray!)?.elementOid, address);
    assert.equal(catalog.get(1184)?.name, 'timestamptz', 'builtins need no query');
    assert.equal(catalog.get(1020)?.delimiter, ';', 'box[] uses the box delimiter');
    assert.equal(catalog.get(999_999_999), undefined);
    await catalog.ensure([999_999_999]); // a type that does not exist: no error, stays unknown
    assert.equal(catalog.get(999_999_999), undefined);
    assert.equal(catalog.has(999_999_999), true);

    const counted = new TypeCatalog(counting());
    queries = 0;
    await Promise.all([counted.ensure([address!, 23, 1184]), counted.ensure([address!]), counted.ensure([1007])]);
    assert.equal(queries, 1, 'concurrent ensures of the same type share one query; builtins need none');
    assert.equal(counted.get(mood!)?.kind, 'enum');
  });

  test('refresh picks up an altered composite; the old converter keeps the text it cannot read', async () => {
    await client!.query(`CREATE TYPE pair AS (a int4, b text)`);
    await client!.query(`CREATE TABLE pairs (p pair, ps pair[])`);
    const oid = Number((await client!.query(`SELECT 'pair'::regtype::oid::int8 AS oid`)).rows[0].oid);
    const arrayOid = Number((await client!.query(`SELECT 'pair[]'::regtype::oid::int8 AS oid`)).rows[0].oid);
    const catalog = new TypeCatalog(counting());
    await catalog.ensure([oid, arrayOid]);
    const before = converterFor(oid, catalog);
    const beforeArray = converterFor(arrayOid, catalog);
    await client!.query(`ALTER TYPE pair ADD ATTRIBUTE c bool`);
    await client!.query(`INSERT INTO pairs VALUES (ROW(1, 'x', true), ARRAY[ROW(2, 'y', false)::pair])`);
    const { rows } = await client!.query({ text: `SELECT p, ps FROM pairs`, types: RAW_TEXT });
    assert.equal(before(rows[0].p), rows[0].p);
    assert.deepEqual(beforeArray(rows[0].ps), [rows[0].ps.slice(2, -2).replace(/\\"/g, '"')]);
    queries = 0;
    await catalog.refresh([oid]);
    assert.equal(queries, 1);
    assert.deepEqual(converterFor(oid, catalog)(rows[0].p), { a: 1, b: 'x', c: true });
    assert.deepEqual(converterFor(arrayOid, catalog)(rows[0].ps), [{ a: 2, b: 'y', c: false }], 'the array of it was refreshed too');
  });
});
