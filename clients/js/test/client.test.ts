/**
 * The client against the real server binary: chat, typing, read receipts,
 * presence, booking updates and notifications, token refresh, an ack lost
 * on the wire, and a server killed and restarted in the middle of a
 * conversation — with no message lost or duplicated.
 */
import { afterAll, afterEach, beforeAll, describe, expect, test } from "vitest";
import WebSocket from "ws";

import {
  MixroomClient,
  type AckFrame,
  type BookingUpdatedFrame,
  type JoinedFrame,
  type MessageDeltaFrame,
  type MessageFrame,
  type MixroomClientOptions,
  type NotificationFrame,
  type PresenceFrame,
  type ReadFrame,
  type TypingFrame,
  type UnreadFrame,
} from "../src/index.js";
import { AckDroppingProxy } from "./ack-dropping-proxy.js";
import { mintToken, newUser, sleep, TestServer, waitFor, type TestUser } from "./server.js";

const clients: MixroomClient[] = [];

/** A client for `user` with fast reconnects; closed after each test. */
function clientFor(
  url: string,
  user: TestUser,
  options: Partial<MixroomClientOptions> = {},
): MixroomClient {
  const client = new MixroomClient({
    url,
    getToken: () => mintToken(user),
    WebSocket,
    backoff: { initialMs: 100, maxMs: 1000 },
    ...options,
  });
  clients.push(client);
  return client;
}

async function connected(client: MixroomClient): Promise<MixroomClient> {
  client.connect();
  await client.whenOpen(15_000);
  return client;
}

/** Everything a client hands to the app in one room, in arrival order. */
function collect(client: MixroomClient, room: string): MessageFrame[] {
  const seen: MessageFrame[] = [];
  client.on("message", (message) => {
    if (message.room === room) seen.push(message);
  });
  return seen;
}

function range(from: number, to: number): number[] {
  return Array.from({ length: to - from + 1 }, (_, i) => from + i);
}

afterEach(() => {
  for (const client of clients.splice(0)) client.close();
});

