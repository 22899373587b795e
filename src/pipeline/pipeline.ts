/**
 * The loop's body: decoded items in stream order -> filter -> events -> sink, with every
 * delivery accounted for in the checkpoint. The pipeline hands the sink domain deliveries
 * (src/sink/sink.ts: events of one transaction, a dead letter, snapshot reads) with what it
 * decided (destination, ids, what travels together); what they look like on the wire
 * (properties, headers, JSON arrays, compression) is the sink's business.
 *
 * Transaction states: outside -> (Begin) inside -> (Commit) outside. Changes outside a
 * transaction cannot happen with either plugin; logical messages outside one are ignored.
 *
 * Backpressure: `handle` does not return while the sink is not writable, while
 * `maxInflight` messages wait for confirms, or (at a Begin) while the checkpoint holds
 * `maxInflight` open transactions; the replication stream does not read on until it returns.
 * Both bound memory: the checkpoint merges settled transactions, so open ones outnumber those
 * with unconfirmed messages at most twice, but the bound holds whatever it does.
 *
 * Batched mode (`batch.maxEvents` > 1): consecutive events of one transaction that share every
 * message property but the id (exchange, routing key, schema, table, op) travel as one delivery,
 * which the sink writes as one message whose body is a JSON array of them, with header
 * `pgwarren-batch` = the count and `messageId` = the first event's id. A batch is sent when it holds `maxEvents` events, when the next event
 * would take its body over `maxBytes` (an event bigger than that travels alone), when the next
 * event differs in any of those properties, and at commit: a batch never spans transactions, so
 * the checkpoint simply counts one outstanding message per batch, and the batches of a
 * transaction are the same on every read of it (a redelivery repeats them byte for byte).
 * With `maxEvents` 1 (the default) messages are exactly one event each, with no batch header.
 *
 * Beyond rows (README "Beyond rows"), in stream order with the row changes:
 * - application events (`pgwarren.event` logical messages) take a `seq` like a row change and
 *   keep their place among held events; they are never part of a flood;
 * - a schema event goes before the first change of an included table whose shape differs from
 *   the last one seen (ShapeMemory); it takes no `seq`, so row ids do not depend on it;
 * - with transaction events on, a commit event follows the last event of each transaction that
 *   published any, counting them per table (or prefix) and op.
 * Events routed by a fixed key (application, commit) have routes of their own, so a batch never
 * mixes them with table events.
 *
 * Dead letters (README "Dead letters"): an event whose routing key is over 255 bytes or whose
 * body is over the max message size goes to the dead-letter exchange instead (`deadLetter`, also
 * for callers that find an event cannot be published), as one message of its transaction.
 *
 * Snapshot reads (`publishReads`) take the same path as streamed events (transform, dead
 * letters, the sink's compression), outside any transaction and never batched.
 *
 * Message slots: every message a read of a transaction produces, sent or not, has a slot number
 * (its position among them). Slots are the same on every read under the same flood plan, so after
 * a nack the next read skips the slots the broker confirmed before (`DeliveryMemory`), mapping the
 * sink's tags back to slots to know which were confirmed; it publishes one message at a time
 * (window 1) while the supervisor says to be careful (`remember`).
 *
 * The hot path allocates little per event: the route (the router's), its metric child and the
 * confirm callback are shared by the events of one table and op in one transaction, and the sink
 * keeps nothing of a delivery but its confirm, so the window of unconfirmed messages holds only
 * small objects (less garbage promoted, a flatter RSS).
 */
import type { Checkpoint, TxEntry } from './checkpoint.js';
import type { EventBuilder, BuiltEvent, SchemaColumn } from '../events/envelope.js';
import type { Route, Router } from '../events/router.js';
import type { OperationSelection, TableSelection } from '../filter/selection.js';
import type { Metrics } from '../ops/metrics.js';
import type { Logger } from '../ops/logger.js';
import type { Confirm, DeadLetterDelivery, DeliverySink, EventDelivery, TxRef } from '../sink/sink.js';
import type { Change, Decoded, LogicalMessage, Op, RelationInfo, SourceInfo, TxInfo } from '../types.js';
import { formatLsn } from '../source/lsn.js';
import { FloodGuard, type FloodAction, type FloodedTable, type TxPlan } from '../filter/flood-guard.js';
import { tableKey, tableName } from '../shared/table-name.js';
import { APP_EVENT_PREFIX, messageRoutingKey, readAppEvent } from '../events/app-event.js';
import { ShapeMemory, shapeSignature } from './shapes.js';
import { DeliveryMemory } from './delivery-memory.js';
import { deadLetterRoutingKey, stubBody, utf8Bytes, type DeadLetter, type DeadLetterReason } from './dead-letter.js';
import { NackError, publishRefused } from '../sink/amqp-sink.js';
import type { Shaper } from './shaping.js';
import type { ReadBatch, SnapshotTap } from '../snapshot/tap.js';

export interface PipelineDeps {
  readonly source: SourceInfo;
  readonly tables: TableSelection;
  readonly operations: OperationSelection;
  readonly builder: EventBuilder;
  /** Loads catalog facts for a relation's column types before its first event is built. */
  readonly prepareRelation: (relation: RelationInfo) => Promise<void>;
  readonly router: Router;
  readonly sink: DeliverySink;
  readonly checkpoint: Checkpoint;
  /** Bound on messages awaiting confirms, and on transactions open in the checkpoint. */
  readonly maxInflight: number;
  readonly metrics: Metrics;
  readonly log: Logger;
  readonly flood: {
    readonly action: FloodAction;
    readonly exchange: string;
    readonly thresholdFor: (schema: string, table: string) => number;
    readonly bufferEvents: number;
    readonly bufferBytes?: number;
  };
  /** Transactions to be read a second time, with their flood verdicts known up front. */
  readonly plans: ReadonlyMap<bigint, TxPlan>;
  /** Batched mode; absent or maxEvents 1: one event per message. */
  readonly batch?: { readonly maxEvents: number; readonly maxBytes: number };
  /** Routing key template of application events without a `routing_key` (default `message.{prefix}`). */
  readonly messageRoutingKey?: string;
  /** Publish a commit event after each transaction that published anything. */
  readonly transactionEvents?: boolean;
  /** Table shapes seen so far (kept across sessions, rewound by the session); default: a fresh one. */
  readonly shapes?: ShapeMemory;
  /** Dead letters (README: Dead letters); absent: exchange `pgwarren.dead`, 128 MiB bodies. */
  readonly deadLetter?: { readonly exchange: string; readonly maxMessageBytes: number };
  /** What the supervisor keeps across sessions (confirmed prefixes, careful mode, rejections). */
  readonly memory?: DeliveryMemory;
  /** Row filter (in-process), skip-unchanged and transform (README "Shaping the stream"). */
  readonly shaper?: Shaper;
  /** Snapshots (src/snapshot/): watermarks and the changes that fall between them. */
  readonly snapshots?: SnapshotTap;
}

