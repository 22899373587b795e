/**
 * The parts of one session and how they are wired: the source prepared (source/prepare.ts), the
 * sink opened, then decoder -> pipeline -> sink with the checkpoint, the stall watch, the status
 * reports, the publication sync and the snapshot runner. session.ts drives this through the
 * `SessionParts` interface and decides nothing here; this module decides nothing about states.
 */
import type pg from 'pg';
import type { Logger } from '../ops/logger.js';
import type { Metrics } from '../ops/metrics.js';
import { AmqpSink, SinkError, type AmqpTls } from '../sink/amqp-sink.js';
import type { Sink, SinkKind } from '../sink/sink.js';
import { StdoutSink } from '../sink/stdout-sink.js';
import { bodyEncoder } from '../sink/compression.js';
import { Checkpoint } from './checkpoint.js';
import { StallWatch, STALL_RECONNECT_INTERVALS } from './stall-watch.js';
import { Pipeline } from './pipeline.js';
import type { ShapeMemory } from './shapes.js';
import type { DeliveryMemory } from './delivery-memory.js';
import { Shaper } from './shaping.js';
import { Transformer } from './transform.js';
import type { Config } from '../config/load.js';
import { parseFilter, type Expr } from '../filter/row-filter.js';
import type { TxPlan } from '../filter/flood-guard.js';
import { OperationSelection, TableSelection, excludedColumnsLookup, ruleLookup } from '../filter/selection.js';
import { publicationPlan } from '../filter/publication-plan.js';
import { EventBuilder } from '../events/envelope.js';
import { Router } from '../events/router.js';
import { within, type PgTimeouts, type QueryFn } from '../shared/pg-query.js';
import { Stopped } from '../shared/step.js';
import { RelationCatalog, hasPartitions } from '../source/relation-catalog.js';
import { TypeCatalog } from '../source/type-catalog.js';
import { keylessPublicationName, publicationMissingInHistory } from '../source/publication.js';
import { SourcePreparation, type PreparedSource } from '../source/prepare.js';
import { ReplicationStream } from '../source/replication-stream.js';
import { PgoutputDecoder } from '../source/pgoutput-decoder.js';
import { Wal2jsonDecoder, wal2jsonTableFilter } from '../source/wal2json-decoder.js';
import type { Decoder } from '../source/decoder.js';
import { formatLsn, parseLsn } from '../source/lsn.js';
import { pgFailure, PrerequisiteError, SessionFailure, sqlState, UsageError } from '../errors.js';
import { redactUrl } from '../shared/redact.js';
import { LogThrottle } from '../ops/throttle.js';
import { PeriodicTask } from '../ops/periodic.js';
import type { SourceInfo } from '../types.js';
import { SnapshotSession } from '../snapshot/session.js';
import type { TransformFn } from './transform.js';
import type { SessionControl, SessionHooks, SessionParts, StreamEnd } from './session.js';

/** The settings a session takes from `Config` unchanged: listed here once, picked by commands/settings.ts. */
export const SESSION_CONFIG_KEYS = [
  'slot',
  'publication',
  'plugin',
  'tables',
  'excludeTables',
  'operations',
  'exchange',
  'exchangeType',
  'routingKey',
  'messageRoutingKey',
  'transactionEvents',
  'rules',
  'skipUnchanged',
  'compression',
  'floodThreshold',
  'floodAction',
  'floodExchange',
  'floodBufferEvents',
  'floodBufferBytes',
  'unroutable',
  'deadLetterExchange',
  'maxMessageBytes',
  'maxInflight',
  'batchMaxEvents',
  'batchMaxBytes',
  'amqpUrls',
  'snapshot',
  'snapshotChunkSize',
] as const satisfies readonly (keyof Config)[];

/**
 * What a session needs, taken from `Config` (the option table lists each setting once) plus the
 * few values derived from it in commands/settings.ts.
 */
