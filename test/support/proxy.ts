/**
 * A TCP proxy the test controls, to take a connection away from the daemon without touching the
 * real server: `cut` drops live connections, `refuse` turns new ones away, `stall` keeps them
 * open but silent (bytes are held, not lost) until `resume`.
 */
import net from 'node:net';

export interface Proxy {
  readonly port: number;
  cut(): void;
  refuse(): void;
  accept(): void;
  stall(): void;
  resume(): void;
  connections(): number;
  close(): Promise<void>;
}

export async function startProxy(target: { host: string; port: number }): Promise<Proxy> {
  const pairs = new Set<{ client: net.Socket; upstream: net.Socket }>();
  let refusing = false;
  let stalled = false;
  const server = net.createServer((client) => {
    if (refusing) {
      client.destroy();
      return;
    }
    const upstream = net.connect(target);
    const pair = { client, upstream };
    pairs.add(pair);
    const end = () => {
      client.destroy();
      upstream.destroy();
      pairs.delete(pair);
    };
    client.on('error', end).on('close', end);
    upstream.on('error', end).on('close', end);
    client.pipe(upstream);
    upstream.pipe(client);
    if (stalled) {
      client.pause();
      upstream.pause();
    }
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as net.AddressInfo).port;
  const each = (fn: (s: net.Socket) => void) => {
    for (const p of pairs) {
      fn(p.client);
      fn(p.upstream);
    }
  };
  const cut = () => {
    for (const p of [...pairs]) {
      p.client.destroy();
      p.upstream.destroy();
    }
    pairs.clear();
  };
  return {
    port,
    cut,
    refuse() {
      refusing = true;
    },
    accept() {
      refusing = false;
    },
    stall() {
      stalled = true;
      each((s) => {
        s.unpipe();
        s.pause();
      });
    },
    resume() {
      stalled = false;
      for (const p of pairs) {
        p.client.pipe(p.upstream);
        p.upstream.pipe(p.client);
        p.client.resume();
        p.upstream.resume();
      }
    },
    connections: () => pairs.size,
    async close() {
      cut();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
