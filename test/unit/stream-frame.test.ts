/**
 * pgwarren's own publish frames (src/sink/stream/frame.ts) against rabbitmq-stream-js-client's
 * encoder: the same bytes, frames within the frame size, every message in order.
 */
import { createRequire } from 'node:module';
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { PublishFrames, encodeMessage, type FrameMessage } from '../../src/sink/stream/frame.js';

const require = createRequire(import.meta.url);
const { PublishRequest } = require('rabbitmq-stream-js-client/dist/requests/publish_request.js') as {
  PublishRequest: new (p: { publisherId: number; messages: { publishingId: bigint; message: unknown }[] }) => { toBuffer(p?: unknown): Buffer };
};

/** The client's message options for `m`, as the sink used to pass them to basicSend. */
function clientMessage(m: FrameMessage): unknown {
  return {
    content: m.content,
    messageProperties: {
      messageId: m.messageId,
      contentType: m.contentType,
      ...(m.contentEncoding ? { contentEncoding: m.contentEncoding } : {}),
      ...(m.creationTimeMs !== undefined ? { creationTime: new Date(m.creationTimeMs) } : {}),
    },
    applicationProperties: { ...m.properties, ...Object.fromEntries((m.more ?? []).flatMap((x, i, a) => (i % 2 ? [] : [[x, a[i + 1]]]))) },
  };
}

const headers = { 'pgwarren-schema': 'public', 'pgwarren-table': 'items', 'pgwarren-op': 'insert', 'pgwarren-lsn': '0/16B3748', 'pgwarren-xid': 7345 };
const samples: FrameMessage[] = [
  { content: Buffer.from('{"id":"0/16B3748:0"}'), messageId: '0/16B3748:0', contentType: 'application/json', creationTimeMs: 1_764_000_000_000, properties: headers, more: ['pgwarren-tx-index', '0', 'pgwarren-publishing-id', '1'] },
  // A body over 255 bytes, a compressed one, no creation time, a batch count, zero and absent values.
  { content: Buffer.alloc(300, 'x'), messageId: '0/1:12', contentType: 'application/json', contentEncoding: 'gzip', properties: { ...headers, 'pgwarren-batch': 40, 'pgwarren-xid': 0, 'pgwarren-error': undefined as unknown as string } },
  // Text that is not ASCII, and strings over 64 units and over 255 bytes.
  { content: Buffer.from('{}'), messageId: 'ü'.repeat(70), contentType: 'application/json', creationTimeMs: 5, properties: { 'pgwarren-schema': 'schéma', 'pgwarren-table': 't'.repeat(100), long: 'é'.repeat(200), longer: 'a'.repeat(300), empty: '' } },
  { content: Buffer.alloc(70_000, 'y'), messageId: 'big', contentType: 'application/json', properties: {} },
  { content: Buffer.alloc(10, 'y'), messageId: 'only more', contentType: 'application/json', properties: {}, more: ['pgwarren-tx-index', '12', 'é', 'x'.repeat(300)] },
];

describe('stream publish frames', () => {
  test('messages are encoded byte for byte as the client encodes them', () => {
    for (const m of samples) {
      const mine = Buffer.alloc(200_000);
      const end = encodeMessage(mine, 0, m);
      const theirs = new PublishRequest({ publisherId: 3, messages: [{ publishingId: 9n, message: clientMessage(m) }] }).toBuffer();
      // The client's frame: size, key, version, publisher id, count, publishing id, message size, message.
      assert.equal(theirs.readUInt32BE(4 + 2 + 2 + 1 + 4 + 8), end, `size of ${m.messageId}`);
      assert.deepEqual(mine.subarray(0, end), theirs.subarray(4 + 2 + 2 + 1 + 4 + 8 + 4), m.messageId);
    }
  });

  test('a frame of several messages is the client frame', () => {
    const frames: Buffer[] = [];
    const f = new PublishFrames(3, 1 << 20, (b) => frames.push(Buffer.from(b)));
    samples.forEach((m, i) => assert.ok(f.add(BigInt(i + 1), m) > 0));
    assert.equal(f.queued, samples.length);
    f.flush();
    assert.equal(frames.length, 1);
    const theirs = new PublishRequest({ publisherId: 3, messages: samples.map((m, i) => ({ publishingId: BigInt(i + 1), message: clientMessage(m) })) }).toBuffer();
    assert.deepEqual(frames[0], theirs);
  });

  test('frames never exceed the frame size; every message is in one, in order; a message over it is refused', () => {
    const frameMax = 4096;
    const frames: Buffer[] = [];
    const f = new PublishFrames(1, frameMax, (b) => frames.push(Buffer.from(b)));
    const ids: bigint[] = [];
    let id = 0n;
    for (let i = 0; i < 500; i++) {
      const m: FrameMessage = { content: Buffer.alloc((i * 37) % 1500, 'z'), messageId: `m${i}`, contentType: 'application/json', properties: { i: String(i) } };
      if (i === 250) {
        assert.equal(f.add(id + 1n, { ...m, content: Buffer.alloc(frameMax) }), -1, 'too large for any frame');
      }
      assert.ok(f.add(++id, m) > 0);
      ids.push(id);
      if (i % 97 === 0) f.flush();
    }
    f.flush();
    const seen: bigint[] = [];
    for (const frame of frames) {
      assert.ok(frame.length <= frameMax, `frame of ${frame.length} bytes`);
      assert.equal(frame.readUInt32BE(0), frame.length - 4);
      assert.equal(frame.readUInt16BE(4), 2);
      const count = frame.readUInt32BE(9);
      let p = 13;
      for (let k = 0; k < count; k++) {
        seen.push(frame.readBigUInt64BE(p));
        p += 12 + frame.readUInt32BE(p + 8);
      }
      assert.equal(p, frame.length);
    }
    assert.deepEqual(seen, ids);
  });
});
