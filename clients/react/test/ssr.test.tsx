// @vitest-environment node
/**
 * Server rendering: the provider and every hook render with
 * `react-dom/server` in plain Node, return their empty snapshots, and open
 * no socket (nor call fetch).
 */
import { StrictMode } from "react";
import { renderToString } from "react-dom/server";
import { afterEach, expect, test, vi } from "vitest";
import {
  MixroomProvider,
  useBookingStatus,
  useConnectionState,
  useMixroomClient,
  useNotifications,
  usePresence,
  useReadCursors,
  useRoom,
  useSupportConversation,
  useTyping,
} from "../src/index.js";
import { WebSocketImpl, sockets } from "./helpers.js";

afterEach(() => {
  vi.restoreAllMocks();
  sockets.reset();
});

function Everything() {
  const client = useMixroomClient();
  const connection = useConnectionState();
  const room = useRoom("booking:b1");
  const { typing } = useTyping("booking:b1");
  const { unread } = useReadCursors("booking:b1");
  const { online } = usePresence("booking:b1");
  const status = useBookingStatus("b1");
  const inbox = useNotifications();
  const support = useSupportConversation();
  return (
    <pre>
      {JSON.stringify({
        client: client === null ? "none" : "some",
        connection,
        room: room.status,
        messages: room.messages.length,
        pending: room.pending.length,
        typing: typing.length,
        unread,
        online: online.length,
        booking: status,
        inbox: inbox.status,
        notifications: inbox.notifications.length,
        unreadNotifications: inbox.unreadCount,
        support: support.status,
        supportRoom: support.room.status,
      })}
    </pre>
  );
}

test("renderToString renders the empty snapshots and opens no socket", async () => {
  const fetchSpy = vi.fn(() => Promise.reject(new Error("no fetch during SSR")));
  const getToken = vi.fn(() => "token");
  const html = renderToString(
    <StrictMode>
      <MixroomProvider
        url="ws://127.0.0.1:9/v1/ws"
        userId="u1"
        getToken={getToken}
        options={{ WebSocket: WebSocketImpl, fetch: fetchSpy as unknown as typeof fetch }}
      >
        <Everything />
      </MixroomProvider>
    </StrictMode>,
  );
  const shown = JSON.parse(
    html
      .replace(/^<pre>/, "")
      .replace(/<\/pre>$/, "")
      .replace(/&quot;/g, '"'),
  ) as Record<string, unknown>;
  expect(shown).toEqual({
    client: "none",
    connection: "idle",
    room: "joining",
    messages: 0,
    pending: 0,
    typing: 0,
    unread: 0,
    online: 0,
    booking: null,
    inbox: "idle",
    notifications: 0,
    unreadNotifications: 0,
    support: "idle",
    supportRoom: "joining",
  });
  // Nothing deferred either.
  await new Promise((done) => setTimeout(done, 50));
  expect(sockets.opened).toBe(0);
  expect(getToken).not.toHaveBeenCalled();
  expect(fetchSpy).not.toHaveBeenCalled();
});

test("the hooks render without a provider too", () => {
  expect(() => renderToString(<Everything />)).not.toThrow();
});
