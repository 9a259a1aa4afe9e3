/**
 * The client's own logic against a scripted server: ordering and
 * de-duplication, gap filling, the send queue's retries, backoff, token
 * refresh timing. The real server is exercised in client.test.ts.
 */
import { afterEach, beforeEach, describe, expect, test } from "vitest";

import {
  backoffDelay,
  DEFAULT_BACKOFF,
  httpUrlOf,
  MixroomClient,
  tokenExpiresAt,
  type MessageFrame,
} from "../src/index.js";
import { FakeSocket, tick, until } from "./fake-socket.js";

function unsignedToken(expiresInSeconds: number): string {
  const encode = (value: unknown): string => Buffer.from(JSON.stringify(value)).toString("base64url");
  const exp = Math.floor(Date.now() / 1000) + expiresInSeconds;
  return `${encode({ alg: "HS256" })}.${encode({ sub: "u1", exp })}.signature`;
}

function message(room: string, seq: number): Record<string, unknown> {
  return {
    type: "message",
    room,
    seq,
    id: `m${seq}`,
    client_id: `c${seq}`,
    sender: { user_id: "u2", name: "Sam", role: "studio_owner" },
    body: `message ${seq}`,
    sent_at: new Date().toISOString(),
  };
}

async function connectedClient(
  options: Partial<ConstructorParameters<typeof MixroomClient>[0]> = {},
): Promise<{ client: MixroomClient; socket: FakeSocket }> {
  const client = new MixroomClient({
    url: "ws://mixroom.test/v1/ws",
    getToken: () => unsignedToken(3600),
    WebSocket: FakeSocket,
    backoff: { initialMs: 10, maxMs: 50 },
    ...options,
  });
  client.connect();
  await tick();
  const socket = FakeSocket.latest();
  socket.welcome();
  return { client, socket };
}

beforeEach(() => FakeSocket.reset());
afterEach(() => FakeSocket.reset());

describe("backoff", () => {
  test("grows exponentially up to the cap, with jitter below the exponential value", () => {
    const options = { initialMs: 100, maxMs: 1000, factor: 2, jitter: 0.5 };
    expect([0, 1, 2, 3, 4, 10].map((n) => backoffDelay(n, options, () => 0))).toEqual([
      100, 200, 400, 800, 1000, 1000,
    ]);
    expect(backoffDelay(2, options, () => 1)).toBe(200);
    for (let i = 0; i < 100; i++) {
      const delay = backoffDelay(3, options);
      expect(delay).toBeGreaterThanOrEqual(400);
      expect(delay).toBeLessThanOrEqual(800);
    }
    expect(DEFAULT_BACKOFF.maxMs).toBe(30_000);
  });

  test("failed connects are retried with growing delays, and a welcome resets them", async () => {
    FakeSocket.refuse = true;
    const client = new MixroomClient({
      url: "ws://mixroom.test/v1/ws",
      getToken: () => unsignedToken(3600),
      WebSocket: FakeSocket,
      backoff: { initialMs: 5, maxMs: 40, factor: 2, jitter: 0 },
    });
    const delays: number[] = [];
    client.on("reconnecting", ({ delayMs }) => delays.push(delayMs));
    client.connect();
    await until(() => delays.length >= 5, "five retries");
    expect(delays.slice(0, 5)).toEqual([5, 10, 20, 40, 40]);
    FakeSocket.refuse = false;
    const sockets = FakeSocket.instances.length;
    await until(() => FakeSocket.instances.length > sockets && client.state === "authenticating", "a socket that opens");
    FakeSocket.latest().welcome();
    expect(client.state).toBe("open");
    FakeSocket.latest().serverClose(1006);
    expect(delays.at(-1)).toBe(5);
    client.close();
    expect(client.state).toBe("closed");
  });
});

describe("liveness", () => {
  test("a socket that never gets its welcome is given up and retried", async () => {
    const client = new MixroomClient({
      url: "ws://mixroom.test/v1/ws",
      getToken: () => unsignedToken(3600),
      WebSocket: FakeSocket,
      backoff: { initialMs: 10, maxMs: 10 },
      requestTimeoutMs: 100,
    });
    const closes: number[] = [];
    client.on("disconnected", ({ code }) => closes.push(code));
    client.connect();
    await until(() => FakeSocket.instances.length === 2, "a second socket");
    expect(closes).toEqual([4000]);
    expect(FakeSocket.instances[0]?.sentOfType("auth")).toHaveLength(1);
    client.close();
  });

  test("a silent connection is pinged, then given up", async () => {
    const { client, socket } = await connectedClient();
    socket.receive({
      type: "welcome",
      user_id: "u1",
      session_id: "s1",
      server_time: new Date().toISOString(),
      heartbeat_ms: 1000,
    });
    const closes: number[] = [];
    client.on("disconnected", ({ code }) => closes.push(code));
    await until(() => socket.sentOfType("ping").length >= 1, "a ping after a silent heartbeat");
    expect(closes).toEqual([]);
    await until(() => closes.length === 1, "the silent socket given up", 6000);
    expect(closes).toEqual([4000]);
    expect(client.state).toBe("reconnecting");
    client.close();
  });
});

