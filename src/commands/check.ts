/**
 * `pgwarren check`: every prerequisite, each printed ok/fail with the fix. Exit 0 only when all
 * pass, 3 otherwise. Side-effect free except a temporary slot used to prove wal2json is loadable
 * (temporary slots vanish with the session).
 */
import type { Channel, ChannelModel } from 'amqplib';
import type { Config } from '../config/load.js';
import { quoteIdent } from '../source/decoder.js';
import { redactUrl } from '../config/load.js';
import { OperationSelection, TableSelection } from '../filter/selection.js';
import { UsageError } from '../errors.js';
import { slotState } from '../source/slot-admin.js';
import { keylessPublicationName, planTables, publicationTables, selectedTables } from '../source/publication.js';
import { rowFilterLookup } from '../filter/publication-plan.js';
import { within, type QueryFn } from '../shared/pg-query.js';
import { withDatabase, type Print } from './admin.js';
import { classifyConnectError, errorText } from '../sink/amqp-sink.js';
import { closeAmqp, connectAmqp } from '../sink/amqp-connect.js';
import { tableName } from '../shared/table-name.js';

interface CheckResult {
  name: string;
  ok: boolean;
  detail: string;
  fix?: string;
}

export async function checkCommand(config: Config, opts: { json: boolean }, print: Print): Promise<number> {
  const results: CheckResult[] = [];
  const add = (r: CheckResult) => results.push(r);
  try {
    await withDatabase(config, (query) => postgresChecks(config, query, add));
  } catch (err) {
    add({ name: 'postgres connection', ok: false, detail: errorText(err), fix: 'Check PGWARREN_DATABASE_URL (or DATABASE_URL / PG* variables) and that Postgres accepts the connection.' });
  }
  // The stdout sink needs no broker; a single stream needs only the stream port; partitions
  // also need AMQP (the super-stream exchange and bindings are declared over it).
  if (config.sink === 'amqp' || (config.sink === 'stream' && config.streamPartitions > 1)) await brokerChecks(config, add, config.sink === 'amqp');
  if (config.sink === 'stream') await streamCheck(config, add);
  if (opts.json) print(JSON.stringify({ ok: results.every((r) => r.ok), checks: results }, null, 2));
  else {
    for (const r of results) {
      print(`${r.ok ? 'ok  ' : 'FAIL'}  ${r.name}: ${r.detail}`);
      if (!r.ok && r.fix) print(`      fix: ${r.fix}`);
    }
  }
  return results.every((r) => r.ok) ? 0 : 3;
}

