/**
 * One session: a broker connection, a catalog connection and a replication stream, living and
 * dying together. Any failure ends the whole session; the supervisor starts a new one, which
 * resumes from the slot's confirmed position. Nothing survives a session but the slot.
 *
 * States:
 *   connecting  -> check the slot (wait if another pgwarren holds it), sync the publications,
 *                  create the slot if missing (only after them: see ensureSlot), open the
 *                  broker, start replication
 *   streaming   -> messages flow; confirms move the checkpoint; status reports carry it to Postgres
 *   draining    -> (stop requested) read nothing more, wait for outstanding confirms (bounded),
 *                  report the final position
 *   ended       -> everything closed; `run()` resolved ('stopped') or rejected (the failure)
 *
 * Faults (CONTRACT §9): every connect and query is bounded (PGWARREN_CONNECT_TIMEOUT,
 * PGWARREN_QUERY_TIMEOUT) except slot creation, which legitimately waits for transactions open
 * elsewhere and says which. A failure is classified once (errors.ts): permanent ones leave as
 * PrerequisiteError (exit 3), everything else as SessionFailure (retry). A stop is honoured in
 * every state: while connecting, the step in progress is abandoned and its connection closed.
 * Whenever a streaming session ends, failure included, the confirmed position is reported first,
 * so the next session does not re-send what the broker already confirmed.
 */
import pg from 'pg';
import type { Logger } from '../ops/logger.js';
import type { Metrics } from '../ops/metrics.js';
import { AmqpSink, SinkError, type AmqpTls } from '../sink/amqp-sink.js';
import type { Sink, SinkKind } from '../sink/sink.js';
import { StreamSink } from '../sink/stream/stream-sink.js';
import { StdoutSink } from '../sink/stdout-sink.js';
import { Checkpoint } from './checkpoint.js';
import { StallWatch, STALL_RECONNECT_INTERVALS } from './stall-watch.js';
import { Pipeline, ReplanRequest } from './pipeline.js';
import type { ShapeMemory } from './shapes.js';
import type { DeliveryMemory } from './delivery-memory.js';
import { Shaper } from './shaping.js';
import { Transformer, type TransformFn } from './transform.js';
import { bodyEncoder, type Compression } from '../sink/compression.js';
import { parseFilter, type Expr } from '../filter/row-filter.js';
import type { FloodAction, TxPlan } from '../filter/flood-guard.js';
import { EventBuilder } from '../events/envelope.js';
import { Router, type RouteRule } from '../events/router.js';
import { OperationSelection, TableSelection, excludedColumnsLookup, ruleLookup } from '../filter/selection.js';
import { connectPg, destroyClient, within, type PgTimeouts, type QueryFn } from '../source/pg-query.js';
import { RelationCatalog, hasPartitions } from '../source/relation-catalog.js';
import { TypeCatalog } from '../source/type-catalog.js';
import { checkSlot, ensurePublication, ensureSlot, keylessPublicationName, requireLogicalWal, type SlotState } from '../source/slot-admin.js';
import { ReplicationStream } from '../source/replication-stream.js';
import { PgoutputDecoder } from '../source/pgoutput-decoder.js';
import { Wal2jsonDecoder, wal2jsonTableFilter } from '../source/wal2json-decoder.js';
import type { Decoder } from '../source/decoder.js';
import { formatLsn, parseLsn } from '../source/lsn.js';
import { classifyPgError, errorMessage, PrerequisiteError, sqlState, UsageError } from '../errors.js';
import { tlsFailure } from '../shared/tls.js';
import { redactUrl } from '../shared/redact.js';
import { LogThrottle } from '../ops/throttle.js';
import { closeWithin, pgSocketOwner } from '../ops/close.js';
import { LazyPgClient } from '../ops/lazy-client.js';
import { PeriodicTask } from '../ops/periodic.js';
import type { Op, Plugin, SourceInfo } from '../types.js';
import { tableName } from '../filter/table-name.js';
import { SnapshotSession } from '../snapshot/session.js';

