/**
 * The loop's body: decoded items in stream order -> filter -> events -> publisher, with every
 * published message accounted for in the checkpoint.
 *
 * Transaction states: outside -> (Begin) inside -> (Commit) outside. Changes outside a
 * transaction cannot happen with either plugin; logical messages outside one are ignored.
 *
 * Backpressure: `handle` does not return while the publisher is not writable or too many
 * messages wait for confirms; the replication stream does not read on until it returns.
 *
 * Batched mode (`batch.maxEvents` > 1): consecutive events of one transaction that share every
 * message property but the id (exchange, routing key, schema, table, op) travel as one message
 * whose body is a JSON array of them, with header `pgwarren-batch` = the count and `messageId` =
 * the first event's id. A batch is sent when it holds `maxEvents` events, when the next event
 * would take its body over `maxBytes` (an event bigger than that travels alone), when the next
 * event differs in any of those properties, and at commit: a batch never spans transactions, so
 * the checkpoint simply counts one outstanding message per batch, and the batches of a
 * transaction are the same on every read of it (a redelivery repeats them byte for byte).
 * With `maxEvents` 1 (the default) messages are exactly one event each, with no batch header.
 *
 * The hot path allocates little per event: route, routing key, metric child and the AMQP headers
 * object are shared by the events of one table and op (the headers also by one transaction),
 * and a message's content is released as soon as the publisher has written it, so the window of
 * unconfirmed messages holds only small objects (less garbage promoted, a flatter RSS).
 */
import type { Checkpoint, TxEntry } from './checkpoint.js';
import type { EventBuilder, BuiltEvent } from '../events/envelope.js';
import type { Router } from '../events/router.js';
import type { OperationSelection, TableSelection } from '../filter/selection.js';
import type { Metrics } from '../ops/metrics.js';
import type { Logger } from '../ops/logger.js';
import type { Publisher } from '../sink/publisher.js';
import type { OutgoingMessage } from '../sink/amqp-sink.js';
import type { TableRoute } from '../events/router.js';
import type { Change, Decoded, LogicalMessage, Op, RelationInfo, SourceInfo, TxInfo } from '../types.js';
import { formatLsn } from '../source/lsn.js';
import { FloodGuard, type FloodAction, type FloodedTable, type TxPlan } from '../filter/flood-guard.js';
import type { ReadBatch, SnapshotTap } from '../snapshot/tap.js';

export interface PipelineDeps {
  readonly source: SourceInfo;
  readonly tables: TableSelection;
  readonly operations: OperationSelection;
  readonly builder: EventBuilder;
  /** Loads catalog facts for a relation's column types before its first event is built. */
  readonly prepareRelation: (relation: RelationInfo) => Promise<void>;
  readonly router: Router;
  readonly publisher: Publisher;
  readonly checkpoint: Checkpoint;
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
  /** Snapshots (src/snapshot/): watermarks and the changes that fall between them. */
  readonly snapshots?: SnapshotTap;
}

/**
 * A transaction outgrew the flood buffer: nothing of it was published. The session must end
 * (after settling what came before) and the next one read it again with this plan.
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
  readonly entry: TxEntry;
  readonly commitMs: number;
  readonly timestampSeconds: number;
  /** The transaction's commit LSN as text, for the `pgwarren-lsn` header. */
  readonly lsn: string;
  seq: number;
  published: number;
}

/** Everything a message needs that is the same for all events of one table and op. */
interface Route {
  readonly schema: string;
  readonly table: string;
  readonly op: string;
  readonly table_: TableRoute;
  readonly routingKey: string;
  /** The labelled published-events counter, resolved once. */
  readonly counter: { inc(n?: number): void };
}

/** The AMQP headers of one route in one transaction, shared by its messages (read-only). */
interface HeaderSet {
  readonly tx: OpenTx;
  readonly route: Route;
  readonly headers: Readonly<Record<string, string | number>>;
  /** Confirm callback of a single-event message of this route and transaction. */
  readonly confirmOne: (err: Error | null) => void;
}

/** A batch being filled (batched mode only). */
interface OpenBatch {
  readonly tx: OpenTx;
  readonly exchange: string;
  readonly route: Route;
  readonly firstId: string;
  readonly bodies: string[];
  /** Body bytes so far, brackets and commas included. */
  bytes: number;
}

type Mutable<T> = { -readonly [K in keyof T]: T[K] };
const EMPTY = Buffer.alloc(0);