/**
 * A transaction outgrew the flood buffer: nothing of it was published but, with `divert`, the
 * rows of tables that flooded before the overflow (counted in `plan.diverted`). The session must
 * end (after the broker confirmed what came before) and the next one read it again with this plan.
 */
export class ReplanRequest extends Error {
  constructor(readonly plan: TxPlan) {
    super(`transaction at ${formatLsn(plan.commitLsn)} outgrew the flood buffer; reading it again with its counts known`);
  }
}

/** The pgwarren flood marker: SELECT pg_logical_emit_message(true, 'pgwarren', 'bulk'). */
function isFloodMarker(msg: LogicalMessage): boolean {
  return msg.transactional && msg.prefix === 'pgwarren' && msg.content.toString('utf8') === 'bulk';
}

interface OpenTx {
  readonly info: TxInfo;
  /** What the sink is told of the transaction (one object per read of it). */
  readonly ref: TxRef;
  readonly entry: TxEntry;
  readonly commitMs: number;
  readonly timestampSeconds: number;
  /** The transaction's commit LSN as text, for the `pgwarren-lsn` header. */
  readonly lsn: string;
  seq: number;
  published: number;
  /** Events published per `schema.table` (or prefix) and op; only with transaction events on. */
  counts: Map<string, Map<string, number>> | null;
  /** The flood plan this read uses (identity matters: see DeliveryMemory). */
  readonly plan: TxPlan | null;
  /** Inflight window for this transaction: 1 in careful mode, else maxInflight. */
  readonly window: number;
  /** Message slots so far in this read: sent, skipped as confirmed earlier, or skipped as refused. */
  slots: number;
  /** Leading slots an earlier read had confirmed: not sent again. */
  readonly skip: number;
  readonly skipLastId: string | null;
  /** Leading slots confirmed so far (this read or an earlier one), and the id of the last. */
  confirmed: number;
  confirmedLastId: string | null;
  /** Slots confirmed beyond a gap (confirms out of order), by slot, with their ids. */
  ahead: Map<number, string> | null;
  /** Sink tag minus slot for this transaction's messages; null before the first send. */
  tagBase: number | null;
  /** False once a sink tag did not follow the slots (no prefix is recorded then). */
  trackable: boolean;
}

/** The confirm callback of single-event messages of one route in one transaction. */
interface ConfirmSet {
  readonly tx: OpenTx;
  readonly route: Route;
  readonly confirmOne: Confirm;
}

/** A published-events counter, resolved once per route. */
type Counter = { inc(n?: number): void };

/** A batch being filled (batched mode only). */
interface OpenBatch {
  readonly tx: OpenTx;
  readonly exchange: string;
  readonly route: Route;
  readonly bodies: string[];
  /** Event ids, for dead-lettering the batch should the broker refuse it. */
  readonly ids: string[];
  /** Body bytes so far, brackets and commas included. */
  bytes: number;
}

/**
 * An event the pipeline knows it cannot publish (an application event with malformed JSON): it is
 * dead-lettered where it would have been published, so it is held with the transaction's other
 * events and takes the same message slot on every read.
 */
interface RefusedEvent extends BuiltEvent {
  readonly refused: { readonly reason: DeadLetterReason; readonly error: string };
}

/** The dead-letter fields an event carries itself. */
function letterOf(event: BuiltEvent): Pick<DeadLetter, 'id' | 'schema' | 'table' | 'op'> {
  return { id: event.id, schema: event.schema, table: event.table, op: event.op };
}

export class Pipeline {
  private tx: OpenTx | null = null;
  private readonly prepared = new WeakSet<RelationInfo>();
  private failure: Error | null = null;
  /** The waiting `handle`, woken by a confirm (or a failure) once `ready` holds. */
  private confirmWaiter: { readonly ready: () => boolean; readonly wake: () => void } | null = null;
  private readonly guard: FloodGuard<BuiltEvent>;
  private readonly counters = new WeakMap<Route, Counter>();
  private lastConfirm: ConfirmSet | null = null;
  private readonly batchMaxEvents: number;
  private readonly batchMaxBytes: number;
  private batch: OpenBatch | null = null;
  private brokerWait = false;
  private readonly shapes: ShapeMemory;
  /** A relation's shape as schema events report it, worked out once per relation. */
  private readonly relationShapes = new WeakMap<RelationInfo, { columns: SchemaColumn[]; signature: string }>();
  private readonly defaultMessageKey: string;
  private readonly memory: DeliveryMemory;
  private readonly deadExchange: string;
  private readonly maxMessageBytes: number;
  /** Transactions with messages sent in this session, for recording their confirmed prefixes. */
  private tracked: OpenTx[] = [];
  /** The transaction and id of the last message sent (careful mode: the one unconfirmed). */
  private lastSentTx: OpenTx | null = null;
  private lastSentId = '';
  /** Inflight window of the transaction being read. */
  private window: number;
  /** Inside `handle` (its items, sync or async): no snapshot reads are handed on meanwhile. */
  private handling = false;
  private readsScheduled = false;
  /** A slice of snapshot reads being handed on (scheduleReads). */
  private readsRunning: Promise<void> | null = null;

