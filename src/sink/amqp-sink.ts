/**
 * RabbitMQ publisher over one confirm channel.
 *
 * States: connecting -> open (writable | waiting for drain | blocked by a broker alarm) -> closed.
 * It never buffers or republishes: a message that is not confirmed stays unacknowledged in the
 * slot, and the next session reads it again. So any failure here (connection lost, channel
 * closed, nack, unroutable message under `block`) closes the sink and reports the reason once
 * through `failed`; the session owning it ends and a new one starts from the slot.
 *
 * amqplib traps handled here: `error` listeners go on the connection and channel before anything
 * else (an unhandled channel error crashes the process); a mandatory message no queue takes is
 * first *returned* and then still acked, so returns are tracked separately; `publish()` returning
 * false means "wait for drain".
 */
import { readFileSync } from 'node:fs';
import amqp, { type ChannelModel, type ConfirmChannel, type Options } from 'amqplib';
import type { Logger } from '../ops/logger.js';
import { redactUrl } from '../config/load.js';
import { tlsFailure } from '../config/database.js';
import { closeWithin } from '../ops/close.js';

export interface OutgoingMessage {
  readonly exchange: string;
  readonly routingKey: string;
  readonly content: Buffer;
  readonly properties: Options.Publish;
}

export interface ExchangeDeclaration {
  readonly name: string;
  readonly type: string;
}

export interface AmqpTls {
  readonly ca?: string;
  readonly cert?: string;
  readonly key?: string;
}

export interface AmqpSinkOptions {
  readonly urls: readonly string[];
  /** Index of the URL to try first; the caller rotates it after a failure. */
  readonly firstUrl: number;
  readonly exchanges: readonly ExchangeDeclaration[];
  readonly unroutable: 'warn' | 'block';
  readonly tls?: AmqpTls;
  readonly log: Logger;
  readonly onUnroutable?: (msg: { exchange: string; routingKey: string; messageId: string | undefined }) => void;
  readonly onBlockedChange?: (blocked: boolean, reason?: string) => void;
}