export class Pipeline {
  private tx: OpenTx | null = null;
  private readonly prepared = new WeakSet<RelationInfo>();
  private failure: Error | null = null;
  private confirmWaiter: (() => void) | null = null;
  private readonly guard: FloodGuard<BuiltEvent>;
  private readonly routes = new Map<string, Route>();
  private lastRoute: Route | null = null;
  private lastHeaders: HeaderSet | null = null;
  private readonly batchMaxEvents: number;
  private readonly batchMaxBytes: number;
  private batch: OpenBatch | null = null;
  private brokerWait = false;

  constructor(private readonly deps: PipelineDeps) {
    this.guard = new FloodGuard<BuiltEvent>({
      action: deps.flood.action,
      thresholdFor: deps.flood.thresholdFor,
      bufferEvents: deps.flood.bufferEvents,
      bufferBytes: deps.flood.bufferBytes,
    });
    this.batchMaxEvents = Math.max(1, Math.floor(deps.batch?.maxEvents ?? 1));
    this.batchMaxBytes = Math.max(1, Math.floor(deps.batch?.maxBytes ?? Number.MAX_SAFE_INTEGER));
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
    for (let i = 0; i < items.length; i++) {
      if (this.failure) throw this.failure;
      const p = this.item(items[i]!);
      if (p) return p.then(() => this.handle(items.slice(i + 1)));
    }
  }

