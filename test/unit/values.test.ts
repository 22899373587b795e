import { test } from 'node:test';
import assert from 'node:assert/strict';
import { converterFor } from '../../src/events/values.js';
import { RawJson, stringify, type JsonValue } from '../../src/events/json.js';
import type { TypeInfo, TypeLookup } from '../../src/source/type-catalog.js';

/** A TypeLookup over a fixed list of custom types (builtins need no entry). */
function lookup(...infos: TypeInfo[]): TypeLookup {
  const map = new Map(infos.map((i) => [i.oid, i]));
  return { get: (oid) => map.get(oid) };
}
const none = lookup();

const OID = {
  bool: 16, bytea: 17, char: 18, name: 19, int8: 20, int2: 21, int4: 23, text: 25, oid: 26, json: 114, xml: 142,
  point: 600, lseg: 601, path: 602, box: 603, polygon: 604, line: 628, cidr: 650, float4: 700, float8: 701,
  circle: 718, macaddr8: 774, money: 790, macaddr: 829, inet: 869, bpchar: 1042, varchar: 1043, date: 1082,
  time: 1083, timestamp: 1114, timestamptz: 1184, interval: 1186, timetz: 1266, bit: 1560, varbit: 1562,
  numeric: 1700, uuid: 2950, pg_lsn: 3220, tsvector: 3614, tsquery: 3615, jsonb: 3802, jsonpath: 4072,
  int4range: 3904, numrange: 3906, tstzrange: 3910, int4multirange: 4451,
  _bool: 1000, _bytea: 1001, _int2: 1005, _int4: 1007, _text: 1009, _int8: 1016, _box: 1020, _float8: 1022,
  _oid: 1028, _timestamptz: 1185, _numeric: 1231, _jsonb: 3807, _json: 199, _date: 1182, _uuid: 2951,
  _int4range: 3905, _varchar: 1015, _point: 1017,
} as const;

const conv = (oid: number, text: string, types: TypeLookup = none): JsonValue => converterFor(oid, types)(text);
/** The serialized form: what actually goes into the event. */
const json = (oid: number, text: string, types: TypeLookup = none): string => stringify(conv(oid, text, types));

test('bool', () => {
  assert.equal(conv(OID.bool, 't'), true);
  assert.equal(conv(OID.bool, 'f'), false);
  assert.equal(conv(OID.bool, 'true'), true); // bool::text and wal2json spell it out
  assert.equal(conv(OID.bool, 'false'), false);
});

test('int2, int4, oid are numbers', () => {
  assert.equal(conv(OID.int2, '-32768'), -32768);
  assert.equal(conv(OID.int2, '32767'), 32767);
  assert.equal(conv(OID.int4, '-2147483648'), -2147483648);
  assert.equal(conv(OID.int4, '2147483647'), 2147483647);
  assert.equal(conv(OID.int4, '0'), 0);
  assert.equal(conv(OID.oid, '4294967295'), 4294967295);
});

test('int8 and numeric are strings exactly as printed', () => {
  assert.equal(conv(OID.int8, '9223372036854775807'), '9223372036854775807');
  assert.equal(conv(OID.int8, '-9223372036854775808'), '-9223372036854775808');
  const big = '9'.repeat(500) + '.' + '1'.repeat(500);
  assert.equal(conv(OID.numeric, big), big);
  assert.equal(json(OID.numeric, big), `"${big}"`);
  for (const t of ['NaN', 'Infinity', '-Infinity', '-1.2300', '0.000000000000000000000000000001', '1e5']) {
    assert.equal(conv(OID.numeric, t), t);
  }
});