describe("tokens", () => {
  test("reads exp from a JWT, in milliseconds", () => {
    const token = unsignedToken(60);
    const expiresAt = tokenExpiresAt(token) ?? 0;
    expect(Math.abs(expiresAt - (Date.now() + 60_000))).toBeLessThan(2000);
    expect(tokenExpiresAt("not-a-jwt")).toBeUndefined();
  });

  test("a fresh token is sent on the live socket before the old one expires", async () => {
    let issued = 0;
    const { client, socket } = await connectedClient({
      getToken: () => {
        issued += 1;
        return unsignedToken(2);
      },
      refreshMarginMs: 1000,
    });
    expect(issued).toBe(1);
    await tick(500);
    expect(socket.sentOfType("auth")).toHaveLength(1); // not refreshed early
    await until(() => socket.sentOfType("auth").length === 2, "the refresh");
    const auths = socket.sentOfType("auth");
    expect(auths).toHaveLength(2);
    expect(issued).toBe(2);
    socket.receive({ type: "token_refreshed", ref: auths[1]?.ref, expires_at: new Date().toISOString() });
    expect(FakeSocket.instances).toHaveLength(1);
    client.close();
  });

  test("derives the HTTP base URL from the socket URL", () => {
    expect(httpUrlOf("ws://127.0.0.1:8080/v1/ws")).toBe("http://127.0.0.1:8080");
    expect(httpUrlOf("wss://rt.mixroom.app/v1/ws")).toBe("https://rt.mixroom.app");
  });
});

describe("delivery", () => {
  test("messages reach the app once and in seq order; holes are filled from history", async () => {
    const { client, socket } = await connectedClient();
    const seen: number[] = [];
    client.on("message", (m: MessageFrame) => seen.push(m.seq));
    const joined = client.join("booking:b1");
    const join = socket.sentOfType("join")[0];
    expect(join).toMatchObject({ room: "booking:b1" });
    expect(join).not.toHaveProperty("since");
    socket.receive({ type: "joined", ref: join?.ref, room: "booking:b1", last_seq: 2, members: [] });
    await joined;
    socket.receive(message("booking:b1", 3));
    socket.receive(message("booking:b1", 3)); // duplicate
    socket.receive(message("booking:b1", 2)); // old
    socket.receive(message("booking:b1", 6)); // ahead of a hole (4, 5)
    expect(seen).toEqual([3]);
    const gap = socket.sentOfType("history")[0];
    expect(gap).toMatchObject({ room: "booking:b1", before: 6, limit: 2 });
    socket.receive(message("booking:b1", 7));
    socket.receive({
      type: "history",
      ref: gap?.ref,
      room: "booking:b1",
      messages: [message("booking:b1", 5), message("booking:b1", 4)].map(({ type: _type, ...rest }) => rest),
      has_more: true,
    });
    expect(seen).toEqual([3, 4, 5, 6, 7]);
    expect(client.lastSeq("booking:b1")).toBe(7);
    client.close();
  });

  test("after a reconnect the room is re-joined with since = last delivered seq", async () => {
    const { client, socket } = await connectedClient();
    const seen: number[] = [];
    client.on("message", (m) => seen.push(m.seq));
    const joined = client.join("booking:b1", { since: 0 });
    const join = socket.sentOfType("join")[0];
    expect(join).toMatchObject({ since: 0 });
    socket.receive({ type: "joined", ref: join?.ref, room: "booking:b1", last_seq: 2, members: [] });
    await joined;
    socket.receive(message("booking:b1", 1));
    socket.receive(message("booking:b1", 2));
    client.markRead("booking:b1", 2);
    expect(socket.sentOfType("read")).toEqual([{ type: "read", room: "booking:b1", seq: 2 }]);
    socket.serverClose(1001, "server shutting down");
    expect(client.state).toBe("reconnecting");
    await until(() => client.state === "authenticating", "the reconnect");
    const second = FakeSocket.latest();
    expect(second).not.toBe(socket);
    second.welcome();
    const rejoin = second.sentOfType("join")[0];
    expect(rejoin).toMatchObject({ room: "booking:b1", since: 2 });
    second.receive({ type: "joined", ref: rejoin?.ref, room: "booking:b1", last_seq: 4, members: [] });
    second.receive(message("booking:b1", 2)); // a replay overlap is dropped
    second.receive(message("booking:b1", 3));
    second.receive(message("booking:b1", 4));
    expect(seen).toEqual([1, 2, 3, 4]);
    client.close();
  });

  test("a room whose history shrank (store reset) restarts counting", async () => {
    const { client, socket } = await connectedClient();
    const resets: unknown[] = [];
    client.on("room.reset", (event) => resets.push(event));
    void client.join("booking:b1", { since: 10 });
    const join = socket.sentOfType("join")[0];
    socket.receive({ type: "joined", ref: join?.ref, room: "booking:b1", last_seq: 1, members: [] });
    expect(resets).toEqual([{ room: "booking:b1", lastSeq: 1, previousLastSeq: 10 }]);
    const seen: number[] = [];
    client.on("message", (m) => seen.push(m.seq));
    socket.receive(message("booking:b1", 2));
    expect(seen).toEqual([2]);
    client.close();
  });

  test("a join the server refuses rejects and is not retried", async () => {
    const { client, socket } = await connectedClient();
    const joined = client.join("booking:other");
    const join = socket.sentOfType("join")[0];
    socket.receive({ type: "error", ref: join?.ref, code: "forbidden", message: "not a participant" });
    await expect(joined).rejects.toMatchObject({ code: "forbidden" });
    expect(client.joinedRooms()).toEqual([]);
    client.close();
  });
});

