/**
 * Stream side of a test: a unique stream name, a reader that collects a stream (or each partition
 * of a super stream) from its first message, and a cleanup that deletes the streams and the
 * super-stream exchange over AMQP (streams are queues to AMQP).
 */
import amqp from 'amqplib';
import { connect, Offset, type Client } from 'rabbitmq-stream-js-client';
import { installStreamCompat } from '../../src/sink/stream/compat.js';
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
