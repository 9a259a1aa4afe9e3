/** Reconnect delays: exponential growth with random jitter. */
export interface BackoffOptions {
  /** Delay before the first retry. */
  initialMs: number;
  /** Upper bound of any delay. */
  maxMs: number;
  /** Growth per failed attempt. */
  factor: number;
  /**
   * 0..1: the share of each delay that is random. 0.5 means a delay lies
   * between half and all of the exponential value, so clients that lost the
   * same server at the same moment do not all come back at once.
   */
  jitter: number;
}

export const DEFAULT_BACKOFF: BackoffOptions = {
  initialMs: 500,
  maxMs: 30_000,
  factor: 2,
  jitter: 0.5,
};

/** The delay before retry number `attempt` (0 for the first retry). */
export function backoffDelay(
  attempt: number,
  options: BackoffOptions,
  random: () => number = Math.random,
): number {
  const exponential = Math.min(options.maxMs, options.initialMs * options.factor ** attempt);
  const jitter = Math.min(1, Math.max(0, options.jitter));
  return Math.round(exponential * (1 - jitter * random()));
}
