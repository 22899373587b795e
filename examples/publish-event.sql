-- Publish an application event from SQL, atomically with the transaction's row changes
-- (README "Application events"). pgwarren publishes the JSON as an `op: "message"` event with
-- routing key "checkout.completed" (the payload's "routing_key"), only if the transaction commits.
--   psql "$DATABASE_URL" -f examples/publish-event.sql
BEGIN;
INSERT INTO orders (customer_id, status, total) VALUES (1, 'paid', 42.50);
SELECT pg_logical_emit_message(
  true,               -- transactional: published at commit, never after a rollback
  'pgwarren.event',   -- the prefix pgwarren publishes; other prefixes are ignored
  json_build_object(
    'routing_key', 'checkout.completed',
    'order_id', currval(pg_get_serial_sequence('orders', 'id')),
    'total', 42.50
  )::text
);
COMMIT;
