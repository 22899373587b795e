/**
 * The pure parts of shaping: the where-subset parser and evaluator (SQL three-valued logic, typed
 * comparisons, pgoutput's update rules) and the transform's outcomes.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { FilterSyntaxError, FilterTableError, TableRowFilter, parseFilter, sqlExpressionProblem } from '../../src/filter/row-filter.js';
import { Transformer } from '../../src/pipeline/transform.js';
import { UNCHANGED_TOAST, type RawTuple, type RelationInfo, type RowChange } from '../../src/types.js';
import type { TypeLookup } from '../../src/source/type-catalog.js';
import type { Decoded, SourceInfo } from '../../src/types.js';
import type { Delivery, DeliverySink } from '../../src/sink/sink.js';
import { MessageBuilder } from '../../src/sink/amqp/message.js';
import { Pipeline } from '../../src/pipeline/pipeline.js';
import { Shaper } from '../../src/pipeline/shaping.js';
import { Checkpoint } from '../../src/pipeline/checkpoint.js';
import { EventBuilder } from '../../src/events/envelope.js';
import { Router } from '../../src/events/router.js';
import { OperationSelection, TableSelection } from '../../src/filter/selection.js';
import { Metrics } from '../../src/ops/metrics.js';
import { createLogger } from '../../src/ops/logger.js';

const types: TypeLookup = { get: () => undefined };
const rel = (identity: 'default' | 'full'): RelationInfo => ({
  oid: 1,
  schema: 'public',
  table: 't',
  replicaIdentity: identity,
  keyColumns: ['id'],
  columns: [
    { name: 'id', typeOid: 23, typeMod: -1, inReplicaIdentity: true },
    { name: 'status', typeOid: 25, typeMod: -1, inReplicaIdentity: false },
    { name: 'amount', typeOid: 1700, typeMod: -1, inReplicaIdentity: false },
    { name: 'f', typeOid: 700, typeMod: -1, inReplicaIdentity: false },
    { name: 'ok', typeOid: 16, typeMod: -1, inReplicaIdentity: false },
    { name: 'c', typeOid: 1042, typeMod: -1, inReplicaIdentity: false },
  ],
});
const row = (...v: RawTuple) => v;
const insert = (r: RelationInfo, n: RawTuple): RowChange => ({ kind: 'change', op: 'insert', relation: r, old: null, oldKind: 'none', new: n });
const passes = (where: string, n: RawTuple) => new TableRowFilter(parseFilter(where), rel('full'), types, false).apply(insert(rel('full'), n)) !== null;

test('three-valued logic: NULL comparisons never pass, NOT NULL is NULL, OR/AND short-circuit like SQL', () => {
  const r = row('1', null, '5', null, null, null);
  assert.equal(passes("status = 'x'", r), false);
  assert.equal(passes("NOT (status = 'x')", r), false);
  assert.equal(passes("status = 'x' OR id = 1", r), true);
  assert.equal(passes("status = 'x' AND id = 2", r), false);
  assert.equal(passes('status IS NULL AND amount IS NOT NULL', r), true);
  assert.equal(passes('id NOT IN (2, NULL)', r), false, 'NOT IN with a NULL is never true');
  assert.equal(passes('id IN (1, NULL)', r), true);
});

test('typed comparisons: exact numeric, float4 as Postgres compares it, bool, char(n), code point order', () => {
  const r = row('7', 'b', '12345678901234567890.5', '0.1', 't', 'ab   ');
  assert.equal(passes('amount > 12345678901234567890.4', r), true);
  assert.equal(passes('amount < 12345678901234567890.49', r), false);
  assert.equal(passes("amount = '12345678901234567890.50'", r), true);
  assert.equal(passes('f = 0.1', r), false, 'float4 0.1 is not the double 0.1');
  assert.equal(passes("f = '0.1'", r), true, "a quoted literal takes the column's type");
  assert.equal(passes('ok AND ok = TRUE', r), true);
  assert.equal(passes("c = 'ab'", r), true, 'char(n) ignores trailing spaces');
  assert.equal(passes("status > 'a' AND status < 'ä'", r), true);
  assert.equal(passes('id >= -7.5e0', r), true);
});

test('the subset: what it refuses, with the place', () => {
  assert.throws(() => parseFilter("lower(status) = 'x'"), (e: unknown) => e instanceof FilterSyntaxError && /function calls/.test(e.message));
  assert.throws(() => parseFilter('amount + 1 > 2'), FilterSyntaxError);
  assert.throws(() => parseFilter("status LIKE 'a%'"), FilterSyntaxError);
  assert.throws(() => parseFilter('id = 1 AND'), /at character 11/);
  assert.throws(() => new TableRowFilter(parseFilter('status = 5'), rel('full'), types, false), FilterTableError);
  assert.throws(() => new TableRowFilter(parseFilter('nope = 5'), rel('full'), types, false), /does not exist/);
  assert.throws(() => new TableRowFilter(parseFilter("status = 'x'"), rel('default'), types, true), /not part of its replica identity/);
  assert.equal(sqlExpressionProblem("status <> 'a;b'"), null);
  assert.match(sqlExpressionProblem('true); DROP TABLE t; --')!, /unmatched|one expression/);
  assert.match(sqlExpressionProblem("status = E'\\'' ; DROP TABLE t")!, /escape string/);
  assert.equal(sqlExpressionProblem("name = 'e'"), null, "a column named e, or a string ending in e, is fine");
  assert.equal(sqlExpressionProblem("type = 'x'"), null);
});

test("updates follow pgoutput: in -> insert, out -> delete, both -> update, TOAST filled from the old row", () => {
  const r = rel('full');
  const f = new TableRowFilter(parseFilter("status = 'in'"), r, types, true);
  const upd = (o: RawTuple, n: RawTuple): RowChange => ({ kind: 'change', op: 'update', relation: r, old: o, oldKind: 'full', new: n });
  const moveIn = f.apply(upd(row('1', 'out', null, null, null, null), row('1', 'in', null, null, null, null)))!;
  assert.deepEqual([moveIn.op, moveIn.old, moveIn.oldKind], ['insert', null, 'none']);
  const moveOut = f.apply(upd(row('1', 'in', null, null, null, null), row('1', 'out', null, null, null, null)))!;
  assert.deepEqual([moveOut.op, moveOut.new], ['delete', null]);
  assert.equal(f.apply(upd(row('1', 'out', null, null, null, null), row('1', 'out', null, null, null, null))), null);
  const stays = f.apply(upd(row('1', 'in', 'x', null, null, null), row('1', UNCHANGED_TOAST, '2', null, null, null)))!;
  assert.deepEqual([stays.op, stays.new?.[1]], ['update', 'in']);
  // Default identity, key unchanged (wal2json sends the old key anyway): the new row decides.
  const d = rel('default');
  const g = new TableRowFilter(parseFilter('id > 5'), d, types, true);
  const keyKept: RowChange = { kind: 'change', op: 'update', relation: d, old: row('9', undefined, undefined, undefined, undefined, undefined), oldKind: 'key', new: row('9', 'x', null, null, null, null) };
  assert.equal(g.apply(keyKept), keyKept);
});

test('transform outcomes: event, routing key and headers, drop, throw, bad result, id change, timeout', async () => {
  const body = '{"id":"0/1:0","op":"insert","schema":"public","table":"t","new":{"j":{"big":123456789012345678901234567890,"f":1.50,"z":-0}}}';
  const event = { id: '0/1:0', op: 'insert' as const, schema: 'public', table: 't', body };
  const run = (fn: (e: Record<string, unknown>) => unknown, ms = 50) => new Transformer(fn, ms).apply(event);
  const same = run((e) => e);
  assert.deepEqual(same, { kind: 'event', event }, 'an identity transform keeps the body byte for byte');
  const routed = run((e) => ({ ...e, _routing_key: 'k', _headers: { 'x-a': 1 } }));
  assert.ok(routed && 'kind' in routed && routed.kind === 'event');
  assert.equal(routed.event.ownRoutingKey, 'k');
  assert.deepEqual(routed.event.ownHeaders, { 'x-a': 1 });
  assert.equal(routed.event.body, body);
  assert.deepEqual(run(() => null), { kind: 'drop' });
  assert.match((run(() => { throw new Error('boom'); }) as { error: string }).error, /threw: Error: boom/);
  assert.match((run(() => undefined) as { error: string }).error, /returned undefined/);
  assert.match((run((e) => ({ ...e, id: 'x' })) as { error: string }).error, /changed the event id/);
  assert.match((run((e) => ({ ...e, _headers: { 'pgwarren-op': 'x' } })) as { error: string }).error, /pgwarren-\* headers/);
  assert.match(((await run(() => new Promise(() => undefined), 20)) as { error: string }).error, /did not settle within 20 ms/);
  assert.match(((await run(() => Promise.reject(new Error('no')))) as { error: string }).error, /rejected: Error: no/);
});

// ---- in the pipeline --------------------------------------------------------------------------

const wire = new MessageBuilder();

class Recorder implements DeliverySink {
  sent: Array<{ routingKey: string; body: string; headers: Record<string, unknown> }> = [];
  deliver(delivery: Delivery, confirm: (err: Error | null) => void): void {
    // The AMQP message the AMQP sink would publish for it.
    const msg = wire.build(delivery);
    this.sent.push({ routingKey: msg.routingKey, body: msg.content.toString('utf8'), headers: { ...(msg.properties.headers as Record<string, unknown>) } });
    queueMicrotask(() => confirm(null));
  }
  writable = () => true;
  whenWritable = () => Promise.resolve();
  failureReason = () => null;
}

function shapedPipeline(transform: (e: Record<string, unknown>) => unknown, batch = 1) {
  const source: SourceInfo = { name: 'pgwarren', db: 'app', slot: 's', plugin: 'pgoutput' };
  const publisher = new Recorder();
  const metrics = new Metrics({ processMetrics: false });
  const p = new Pipeline({
    source,
    tables: new TableSelection([], []),
    operations: new OperationSelection(['insert', 'update', 'delete', 'truncate']),
    builder: new EventBuilder(source, types),
    prepareRelation: async () => undefined,
    router: new Router({ exchange: 'ex', routingKey: '{schema}.{table}.{op}' }),
    sink: publisher,
    checkpoint: new Checkpoint(0n),
    maxInflight: 1000,
    metrics,
    log: createLogger('silent'),
    flood: { action: 'summarize', exchange: 'ex.bulk', thresholdFor: () => 10_000, bufferEvents: 1000 },
    plans: new Map(),
    batch: { maxEvents: batch, maxBytes: 1 << 20 },
    shaper: new Shaper({
      rowFilter: () => null,
      identityRule: true,
      skipUnchanged: () => true,
      transformer: new Transformer(transform, 100),
      types,
      prepare: async () => undefined,
    }),
  });
  return { p, publisher, metrics };
}

function inserts(ids: number[]): Decoded[] {
  const r = rel('full');
  const commitLsn = 0x2000n;
  return [
    { kind: 'begin', xid: 9, commitLsn, commitTime: '2026-11-22T09:23:15.561510Z' },
    ...ids.map((id): Decoded => insert(r, row(String(id), 's', '1', '1', 't', 'c'))),
    { kind: 'commit', commitLsn, endLsn: commitLsn + 0x30n },
  ];
}

test('pipeline: a transform that drops or reroutes keeps every other id; a rerouted event travels alone in batched mode', async () => {
  const { p, publisher, metrics } = shapedPipeline((e) => {
    const id = (e.new as { id: number }).id;
    if (id === 2) return null;
    if (id === 3) return { ...e, _routing_key: 'special', _headers: { 'x-k': 'v' } };
    return e;
  }, 10);
  await p.handle(inserts([1, 2, 3, 4, 5]));
  const shape = publisher.sent.map((m) => `${m.routingKey} ${(JSON.parse(m.body) as Array<{ id: string }>).map((e) => e.id).join(',')} batch=${m.headers['pgwarren-batch']}`);
  assert.deepEqual(shape, ['public.t.insert 0/2000:0 batch=1', 'special 0/2000:2 batch=1', 'public.t.insert 0/2000:3,0/2000:4 batch=2']);
  assert.equal(publisher.sent[1]!.headers['x-k'], 'v');
  assert.match(await metrics.registry.metrics(), /pgwarren_events_filtered_total\{reason="transform"\} 1/);
});
