/**
 * RabbitMQ publisher over one confirm channel.
 *
 * States: connecting -> open (writable | waiting for drain | blocked by a broker alarm) -> closed.
 * It never buffers or republishes: a message that is not confirmed stays unacknowledged in the
 * slot, and the next session reads it again. So any failure here (connection lost, channel
 * closed, nack, unroutable message under `block`) closes the sink and reports the reason once
 * through `failed`; the session owning it ends and a new one starts from the slot. After the
 * first failure no message counts as confirmed, not even one the broker acks later. Messages are
 * numbered in publish order (`publish` returns the number, confirms carry it) so the pipeline
 * knows which ones the broker confirmed (README: Delivery); a nack is a `NackError`, and a
 * channel the broker closed over a publish (406) is recognised by `publishRefused`.
 *
 * amqplib traps handled here: `error` listeners go on the connection and channel before anything
 * else (an unhandled channel error crashes the process); a mandatory message no queue takes is
 * first *returned* and then still acked, so returns are tracked separately; `publish()` returning
 * false means "wait for drain".
 */
import type { ChannelModel, ConfirmChannel, Message } from 'amqplib';
import type { Logger } from '../ops/logger.js';
import type { Confirm, Delivery, Sink } from './sink.js';
import type { BodyEncoder } from './compression.js';
import { MessageBuilder, type OutgoingMessage } from './amqp/message.js';
import { redactUrl } from '../shared/redact.js';
import { tlsFailure } from '../shared/tls.js';
import { closeWithin } from '../ops/close.js';
import { classify, errorMessage, TimeoutError } from '../errors.js';
import { closeAmqp, connectAmqp, type AmqpTls } from './amqp-connect.js';

export type { AmqpTls } from './amqp-connect.js';

export type { OutgoingMessage } from './amqp/message.js';

export interface ExchangeDeclaration {
  readonly name: string;
  readonly type: string;
}

export interface AmqpSinkOptions {
  readonly urls: readonly string[];
  /** Index of the URL to try first; the caller rotates it after a failure. */
  readonly firstUrl: number;
  readonly exchanges: readonly ExchangeDeclaration[];
  readonly unroutable: 'warn' | 'block';
  readonly tls?: AmqpTls;
  /** Body compression of event messages (PGWARREN_COMPRESSION); absent: UTF-8 JSON. */
  readonly encoder?: BodyEncoder;
  readonly log: Logger;
  readonly onUnroutable?: (msg: { exchange: string; routingKey: string; messageId: string | undefined }) => void;
  readonly onBlockedChange?: (blocked: boolean, reason?: string) => void;
  /**
   * Bound on opening one broker: TCP connect, TLS, the AMQP handshake, the channel and the
   * exchange declarations together. A broker that accepts TCP and never answers is given up on.
   */
  readonly openTimeoutMs: number;
  /** PGWARREN_BROKER_HEARTBEAT: how quickly a silent broker ends the sink. */
  readonly heartbeatSeconds: number;
  /** Aborting gives up the open at once (SIGTERM while connecting); whatever opened is closed. */
  readonly signal?: AbortSignal;
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

/** The broker refused a message with basic.nack (a queue with `x-overflow: reject-publish` full, ...). */
export class NackError extends SinkError {
  constructor(readonly messageId: string) {
    super(`broker rejected message ${messageId} (nack)`, 'transient');
    this.name = 'NackError';
  }
}

/**
 * True when the broker closed the channel with 406 PRECONDITION_FAILED over a basic.publish: the
 * message itself was refused (a body above the broker's max_message_size), so sending it again
 * would close the channel again. Read from the AMQP reply, class and method codes.
 */
export function publishRefused(err: unknown): boolean {
  for (let e = err, depth = 0; e instanceof Error && depth < 5; e = e.cause, depth++) {
    const { code, classId, methodId } = e as { code?: unknown; classId?: unknown; methodId?: unknown };
    if (code === 406 && classId === 60 && methodId === 40) return true;
  }
  return false;
}

export class AmqpSink implements Sink {
  private blocked = false;
  private needsDrain = false;
  private failure: SinkError | null = null;
  private waiters: Array<() => void> = [];
  private resolveFailed!: (err: SinkError) => void;
  private closing = false;
  /** Messages published on this channel: the last one's number (its AMQP delivery tag). */
  private published = 0;
  private readonly messages: MessageBuilder;
  /** Resolves once, with the reason, when the sink stops working. Never rejects. */
  readonly failed: Promise<SinkError> = new Promise((resolve) => (this.resolveFailed = resolve));