test('float4/float8: numbers, with NaN and infinities as strings and -0 kept', () => {
  assert.equal(conv(OID.float8, 'NaN'), 'NaN');
  assert.equal(conv(OID.float8, 'Infinity'), 'Infinity');
  assert.equal(conv(OID.float8, '-Infinity'), '-Infinity');
  assert.equal(conv(OID.float4, 'NaN'), 'NaN');
  assert.equal(conv(OID.float4, '-Infinity'), '-Infinity');
  assert.ok(Object.is(conv(OID.float8, '-0'), -0));
  assert.equal(json(OID.float8, '-0'), '-0');
  assert.equal(json(OID.float8, '0'), '0');
  assert.equal(json(OID.float8, '1e-05'), '0.00001');
  assert.equal(json(OID.float8, '5e-324'), '5e-324');
  assert.equal(json(OID.float8, '2.2250738585072014e-308'), '2.2250738585072014e-308');
  assert.equal(json(OID.float8, '1.7976931348623157e+308'), '1.7976931348623157e+308');
  assert.equal(json(OID.float8, '0.1'), '0.1');
  assert.equal(json(OID.float8, '-123.456'), '-123.456');
  assert.equal(json(OID.float4, '1.1'), '1.1');
  assert.equal(json(OID.float4, '3.4028235e+38'), '3.4028235e+38');
  assert.equal(json(OID.float4, '1e-45'), '1e-45');
});

