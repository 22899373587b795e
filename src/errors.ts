/**
 * Errors that decide the exit code (CONTRACT §8). Anything not classified here is either
 * transient (a session retries it with backoff) or unexpected (exit 1).
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

/** Postgres SQLSTATEs that mean "retrying will not help". */
const FATAL_SQLSTATES: Record<string, string> = {
  '28P01': 'Postgres refused the password',
  '28000': 'Postgres refused the connection (pg_hba.conf or role)',
  '42501': 'the role lacks a privilege',
  '3D000': 'the database does not exist',
  '42704': 'an object does not exist',
};

export function sqlState(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' && /^[0-9A-Z]{5}$/.test(code) ? code : undefined;
}

/** Turn a Postgres error into a PrerequisiteError when retrying cannot fix it. */
export function classifyPgError(err: unknown, doing: string): unknown {
  const code = sqlState(err);
  const message = err instanceof Error ? err.message : String(err);
  if (code && FATAL_SQLSTATES[code]) {
    return new PrerequisiteError(`${doing}: ${FATAL_SQLSTATES[code]}: ${message}`, { cause: err });
  }
  if (/logical decoding requires wal_level >= logical|wal_level/.test(message) && code === '55000') {
    return new PrerequisiteError(
      `${doing}: ${message}. Set wal_level = logical in postgresql.conf (or ALTER SYSTEM SET wal_level = logical) and restart Postgres.`,
      { cause: err },
    );
  }
  if (/must be superuser or replication role|permission denied to start WAL sender|must have REPLICATION/i.test(message)) {
    return new PrerequisiteError(`${doing}: ${message}. Grant it with: ALTER ROLE <role> WITH REPLICATION;`, { cause: err });
  }
  return err;
}
