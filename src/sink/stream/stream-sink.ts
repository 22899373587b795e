/**
 * The RabbitMQ Streams sink (README "Replay with streams"): every event lands in the stream
 * exactly once, in commit order, whatever crashes in between.
 *
 * States: connecting (declare streams [and the super-stream topology], declare one named producer
 * per stream, learn where each stream ends) -> open -> failed/closed. Like the AMQP sink it never
 * buffers or republishes; any failure ends the session and the next one re-reads the slot from
 * its confirmed position (which only ever moves past what the broker confirmed).
 *
 * Exactly once. Publishing ids simply count up per producer: on every connect the sink queries
 * the producer's last publishing id L (the broker keeps it) and reads the stream's last message,
 * whose application properties carry its publishing id (must be L) and its event position
 * (commit LSN, index of the message in its transaction). Messages the slot delivers again at or
 * before that position are confirmed at once without being sent (counted as deduplicated); the
 * first one after it gets L+1, the next L+2, and so on. Ids are thus a pure function of the stream
 * content and the event order, so a message a dead predecessor still had in flight, stored after
 * the tail was read, carries the same id as the one this sink sends for the same event, and the
 * broker's deduplication drops the second copy. Ids are 64-bit counters (bigint): one per
 * message, not per LSN, so neither large LSNs nor transactions of millions of rows can overflow
 * them. One condition: the stream (each partition) is written by this one pgwarren slot only.
 */
import { connect as connectClient, Offset, type Client, type Publisher as StreamPublisher } from 'rabbitmq-stream-js-client';

import type { Logger } from '../../ops/logger.js';
import { SinkError, errorText } from '../amqp-sink.js';
import { MessageBuilder, type OutgoingMessage } from '../amqp/message.js';
import type { BodyEncoder } from '../compression.js';
import type { Delivery, Sink } from '../sink.js';
import { redactUrl } from '../../shared/redact.js';
import { installStreamCompat, STREAM_AUTH_FAILED } from './compat.js';
import { parseStreamUrl } from './url.js';
import { memberText, partitionOf, partitionOfEvent } from './partition.js';
import { atOrBefore, tailEntryOf, INDEX_PROPERTY, PUBLISHING_ID_PROPERTY, type Position, type TailEntry } from './position.js';
import { declareSuperStream, partitionNames } from './topology.js';
import type { AmqpTls } from '../amqp-connect.js';
import { PublishFrames } from './frame.js';
import { CONFIRM_STALL_HEARTBEATS, confirmStallMs } from '../heartbeat.js';

export interface StreamSinkOptions {
  readonly url: string;
  readonly stream: string;
  readonly partitions: number;
  /** Producer name (publisherRef) used on every partition: deduplication is per stream and name. */
  readonly producer: string;
  readonly maxAge?: string;
  readonly maxBytes?: number;
  /** For the super-stream exchange and bindings (partitions > 1). */
  readonly amqpUrls: readonly string[];
  /** TLS for the AMQP connection that declares the super-stream topology. */
  readonly amqpTls?: AmqpTls;
  /** Body compression (PGWARREN_COMPRESSION); absent: UTF-8 JSON. */
  readonly encoder?: BodyEncoder;
  readonly log: Logger;
  readonly timeoutMs?: number;
  /**
   * PGWARREN_BROKER_HEARTBEAT: the client's heartbeat, and the confirm stall bound derived from
   * it (confirmStallMs): messages waiting that long without any confirm fail the session.
   */
  readonly heartbeatSeconds: number;
  /** Messages not sent because the stream already holds them. */
  readonly onDeduplicated?: (count: number) => void;
  /** A message larger than the broker's frame size: logged and skipped (README "Failure handling"). */
  readonly onTooLarge?: (info: { stream: string; messageId: string; bytes: number }) => void;
}

type Confirm = (err: Error | null) => void;
interface HasSocket {
  socket?: { destroy(): void };
}
/** The client's connection of a producer (a private field): what publish frames are written on. */
interface FrameConnection extends HasSocket {
  send(cmd: { key: number; toBuffer(): Buffer }): Promise<void>;
}
type Headers = Record<string, string | number>;

interface Partition {
  readonly name: string;
  readonly producer: StreamPublisher;
  /** Last publishing id used (sent or found in the stream). */
  lastId: bigint;
  /** Position of the stream's last message at connect; null once passed (or empty stream). */
  last: Position | null;
  readonly pending: Map<bigint, Confirm>;
  /**
   * The publish frames of this producer, encoded by the sink (frame.ts) and written on the
   * producer's connection: exact frame sizes (a frame over the broker's frame size would end the
   * connection), and a fraction of the client's per-message cost.
   */
  readonly frames: PublishFrames;
}

