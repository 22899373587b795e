/** Postgres timestamps on the wire count microseconds since 2000-01-01 00:00:00 UTC. */
const PG_EPOCH_MICROS = 946_684_800_000_000n;

/** ISO-8601 UTC with exactly six fractional digits, the contract's `commit_time` form. */
export function pgMicrosToIso(pgMicros: bigint): string {
  const unixMicros = pgMicros + PG_EPOCH_MICROS;
  let ms = unixMicros / 1000n;
  let micro = unixMicros % 1_000_000n;
  if (micro < 0n) {
    micro += 1_000_000n;
  }
  // Floor division for pre-1970 values so the date part and the fraction agree.
  if (unixMicros < 0n && unixMicros % 1000n !== 0n) ms -= 1n;
  const base = new Date(Number(ms)).toISOString(); // 2026-11-22T09:23:15.561Z
  return `${base.slice(0, 19)}.${micro.toString().padStart(6, '0')}Z`;
}