  private item(item: Decoded): Promise<void> | void {
    switch (item.kind) {
      case 'begin':
        return this.begin(item.xid, item.commitLsn, item.commitTime);
      case 'commit':
        return this.commit(item.endLsn);
      case 'message':
        // Snapshot watermarks are non-transactional: they arrive between transactions.
        if (!this.tx && this.deps.snapshots?.isWatermark(item)) return this.deps.snapshots.watermark(item, (b) => this.publishReads(b));
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
    this.tx = {
      info: { xid, commitLsn, commitTime },
      entry: this.deps.checkpoint.begin(commitLsn),
      commitMs,
      timestampSeconds: Math.floor(commitMs / 1000),
      lsn: formatLsn(commitLsn),
      seq: 0,
      published: 0,
    };
    this.guard.begin(this.deps.plans.get(commitLsn) ?? null);
  }

  private async commit(endLsn: bigint): Promise<void> {
    const tx = this.tx;
    if (!tx) throw new Error('commit outside a transaction');
    const verdict = this.guard.commit(tx.info.commitLsn);
    if (verdict.replan) {
      this.batch = null; // nothing of this read counts; the next session reads it again
      throw new ReplanRequest(verdict.replan);
    }
    for (const event of verdict.publish) {
      const p = this.publish(event, tx, 'normal');
      if (p) await p;
    }
    if (verdict.flooded.length > 0) await this.floods(verdict.flooded, tx);
    const p = this.flush();
    if (p) await p;
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
        { table: `${f.schema}.${f.table}`, xid: tx.info.xid, lsn: tx.lsn, counts: f.counts, reason: f.reason, action: flood.action },
        `flood: ${rows} changes of ${f.schema}.${f.table} in transaction ${tx.info.xid} (${f.reason}); action ${flood.action}`,
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

  private change(change: Change): Promise<void> | void {
    const tx = this.tx;
    if (!tx) throw new Error('row change outside a transaction');
    const { schema, table } = change.relation;
    const { metrics } = this.deps;
    if (!this.deps.tables.includes(schema, table)) {
      metrics.eventsFiltered.inc({ reason: 'table' });
      return;
    }
    const seq = tx.seq++;
    const op: Op = change.kind === 'truncate' ? 'truncate' : change.op;
    if (!this.deps.operations.includes(op)) {
      metrics.eventsFiltered.inc({ reason: 'operation' });
      return;
    }
    this.deps.snapshots?.changed(change, tx.info.xid);
    const verdict = change.kind === 'truncate' ? { now: this.guard.truncate(), divert: [] } : this.guard.row(schema, table, change.op, seq);
    if (verdict.divert.length > 0) return this.divert(verdict.divert, tx).then(() => this.place(change, tx, seq, verdict.now));
    return this.place(change, tx, seq, verdict.now);
  }

  private place(change: Change, tx: OpenTx, seq: number, now: 'publish' | 'divert' | 'drop' | 'hold' | 'count'): Promise<void> | void {
    if (now === 'drop' || now === 'count') return;
    if (!this.prepared.has(change.relation)) {
      return this.deps.prepareRelation(change.relation).then(() => {
        this.prepared.add(change.relation);
        return this.place(change, tx, seq, now);
      });
    }
    const event = this.deps.builder.build(change, tx.info, seq);
    if (now === 'hold') this.guard.keep(event, change.kind === 'truncate' ? null : `${change.relation.schema}.${change.relation.table}`, event.body.length);
    else return this.publish(event, tx, now === 'divert' ? 'flood' : 'normal');
  }

  /** Send `event` (or add it to the open batch). Returns a promise only when it has to wait. */
  private publish(event: BuiltEvent, tx: OpenTx, destination: 'normal' | 'flood'): Promise<void> | void {
    const route = this.route(event.schema, event.table, event.op);
    const exchange = destination === 'flood' ? this.deps.flood.exchange : route.table_.exchange;
    if (this.batchMaxEvents === 1) {
      if (this.mustWait()) return this.waitToSend().then(() => this.send(tx, exchange, route, event.id, event.body, 1));
      this.send(tx, exchange, route, event.id, event.body, 1);
      return;
    }
    const bytes = Buffer.byteLength(event.body, 'utf8');
    const open = this.batch;
    if (open && (open.tx !== tx || open.exchange !== exchange || open.route !== route || open.bytes + 1 + bytes > this.batchMaxBytes)) {
      const p = this.flush();
      if (p) return p.then(() => this.publish(event, tx, destination));
      return this.publish(event, tx, destination);
    }
    if (open) {
      open.bodies.push(event.body);
      open.bytes += 1 + bytes;
    } else {
      this.batch = { tx, exchange, route, firstId: event.id, bodies: [event.body], bytes: 2 + bytes };
    }
    if (this.batch!.bodies.length >= this.batchMaxEvents) return this.flush();
  }

  /** Send the open batch. */
  private flush(): Promise<void> | void {
    const b = this.batch;
    if (!b) return;
    if (this.mustWait()) return this.waitToSend().then(() => this.flush());
    this.batch = null;
    this.send(b.tx, b.exchange, b.route, b.firstId, '[' + b.bodies.join(',') + ']', b.bodies.length);
  }

  /**
   * A snapshot chunk's `read` events (src/snapshot/tap.ts), published where its high watermark
   * stands in the stream: outside any transaction, never batched, never a flood. They count in
   * the checkpoint as one entry that moves nothing, so later transactions are acknowledged only
   * once the chunk is confirmed, and the inflight window bounds them like any message.
   */
  private async publishReads(batch: ReadBatch): Promise<void> {
    const { checkpoint, publisher, router, source, metrics } = this.deps;
    const table_ = router.forTable(batch.schema, batch.table);
    const exchange = batch.exchange ?? table_.exchange;
    const routingKey = (batch.routingKey ?? table_.routingKey)({ db: source.db, schema: batch.schema, table: batch.table, op: 'read' });
    const counter = metrics.publishedCounter(`${batch.schema}.${batch.table}`, 'read');
    const headers = { 'pgwarren-schema': batch.schema, 'pgwarren-table': batch.table, 'pgwarren-op': 'read' };
    const entry = checkpoint.begin(checkpoint.safeLsn());
    let left = batch.events.length;
    let settled = false;
    const confirm = (err: Error | null) => {
      if (settled) return;
      if (err) {
        settled = true;
        this.failure ??= err;
        batch.onConfirmed(err);
      } else {
        checkpoint.confirmed(entry);
        counter.inc();
        if (--left === 0) {
          settled = true;
          batch.onConfirmed(null);
        }
      }
      this.wakeConfirmWaiter();
    };
    const timestamp = Math.floor(Date.now() / 1000);
    for (const event of batch.events) {
      if (this.mustWait()) await this.waitToSend();
      checkpoint.published(entry);
      publisher.publish(
        {
          exchange,
          routingKey,
          content: Buffer.from(event.body, 'utf8'),
          properties: {
            messageId: event.id,
            contentType: 'application/json',
            persistent: true,
            timestamp,
            type: 'read',
            appId: 'pgwarren',
            mandatory: true,
            expiration: table_.expiration,
            headers,
          },
        },
        confirm,
      );
    }
    checkpoint.committed(entry, 0n);
  }

  private mustWait(): boolean {
    return !this.deps.publisher.writable() || this.deps.checkpoint.outstanding() >= this.deps.maxInflight;
  }

  private async waitToSend(): Promise<void> {
    const { publisher, checkpoint, maxInflight } = this.deps;
    this.brokerWait = true;
    try {
      while (!publisher.writable() || checkpoint.outstanding() >= maxInflight) {
        const reason = publisher.failureReason() ?? this.failure;
        if (reason) throw reason;
        if (!publisher.writable()) await publisher.whenWritable();
        else await new Promise<void>((resolve) => (this.confirmWaiter = resolve));
      }
    } finally {
      this.brokerWait = false;
    }
  }

  /** One AMQP message: one event (`count` 1 outside batched mode) or a batch of `count`. */
  private send(tx: OpenTx, exchange: string, route: Route, messageId: string, body: string, count: number): void {
    const { publisher, checkpoint } = this.deps;
    const set = this.headerSet(tx, route);
    const msg: Mutable<OutgoingMessage> = {
      exchange,
      routingKey: route.routingKey,
      content: Buffer.from(body, 'utf8'),
      properties: {
        messageId,
        contentType: 'application/json',
        persistent: true,
        timestamp: tx.timestampSeconds,
        type: route.op,
        appId: 'pgwarren',
        mandatory: true,
        expiration: route.table_.expiration,
        headers: this.batchMaxEvents > 1 ? { ...set.headers, 'pgwarren-batch': count } : set.headers,
      },
    };
    checkpoint.published(tx.entry);
    tx.published++;
    // Messages of one route in one transaction share their confirm callback: the window of
    // unconfirmed messages should hold as few objects as possible.
    publisher.publish(msg, count === 1 ? set.confirmOne : this.confirmer(tx, route, count));
    // The publisher has written the message (Publisher contract) and may still hold `msg` until
    // the confirm: keep only what it may still read, so the window of unconfirmed messages does
    // not keep every body and property set alive (they would be promoted to V8's old space).
    msg.content = EMPTY;
    msg.properties = { messageId };
  }

  private confirmer(tx: OpenTx, route: Route, count: number): (err: Error | null) => void {
    return (err) => {
      if (err) {
        this.failure ??= err;
        this.wakeConfirmWaiter();
        return;
      }
      this.deps.checkpoint.confirmed(tx.entry);
      route.counter.inc(count);
      if (tx.entry.outstanding === 0 && tx.entry.endLsn !== null) this.observeLatency(tx);
      this.wakeConfirmWaiter();
    };
  }

  /** The route of events of one table and op; the last one is checked first (runs of one table). */
  private route(schema: string, table: string, op: string): Route {
    const last = this.lastRoute;
    if (last && last.table === table && last.schema === schema && last.op === op) return last;
    const key = `${schema}\u0000${table}\u0000${op}`;
    let route = this.routes.get(key);
    if (!route) {
      const { router, source, metrics } = this.deps;
      const table_ = router.forTable(schema, table);
      route = {
        schema,
        table,
        op,
        table_,
        routingKey: table_.routingKey({ db: source.db, schema, table, op }),
        counter: metrics.publishedCounter(`${schema}.${table}`, op),
      };
      if (this.routes.size >= 4096) this.routes.clear();
      this.routes.set(key, route);
    }
    this.lastRoute = route;
    return route;
  }

  private headerSet(tx: OpenTx, route: Route): HeaderSet {
    const last = this.lastHeaders;
    if (last && last.tx === tx && last.route === route) return last;
    const headers = {
      'pgwarren-schema': route.schema,
      'pgwarren-table': route.table,
      'pgwarren-op': route.op,
      'pgwarren-lsn': tx.lsn,
      'pgwarren-xid': tx.info.xid,
    };
    const set: HeaderSet = { tx, route, headers, confirmOne: this.confirmer(tx, route, 1) };
    this.lastHeaders = set;
    return set;
  }

  private wakeConfirmWaiter(): void {
    const w = this.confirmWaiter;
    if (w && (this.failure || this.deps.checkpoint.outstanding() < this.deps.maxInflight)) {
      this.confirmWaiter = null;
      w();
    }
  }

  private observeLatency(tx: OpenTx): void {
    this.deps.metrics.commitToConfirm.observe(Math.max(0, Date.now() - tx.commitMs) / 1000);
  }
}