describe("against one server", () => {
  let server: TestServer;

  beforeAll(async () => {
    server = await TestServer.start();
  });

  afterAll(async () => {
    await server?.stop();
  });

  test("two users chat: messages, typing, read receipts, presence, unread counts", async () => {
    const ava = newUser("Ava", "client");
    const sam = newUser("Sam", "studio_owner");
    const { room } = await server.openBooking(ava, [sam]);

    const avaClient = clientFor(server.wsUrl, ava);
    const unread: UnreadFrame[] = [];
    avaClient.on("unread", (frame) => unread.push(frame));
    await connected(avaClient);
    expect(avaClient.userId).toBe(ava.id);
    const avaJoined = await avaClient.join(room);
    expect(avaJoined.last_seq).toBe(0);
    expect(avaJoined.members.map((m) => m.name).sort()).toEqual(["Ava", "Sam"]);
    await waitFor(() => unread.length === 1, "the unread frame after welcome");
    expect(unread[0]).toMatchObject({ type: "unread", notifications: 0 });

    const presence: PresenceFrame[] = [];
    avaClient.on("presence", (frame) => presence.push(frame));
    const samClient = await connected(clientFor(server.wsUrl, sam));
    await samClient.join(room);
    await waitFor(
      () => presence.some((p) => p.user_id === sam.id && p.online),
      "Sam's presence reaching Ava",
    );

    const typing: TypingFrame[] = [];
    samClient.on("typing", (frame) => typing.push(frame));
    avaClient.typing(room);
    await waitFor(() => typing.length === 1, "Ava's typing reaching Sam");
    expect(typing[0]).toEqual({ type: "typing", room, user_id: ava.id });

    const samSees = collect(samClient, room);
    const avaSees = collect(avaClient, room);
    const ack = await avaClient.send(room, "Hi Sam! Is the Neve console free on Friday?");
    expect(ack.seq).toBe(1);
    await waitFor(() => samSees.length === 1 && avaSees.length === 1, "the message on both sides");
    expect(samSees[0]).toMatchObject({
      seq: 1,
      id: ack.id,
      client_id: ack.client_id,
      body: "Hi Sam! Is the Neve console free on Friday?",
      sender: { user_id: ava.id, name: "Ava", role: "client" },
    });

    const reads: ReadFrame[] = [];
    avaClient.on("read", (frame) => reads.push(frame));
    samClient.markRead(room, 1);
    await waitFor(() => reads.length === 1, "Sam's read receipt reaching Ava");
    expect(reads[0]).toEqual({ type: "read", room, user_id: sam.id, seq: 1 });

    await samClient.send(room, "It is. See you at 10.");
    await waitFor(() => avaSees.length === 2, "Sam's reply");
    const history = await avaClient.history(room, { limit: 10 });
    expect(history.messages.map((m) => m.seq)).toEqual([2, 1]);
    expect(history.has_more).toBe(false);
    expect((await avaClient.ping()).type).toBe("pong");
  });

  test("booking updates and notifications arrive as typed events, and the HTTP helpers see them", async () => {
    const ava = newUser("Ava", "client");
    const eli = newUser("Eli", "engineer");
    const { bookingId, room } = await server.openBooking(ava, [eli]);
    const avaClient = await connected(clientFor(server.wsUrl, ava));
    await avaClient.join(room);
    const updates: BookingUpdatedFrame[] = [];
    const notifications: NotificationFrame[] = [];
    avaClient.on("booking.updated", (frame) => updates.push(frame));
    avaClient.on("notification", (frame) => notifications.push(frame));
    const roomMessages = collect(avaClient, room);

    await server.putBooking(bookingId, ava, [eli], "paid");
    await waitFor(() => updates.length === 1 && notifications.length === 1, "the booking update");
    // Once per session, although Ava is both in the room and on her user channel.
    await sleep(200);
    expect(updates).toHaveLength(1);
    expect(updates[0]).toMatchObject({ booking_id: bookingId, status: "paid", previous_status: "confirmed" });
    expect(notifications[0]).toMatchObject({ kind: "booking", title: "Booking paid" });
    await waitFor(() => roomMessages.length === 1, "the system message in the room");
    expect(roomMessages[0]?.sender.role).toBe("system");

    expect(await avaClient.unreadCounts()).toMatchObject({ notifications: 1 });
    const inbox = await avaClient.notifications({ unread: true });
    expect(inbox.notifications.map((n) => n.id)).toEqual([notifications[0]?.id]);
    expect(await avaClient.markAllNotificationsRead()).toEqual({ marked: 1 });
    expect((await avaClient.unreadCounts()).notifications).toBe(0);
  });

  test("refused requests reject for good: a room of someone else's booking", async () => {
    const ava = newUser("Ava", "client");
    const sam = newUser("Sam", "studio_owner");
    const mallory = newUser("Mallory", "client");
    await server.putUser(mallory);
    const { room } = await server.openBooking(ava, [sam]);
    const malloryClient = await connected(clientFor(server.wsUrl, mallory));
    await expect(malloryClient.join(room)).rejects.toMatchObject({ code: "forbidden" });
    await expect(malloryClient.send(room, "let me in")).rejects.toMatchObject({ code: "forbidden" });
    expect(malloryClient.joinedRooms()).toEqual([]);
    expect(malloryClient.pendingMessages()).toEqual([]);
  });

  test("the token is refreshed on the live socket: no disconnect across several lifetimes", async () => {
    const ava = newUser("Ava", "client");
    const sam = newUser("Sam", "studio_owner");
    const { room } = await server.openBooking(ava, [sam]);
    let issued = 0;
    const avaClient = clientFor(server.wsUrl, ava, {
      // 4-second tokens, refreshed 1.5 s before they expire.
      getToken: () => {
        issued += 1;
        return mintToken(ava, 4);
      },
      refreshMarginMs: 1500,
    });
    const disconnects: number[] = [];
    let refreshed = 0;
    avaClient.on("disconnected", ({ code }) => disconnects.push(code));
    avaClient.on("token_refreshed", () => (refreshed += 1));
    await connected(avaClient);
    await avaClient.join(room);
    await sleep(9_000); // more than twice a token's lifetime
    expect(disconnects).toEqual([]);
    expect(refreshed).toBeGreaterThanOrEqual(3);
    expect(issued).toBe(refreshed + 1);
    expect((await avaClient.send(room, "still here")).seq).toBe(1);
  });

  test("when refreshing fails the server closes with 4001; the client comes back and catches up", async () => {
    const ava = newUser("Ava", "client");
    const sam = newUser("Sam", "studio_owner");
    const { room } = await server.openBooking(ava, [sam]);
    let backendDown = false;
    const avaClient = clientFor(server.wsUrl, ava, {
      getToken: () => {
        if (backendDown) throw new Error("auth backend unreachable");
        return mintToken(ava, 2);
      },
      refreshMarginMs: 500,
    });
    const closes: number[] = [];
    avaClient.on("disconnected", ({ code }) => {
      closes.push(code);
      backendDown = false; // the backend is back for the reconnect
    });
    const avaSees = collect(avaClient, room);
    await connected(avaClient);
    await avaClient.join(room, { since: 0 });
    backendDown = true;

    // Sam keeps writing while Ava's socket expires and comes back.
    const samClient = await connected(clientFor(server.wsUrl, sam));
    for (const n of range(1, 6)) {
      await samClient.send(room, `update ${n}`);
      await sleep(500);
    }
    await waitFor(() => avaSees.length === 6, "all of Sam's messages at Ava", 15_000);
    expect(closes[0]).toBe(4001);
    expect(avaSees.map((m) => m.seq)).toEqual(range(1, 6));
    expect(avaSees.map((m) => m.body)).toEqual(range(1, 6).map((n) => `update ${n}`));
  });

  test("support: the agent's answer streams as deltas that add up to the final message", async () => {
    const ava = newUser("Ava", "client");
    await server.putUser(ava);
    const avaClient = await connected(clientFor(server.wsUrl, ava));
    const conversation = await avaClient.openSupportConversation();
    expect(conversation.room).toBe(`support:${conversation.id}`);
    await avaClient.join(conversation.room);
    const deltas: MessageDeltaFrame[] = [];
    avaClient.on("message.delta", (frame) => deltas.push(frame));
    const messages = collect(avaClient, conversation.room);
    await avaClient.send(conversation.room, "How do refunds work?");
    await waitFor(
      () => messages.some((m) => m.sender.role === "agent"),
      "the agent's complete answer",
      20_000,
    );
    const answer = messages.find((m) => m.sender.role === "agent");
    const pieces = deltas.filter((d) => d.id === answer?.id);
    expect(pieces.length).toBeGreaterThan(1);
    expect(pieces.map((d) => d.delta).join("")).toBe(answer?.body);
  });
});

