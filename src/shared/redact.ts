/**
 * Keeping secrets out of messages and logs. Redaction errs on the side of hiding too much: a
 * password with unencoded `@` or `/` still disappears, at the cost of also hiding some host text.
 */

const USERINFO_PASSWORD = /^([a-z][a-z0-9+.-]*:\/\/[^:/?#@\s]*):.*@/i;
const QUERY_PASSWORD = /([?&]password=)[^&#\s]*/gi;

/** `amqp://user:secret@host` -> `amqp://user:***@host`; each URL of a comma-separated list. */
export function redactUrl(url: string): string {
  return url
    .split(',')
    .map((u) => u.replace(USERINFO_PASSWORD, '$1:***@').replace(QUERY_PASSWORD, '$1***'))
    .join(',');
}

const URL_IN_TEXT = /[a-z][a-z0-9+.-]*:\/\/[^\s"',]+/gi;

/** Redacts every URL inside free text (error messages may quote values or library errors). */
export function redactSecrets(text: string): string {
  return text.replace(URL_IN_TEXT, (url) => redactUrl(url));
}
