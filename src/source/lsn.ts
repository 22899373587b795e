/**
 * LSNs arrive as `0/1535040`, `00000000/01535040` or raw 64-bit integers; inside the process they
 * are always `bigint` so comparisons never go through strings.
 */

const LSN_TEXT = /^([0-9A-Fa-f]{1,8})\/([0-9A-Fa-f]{1,8})$/;

export function parseLsn(text: string): bigint {
  const m = LSN_TEXT.exec(text.trim());
  if (!m) throw new Error(`not an LSN: ${JSON.stringify(text)}`);
  return (BigInt('0x' + m[1]) << 32n) | BigInt('0x' + m[2]);
}

/** `X/Y` in uppercase hex without leading zeros, as Postgres prints it. */
export function formatLsn(lsn: bigint): string {
  const hi = Number(lsn >> 32n);
  const lo = Number(lsn & 0xffffffffn);
  return `${hi.toString(16).toUpperCase()}/${lo.toString(16).toUpperCase()}`;
}
