/**
 * Table globs with double-quoted names, the key and display forms of a table, and the globs as
 * pushed down to wal2json.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { GlobSyntaxError, globMatches, parseTableGlob, splitGlobList, tableKey, tableName, tableNameOfKey } from '../../src/shared/table-name.js';
import { wal2jsonTableFilter } from '../../src/source/wal2json-decoder.js';
import { loadConfig } from '../../src/config/load.js';

const matches = (glob: string, schema: string, table: string) => globMatches(parseTableGlob(glob), schema, table);

test('globs: unquoted parts keep their meaning, * and ? wildcards, each part matched on its own', () => {
  assert.ok(matches('public.*', 'public', 'orders'));
  assert.ok(matches('*.orders', 'sales', 'orders'));
  assert.ok(matches('pub?ic.ord*', 'public', 'orders'));
  assert.ok(!matches('public.*', 'publicx', 'orders'));
  assert.ok(!matches('public.ord', 'public', 'orders'));
  assert.ok(matches('Public.Orders', 'Public', 'Orders'), 'names as stored, case-sensitive');
  assert.ok(!matches('public.orders', 'Public', 'orders'));
  assert.ok(matches('*.*', 'a.b', 'c'), 'a wildcard matches a dot inside a name');
});

test('globs: double-quoted names are literal and may hold dots, quotes, commas, spaces and wildcards', () => {
  assert.ok(matches('"a.b".c', 'a.b', 'c'));
  assert.ok(!matches('"a.b".c', 'a', 'b.c'));
  assert.ok(matches('a."b.c"', 'a', 'b.c'));
  assert.ok(!matches('a."b.c"', 'a.b', 'c'));
  assert.ok(matches('"say ""hi""".t', 'say "hi"', 't'));
  assert.ok(matches('public."x*"', 'public', 'x*'));
  assert.ok(!matches('public."x*"', 'public', 'xy'), 'a quoted * is a star, not a wildcard');
  assert.ok(matches('public."a,b"', 'public', 'a,b'));
  assert.ok(matches('"my schema"."my table"', 'my schema', 'my table'));
  assert.ok(matches('"a.b"*.c', 'a.bxyz', 'c'), 'quoted and unquoted text join in one part');
  assert.ok(!matches('"a.b"*.c', 'aXbxyz', 'c'), 'the quoted dot is a dot, not a regex wildcard');
  assert.ok(matches('"Ünï.cödé".t?', 'Ünï.cödé', 'tä'));
  assert.ok(matches('*."line\nbreak"', 's', 'line\nbreak'));
});

test('globs: what does not parse says why', () => {
  const bad: Array<[string, RegExp]> = [
    ['orders', /no dot between schema and table/],
    ['a.b.c', /more than one dot outside double quotes/],
    ['"a.b', /double quote is not closed/],
    ['.orders', /schema pattern is empty/],
    ['public.', /table pattern is empty/],
    ['"".t', /quoted name is empty/],
    ['a b.c', /white space outside double quotes/],
  ];
  for (const [glob, why] of bad) {
    assert.throws(() => parseTableGlob(glob), (err: unknown) => err instanceof GlobSyntaxError && why.test(err.message) && err.message.includes(JSON.stringify(glob)), glob);
  }
});

test('glob lists split at commas outside double quotes', () => {
  assert.deepEqual(splitGlobList(' public.* , "a,b".c,x."y,""z"" " ,'), ['public.*', '"a,b".c', 'x."y,""z"" "']);
});

test('table keys and names: distinct for colliding dotted names; a name reads back as a glob of just that table', () => {
  assert.notEqual(tableKey('a.b', 'c'), tableKey('a', 'b.c'));
  assert.equal(tableName('public', 'orders'), 'public.orders', 'ordinary names unchanged');
  assert.equal(tableName('a.b', 'c'), '"a.b".c');
  assert.equal(tableName('a', 'b.c'), 'a."b.c"');
  assert.equal(tableName('say "hi"', 'x'), '"say ""hi""".x');
  assert.equal(tableNameOfKey(tableKey('a', 'b.c')), 'a."b.c"');
  const tables: Array<[string, string]> = [['a.b', 'c'], ['a', 'b.c'], ['say "hi"', 'x*'], ['p', 'a,b'], ['s p', 't?'], ['public', 'orders']];
  for (const [schema, table] of tables) {
    const glob = parseTableGlob(tableName(schema, table));
    for (const [s, t] of tables) assert.equal(globMatches(glob, s, t), s === schema && t === table, `${tableName(schema, table)} vs ${tableName(s, t)}`);
  }
});

test('wal2json pushdown: literal names escaped as wal2json reads them, whole-part * kept, anything else not pushed', () => {
  assert.deepEqual(wal2jsonTableFilter(['public.*', '*.orders', 'public.orders']), ['public.*', '*.orders', 'public.orders']);
  assert.deepEqual(wal2jsonTableFilter(['"a.b".c', 'a."b.c"']), ['a\\.b.c', 'a.b\\.c']);
  assert.deepEqual(wal2jsonTableFilter(['"a,b"."x y"', 'public."*"', '"*".t']), ['a\\,b.x\\ y', 'public.\\*', '\\*.t']);
  assert.equal(wal2jsonTableFilter(['public.ord*']), null, 'wal2json has no partial wildcard: it would take ord* literally');
  assert.equal(wal2jsonTableFilter(['public.*', 'x.t?']), null);
  assert.deepEqual(wal2jsonTableFilter([]), []);
});

test('configuration: quoted globs are accepted in PGWARREN_TABLES and EXCLUDE_TABLES, with commas inside quotes', () => {
  const config = loadConfig({ flags: {}, env: { PGWARREN_TABLES: '"a.b".c, a."b.c",public."x,y"', PGWARREN_EXCLUDE_TABLES: '"a.b".*' } });
  assert.deepEqual(config.tables, ['"a.b".c', 'a."b.c"', 'public."x,y"']);
  assert.deepEqual(config.excludeTables, ['"a.b".*']);
});
