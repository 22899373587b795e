/**
 * The pure parts of the stream sink: the RabbitMQ 3.10 workaround in the client, partition
 * routing over pgwarren's JSON, event positions, and the stream URL.
 */
import { createRequire } from 'node:module';
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { installStreamCompat, serverKnowsCommandVersions, STREAM_AUTH_FAILED } from '../../src/sink/stream/compat.js';
import { arrayElements, memberText, partitionOf, partitionOfEvent } from '../../src/sink/stream/partition.js';
import { atOrBefore, lsnOf, tailEntryOf } from '../../src/sink/stream/position.js';
import { parseStreamUrl } from '../../src/sink/stream/url.js';
import { partitionNames } from '../../src/sink/stream/topology.js';

const require = createRequire(import.meta.url);

describe('RabbitMQ 3.10 workaround (ExchangeCommandVersions)', () => {
  test('only servers from 3.11 on are asked for command versions', () => {
    for (const v of ['3.9.29', '3.10.8', '3.10.0']) assert.equal(serverKnowsCommandVersions(v), false, v);
    for (const v of ['3.11.0', '3.13.7', '4.0.5', '4.1.0-rc.1', undefined, '', 'unknown']) assert.equal(serverKnowsCommandVersions(v), true, String(v));
  });

  test('the patched client skips the request on 3.10 and sends it unchanged on 3.13', async () => {
    installStreamCompat();
    assert.equal(installStreamCompat(), false, 'idempotent');
    const { Connection } = require('rabbitmq-stream-js-client/dist/connection.js') as {
      Connection: { prototype: { exchangeCommandVersions(this: unknown): Promise<boolean> } };
    };
    const sent: unknown[] = [];
    const fake = (version: string) => ({
      peerProperties: { version },
      serverDeclaredVersions: [] as unknown[],
      logger: { error: () => undefined, warn: () => undefined, info: () => undefined, debug: () => undefined },
      get serverVersions() {
        return this.serverDeclaredVersions;
      },
      sendAndWait: async (req: unknown) => {
        sent.push(req);
        return { serverDeclaredVersions: [] };
      },
    });
    assert.equal(await Connection.prototype.exchangeCommandVersions.call(fake('3.10.8')), true);
    assert.equal(sent.length, 0, 'nothing sent to a 3.10 broker (it would close the connection)');
    await Connection.prototype.exchangeCommandVersions.call(fake('3.13.7'));
    assert.equal(sent.length, 1, 'the client request goes out as before on 3.13');
    assert.equal((sent[0] as { key: number }).key, 0x1b, 'ExchangeCommandVersions');
  });

  test('frames are written without formatting their bytes for a debug line first', async () => {
    installStreamCompat();
    const { Connection } = require('rabbitmq-stream-js-client/dist/connection.js') as {
      Connection: { prototype: { send(this: unknown, cmd: unknown): Promise<void> } };
    };
    const frame = Buffer.from([1, 2, 3]);
    frame.toJSON = () => {
      throw new Error('toJSON called');
    };
    const written: Buffer[] = [];
    const fake = (readyState: string) => ({
      logger: { debug: () => undefined },
      getBufferSizeParams: () => ({ maxSize: 1024 }),
      socket: { readyState, write: (b: Buffer, cb: (err?: Error) => void) => (written.push(b), cb()) },
    });
    await Connection.prototype.send.call(fake('open'), { key: 2, toBuffer: () => frame });
    assert.deepEqual(written, [frame]);
    const closed = Connection.prototype.send.call(fake('closed'), { key: 2, toBuffer: () => frame });
    const settled = await Promise.race([closed.then(() => 'settled'), new Promise((r) => setTimeout(() => r('pending'), 20))]);
    assert.equal(settled, 'pending', 'like the client: nothing written, never settles, on a closed socket');
    assert.equal(written.length, 1);
  });

  test('a refused login rejects the connect attempt with a code instead of an unhandled rejection', async () => {
    installStreamCompat();
    const { Connection } = require('rabbitmq-stream-js-client/dist/connection.js') as {
      Connection: { prototype: { auth(this: unknown, p: unknown): Promise<unknown> } };
    };
    let destroyedWith: (Error & { code?: string }) | undefined;
    const fake = {
      socket: { destroy: (e: Error) => (destroyedWith = e) },
      logger: { debug: () => undefined },
      sendAndWait: async () => ({ mechanisms: ['PLAIN'], ok: false, code: 8 }),
    };
    const pending = Connection.prototype.auth.call(fake, { mechanism: 'PLAIN', username: 'u', password: 'p' });
    const settled = await Promise.race([pending.then(() => 'settled'), new Promise((r) => setTimeout(() => r('pending'), 50))]);
    assert.equal(settled, 'pending', 'the listener awaiting it never continues');
    assert.equal(destroyedWith?.code, STREAM_AUTH_FAILED);
  });
});

