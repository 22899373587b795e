/**
 * The row parts of an event (`key`, `old`, `new`, `changed`, `unchanged_toast`), byte for byte:
 * key order as in a JS object (integer-like column names first), awkward column names, excluded
 * and unsent columns, unchanged TOASTed values, and how replica identity shapes `key` and `old`.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { EventBuilder } from '../../src/events/envelope.js';
import { UNCHANGED_TOAST, type Change, type OldKind, type RawTuple, type RelationInfo, type ReplicaIdentity, type RowOp, type SourceInfo, type TxInfo } from '../../src/types.js';

const source: SourceInfo = { name: 'pgwarren', db: 'app', slot: 's', plugin: 'pgoutput' };
const tx: TxInfo = { xid: 7, commitLsn: 0x16b3748n, commitTime: '2026-11-22T09:23:15.561510Z' };
const INT4 = 23;
const TEXT = 25;
const BOOL = 16;
const NUMERIC = 1700;

/** Columns as [name, type OID, in replica identity]. */
function relation(columns: Array<[string, number, boolean?]>, keyColumns: string[], replicaIdentity: ReplicaIdentity = 'default'): RelationInfo {
  return {
    oid: 1,
    schema: 'public',
    table: 't',
    replicaIdentity,
    columns: columns.map(([name, typeOid, identity]) => ({ name, typeOid, typeMod: -1, inReplicaIdentity: identity ?? false })),
    keyColumns,
  };
}

function change(relation: RelationInfo, op: RowOp, oldKind: OldKind, old: RawTuple | null, next: RawTuple | null): Change {
  return { kind: 'change', op, relation, old, oldKind, new: next };
}

/** The body from `"key":` up to `,"tx":`: the parts a row change fills in. */
function rowParts(c: Change, excluded: readonly string[] = []): string {
  const body = new EventBuilder(source, { get: () => undefined }, () => new Set(excluded)).build(c, tx, 3).body;
  return body.slice(body.indexOf(',"key":') + 1, body.indexOf(',"tx":'));
}

test('the whole event of an insert', () => {
  const rel = relation([['id', INT4, true], ['note', TEXT]], ['id']);
  const e = new EventBuilder(source, { get: () => undefined }).build(change(rel, 'insert', 'none', null, ['1', 'hi']), tx, 3);
  assert.equal(
    e.body,
    '{"id":"0/16B3748:3","op":"insert","schema":"public","table":"t","key":{"id":1},"old":null,"new":{"id":1,"note":"hi"},' +
      '"changed":null,"unchanged_toast":[],"tx":{"xid":7,"lsn":"0/16B3748","commit_time":"2026-11-22T09:23:15.561510Z","seq":3},' +
      '"source":{"name":"pgwarren","db":"app","slot":"s","plugin":"pgoutput"}}',
  );
});

test('integer-like column names come first, ascending, as in a JS object; others keep table order', () => {
  const rel = relation(
    [['b', TEXT], ['42', INT4], ['007', TEXT], ['1', INT4], ['a', BOOL], ['4294967295', TEXT], ['4294967294', TEXT], ['0', INT4]],
    ['b', '1'],
  );
  const inserted = change(rel, 'insert', 'none', null, ['x', '42', 'seven', '1', 't', 'big', 'max', '0']);
  // "007" is not an array index, nor is 2^32-1: both stay in table order among the names.
  assert.equal(
    rowParts(inserted),
    '"key":{"1":1,"b":"x"},"old":null,' +
      '"new":{"0":0,"1":1,"42":42,"4294967294":"max","b":"x","007":"seven","a":true,"4294967295":"big"},' +
      '"changed":null,"unchanged_toast":[]',
  );
  // Leaving columns out does not reorder the rest.
  const sparse = change(rel, 'insert', 'none', null, ['x', undefined, 'seven', '1', undefined, 'big', null, undefined]);
  assert.equal(
    rowParts(sparse),
    '"key":{"1":1,"b":"x"},"old":null,"new":{"1":1,"4294967294":null,"b":"x","007":"seven","4294967295":"big"},"changed":null,"unchanged_toast":[]',
  );
});

test('an old key row orders integer-like identity columns first too', () => {
  const rel = relation([['b', TEXT, true], ['42', INT4, true], ['c', TEXT]], ['b', '42']);
  const moved = change(rel, 'update', 'key', ['x', '1', undefined], ['y', '2', 'c']);
  assert.equal(rowParts(moved), '"key":{"42":2,"b":"y"},"old":{"42":1,"b":"x"},"new":{"42":2,"b":"y","c":"c"},"changed":null,"unchanged_toast":[]');
});

