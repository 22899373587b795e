export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** Poll `fn` until it returns truthy; on timeout throw with `message` (string or thunk). */
export async function waitUntil(
  fn: () => unknown | Promise<unknown>,
  opts: { timeoutMs?: number; intervalMs?: number; message?: string | (() => string | Promise<string>) } = {},
): Promise<void> {
  const deadline = Date.now() + (opts.timeoutMs ?? 10_000);
  for (;;) {
    if (await fn()) return;
    if (Date.now() > deadline) {
      const m = typeof opts.message === 'function' ? await opts.message() : opts.message;
      throw new Error(`timed out after ${opts.timeoutMs ?? 10_000} ms: ${m ?? 'condition not met'}`);
    }
    await sleep(opts.intervalMs ?? 100);
  }
}
