/**
 * The room view against a scripted server: history on join merged with
 * live messages, paging back, pending sends replaced by stored messages,
 * de-duplication across a reconnect, typing expiry, read cursors and the
 * unread count (also the user's own read from another tab), members and
 * presence, streamed answers, snapshot identity, and who holds the room.
 * The real server is exercised in room-view.server.test.ts.
 */
import { afterEach, beforeEach, describe, expect, test } from "vitest";

import { MixroomClient, type RoomSnapshot, type RoomView } from "../src/index.js";
import { FakeSocket, tick, until } from "./fake-socket.js";

const ROOM = "booking:b1";
const ME = "u1";
const SAM = "u2";

function token(): string {
  const encode = (value: unknown): string => Buffer.from(JSON.stringify(value)).toString("base64url");
  return `${encode({ alg: "HS256" })}.${encode({ sub: ME, exp: Math.floor(Date.now() / 1000) + 3600 })}.sig`;
}

function stored(seq: number, sender = SAM, clientId: string | null = `c${seq}`): Record<string, unknown> {
  return {
    room: ROOM,
    seq,
    id: `m${seq}`,
    client_id: clientId,
    sender: { user_id: sender, name: sender === ME ? "Ava" : "Sam", role: sender === ME ? "client" : "studio_owner" },
    body: `message ${seq}`,
    sent_at: "2026-11-27T10:00:00.000Z",
  };
}

const live = (seq: number, sender = SAM, clientId: string | null = `c${seq}`): Record<string, unknown> => ({
  type: "message",
  ...stored(seq, sender, clientId),
});

const range = (from: number, to: number): number[] => Array.from({ length: to - from + 1 }, (_, i) => from + i);
const seqs = (snapshot: RoomSnapshot): number[] => snapshot.messages.map((m) => m.seq);

const members = [
  { user_id: ME, name: "Ava", role: "client", online: true },
  { user_id: SAM, name: "Sam", role: "studio_owner", online: true },
];

async function setup(options: { unread?: Record<string, number> } = {}): Promise<{ client: MixroomClient; socket: FakeSocket }> {
  const client = new MixroomClient({
    url: "ws://mixroom.test/v1/ws",
    getToken: token,
    WebSocket: FakeSocket,
    backoff: { initialMs: 5, maxMs: 10 },
  });
  client.connect();
  await tick();
  const socket = FakeSocket.latest();
  socket.welcome(ME);
  socket.receive({ type: "unread", notifications: 0, rooms: options.unread ?? {} });
  return { client, socket };
}

/** Answers the view's join with `joined` and returns the history request it then makes. */
function joinRoom(socket: FakeSocket, lastSeq: number, extra: Record<string, unknown> = {}): Record<string, unknown> | undefined {
  const join = socket.sentOfType("join").at(-1);
  socket.receive({ type: "joined", ref: join?.ref, room: ROOM, last_seq: lastSeq, members, ...extra });
  return socket.sentOfType("history").at(-1);
}

function answerHistory(socket: FakeSocket, request: Record<string, unknown> | undefined, from: number, to: number, hasMore: boolean): void {
  socket.receive({
    type: "history",
    ref: request?.ref,
    room: ROOM,
    messages: range(from, to).reverse().map((seq) => stored(seq)),
    has_more: hasMore,
  });
}

/** Waits until the view has published its changes. */
async function settled(room: RoomView): Promise<RoomSnapshot> {
  await tick();
  return room.getSnapshot();
}

const views: RoomView[] = [];
function view(client: MixroomClient, options?: Parameters<MixroomClient["room"]>[1]): RoomView {
  const room = client.room(ROOM, options);
  views.push(room);
  return room;
}

beforeEach(() => FakeSocket.reset());
afterEach(() => {
  for (const room of views.splice(0)) room.close();
  FakeSocket.reset();
});