test('money, text-like and every other builtin keep their text', () => {
  const cases: Array<[number, string]> = [
    [OID.money, '$1,234.56'],
    [OID.money, '-$0.01'],
    [OID.text, 'a "quoted" \\ back, {brace}\n'],
    [OID.text, ''],
    [OID.varchar, 'x'],
    [OID.bpchar, 'ab   '],
    [OID.name, 'pg_class'],
    [OID.char, 'x'],
    [OID.uuid, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'],
    [OID.inet, '192.168.0.1/24'],
    [OID.cidr, '10.0.0.0/8'],
    [OID.macaddr, '08:00:2b:01:02:03'],
    [OID.macaddr8, '08:00:2b:01:02:03:04:05'],
    [OID.xml, '<a b="c">d</a>'],
    [OID.tsvector, "'a' 'cat' 'fat'"],
    [OID.tsquery, "'fat' & 'rat'"],
    [OID.point, '(1,2)'],
    [OID.lseg, '[(0,0),(1,1)]'],
    [OID.box, '(1,1),(0,0)'],
    [OID.path, '((0,0),(1,1))'],
    [OID.polygon, '((0,0),(1,1),(1,0))'],
    [OID.line, '{1,2,3}'],
    [OID.circle, '<(0,0),1>'],
    [OID.bit, '101'],
    [OID.varbit, '1'],
    [OID.timestamp, '2026-11-22 09:23:15.56151'],
    [OID.timestamp, 'infinity'],
    [OID.date, '2026-11-22'],
    [OID.date, '0044-03-15 BC'],
    [OID.time, '24:00:00'],
    [OID.timetz, '09:23:15.5+05:30'],
    [OID.interval, '1 year 2 mons 3 days 04:05:06.789'],
    [OID.interval, '-00:00:00.000001'],
    [OID.int4range, '[1,5)'],
    [OID.numrange, 'empty'],
    [OID.tstzrange, '["2026-01-01 00:00:00+00",infinity)'],
    [OID.int4multirange, '{[1,3),[5,7)}'],
    [OID.pg_lsn, '0/1A2B3C4'],
    [OID.jsonpath, '$."a"[*]?(@ > 1)'],
  ];
  for (const [oid, text] of cases) assert.equal(conv(oid, text), text, `oid ${oid}: ${text}`);
});

test('json/jsonb embed the text without losing digits, whitespace removed', () => {
  const jsonb = '{"f": 0.1000000000000000055511151231257827, "n": 123456789012345678901234567890, "s": "a b, \\"c\\""}';
  const v = conv(OID.jsonb, jsonb);
  assert.ok(v instanceof RawJson);
  assert.equal(stringify(v), '{"f":0.1000000000000000055511151231257827,"n":123456789012345678901234567890,"s":"a b, \\"c\\""}');
  assert.equal(json(OID.json, '{"b":  1,\n "a": [1, 2.50, -0, 1E+2]}'), '{"b":1,"a":[1,2.50,-0,1E+2]}');
  assert.equal(json(OID.jsonb, '"x y"'), '"x y"');
  assert.equal(json(OID.jsonb, 'null'), 'null');
  assert.equal(json(OID.jsonb, '123456789012345678901234567890'), '123456789012345678901234567890');
  assert.equal(json(OID.jsonb, '[]'), '[]');
  // Embedded in an event the digits are still all there.
  assert.equal(stringify({ doc: v }), `{"doc":${(v as RawJson).text}}`);
});

test('timestamptz: ISO-8601 UTC with six fractional digits', () => {
  assert.equal(conv(OID.timestamptz, '2026-11-22 09:23:15.56151+00'), '2026-11-22T09:23:15.561510Z');
  assert.equal(conv(OID.timestamptz, '2026-11-22 09:23:15+00'), '2026-11-22T09:23:15.000000Z');
  assert.equal(conv(OID.timestamptz, '2026-11-22 09:23:15.5+00'), '2026-11-22T09:23:15.500000Z');
  assert.equal(conv(OID.timestamptz, '2026-11-22 09:23:15.000001+00'), '2026-11-22T09:23:15.000001Z');
  assert.equal(conv(OID.timestamptz, '2026-11-22 09:23:15.123456+00'), '2026-11-22T09:23:15.123456Z');
  assert.equal(conv(OID.timestamptz, '0001-01-01 00:00:00+00'), '0001-01-01T00:00:00.000000Z');
  assert.equal(conv(OID.timestamptz, '9999-12-31 23:59:59.999999+00'), '9999-12-31T23:59:59.999999Z');
  assert.equal(conv(OID.timestamptz, 'infinity'), 'infinity');
  assert.equal(conv(OID.timestamptz, '-infinity'), '-infinity');
});

test('timestamptz: years beyond 9999 and BC use ISO expanded years', () => {
  assert.equal(conv(OID.timestamptz, '12345-06-07 01:02:03.5+00'), '+012345-06-07T01:02:03.500000Z');
  assert.equal(conv(OID.timestamptz, '294276-12-31 23:59:59.999999+00'), '+294276-12-31T23:59:59.999999Z');
  assert.equal(conv(OID.timestamptz, '0001-12-31 23:00:00+00 BC'), '0000-12-31T23:00:00.000000Z');
  assert.equal(conv(OID.timestamptz, '0044-03-15 12:00:00+00 BC'), '-000043-03-15T12:00:00.000000Z');
  assert.equal(conv(OID.timestamptz, '4713-11-24 00:00:00+00 BC'), '-004712-11-24T00:00:00.000000Z');
  // Leap day of 5 BC (astronomical -4, a leap year in the proleptic Gregorian calendar).
  assert.equal(conv(OID.timestamptz, '0005-02-29 00:00:00.25+00 BC'), '-000004-02-29T00:00:00.250000Z');
});

test('timestamptz: other offsets are converted to UTC', () => {
  assert.equal(conv(OID.timestamptz, '2026-01-01 05:30:00+05:30'), '2026-01-01T00:00:00.000000Z');
  assert.equal(conv(OID.timestamptz, '2025-12-31 20:30:00.75-03:30'), '2026-01-01T00:00:00.750000Z');
  assert.equal(conv(OID.timestamptz, '1900-01-01 00:19:32+00:19:32'), '1900-01-01T00:00:00.000000Z');
  assert.equal(conv(OID.timestamptz, '2024-03-01 01:00:00+02'), '2024-02-29T23:00:00.000000Z');
  assert.equal(conv(OID.timestamptz, '2026-12-31 23:00:00-01'), '2027-01-01T00:00:00.000000Z');
  assert.equal(conv(OID.timestamptz, '0001-01-01 00:30:00+01'), '0000-12-31T23:30:00.000000Z');
  assert.equal(conv(OID.timestamptz, '9999-12-31 23:00:00-02'), '+010000-01-01T01:00:00.000000Z');
});

test('timestamptz agrees with Date for many instants', () => {
  let seed = 11;
  const rand = () => (seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648;
  for (let i = 0; i < 2000; i++) {
    const ms = Math.floor((rand() - 0.3) * 2e14); // ~ 4300 BC .. 6300 AD
    const d = new Date(ms);
    const y = d.getUTCFullYear();
    if (y < 1) continue;
    const micros = String(Math.floor(rand() * 1e6)).padStart(6, '0');
    const iso = d.toISOString(); // YYYY-MM-DDTHH:MM:SS.mmmZ
    const offsetMin = Math.floor((rand() - 0.5) * 30) * 30;
    const local = new Date(ms + offsetMin * 60000).toISOString();
    const sign = offsetMin < 0 ? '-' : '+';
    const off = `${sign}${String(Math.floor(Math.abs(offsetMin) / 60)).padStart(2, '0')}:${String(Math.abs(offsetMin) % 60).padStart(2, '0')}`;
    if (!/^\d{4}-/.test(local)) continue;
    const pgText = `${local.slice(0, 10)} ${local.slice(11, 19)}.${micros}${off}`;
    assert.equal(conv(OID.timestamptz, pgText), `${iso.slice(0, 19)}.${micros}Z`, pgText);
  }
});

test('bytea: hex to base64, legacy escape format too', () => {
  assert.equal(conv(OID.bytea, '\\x'), '');
  assert.equal(conv(OID.bytea, '\\x00ff0a5c41'), 'AP8KXEE=');
  const all = Buffer.from(Array.from({ length: 256 }, (_, i) => i));
  assert.equal(conv(OID.bytea, '\\x' + all.toString('hex')), all.toString('base64'));
  assert.equal(conv(OID.bytea, '\\x' + all.toString('hex').toUpperCase()), all.toString('base64'));
  assert.equal(conv(OID.bytea, '\\000\\377\\012\\\\A'), 'AP8KXEE=');
  assert.equal(conv(OID.bytea, ''), '');
  assert.equal(conv(OID.bytea, 'abc'), Buffer.from('abc').toString('base64'));
  // Not bytea text: passed on rather than half-decoded.
  assert.equal(conv(OID.bytea, '\\x0g'), '\\x0g');
  assert.equal(conv(OID.bytea, '\\x012'), '\\x012');
  assert.equal(conv(OID.bytea, 'a\\9'), 'a\\9');
});

test('arrays: numbers, NULLs, dimensions, bounds', () => {
  assert.deepEqual(conv(OID._int4, '{}'), []);
  assert.deepEqual(conv(OID._int4, '{1,2,3}'), [1, 2, 3]);
  assert.deepEqual(conv(OID._int4, '{{1,NULL},{3,4}}'), [[1, null], [3, 4]]);
  assert.deepEqual(conv(OID._int4, '{{{1,2},{3,4}},{{5,6},{7,8}}}'), [[[1, 2], [3, 4]], [[5, 6], [7, 8]]]);
  assert.deepEqual(conv(OID._int4, '[2:3]={1,2}'), [1, 2]);
  assert.deepEqual(conv(OID._int4, '[0:1][1:2]={{1,2},{3,4}}'), [[1, 2], [3, 4]]);
  assert.deepEqual(conv(OID._int4, '{NULL}'), [null]);
  assert.deepEqual(conv(OID._int2, '{-32768,32767}'), [-32768, 32767]);
  assert.deepEqual(conv(OID._oid, '{4294967295}'), [4294967295]);
  assert.deepEqual(conv(OID._int8, '{9223372036854775807,-9223372036854775808,NULL}'), ['9223372036854775807', '-9223372036854775808', null]);
  assert.deepEqual(conv(OID._numeric, '{1.50,NaN,Infinity,-1e-3}'), ['1.50', 'NaN', 'Infinity', '-1e-3']);
  assert.equal(json(OID._float8, '{NaN,Infinity,-Infinity,-0,1.5}'), '["NaN","Infinity","-Infinity",-0,1.5]');
  assert.deepEqual(conv(OID._bool, '{t,f,NULL}'), [true, false, null]);
});

test('arrays of text: quoting, escapes, the word NULL', () => {
  const text = '{"a,b","q\\"u","b\\\\s","{x}","","NULL",NULL," sp",plain,"tab\there","}{"}';
  assert.deepEqual(conv(OID._text, text), ['a,b', 'q"u', 'b\\s', '{x}', '', 'NULL', null, ' sp', 'plain', 'tab\there', '}{']);
  assert.deepEqual(conv(OID._varchar, '{"\\\\","\\"\\"",\\\\x}'), ['\\', '""', '\\x']);
  assert.deepEqual(conv(OID._text, '{{a,"b c"},{NULL,"d\\"}"}}'), [['a', 'b c'], [null, 'd"}']]);
  assert.deepEqual(conv(OID._text, '{null,Null}'), [null, null]);
  assert.deepEqual(conv(OID._text, '{"null"}'), ['null']);
  assert.deepEqual(conv(OID._uuid, '{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}'), ['a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11']);
  assert.deepEqual(conv(OID._text, '{"é 😀",ü}'), ['é 😀', 'ü']);
});

test('arrays of converted elements: jsonb, bytea, timestamptz, box, ranges, dates, points', () => {
  assert.equal(json(OID._jsonb, '{"{\\"a\\": 1}","[123456789012345678901234567890, 2]",NULL}'), '[{"a":1},[123456789012345678901234567890,2],null]');
  assert.equal(json(OID._json, '{"{\\"s\\": \\"x\\\\\\"y\\"}"}'), '[{"s":"x\\"y"}]');
  assert.deepEqual(conv(OID._bytea, '{"\\\\x00ff",NULL,"\\\\x"}'), ['AP8=', null, '']);
  assert.deepEqual(conv(OID._timestamptz, '{"2026-11-22 09:23:15.56151+00",infinity,NULL}'), ['2026-11-22T09:23:15.561510Z', 'infinity', null]);
  assert.deepEqual(conv(OID._box, '{(1,1),(0,0);(3,3),(2,2)}'), ['(1,1),(0,0)', '(3,3),(2,2)']);
  assert.deepEqual(conv(OID._point, '{"(1,2)","(3,4)"}'), ['(1,2)', '(3,4)']);
  assert.deepEqual(conv(OID._int4range, '{"[1,5)",empty}'), ['[1,5)', 'empty']);
  assert.deepEqual(conv(OID._date, '{2026-11-22,"0044-03-15 BC",infinity}'), ['2026-11-22', '0044-03-15 BC', 'infinity']);
});

test('malformed array text is passed on unchanged', () => {
  for (const t of ['', '{', '{1,2', '{"a}', '1,2', '[1:2]', '{1}x', '{1}}']) assert.equal(conv(OID._int4, t), t, t);
});

const MOOD: TypeInfo = { oid: 90001, name: 'mood', kind: 'enum', category: 'E', delimiter: ',' };
const MOOD_ARRAY: TypeInfo = { oid: 90002, name: '_mood', kind: 'array', category: 'A', elementOid: 90001, delimiter: ',' };
const POSINT: TypeInfo = { oid: 90003, name: 'posint', kind: 'domain', category: 'N', baseOid: OID.int4 };
const SMALL: TypeInfo = { oid: 90004, name: 'small', kind: 'domain', category: 'N', baseOid: 90003 };
const POSINT_ARRAY: TypeInfo = { oid: 90005, name: '_posint', kind: 'array', category: 'A', elementOid: 90003, delimiter: ',' };
const INTLIST: TypeInfo = { oid: 90006, name: 'intlist', kind: 'domain', category: 'A', baseOid: OID._int4 };
const ADDRESS: TypeInfo = {
  oid: 90007,
  name: 'address',
  kind: 'composite',
  category: 'C',
  fields: [
    { name: 'street', typeOid: OID.text },
    { name: 'num', typeOid: OID.int4 },
    { name: 'tags', typeOid: OID._text },
    { name: 'at', typeOid: OID.timestamptz },
    { name: 'data', typeOid: OID.jsonb },
    { name: 'mood', typeOid: 90001 },
  ],
};
const ADDRESS_ARRAY: TypeInfo = { oid: 90008, name: '_address', kind: 'array', category: 'A', elementOid: 90007, delimiter: ',' };
const ITEM: TypeInfo = {
  oid: 90009,
  name: 'item',
  kind: 'composite',
  category: 'C',
  fields: [
    { name: 'addr', typeOid: 90007 },
    { name: 'qty', typeOid: OID.numeric },
    { name: 'blob', typeOid: OID.bytea },
  ],
};
const FLOATRANGE: TypeInfo = { oid: 90010, name: 'floatrange', kind: 'range', category: 'R', subtypeOid: OID.float8 };
const types = lookup(MOOD, MOOD_ARRAY, POSINT, SMALL, POSINT_ARRAY, INTLIST, ADDRESS, ADDRESS_ARRAY, ITEM, FLOATRANGE);

test('enums and arrays of enums', () => {
  assert.equal(conv(MOOD.oid, "it's ok", types), "it's ok");
  assert.deepEqual(conv(MOOD_ARRAY.oid, '{happy,NULL,"it\'s ok","a,b"}', types), ['happy', null, "it's ok", 'a,b']);
});

test('domains convert as their base type', () => {
  assert.equal(conv(POSINT.oid, '42', types), 42);
  assert.equal(conv(SMALL.oid, '7', types), 7);
  assert.deepEqual(conv(POSINT_ARRAY.oid, '{1,NULL,3}', types), [1, null, 3]);
  assert.deepEqual(conv(INTLIST.oid, '{{1,2},{3,4}}', types), [[1, 2], [3, 4]]);
});

test('ranges keep their text', () => {
  assert.equal(conv(FLOATRANGE.oid, '[1.5,2.5)', types), '[1.5,2.5)');
});

test('composites become objects of converted fields', () => {
  const text = '("Main ""St"" 1, \\\\ apt",7,"{a,\\"b c\\",NULL}","2026-11-22 09:23:15.56151+00","{""n"": 123456789012345678901234567890}",sad)';
  assert.equal(
    json(ADDRESS.oid, text, types),
    '{"street":"Main \\"St\\" 1, \\\\ apt","num":7,"tags":["a","b c",null],"at":"2026-11-22T09:23:15.561510Z",' +
      '"data":{"n":123456789012345678901234567890},"mood":"sad"}',
  );
  assert.deepEqual(conv(ADDRESS.oid, '("",,,,,)', types), { street: '', num: null, tags: null, at: null, data: null, mood: null });
  assert.deepEqual(conv(ADDRESS.oid, '(,,,,,)', types), { street: null, num: null, tags: null, at: null, data: null, mood: null });
  assert.deepEqual(conv(ADDRESS.oid, '("(x)",1,{},,,"a b")', types), { street: '(x)', num: 1, tags: [], at: null, data: null, mood: 'a b' });
});

test('nested composites and arrays of composites', () => {
  const item = '("(""a """"b"""" c"",1,""{x,\\\\""y z\\\\""}"",,,)",12.50,"\\\\x00ff")';
  assert.deepEqual(conv(ITEM.oid, item, types), {
    addr: { street: 'a "b" c', num: 1, tags: ['x', 'y z'], at: null, data: null, mood: null },
    qty: '12.50',
    blob: 'AP8=',
  });
  const arr = '{"(x,1,,,,)",NULL,"(\\"y z\\",2,,,,happy)"}';
  assert.deepEqual(conv(ADDRESS_ARRAY.oid, arr, types), [
    { street: 'x', num: 1, tags: null, at: null, data: null, mood: null },
    null,
    { street: 'y z', num: 2, tags: null, at: null, data: null, mood: 'happy' },
  ]);
});

test('a composite whose shape differs from the catalog keeps its text', () => {
  for (const t of ['(1,2)', '(a,1,,,,,extra)', 'nope', '(a,1,,,,', '(a,1,,,,)x', '("a,1,,,,)']) {
    assert.equal(conv(ADDRESS.oid, t, types), t, t);
  }
});

test('composite fields named __proto__ or with integer-like names', () => {
  const weird: TypeInfo = {
    oid: 90020,
    name: 'weird',
    kind: 'composite',
    category: 'C',
    fields: [
      { name: '__proto__', typeOid: OID.int4 },
      { name: 'b', typeOid: OID.text },
      { name: '1', typeOid: OID.text },
    ],
  };
  const v = conv(weird.oid, '(5,x,y)', lookup(weird)) as Record<string, JsonValue>;
  assert.equal(Object.getPrototypeOf(v), Object.prototype);
  assert.equal(stringify(v), '{"1":"y","__proto__":5,"b":"x"}');
  const empty: TypeInfo = { oid: 90021, name: 'empty', kind: 'composite', category: 'C', fields: [] };
  assert.deepEqual(conv(empty.oid, '()', lookup(empty)), {});
});

test('unknown OIDs give the text, and are not memoized as unknown', () => {
  const later = new Map<number, TypeInfo>();
  const growing: TypeLookup = { get: (oid) => later.get(oid) };
  assert.equal(conv(12345678, 'whatever {1,2} (a,b)', growing), 'whatever {1,2} (a,b)');
  assert.equal(conv(MOOD_ARRAY.oid, '{a,b}', growing), '{a,b}');
  later.set(MOOD_ARRAY.oid, MOOD_ARRAY);
  // Element still unknown: an array of texts, not memoized either.
  assert.deepEqual(conv(MOOD_ARRAY.oid, '{a,b}', growing), ['a', 'b']);
  later.set(MOOD.oid, MOOD);
  assert.deepEqual(conv(MOOD_ARRAY.oid, '{a,NULL}', growing), ['a', null]);
});

test('converters are memoized per type', () => {
  assert.equal(converterFor(OID.int4, none), converterFor(OID.int4, none));
  assert.equal(converterFor(OID._text, none), converterFor(OID._text, types));
  assert.equal(converterFor(ADDRESS.oid, types), converterFor(ADDRESS.oid, types));
  // A refreshed catalog entry (a new object) gets a new converter.
  const altered: TypeInfo = { ...ADDRESS, fields: [...ADDRESS.fields!, { name: 'zip', typeOid: OID.text }] };
  const after = converterFor(ADDRESS.oid, lookup(altered, MOOD));
  assert.notEqual(after, converterFor(ADDRESS.oid, types));
  assert.deepEqual(after('(a,1,,,,,1234)'), { street: 'a', num: 1, tags: null, at: null, data: null, mood: null, zip: '1234' });
});

test('a self-referencing catalog (impossible in Postgres) does not recurse forever', () => {
  const loop: TypeInfo = { oid: 90030, name: 'loop', kind: 'domain', category: 'N', baseOid: 90030 };
  assert.equal(conv(loop.oid, 'x', lookup(loop)), 'x');
});

test('no converter throws, whatever the text', () => {
  const oids = [...Object.values(OID), MOOD.oid, MOOD_ARRAY.oid, POSINT.oid, INTLIST.oid, ADDRESS.oid, ADDRESS_ARRAY.oid, ITEM.oid];
  const alphabet = '{}()[]:=,;"\\ \tNULLx01-+.BCinfty';
  let seed = 3;
  const rand = () => (seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648;
  for (let i = 0; i < 3000; i++) {
    const len = Math.floor(rand() * 16);
    let text = '';
    for (let k = 0; k < len; k++) text += alphabet[Math.floor(rand() * alphabet.length)];
    for (const oid of oids) {
      const v = converterFor(oid, types)(text);
      stringify(v); // and whatever came out serializes
    }
  }
});