/** A pipeline message split over several partitions: confirmed when all parts are. */
class Multi {
  constructor(
    private remaining: number,
    private readonly confirm: Confirm,
  ) {}
  part: Confirm = (err) => {
    if (this.remaining <= 0) return;
    if (err) {
      this.remaining = 0;
      this.confirm(err);
    } else if (--this.remaining === 0) this.confirm(null);
  };
}

const DEFAULT_TIMEOUT_MS = 15_000;

export class StreamSink implements Sink {
  private failure: SinkError | null = null;
  private closing = false;
  private resolveFailed!: (err: SinkError) => void;
  readonly failed: Promise<SinkError> = new Promise((resolve) => (this.resolveFailed = resolve));
  readonly urlIndex = 0;
  private readonly parts: Partition[] = [];
  private readonly byPublisher = new Map<string, Partition>();
  private client: Client | null = null;
  // The transaction being published and the index of its next stream message.
  private txLsn = -1n;
  private txIndex = 0;
  private pendingTotal = 0;
  /** When a confirm last arrived, or the first message of an idle sink was sent. */
  private lastProgress = 0;
  private watchdog: NodeJS.Timeout | null = null;
  private frameMax = 0;
  /** Open frames are written once the current turn of the event loop has added what it has. */
  private flushScheduled = false;
  private readonly messages: MessageBuilder;

  private constructor(
    readonly url: string,
    private readonly options: StreamSinkOptions,
  ) {
    this.messages = new MessageBuilder(options.encoder);
  }

  static async open(options: StreamSinkOptions): Promise<StreamSink> {
    const sink = new StreamSink(redactUrl(options.url), options);
    try {
      await sink.connect();
    } catch (err) {
      await sink.close();
      throw err instanceof SinkError ? err : new SinkError(`stream: ${errorText(err)}`, 'transient', { cause: err });
    }
    return sink;
  }

  private async connect(): Promise<void> {
    const { options } = this;
    const { log } = options;
    const timeout = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    installStreamCompat();
    const ep = parseStreamUrl(options.url);
    const connecting = connectClient(
      {
        hostname: ep.hostname,
        port: ep.port,
        username: ep.username,
        password: ep.password,
        vhost: ep.vhost,
        ssl: ep.tls,
        heartbeat: options.heartbeatSeconds,
        // Always connect through the configured endpoint: behind a load balancer, a proxy or
        // Docker the nodes' advertised host names are often unreachable.
        addressResolver: { enabled: true, endpoint: { host: ep.hostname, port: ep.port } },
        connectionName: 'pgwarren',
        listeners: {
          publish_confirm: (c, connectionId) => this.confirmed(connectionId, c.publisherId, c.publishingIds),
          publish_error: (e, connectionId) => this.publishError(connectionId, e.publisherId, e.publishingError.publishingId, e.publishingError.code),
          connection_closed: (hadError) => this.fail(new SinkError(`stream connection closed${hadError ? ' with an error' : ''}`, 'transient')),
        },
      },
      clientLogger(log),
    );
    let client: Client;
    try {
      client = await within(connecting, timeout, `connecting to ${this.url}`);
    } catch (err) {
      void connecting.then((late) => late.close().catch(() => undefined), () => undefined);
      throw classifyConnectError(err, this.url);
    }
    this.client = client;
    // 0 would mean unlimited; frames stay within the 1 MiB the broker offers by default then.
    this.frameMax = client.maxFrameSize > 0 ? client.maxFrameSize : 1 << 20;
    const names = partitionNames(options.stream, options.partitions);
    const args: Record<string, string | number> = {};
    if (options.maxAge) args['max-age'] = options.maxAge;
    if (options.maxBytes) args['max-length-bytes'] = options.maxBytes;
    for (const name of names) await within(client.createStream({ stream: name, arguments: args }), timeout, `declaring stream ${name}`);
    if (options.partitions > 1) {
      await declareSuperStream({ urls: options.amqpUrls, tls: options.amqpTls, stream: options.stream, partitions: names, timeoutMs: timeout, heartbeatSeconds: options.heartbeatSeconds, log });
    }
    for (const name of names) {
      const producer = await within(
        client.declarePublisher({ stream: name, publisherRef: options.producer }),
        timeout,
        `declaring producer on ${name}`,
      );
      const connection = (producer as unknown as { connection?: FrameConnection }).connection;
      if (typeof connection?.send !== 'function') throw new Error('rabbitmq-stream-js-client: a producer without its connection (unsupported client version)');
      const frames = new PublishFrames(producer.publisherId, this.frameMax, (frame) => {
        connection.send({ key: 0x0002, toBuffer: () => frame }).catch((err: unknown) => this.fail(new SinkError(`stream ${name}: writing failed: ${errorText(err)}`, 'transient', { cause: err })));
      });
      const part: Partition = { name, producer, lastId: 0n, last: null, pending: new Map(), frames };
      const tail = await this.findTail(client, part, timeout);
      part.lastId = tail?.publishingId ?? 0n;
      part.last = tail?.position ?? null;
      this.parts.push(part);
      this.byPublisher.set(`${producer.getConnectionInfo().id}/${producer.publisherId}`, part);
      log.info(
        { stream: name, producer: options.producer, lastPublishingId: String(part.lastId), lastPosition: part.last && { lsn: String(part.last.lsn), index: part.last.index } },
        part.last ? `stream ${name} continues after publishing id ${part.lastId}` : `stream ${name}: nothing published by ${options.producer} yet`,
      );
    }
    // Messages awaiting confirms and none arriving for this long: the connection is dead or the
    // broker stuck. The client's own heartbeat does not notice a silent peer (and then closes
    // politely, which waits for that peer), so the sink watches confirms itself.
    const stallMs = confirmStallMs(options.heartbeatSeconds);
    this.watchdog = setInterval(() => {
      if (this.pendingTotal > 0 && Date.now() - this.lastProgress > stallMs) {
        this.fail(new SinkError(`stream: no confirm for ${Math.round(stallMs / 1000)} s (${CONFIRM_STALL_HEARTBEATS} x PGWARREN_BROKER_HEARTBEAT) with ${this.pendingTotal} message(s) waiting; reconnecting`, 'transient'));
      }
    }, Math.min(1000, stallMs));
    this.watchdog.unref();
    log.info({ stream: options.stream, partitions: options.partitions, url: this.url }, `connected to stream ${options.stream} at ${this.url}`);
  }