export interface SessionSettings {
  readonly pg: pg.ClientConfig;
  readonly database: string;
  readonly amqpUrls: readonly string[];
  readonly amqpTls?: AmqpTls;
  readonly slot: string;
  readonly publication: string;
  readonly plugin: Plugin;
  readonly tables: readonly string[];
  readonly excludeTables: readonly string[];
  readonly operations: readonly Op[];
  readonly exchange: string;
  readonly exchangeType: string;
  readonly routingKey: string;
  /** Routing key template of application events without a routing_key ({db}, {prefix}). */
  readonly messageRoutingKey: string;
  /** Commit events after each transaction that published anything (CONTRACT §12). */
  readonly transactionEvents: boolean;
  readonly rules: readonly (RouteRule & { excludeColumns?: readonly string[]; floodThreshold?: number; where?: string; skipUnchanged?: boolean })[];
  /** README "Shaping the stream". */
  readonly skipUnchanged: boolean;
  readonly compression: Compression;
  readonly transform: TransformFn | null;
  readonly transformTimeoutSeconds: number;
  readonly floodThreshold: number;
  readonly floodAction: FloodAction;
  readonly floodExchange: string;
  readonly floodBufferEvents: number;
  readonly floodBufferBytes: number;
  readonly unroutable: 'warn' | 'block';
  /** Where changes that can never be published as configured go (README: Dead letters). */
  readonly deadLetterExchange: string;
  /** Largest body published; an event above it is dead-lettered. */
  readonly maxMessageBytes: number;
  readonly maxInflight: number;
  /** Batched mode: events per message (1 = off) and the bound on a message body. */
  readonly batchMaxEvents: number;
  readonly batchMaxBytes: number;
  readonly shutdownTimeoutSeconds: number;
  readonly statusIntervalSeconds: number;
  /** Bounds on connecting to and querying Postgres (the broker's open uses connectMs). */
  readonly timeouts: PgTimeouts;
  /** How often new tables matching the selection are added to the publication; 0 = only at start. */
  readonly publicationSyncSeconds: number;
  /** Where events go (default amqp); `stream` uses `stream` below. */
  readonly sink?: SinkKind;
  readonly stream?: {
    readonly url: string;
    readonly stream: string;
    readonly partitions: number;
    readonly maxAge?: string;
    readonly maxBytes?: number;
  };
  /** Snapshots (src/snapshot/): an initial one when the slot is created, and the chunk size of that one. */
  readonly snapshot: 'initial' | 'never';
  readonly snapshotChunkSize: number;
}

export type SessionState = 'connecting' | 'streaming' | 'draining' | 'ended';

/** How a session ended without failing: asked to stop, or a transaction must be read again. */
export type SessionOutcome = 'stopped' | { readonly replan: TxPlan };

/** Which side a session failure came from, for reconnect metrics and logs. */
export class SessionFailure extends Error {
  constructor(
    readonly target: 'postgres' | 'rabbitmq' | 'pipeline',
    override readonly cause: unknown,
    /** How long to wait at least before the next attempt (e.g. slot held by another process). */
    readonly minDelayMs = 0,
  ) {
    super(cause instanceof Error ? cause.message : String(cause));
  }
}

/** Thrown inside a session when a stop abandons the step in progress; `run()` resolves 'stopped'. */
class Stopped extends Error {
  constructor() {
    super('stopped');
  }
}

/** How long the final position report of a failed session may take. */
const FINAL_REPORT_MS = 2_000;
/** How often slot creation is checked on and says what it still waits for. */
const SLOT_WAIT_LOG_MS = 5_000;
/** Failed checks in a row after which a slot creation is given up as unreachable (see createSlot). */
const SLOT_WAIT_FAILURES = 3;

export interface SessionHooks {
  onState(state: SessionState): void;
  onBlocked(blocked: boolean): void;
  /** The position Postgres was last told, after each report. */
  onAcknowledged(lsn: bigint): void;
  /** The replication connection went silent (true) or was heard from again (false). */
  onStalled?(stalled: boolean): void;
}

export class Session {
  private stopRequested = false;
  private resolveStop!: () => void;
  private readonly stopSignal = new Promise<void>((resolve) => (this.resolveStop = resolve));
  private sink: Sink | null = null;
  private catalogClient: pg.Client | null = null;
  private stream: ReplicationStream<unknown> | null = null;
  private lastReported = 0n;
  private lastReportAt = 0;
  private readonly abort = new AbortController();
  /** Backend pid of the catalog connection while it creates the slot (a stop cancels it). */
  private creatingSlotPid: number | null = null;
  /** A second connection used while the slot is created: who it waits for, and to cancel it. */
  private helper: LazyPgClient | null = null;

  constructor(
    private readonly settings: SessionSettings,
    private readonly opts: {
      mayCreateSlot: boolean;
      firstUrl: number;
      plans: ReadonlyMap<bigint, TxPlan>;
      /** Table shapes seen by earlier sessions; rewound here to the slot's confirmed position. */
      shapes: ShapeMemory;
      /** Kept by the supervisor across sessions: confirmed prefixes, careful mode, refused messages. */
      memory: DeliveryMemory;
      log: Logger;
      metrics: Metrics;
      hooks: SessionHooks;
    },
  ) {}

  /** Ask the session to drain and end; `run()` then resolves. */
  stop(): void {
    this.stopRequested = true;
    this.resolveStop();
    // Gives up a broker open in progress; a streaming session drains instead (see runInner).
    this.abort.abort();
  }

  brokerUrlIndex(): number | undefined {
    return this.sink?.urlIndex;
  }

  async run(): Promise<SessionOutcome> {
    // Say so at once: until now the supervisor shows the previous session's end (README "Health and metrics").
    this.setState('connecting');
    try {
      return await this.runInner();
    } catch (err) {
      if (err instanceof Stopped || (this.stopRequested && this.state !== 'streaming')) return 'stopped';
      throw err;
    } finally {
      await this.closeAll();
      this.setState('ended');
    }
  }

  private state: SessionState = 'connecting';

  /** `work`, unless a stop comes first: then the step is abandoned (closeAll closes its connection). */
  private async step<T>(work: Promise<T>): Promise<T> {
    if (this.stopRequested) throw new Stopped();
    work.catch(() => undefined);
    return Promise.race([work, this.stopSignal.then(() => Promise.reject(new Stopped()))]);
  }

