/**
 * The Dockerfile, checked without a Docker engine: its build and start steps are the package.json
 * scripts CI runs, the runtime stage has production dependencies only and runs as a non-root user,
 * health, stop signal and port follow pgwarren's own options, and no secret can get into the image.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { findOption } from '../../src/config/options.js';

const root = fileURLToPath(new URL('../../', import.meta.url));
const read = (p: string) => readFileSync(join(root, p), 'utf8');
const pkg = JSON.parse(read('package.json')) as { scripts: Record<string, string>; bin: Record<string, string>; engines: { node: string } };

interface Instruction {
  readonly op: string;
  readonly args: string;
}
interface Stage {
  readonly name: string;
  /** The base image or stage, ARGs resolved. */
  readonly from: string;
  readonly instructions: Instruction[];
}

/** Instructions with continuation lines joined and comments dropped; stages in order. */
function parseDockerfile(text: string): { args: Map<string, string>; stages: Stage[] } {
  const lines: string[] = [];
  let pending = '';
  for (const raw of text.split('\n')) {
    if (/^\s*#/.test(raw) && !pending) continue;
    if (/^\s*#/.test(raw)) continue; // a comment inside a continued instruction
    const line = raw.replace(/\s+$/, '');
    if (line.endsWith('\\')) {
      pending += line.slice(0, -1) + ' ';
      continue;
    }
    const full = (pending + line).trim();
    pending = '';
    if (full) lines.push(full);
  }
  const args = new Map<string, string>();
  const stages: Stage[] = [];
  for (const line of lines) {
    const m = /^(\w+)\s+([\s\S]*)$/.exec(line);
    assert.ok(m, `cannot parse Dockerfile line: ${line}`);
    const op = m[1]!.toUpperCase();
    const rest = m[2]!.replace(/\s+/g, ' ').trim();
    if (op === 'ARG' && stages.length === 0) {
      const [k, v = ''] = rest.split('=');
      args.set(k!, v);
      continue;
    }
    if (op === 'FROM') {
      const f = /^(\S+)(?: AS (\S+))?$/i.exec(rest);
      assert.ok(f, `FROM ${rest}`);
      const from = f[1]!.replace(/\$\{(\w+)\}|\$(\w+)/g, (_, a, b) => args.get(a ?? b) ?? '');
      stages.push({ name: f[2] ?? String(stages.length), from, instructions: [] });
      continue;
    }
    assert.ok(stages.length > 0, `${op} before FROM`);
    stages[stages.length - 1]!.instructions.push({ op, args: rest });
  }
  return { args, stages };
}

/** The argv of an exec-form (JSON array) instruction, or the shell string. */
function argv(i: Instruction): string[] {
  if (i.args.startsWith('[')) return JSON.parse(i.args) as string[];
  return ['/bin/sh', '-c', i.args];
}
/** Shell commands of the RUN instructions, split on &&. */
const runCommands = (s: Stage) => s.instructions.filter((i) => i.op === 'RUN').flatMap((i) => i.args.split('&&').map((c) => c.trim()));
const last = (s: Stage, op: string) => [...s.instructions].reverse().find((i) => i.op === op);

const { stages } = parseDockerfile(read('Dockerfile'));
const byName = new Map(stages.map((s) => [s.name, s]));
/** A stage's instructions including those of the stages it is built FROM. */
function effective(s: Stage): Instruction[] {
  const base = byName.get(s.from);
  return [...(base ? effective(base) : []), ...s.instructions];
}
const runtime = stages[stages.length - 1]!;
const build = byName.get('build');

describe('Dockerfile', () => {
  test('is multi-stage: build with dev dependencies, the default (last) stage is the runtime one', () => {
    assert.ok(build, 'a stage named build');
    assert.equal(runtime.name, 'runtime');
    assert.ok(stages.length >= 2);
    const buildRuns = runCommands(build);
    assert.ok(buildRuns.some((c) => /^npm ci\b/.test(c) && !/--omit=dev|--production/.test(c)), 'the build stage installs dev dependencies (typescript)');
    // Every COPY --from names an earlier stage.
    stages.forEach((s, i) => {
      for (const ins of s.instructions.filter((x) => x.op === 'COPY' && x.args.includes('--from='))) {
        const from = /--from=(\S+)/.exec(ins.args)![1]!;
        assert.ok(stages.slice(0, i).some((x) => x.name === from), `COPY --from=${from} in ${s.name} names an earlier stage`);
      }
    });
  });

  test('bases on a Node LTS line that package.json supports', () => {
    const min = Number(/(\d+)/.exec(pkg.engines.node)![1]);
    for (const s of stages.filter((x) => !byName.has(x.from))) {
      const m = /^node:(\d+)(?:[.-][\w.-]+)?$/.exec(s.from);
      assert.ok(m, `stage ${s.name} is based on an official node image (${s.from})`);
      const major = Number(m[1]);
      assert.equal(major % 2, 0, `node ${major} is an LTS line (even major)`);
      assert.ok(major >= min, `node ${major} satisfies engines ${pkg.engines.node}`);
      assert.ok(major >= 22, `node ${major} is past its end of life`);
    }
  });

  test('the build steps are the package.json scripts CI runs', () => {
    const runs = runCommands(build!);
    assert.ok(runs.some((c) => /^npm ci\b/.test(c)), 'npm ci, as .ci/run');
    assert.match(read('.ci/run'), /^npm ci\b/m, 'CI installs with npm ci too');
    const scripts = runs.flatMap((c) => /^npm run (\S+)/.exec(c)?.[1] ?? []);
    assert.deepEqual(scripts, ['build']);
    for (const s of scripts) assert.ok(pkg.scripts[s], `package.json has script ${s}`);
    // CI's `npm test` builds with the same script.
    assert.match(pkg.scripts.test!, /^npm run build\b/);
    // The build script compiles tsconfig.json's sources: the stage copies both.
    const tsconfig = /-p (\S+)/.exec(pkg.scripts.build!)?.[1] ?? 'tsconfig.json';
    const copied = build!.instructions.filter((i) => i.op === 'COPY').map((i) => i.args.split(' ')[0]);
    assert.ok(copied.includes(tsconfig), `the build stage copies ${tsconfig}`);
    const rootDir = (JSON.parse(read(tsconfig)) as { compilerOptions: { rootDir: string; outDir: string } }).compilerOptions;
    assert.ok(copied.includes(rootDir.rootDir), `the build stage copies ${rootDir.rootDir}`);
    // And every script the build script runs (the bundling of dist/cli.js).
    for (const [, script] of pkg.scripts.build!.matchAll(/\bnode (\S+)/g)) assert.ok(copied.includes(script!), `the build stage copies ${script}`);
    assert.ok(effective(runtime).some((i) => i.op === 'COPY' && i.args === `--from=build /app/${rootDir.outDir} ./${rootDir.outDir}`), 'the runtime copies the compiled output');
  });

  test('the start command is npm start (package.json) and the bin', () => {
    const entry = argv(last(runtime, 'ENTRYPOINT')!);
    const cmd = argv(last(runtime, 'CMD')!);
    // npm start may set environment defaults (VAR=${VAR:-value}) that the image sets with ENV.
    const envDefault = /(\w+)=\$\{\1:-([^}]*)\} /g;
    const defaults = [...pkg.scripts.start.matchAll(envDefault)];
    const command = pkg.scripts.start.replace(envDefault, '');
    assert.equal([...entry, ...cmd].join(' '), command, 'ENTRYPOINT + CMD = npm start');
    assert.equal(entry[1], pkg.bin.pgwarren, 'the entrypoint is the package bin');
    const envs = effective(runtime).filter((i) => i.op === 'ENV').map((i) => i.args).join(' ');
    for (const [, name, value] of defaults) assert.match(envs, new RegExp(`\\b${name}=${value}\\b`), `the image sets ${name}=${value} as npm start does`);
  });

  test('the runtime has production dependencies only, and runs as a non-root user', () => {
    const all = effective(runtime);
    const installs = all.filter((i) => i.op === 'RUN').flatMap((i) => i.args.split('&&').map((c) => c.trim())).filter((c) => /^npm (ci|install)\b/.test(c));
    assert.ok(installs.length > 0);
    for (const c of installs) assert.match(c, /--omit=dev/, `${c} leaves dev dependencies out`);
    assert.ok(all.some((i) => i.op === 'ENV' && /NODE_ENV=production/.test(i.args)));
    const user = last(runtime, 'USER')?.args ?? [...all].reverse().find((i) => i.op === 'USER')?.args;
    assert.ok(user, 'a USER is set');
    assert.ok(!['root', '0', '0:0'].includes(user), `runs as ${user}, not root`);
    // Nothing runs as root after the user switch in the final stage.
    const userAt = runtime.instructions.findIndex((i) => i.op === 'USER');
    assert.ok(!runtime.instructions.slice(userAt).some((i) => i.op === 'USER' && ['root', '0'].includes(i.args)));
  });

  test('HEALTHCHECK on /healthz at PGWARREN_HTTP_PORT, the port exposed, stopped by SIGTERM', () => {
    const port = findOption('http-port')!.default!;
    const health = last(runtime, 'HEALTHCHECK');
    assert.ok(health, 'a HEALTHCHECK');
    assert.match(health.args, /\/healthz/);
    assert.match(health.args, new RegExp(`process\\.env\\.PGWARREN_HTTP_PORT\\|\\|${port}`), 'the port follows PGWARREN_HTTP_PORT, defaulting like pgwarren');
    assert.equal(last(runtime, 'EXPOSE')?.args, port);
    assert.equal(last(runtime, 'STOPSIGNAL')?.args, 'SIGTERM');
    // The shutdown drain the stop grace must outlast, as documented next to STOPSIGNAL.
    assert.match(read('Dockerfile'), new RegExp(`PGWARREN_SHUTDOWN_TIMEOUT \\(default ${findOption('shutdown-timeout')!.default} s\\)`));
  });

  test('no secret or setting is baked in, and the build context leaves them out', () => {
    for (const s of stages) {
      for (const i of s.instructions.filter((x) => x.op === 'ENV' || x.op === 'ARG')) {
        assert.doesNotMatch(i.args, /PASSWORD|SECRET|TOKEN|_URL|PGWARREN_/i, `${s.name}: ${i.op} ${i.args} bakes in configuration`);
      }
      for (const i of s.instructions.filter((x) => x.op === 'COPY' || x.op === 'ADD')) {
        const sources = i.args.split(' ').filter((a) => !a.startsWith('--')).slice(0, -1);
        for (const src of sources) {
          assert.doesNotMatch(src, /^(config|docker)\b|secret|\.env/i, `${s.name} copies ${src}`);
          if (!i.args.includes('--from=')) assert.ok(existsSync(join(root, src)), `${src} exists in the build context`);
        }
      }
    }
    const ignore = read('.dockerignore').split('\n').map((l) => l.trim());
    for (const p of ['node_modules', 'dist', '.git', '.env', '*.env', 'docker']) assert.ok(ignore.includes(p), `.dockerignore lists ${p}`);
    // What the stages copy must not be ignored.
    const copied = stages.flatMap((s) => s.instructions.filter((i) => i.op === 'COPY' && !i.args.includes('--from=')).flatMap((i) => i.args.split(' ').slice(0, -1)));
    for (const src of copied) assert.ok(!ignore.includes(src), `${src} is copied but .dockerignore drops it`);
  });

  test('the examples stage (compose demo) adds the demo scripts to the production image', () => {
    const examples = byName.get('examples');
    assert.ok(examples);
    assert.ok(byName.has(examples.from), 'built on the production stage, so amqplib and pg are there');
    assert.ok(examples.instructions.some((i) => i.op === 'USER' && i.args === 'node'));
    for (const f of ['examples/consumer.mjs', 'examples/load-generator.mjs']) assert.ok(existsSync(join(root, f)));
  });
});
