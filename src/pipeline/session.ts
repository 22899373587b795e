/**
 * One session: the lifecycle of a broker connection, a catalog connection and a replication
 * stream that live and die together. Any failure ends the whole session; the supervisor starts a
 * new one, which resumes from the slot's confirmed position. Nothing survives a session but the
 * slot. What the parts are and how they are wired is assemble.ts (`SessionParts`); this file only
 * decides which state comes next.
 *
 *   connecting ──started──> streaming ──stop, re-plan, new partition──> draining ──> ended
 *       │                       │                                                 ^     ^
 *       │                       └──── failure (final position report first) ──────┘     │
 *       └─────── failure, or stop (the step in progress abandoned) ──────────────────────┘
 *
 *   connecting  -> prepare the source (source/prepare.ts: wal_level, slot check, publication
 *                  sync, slot creation), open the sink, wire the parts, start replication.
 *                  Every step races the stop signal (and is bounded by its own timeout).
 *   streaming   -> messages flow; confirms move the checkpoint; status reports carry it to Postgres
 *   draining    -> (stop, a partition appearing under wal2json, or a flood re-plan) read nothing
 *                  more, wait for outstanding confirms (bounded), report the final position
 *   ended       -> everything closed; `run()` resolved ('stopped' or a re-plan) or rejected with
 *                  the failure, classified once (errors.ts): permanent ones as PrerequisiteError
 *                  (exit 3) or UsageError (exit 2), everything else as SessionFailure (retry)
 *
 * Each state is entered through its own setter, which tells the hooks (the supervisor shows it in
 * /readyz, README "Health and metrics"). `run()` never leaves anything running behind it: every
 * path, stop and failure included, goes through ended.
 */
import type { Logger } from '../ops/logger.js';
import { within } from '../shared/pg-query.js';
import { Stopped, type Step } from '../shared/step.js';
import { SessionFailure } from '../errors.js';
import type { TxPlan } from '../filter/flood-guard.js';
import { ReplanRequest } from './pipeline.js';

export type SessionState = 'connecting' | 'streaming' | 'draining' | 'ended';

/** How a session ended without failing: asked to stop, or a transaction must be read again. */
export type SessionOutcome = 'stopped' | { readonly replan: TxPlan };

/** What ended a streaming session (before the lifecycle decides what it means). */
export type StreamEnd =
  | { readonly kind: 'stream'; readonly reason: Error }
  | { readonly kind: 'sink'; readonly reason: Error }
  | { readonly kind: 'repartitioned' }
  | { readonly kind: 'stalled'; readonly silentMs: number };

/** What the parts get from the lifecycle while connecting: the stop race, and whether a stop came. */
export interface SessionControl {
  readonly step: Step;
  stopping(): boolean;
  /** Aborted on stop: gives up a broker open in progress. */
  readonly signal: AbortSignal;
}

/**
 * The session's collaborators, in the order the lifecycle uses them (assemble.ts is the real
 * one; test/unit/session-lifecycle.test.ts has fakes). Only `close` may be called in any state.
 */
export interface SessionParts {
  /** connecting: the source is ready (slot and publications; source/prepare.ts). */
  prepareSource(control: SessionControl): Promise<void>;
  /** connecting: the sink is open. */
  openSink(control: SessionControl): Promise<void>;
  /** connecting: everything wired and replication started. */
  startStream(control: SessionControl): Promise<void>;
  /** streaming: background work begins (status reports, syncs, snapshots). */
  streaming(): void;
  /** streaming: resolves with what ended the stream; never rejects. */
  ended(): Promise<StreamEnd>;
  /** Messages published and not yet confirmed. */
  unconfirmed(): number;
  /** A failure of the pipeline or the sink seen so far, if any. */
  failure(): Error | null;
  /** The error a session ending this way leaves with (classified: errors.ts). */
  classify(end: Exclude<StreamEnd, { kind: 'repartitioned' }>): Error;
  /** Tell Postgres the safe position now. Never rejects. */
  report(force: boolean): Promise<void>;
  /** The position Postgres was last told, for logs. */
  reported(): string;
  /** Messages published so far, for logs. */
  published(): number;
  /** streaming ends: background work stops. */
  finish(): Promise<void>;
  /** ended: close everything opened; `abandoned` when a stop interrupted a connecting step. */
  close(abandoned: boolean): Promise<void>;
  brokerUrlIndex(): number | undefined;
}

export interface SessionHooks {
  onState(state: SessionState): void;
  onBlocked(blocked: boolean): void;
  /** The position Postgres was last told, after each report. */
  onAcknowledged(lsn: bigint): void;
  /** The replication connection went silent (true) or was heard from again (false). */
  onStalled?(stalled: boolean): void;
}

/** How long the final position report of a failed session may take. */
const FINAL_REPORT_MS = 2_000;
/** How often the drain looks at the confirms. */
const DRAIN_POLL_MS = 20;

export class Session {
  private state: SessionState = 'connecting';
  private stopRequested = false;
  private resolveStop!: () => void;
  private readonly stopSignal = new Promise<void>((resolve) => (this.resolveStop = resolve));
  private readonly abort = new AbortController();
  private readonly control: SessionControl = {
    step: (work) => this.step(work),
    stopping: () => this.stopRequested,
    signal: this.abort.signal,
  };

  constructor(
    private readonly parts: SessionParts,
    private readonly opts: {
      /** PGWARREN_SHUTDOWN_TIMEOUT: how long draining waits for confirms. */
      shutdownTimeoutSeconds: number;
      log: Logger;
      onState: (state: SessionState) => void;
    },
  ) {}

