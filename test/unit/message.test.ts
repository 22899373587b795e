/**
 * sink/amqp/message.ts: deliveries as AMQP messages (README "Events"): the properties and headers of
 * events, batches, transformed events, snapshot reads and dead letters, and compression.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { gunzipSync } from 'node:zlib';
import { MessageBuilder } from '../../src/sink/amqp/message.js';
import { bodyEncoder } from '../../src/sink/compression.js';
import type { DeadLetterDelivery, DeliveryRoute, EventDelivery, TxRef } from '../../src/sink/sink.js';

const tx: TxRef = { commitLsn: 0x1100n, lsn: '0/1100', xid: 7 };
const route: DeliveryRoute = { schema: 'public', table: 'orders', op: 'insert', expiration: undefined };
const one = (over: Partial<EventDelivery> = {}): EventDelivery => ({
  kind: 'events',
  tx,
  timestampSeconds: 1_700_000_000,
  route,
  exchange: 'ex',
  routingKey: 'public.orders.insert',
  ids: ['0/1100:0'],
  bodies: ['{"id":"0/1100:0"}'],
  batch: false,
  ...over,
});

test('one event: the contract properties and headers, the body as it is', () => {
  const msg = new MessageBuilder().build(one());
  assert.equal(msg.exchange, 'ex');
  assert.equal(msg.routingKey, 'public.orders.insert');
  assert.equal(msg.content.toString('utf8'), '{"id":"0/1100:0"}');
  assert.deepEqual(msg.properties, {
    messageId: '0/1100:0',
    contentType: 'application/json',
    persistent: true,
    timestamp: 1_700_000_000,
    type: 'insert',
    appId: 'pgwarren',
    mandatory: true,
    expiration: undefined,
    headers: { 'pgwarren-schema': 'public', 'pgwarren-table': 'orders', 'pgwarren-op': 'insert', 'pgwarren-lsn': '0/1100', 'pgwarren-xid': 7 },
  });
});

test('the headers object is shared by one route in one transaction, not across them', () => {
  const b = new MessageBuilder();
  const h1 = b.build(one()).properties.headers;
  assert.equal(b.build(one({ ids: ['0/1100:1'] })).properties.headers, h1);
  assert.notEqual(b.build(one({ tx: { ...tx } })).properties.headers, h1);
});

test('a batch: a JSON array with its count, the first id; own headers go first', () => {
  const b = new MessageBuilder();
  const batch = b.build(one({ ids: ['a', 'b'], bodies: ['{"n":1}', '{"n":2}'], batch: true }));
  assert.equal(batch.content.toString('utf8'), '[{"n":1},{"n":2}]');
  assert.equal(batch.properties.messageId, 'a');
  assert.equal(batch.properties.headers!['pgwarren-batch'], 2);
  const own = b.build(one({ batch: true, ownHeaders: { 'x-a': 1 } }));
  assert.equal(own.content.toString('utf8'), '[{"id":"0/1100:0"}]');
  assert.deepEqual(Object.keys(own.properties.headers!), ['x-a', 'pgwarren-schema', 'pgwarren-table', 'pgwarren-op', 'pgwarren-lsn', 'pgwarren-xid', 'pgwarren-batch']);
});

test('a snapshot read (no transaction): no LSN or xid header; compressed like any event', () => {
  const msg = new MessageBuilder(bodyEncoder('gzip')).build(one({ tx: null, route: { ...route, op: 'read' } }));
  assert.deepEqual(msg.properties.headers, { 'pgwarren-schema': 'public', 'pgwarren-table': 'orders', 'pgwarren-op': 'read' });
  assert.equal(msg.properties.contentEncoding, 'gzip');
  assert.equal(gunzipSync(msg.content).toString('utf8'), '{"id":"0/1100:0"}');
});

test('a dead letter: pgwarren-error, no expiry, never compressed; a refused batch as an array of stubs', () => {
  const d: DeadLetterDelivery = {
    kind: 'dead-letter',
    tx,
    timestampSeconds: 1,
    exchange: 'dead',
    routingKey: 'public.orders.insert',
    id: 'a',
    schema: 'public',
    table: 'orders',
    op: 'insert',
    error: 'too big',
    bodies: ['{"id":"a"}'],
    batch: false,
  };
  const b = new MessageBuilder(bodyEncoder('br'));
  const msg = b.build(d);
  assert.equal(msg.content.toString('utf8'), '{"id":"a"}');
  assert.deepEqual(msg.properties, {
    messageId: 'a',
    contentType: 'application/json',
    persistent: true,
    timestamp: 1,
    type: 'insert',
    appId: 'pgwarren',
    mandatory: true,
    headers: { 'pgwarren-schema': 'public', 'pgwarren-table': 'orders', 'pgwarren-op': 'insert', 'pgwarren-lsn': '0/1100', 'pgwarren-xid': 7, 'pgwarren-error': 'too big' },
  });
  const batch = b.build({ ...d, bodies: ['{"id":"a"}', '{"id":"b"}'], batch: true });
  assert.equal(batch.content.toString('utf8'), '[{"id":"a"},{"id":"b"}]');
  assert.equal(batch.properties.headers!['pgwarren-batch'], 2);
});
