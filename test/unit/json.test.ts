import { test } from 'node:test';
import assert from 'node:assert/strict';
import { RawJson, minifyJson, stringify, type JsonValue } from '../../src/events/json.js';

test('primitives serialize like JSON.stringify', () => {
  assert.equal(stringify(null), 'null');
  assert.equal(stringify(true), 'true');
  assert.equal(stringify(false), 'false');
  assert.equal(stringify(0), '0');
  assert.equal(stringify(42), '42');
  assert.equal(stringify(-1.5), '-1.5');
  assert.equal(stringify(1e21), '1e+21');
  assert.equal(stringify(5e-324), '5e-324');
  assert.equal(stringify(0.00001), '0.00001');
  assert.equal(stringify(''), '""');
  assert.equal(stringify('a "q" \\ \n \u0001 é 😀'), JSON.stringify('a "q" \\ \n \u0001 é 😀'));
  assert.equal(stringify('\u2028\u2029'), JSON.stringify('\u2028\u2029'));
});

test('negative zero keeps its sign; non-finite numbers throw', () => {
  assert.equal(stringify(-0), '-0');
  assert.equal(JSON.parse(stringify(-0)), -0);
  assert.equal(Object.is(JSON.parse(stringify([-0]))[0], -0), true);
  assert.throws(() => stringify(NaN), TypeError);
  assert.throws(() => stringify(Infinity), TypeError);
  assert.throws(() => stringify({ a: [-Infinity] }), TypeError);
});

test('RawJson is embedded verbatim, keeping every digit', () => {
  const raw = new RawJson('{"n":123456789012345678901234567890,"f":0.1000000000000000055511151231257827}');
  assert.equal(stringify(raw), raw.text);
  assert.equal(
    stringify({ a: raw, b: [new RawJson('1e400'), null] }),
    '{"a":{"n":123456789012345678901234567890,"f":0.1000000000000000055511151231257827},"b":[1e400,null]}',
  );
});

test('objects keep insertion order; integer-like keys come first (JS property order)', () => {
  const o: Record<string, JsonValue> = {};
  o.z = 1;
  o.a = 2;
  o['m m'] = 3;
  assert.equal(stringify(o), '{"z":1,"a":2,"m m":3}');
  const n: Record<string, JsonValue> = {};
  n.b = 1;
  n['2'] = 2;
  n['1'] = 3;
  assert.equal(stringify(n), '{"1":3,"2":2,"b":1}');
  assert.equal(stringify(n), JSON.stringify(n)); // same order as JSON.stringify: deterministic
});

test('keys are escaped; null-prototype objects and a __proto__ own key work', () => {
  const o = Object.create(null) as Record<string, JsonValue>;
  o['we"ird\\key'] = 'v';
  o.__proto__ = 'own';
  assert.equal(stringify(o), '{"we\\"ird\\\\key":"v","__proto__":"own"}');
  const plain: Record<string, JsonValue> = {};
  Object.defineProperty(plain, '__proto__', { value: 1, enumerable: true, writable: true, configurable: true });
  assert.equal(stringify(plain), '{"__proto__":1}');
});

test('empty containers, nesting, undefined handling', () => {
  assert.equal(stringify([]), '[]');
  assert.equal(stringify({}), '{}');
  assert.equal(stringify([[[]], {}, [{ a: [] }]]), '[[[]],{},[{"a":[]}]]');
  assert.equal(stringify({ a: undefined as unknown as JsonValue, b: 1 }), '{"b":1}');
  assert.equal(stringify({ a: undefined as unknown as JsonValue }), '{}');
  assert.throws(() => stringify([undefined as unknown as JsonValue]), TypeError);
  assert.throws(() => stringify(undefined as unknown as JsonValue), TypeError);
  assert.throws(() => stringify(10n as unknown as JsonValue), TypeError);
});

test('agrees with JSON.stringify on ordinary data', () => {
  let seed = 7;
  const rand = () => (seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648;
  const make = (depth: number): JsonValue => {
    const r = rand();
    if (depth > 3 || r < 0.3) {
      const k = Math.floor(rand() * 5);
      return [null, true, (rand() - 0.5) * 1e6, String.fromCharCode(...Array.from({ length: 6 }, () => Math.floor(rand() * 200))), 17][k]!;
    }
    if (r < 0.65) return Array.from({ length: Math.floor(rand() * 4) }, () => make(depth + 1));
    const o: Record<string, JsonValue> = {};
    for (let i = 0; i < Math.floor(rand() * 4); i++) o['k' + Math.floor(rand() * 100)] = make(depth + 1);
    return o;
  };
  for (let i = 0; i < 500; i++) {
    const v = make(0);
    assert.equal(stringify(v), JSON.stringify(v));
  }
});

test('minifyJson removes only insignificant whitespace', () => {
  assert.equal(minifyJson('{"a": 1, "b": [1, 2.50, {"c": "x y"}]}'), '{"a":1,"b":[1,2.50,{"c":"x y"}]}');
  assert.equal(minifyJson(' \n\t{ "a" :\r\n 1 }\n'), '{"a":1}');
  assert.equal(minifyJson('"a b"'), '"a b"');
  assert.equal(minifyJson('{"k": "ends with backslash \\\\", "x": " q \\" q "}'), '{"k":"ends with backslash \\\\","x":" q \\" q "}');
  assert.equal(minifyJson('["\\\\\\"", " "]'), '["\\\\\\""," "]');
  assert.equal(minifyJson('[123456789012345678901234567890, 0.1000000000000000055511151231257827, 1E+2]'),
    '[123456789012345678901234567890,0.1000000000000000055511151231257827,1E+2]');
  assert.equal(minifyJson('{"a": "\\u0020 \\n"}'), '{"a":"\\u0020 \\n"}');
  assert.equal(minifyJson('null'), 'null');
  assert.equal(minifyJson(''), '');
});

test('minifyJson returns the very same string when there is nothing to remove', () => {
  const s = '{"a":"x y","b":[1,2]}';
  assert.equal(minifyJson(s), s);
});

test('minifyJson round-trips to the same value as JSON.parse', () => {
  const samples = [
    '{"a": {"b": [1, 2, {"c": null}]}, "d": "e f", "g": true}',
    '[ "a" , "b\\"c" , { } , [ ] ]',
    '{"emoji": "😀 é", "ctrl": "\\t\\u0000"}',
  ];
  for (const s of samples) assert.deepEqual(JSON.parse(minifyJson(s)), JSON.parse(s));
});
