/**
 * One replication connection reading one slot, wrapped around pg-logical-replication.
 *
 * States: idle -> connecting -> streaming -> ended (the `ended` promise resolves with the reason).
 * A stream is never restarted; the session makes a new one.
 *
 * Traps of the library this wrapper closes (docs/architecture.md, "Library traps"):
 * - its timer would acknowledge the last *received* LSN: we pass `timeoutSeconds: 0` and
 *   `auto: false`, and only `acknowledge()` here ever reports a position;
 * - `subscribe()` without an LSN resumes from the last LSN *received*: we always start at `0/0`,
 *   which means "the slot's confirmed position";
 * - `acknowledge(lsn)` reports `lsn + 1`: we pass `lsn - 1` so Postgres hears exactly `lsn`;
 * - with flow control on, parsed messages wait in the library's own queue while keepalives
 *   overtake them: `caughtUp()` tells whether every parsed message has been handled;
 * - the payload buffer is reused by pg after the callback: the decoder's `parse` copies;
 * - a parse error would be thrown inside pg's socket handler: it is caught and ends the stream.
 */
import { LogicalReplicationService } from 'pg-logical-replication';
import type { Client, ClientConfig } from 'pg';
import type { Logger } from '../ops/logger.js';
import type { Decoder } from './decoder.js';
import { quoteIdent } from './decoder.js';
import { formatLsn, parseLsn } from './lsn.js';
import { TimeoutError } from '../errors.js';
import { closeWithin, pgSocketOwner } from '../ops/close.js';

export interface StreamHandlers<P> {
  /** Awaited before the next message is handled: this is where backpressure comes from. */
  onMessage(parsed: P): Promise<void>;
  onKeepalive(walEnd: bigint, shouldRespond: boolean): void;
}

/** Session settings the text of values depends on (docs/architecture.md, "Library traps"). */
export const REPLICATION_SESSION_OPTIONS =
  '-c TimeZone=UTC -c DateStyle=ISO -c IntervalStyle=postgres -c extra_float_digits=3';

class ParseFailure {
  constructor(readonly error: unknown) {}
}

/** Shaped like the library's AbstractPlugin (which it does not export). */
class CountingPlugin<P> {
  readonly options = null;
  parsedCount = 0;
  constructor(private readonly decoder: Decoder<P>) {}
  get name(): string {
    return this.decoder.plugin;
  }
  start(client: Client, slotName: string, lastLsn: string): Promise<unknown> {
    const sql = `START_REPLICATION SLOT ${quoteIdent(slotName)} LOGICAL ${lastLsn} (${this.decoder.startOptions().join(', ')})`;
    return client.query(sql);
  }
  parse(buffer: Buffer): P | ParseFailure {
    this.parsedCount++;
    try {
      return this.decoder.parse(buffer);
    } catch (err) {
      return new ParseFailure(err);
    }
  }
}

export class ReplicationStream<P> {
  private readonly service: LogicalReplicationService;
  private readonly plugin: CountingPlugin<P>;
  private handledCount = 0;
  private endedWith: Error | null = null;
  private resolveEnded!: (reason: Error) => void;
  /** Resolves once with why the stream stopped (a clean stop resolves with a 'stopped' Error). */
  readonly ended: Promise<Error> = new Promise((resolve) => (this.resolveEnded = resolve));
  private stopping = false;

  constructor(
    clientConfig: ClientConfig,
    private readonly slot: string,
    decoder: Decoder<P>,
    private readonly handlers: StreamHandlers<P>,
    private readonly log: Logger,
  ) {
    this.plugin = new CountingPlugin(decoder);
    this.service = new LogicalReplicationService(
      { ...clientConfig, application_name: 'pgwarren', options: REPLICATION_SESSION_OPTIONS },
      { acknowledge: { auto: false, timeoutSeconds: 0 }, flowControl: { enabled: true } },
    );
    this.service.on('error', (err: Error) => this.end(err));
    this.service.on('heartbeat', (lsn: string, _ts: number, shouldRespond: boolean) => {
      if (this.endedWith) return;
      try {
        this.handlers.onKeepalive(parseLsn(lsn), shouldRespond);
      } catch (err) {
        this.end(err as Error);
      }
    });
    this.service.on('data', async (_lsn: string, parsed: P | ParseFailure) => {
      if (this.endedWith) return;
      try {
        if (parsed instanceof ParseFailure) throw parsed.error;
        await this.handlers.onMessage(parsed);
        this.handledCount++;
      } catch (err) {
        this.end(err instanceof Error ? err : new Error(String(err)));
      }
    });
  }

  /**
   * Resolves once Postgres started streaming; rejects if it refused, or when connecting and
   * START_REPLICATION together take longer than `timeoutMs` (the connection is then destroyed).
   */
  start(timeoutMs: number): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      let started = false;
      const timer = setTimeout(() => {
        if (started) return;
        this.end(new TimeoutError(`starting replication from slot "${this.slot}"`, timeoutMs));
        pgSocketOwner(this.client())?.stream?.destroy();
      }, timeoutMs);
      this.service.once('start', () => {
        started = true;
        clearTimeout(timer);
        resolve();
      });
      this.service
        .subscribe(this.plugin, this.slot, '0/0')
        .then(
          () => this.end(new Error('the server ended the replication stream')),
          // Unclassified: the session classifies it, knowing which step failed (errors.ts).
          (err: unknown) => {
            const e = err instanceof Error ? err : new Error(String(err));
            this.end(e);
            if (!started) reject(e);
          },
        );
      void this.ended.then((reason) => {
        clearTimeout(timer);
        if (!started) reject(reason);
      });
    });
  }

  /** The library keeps its pg client in `_client` (not in its type definitions). */
  private client(): unknown {
    return (this.service as unknown as { _client?: unknown })._client;
  }

  /** The walsender's process id (pg_stat_activity.pid) once connected. */
  backendPid(): number | undefined {
    const pid = (this.client() as { processID?: unknown } | null | undefined)?.processID;
    return typeof pid === 'number' && pid > 0 ? pid : undefined;
  }

  /** True when every message received so far has been handled (none waits in the library's queue). */
  caughtUp(): boolean {
    return this.handledCount === this.plugin.parsedCount;
  }

  /**
   * Report `lsn` to Postgres as written, flushed and applied. Still allowed after the stream
   * ended for a reason of ours (the connection may be fine), until `stop()`.
   */
  async acknowledge(lsn: bigint, ping = false): Promise<void> {
    if (lsn <= 0n || this.stopping) return;
    await this.service.acknowledge(formatLsn(lsn - 1n), ping);
  }

  async stop(): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    this.end(new Error('stopped'));
    const client = this.client();
    await closeWithin(
      () => this.service.destroy().catch((err: unknown) => this.log.debug({ err: (err as Error).message }, 'closing replication connection')),
      () => pgSocketOwner(client),
    );
  }

  private end(reason: Error): void {
    if (this.endedWith) return;
    this.endedWith = reason;
    this.resolveEnded(reason);
  }
}