describe("a long backlog", () => {
  test("a join with since is replayed in pages, fetched in order before newer messages", async () => {
    const server = await TestServer.start({ env: { MIXROOM__SERVER__REPLAY_MAX_MESSAGES: "5" } });
    try {
      const ava = newUser("Ava", "client");
      const sam = newUser("Sam", "studio_owner");
      const { room } = await server.openBooking(ava, [sam]);
      const avaClient = await connected(clientFor(server.wsUrl, ava));
      await avaClient.join(room);
      for (let i = 1; i <= 23; i++) await avaClient.send(room, `backlog ${i}`);

      const samClient = await connected(clientFor(server.wsUrl, sam));
      const samSees = collect(samClient, room);
      const joins: JoinedFrame[] = [];
      samClient.on("joined", (frame) => joins.push(frame));
      const joined = await samClient.join(room, { since: 0 });
      expect(joined).toMatchObject({ last_seq: 23, has_more: true, replay_until: 5 });
      // A newer message while the rest is being paged waits its turn.
      await avaClient.send(room, "the newest");
      await waitFor(() => samSees.length === 24, "the whole backlog and the newest message");
      expect(samSees.map((m) => m.seq)).toEqual(range(1, 24));
      expect(samSees[23]?.body).toBe("the newest");
      expect(joins).toHaveLength(1);
      expect(samClient.lastSeq(room)).toBe(24);
    } finally {
      await server.stop();
    }
  });
});