export type SessionSettings = Pick<Config, (typeof SESSION_CONFIG_KEYS)[number]> & {
  readonly pg: pg.ClientConfig;
  /** The database name (Config.database.database). */
  readonly database: string;
  readonly amqpTls?: AmqpTls;
  /** The loaded PGWARREN_TRANSFORM function (run.ts loads the module once). */
  readonly transform: TransformFn | null;
  readonly transformTimeoutSeconds: number;
  readonly shutdownTimeoutSeconds: number;
  readonly statusIntervalSeconds: number;
  /** How often new tables matching the selection are added to the publication; 0 = only at start. */
  readonly publicationSyncSeconds: number;
  /** Bounds on connecting to and querying Postgres (the broker's open uses connectMs). */
  readonly timeouts: PgTimeouts;
  /** How quickly a silent broker is noticed (sink/heartbeat.ts). */
  readonly brokerHeartbeatSeconds: number;
  /** Where events go (default amqp); `stream` uses `stream` below. */
  readonly sink?: SinkKind;
  readonly stream?: {
    readonly url: string;
    readonly stream: string;
    readonly partitions: number;
    readonly maxAge?: string;
    readonly maxBytes?: number;
  };
};

/** What the supervisor keeps across sessions and hands each new one. */
export interface AssemblyOptions {
  mayCreateSlot: boolean;
  firstUrl: number;
  plans: ReadonlyMap<bigint, TxPlan>;
  /** Table shapes seen by earlier sessions; rewound here to the slot's confirmed position. */
  shapes: ShapeMemory;
  /** Kept by the supervisor across sessions: confirmed prefixes, careful mode, refused messages. */
  memory: DeliveryMemory;
  log: Logger;
  metrics: Metrics;
  hooks: Omit<SessionHooks, 'onState'>;
}

/** Replication-specific fixes for codes whose general fix would mislead. */
const REPLICATION_FIXES: Readonly<Record<string, string>> = {
  '42501': 'the role needs the REPLICATION attribute: ALTER ROLE <role> WITH REPLICATION (and a pg_hba.conf line for replication connections)',
};

/** The real parts of a session: Postgres, the sink, and everything between them. */
export class SessionAssembly implements SessionParts {
  private control: SessionControl | null = null;
  private preparation: SourcePreparation | null = null;
  private source: PreparedSource | null = null;
  private sink: Sink | null = null;
  private router: Router | null = null;
  private stream: ReplicationStream<unknown> | null = null;
  private checkpoint: Checkpoint | null = null;
  private pipeline: Pipeline | null = null;
  private watch: StallWatch | null = null;
  private snapshots: SnapshotSession | null = null;
  private syncer: PeriodicTask | null = null;
  private ticker: ReturnType<typeof setInterval> | null = null;
  private endings: Promise<StreamEnd>[] = [];
  private pushdown = false;
  private partitionsAppeared = (): void => undefined;
  private lastReported = 0n;
  private lastReportAt = 0;

  constructor(
    private readonly settings: SessionSettings,
    private readonly opts: AssemblyOptions,
  ) {}

  async prepareSource(control: SessionControl): Promise<void> {
    this.control = control;
    const { settings, opts } = this;
    this.preparation = new SourcePreparation(settings, {
      plan: publicationPlan(settings),
      mayCreateSlot: opts.mayCreateSlot,
      step: control.step,
      stopping: control.stopping,
      log: opts.log,
    });
    this.source = await this.preparation.prepare();
    if (this.source.slotCreated && settings.snapshot === 'initial') await SnapshotSession.requestInitial(this.source.query, settings, opts.log);
  }

