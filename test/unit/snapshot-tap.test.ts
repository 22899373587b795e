/**
 * The watermark window of a snapshot chunk (src/snapshot/tap.ts), driven the way the pipeline and
 * the reader drive it: which rows survive to the high watermark, when a chunk must be read again,
 * and that other sessions' watermarks and other tables' changes are ignored.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { SnapshotTap, WATERMARK_PREFIX, type ChunkOutcome, type ReadBatch } from '../../src/snapshot/tap.js';
import { UNCHANGED_TOAST, type Change, type LogicalMessage, type RawTuple, type RelationInfo } from '../../src/types.js';
import { parseXip } from '../../src/snapshot/reader.js';

const rel = (table: string, identity: 'default' | 'index' = 'default'): RelationInfo => ({
  oid: 1,
  schema: 'public',
  table,
  replicaIdentity: identity,
  columns: [
    { name: 'id', typeOid: 23, typeMod: -1, inReplicaIdentity: identity === 'default' },
    { name: 'code', typeOid: 25, typeMod: -1, inReplicaIdentity: identity === 'index' },
    { name: 'v', typeOid: 25, typeMod: -1, inReplicaIdentity: false },
  ],
  keyColumns: ['id'],
});
const items = rel('items');
// The stream describes the same table with its own relation object.
const streamed = rel('items');

const msg = (content: string, transactional = false): LogicalMessage => ({ kind: 'message', transactional, prefix: WATERMARK_PREFIX, content: Buffer.from(content) });
const row = (id: number, v = `v${id}`): RawTuple => [String(id), `c${id}`, v];
const upd = (id: number, newId = id): Change => ({
  kind: 'change',
  op: 'update',
  relation: streamed,
  old: newId === id ? null : [String(id), null, null],
  oldKind: newId === id ? 'none' : 'key',
  new: row(newId, 'changed'),
});
const del = (id: number): Change => ({ kind: 'change', op: 'delete', relation: streamed, old: [String(id), null, null], oldKind: 'key', new: null });

function chunk(tap: SnapshotTap, relation = items, identities: string[][] = [['id']]) {
  const published: ReadBatch[] = [];
  const pending = tap.begin({
    relation,
    identities,
    exchange: undefined,
    routingKey: undefined,
    toEvent: (r, _i, end) => ({ id: r[0] as string, op: 'read' as const, schema: 'public', table: relation.table, body: end ? `${String(r[0])} end` : String(r[0]) }),
  });
  let outcome: ChunkOutcome | undefined;
  void pending.done.then((o) => (outcome = o));
  const publish = (b: ReadBatch) => {
    published.push(b);
    b.onConfirmed(null);
  };
  return {
    pending,
    published,
    low: () => tap.watermark(msg(pending.low)),
    high: async () => {
      tap.watermark(msg(pending.high));
      // The pipeline hands every slice on (here: all at once, nothing streamed in between).
      for (let b = tap.nextReads(); b; b = tap.nextReads()) publish(b);
      await new Promise((r) => setImmediate(r));
      if (outcome?.kind === 'published') {
        const { count } = await outcome.confirmed;
        return { kind: outcome.kind, count };
      }
      return outcome;
    },
    ids: () => published.flatMap((b) => b.events.map((e) => Number(e.id))),
  };
}

test('rows whose key changed between the watermarks are left out; the rest are published at the high watermark', async () => {
  const tap = new SnapshotTap();
  const c = chunk(tap);
  tap.changed(upd(1), 100); // before the low watermark: the SELECT sees it, the row stays
  c.low();
  c.pending.setRead({ rows: [row(1), row(2), row(3), row(4), row(5)], xip: new Set() });
  tap.changed(upd(2), 101);
  tap.changed(del(3), 102);
  tap.changed(upd(4, 40), 103); // key change: the old key's row is gone
  tap.changed({ ...upd(5), relation: rel('other') }, 104); // another table
  assert.deepEqual(await c.high(), { kind: 'published', count: 2 });
  assert.deepEqual(c.ids(), [1, 5]);
});

test('a truncate between the watermarks leaves nothing to publish', async () => {
  const tap = new SnapshotTap();
  const c = chunk(tap);
  c.low();
  c.pending.setRead({ rows: [row(1), row(2)], xip: new Set() });
  tap.changed({ kind: 'truncate', relation: streamed, cascade: false, restartIdentity: false }, 5);
  assert.deepEqual(await c.high(), { kind: 'published', count: 0 });
  assert.deepEqual(c.published, []);
});

test('a transaction that changed the table before the low watermark but was invisible to the read makes the chunk read again', async () => {
  const tap = new SnapshotTap();
  const c = chunk(tap);
  tap.changed(upd(7), 900);
  c.low();
  c.pending.setRead({ rows: [row(1), row(7)], xip: new Set([900]) });
  const outcome = await c.high();
  assert.equal(outcome?.kind, 'redo');
  assert.deepEqual(c.published, []);
  // In progress but not seen before the low watermark: it commits later, in the window or after. Fine.
  const tap2 = new SnapshotTap();
  const c2 = chunk(tap2);
  c2.low();
  c2.pending.setRead({ rows: [row(1)], xip: new Set([901]) });
  assert.deepEqual(await c2.high(), { kind: 'published', count: 1 });
});

test('a change without a complete key makes the chunk read again', async () => {
  const tap = new SnapshotTap();
  const c = chunk(tap);
  c.low();
  c.pending.setRead({ rows: [row(1)], xip: new Set() });
  tap.changed({ kind: 'change', op: 'insert', relation: streamed, old: null, oldKind: 'none', new: [UNCHANGED_TOAST, 'x', 'y'] }, 1);
  assert.equal((await c.high())?.kind, 'redo');
});

test('a delete that names the row by its replica identity index removes it too', async () => {
  const tap = new SnapshotTap();
  const byIndex = rel('items', 'index');
  const c = chunk(tap, byIndex, [['id'], ['code']]);
  c.low();
  c.pending.setRead({ rows: [row(1), row(2)], xip: new Set() });
  tap.changed({ kind: 'change', op: 'delete', relation: rel('items', 'index'), old: [null, 'c2', null], oldKind: 'key', new: null }, 1);
  await c.high();
  assert.deepEqual(c.ids(), [1]);
});

test("other sessions' watermarks, transactional messages and a high watermark without its low one publish nothing", async () => {
  const tap = new SnapshotTap();
  const c = chunk(tap);
  assert.equal(tap.isWatermark(msg('low x', true)), false, 'only non-transactional messages are watermarks');
  tap.watermark(msg('high someone-else-1'));
  assert.equal(tap.nextReads(), null, 'nothing to publish');
  c.pending.setRead({ rows: [row(1)], xip: new Set() });
  const outcome = await c.high();
  assert.equal(outcome?.kind, 'redo');
  assert.deepEqual(c.published, []);
});

test('parseXip: the in-progress xids of pg_current_snapshot, as the 32-bit xids the stream reports', () => {
  assert.deepEqual([...parseXip('100:105:')], []);
  assert.deepEqual([...parseXip('100:105:101,103')], [101, 103]);
  assert.deepEqual([...parseXip(`${2 ** 32 + 7}:${2 ** 32 + 9}:${2 ** 32 + 8}`)], [8]);
});

test('chunks read ahead: each window removes keys only from its own chunk; a redo takes the chunks after it along', async () => {
  const tap = new SnapshotTap();
  const c1 = chunk(tap);
  const c2 = chunk(tap); // read ahead, before the stream reached c1's high watermark
  c1.pending.setRead({ rows: [row(1), row(2)], xip: new Set() });
  c2.pending.setRead({ rows: [row(3), row(4)], xip: new Set() });
  c1.low();
  tap.changed(upd(1), 1);
  tap.changed(upd(3), 2); // in c1's window: c2's SELECT came later and saw it
  assert.deepEqual(await c1.high(), { kind: 'published', count: 1 });
  tap.changed(upd(2), 3); // between the windows: c1 is published, c2 is not concerned
  c2.low();
  tap.changed(del(4), 4);
  assert.deepEqual(await c2.high(), { kind: 'published', count: 1 });
  assert.deepEqual([...c1.ids(), ...c2.ids()], [2, 3]);

  const r1 = chunk(tap);
  const r2 = chunk(tap);
  r1.pending.setRead({ rows: [row(5)], xip: new Set() });
  r2.pending.setRead({ rows: [row(6)], xip: new Set() });
  r1.low();
  tap.changed({ kind: 'change', op: 'insert', relation: streamed, old: null, oldKind: 'none', new: [UNCHANGED_TOAST, 'x', 'y'] }, 5);
  r2.low();
  assert.equal((await r1.high())?.kind, 'redo');
  const second = await r2.pending.done;
  assert.equal(second.kind, 'redo', 'the chunk after a redo is read again too');
  tap.watermark(msg(r2.pending.high));
  assert.equal(tap.nextReads(), null, 'a chunk dropped by a redo must not publish');
  // Begun after the redo but before the reader started over: read again as well, then normal again.
  const late = chunk(tap);
  assert.equal((await late.pending.done).kind, 'redo');
  tap.restart();
  const fresh = chunk(tap);
  fresh.pending.setRead({ rows: [row(5)], xip: new Set() });
  fresh.low();
  assert.deepEqual(await fresh.high(), { kind: 'published', count: 1 });
});

test('the invisible transaction was delivered before the chunk even began, through another table: still read again', async () => {
  const tap = new SnapshotTap();
  tap.changed({ ...upd(1), relation: rel('other') }, 777);
  const c = chunk(tap);
  c.low();
  c.pending.setRead({ rows: [row(1)], xip: new Set([777]) });
  assert.equal((await c.high())?.kind, 'redo');
});

test('after the high watermark rows go out a slice at a time; a change streamed between slices removes its row from the rest', async () => {
  const tap = new SnapshotTap({ sliceEvents: 2, maxUnconfirmed: 4 });
  let wakes = 0;
  tap.onReads(() => wakes++);
  const c = chunk(tap);
  let outcome: ChunkOutcome | undefined;
  void c.pending.done.then((o) => (outcome = o));
  c.low();
  c.pending.setRead({ rows: [row(1), row(2), row(3), row(4), row(5), row(6), row(7)], xip: new Set() });
  tap.watermark(msg(c.pending.high));
  assert.equal(wakes, 1, 'the pipeline is told that reads wait');
  const s1 = tap.nextReads()!;
  assert.deepEqual(s1.events.map((e) => e.body), ['1', '2']);
  tap.changed(upd(3), 10); // streamed after the first slice: row 3 must not follow it with an older state
  const s2 = tap.nextReads()!;
  assert.deepEqual(s2.events.map((e) => e.body), ['4', '5']);
  assert.equal(tap.nextReads(), null, 'four read events unconfirmed: the broker is given time');
  s1.onConfirmed(null);
  assert.equal(wakes, 2, 'a confirm wakes the pipeline');
  tap.changed(del(7), 11); // the greatest row goes: the end mark moves to the last row published
  const s3 = tap.nextReads()!;
  assert.deepEqual(s3.events.map((e) => e.body), ['6 end']);
  assert.equal(tap.nextReads(), null);
  s2.onConfirmed(null);
  s3.onConfirmed(null);
  await new Promise((r) => setImmediate(r));
  assert.equal(outcome?.kind, 'published');
  assert.deepEqual(await (outcome as { confirmed: Promise<unknown> }).confirmed, { count: 5, endSent: true });
});

test('a chunk whose rows all changed after its high watermark reports that its end was not sent', async () => {
  const tap = new SnapshotTap({ sliceEvents: 1 });
  const c = chunk(tap);
  let outcome: ChunkOutcome | undefined;
  void c.pending.done.then((o) => (outcome = o));
  c.low();
  c.pending.setRead({ rows: [row(1), row(2)], xip: new Set() });
  tap.watermark(msg(c.pending.high));
  const s1 = tap.nextReads()!;
  assert.deepEqual(s1.events.map((e) => e.body), ['1']);
  tap.changed(del(2), 1);
  assert.equal(tap.nextReads(), null);
  s1.onConfirmed(null);
  await new Promise((r) => setImmediate(r));
  assert.deepEqual(await (outcome as { confirmed: Promise<unknown> }).confirmed, { count: 1, endSent: false });
});