describe('partition routing', () => {
  const event = (key: string) =>
    `{"id":"0/1A:3","op":"update","schema":"public","table":"orders","key":${key},"old":null,"new":{"id":1,"s":"a\\",\\"key\\":x"},"changed":null}`;

  test('reads the key member of pgwarren JSON, strings with quotes and nesting included', () => {
    assert.equal(memberText(event('{"id":42}'), 'key'), '{"id":42}');
    assert.equal(memberText(event('{"a":"x,\\"}y","b":[1,{"c":null}]}'), 'key'), '{"a":"x,\\"}y","b":[1,{"c":null}]}');
    assert.equal(memberText(event('null'), 'key'), 'null');
    assert.equal(memberText(event('{"id":1}'), 'op'), '"update"');
    assert.equal(memberText('{"id":"x"}', 'key'), null);
  });

  test('splits a batch into its events', () => {
    const a = event('{"id":1}');
    const b = event('{"id":"]"}');
    assert.deepEqual(arrayElements(`[${a},${b}]`), [a, b]);
    assert.deepEqual(arrayElements('[]'), []);
  });

  test('a row always maps to the same partition; rows spread; one partition means 0', () => {
    const p = partitionOfEvent('public', 'orders', event('{"id":7}'), 4);
    for (let i = 0; i < 3; i++) assert.equal(partitionOfEvent('public', 'orders', event('{"id":7}'), 4), p);
    const seen = new Set<number>();
    for (let id = 0; id < 100; id++) seen.add(partitionOf('public', 'orders', `{"id":${id}}`, 4));
    assert.equal(seen.size, 4);
    assert.equal(partitionOf('public', 'orders', '{"id":1}', 1), 0);
    // The table is part of the hash: the same key in two tables is two rows.
    const t = new Set<number>();
    for (let i = 0; i < 20; i++) t.add(partitionOf('public', `t${i}`, '{"id":1}', 8));
    assert.ok(t.size > 1);
  });

  test('partition streams are named like RabbitMQ super streams name them', () => {
    assert.deepEqual(partitionNames('cdc', 1), ['cdc']);
    assert.deepEqual(partitionNames('cdc', 3), ['cdc-0', 'cdc-1', 'cdc-2']);
  });
});

describe('positions', () => {
  test('LSNs are 64-bit and order by value', () => {
    assert.equal(lsnOf('0/1A2B3C4'), 0x1a2b3c4n);
    assert.equal(lsnOf('FFFFFFFF/FFFFFFFF'), 0xffffffffffffffffn);
    assert.ok(lsnOf('10/0') > lsnOf('F/FFFFFFFF'));
    assert.throws(() => lsnOf('nope'));
  });

  test('at or before: by commit LSN, then by index in the transaction', () => {
    const last = { lsn: 100n, index: 5 };
    assert.equal(atOrBefore({ lsn: 99n, index: 1_000_000 }, last), true);
    assert.equal(atOrBefore({ lsn: 100n, index: 5 }, last), true);
    assert.equal(atOrBefore({ lsn: 100n, index: 6 }, last), false);
    assert.equal(atOrBefore({ lsn: 101n, index: 0 }, last), false);
  });

  test('the tail entry comes from the application properties, publishing ids beyond 2^53 intact', () => {
    assert.deepEqual(tailEntryOf({ 'pgwarren-lsn': 'FFFFFFFF/FFFFFFFE', 'pgwarren-tx-index': '2999999', 'pgwarren-publishing-id': '18446744073709551615' }), {
      publishingId: 18446744073709551615n,
      position: { lsn: 0xfffffffffffffffen, index: 2999999 },
    });
    assert.equal(tailEntryOf({ 'pgwarren-lsn': '0/1' }), null, 'a message pgwarren did not write');
    assert.equal(tailEntryOf(undefined), null);
  });
});

describe('stream URL', () => {
  test('host, port, credentials, vhost, TLS', () => {
    assert.deepEqual(parseStreamUrl('rabbitmq-stream://guest:guest@localhost:5552/'), {
      hostname: 'localhost', port: 5552, username: 'guest', password: 'guest', vhost: '/', tls: false,
    });
    assert.deepEqual(parseStreamUrl('rabbitmq-stream+tls://u:p%40ss@rabbit.example/prod'), {
      hostname: 'rabbit.example', port: 5551, username: 'u', password: 'p@ss', vhost: 'prod', tls: true,
    });
    assert.equal(parseStreamUrl('rabbitmq-stream://h:1/%2F').vhost, '/');
  });
});