  private async runInner(): Promise<SessionOutcome> {
    const { settings, opts } = this;
    const log = opts.log;

    // 1. Catalog connection: prerequisites, slot, publication.
    const where = `${String(settings.pg.host)}:${String(settings.pg.port)}/${settings.database}`;
    let query: QueryFn;
    try {
      ({ query } = await this.step(
        connectPg(settings.pg, {
          applicationName: 'pgwarren-catalog',
          timeouts: settings.timeouts,
          onError: (err) => log.debug({ err: err.message }, 'catalog connection error'),
          hold: (client) => (this.catalogClient = client),
        }),
      ));
    } catch (err) {
      if (err instanceof Stopped) throw err;
      const tls = tlsFailure(err, 'PGWARREN_PG_SSL_ROOT_CERT (or sslrootcert), sslmode, and that the host name in the URL is one the certificate names');
      if (tls) throw new PrerequisiteError(`connecting to Postgres at ${where}: ${tls}`, { cause: err });
      throw pgFailure(err, `connecting to Postgres at ${where}`);
    }
    log.info({ postgres: where, user: settings.pg.user, tls: Boolean(settings.pg.ssl) }, `connected to Postgres ${where}`);
    await this.pg(() => requireLogicalWal(query), 'checking wal_level');
    const slotOpts = { slot: settings.slot, plugin: settings.plugin, database: settings.database, mayCreate: opts.mayCreateSlot };
    const existing = await this.pg(() => checkSlot(query, slotOpts), 'checking the slot');
    if (existing.active && existing.activePid) {
      throw new SessionFailure(
        'postgres',
        new Error(`slot "${settings.slot}" is in use by process ${existing.activePid} (another pgwarren?); waiting to take over`),
        1000,
      );
    }
    const tables = new TableSelection(settings.tables, settings.excludeTables);
    const operations = new OperationSelection(settings.operations);
    const excludedColumns = excludedColumnsLookup(settings.rules);
    const rowFilters = ruleLookup<(typeof settings.rules)[number], string | null>(settings.rules, (r) => r.where, null);
    let firstSync = true;
    let publicationExisted = false;
    let lastKeyless = '';
    let lastDenied = '';
    const syncPublication = async () => {
      const pub = await ensurePublication(query, { publication: settings.publication, tables, operations, excludedColumns, rowFilters });
      if (firstSync) publicationExisted = !pub.created;
      // The role may read the publications but not change them (the recommended deployment: setup
      // as the owner, run as a REPLICATION role). That never stops the stream (CONTRACT §9): the
      // tables already published keep flowing; the fix is logged once per distinct change.
      const denied = pub.denied ? pub.denied.statements.join(';\n') : '';
      if (pub.denied && denied !== lastDenied) {
        log.warn(
          { publication: settings.publication, err: pub.denied.message, wanted: pub.denied.statements },
          `publication sync lacks a privilege, streaming goes on without the change: ${pub.denied.message}. ` +
            `Run "pgwarren setup" as the tables' owner, or as the owner: ${pub.denied.statements.join('; ')}`,
        );
      } else if (!pub.denied && lastDenied !== '') {
        log.info({ publication: settings.publication }, 'publication sync no longer lacks a privilege');
      }
      lastDenied = denied;
      if (pub.created || pub.added.length || pub.removed.length || pub.recolumned.length) {
        log.info(
          {
            publication: settings.publication,
            created: pub.created,
            added: pub.added.map(nameOf),
            removed: pub.removed.map(nameOf),
            columnLists: pub.recolumned.map((t) => ({ table: nameOf(t), columns: t.columns ?? 'all' })),
          },
          'publication updated',
        );
      }
      const keyless = pub.withoutIdentity.map(nameOf).join(', ');
      if (keyless !== lastKeyless && keyless !== '') {
        log.warn(
          { tables: pub.withoutIdentity.map(nameOf) },
          `only inserts and truncates are captured for ${keyless}: no primary key or replica identity, and Postgres refuses ` +
            `UPDATE and DELETE on a table that publishes them. Add a primary key or run ALTER TABLE ... REPLICA IDENTITY FULL to capture them`,
        );
      }
      lastKeyless = keyless;
      if (firstSync) {
        for (const t of pub.notes) {
          log.info({ table: nameOf(t), reason: t.note }, `excluded columns of ${nameOf(t)} are left out of events but still sent by Postgres: ${t.note}`);
        }
      }
      firstSync = false;
    };
    if (settings.plugin === 'pgoutput') await this.pg(syncPublication, 'syncing the publication');
    if (this.stopRequested) return 'stopped';
    // Only now, after the publications: see ensureSlot.
    let slotState = existing;
    if (!existing.exists) {
      const slot = await this.createSlot(query, slotOpts);
      slotState = slot.state;
      if (slot.created && publicationExisted) {
        log.warn(
          { plugin: settings.plugin, publication: settings.publication, from: slot.state.confirmedFlushLsn },
          `slot "${settings.slot}" was missing though publication "${settings.publication}" exists, so pgwarren ran here before: created a new slot. ` +
            `Changes made while no slot existed (a failover to a standby, a dropped slot) are in no slot: re-sync consumers that need them`,
        );
      } else if (slot.created) log.info({ plugin: settings.plugin, from: slot.state.confirmedFlushLsn }, 'created replication slot');
      if (slot.created && settings.snapshot === 'initial') await SnapshotSession.requestInitial(query, settings, log);
    }

    // 2. Broker.
    const unroutableLog = new LogThrottle();
    const router = new Router({ exchange: settings.exchange, routingKey: settings.routingKey }, settings.rules);
    try {
      this.sink =
        settings.sink === 'stream' || settings.sink === 'stdout'
          ? await this.step(this.openOtherSink())
          : await this.step(AmqpSink.open({
        openTimeoutMs: settings.timeouts.connectMs,
        signal: this.abort.signal,
        urls: settings.amqpUrls,
        firstUrl: opts.firstUrl,
        exchanges: this.exchanges(router),
        unroutable: settings.unroutable,
        tls: settings.amqpTls,
        encoder: bodyEncoder(settings.compression),
        log: log.child({ component: 'broker' }),
        onUnroutable: (info) => {
          opts.metrics.unroutable.inc();
          const count = unroutableLog.hit(`${info.exchange}\u0000${info.routingKey}`);
          if (count > 0) {
            log.warn(
              { ...info, count },
              `messages returned by the broker: no queue is bound for routing key "${info.routingKey}" on exchange "${info.exchange}" (PGWARREN_UNROUTABLE=${settings.unroutable})`,
            );
          }
        },
        onBlockedChange: (blocked) => opts.hooks.onBlocked(blocked),
      }));
    } catch (err) {
      if (err instanceof Stopped || this.stopRequested) throw new Stopped();
      if (err instanceof SinkError && err.severity === 'fatal') throw new PrerequisiteError(err.message, { cause: err });
      throw new SessionFailure('rabbitmq', err);
    }
    const sink = this.sink;
    if (this.stopRequested) return 'stopped';

    // 3. Replication.
    const source: SourceInfo = { name: 'pgwarren', db: settings.database, slot: settings.slot, plugin: settings.plugin };
    const relations = new RelationCatalog(query);
    const types = new TypeCatalog(query);
    // wal2json names a partition's changes after the leaf, so its table filters (which would see
    // leaf names) are only pushed down while the database has no partitions.
    const pushdown = settings.plugin === 'wal2json' && !(await this.pg(() => hasPartitions(query), 'looking for partitions'));
    const decoder = this.decoder(relations, types, pushdown);
    const builder = new EventBuilder(source, types, excludedColumns);
    const checkpoint = new Checkpoint(slotState.confirmedFlushLsn ? parseLsn(slotState.confirmedFlushLsn) : 0n);
    opts.metrics.inflightSource = () => checkpoint.outstanding();
    this.lastReported = checkpoint.safeLsn();
    // Transactions after the confirmed position are read again: so are their shape changes.
    opts.shapes.rewind(checkpoint.safeLsn());
    const snapshots = new SnapshotSession({ settings, builder, types, sink, metrics: opts.metrics, log });
    const pipeline = new Pipeline({
      source,
      tables,
      operations,
      builder,
      prepareRelation: (rel) => types.ensure(builder.typeOids(rel)),
      router,
      sink,
      checkpoint,
      maxInflight: settings.maxInflight,
      batch: { maxEvents: settings.batchMaxEvents, maxBytes: settings.batchMaxBytes },
      deadLetter: { exchange: settings.deadLetterExchange, maxMessageBytes: settings.maxMessageBytes },
      shaper: this.shaper(types, builder, log),
      memory: opts.memory,
      metrics: opts.metrics,
      log,
      flood: {
        action: settings.floodAction,
        exchange: settings.floodExchange,
        bufferEvents: settings.floodBufferEvents,
        bufferBytes: settings.floodBufferBytes,
        thresholdFor: ruleLookup(settings.rules, (r) => r.floodThreshold, settings.floodThreshold),
      },
      plans: opts.plans,
      messageRoutingKey: settings.messageRoutingKey,
      transactionEvents: settings.transactionEvents,
      shapes: opts.shapes,
      snapshots: snapshots.tap,
    });

    let stallTimeout = (_silentMs: number): void => undefined;
    const stalledOut = new Promise<number>((resolve) => (stallTimeout = resolve));
    const watch = new StallWatch({
      intervalMs: settings.statusIntervalSeconds * 1000,
      log,
      ping: () => void this.report(checkpoint, true, true),
      probe: () => this.probeWalsender(query),
      onStalled: (stalled) => opts.hooks.onStalled?.(stalled),
      onTimeout: (silentMs) => stallTimeout(silentMs),
      confirmed: () => formatLsn(this.lastReported),
    });
    const stream = new ReplicationStream<unknown>(
      { ...settings.pg, connectionTimeoutMillis: settings.timeouts.connectMs },
      settings.slot,
      decoder,
      {
        onMessage: async (parsed) => {
          watch.heard();
          if (this.stopRequested) await new Promise<never>(() => undefined); // read nothing more
          await pipeline.handle(await decoder.decode(parsed));
          watch.heard();
        },
        onKeepalive: (walEnd, shouldRespond) => {
          watch.heard();
          // An idle slot must not hold WAL: with nothing received unhandled and nothing
          // unconfirmed, the server's position is safe to confirm.
          if (!this.stopRequested && stream.caughtUp() && !pipeline.inTransaction()) checkpoint.idle(walEnd);
          if (shouldRespond) void this.report(checkpoint, true);
        },
      },
      log.child({ component: 'replication' }),
    );
    this.stream = stream;
    try {
      await this.step(stream.start(settings.timeouts.connectMs + settings.timeouts.queryMs));
    } catch (err) {
      if (err instanceof Stopped) throw err;
      // 55006: the slot is active for another process (another pgwarren): stand by.
      throw pgFailure(err, `starting replication from slot "${settings.slot}"`, sqlState(err) === '55006' ? 1000 : 0, REPLICATION_FIXES);
    }
    this.setState('streaming');
    snapshots.start();
    log.info(
      { plugin: settings.plugin, from: formatLsn(checkpoint.safeLsn()), broker: redactUrl(sink.url), published: opts.metrics.publishedCount },
      'streaming',
    );

    watch.heard();
    const ticker = setInterval(() => {
      void this.report(checkpoint, false);
      // Silence while the broker holds the pipeline up says nothing about Postgres; while a
      // catalog query through a dead network holds it up, it does.
      if (!this.stopRequested) watch.tick(!pipeline.waitingOnBroker());
    }, 1000);
    // Tables created later that match the selection join the publication without a restart.
    // (Rows written to a new table before it joins are not in the slot: see README.)
    // With wal2json table filters pushed down, the first partition to appear makes them wrong
    // (wal2json would filter it by the leaf's name): restart the stream without them.
    let partitionsAppeared = (): void => undefined;
    const repartitioned = new Promise<void>((resolve) => (partitionsAppeared = resolve));
    const syncEveryMs = settings.publicationSyncSeconds * 1000;
    const syncer =
      syncEveryMs <= 0
        ? null
        : settings.plugin === 'pgoutput'
          ? new PeriodicTask(syncPublication, syncEveryMs, log, 'publication sync')
          : pushdown
            ? new PeriodicTask(async () => void ((await hasPartitions(query)) && partitionsAppeared()), syncEveryMs, log, 'partition check')
            : null;
    try {
      const outcome = await Promise.race([
        stream.ended.then((reason) => ({ kind: 'stream' as const, reason })),
        sink.failed.then((reason) => ({ kind: 'sink' as const, reason })),
        this.stopSignal.then(() => ({ kind: 'stop' as const })),
        repartitioned.then(() => ({ kind: 'repartitioned' as const })),
        stalledOut.then((silentMs) => ({ kind: 'stalled' as const, silentMs })),
      ]);
      if (outcome.kind === 'stop') {
        await this.drain(checkpoint, pipeline);
        return 'stopped';
      }
      if (outcome.kind === 'repartitioned') {
        await this.drain(checkpoint, pipeline);
        throw new SessionFailure('postgres', new Error('a partitioned table appeared: restarting the wal2json stream without table filters'));
      }
      if (this.stopRequested) return 'stopped';
      if (outcome.kind === 'stalled') {
        throw new SessionFailure(
          'postgres',
          new Error(`nothing heard from Postgres on the replication connection for ${Math.round(outcome.silentMs / 1000)} s (${STALL_RECONNECT_INTERVALS} x PGWARREN_STATUS_INTERVAL)`),
        );
      }
      if (outcome.kind === 'stream' && outcome.reason instanceof ReplanRequest) {
        // Settle what came before the oversized transaction, and what its first read diverted,
        // so the next read starts at it. Not a shutdown: wait for confirms as streaming does,
        // for as long as the broker is up (a deadline here could fail every attempt).
        while (checkpoint.outstanding() > 0 && !this.stopRequested && !pipeline.failed() && !this.sink?.failureReason()) {
          await new Promise((r) => setTimeout(r, 20));
        }
        await this.drain(checkpoint, pipeline);
        if (this.stopRequested) return 'stopped';
        const plan = outcome.reason.plan;
        // What the first read diverted may be skipped only if the broker confirmed all of it.
        // Otherwise fail: the next session reads the transaction from scratch, and its first
        // read sends exactly the same messages again (a second read without the prefix would
        // batch those rows differently under the same messageIds; see README "Batched mode").
        const allConfirmed = checkpoint.outstanding() === 0 && !pipeline.failed() && !this.sink?.failureReason();
        if (!allConfirmed && plan.diverted) {
          const reason = pipeline.failed() ?? this.sink?.failureReason() ?? new Error('the rows diverted before a flood re-read were not all confirmed by the broker');
          throw new SessionFailure('rabbitmq', reason);
        }
        return { replan: plan };
      }
      if (outcome.kind === 'sink') throw new SessionFailure('rabbitmq', outcome.reason);
      const pipelineFailure = pipeline.failed();
      if (pipelineFailure) throw new SessionFailure('rabbitmq', pipelineFailure);
      const reason = outcome.reason;
      // 42704 once streaming: a publication the stream names did not exist when a change the
      // slot holds was made (a missing slot fails START_REPLICATION instead).
      if (settings.plugin === 'pgoutput' && sqlState(reason.cause ?? reason) === '42704') throw publicationMissingInHistory(reason, settings);
      if (reason instanceof UsageError) throw reason;
      if (reason instanceof SinkError) throw new SessionFailure('rabbitmq', reason);
      throw pgFailure(reason, `streaming from slot "${settings.slot}"`);
    } finally {
      clearInterval(ticker);
      // Before the sink closes (closing is a failure too): what ended the session, if the broker did.
      const refusal = pipeline.remember(pipeline.failed() ?? sink.failureReason());
      if (refusal === 'nack') opts.metrics.nacks.inc();
      syncer?.stop();
      watch.end();
      await snapshots.stop();
      // Whatever ended the session, Postgres hears what the broker confirmed (a stop has already
      // drained and reported): the next session then re-sends only what is unconfirmed.
      if (!this.stopRequested) await this.finalReport(checkpoint);
    }
  }

