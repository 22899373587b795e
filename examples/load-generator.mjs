#!/usr/bin/env node
/**
 * Demo load generator: makes a steady trickle of shop-like transactions against the demo schema
 * (docker/postgres/initdb/10-schema.sql) so that pgwarren has something to publish. Every
 * BULK_EVERY-th transaction is a restock of every product that marks itself as a bulk change with
 * pg_logical_emit_message(true, 'pgwarren', 'bulk'), which pgwarren's flood guard turns into one
 * `bulk` event (with the default PGWARREN_FLOOD_ACTION=summarize). Each new order also publishes an
 * application event, `checkout.completed`, from inside its transaction with
 * pg_logical_emit_message(true, 'pgwarren.event', json): it reaches RabbitMQ only if the order
 * commits, in order with the order's rows (README "Application events").
 *
 * Settings (environment):
 *   DATABASE_URL   Postgres URL of a role that may write the demo tables; DATABASE_URL_FILE: a file
 *                  holding it; unset, the PG* variables and libpq defaults apply
 *   RATE           transactions per second (default 2)
 *   TRANSACTIONS   stop after this many transactions (default 0: until SIGTERM/SIGINT)
 *   BULK_EVERY     every n-th transaction is a marked bulk restock (default 25; 0: never)
 *
 * Prints one line per transaction and, at the end, a summary of the row changes it committed:
 *   done: 30 transactions; insert=21 update=38 delete=2; events=9; bulk: 1 transactions, 8 rows
 * SIGTERM/SIGINT finish the transaction under way, print the summary and exit 0.
 * Usage: node examples/load-generator.mjs   (or, in compose, the `load-generator` service)
 */
import { readFileSync } from 'node:fs';
import pg from 'pg';

const env = process.env;
const fromFile = (name) => (env[`${name}_FILE`] ? readFileSync(env[`${name}_FILE`], 'utf8').trim() : env[name]);
const number = (name, dflt, min) => {
  const v = env[name] === undefined || env[name] === '' ? dflt : Number(env[name]);
  if (!Number.isFinite(v) || v < min) {
    process.stderr.write(`load-generator: ${name} must be a number >= ${min}, not ${JSON.stringify(env[name])}\n`);
    process.exit(2);
  }
  return v;
};
const rate = number('RATE', 2, 0.01);
const limit = number('TRANSACTIONS', 0, 0);
const bulkEvery = number('BULK_EVERY', 25, 0);

const counts = { insert: 0, update: 0, delete: 0, events: 0 };
const bulk = { transactions: 0, rows: 0 };
let done = 0;
let stopping = false;
let wake = () => {};

const url = fromFile('DATABASE_URL');
const client = new pg.Client(url ? { connectionString: url } : {});
client.on('error', (err) => {
  process.stderr.write(`load-generator: connection lost: ${err.message}\n`);
  process.exit(1);
});
try {
  await client.connect();
} catch (err) {
  process.stderr.write(`load-generator: cannot connect to Postgres: ${err.message}\n`);
  process.exit(1);
}

const q = async (sql, params) => client.query(sql, params);
/** A data-changing statement: its row count goes into the summary under `op`. */
const change = async (op, sql, params) => {
  const r = await q(sql, params);
  counts[op] += r.rowCount ?? 0;
  return r;
};
const pick = async (sql, params) => (await q(sql, params)).rows[0];
const randomInt = (lo, hi) => lo + Math.floor(Math.random() * (hi - lo + 1));

