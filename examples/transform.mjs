/**
 * Example PGWARREN_TRANSFORM module (README "Shaping the stream"):
 *   PGWARREN_TRANSFORM=examples/transform.mjs npm start
 *
 * transform(event) returns the event to publish (changed or not), or null to drop it. A throw or
 * any other result dead-letters that one event; the stream goes on. Keep it a pure function of the
 * event: a transaction may be read and shaped again after a crash.
 */

/** Columns no consumer should ever see, whatever the table. */
const SECRET_COLUMNS = ['password_hash', 'api_token'];

export function transform(event) {
  // Drop changes made by a maintenance job that marks its rows.
  if (event.new?.updated_by === 'nightly-cleanup') return null;

  // Remove secrets from every row image.
  for (const part of ['key', 'old', 'new']) {
    const row = event[part];
    if (row) for (const column of SECRET_COLUMNS) delete row[column];
  }
  if (Array.isArray(event.changed)) event.changed = event.changed.filter((c) => !SECRET_COLUMNS.includes(c));

  // Route orders by tenant and tag the message with it (reserved fields, taken out of the body).
  if (event.table === 'orders' && event.new?.tenant) {
    event._routing_key = `orders.${event.new.tenant}.${event.op}`;
    event._headers = { 'x-tenant': String(event.new.tenant) };
  }

  // Consumers that only need the row do not need the source block.
  delete event.source;
  return event;
}
