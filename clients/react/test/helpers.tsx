/**
 * Shared by the React tests: the real server harness of `clients/js`, a
 * WebSocket that counts the sockets it opens, and a provider for a user.
 */
import { createRequire } from "node:module";
import type { ReactNode } from "react";
import type { WebSocketConstructor } from "@mixroom/realtime-client";
import { MixroomProvider } from "../src/index.js";
import { mintToken, type TestServer, type TestUser } from "../../js/test/server.js";

export * from "../../js/test/server.js";

// Loaded through Node's own resolution: under jsdom a bundler-style import
// could pick `ws`'s browser stub.
const require = createRequire(import.meta.url);
const NodeWebSocket = require("ws") as typeof import("ws").WebSocket;

/** Sockets opened through `CountingWebSocket` (all of them, and those not closed yet). */
export const sockets = {
  opened: 0,
  live: new Set<InstanceType<typeof NodeWebSocket>>(),
  reset(): void {
    this.opened = 0;
    this.live.clear();
  },
};

/** `ws`, counting every socket constructed and forgetting those that closed. */
export class CountingWebSocket extends NodeWebSocket {
  constructor(url: string) {
    super(url);
    sockets.opened += 1;
    sockets.live.add(this);
    this.addEventListener("close", () => sockets.live.delete(this));
  }
}

export const WebSocketImpl = CountingWebSocket as unknown as WebSocketConstructor;

/** The provider for `user` on `server`, with quick reconnects and the counting socket. */
export function Provider({ server, user, children }: { server: TestServer; user: TestUser; children?: ReactNode }): ReactNode {
  return (
    <MixroomProvider
      url={server.wsUrl}
      userId={user.id}
      getToken={() => mintToken(user)}
      options={{ WebSocket: WebSocketImpl, backoff: { initialMs: 100, maxMs: 1000 }, fetch: globalThis.fetch }}
    >
      {children}
    </MixroomProvider>
  );
}

/** The server's `mixroom_ws_sessions` gauge from `/metrics`. */
export async function wsSessions(server: TestServer): Promise<number> {
  const text = await (await fetch(`${server.httpUrl}/metrics`)).text();
  const match = /^mixroom_ws_sessions(?:\{[^}]*\})? (\d+(?:\.\d+)?)$/m.exec(text);
  if (!match?.[1]) throw new Error(`no mixroom_ws_sessions in /metrics:\n${text.slice(0, 2000)}`);
  return Number(match[1]);
}