describe("send queue", () => {
  test("one message in flight at a time; rate_limited is retried with the same client_id", async () => {
    const { client, socket } = await connectedClient();
    const first = client.send("booking:b1", "one", { clientId: "c-1" });
    const second = client.send("booking:b1", "two", { clientId: "c-2" });
    expect(socket.sentOfType("send").map((f) => f.client_id)).toEqual(["c-1"]);
    socket.receive({ type: "error", ref: "send:c-1", code: "rate_limited", message: "slow down", retry_after_ms: 30 });
    await until(() => socket.sentOfType("send").length === 2, "the retry after retry_after_ms");
    expect(socket.sentOfType("send").map((f) => f.client_id)).toEqual(["c-1", "c-1"]);
    socket.receive({ type: "ack", ref: "send:c-1", client_id: "c-1", id: "m1", seq: 1, sent_at: "t" });
    await expect(first).resolves.toMatchObject({ seq: 1 });
    expect(socket.sentOfType("send").map((f) => f.client_id)).toEqual(["c-1", "c-1", "c-2"]);
    socket.receive({ type: "error", ref: "send:c-2", code: "too_large", message: "too big" });
    await expect(second).rejects.toMatchObject({ code: "too_large" });
    expect(client.pendingMessages()).toEqual([]);
    client.close();
  });

  test("an unacked message is resent with the same client_id on the next socket", async () => {
    const { client, socket } = await connectedClient();
    const sent = client.send("booking:b1", "hello", { clientId: "c-9" });
    expect(socket.sentOfType("send")).toHaveLength(1);
    socket.serverClose(1006);
    await until(() => client.state === "authenticating", "the reconnect");
    const next = FakeSocket.latest();
    next.welcome();
    expect(next.sentOfType("send")).toEqual([
      { type: "send", room: "booking:b1", client_id: "c-9", body: "hello", ref: "send:c-9" },
    ]);
    next.receive({ type: "ack", client_id: "c-9", id: "m1", seq: 1, sent_at: "t" });
    await expect(sent).resolves.toMatchObject({ client_id: "c-9", seq: 1 });
    client.close();
  });

  test("a message queued while offline goes out after the welcome", async () => {
    const client = new MixroomClient({
      url: "ws://mixroom.test/v1/ws",
      getToken: () => unsignedToken(3600),
      WebSocket: FakeSocket,
    });
    const sent = client.send("booking:b1", "queued", { clientId: "c-q" });
    expect(client.pendingMessages()).toEqual([{ room: "booking:b1", clientId: "c-q", body: "queued", state: "queued" }]);
    client.connect();
    await tick();
    const socket = FakeSocket.latest();
    expect(socket.sentOfType("send")).toHaveLength(0);
    socket.welcome();
    expect(socket.sentOfType("send")).toHaveLength(1);
    expect(client.pendingMessages("booking:b1").map((m) => m.state)).toEqual(["sending"]);
    socket.receive({ type: "ack", client_id: "c-q", id: "m1", seq: 1, sent_at: "t" });
    await sent;
    client.close();
  });

  test("typing frames are throttled per room", async () => {
    const { client, socket } = await connectedClient({ typingThrottleMs: 1000 });
    void client.join("booking:b1");
    const join = socket.sentOfType("join")[0];
    socket.receive({ type: "joined", ref: join?.ref, room: "booking:b1", last_seq: 0, members: [] });
    client.typing("booking:b1");
    client.typing("booking:b1");
    client.typing("booking:b1");
    expect(socket.sentOfType("typing")).toHaveLength(1);
    client.close();
  });
});

