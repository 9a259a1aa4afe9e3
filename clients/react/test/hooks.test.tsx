/**
 * The hooks against the real server binary (`MIXROOM_BIN`, default the
 * repository's debug build), rendered in jsdom with React Testing Library.
 */
import { StrictMode, useState } from "react";
import { act, cleanup, fireEvent, render, screen, waitFor } from "@testing-library/react";
import { afterAll, afterEach, beforeAll, describe, expect, test } from "vitest";
import { MixroomClient } from "@mixroom/realtime-client";
import {
  MixroomProvider,
  useBookingStatus,
  useConnectionState,
  useNotifications,
  usePresence,
  useRoom,
  useSupportConversation,
  useTyping,
} from "../src/index.js";
import {
  Provider,
  TestServer,
  WebSocketImpl,
  mintToken,
  newUser,
  sockets,
  wsSessions,
  type TestUser,
} from "./helpers.js";

let server: TestServer;

beforeAll(async () => {
  server = await TestServer.start();
});

afterAll(async () => {
  await server?.stop();
});

afterEach(() => {
  cleanup();
  sockets.reset();
});

const wait = { timeout: 15_000 };

function Connection() {
  return <p data-testid="connection">{useConnectionState()}</p>;
}

/** A chat screen: the room's stored messages in order, then the pending ones, and a composer. */
function Chat({ room }: { room: string }) {
  const chat = useRoom(room);
  const { typing } = useTyping(room);
  const { online } = usePresence(room);
  const [draft, setDraft] = useState("");
  return (
    <div>
      <p data-testid="status">{chat.status}</p>
      <p data-testid="online">{online.length}</p>
      <p data-testid="typing">{typing.length}</p>
      <ol data-testid="messages">
        {chat.messages.map((message) => (
          <li key={message.seq} data-seq={message.seq}>
            {message.body}
          </li>
        ))}
      </ol>
      <ul data-testid="pending">
        {chat.pending.map((entry) => (
          <li key={entry.clientId}>{entry.body}</li>
        ))}
      </ul>
      <input aria-label="message" value={draft} onChange={(event) => setDraft(event.target.value)} />
      <button
        onClick={() => {
          chat.send(draft);
          setDraft("");
        }}
      >
        send
      </button>
    </div>
  );
}

function shownMessages(): Array<{ seq: number; body: string }> {
  return [...screen.getByTestId("messages").querySelectorAll("li")].map((li) => ({
    seq: Number(li.getAttribute("data-seq")),
    body: li.textContent ?? "",
  }));
}

function typeAndSend(text: string): void {
  fireEvent.change(screen.getByLabelText("message"), { target: { value: text } });
  fireEvent.click(screen.getByText("send"));
}

/** A second participant, as a plain client (Node, no React). */
async function otherParticipant(user: TestUser, room: string): Promise<MixroomClient> {
  const client = new MixroomClient({
    url: server.wsUrl,
    getToken: () => mintToken(user),
    WebSocket: WebSocketImpl,
    backoff: { initialMs: 100, maxMs: 1000 },
  });
  client.connect();
  await client.join(room);
  return client;
}