  constructor(private readonly deps: PipelineDeps) {
    this.guard = new FloodGuard<BuiltEvent>({
      action: deps.flood.action,
      thresholdFor: deps.flood.thresholdFor,
      bufferEvents: deps.flood.bufferEvents,
      bufferBytes: deps.flood.bufferBytes,
    });
    this.batchMaxEvents = Math.max(1, Math.floor(deps.batch?.maxEvents ?? 1));
    this.shapes = deps.shapes ?? new ShapeMemory();
    this.defaultMessageKey = messageRoutingKey(deps.messageRoutingKey ?? 'message.{prefix}', { db: deps.source.db, prefix: APP_EVENT_PREFIX });
    this.memory = deps.memory ?? new DeliveryMemory();
    this.deadExchange = deps.deadLetter?.exchange ?? 'pgwarren.dead';
    this.maxMessageBytes = Math.max(1, Math.floor(deps.deadLetter?.maxMessageBytes ?? 134_217_728));
    // A batch is a message: it must not outgrow the max message size either.
    this.batchMaxBytes = Math.min(this.maxMessageBytes, Math.max(1, Math.floor(deps.batch?.maxBytes ?? Number.MAX_SAFE_INTEGER)));
    this.window = deps.maxInflight;
    deps.snapshots?.onReads(() => this.scheduleReads());
  }

  inTransaction(): boolean {
    return this.tx !== null;
  }

  /** True while `handle` is held up by the broker (not writable, or the inflight window full). */
  waitingOnBroker(): boolean {
    return this.brokerWait;
  }

  /** The first confirm failure, if any; the session ends on it. */
  failed(): Error | null {
    return this.failure;
  }

  /** Returns a promise only when it has to wait (backpressure, a relation's catalog facts). */
  handle(items: readonly Decoded[]): Promise<void> | void {
    // A slice of snapshot reads being handed on goes first (see scheduleReads).
    if (this.readsRunning) return this.readsRunning.then(() => this.handle(items));
    this.handling = true;
    let p: Promise<void> | void;
    try {
      p = this.handleItems(items);
    } catch (err) {
      this.handling = false;
      throw err;
    }
    if (!p) {
      this.handling = false;
      this.scheduleReads();
      return;
    }
    return p.finally(() => {
      this.handling = false;
      this.scheduleReads();
    });
  }

  private handleItems(items: readonly Decoded[]): Promise<void> | void {
    for (let i = 0; i < items.length; i++) {
      if (this.failure) throw this.failure;
      const p = this.item(items[i]!);
      if (p) return p.then(() => this.handleItems(items.slice(i + 1)));
    }
  }

  /**
   * Snapshot reads past their high watermark (src/snapshot/tap.ts) are handed on a slice at a
   * time, in the event loop's turns between streamed items and only outside a transaction, so a
   * streamed change waits at most one slice, never a whole chunk. `handle` waits for a slice in
   * progress, so the changes the tap saw are exactly those handled before the slice.
   */
  private scheduleReads(): void {
    if (this.readsScheduled || this.readsRunning || !this.deps.snapshots?.hasReads()) return;
    this.readsScheduled = true;
    setImmediate(() => {
      this.readsScheduled = false;
      // Mid-transaction or mid-item: handle() schedules again when it is done.
      if (this.handling || this.tx || this.failure || this.readsRunning) return;
      const batch = this.deps.snapshots!.nextReads();
      if (!batch) return;
      this.readsRunning = this.publishReads(batch)
        .catch((err: unknown) => {
          this.failure ??= err as Error;
          batch.onConfirmed(err as Error);
        })
        .finally(() => {
          this.readsRunning = null;
          this.scheduleReads();
        });
    });
  }

  private item(item: Decoded): Promise<void> | void {
    switch (item.kind) {
      case 'begin':
        if (this.tooManyOpen()) return this.waitForTransactions().then(() => this.begin(item.xid, item.commitLsn, item.commitTime));
        return this.begin(item.xid, item.commitLsn, item.commitTime);
      case 'commit':
        return this.commit(item.endLsn);
      case 'message':
        // Snapshot watermarks are non-transactional: they arrive between transactions.
        if (!this.tx && this.deps.snapshots?.isWatermark(item)) return this.deps.snapshots.watermark(item);
        if (item.prefix === APP_EVENT_PREFIX) return this.appEvent(item);
        if (this.tx && isFloodMarker(item)) return this.divert(this.guard.markMarker(), this.tx);
        return;
      case 'change':
      case 'truncate':
        return this.change(item);
    }
  }

  private begin(xid: number, commitLsn: bigint, commitTime: string): void {
    if (this.tx) throw new Error(`transaction ${xid} began inside transaction ${this.tx.info.xid}`);
    const commitMs = Date.parse(commitTime);
    const plan = this.deps.plans.get(commitLsn) ?? null;
    const prefix = this.memory.prefix(commitLsn, plan);
    this.window = this.memory.careful(commitLsn) ? 1 : this.deps.maxInflight;
    const lsn = formatLsn(commitLsn);
    this.tx = {
      info: { xid, commitLsn, commitTime },
      ref: { commitLsn, lsn, xid },
      entry: this.deps.checkpoint.begin(commitLsn),
      commitMs,
      timestampSeconds: Math.floor(commitMs / 1000),
      lsn,
      seq: 0,
      published: 0,
      plan,
      window: this.window,
      slots: 0,
      skip: prefix?.count ?? 0,
      skipLastId: prefix?.lastId ?? null,
      confirmed: prefix?.count ?? 0,
      confirmedLastId: prefix?.lastId ?? null,
      ahead: null,
      tagBase: null,
      trackable: true,
      counts: this.deps.transactionEvents ? new Map() : null,
    };
    if (prefix) this.deps.log.info({ lsn: this.tx.lsn, skipped: prefix.count }, `transaction at ${this.tx.lsn}: skipping the ${prefix.count} leading messages the broker confirmed before`);
    this.guard.begin(plan);
  }