describe("per-room send queues", () => {
  test("a room whose ack is withheld does not hold up another room; order within each room is kept", async () => {
    const { client, socket } = await connectedClient({ ackTimeoutMs: 60_000 });
    const support = [client.send("support:s1", "refund?", { clientId: "s-1" }), client.send("support:s1", "hello?", { clientId: "s-2" })];
    const booking = [
      client.send("booking:b1", "one", { clientId: "b-1" }),
      client.send("booking:b1", "two", { clientId: "b-2" }),
      client.send("booking:b1", "three", { clientId: "b-3" }),
    ];
    const sentIds = (): unknown[] => socket.sentOfType("send").map((f) => f.client_id);
    // Each room's head goes out at once; the rest of each room waits its turn.
    expect(sentIds()).toEqual(["s-1", "b-1"]);
    // The support message gets no ack (a stalled room); the booking chat goes on.
    for (const [i, id] of ["b-1", "b-2", "b-3"].entries()) {
      socket.receive({ type: "ack", ref: `send:${id}`, client_id: id, id: `m${i}`, seq: i + 1, sent_at: "t" });
    }
    await expect(Promise.all(booking)).resolves.toMatchObject([{ seq: 1 }, { seq: 2 }, { seq: 3 }]);
    expect(sentIds()).toEqual(["s-1", "b-1", "b-2", "b-3"]);
    expect(client.pendingMessages().map((m) => [m.clientId, m.state])).toEqual([
      ["s-1", "sending"],
      ["s-2", "queued"],
    ]);
    // rate_limited in one room: only that room waits.
    socket.receive({ type: "error", ref: "send:s-1", code: "rate_limited", message: "slow down", retry_after_ms: 40 });
    expect(client.pendingMessages("support:s1")[0]?.state).toBe("retrying");
    const late = client.send("booking:b1", "four", { clientId: "b-4" });
    expect(sentIds().at(-1)).toBe("b-4");
    socket.receive({ type: "ack", ref: "send:b-4", client_id: "b-4", id: "m4", seq: 4, sent_at: "t" });
    await late;
    await until(() => sentIds().filter((id) => id === "s-1").length === 2, "the support message resent");
    socket.receive({ type: "ack", ref: "send:s-1", client_id: "s-1", id: "x1", seq: 1, sent_at: "t" });
    expect(sentIds().at(-1)).toBe("s-2");
    socket.receive({ type: "ack", ref: "send:s-2", client_id: "s-2", id: "x2", seq: 2, sent_at: "t" });
    await expect(Promise.all(support)).resolves.toMatchObject([{ seq: 1 }, { seq: 2 }]);
    expect(client.pendingMessages()).toEqual([]);
    client.close();
  });

  test("a refusal in one room rejects that message only and emits send.failed", async () => {
    const { client, socket } = await connectedClient();
    const failures: unknown[] = [];
    client.on("send.failed", (event) => failures.push(event));
    const refused = client.send("booking:other", "let me in", { clientId: "x-1" });
    const fine = client.send("booking:b1", "hi", { clientId: "b-1" });
    socket.receive({ type: "error", ref: "send:x-1", code: "forbidden", message: "not a participant" });
    await expect(refused).rejects.toMatchObject({ code: "forbidden" });
    expect(failures).toMatchObject([{ room: "booking:other", clientId: "x-1", body: "let me in" }]);
    socket.receive({ type: "ack", ref: "send:b-1", client_id: "b-1", id: "m1", seq: 1, sent_at: "t" });
    await expect(fine).resolves.toMatchObject({ seq: 1 });
    client.close();
  });
});

