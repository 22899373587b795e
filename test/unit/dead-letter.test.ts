/**
 * Dead letters and broker refusals in the pipeline, with a publisher that numbers its messages
 * like the AMQP sink: a change that cannot be published goes to the dead-letter exchange and the
 * changes after it go on; after a nack the next read skips the confirmed prefix of the
 * transaction and publishes one message at a time; a message the broker closed the channel over
 * is dead-lettered, then skipped.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Pipeline, type PipelineDeps } from '../../src/pipeline/pipeline.js';
import { Checkpoint } from '../../src/pipeline/checkpoint.js';
import { DeliveryMemory } from '../../src/pipeline/delivery-memory.js';
import { deadLetterRoutingKey, truncateUtf8 } from '../../src/pipeline/dead-letter.js';
import { EventBuilder } from '../../src/events/envelope.js';
import { Router } from '../../src/events/router.js';
import { OperationSelection, TableSelection } from '../../src/filter/selection.js';
import { Metrics } from '../../src/ops/metrics.js';
import { createLogger } from '../../src/ops/logger.js';
import { NackError, SinkError } from '../../src/sink/amqp-sink.js';
import type { Confirm, Delivery, DeliverySink } from '../../src/sink/sink.js';
import { MessageBuilder } from '../../src/sink/amqp/message.js';
import type { Decoded, RelationInfo, SourceInfo } from '../../src/types.js';
import type { TxPlan } from '../../src/filter/flood-guard.js';

const source: SourceInfo = { name: 'pgwarren', db: 'app', slot: 's', plugin: 'pgoutput' };
const rel = (table: string): RelationInfo => ({
  oid: table.length,
  schema: 'public',
  table,
  replicaIdentity: 'default',
  columns: [
    { name: 'id', typeOid: 23, typeMod: -1, inReplicaIdentity: true },
    { name: 'note', typeOid: 25, typeMod: -1, inReplicaIdentity: false },
  ],
  keyColumns: ['id'],
});
const orders = rel('orders');
const long = rel('t'.repeat(63));

interface Sent {
  exchange: string;
  routingKey: string;
  body: string;
  id: string;
  headers: Record<string, unknown>;
  tag: number;
  confirm: (err: Error | null) => void;
}

const wire = new MessageBuilder();

/** Numbers messages like the AMQP sink: tag = 1, 2, ...; confirms carry tag and id. */
class NumberingPublisher implements DeliverySink {
  sent: Sent[] = [];
  private tag = 0;
  deliver(delivery: Delivery, confirm: Confirm): number {
    // The AMQP message the AMQP sink would publish for it.
    const msg = wire.build(delivery);
    const tag = ++this.tag;
    const id = String(msg.properties.messageId);
    this.sent.push({
      exchange: msg.exchange,
      routingKey: msg.routingKey,
      body: msg.content.toString('utf8'),
      id,
      headers: { ...(msg.properties.headers as Record<string, unknown>) },
      tag,
      confirm: (err) => confirm(err, tag, id),
    });
    return tag;
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

function pipeline(opts: { memory?: DeliveryMemory; routingKey?: string; maxMessageBytes?: number; batch?: { maxEvents: number; maxBytes: number }; plans?: Map<bigint, TxPlan>; metrics?: Metrics } = {}) {
  const publisher = new NumberingPublisher();
  const checkpoint = new Checkpoint(0n);
  const metrics = opts.metrics ?? new Metrics({ processMetrics: false });
  const deps: PipelineDeps = {
    source,
    tables: new TableSelection([], []),
    operations: new OperationSelection(['insert', 'update', 'delete', 'truncate']),
    builder: new EventBuilder(source, { get: () => undefined }),
    prepareRelation: async () => undefined,
    router: new Router({ exchange: 'ex', routingKey: opts.routingKey ?? '{schema}.{table}.{op}' }),
    sink: publisher,
    checkpoint,
    maxInflight: 100,
    metrics,
    log: createLogger('silent'),
    flood: { action: 'pass', exchange: 'ex.bulk', thresholdFor: () => 10_000, bufferEvents: 1000 },
    plans: opts.plans ?? new Map(),
    batch: opts.batch,
    deadLetter: { exchange: 'dead', maxMessageBytes: opts.maxMessageBytes ?? 1 << 20 },
    memory: opts.memory ?? new DeliveryMemory(),
  };
  return { p: new Pipeline(deps), publisher, checkpoint, metrics };
}

function tx(commitLsn: bigint, changes: Array<[RelationInfo, number, string?]>): Decoded[] {
  return [
    { kind: 'begin', xid: 7, commitLsn, commitTime: '2026-11-22T09:23:15.561510Z' },
    ...changes.map(([relation, id, note]): Decoded => ({ kind: 'change', op: 'insert', relation, old: null, oldKind: 'none', new: [String(id), note ?? 'n'] })),
    { kind: 'commit', commitLsn, endLsn: commitLsn + 0x30n },
  ];
}

const rowIds = (sent: Sent[]) => sent.map((m) => JSON.parse(m.body).new?.id);
const counted = async (metrics: Metrics, reason: string) =>
  (await metrics.deadLettered.get()).values.find((v) => v.labels.reason === reason)?.value ?? 0;

test('a routing key over 255 bytes: the event goes to the dead-letter exchange, the next ones go on', async () => {
  const { p, publisher, checkpoint, metrics } = pipeline({ routingKey: '{db}.{schema}.{table}.{table}.{table}.{table}.{op}' });
  await p.handle(tx(0x1000n, [[long, 1], [orders, 2]]));
  assert.equal(publisher.sent.length, 2);
  const [dead, next] = publisher.sent;
  assert.equal(dead!.exchange, 'dead');
  assert.equal(dead!.routingKey, `public.${'t'.repeat(63)}.insert`);
  assert.match(String(dead!.headers['pgwarren-error']), /routing key is \d+ bytes, above the 255/);
  assert.equal(dead!.headers['pgwarren-table'], 't'.repeat(63));
  assert.equal(JSON.parse(dead!.body).new.id, 1, 'the full event: its routing key was the only problem');
  assert.equal(next!.exchange, 'ex');
  assert.equal(JSON.parse(next!.body).new.id, 2);
  assert.equal(checkpoint.safeLsn(), 0n, 'the dead letter is confirmed like any message');
  dead!.confirm(null);
  next!.confirm(null);
  assert.equal(checkpoint.safeLsn(), 0x1030n);
  assert.equal(await counted(metrics, 'routing_key'), 1);
});

test('a body over the max message size (bytes, not characters) is dead-lettered as a stub; batched mode too', async () => {
  // 2000 two-byte characters: 2000 UTF-16 units but 4000 bytes.
  const { p, publisher } = pipeline({ maxMessageBytes: 3000, batch: { maxEvents: 10, maxBytes: 1 << 20 } });
  await p.handle(tx(0x2000n, [[orders, 1], [orders, 2, 'é'.repeat(2000)], [orders, 3], [orders, 4]]));
  const dead = publisher.sent.filter((m) => m.exchange === 'dead');
  assert.equal(dead.length, 1);
  const stub = JSON.parse(dead[0]!.body);
  assert.equal(stub.id, '0/2000:1');
  assert.equal(stub.new, undefined, 'no row values in the stub');
  assert.ok(stub.dead_letter.bytes > 4000);
  assert.match(String(dead[0]!.headers['pgwarren-error']), /above PGWARREN_MAX_MESSAGE_BYTES \(3000\)/);
  assert.equal(dead[0]!.headers['pgwarren-lsn'], '0/2000');
  const normal = publisher.sent.filter((m) => m.exchange === 'ex').flatMap((m) => (JSON.parse(m.body) as any[]).map((e) => e.new.id));
  assert.deepEqual(normal, [1, 3, 4]);
});

test('a batch never outgrows the max message size', async () => {
  const { p, publisher } = pipeline({ maxMessageBytes: 4096, batch: { maxEvents: 1000, maxBytes: 1 << 20 } });
  await p.handle(tx(0x2800n, Array.from({ length: 60 }, (_, i): [RelationInfo, number, string] => [orders, i, 'x'.repeat(200)])));
  for (const m of publisher.sent) assert.ok(Buffer.byteLength(m.body) <= 4096);
  assert.equal(publisher.sent.flatMap((m) => JSON.parse(m.body)).length, 60);
});

test('nack: the next read skips the confirmed prefix and sends one message at a time', async () => {
  const memory = new DeliveryMemory();
  const rows: Array<[RelationInfo, number]> = [1, 2, 3, 4, 5, 6].map((i) => [orders, i]);
  const first = pipeline({ memory });
  await first.p.handle(tx(0x3000n, rows));
  const s = first.publisher.sent;
  // Out of order: slot 1 before slot 0, slot 3 accepted beyond the nacked slot 2.
  s[1]!.confirm(null);
  s[0]!.confirm(null);
  s[3]!.confirm(null);
  const nack = new NackError(s[2]!.id);
  s[2]!.confirm(nack);
  assert.equal(first.p.remember(nack), 'nack');
  assert.deepEqual(memory.prefix(0x3000n, null), { count: 2, lastId: '0/3000:1', plan: null });
  assert.equal(memory.careful(0x3000n), true);

  const second = pipeline({ memory });
  let done = false;
  const handled = Promise.resolve(second.p.handle(tx(0x3000n, rows))).then(() => (done = true));
  await new Promise((r) => setImmediate(r));
  assert.deepEqual(rowIds(second.publisher.sent), [3], 'resumes at the nacked message, one at a time');
  second.publisher.sent[0]!.confirm(null);
  await new Promise((r) => setImmediate(r));
  assert.deepEqual(rowIds(second.publisher.sent), [3, 4]);
  second.publisher.sent[1]!.confirm(null);
  await new Promise((r) => setImmediate(r));
  second.publisher.sent[2]!.confirm(null);
  await new Promise((r) => setImmediate(r));
  second.publisher.sent[3]!.confirm(null);
  await handled;
  assert.equal(done, true);
  assert.deepEqual(rowIds(second.publisher.sent), [3, 4, 5, 6]);
  assert.equal(second.checkpoint.safeLsn(), 0x3030n, 'the skipped prefix counts as confirmed');

  // A transaction past the careful one gets the whole window again.
  const third = pipeline({ memory });
  await third.p.handle(tx(0x4000n, rows));
  assert.equal(third.publisher.sent.length, 6);
  memory.passed(0x3030n);
  assert.equal(memory.prefix(0x3000n, null), null, 'forgotten once the slot passed it');
  assert.equal(memory.careful(0x3000n), false);
});

test('the prefix applies only under the same flood plan, and a re-read that differs is refused', async () => {
  const memory = new DeliveryMemory();
  memory.recordPrefix(0x5000n, null, 2, '0/5000:1');
  const plan: TxPlan = { commitLsn: 0x5000n, flooded: new Map() };
  const replanned = pipeline({ memory, plans: new Map([[0x5000n, plan]]) });
  await replanned.p.handle(tx(0x5000n, [[orders, 1], [orders, 2], [orders, 3]]));
  assert.deepEqual(rowIds(replanned.publisher.sent), [1, 2, 3], 'another plan: everything is sent');

  memory.recordPrefix(0x6000n, null, 2, '0/6000:9');
  const differs = pipeline({ memory });
  await assert.rejects(async () => differs.p.handle(tx(0x6000n, [[orders, 1], [orders, 2], [orders, 3]])), /read differently than before/);
  assert.equal(differs.publisher.sent.length, 0);
  assert.equal(memory.prefix(0x6000n, null), null, 'the prefix is forgotten');
});

test('a message the broker closed the channel over (406) is dead-lettered as a stub, then skipped', async () => {
  const memory = new DeliveryMemory();
  const refused = () => new SinkError('broker channel error', 'transient', { cause: Object.assign(new Error('PRECONDITION_FAILED - message size'), { code: 406, classId: 60, methodId: 40 }) });
  const rows: Array<[RelationInfo, number]> = [1, 2, 3].map((i) => [orders, i]);

  // First session: full window, the 406 cannot be pinned on one message: careful mode only.
  const a = pipeline({ memory });
  await a.p.handle(tx(0x7000n, rows));
  a.publisher.sent[0]!.confirm(null);
  assert.equal(a.p.remember(refused()), 'refused');
  assert.equal(memory.anyRejected(), false);

  // Second session: one at a time; the channel closes with slot 1 the only one unconfirmed.
  const b = pipeline({ memory });
  void b.p.handle(tx(0x7000n, rows));
  await new Promise((r) => setImmediate(r));
  assert.deepEqual(rowIds(b.publisher.sent), [2]);
  assert.equal(b.p.remember(refused()), 'refused');
  assert.equal(memory.rejection('0/7000:1')?.times, 1);

  // Third: slot 1 goes to the dead-letter exchange as a stub.
  const c = pipeline({ memory });
  const cDone = Promise.resolve(c.p.handle(tx(0x7000n, rows)));
  await new Promise((r) => setImmediate(r));
  assert.equal(c.publisher.sent[0]!.exchange, 'dead');
  assert.equal(JSON.parse(c.publisher.sent[0]!.body).dead_letter.truncated, true);
  assert.match(String(c.publisher.sent[0]!.headers['pgwarren-error']), /406/);
  // ... and the broker refuses even the stub.
  assert.equal(c.p.remember(refused()), 'refused');
  assert.equal(memory.rejection('0/7000:1')?.times, 2);
  void cDone.catch(() => undefined);

  // Fourth: skipped, counted; the rest goes on and the transaction settles.
  const metrics = new Metrics({ processMetrics: false });
  const d = pipeline({ memory, metrics });
  const dDone = Promise.resolve(d.p.handle(tx(0x7000n, rows)));
  await new Promise((r) => setImmediate(r));
  assert.deepEqual(rowIds(d.publisher.sent), [3]);
  d.publisher.sent[0]!.confirm(null);
  await dDone;
  assert.equal(d.checkpoint.safeLsn(), 0x7030n);
  assert.equal(await counted(metrics, 'broker_rejected'), 1);
});

test('dead-letter routing keys stay valid', () => {
  assert.equal(deadLetterRoutingKey('s', 't', 'insert'), 's.t.insert');
  const k = deadLetterRoutingKey('é'.repeat(200), 'x', 'insert');
  assert.ok(Buffer.byteLength(k) <= 255);
  assert.equal(truncateUtf8('aé', 2), 'a', 'never splits a character');
});

test('delivery memory: prefixes only grow under one plan, a new plan replaces them, the slot passing forgets', () => {
  const m = new DeliveryMemory();
  const plan = { commitLsn: 0x10n, flooded: new Map() };
  m.recordPrefix(0x10n, null, 5, 'a');
  m.recordPrefix(0x10n, null, 3, 'b');
  assert.deepEqual(m.prefix(0x10n, null), { count: 5, lastId: 'a', plan: null }, 'a shorter prefix never replaces a longer one');
  m.recordPrefix(0x10n, plan, 2, 'c');
  assert.equal(m.prefix(0x10n, null), null, 'a read under another plan replaces it');
  assert.deepEqual(m.prefix(0x10n, plan), { count: 2, lastId: 'c', plan });
  m.recordPrefix(0x20n, null, 0, 'x');
  assert.equal(m.prefix(0x20n, null), null, 'nothing confirmed: nothing to remember');

  m.beCareful(0x30n);
  m.beCareful(0x20n);
  assert.equal(m.careful(0x30n), true, 'careful mode only extends');
  assert.equal(m.careful(0x31n), false);
  m.recordRejection('0/30:1', 0x30n, 'too big');
  assert.equal(m.recordRejection('0/30:1', 0x30n, 'too big').times, 2);

  m.passed(0x30n);
  assert.equal(m.prefix(0x10n, plan), null);
  assert.equal(m.careful(0x30n), true, 'not yet past 0x30');
  assert.equal(m.anyRejected(), true);
  m.passed(0x31n);
  assert.equal(m.careful(0x30n), false);
  assert.equal(m.anyRejected(), false);

  for (let i = 0; i < 300; i++) m.recordPrefix(BigInt(0x1000 + i), null, 1, 'x');
  assert.equal(m.prefix(0x1000n, null), null, 'bounded: the oldest go first');
  assert.notEqual(m.prefix(0x1000n + 299n, null), null);
});
