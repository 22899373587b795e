#!/usr/bin/env node
/**
 * The command line (README "Running without Docker", "Commands"). yargs parses flags only; environment variables, `_FILE`
 * secrets, the config file and defaults are layered by `config/load.ts`, so precedence lives in
 * one place. Exit codes: 0 ok, 1 unexpected, 2 configuration or usage, 3 prerequisite.
 */
import yargs, { type Argv } from 'yargs';
import { hideBin } from 'yargs/helpers';
import { addOptions, flagsFromArgv } from './config/cli-options.js';
import { ConfigError, loadConfig, type Config } from './config/load.js';
import { PrerequisiteError, UsageError } from './errors.js';
import { installSignalHandlers } from './ops/shutdown.js';

const print = (line: string) => process.stdout.write(line + '\n');

function fail(code: number, message: string): never {
  process.stderr.write(`pgwarren: ${message}\n`);
  process.exit(code);
}

function configFrom(argv: Record<string, unknown>): Config {
  return loadConfig({ flags: flagsFromArgv(argv), env: process.env, cwd: process.cwd() });
}

async function execute(argv: Record<string, unknown>, command: (config: Config) => Promise<number>): Promise<void> {
  let config: Config;
  try {
    config = configFrom(argv);
  } catch (err) {
    if (err instanceof ConfigError) fail(2, err.message);
    throw err;
  }
  let code: number;
  try {
    code = await command(config);
  } catch (err) {
    if (err instanceof UsageError) fail(2, err.message);
    if (err instanceof PrerequisiteError) fail(3, err.message);
    fail(1, `unexpected error: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
  }
  process.exit(code);
}

async function main(): Promise<void> {
  const args = hideBin(process.argv);
  const cli: Argv = yargs(args)
    .scriptName('pgwarren')
    .usage('$0 <command> [options]\n\nPostgres change-data-capture to RabbitMQ.')
    .strict()
    .recommendCommands()
    .wrap(Math.min(120, process.stdout.columns ?? 120))
    .fail((msg: string | undefined, err: Error | undefined) => {
      if (err && !(err instanceof UsageError)) throw err;
      fail(2, `${msg ?? err?.message}\nRun "pgwarren --help" for the options.`);
    });
  addOptions(cli, { forHelp: args.some((a) => a === '--help' || a === '-h') });
  cli
    .command(['run', '$0'], 'stream changes from the slot and publish them until SIGTERM/SIGINT', {}, (argv) => {
      // Before anything slow: a signal during start-up must lead to a clean exit, not a kill.
      installSignalHandlers((signal) => {
        process.stderr.write(`pgwarren: second ${signal}: exiting now; unconfirmed changes will be sent again on restart\n`);
        process.exit(0);
      });
      return execute(argv, async (config) => (await import('./commands/run.js')).runCommand(config));
    })
    .command(
      'setup',
      'create the publication and the slot if missing (idempotent)',
      (y) => y.option('replica-identity-full', { type: 'boolean', default: false, describe: 'also set REPLICA IDENTITY FULL on every included table' }),
      (argv) =>
        execute(argv, async (config) =>
          (await import('./commands/admin.js')).setupCommand(config, { replicaIdentityFull: argv['replica-identity-full'] === true }, print),
        ),
    )
    .command(
      'status',
      'show the slot, the publication and each table\'s replica identity',
      (y) => y.option('json', { type: 'boolean', default: false, describe: 'machine-readable output' }),
      (argv) => execute(argv, async (config) => (await import('./commands/admin.js')).statusCommand(config, { json: argv.json === true }, print)),
    )
    .command(
      'check',
      'validate configuration and prerequisites, each printed ok/fail',
      (y) => y.option('json', { type: 'boolean', default: false, describe: 'machine-readable output' }),
      (argv) => execute(argv, async (config) => (await import('./commands/check.js')).checkCommand(config, { json: argv.json === true }, print)),
    )
    .command(
      'snapshot [globs..]',
      'ask the running daemon to publish the current rows of tables (schema.table globs); --list, --cancel ID, --wait. ' +
        '--exchange and --routing-key given here aim the snapshot at that exchange / routing key template',
      (y) =>
        y
          .positional('globs', { type: 'string', array: true, describe: 'schema.table globs of included tables' })
          .option('where', { type: 'string', describe: 'SQL condition: only rows matching it' })
          .option('chunk-size', { type: 'string', describe: 'rows per chunk [default: PGWARREN_SNAPSHOT_CHUNK_SIZE]' })
          .option('rate', { type: 'string', describe: 'at most this many rows per second' })
          .option('list', { type: 'boolean', default: false, describe: "show each snapshot's state and progress" })
          .option('cancel', { type: 'string', describe: 'stop snapshot ID' })
          .option('wait', { type: 'boolean', default: false, describe: 'follow progress until the snapshot ends (a progress bar on a terminal)' })
          .option('json', { type: 'boolean', default: false, describe: 'machine-readable --list' }),
      (argv) =>
        execute(argv, async (config) => {
          const positive = (name: string): number | undefined => {
            const raw = argv[name];
            if (raw === undefined) return undefined;
            if (!/^[1-9][0-9]{0,9}$/.test(String(raw)) || Number(raw) > 2147483647) throw new UsageError(`--${name}: expected a positive integer, got "${String(raw)}"`);
            return Number(raw);
          };
          const where = argv.where as string | undefined;
          if (where !== undefined && where.trim() === '') throw new UsageError('--where: expected an SQL condition');
          return (await import('./commands/snapshot.js')).snapshotCommand(
            config,
            {
              tables: ((argv.globs as string[] | undefined) ?? []).flatMap((t) => String(t).split(',')).map((t) => t.trim()).filter(Boolean),
              where,
              chunkSize: positive('chunk-size'),
              rate: positive('rate'),
              cancel: positive('cancel'),
              exchange: argv.exchange !== undefined ? config.exchange : undefined,
              routingKey: argv['routing-key'] !== undefined ? config.routingKey : undefined,
              list: argv.list === true,
              wait: argv.wait === true,
              json: argv.json === true,
            },
            print,
            { isTTY: process.stderr.isTTY === true, write: (t) => void process.stderr.write(t) },
          );
        }),
    )
    .command(
      'teardown',
      'drop the slot and the publication (refuses without --yes)',
      (y) => y.option('yes', { type: 'boolean', default: false, describe: 'really drop them; unpublished changes in the slot are lost' }),
      (argv) => execute(argv, async (config) => (await import('./commands/admin.js')).teardownCommand(config, { yes: argv.yes === true }, print)),
    )
    .help()
    .alias('help', 'h')
    .version();
  await cli.parseAsync();
}

main().catch((err: unknown) => fail(1, `unexpected error: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`));
