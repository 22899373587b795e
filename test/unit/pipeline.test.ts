/**
 * The pipeline with a recording publisher: message shapes with and without batching, batch
 * boundaries (count, bytes, routing key, commit), checkpoint accounting per message, backpressure.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Pipeline, ReplanRequest, type PipelineDeps } from '../../src/pipeline/pipeline.js';
import type { TxPlan } from '../../src/filter/flood-guard.js';
import { Checkpoint } from '../../src/pipeline/checkpoint.js';
import { EventBuilder } from '../../src/events/envelope.js';
import { Router } from '../../src/events/router.js';
import { OperationSelection, TableSelection } from '../../src/filter/selection.js';
import { Metrics } from '../../src/ops/metrics.js';
import { createLogger } from '../../src/ops/logger.js';
import type { Delivery, DeliverySink } from '../../src/sink/sink.js';
import { MessageBuilder } from '../../src/sink/amqp/message.js';
import type { Decoded, RelationInfo, SourceInfo } from '../../src/types.js';

const source: SourceInfo = { name: 'pgwarren', db: 'app', slot: 's', plugin: 'pgoutput' };
const rel = (table: string, schema = 'public'): RelationInfo => ({
  oid: table.length,
  schema,
  table,
  replicaIdentity: 'default',
  columns: [
    { name: 'id', typeOid: 23, typeMod: -1, inReplicaIdentity: true },
    { name: 'note', typeOid: 25, typeMod: -1, inReplicaIdentity: false },
  ],
  keyColumns: ['id'],
});
const orders = rel('orders');
const items = rel('items');
const extra = rel('extra');

interface Sent {
  exchange: string;
  routingKey: string;
  body: string;
  properties: Record<string, unknown>;
  confirm: (err: Error | null) => void;
}

const wire = new MessageBuilder();

class RecordingPublisher implements DeliverySink {
  sent: Sent[] = [];
  open = true;
  private waiters: Array<() => void> = [];
  deliver(delivery: Delivery, confirm: (err: Error | null) => void): void {
    // The AMQP message the AMQP sink would publish for it.
    const msg = wire.build(delivery);
    // Copy what the contract lets the caller take back after the call.
    this.sent.push({
      exchange: msg.exchange,
      routingKey: msg.routingKey,
      body: msg.content.toString('utf8'),
      properties: structuredClone({ ...msg.properties }) as Record<string, unknown>,
      confirm,
    });
  }
  writable(): boolean {
    return this.open;
  }
  whenWritable(): Promise<void> {
    return this.open ? Promise.resolve() : new Promise((r) => this.waiters.push(r));
  }
  failureReason(): Error | null {
    return null;
  }
  unblock(): void {
    this.open = true;
    for (const w of this.waiters.splice(0)) w();
  }
}

function pipeline(opts: { batch?: { maxEvents: number; maxBytes: number }; maxInflight?: number; action?: 'summarize' | 'pass' | 'divert'; threshold?: number; bufferEvents?: number; plans?: ReadonlyMap<bigint, TxPlan> } = {}) {
  const publisher = new RecordingPublisher();
  const checkpoint = new Checkpoint(0n);
  const deps: PipelineDeps = {
    source,
    tables: new TableSelection([], []),
    operations: new OperationSelection(['insert', 'update', 'delete', 'truncate']),
    builder: new EventBuilder(source, { get: () => undefined }),
    prepareRelation: async () => undefined,
    router: new Router({ exchange: 'ex', routingKey: '{schema}.{table}.{op}' }),
    sink: publisher,
    checkpoint,
    maxInflight: opts.maxInflight ?? 10_000,
    metrics: new Metrics({ processMetrics: false }),
    log: createLogger('silent'),
    flood: { action: opts.action ?? 'summarize', exchange: 'ex.bulk', thresholdFor: () => opts.threshold ?? 10_000, bufferEvents: opts.bufferEvents ?? 1000 },
    plans: opts.plans ?? new Map(),
    batch: opts.batch,
  };
  return { p: new Pipeline(deps), publisher, checkpoint };
}

let lsn = 0x1000n;
function tx(changes: Array<[RelationInfo, number, string?]>, xid = 7): Decoded[] {
  const commitLsn = (lsn += 0x100n);
  return [
    { kind: 'begin', xid, commitLsn, commitTime: '2026-11-22T09:23:15.561510Z' },
    ...changes.map(([relation, id, note]): Decoded => ({ kind: 'change', op: 'insert', relation, old: null, oldKind: 'none', new: [String(id), note ?? 'n'] })),
    { kind: 'commit', commitLsn, endLsn: commitLsn + 0x30n },
  ];
}

test('batch-max-events 1: one plain event per message with exactly the contract properties', async () => {
  const { p, publisher } = pipeline();
  await p.handle(tx([[orders, 1], [orders, 2], [items, 3]]));
  assert.equal(publisher.sent.length, 3);
  const [m] = publisher.sent;
  const event = JSON.parse(m!.body);
  assert.equal(event.id, '0/1100:0');
  assert.equal(m!.routingKey, 'public.orders.insert');
  assert.deepEqual(m!.properties, {
    messageId: '0/1100:0',
    contentType: 'application/json',
    persistent: true,
    timestamp: Math.floor(Date.parse('2026-11-22T09:23:15Z') / 1000),
    type: 'insert',
    appId: 'pgwarren',
    mandatory: true,
    expiration: undefined,
    headers: { 'pgwarren-schema': 'public', 'pgwarren-table': 'orders', 'pgwarren-op': 'insert', 'pgwarren-lsn': '0/1100', 'pgwarren-xid': 7 },
  });
  assert.equal(publisher.sent[2]!.properties.headers && (publisher.sent[2]!.properties.headers as any)['pgwarren-table'], 'items');
});

test('batches: split by count, by routing key and at commit; ids inside stay per event', async () => {
  const { p, publisher, checkpoint } = pipeline({ batch: { maxEvents: 2, maxBytes: 1 << 20 } });
  await p.handle(tx([[orders, 1], [orders, 2], [orders, 3], [items, 4], [orders, 5]]));
  await p.handle(tx([[orders, 6]]));
  const shape = publisher.sent.map((m) => `${m.routingKey}:${(JSON.parse(m.body) as any[]).map((e) => e.new.id).join(',')}`);
  assert.deepEqual(shape, ['public.orders.insert:1,2', 'public.orders.insert:3', 'public.items.insert:4', 'public.orders.insert:5', 'public.orders.insert:6']);
  for (const m of publisher.sent) {
    const events = JSON.parse(m.body) as any[];
    assert.equal((m.properties.headers as any)['pgwarren-batch'], events.length);
    assert.equal(m.properties.messageId, events[0].id);
    for (const e of events) assert.equal(e.id, `${e.tx.lsn}:${e.tx.seq}`);
  }
  // One outstanding message per batch; the slot moves only when all of a transaction's batches are confirmed.
  assert.equal(checkpoint.outstanding(), 5);
  for (const m of publisher.sent.slice(0, 3)) m.confirm(null);
  assert.equal(checkpoint.safeLsn(), 0n, 'the first transaction still has an unconfirmed batch');
  publisher.sent[3]!.confirm(null);
  assert.equal(checkpoint.safeLsn(), lsn - 0x100n + 0x30n);
  publisher.sent[4]!.confirm(null);
  assert.equal(checkpoint.safeLsn(), lsn + 0x30n);
});

test('batches: bounded by bytes; an event larger than the bound travels alone', async () => {
  const { p, publisher } = pipeline({ batch: { maxEvents: 100, maxBytes: 1024 } });
  await p.handle(tx([[orders, 1], [orders, 2], [orders, 3, 'x'.repeat(2000)], [orders, 4], [orders, 5], [orders, 6]]));
  const sizes = publisher.sent.map((m) => (JSON.parse(m.body) as any[]).length);
  assert.equal(sizes.reduce((a, b) => a + b), 6);
  for (const m of publisher.sent) {
    const n = (JSON.parse(m.body) as any[]).length;
    assert.ok(Buffer.byteLength(m.body) <= 1024 || n === 1, `${n} events in ${Buffer.byteLength(m.body)} bytes`);
  }
  assert.deepEqual(JSON.parse(publisher.sent[1]!.body).map((e: any) => e.new.id), [3], 'the big event alone');
  const ids = publisher.sent.flatMap((m) => (JSON.parse(m.body) as any[]).map((e) => e.new.id));
  assert.deepEqual(ids, [1, 2, 3, 4, 5, 6]);
});

test('batches: divert sends the flooded rows, batched, to the flood exchange', async () => {
  const { p, publisher } = pipeline({ batch: { maxEvents: 3, maxBytes: 1 << 20 }, action: 'divert', threshold: 2 });
  await p.handle(tx([[orders, 1], [items, 2], [items, 3], [items, 4], [items, 5], [orders, 6]]));
  const shape = publisher.sent.map((m) => `${m.exchange}:${(JSON.parse(m.body) as any[]).map((e) => e.new.id).join(',')}`);
  assert.deepEqual(shape, ['ex.bulk:2,3,4', 'ex.bulk:5', 'ex:1,6']);
});

test('backpressure: handle waits while the publisher is not writable or the window is full', async () => {
  const { p, publisher } = pipeline({ maxInflight: 2 });
  publisher.open = false;
  let done = false;
  const handled = Promise.resolve(p.handle(tx([[orders, 1], [orders, 2], [orders, 3]], 9))).then(() => (done = true));
  await new Promise((r) => setImmediate(r));
  assert.equal(publisher.sent.length, 0);
  publisher.unblock();
  await new Promise((r) => setImmediate(r));
  assert.equal(publisher.sent.length, 2, 'stops at the inflight limit');
  assert.equal(done, false);
  publisher.sent[0]!.confirm(null);
  await handled;
  assert.equal(publisher.sent.length, 3);
});

for (const maxEvents of [1, 10]) {
  test(`divert + a transaction read twice (batch ${maxEvents}): the first read's diverted rows are sent before the replan, the second read sends the rest, in order`, async () => {
    const plans = new Map<bigint, TxPlan>();
    const batch = { maxEvents, maxBytes: 1 << 20 };
    const first = pipeline({ batch, action: 'divert', threshold: 2, bufferEvents: 3, plans });
    // items floods at its 3rd row (diverted at once), the buffer overflows at extra 2, and
    // orders floods after that, while the guard only counts.
    const changes: Array<[RelationInfo, number]> = [[items, 1], [items, 2], [items, 3], [items, 4], [orders, 1], [orders, 2], [extra, 1], [extra, 2], [orders, 3]];
    const txItems = tx(changes);
    const replan = await Promise.resolve(first.p.handle(txItems)).then(
      () => assert.fail('the transaction outgrew the buffer: a replan was expected'),
      (err: unknown) => err as ReplanRequest,
    );
    assert.ok(replan instanceof ReplanRequest);
    const ids = (sent: Sent[]) => sent.flatMap((m) => [JSON.parse(m.body)].flat().map((e: any) => `${e.table}:${e.new.id}`));
    assert.deepEqual(ids(first.publisher.sent), ['items:1', 'items:2', 'items:3', 'items:4'], 'the diverted prefix was sent before the replan');
    assert.ok(first.publisher.sent.every((m) => m.exchange === 'ex.bulk'));
    // The session drains (every confirm in) and reads the transaction again with the plan.
    for (const m of first.publisher.sent) m.confirm(null);
    assert.equal(first.checkpoint.outstanding(), 0);
    plans.set(replan.plan.commitLsn, replan.plan);
    const second = pipeline({ batch, action: 'divert', threshold: 2, bufferEvents: 3, plans });
    await second.p.handle(txItems);
    const divertedAgain = second.publisher.sent.filter((m) => m.exchange === 'ex.bulk');
    assert.deepEqual(ids(divertedAgain), ['orders:1', 'orders:2', 'orders:3']);
    assert.deepEqual(ids(second.publisher.sent.filter((m) => m.exchange === 'ex')), ['extra:1', 'extra:2']);
  });
}

test('backpressure: reading waits while too many transactions are open in the checkpoint, not only messages', async () => {
  // maxInflight 3 bounds messages and open transactions alike. Each message transaction is
  // followed by one that publishes nothing (another table, as wal2json sends it): the
  // checkpoint cannot merge those away while the transaction before them is unconfirmed.
  const { p, publisher, checkpoint } = pipeline({ maxInflight: 3 });
  await p.handle([...tx([[orders, 1]]), ...tx([])]);
  const more = [...tx([[orders, 2]]), ...tx([]), ...tx([[orders, 3]])];
  let done = false;
  const handled = Promise.resolve(p.handle(more)).then(() => (done = true));
  await new Promise((r) => setImmediate(r));
  assert.equal(checkpoint.outstanding(), 2, 'below the message bound');
  assert.equal(checkpoint.openTransactions(), 3);
  assert.equal(done, false, 'the next transaction waits for a confirm');
  assert.equal(p.waitingOnBroker(), true);
  publisher.sent[0]!.confirm(null);
  await handled;
  assert.equal(publisher.sent.length, 3);
  assert.ok(checkpoint.openTransactions() <= 3);
});

test('tables whose dotted names coincide ("a.b".c, a."b.c") are counted, labelled and summarized apart', async () => {
  const dotted = rel('c', 'a.b');
  const other = rel('b.c', 'a');
  const { p, publisher } = pipeline({ threshold: 3 });
  // Two rows each: neither is over the threshold of 3 (together they would be).
  await p.handle(tx([[dotted, 1], [other, 2], [dotted, 3], [other, 4]]));
  const ids = publisher.sent.map((m) => JSON.parse(m.body)).map((e) => `${e.schema}|${e.table}:${e.new?.id ?? e.op}`);
  assert.deepEqual(ids, ['a.b|c:1', 'a|b.c:2', 'a.b|c:3', 'a|b.c:4'], 'no flood: each table has 2 changes');
  // Both over the threshold: two bulk events with different ids.
  const { p: p2, publisher: pub2 } = pipeline({ threshold: 1 });
  await p2.handle(tx([[dotted, 1], [other, 2], [dotted, 3], [other, 4]]));
  const bulks = pub2.sent.map((m) => JSON.parse(m.body));
  assert.deepEqual(bulks.map((b) => [b.op, b.schema, b.table, b.counts.insert]), [['bulk', 'a.b', 'c', 2], ['bulk', 'a', 'b.c', 2]]);
  assert.notEqual(bulks[0].id, bulks[1].id, 'distinct bulk ids');
  assert.match(bulks[0].id, /:bulk:"a\.b"\.c$/);
  assert.match(bulks[1].id, /:bulk:a\."b\.c"$/);
});
