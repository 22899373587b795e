import { test } from 'node:test';
import assert from 'node:assert/strict';
import { FloodGuard, type FloodAction } from '../../src/filter/flood-guard.js';
import { tableKey, tableNameOfKey, type TableKey } from '../../src/shared/table-name.js';

type Op = 'insert' | 'update' | 'delete';
interface Row { table: string; op: Op | 'truncate' }

/** Feeds a transaction through the guard the way the pipeline does; returns what went where. */
function run(action: FloodAction, rows: Row[], opts: { threshold?: number; buffer?: number; bufferBytes?: number; markerAt?: number; plan?: Map<TableKey, 'threshold' | 'marker'>; diverted?: ReadonlyMap<TableKey, number> } = {}) {
  const guard = new FloodGuard<string>({ action, thresholdFor: () => opts.threshold ?? 3, bufferEvents: opts.buffer ?? 100, bufferBytes: opts.bufferBytes });
  guard.begin(opts.plan ? { commitLsn: 1n, flooded: opts.plan, diverted: opts.diverted } : null);
  const published: string[] = [];
  const diverted: string[] = [];
  rows.forEach((r, seq) => {
    if (opts.markerAt === seq) diverted.push(...guard.markMarker());
    const event = `${r.table}:${seq}`;
    const v = r.op === 'truncate' ? { now: guard.truncate(), divert: [] } : guard.row('s', r.table, r.op, seq);
    diverted.push(...v.divert);
    if (v.now === 'hold') guard.keep(event, r.op === 'truncate' ? null : tableKey('s', r.table), event.length);
    else if (v.now === 'publish') published.push(event);
    else if (v.now === 'divert') diverted.push(event);
  });
  const result = guard.commit(1n);
  return { published: [...published, ...result.publish], diverted, flooded: result.flooded, replan: result.replan };
}

const tableOf = (key: TableKey) => tableNameOfKey(key).slice(2);
const rows = (table: string, n: number, op: Op = 'update'): Row[] => Array.from({ length: n }, () => ({ table, op }));

test('below the threshold everything is published in order at commit', () => {
  const r = run('summarize', [...rows('a', 3), ...rows('b', 2)]);
  assert.deepEqual(r.published, ['a:0', 'a:1', 'a:2', 'b:3', 'b:4']);
  assert.deepEqual(r.flooded, []);
});

test('summarize: a table over the threshold loses its rows, others keep theirs and their order', () => {
  const r = run('summarize', [{ table: 'b', op: 'insert' }, ...rows('a', 5), { table: 'b', op: 'delete' }]);
  assert.deepEqual(r.published, ['b:0', 'b:6']);
  assert.equal(r.flooded.length, 1);
  assert.deepEqual(r.flooded[0], { schema: 's', table: 'a', counts: { insert: 0, update: 5, delete: 0, firstSeq: 1 }, reason: 'threshold' });
});

test('counts are per operation and the threshold is on their sum', () => {
  const r = run('drop', [{ table: 'a', op: 'insert' }, { table: 'a', op: 'update' }, { table: 'a', op: 'delete' }, { table: 'a', op: 'delete' }]);
  assert.deepEqual(r.published, []);
  assert.deepEqual(r.flooded[0]!.counts, { insert: 1, update: 1, delete: 2, firstSeq: 0 });
});

test('divert sends the flooded table\'s rows, held ones included, to the flood side in order', () => {
  const r = run('divert', [...rows('a', 2), { table: 'b', op: 'insert' }, ...rows('a', 3)]);
  assert.deepEqual(r.diverted, ['a:0', 'a:1', 'a:3', 'a:4', 'a:5']);
  assert.deepEqual(r.published, ['b:2']);
});

test('pass publishes everything at once but still reports the flood', () => {
  const r = run('pass', rows('a', 5));
  assert.deepEqual(r.published, ['a:0', 'a:1', 'a:2', 'a:3', 'a:4']);
  assert.equal(r.flooded[0]!.reason, 'threshold');
});

