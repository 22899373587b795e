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
 */
import pg from 'pg';
import type { Logger } from '../ops/logger.js';
import type { Metrics } from '../ops/metrics.js';
import { AmqpSink, SinkError, type AmqpTls } from '../sink/amqp-sink.js';
import { Checkpoint } from './checkpoint.js';
import { StallWatch, STALL_RECONNECT_INTERVALS } from './stall-watch.js';
import { Pipeline, ReplanRequest } from './pipeline.js';
import type { FloodAction, TxPlan } from '../filter/flood-guard.js';
import { EventBuilder } from '../events/envelope.js';
import { Router, type RouteRule } from '../events/router.js';
import { OperationSelection, TableSelection, excludedColumnsLookup, ruleLookup } from '../filter/selection.js';
import { queryFn } from '../source/pg-query.js';
import { RelationCatalog, hasPartitions } from '../source/relation-catalog.js';
import { TypeCatalog } from '../source/type-catalog.js';
import { checkSlot, ensurePublication, ensureSlot, keylessPublicationName, requireLogicalWal } from '../source/slot-admin.js';
import { ReplicationStream } from '../source/replication-stream.js';
import { PgoutputDecoder } from '../source/pgoutput-decoder.js';
import { Wal2jsonDecoder, wal2jsonTableFilter } from '../source/wal2json-decoder.js';
import type { Decoder } from '../source/decoder.js';
import { formatLsn, parseLsn } from '../source/lsn.js';
import { classifyPgError, PrerequisiteError } from '../errors.js';
import { tlsFailure } from '../config/database.js';
import { redactUrl } from '../config/redact.js';
import { LogThrottle } from '../ops/throttle.js';
import { closeWithin, pgSocketOwner } from '../ops/close.js';
import { PeriodicTask } from '../ops/periodic.js';
import type { Op, Plugin, SourceInfo } from '../types.js';
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
  readonly rules: readonly (RouteRule & { excludeColumns?: readonly string[]; floodThreshold?: number })[];
  readonly floodThreshold: number;
  readonly floodAction: FloodAction;
  readonly floodExchange: string;
  readonly floodBufferEvents: number;
  readonly floodBufferBytes: number;
  readonly unroutable: 'warn' | 'block';
  readonly maxInflight: number;
  /** Batched mode: events per message (1 = off) and the bound on a message body. */
  readonly batchMaxEvents: number;
  readonly batchMaxBytes: number;
  readonly shutdownTimeoutSeconds: number;
  readonly statusIntervalSeconds: number;
  /** How often new tables matching the selection are added to the publication; 0 = only at start. */
  readonly publicationSyncSeconds: number;
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
  private sink: AmqpSink | null = null;
  private catalogClient: pg.Client | null = null;
  private stream: ReplicationStream<unknown> | null = null;
  private lastReported = 0n;
  private lastReportAt = 0;

  constructor(
    private readonly settings: SessionSettings,
    private readonly opts: {
      mayCreateSlot: boolean;
      firstUrl: number;
      plans: ReadonlyMap<bigint, TxPlan>;
      log: Logger;
      metrics: Metrics;
      hooks: SessionHooks;
    },
  ) {}

  /** Ask the session to drain and end; `run()` then resolves. */
  stop(): void {
    this.stopRequested = true;
    this.resolveStop();
  }

  brokerUrlIndex(): number | undefined {
    return this.sink?.urlIndex;
  }

  async run(): Promise<SessionOutcome> {
    try {
      return await this.runInner();
    } finally {
      await this.closeAll();
      this.setState('ended');
    }
  }

  private async runInner(): Promise<SessionOutcome> {
    const { settings, opts } = this;
    const log = opts.log;

    // 1. Catalog connection: prerequisites, slot, publication.
    const client = new pg.Client({ ...settings.pg, application_name: 'pgwarren-catalog' });
    client.on('error', (err) => log.debug({ err: err.message }, 'catalog connection error'));
    this.catalogClient = client;
    const where = `${String(settings.pg.host)}:${String(settings.pg.port)}/${settings.database}`;
    try {
      await client.connect();
    } catch (err) {
      const tls = tlsFailure(err, 'PGWARREN_PG_SSL_ROOT_CERT (or sslrootcert), sslmode, and that the host name in the URL is one the certificate names');
      if (tls) throw new PrerequisiteError(`connecting to Postgres at ${where}: ${tls}`, { cause: err });
      throw new SessionFailure('postgres', classifyPgError(err, 'connecting to Postgres'));
    }
    log.info({ postgres: where, user: settings.pg.user, tls: Boolean(settings.pg.ssl) }, `connected to Postgres ${where}`);
    const query = queryFn(client);
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
    let firstSync = true;
    let publicationExisted = false;
    let lastKeyless = '';
    const syncPublication = async () => {
      const pub = await ensurePublication(query, { publication: settings.publication, tables, operations, excludedColumns });
      if (firstSync) publicationExisted = !pub.created;
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
      const slot = await this.pg(() => ensureSlot(query, slotOpts), 'creating the slot');
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
      this.sink = await AmqpSink.open({
        urls: settings.amqpUrls,
        firstUrl: opts.firstUrl,
        exchanges: [
          ...router.exchanges(),
          ...(settings.floodAction === 'divert' && !router.exchanges().includes(settings.floodExchange) ? [settings.floodExchange] : []),
        ].map((name) => ({ name, type: settings.exchangeType })),
        unroutable: settings.unroutable,
        tls: settings.amqpTls,
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
      });
    } catch (err) {
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
    const snapshots = new SnapshotSession({ settings, builder, types, sink, metrics: opts.metrics, log });
    const pipeline = new Pipeline({
      source,
      tables,
      operations,
      builder,
      prepareRelation: (rel) => types.ensure(builder.typeOids(rel)),
      router,
      publisher: sink,
      checkpoint,
      maxInflight: settings.maxInflight,
      batch: { maxEvents: settings.batchMaxEvents, maxBytes: settings.batchMaxBytes },
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
      snapshots: snapshots.tap,
    });

    let stallTimeout = (_silentMs: number): void => undefined;
    const stalledOut = new Promise<number>((resolve) => (stallTimeout = resolve));
    const watch = new StallWatch({
      intervalMs: settings.statusIntervalSeconds * 1000,
      log,
      ping: () => void this.report(checkpoint, true, true),
      onStalled: (stalled) => opts.hooks.onStalled?.(stalled),
      onTimeout: (silentMs) => stallTimeout(silentMs),
      confirmed: () => formatLsn(this.lastReported),
    });
    const stream = new ReplicationStream<unknown>(
      settings.pg,
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
      await stream.start();
    } catch (err) {
      const e = classifyPgError(err, `starting replication from slot "${settings.slot}"`);
      if (e instanceof PrerequisiteError) throw e;
      const inUse = /is active for PID/i.test((err as Error).message ?? '');
      throw new SessionFailure('postgres', e, inUse ? 1000 : 0);
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
        // Settle what came before the oversized transaction so the next read starts at it.
        await this.drain(checkpoint, pipeline);
        const plan = outcome.reason.plan;
        // What the first read diverted may be skipped only if the broker confirmed all of it.
        const allConfirmed = checkpoint.outstanding() === 0 && !pipeline.failed() && !this.sink?.failureReason();
        return { replan: allConfirmed ? plan : { commitLsn: plan.commitLsn, flooded: plan.flooded } };
      }
      if (outcome.kind === 'sink') throw new SessionFailure('rabbitmq', outcome.reason);
      const pipelineFailure = pipeline.failed();
      if (pipelineFailure) throw new SessionFailure('rabbitmq', pipelineFailure);
      const reason = outcome.reason;
      const undecodable = publicationMissingInHistory(reason, settings.slot);
      if (undecodable) throw undecodable;
      if (reason instanceof PrerequisiteError) throw reason;
      throw new SessionFailure(reason instanceof SinkError ? 'rabbitmq' : 'postgres', reason);
    } finally {
      clearInterval(ticker);
      syncer?.stop();
      watch.end();
      await snapshots.stop();
    }
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

  private async pg<T>(fn: () => Promise<T>, doing: string): Promise<T> {
    try {
      return await fn();
    } catch (err) {
      const e = classifyPgError(err, doing);
      if (e instanceof PrerequisiteError) throw e;
      throw new SessionFailure('postgres', e);
    }
  }

  private setState(state: SessionState): void {
    this.opts.hooks.onState(state);
  }

  private async closeAll(): Promise<void> {
    const tasks: Promise<unknown>[] = [];
    if (this.stream) tasks.push(this.stream.stop());
    if (this.sink) tasks.push(this.sink.close());
    const catalog = this.catalogClient;
    if (catalog) tasks.push(closeWithin(() => catalog.end(), () => pgSocketOwner(catalog)));
    await Promise.allSettled(tasks);
  }


}

const nameOf = (t: { schema: string; table: string }) => `${t.schema}.${t.table}`;

/** Per-table value from the first rule whose glob matches and sets it, else the default. */

/**
 * Postgres decodes each change with the publications as they were when it was made. When the
 * slot holds changes older than a publication it is told to use (the publication was created
 * after the slot, or dropped and re-created), decoding fails on every attempt: the slot is stuck
 * and holds WAL, so this is a prerequisite failure, not something to retry.
 */
function publicationMissingInHistory(err: unknown, slot: string): PrerequisiteError | undefined {
  const text = err instanceof Error ? `${err.message} ${String((err.cause as Error | undefined)?.message ?? '')}` : String(err);
  const m = /publication "([^"]+)" does not exist/.exec(text);
  if (!m) return undefined;
  return new PrerequisiteError(
    `slot "${slot}" holds changes made before publication "${m[1]}" existed (it was created after the slot, or dropped and re-created), ` +
      `and Postgres cannot decode them with it, so the slot cannot advance. Re-sync consumers from the tables, then re-create the slot ` +
      `after the publications: "pgwarren teardown --yes" and "pgwarren setup".`,
    { cause: err },
  );
}
