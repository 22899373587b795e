#!/usr/bin/env node
/**
 * Demo consumer: prints pgwarren events as they arrive, one line each, and acknowledges them.
 *
 * It does what a real consumer should do with at-least-once delivery: it remembers the ids it has
 * seen (a bounded window here; a real one keeps them with its own data) and skips a message whose
 * event id it already processed, printing it as a duplicate.
 *
 * Settings (environment):
 *   AMQP_URL       broker URL (default amqp://guest:guest@localhost:5672); AMQP_URL_FILE: a file holding it
 *   QUEUE          queue to consume (default pgwarren.demo)
 *   EXCHANGE       when set, declare QUEUE (durable) and bind it to this exchange, which is declared
 *                  durable like pgwarren does; unset, QUEUE must already exist (compose declares it)
 *   EXCHANGE_TYPE  type used to declare EXCHANGE (default topic)
 *   BINDING_KEY    binding key for EXCHANGE (default #: every event)
 *   OUTPUT         text (default) or json: the event itself, one JSON object per line
 *   PREFETCH       unacknowledged messages the broker may send ahead (default 100)
 *
 * Compressed bodies (PGWARREN_COMPRESSION=gzip|br) are decompressed by their contentEncoding.
 *
 * Runs until SIGTERM or SIGINT, then cancels the consumer, closes the connection and exits 0.
 * Usage: node examples/consumer.mjs   (or, in compose, the `consumer` service)
 */
import { readFileSync } from 'node:fs';
import { brotliDecompressSync, gunzipSync } from 'node:zlib';
import amqp from 'amqplib';

const env = process.env;
const fromFile = (name) => (env[`${name}_FILE`] ? readFileSync(env[`${name}_FILE`], 'utf8').trim() : env[name]);
const url = fromFile('AMQP_URL') || 'amqp://guest:guest@localhost:5672';
const queue = env.QUEUE || 'pgwarren.demo';
const exchange = env.EXCHANGE || '';
const output = env.OUTPUT || 'text';
const prefetch = Number(env.PREFETCH || 100);
if (!['text', 'json'].includes(output)) fail(`OUTPUT must be text or json, not ${JSON.stringify(output)}`);

const SEEN_MAX = 100_000;
const seen = new Set();
/** True the first time an id is seen; old ids leave the window first. */
function firstTime(id) {
  if (id === undefined || id === null) return true;
  if (seen.has(id)) return false;
  seen.add(id);
  if (seen.size > SEEN_MAX) seen.delete(seen.values().next().value);
  return true;
}

function fail(message) {
  process.stderr.write(`consumer: ${message}\n`);
  process.exit(1);
}

const redact = (u) => u.replace(/\/\/([^:/@]*):[^@]*@/, '//$1:***@');

/** One human-readable line per event. */
function describe(e) {
  const where = `${e.schema}.${e.table}`;
  if (e.op === 'message') return `${e.id} message ${e.payload?.routing_key ?? e.prefix} ${JSON.stringify(e.payload)}`;
  if (e.op === 'schema') return `${e.id} schema ${where} columns=${e.columns.map((c) => `${c.name}:${c.type}`).join(',')}`;
  if (e.op === 'commit') return `${e.id} commit ${JSON.stringify(e.counts)}`;
  if (e.op === 'bulk') {
    const c = e.counts ?? {};
    return `${e.id} bulk ${where} insert=${c.insert} update=${c.update} delete=${c.delete} reason=${e.reason}`;
  }
  const parts = [e.id, e.op, where];
  if (e.key !== null && e.key !== undefined) parts.push(`key=${JSON.stringify(e.key)}`);
  if (e.op === 'update' && Array.isArray(e.changed)) parts.push(`changed=${e.changed.join(',') || '-'}`);
  if (e.op === 'insert' || e.op === 'update') parts.push(`new=${JSON.stringify(e.new)}`);
  return parts.join(' ');
}

function print(event) {
  if (!firstTime(event.id)) {
    // Already processed: a redelivery after a crash or reconnect. Acknowledge and skip it.
    process.stdout.write(`duplicate ${event.id} skipped\n`);
    return;
  }
  process.stdout.write(`${output === 'json' ? JSON.stringify(event) : describe(event)}\n`);
}

const connection = await amqp.connect(url).catch((err) => fail(`cannot connect to ${redact(url)}: ${err.message}`));
connection.on('error', (err) => process.stderr.write(`consumer: connection error: ${err.message}\n`));
let stopping = false;
connection.on('close', () => {
  if (!stopping) fail('the broker closed the connection');
});
const channel = await connection.createChannel();
channel.on('error', (err) => fail(`channel error: ${err.message}`));
if (exchange) {
  await channel.assertExchange(exchange, env.EXCHANGE_TYPE || 'topic', { durable: true });
  await channel.assertQueue(queue, { durable: true });
  await channel.bindQueue(queue, exchange, env.BINDING_KEY || '#');
} else {
  await channel.checkQueue(queue);
}
await channel.prefetch(prefetch);

const { consumerTag } = await channel.consume(queue, (message) => {
  if (!message) return stopping || fail('the broker cancelled the consumer (queue deleted?)');
  if (stopping) return; // not acknowledged: the broker hands it out again to the next consumer
  let body;
  try {
    // PGWARREN_COMPRESSION: the body is compressed as contentEncoding says (gzip or br).
    const encoding = message.properties.contentEncoding;
    const content = encoding === 'gzip' ? gunzipSync(message.content) : encoding === 'br' ? brotliDecompressSync(message.content) : message.content;
    body = JSON.parse(content.toString('utf8'));
  } catch {
    process.stdout.write(`not JSON: ${message.properties.messageId ?? '(no messageId)'}\n`);
    channel.ack(message);
    return;
  }
  // Batched mode (PGWARREN_BATCH_MAX_EVENTS > 1): one message carries an array of events.
  for (const event of Array.isArray(body) ? body : [body]) print(event);
  channel.ack(message);
});
process.stderr.write(`consumer: consuming from queue ${queue} on ${redact(url)}\n`);

async function stop(signal) {
  if (stopping) return;
  stopping = true;
  process.stderr.write(`consumer: ${signal}, stopping\n`);
  try {
    await channel.cancel(consumerTag);
    await channel.close();
    await connection.close();
  } catch {
    /* already closed */
  }
  process.exit(0);
}
process.on('SIGTERM', () => void stop('SIGTERM'));
process.on('SIGINT', () => void stop('SIGINT'));
