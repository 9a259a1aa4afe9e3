/**
 * Room views, per-room send queues, the `unauthorized` state and the HTTP
 * helpers against the real server binary: a conversation that goes on
 * while the server is killed and started again, a room whose sends are
 * held on the wire while another room's go through, tokens the server
 * refuses, notification paging and email preferences.
 */
import { afterAll, afterEach, beforeAll, describe, expect, test } from "vitest";
import WebSocket, { WebSocketServer } from "ws";

import { MixroomClient, type RoomSnapshot, type RoomView } from "../src/index.js";
import { freePort, JWT_SECRET, mintToken, newUser, sleep, TestServer, waitFor, type TestUser } from "./server.js";
import { clientFor, closeOpened, connected, until, viewOf } from "./views-kit.js";

function range(from: number, to: number): number[] {
  return Array.from({ length: to - from + 1 }, (_, i) => from + i);
}

/** Every snapshot a view published, to check none ever held a duplicate or a step back. */
function recordSnapshots(view: RoomView): RoomSnapshot[] {
  const seen: RoomSnapshot[] = [];
  view.subscribe(() => seen.push(view.getSnapshot()));
  return seen;
}

function assertOrderedAndUnique(snapshots: RoomSnapshot[]): void {
  for (const snapshot of snapshots) {
    const seqs = snapshot.messages.map((m) => m.seq);
    for (let i = 1; i < seqs.length; i++) {
      if (seqs[i] !== (seqs[i - 1] ?? 0) + 1) {
        throw new Error(`a snapshot's messages are not contiguous and ascending: ${seqs.join(",")}`);
      }
    }
  }
}

afterEach(() => {
  closeOpened();
});

