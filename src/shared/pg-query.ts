/**
 * The one shape of "run a query" the source side needs, so catalog readers work with a pg.Client,
 * a pg.Pool or a test double alike; and the one way pgwarren opens an ordinary Postgres
 * connection, so every connect and every query has a timeout (README "Failure handling").
 */
import pg from 'pg';
import { TimeoutError } from '../errors.js';
import { pgSocketOwner } from '../ops/close.js';

export interface QueryOptions {
  /** Overrides the connection's query timeout; 0 waits as long as Postgres takes. */
  readonly timeoutMs?: number;
}

export type QueryFn = <Row = Record<string, unknown>>(sql: string, params?: unknown[], options?: QueryOptions) => Promise<{ rows: Row[] }>;

export interface Queryable {
  query(sql: string, params?: unknown[]): Promise<{ rows: unknown[] }>;
}

export interface Bounds {
  /** Default bound on each query; 0 = none. */
  readonly timeoutMs: number;
  /**
   * Called when a query timed out. A pg connection cannot take another query while Postgres
   * may still answer the last one, so the owner usually destroys it here.
   */
  readonly onTimeout?: () => void;
}

export function queryFn(db: Queryable, bounds: Bounds = { timeoutMs: 0 }): QueryFn {
  return async <Row>(sql: string, params?: unknown[], options?: QueryOptions) => {
    const ms = options?.timeoutMs ?? bounds.timeoutMs;
    const result = ms > 0 ? await within(db.query(sql, params), ms, `query ${firstWords(sql)}`, bounds.onTimeout) : await db.query(sql, params);
    return { rows: result.rows as Row[] };
  };
}

/** `work`, or a TimeoutError after `ms` (then `onTimeout` runs). */
export function within<T>(work: Promise<T>, ms: number, what: string, onTimeout?: () => void): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timedOut = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      onTimeout?.();
      reject(new TimeoutError(what, ms));
    }, ms);
  });
  // The loser must not become an unhandled rejection.
  work.catch(() => undefined);
  return Promise.race([work, timedOut]).finally(() => clearTimeout(timer));
}

function firstWords(sql: string): string {
  const words = sql.trim().split(/\s+/).slice(0, 4).join(' ');
  return words.length < sql.trim().length ? `${words} ...` : words;
}

export interface PgTimeouts {
  /** TCP connect, TLS and authentication, until Postgres is ready for queries. */
  readonly connectMs: number;
  /** Each query's bound (QueryOptions can lift it for one query). */
  readonly queryMs: number;
}

/** Destroy a client's socket at once: for a peer that does not answer, or a stop that cannot wait. */
export function destroyClient(client: pg.Client): void {
  pgSocketOwner(client)?.stream?.destroy();
}

/**
 * An ordinary connection with a connect timeout (pg's connectionTimeoutMillis covers TCP, TLS and
 * authentication). Errors after connecting surface through the failing query; `onError` sees them.
 */
export async function connectPg(
  config: pg.ClientConfig,
  opts: {
    readonly applicationName: string;
    readonly timeouts: PgTimeouts;
    readonly onError?: (err: Error) => void;
    /** Gets the client before connecting, so a stop can destroy a connect in progress. */
    readonly hold?: (client: pg.Client) => void;
  },
): Promise<{ client: pg.Client; query: QueryFn }> {
  const { timeouts } = opts;
  const client = new pg.Client({ ...config, application_name: opts.applicationName, connectionTimeoutMillis: timeouts.connectMs });
  client.on('error', opts.onError ?? (() => undefined));
  opts.hold?.(client);
  try {
    await client.connect();
  } catch (err) {
    destroyClient(client);
    throw err;
  }
  return { client, query: queryFn(client, { timeoutMs: timeouts.queryMs, onTimeout: () => destroyClient(client) }) };
}