test('the marker floods every table whatever its count, even rows before it; threshold 0 keeps the marker', () => {
  const r = run('summarize', [{ table: 'a', op: 'insert' }, { table: 'b', op: 'insert' }, { table: 'b', op: 'update' }], { markerAt: 2, threshold: 0 });
  assert.deepEqual(r.published, []);
  assert.deepEqual(r.flooded.map((f) => [f.table, f.reason]), [['a', 'marker'], ['b', 'marker']]);
});

test('threshold 0 disables counting', () => {
  const r = run('summarize', rows('a', 50), { threshold: 0 });
  assert.equal(r.published.length, 50);
  assert.deepEqual(r.flooded, []);
});

test('truncates are never part of a flood and keep their place', () => {
  const r = run('summarize', [{ table: 'a', op: 'truncate' }, ...rows('a', 4), { table: 'b', op: 'truncate' }]);
  assert.deepEqual(r.published, ['a:0', 'b:5']);
  assert.deepEqual(r.flooded[0]!.counts, { insert: 0, update: 4, delete: 0, firstSeq: 1 });
});

test('outgrowing the buffer publishes nothing and asks for a second read with the verdict', () => {
  const many = [...rows('a', 3), ...rows('b', 3), ...rows('c', 3), ...rows('d', 5)];
  const r = run('summarize', many, { buffer: 4 });
  assert.deepEqual(r.published, []);
  assert.ok(r.replan);
  assert.deepEqual([...r.replan!.flooded], [[tableKey('s', 'd'), 'threshold']]);
  // The second read publishes at once (nothing held) and floods only what the plan says.
  const second = run('summarize', many, { buffer: 4, plan: new Map(r.replan!.flooded) });
  assert.equal(second.replan, null);
  assert.deepEqual(second.published, many.slice(0, 9).map((row, i) => `${row.table}:${i}`));
  assert.deepEqual(second.flooded.map((f) => [f.table, f.counts.update]), [['d', 5]]);
});

test('the byte bound: held bodies past bufferBytes stop holding, and a flooded table frees its share', () => {
  // Each event body here is 3 characters ("a:0"): 4 held reach 12.
  const many = [...rows('a', 3), ...rows('b', 3), ...rows('c', 3)];
  const r = run('summarize', many, { bufferBytes: 12 });
  assert.deepEqual(r.published, []);
  assert.ok(r.replan, 'over the byte bound: read again with the verdict');
  // A table that floods leaves the buffer, so its bytes no longer count against the bound.
  const freed = run('summarize', [...rows('a', 4), ...rows('b', 2)], { bufferBytes: 12 });
  assert.equal(freed.replan, null);
  assert.deepEqual(freed.published, ['b:4', 'b:5']);
});

test('divert with an overflow: nothing is diverted once counting, so the first read diverts a prefix and the second the rest', () => {
  // d floods before the buffer overflows (all its rows diverted in the first read); c floods
  // after it, while the guard only counts: none of its rows leave in the first read.
  const many = [...rows('d', 5), ...rows('a', 3), ...rows('b', 3), ...rows('c', 5)];
  const first = run('divert', many, { buffer: 4 });
  assert.deepEqual(first.published, []);
  assert.deepEqual(first.diverted, ['d:0', 'd:1', 'd:2', 'd:3', 'd:4']);
  assert.deepEqual([...first.replan!.diverted!].map(([k, n]) => [tableOf(k), n]), [['d', 5]]);
  const second = run('divert', many, { buffer: 4, plan: new Map(first.replan!.flooded), diverted: first.replan!.diverted });
  assert.deepEqual(second.diverted, ['c:11', 'c:12', 'c:13', 'c:14', 'c:15']);
  assert.deepEqual(second.published, ['a:5', 'a:6', 'a:7', 'b:8', 'b:9', 'b:10']);
  // Without what the first read diverted (its confirms were not all in), everything again.
  const again = run('divert', many, { buffer: 4, plan: new Map(first.replan!.flooded) });
  assert.deepEqual(again.diverted, ['d:0', 'd:1', 'd:2', 'd:3', 'd:4', 'c:11', 'c:12', 'c:13', 'c:14', 'c:15']);
});

