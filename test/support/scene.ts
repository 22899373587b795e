/**
 * The setup recipe integration test files share: a database of their own with the tables a test
 * needs, an exchange of their own, a slot and publication name, the daemon's environment, and
 * daemons started and stopped for them. Optionally deployed as the README prescribes: the owner
 * runs `setup` and the daemon connects as a role with REPLICATION and SELECT only.
 *
 * Everything a scene makes is removed when the test (or, for a suite-wide scene, `cleanup()`)
 * ends, and every name is unique, so test files can run in parallel with one another.
 */
import { createTestDatabase, type TestDatabase } from './pg.js';
import { createTestBroker, type Collector, type TestBroker } from './amqp.js';
import { setupAsOwner, start, type Daemon } from './daemon.js';
import { testEnv, uniqueName } from './env.js';

export interface After {
  after(fn: () => Promise<unknown> | unknown): void;
}

export interface SceneOptions {
  /** SQL run in the new database before anything else (tables, rows, replica identities). */
  readonly schema?: string;
  /** Settings for the daemon, over the scene's own. */
  readonly env?: Record<string, string>;
  /** Declare the exchange before the daemon does (so queues can be bound first); null: do not. */
  readonly exchangeType?: 'topic' | 'direct' | 'fanout' | null;
  /** Deploy as the README says: `setup` as the owner, the daemon as a REPLICATION+SELECT role. */
  readonly asOwner?: boolean;
  /**
   * Another scene's database, shared instead of making one (`schema` is not applied): a second
   * slot, exchange and daemon reading the same tables, one per plugin say. The scene that made it
   * drops it, so clean that one up last.
   */
  readonly database?: TestDatabase;
}

export interface Scene {
  readonly db: TestDatabase;
  readonly broker: TestBroker;
  /** Slot and publication name. */
  readonly slot: string;
  /** The daemon's environment (the role's URL when deployed as the owner). */
  readonly env: Record<string, string>;
  /** A queue bound to the scene's exchange (every event by default). */
  queue(pattern?: string): Promise<Collector>;
  /** A daemon on the scene's environment plus `extra`, ready, stopped when the scene ends. */
  daemon(extra?: Record<string, string>): Promise<Daemon>;
  /** For suite-wide scenes made without a test context: stop the daemons, remove everything. */
  cleanup(): Promise<void>;
}

/** `t` registers the cleanup with a test; without it the caller calls `cleanup()`. */
export async function scene(t: After | null, prefix: string, options: SceneOptions = {}): Promise<Scene> {
  const undo: (() => Promise<unknown> | unknown)[] = [];
  const cleanup = async () => {
    // Last made, first removed: daemons before the broker objects and the database they use.
    for (const fn of undo.splice(0).reverse()) await fn();
  };
  t?.after(cleanup);
  try {
    const db = options.database ?? (await createTestDatabase(prefix));
    if (!options.database) {
      undo.push(() => db.drop());
      if (options.schema) await db.query(options.schema);
    }
    const broker = await createTestBroker(prefix);
    undo.push(() => broker.cleanup());
    const exchangeType = options.exchangeType === undefined ? 'topic' : options.exchangeType;
    if (exchangeType) await broker.declareExchange(broker.exchange, exchangeType);
    const slot = uniqueName(prefix);
    const settings = {
      PGWARREN_DATABASE_URL: db.url,
      PGWARREN_AMQP_URL: testEnv().amqpUrl,
      PGWARREN_SLOT: slot,
      PGWARREN_PUBLICATION: slot,
      PGWARREN_EXCHANGE: broker.exchange,
      ...options.env,
    };
    const env = options.asOwner ? await setupAsOwner(db, settings) : settings;
    return {
      db,
      broker,
      slot,
      env,
      queue: (pattern = '#') => broker.bindQueue(pattern),
      async daemon(extra = {}) {
        const d = await start({ ...env, ...extra });
        undo.push(() => d.stop());
        await d.waitReady(30_000);
        return d;
      },
      cleanup,
    };
  } catch (err) {
    if (!t) await cleanup();
    throw err;
  }
}

export type Plugin = 'pgoutput' | 'wal2json';

/** One plugin's side of a parity test: its scene, a queue bound to every event, its daemon. */
export interface PluginSide {
  readonly plugin: Plugin;
  readonly scene: Scene;
  readonly slot: string;
  readonly broker: TestBroker;
  readonly queue: Collector;
  readonly daemon: Daemon;
}

export interface PluginScenes {
  readonly db: TestDatabase;
  /** pgoutput, then wal2json. */
  readonly sides: readonly [PluginSide, PluginSide];
  cleanup(): Promise<void>;
}

/**
 * The recipe of the tests that both plugins give the same events: one database (made with
 * `options.schema`), and per plugin a scene on it with its own slot, exchange, queue and daemon
 * (`options.env` plus PGWARREN_PLUGIN). Both daemons are ready, so both slots exist, before it
 * returns: neither side can miss the first change. `cleanup()` removes it all, the database last.
 */
export async function pluginScenes(prefix: string, options: Omit<SceneOptions, 'database'> = {}): Promise<PluginScenes> {
  const scenes: Scene[] = [];
  // The first scene made the database: it goes last.
  const cleanup = async () => {
    for (const s of [...scenes].reverse()) await s.cleanup();
  };
  try {
    const plugins = ['pgoutput', 'wal2json'] as const;
    for (const plugin of plugins) {
      scenes.push(await scene(null, `${prefix}-${plugin}`, { ...options, database: scenes[0]?.db, env: { ...options.env, PGWARREN_PLUGIN: plugin } }));
    }
    const queues = await Promise.all(scenes.map((s) => s.queue('#')));
    const daemons = await Promise.all(scenes.map((s) => s.daemon()));
    const side = (i: 0 | 1): PluginSide => ({
      plugin: plugins[i],
      scene: scenes[i]!,
      slot: scenes[i]!.slot,
      broker: scenes[i]!.broker,
      queue: queues[i]!,
      daemon: daemons[i]!,
    });
    return { db: scenes[0]!.db, sides: [side(0), side(1)], cleanup };
  } catch (err) {
    await cleanup();
    throw err;
  }
}