test('a column named __proto__, and names that need escaping', () => {
  const rel = relation([['__proto__', TEXT], ['a"b', INT4], ['é😀', TEXT], ['back\\slash', TEXT], ['tab\t', TEXT]], ['__proto__']);
  const c = change(rel, 'insert', 'none', null, ['p', '5', 'u', '\\', 't']);
  assert.equal(
    rowParts(c),
    String.raw`"key":{"__proto__":"p"},"old":null,"new":{"__proto__":"p","a\"b":5,"é😀":"u","back\\slash":"\\","tab\t":"t"},"changed":null,"unchanged_toast":[]`,
  );
  const full = change(rel, 'update', 'full', ['p', '5', 'u', '\\', 't'], ['p', '6', 'u', '\\', 't']);
  assert.match(rowParts(full), /"changed":\["a\\"b"\],/);
});

test('excluded columns are left out of old, new and changed; unsent columns are left out', () => {
  const rel = relation([['id', INT4, true], ['secret', TEXT], ['note', TEXT], ['n', NUMERIC]], ['id'], 'full');
  const c = change(rel, 'update', 'full', ['1', 's1', 'a', '1.0'], ['1', 's2', 'b', undefined]);
  assert.equal(
    rowParts(c, ['secret']),
    '"key":{"id":1},"old":{"id":1,"note":"a","n":"1.0"},"new":{"id":1,"note":"b"},"changed":["note","n"],"unchanged_toast":[]',
  );
});

test('unchanged TOASTed values: taken from a full old row, else named in unchanged_toast in table order', () => {
  const rel = relation([['id', INT4, true], ['b', TEXT], ['1', TEXT]], ['id']);
  const withOld = change(rel, 'update', 'full', ['1', 'big', 'one'], ['1', UNCHANGED_TOAST, UNCHANGED_TOAST]);
  assert.equal(rowParts(withOld), '"key":{"id":1},"old":{"1":"one","id":1,"b":"big"},"new":{"1":"one","id":1,"b":"big"},"changed":[],"unchanged_toast":[]');
  const withoutOld = change(rel, 'update', 'none', null, ['1', UNCHANGED_TOAST, UNCHANGED_TOAST]);
  assert.equal(rowParts(withoutOld), '"key":{"id":1},"old":null,"new":{"id":1},"changed":null,"unchanged_toast":["b","1"]');
});

test('the key: completed from the old row, null when not fully known', () => {
  const rel = relation([['id', TEXT, true], ['doc', TEXT]], ['id']);
  const unknown = change(rel, 'update', 'none', null, [UNCHANGED_TOAST, 'd']);
  assert.equal(rowParts(unknown), '"key":null,"old":null,"new":{"doc":"d"},"changed":null,"unchanged_toast":["id"]');
  // The plugin sent the (TOASTed) key as the old key: the key is known, and it did not change.
  const completed = change(rel, 'update', 'key', ['k1', undefined], [UNCHANGED_TOAST, 'd']);
  assert.equal(rowParts(completed), '"key":{"id":"k1"},"old":null,"new":{"doc":"d"},"changed":null,"unchanged_toast":["id"]');
  const kept = change(rel, 'update', 'key', ['k1', undefined], ['k1', 'd']);
  assert.equal(rowParts(kept), '"key":{"id":"k1"},"old":null,"new":{"id":"k1","doc":"d"},"changed":null,"unchanged_toast":[]');
  const missingColumn = relation([['id', TEXT, true]], ['gone']);
  assert.equal(rowParts(change(missingColumn, 'insert', 'none', null, ['x'])), '"key":null,"old":null,"new":{"id":"x"},"changed":null,"unchanged_toast":[]');
});

test('a delete under REPLICA IDENTITY USING INDEX keys on the identity columns when the primary key is not among them', () => {
  const rel = relation([['id', INT4], ['z', TEXT, true], ['7', INT4, true]], ['id'], 'index');
  const deleted = change(rel, 'delete', 'key', [undefined, 'zz', '7'], null);
  assert.equal(rowParts(deleted), '"key":{"7":7,"z":"zz"},"old":{"7":7,"z":"zz"},"new":null,"changed":null,"unchanged_toast":[]');
  const covered = relation([['id', INT4, true], ['z', TEXT, true]], ['id'], 'index');
  assert.equal(rowParts(change(covered, 'delete', 'key', ['1', 'zz'], null)), '"key":{"id":1},"old":{"id":1,"z":"zz"},"new":null,"changed":null,"unchanged_toast":[]');
});

test('repeated column names (Postgres forbids them): the last value wins, the first position stays', () => {
  const rel = relation([['a', TEXT], ['b', TEXT], ['a', INT4]], ['a']);
  assert.equal(rowParts(change(rel, 'insert', 'none', null, ['first', 'b', '2'])), '"key":{"a":"first"},"old":null,"new":{"a":2,"b":"b"},"changed":null,"unchanged_toast":[]');
  assert.equal(rowParts(change(rel, 'insert', 'none', null, [undefined, 'b', '2'])), '"key":null,"old":null,"new":{"b":"b","a":2},"changed":null,"unchanged_toast":[]');
});

test('a truncate has no row parts', () => {
  const rel = relation([['id', INT4, true]], ['id']);
  assert.equal(rowParts({ kind: 'truncate', relation: rel, cascade: false, restartIdentity: false }), '"key":null,"old":null,"new":null,"changed":null,"unchanged_toast":[]');
});

test('beyond rows (README "Beyond rows"): message, schema and commit event bodies, byte for byte', () => {
  const src = { name: 'pgwarren', db: 'app', slot: 'pgwarren', plugin: 'pgoutput' } as const;
  const b = new EventBuilder(src, { get: (oid: number) => (oid === 23 ? { oid, name: 'int4', kind: 'base', category: 'N' } : undefined) });
  const tx = { xid: 7, commitLsn: 0x1a2b3c4n, commitTime: '2026-11-22T09:23:15.561510Z' };
  const source = '"source":{"name":"pgwarren","db":"app","slot":"pgwarren","plugin":"pgoutput"}}';
  const m = b.buildMessage('pgwarren.event', '{"routing_key":"a.b","n":123456789012345678901234567890}', 'a.b', tx, 3);
  assert.equal(
    m.body,
    '{"id":"0/1A2B3C4:3","op":"message","prefix":"pgwarren.event","payload":{"routing_key":"a.b","n":123456789012345678901234567890},' +
      '"tx":{"xid":7,"lsn":"0/1A2B3C4","commit_time":"2026-11-22T09:23:15.561510Z","seq":3},' + source,
  );
  assert.deepEqual([m.id, m.op, m.schema, m.table, m.routingKey], ['0/1A2B3C4:3', 'message', '', 'pgwarren.event', 'a.b']);
  const rel = {
    oid: 1, schema: 'public', table: 't', replicaIdentity: 'default' as const, keyColumns: ['id'],
    columns: [{ name: 'id', typeOid: 23, typeMod: -1, inReplicaIdentity: true }, { name: 'x', typeOid: 99999, typeMod: -1, inReplicaIdentity: false }],
  };
  const cols = b.schemaColumns(rel);
  assert.deepEqual(cols, [{ name: 'id', type: 'int4', key: true }, { name: 'x', type: '99999', key: false }]);
  const s = b.buildSchema('public', 't', cols, cols.slice(0, 1), tx, 0);
  assert.equal(
    s.body,
    '{"id":"0/1A2B3C4:0:schema","op":"schema","schema":"public","table":"t","columns":[{"name":"id","type":"int4","key":true},{"name":"x","type":"99999","key":false}],' +
      '"previous":[{"name":"id","type":"int4","key":true}],"tx":{"xid":7,"lsn":"0/1A2B3C4","commit_time":"2026-11-22T09:23:15.561510Z","seq":0},' + source,
  );
  const c = b.buildCommit(new Map([['public.t', new Map([['insert', 2], ['schema', 1]])], ['pgwarren.event', new Map([['message', 1]])]]), tx);
  assert.equal(
    c.body,
    '{"id":"0/1A2B3C4:commit","op":"commit","counts":{"public.t":{"insert":2,"schema":1},"pgwarren.event":{"message":1}},' +
      '"tx":{"xid":7,"lsn":"0/1A2B3C4","commit_time":"2026-11-22T09:23:15.561510Z"},' + source,
  );
  assert.equal(c.routingKey, 'pgwarren.tx.commit');
});