describe("room view against the real server", () => {
  test("history on join, live messages, pending sends, and a server killed and restarted mid-conversation", async () => {
    const server = await TestServer.start();
    try {
      const ava = newUser("Ava", "client");
      const sam = newUser("Sam", "studio_owner");
      const { room } = await server.openBooking(ava, [sam]);
      // An earlier conversation: 30 messages from Sam, before Ava opens the room.
      const samClient = await connected(clientFor(server.wsUrl, sam));
      for (const n of range(1, 30)) await samClient.send(room, `earlier ${n}`);

      const avaClient = await connected(clientFor(server.wsUrl, ava));
      const avaRoom = viewOf(avaClient, room, 20);
      const snapshots = recordSnapshots(avaRoom);
      let snapshot = await until(avaRoom, (s) => s.status === "ready", "Ava's room loaded");
      // The latest page, not an empty room.
      expect(snapshot.messages.map((m) => m.seq)).toEqual(range(11, 30));
      expect(snapshot.messages.at(-1)?.body).toBe("earlier 30");
      expect(snapshot.hasOlder).toBe(true);
      // The server counted all 30 as unread for Ava: 20 shown, 10 older.
      expect(snapshot.unread).toBe(30);
      expect(snapshot.members.map((m) => m.name).sort()).toEqual(["Ava", "Sam"]);

      // Sam's view sees Ava's sends; Ava's pending ones become stored ones.
      const samRoom = viewOf(samClient, room, 100);
      await until(samRoom, (s) => s.status === "ready" && s.lastSeq === 30, "Sam's room loaded");
      const bodies = range(1, 30).map((n) => `take ${n}`);
      for (const body of bodies.slice(0, 20)) avaRoom.send(body);
      expect(avaRoom.getSnapshot().pending.length).toBe(20);
      await until(samRoom, (s) => s.lastSeq >= 36, "the first of Ava's messages at Sam");

      await server.kill("SIGKILL");
      await until(avaRoom, (s) => s.connection === "reconnecting", "Ava noticing the server is gone");
      for (const body of bodies.slice(20)) avaRoom.send(body);
      snapshot = avaRoom.getSnapshot();
      expect(snapshot.status).toBe("joining");
      expect(snapshot.pending.length).toBeGreaterThan(0); // still on their way
      expect(snapshot.pending.every((p) => p.state !== "failed")).toBe(true);
      await server.restart(); // same port, same database

      snapshot = await until(
        avaRoom,
        (s) => s.status === "ready" && s.lastSeq === 60 && s.pending.length === 0,
        "all of Ava's messages stored and shown",
        30_000,
      );
      await sleep(500); // anything late would be a duplicate
      snapshot = avaRoom.getSnapshot();
      expect(snapshot.messages.map((m) => m.seq)).toEqual(range(11, 60));
      expect(snapshot.messages.slice(20).map((m) => m.body)).toEqual(bodies);
      expect(snapshot.pending).toEqual([]);
      const samSnapshot = await until(samRoom, (s) => s.lastSeq === 60, "all of Ava's messages at Sam", 30_000);
      expect(samSnapshot.messages.map((m) => m.seq)).toEqual(range(1, 60));
      assertOrderedAndUnique(snapshots);
      const stored = await server.storedMessages(sam, room);
      expect(stored.map((m) => m.body)).toEqual([...range(1, 30).map((n) => `earlier ${n}`), ...bodies]);

      // Older pages are still there, and the user's reads move the count.
      await expect(avaRoom.loadOlder()).resolves.toBe(false);
      expect(avaRoom.getSnapshot().messages.map((m) => m.seq)).toEqual(range(1, 60));
      avaRoom.markRead();
      snapshot = await until(avaRoom, (s) => s.unread === 0, "Ava's unread count after reading");
      expect(snapshot.readSeq).toBe(60);
      await until(samRoom, (s) => s.reads[ava.id] === 60, "Ava's read cursor at Sam");
    } finally {
      await server.stop();
    }
  });

  test("typing and presence reach the other user's view; closing a view leaves the room", async () => {
    const server = await TestServer.start();
    try {
      const ava = newUser("Ava", "client");
      const sam = newUser("Sam", "studio_owner");
      const { room } = await server.openBooking(ava, [sam]);
      const avaClient = await connected(clientFor(server.wsUrl, ava));
      const samClient = await connected(clientFor(server.wsUrl, sam));
      const avaRoom = viewOf(avaClient, room);
      await until(avaRoom, (s) => s.status === "ready", "Ava's room");
      const samRoom = viewOf(samClient, room);
      await until(samRoom, (s) => s.status === "ready", "Sam's room");
      await until(avaRoom, (s) => s.members.find((m) => m.user_id === sam.id)?.online === true, "Sam online at Ava");
      samRoom.typing();
      await until(avaRoom, (s) => s.typing.includes(sam.id), "Sam typing at Ava");
      samRoom.close();
      expect(samClient.joinedRooms()).toEqual([]);
      await until(avaRoom, (s) => s.members.find((m) => m.user_id === sam.id)?.online === false, "Sam gone offline at Ava");
    } finally {
      await server.stop();
    }
  });
});

describe("per-room send queues against the real server", () => {
  test("a room whose sends are held on the wire does not hold up another room's", async () => {
    const server = await TestServer.start();
    const proxy = await SendHoldingProxy.start(server.wsUrl);
    try {
      const ava = newUser("Ava", "client");
      const sam = newUser("Sam", "studio_owner");
      const { room: stalled } = await server.openBooking(ava, [sam]);
      const { room: flowing } = await server.openBooking(ava, [sam]);
      proxy.holdRoom = stalled;
      const avaClient = await connected(clientFor(proxy.url, ava, { ackTimeoutMs: 1_000 }));

      const held = ["first", "second", "third"].map((body) => avaClient.send(stalled, body));
      const settled: string[] = [];
      for (const [i, promise] of held.entries()) void promise.then(() => settled.push(`held ${i}`));
      const acks = [];
      for (const n of range(1, 5)) acks.push(await avaClient.send(flowing, `booking chat ${n}`));
      expect(acks.map((ack) => ack.seq)).toEqual(range(1, 5));
      expect(settled).toEqual([]);
      // Only the stalled room's head went out (and was resent after the ack timeout).
      await sleep(1_500);
      expect(new Set(proxy.held.map((frame) => frame.client_id)).size).toBe(1);
      expect(proxy.held.length).toBeGreaterThanOrEqual(2);
      expect(avaClient.pendingMessages(stalled).map((m) => m.body)).toEqual(["first", "second", "third"]);

      proxy.release();
      const stalledAcks = await Promise.all(held);
      expect(stalledAcks.map((ack) => ack.seq)).toEqual([1, 2, 3]);
      const stored = await server.storedMessages(ava, stalled);
      expect(stored.map((m) => m.body)).toEqual(["first", "second", "third"]);
      expect((await server.storedMessages(ava, flowing)).map((m) => m.body)).toEqual(range(1, 5).map((n) => `booking chat ${n}`));
    } finally {
      await proxy.close();
      await server.stop();
    }
  });
});