  private constructor(
    private readonly model: ChannelModel,
    private readonly channel: ConfirmChannel,
    readonly url: string,
    readonly urlIndex: number,
    private readonly options: AmqpSinkOptions,
  ) {
    this.messages = new MessageBuilder(options.encoder);
  }

  static async open(options: AmqpSinkOptions): Promise<AmqpSink> {
    const { urls, firstUrl, log } = options;
    let lastError: unknown;
    for (let i = 0; i < urls.length; i++) {
      const index = (firstUrl + i) % urls.length;
      const url = urls[index]!;
      try {
        return await AmqpSink.openWithin(url, index, options);
      } catch (err) {
        lastError = err;
        if (err instanceof SinkError && err.severity === 'fatal') throw err;
        if (options.signal?.aborted) throw err;
        log.warn({ broker: redactUrl(url), err: errorText(err) }, 'broker connection failed');
      }
    }
    if (lastError instanceof SinkError) throw lastError;
    throw new SinkError(`no broker reachable: ${errorText(lastError)}`, 'transient', { cause: lastError });
  }

  /**
   * `openOne` under a deadline and the abort signal. Whichever ends it first, the attempt is
   * abandoned: a connection it still makes is closed (and its socket destroyed) when it arrives,
   * and amqplib's own socket timeout ends a handshake that never completes.
   */
  private static openWithin(url: string, index: number, options: AmqpSinkOptions): Promise<AmqpSink> {
    const { signal, openTimeoutMs } = options;
    return new Promise<AmqpSink>((resolve, reject) => {
      let settled = false;
      const settle = (fn: () => void) => {
        if (settled) return false;
        settled = true;
        clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
        fn();
        return true;
      };
      const onAbort = () => settle(() => reject(new SinkError(`opening broker ${redactUrl(url)} abandoned: shutting down`, 'transient')));
      const timer = setTimeout(
        () => settle(() => reject(new SinkError(`cannot open broker ${redactUrl(url)}: ${new TimeoutError('connect, AMQP handshake, channel and exchange declarations', openTimeoutMs).message}`, 'transient'))),
        openTimeoutMs,
      );
      if (signal?.aborted) onAbort();
      else signal?.addEventListener('abort', onAbort, { once: true });
      AmqpSink.openOne(url, index, options).then(
        (sink) => {
          if (!settle(() => resolve(sink))) void sink.close();
        },
        (err: unknown) => void settle(() => reject(err)),
      );
    });
  }

