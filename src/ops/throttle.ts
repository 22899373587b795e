/**
 * Log-once-then-summarize: the first occurrence of a key is logged at once, later ones are only
 * counted and reported at most every `intervalMs`, so a misrouted flood of a million messages
 * yields a handful of log lines, not a million.
 */
export class LogThrottle {
  private readonly seen = new Map<string, { suppressed: number; lastLog: number }>();

  constructor(private readonly intervalMs = 10_000) {}

  /** Returns how many occurrences since the last report (>= 1) when it is time to log, else 0. */
  hit(key: string, now = Date.now()): number {
    let entry = this.seen.get(key);
    if (!entry) {
      if (this.seen.size > 10_000) this.seen.clear();
      entry = { suppressed: 0, lastLog: now };
      this.seen.set(key, entry);
      return 1;
    }
    entry.suppressed++;
    if (now - entry.lastLog < this.intervalMs) return 0;
    const count = entry.suppressed;
    entry.suppressed = 0;
    entry.lastLog = now;
    return count;
  }
}
