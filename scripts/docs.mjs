#!/usr/bin/env node
// Regenerates what is derived from the option table (npm run docs): the README's option table
// and config/pgwarren.env.example. test/unit/readme.test.ts fails when either drifts.
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { exampleEnvFile, optionsMarkdownTable } from '../dist/config/options.js';

const readmePath = new URL('../README.md', import.meta.url);
const readme = readFileSync(readmePath, 'utf8');
writeFileSync(readmePath, readme.replace(/<!-- options:start -->[\s\S]*<!-- options:end -->/, `<!-- options:start -->\n${optionsMarkdownTable()}\n<!-- options:end -->`));
mkdirSync(new URL('../config/', import.meta.url), { recursive: true });
writeFileSync(new URL('../config/pgwarren.env.example', import.meta.url), exampleEnvFile());