describe("room view: messages", () => {
  test("joins, loads the latest page with history, and merges live messages in seq order", async () => {
    const { client, socket } = await setup();
    const room = view(client);
    expect(room.getSnapshot().status).toBe("joining");
    const join = socket.sentOfType("join")[0];
    expect(join).toMatchObject({ room: ROOM });
    expect(join).not.toHaveProperty("since"); // live from here; the page comes by history
    const request = joinRoom(socket, 3);
    expect(request).toMatchObject({ room: ROOM, before: 4, limit: 50 });
    expect((await settled(room)).status).toBe("loading");
    // A live message overtakes the page.
    socket.receive(live(4));
    answerHistory(socket, request, 1, 3, false);
    const snapshot = await settled(room);
    expect(seqs(snapshot)).toEqual([1, 2, 3, 4]);
    expect(snapshot).toMatchObject({ status: "ready", hasOlder: false, lastSeq: 4, userId: ME });
    expect(snapshot.messages[0]).not.toHaveProperty("type");
    expect(Object.isFrozen(snapshot.messages)).toBe(true);
    expect(Object.isFrozen(snapshot.messages[0])).toBe(true);
  });

  test("an empty room needs no history request", async () => {
    const { client, socket } = await setup();
    const room = view(client);
    joinRoom(socket, 0);
    expect(socket.sentOfType("history")).toEqual([]);
    expect(await settled(room)).toMatchObject({ status: "ready", messages: [], hasOlder: false });
  });

  test("loadOlder() pages backwards until the first message", async () => {
    const { client, socket } = await setup();
    const room = view(client, { pageSize: 40 });
    answerHistory(socket, joinRoom(socket, 100), 61, 100, true);
    expect((await settled(room)).hasOlder).toBe(true);
    const older = room.loadOlder();
    expect((await settled(room)).loadingOlder).toBe(true);
    const request = socket.sentOfType("history").at(-1);
    expect(request).toMatchObject({ before: 61, limit: 40 });
    answerHistory(socket, request, 21, 60, true);
    await expect(older).resolves.toBe(true);
    const last = room.loadOlder();
    answerHistory(socket, socket.sentOfType("history").at(-1), 1, 20, false);
    await expect(last).resolves.toBe(false);
    const snapshot = await settled(room);
    expect(seqs(snapshot)).toEqual(range(1, 100));
    expect(snapshot).toMatchObject({ hasOlder: false, loadingOlder: false });
    await expect(room.loadOlder()).resolves.toBe(false);
    expect(socket.sentOfType("history")).toHaveLength(3);
  });

  test("a reconnect re-joins with since; the overlap is not duplicated and the page is not reloaded", async () => {
    const { client, socket } = await setup();
    const room = view(client);
    answerHistory(socket, joinRoom(socket, 3), 1, 3, false);
    socket.receive(live(4));
    expect(seqs(await settled(room))).toEqual([1, 2, 3, 4]);
    socket.serverClose(1006);
    const offline = await settled(room);
    expect(offline).toMatchObject({ status: "joining", connection: "reconnecting" });
    expect(seqs(offline)).toEqual([1, 2, 3, 4]); // kept while away
    await until(() => client.state === "authenticating", "the reconnect");
    const second = FakeSocket.latest();
    second.welcome(ME);
    const rejoin = second.sentOfType("join")[0];
    expect(rejoin).toMatchObject({ room: ROOM, since: 4 });
    second.receive({ type: "joined", ref: rejoin?.ref, room: ROOM, last_seq: 6, members });
    for (const seq of [3, 4, 5, 6, 5]) second.receive(live(seq));
    const back = await settled(room);
    expect(seqs(back)).toEqual(range(1, 6));
    expect(back.status).toBe("ready");
    expect(second.sentOfType("history")).toEqual([]);
  });

  test("a store reset (the server's room is shorter) starts the view over", async () => {
    const { client, socket } = await setup();
    const room = view(client);
    answerHistory(socket, joinRoom(socket, 5), 1, 5, false);
    expect(seqs(await settled(room))).toEqual(range(1, 5));
    socket.serverClose(1006);
    await until(() => client.state === "authenticating", "the reconnect");
    const second = FakeSocket.latest();
    second.welcome(ME);
    const rejoin = second.sentOfType("join")[0];
    second.receive({ type: "joined", ref: rejoin?.ref, room: ROOM, last_seq: 2, members });
    const request = second.sentOfType("history")[0];
    expect(request).toMatchObject({ before: 3 });
    answerHistory(second, request, 1, 2, false);
    expect(seqs(await settled(room))).toEqual([1, 2]);
  });
});

