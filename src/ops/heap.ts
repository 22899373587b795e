/**
 * Keeps the daemon's resident memory close to what it really holds.
 *
 * pgwarren's live heap is small and bounded (the inflight window and the flood buffer), but it
 * allocates fast: every change becomes short-lived strings and buffers. V8 then lets the old
 * generation grow up to 4x the live size between full collections, so on a large transaction
 * RSS climbed to ~205 MB, most of it garbage awaiting collection. Capping the heap
 * (--max-old-space-size) would hold RSS down too, but would turn one unusually large row into
 * an out-of-memory crash on every restart. Limiting the growth factor instead costs more
 * frequent (cheap, mostly-garbage) collections and no throughput in `npm run bench:flood`,
 * and never refuses memory the daemon really needs.
 *
 * V8 reads this flag at each collection, so setting it at start-up takes effect. An operator who
 * passes their own `--heap-growing-percent` to node keeps it.
 */
import v8 from 'node:v8';

export const HEAP_GROWING_PERCENT = 20;

export function limitHeapGrowth(): void {
  if (process.execArgv.some((a) => a.startsWith('--heap-growing-percent') || a.startsWith('--heap_growing_percent'))) return;
  v8.setFlagsFromString(`--heap-growing-percent=${HEAP_GROWING_PERCENT}`);
}
