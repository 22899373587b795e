/**
 * `pgwarren snapshot`: ask the running daemon to publish the current rows of tables (README "Snapshots"),
 * list snapshots, cancel one, or follow one to its end. The request is a row in `pgwarren.snapshots`;
 * the daemon that holds the slot picks it up (README "Snapshots").
 *
 * Output: a new snapshot's id alone on stdout (scripts can capture it), everything for people on
 * stderr; `--list` prints to stdout (`--json` for machines).
 */
import type { Config } from '../config/load.js';
import { PrerequisiteError, UsageError, sqlState } from '../errors.js';
import type { QueryFn } from '../shared/pg-query.js';
import { withDatabase, type Print } from './admin.js';
import { cancelSnapshot, getSnapshot, listSnapshots, progressOf, type SnapshotRow } from '../snapshot/store.js';
import { SnapshotRefused, requestSnapshot } from '../snapshot/request.js';

export interface SnapshotArgs {
  readonly tables: readonly string[];
  readonly where?: string;
  readonly chunkSize?: number;
  readonly rate?: number;
  /** Given on the command line (not from the environment): the snapshot's own target. */
  readonly exchange?: string;
  readonly routingKey?: string;
  readonly list: boolean;
  readonly cancel?: number;
  readonly wait: boolean;
  readonly json: boolean;
}

export interface Terminal {
  readonly isTTY: boolean;
  write(text: string): void;
}

export async function snapshotCommand(config: Config, args: SnapshotArgs, print: Print, err: Terminal): Promise<number> {
  const actions = [args.list, args.cancel !== undefined, args.tables.length > 0].filter(Boolean).length;
  if (actions !== 1) throw new UsageError('snapshot: give table globs (schema.table), or --list, or --cancel ID');
  for (const g of args.tables) if (!g.includes('.')) throw new UsageError(`snapshot: "${g}" is not a schema.table glob (public.orders, public.*)`);
  return withDatabase(config, (query) =>
    storeErrors(async () => {
      if (args.list) return list(query, config, args.json, print);
      if (args.cancel !== undefined) return cancel(query, config, args.cancel, print);
      let made: { id: number; tables: string[] };
      try {
        made = await requestSnapshot(query, {
          slot: config.slot,
          includeTables: config.tables,
          excludeTables: config.excludeTables,
          globs: args.tables,
          where: args.where ?? null,
          chunkSize: args.chunkSize ?? config.snapshotChunkSize,
          exchange: args.exchange ?? null,
          routingKey: args.routingKey ?? null,
          rate: args.rate ?? null,
        });
      } catch (e) {
        if (e instanceof SnapshotRefused) throw new UsageError(e.message);
        throw e;
      }
      print(String(made.id));
      err.write(`snapshot ${made.id} requested: ${made.tables.join(', ')}${args.wait ? '' : ` (follow it with "pgwarren snapshot --list")`}\n`);
      if (!args.wait) return 0;
      return follow(query, config, made.id, err);
    }),
  );
}

/** The store's absence and missing grants, said with the fix. */
async function storeErrors<T>(fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (e) {
    const code = sqlState(e);
    if (code === '42P01' || code === '3F000') {
      throw new PrerequisiteError('table pgwarren.snapshots does not exist: run "pgwarren setup" (as the tables\' owner) to create it (README "Snapshots")');
    }
    if (code === '42501') {
      throw new PrerequisiteError(
        `${(e as Error).message}: grant the role its snapshot privilege, as the owner of pgwarren.snapshots: GRANT SELECT, INSERT, UPDATE ON pgwarren.snapshots TO <role> (README "Snapshots")`,
      );
    }
    throw e;
  }
}

async function list(query: QueryFn, config: Config, json: boolean, print: Print): Promise<number> {
  const rows = await listSnapshots(query, config.slot);
  if (json) {
    print(JSON.stringify(rows.map(describe), null, 2));
    return 0;
  }
  if (rows.length === 0) {
    print(`no snapshots for slot "${config.slot}"`);
    return 0;
  }
  for (const s of rows) print(summaryLine(s));
  return 0;
}

