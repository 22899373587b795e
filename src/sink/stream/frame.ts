/**
 * Publish frames (stream protocol command "publish", version 1) encoded by pgwarren itself.
 *
 * Why: rabbitmq-stream-js-client encodes every message twice (once to check its size when it is
 * queued, once into the frame), turns every string into a temporary Buffer just to learn its
 * length, and grows its frame buffer by copying. That was the largest share of the daemon's CPU
 * time with the stream sink (README "Benchmarks"). Here each message is encoded once, straight
 * into a slab that frames are cut from, with its exact size known as it is written, so frames are
 * filled up to the broker's frame size and a message that can never fit one is recognised exactly.
 *
 * The bytes are the client's own: the same AMQP 1.0 sections in the same order with the same
 * encodings (properties as a list of 13 fields, application properties as a map of str8/str32
 * keys and values, ints as int, the body as one data section). test/unit/stream-frame.test.ts
 * compares them with the client's encoder. The client still owns the connection, the producer
 * declaration and the confirms; only the bytes of the publish frames come from here.
 *
 * A frame: size (uint32, not counting itself), key 0x0002 (uint16), version 1 (uint16),
 * publisher id (uint8), message count (uint32), then per message publishing id (uint64), size
 * (uint32) and the encoded message.
 */

/** A message's fields, in the client's MessageOptions terms. */
export interface FrameMessage {
  readonly content: Buffer;
  readonly messageId: string;
  readonly contentType: string;
  readonly contentEncoding?: string;
  /** creation-time in milliseconds since the epoch. */
  readonly creationTimeMs?: number;
  /** Application properties, in the order of the object's entries (as the client writes them). */
  readonly properties: Readonly<Record<string, PropertyValue>>;
  /**
   * More text properties after those, as key, value, key, value: the same bytes as these entries
   * at the end of `properties`, without copying it (keys must not be in `properties`).
   */
  readonly more?: readonly string[];
}

export type PropertyValue = string | number | undefined | null;

const FRAME_HEADER = 4 + 2 + 2 + 1 + 4;
const MESSAGE_HEADER = 8 + 4;
/** Frames are cut from slabs this large (or larger, for one big message). */
const SLAB_BYTES = 1 << 20;

const NULL = 0x40;
const STR8 = 0xa1;
const STR32 = 0xb1;
const SYM8 = 0xa3;
const SYM32 = 0xb3;
const VBIN8 = 0xa0;
const VBIN32 = 0xb0;
const INT = 0x71;
const UINT = 0x70;
const TIMESTAMP = 0x83;
const LIST32 = 0xd0;
const MAP32 = 0xd1;
const SMALL_ULONG = 0x53;
const SECTION_PROPERTIES = 0x73;
const SECTION_APPLICATION_PROPERTIES = 0x74;
const SECTION_DATA = 0x75;

export class PublishFrames {
  private slab: Buffer = Buffer.allocUnsafe(0);
  /** Start of the open frame in the slab (its header is written when it is cut). */
  private start = 0;
  private pos = 0;
  private count = 0;

  /**
   * @param frameMax the broker's frame size: no frame written is larger, its size field included
   * @param write takes a finished frame (a view of a slab that is never written to again)
   */
  constructor(
    private readonly publisherId: number,
    private readonly frameMax: number,
    private readonly write: (frame: Buffer) => void,
  ) {}

  /** Messages in the open frame, not yet handed to `write`. */
  get queued(): number {
    return this.count;
  }

  /**
   * Adds a message to the open frame (writing that frame first when the message does not fit in
   * it). Returns the message's encoded size, or -1 when it is larger than any frame can be:
   * then nothing was added.
   */
  add(publishingId: bigint, m: FrameMessage): number {
    const bound = upperBound(m);
    if (this.slab.length - this.pos < FRAME_HEADER + MESSAGE_HEADER + bound) {
      this.flush();
      if (this.slab.length - this.pos < FRAME_HEADER + MESSAGE_HEADER + bound) {
        this.slab = Buffer.allocUnsafe(Math.max(SLAB_BYTES, FRAME_HEADER + MESSAGE_HEADER + bound));
        this.start = this.pos = 0;
      }
    }
    if (this.count === 0) this.pos = this.start + FRAME_HEADER;
    const at = this.pos;
    const end = encodeMessage(this.slab, at + MESSAGE_HEADER, m);
    const size = end - at - MESSAGE_HEADER;
    if (FRAME_HEADER + MESSAGE_HEADER + size > this.frameMax) {
      if (this.count === 0) this.pos = this.start;
      return -1;
    }
    if (end - this.start > this.frameMax) {
      // The open frame is full: cut it before this message, which moves up to make room for the
      // next frame's header (the slab has room for that: see the bound above).
      const length = end - at;
      this.cut(at);
      this.slab.copyWithin(this.start + FRAME_HEADER, at, end);
      this.pos = this.start + FRAME_HEADER;
      this.writeMessageHeader(this.pos, publishingId, size);
      this.pos += length;
      this.count = 1;
      return size;
    }
    this.writeMessageHeader(at, publishingId, size);
    this.pos = end;
    this.count++;
    return size;
  }

  /** Hands the open frame (if any) to `write`. */
  flush(): void {
    if (this.count > 0) this.cut(this.pos);
  }

  private writeMessageHeader(at: number, publishingId: bigint, size: number): void {
    this.slab.writeBigUInt64BE(publishingId, at);
    this.slab.writeUInt32BE(size, at + 8);
  }