describe("changes to messages", () => {
  const edited = (seq: number, messageSeq: number, body: string): Record<string, unknown> => ({
    type: "message.edited",
    room: "booking:b1",
    seq,
    message_seq: messageSeq,
    by: { user_id: "u2", name: "Sam", role: "studio_owner" },
    body,
    edited_at: "2026-11-27T10:05:00.000Z",
    at: "2026-11-27T10:05:00.000Z",
  });
  const reacted = (seq: number, messageSeq: number): Record<string, unknown> => ({
    type: "message.reacted",
    room: "booking:b1",
    seq,
    message_seq: messageSeq,
    by: { user_id: "u2", name: "Sam", role: "studio_owner" },
    emoji: "👍",
    on: true,
    reactions: [{ emoji: "👍", count: 1, user_ids: ["u2"] }],
    at: "t",
  });

  test("edit, delete and react wait in the room's queue behind its messages, each with a client_id of its own; acks resolve them, refusals reject", async () => {
    const { client, socket } = await connectedClient();
    const failed: unknown[] = [];
    client.on("change.failed", (event) => failed.push(event));
    const sent = client.send("booking:b1", "See you tomorow", { clientId: "c-1" });
    const edit = client.edit("booking:b1", 1, "See you tomorrow");
    const react = client.react("booking:b1", 1, "👍");
    const unreact = client.react("booking:b1", 1, "👍", false);
    const remove = client.deleteMessage("booking:b1", 7);
    expect(client.pendingMessages()).toMatchObject([{ clientId: "c-1", state: "sending" }]);
    expect(client.pendingChanges("booking:b1").map((c) => [c.kind, c.seq, c.state])).toEqual([
      ["edit", 1, "queued"],
      ["react", 1, "queued"],
      ["react", 1, "queued"],
      ["delete", 7, "queued"],
    ]);
    // Each change has a fresh client_id of its own (never a send's), and its ref names it.
    const ids = client.pendingChanges().map((c) => c.clientId);
    expect(new Set([...ids, "c-1"]).size).toBe(5);
    for (const change of client.pendingChanges()) {
      expect(change.clientId).toMatch(/^[0-9a-f-]{36}$/);
      expect(change.ref).toBe(`${change.kind}:${change.clientId}`);
    }
    expect(socket.sent.filter((f) => f.type !== "auth").map((f) => f.type)).toEqual(["send"]);
    socket.receive({ type: "ack", ref: "send:c-1", client_id: "c-1", id: "m1", seq: 1, sent_at: "t" });
    await sent;

    const editFrame = socket.sentOfType("edit")[0];
    expect(editFrame).toEqual({
      type: "edit",
      room: "booking:b1",
      seq: 1,
      body: "See you tomorrow",
      client_id: ids[0],
      ref: `edit:${ids[0]}`,
    });
    socket.receive({ type: "ack", ref: editFrame?.ref, client_id: ids[0], id: "e1", seq: 2, sent_at: "t" });
    await expect(edit).resolves.toMatchObject({ seq: 2, client_id: ids[0] });

    // rate_limited: the same reaction again after the wait, same ref.
    const reactFrame = socket.sentOfType("react")[0];
    expect(reactFrame).toMatchObject({ seq: 1, emoji: "👍", on: true, client_id: ids[1] });
    socket.receive({ type: "error", ref: reactFrame?.ref, code: "rate_limited", message: "slow", retry_after_ms: 20 });
    expect(client.pendingChanges()[0]).toMatchObject({ kind: "react", state: "retrying" });
    await until(() => socket.sentOfType("react").length === 2, "the reaction resent");
    expect(socket.sentOfType("react")[1]).toEqual(reactFrame);
    socket.receive({ type: "ack", ref: reactFrame?.ref, id: "r1", seq: 3, sent_at: "t" });
    await expect(react).resolves.toMatchObject({ seq: 3 });

    const unreactFrame = socket.sentOfType("react")[2];
    expect(unreactFrame).toMatchObject({ on: false, client_id: ids[2] });
    expect(unreactFrame?.ref).not.toBe(reactFrame?.ref);
    socket.receive({ type: "ack", ref: unreactFrame?.ref, id: "r2", seq: 4, sent_at: "t" });
    await unreact;

    const deleteFrame = socket.sentOfType("delete")[0];
    expect(deleteFrame).toMatchObject({ type: "delete", room: "booking:b1", seq: 7, client_id: ids[3] });
    socket.receive({ type: "error", ref: deleteFrame?.ref, code: "not_found", message: "no message 7" });
    await expect(remove).rejects.toMatchObject({ name: "MixroomError", code: "not_found" });
    expect(failed).toMatchObject([
      { room: "booking:b1", change: { kind: "delete", seq: 7, clientId: ids[3] }, error: { code: "not_found" } },
    ]);
    expect(client.pendingChanges()).toEqual([]);
    client.close();
  });

  test("a send with replyTo and attachments carries them, in the frame, the queue and every resend", async () => {
    const { client, socket } = await connectedClient();
    const attachments = [
      { url: "https://abcd.supabase.co/storage/v1/object/sign/stems/take3.wav?token=x", name: "take3.wav", size: 1024, content_type: "audio/wav" },
    ];
    const sent = client.send("booking:b1", "Stems", { clientId: "c-2", replyTo: 1, attachments });
    const frame = { type: "send", room: "booking:b1", client_id: "c-2", body: "Stems", reply_to: 1, attachments, ref: "send:c-2" };
    expect(socket.sentOfType("send")).toEqual([frame]);
    expect(client.pendingMessages()).toEqual([
      { room: "booking:b1", clientId: "c-2", body: "Stems", replyTo: 1, attachments, state: "sending" },
    ]);
    socket.serverClose(1006);
    await until(() => client.state === "authenticating", "the reconnect");
    const next = FakeSocket.latest();
    next.welcome();
    expect(next.sentOfType("send")).toEqual([frame]);
    next.receive({ type: "ack", ref: "send:c-2", client_id: "c-2", id: "m2", seq: 2, sent_at: "t" });
    await expect(sent).resolves.toMatchObject({ client_id: "c-2", seq: 2 });
    client.close();
  });

  test("across a reconnect: every unanswered change is sent again with its client_id (a deletion too) and resolves with the first ack", async () => {
    const { client, socket } = await connectedClient();
    const edit = client.edit("booking:b1", 1, "new text");
    const remove = client.deleteMessage("booking:b2", 4);
    const react = client.react("booking:b3", 2, "🎚️");
    const later = client.deleteMessage("booking:b1", 3); // queued behind the edit: never written
    const failed: unknown[] = [];
    client.on("change.failed", (event) => failed.push(event));
    const [editFrame] = socket.sentOfType("edit");
    const [deleteFrame] = socket.sentOfType("delete");
    const [reactFrame] = socket.sentOfType("react");
    expect(deleteFrame).toMatchObject({ room: "booking:b2", seq: 4, client_id: expect.any(String) });
    const laterId = client.pendingChanges("booking:b1")[1]?.clientId;
    socket.serverClose(1006);
    await tick();
    expect(failed).toEqual([]);
    expect(client.pendingChanges().map((c) => [c.kind, c.room, c.state])).toEqual([
      ["edit", "booking:b1", "queued"],
      ["delete", "booking:b2", "queued"],
      ["react", "booking:b3", "queued"],
      ["delete", "booking:b1", "queued"],
    ]);
    await until(() => client.state === "authenticating", "the reconnect");
    const next = FakeSocket.latest();
    next.welcome();
    // The very frames again: same client_id, same ref.
    expect(next.sentOfType("edit")).toEqual([editFrame]);
    expect(next.sentOfType("delete")).toEqual([deleteFrame]);
    expect(next.sentOfType("react")).toEqual([reactFrame]);
    expect(editFrame).toMatchObject({ type: "edit", room: "booking:b1", seq: 1, body: "new text", client_id: expect.any(String) });
    // The server had stored the deletion: its resend gets the first ack (not not_found).
    next.receive({ type: "ack", ref: deleteFrame?.ref, client_id: deleteFrame?.client_id, id: "d0", seq: 5, sent_at: "t0" });
    next.receive({ type: "ack", ref: editFrame?.ref, client_id: editFrame?.client_id, id: "e1", seq: 5, sent_at: "t" });
    next.receive({ type: "ack", ref: reactFrame?.ref, client_id: reactFrame?.client_id, id: "r1", seq: 9, sent_at: "t" });
    await expect(remove).resolves.toMatchObject({ id: "d0", seq: 5, client_id: deleteFrame?.client_id });
    await expect(edit).resolves.toMatchObject({ seq: 5 });
    await expect(react).resolves.toMatchObject({ seq: 9 });
    // The deletion queued behind the edit goes out now, with its own client_id.
    const laterFrame = next.sentOfType("delete")[1];
    expect(laterFrame).toMatchObject({ room: "booking:b1", seq: 3, client_id: laterId });
    expect(laterId).not.toBe(deleteFrame?.client_id);
    next.receive({ type: "ack", ref: laterFrame?.ref, client_id: laterId, id: "d1", seq: 6, sent_at: "t" });
    await expect(later).resolves.toMatchObject({ seq: 6 });
    expect(failed).toEqual([]);
    expect(client.pendingChanges()).toEqual([]);
    client.close();
  });

  test("no ack in time on a live socket: an edit and a deletion are both sent again, with the same client_id", async () => {
    const { client, socket } = await connectedClient({ ackTimeoutMs: 30 });
    const edit = client.edit("booking:b1", 1, "again");
    const remove = client.deleteMessage("booking:b2", 1);
    await until(() => socket.sentOfType("edit").length === 2 && socket.sentOfType("delete").length === 2, "both resent");
    const [firstEdit, secondEdit] = socket.sentOfType("edit");
    const [firstDelete, secondDelete] = socket.sentOfType("delete");
    expect(secondEdit).toEqual(firstEdit);
    expect(secondDelete).toEqual(firstDelete);
    expect(client.pendingChanges("booking:b2")).toMatchObject([{ kind: "delete", state: "sending", clientId: firstDelete?.client_id }]);
    socket.receive({ type: "ack", ref: firstEdit?.ref, client_id: firstEdit?.client_id, id: "e1", seq: 2, sent_at: "t" });
    socket.receive({ type: "ack", ref: firstDelete?.ref, client_id: firstDelete?.client_id, id: "d1", seq: 2, sent_at: "t" });
    await Promise.all([edit, remove]);
    // The second answer to the same client_id (the first ack again) finds nothing left to resolve.
    socket.receive({ type: "ack", ref: firstDelete?.ref, client_id: firstDelete?.client_id, id: "d1", seq: 2, sent_at: "t" });
    expect(client.pendingChanges()).toEqual([]);
    client.close();
  });

  test("acks are matched by ref and client_id: an ack without ref finds its change by client_id; a ref with another client_id does not resolve it", async () => {
    const { client, socket } = await connectedClient();
    const react = client.react("booking:b1", 3, "🔥");
    const remove = client.deleteMessage("booking:b2", 2);
    const [reactFrame] = socket.sentOfType("react");
    const [deleteFrame] = socket.sentOfType("delete");
    let settled = false;
    void remove.then(() => (settled = true));
    socket.receive({ type: "ack", ref: deleteFrame?.ref, client_id: "someone-else", id: "x", seq: 1, sent_at: "t" });
    await tick();
    expect(settled).toBe(false);
    expect(client.pendingChanges("booking:b2")).toHaveLength(1);
    socket.receive({ type: "ack", client_id: reactFrame?.client_id, id: "r1", seq: 4, sent_at: "t" });
    await expect(react).resolves.toMatchObject({ id: "r1", seq: 4 });
    socket.receive({ type: "ack", client_id: deleteFrame?.client_id, id: "d1", seq: 3, sent_at: "t" });
    await expect(remove).resolves.toMatchObject({ id: "d1", seq: 3 });
    expect(client.pendingChanges()).toEqual([]);
    client.close();
  });

  test("change frames reach the app once, in seq order with the messages; their seqs count for since and holes", async () => {
    const { client, socket } = await connectedClient();
    const seen: string[] = [];
    client.on("message", (m) => seen.push(`${m.seq}:message`));
    client.on("message.edited", (c) => seen.push(`${c.seq}:edited ${c.message_seq}`));
    client.on("message.deleted", (c) => seen.push(`${c.seq}:deleted ${c.message_seq}`));
    client.on("message.reacted", (c) => seen.push(`${c.seq}:reacted ${c.message_seq}`));
    void client.join("booking:b1");
    const join = socket.sentOfType("join")[0];
    socket.receive({ type: "joined", ref: join?.ref, room: "booking:b1", last_seq: 2, members: [] });
    socket.receive(message("booking:b1", 3));
    socket.receive(edited(4, 3, "fixed"));
    socket.receive(edited(4, 3, "fixed")); // duplicate
    socket.receive({ type: "message.deleted", room: "booking:b1", seq: 7, message_seq: 1, by: { user_id: "u2", name: "Sam", role: "studio_owner" }, at: "t" });
    expect(seen).toEqual(["3:message", "4:edited 3"]);
    // A hole (5, 6) ahead of the deletion: filled from history, changes included.
    const gap = socket.sentOfType("history")[0];
    expect(gap).toMatchObject({ room: "booking:b1", before: 7, limit: 2 });
    socket.receive({
      type: "history",
      ref: gap?.ref,
      room: "booking:b1",
      messages: [{ ...message("booking:b1", 6), type: undefined }],
      changes: [reacted(5, 3)],
      has_more: true,
    });
    expect(seen).toEqual(["3:message", "4:edited 3", "5:reacted 3", "6:message", "7:deleted 1"]);
    expect(client.lastSeq("booking:b1")).toBe(7);
    socket.serverClose(1006);
    await until(() => client.state === "authenticating", "the reconnect");
    const next = FakeSocket.latest();
    next.welcome();
    expect(next.sentOfType("join")[0]).toMatchObject({ room: "booking:b1", since: 7 });
    client.close();
  });
});

