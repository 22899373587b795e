/**
 * The loop's body: decoded items in stream order -> filter -> events -> publisher, with every
 * published message accounted for in the checkpoint.
 *
 * Transaction states: outside -> (Begin) inside -> (Commit) outside. Changes outside a
 * transaction cannot happen with either plugin; logical messages outside one are ignored.
 *
 * Backpressure: `handle` does not return while the publisher is not writable or too many
 * messages wait for confirms; the replication stream does not read on until it returns.
 */
import type { Checkpoint, TxEntry } from './checkpoint.js';
import type { EventBuilder, BuiltEvent } from '../events/envelope.js';
import type { Router } from '../events/router.js';
import type { OperationSelection, TableSelection } from '../filter/selection.js';
import type { Metrics } from '../ops/metrics.js';
import type { Logger } from '../ops/logger.js';
import type { Publisher } from '../sink/publisher.js';
import type { OutgoingMessage } from '../sink/amqp-sink.js';
import type { Change, Decoded, LogicalMessage, Op, RelationInfo, SourceInfo, TxInfo } from '../types.js';
import { formatLsn } from '../source/lsn.js';
import { FloodGuard, type FloodAction, type FloodedTable, type TxPlan } from '../filter/flood-guard.js';

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
  };
  /** Transactions to be read a second time, with their flood verdicts known up front. */
  readonly plans: ReadonlyMap<bigint, TxPlan>;
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
  seq: number;
  published: number;
}

export class Pipeline {
  private tx: OpenTx | null = null;
  private readonly prepared = new WeakSet<RelationInfo>();
  private failure: Error | null = null;
  private confirmWaiter: (() => void) | null = null;
  private readonly lsnText = new Map<bigint, string>();
  private readonly guard: FloodGuard<BuiltEvent>;

  constructor(private readonly deps: PipelineDeps) {
    this.guard = new FloodGuard<BuiltEvent>({
      action: deps.flood.action,
      thresholdFor: deps.flood.thresholdFor,
      bufferEvents: deps.flood.bufferEvents,
    });
  }

  inTransaction(): boolean {
    return this.tx !== null;
  }

  /** The first confirm failure, if any; the session ends on it. */
  failed(): Error | null {
    return this.failure;
  }

  async handle(items: readonly Decoded[]): Promise<void> {
    for (const item of items) {
      if (this.failure) throw this.failure;
      switch (item.kind) {
        case 'begin':
          this.begin(item.xid, item.commitLsn, item.commitTime);
          break;
        case 'commit':
          await this.commit(item.endLsn);
          break;
        case 'message':
          if (this.tx && isFloodMarker(item)) await this.divert(this.guard.markMarker(), this.tx);
          break;
        case 'change':
        case 'truncate':
          await this.change(item);
          break;
      }
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
      seq: 0,
      published: 0,
    };
    this.guard.begin(this.deps.plans.get(commitLsn) ?? null);
  }

  private async commit(endLsn: bigint): Promise<void> {
    const tx = this.tx;
    if (!tx) throw new Error('commit outside a transaction');
    const verdict = this.guard.commit(tx.info.commitLsn);
    if (verdict.replan) throw new ReplanRequest(verdict.replan);
    for (const event of verdict.publish) await this.publish(event, tx, 'normal');
    if (verdict.flooded.length > 0) await this.floods(verdict.flooded, tx);
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
        { table: `${f.schema}.${f.table}`, xid: tx.info.xid, lsn: this.lsn(tx.info.commitLsn), counts: f.counts, reason: f.reason, action: flood.action },
        `flood: ${rows} changes of ${f.schema}.${f.table} in transaction ${tx.info.xid} (${f.reason}); action ${flood.action}`,
      );
      if (flood.action === 'summarize') await this.publish(this.deps.builder.buildBulk(f, tx.info), tx, 'normal');
    }
  }

  private async divert(events: readonly BuiltEvent[], tx: OpenTx): Promise<void> {
    for (const event of events) await this.publish(event, tx, 'flood');
  }

  private async change(change: Change): Promise<void> {
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
    const verdict = change.kind === 'truncate' ? { now: this.guard.truncate(), divert: [] } : this.guard.row(schema, table, change.op, seq);
    if (verdict.divert.length > 0) await this.divert(verdict.divert, tx);
    if (verdict.now === 'drop' || verdict.now === 'count') return;
    if (!this.prepared.has(change.relation)) {
      await this.deps.prepareRelation(change.relation);
      this.prepared.add(change.relation);
    }
    const event = this.deps.builder.build(change, tx.info, seq);
    if (verdict.now === 'hold') this.guard.keep(event, change.kind === 'truncate' ? null : `${schema}.${table}`);
    else await this.publish(event, tx, verdict.now === 'divert' ? 'flood' : 'normal');
  }

  private async publish(event: BuiltEvent, tx: OpenTx, destination: 'normal' | 'flood'): Promise<void> {
    const { publisher, checkpoint, maxInflight, metrics, router, source } = this.deps;
    while (!publisher.writable() || checkpoint.outstanding() >= maxInflight) {
      const reason = publisher.failureReason() ?? this.failure;
      if (reason) throw reason;
      if (!publisher.writable()) await publisher.whenWritable();
      else await new Promise<void>((resolve) => (this.confirmWaiter = resolve));
    }
    const route = router.forTable(event.schema, event.table);
    const lsn = this.lsn(tx.info.commitLsn);
    const msg: OutgoingMessage = {
      exchange: destination === 'flood' ? this.deps.flood.exchange : route.exchange,
      routingKey: route.routingKey({ db: source.db, schema: event.schema, table: event.table, op: event.op }),
      content: Buffer.from(event.body, 'utf8'),
      properties: {
        messageId: event.id,
        contentType: 'application/json',
        persistent: true,
        timestamp: tx.timestampSeconds,
        type: event.op,
        appId: 'pgwarren',
        mandatory: true,
        expiration: route.expiration,
        headers: {
          'pgwarren-schema': event.schema,
          'pgwarren-table': event.table,
          'pgwarren-op': event.op,
          'pgwarren-lsn': lsn,
          'pgwarren-xid': tx.info.xid,
        },
      },
    };
    checkpoint.published(tx.entry);
    tx.published++;
    const tableLabel = `${event.schema}.${event.table}`;
    const op = event.op;
    publisher.publish(msg, (err) => {
      if (err) {
        this.failure ??= err;
        this.wakeConfirmWaiter();
        return;
      }
      checkpoint.confirmed(tx.entry);
      metrics.published(tableLabel, op);
      if (tx.entry.outstanding === 0 && tx.entry.endLsn !== null) this.observeLatency(tx);
      this.wakeConfirmWaiter();
    });
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

  private lsn(commitLsn: bigint): string {
    let text = this.lsnText.get(commitLsn);
    if (text === undefined) {
      if (this.lsnText.size > 64) this.lsnText.clear();
      text = formatLsn(commitLsn);
      this.lsnText.set(commitLsn, text);
    }
    return text;
  }
}