  /** Writes the header of the open frame, which ends at `end`, and hands the frame over. */
  private cut(end: number): void {
    const s = this.slab;
    const start = this.start;
    s.writeUInt32BE(end - start - 4, start);
    s.writeUInt16BE(0x0002, start + 4);
    s.writeUInt16BE(1, start + 6);
    s.writeUInt8(this.publisherId, start + 8);
    s.writeUInt32BE(this.count, start + 9);
    const frame = s.subarray(start, end);
    this.start = this.pos = end;
    this.count = 0;
    this.write(frame);
  }
}

/** Bytes the encoded message can take at most (strings at 3 bytes a UTF-16 unit). */
function upperBound(m: FrameMessage): number {
  let n = m.content.length + 64 + 3 * (m.messageId.length + m.contentType.length + (m.contentEncoding?.length ?? 0));
  const props = m.properties;
  for (const k in props) {
    const v = props[k];
    n += 10 + 3 * k.length + 3 * (typeof v === 'string' ? v.length : 24);
  }
  const more = m.more;
  if (more) for (let i = 0; i < more.length; i++) n += 5 + 3 * more[i]!.length;
  return n;
}

/** The client's amqpEncode without its size prefix: writes `m` at `off`, returns the end. */
export function encodeMessage(b: Buffer, off: number, m: FrameMessage): number {
  // properties: a described list of 13 fields; the size field counts the fields and the count.
  b[off] = 0x00;
  b[off + 1] = SMALL_ULONG;
  b[off + 2] = SECTION_PROPERTIES;
  b[off + 3] = LIST32;
  const propsSizeAt = off + 4;
  b.writeUInt32BE(13, off + 8);
  let p = off + 12;
  p = putString(b, p, m.messageId, STR8, STR32);
  b[p++] = NULL; // user-id
  b[p++] = NULL; // to
  b[p++] = NULL; // subject
  b[p++] = NULL; // reply-to
  b[p++] = NULL; // correlation-id
  p = putString(b, p, m.contentType, SYM8, SYM32);
  p = putString(b, p, m.contentEncoding, SYM8, SYM32);
  b[p++] = NULL; // absolute-expiry-time
  if (m.creationTimeMs !== undefined) {
    b[p] = TIMESTAMP;
    b.writeBigUInt64BE(BigInt(m.creationTimeMs), p + 1);
    p += 9;
  } else b[p++] = NULL;
  b[p++] = NULL; // group-id
  b[p++] = NULL; // group-sequence
  b[p++] = NULL; // reply-to-group-id
  b.writeUInt32BE(p - (off + 12) + 4, propsSizeAt);

  const props = m.properties;
  const at = p;
  let entries = 0;
  p += 12;
  for (const key in props) {
    const value = props[key];
    entries++;
    p = putString(b, p, key, STR8, STR32);
    if (typeof value === 'string') p = putString(b, p, value, STR8, STR32);
    else if (!value) b[p++] = NULL; // as the client: 0, undefined and null are null
    else if ((value | 0) === value) {
      b[p] = INT;
      b.writeInt32BE(value, p + 1);
      p += 5;
    } else if (Number.isInteger(value) && value > 0 && value <= 0xffffffff) {
      // Above int (a transaction id past 2^31): uint, where the client's encoder would throw.
      b[p] = UINT;
      b.writeUInt32BE(value, p + 1);
      p += 5;
    } else p = putString(b, p, String(value), STR8, STR32);
  }
  const more = m.more;
  if (more) {
    for (let i = 0; i + 1 < more.length; i += 2) {
      p = putString(b, p, more[i], STR8, STR32);
      p = putString(b, p, more[i + 1], STR8, STR32);
    }
    entries += more.length >> 1;
  }
  if (entries === 0) p = at; // no section at all, as the client
  else {
    b[at] = 0x00;
    b[at + 1] = SMALL_ULONG;
    b[at + 2] = SECTION_APPLICATION_PROPERTIES;
    b[at + 3] = MAP32;
    b.writeUInt32BE(p - (at + 12) + 4, at + 4);
    b.writeUInt32BE(entries * 2, at + 8);
  }

  b[p] = 0x00;
  b[p + 1] = SMALL_ULONG;
  b[p + 2] = SECTION_DATA;
  const n = m.content.length;
  if (n <= 255) {
    b[p + 3] = VBIN8;
    b[p + 4] = n;
    p += 5;
  } else {
    b[p + 3] = VBIN32;
    b.writeUInt32BE(n, p + 4);
    p += 8;
  }
  return p + m.content.copy(b, p);
}

/**
 * A string as str8/sym8 (up to 255 bytes) or str32/sym32; an empty or absent one as null, as the
 * client writes it. Short ASCII text (every key, most values) is copied unit by unit: cheaper
 * than a call into the UTF-8 encoder for a few bytes.
 */
function putString(b: Buffer, p: number, s: string | undefined, small: number, big: number): number {
  if (!s) {
    b[p] = NULL;
    return p + 1;
  }
  const len = s.length;
  if (len <= 64) {
    let i = 0;
    for (; i < len; i++) {
      const c = s.charCodeAt(i);
      if (c >= 0x80) break;
      b[p + 2 + i] = c;
    }
    if (i === len) {
      b[p] = small;
      b[p + 1] = len;
      return p + 2 + len;
    }
  }
  const bytes = len <= 85 ? -1 : Buffer.byteLength(s, 'utf8');
  if (bytes <= 255) {
    // At most 255 bytes either way (85 UTF-16 units are at most 255 bytes of UTF-8).
    const written = b.write(s, p + 2, 'utf8');
    b[p] = small;
    b[p + 1] = written;
    return p + 2 + written;
  }
  b[p] = big;
  b.writeInt32BE(bytes, p + 1);
  return p + 5 + b.write(s, p + 5, 'utf8');
}
