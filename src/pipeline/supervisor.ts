/**
 * Keeps sessions running until asked to stop.
 *
 * States: starting -> (session) -> waiting (backoff after a failure) -> (session) ... -> stopped.
 * Transient failures (connection refused or dropped, broker alarm, slot held by another
 * instance) are retried forever with capped exponential backoff and jitter; a prerequisite that
 * retrying cannot fix ends the daemon with exit code 3. The loop never throws anything else: an
 * unexpected error in a session is logged, counted and retried like a transient one.
 */
import { ShapeMemory } from './shapes.js';
import type { Logger } from '../ops/logger.js';
import type { Metrics } from '../ops/metrics.js';
import { PrerequisiteError, SessionFailure, UsageError } from '../errors.js';
import { Session, type SessionState } from './session.js';
import { SessionAssembly, type SessionSettings } from './assemble.js';
import type { TxPlan } from '../filter/flood-guard.js';
import { DeliveryMemory } from './delivery-memory.js';
import { formatLsn } from '../source/lsn.js';
import { tableNameOfKey } from '../shared/table-name.js';

export interface Health {
  /** A session is streaming, the broker is not blocking publishes and Postgres is not silent. */
  ready(): boolean;
  readonly state: SessionState | 'waiting' | 'stopped';
  /** The state with why it is not ready, for /readyz. */
  reason(): string;
}

export class Supervisor implements Health {
  state: SessionState | 'waiting' | 'stopped' = 'connecting';
  private blocked = false;
  private stalled = false;
  private lastFailure = '';
  /** Sessions that failed since the last one that streamed (for /readyz while connecting again). */
  private failures = 0;
  private session: Session | null = null;
  private stopping = false;
  private wakeFromBackoff: (() => void) | null = null;
  private everStreamed = false;
  private acknowledged = 0n;
  /** Flood verdicts for transactions that outgrew the buffer, kept until read again. */
  private readonly plans = new Map<bigint, TxPlan>();
  /** Table shapes seen, for schema events; outlives sessions (each rewinds it). */
  private readonly shapes = new ShapeMemory();
  /** What sessions learn about messages the broker refused (README: Delivery). */
  private readonly memory = new DeliveryMemory();

  constructor(
    private readonly settings: SessionSettings,
    private readonly opts: { log: Logger; metrics: Metrics; reconnectMaxDelaySeconds: number },
  ) {}

  ready(): boolean {
    return this.state === 'streaming' && !this.blocked && !this.stalled;
  }

  reason(): string {
    if (this.state === 'streaming') {
      if (this.blocked) return 'streaming, but the broker blocks publishing (resource alarm)';
      if (this.stalled) return 'streaming, but the replication stream from Postgres has stalled';
      return 'streaming';
    }
    if (this.state === 'waiting' && this.lastFailure) return `waiting to reconnect: ${this.lastFailure}`;
    if (this.state === 'connecting' && this.failures > 0) return `connecting (attempt ${this.failures + 1}; last failure: ${this.lastFailure})`;
    return this.state;
  }

  stop(): void {
    if (this.stopping) return;
    this.stopping = true;
    this.session?.stop();
    this.wakeFromBackoff?.();
  }