  /**
   * The producer's last publishing id (asked of the broker) and the position of that message
   * (read from the end of the stream). They must agree; a reader on a lagging replica may see
   * an older tail, so try again a few times.
   */
  private async findTail(client: Client, part: Partition, timeout: number): Promise<TailEntry | null> {
    for (let attempt = 0; attempt < 5; attempt++) {
      const lastId = await within(part.producer.getLastPublishingId(), timeout, `querying the last publishing id on ${part.name}`);
      if (lastId === 0n) return null;
      const tail = await readTail(client, part.name, timeout);
      if (tail && tail.publishingId === lastId) return tail;
      this.options.log.warn(
        { stream: part.name, lastPublishingId: String(lastId), tail: tail && String(tail.publishingId) },
        'the end of the stream does not match the producer yet; reading it again',
      );
      await new Promise((r) => setTimeout(r, 200 * (attempt + 1)));
    }
    throw new SinkError(
      `stream ${part.name}: the last message does not carry producer ${this.options.producer}'s last publishing id; ` +
        `the stream must be written by this pgwarren slot only (set PGWARREN_STREAM to a stream of its own)`,
      'transient',
    );
  }

  writable(): boolean {
    return this.failure === null;
  }


  whenWritable(): Promise<void> {
    return Promise.resolve();
  }

  failureReason(): SinkError | null {
    return this.failure;
  }

