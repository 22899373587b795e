/**
 * An ordinary Postgres connection for background loops: opened on first use, dropped after any
 * failure and opened again on the next use, so a database restart heals by itself.
 */
import pg from 'pg';
import { closeWithin, pgSocketOwner } from './close.js';

export class LazyPgClient {
  private client: pg.Client | null = null;

  constructor(
    private readonly config: pg.ClientConfig,
    private readonly applicationName: string,
  ) {}

  async query(sql: string, params?: unknown[]): Promise<pg.QueryResult> {
    try {
      if (!this.client) {
        const client = new pg.Client({ ...this.config, application_name: this.applicationName });
        client.on('error', () => undefined); // surfaced by the failing query instead
        await client.connect();
        this.client = client;
      }
      return await this.client.query(sql, params);
    } catch (err) {
      await this.close();
      throw err;
    }
  }

  async close(): Promise<void> {
    const client = this.client;
    this.client = null;
    if (client) await closeWithin(() => client.end(), () => pgSocketOwner(client));
  }
}