  /** The confirmed position, once more, bounded: the replication connection may be the dead part. */
  private async finalReport(checkpoint: Checkpoint): Promise<void> {
    const before = this.lastReported;
    try {
      await within(this.report(checkpoint, true), FINAL_REPORT_MS, 'final position report');
    } catch {
      /* the connection is gone: the next session starts from the last position Postgres heard */
    }
    if (this.lastReported !== before) this.opts.log.info({ confirmed: formatLsn(this.lastReported) }, 'confirmed position reported at session end');
  }

  /**
   * Creates the slot (see ensureSlot). Postgres makes a new logical slot wait until every
   * transaction running at that moment has ended, however long that is, so this query has no
   * timeout; instead a second connection says every few seconds which sessions it waits for,
   * and a stop cancels it (pg_cancel_backend) rather than waiting.
   */
  private async createSlot(query: QueryFn, slotOpts: Parameters<typeof ensureSlot>[1]): Promise<{ created: boolean; state: SlotState }> {
    const log = this.opts.log;
    // pg sets processID from BackendKeyData (not in its type definitions).
    const pid = (this.catalogClient as { processID?: number } | null)?.processID ?? null;
    const helper = (this.helper = new LazyPgClient(this.settings.pg, 'pgwarren-slot-wait', this.settings.timeouts));
    this.creatingSlotPid = pid;
    let lastBlockers = '';
    // The creation's own connection cannot be bounded (the wait is Postgres'), so the watch on the
    // second connection also decides when to give up on it: when the backend creating the slot is
    // gone (its connection died: it never answers now), or when Postgres has not answered the watch
    // SLOT_WAIT_FAILURES times in a row (a silent network). Either ends the session as transient; the
    // next one finds the slot made, or makes it.
    let giveUp!: (reason: Error) => void;
    const gaveUp = new Promise<never>((_, reject) => (giveUp = reject));
    gaveUp.catch(() => undefined);
    let failures = 0;
    let probing = false;
    const slot = this.settings.slot;
    const probe = async (backend: number): Promise<void> => {
      try {
        const alive = await helper.query('SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1) AS alive', [backend]);
        failures = 0;
        if ((alive.rows[0] as { alive?: boolean } | undefined)?.alive === false) {
          giveUp(new Error(`the connection creating slot "${slot}" is gone (backend ${backend} ended without answering)`));
          return;
        }
        const { rows } = await helper.query(
          `SELECT a.pid, a.usename AS user, a.application_name AS application, a.state,
                  extract(epoch FROM now() - a.xact_start)::int AS open_seconds
             FROM pg_stat_activity a WHERE a.pid = ANY (pg_blocking_pids($1)) ORDER BY a.xact_start`,
          [backend],
        );
        const blockers = rows as { pid: number; user: string | null; application: string | null; state: string | null; open_seconds: number | null }[];
        const key = blockers.map((b) => b.pid).join(',');
        if (blockers.length === 0 || key === lastBlockers) return;
        lastBlockers = key;
        const list = blockers
          .map((b) => `pid ${b.pid}${b.user ? ` (user ${b.user}${b.application ? `, ${b.application}` : ''}, ${b.state ?? 'unknown state'}${b.open_seconds != null ? `, open for ${b.open_seconds} s` : ''})` : ''}`)
          .join('; ');
        log.warn(
          { slot, waitingFor: blockers },
          `creating slot "${slot}" waits for ${blockers.length} transaction(s) open elsewhere to end: ${list}. ` +
            `Postgres starts a new slot only once every transaction running at that moment has finished`,
        );
      } catch (err) {
        failures++;
        log.debug({ err: errorMessage(err), failures }, 'could not tell what slot creation waits for');
        if (failures >= SLOT_WAIT_FAILURES) {
          giveUp(new Error(`Postgres did not answer ${failures} checks in a row while slot "${slot}" was being created (${errorMessage(err)})`));
        }
      }
    };
    const watch = pid
      ? setInterval(() => {
          if (probing) return;
          probing = true;
          void probe(pid).finally(() => (probing = false));
        }, SLOT_WAIT_LOG_MS)
      : null;
    try {
      return await Promise.race([
        this.step(this.pg(() => ensureSlot(query, slotOpts), 'creating the slot')),
        gaveUp.catch((reason: Error) => {
          throw new SessionFailure('postgres', reason);
        }),
      ]);
    } finally {
      if (watch) clearInterval(watch);
      if (!this.stopRequested) {
        this.creatingSlotPid = null;
        this.helper = null;
        await helper.close();
      }
    }
  }