describe("room view: sending", () => {
  test("a send shows as pending with its client_id until the stored message replaces it", async () => {
    const { client, socket } = await setup();
    const room = view(client);
    answerHistory(socket, joinRoom(socket, 2), 1, 2, false);
    const clientId = room.send("Hi Sam!");
    const sending = await settled(room);
    expect(sending.pending).toEqual([{ clientId, body: "Hi Sam!", state: "sending" }]);
    expect(socket.sentOfType("send")).toMatchObject([{ room: ROOM, client_id: clientId, body: "Hi Sam!" }]);
    socket.receive({ type: "ack", ref: `send:${clientId}`, client_id: clientId, id: "m3", seq: 3, sent_at: "t" });
    expect((await settled(room)).pending).toEqual([{ clientId, body: "Hi Sam!", state: "acked", seq: 3 }]);
    socket.receive(live(3, ME, clientId));
    const done = await settled(room);
    expect(done.pending).toEqual([]);
    expect(done.messages.at(-1)).toMatchObject({ seq: 3, client_id: clientId, body: "message 3" });
  });

  test("sends made with client.send() show too; a refused one stays as failed until retried or dismissed", async () => {
    const { client, socket } = await setup();
    const room = view(client);
    joinRoom(socket, 0);
    const direct = client.send(ROOM, "via the client", { clientId: "d-1" });
    room.send("queued behind it", { clientId: "d-2" });
    expect((await settled(room)).pending.map((p) => [p.clientId, p.state])).toEqual([
      ["d-1", "sending"],
      ["d-2", "queued"],
    ]);
    socket.receive({ type: "error", ref: "send:d-1", code: "too_large", message: "too big" });
    await expect(direct).rejects.toMatchObject({ code: "too_large" });
    const failed = await settled(room);
    expect(failed.pending.map((p) => [p.clientId, p.state])).toEqual([
      ["d-1", "failed"],
      ["d-2", "sending"],
    ]);
    expect(failed.pending[0]?.error).toMatchObject({ code: "too_large" });
    room.retry("d-1");
    expect((await settled(room)).pending.map((p) => p.state)).toEqual(["queued", "sending"]);
    // The retried message queues behind the room's head, which waits out a rate limit.
    socket.receive({ type: "error", ref: "send:d-2", code: "rate_limited", message: "slow", retry_after_ms: 20 });
    expect((await settled(room)).pending.map((p) => p.state)).toEqual(["queued", "retrying"]);
    await until(() => socket.sentOfType("send").length === 3, "d-2 resent");
    socket.receive({ type: "ack", ref: "send:d-2", client_id: "d-2", id: "m1", seq: 1, sent_at: "t" });
    expect(socket.sentOfType("send").map((f) => f.client_id)).toEqual(["d-1", "d-2", "d-2", "d-1"]);
    socket.receive({ type: "error", ref: "send:d-1", code: "too_large", message: "still too big" });
    expect((await settled(room)).pending.map((p) => [p.clientId, p.state])).toEqual([
      ["d-1", "failed"],
      ["d-2", "acked"],
    ]);
    room.dismiss("d-1");
    socket.receive(live(1, ME, "d-2"));
    const after = await settled(room);
    expect(after.pending).toEqual([]);
    expect(seqs(after)).toEqual([1]);
    client.close();
  });
});

