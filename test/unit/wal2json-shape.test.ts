/**
 * The wal2json decoder follows each change's own shape (README "Schema changes"): wal2json sends no
 * Relation messages, and the catalog describes the table as it is now, not as it was when a change
 * was made. Regression: after `ALTER TABLE t DROP COLUMN a2` the next insert came out as
 * {"id":7,"a2":null,"b":"7"}, from a cached catalog shape.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Wal2jsonDecoder, type W2jAction } from '../../src/source/wal2json-decoder.js';
import type { RelationCatalog, TableFacts } from '../../src/source/relation-catalog.js';
import { UNCHANGED_TOAST, type RowChange } from '../../src/types.js';

/** A catalog whose "now" the test moves, counting how often it is read. */
class FakeCatalog {
  reads = 0;
  constructor(public columns: Array<[string, number]>) {}
  private facts(): TableFacts {
    return {
      oid: 42,
      schema: 'public',
      table: 't',
      replicaIdentity: 'd',
      primaryKey: ['id'],
      identityIndex: [],
      columns: this.columns.map(([name, typeOid]) => ({ name, typeOid, typeMod: -1 })),
      generated: [],
      partitionRoot: null,
    };
  }
  async refreshByName(): Promise<TableFacts> {
    this.reads++;
    return this.facts();
  }
  cachedByName(): TableFacts {
    return this.facts();
  }
}

const col = (name: string, typeoid: number, value: unknown) => ({ name, typeoid, value });
const insert = (...columns: ReturnType<typeof col>[]): W2jAction => ({ action: 'I', schema: 'public', table: 't', columns });
const update = (columns: ReturnType<typeof col>[], identity: ReturnType<typeof col>[]): W2jAction => ({ action: 'U', schema: 'public', table: 't', columns, identity });

async function decode(d: Wal2jsonDecoder, a: W2jAction): Promise<RowChange> {
  const [item] = await d.decode(a);
  return item as RowChange;
}
const names = (c: RowChange) => c.relation.columns.map((k) => k.name);

test('a dropped column is gone from the next insert, even while the catalog still has it', async () => {
  const catalog = new FakeCatalog([['id', 23], ['a2', 25], ['b', 25]]);
  const d = new Wal2jsonDecoder(catalog as unknown as RelationCatalog, { get: () => undefined });
  const first = await decode(d, insert(col('id', 23, 1), col('a2', 25, 'x'), col('b', 25, '1')));
  assert.deepEqual(names(first), ['id', 'a2', 'b']);
  // The insert after DROP COLUMN a2; the catalog has not caught up (or the drop came later).
  const next = await decode(d, insert(col('id', 23, 7), col('b', 25, '7')));
  assert.deepEqual(names(next), ['id', 'b']);
  assert.deepEqual(next.new, ['7', '7']);
  assert.deepEqual(next.relation.keyColumns, ['id']);
});

test('an insert of the same shape reuses the relation; a retyped column makes a new one', async () => {
  const catalog = new FakeCatalog([['id', 23], ['n', 23]]);
  const d = new Wal2jsonDecoder(catalog as unknown as RelationCatalog, { get: () => undefined });
  const a = await decode(d, insert(col('id', 23, 1), col('n', 23, 1)));
  const b = await decode(d, insert(col('id', 23, 2), col('n', 23, 2)));
  assert.equal(a.relation, b.relation, 'same object: per-relation work is done once');
  catalog.columns = [['id', 23], ['n', 20]];
  const c = await decode(d, insert(col('id', 23, 3), col('n', 20, 3)));
  assert.notEqual(c.relation, a.relation);
  assert.deepEqual(c.relation.columns.map((k) => k.typeOid), [23, 20]);
});

test('an update without a column the catalog still has: unchanged TOAST, same shape, one catalog read', async () => {
  const catalog = new FakeCatalog([['id', 23], ['big', 25], ['v', 23]]);
  const d = new Wal2jsonDecoder(catalog as unknown as RelationCatalog, { get: () => undefined });
  const first = await decode(d, insert(col('id', 23, 1), col('big', 25, 'x'), col('v', 23, 1)));
  const readsBefore = catalog.reads;
  const u1 = await decode(d, update([col('id', 23, 1), col('v', 23, 2)], [col('id', 23, 1)]));
  const u2 = await decode(d, update([col('id', 23, 1), col('v', 23, 3)], [col('id', 23, 1)]));
  assert.equal(u1.relation, first.relation);
  assert.equal(u2.relation, first.relation);
  assert.deepEqual(u1.new, ['1', UNCHANGED_TOAST, '2']);
  assert.equal(catalog.reads, readsBefore + 1, 'the catalog is asked once per set of absent columns');
});

test('an update without a column the catalog no longer has: the column was dropped', async () => {
  const catalog = new FakeCatalog([['id', 23], ['gone', 23], ['v', 23]]);
  const d = new Wal2jsonDecoder(catalog as unknown as RelationCatalog, { get: () => undefined });
  await decode(d, insert(col('id', 23, 1), col('gone', 23, 1), col('v', 23, 1)));
  catalog.columns = [['id', 23], ['v', 23], ['later', 25]];
  const u = await decode(d, update([col('id', 23, 1), col('v', 23, 2)], [col('id', 23, 1)]));
  // Neither the dropped column nor one added after this change (not in the row, unknown before).
  assert.deepEqual(names(u), ['id', 'v']);
  assert.deepEqual(u.new, ['1', '2']);
});
