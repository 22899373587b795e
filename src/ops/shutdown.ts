/**
 * SIGTERM/SIGINT handling, installed the moment the CLI starts so a signal that arrives while the
 * daemon is still starting up is not fatal: it is remembered and honoured as soon as something
 * can drain. The first signal asks for a drain; a second one exits at once (the slot still holds
 * whatever was not acknowledged, so that is a re-send, not a loss).
 */
type Listener = (signal: NodeJS.Signals) => void;

let requested: NodeJS.Signals | null = null;
let listener: Listener | null = null;
let installed = false;

export function installSignalHandlers(onForce: (signal: NodeJS.Signals) => void): void {
  if (installed) return;
  installed = true;
  const handle = (signal: NodeJS.Signals) => {
    if (requested) {
      onForce(signal);
      return;
    }
    requested = signal;
    listener?.(signal);
  };
  process.on('SIGTERM', handle);
  process.on('SIGINT', handle);
}

/** Call `fn` on the first shutdown signal, at once if it already came. */
export function onShutdown(fn: Listener): void {
  listener = fn;
  if (requested) fn(requested);
}
