/**
 * Postgres connection settings with libpq's conventions: a URL names what it names, the PG*
 * variables fill in what it leaves out, and libpq's defaults fill the rest. The result is plain
 * data; `pgClientConfig` turns it into node-postgres settings with libpq's sslmode semantics.
 */
import { readFileSync } from 'node:fs';
import { userInfo } from 'node:os';
import type { ClientConfig } from 'pg';
import { parse as parsePgUrl } from 'pg-connection-string';
import { redactUrl } from '../shared/redact.js';
import { quote } from './validators.js';

export const SSL_MODES = ['disable', 'allow', 'prefer', 'require', 'verify-ca', 'verify-full'] as const;
export type SslMode = (typeof SSL_MODES)[number];

export interface DatabaseSettings {
  readonly host: string;
  readonly port: number;
  readonly user: string;
  readonly password?: string;
  readonly database: string;
  /** Unset means no TLS: node-postgres cannot fall back from TLS to plain as libpq's prefer does. */
  readonly sslmode?: SslMode;
  /** Absolute path of the CA file the server certificate must chain to. */
  readonly sslRootCert?: string;
  /** The URL as given, password included: never log it. Not used by `pgClientConfig`. */
  readonly connectionString?: string;
}

export interface DatabaseInput {
  /** The URL from the layered `database-url` option, and how to name it in errors. */
  readonly url?: { readonly value: string; readonly label: string };
  /** The `pg-ssl-root-cert` option, already resolved; it overrides the URL and PGSSLROOTCERT. */
  readonly sslRootCert?: string;
  readonly env: NodeJS.ProcessEnv;
  /** Resolves a file name from the URL or PGSSLROOTCERT and checks it; undefined if unreadable. */
  readonly resolveFile: (path: string, label: string) => string | undefined;
}

export function databaseSettings(input: DatabaseInput, problems: string[]): DatabaseSettings | undefined {
  const { env, url } = input;
  let fromUrl: ReturnType<typeof parsePgUrl> = { host: null, database: null };
  if (url) {
    try {
      // TLS is decided here with libpq's rules, so the parser must not act on the ssl* parameters
      // (it would read files, warn, or apply node-postgres' own meaning of sslmode).
      fromUrl = parsePgUrl(url.value.replace(/([?&])(ssl[a-z]*)=/gi, '$1pgwarren_$2='));
    } catch (err) {
      problems.push(`${url.label}: ${quote(redactUrl(url.value))} is not a valid postgres:// URL (${(err as Error).message})`);
      return undefined;
    }
  }
  const text = (v: unknown): string | undefined => (typeof v === 'string' && v !== '' ? v : undefined);
  const pick = (fromUrlValue: unknown, envName: string) => text(fromUrlValue) ?? text(env[envName]);

  const user = pick(fromUrl.user, 'PGUSER') ?? osUser();
  const portText = pick(fromUrl.port, 'PGPORT') ?? '5432';
  const portSource = text(fromUrl.port) ? url!.label : 'PGPORT';
  const port = Number(portText);
  if (!/^\d+$/.test(portText) || port < 1 || port > 65535) problems.push(`${portSource}: ${quote(portText)} is not a port number from 1 to 65535`);

  for (const param of ['sslcert', 'sslkey']) {
    if (text(fromUrl[`pgwarren_${param}`])) problems.push(`${url!.label}: ${param} (client certificates for Postgres) is not supported; use password authentication`);
  }
  const urlSslmode = text(fromUrl.pgwarren_sslmode) ?? legacySsl(text(fromUrl.pgwarren_ssl));
  const sslmodeText = urlSslmode ?? text(env.PGSSLMODE);
  const sslmodeSource = urlSslmode !== undefined ? `${url!.label}: sslmode` : 'PGSSLMODE';
  const sslmode = sslmodeText === undefined ? undefined : SSL_MODES.find((m) => m === sslmodeText);
  if (sslmodeText !== undefined && sslmode === undefined) problems.push(`${sslmodeSource}: ${quote(sslmodeText)} is not one of ${SSL_MODES.join(', ')}`);

  const urlRootCert = text(fromUrl.pgwarren_sslrootcert);
  const envRootCert = text(env.PGSSLROOTCERT);
  const sslRootCert =
    input.sslRootCert ??
    (urlRootCert !== undefined ? input.resolveFile(urlRootCert, `${url!.label}: sslrootcert`) : undefined) ??
    (envRootCert !== undefined ? input.resolveFile(envRootCert, 'PGSSLROOTCERT') : undefined);
  if (sslmode === 'verify-ca' && (input.sslRootCert ?? urlRootCert ?? envRootCert) === undefined) {
    // With the system CAs, verify-ca would accept any publicly issued certificate for any host.
    problems.push(`sslmode verify-ca needs a CA file: set PGWARREN_PG_SSL_ROOT_CERT (or sslrootcert in the URL, or PGSSLROOTCERT)`);
  }

  return {
    host: pick(fromUrl.host, 'PGHOST') ?? 'localhost',
    port,
    user,
    password: pick(fromUrl.password, 'PGPASSWORD'),
    database: pick(fromUrl.database, 'PGDATABASE') ?? user,
    sslmode,
    sslRootCert,
    connectionString: url?.value,
  };
}

/** node-postgres' `?ssl=true` means TLS with full verification; `?ssl=false` none. */
function legacySsl(ssl: string | undefined): string | undefined {
  if (ssl === undefined) return undefined;
  if (ssl === 'true' || ssl === '1') return 'verify-full';
  if (ssl === 'false' || ssl === '0') return 'disable';
  return ssl;
}

function osUser(): string {
  try {
    return userInfo().username;
  } catch {
    return 'postgres'; // no passwd entry (containers run as an arbitrary uid)
  }
}

/** node-postgres settings for the database, with libpq's meaning of each sslmode. */
export function pgClientConfig(db: DatabaseSettings): ClientConfig {
  const base: ClientConfig = { host: db.host, port: db.port, user: db.user, password: db.password, database: db.database };
  const ca = db.sslRootCert === undefined ? undefined : readFileSync(db.sslRootCert, 'utf8');
  switch (db.sslmode) {
    case undefined:
    case 'disable':
    case 'allow':
      return { ...base, ssl: false };
    case 'prefer':
    case 'require':
      // libpq: with a root certificate at hand, require behaves like verify-ca.
      return { ...base, ssl: ca === undefined ? { rejectUnauthorized: false } : { ca, rejectUnauthorized: true, checkServerIdentity: () => undefined } };
    case 'verify-ca':
      return { ...base, ssl: { ca, rejectUnauthorized: true, checkServerIdentity: () => undefined } };
    case 'verify-full':
      return { ...base, ssl: { ca, rejectUnauthorized: true } };
  }
}
