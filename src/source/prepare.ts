/**
 * Prepares the source for a session, in this order (each step bounded, and abandoned on stop):
 *
 *   1. open the catalog connection
 *   2. wal_level must be logical
 *   3. check the slot (another pgwarren holding it: stand by)
 *   4. sync the publications (pgoutput), so they exist before the slot
 *   5. create the slot if missing: only now, see ensureSlot in slot-admin.ts
 *
 * The catalog connection stays open for the session (catalogs, walsender probes, later syncs);
 * `close` ends it, and cancels a slot creation a stop interrupted.
 */
import type pg from 'pg';
import type { Logger } from '../ops/logger.js';
import { closeWithin, pgSocketOwner } from '../ops/close.js';
import { LazyPgClient } from '../shared/lazy-client.js';
import { connectPg, destroyClient, within, type PgTimeouts, type QueryFn } from '../shared/pg-query.js';
import { Stopped, type Step } from '../shared/step.js';
import { tableName } from '../shared/table-name.js';
import { errorMessage, pgFailure, PrerequisiteError, SessionFailure, UsageError } from '../errors.js';
import { tlsFailure } from '../shared/tls.js';
import type { Config } from '../config/load.js';
import { checkSlot, ensureSlot, requireLogicalWal, type SlotState } from './slot-admin.js';
import { ensurePublication, type PublicationPlan } from './publication.js';

/** How often slot creation is checked on and says what it still waits for. */
const SLOT_WAIT_LOG_MS = 5_000;
/** Failed checks in a row after which a slot creation is given up as unreachable (see createSlot). */
const SLOT_WAIT_FAILURES = 3;

/** Taken from `Config` (the option table lists each once), plus the connection made from it. */
export type PrepareSettings = Pick<Config, 'slot' | 'publication' | 'plugin'> & {
  readonly pg: pg.ClientConfig;
  /** The database name (Config.database.database). */
  readonly database: string;
  readonly timeouts: PgTimeouts;
};

export interface PreparedSource {
  readonly query: QueryFn;
  /** The slot as it is now (created by this session when `slotCreated`). */
  readonly slot: SlotState;
  readonly slotCreated: boolean;
  /** Brings the publications in step again (pgoutput; a no-op for wal2json). */
  syncPublication(): Promise<void>;
}

const nameOf = (t: { schema: string; table: string }) => tableName(t.schema, t.table);

export class SourcePreparation {
  private catalogClient: pg.Client | null = null;
  /** Backend pid of the catalog connection while it creates the slot (a stop cancels it). */
  private creatingSlotPid: number | null = null;
  /** A second connection used while the slot is created: who it waits for, and to cancel it. */
  private helper: LazyPgClient | null = null;

  constructor(
    private readonly settings: PrepareSettings,
    private readonly opts: {
      /** What the publications should hold (filter/publication-plan.ts). */
      plan: PublicationPlan;
      /** False once a session has streamed: a slot that vanishes then was dropped by someone. */
      mayCreateSlot: boolean;
      step: Step;
      stopping: () => boolean;
      log: Logger;
    },
  ) {}

  async prepare(): Promise<PreparedSource> {
    const { settings, opts } = this;
    const log = opts.log;
    const where = `${String(settings.pg.host)}:${String(settings.pg.port)}/${settings.database}`;
    let query: QueryFn;
    try {
      ({ query } = await opts.step(
        connectPg(settings.pg, {
          applicationName: 'pgwarren-catalog',
          timeouts: settings.timeouts,
          onError: (err) => log.debug({ err: err.message }, 'catalog connection error'),
          hold: (client) => (this.catalogClient = client),
        }),
      ));
    } catch (err) {
      if (err instanceof Stopped) throw err;
      const tls = tlsFailure(err, 'PGWARREN_PG_SSL_ROOT_CERT (or sslrootcert), sslmode, and that the host name in the URL is one the certificate names');
      if (tls) throw new PrerequisiteError(`connecting to Postgres at ${where}: ${tls}`, { cause: err });
      throw pgFailure(err, `connecting to Postgres at ${where}`);
    }
    log.info({ postgres: where, user: settings.pg.user, tls: Boolean(settings.pg.ssl) }, `connected to Postgres ${where}`);
    await this.pg(() => requireLogicalWal(query), 'checking wal_level');
    const slotOpts = { slot: settings.slot, plugin: settings.plugin, database: settings.database, mayCreate: opts.mayCreateSlot };
    const existing = await this.pg(() => checkSlot(query, slotOpts), 'checking the slot');
    if (existing.active && existing.activePid) {
      throw new SessionFailure(
        'postgres',
        new Error(`slot "${settings.slot}" is in use by process ${existing.activePid} (another pgwarren?); waiting to take over`),
        1000,
      );
    }
    const sync = this.publicationSync(query);
    if (settings.plugin === 'pgoutput') await this.pg(sync.run, 'syncing the publication');
    if (opts.stopping()) throw new Stopped();
    // Only now, after the publications: see ensureSlot.
    if (existing.exists) return { query, slot: existing, slotCreated: false, syncPublication: sync.run };
    const slot = await this.createSlot(query, slotOpts);
    if (slot.created && sync.existed()) {
      log.warn(
        { plugin: settings.plugin, publication: settings.publication, from: slot.state.confirmedFlushLsn },
        `slot "${settings.slot}" was missing though publication "${settings.publication}" exists, so pgwarren ran here before: created a new slot. ` +
          `Changes made while no slot existed (a failover to a standby, a dropped slot) are in no slot: re-sync consumers that need them`,
      );
    } else if (slot.created) log.info({ plugin: settings.plugin, from: slot.state.confirmedFlushLsn }, 'created replication slot');
    return { query, slot: slot.state, slotCreated: slot.created, syncPublication: sync.run };
  }

