/**
 * Test helper: a WebSocket proxy in front of the real server that can lose
 * an `ack` on the wire (used by client.test.ts and
 * message-changes.server.test.ts).
 */
import WebSocket, { WebSocketServer } from "ws";

import { freePort } from "./server.js";

/**
 * A WebSocket proxy that can cut the connection at the worst moment: after
 * the server stored a message and answered, before the client hears the ack.
 */
export class AckDroppingProxy {
  dropNextAck = false;
  droppedAcks = 0;
  /** The acks it lost on the wire, as the server sent them. */
  readonly dropped: Array<Record<string, unknown>> = [];
  /** Every frame the client sent through it, in order, over all connections. */
  readonly sent: Array<Record<string, unknown>> = [];

  private constructor(
    private readonly server: WebSocketServer,
    readonly url: string,
  ) {}

  static async start(upstreamUrl: string): Promise<AckDroppingProxy> {
    const port = await freePort();
    const server = new WebSocketServer({ host: "127.0.0.1", port });
    await new Promise<void>((ready) => server.once("listening", () => ready()));
    const proxy = new AckDroppingProxy(server, `ws://127.0.0.1:${port}/v1/ws`);
    server.on("connection", (downstream) => proxy.pipe(downstream, upstreamUrl));
    return proxy;
  }

  private pipe(downstream: WebSocket, upstreamUrl: string): void {
    const upstream = new WebSocket(upstreamUrl);
    const early: string[] = [];
    downstream.on("message", (data) => {
      const text = data.toString();
      this.sent.push(JSON.parse(text) as Record<string, unknown>);
      if (upstream.readyState === WebSocket.OPEN) upstream.send(text);
      else early.push(text);
    });
    upstream.on("open", () => {
      for (const text of early.splice(0)) upstream.send(text);
    });
    upstream.on("message", (data) => {
      const text = data.toString();
      const frame = JSON.parse(text) as Record<string, unknown>;
      if (this.dropNextAck && frame.type === "ack") {
        this.dropNextAck = false;
        this.droppedAcks += 1;
        this.dropped.push(frame);
        downstream.terminate();
        upstream.terminate();
        return;
      }
      downstream.send(text);
    });
    const closeBoth = (): void => {
      downstream.terminate();
      upstream.terminate();
    };
    downstream.on("close", closeBoth);
    upstream.on("close", closeBoth);
    upstream.on("error", closeBoth);
    downstream.on("error", closeBoth);
  }

  async close(): Promise<void> {
    for (const socket of this.server.clients) socket.terminate();
    await new Promise<void>((done) => this.server.close(() => done()));
  }
}