async function postgresChecks(config: Config, query: QueryFn, add: (r: CheckResult) => void): Promise<void> {
  add({ name: 'postgres connection', ok: true, detail: 'connected' });
  const settings = await query<{ name: string; setting: string }>(
    `SELECT name, setting FROM pg_settings WHERE name IN ('wal_level', 'max_replication_slots', 'max_wal_senders')`,
  );
  const s = Object.fromEntries(settings.rows.map((r) => [r.name, r.setting]));
  add({
    name: 'wal_level',
    ok: s.wal_level === 'logical',
    detail: `wal_level = ${s.wal_level}`,
    fix: 'ALTER SYSTEM SET wal_level = logical; then restart Postgres.',
  });
  const used = await query<{ n: number }>('SELECT count(*)::int AS n FROM pg_replication_slots');
  const slot = await slotState(query, config.slot);
  const freeSlots = Number(s.max_replication_slots) - used.rows[0]!.n;
  add({
    name: 'replication slots',
    ok: slot.exists || freeSlots > 0,
    detail: `max_replication_slots = ${s.max_replication_slots}, ${used.rows[0]!.n} used; max_wal_senders = ${s.max_wal_senders}`,
    fix: 'Raise max_replication_slots (and max_wal_senders) in postgresql.conf and restart, or drop unused slots.',
  });
  const role = await query<{ rolname: string; rolreplication: boolean; rolsuper: boolean }>(
    'SELECT rolname, rolreplication, rolsuper FROM pg_roles WHERE rolname = current_user',
  );
  const r = role.rows[0]!;
  add({
    name: 'REPLICATION privilege',
    ok: r.rolreplication || r.rolsuper,
    detail: `role ${r.rolname}${r.rolsuper ? ' is superuser' : r.rolreplication ? ' has REPLICATION' : ' lacks REPLICATION'}`,
    fix: `ALTER ROLE ${r.rolname} WITH REPLICATION;`,
  });
  const tables = await selectedTables(query, new TableSelection(config.tables, config.excludeTables));
  // By OID, not by name: resolving a name in a schema the role may not use would itself fail.
  const unreadable: string[] = [];
  const noUsage = new Set<string>();
  for (const t of tables) {
    const p = await query<{ usage: boolean; select: boolean }>(
      `SELECT has_schema_privilege(n.oid, 'USAGE') AS usage, has_table_privilege(c.oid, 'SELECT') AS select
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2`,
      [t.schema, t.table],
    );
    const row = p.rows[0];
    if (!row) continue; // dropped since it was listed
    if (!row.usage) noUsage.add(t.schema);
    if (!row.usage || !row.select) unreadable.push(`${sqlName(t.schema)}.${sqlName(t.table)}`);
  }
  const grants = [
    ...[...noUsage].map((schema) => `GRANT USAGE ON SCHEMA ${sqlName(schema)} TO ${sqlName(r.rolname)};`),
    `GRANT SELECT ON ${unreadable.join(', ') || '<tables>'} TO ${sqlName(r.rolname)};`,
  ];
  add({
    name: 'SELECT on tables',
    ok: unreadable.length === 0,
    detail: unreadable.length === 0 ? `${tables.length} selected table(s) readable` : `no SELECT on ${unreadable.join(', ')}`,
    fix: grants.join(' '),
  });
  if (slot.exists) {
    add({
      name: 'slot',
      ok: slot.plugin === config.plugin && slot.walStatus !== 'lost' && slot.database === config.database.database,
      detail: `"${config.slot}" exists, plugin ${slot.plugin}, database ${slot.database}, wal_status ${slot.walStatus}${slot.active ? `, in use by pid ${slot.activePid}` : ''}`,
      fix:
        slot.walStatus === 'lost'
          ? 'The slot was invalidated: re-sync consumers, then "pgwarren teardown --yes" and "pgwarren setup".'
          : `Set PGWARREN_PLUGIN=${slot.plugin} or choose another PGWARREN_SLOT.`,
    });
  } else {
    add({ name: 'slot', ok: true, detail: `"${config.slot}" does not exist yet; run or setup creates it` });
    if (config.plugin === 'wal2json') await pluginCheck(query, add);
  }
  if (config.plugin === 'pgoutput') {
    const pub = await publicationTables(query, config.publication);
    const ops = new OperationSelection(config.operations);
    if (config.rules.some((r) => r.where !== undefined)) {
      // The checks `run` makes before a row filter goes into the publication (README "Shaping the stream").
      try {
        await planTables(query, tables, undefined, ops, rowFilterLookup(config.rules));
        add({ name: 'row filters', ok: true, detail: 'the columns they use exist and, where updates or deletes are published, belong to the replica identity' });
      } catch (err) {
        if (!(err instanceof UsageError)) throw err;
        add({ name: 'row filters', ok: false, detail: err.message, fix: 'Use only key columns in where:, or set REPLICA IDENTITY FULL on the table, or publish only inserts.' });
      }
    }
    // Postgres decodes each change with the publications as they were when it was made: a
    // publication created after the slot cannot decode what the slot already holds.
    const olderSlotFix =
      `The slot is older than the publication it would use, and Postgres cannot decode the changes it holds with a publication created later: ` +
      `re-sync consumers, then "pgwarren teardown --yes" and "pgwarren setup" (publications first, then the slot).`;
    if (pub === null && slot.exists) {
      add({ name: 'publication', ok: false, detail: `"${config.publication}" does not exist, but slot "${config.slot}" does`, fix: olderSlotFix });
    } else if (pub === null) {
      add({ name: 'publication', ok: true, detail: `"${config.publication}" does not exist yet; run or setup creates it (needs table ownership)` });
    } else {
      // Tables without a replica identity belong in the keyless companion (see planTables).
      const plan = await planTables(query, tables, undefined, ops);
      const keylessName = keylessPublicationName(config.publication);
      const keyless = await publicationTables(query, keylessName);
      const names = (list: readonly { schema: string; table: string }[]) => list.map((t) => tableName(t.schema, t.table));
      const have = new Set(names(pub));
      const haveKeyless = new Set(names(keyless ?? []));
      const missing = [
        ...names(plan.publish).filter((t) => !have.has(t)),
        ...names(plan.withoutIdentity).filter((t) => !haveKeyless.has(t)).map((t) => `${t} (in "${keylessName}")`),
        ...(keyless === null ? [`the publication "${keylessName}"`] : []),
      ];
      const limited = names(plan.withoutIdentity);
      add({
        name: 'publication',
        ok: missing.length === 0,
        detail:
          (missing.length === 0 ? `"${config.publication}" covers the ${tables.length} selected table(s)` : `"${config.publication}" lacks ${missing.join(', ')}`) +
          (limited.length > 0 ? `; inserts and truncates only (no primary key or replica identity): ${limited.join(', ')}` : ''),
        fix: keyless === null && slot.exists ? olderSlotFix : `Run "pgwarren setup" as the tables' owner (publishes ${ops.publishParameter()}).`,
      });
    }
  }
}

async function pluginCheck(query: QueryFn, add: (r: CheckResult) => void): Promise<void> {
  const name = `pgwarren_check_${process.pid}`;
  try {
    await query("SET statement_timeout = '10s'");
    // Bounded by the statement_timeout above, which keeps the connection usable when it fires.
    await query('SELECT pg_create_logical_replication_slot($1, $2, true)', [name, 'wal2json'], { timeoutMs: 0 });
    await query('SELECT pg_drop_replication_slot($1)', [name]);
    add({ name: 'output plugin', ok: true, detail: 'wal2json loads' });
  } catch (err) {
    add({ name: 'output plugin', ok: false, detail: `wal2json: ${errorText(err)}`, fix: 'Install wal2json on the Postgres server (Debian: apt-get install postgresql-15-wal2json) or use PGWARREN_PLUGIN=pgoutput.' });
  }
}