  /**
   * Ends the catalog connection. `abandoned`: a stop interrupted a step, so there is nothing to
   * finish politely; a slot creation in progress is cancelled, or Postgres creates the slot after
   * all once the transactions it waits for end (a closed socket goes unnoticed while it waits).
   */
  async close(abandoned: boolean): Promise<void> {
    const creating = this.creatingSlotPid;
    const helper = this.helper;
    if (creating && helper) {
      await within(helper.query('SELECT pg_cancel_backend($1)', [creating]), 3_000, 'cancelling slot creation').catch((err: unknown) =>
        this.opts.log.warn({ err: errorMessage(err) }, 'could not cancel slot creation; the slot may appear once the transactions it waits for end'),
      );
    }
    const tasks: Promise<unknown>[] = [];
    if (helper) tasks.push(helper.close());
    const catalog = this.catalogClient;
    if (catalog) {
      if (abandoned) destroyClient(catalog);
      else tasks.push(closeWithin(() => catalog.end(), () => pgSocketOwner(catalog)));
    }
    await Promise.allSettled(tasks);
  }

  /** The sync, logging each distinct change once; `existed`: the publication was there at the first sync. */
  private publicationSync(query: QueryFn): { run: () => Promise<void>; existed: () => boolean } {
    const { settings, opts } = this;
    const log = opts.log;
    let firstSync = true;
    let publicationExisted = false;
    let lastKeyless = '';
    let lastDenied = '';
    const run = async () => {
      if (settings.plugin !== 'pgoutput') return;
      const pub = await ensurePublication(query, { publication: settings.publication, ...opts.plan });
      if (firstSync) publicationExisted = !pub.created;
      // The role may read the publications but not change them (the recommended deployment: setup
      // as the owner, run as a REPLICATION role). That never stops the stream (README "Failure handling"): the
      // tables already published keep flowing; the fix is logged once per distinct change.
      const denied = pub.denied ? pub.denied.statements.join(';\n') : '';
      if (pub.denied && denied !== lastDenied) {
        log.warn(
          { publication: settings.publication, err: pub.denied.message, wanted: pub.denied.statements },
          `publication sync lacks a privilege, streaming goes on without the change: ${pub.denied.message}. ` +
            `Run "pgwarren setup" as the tables' owner, or as the owner: ${pub.denied.statements.join('; ')}`,
        );
      } else if (!pub.denied && lastDenied !== '') {
        log.info({ publication: settings.publication }, 'publication sync no longer lacks a privilege');
      }
      lastDenied = denied;
      if (pub.created || pub.added.length || pub.removed.length || pub.recolumned.length) {
        log.info(
          {
            publication: settings.publication,
            created: pub.created,
            added: pub.added.map(nameOf),
            removed: pub.removed.map(nameOf),
            columnLists: pub.recolumned.map((t) => ({ table: nameOf(t), columns: t.columns ?? 'all' })),
          },
          'publication updated',
        );
      }
      const keyless = pub.withoutIdentity.map(nameOf).join(', ');
      if (keyless !== lastKeyless && keyless !== '') {
        log.warn(
          { tables: pub.withoutIdentity.map(nameOf) },
          `only inserts and truncates are captured for ${keyless}: no primary key or replica identity, and Postgres refuses ` +
            `UPDATE and DELETE on a table that publishes them. Add a primary key or run ALTER TABLE ... REPLICA IDENTITY FULL to capture them`,
        );
      }
      lastKeyless = keyless;
      if (firstSync) {
        for (const t of pub.notes) {
          log.info({ table: nameOf(t), reason: t.note }, `excluded columns of ${nameOf(t)} are left out of events but still sent by Postgres: ${t.note}`);
        }
      }
      firstSync = false;
    };
    return { run, existed: () => publicationExisted };
  }

