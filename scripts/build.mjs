#!/usr/bin/env node
/**
 * `npm run build`: src/*.ts -> dist/, with esbuild.
 *
 * 1. Every module of src/ compiled on its own to dist/ (bench/, examples/ and scripts/docs.mjs
 *    import some of them).
 * 2. dist/cli.js, the entry point, a bundle of pgwarren's own modules, split at the dynamic imports
 *    (each command, the stream sink) into dist/chunks/, so a start loads only what it uses. The
 *    libraries stay external in node_modules: the compatibility shims in src/sink/ patch those very
 *    instances.
 *
 * Why esbuild and not tsc: Node 20 resolves and links every ES module on its own, and pgwarren's
 * ninety-odd modules were a noticeable share of every start's CPU (the tests start the daemon or a
 * command some 250 times); and tsc type-checked src/ twice per test run, once to emit and once
 * with the tests. Type checking is `npm run typecheck` (tsconfig.test.json: src, tests, bench),
 * which `npm test` runs beside the tests. Source maps point at src/*.ts.
 */
import { build } from 'esbuild';
import { readdirSync, rmSync } from 'node:fs';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));

function sources(dir) {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? sources(join(dir, e.name)) : e.name.endsWith('.ts') && !e.name.endsWith('.d.ts') ? [relative(root, join(dir, e.name))] : [],
  );
}

const common = { absWorkingDir: root, platform: 'node', format: 'esm', target: 'node20', sourcemap: true, logLevel: 'warning', tsconfig: 'tsconfig.json' };

rmSync(join(root, 'dist'), { recursive: true, force: true });
// src/cli.ts only as the bundle below: nothing imports the entry point module by module.
await build({ ...common, entryPoints: sources(join(root, 'src')).filter((f) => f !== join('src', 'cli.ts')), outdir: 'dist', outbase: 'src' });
await build({
  ...common,
  entryPoints: ['src/cli.ts'],
  outdir: 'dist',
  bundle: true,
  packages: 'external',
  splitting: true,
  chunkNames: 'chunks/[name]-[hash]',
});