  /**
   * Asked by the stall watch when the replication connection has been silent for a while: is
   * this connection's walsender busy decoding (reading WAL, replaying a large transaction of
   * tables it then filters out), which is silence but not a stall? A walsender waiting for WAL
   * or on our socket should have answered the pings: that, a walsender that is gone, or no
   * answer at all from the catalog connection, is a stall.
   */
  private async probeWalsender(query: QueryFn): Promise<'busy' | 'stalled'> {
    const pid = this.stream?.backendPid();
    if (!pid) return 'stalled';
    const probeMs = Math.max(2_000, this.settings.statusIntervalSeconds * 1000);
    const { rows } = await within(
      query<{ state: string | null; wait_event_type: string | null }>('SELECT state, wait_event_type FROM pg_stat_activity WHERE pid = $1', [pid]),
      probeMs,
      'asking Postgres what the walsender does',
    );
    const r = rows[0];
    if (!r || r.state !== 'active') return 'stalled';
    return r.wait_event_type === 'Client' || r.wait_event_type === 'Activity' ? 'stalled' : 'busy';
  }

  /** Row filter (wal2json: in-process), skip-unchanged, transform; undefined when none is set. */
  private shaper(types: TypeCatalog, builder: EventBuilder, log: Logger): Shaper | undefined {
    const s = this.settings;
    const inProcess = s.plugin === 'wal2json' && s.rules.some((r) => r.where !== undefined);
    if (!inProcess && !s.transform && !s.skipUnchanged && !s.rules.some((r) => r.skipUnchanged)) return undefined;
    // Config loading checked that every wal2json filter parses (README "Shaping the stream").
    const filters = new Map<(typeof s.rules)[number], { expr: Expr; rule: string }>();
    if (inProcess) s.rules.forEach((r, i) => r.where !== undefined && filters.set(r, { expr: parseFilter(r.where), rule: `rules[${i}].where (${r.match})` }));
    const timeoutMs = Math.round(s.transformTimeoutSeconds * 1000);
    return new Shaper({
      rowFilter: inProcess ? ruleLookup(s.rules, (r) => filters.get(r), null) : () => null,
      identityRule: s.operations.includes('update') || s.operations.includes('delete'),
      skipUnchanged: ruleLookup(s.rules, (r) => r.skipUnchanged, s.skipUnchanged),
      transformer: s.transform
        ? new Transformer(s.transform, timeoutMs, (ms, id) =>
            log.warn({ ms: Math.round(ms), id }, `transform took ${Math.round(ms)} ms on event ${id}, above PGWARREN_TRANSFORM_TIMEOUT; a synchronous transform cannot be interrupted`),
          )
        : null,
      types,
      prepare: (rel) => types.ensure(builder.typeOids(rel)),
    });
  }

