import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { exampleEnvFile, optionsMarkdownTable } from '../../src/config/options.js';

test('the README option table is the one generated from the code (npm run docs)', () => {
  const readme = readFileSync(new URL('../../README.md', import.meta.url), 'utf8');
  const block = /<!-- options:start -->\n([\s\S]*)\n<!-- options:end -->/.exec(readme);
  assert.ok(block, 'README has the options markers');
  assert.equal(block[1], optionsMarkdownTable(), 'README options table is stale: run npm run docs');
});

test('config/pgwarren.env.example lists every option (npm run docs)', () => {
  const example = readFileSync(new URL('../../config/pgwarren.env.example', import.meta.url), 'utf8');
  assert.equal(example, exampleEnvFile(), 'config/pgwarren.env.example is stale: run npm run docs');
});
