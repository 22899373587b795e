/**
 * Notices a replication stream that has gone silent, the way a standby's wal_receiver_timeout
 * does. Postgres answers a status report that asks for a reply at once, so while the daemon
 * waits on Postgres it pings every status interval of silence; a healthy server always answers.
 *
 *   live     -> silent for STALL_READY_INTERVALS intervals  -> stalled (not ready, logged once)
 *   stalled  -> heard from again                            -> live (logged)
 *   stalled  -> silent for STALL_RECONNECT_INTERVALS        -> timed out (the session ends)
 *
 * Silence counts only while the daemon waits on Postgres: while the broker holds the pipeline
 * up (backpressure), the stream library has paused the socket and silence says nothing about
 * Postgres. A pipeline held up by Postgres itself (a catalog query on a dead network) counts.
 *
 * Silence is not always a stall: while Postgres decodes a large transaction of tables it then
 * filters out, its walsender sends nothing and reads no pings for as long as that takes. So from
 * PROBE_AFTER_INTERVALS of silence on, once per interval, the watch asks another way (`probe`:
 * the session asks over its catalog connection what the walsender is doing). "Busy" counts as
 * heard; no answer, or a walsender idle or gone, lets the silence go on counting. A timeout
 * waits for a probe in flight (each probe is bounded by its caller).
 */
import type { Logger } from '../ops/logger.js';

export const STALL_READY_INTERVALS = 3;
export const STALL_RECONNECT_INTERVALS = 6;
export const PROBE_AFTER_INTERVALS = 2;

export type ProbeResult = 'busy' | 'stalled';

export interface StallWatchOptions {
  readonly intervalMs: number;
  readonly log: Logger;
  /** Ask Postgres for an immediate reply (a status report with the reply flag). */
  ping(): void;
  /** Ask another way whether Postgres is busy (decoding) rather than gone; may reject (= no answer). */
  probe?(): Promise<ProbeResult>;
  /** The stream went silent (true) or was heard from again (false). */
  onStalled(stalled: boolean): void;
  /** Silence lasted STALL_RECONNECT_INTERVALS intervals; called once. */
  onTimeout(silentMs: number): void;
  /** The confirmed position, for log lines. */
  confirmed(): string;
}

export class StallWatch {
  private lastHeard = Date.now();
  private lastPing = 0;
  private stalled = false;
  private timedOut = false;
  private probing = false;
  private lastProbe = 0;
  private saidBusy = false;

  constructor(private readonly opts: StallWatchOptions) {}

  /** Something arrived from Postgres, or the daemon finished handling it. */
  heard(): void {
    this.lastHeard = Date.now();
    this.saidBusy = false;
  }

  /** Once a second. `waitingOnPostgres`: the broker is not what holds the pipeline up. */
  tick(waitingOnPostgres: boolean): void {
    if (this.timedOut) return;
    const now = Date.now();
    if (!waitingOnPostgres) {
      this.lastHeard = now;
      return;
    }
    const interval = this.opts.intervalMs;
    const silent = now - this.lastHeard;
    if (silent >= interval && now - this.lastPing >= interval) {
      this.lastPing = now;
      this.opts.ping();
    }
    this.set(silent > STALL_READY_INTERVALS * interval, silent);
    if (silent > STALL_RECONNECT_INTERVALS * interval && !this.probing) {
      this.timedOut = true;
      this.opts.onTimeout(silent);
      return;
    }
    if (this.opts.probe && !this.probing && silent >= PROBE_AFTER_INTERVALS * interval && now - this.lastProbe >= interval) this.startProbe(silent);
  }

  private startProbe(silent: number): void {
    this.probing = true;
    this.lastProbe = Date.now();
    this.opts.probe!()
      .then((result) => {
        if (result !== 'busy' || this.timedOut) return;
        if (!this.saidBusy) {
          this.opts.log.info(
            { silentSeconds: Math.round(silent / 1000), confirmed: this.opts.confirmed() },
            'nothing from Postgres on the replication connection, but its walsender is busy decoding: not a stall',
          );
        }
        this.heard();
        this.saidBusy = true;
      })
      .catch((err: unknown) => this.opts.log.debug({ err: (err as Error).message }, 'stall probe got no answer'))
      .finally(() => (this.probing = false));
  }

  /** The session is over: whatever happens next is another session's. */
  end(): void {
    if (this.stalled) {
      this.stalled = false;
      this.opts.onStalled(false);
    }
  }

  private set(stalled: boolean, silentMs: number): void {
    if (stalled === this.stalled) return;
    this.stalled = stalled;
    const seconds = Math.round(silentMs / 1000);
    if (stalled) {
      this.opts.log.warn({ silentSeconds: seconds, confirmed: this.opts.confirmed() }, `replication stream stalled: nothing from Postgres for ${seconds} s; not ready`);
    } else {
      this.opts.log.info({ confirmed: this.opts.confirmed() }, 'replication stream responsive again');
    }
    this.opts.onStalled(stalled);
  }
}