describe("room view: changes to messages", () => {
  const by = { user_id: SAM, name: "Sam", role: "studio_owner" };
  const change = (type: string, seq: number, messageSeq: number, extra: Record<string, unknown> = {}): Record<string, unknown> => ({
    type,
    room: ROOM,
    seq,
    message_seq: messageSeq,
    by,
    at: `2026-11-27T10:${String(seq).padStart(2, "0")}:00.000Z`,
    ...extra,
  });
  const reply = (seq: number, answers: number, excerpt: string): Record<string, unknown> => ({
    ...live(seq),
    reply_to: { seq: answers, sender: by, excerpt },
  });
  const bySeq = (snapshot: RoomSnapshot, seq: number) => snapshot.messages.find((m) => m.seq === seq);

  test("edits, deletions and reactions change the message they name; reply quotes follow; changes count as neither messages nor unread", async () => {
    const { client, socket } = await setup({ unread: { [ROOM]: 0 } });
    const room = view(client);
    answerHistory(socket, joinRoom(socket, 2), 1, 2, false);
    const long = "Can we book the big room? ".repeat(10);
    socket.receive({ ...live(3), body: long, reactions: [{ emoji: "✅", count: 1, user_ids: [ME] }] });
    socket.receive(reply(4, 3, long.slice(0, 120)));
    const before = await settled(room);
    expect(before.unread).toBe(2);

    socket.receive(change("message.edited", 5, 3, { body: "Small room?", edited_at: "2026-11-27T10:05:00.000Z" }));
    let snapshot = await settled(room);
    expect(seqs(snapshot)).toEqual([1, 2, 3, 4]); // the edit is no message
    expect(bySeq(snapshot, 3)).toMatchObject({ body: "Small room?", edited_at: "2026-11-27T10:05:00.000Z" });
    expect(bySeq(snapshot, 4)?.reply_to).toEqual({ seq: 3, sender: by, excerpt: "Small room?" });
    expect(snapshot.messages[0]).toBe(before.messages[0]); // untouched messages keep their identity
    expect(snapshot).toMatchObject({ unread: 2, lastSeq: 4 });
    expect(client.lastSeq(ROOM)).toBe(5);

    socket.receive(change("message.reacted", 6, 3, {
      emoji: "👍", on: true,
      reactions: [{ emoji: "✅", count: 1, user_ids: [ME] }, { emoji: "👍", count: 1, user_ids: [SAM] }],
    }));
    snapshot = await settled(room);
    expect(bySeq(snapshot, 3)?.reactions).toEqual([
      { emoji: "✅", count: 1, user_ids: [ME] },
      { emoji: "👍", count: 1, user_ids: [SAM] },
    ]);
    socket.receive(change("message.reacted", 7, 3, { emoji: "✅", on: false, reactions: [{ emoji: "👍", count: 1, user_ids: [SAM] }] }));
    expect(bySeq(await settled(room), 3)?.reactions).toEqual([{ emoji: "👍", count: 1, user_ids: [SAM] }]);

    socket.receive(change("message.deleted", 8, 3));
    snapshot = await settled(room);
    const tombstone = bySeq(snapshot, 3);
    expect(tombstone).toMatchObject({ seq: 3, body: "", deleted_at: "2026-11-27T10:08:00.000Z" });
    expect(tombstone).not.toHaveProperty("reactions");
    expect(tombstone).not.toHaveProperty("attachments");
    expect(bySeq(snapshot, 4)?.reply_to).toEqual({ seq: 3, sender: by, excerpt: "", deleted: true });
    expect(Object.isFrozen(bySeq(snapshot, 4)?.reply_to)).toBe(true);
    // A deleted message by someone else is no longer unread.
    expect(snapshot.unread).toBe(1);
    // Nothing brings a tombstone back, and the view's lastSeq stays that of the newest message.
    socket.receive(change("message.edited", 9, 3, { body: "ghost" }));
    snapshot = await settled(room);
    expect(bySeq(snapshot, 3)?.body).toBe("");
    expect(snapshot.lastSeq).toBe(4);
    room.markRead();
    expect(socket.sentOfType("read").at(-1)).toMatchObject({ seq: 4 });
    expect((await settled(room)).unread).toBe(0);
  });

  test("a reconnect replays the missed changes among the messages; the view shows the room as it stands", async () => {
    const { client, socket } = await setup();
    const room = view(client);
    answerHistory(socket, joinRoom(socket, 2), 1, 2, false);
    socket.serverClose(1006);
    await until(() => client.state === "authenticating", "the reconnect");
    const second = FakeSocket.latest();
    second.welcome(ME);
    const rejoin = second.sentOfType("join")[0];
    expect(rejoin).toMatchObject({ since: 2 });
    second.receive({ type: "joined", ref: rejoin?.ref, room: ROOM, last_seq: 6, members });
    second.receive(change("message.edited", 3, 1, { body: "Session at 11", edited_at: "e" }));
    second.receive(change("message.deleted", 4, 2));
    second.receive(change("message.reacted", 5, 1, { emoji: "✅", on: true, reactions: [{ emoji: "✅", count: 1, user_ids: [SAM] }] }));
    second.receive(reply(6, 1, "Session at 11"));
    const snapshot = await settled(room);
    expect(seqs(snapshot)).toEqual([1, 2, 6]);
    expect(bySeq(snapshot, 1)).toMatchObject({ body: "Session at 11", edited_at: "e", reactions: [{ emoji: "✅" }] });
    expect(bySeq(snapshot, 2)).toMatchObject({ body: "", deleted_at: expect.any(String) });
    expect(bySeq(snapshot, 6)?.reply_to?.excerpt).toBe("Session at 11");
    expect(client.lastSeq(ROOM)).toBe(6);
  });

  test("a change that overtakes the latest page is applied to the page's older copy of the message", async () => {
    const { client, socket } = await setup();
    const room = view(client);
    const request = joinRoom(socket, 3);
    // Live, before the page arrives: an edit of 2 and a deletion of 1 (which 3 answers).
    socket.receive(change("message.edited", 4, 2, { body: "edited live", edited_at: "e" }));
    socket.receive(change("message.deleted", 5, 1));
    socket.receive({
      type: "history",
      ref: request?.ref,
      room: ROOM,
      messages: [
        { ...stored(3), reply_to: { seq: 1, sender: by, excerpt: "message 1" } },
        stored(2),
        { ...stored(1), attachments: [{ url: "https://a.supabase.co/x", name: "x", size: 1, content_type: "audio/wav" }] },
      ],
      has_more: false,
    });
    const snapshot = await settled(room);
    expect(seqs(snapshot)).toEqual([1, 2, 3]);
    expect(bySeq(snapshot, 1)).toMatchObject({ body: "", deleted_at: expect.any(String) });
    expect(bySeq(snapshot, 1)).not.toHaveProperty("attachments");
    expect(bySeq(snapshot, 2)).toMatchObject({ body: "edited live", edited_at: "e" });
    expect(bySeq(snapshot, 3)?.reply_to).toMatchObject({ seq: 1, excerpt: "", deleted: true });
  });

  test("history pages: messages as they stand; changes only move the paging floor, and a page of only changes loads on", async () => {
    const { client, socket } = await setup();
    const room = view(client, { pageSize: 3 });
    // Seqs 1–3 are messages, 4–9 reactions to them, 10 a message.
    const request = joinRoom(socket, 10);
    expect(request).toMatchObject({ before: 11, limit: 3 });
    socket.receive({
      type: "history",
      ref: request?.ref,
      room: ROOM,
      messages: [stored(10)],
      changes: [8, 9].map((seq) => change("message.reacted", seq, 3, { emoji: "👍", on: true, reactions: [] })),
      has_more: true,
    });
    expect(seqs(await settled(room))).toEqual([10]);
    const older = room.loadOlder();
    const first = socket.sentOfType("history").at(-1);
    expect(first).toMatchObject({ before: 8, limit: 3 });
    socket.receive({
      type: "history",
      ref: first?.ref,
      room: ROOM,
      messages: [],
      changes: [5, 6, 7].map((seq) => change("message.reacted", seq, 3, { emoji: "👍", on: true, reactions: [] })),
      has_more: true,
    });
    // Nothing to show yet: the next page follows by itself.
    await until(() => socket.sentOfType("history").length === 3, "the next page");
    const second = socket.sentOfType("history").at(-1);
    expect(second).toMatchObject({ before: 5, limit: 3 });
    socket.receive({
      type: "history",
      ref: second?.ref,
      room: ROOM,
      messages: [{ ...stored(3), reactions: [{ emoji: "👍", count: 1, user_ids: [SAM] }] }, stored(2)],
      changes: [change("message.reacted", 4, 3, { emoji: "👍", on: true, reactions: [{ emoji: "👍", count: 1, user_ids: [SAM] }] })],
      has_more: true,
    });
    await expect(older).resolves.toBe(true);
    const snapshot = await settled(room);
    expect(seqs(snapshot)).toEqual([2, 3, 10]);
    // The page's changes are not applied again over the message as it stands.
    expect(bySeq(snapshot, 3)?.reactions).toEqual([{ emoji: "👍", count: 1, user_ids: [SAM] }]);
    const last = room.loadOlder();
    const third = socket.sentOfType("history").at(-1);
    expect(third).toMatchObject({ before: 2 });
    answerHistory(socket, third, 1, 1, false);
    await expect(last).resolves.toBe(false);
    expect(seqs(await settled(room))).toEqual([1, 2, 3, 10]);
  });

  test("the view's actions: edit, deleteMessage and react resolve with the ack or reject with the refusal; a reply with attachments shows in pending", async () => {
    const { client, socket } = await setup();
    const room = view(client);
    answerHistory(socket, joinRoom(socket, 2), 1, 2, false);
    const edit = room.edit(1, "new");
    const editFrame = socket.sentOfType("edit")[0];
    expect(editFrame).toMatchObject({ room: ROOM, seq: 1, body: "new" });
    socket.receive({ type: "error", ref: editFrame?.ref, code: "forbidden", message: "only its author may edit a message" });
    await expect(edit).rejects.toMatchObject({ code: "forbidden" });
    expect(bySeq(await settled(room), 1)?.body).toBe("message 1"); // unchanged: nothing optimistic

    const reaction = room.react(2, "👍");
    socket.receive({ type: "ack", ref: socket.sentOfType("react")[0]?.ref, id: "r", seq: 3, sent_at: "t" });
    await expect(reaction).resolves.toMatchObject({ seq: 3 });
    const removal = room.deleteMessage(2);
    socket.receive({ type: "error", ref: socket.sentOfType("delete")[0]?.ref, code: "not_found", message: "deleted" });
    await expect(removal).rejects.toMatchObject({ code: "not_found" });

    const attachments = [{ url: "https://abcd.supabase.co/s/take.wav", name: "take.wav", size: 5, content_type: "audio/wav" }];
    const clientId = room.send("here", { replyTo: 1, attachments });
    expect(socket.sentOfType("send")[0]).toMatchObject({ client_id: clientId, reply_to: 1, attachments });
    expect((await settled(room)).pending).toEqual([{ clientId, body: "here", replyTo: 1, attachments, state: "sending" }]);
    socket.receive({ type: "error", ref: `send:${clientId}`, code: "forbidden", message: "`attachments[0].url`: not allowed" });
    expect((await settled(room)).pending[0]).toMatchObject({ state: "failed", replyTo: 1, attachments });
    room.retry(clientId);
    expect(socket.sentOfType("send")[1]).toMatchObject({ client_id: clientId, reply_to: 1, attachments });
    room.close();
    await expect(room.edit(1, "x")).rejects.toMatchObject({ code: "closed" });
  });
});

