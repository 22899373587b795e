/**
 * TLS failures retrying cannot fix, recognised by Node's error codes: shared by the Postgres
 * connections and the sinks (AMQP, streams), which word the settings to check differently.
 */

/** Node's codes for a server certificate that does not verify (wrong CA, host name, dates). */
const TLS_VERIFY_CODES = new Set([
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'CERT_SIGNATURE_FAILURE',
  'CERT_UNTRUSTED',
  'CERT_REJECTED',
  'CERT_REVOKED',
  'CERT_HAS_EXPIRED',
  'CERT_NOT_YET_VALID',
  'INVALID_CA',
  'ERR_TLS_CERT_ALTNAME_INVALID',
]);

/**
 * When `err` is a TLS failure that retrying cannot fix (the server's certificate does not verify
 * against the configured CA or host name, or the server refuses TLS where the settings demand
 * it), a sentence saying so and what to check; otherwise undefined.
 */
export function tlsFailure(err: unknown, settingsHint: string): string | undefined {
  const e = err as { code?: unknown; message?: unknown } | null;
  const code = typeof e?.code === 'string' ? e.code : '';
  const message = typeof e?.message === 'string' ? e.message : String(err);
  if (TLS_VERIFY_CODES.has(code)) {
    const what = code === 'ERR_TLS_CERT_ALTNAME_INVALID' ? 'is not valid for the host name connected to' : 'does not verify against the trusted CA';
    return `the server's TLS certificate ${what} (${code}: ${message}); check ${settingsHint}`;
  }
  if (/^ERR_SSL_(TLSV13_ALERT_CERTIFICATE_REQUIRED|SSLV3_ALERT_BAD_CERTIFICATE|TLSV1_ALERT_UNKNOWN_CA|SSLV3_ALERT_CERTIFICATE_UNKNOWN|TLSV1_ALERT_ACCESS_DENIED)$/.test(code)) {
    return `the server rejected the TLS handshake: it wants a client certificate it trusts (${code}: ${message}); check ${settingsHint}`;
  }
  if (/server does not support SSL/i.test(message)) {
    return `${message}: enable ssl on the server or lower sslmode (${settingsHint})`;
  }
  return undefined;
}