describe("failures on the way", () => {
  test("an ack lost on the wire: the resend with the same client_id is stored once", async () => {
    const server = await TestServer.start();
    const proxy = await AckDroppingProxy.start(server.wsUrl);
    try {
      const ava = newUser("Ava", "client");
      const sam = newUser("Sam", "studio_owner");
      const { room } = await server.openBooking(ava, [sam]);
      const samClient = await connected(clientFor(server.wsUrl, sam));
      const samSees = collect(samClient, room);
      await samClient.join(room);

      const avaClient = await connected(clientFor(proxy.url, ava));
      await avaClient.join(room);
      const reconnects: number[] = [];
      avaClient.on("reconnecting", ({ attempt }) => reconnects.push(attempt));
      proxy.dropNextAck = true;
      const ack = await avaClient.send(room, "booked it!", { clientId: "ava-msg-1" });
      expect(proxy.droppedAcks).toBe(1);
      expect(reconnects.length).toBeGreaterThanOrEqual(1);
      expect(ack).toMatchObject({ client_id: "ava-msg-1", seq: 1 });

      await sleep(300);
      expect(samSees.map((m) => m.seq)).toEqual([1]);
      const stored = await server.storedMessages(ava, room);
      expect(stored.map((m) => m.client_id)).toEqual(["ava-msg-1"]);
    } finally {
      await proxy.close();
      await server.stop();
    }
  });

  test.each([
    ["killed (SIGKILL)", "SIGKILL"],
    ["shut down (SIGTERM, close 1001)", "SIGTERM"],
  ] as const)("the server is %s and restarted mid-conversation: nothing lost, nothing duplicated", async (_, signal) => {
    const server = await TestServer.start();
    try {
      const ava = newUser("Ava", "client");
      const sam = newUser("Sam", "studio_owner");
      const { room } = await server.openBooking(ava, [sam]);
      const avaClient = await connected(clientFor(server.wsUrl, ava));
      const samClient = await connected(clientFor(server.wsUrl, sam));
      const avaSees = collect(avaClient, room);
      const samSees = collect(samClient, room);
      await avaClient.join(room);
      await samClient.join(room);

      // Ava writes 30 messages in a burst; the server dies after Sam has
      // seen some, and 10 more are queued while it is down.
      const bodies = range(1, 40).map((n) => `take ${n}`);
      const acks: Array<Promise<AckFrame>> = bodies.slice(0, 30).map((body) => avaClient.send(room, body));
      await waitFor(() => samSees.length >= 8, "the first messages at Sam");
      const closes: number[] = [];
      samClient.on("disconnected", ({ code }) => closes.push(code));
      let avaRetries = 0;
      avaClient.on("reconnecting", () => avaRetries++);
      await server.kill(signal);
      // Stopped mid-burst: some messages were still queued or in flight.
      expect(avaClient.pendingMessages().length).toBeGreaterThan(0);
      const queuedOffline = bodies.slice(30).map((body) => avaClient.send(room, body));
      acks.push(...queuedOffline);
      // Trying again: waiting out its backoff, or already dialling the
      // server that is down (which of the two at this instant is timing).
      await waitFor(() => avaRetries > 0 && closes.length > 0, "both clients seeing the drop, Ava's retrying");
      expect(["reconnecting", "connecting"]).toContain(avaClient.state);
      expect(closes[0]).toBe(signal === "SIGTERM" ? 1001 : 1006);
      await server.restart(); // same port, same SQLite file

      const acked = await Promise.all(acks);
      expect(acked.map((ack) => ack.seq)).toEqual(range(1, 40));
      await waitFor(() => samSees.length === 40 && avaSees.length === 40, "all 40 messages on both sides", 20_000);
      await sleep(500); // anything late would be a duplicate
      for (const seen of [samSees, avaSees]) {
        expect(seen.map((m) => m.seq)).toEqual(range(1, 40));
        expect(seen.map((m) => m.body)).toEqual(bodies);
      }
      const stored = await server.storedMessages(sam, room);
      expect(stored.map((m) => m.body)).toEqual(bodies);
      expect(new Set(stored.map((m) => m.client_id)).size).toBe(40);
    } finally {
      await server.stop();
    }
  });
});