test('divert: a table that floods partway, then the overflow: its rows after the overflow wait for the second read', () => {
  // a floods at its 4th row (3 held + 1 diverted), then c overflows the buffer; a goes on after.
  const many: Row[] = [...rows('a', 4), ...rows('b', 3), ...rows('c', 1), ...rows('a', 2)];
  const first = run('divert', many, { buffer: 3 });
  assert.deepEqual(first.diverted, ['a:0', 'a:1', 'a:2', 'a:3']);
  assert.ok(first.replan);
  const second = run('divert', many, { buffer: 3, plan: new Map(first.replan.flooded), diverted: first.replan.diverted });
  assert.deepEqual(second.diverted, ['a:8', 'a:9']);
  assert.deepEqual(second.published, ['b:4', 'b:5', 'b:6', 'c:7']);
});

test('divert with the marker after an overflow: nothing diverted in the first read, the second sends all in order', () => {
  const many = [...rows('a', 3), ...rows('b', 3), ...rows('c', 2)];
  const first = run('divert', many, { buffer: 4, threshold: 100, markerAt: 7 });
  assert.deepEqual(first.diverted, []);
  const second = run('divert', many, { buffer: 4, threshold: 100, plan: new Map(first.replan!.flooded), diverted: first.replan!.diverted });
  assert.deepEqual([...first.diverted, ...second.diverted], ['a:0', 'a:1', 'a:2', 'b:3', 'b:4', 'b:5', 'c:6', 'c:7']);
});

test('property: with divert, the two reads together divert each flooded row once, each table in commit order', () => {
  // A small deterministic PRNG, so a failure names a reproducible case.
  let state = 12345;
  const rand = (n: number) => {
    // mulberry32
    state = (state + 0x6d2b79f5) | 0;
    let r = Math.imul(state ^ (state >>> 15), 1 | state);
    r = (r + Math.imul(r ^ (r >>> 7), 61 | r)) ^ r;
    return Math.floor((((r ^ (r >>> 14)) >>> 0) / 4294967296) * n);
  };
  const ops: Array<Op | 'truncate'> = ['insert', 'update', 'delete', 'truncate'];
  for (let round = 0; round < 3000; round++) {
    const many: Row[] = Array.from({ length: 1 + rand(30) }, () => ({ table: 'abcd'[rand(4)]!, op: ops[rand(8) === 0 ? 3 : rand(3)]! }));
    const threshold = rand(5);
    const buffer = 1 + rand(8);
    const markerAt = rand(3) === 0 ? rand(many.length) : undefined;
    const opts = { threshold, buffer, markerAt };
    const first = run('divert', many, opts);
    const second = first.replan ? run('divert', many, { ...opts, markerAt: undefined, plan: new Map(first.replan.flooded), diverted: first.replan.diverted }) : null;
    const diverted = [...first.diverted, ...(second?.diverted ?? [])];
    const published = second ? second.published : first.published;
    // The model: which tables flood, from the whole transaction.
    const counts = new Map<string, number>();
    for (const r of many) if (r.op !== 'truncate') counts.set(r.table, (counts.get(r.table) ?? 0) + 1);
    const floods = (t: string) => markerAt !== undefined || (threshold > 0 && (counts.get(t) ?? 0) > threshold);
    const expectDiverted = many.flatMap((r, i) => (r.op !== 'truncate' && floods(r.table) ? [`${r.table}:${i}`] : []));
    const expectPublished = many.flatMap((r, i) => (r.op === 'truncate' || !floods(r.table) ? [`${r.table}:${i}`] : []));
    const ctx = `round ${round}: ${JSON.stringify({ many: many.map((r) => r.table + r.op[0]).join(' '), ...opts })}`;
    for (const t of 'abcd') {
      const mine = (list: string[]) => list.filter((k) => k.startsWith(`${t}:`));
      assert.deepEqual(mine(diverted), mine(expectDiverted), `table ${t} diverted once each, in order; ${ctx}`);
    }
    assert.deepEqual(published, expectPublished, ctx);
  }
});
