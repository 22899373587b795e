/**
 * Stream side of a test: a unique stream name, a reader that collects a stream (or each partition
 * of a super stream) from its first message, and a cleanup that deletes the streams and the
 * super-stream exchange over AMQP (streams are queues to AMQP).
 */
import assert from 'node:assert/strict';
import amqp from 'amqplib';
import { connect, Offset, type Client } from 'rabbitmq-stream-js-client';
import { installStreamCompat } from '../../src/sink/stream/compat.js';
import { parseLsn } from '../../src/source/lsn.js';
import { createTestDatabase, type TestDatabase } from './pg.js';
import { setupAsOwner } from './daemon.js';
import { testEnv, uniqueName } from './env.js';
import { waitUntil } from './wait.js';

export interface StreamMessage {
  readonly offset: bigint;
  readonly partition: number;
  readonly content: Buffer;
  readonly body: any;
  readonly messageId: string | undefined;
  readonly props: Record<string, string | number>;
}

/** The broker's stream port, next to the AMQP one the tests use. */
export function streamUrl(port = 5552): string {
  const amqpUrl = new URL(testEnv().amqpUrl);
  return `rabbitmq-stream://guest:guest@${amqpUrl.hostname}:${port}/`;
}

export async function streamClient(): Promise<Client> {
  installStreamCompat();
  const u = new URL(testEnv().amqpUrl);
  return connect({
    hostname: u.hostname,
    port: 5552,
    username: 'guest',
    password: 'guest',
    vhost: '/',
    addressResolver: { enabled: true, endpoint: { host: u.hostname, port: 5552 } },
  });
}

export interface TestStream {
  readonly name: string;
  /** Everything in the stream (every partition) from the first offset, as read so far. */
  readonly messages: StreamMessage[];
  /** Start reading (after the daemon declared the streams). */
  read(partitions?: number): Promise<void>;
  waitFor(pred: (all: StreamMessage[]) => boolean, what: () => string, timeoutMs?: number): Promise<void>;
  cleanup(): Promise<void>;
}

export async function createTestStream(prefix: string, partitions = 1): Promise<TestStream> {
  const name = uniqueName(prefix, 'amqp');
  const messages: StreamMessage[] = [];
  let client: Client | null = null;
  const names = partitions > 1 ? Array.from({ length: partitions }, (_, i) => `${name}-${i}`) : [name];
  return {
    name,
    messages,
    async read() {
      client = await streamClient();
      for (let p = 0; p < names.length; p++) {
        await client.declareConsumer({ stream: names[p]!, offset: Offset.first() }, (m) => {
          const text = m.content.toString('utf8');
          let body: unknown;
          try {
            body = JSON.parse(text);
          } catch {
            body = undefined;
          }
          messages.push({
            offset: m.offset ?? -1n,
            partition: p,
            content: m.content,
            body,
            messageId: m.messageProperties?.messageId,
            props: m.applicationProperties ?? {},
          });
        });
      }
    },
    waitFor: (pred, what, timeoutMs = 60_000) => waitUntil(() => pred(messages), { timeoutMs, message: what }),
    async cleanup() {
      await client?.close().catch(() => undefined);
      const model = await amqp.connect(testEnv().amqpUrl);
      model.on('error', () => undefined);
      for (const q of names) {
        const ch = await model.createChannel();
        ch.on('error', () => undefined);
        await ch.deleteQueue(q).catch(() => undefined);
        await ch.close().catch(() => undefined);
      }
      if (partitions > 1) {
        const ch = await model.createChannel();
        ch.on('error', () => undefined);
        await ch.deleteExchange(name).catch(() => undefined);
        await ch.close().catch(() => undefined);
      }
      await model.close();
    },
  };
}

/** The events of stream messages (batches flattened), in stream order. */
export function events(messages: readonly StreamMessage[]): any[] {
  return messages.flatMap((m) => (Array.isArray(m.body) ? m.body : [m.body]));
}

/** A database with an `orders` table, a stream (or super stream) and the daemon's settings, set up as the owner. */
export interface StreamFixture {
  db: TestDatabase;
  stream: TestStream;
  env: Record<string, string>;
  cleanup(): Promise<void>;
}

export async function streamFixture(prefix: string, extraEnv: Record<string, string> = {}, partitions = 1): Promise<StreamFixture> {
  const db = await createTestDatabase(prefix);
  await db.query('CREATE TABLE orders (id int PRIMARY KEY, status text NOT NULL, n int NOT NULL DEFAULT 0)');
  const stream = await createTestStream(prefix, partitions);
  const slot = uniqueName(prefix);
  const env = await setupAsOwner(db, {
    PGWARREN_AMQP_URL: testEnv().amqpUrl,
    PGWARREN_SLOT: slot,
    PGWARREN_PUBLICATION: slot,
    PGWARREN_SINK: 'stream',
    PGWARREN_STREAM_URL: streamUrl(),
    PGWARREN_STREAM: stream.name,
    PGWARREN_STREAM_PARTITIONS: String(partitions),
    PGWARREN_STREAM_MAX_AGE: '1h',
    PGWARREN_RECONNECT_MAX_DELAY: '1',
    ...extraEnv,
  });
  return {
    db,
    stream,
    env,
    async cleanup() {
      await stream.cleanup();
      await db.drop();
    },
  };
}

const order = (e: { tx: { lsn: string; seq: number } }): [bigint, number] => [parseLsn(e.tx.lsn), e.tx.seq];
const before = (a: [bigint, number], b: [bigint, number]) => a[0] < b[0] || (a[0] === b[0] && a[1] < b[1]);

/** Every event once (no id twice), each partition in strictly increasing commit order. */
export function assertExactlyOnceInOrder(messages: readonly StreamMessage[]): any[] {
  const all = events(messages);
  const ids = new Set<string>();
  for (const e of all) {
    assert.ok(!ids.has(e.id), `event ${e.id} is in the stream twice`);
    ids.add(e.id);
  }
  const byPartition = new Map<number, StreamMessage[]>();
  for (const m of messages) byPartition.set(m.partition, [...(byPartition.get(m.partition) ?? []), m]);
  for (const [p, ms] of byPartition) {
    const sorted = [...ms].sort((a, b) => (a.offset < b.offset ? -1 : 1));
    const evs = events(sorted);
    for (let i = 1; i < evs.length; i++) assert.ok(before(order(evs[i - 1]), order(evs[i])), `partition ${p}: ${evs[i - 1].id} before ${evs[i].id}`);
    // The publishing ids the sink stored grow one by one per stream.
    const pids = sorted.map((m) => BigInt(String(m.props['pgwarren-publishing-id'])));
    for (let i = 1; i < pids.length; i++) assert.ok(pids[i]! > pids[i - 1]!, `partition ${p}: publishing ids grow`);
  }
  return all;
}

export const rowsOf = (all: any[]) => new Set(all.filter((e) => e.op === 'insert').map((e) => e.new.id as number));
