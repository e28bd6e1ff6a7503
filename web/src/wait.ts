// Waiting that Stop (an AbortSignal) cuts short.

/** Resolves after `seconds`, or at once when `signal` is aborted. */
export function sleep(seconds: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(done, seconds * 1000);
    signal.addEventListener("abort", done, { once: true });
    function done(): void {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    }
  });
}

/** While the browser says it is offline, waits for it to be online again (or for Stop). */
export function online(signal: AbortSignal): Promise<void> {
  if (typeof window === "undefined" || navigator.onLine !== false) return Promise.resolve();
  return new Promise((resolve) => {
    window.addEventListener("online", done);
    signal.addEventListener("abort", done, { once: true });
    function done(): void {
      window.removeEventListener("online", done);
      signal.removeEventListener("abort", done);
      resolve();
    }
  });
}

