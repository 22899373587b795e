/**
 * `PGWARREN_SINK=stdout`: each message body (an event, or a batch array) as one JSON line on
 * standard output, for development, piping into `jq`, and tests; the same bytes the AMQP sink
 * would publish (amqp/message.ts), compressed too when configured. A line counts as confirmed once
 * the write callback reports it flushed to the file descriptor, so the slot still moves only past
 * what was written. Logs go to standard error in this mode (see ops/logger.ts). A closed pipe
 * (EPIPE: the reader went away) fails the sink like a lost broker connection.
 */
import type { Writable } from 'node:stream';
import { SinkError, errorText } from './amqp-sink.js';
import { MessageBuilder } from './amqp/message.js';
import type { BodyEncoder } from './compression.js';
import type { Confirm, Delivery, Sink } from './sink.js';

const NEWLINE = Buffer.from('\n');

export class StdoutSink implements Sink {
  readonly url = 'stdout';
  readonly urlIndex = 0;
  private failure: SinkError | null = null;
  private needsDrain = false;
  private waiters: Array<() => void> = [];
  private resolveFailed!: (err: SinkError) => void;
  readonly failed: Promise<SinkError> = new Promise((resolve) => (this.resolveFailed = resolve));
  private readonly onError = (err: Error) => this.fail(new SinkError(`stdout: ${errorText(err)}`, 'transient', { cause: err }));
  private readonly onDrain = () => {
    this.needsDrain = false;
    this.wake();
  };

  private readonly messages: MessageBuilder;

  constructor(
    private readonly out: Writable = process.stdout,
    encoder?: BodyEncoder,
  ) {
    this.messages = new MessageBuilder(encoder);
    out.on('error', this.onError);
    out.on('drain', this.onDrain);
  }

  writable(): boolean {
    return !this.needsDrain && this.failure === null;
  }


  whenWritable(): Promise<void> {
    if (this.writable() || this.failure) return Promise.resolve();
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  failureReason(): SinkError | null {
    return this.failure;
  }

  deliver(delivery: Delivery, confirm: Confirm): void {
    if (this.failure) {
      confirm(this.failure);
      return;
    }
    this.out.write(this.messages.content(delivery));
    const ok = this.out.write(NEWLINE, (err) => {
      if (err) this.fail(new SinkError(`stdout: ${errorText(err)}`, 'transient', { cause: err }));
      confirm(this.failure ?? (err ? err : null));
    });
    if (!ok) this.needsDrain = true;
  }

  async close(): Promise<void> {
    this.out.off('drain', this.onDrain);
    // Keep the error listener: a late EPIPE must not become an uncaught exception.
    this.fail(new SinkError('sink closed', 'transient'));
  }

  private fail(err: SinkError): void {
    if (this.failure) return;
    this.failure = err;
    this.resolveFailed(err);
    this.wake();
  }

  private wake(): void {
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) w();
  }
}