  deliver(delivery: Delivery, confirm: Confirm): void {
    if (this.failure) {
      confirm(this.failure);
      return;
    }
    // Snapshots are refused with this sink (snapshot/session.ts): reads have no position here.
    if (!delivery.tx) throw new Error('stream sink: an event outside any transaction has no position in the stream');
    const lsn = delivery.tx.commitLsn;
    if (lsn !== this.txLsn) {
      this.txLsn = lsn;
      this.txIndex = 0;
    }
    const msg = this.messages.build(delivery);
    const headers = (msg.properties.headers ?? {}) as Headers;
    const messageId = String(msg.properties.messageId);
    if (this.parts.length === 1) {
      this.send(this.parts[0]!, msg, headers, msg.content, messageId, confirm);
      return;
    }
    const { schema, table } = delivery.kind === 'events' ? delivery.route : delivery;
    const n = this.parts.length;
    if (msg.properties.contentEncoding) {
      // A compressed body cannot be read for its key: route by table, which also keeps every
      // row's events in one partition (and a compressed batch whole).
      this.send(this.parts[partitionOf(schema, table, null, n)]!, msg, headers, msg.content, messageId, confirm);
      return;
    }
    if (!delivery.batch) {
      this.send(this.parts[partitionOfEvent(schema, table, delivery.bodies[0]!, n)]!, msg, headers, msg.content, messageId, confirm);
      return;
    }
    // A batch of events of one table: split it so every row's events stay in its partition.
    const groups = new Map<number, string[]>();
    for (const element of delivery.bodies) {
      const p = partitionOfEvent(schema, table, element, n);
      let g = groups.get(p);
      if (!g) groups.set(p, (g = []));
      g.push(element);
    }
    const multi = new Multi(groups.size, confirm);
    for (const [p, elements] of groups) {
      const id = JSON.parse(memberText(elements[0]!, 'id') ?? 'null') as unknown;
      const groupHeaders = { ...headers, 'pgwarren-batch': elements.length };
      this.send(this.parts[p]!, msg, groupHeaders, Buffer.from('[' + elements.join(',') + ']', 'utf8'), String(id), multi.part);
    }
  }

  private send(part: Partition, msg: OutgoingMessage, headers: Headers, content: Buffer, messageId: string, confirm: Confirm): void {
    const position: Position = { lsn: this.txLsn, index: this.txIndex++ };
    if (this.failure) {
      confirm(this.failure);
      return;
    }
    if (part.last) {
      if (atOrBefore(position, part.last)) {
        this.options.onDeduplicated?.(1);
        confirm(null);
        return;
      }
      part.last = null; // every later message is after it
    }
    const id = part.lastId + 1n;
    const p = msg.properties;
    const size = part.frames.add(id, {
      content,
      messageId,
      contentType: p.contentType ?? 'application/json',
      contentEncoding: p.contentEncoding,
      creationTimeMs: typeof p.timestamp === 'number' ? p.timestamp * 1000 : undefined,
      properties: headers,
      // After the headers. Text, like the publishing id: rabbitmq-stream-js-client's decoder
      // rejects a property whose value is falsy (0), so the first message of a transaction
      // could not be read.
      more: [INDEX_PROPERTY, String(position.index), PUBLISHING_ID_PROPERTY, String(id)],
    });
    if (size < 0) {
      // It can never be published: skip it rather than block every change after it (§9). It
      // takes no publishing id, on every read alike, so the ids after it stay the same.
      this.options.log.error(
        { stream: part.name, messageId, bytes: content.length, frameMax: this.frameMax },
        `event ${messageId} (${content.length} bytes) is larger than the stream's frame size and cannot be published: skipped`,
      );
      this.options.onTooLarge?.({ stream: part.name, messageId, bytes: content.length });
      confirm(null);
      return;
    }
    part.lastId = id;
    if (this.pendingTotal++ === 0) this.lastProgress = Date.now();
    part.pending.set(id, confirm);
    if (!this.flushScheduled) {
      this.flushScheduled = true;
      setImmediate(this.flushFrames);
    }
  }

  private readonly flushFrames = (): void => {
    this.flushScheduled = false;
    if (this.failure) return;
    for (const part of this.parts) part.frames.flush();
  };

  private confirmed(connectionId: string, publisherId: number, ids: readonly bigint[]): void {
    const part = this.byPublisher.get(`${connectionId}/${publisherId}`);
    if (!part) return;
    this.lastProgress = Date.now();
    for (const id of ids) {
      const cb = part.pending.get(id);
      if (!cb) continue;
      part.pending.delete(id);
      this.pendingTotal--;
      cb(this.failure);
    }
  }

  private publishError(connectionId: string, publisherId: number, id: bigint, code: number): void {
    const part = this.byPublisher.get(`${connectionId}/${publisherId}`);
    if (!part) return;
    this.fail(new SinkError(`stream ${part.name}: the broker refused message ${id} (publishing error code ${code})`, 'transient'));
  }