  private async commit(endLsn: bigint): Promise<void> {
    const tx = this.tx;
    if (!tx) throw new Error('commit outside a transaction');
    const verdict = this.guard.commit(tx.info.commitLsn);
    if (verdict.replan) {
      // The plan says the rows this read diverted were sent: the open batch of them must be.
      // (Their transaction is not committed in the checkpoint, so the slot stays before it.)
      const p = this.flush();
      if (p) await p;
      throw new ReplanRequest(verdict.replan);
    }
    for (const event of verdict.publish) {
      const p = this.publish(event, tx, 'normal');
      if (p) await p;
    }
    if (verdict.flooded.length > 0) await this.floods(verdict.flooded, tx);
    if (tx.counts && tx.counts.size > 0) await this.publish(this.deps.builder.buildCommit(tx.counts, tx.info), tx, 'normal');
    const p = this.flush();
    if (p) await p;
    if (tx.slots < tx.skip) this.prefixMismatch(tx, `it has ${tx.slots} messages, the earlier read confirmed ${tx.skip}`);
    this.tx = null;
    this.deps.checkpoint.committed(tx.entry, endLsn);
    if (tx.published > 0 && tx.entry.outstanding === 0) this.observeLatency(tx);
  }

  private async floods(flooded: readonly FloodedTable[], tx: OpenTx): Promise<void> {
    const { flood, metrics, log } = this.deps;
    metrics.floodTransactions.inc();
    for (const f of flooded) {
      const rows = f.counts.insert + f.counts.update + f.counts.delete;
      if (flood.action === 'summarize' || flood.action === 'drop') metrics.eventsFiltered.inc({ reason: 'flood' }, rows);
      log.info(
        { table: tableName(f.schema, f.table), xid: tx.info.xid, lsn: tx.lsn, counts: f.counts, reason: f.reason, action: flood.action },
        `flood: ${rows} changes of ${tableName(f.schema, f.table)} in transaction ${tx.info.xid} (${f.reason}); action ${flood.action}`,
      );
      if (flood.action === 'summarize') await this.publish(this.deps.builder.buildBulk(f, tx.info), tx, 'normal');
    }
  }

  private async divert(events: readonly BuiltEvent[], tx: OpenTx): Promise<void> {
    for (const event of events) {
      const p = this.publish(event, tx, 'flood');
      if (p) await p;
    }
  }

  /**
   * An application event: counts in `seq` wherever it stands; published (or held with the
   * transaction's other events) unless its payload cannot be, which is rejected (dead-lettered).
   */
  private appEvent(msg: LogicalMessage): Promise<void> | void {
    const tx = this.tx;
    if (!msg.transactional || !tx) {
      // Not atomic with anything: it would be published even if the transaction rolled back.
      this.deps.log.debug({ prefix: msg.prefix, bytes: msg.content.length }, 'ignored a non-transactional pgwarren.event message (use pg_logical_emit_message(true, ...))');
      return;
    }
    const seq = tx.seq++;
    const read = readAppEvent(msg.content);
    if (!read.ok) {
      // Dead-lettered in its place: the body says what is known, the payload as a JSON string.
      const id = `${tx.lsn}:${seq}`;
      const body =
        `{"id":"${id}","op":"message","prefix":${JSON.stringify(APP_EVENT_PREFIX)},"payload_text":${JSON.stringify(msg.content.toString('utf8'))},` +
        `"tx":{"xid":${tx.info.xid},"lsn":"${tx.lsn}","commit_time":"${tx.info.commitTime}","seq":${seq}}}`;
      const refused: RefusedEvent = { id, op: 'message', schema: '', table: APP_EVENT_PREFIX, body, refused: { reason: 'malformed', error: read.reason } };
      return this.placeOther(refused, tx);
    }
    const event = this.deps.builder.buildMessage(APP_EVENT_PREFIX, read.payload, read.routingKey ?? this.defaultMessageKey, tx.info, seq);
    return this.placeOther(event, tx);
  }

  /** An event that is never part of a flood (schema, application): held in order, or published now. */
  private placeOther(event: BuiltEvent, tx: OpenTx): Promise<void> | void {
    const now = this.guard.truncate();
    if (now === 'hold') this.guard.keep(event, null, event.body.length);
    else if (now === 'publish') return this.publish(event, tx, 'normal');
    // 'count': the transaction is being counted and will be read again, this event with it.
  }

  /**
   * The schema event due before a change of `relation` at `seq`, if its shape differs from the
   * last one seen. The relation's types must be loaded.
   */
  private schemaEvent(relation: RelationInfo, tx: OpenTx, seq: number): BuiltEvent | null {
    let shape = this.relationShapes.get(relation);
    if (!shape) {
      const columns = this.deps.builder.schemaColumns(relation);
      shape = { columns, signature: shapeSignature(columns) };
      this.relationShapes.set(relation, shape);
    }
    const { schema, table } = relation;
    const previous = this.shapes.observe(`${schema}\u0000${table}`, shape.columns, shape.signature, tx.info.commitLsn);
    if (!previous) return null;
    return this.deps.builder.buildSchema(schema, table, shape.columns, previous, tx.info, seq);
  }

  private change(change: Change): Promise<void> | void {
    const tx = this.tx;
    if (!tx) throw new Error('row change outside a transaction');
    const { schema, table } = change.relation;
    if (!this.deps.tables.includes(schema, table)) {
      this.deps.metrics.eventsFiltered.inc({ reason: 'table' });
      return;
    }
    // The in-process row filter (wal2json) runs before the change takes a seq: see shaping.ts.
    const shaper = this.deps.shaper;
    if (shaper && change.kind === 'change' && shaper.filtersRows(schema, table)) {
      const kept = shaper.filter(change);
      if (kept instanceof Promise) return kept.then((c) => this.selected(c, tx));
      return this.selected(kept, tx);
    }
    return this.selected(change, tx);
  }

  private selected(change: Change | null, tx: OpenTx): Promise<void> | void {
    const { metrics } = this.deps;
    if (change === null) {
      metrics.eventsFiltered.inc({ reason: 'row_filter' });
      return;
    }
    if (change.kind === 'change' && !this.prepared.has(change.relation)) {
      // Schema events need the relation's type names: load them before the change takes its seq.
      return this.deps.prepareRelation(change.relation).then(() => {
        this.prepared.add(change.relation);
        return this.selected(change, tx);
      });
    }
    const seq = tx.seq++;
    if (change.kind === 'change') {
      const schemaEvent = this.schemaEvent(change.relation, tx, seq);
      if (schemaEvent) {
        const p = this.placeOther(schemaEvent, tx);
        if (p) return p.then(() => this.filtered(change, tx, seq));
      }
    }
    return this.filtered(change, tx, seq);
  }