describe("the unauthorized state against the real server", () => {
  let server: TestServer;

  beforeAll(async () => {
    server = await TestServer.start();
  });

  afterAll(async () => {
    await server?.stop();
  });

  function countConnects(client: MixroomClient): () => number {
    let connects = 0;
    client.on("state", ({ state }) => {
      if (state === "connecting") connects += 1;
    });
    return () => connects;
  }

  test("getToken() throwing (signed out): unauthorized, no reconnect loop; connect() after sign-in works", async () => {
    const ava = newUser("Ava", "client");
    await server.putUser(ava);
    let signedIn = false;
    const client = clientFor(server.wsUrl, ava, {
      getToken: () => {
        if (!signedIn) throw new Error("no session");
        return mintToken(ava);
      },
    });
    const connects = countConnects(client);
    const reasons: string[] = [];
    client.on("unauthorized", ({ reason }) => reasons.push(reason));
    client.connect();
    await waitFor(() => client.state === "unauthorized", "the unauthorized state");
    await sleep(1_500); // several backoff periods
    expect(client.state).toBe("unauthorized");
    expect(connects()).toBe(1);
    expect(reasons).toEqual(["token_error"]);
    signedIn = true;
    client.connect();
    await client.whenOpen(15_000);
    expect(client.userId).toBe(ava.id);
  });

  test("a token the server refuses (4001 at auth): unauthorized after one attempt", async () => {
    const ava = newUser("Ava", "client");
    await server.putUser(ava);
    const forged = mintToken(ava).replace(/\.[^.]+$/, ".bm90LXRoZS1zaWduYXR1cmU");
    expect(forged).not.toBe(mintToken(ava));
    const client = clientFor(server.wsUrl, ava, { getToken: () => forged });
    const connects = countConnects(client);
    const closes: number[] = [];
    client.on("disconnected", ({ code }) => closes.push(code));
    client.connect();
    await waitFor(() => client.state === "unauthorized", "the unauthorized state");
    await sleep(1_500);
    expect(closes).toEqual([4001]);
    expect(connects()).toBe(1);
  });

  test("an expired token reconnects once with a fresh one; when that one is refused too, it stops", async () => {
    const ava = newUser("Ava", "client");
    const sam = newUser("Sam", "studio_owner");
    const { room } = await server.openBooking(ava, [sam]);
    let tokens = 0;
    let signedOut = false;
    let client: MixroomClient | undefined = undefined;
    client = clientFor(server.wsUrl, ava, {
      getToken: () => {
        // Refreshing on the live socket fails, so each 2-second token runs
        // out and the server closes with 4001 at its exp.
        if (client?.state === "open") throw new Error("refresh unavailable");
        tokens += 1;
        // Signed out: the app's auth library hands back a token that is no
        // longer valid (signed with a key the server does not know).
        return signedOut ? wrongSecretToken(ava) : mintToken(ava, 2);
      },
    });
    const closes: number[] = [];
    client.on("disconnected", ({ code }) => closes.push(code));
    const view = viewOf(client, room);
    client.connect();
    await until(view, (s) => s.status === "ready", "the room");
    // The first expiry: a fresh token, back in the room.
    await waitFor(() => closes.length === 1, "the first expiry", 10_000);
    expect(closes).toEqual([4001]);
    await waitFor(() => client.state === "open", "reconnected with a fresh token", 10_000);
    signedOut = true;
    await waitFor(() => client.state === "unauthorized", "unauthorized after the refused token", 10_000);
    const tokensThen = tokens;
    await sleep(1_500);
    expect(tokens).toBe(tokensThen);
    expect(closes.at(-1)).toBe(4001);
    expect(view.getSnapshot().connection).toBe("unauthorized");
  });
});