describe("unauthorized", () => {
  function signedOutClient(getToken: () => string | null | undefined | Promise<string | null | undefined>): MixroomClient {
    return new MixroomClient({
      url: "ws://mixroom.test/v1/ws",
      getToken,
      WebSocket: FakeSocket,
      backoff: { initialMs: 5, maxMs: 10 },
    });
  }

  test("getToken() throwing stops the client in `unauthorized`: no socket, no retry loop", async () => {
    let calls = 0;
    const client = signedOutClient(() => {
      calls += 1;
      throw new Error("signed out");
    });
    const events: unknown[] = [];
    client.on("unauthorized", (event) => events.push(event));
    const opened = client.whenOpen(5_000);
    client.connect();
    await expect(opened).rejects.toMatchObject({ code: "unauthorized" });
    await tick(150); // 15 backoff delays' worth
    expect(client.state).toBe("unauthorized");
    expect(calls).toBe(1);
    expect(FakeSocket.instances).toHaveLength(0);
    expect(events).toMatchObject([{ reason: "token_error" }]);
  });

  test.each([null, undefined, ""])("getToken() returning %j is the same", async (nothing) => {
    const client = signedOutClient(() => nothing);
    const reasons: string[] = [];
    client.on("unauthorized", ({ reason }) => reasons.push(reason));
    client.connect();
    await until(() => client.state === "unauthorized", "unauthorized");
    await tick(100);
    expect(reasons).toEqual(["no_token"]);
    expect(FakeSocket.instances).toHaveLength(0);
  });

  test("a token the server refuses at auth (4001 before welcome) is final", async () => {
    let calls = 0;
    const client = signedOutClient(() => {
      calls += 1;
      return unsignedToken(3600);
    });
    client.connect();
    await until(() => client.state === "authenticating", "the auth frame");
    FakeSocket.latest().receive({ type: "error", code: "unauthorized", message: "bad token" });
    FakeSocket.latest().serverClose(4001, "bad token");
    expect(client.state).toBe("unauthorized");
    await tick(100);
    expect(FakeSocket.instances).toHaveLength(1);
    expect(calls).toBe(1);
  });

  test("4001 on a welcomed socket (expiry) reconnects once with a fresh token; refused again, it stops", async () => {
    let calls = 0;
    const client = signedOutClient(() => {
      calls += 1;
      return unsignedToken(3600);
    });
    const states: string[] = [];
    client.on("state", ({ state }) => states.push(state));
    client.connect();
    await until(() => client.state === "authenticating", "the first auth");
    FakeSocket.latest().welcome();
    FakeSocket.latest().serverClose(4001, "token expired");
    expect(client.state).toBe("reconnecting");
    await until(() => FakeSocket.instances.length === 2 && client.state === "authenticating", "the reconnect");
    expect(calls).toBe(2);
    const second = FakeSocket.latest();
    expect(second.sentOfType("auth")).toHaveLength(1);
    second.serverClose(4001, "token expired");
    expect(client.state).toBe("unauthorized");
    await tick(100);
    expect(FakeSocket.instances).toHaveLength(2);
    expect(states).toEqual(["connecting", "authenticating", "open", "reconnecting", "connecting", "authenticating", "unauthorized"]);
  });

  test("4001 right after a refresh token was sent (a token for another user) is final", async () => {
    const { client, socket } = await connectedClient({
      getToken: () => unsignedToken(2),
      refreshMarginMs: 1500,
    });
    await until(() => socket.sentOfType("auth").length === 2, "the refresh auth");
    socket.serverClose(4001, "token for another user");
    expect(client.state).toBe("unauthorized");
    await tick(50);
    expect(FakeSocket.instances).toHaveLength(1);
  });

  test("a refresh token the server answers with `unauthorized`: the 4001 at exp is final", async () => {
    const { client, socket } = await connectedClient({
      getToken: () => unsignedToken(2),
      refreshMarginMs: 1500,
    });
    await until(() => socket.sentOfType("auth").length === 2, "the refresh auth");
    const refresh = socket.sentOfType("auth")[1];
    socket.receive({ type: "error", ref: refresh?.ref, code: "unauthorized", message: "bad token" });
    expect(client.state).toBe("open"); // the old token is good until its exp
    socket.serverClose(4001, "token expired");
    expect(client.state).toBe("unauthorized");
    await tick(50);
    expect(FakeSocket.instances).toHaveLength(1);
  });

  test("connect() after sign-in starts over: rooms are re-joined and queued messages sent", async () => {
    let signedIn = false;
    const client = signedOutClient(() => (signedIn ? unsignedToken(3600) : undefined));
    void client.join("booking:b1", { since: 0 }).catch(() => undefined);
    const sent = client.send("booking:b1", "written while signed out", { clientId: "c-1" });
    client.connect();
    await until(() => client.state === "unauthorized", "unauthorized");
    signedIn = true;
    client.connect();
    await until(() => client.state === "authenticating", "the new auth");
    const socket = FakeSocket.latest();
    socket.welcome();
    expect(socket.sentOfType("join")).toMatchObject([{ room: "booking:b1", since: 0 }]);
    expect(socket.sentOfType("send")).toMatchObject([{ client_id: "c-1" }]);
    socket.receive({ type: "ack", ref: "send:c-1", client_id: "c-1", id: "m1", seq: 1, sent_at: "t" });
    await expect(sent).resolves.toMatchObject({ seq: 1 });
    client.close();
  });

  test("what one user queued is not sent after another user signs in", async () => {
    let user = "u1";
    const client = signedOutClient(() => unsignedToken(3600));
    client.connect();
    await until(() => client.state === "authenticating", "auth");
    FakeSocket.latest().welcome(user);
    FakeSocket.latest().serverClose(1006);
    const queued = client.send("booking:b1", "from u1", { clientId: "c-1" });
    user = "u2";
    await until(() => FakeSocket.instances.length === 2 && client.state === "authenticating", "reconnect");
    FakeSocket.latest().welcome(user);
    await expect(queued).rejects.toMatchObject({ code: "unauthorized" });
    expect(FakeSocket.latest().sentOfType("send")).toEqual([]);
    client.close();
  });
});

describe("server-side rendering", () => {
  test("without a global WebSocket a client can be built (and a room view made); only connect() needs one", () => {
    expect((globalThis as { WebSocket?: unknown }).WebSocket).toBeUndefined(); // Node 20
    const client = new MixroomClient({ url: "ws://mixroom.test/v1/ws", getToken: () => "t" });
    const room = client.room("booking:b1");
    expect(room.getSnapshot()).toMatchObject({ status: "joining", messages: [], connection: "idle" });
    room.close();
    expect(() => client.connect()).toThrow(/no WebSocket implementation/);
    expect(client.state).toBe("idle");
  });
});
