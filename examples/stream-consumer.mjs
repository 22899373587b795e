#!/usr/bin/env node
/**
 * Demo stream consumer (README "Replay with streams"): reads pgwarren events from a RabbitMQ
 * stream with a named consumer whose position the broker keeps. Started again, it resumes after
 * the last offset it stored; it can also start from the first message, a point in time or an offset.
 *
 * Settings (environment):
 *   STREAM_URL   rabbitmq-stream://user:password@host:5552/vhost (default guest@localhost);
 *                STREAM_URL_FILE: a file holding it
 *   STREAM       stream name (default pgwarren); with PARTITIONS > 1, the super stream
 *   PARTITIONS   partitions of the super stream (default 1): reads <STREAM>-0 .. <STREAM>-N-1
 *   CONSUMER     the consumer's name: its offset is stored on the server under it (default demo)
 *   START        where to start when the server has no offset for CONSUMER, or with RESET=1:
 *                first (default), last, next, an offset number, or an ISO time (2026-11-22T09:00:00Z)
 *   RESET        1: ignore the stored offset and start at START
 *   OUTPUT       text (default) or json (the event, one JSON object per line; batches flattened)
 *   STORE_EVERY  store the offset every N messages (default 100), and always on shutdown
 *   EXIT_AFTER   exit 0 after printing this many events (default: run until SIGTERM/SIGINT)
 *
 * Usage: node examples/stream-consumer.mjs   (or, in compose, the `stream-consumer` service)
 */
import { readFileSync } from 'node:fs';
import { brotliDecompressSync, gunzipSync } from 'node:zlib';
import { connect, Offset } from 'rabbitmq-stream-js-client';

const env = process.env;
const fromFile = (name) => (env[`${name}_FILE`] ? readFileSync(env[`${name}_FILE`], 'utf8').trim() : env[name]);
const url = new URL(fromFile('STREAM_URL') || 'rabbitmq-stream://guest:guest@localhost:5552/');
const stream = env.STREAM || 'pgwarren';
const partitions = Number(env.PARTITIONS || 1);
const name = env.CONSUMER || 'demo';
const start = env.START || 'first';
const output = env.OUTPUT || 'text';
const storeEvery = Number(env.STORE_EVERY || 100);
const exitAfter = env.EXIT_AFTER ? Number(env.EXIT_AFTER) : Infinity;
if (!['text', 'json'].includes(output)) fail(`OUTPUT must be text or json, not ${JSON.stringify(output)}`);

function fail(message) {
  process.stderr.write(`stream-consumer: ${message}\n`);
  process.exit(1);
}

/** START as a client Offset. */
function startOffset(text) {
  if (text === 'first') return Offset.first();
  if (text === 'last') return Offset.last();
  if (text === 'next') return Offset.next();
  if (/^\d+$/.test(text)) return Offset.offset(BigInt(text));
  const t = Date.parse(text);
  if (Number.isNaN(t)) fail(`START must be first, last, next, an offset or an ISO time, not ${JSON.stringify(text)}`);
  return Offset.timestamp(new Date(t));
}

// RabbitMQ 3.9/3.10 only: the client's first request on every connection is one those brokers
// answer by closing it. pgwarren's image ships the workaround; elsewhere use RabbitMQ 3.11+.
try {
  const compat = await import('../dist/sink/stream/compat.js');
  compat.installStreamCompat();
} catch {
  /* not next to a pgwarren build: fine on RabbitMQ 3.11 and later */
}

const host = url.hostname;
const port = Number(url.port || 5552);
const client = await connect({
  hostname: host,
  port,
  username: decodeURIComponent(url.username || 'guest'),
  password: decodeURIComponent(url.password || 'guest'),
  vhost: decodeURIComponent(url.pathname.slice(1)) || '/',
  // Connect through STREAM_URL's host even when the broker advertises another name (Docker, proxies).
  addressResolver: { enabled: true, endpoint: { host, port } },
}).catch((err) => fail(`cannot connect to ${url.host}: ${err.message} (is the stream plugin enabled? rabbitmq-plugins enable rabbitmq_stream)`));

const names = partitions > 1 ? Array.from({ length: partitions }, (_, i) => `${stream}-${i}`) : [stream];
/** Each consumer and the offset of the last message it handled (undefined: none yet). */
const consumers = [];
let printed = 0;
let stopping = false;

for (const s of names) {
  let offset = startOffset(start);
  let from = start;
  if (env.RESET !== '1') {
    // The server keeps the last offset this consumer stored; resume right after it.
    const stored = await client.queryOffset({ reference: name, stream: s }).catch(() => null);
    if (stored !== null) {
      offset = Offset.offset(stored + 1n);
      from = `stored offset ${stored} + 1`;
    }
  }
  process.stderr.write(`stream-consumer: ${name} reads ${s} from ${from}\n`);
  let sinceStore = 0;
  const entry = { consumer: null, last: undefined };
  const consumer = await client.declareConsumer({ stream: s, consumerRef: name, offset }, async (message) => {
    if (stopping || printed >= exitAfter) return;
    entry.last = message.offset;
    // PGWARREN_COMPRESSION: the body is compressed as the message's content-encoding says.
    const encoding = message.messageProperties?.contentEncoding;
    const content = encoding === 'gzip' ? gunzipSync(message.content) : encoding === 'br' ? brotliDecompressSync(message.content) : message.content;
    const text = content.toString('utf8');
    const body = JSON.parse(text);
    for (const event of Array.isArray(body) ? body : [body]) {
      if (printed >= exitAfter) break;
      print(event, s, message.offset);
      printed++;
    }
    // Deliveries may start before declareConsumer resolves: those are stored later (or at stop).
    if (++sinceStore >= storeEvery && entry.consumer) {
      sinceStore = 0;
      await entry.consumer.storeOffset(message.offset);
    }
    if (printed >= exitAfter) setImmediate(() => void stop(0));
  });
  entry.consumer = consumer;
  consumers.push(entry);
}

function print(event, s, offset) {
  if (output === 'json') {
    process.stdout.write(JSON.stringify(event) + '\n');
    return;
  }
  const key = event.key ? JSON.stringify(event.key) : '';
  process.stdout.write(`${s}@${offset} ${event.tx?.commit_time ?? ''} ${event.op} ${event.schema}.${event.table} ${key} ${event.id}\n`);
}

async function stop(code) {
  if (stopping) return;
  stopping = true;
  // Store where each consumer got to, so the next start resumes there.
  for (const c of consumers) if (c.last !== undefined && c.consumer) await c.consumer.storeOffset(c.last).catch(() => undefined);
  await client.close().catch(() => undefined);
  process.exit(code);
}

process.on('SIGTERM', () => void stop(0));
process.on('SIGINT', () => void stop(0));