  /** Ask the session to drain and end; `run()` then resolves. */
  stop(): void {
    this.stopRequested = true;
    this.resolveStop();
    // Gives up a broker open in progress; a streaming session drains instead (see stream()).
    this.abort.abort();
  }

  brokerUrlIndex(): number | undefined {
    return this.parts.brokerUrlIndex();
  }

  async run(): Promise<SessionOutcome> {
    // Say so at once: until now the supervisor shows the previous session's end (README "Health and metrics").
    this.toConnecting();
    try {
      await this.connect();
      this.toStreaming();
      return await this.stream();
    } catch (err) {
      if (err instanceof Stopped || (this.stopRequested && this.state !== 'streaming')) return 'stopped';
      throw err;
    } finally {
      // Nothing to finish politely on a connection a stop abandoned mid-step.
      await this.parts.close(this.stopRequested && this.state === 'connecting');
      this.toEnded();
    }
  }

  // One setter per transition: each says so to the hooks.
  private toConnecting(): void {
    this.setState('connecting');
  }
  private toStreaming(): void {
    this.setState('streaming');
  }
  private toDraining(): void {
    this.setState('draining');
  }
  private toEnded(): void {
    this.setState('ended');
  }
  private setState(state: SessionState): void {
    this.state = state;
    this.opts.onState(state);
  }

  /** connecting: each step abandoned on stop. */
  private async connect(): Promise<void> {
    await this.parts.prepareSource(this.control);
    if (this.stopRequested) throw new Stopped();
    await this.parts.openSink(this.control);
    if (this.stopRequested) throw new Stopped();
    await this.parts.startStream(this.control);
  }

  /** `work`, unless a stop comes first: then the step is abandoned (close() closes its connection). */
  private async step<T>(work: Promise<T>): Promise<T> {
    if (this.stopRequested) throw new Stopped();
    work.catch(() => undefined);
    return Promise.race([work, this.stopSignal.then(() => Promise.reject(new Stopped()))]);
  }

  /** streaming, until something ends it; then draining or straight to ended. */
  private async stream(): Promise<SessionOutcome> {
    const { parts } = this;
    try {
      parts.streaming();
      const end = await Promise.race([parts.ended(), this.stopSignal.then(() => ({ kind: 'stop' as const }))]);
      if (end.kind === 'stop') {
        await this.drain();
        return 'stopped';
      }
      if (end.kind === 'repartitioned') {
        await this.drain();
        throw new SessionFailure('postgres', new Error('a partitioned table appeared: restarting the wal2json stream without table filters'));
      }
      if (this.stopRequested) return 'stopped';
      if (end.kind === 'stream' && end.reason instanceof ReplanRequest) return await this.replan(end.reason.plan);
      throw parts.classify(end);
    } finally {
      await parts.finish();
      // Whatever ended the session, Postgres hears what the broker confirmed (a stop has already
      // drained and reported): the next session then re-sends only what is unconfirmed.
      if (!this.stopRequested) await this.finalReport();
    }
  }

  /**
   * A transaction outgrew the flood buffer: settle what came before it, and what its first read
   * diverted, so the next read starts at it. Not a shutdown: wait for confirms as streaming does,
   * for as long as the broker is up (a deadline here could fail every attempt).
   */
  private async replan(plan: TxPlan): Promise<SessionOutcome> {
    const { parts } = this;
    while (parts.unconfirmed() > 0 && !this.stopRequested && !parts.failure()) await sleep(DRAIN_POLL_MS);
    await this.drain();
    if (this.stopRequested) return 'stopped';
    // What the first read diverted may be skipped only if the broker confirmed all of it.
    // Otherwise fail: the next session reads the transaction from scratch, and its first
    // read sends exactly the same messages again (a second read without the prefix would
    // batch those rows differently under the same messageIds; see README "Batched mode").
    const allConfirmed = parts.unconfirmed() === 0 && !parts.failure();
    if (!allConfirmed && plan.diverted) {
      const reason = parts.failure() ?? new Error('the rows diverted before a flood re-read were not all confirmed by the broker');
      throw new SessionFailure('rabbitmq', reason);
    }
    return { replan: plan };
  }

  /** draining: wait (bounded) for outstanding confirms, then tell Postgres the safe position. */
  private async drain(): Promise<void> {
    const { parts } = this;
    this.toDraining();
    const deadline = Date.now() + this.opts.shutdownTimeoutSeconds * 1000;
    while (parts.unconfirmed() > 0 && Date.now() < deadline && !parts.failure()) await sleep(DRAIN_POLL_MS);
    const left = parts.unconfirmed();
    if (left > 0) this.opts.log.warn({ unconfirmed: left }, 'shutdown: gave up waiting for broker confirms; those changes will be sent again');
    await parts.report(true);
    this.opts.log.info({ confirmed: parts.reported(), published: parts.published() }, 'confirmed position reported');
  }

  /** The confirmed position, once more, bounded: the replication connection may be the dead part. */
  private async finalReport(): Promise<void> {
    const before = this.parts.reported();
    try {
      await within(this.parts.report(true), FINAL_REPORT_MS, 'final position report');
    } catch {
      /* the connection is gone: the next session starts from the last position Postgres heard */
    }
    if (this.parts.reported() !== before) this.opts.log.info({ confirmed: this.parts.reported() }, 'confirmed position reported at session end');
  }
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
