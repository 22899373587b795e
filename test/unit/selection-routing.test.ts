import { test } from 'node:test';
import assert from 'node:assert/strict';
import { OperationSelection, TableSelection, excludedColumnsLookup, ruleLookup } from '../../src/filter/selection.js';
import { compileRoutingKey } from '../../src/events/routing.js';
import { Router } from '../../src/events/router.js';

test('no include globs means every table outside system schemas', () => {
  const s = new TableSelection([], []);
  assert.equal(s.includes('public', 'orders'), true);
  assert.equal(s.includes('pg_catalog', 'pg_class'), false);
  assert.equal(s.includes('information_schema', 'tables'), false);
  assert.equal(s.includes('pg_temp_3', 'x'), false);
});

test('globs match schema and table separately', () => {
  const s = new TableSelection(['public.*', '*.orders', 'app.user?'], ['public.secret*']);
  assert.equal(s.includes('public', 'anything'), true);
  assert.equal(s.includes('sales', 'orders'), true);
  assert.equal(s.includes('sales', 'orders_old'), false);
  assert.equal(s.includes('app', 'users'), true);
  assert.equal(s.includes('app', 'user'), false);
  assert.equal(s.includes('public', 'secrets'), false, 'excluded');
  assert.equal(new TableSelection(['my.table'], []).includes('myxtable', 'x'), false, 'dots are literal');
});

test('operations and the publication parameter', () => {
  const ops = new OperationSelection(['delete', 'insert']);
  assert.equal(ops.includes('insert'), true);
  assert.equal(ops.includes('update'), false);
  assert.equal(ops.publishParameter(), 'insert, delete');
});

test('routing key templates fill every placeholder', () => {
  const key = compileRoutingKey('{db}.{schema}.{table}.{op}!');
  assert.equal(key({ db: 'app', schema: 'public', table: 'orders', op: 'insert' }), 'app.public.orders.insert!');
  assert.equal(compileRoutingKey('static')({ db: 'a', schema: 'b', table: 'c', op: 'd' }), 'static');
});

test('per-table rules override exchange, routing key and ttl; first match wins', () => {
  const r = new Router({ exchange: 'pgwarren', routingKey: '{schema}.{table}.{op}' }, [
    { match: 'public.users', exchange: 'users', routingKey: 'u.{op}', ttl: 60000 },
    { match: 'public.*', routingKey: 'p.{table}' },
  ]);
  const users = r.forTable('public', 'users');
  assert.equal(users.exchange, 'users');
  assert.equal(users.routingKey({ db: 'd', schema: 'public', table: 'users', op: 'delete' }), 'u.delete');
  assert.equal(users.expiration, '60000');
  const other = r.forTable('public', 'orders');
  assert.equal(other.exchange, 'pgwarren');
  assert.equal(other.routingKey({ db: 'd', schema: 'public', table: 'orders', op: 'insert' }), 'p.orders');
  assert.equal(r.forTable('sales', 'x').routingKey({ db: 'd', schema: 'sales', table: 'x', op: 'insert' }), 'sales.x.insert');
  assert.deepEqual(r.exchanges(), ['pgwarren', 'users']);
});

test('one rule per table: the first rule whose glob matches decides every field, for routing and the rest alike', () => {
  const rules = [
    { match: 'public.orders', routingKey: 'orders.{op}', floodThreshold: 7 },
    { match: 'public.*', floodThreshold: 5, excludeColumns: ['secret'] },
    { match: 'public.users', routingKey: 'never.{op}', excludeColumns: ['password'] },
  ];
  const router = new Router({ exchange: 'x', routingKey: '{schema}.{table}.{op}' }, rules);
  const threshold = ruleLookup(rules, (r: { floodThreshold?: number }) => r.floodThreshold, 100);
  const excluded = excludedColumnsLookup(rules);
  const key = (table: string) => router.forTable('public', table).routingKey({ db: 'd', schema: 'public', table, op: 'insert' });
  assert.equal(key('orders'), 'orders.insert');
  assert.equal(threshold('public', 'orders'), 7);
  assert.deepEqual([...excluded('public', 'orders')], [], 'the orders rule sets no exclusions, and is the only rule for orders');
  // users matches "public.*" first: that rule applies whole, the later users rule never does.
  assert.equal(key('users'), 'public.users.insert');
  assert.equal(threshold('public', 'users'), 5);
  assert.deepEqual([...excluded('public', 'users')], ['secret']);
  assert.equal(threshold('audit', 'log'), 100, 'no rule: the option');
});
