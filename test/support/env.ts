/** What `scripts/test.mjs` hands the tests: the private cluster and the broker. */
import { randomBytes } from 'node:crypto';

export interface TestEnv {
  /** Superuser URL of the private cluster's `postgres` database. */
  readonly pgUrl: string;
  readonly pgBindir: string;
  readonly pgDatadir: string;
  readonly amqpUrl: string;
  readonly wal2json: boolean;
}

const REQUIRED = ['PGWARREN_TEST_PG_URL', 'PGWARREN_TEST_PG_BINDIR', 'PGWARREN_TEST_PG_DATADIR', 'PGWARREN_TEST_AMQP_URL'] as const;

export function testEnv(): TestEnv {
  const e = process.env;
  const missing = REQUIRED.filter((k) => !e[k]);
  if (missing.length > 0) {
    throw new Error(`${missing.join(', ')} not set: run the tests with "npm test" (scripts/test.mjs starts the private Postgres and checks RabbitMQ)`);
  }
  return {
    pgUrl: e.PGWARREN_TEST_PG_URL!,
    pgBindir: e.PGWARREN_TEST_PG_BINDIR!,
    pgDatadir: e.PGWARREN_TEST_PG_DATADIR!,
    amqpUrl: e.PGWARREN_TEST_AMQP_URL!,
    wal2json: e.PGWARREN_TEST_WAL2JSON === '1',
  };
}

/**
 * Short unique names: `pgwarren_test_<prefix>_<hex>` for Postgres (at most 47 chars of [a-z0-9_]),
 * `pgwarren-test-<run>-<prefix>-<hex>` for AMQP objects. The broker is shared by every test run on
 * the machine, so AMQP names carry the run's id: scripts/test.mjs then checks and deletes only its
 * own run's leftovers, never a concurrent run's live queues.
 */
export function uniqueName(prefix: string, style: 'pg' | 'amqp' = 'pg'): string {
  const id = randomBytes(4).toString('hex');
  const clean = prefix.toLowerCase().replace(/[^a-z0-9]+/g, '_').replace(/^_+|_+$/g, '').slice(0, 24) || 'x';
  if (style === 'pg') return `pgwarren_test_${clean}_${id}`;
  const run = process.env.PGWARREN_TEST_RUN ? `${process.env.PGWARREN_TEST_RUN}-` : '';
  return `pgwarren-test-${run}${clean.replace(/_/g, '-')}-${id}`;
}

/** The dead-letter exchange a test daemon gets for `exchange` unless the test names one (support/daemon.ts). */
export function deadLetterExchangeOf(exchange: string): string {
  return `${exchange}.dead`;
}
