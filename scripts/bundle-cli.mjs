#!/usr/bin/env node
/**
 * The second half of `npm run build`: after tsc has type-checked and compiled src/ to dist/ (one
 * file per module, which bench/, examples/ and scripts/docs.mjs import), this rewrites
 * dist/cli.js (and, for what only some starts need, dist/chunks/) as bundles of pgwarren's own
 * modules. The libraries stay in
 * node_modules, loaded as usual (the compatibility shims in src/sink/ patch those very instances).
 *
 * Why: Node 20 resolves and links every ES module separately, and pgwarren's ninety-odd modules
 * cost about 0.17 s of CPU at every start of the daemon or of a command, about a third of a start.
 * The source maps chain back to src/*.ts, so stack traces still name the TypeScript lines.
 */
import { build } from 'esbuild';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));

await build({
  absWorkingDir: root,
  entryPoints: ['dist/cli.js'],
  outdir: 'dist',
  allowOverwrite: true,
  bundle: true,
  // Split at the dynamic imports (a command's code, the stream sink): what a start does not use is
  // not loaded, nor are the libraries only that code imports.
  splitting: true,
  chunkNames: 'chunks/[name]-[hash]',
  packages: 'external',
  platform: 'node',
  format: 'esm',
  target: 'node20',
  sourcemap: true,
  logLevel: 'warning',
});