async function streamCheck(config: Config, add: (r: CheckResult) => void): Promise<void> {
  const url = redactUrl(config.streamUrl);
  try {
    // Loaded only for the stream sink: the stream client is slow to load.
    const [{ probeStream }, { serverKnowsCommandVersions }] = await Promise.all([import('../sink/stream/stream-sink.js'), import('../sink/stream/compat.js')]);
    const { version } = await probeStream(config.streamUrl);
    const note = serverKnowsCommandVersions(version) ? '' : ' (before 3.11: pgwarren skips the command-version exchange and declares super streams over AMQP)';
    add({ name: 'stream protocol', ok: true, detail: `${url} reachable, RabbitMQ ${version}${note}` });
  } catch (err) {
    add({
      name: 'stream protocol',
      ok: false,
      detail: `${url}: ${errorText(err)}`,
      fix:
        'Enable the stream plugin on the broker: "rabbitmq-plugins enable rabbitmq_stream" (it listens on 5552; in Docker also publish that port), ' +
        'and check PGWARREN_STREAM_URL and its credentials.',
    });
  }
}

async function brokerChecks(config: Config, add: (r: CheckResult) => void, exchanges = true): Promise<void> {
  for (const url of config.amqpUrls) {
    let model: ChannelModel | null = null;
    try {
      // The connection `run` makes (README: TLS), so a broker run reaches is one check reaches.
      const tls = { ca: config.amqpCa, cert: config.amqpCert, key: config.amqpKey };
      const connecting = connectAmqp(url, { tls, timeoutMs: config.connectTimeout * 1000, heartbeatSeconds: config.brokerHeartbeat, connectionName: 'pgwarren-check' }).catch((err: unknown) => {
        throw classifyConnectError(err, url);
      });
      // Abandoned after the deadline: close it if it still opens.
      model = await within(connecting, config.connectTimeout * 1000, `connecting to ${redactUrl(url)}`, () => void connecting.then(closeAmqp).catch(() => undefined));
      model.on('error', () => undefined);
      add({ name: 'broker', ok: true, detail: `${redactUrl(url)} reachable` });
      const names = exchanges ? [config.exchange, ...config.rules.flatMap((r) => (r.exchange ? [r.exchange] : []))] : [];
      for (const exchange of new Set(names)) add(await within(exchangeCheck(model, exchange, config.exchangeType), config.queryTimeout * 1000, `checking exchange ${exchange}`));
      if (exchanges && !names.includes(config.deadLetterExchange)) add(await within(exchangeCheck(model, config.deadLetterExchange, 'topic'), config.queryTimeout * 1000, `checking exchange ${config.deadLetterExchange}`));
      // AMQP does not tell a client the broker's max_message_size: say what must hold (README: Dead letters).
      add({
        name: 'max message size',
        ok: true,
        detail:
          `warning: PGWARREN_MAX_MESSAGE_BYTES = ${config.maxMessageBytes}; it must not exceed the broker's max_message_size ` +
          `(rabbitmq.conf; RabbitMQ's default 134217728). Above it, a bigger body closes the channel and costs reconnects before it is dead-lettered`,
      });
    } catch (err) {
      add({ name: 'broker', ok: false, detail: errorText(err), fix: 'Check PGWARREN_AMQP_URL, credentials, PGWARREN_AMQP_CA/CERT/KEY for amqps://, and that RabbitMQ is running.' });
    } finally {
      if (model) await closeAmqp(model);
    }
  }
}

async function exchangeCheck(model: ChannelModel, exchange: string, type: string): Promise<CheckResult> {
  const probe = async (fn: (ch: Channel) => Promise<unknown>) => {
    const ch = await model.createChannel();
    ch.on('error', () => undefined);
    try {
      await fn(ch);
      return null;
    } catch (err) {
      return err;
    } finally {
      await ch.close().catch(() => undefined);
    }
  };
  const missing = await probe((ch) => ch.checkExchange(exchange));
  if (missing) return { name: `exchange ${exchange}`, ok: true, detail: 'does not exist yet; run declares it' };
  const mismatch = await probe((ch) => ch.assertExchange(exchange, type, { durable: true }));
  return mismatch
    ? { name: `exchange ${exchange}`, ok: false, detail: `exists but is not a durable ${type} exchange: ${errorText(mismatch)}`, fix: `Delete the exchange or set PGWARREN_EXCHANGE_TYPE to its type.` }
    : { name: `exchange ${exchange}`, ok: true, detail: `durable ${type} exchange` };
}

/** An identifier as a person would type it in a fix: quoted only where SQL needs the quotes. */
function sqlName(name: string): string {
  return /^[a-z_][a-z0-9_$]*$/.test(name) ? name : quoteIdent(name);
}
