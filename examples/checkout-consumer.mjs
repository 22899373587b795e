#!/usr/bin/env node
/**
 * A business-event consumer: subscribes to application events by topic pattern (default
 * `checkout.*`) and knows nothing about tables. Whatever transaction published them with
 * pg_logical_emit_message(true, 'pgwarren.event', '{"routing_key": "checkout.completed", ...}')
 * (README "Application events"; the demo load generator does it for every new order), this prints
 * one line per event, `<routing key> <event id> <payload>`, and acknowledges it.
 *
 * As any pgwarren consumer it skips a redelivered event by its id (a bounded window here).
 *
 * Settings (environment):
 *   AMQP_URL     broker URL (default amqp://guest:guest@localhost:5672); AMQP_URL_FILE: a file holding it
 *   EXCHANGE     the exchange pgwarren publishes to (default pgwarren), declared durable topic like pgwarren does
 *   BINDING_KEY  topic pattern (default checkout.*)
 *   QUEUE        durable queue to declare and bind; unset: a private queue that goes away with the consumer
 *
 * Runs until SIGTERM or SIGINT, then closes the connection and exits 0.
 * Usage: BINDING_KEY='checkout.*' node examples/checkout-consumer.mjs
 */
import { readFileSync } from 'node:fs';
import amqp from 'amqplib';

const env = process.env;
const url = (env.AMQP_URL_FILE ? readFileSync(env.AMQP_URL_FILE, 'utf8').trim() : env.AMQP_URL) || 'amqp://guest:guest@localhost:5672';
const exchange = env.EXCHANGE || 'pgwarren';
const bindingKey = env.BINDING_KEY || 'checkout.*';

const connection = await amqp.connect(url).catch((err) => {
  process.stderr.write(`checkout-consumer: cannot connect: ${err.message}\n`);
  process.exit(1);
});
let stopping = false;
connection.on('error', (err) => process.stderr.write(`checkout-consumer: connection error: ${err.message}\n`));
connection.on('close', () => {
  if (stopping) return;
  process.stderr.write('checkout-consumer: the broker closed the connection\n');
  process.exit(1);
});
const channel = await connection.createChannel();
await channel.assertExchange(exchange, 'topic', { durable: true });
const { queue } = env.QUEUE ? await channel.assertQueue(env.QUEUE, { durable: true }) : await channel.assertQueue('', { exclusive: true });
await channel.bindQueue(queue, exchange, bindingKey);

const seen = new Set();
await channel.consume(queue, (message) => {
  if (!message) return;
  const id = message.properties.messageId;
  if (seen.has(id)) {
    process.stdout.write(`duplicate ${id} skipped\n`);
  } else {
    seen.add(id);
    if (seen.size > 100_000) seen.delete(seen.values().next().value);
    // The body is the §12 event; keep its payload as text to keep every digit of big numbers.
    const body = message.content.toString('utf8');
    const payload = body.slice(body.indexOf('"payload":') + '"payload":'.length, body.lastIndexOf(',"tx":'));
    process.stdout.write(`${message.fields.routingKey} ${id} ${payload}\n`);
  }
  channel.ack(message);
});
process.stderr.write(`checkout-consumer: ${bindingKey} on exchange ${exchange}, queue ${queue}\n`);

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, async () => {
    stopping = true;
    await connection.close().catch(() => undefined);
    process.exit(0);
  });
}