  /** Operation selection and the flood guard, for a change of an included table at `seq`. */
  private filtered(change: Change, tx: OpenTx, seq: number): Promise<void> | void {
    const { schema, table } = change.relation;
    const { metrics } = this.deps;
    const op: Op = change.kind === 'truncate' ? 'truncate' : change.op;
    if (!this.deps.operations.includes(op)) {
      metrics.eventsFiltered.inc({ reason: 'operation' });
      return;
    }
    this.deps.snapshots?.changed(change, tx.info.xid);
    if (change.kind === 'change' && this.deps.shaper?.shapes(schema, table)) return this.shaped(change, tx, seq);
    return this.guarded(change, tx, seq, null);
  }

  /** skip-unchanged and transform need the built event before the flood guard sees the row. */
  private shaped(change: Change & { kind: 'change' }, tx: OpenTx, seq: number): Promise<void> | void {
    if (!this.prepared.has(change.relation)) {
      return this.deps.prepareRelation(change.relation).then(() => {
        this.prepared.add(change.relation);
        return this.shaped(change, tx, seq);
      });
    }
    const built = this.deps.builder.build(change, tx.info, seq);
    const out = this.deps.shaper!.shape(built);
    const next = (shaped: Awaited<typeof out>): Promise<void> | void => {
      if (shaped.kind === 'drop') {
        this.deps.metrics.eventsFiltered.inc({ reason: shaped.reason });
        return;
      }
      if (shaped.kind === 'fail') {
        return this.deadLetterIn(tx, { ...letterOf(built), body: built.body, reason: 'transform', error: shaped.error });
      }
      return this.guarded(change, tx, seq, shaped.event);
    };
    return out instanceof Promise ? out.then(next) : next(out);
  }

  private guarded(change: Change, tx: OpenTx, seq: number, event: BuiltEvent | null): Promise<void> | void {
    const { schema, table } = change.relation;
    const verdict = change.kind === 'truncate' ? { now: this.guard.truncate(), divert: [] } : this.guard.row(schema, table, change.op, seq);
    if (verdict.divert.length > 0) return this.divert(verdict.divert, tx).then(() => this.place(change, tx, seq, verdict.now, event));
    return this.place(change, tx, seq, verdict.now, event);
  }

  private place(change: Change, tx: OpenTx, seq: number, now: 'publish' | 'divert' | 'drop' | 'hold' | 'count', built: BuiltEvent | null = null): Promise<void> | void {
    if (now === 'drop' || now === 'count') return;
    if (!built && !this.prepared.has(change.relation)) {
      return this.deps.prepareRelation(change.relation).then(() => {
        this.prepared.add(change.relation);
        return this.place(change, tx, seq, now);
      });
    }
    const event = built ?? this.deps.builder.build(change, tx.info, seq);
    if (now === 'hold') this.guard.keep(event, change.kind === 'truncate' ? null : tableKey(change.relation.schema, change.relation.table), event.body.length);
    else return this.publish(event, tx, now === 'divert' ? 'flood' : 'normal');
  }

  /** Send `event` (or add it to the open batch). Returns a promise only when it has to wait. */
  private publish(event: BuiltEvent, tx: OpenTx, destination: 'normal' | 'flood'): Promise<void> | void {
    const refused = this.refusal(event);
    if (refused) return this.deadLetterIn(tx, refused);
    const { router, source } = this.deps;
    const route = event.routingKey === undefined ? router.route(source.db, event.schema, event.table, event.op) : router.fixedRoute(event.table, event.op, event.routingKey);
    // A change that can never be published as configured must not block the ones after it.
    const unpublishable = this.unpublishable(event, route);
    if (unpublishable) return this.deadLetterIn(tx, unpublishable);
    const exchange = destination === 'flood' ? this.deps.flood.exchange : route.exchange;
    if (event.ownRoutingKey !== undefined || event.ownHeaders !== undefined) {
      // A transform gave it its own routing key or headers: it travels alone (a batch of one in
      // batched mode), after the batch being filled.
      if (this.batch) {
        const p = this.flush();
        if (p) return p.then(() => this.publish(event, tx, destination));
      }
      if (tx.counts && destination === 'normal') this.tally(tx.counts, event);
      const batched = this.batchMaxEvents > 1;
      const own = { routingKey: event.ownRoutingKey, headers: event.ownHeaders };
      const sendAlone = () => this.send(tx, exchange, route, [event.id], [event.body], batched, own);
      if (this.mustWait()) return this.waitToSend().then(sendAlone);
      sendAlone();
      return;
    }
    if (this.batchMaxEvents === 1) {
      if (tx.counts && destination === 'normal') this.tally(tx.counts, event);
      if (this.mustWait()) return this.waitToSend().then(() => this.send(tx, exchange, route, [event.id], [event.body], false));
      this.send(tx, exchange, route, [event.id], [event.body], false);
      return;
    }
    const bytes = Buffer.byteLength(event.body, 'utf8');
    const open = this.batch;
    if (open && (open.tx !== tx || open.exchange !== exchange || open.route !== route || open.bytes + 1 + bytes > this.batchMaxBytes)) {
      const p = this.flush();
      if (p) return p.then(() => this.publish(event, tx, destination));
      return this.publish(event, tx, destination);
    }
    if (tx.counts && destination === 'normal') this.tally(tx.counts, event);
    if (open) {
      open.bodies.push(event.body);
      open.ids.push(event.id);
      open.bytes += 1 + bytes;
    } else {
      this.batch = { tx, exchange, route, bodies: [event.body], ids: [event.id], bytes: 2 + bytes };
    }
    if (this.batch!.bodies.length >= this.batchMaxEvents) return this.flush();
  }

  /** The dead letter of an event the pipeline already knows it cannot publish (malformed), or null. */
  private refusal(event: BuiltEvent): DeadLetter | null {
    const refused = (event as Partial<RefusedEvent>).refused;
    return refused ? { ...letterOf(event), body: event.body, reason: refused.reason, error: refused.error } : null;
  }

