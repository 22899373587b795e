/**
 * A TCP fault proxy the test controls, in front of Postgres or RabbitMQ: the daemon connects to
 * the proxy, the proxy to the real server, and the test decides what the path does.
 *
 * Two independent settings, so faults can be combined:
 * - admission, what happens to a NEW connection:
 *     accept    - connect upstream and forward (subject to the flow setting)
 *     refuse    - accepted by the kernel, then closed at once (the peer sees a reset/close)
 *     down      - the listening socket is closed: connect() fails with ECONNREFUSED; reopened on
 *                 the same port when admission changes again
 *     blackhole - accepted, never answered, nothing forwarded (a silent peer): the client's bytes
 *                 are read and dropped, no upstream connection is made
 * - flow, what happens to bytes on LIVE connections:
 *     pass      - forwarded as they come
 *     freeze    - nothing forwarded in either direction; bytes are held (the sockets are paused,
 *                 TCP back-pressure keeps the rest in the kernel) and delivered on `resume()`
 *     slow      - every chunk waits `delayMs` before it is forwarded, in order; optionally split
 *                 into pieces of `chunkBytes`, each waiting `delayMs`
 * Plus one-shot actions on live connections:
 *     cut()          - destroy every live connection (both sides see the close)
 *     cutMidFrame(n) - the next chunk (in the chosen direction) is forwarded only up to its first
 *                      n bytes, then that connection is destroyed: the reader holds half a frame;
 *                      `every: true` keeps it armed for every connection until `disarm()`
 *     blackhole()    - also silences live connections: their upstream side is closed (the server
 *                      sees the client go), the client side stays open and gets nothing, forever
 *                      (it must time out by itself; `pass()` does not revive it)
 */
import net from 'node:net';
import { claimPort, PORT_RANGE } from './ports.js';

export type Admission = 'accept' | 'refuse' | 'down' | 'blackhole';
export type Flow = 'pass' | 'freeze' | 'slow';
export type Direction = 'toServer' | 'toClient';

export interface SlowSettings {
  /** Delay of each forwarded chunk (or piece), in ms. */
  readonly delayMs: number;
  /** Split chunks into pieces of at most this many bytes, each delayed: a throttle. */
  readonly chunkBytes?: number;
}

export interface FaultProxy {
  readonly port: number;
  readonly admission: Admission;
  readonly flow: Flow;
  /** `url` (postgres:// or amqp://) with its host and port replaced by the proxy's. */
  via(url: string): string;
  /** Back to normal: accept new connections, forward everything held. Silenced connections stay silent. */
  pass(): Promise<void>;
  refuse(): Promise<void>;
  /** Stop listening: new connections get ECONNREFUSED. */
  down(): Promise<void>;
  /** New connections accepted and never answered; live connections silenced. */
  blackhole(): Promise<void>;
  accept(): Promise<void>;
  freeze(): void;
  slow(settings: SlowSettings): void;
  /** Flow back to pass: held bytes are delivered. */
  resume(): void;
  /** Destroy every live connection; returns how many there were. */
  cut(): number;
  /** Resolves when a connection was cut mid-chunk (the first one, when `every`). */
  cutMidFrame(bytes: number, opts?: { direction?: Direction | 'any'; every?: boolean }): Promise<void>;
  disarm(): void;
  /** Live connections (forwarding, frozen or silenced). */
  connections(): number;
  /** Connections accepted so far (refused ones included): evidence that the client tried again. */
  accepted(): number;
  /** Bytes forwarded to the server and to the client so far. */
  forwarded(): { toServer: number; toClient: number };
  /**
   * When a live connection last got a byte from the server (Date.now(); 0 if none did), latest
   * first; `opening` picks connections by the first bytes their client sent.
   */
  lastToClientAt(opening?: (firstBytes: Buffer) => boolean): number;
  close(): Promise<void>;
}

interface Arm {
  bytes: number;
  direction: Direction | 'any';
  every: boolean;
  fired: boolean;
  resolve: () => void;
}

interface Pair {
  readonly client: net.Socket;
  readonly upstream: net.Socket | null;
  silent: boolean;
  dead: boolean;
  readonly pumps: Pump[];
  /** The client's first chunk (a Postgres startup packet names a replication connection). */
  opening: Buffer | null;
  lastToClient: number;
}

/** One direction of a pair: a queue of chunks read from `from`, written to `to` as the flow allows. */
interface Pump {
  readonly from: net.Socket;
  readonly to: net.Socket;
  readonly direction: Direction;
  readonly queue: Buffer[];
  timer: NodeJS.Timeout | null;
  waitingDrain: boolean;
}