describe("useRoom", () => {
  test("a chat keeps its messages, once each and in seq order, across a server restart", async () => {
    const alice = newUser("Alice", "client");
    const sam = newUser("Sam", "studio_owner");
    const { room } = await server.openBooking(alice, [sam]);
    const samClient = await otherParticipant(sam, room);
    try {
      await samClient.send(room, "before 0 (sam, before the screen opened)");
      render(
        <Provider server={server} user={alice}>
          <Connection />
          <Chat room={room} />
        </Provider>,
      );
      await waitFor(() => expect(screen.getByTestId("status").textContent).toBe("ready"), wait);
      // The history loaded on join.
      await waitFor(() => expect(shownMessages().map((m) => m.body)).toEqual(["before 0 (sam, before the screen opened)"]), wait);
      // Sam is online in the room (presence), Alice is too.
      await waitFor(() => expect(screen.getByTestId("online").textContent).toBe("2"), wait);

      typeAndSend("before 1 (alice)");
      await waitFor(() => expect(shownMessages()).toHaveLength(2), wait);
      await samClient.send(room, "before 2 (sam)");
      typeAndSend("before 3 (alice)");
      await waitFor(() => expect(shownMessages()).toHaveLength(4), wait);

      await server.restart(); // SIGKILL, then the same port and database
      await waitFor(() => expect(screen.getByTestId("connection").textContent).toBe("open"), wait);

      typeAndSend("after 1 (alice)");
      await samClient.send(room, "after 2 (sam)");
      typeAndSend("after 3 (alice)");
      await waitFor(() => expect(shownMessages()).toHaveLength(7), wait);
      await waitFor(() => expect(screen.getByTestId("pending").children).toHaveLength(0), wait);

      const shown = shownMessages();
      expect(shown.map((m) => m.seq)).toEqual([1, 2, 3, 4, 5, 6, 7]);
      const stored = await server.storedMessages(alice, room);
      expect(shown).toEqual(stored.map((m) => ({ seq: m.seq, body: m.body })));
      expect(new Set(shown.map((m) => m.body)).size).toBe(7);
      expect(shown.map((m) => m.body).slice(0, 4)).toEqual([
        "before 0 (sam, before the screen opened)",
        "before 1 (alice)",
        "before 2 (sam)",
        "before 3 (alice)",
      ]);
      expect(shown.map((m) => m.body).filter((body) => body.includes("(alice)") && body.startsWith("after"))).toEqual([
        "after 1 (alice)",
        "after 3 (alice)",
      ]);
      // Nothing more arrives late (a duplicate after a replay, say).
      await act(() => new Promise((done) => setTimeout(done, 500)));
      expect(shownMessages()).toEqual(shown);
    } finally {
      samClient.close();
    }
  });

  test("typing from another participant shows, and expires", async () => {
    const alice = newUser("Alice", "client");
    const sam = newUser("Sam", "engineer");
    const { room } = await server.openBooking(alice, [sam]);
    const samClient = await otherParticipant(sam, room);
    try {
      render(
        <Provider server={server} user={alice}>
          <Chat room={room} />
        </Provider>,
      );
      await waitFor(() => expect(screen.getByTestId("status").textContent).toBe("ready"), wait);
      samClient.typing(room);
      await waitFor(() => expect(screen.getByTestId("typing").textContent).toBe("1"), wait);
      await waitFor(() => expect(screen.getByTestId("typing").textContent).toBe("0"), { timeout: 8_000 });
    } finally {
      samClient.close();
    }
  });
});

describe("MixroomProvider", () => {
  test("under Strict Mode opens exactly one socket, and unmounting closes it", async () => {
    const alice = newUser("Alice", "client");
    const sam = newUser("Sam", "studio_owner");
    const { room } = await server.openBooking(alice, [sam]);
    expect(await wsSessions(server)).toBe(0);
    const view = render(
      <StrictMode>
        <Provider server={server} user={alice}>
          <Connection />
          <Chat room={room} />
        </Provider>
      </StrictMode>,
    );
    await waitFor(() => expect(screen.getByTestId("connection").textContent).toBe("open"), wait);
    await waitFor(() => expect(screen.getByTestId("status").textContent).toBe("ready"), wait);
    // Time for a late second connect to show.
    await act(() => new Promise((done) => setTimeout(done, 300)));
    expect(sockets.opened).toBe(1);
    expect(sockets.live.size).toBe(1);
    expect(await wsSessions(server)).toBe(1);

    view.unmount();
    await waitFor(() => expect(sockets.live.size).toBe(0), wait);
    await waitFor(async () => expect(await wsSessions(server)).toBe(0), wait);
    await new Promise((done) => setTimeout(done, 700)); // no reconnect after the unmount
    expect(sockets.opened).toBe(1);
    expect(await wsSessions(server)).toBe(0);
  });

  test("signed out (userId null): no client, no socket", async () => {
    render(
      <MixroomProvider url={server.wsUrl} userId={null} getToken={() => "unused"} options={{ WebSocket: WebSocketImpl }}>
        <Connection />
        <Inbox />
      </MixroomProvider>,
    );
    await act(() => new Promise((done) => setTimeout(done, 300)));
    expect(screen.getByTestId("connection").textContent).toBe("idle");
    expect(screen.getByTestId("inbox-status").textContent).toBe("idle");
    expect(sockets.opened).toBe(0);
  });

  test("a new user gets a new client: the previous one's socket is closed", async () => {
    const alice = newUser("Alice", "client");
    const bob = newUser("Bob", "client");
    await server.putUser(alice);
    await server.putUser(bob);
    const view = render(
      <Provider server={server} user={alice}>
        <Connection />
      </Provider>,
    );
    await waitFor(() => expect(screen.getByTestId("connection").textContent).toBe("open"), wait);
    view.rerender(
      <Provider server={server} user={bob}>
        <Connection />
      </Provider>,
    );
    await waitFor(() => expect(screen.getByTestId("connection").textContent).toBe("open"), wait);
    await waitFor(() => expect(sockets.live.size).toBe(1), wait);
    expect(sockets.opened).toBe(2);
    await waitFor(async () => expect(await wsSessions(server)).toBe(1), wait);
    view.unmount();
    await waitFor(() => expect(sockets.live.size).toBe(0), wait);
  });
});

