/**
 * README "Beyond rows" in the pipeline with a recording publisher: application events (payload checks,
 * seq, routing, holding with the flood guard, batching), schema events (shape memory across
 * sessions, rewinding), commit events.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Pipeline, type PipelineDeps } from '../../src/pipeline/pipeline.js';
import { ShapeMemory } from '../../src/pipeline/shapes.js';
import { Checkpoint } from '../../src/pipeline/checkpoint.js';
import { EventBuilder } from '../../src/events/envelope.js';
import { readAppEvent, messageRoutingKey } from '../../src/events/app-event.js';
import { Router } from '../../src/events/router.js';
import { OperationSelection, TableSelection } from '../../src/filter/selection.js';
import { Metrics } from '../../src/ops/metrics.js';
import { createLogger } from '../../src/ops/logger.js';
import type { Delivery, DeliverySink } from '../../src/sink/sink.js';
import { MessageBuilder } from '../../src/sink/amqp/message.js';
import type { TypeInfo } from '../../src/source/type-catalog.js';
import type { Decoded, RelationInfo, SourceInfo } from '../../src/types.js';

const source: SourceInfo = { name: 'pgwarren', db: 'app', slot: 's', plugin: 'pgoutput' };
const TYPES: Record<number, TypeInfo> = {
  23: { oid: 23, name: 'int4', kind: 'base', category: 'N' },
  25: { oid: 25, name: 'text', kind: 'base', category: 'S' },
  1007: { oid: 1007, name: '_int4', kind: 'array', category: 'A', elementOid: 23 },
};
const types = { get: (oid: number) => TYPES[oid] };

const rel = (table: string, extra: Array<[string, number]> = []): RelationInfo => ({
  oid: 1,
  schema: 'public',
  table,
  replicaIdentity: 'default',
  columns: [
    { name: 'id', typeOid: 23, typeMod: -1, inReplicaIdentity: true },
    { name: 'note', typeOid: 25, typeMod: -1, inReplicaIdentity: false },
    ...extra.map(([name, typeOid]) => ({ name, typeOid, typeMod: -1, inReplicaIdentity: false })),
  ],
  keyColumns: ['id'],
});

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
  deliver(delivery: Delivery, confirm: (err: Error | null) => void): void {
    // The AMQP message the AMQP sink would publish for it.
    const msg = wire.build(delivery);
    this.sent.push({
      exchange: msg.exchange,
      routingKey: msg.routingKey,
      body: msg.content.toString('utf8'),
      properties: structuredClone({ ...msg.properties }) as Record<string, unknown>,
      confirm,
    });
  }
  writable(): boolean {
    return true;
  }
  whenWritable(): Promise<void> {
    return Promise.resolve();
  }
  failureReason(): Error | null {
    return null;
  }
}

function pipeline(
  opts: { batch?: number; action?: 'summarize' | 'pass'; threshold?: number; transactionEvents?: boolean; shapes?: ShapeMemory; operations?: Array<'insert' | 'update' | 'delete' | 'truncate'> } = {},
) {
  const publisher = new RecordingPublisher();
  const deps: PipelineDeps = {
    source,
    tables: new TableSelection([], []),
    operations: new OperationSelection(opts.operations ?? ['insert', 'update', 'delete', 'truncate']),
    builder: new EventBuilder(source, types),
    prepareRelation: async () => undefined,
    router: new Router({ exchange: 'ex', routingKey: '{schema}.{table}.{op}' }),
    sink: publisher,
    checkpoint: new Checkpoint(0n),
    maxInflight: 10_000,
    metrics: new Metrics({ processMetrics: false }),
    log: createLogger('silent'),
    flood: { action: opts.action ?? 'summarize', exchange: 'ex.bulk', thresholdFor: () => opts.threshold ?? 10_000, bufferEvents: 1000 },
    plans: new Map(),
    batch: opts.batch ? { maxEvents: opts.batch, maxBytes: 1 << 20 } : undefined,
    transactionEvents: opts.transactionEvents,
    shapes: opts.shapes,
  };
  return { p: new Pipeline(deps), publisher };
}

type Item = [RelationInfo, number] | { message: string; prefix?: string; transactional?: boolean } | 'marker';

function tx(commitLsn: bigint, items: Item[]): Decoded[] {
  return [
    { kind: 'begin', xid: 7, commitLsn, commitTime: '2026-11-22T09:23:15.561510Z' },
    ...items.map((it): Decoded => {
      if (it === 'marker') return { kind: 'message', transactional: true, prefix: 'pgwarren', content: Buffer.from('bulk') };
      if (!Array.isArray(it)) {
        return { kind: 'message', transactional: it.transactional ?? true, prefix: it.prefix ?? 'pgwarren.event', content: Buffer.from(it.message, 'utf8') };
      }
      const [relation, id] = it;
      return { kind: 'change', op: 'insert', relation, old: null, oldKind: 'none', new: [String(id), 'n', ...relation.columns.slice(2).map(() => '1')] };
    }),
    { kind: 'commit', commitLsn, endLsn: commitLsn + 0x30n },
  ];
}

const summary = (sent: Sent[]) =>
  sent.map((m) => {
    const parsed = JSON.parse(m.body);
    const events: any[] = Array.isArray(parsed) ? parsed : [parsed];
    return `${m.routingKey} ${events.map((e) => e.id).join(',')}`;
  });

test('readAppEvent: the payload as given, whitespace aside; routing_key only when a top-level string', () => {
  const big = '{ "routing_key" : "a.b",\n "n": 123456789012345678901234567890.25, "s": "é\\u00e9 😀", "dup": 1, "dup": 2 }';
  assert.deepEqual(readAppEvent(Buffer.from(big)), {
    ok: true,
    payload: '{"routing_key":"a.b","n":123456789012345678901234567890.25,"s":"é\\u00e9 😀","dup":1,"dup":2}',
    routingKey: 'a.b',
  });
  assert.deepEqual(readAppEvent(Buffer.from('{"routing_key": 5}')), { ok: true, payload: '{"routing_key":5}', routingKey: null });
  assert.deepEqual(readAppEvent(Buffer.from('[{"routing_key": "x"}]')), { ok: true, payload: '[{"routing_key":"x"}]', routingKey: null });
  assert.deepEqual(readAppEvent(Buffer.from(' 42 ')), { ok: true, payload: '42', routingKey: null });
  assert.equal(readAppEvent(Buffer.from('{"a": ')).ok, false);
  assert.equal(readAppEvent(Buffer.from('')).ok, false);
  assert.equal(readAppEvent(Buffer.from([0x22, 0xff, 0x22])).ok, false, 'not UTF-8');
  assert.equal(messageRoutingKey('message.{prefix}.{db}', { db: 'app', prefix: 'pgwarren.event' }), 'message.pgwarren.event.app');
});

test('application events count in seq among row changes; other prefixes and the marker do not', async () => {
  const { p, publisher } = pipeline({ action: 'pass' });
  const orders = rel('orders');
  await p.handle(tx(0x1000n, [[orders, 1], { message: '{"routing_key":"checkout.completed","x":1}' }, { message: 'not for us', prefix: 'other' }, [orders, 2], { message: '{"x":2}' }]));
  assert.deepEqual(summary(publisher.sent), [
    'public.orders.insert 0/1000:0',
    'checkout.completed 0/1000:1',
    'public.orders.insert 0/1000:2',
    'message.pgwarren.event 0/1000:3',
  ]);
  const event = JSON.parse(publisher.sent[1]!.body);
  assert.deepEqual(event.payload, { routing_key: 'checkout.completed', x: 1 });
  assert.equal(event.prefix, 'pgwarren.event');
  assert.equal(publisher.sent[1]!.properties.type, 'message');
  assert.deepEqual(publisher.sent[1]!.properties.headers, { 'pgwarren-schema': '', 'pgwarren-table': 'pgwarren.event', 'pgwarren-op': 'message', 'pgwarren-lsn': '0/1000', 'pgwarren-xid': 7 });
});

test('a non-transactional application event is ignored, outside or inside a transaction', async () => {
  const { p, publisher } = pipeline();
  await p.handle([{ kind: 'message', transactional: false, prefix: 'pgwarren.event', content: Buffer.from('{}') }]);
  await p.handle(tx(0x2000n, [{ message: '{}', transactional: false }, [rel('orders'), 1]]));
  assert.deepEqual(summary(publisher.sent), ['public.orders.insert 0/2000:0']);
});

test('a message is never a flood: held in its place while rows flood, published before the bulk event', async () => {
  const { p, publisher } = pipeline({ threshold: 2, transactionEvents: true });
  const orders = rel('orders');
  await p.handle(tx(0x3000n, [[orders, 1], { message: '{"routing_key":"k"}' }, [orders, 2], [orders, 3]]));
  assert.deepEqual(summary(publisher.sent), ['k 0/3000:1', 'public.orders.bulk 0/3000:bulk:public.orders', 'pgwarren.tx.commit 0/3000:commit']);
  assert.deepEqual(JSON.parse(publisher.sent[2]!.body).counts, { 'pgwarren.event': { message: 1 }, 'public.orders': { bulk: 1 } });
  // The marker floods the rows, not the message, and takes no seq.
  publisher.sent = [];
  await p.handle(tx(0x4000n, [{ message: '{"routing_key":"k"}' }, 'marker', [orders, 1]]));
  assert.deepEqual(summary(publisher.sent), ['k 0/4000:0', 'public.orders.bulk 0/4000:bulk:public.orders', 'pgwarren.tx.commit 0/4000:commit']);
  assert.equal(JSON.parse(publisher.sent[1]!.body).tx.seq, 1);
});

test('batching never mixes kinds: application events batch only with each other', async () => {
  const { p, publisher } = pipeline({ batch: 10, action: 'pass', transactionEvents: true });
  const orders = rel('orders');
  await p.handle(tx(0x5000n, [[orders, 1], { message: '{"routing_key":"k"}' }, { message: '{"routing_key":"k"}' }, [orders, 2], [orders, 3]]));
  assert.deepEqual(summary(publisher.sent), [
    'public.orders.insert 0/5000:0',
    'k 0/5000:1,0/5000:2',
    'public.orders.insert 0/5000:3,0/5000:4',
    'pgwarren.tx.commit 0/5000:commit',
  ]);
  assert.deepEqual(JSON.parse(publisher.sent[3]!.body)[0].counts, { 'public.orders': { insert: 3 }, 'pgwarren.event': { message: 2 } });
});

test('commit events: only for transactions that published something; off by default', async () => {
  const on = pipeline({ transactionEvents: true, operations: ['update'] });
  await on.p.handle(tx(0x6000n, [[rel('orders'), 1]])); // the insert is filtered out: nothing published
  assert.deepEqual(summary(on.publisher.sent), []);
  const off = pipeline();
  await off.p.handle(tx(0x6100n, [[rel('orders'), 1]]));
  assert.deepEqual(summary(off.publisher.sent), ['public.orders.insert 0/6100:0']);
});

test('schema events: before the first row of a new shape, no seq of their own; the first sight is a baseline', async () => {
  const shapes = new ShapeMemory();
  const { p, publisher } = pipeline({ shapes, operations: ['update'] });
  const v1 = rel('orders');
  const v2 = rel('orders', [['tags', 1007]]);
  await p.handle(tx(0x7000n, [[v1, 1]]));
  // An included table's schema event is published even when the row itself is filtered out.
  await p.handle(tx(0x7100n, [[v1, 2], [v2, 3], [v2, 4]]));
  assert.deepEqual(summary(publisher.sent), ['public.orders.schema 0/7100:1:schema']);
  const event = JSON.parse(publisher.sent[0]!.body);
  assert.deepEqual(event.columns, [
    { name: 'id', type: 'int4', key: true },
    { name: 'note', type: 'text', key: false },
    { name: 'tags', type: 'int4[]', key: false },
  ]);
  assert.deepEqual(event.previous, event.columns.slice(0, 2));
  assert.equal(event.tx.seq, 1);
  assert.equal(publisher.sent[0]!.properties.type, 'schema');

  // A new session re-reads the transaction (not acknowledged): the same schema event again.
  shapes.rewind(0x7000n + 0x30n - 1n);
  const again = pipeline({ shapes, operations: ['update'] });
  await again.p.handle(tx(0x7100n, [[rel('orders'), 2], [rel('orders', [['tags', 1007]]), 3]]));
  assert.deepEqual(
    again.publisher.sent.map((m) => m.body),
    [publisher.sent[0]!.body],
  );
  // Without the rewind the shape is already known: nothing (this is why sessions rewind).
  const stale = pipeline({ shapes, operations: ['update'] });
  await stale.p.handle(tx(0x7100n, [[rel('orders', [['tags', 1007]]), 3]]));
  assert.deepEqual(stale.publisher.sent, []);
});

test('an application event that cannot be published is dead-lettered in its place, never fatal', async () => {
  const { p, publisher } = pipeline({ action: 'pass' });
  const orders = rel('orders');
  const longKey = 'k'.repeat(300);
  await p.handle(tx(0x8000n, [[orders, 1], { message: '{"broken": ' }, { message: `{"routing_key":"${longKey}"}` }, [orders, 2]]));
  assert.deepEqual(
    publisher.sent.map((m) => `${m.exchange} ${m.routingKey} ${m.properties.messageId}`),
    ['ex public.orders.insert 0/8000:0', 'pgwarren.dead pgwarren.event.message 0/8000:1', 'pgwarren.dead pgwarren.event.message 0/8000:2', 'ex public.orders.insert 0/8000:3'],
  );
  const malformed = publisher.sent[1]!;
  assert.match(String((malformed.properties.headers as Record<string, unknown>)['pgwarren-error']), /not JSON/);
  assert.equal(JSON.parse(malformed.body).payload_text, '{"broken": ');
  assert.match(String((publisher.sent[2]!.properties.headers as Record<string, unknown>)['pgwarren-error']), /routing key is 300 bytes/);
});

test('a malformed application event keeps its place while the flood guard holds the transaction', async () => {
  const { p, publisher } = pipeline(); // summarize: events are held until commit
  const orders = rel('orders');
  await p.handle(tx(0x9000n, [[orders, 1], { message: 'nope' }, [orders, 2]]));
  assert.deepEqual(
    publisher.sent.map((m) => `${m.exchange} ${m.properties.messageId}`),
    ['ex 0/9000:0', 'pgwarren.dead 0/9000:1', 'ex 0/9000:2'],
  );
});