  /** Every exchange to declare at start. */
  private exchanges(router: Router): Array<{ name: string; type: string }> {
    const { settings } = this;
    const names = new Set(router.exchanges());
    if (settings.floodAction === 'divert') names.add(settings.floodExchange);
    const out = [...names].map((name) => ({ name, type: settings.exchangeType }));
    // Dead letters are routed by schema.table.op whatever PGWARREN_EXCHANGE_TYPE is.
    if (!names.has(settings.deadLetterExchange)) out.push({ name: settings.deadLetterExchange, type: 'topic' });
    return out;
  }

  /** A sink other than the default AMQP one: a RabbitMQ stream or stdout. */
  private async openOtherSink(): Promise<Sink> {
    const { settings, opts } = this;
    const log = opts.log;
    if (settings.sink === 'stdout') return new StdoutSink(process.stdout, bodyEncoder(settings.compression));
    const s = settings.stream;
    if (!s) throw new Error('stream sink without stream settings');
    // Bounded like the AMQP open (CONTRACT §9); an open abandoned at the deadline is closed if it completes.
    const opening = StreamSink.open({
      url: s.url,
      stream: s.stream,
      partitions: s.partitions,
      // One producer name per slot: the slot is what defines the sequence of events.
      producer: `pgwarren-${settings.slot}`,
      maxAge: s.maxAge,
      maxBytes: s.maxBytes,
      amqpUrls: settings.amqpUrls,
      amqpTls: settings.amqpTls,
      encoder: bodyEncoder(settings.compression),
      log: log.child({ component: 'stream' }),
      onDeduplicated: (n) => opts.metrics.streamDeduplicated.inc(n),
    });
    return within(opening, settings.timeouts.connectMs, `opening stream "${s.stream}"`, () => void opening.then((sink) => sink.close()).catch(() => undefined));
  }