describe("room view: people", () => {
  test("members with presence; typing expires and ends with the typist's message", async () => {
    const { client, socket } = await setup();
    const room = view(client, { typingTimeoutMs: 80 });
    answerHistory(socket, joinRoom(socket, 1), 1, 1, false);
    expect((await settled(room)).members.map((m) => [m.name, m.online])).toEqual([
      ["Ava", true],
      ["Sam", true],
    ]);
    socket.receive({ type: "presence", room: ROOM, user_id: SAM, online: false });
    expect((await settled(room)).members.find((m) => m.user_id === SAM)?.online).toBe(false);

    socket.receive({ type: "typing", room: ROOM, user_id: SAM });
    socket.receive({ type: "typing", room: "booking:other", user_id: "u9" });
    expect((await settled(room)).typing).toEqual([SAM]);
    await tick(120);
    expect(room.getSnapshot().typing).toEqual([]);
    socket.receive({ type: "typing", room: ROOM, user_id: SAM });
    expect((await settled(room)).typing).toEqual([SAM]);
    socket.receive(live(2));
    expect((await settled(room)).typing).toEqual([]);
  });

  test("unread count: from the server's count, moved by the user's reads here and in other tabs", async () => {
    // The server counts 2 unread (messages 4 and 5 by Sam; 1–3 were read).
    const { client, socket } = await setup({ unread: { [ROOM]: 2 } });
    const room = view(client);
    answerHistory(socket, joinRoom(socket, 5), 1, 5, false);
    let snapshot = await settled(room);
    expect(snapshot).toMatchObject({ unread: 2, readSeq: 3 });

    // Sam writes; Ava's own message does not count.
    socket.receive(live(6));
    socket.receive(live(7, ME));
    expect((await settled(room)).unread).toBe(3);

    // Ava reads up to 6 in another tab: the server echoes her own read.
    socket.receive({ type: "read", room: ROOM, user_id: ME, seq: 6 });
    snapshot = await settled(room);
    expect(snapshot).toMatchObject({ unread: 0, readSeq: 6 });
    expect(snapshot.reads[ME]).toBe(6);

    // Sam reads; his cursor shows; a new message of his is unread until marked here.
    socket.receive({ type: "read", room: ROOM, user_id: SAM, seq: 7 });
    socket.receive(live(8));
    snapshot = await settled(room);
    expect(snapshot.reads).toEqual({ [ME]: 6, [SAM]: 7 });
    expect(snapshot.unread).toBe(1);
    room.markRead();
    expect(socket.sentOfType("read")).toEqual([{ type: "read", room: ROOM, seq: 8 }]);
    expect((await settled(room))).toMatchObject({ unread: 0, readSeq: 8 });
    // An older read from another tab does not move the cursor back.
    socket.receive({ type: "read", room: ROOM, user_id: ME, seq: 2 });
    expect((await settled(room))).toMatchObject({ unread: 0, readSeq: 8 });
  });

  test("after a reconnect the server's new count covers what was missed, not twice", async () => {
    const { client, socket } = await setup({ unread: { [ROOM]: 2 } });
    const room = view(client);
    answerHistory(socket, joinRoom(socket, 5), 1, 5, false);
    expect(await settled(room)).toMatchObject({ unread: 2, readSeq: 3 });
    socket.serverClose(1006);
    await until(() => client.state === "authenticating", "the reconnect");
    // Sam wrote 6–8 meanwhile: the server now counts 5 unread.
    const second = FakeSocket.latest();
    second.welcome(ME);
    second.receive({ type: "unread", notifications: 0, rooms: { [ROOM]: 5 } });
    const rejoin = second.sentOfType("join")[0];
    expect(rejoin).toMatchObject({ since: 5 });
    second.receive({ type: "joined", ref: rejoin?.ref, room: ROOM, last_seq: 8, members });
    for (const seq of [6, 7, 8]) second.receive(live(seq));
    const snapshot = await settled(room);
    expect(seqs(snapshot)).toEqual(range(1, 8));
    expect(snapshot).toMatchObject({ unread: 5, readSeq: 3 });
  });

  test("more unread than the first page holds counts the rest too", async () => {
    const { client, socket } = await setup({ unread: { [ROOM]: 30 } });
    const room = view(client, { pageSize: 10 });
    answerHistory(socket, joinRoom(socket, 40), 31, 40, true);
    expect(await settled(room)).toMatchObject({ unread: 30 });
    room.markRead();
    expect(await settled(room)).toMatchObject({ unread: 0, readSeq: 40 });
  });
});

