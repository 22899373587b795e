/**
 * An ordinary Postgres connection for background loops: opened on first use, dropped after any
 * failure (a timeout included) and opened again on the next use, so a database restart or a
 * dead network heals by itself. Every connect and query is bounded (README "Failure handling").
 */
import type pg from 'pg';
import { closeWithin, pgSocketOwner } from '../ops/close.js';
import { connectPg, type PgTimeouts, type QueryFn } from './pg-query.js';

export class LazyPgClient {
  private client: pg.Client | null = null;
  private run: QueryFn | null = null;

  constructor(
    private readonly config: pg.ClientConfig,
    private readonly applicationName: string,
    private readonly timeouts: PgTimeouts,
  ) {}

  async query(sql: string, params?: unknown[]): Promise<{ rows: unknown[] }> {
    try {
      if (!this.run) {
        const opened = await connectPg(this.config, { applicationName: this.applicationName, timeouts: this.timeouts });
        this.client = opened.client;
        this.run = opened.query;
      }
      return await this.run(sql, params);
    } catch (err) {
      await this.close();
      throw err;
    }
  }

  async close(): Promise<void> {
    const client = this.client;
    this.client = null;
    this.run = null;
    if (client) await closeWithin(() => client.end(), () => pgSocketOwner(client));
  }
}
