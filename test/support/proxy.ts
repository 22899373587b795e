/**
 * The simple face of the fault proxy (./fault-proxy.ts) that most tests need, to take a connection
 * away from the daemon without touching the real server: `cut` drops live connections, `refuse`
 * turns new ones away, `stall` keeps them open but silent (bytes are held, not lost) until `resume`.
 */
import { startFaultProxy } from './fault-proxy.js';

export interface Proxy {
  readonly port: number;
  cut(): void;
  refuse(): void;
  accept(): void;
  stall(): void;
  resume(): void;
  connections(): number;
  /** When the replication connection (a Postgres startup with replication=database) last got a byte. */
  lastToReplicationClientAt(): number;
  close(): Promise<void>;
}

export async function startProxy(target: { host: string; port: number }): Promise<Proxy> {
  const proxy = await startFaultProxy(target);
  // refuse/accept only switch admission between two listening states: nothing to wait for.
  return {
    port: proxy.port,
    cut: () => void proxy.cut(),
    refuse: () => void proxy.refuse(),
    accept: () => void proxy.accept(),
    stall: () => proxy.freeze(),
    resume: () => proxy.resume(),
    connections: () => proxy.connections(),
    lastToReplicationClientAt: () => proxy.lastToClientAt((first) => first.includes('replication\0database\0')),
    close: () => proxy.close(),
  };
}