  private decoder(relations: RelationCatalog, types: TypeCatalog, pushTablesDown: boolean): Decoder<unknown> {
    const s = this.settings;
    if (s.plugin === 'pgoutput') {
      // ensurePublication made both: tables without replica identity are in the keyless companion.
      return new PgoutputDecoder([s.publication, keylessPublicationName(s.publication)], relations) as Decoder<unknown>;
    }
    // Push the selection into wal2json where its syntax allows; the pipeline filters again.
    const add = pushTablesDown && s.tables.length > 0 ? wal2jsonTableFilter(s.tables) : null;
    const exclude = pushTablesDown ? wal2jsonTableFilter(s.excludeTables) : null;
    return new Wal2jsonDecoder(relations, types, {
      addTables: add,
      // Without add-tables, filter-tables only narrows; with an unusable include list, skip both.
      filterTables: s.tables.length > 0 && add === null ? null : exclude,
      actions: s.operations,
    }) as Decoder<unknown>;
  }

  /** Wait (bounded) for outstanding confirms, then tell Postgres the safe position. */
  private async drain(checkpoint: Checkpoint, pipeline: Pipeline): Promise<void> {
    this.setState('draining');
    const deadline = Date.now() + this.settings.shutdownTimeoutSeconds * 1000;
    while (checkpoint.outstanding() > 0 && Date.now() < deadline && !pipeline.failed() && !this.sink?.failureReason()) {
      await new Promise((r) => setTimeout(r, 20));
    }
    const left = checkpoint.outstanding();
    if (left > 0) this.opts.log.warn({ unconfirmed: left }, 'shutdown: gave up waiting for broker confirms; those changes will be sent again');
    await this.report(checkpoint, true);
    this.opts.log.info({ confirmed: formatLsn(this.lastReported), published: this.opts.metrics.publishedCount }, 'confirmed position reported');
  }