  /** The dead letter of an event that cannot travel on `route` (routing key, size), or null. */
  private unpublishable(event: BuiltEvent, route: Route): DeadLetter | null {
    if (route.keyError !== null && event.ownRoutingKey === undefined) return { ...letterOf(event), body: event.body, reason: 'routing_key', error: route.keyError };
    if (event.body.length * 3 > this.maxMessageBytes) {
      const bytes = utf8Bytes(event.body);
      if (bytes > this.maxMessageBytes) {
        const error = `the body is ${bytes} bytes, above PGWARREN_MAX_MESSAGE_BYTES (${this.maxMessageBytes})`;
        return { ...letterOf(event), body: event.body, reason: 'size', error };
      }
    }
    return null;
  }

  /** Count an event for the transaction's commit event (not the commit event itself). */
  private tally(counts: Map<string, Map<string, number>>, event: BuiltEvent): void {
    if (event.op === 'commit') return;
    const name = event.schema === '' ? event.table : tableName(event.schema, event.table);
    let ops = counts.get(name);
    if (!ops) counts.set(name, (ops = new Map()));
    ops.set(event.op, (ops.get(event.op) ?? 0) + 1);
  }

  /** Send the open batch. */
  private flush(): Promise<void> | void {
    const b = this.batch;
    if (!b) return;
    if (this.mustWait()) return this.waitToSend().then(() => this.flush());
    this.batch = null;
    this.send(b.tx, b.exchange, b.route, b.ids, b.bodies, true);
  }

  /**
   * Dead-letter one event of the transaction being read instead of publishing it (README "Failure handling",
   * README "Dead letters"). For callers inside the pipeline that find an event cannot be
   * published: an application event whose JSON is malformed, a transform that throws. Call it
   * only between a transaction's begin and commit, in stream order with the transaction's other
   * events, like `publish`; it returns a promise only when it has to wait (inflight window).
   *
   * The event becomes one message on `PGWARREN_DEAD_LETTER_EXCHANGE` (routing key
   * `schema.table.op`, the §5 properties and headers plus `pgwarren-error` = `letter.error`),
   * confirmed like any other message before the slot passes the transaction, and counted in
   * `pgwarren_dead_lettered_total{reason}` once confirmed. A body above the max message size is
   * replaced by a stub without row values; one the broker refused even as a stub is logged,
   * counted and skipped.
   */
  deadLetter(letter: DeadLetter): Promise<void> | void {
    const tx = this.tx;
    if (!tx) throw new Error('dead letter outside a transaction');
    return this.deadLetterIn(tx, letter);
  }

  private deadLetterIn(tx: OpenTx, letter: DeadLetter): Promise<void> | void {
    if (this.mustWait()) return this.waitToSend().then(() => this.sendDeadLetter(tx, letter, null));
    this.sendDeadLetter(tx, letter, null);
  }

  /**
   * One dead-letter message: `letter`, or with `batchIds` a batch the broker refused (the body is
   * then a JSON array of stubs, with `pgwarren-batch`).
   */
  private sendDeadLetter(tx: OpenTx, letter: DeadLetter, batchIds: readonly string[] | null): void {
    const { log, metrics } = this.deps;
    const rejected = this.memory.anyRejected() ? this.memory.rejection(letter.id) : undefined;
    if (rejected && rejected.times >= 2) {
      // The broker closed the channel even over the stub: nothing of it can be published.
      const where = { id: letter.id, table: letter.schema === '' ? letter.table : tableName(letter.schema, letter.table), op: letter.op, lsn: tx.lsn, reason: letter.reason, error: letter.error };
      log.error({ ...where, broker: rejected.error }, `event ${letter.id} skipped: the broker refused it even as a dead-letter stub (${rejected.error})`);
      metrics.deadLettered.inc({ reason: letter.reason });
      this.skipSlot(tx, letter.id);
      return;
    }
    const reason: DeadLetterReason = letter.reason;
    const count = batchIds?.length ?? 1;
    this.write(tx, this.letterDelivery(tx, letter, batchIds, rejected?.error), (err, tag) => {
      if (err) return this.confirmFailed(err);
      this.deps.checkpoint.confirmed(tx.entry);
      this.confirmedTag(tx, tag, letter.id);
      metrics.deadLettered.inc({ reason }, count);
      if (tx.entry.outstanding === 0 && tx.entry.endLsn !== null) this.observeLatency(tx);
      this.wakeConfirmWaiter();
    });
  }

  /**
   * The delivery of a dead letter of `tx` (null: a snapshot read), logged: its body, or a stub
   * without row values when it is too big, `batchIds` were refused together, or the broker
   * refused it before (`rejected`: what it said).
   */
  private letterDelivery(tx: OpenTx | null, letter: DeadLetter, batchIds: readonly string[] | null, rejected: string | undefined): DeadLetterDelivery {
    const { log, source } = this.deps;
    const lsn = tx?.lsn ?? '';
    const where = { id: letter.id, table: letter.schema === '' ? letter.table : tableName(letter.schema, letter.table), op: letter.op, ...(tx && { lsn }), reason: letter.reason, error: letter.error };
    let bodies = [letter.body];
    const bytes = utf8Bytes(letter.body);
    if (batchIds || rejected !== undefined || bytes > this.maxMessageBytes) {
      const stub = { ...letter, error: rejected !== undefined ? `${letter.error}; the broker refused the message (${rejected})` : letter.error };
      const info = tx?.info ?? null;
      bodies = batchIds ? batchIds.map((id) => stubBody({ ...stub, id }, info, lsn, source, bytes)) : [stubBody(stub, info, lsn, source, bytes)];
    }
    log.warn(where, `event ${letter.id} dead-lettered to exchange "${this.deadExchange}": ${letter.error}`);
    return {
      kind: 'dead-letter',
      tx: tx?.ref ?? null,
      timestampSeconds: tx?.timestampSeconds ?? Math.floor(Date.now() / 1000),
      exchange: this.deadExchange,
      routingKey: deadLetterRoutingKey(letter.schema, letter.table, letter.op),
      id: letter.id,
      schema: letter.schema,
      table: letter.table,
      op: letter.op,
      error: letter.error,
      bodies,
      batch: batchIds !== null,
    };
  }