function Inbox() {
  const inbox = useNotifications();
  return (
    <div>
      <p data-testid="inbox-status">{inbox.status}</p>
      <p data-testid="unread">{inbox.unreadCount}</p>
      <ul data-testid="notifications">
        {inbox.notifications.map((item) => (
          <li key={item.id}>
            <span>{item.title}</span>
            <span>{item.read_at === null ? "unread" : "read"}</span>
            <button onClick={() => void inbox.markRead(item.id)}>read {item.title}</button>
          </li>
        ))}
      </ul>
    </div>
  );
}

describe("useNotifications", () => {
  test("a notification from the backend shows live, with the unread count; markRead clears it", async () => {
    const alice = newUser("Alice", "client");
    await server.putUser(alice);
    await server.internal("POST", "/v1/internal/notifications", {
      user_id: alice.id,
      kind: "marketing",
      title: "Older news",
      body: "in the inbox before the screen opened",
    });
    render(
      <Provider server={server} user={alice}>
        <Connection />
        <Inbox />
      </Provider>,
    );
    await waitFor(() => expect(screen.getByTestId("inbox-status").textContent).toBe("ready"), wait);
    await waitFor(() => expect(screen.getByTestId("connection").textContent).toBe("open"), wait);
    expect(screen.getByTestId("unread").textContent).toBe("1");
    expect(screen.getByText("Older news")).toBeTruthy();

    await server.internal("POST", "/v1/internal/notifications", {
      user_id: alice.id,
      kind: "booking",
      title: "Your session moved",
      body: "Now at 11:00",
      link: "/bookings/x",
    });
    await waitFor(() => expect(screen.getByText("Your session moved")).toBeTruthy(), wait);
    await waitFor(() => expect(screen.getByTestId("unread").textContent).toBe("2"), wait);
    // Newest first.
    const titles = [...screen.getByTestId("notifications").querySelectorAll("li > span:first-child")].map((s) => s.textContent);
    expect(titles).toEqual(["Your session moved", "Older news"]);

    fireEvent.click(screen.getByText("read Your session moved"));
    await waitFor(() => expect(screen.getByTestId("unread").textContent).toBe("1"), wait);
    // The server agrees.
    await waitFor(async () => {
      const response = await fetch(`${server.httpUrl}/v1/me/unread`, { headers: { authorization: `Bearer ${mintToken(alice)}` } });
      expect(((await response.json()) as { notifications: number }).notifications).toBe(1);
    }, wait);
    await act(() => new Promise((done) => setTimeout(done, 300)));
    expect(screen.getByTestId("unread").textContent).toBe("1");
  });
});

function BookingBadge({ bookingId }: { bookingId: string }) {
  const status = useBookingStatus(bookingId);
  return <p data-testid="booking-status">{status ?? "none"}</p>;
}

