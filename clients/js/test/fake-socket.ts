/**
 * An in-memory WebSocket for unit tests: records what the client sends and
 * lets the test play the server's frames, in any order it likes.
 */
import type { WebSocketLike } from "../src/index.js";

export class FakeSocket implements WebSocketLike {
  static instances: FakeSocket[] = [];
  /** When set, new sockets fail to connect (close 1006) instead of opening. */
  static refuse = false;

  readyState = 0;
  readonly sent: Array<Record<string, unknown>> = [];
  onopen: ((event: unknown) => void) | null = null;
  onmessage: ((event: { data: unknown }) => void) | null = null;
  onclose: ((event: { code: number; reason: string }) => void) | null = null;
  onerror: ((event: unknown) => void) | null = null;

  constructor(readonly url: string) {
    FakeSocket.instances.push(this);
    queueMicrotask(() => {
      if (FakeSocket.refuse) {
        this.readyState = 3;
        this.onerror?.({});
        this.onclose?.({ code: 1006, reason: "" });
      } else {
        this.readyState = 1;
        this.onopen?.({});
      }
    });
  }

  static reset(): void {
    FakeSocket.instances = [];
    FakeSocket.refuse = false;
  }

  static latest(): FakeSocket {
    const socket = FakeSocket.instances.at(-1);
    if (!socket) throw new Error("no socket was opened");
    return socket;
  }

  send(data: string): void {
    this.sent.push(JSON.parse(data) as Record<string, unknown>);
  }

  close(code = 1000, reason = ""): void {
    if (this.readyState === 3) return;
    this.readyState = 3;
    queueMicrotask(() => this.onclose?.({ code, reason }));
  }

  /** The server sends `frame`. */
  receive(frame: Record<string, unknown>): void {
    this.onmessage?.({ data: JSON.stringify(frame) });
  }

  /** The server closes the connection. */
  serverClose(code: number, reason = ""): void {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }

  sentOfType(type: string): Array<Record<string, unknown>> {
    return this.sent.filter((frame) => frame.type === type);
  }

  /** Answers the `auth` frame with `welcome`. */
  welcome(userId = "u1"): void {
    this.receive({
      type: "welcome",
      user_id: userId,
      session_id: "s1",
      server_time: new Date().toISOString(),
      heartbeat_ms: 15000,
    });
  }
}

/** Waits for pending microtasks and timers of 0 ms. */
export function tick(ms = 0): Promise<void> {
  return new Promise((done) => setTimeout(done, ms));
}

/** Polls until `condition` holds (timers in these tests are real). */
export async function until(condition: () => boolean, what: string, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await tick(5);
  }
}