  async close(): Promise<void> {
    this.closing = true;
    this.fail(new SinkError('sink closed', 'transient'));
    if (this.watchdog) clearInterval(this.watchdog);
    const client = this.client;
    this.client = null;
    if (!client) return;
    // A polite close waits for the broker; on a dead network it would never end: then the
    // sockets are destroyed (the client does not expose them, hence the private fields).
    const closed = await within(client.close(), 3000, 'closing the stream connection').then(
      () => true,
      () => false,
    );
    if (!closed) {
      const sockets = [
        (client as unknown as { locatorConnection?: HasSocket }).locatorConnection,
        ...this.parts.map((p) => (p.producer as unknown as { connection?: HasSocket }).connection),
      ];
      for (const c of sockets) c?.socket?.destroy();
    }
  }

  private fail(err: SinkError): void {
    if (this.failure) return;
    this.failure = err;
    if (!this.closing) this.options.log.warn({ err: err.message }, 'stream session failed');
    this.pendingTotal = 0;
    for (const part of this.parts) {
      const pending = [...part.pending.values()];
      part.pending.clear();
      for (const cb of pending) cb(err);
    }
    this.resolveFailed(err);
  }
}

/**
 * The last message pgwarren wrote to `stream`: subscribe at the last chunk and keep the entry
 * with the highest publishing id. A chunk's messages are handed over in one go, so once a turn
 * of the event loop passes without another message, the chunk is complete.
 */
export async function readTail(client: Client, stream: string, timeoutMs: number): Promise<TailEntry | null> {
  let best: TailEntry | null = null;
  let done!: () => void;
  const finished = new Promise<void>((resolve) => (done = resolve));
  let timer: NodeJS.Immediate | null = null;
  const consumer = await within(
    client.declareConsumer({ stream, offset: Offset.last() }, (message) => {
      const entry = tailEntryOf(message.applicationProperties);
      if (entry && (!best || entry.publishingId > best.publishingId)) best = entry;
      if (timer) clearImmediate(timer);
      timer = setImmediate(done);
    }),
    timeoutMs,
    `reading the end of stream ${stream}`,
  );
  try {
    await within(finished, timeoutMs, `reading the end of stream ${stream}`);
  } finally {
    if (timer) clearImmediate(timer);
    await within(client.closeConsumer(consumer.extendedId), timeoutMs, 'closing the tail reader').catch(() => undefined);
  }
  return best;
}

export async function within<T>(p: Promise<T>, ms: number, doing: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(Object.assign(new Error(`timed out after ${ms} ms ${doing}`), { code: 'ETIMEDOUT' })), ms);
  });
  try {
    return await Promise.race([p, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

function classifyConnectError(err: unknown, url: string): SinkError {
  const code = (err as { code?: unknown } | null)?.code;
  if (code === STREAM_AUTH_FAILED) {
    return new SinkError(`stream broker ${url} refused the credentials: ${errorText(err)}. Check the user and password in PGWARREN_STREAM_URL.`, 'fatal', { cause: err });
  }
  if (code === 'ECONNREFUSED') {
    return new SinkError(
      `cannot connect to the stream port at ${url} (connection refused): is the stream plugin enabled? Run "rabbitmq-plugins enable rabbitmq_stream" on the broker (it listens on 5552)`,
      'transient',
      { cause: err },
    );
  }
  return new SinkError(`cannot connect to stream broker ${url}: ${errorText(err)}`, 'transient', { cause: err });
}

/** The client's log lines, at debug (its info is chatty) and warn. */
function clientLogger(log: Logger): { debug(m: string): void; info(m: string): void; warn(m: string): void; error(m: string): void } {
  const child = log.child({ component: 'stream-client' });
  return {
    debug: () => undefined,
    info: (m) => child.debug(m),
    warn: (m) => child.debug(m),
    error: (m) => child.warn(m),
  };
}

/** Connect and disconnect (for `check`): the broker's version, or the classified failure. */
export async function probeStream(url: string, timeoutMs = DEFAULT_TIMEOUT_MS): Promise<{ version: string }> {
  installStreamCompat();
  const ep = parseStreamUrl(url);
  const connecting = connectClient({
    hostname: ep.hostname,
    port: ep.port,
    username: ep.username,
    password: ep.password,
    vhost: ep.vhost,
    ssl: ep.tls,
    connectionName: 'pgwarren-check',
  });
  let client: Client;
  try {
    client = await within(connecting, timeoutMs, `connecting to ${redactUrl(url)}`);
  } catch (err) {
    void connecting.then((late) => late.close().catch(() => undefined), () => undefined);
    throw classifyConnectError(err, redactUrl(url));
  }
  const version = client.rabbitManagementVersion;
  await within(client.close(), 3000, 'closing').catch(() => undefined);
  return { version };
}