describe("room view: snapshots and lifetime", () => {
  test("the snapshot keeps its identity until a change; unchanged parts keep theirs", async () => {
    const { client, socket } = await setup();
    const room = view(client);
    answerHistory(socket, joinRoom(socket, 2), 1, 2, false);
    const first = await settled(room);
    expect(room.getSnapshot()).toBe(first);
    const notified: RoomSnapshot[] = [];
    const unsubscribe = room.subscribe(() => notified.push(room.getSnapshot()));
    socket.receive(live(3));
    socket.receive(live(4)); // one change event for both (same microtask)
    const second = await settled(room);
    expect(notified).toEqual([second]);
    expect(second).not.toBe(first);
    expect(second.messages).not.toBe(first.messages);
    expect(second.members).toBe(first.members);
    expect(second.pending).toBe(first.pending);
    expect(second.messages[0]).toBe(first.messages[0]);
    unsubscribe();
    socket.receive(live(5));
    await settled(room);
    expect(notified).toHaveLength(1);
  });

  test("close() leaves the room only when nothing else holds it", async () => {
    const { client, socket } = await setup();
    const a = view(client);
    const b = view(client);
    expect(socket.sentOfType("join")).toHaveLength(1);
    joinRoom(socket, 0);
    a.close();
    expect(socket.sentOfType("leave")).toEqual([]);
    expect(client.joinedRooms()).toEqual([ROOM]);
    b.close();
    expect(socket.sentOfType("leave")).toMatchObject([{ room: ROOM }]);
    expect(client.joinedRooms()).toEqual([]);
    expect(b.getSnapshot().status).toBe("closed");

    // Held by join() too: closing the view keeps it; leave() then leaves.
    void client.join(ROOM);
    const c = view(client);
    joinRoom(socket, 0);
    c.close();
    expect(socket.sentOfType("leave")).toHaveLength(1);
    client.leave(ROOM);
    expect(socket.sentOfType("leave")).toHaveLength(2);
  });

  test("a room the server refuses fails the view with the error", async () => {
    const { client, socket } = await setup();
    const room = view(client);
    const join = socket.sentOfType("join")[0];
    socket.receive({ type: "error", ref: join?.ref, code: "forbidden", message: "not a participant" });
    const snapshot = await settled(room);
    expect(snapshot.status).toBe("failed");
    expect(snapshot.error).toMatchObject({ code: "forbidden" });
  });

  test("the agent's streamed answer shows while it streams; the stored message replaces it", async () => {
    const { client, socket } = await setup();
    const room = view(client);
    joinRoom(socket, 0);
    for (const delta of ["Refunds ", "go back ", "to the card."]) {
      socket.receive({ type: "message.delta", room: ROOM, id: "a1", delta });
    }
    expect((await settled(room)).streaming).toEqual([{ id: "a1", body: "Refunds go back to the card." }]);
    socket.receive({ ...live(1, "agent", null), id: "a1" });
    const snapshot = await settled(room);
    expect(snapshot.streaming).toEqual([]);
    expect(seqs(snapshot)).toEqual([1]);
    socket.receive({ type: "message.delta", room: ROOM, id: "a2", delta: "Let me" });
    socket.receive({ type: "message.aborted", room: ROOM, id: "a2", reason: "taken_over" });
    expect((await settled(room)).streaming).toEqual([]);
  });
});