/** Failure classes the session treats differently. */
export class SinkError extends Error {
  constructor(
    message: string,
    /** 'transient': retry with backoff; 'fatal': retrying cannot fix it (exit 3). */
    readonly severity: 'transient' | 'fatal',
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

type Confirm = (err: Error | null) => void;

export class AmqpSink {
  private blocked = false;
  private needsDrain = false;
  private failure: SinkError | null = null;
  private waiters: Array<() => void> = [];
  private resolveFailed!: (err: SinkError) => void;
  private closing = false;
  /** Resolves once, with the reason, when the sink stops working. Never rejects. */
  readonly failed: Promise<SinkError> = new Promise((resolve) => (this.resolveFailed = resolve));

  private constructor(
    private readonly model: ChannelModel,
    private readonly channel: ConfirmChannel,
    readonly url: string,
    readonly urlIndex: number,
    private readonly options: AmqpSinkOptions,
  ) {}

  static async open(options: AmqpSinkOptions): Promise<AmqpSink> {
    const { urls, firstUrl, log } = options;
    let lastError: unknown;
    for (let i = 0; i < urls.length; i++) {
      const index = (firstUrl + i) % urls.length;
      const url = urls[index]!;
      try {
        return await AmqpSink.openOne(url, index, options);
      } catch (err) {
        lastError = err;
        if (err instanceof SinkError && err.severity === 'fatal') throw err;
        log.warn({ broker: redactUrl(url), err: errorText(err) }, 'broker connection failed');
      }
    }
    if (lastError instanceof SinkError) throw lastError;
    throw new SinkError(`no broker reachable: ${errorText(lastError)}`, 'transient', { cause: lastError });
  }

  private static async openOne(url: string, index: number, options: AmqpSinkOptions): Promise<AmqpSink> {
    let model: ChannelModel;
    try {
      model = await amqp.connect(withDefaults(url), {
        ...tlsSocketOptions(options.tls),
        clientProperties: { connection_name: 'pgwarren' },
      });
    } catch (err) {
      throw classifyConnectError(err, url);
    }
    // Until the sink exists, errors are reported by the awaited calls below; keep the process alive.
    const early = (err: Error) => options.log.debug({ err: errorText(err) }, 'broker error during open');
    model.on('error', early);
    let channel: ConfirmChannel;
    try {
      channel = await model.createConfirmChannel();
      channel.on('error', early);
      for (const ex of options.exchanges) {
        try {
          await channel.assertExchange(ex.name, ex.type, { durable: true });
        } catch (err) {
          throw new SinkError(
            `exchange "${ex.name}" cannot be declared as a durable ${ex.type} exchange: ${errorText(err)}. ` +
              `If it exists with another type or durability, delete it or set PGWARREN_EXCHANGE_TYPE to match.`,
            /PRECONDITION_FAILED|ACCESS_REFUSED/.test(errorText(err)) ? 'fatal' : 'transient',
            { cause: err },
          );
        }
      }
    } catch (err) {
      await model.close().catch(() => undefined);
      throw err instanceof SinkError ? err : new SinkError(`broker channel failed: ${errorText(err)}`, 'transient', { cause: err });
    }
    const sink = new AmqpSink(model, channel, url, index, options);
    model.off('error', early);
    channel.off('error', early);
    sink.watch();
    options.log.info({ broker: redactUrl(url), brokerIndex: index, tls: url.startsWith('amqps:') }, `connected to broker ${redactUrl(url)}`);
    return sink;
  }

  private watch(): void {
    const { model, channel, options } = this;
    model.on('error', (err: Error) => this.fail(new SinkError(`broker connection error: ${errorText(err)}`, 'transient', { cause: err })));
    model.on('close', (err?: Error) => this.fail(new SinkError(`broker connection closed${err ? `: ${errorText(err)}` : ''}`, 'transient')));
    model.on('blocked', (reason: string) => {
      this.blocked = true;
      options.log.warn({ reason }, 'broker blocked publishing (resource alarm); reading from the slot paused');
      options.onBlockedChange?.(true, reason);
    });
    model.on('unblocked', () => {
      this.blocked = false;
      options.log.info('broker unblocked publishing; resuming');
      options.onBlockedChange?.(false);
      this.wake();
    });
    channel.on('error', (err: Error) => this.fail(new SinkError(`broker channel error: ${errorText(err)}`, 'transient', { cause: err })));
    channel.on('close', () => this.fail(new SinkError('broker channel closed', 'transient')));
    channel.on('drain', () => {
      this.needsDrain = false;
      this.wake();
    });
    channel.on('return', (msg: amqp.Message) => {
      const info = { exchange: msg.fields.exchange, routingKey: msg.fields.routingKey, messageId: msg.properties.messageId as string | undefined };
      options.onUnroutable?.(info);
      if (options.unroutable === 'block') {
        // The ack that follows this return must not count as delivery: fail before it arrives.
        this.fail(
          new SinkError(
            `message ${info.messageId} to exchange "${info.exchange}" with routing key "${info.routingKey}" was returned: no queue is bound for it (PGWARREN_UNROUTABLE=block holds the slot until one is)`,
            'transient',
          ),
        );
      }
    });
  }

  /** True when a publish now would not have to wait for drain or a broker alarm. */
  writable(): boolean {
    return !this.blocked && !this.needsDrain && this.failure === null;
  }

  isBlocked(): boolean {
    return this.blocked;
  }

  /** Resolves when writable again, or when the sink failed (check `failure()` afterwards). */
  whenWritable(): Promise<void> {
    if (this.writable() || this.failure) return Promise.resolve();
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  failureReason(): SinkError | null {
    return this.failure;
  }

  /**
   * Publish one message; `confirm` is called exactly once: with null when the broker took it,
   * with an error when it nacked it or the sink failed first.
   */
  publish(msg: OutgoingMessage, confirm: Confirm): void {
    if (this.failure) {
      confirm(this.failure);
      return;
    }
    // Keep only the id for the callback: holding `msg` would keep its body alive until the confirm.
    const messageId = String(msg.properties.messageId);
    const ok = this.channel.publish(msg.exchange, msg.routingKey, msg.content, msg.properties, (err: unknown) => {
      if (this.failure) confirm(this.failure);
      else if (err) {
        const e = new SinkError(`broker rejected message ${messageId} (nack)`, 'transient');
        this.fail(e);
        confirm(e);
      } else confirm(null);
    });
    if (!ok) this.needsDrain = true;
  }

  /**
   * Declare one more durable exchange (a snapshot aimed at its own exchange) on a channel of its
   * own, so a refusal (another type: PRECONDITION_FAILED) closes only that channel.
   */
  async declareExchange(ex: ExchangeDeclaration, timeoutMs = 10_000): Promise<void> {
    const channel = await this.model.createChannel();
    channel.on('error', () => undefined);
    let timer: NodeJS.Timeout | undefined;
    try {
      await Promise.race([
        channel.assertExchange(ex.name, ex.type, { durable: true }),
        new Promise((_, reject) => (timer = setTimeout(() => reject(new Error(`declaring exchange "${ex.name}" timed out`)), timeoutMs))),
      ]);
    } finally {
      clearTimeout(timer);
      await channel.close().catch(() => undefined);
    }
  }

  async close(): Promise<void> {
    this.closing = true;
    this.fail(new SinkError('sink closed', 'transient'));
    // amqplib's ChannelModel keeps its Connection, whose socket is `stream`, in `connection`.
    const connection = (this.model as unknown as { connection?: { stream?: { destroy(): void } } }).connection;
    await closeWithin(() => this.model.close(), () => connection);
  }

  private fail(err: SinkError): void {
    if (this.failure) return;
    this.failure = err;
    if (!this.closing) this.options.log.warn({ err: err.message }, 'broker session failed');
    this.resolveFailed(err);
    this.wake();
  }

  private wake(): void {
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) w();
  }
}

function withDefaults(url: string): string {
  // Half-open TCP connections are only noticed through heartbeats; amqplib's default is none.
  if (/[?&]heartbeat=/.test(url)) return url;
  return url + (url.includes('?') ? '&' : '?') + 'heartbeat=10';
}

function tlsSocketOptions(tls: AmqpTls | undefined): Record<string, unknown> {
  if (!tls) return {};
  const out: Record<string, unknown> = {};
  if (tls.ca) out.ca = [readFileSync(tls.ca)];
  if (tls.cert) out.cert = readFileSync(tls.cert);
  if (tls.key) out.key = readFileSync(tls.key);
  return out;
}

function classifyConnectError(err: unknown, url: string): SinkError {
  const text = errorText(err);
  const tls = tlsFailure(err, 'PGWARREN_AMQP_CA, PGWARREN_AMQP_CERT and PGWARREN_AMQP_KEY, and that the host name in PGWARREN_AMQP_URL is one the certificate names');
  if (tls) return new SinkError(`broker ${redactUrl(url)}: ${tls}`, 'fatal', { cause: err });
  if (/ACCESS_REFUSED|403|authentication|PLAIN login refused/i.test(text)) {
    return new SinkError(`broker ${redactUrl(url)} refused the credentials: ${text}. Check the user and password in PGWARREN_AMQP_URL.`, 'fatal', { cause: err });
  }
  if (/NOT_ALLOWED|vhost/i.test(text) && /530/.test(text)) {
    return new SinkError(`broker ${redactUrl(url)} refused the virtual host: ${text}`, 'fatal', { cause: err });
  }
  return new SinkError(`cannot connect to broker ${redactUrl(url)}: ${text}`, 'transient', { cause: err });
}

export function errorText(err: unknown): string {
  if (err instanceof Error) return err.message || err.name;
  return String(err);
}