/** Let queues grow this long before reading stops (bounds memory under `slow`). */
const MAX_QUEUED = 64;

export interface FaultProxyOptions {
  /** Ports to try first, in order; then any free port. */
  readonly preferPorts?: readonly number[];
}

/** Ports whose text contains "403": a classifier that greps messages for 403 trips on them. */
const PORTS_403 = Array.from({ length: PORT_RANGE.to - PORT_RANGE.from }, (_, i) => i + PORT_RANGE.from).filter((p) => String(p).includes('403'));

/** Random ports whose text contains "403", all in the range test ports are claimed from. */
export function ports403(count = 8): number[] {
  return Array.from({ length: count }, () => PORTS_403[Math.floor(Math.random() * PORTS_403.length)]!);
}

export async function startFaultProxy(target: { host: string; port: number }, options: FaultProxyOptions = {}): Promise<FaultProxy> {
  const pairs = new Set<Pair>();
  let admission: Admission = 'accept';
  let flow: Flow = 'pass';
  let slowSettings: SlowSettings = { delayMs: 0 };
  let arm: Arm | null = null;
  let acceptedCount = 0;
  const bytes = { toServer: 0, toClient: 0 };
  let closed = false;

  const destroy = (pair: Pair) => {
    if (pair.dead) return;
    pair.dead = true;
    for (const p of pair.pumps) if (p.timer) clearTimeout(p.timer);
    pair.client.destroy();
    pair.upstream?.destroy();
    pairs.delete(pair);
  };

  const silence = (pair: Pair) => {
    if (pair.silent || pair.dead) return;
    pair.silent = true;
    for (const p of pair.pumps) {
      if (p.timer) clearTimeout(p.timer);
      p.timer = null;
      p.queue.length = 0;
    }
    pair.upstream?.removeAllListeners('close');
    pair.upstream?.on('error', () => undefined);
    pair.upstream?.destroy();
    // Keep reading the client's bytes (and dropping them) so it never sees back-pressure either.
    pair.client.resume();
  };

  const send = (pair: Pair, pump: Pump, chunk: Buffer) => {
    const a = arm;
    if (a && !a.fired && (a.direction === 'any' || a.direction === pump.direction)) {
      if (!a.every) a.fired = true;
      const part = chunk.subarray(0, Math.min(a.bytes, Math.max(0, chunk.length - 1)));
      bytes[pump.direction] += part.length;
      pair.dead = true; // nothing more goes through this pair
      pairs.delete(pair);
      pump.to.write(part, () => {
        pair.client.destroy();
        pair.upstream?.destroy();
      });
      a.resolve();
      return;
    }
    bytes[pump.direction] += chunk.length;
    if (pump.direction === 'toClient') pair.lastToClient = Date.now();
    if (!pump.to.write(chunk) && !pump.waitingDrain) {
      pump.waitingDrain = true;
      pump.from.pause();
      pump.to.once('drain', () => {
        pump.waitingDrain = false;
        if (flow !== 'freeze' && !pair.dead) pump.from.resume();
        run(pair, pump);
      });
    }
  };

  const run = (pair: Pair, pump: Pump) => {
    if (pair.dead || pair.silent || pump.timer) return;
    while (pump.queue.length > 0) {
      if (flow === 'freeze' || pump.waitingDrain || pair.dead) return;
      if (flow === 'slow') {
        const piece = slowSettings.chunkBytes;
        pump.timer = setTimeout(() => {
          pump.timer = null;
          if (pair.dead || pair.silent) return;
          let chunk = pump.queue.shift();
          if (!chunk) return;
          if (piece && chunk.length > piece) {
            pump.queue.unshift(chunk.subarray(piece));
            chunk = chunk.subarray(0, piece);
          }
          send(pair, pump, chunk);
          if (pump.queue.length < MAX_QUEUED && flow !== 'freeze' && !pump.waitingDrain) pump.from.resume();
          run(pair, pump);
        }, slowSettings.delayMs);
        return;
      }
      send(pair, pump, pump.queue.shift()!);
    }
  };

  const makePump = (pair: Pair, from: net.Socket, to: net.Socket, direction: Direction): Pump => {
    const pump: Pump = { from, to, direction, queue: [], timer: null, waitingDrain: false };
    from.on('data', (chunk: Buffer) => {
      if (pair.silent || pair.dead) return;
      if (direction === 'toServer' && !pair.opening) pair.opening = chunk;
      pump.queue.push(chunk);
      if (pump.queue.length >= MAX_QUEUED || flow === 'freeze') from.pause();
      run(pair, pump);
    });
    return pump;
  };

  const onConnection = (client: net.Socket) => {
    acceptedCount++;
    client.on('error', () => undefined);
    if (admission === 'refuse' || closed) {
      client.destroy();
      return;
    }
    if (admission === 'blackhole') {
      const pair: Pair = { client, upstream: null, silent: true, dead: false, pumps: [], opening: null, lastToClient: 0 };
      pairs.add(pair);
      client.on('data', () => undefined);
      client.on('close', () => destroy(pair));
      return;
    }
    const upstream = net.connect(target);
    upstream.on('error', () => undefined);
    const pair: Pair = { client, upstream, silent: false, dead: false, pumps: [], opening: null, lastToClient: 0 };
    pair.pumps.push(makePump(pair, client, upstream, 'toServer'), makePump(pair, upstream, client, 'toClient'));
    pairs.add(pair);
    if (flow === 'freeze') {
      client.pause();
      upstream.pause();
    }
    client.on('close', () => destroy(pair));
    upstream.on('close', () => {
      if (!pair.silent) destroy(pair);
    });
  };

  let server = net.createServer(onConnection);
  const listen = (port: number) =>
    new Promise<void>((resolve, reject) => {
      const onError = (err: Error) => reject(err);
      server.once('error', onError);
      server.listen(port, '127.0.0.1', () => {
        server.off('error', onError);
        resolve();
      });
    });
  // The port is claimed for this process (../support/ports.ts): while the proxy is `down` its
  // listener is closed, and no other test file may take the port before it is reopened.
  const port = await claimPort(async (p) => {
    try {
      await listen(p);
      return true;
    } catch {
      server = net.createServer(onConnection);
      return false;
    }
  }, options.preferPorts);
  let listening = true;

  const closeListener = () =>
    new Promise<void>((resolve) => {
      if (!listening) return resolve();
      listening = false;
      server.close(() => resolve());
    });
  const reopen = async () => {
    if (listening || closed) return;
    // The port stays claimed for this process, but a program outside the tests may still take it,
    // or the old listener may linger a moment: retry briefly.
    for (let i = 0; ; i++) {
      server = net.createServer(onConnection);
      try {
        await listen(port);
        listening = true;
        return;
      } catch (err) {
        if (i >= 20) throw err;
        await new Promise((r) => setTimeout(r, 100));
      }
    }
  };
  const setAdmission = async (a: Admission) => {
    admission = a;
    if (a === 'down') await closeListener();
    else await reopen();
  };
  const resumeAll = () => {
    flow = 'pass';
    for (const pair of [...pairs]) {
      if (pair.silent || pair.dead) continue;
      for (const pump of pair.pumps) {
        if (pump.timer) {
          clearTimeout(pump.timer);
          pump.timer = null;
        }
        if (!pump.waitingDrain) pump.from.resume();
        run(pair, pump);
      }
    }
  };

  const proxy: FaultProxy = {
    port,
    get admission() {
      return admission;
    },
    get flow() {
      return flow;
    },
    via(url: string) {
      const u = new URL(url);
      u.hostname = '127.0.0.1';
      u.port = String(port);
      return u.toString();
    },
    async pass() {
      arm = null;
      await setAdmission('accept');
      resumeAll();
    },
    refuse: () => setAdmission('refuse'),
    down: () => setAdmission('down'),
    async blackhole() {
      await setAdmission('blackhole');
      for (const pair of [...pairs]) silence(pair);
    },
    accept: () => setAdmission('accept'),
    freeze() {
      flow = 'freeze';
      for (const pair of pairs) {
        if (pair.silent) continue;
        pair.client.pause();
        pair.upstream?.pause();
      }
    },
    slow(settings) {
      slowSettings = settings;
      flow = 'slow';
    },
    resume: resumeAll,
    cut() {
      const n = pairs.size;
      for (const pair of [...pairs]) destroy(pair);
      return n;
    },
    cutMidFrame(n, opts = {}) {
      return new Promise<void>((resolve) => {
        arm = { bytes: n, direction: opts.direction ?? 'toClient', every: opts.every ?? false, fired: false, resolve };
      });
    },
    disarm() {
      arm = null;
    },
    connections: () => pairs.size,
    accepted: () => acceptedCount,
    forwarded: () => ({ ...bytes }),
    lastToClientAt: (opening) => {
      let last = 0;
      for (const pair of pairs) if (!opening || (pair.opening && opening(pair.opening))) last = Math.max(last, pair.lastToClient);
      return last;
    },
    async close() {
      closed = true;
      arm = null;
      for (const pair of [...pairs]) destroy(pair);
      await closeListener();
    },
  };
  return proxy;
}