/** One snapshot as `--list --json` and `status --json` show it. */
export function describe(s: SnapshotRow): Record<string, unknown> {
  const p = progressOf(s);
  return {
    id: s.id,
    kind: s.kind,
    state: s.state,
    tables: s.tables,
    where: s.where,
    chunkSize: s.chunkSize,
    exchange: s.exchange,
    routingKey: s.routingKey,
    rate: s.rate,
    table: s.state === 'running' ? (s.tables[s.tableIndex] ?? null) : null,
    rows: s.rows,
    chunks: s.chunks,
    estimatedRows: s.estimate,
    rowsPerSecond: p.rate === null ? null : Math.round(p.rate),
    etaSeconds: p.etaSeconds === null ? null : Math.round(p.etaSeconds),
    error: s.error,
    createdAt: s.createdAt,
    startedAt: s.startedAt,
    finishedAt: s.finishedAt,
  };
}

export function summaryLine(s: SnapshotRow): string {
  const p = progressOf(s);
  const parts = [`${s.rows} rows`, `${s.chunks} chunks`];
  if (p.rate !== null) parts.push(`${Math.round(p.rate)} rows/s`);
  if (s.state === 'running' && p.etaSeconds !== null) parts.push(`ETA ${duration(p.etaSeconds)}`);
  if (s.state === 'running') parts.push(`at ${s.tables[s.tableIndex] ?? '-'}`);
  const extra = s.error ? `\n    error: ${s.error}` : '';
  return `  ${s.id}  ${s.state.padEnd(9)} ${s.kind === 'initial' ? '(initial) ' : ''}${s.tables.join(', ')}: ${parts.join(', ')}${extra}`;
}

async function cancel(query: QueryFn, config: Config, id: number, print: Print): Promise<number> {
  const before = await cancelSnapshot(query, config.slot, id);
  if (before === undefined) throw new UsageError(`no snapshot ${id} for slot "${config.slot}" (see "pgwarren snapshot --list")`);
  if (before === 'pending' || before === 'running') print(`snapshot ${id} cancelled`);
  else print(`snapshot ${id} was already ${before}`);
  return 0;
}

/** Poll the snapshot until it ends: a progress bar on a terminal, a line every few seconds otherwise. */
async function follow(query: QueryFn, config: Config, id: number, out: Terminal): Promise<number> {
  let lastLine = 0;
  let lastState = '';
  for (;;) {
    const s = await getSnapshot(query, id);
    if (!s) throw new UsageError(`snapshot ${id} disappeared (teardown?)`);
    const finished = s.state === 'done' || s.state === 'failed' || s.state === 'cancelled';
    if (out.isTTY) {
      out.write(`\r${bar(s)}\u001b[K`);
      if (finished) out.write('\n');
    } else if (finished || s.state !== lastState || Date.now() - lastLine >= 5000) {
      out.write(`${summaryLine(s).trim()}\n`);
      lastLine = Date.now();
    }
    lastState = s.state;
    if (finished) {
      if (s.state === 'done') return 0;
      out.write(`snapshot ${id} ${s.state}${s.error ? `: ${s.error}` : ''}\n`);
      return 1;
    }
    if (s.state === 'pending' && Date.now() - Date.parse(s.createdAt) > 10_000 && lastLine === 0) {
      out.write(`${out.isTTY ? '\n' : ''}snapshot ${id} is still pending: is "pgwarren run" streaming from slot "${config.slot}"?\n`);
      lastLine = Date.now();
    }
    await new Promise((r) => setTimeout(r, 500));
  }
}

function bar(s: SnapshotRow): string {
  const p = progressOf(s);
  const width = 30;
  const filled = p.percent === null ? 0 : Math.round((p.percent / 100) * width);
  const gauge = p.percent === null ? '?'.repeat(width) : '#'.repeat(filled) + '.'.repeat(width - filled);
  const pct = p.percent === null ? '  ?%' : `${Math.floor(p.percent).toString().padStart(3)}%`;
  const rate = p.rate === null ? '' : `, ${Math.round(p.rate)} rows/s`;
  const eta = s.state === 'running' && p.etaSeconds !== null ? `, ETA ${duration(p.etaSeconds)}` : '';
  const total = s.estimate !== null ? `/~${s.estimate}` : '';
  return `snapshot ${s.id} [${gauge}] ${pct} ${s.rows}${total} rows, ${s.chunks} chunks${rate}${eta} (${s.state})`;
}

function duration(seconds: number): string {
  const s = Math.round(seconds);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
}
