import type { ErrorCode, ErrorFrame } from "./frames.js";

/** A request the server refused (an `error` frame or an HTTP error). */
export class MixroomError extends Error {
  readonly code: ErrorCode | "connection_lost" | "timeout" | "closed" | "http";
  readonly retryAfterMs: number | undefined;
  readonly status: number | undefined;

  constructor(
    code: MixroomError["code"],
    message: string,
    options: { retryAfterMs?: number; status?: number } = {},
  ) {
    super(message);
    this.name = "MixroomError";
    this.code = code;
    this.retryAfterMs = options.retryAfterMs;
    this.status = options.status;
  }

  static fromFrame(frame: ErrorFrame): MixroomError {
    return new MixroomError(frame.code, frame.message, { retryAfterMs: frame.retry_after_ms });
  }
}
