/**
 * Tables whose `schema.table` texts coincide ("a.b"."c" and "a"."b.c") are different tables for
 * every cache keyed by table: selection, routing rules, per-table rule lookups.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { TableSelection, ruleLookup } from '../../src/filter/selection.js';
import { Router } from '../../src/events/router.js';

// Both orders of first use: a cache keyed by the dotted text answers the second from the first.
const orders: Array<Array<[string, string]>> = [
  [['a.b', 'c'], ['a', 'b.c']],
  [['a', 'b.c'], ['a.b', 'c']],
];

test('selection: an exclusion of schema a excludes a."b.c", never "a.b".c, whichever is seen first', () => {
  for (const order of orders) {
    const sel = new TableSelection([], ['a.*']);
    const got = Object.fromEntries(order.map(([s, t]) => [`${s}|${t}`, sel.includes(s, t)]));
    assert.deepEqual(got, { 'a.b|c': true, 'a|b.c': false }, `order ${JSON.stringify(order)}`);
  }
});

test('routing rules: a rule for schema a routes a."b.c" only, whichever is seen first', () => {
  for (const order of orders) {
    const router = new Router({ exchange: 'main', routingKey: '{table}' }, [{ match: 'a.*', exchange: 'only-a' }]);
    const got = Object.fromEntries(order.map(([s, t]) => [`${s}|${t}`, router.forTable(s, t).exchange]));
    assert.deepEqual(got, { 'a.b|c': 'main', 'a|b.c': 'only-a' }, `order ${JSON.stringify(order)}`);
  }
});

test('per-table rule lookups (flood threshold, excluded columns) keep the two tables apart', () => {
  for (const order of orders) {
    const threshold = ruleLookup([{ match: 'a.*', floodThreshold: 5 }], (r) => r.floodThreshold, 100);
    const got = Object.fromEntries(order.map(([s, t]) => [`${s}|${t}`, threshold(s, t)]));
    assert.deepEqual(got, { 'a.b|c': 100, 'a|b.c': 5 }, `order ${JSON.stringify(order)}`);
  }
});