describe("HTTP helpers against the real server", () => {
  test("notifications page with before/limit; email preferences read and change", async () => {
    const server = await TestServer.start();
    try {
      const ava = newUser("Ava", "client");
      await server.putUser(ava);
      for (const n of range(1, 5)) {
        await server.internal("POST", "/v1/internal/notifications", {
          user_id: ava.id,
          kind: "booking",
          title: `update ${n}`,
          source: `pack-${n}`,
        });
      }
      const client = clientFor(server.wsUrl, ava); // HTTP only: never connected
      const titles: string[] = [];
      let before: string | undefined;
      let pages = 0;
      for (;;) {
        const page = await client.notifications({ limit: 2, ...(before !== undefined ? { before } : {}) });
        pages += 1;
        titles.push(...page.notifications.map((n) => n.title));
        expect(page.unread_count).toBe(5);
        if (!page.has_more) break;
        before = page.notifications.at(-1)?.id;
      }
      expect(pages).toBe(3);
      expect(titles).toEqual(["update 5", "update 4", "update 3", "update 2", "update 1"]);

      const preferences = await client.preferences();
      expect(preferences.email).toEqual({ chat: true, booking: true, support: true, marketing: false, reminder: true });
      expect(preferences.chat_delay_secs).toBeNull();
      const changed = await client.updatePreferences({ email: { marketing: true }, chat_delay_secs: 600 });
      expect(changed.email).toEqual({ chat: true, booking: true, support: true, marketing: true, reminder: true });
      expect(changed.chat_delay_secs).toBe(600);
      expect((await client.preferences()).chat_delay_secs).toBe(600);
      await expect(client.updatePreferences({ chat_delay_secs: -1 })).rejects.toMatchObject({ code: "http", status: 422 });
    } finally {
      await server.stop();
    }
  });
});

/** A token of the right shape signed with a secret the server does not have. */
function wrongSecretToken(user: TestUser): string {
  const good = mintToken(user);
  const [header, claims] = good.split(".");
  return `${header}.${claims}.${Buffer.from(`${JWT_SECRET}-not`).toString("base64url").slice(0, 43)}`;
}

/**
 * A WebSocket proxy that holds back the client's `send` frames for one
 * room (they reach the server only on `release()`), as a stalled room —
 * a long rate limit, a slow store — would.
 */
class SendHoldingProxy {
  holdRoom: string | undefined;
  readonly held: Array<{ client_id: string; text: string }> = [];
  private readonly upstreams = new Set<WebSocket>();

  private constructor(
    private readonly server: WebSocketServer,
    readonly url: string,
  ) {}

  static async start(upstreamUrl: string): Promise<SendHoldingProxy> {
    const port = await freePort();
    const server = new WebSocketServer({ host: "127.0.0.1", port });
    await new Promise<void>((ready) => server.once("listening", () => ready()));
    const proxy = new SendHoldingProxy(server, `ws://127.0.0.1:${port}/v1/ws`);
    server.on("connection", (downstream) => proxy.pipe(downstream, upstreamUrl));
    return proxy;
  }

  /** Lets everything held through, and stops holding. */
  release(): void {
    this.holdRoom = undefined;
    const upstream = [...this.upstreams].find((socket) => socket.readyState === WebSocket.OPEN);
    for (const frame of this.held.splice(0)) upstream?.send(frame.text);
  }

  private pipe(downstream: WebSocket, upstreamUrl: string): void {
    const upstream = new WebSocket(upstreamUrl);
    this.upstreams.add(upstream);
    const early: string[] = [];
    downstream.on("message", (data) => {
      const text = data.toString();
      const frame = JSON.parse(text) as { type: string; room?: string; client_id?: string };
      if (frame.type === "send" && frame.room === this.holdRoom) {
        this.held.push({ client_id: frame.client_id ?? "", text });
        return;
      }
      if (upstream.readyState === WebSocket.OPEN) upstream.send(text);
      else early.push(text);
    });
    upstream.on("open", () => {
      for (const text of early.splice(0)) upstream.send(text);
    });
    upstream.on("message", (data) => downstream.send(data.toString()));
    const closeBoth = (): void => {
      this.upstreams.delete(upstream);
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
