/**
 * Message body compression (PGWARREN_COMPRESSION, README "Shaping the stream"): the last step
 * before a body is written. The AMQP `contentEncoding` property names the encoding as HTTP does
 * (`gzip`, `br`), so consumers know how to read it; `none` leaves bodies as UTF-8 JSON with no
 * `contentEncoding`.
 *
 * Levels favour speed, since this runs once per message in the hot path: gzip level 6 (zlib's
 * default), Brotli quality 5 (its default 11 is an order of magnitude slower for a few percent).
 */
import { brotliCompressSync, constants, gzipSync } from 'node:zlib';

export const COMPRESSIONS = ['none', 'gzip', 'br'] as const;
export type Compression = (typeof COMPRESSIONS)[number];

export interface BodyEncoder {
  /** The `contentEncoding` property, or undefined for `none`. */
  readonly contentEncoding: string | undefined;
  encode(body: string): Buffer;
}

const BROTLI_OPTIONS = { params: { [constants.BROTLI_PARAM_QUALITY]: 5, [constants.BROTLI_PARAM_MODE]: constants.BROTLI_MODE_TEXT } };

export function bodyEncoder(compression: Compression): BodyEncoder {
  switch (compression) {
    case 'none':
      return { contentEncoding: undefined, encode: (body) => Buffer.from(body, 'utf8') };
    case 'gzip':
      return { contentEncoding: 'gzip', encode: (body) => gzipSync(body, { level: 6 }) };
    case 'br':
      return { contentEncoding: 'br', encode: (body) => brotliCompressSync(body, BROTLI_OPTIONS) };
  }
}