const actions = [
  [10, async () => {
    const n = randomInt(1, 1_000_000);
    const r = await change('insert', 'INSERT INTO customers (name, email) VALUES ($1, $2) ON CONFLICT (email) DO NOTHING RETURNING id', [`Customer ${n}`, `customer${n}@example.com`]);
    return r.rows[0] ? `new customer ${r.rows[0].id}` : 'customer existed already';
  }],
  [35, async () => {
    const customer = await pick('SELECT id FROM customers ORDER BY random() LIMIT 1');
    if (!customer) return 'no customers';
    const order = (await change('insert', 'INSERT INTO orders (customer_id) VALUES ($1) RETURNING id', [customer.id])).rows[0];
    const products = (await q('SELECT id, price FROM products ORDER BY random() LIMIT $1', [randomInt(1, 3)])).rows;
    let total = 0;
    for (const p of products) {
      const quantity = randomInt(1, 4);
      total += quantity * Number(p.price);
      await change('insert', 'INSERT INTO order_items (order_id, product_id, quantity, price) VALUES ($1, $2, $3, $4)', [order.id, p.id, quantity, p.price]);
      await change('update', 'UPDATE products SET stock = greatest(stock - $2, 0) WHERE id = $1', [p.id, quantity]);
    }
    await change('update', 'UPDATE orders SET total = $2, updated_at = now() WHERE id = $1', [order.id, total.toFixed(2)]);
    // The business event, atomic with the order: published only if this transaction commits.
    const event = { routing_key: 'checkout.completed', order_id: Number(order.id), customer_id: customer.id, items: products.length, total: total.toFixed(2) };
    await q("SELECT pg_logical_emit_message(true, 'pgwarren.event', $1)", [JSON.stringify(event)]);
    counts.events++;
    return `new order ${order.id} (${products.length} items), checkout.completed`;
  }],
  [20, async () => {
    const r = await change('update', "UPDATE orders SET status = 'paid', updated_at = now() WHERE id = (SELECT id FROM orders WHERE status = 'new' ORDER BY random() LIMIT 1) RETURNING id");
    return r.rows[0] ? `order ${r.rows[0].id} paid` : 'no order to pay';
  }],
  [15, async () => {
    const r = await change('update', "UPDATE orders SET status = 'shipped', updated_at = now() WHERE id = (SELECT id FROM orders WHERE status = 'paid' ORDER BY random() LIMIT 1) RETURNING id");
    return r.rows[0] ? `order ${r.rows[0].id} shipped` : 'no order to ship';
  }],
  [10, async () => {
    const order = await pick("SELECT id FROM orders WHERE status = 'new' ORDER BY random() LIMIT 1");
    if (!order) return 'no order to cancel';
    const items = await change('delete', 'DELETE FROM order_items WHERE order_id = $1', [order.id]);
    await change('update', "UPDATE orders SET status = 'cancelled', total = 0, updated_at = now() WHERE id = $1", [order.id]);
    return `order ${order.id} cancelled (${items.rowCount} items removed)`;
  }],
  [10, async () => {
    const r = await change('update', 'UPDATE products SET price = round(price * (0.9 + random() * 0.2), 2) WHERE id = (SELECT id FROM products ORDER BY random() LIMIT 1) RETURNING id, price');
    return r.rows[0] ? `product ${r.rows[0].id} now costs ${r.rows[0].price}` : 'no products';
  }],
];
const totalWeight = actions.reduce((s, [w]) => s + w, 0);

async function ordinary() {
  let roll = Math.random() * totalWeight;
  const [, action] = actions.find(([w]) => (roll -= w) < 0) ?? actions[0];
  return action();
}

/** Every product restocked in one transaction, marked as bulk for pgwarren's flood guard. */
async function restock() {
  await q("SELECT pg_logical_emit_message(true, 'pgwarren', 'bulk')");
  const r = await q('UPDATE products SET stock = stock + 50');
  return r.rowCount ?? 0;
}

async function transaction(n) {
  const before = { ...counts };
  await q('BEGIN');
  try {
    if (bulkEvery > 0 && n % bulkEvery === 0) {
      const rows = await restock();
      await q('COMMIT');
      bulk.transactions++;
      bulk.rows += rows;
      return `bulk restock of ${rows} products (marked bulk)`;
    }
    const what = await ordinary();
    await q('COMMIT');
    return what;
  } catch (err) {
    Object.assign(counts, before); // rolled back: none of it happened
    await q('ROLLBACK').catch(() => undefined);
    return `rolled back: ${err.message}`;
  }
}

const sleep = (ms) => new Promise((resolve) => {
  const timer = setTimeout(resolve, ms);
  wake = () => {
    clearTimeout(timer);
    resolve();
  };
});

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => {
    stopping = true;
    wake();
  });
}

process.stdout.write(`load-generator: ${rate} transactions/s${limit ? `, ${limit} transactions` : ''}${bulkEvery ? `, a bulk restock every ${bulkEvery}` : ''}\n`);
while (!stopping && (limit === 0 || done < limit)) {
  const started = Date.now();
  done++;
  process.stdout.write(`tx ${done}: ${await transaction(done)}\n`);
  await sleep(Math.max(0, 1000 / rate - (Date.now() - started)));
}
process.stdout.write(
  `done: ${done} transactions; insert=${counts.insert} update=${counts.update} delete=${counts.delete}; events=${counts.events}; bulk: ${bulk.transactions} transactions, ${bulk.rows} rows\n`,
);
await client.end().catch(() => undefined);
process.exit(0);