  /**
   * A slice of a snapshot chunk's `read` events (src/snapshot/tap.ts), published between
   * streamed transactions after its high watermark (scheduleReads): never batched, never a
   * flood, but otherwise like streamed events: shaped (transform), dead-lettered when they
   * cannot be published, and written by the same sink (compression). They count in the checkpoint as one entry that moves
   * nothing, so later transactions are acknowledged only once the chunk is confirmed, and the
   * inflight window bounds them like any message.
   */
  private async publishReads(batch: ReadBatch): Promise<void> {
    const { checkpoint, sink, router, source, metrics, shaper } = this.deps;
    const { schema, table } = batch;
    const route = batch.exchange === undefined && batch.routingKey === undefined ? router.route(source.db, schema, table, 'read') : router.snapshotRoute(source.db, schema, table, batch);
    const counter = this.counter(route);
    const entry = checkpoint.begin(checkpoint.safeLsn());
    // Messages sent and not yet confirmed, plus one until every event has been handed over.
    let left = 1;
    let settled = false;
    const settle = (err: Error | null) => {
      if (settled) return;
      if (err) {
        settled = true;
        this.failure ??= err;
        batch.onConfirmed(err);
      } else if (--left === 0) {
        settled = true;
        batch.onConfirmed(null);
      }
      this.wakeConfirmWaiter();
    };
    const confirmed = (count: () => void) => (err: Error | null) => {
      if (!err && !settled) {
        checkpoint.confirmed(entry);
        count();
      }
      settle(err);
    };
    const confirmEvent = confirmed(() => counter.inc());
    const timestampSeconds = Math.floor(Date.now() / 1000);
    const shapes = shaper?.shapes(schema, table) ?? false;
    for (const read of batch.events) {
      let event = read;
      let letter: DeadLetter | null = null;
      if (shapes) {
        const out = shaper!.shape(read);
        const shaped = out instanceof Promise ? await out : out;
        if (shaped.kind === 'drop') {
          metrics.eventsFiltered.inc({ reason: shaped.reason });
          continue;
        }
        if (shaped.kind === 'fail') letter = { ...letterOf(read), body: read.body, reason: 'transform', error: shaped.error };
        else event = shaped.event;
      }
      letter ??= this.unpublishable(event, route);
      if (this.mustWait()) await this.waitToSend();
      checkpoint.published(entry);
      left++;
      if (letter) {
        const reason = letter.reason;
        sink.deliver(this.letterDelivery(null, letter, null, undefined), confirmed(() => metrics.deadLettered.inc({ reason })));
        continue;
      }
      const delivery: EventDelivery = {
        kind: 'events',
        tx: null,
        timestampSeconds,
        route,
        exchange: route.exchange,
        routingKey: event.ownRoutingKey ?? route.routingKey,
        ids: [event.id],
        bodies: [event.body],
        batch: false,
        ...(event.ownHeaders && { ownHeaders: event.ownHeaders }),
      };
      sink.deliver(delivery, confirmEvent);
    }
    checkpoint.committed(entry, 0n);
    settle(null);
  }

  private mustWait(): boolean {
    return !this.deps.sink.writable() || this.windowFull();
  }

  private windowFull(): boolean {
    return this.deps.checkpoint.outstanding() >= this.window;
  }

  /** Outside a transaction only. With none open, nothing is outstanding: it cannot wait forever. */
  private tooManyOpen(): boolean {
    return this.deps.checkpoint.openTransactions() >= this.deps.maxInflight;
  }

  private async waitToSend(): Promise<void> {
    const { sink } = this.deps;
    this.brokerWait = true;
    try {
      while (!sink.writable() || this.windowFull()) {
        const reason = sink.failureReason() ?? this.failure;
        if (reason) throw reason;
        if (!sink.writable()) await sink.whenWritable();
        else await this.confirms(() => !this.windowFull());
      }
    } finally {
      this.brokerWait = false;
    }
  }

  private async waitForTransactions(): Promise<void> {
    this.brokerWait = true;
    try {
      while (this.tooManyOpen()) {
        const reason = this.deps.sink.failureReason() ?? this.failure;
        if (reason) throw reason;
        await this.confirms(() => !this.tooManyOpen());
      }
    } finally {
      this.brokerWait = false;
    }
  }

  /** Resolves on the confirm after which `ready` holds, or on a failure. */
  private confirms(ready: () => boolean): Promise<void> {
    return new Promise<void>((wake) => (this.confirmWaiter = { ready, wake }));
  }

  /** One message: one event, or (`batch`: batched mode) a batch of them, even of one. */
  private send(
    tx: OpenTx,
    exchange: string,
    route: Route,
    ids: readonly string[],
    bodies: readonly string[],
    batch: boolean,
    own: { readonly routingKey?: string; readonly headers?: BuiltEvent['ownHeaders'] } | null = null,
  ): void {
    const messageId = ids[0]!;
    if (this.memory.anyRejected() && this.memory.rejection(messageId)) {
      // The broker closed the channel over this very message in an earlier session.
      const letter: DeadLetter = {
        id: messageId,
        schema: route.schema,
        table: route.table,
        op: route.op,
        body: batch ? '[' + bodies.join(',') + ']' : bodies[0]!,
        reason: 'broker_rejected',
        error: 'the broker closed the channel when this message was published (406 PRECONDITION_FAILED: above its max_message_size?)',
      };
      this.sendDeadLetter(tx, letter, batch ? ids : null);
      return;
    }
    const delivery: EventDelivery = {
      kind: 'events',
      tx: tx.ref,
      timestampSeconds: tx.timestampSeconds,
      route,
      exchange,
      routingKey: own?.routingKey ?? route.routingKey,
      ids,
      bodies,
      batch,
      ...(own?.headers && { ownHeaders: own.headers }),
    };
    // Messages of one route in one transaction share their confirm callback: the window of
    // unconfirmed messages should hold as few objects as possible.
    this.write(tx, delivery, ids.length === 1 ? this.confirmOne(tx, route) : this.confirmer(tx, route, ids.length));
  }

