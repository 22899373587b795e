/**
 * pino JSON lines for machines; pretty lines when a person watches a terminal. Every component
 * gets a child logger named for its role, so one grep finds one subsystem.
 */
import { pino, type Logger, type LevelWithSilent } from 'pino';

export type { Logger };

/** `stderr`: log there instead of standard output (when standard output carries the events). */
export function createLogger(level: LevelWithSilent, options: { pretty?: boolean; stderr?: boolean } = {}): Logger {
  const out = options.stderr ? process.stderr : process.stdout;
  const pretty = options.pretty ?? (out.isTTY === true && !process.env.CI);
  if (pretty) {
    try {
      return pino({
        level,
        base: undefined,
        transport: { target: 'pino-pretty', options: { colorize: true, translateTime: 'SYS:HH:MM:ss.l', ignore: 'pid,hostname', destination: options.stderr ? 2 : 1 } },
      });
    } catch {
      // pino-pretty is optional at run time; plain JSON is always available.
    }
  }
  const opts = { level, base: { pid: process.pid }, timestamp: pino.stdTimeFunctions.isoTime };
  return options.stderr ? pino(opts, pino.destination({ dest: 2, sync: true })) : pino(opts);
}
