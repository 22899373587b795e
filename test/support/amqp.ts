/**
 * Broker side of a test: a unique exchange name (declared by the daemon, or by the test), queues
 * that collect what arrives, and a cleanup that deletes everything the test made or named.
 */
import { execFileSync } from 'node:child_process';
import amqp, { type Channel, type ChannelModel, type ConsumeMessage } from 'amqplib';
import { deadLetterExchangeOf, testEnv, uniqueName } from './env.js';
import { waitUntil } from './wait.js';

export interface Received {
  readonly content: Buffer;
  /** JSON.parse of the content; undefined when it is not JSON. */
  readonly body: any;
  readonly fields: ConsumeMessage['fields'];
  readonly properties: ConsumeMessage['properties'];
}

export interface Collector {
  readonly queue: string;
  /** Every message so far, in arrival order (consumed with noAck). */
  readonly messages: Received[];
  bodies(): any[];
  /** Resolves once at least `n` messages arrived; rejects naming how many did. */
  waitForCount(n: number, timeoutMs?: number): Promise<void>;
}

export interface TestBroker {
  /** A unique exchange name, not declared: the daemon declares it. Deleted at cleanup. */
  readonly exchange: string;
  /** A channel for the test's own publishing or checks. */
  readonly channel: Channel;
  /** Declare an exchange the way the daemon does (durable), and delete it at cleanup. */
  declareExchange(name: string, type?: string): Promise<void>;
  /** A fresh non-durable queue bound to `exchange` with `pattern`, collecting every message. */
  bindQueue(pattern?: string, exchange?: string): Promise<Collector>;
  /** Delete this exchange at cleanup too (one the daemon declared). */
  track(exchange: string): void;
  cleanup(): Promise<void>;
}

/** Settles within `ms` whatever `op` does; its outcome is ignored. */
async function within(op: Promise<unknown>, ms: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([op.catch(() => undefined), new Promise<void>((r) => (timer = setTimeout(r, ms)))]);
  clearTimeout(timer);
}

async function openChannel(model: ChannelModel): Promise<Channel> {
  const ch = await model.createChannel();
  // A 404 or 406 closes the channel with an 'error' event; unhandled, it would kill the test process.
  ch.on('error', () => undefined);
  return ch;
}

export async function createTestBroker(prefix: string): Promise<TestBroker> {
  const model = await amqp.connect(testEnv().amqpUrl);
  model.on('error', () => undefined);
  const channel = await openChannel(model);
  const exchange = uniqueName(prefix, 'amqp');
  const exchanges = new Set<string>([exchange]);
  const queues: string[] = [];
  // Each collector consumes on its own channel, so a channel error elsewhere cannot silence it.
  const consumerChannels: Channel[] = [];

  return {
    exchange,
    channel,
    async declareExchange(name, type = 'topic') {
      exchanges.add(name);
      await channel.assertExchange(name, type, { durable: true });
    },
    async bindQueue(pattern = '#', ex = exchange) {
      const queue = uniqueName(`${prefix}-q`, 'amqp');
      const ch = await openChannel(model);
      consumerChannels.push(ch);
      queues.push(queue);
      await ch.assertQueue(queue, { durable: false, exclusive: false, autoDelete: false });
      await ch.bindQueue(queue, ex, pattern);
      const messages: Received[] = [];
      await ch.consume(
        queue,
        (m) => {
          if (!m) return;
          let body: unknown;
          try {
            body = JSON.parse(m.content.toString('utf8'));
          } catch {
            body = undefined;
          }
          messages.push({ content: m.content, body, fields: m.fields, properties: m.properties });
        },
        { noAck: true },
      );
      return {
        queue,
        messages,
        bodies: () => messages.map((m) => m.body),
        waitForCount: (n, timeoutMs = 15_000) =>
          waitUntil(() => messages.length >= n, { timeoutMs, message: () => `only ${messages.length} of ${n} messages arrived on ${queue}` }),
      };
    },
    track(name) {
      exchanges.add(name);
    },
    async cleanup() {
      // Bounded: a close on a connection the broker dropped (a restart) may never be answered.
      for (const ch of consumerChannels) await within(ch.close(), 5_000);
      await within(model.close(), 5_000);
      // Deletes go over a fresh connection and a fresh channel each: the test's own may be dead, and
      // a failed delete closes its channel. Deleting what does not exist is not an error in RabbitMQ.
      const admin = await amqp.connect(testEnv().amqpUrl, { timeout: 10_000 });
      admin.on('error', () => undefined);
      const failures: string[] = [];
      const del = async (what: string, op: (ch: Channel) => Promise<unknown>) => {
        try {
          const ch = await openChannel(admin);
          await op(ch);
          await ch.close();
        } catch (err) {
          failures.push(`${what}: ${(err as Error).message}`);
        }
      };
      for (const q of queues) await del(`queue ${q}`, (ch) => ch.deleteQueue(q));
      for (const e of exchanges) {
        await del(`exchange ${e}`, (ch) => ch.deleteExchange(e));
        // The daemons' dead-letter exchange for it (support/daemon.ts), whether or not one declared it.
        await del(`exchange ${deadLetterExchangeOf(e)}`, (ch) => ch.deleteExchange(deadLetterExchangeOf(e)));
      }
      await within(admin.close(), 5_000);
      if (failures.length > 0) throw new Error(`broker cleanup failed: ${failures.join('; ')}`);
    },
  };
}

/** rabbitmqctl on this machine's broker (tests that change the whole broker run alone, see docs/architecture.md). */
export function rabbitmqctl(args: string[], timeoutMs = 120_000): string {
  return execFileSync('rabbitmqctl', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: timeoutMs });
}