  /**
   * Account for one message slot of `tx` and deliver it, unless an earlier read of the
   * transaction (under the same plan) had the broker confirm it already.
   */
  private write(tx: OpenTx, delivery: EventDelivery | DeadLetterDelivery, confirm: Confirm): void {
    const messageId = delivery.kind === 'events' ? delivery.ids[0]! : delivery.id;
    const slot = tx.slots++;
    if (slot < tx.skip) {
      if (slot === tx.skip - 1 && messageId !== tx.skipLastId) this.prefixMismatch(tx, `message ${slot} is ${messageId}, was ${tx.skipLastId}`);
      return;
    }
    const { sink, checkpoint } = this.deps;
    checkpoint.published(tx.entry);
    tx.published++;
    if (tx.tagBase === null && tx.trackable) this.track(tx);
    this.lastSentTx = tx;
    this.lastSentId = messageId;
    const tag = sink.deliver(delivery, confirm);
    if (typeof tag !== 'number') tx.trackable = false;
    else if (tx.tagBase === null) tx.tagBase = tag - slot;
    else if (tag - tx.tagBase !== slot) tx.trackable = false; // someone else published in between
  }

  /** A slot not sent at all (a dead letter refused even as a stub): it counts as confirmed. */
  private skipSlot(tx: OpenTx, id: string): void {
    const slot = tx.slots++;
    if (slot < tx.skip) return;
    // The next message's tag is one more than the last one's, but its slot two more.
    if (tx.tagBase !== null) tx.tagBase--;
    this.advance(tx, slot, id);
  }

  private track(tx: OpenTx): void {
    if (this.tracked.length >= 64) this.tracked = this.tracked.filter((t) => t.entry.outstanding > 0 || t.entry.endLsn === null);
    this.tracked.push(tx);
  }

  /** The message with sink tag `tag` of `tx` was confirmed: extend the confirmed prefix. */
  private confirmedTag(tx: OpenTx, tag: number | undefined, id: string | undefined): void {
    if (!tx.trackable || tx.tagBase === null) return;
    if (tag === undefined || id === undefined) {
      tx.trackable = false;
      return;
    }
    this.advance(tx, tag - tx.tagBase, id);
  }

  private advance(tx: OpenTx, slot: number, id: string): void {
    if (slot !== tx.confirmed) {
      if (slot > tx.confirmed) (tx.ahead ??= new Map()).set(slot, id);
      return;
    }
    tx.confirmed++;
    tx.confirmedLastId = id;
    const ahead = tx.ahead;
    if (!ahead) return;
    let next: string | undefined;
    while ((next = ahead.get(tx.confirmed)) !== undefined) {
      ahead.delete(tx.confirmed);
      tx.confirmed++;
      tx.confirmedLastId = next;
    }
    if (ahead.size === 0) tx.ahead = null;
  }

  /** A re-read does not match the earlier read the prefix came from: forget it, read again whole. */
  private prefixMismatch(tx: OpenTx, detail: string): never {
    this.memory.forgetPrefix(tx.info.commitLsn);
    throw new Error(`transaction at ${tx.lsn} read differently than before (${detail}); reading it again from its start`);
  }

  /**
   * The session is ending (`failure`: why, if it failed). Remember across sessions what the
   * broker confirmed of unsettled transactions, and after a nack or a publish the broker closed
   * the channel over, publish one message at a time up to the last transaction that was on the
   * wire; a message refused that way while it was the only one unconfirmed is marked, so that the
   * next read dead-letters it (README: Delivery). Returns what kind of refusal ended it, if any.
   */
  remember(failure: unknown): 'nack' | 'refused' | null {
    for (const tx of this.tracked) {
      const settled = tx.entry.outstanding === 0 && tx.entry.endLsn !== null;
      if (!settled && tx.trackable && tx.confirmed > tx.skip && tx.confirmedLastId !== null) {
        this.memory.recordPrefix(tx.info.commitLsn, tx.plan, tx.confirmed, tx.confirmedLastId);
      }
    }
    const kind = failure instanceof NackError ? 'nack' : publishRefused(failure) ? 'refused' : null;
    const last = this.lastSentTx;
    if (kind === null || last === null) return kind;
    const commitLsn = last.info.commitLsn;
    if (kind === 'refused' && last.window === 1 && this.deps.checkpoint.outstanding() === 1) {
      const id = this.lastSentId;
      const text = failure instanceof Error ? (failure.cause instanceof Error ? failure.cause.message : failure.message) : String(failure);
      const r = this.memory.recordRejection(id, commitLsn, text);
      this.deps.log.warn(
        { id, lsn: last.lsn, times: r.times },
        `the broker closed the channel over message ${id} (406); the next read ${r.times === 1 ? 'dead-letters it' : 'skips it'}`,
      );
    }
    this.memory.beCareful(commitLsn);
    return kind;
  }

  private confirmer(tx: OpenTx, route: Route, count: number): Confirm {
    const counter = this.counter(route);
    return (err, tag, messageId) => {
      if (err) return this.confirmFailed(err);
      this.deps.checkpoint.confirmed(tx.entry);
      this.confirmedTag(tx, tag, messageId);
      counter.inc(count);
      if (tx.entry.outstanding === 0 && tx.entry.endLsn !== null) this.observeLatency(tx);
      this.wakeConfirmWaiter();
    };
  }

  /** The confirm callback of single-event messages of `route` in `tx`, shared by them. */
  private confirmOne(tx: OpenTx, route: Route): Confirm {
    const last = this.lastConfirm;
    if (last && last.tx === tx && last.route === route) return last.confirmOne;
    const set: ConfirmSet = { tx, route, confirmOne: this.confirmer(tx, route, 1) };
    this.lastConfirm = set;
    return set.confirmOne;
  }

  private confirmFailed(err: Error): void {
    this.failure ??= err;
    this.wakeConfirmWaiter();
  }

  /** The published-events counter of a route: by table, or for events of no table by label. */
  private counter(route: Route): Counter {
    let counter = this.counters.get(route);
    if (!counter) {
      counter = this.deps.metrics.publishedCounter(route.fixed ? route.table : tableName(route.schema, route.table), route.op);
      this.counters.set(route, counter);
    }
    return counter;
  }

  private wakeConfirmWaiter(): void {
    const w = this.confirmWaiter;
    if (w && (this.failure || w.ready())) {
      this.confirmWaiter = null;
      w.wake();
    }
  }

  private observeLatency(tx: OpenTx): void {
    this.deps.metrics.commitToConfirm.observe(Math.max(0, Date.now() - tx.commitMs) / 1000);
  }
}