  private static async openOne(url: string, index: number, options: AmqpSinkOptions): Promise<AmqpSink> {
    let model: ChannelModel;
    try {
      model = await connectAmqp(url, { tls: options.tls, timeoutMs: options.openTimeoutMs, heartbeatSeconds: options.heartbeatSeconds });
    } catch (err) {
      throw classifyConnectError(err, url);
    }
    // Until the sink exists, errors are reported by the awaited calls below; keep the process alive.
    const early = (err: Error) => options.log.debug({ err: errorText(err) }, 'broker error during open');
    model.on('error', early);
    let channel: ConfirmChannel;
    // Past the deadline (or on abort) the caller has gone: close what this attempt opened.
    const abandon = () => void closeAmqp(model);
    const abandoned = setTimeout(abandon, options.openTimeoutMs);
    options.signal?.addEventListener('abort', abandon, { once: true });
    const settled = () => {
      clearTimeout(abandoned);
      options.signal?.removeEventListener('abort', abandon);
    };
    try {
      channel = await model.createConfirmChannel();
      channel.on('error', early);
      for (const ex of options.exchanges) {
        try {
          await channel.assertExchange(ex.name, ex.type, { durable: true });
        } catch (err) {
          const fault = classify(err);
          throw new SinkError(
            `exchange "${ex.name}" cannot be declared as a durable ${ex.type} exchange: ${errorText(err)}. ` +
              (fault.kind === 'permanent' ? `Fix: ${fault.fix}.` : 'Retrying.'),
            fault.kind === 'permanent' ? 'fatal' : 'transient',
            { cause: err },
          );
        }
      }
    } catch (err) {
      settled();
      await closeAmqp(model);
      throw err instanceof SinkError ? err : new SinkError(`broker channel failed: ${errorText(err)}`, 'transient', { cause: err });
    }
    settled();
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
    channel.on('return', (msg: Message) => {
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


  /** Resolves when writable again, or when the sink failed (check `failure()` afterwards). */
  whenWritable(): Promise<void> {
    if (this.writable() || this.failure) return Promise.resolve();
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  failureReason(): SinkError | null {
    return this.failure;
  }

  /** One delivery as one AMQP message (amqp/message.ts); see `publish`. */
  deliver(delivery: Delivery, confirm: Confirm): number | undefined {
    if (this.failure) {
      confirm(this.failure);
      return undefined;
    }
    return this.publish(this.messages.build(delivery), confirm);
  }

  /**
   * Publish one message; `confirm` is called exactly once: with null when the broker took it,
   * with an error when it nacked it or the sink failed first.
   */
  private publish(msg: OutgoingMessage, confirm: Confirm): number | undefined {
    if (this.failure) {
      confirm(this.failure);
      return undefined;
    }
    // Keep only the id for the callback: holding `msg` would keep its body alive until the confirm.
    const messageId = String(msg.properties.messageId);
    const tag = ++this.published;
    // After the first failure (a nack included) nothing is confirmed any more, not even a message
    // the broker acks later: the next session decides from the slot what to send again.
    const ok = this.channel.publish(msg.exchange, msg.routingKey, msg.content, msg.properties, (err: unknown) => {
      if (this.failure) confirm(this.failure, tag, messageId);
      else if (err) {
        const e = new NackError(messageId);
        this.fail(e);
        confirm(e, tag, messageId);
      } else confirm(null, tag, messageId);
    });
    if (!ok) this.needsDrain = true;
    return tag;
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


/**
 * A failed connect, by code (README "Failure handling"): TLS verification failures and the reply codes the
 * classification table calls permanent (403 ACCESS_REFUSED on login, 530 NOT_ALLOWED for the
 * virtual host; see amqp-handshake.ts for how they get a code) are fatal; everything else
 * (refused, reset, timed out, closed during the handshake) is retried.
 */
export function classifyConnectError(err: unknown, url: string): SinkError {
  const text = errorText(err);
  const tls = tlsFailure(err, 'PGWARREN_AMQP_CA, PGWARREN_AMQP_CERT and PGWARREN_AMQP_KEY, and that the host name in PGWARREN_AMQP_URL is one the certificate names');
  if (tls) return new SinkError(`broker ${redactUrl(url)}: ${tls}`, 'fatal', { cause: err });
  const fault = classify(err);
  if (fault.kind === 'permanent') {
    return new SinkError(`broker ${redactUrl(url)}: ${fault.meaning}: ${text}. Fix: ${fault.fix}.`, 'fatal', { cause: err });
  }
  return new SinkError(`cannot connect to broker ${redactUrl(url)}: ${text}`, 'transient', { cause: err });
}

export const errorText = errorMessage;
