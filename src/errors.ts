/**
 * Errors that decide the exit code (README "Commands"), and the one table that classifies every fault
 * (README "Failure handling"): transient (a session retries it with backoff) or permanent (exit 3 with the fix).
 *
 * Faults are classified by their code only: a Postgres SQLSTATE, an AMQP reply code or a Node
 * errno. Never by the text of a message, which also carries host names, ports and user input
 * (`connect ECONNREFUSED 127.0.0.1:40325` once read as "403 access refused").
 */

/** A prerequisite retrying cannot fix: wal_level, privileges, slot plugin, credentials. Exit 3. */
export class PrerequisiteError extends Error {
  readonly exitCode = 3;
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'PrerequisiteError';
  }
}

/** Bad configuration or usage. Exit 2. */
export class UsageError extends Error {
  readonly exitCode = 2;
  constructor(message: string) {
    super(message);
    this.name = 'UsageError';
  }
}

/** An I/O step that got no answer in time. Transient: errno-like code ETIMEDOUT. */
export class TimeoutError extends Error {
  readonly code = 'ETIMEDOUT';
  constructor(what: string, ms: number) {
    super(`${what}: no answer within ${+(ms / 1000).toFixed(1)} s`);
    this.name = 'TimeoutError';
  }
}

export type FaultKind = 'transient' | 'permanent';

export interface Fault {
  readonly kind: FaultKind;
  /** What the code means, in words. */
  readonly meaning: string;
  /** What an operator does about it (permanent faults). */
  readonly fix?: string;
}

const transient = (meaning: string): Fault => ({ kind: 'transient', meaning });
const permanent = (meaning: string, fix: string): Fault => ({ kind: 'permanent', meaning, fix });

/**
 * Postgres SQLSTATEs (Appendix A of the Postgres manual). Exact codes first; a code not listed is
 * looked up by its class (first two characters) in SQLSTATE_CLASSES.
 */
export const SQLSTATES: Readonly<Record<string, Fault>> = {
  '28P01': permanent('Postgres refused the password', 'check the user and password in PGWARREN_DATABASE_URL (or PGUSER / PGPASSWORD)'),
  '28000': permanent(
    'Postgres refused the connection (pg_hba.conf has no entry for this host, user and database, or the role may not log in)',
    'add a pg_hba.conf line for this host, user and database (and for "replication" connections), or ALTER ROLE ... LOGIN, then reload Postgres',
  ),
  '3D000': permanent('the database does not exist', 'check the database name in PGWARREN_DATABASE_URL, or create the database'),
  '42501': permanent(
    'the role lacks a privilege',
    'grant what the message names: ALTER ROLE <role> WITH REPLICATION for replication, GRANT SELECT on the tables, and run "pgwarren setup" as the tables\' owner for the publication',
  ),
  '42704': permanent('an object pgwarren needs does not exist (a slot or publication)', 'run "pgwarren setup", or check PGWARREN_SLOT and PGWARREN_PUBLICATION'),
  '55000': permanent(
    'Postgres is not in the state logical decoding needs (wal_level, max_replication_slots, or an invalidated slot)',
    'set wal_level = logical and max_replication_slots > 0 (ALTER SYSTEM SET ...) and restart Postgres; an invalidated slot must be re-created deliberately ("pgwarren teardown --yes", "pgwarren setup")',
  ),
  '58P01': permanent(
    'a file Postgres needs is missing (the output plugin is not installed)',
    'install the output plugin on the Postgres server (Debian: postgresql-15-wal2json) or use PGWARREN_PLUGIN=pgoutput',
  ),
  '55006': transient('the object is in use (the slot is held by another process)'),
  '55P03': transient('a lock is not available'),
  '57014': transient('the query was cancelled (statement_timeout or an administrator)'),
  '57P01': transient('Postgres is shutting down (administrator command)'),
  '57P02': transient('Postgres crashed and is restarting'),
  '57P03': transient('Postgres is starting up or in recovery and not accepting connections yet'),
  '57P04': transient('a database was dropped (the connection was terminated)'),
  '40001': transient('serialization failure'),
  '40P01': transient('deadlock detected'),
  '25006': transient('Postgres is read-only (a standby, or in recovery)'),
};

/** SQLSTATE classes: 08 connection exception, 53 insufficient resources, 57 operator intervention, 58 system error. */
export const SQLSTATE_CLASSES: Readonly<Record<string, Fault>> = {
  '08': transient('the connection to Postgres failed'),
  '53': transient('Postgres is out of a resource (too many connections, disk, memory)'),
  '57': transient('an operator intervened (shutdown, restart, cancel)'),
  '58': transient('a system error on the Postgres server'),
  '40': transient('the transaction was rolled back'),
};