  async openSink(control: SessionControl): Promise<void> {
    const { settings, opts } = this;
    const log = opts.log;
    const unroutableLog = new LogThrottle();
    const router = (this.router = new Router({ exchange: settings.exchange, routingKey: settings.routingKey }, settings.rules));
    try {
      this.sink =
        settings.sink === 'stream' || settings.sink === 'stdout'
          ? await control.step(this.openOtherSink())
          : await control.step(AmqpSink.open({
        openTimeoutMs: settings.timeouts.connectMs,
        heartbeatSeconds: settings.brokerHeartbeatSeconds,
        signal: control.signal,
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
      if (err instanceof Stopped || control.stopping()) throw new Stopped();
      if (err instanceof SinkError && err.severity === 'fatal') throw new PrerequisiteError(err.message, { cause: err });
      throw new SessionFailure('rabbitmq', err);
    }
  }

  async startStream(control: SessionControl): Promise<void> {
    const { settings, opts } = this;
    const log = opts.log;
    const sink = this.sink!;
    const router = this.router!;
    const { query, slot } = this.source!;
    const source: SourceInfo = { name: 'pgwarren', db: settings.database, slot: settings.slot, plugin: settings.plugin };
    const relations = new RelationCatalog(query);
    const types = new TypeCatalog(query);
    // wal2json names a partition's changes after the leaf, so its table filters (which would see
    // leaf names) are only pushed down while the database has no partitions.
    this.pushdown = settings.plugin === 'wal2json' && !(await this.pg(control, () => hasPartitions(query), 'looking for partitions'));
    const decoder = this.decoder(relations, types, this.pushdown);
    const builder = new EventBuilder(source, types, excludedColumnsLookup(settings.rules));
    const checkpoint = (this.checkpoint = new Checkpoint(slot.confirmedFlushLsn ? parseLsn(slot.confirmedFlushLsn) : 0n));
    opts.metrics.inflightSource = () => checkpoint.outstanding();
    this.lastReported = checkpoint.safeLsn();
    // Transactions after the confirmed position are read again: so are their shape changes.
    opts.shapes.rewind(checkpoint.safeLsn());
    const snapshots = (this.snapshots = new SnapshotSession({ settings, builder, types, sink, metrics: opts.metrics, log }));
    const pipeline = (this.pipeline = new Pipeline({
      source,
      tables: new TableSelection(settings.tables, settings.excludeTables),
      operations: new OperationSelection(settings.operations),
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
    }));

    let stallTimeout = (_silentMs: number): void => undefined;
    const stalledOut = new Promise<number>((resolve) => (stallTimeout = resolve));
    const watch = (this.watch = new StallWatch({
      intervalMs: settings.statusIntervalSeconds * 1000,
      log,
      ping: () => void this.report(true, true),
      probe: () => this.probeWalsender(query),
      onStalled: (stalled) => opts.hooks.onStalled?.(stalled),
      onTimeout: (silentMs) => stallTimeout(silentMs),
      confirmed: () => formatLsn(this.lastReported),
    }));
    const stream = new ReplicationStream<unknown>(
      { ...settings.pg, connectionTimeoutMillis: settings.timeouts.connectMs },
      settings.slot,
      decoder,
      {
        onMessage: async (parsed) => {
          watch.heard();
          if (control.stopping()) await new Promise<never>(() => undefined); // read nothing more
          await pipeline.handle(await decoder.decode(parsed));
          watch.heard();
        },
        onKeepalive: (walEnd, shouldRespond) => {
          watch.heard();
          // An idle slot must not hold WAL: with nothing received unhandled and nothing
          // unconfirmed, the server's position is safe to confirm.
          if (!control.stopping() && stream.caughtUp() && !pipeline.inTransaction()) checkpoint.idle(walEnd);
          if (shouldRespond) void this.report(true);
        },
      },
      log.child({ component: 'replication' }),
    );
    this.stream = stream;
    const repartitioned = new Promise<void>((resolve) => (this.partitionsAppeared = resolve));
    this.endings = [
      stream.ended.then((reason) => ({ kind: 'stream' as const, reason })),
      sink.failed.then((reason) => ({ kind: 'sink' as const, reason })),
      repartitioned.then(() => ({ kind: 'repartitioned' as const })),
      stalledOut.then((silentMs) => ({ kind: 'stalled' as const, silentMs })),
    ];
    try {
      await control.step(stream.start(settings.timeouts.connectMs + settings.timeouts.queryMs));
    } catch (err) {
      if (err instanceof Stopped) throw err;
      // 55006: the slot is active for another process (another pgwarren): stand by.
      throw pgFailure(err, `starting replication from slot "${settings.slot}"`, sqlState(err) === '55006' ? 1000 : 0, REPLICATION_FIXES);
    }
  }

  streaming(): void {
    const { settings, opts } = this;
    const log = opts.log;
    const { query, syncPublication } = this.source!;
    const checkpoint = this.checkpoint!;
    const pipeline = this.pipeline!;
    const watch = this.watch!;
    this.snapshots!.start();
    log.info(
      { plugin: settings.plugin, from: formatLsn(checkpoint.safeLsn()), broker: redactUrl(this.sink!.url), published: opts.metrics.publishedCount },
      'streaming',
    );
    watch.heard();
    this.ticker = setInterval(() => {
      void this.report(false);
      // Silence while the broker holds the pipeline up says nothing about Postgres; while a
      // catalog query through a dead network holds it up, it does.
      if (!this.control!.stopping()) watch.tick(!pipeline.waitingOnBroker());
    }, 1000);
    // Tables created later that match the selection join the publication without a restart.
    // (Rows written to a new table before it joins are not in the slot: see README.)
    // With wal2json table filters pushed down, the first partition to appear makes them wrong
    // (wal2json would filter it by the leaf's name): restart the stream without them.
    const syncEveryMs = settings.publicationSyncSeconds * 1000;
    this.syncer =
      syncEveryMs <= 0
        ? null
        : settings.plugin === 'pgoutput'
          ? new PeriodicTask(syncPublication, syncEveryMs, log, 'publication sync')
          : this.pushdown
            ? new PeriodicTask(async () => void ((await hasPartitions(query)) && this.partitionsAppeared()), syncEveryMs, log, 'partition check')
            : null;
  }

  ended(): Promise<StreamEnd> {
    return Promise.race(this.endings);
  }

  unconfirmed(): number {
    return this.checkpoint?.outstanding() ?? 0;
  }

  failure(): Error | null {
    return this.pipeline?.failed() ?? this.sink?.failureReason() ?? null;
  }

  classify(end: Exclude<StreamEnd, { kind: 'repartitioned' }>): Error {
    const settings = this.settings;
    if (end.kind === 'stalled') {
      return new SessionFailure(
        'postgres',
        new Error(`nothing heard from Postgres on the replication connection for ${Math.round(end.silentMs / 1000)} s (${STALL_RECONNECT_INTERVALS} x PGWARREN_STATUS_INTERVAL)`),
      );
    }
    if (end.kind === 'sink') return new SessionFailure('rabbitmq', end.reason);
    const pipelineFailure = this.pipeline?.failed();
    if (pipelineFailure) return new SessionFailure('rabbitmq', pipelineFailure);
    const reason = end.reason;
    // 42704 once streaming: a publication the stream names did not exist when a change the
    // slot holds was made (a missing slot fails START_REPLICATION instead).
    if (settings.plugin === 'pgoutput' && sqlState(reason.cause ?? reason) === '42704') return publicationMissingInHistory(reason, settings.slot, settings.publication);
    if (reason instanceof UsageError) return reason;
    if (reason instanceof SinkError) return new SessionFailure('rabbitmq', reason);
    return pgFailure(reason, `streaming from slot "${settings.slot}"`);
  }

  async report(force: boolean, ping = false): Promise<void> {
    const stream = this.stream;
    const checkpoint = this.checkpoint;
    if (!stream || !checkpoint) return;
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

  reported(): string {
    return formatLsn(this.lastReported);
  }

  published(): number {
    return this.opts.metrics.publishedCount;
  }

  async finish(): Promise<void> {
    if (this.ticker) clearInterval(this.ticker);
    // Before the sink closes (closing is a failure too): what ended the session, if the broker did.
    const pipeline = this.pipeline;
    if (pipeline) {
      const refusal = pipeline.remember(pipeline.failed() ?? this.sink?.failureReason() ?? null);
      if (refusal === 'nack') this.opts.metrics.nacks.inc();
    }
    this.syncer?.stop();
    this.watch?.end();
    await this.snapshots?.stop();
  }

  async close(abandoned: boolean): Promise<void> {
    // The slot creation a stop interrupted is cancelled first (see SourcePreparation.close).
    const tasks: Promise<unknown>[] = [];
    if (this.preparation) tasks.push(this.preparation.close(abandoned));
    if (this.stream) tasks.push(this.stream.stop());
    if (this.sink) tasks.push(this.sink.close());
    await Promise.allSettled(tasks);
  }

  brokerUrlIndex(): number | undefined {
    return this.sink?.urlIndex;
  }

  /** A catalog query, abandoned on stop; its failure classified (permanent -> exit 3). */
  private async pg<T>(control: SessionControl, fn: () => Promise<T>, doing: string): Promise<T> {
    try {
      return await control.step(fn());
    } catch (err) {
      if (err instanceof Stopped || err instanceof UsageError) throw err;
      throw pgFailure(err, doing);
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
    // Loaded only here: the stream client takes a fifth of a start's CPU to load, and most
    // deployments publish over AMQP.
    const { StreamSink } = await import('../sink/stream/stream-sink.js');
    // Bounded like the AMQP open (README "Failure handling"); an open abandoned at the deadline is closed if it completes.
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
      heartbeatSeconds: settings.brokerHeartbeatSeconds,
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
}