  /** Resolves when stopped cleanly; rejects with a PrerequisiteError when retrying cannot help. */
  async run(): Promise<void> {
    const { metrics } = this.opts;
    // Every line of the daemon's sessions names the slot.
    const log = this.opts.log.child({ slot: this.settings.slot });
    let attempt = 0;
    let brokerIndex = 0;
    let standingBy = false;
    while (!this.stopping) {
      const parts = new SessionAssembly(this.settings, {
        mayCreateSlot: !this.everStreamed,
        firstUrl: brokerIndex,
        plans: this.plans,
        shapes: this.shapes,
        memory: this.memory,
        log,
        metrics,
        hooks: {
          onBlocked: (b) => (this.blocked = b),
          onStalled: (s) => (this.stalled = s),
          onAcknowledged: (lsn) => {
            this.acknowledged = lsn;
            metrics.confirmedLsn.set(Number(lsn));
            this.memory.passed(lsn);
          },
        },
      });
      const session = new Session(parts, {
        shutdownTimeoutSeconds: this.settings.shutdownTimeoutSeconds,
        log,
        onState: (s) => {
          this.state = s;
          metrics.streaming.set(s === 'streaming' ? 1 : 0);
          if (s === 'streaming') {
            this.everStreamed = true;
            attempt = 0;
            this.failures = 0;
          }
        },
      });
      this.session = session;
      if (this.stopping) break;
      try {
        const outcome = await session.run();
        if (outcome === 'stopped') break;
        // Keep only the newest few plans: older ones belong to transactions already acknowledged.
        this.plans.set(outcome.replan.commitLsn, outcome.replan);
        for (const lsn of [...this.plans.keys()].slice(0, -16)) this.plans.delete(lsn);
        log.info({ lsn: formatLsn(outcome.replan.commitLsn), flooded: [...outcome.replan.flooded.keys()].map(tableNameOfKey) }, 'reading an oversized transaction again with its flood verdict known');
        continue;
      } catch (err) {
        // The session classified the fault (errors.ts): permanent ones arrive as PrerequisiteError,
        // never wrapped, but a wrapped one must not be retried forever either.
        if (err instanceof PrerequisiteError || err instanceof UsageError) throw err;
        if (err instanceof SessionFailure && err.cause instanceof PrerequisiteError) throw err.cause;
        if (this.stopping) break;
        const failure = err instanceof SessionFailure ? err : new SessionFailure('pipeline', err);
        if (failure.target === 'rabbitmq') brokerIndex = ((session.brokerUrlIndex() ?? brokerIndex) + 1) % this.settings.amqpUrls.length;
        let delay: number;
        if (failure.minDelayMs > 0) {
          // Another instance holds the slot: poll at a steady pace so takeover is quick, and say
          // so once rather than on every poll.
          delay = Math.round(failure.minDelayMs * (0.8 + Math.random() * 0.4));
          if (!standingBy) log.info({ err: failure.message }, `standing by: ${failure.message}`);
          else log.debug({ err: failure.message }, 'still standing by');
          standingBy = true;
        } else {
          standingBy = false;
          metrics.reconnects.inc({ target: failure.target === 'pipeline' ? 'postgres' : failure.target });
          attempt++;
          delay = backoffMs(attempt, this.opts.reconnectMaxDelaySeconds * 1000);
          log.warn(
            {
              target: failure.target,
              err: failure.message,
              attempt,
              retryInSeconds: +(delay / 1000).toFixed(1),
              confirmed: formatLsn(this.acknowledged),
              published: metrics.publishedCount,
            },
            `session ended: ${failure.message}; reconnecting in ${(delay / 1000).toFixed(1)} s`,
          );
          if (!(err instanceof SessionFailure)) log.error({ err }, 'unexpected error in session');
        }
        this.state = 'waiting';
        this.blocked = false;
        this.stalled = false;
        this.lastFailure = failure.message;
        this.failures++;
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, delay);
          this.wakeFromBackoff = () => {
            clearTimeout(timer);
            resolve();
          };
        });
        this.wakeFromBackoff = null;
      }
    }
    this.state = 'stopped';
    this.opts.metrics.streaming.set(0);
    log.info({ confirmed: formatLsn(this.acknowledged), published: metrics.publishedCount }, 'stopped');
  }
}

/** 0.5 s, 1 s, 2 s ... capped, with ±20 % jitter so several instances do not retry in step. */
export function backoffMs(attempt: number, capMs: number): number {
  const base = Math.min(capMs, 500 * 2 ** Math.max(0, attempt - 1));
  return Math.round(base * (0.8 + Math.random() * 0.4));
}
