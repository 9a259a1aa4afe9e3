import type { ErrorCode, ErrorFrame } from "./frames.js";

/**
 * What went wrong, besides the server's codes (`ErrorCode`):
 * - `connection_lost`, `timeout`, `closed`: the socket or a view;
 * - `http`: an HTTP helper got an error status (see `status` and `serverCode`);
 * - `push_disabled`: the server has Web Push turned off (no VAPID key);
 * - `push_denied`: the user (or the browser's settings) refused notifications;
 * - `push_unsupported`: no Web Push here (no `PushManager`, or not a secure context);
 * - `too_many`: the user has as many push subscriptions as the server allows.
 */
export type MixroomErrorCode =
  | ErrorCode
  | "connection_lost"
  | "timeout"
  | "closed"
  | "http"
  | "push_disabled"
  | "push_denied"
  | "push_unsupported"
  | "too_many";

/** A request the server refused (an `error` frame or an HTTP error), or a push subscription that could not be made. */
export class MixroomError extends Error {
  readonly code: MixroomErrorCode;
  readonly retryAfterMs: number | undefined;
  /** The HTTP status, for errors of the HTTP helpers. */
  readonly status: number | undefined;
  /** The `error.code` of an HTTP error's JSON body (`{"error":{"code","message"}}`), when it had one. */
  readonly serverCode: string | undefined;

  constructor(
    code: MixroomErrorCode,
    message: string,
    options: { retryAfterMs?: number; status?: number; serverCode?: string } = {},
  ) {
    super(message);
    this.name = "MixroomError";
    this.code = code;
    this.retryAfterMs = options.retryAfterMs;
    this.status = options.status;
    this.serverCode = options.serverCode;
  }

  static fromFrame(frame: ErrorFrame): MixroomError {
    return new MixroomError(frame.code, frame.message, { retryAfterMs: frame.retry_after_ms });
  }
}