  private async report(checkpoint: Checkpoint, force: boolean, ping = false): Promise<void> {
    const stream = this.stream;
    if (!stream) return;
    const safe = checkpoint.safeLsn();
    const due = Date.now() - this.lastReportAt >= this.settings.statusIntervalSeconds * 1000;
    if (!force && !due && safe === this.lastReported) return;
    this.lastReportAt = Date.now();
    try {
      await stream.acknowledge(safe, ping);
      this.lastReported = safe;
      this.opts.hooks.onAcknowledged(safe);
    } catch (err) {
      this.opts.log.debug({ err: (err as Error).message }, 'status report failed');
    }
  }

  /** A catalog step, abandoned on stop; its failure classified (permanent -> exit 3). */
  private async pg<T>(fn: () => Promise<T>, doing: string): Promise<T> {
    try {
      return await this.step(fn());
    } catch (err) {
      if (err instanceof Stopped || err instanceof UsageError) throw err;
      throw pgFailure(err, doing);
    }
  }

  private setState(state: SessionState): void {
    this.state = state;
    this.opts.hooks.onState(state);
  }

  private async closeAll(): Promise<void> {
    // A stop during slot creation: cancel it, or Postgres creates the slot after all once the
    // transactions it waits for end (a closed socket goes unnoticed while the backend waits).
    const creating = this.creatingSlotPid;
    const helper = this.helper;
    if (creating && helper) {
      await within(helper.query('SELECT pg_cancel_backend($1)', [creating]), 3_000, 'cancelling slot creation').catch((err: unknown) =>
        this.opts.log.warn({ err: errorMessage(err) }, 'could not cancel slot creation; the slot may appear once the transactions it waits for end'),
      );
    }
    const tasks: Promise<unknown>[] = [];
    if (helper) tasks.push(helper.close());
    if (this.stream) tasks.push(this.stream.stop());
    if (this.sink) tasks.push(this.sink.close());
    const catalog = this.catalogClient;
    if (catalog) {
      // Nothing to finish politely on a connection a stop abandoned mid-step.
      if (this.stopRequested && this.state === 'connecting') destroyClient(catalog);
      else tasks.push(closeWithin(() => catalog.end(), () => pgSocketOwner(catalog)));
    }
    await Promise.allSettled(tasks);
  }


}

const nameOf = (t: { schema: string; table: string }) => tableName(t.schema, t.table);

/** Per-table value from the first rule whose glob matches and sets it, else the default. */

/**
 * Postgres decodes each change with the publications as they were when it was made. When the
 * slot holds changes older than a publication it is told to use (the publication was created
 * after the slot, or dropped and re-created), decoding fails on every attempt: the slot is stuck
 * and holds WAL, so this is a prerequisite failure, not something to retry.
 */
function publicationMissingInHistory(err: Error, settings: SessionSettings): PrerequisiteError {
  const slot = settings.slot;
  return new PrerequisiteError(
    `${errorMessage(err)}: slot "${slot}" holds changes made before publication "${settings.publication}" existed ` +
      `(or its companion "${keylessPublicationName(settings.publication)}": it was created after the slot, or dropped and re-created), ` +
      `and Postgres cannot decode them with it, so the slot cannot advance. Re-sync consumers from the tables, then re-create the slot ` +
      `after the publications: "pgwarren teardown --yes" and "pgwarren setup".`,
    { cause: err },
  );
}

/** Replication-specific fixes for codes whose general fix would mislead. */
const REPLICATION_FIXES: Readonly<Record<string, string>> = {
  '42501': 'the role needs the REPLICATION attribute: ALTER ROLE <role> WITH REPLICATION (and a pg_hba.conf line for replication connections)',
};

/** A Postgres failure as the supervisor must see it: PrerequisiteError (exit 3) or SessionFailure (retry). */
function pgFailure(err: unknown, doing: string, minDelayMs = 0, fixes?: Readonly<Record<string, string>>): Error {
  // A configuration the database refused (a row filter Postgres rejects): exit 2, never a retry.
  if (err instanceof UsageError) return err;
  const e = classifyPgError(err, doing, fixes);
  if (e instanceof PrerequisiteError) return e;
  return new SessionFailure('postgres', e, minDelayMs);
}