  /**
   * Creates the slot (see ensureSlot). Postgres makes a new logical slot wait until every
   * transaction running at that moment has ended, however long that is, so this query has no
   * timeout; instead a second connection says every few seconds which sessions it waits for,
   * and a stop cancels it (pg_cancel_backend) rather than waiting.
   */
  private async createSlot(query: QueryFn, slotOpts: Parameters<typeof ensureSlot>[1]): Promise<{ created: boolean; state: SlotState }> {
    const log = this.opts.log;
    // pg sets processID from BackendKeyData (not in its type definitions).
    const pid = (this.catalogClient as { processID?: number } | null)?.processID ?? null;
    const helper = (this.helper = new LazyPgClient(this.settings.pg, 'pgwarren-slot-wait', this.settings.timeouts));
    this.creatingSlotPid = pid;
    let lastBlockers = '';
    // The creation's own connection cannot be bounded (the wait is Postgres'), so the watch on the
    // second connection also decides when to give up on it: when the backend creating the slot is
    // gone (its connection died: it never answers now), or when Postgres has not answered the watch
    // SLOT_WAIT_FAILURES times in a row (a silent network). Either ends the session as transient; the
    // next one finds the slot made, or makes it.
    let giveUp!: (reason: Error) => void;
    const gaveUp = new Promise<never>((_, reject) => (giveUp = reject));
    gaveUp.catch(() => undefined);
    let failures = 0;
    let probing = false;
    const slot = this.settings.slot;
    const probe = async (backend: number): Promise<void> => {
      try {
        const alive = await helper.query('SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1) AS alive', [backend]);
        failures = 0;
        if ((alive.rows[0] as { alive?: boolean } | undefined)?.alive === false) {
          giveUp(new Error(`the connection creating slot "${slot}" is gone (backend ${backend} ended without answering)`));
          return;
        }
        const { rows } = await helper.query(
          `SELECT a.pid, a.usename AS user, a.application_name AS application, a.state,
                  extract(epoch FROM now() - a.xact_start)::int AS open_seconds
             FROM pg_stat_activity a WHERE a.pid = ANY (pg_blocking_pids($1)) ORDER BY a.xact_start`,
          [backend],
        );
        const blockers = rows as { pid: number; user: string | null; application: string | null; state: string | null; open_seconds: number | null }[];
        const key = blockers.map((b) => b.pid).join(',');
        if (blockers.length === 0 || key === lastBlockers) return;
        lastBlockers = key;
        const list = blockers
          .map((b) => `pid ${b.pid}${b.user ? ` (user ${b.user}${b.application ? `, ${b.application}` : ''}, ${b.state ?? 'unknown state'}${b.open_seconds != null ? `, open for ${b.open_seconds} s` : ''})` : ''}`)
          .join('; ');
        log.warn(
          { slot, waitingFor: blockers },
          `creating slot "${slot}" waits for ${blockers.length} transaction(s) open elsewhere to end: ${list}. ` +
            `Postgres starts a new slot only once every transaction running at that moment has finished`,
        );
      } catch (err) {
        failures++;
        log.debug({ err: errorMessage(err), failures }, 'could not tell what slot creation waits for');
        if (failures >= SLOT_WAIT_FAILURES) {
          giveUp(new Error(`Postgres did not answer ${failures} checks in a row while slot "${slot}" was being created (${errorMessage(err)})`));
        }
      }
    };
    const watch = pid
      ? setInterval(() => {
          if (probing) return;
          probing = true;
          void probe(pid).finally(() => (probing = false));
        }, SLOT_WAIT_LOG_MS)
      : null;
    try {
      return await Promise.race([
        this.opts.step(this.pg(() => ensureSlot(query, slotOpts), 'creating the slot')),
        gaveUp.catch((reason: Error) => {
          throw new SessionFailure('postgres', reason);
        }),
      ]);
    } finally {
      if (watch) clearInterval(watch);
      if (!this.opts.stopping()) {
        this.creatingSlotPid = null;
        this.helper = null;
        await helper.close();
      }
    }
  }

  /** A catalog step, abandoned on stop; its failure classified (permanent -> exit 3). */
  private async pg<T>(fn: () => Promise<T>, doing: string): Promise<T> {
    try {
      return await this.opts.step(fn());
    } catch (err) {
      if (err instanceof Stopped || err instanceof UsageError) throw err;
      throw pgFailure(err, doing);
    }
  }
}