describe("useBookingStatus", () => {
  test("starts at null and follows PATCHes of the booking's status", async () => {
    const alice = newUser("Alice", "client");
    const sam = newUser("Sam", "studio_owner");
    const { bookingId } = await server.openBooking(alice, [sam]);
    const other = await server.openBooking(alice, [sam]);
    render(
      <Provider server={server} user={alice}>
        <Connection />
        <BookingBadge bookingId={bookingId} />
      </Provider>,
    );
    expect(screen.getByTestId("booking-status").textContent).toBe("none");
    await waitFor(() => expect(screen.getByTestId("connection").textContent).toBe("open"), wait);

    // Another booking's update does not show here.
    await server.internal("PATCH", `/v1/internal/bookings/${other.bookingId}`, { status: "cancelled" });
    await server.internal("PATCH", `/v1/internal/bookings/${bookingId}`, { status: "payment_pending" });
    await waitFor(() => expect(screen.getByTestId("booking-status").textContent).toBe("payment_pending"), wait);
    await server.internal("PATCH", `/v1/internal/bookings/${bookingId}`, { status: "paid" });
    await waitFor(() => expect(screen.getByTestId("booking-status").textContent).toBe("paid"), wait);
    await act(() => new Promise((done) => setTimeout(done, 300)));
    expect(screen.getByTestId("booking-status").textContent).toBe("paid");
  });
});

function Support({ label }: { label: string }) {
  const support = useSupportConversation();
  const { room } = support;
  const [draft, setDraft] = useState("");
  return (
    <section>
      <p data-testid={`support-status-${label}`}>{support.status}</p>
      <p data-testid={`support-id-${label}`}>{support.conversation?.id ?? ""}</p>
      <p data-testid={`support-room-${label}`}>{room.status}</p>
      <ol data-testid={`support-messages-${label}`}>
        {room.messages.map((message) => (
          <li key={message.seq} data-role={message.sender.role}>
            {message.body}
          </li>
        ))}
      </ol>
      <p data-testid={`support-streaming-${label}`}>{room.streaming.map((s) => s.body).join("")}</p>
      <input aria-label={`ask ${label}`} value={draft} onChange={(event) => setDraft(event.target.value)} />
      <button
        onClick={() => {
          room.send(draft);
          setDraft("");
        }}
      >
        ask {label}
      </button>
    </section>
  );
}

describe("useSupportConversation", () => {
  test("opens one conversation for every hook (Strict Mode too) and shows the agent's answer as it streams", async () => {
    const alice = newUser("Alice", "client");
    await server.putUser(alice);
    render(
      <StrictMode>
        <Provider server={server} user={alice}>
          <Support label="a" />
          <Support label="b" />
        </Provider>
      </StrictMode>,
    );
    await waitFor(() => expect(screen.getByTestId("support-room-a").textContent).toBe("ready"), wait);
    expect(screen.getByTestId("support-status-a").textContent).toBe("open");
    const id = screen.getByTestId("support-id-a").textContent;
    expect(id).not.toBe("");
    expect(screen.getByTestId("support-id-b").textContent).toBe(id);

    fireEvent.change(screen.getByLabelText("ask a"), { target: { value: "How do refunds work?" } });
    fireEvent.click(screen.getByText("ask a"));
    // The answer streams in pieces first ...
    await waitFor(() => expect(screen.getByTestId("support-streaming-b").textContent).not.toBe(""), wait);
    // ... then the stored agent message replaces it.
    await waitFor(() => {
      const roles = [...screen.getByTestId("support-messages-b").querySelectorAll("li")].map((li) => li.getAttribute("data-role"));
      expect(roles).toContain("agent");
    }, { timeout: 30_000 });
    await waitFor(() => expect(screen.getByTestId("support-streaming-b").textContent).toBe(""), wait);
    const bodies = [...screen.getByTestId("support-messages-a").querySelectorAll("li")].map((li) => li.textContent);
    expect(bodies[0]).toBe("How do refunds work?");
    expect(bodies.filter((body) => body === "How do refunds work?")).toHaveLength(1);
  });
});