/** AMQP 0-9-1 reply codes (the spec's constants, as RabbitMQ uses them). */
export const AMQP_REPLY_CODES: Readonly<Record<number, Fault>> = {
  403: permanent('the broker refused access (ACCESS_REFUSED: wrong user or password, or a missing permission)', 'check the user and password in PGWARREN_AMQP_URL and the user\'s permissions on the virtual host'),
  530: permanent('the broker does not allow this (NOT_ALLOWED: the virtual host does not exist or the user may not use it)', 'check the virtual host in PGWARREN_AMQP_URL and the user\'s access to it'),
  406: permanent(
    'the broker refused a declaration (PRECONDITION_FAILED: the exchange exists with another type or durability)',
    'delete the exchange, or set PGWARREN_EXCHANGE_TYPE to its type',
  ),
  320: transient('the broker closed the connection (CONNECTION_FORCED: restarting or closed by an administrator)'),
  311: transient('a message was too large (CONTENT_TOO_LARGE)'),
  312: transient('a message could not be routed (NO_ROUTE)'),
  313: transient('no consumer could take a message (NO_CONSUMERS)'),
  404: transient('an object does not exist on the broker (NOT_FOUND)'),
  405: transient('a resource is locked (RESOURCE_LOCKED)'),
  501: transient('frame error'),
  502: transient('syntax error'),
  503: transient('command invalid'),
  504: transient('channel error'),
  505: transient('unexpected frame'),
  506: transient('the broker is out of a resource (RESOURCE_ERROR)'),
  540: transient('not implemented by the broker'),
  541: transient('the broker had an internal error (INTERNAL_ERROR)'),
};

/** Node errnos of sockets and name resolution; ETIMEDOUT includes pgwarren's own TimeoutError. */
export const ERRNOS: Readonly<Record<string, Fault>> = {
  ECONNREFUSED: transient('connection refused'),
  ECONNRESET: transient('connection reset'),
  ECONNABORTED: transient('connection aborted'),
  ETIMEDOUT: transient('timed out'),
  EPIPE: transient('connection closed while writing'),
  EHOSTUNREACH: transient('host unreachable'),
  EHOSTDOWN: transient('host down'),
  ENETUNREACH: transient('network unreachable'),
  ENETDOWN: transient('network down'),
  EADDRNOTAVAIL: transient('address not available'),
  // In a container deployment the host name resolves only once the other container is up.
  ENOTFOUND: transient('host name not found (yet)'),
  EAI_AGAIN: transient('name resolution failed temporarily'),
};

/** The fault for an error's own code, or undefined when it carries none this table knows. */
export function faultOfCode(err: unknown): Fault | undefined {
  const code = (err as { code?: unknown } | null)?.code;
  if (typeof code === 'number') return AMQP_REPLY_CODES[code];
  if (typeof code !== 'string') return undefined;
  // Errnos first: EPIPE is five capitals too.
  if (ERRNOS[code]) return ERRNOS[code];
  if (/^[0-9A-Z]{5}$/.test(code)) return SQLSTATES[code] ?? SQLSTATE_CLASSES[code.slice(0, 2)];
  return undefined;
}

/**
 * Classify an error: by its own code, else by the code of the error it wraps (`cause`), else
 * transient (an unknown failure is retried with backoff and logged each time: retrying something
 * unknown is safer than stopping the stream for good). A PrerequisiteError is permanent.
 */
export function classify(err: unknown): Fault {
  for (let e: unknown = err, depth = 0; e != null && depth < 5; e = (e as { cause?: unknown }).cause, depth++) {
    if (e instanceof PrerequisiteError) return { kind: 'permanent', meaning: e.message };
    const fault = faultOfCode(e);
    if (fault) return fault;
  }
  return transient('unclassified failure');
}

export function isPermanent(err: unknown): boolean {
  return classify(err).kind === 'permanent';
}

export function sqlState(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' && /^[0-9A-Z]{5}$/.test(code) && !ERRNOS[code] ? code : undefined;
}

export function errorMessage(err: unknown): string {
  if (err instanceof Error) return err.message || err.name;
  return String(err);
}

/**
 * A PrerequisiteError naming what was being done, what the code means and the fix, when the
 * table says retrying cannot help; otherwise `err` unchanged. `fixes` replaces the table's fix
 * for codes the caller knows more about (e.g. 42501 on a replication connection).
 */
export function classifyPgError(err: unknown, doing: string, fixes: Readonly<Record<string, string>> = {}): unknown {
  if (err instanceof PrerequisiteError) return err;
  const fault = classify(err);
  if (fault.kind !== 'permanent') return err;
  const code = sqlState(err);
  const fix = (code && fixes[code]) ?? fault.fix;
  return new PrerequisiteError(`${doing}: ${fault.meaning}: ${errorMessage(err)}${code ? ` (SQLSTATE ${code})` : ''}.${fix ? ` Fix: ${fix}.` : ''}`, { cause: err });
}

/**
 * A session ended by a fault worth retrying, and which side it came from (for reconnect metrics
 * and logs). Permanent faults never arrive wrapped in one: they leave as PrerequisiteError.
 */
export class SessionFailure extends Error {
  constructor(
    readonly target: 'postgres' | 'rabbitmq' | 'pipeline',
    override readonly cause: unknown,
    /** How long to wait at least before the next attempt (e.g. slot held by another process). */
    readonly minDelayMs = 0,
  ) {
    super(cause instanceof Error ? cause.message : String(cause));
  }
}

/** A Postgres failure as the supervisor must see it: PrerequisiteError (exit 3) or SessionFailure (retry). */
export function pgFailure(err: unknown, doing: string, minDelayMs = 0, fixes?: Readonly<Record<string, string>>): Error {
  // A configuration the database refused (a row filter Postgres rejects): exit 2, never a retry.
  if (err instanceof UsageError) return err;
  const e = classifyPgError(err, doing, fixes);
  if (e instanceof PrerequisiteError) return e;
  return new SessionFailure('postgres', e, minDelayMs);
}
