/**
 * Edits, deletions, reactions, replies and attachments against the real
 * server binary: round trips between Ava's and Sam's room views, a client
 * that was away and finds every change it missed when it comes back, a
 * fresh view paging back through a room full of changes, and the server's
 * refusals rejecting the promises with their codes.
 */
import { afterAll, afterEach, beforeAll, describe, expect, test } from "vitest";

import {
  MixroomClient,
  type Attachment,
  type ChatMessage,
  type MessageChangeFrame,
  type RoomSnapshot,
  type RoomView,
} from "../src/index.js";
import { AckDroppingProxy } from "./ack-dropping-proxy.js";
import { newUser, sleep, TestServer, waitFor, type TestUser } from "./server.js";
import { clientFor, closeOpened, connected, until, viewOf } from "./views-kit.js";

const STEMS: Attachment = {
  url: "https://abcd1234.supabase.co/storage/v1/object/sign/stems/vocals-take3.wav?token=xyz",
  name: "vocals take 3.wav",
  size: 52_428_800,
  content_type: "audio/wav",
};

function at(snapshot: RoomSnapshot, seq: number): ChatMessage | undefined {
  return snapshot.messages.find((m) => m.seq === seq);
}

afterEach(() => {
  closeOpened();
});

describe("changing messages against the real server", () => {
  let server: TestServer;

  beforeAll(async () => {
    server = await TestServer.start();
  });

  afterAll(async () => {
    await server?.stop();
  });

  /** Ava and Sam, connected, each with a ready view of a new booking's room. */
  async function avaAndSam(): Promise<{ ava: TestUser; sam: TestUser; room: string; avaClient: MixroomClient; samClient: MixroomClient; avaRoom: RoomView; samRoom: RoomView }> {
    const ava = newUser("Ava", "client");
    const sam = newUser("Sam", "studio_owner");
    const { room } = await server.openBooking(ava, [sam]);
    const avaClient = await connected(clientFor(server.wsUrl, ava));
    const samClient = await connected(clientFor(server.wsUrl, sam));
    const avaRoom = viewOf(avaClient, room);
    const samRoom = viewOf(samClient, room);
    await until(avaRoom, (s) => s.status === "ready", "Ava's room");
    await until(samRoom, (s) => s.status === "ready", "Sam's room");
    return { ava, sam, room, avaClient, samClient, avaRoom, samRoom };
  }

  test("edit, delete, react, reply and attach: each reaches the other user's view, once and in order", async () => {
    const { ava, sam, room, avaClient, samClient, avaRoom, samRoom } = await avaAndSam();
    const changes: MessageChangeFrame[] = [];
    samClient.on("message.edited", (c) => changes.push(c));
    samClient.on("message.deleted", (c) => changes.push(c));
    samClient.on("message.reacted", (c) => changes.push(c));

    const first = await avaClient.send(room, "See you tomorow at ten");
    expect(first.seq).toBe(1);
    const stems = await avaClient.send(room, "Stems for Thursday", { attachments: [STEMS] });
    expect(stems.seq).toBe(2);
    let sams = await until(samRoom, (s) => s.lastSeq === 2, "Ava's messages at Sam");
    expect(at(sams, 2)?.attachments).toEqual([STEMS]);

    // Ava fixes her typo: the edit takes seq 3; its ack echoes the edit's own client_id.
    const editing = avaRoom.edit(1, "See you tomorrow at ten");
    const [pendingEdit] = avaClient.pendingChanges(room);
    expect(pendingEdit).toMatchObject({ kind: "edit", seq: 1, clientId: expect.any(String) });
    const edited = await editing;
    expect(edited.seq).toBe(3);
    expect(edited.client_id).toBe(pendingEdit?.clientId);
    expect(edited.client_id).not.toBe(first.client_id);
    sams = await until(samRoom, (s) => at(s, 1)?.body === "See you tomorrow at ten", "the edit at Sam");
    expect(at(sams, 1)?.edited_at).toEqual(expect.any(String));

    // Sam answers the first message and thumbs it up.
    const reply = await samClient.send(room, "Ten works", { replyTo: 1 });
    expect(reply.seq).toBe(4);
    const thumbs = await samRoom.react(1, "👍");
    expect(thumbs.seq).toBe(5);
    let avas = await until(avaRoom, (s) => at(s, 1)?.reactions?.[0]?.count === 1 && at(s, 4) !== undefined, "the reply and the reaction at Ava");
    expect(at(avas, 1)?.reactions).toEqual([{ emoji: "👍", count: 1, user_ids: [sam.id] }]);
    expect(at(avas, 4)?.reply_to).toEqual({
      seq: 1,
      sender: { user_id: ava.id, name: "Ava", role: "client" },
      excerpt: "See you tomorrow at ten",
    });

    // Ava rewords the question Sam answered: the quote follows at both.
    await avaRoom.edit(1, "See you at eleven instead?");
    avas = await until(avaRoom, (s) => at(s, 4)?.reply_to?.excerpt === "See you at eleven instead?", "the quote after the edit at Ava");
    await until(samRoom, (s) => at(s, 4)?.reply_to?.excerpt === "See you at eleven instead?", "the quote after the edit at Sam");
    // The edit keeps the reaction.
    expect(at(avas, 1)?.reactions).toHaveLength(1);

    // Sam takes his thumbs-up back; Ava deletes the stems message, then the question.
    await samRoom.react(1, "👍", false);
    await until(avaRoom, (s) => at(s, 1)?.reactions === undefined, "the reaction taken back at Ava");
    await avaRoom.deleteMessage(2);
    await avaClient.deleteMessage(room, 1);
    sams = await until(samRoom, (s) => at(s, 1)?.deleted_at !== undefined && at(s, 2)?.deleted_at !== undefined, "the deletions at Sam");
    expect(at(sams, 2)).toMatchObject({ body: "" });
    expect(at(sams, 2)).not.toHaveProperty("attachments");
    expect(at(sams, 1)).toMatchObject({ body: "" });
    expect(at(sams, 4)?.reply_to).toMatchObject({ seq: 1, excerpt: "", deleted: true });
    expect(sams.messages.map((m) => m.seq)).toEqual([1, 2, 4]);

    // Sam's client counted every change's seq: nothing was seen as a hole.
    await waitFor(() => changes.length === 6, "six changes at Sam");
    expect(changes.map((c) => [c.type, c.seq, c.message_seq])).toEqual([
      ["message.edited", 3, 1],
      ["message.reacted", 5, 1],
      ["message.edited", 6, 1],
      ["message.reacted", 7, 1],
      ["message.deleted", 8, 2],
      ["message.deleted", 9, 1],
    ]);
    expect(samClient.lastSeq(room)).toBe(9);
    await waitFor(() => avaClient.lastSeq(room) === 9, "Ava's own changes back at her"); // the ack may come first
    expect(samClient.pendingChanges()).toEqual([]);

    // The views agree with what the server stored, each change once.
    const entries = await server.storedEntries(sam, room);
    const stored = entries.messages as unknown as ChatMessage[];
    const shown = samRoom.getSnapshot().messages;
    expect(stored.map((m) => [m.seq, m.body, m.deleted_at !== undefined])).toEqual(
      shown.map((m) => [m.seq, m.body, m.deleted_at !== undefined]),
    );
    expect(entries.changes.map((c) => c.seq)).toEqual([3, 5, 6, 7, 8, 9]);
  });

  test("a client that was away comes back to every change it missed: edit, deletion, reaction, reply quote", async () => {
    const { ava, sam, room, avaClient, samClient, samRoom } = await avaAndSam();
    await avaClient.send(room, "Session at 10");
    await avaClient.send(room, "Bring the Neumann");
    await until(samRoom, (s) => s.lastSeq === 2, "both messages at Sam");
    const before = samRoom.getSnapshot();

    samClient.close(); // Sam goes offline; his view and its room stay
    await until(samRoom, (s) => s.connection === "closed", "Sam offline");
    await avaClient.edit(room, 1, "Session at 11");
    await avaClient.deleteMessage(room, 2);
    await avaClient.react(room, 1, "✅");
    await avaClient.send(room, "Confirmed", { replyTo: 1, attachments: [STEMS] });
    expect(samRoom.getSnapshot().messages).toBe(before.messages); // nothing reached him

    samClient.connect(); // re-joins with since = 2
    const back = await until(samRoom, (s) => s.status === "ready" && s.lastSeq === 6, "Sam caught up", 30_000);
    expect(back.messages.map((m) => m.seq)).toEqual([1, 2, 6]);
    expect(at(back, 1)).toMatchObject({
      body: "Session at 11",
      edited_at: expect.any(String),
      reactions: [{ emoji: "✅", count: 1, user_ids: [ava.id] }],
    });
    expect(at(back, 2)).toMatchObject({ body: "", deleted_at: expect.any(String) });
    expect(at(back, 6)).toMatchObject({
      body: "Confirmed",
      attachments: [STEMS],
      reply_to: { seq: 1, excerpt: "Session at 11" },
    });
    expect(samClient.lastSeq(room)).toBe(6);
    // Unread: Ava's two live messages; the deleted one and the changes do not count.
    expect(back.unread).toBe(2);

    // A view opened now, by a client that never saw the room, reads the same from history.
    const fresh = viewOf(await connected(clientFor(server.wsUrl, sam)), room);
    const loaded = await until(fresh, (s) => s.status === "ready", "a fresh view of the room");
    expect(loaded.messages).toEqual(back.messages);
    expect(loaded.unread).toBe(2);
  });

  test("a fresh view pages back through a room whose newest entries are mostly changes", async () => {
    const { room, avaClient, samClient } = await avaAndSam();
    await avaClient.send(room, "first");
    await avaClient.send(room, "second");
    for (const emoji of ["👍", "🎚️", "🔥", "✅", "🎧", "🎤"]) await samClient.react(room, 2, emoji);
    for (const emoji of ["👍", "🔥"]) await samClient.react(room, 2, emoji, false);
    await avaClient.send(room, "third"); // seq 11
    await waitFor(() => samClient.lastSeq(room) === 11, "everything at Sam");
    // A second view (another screen of Sam's app), three entries a page.
    const fresh = viewOf(samClient, room, 3);
    let snapshot = await until(fresh, (s) => s.status === "ready", "the fresh view");
    // Page 1 (seqs 9–11): one message, two changes.
    expect(snapshot.messages.map((m) => m.seq)).toEqual([11]);
    expect(snapshot.hasOlder).toBe(true);
    await fresh.loadOlder(); // seqs 6–8 are changes only: it goes on to 3–5, then 2 appears
    snapshot = fresh.getSnapshot();
    expect(snapshot.messages.map((m) => m.seq)).toContain(2);
    expect(at(snapshot, 2)?.reactions?.map((r) => r.emoji)).toEqual(["🎚️", "✅", "🎧", "🎤"]);
    while (fresh.getSnapshot().hasOlder) await fresh.loadOlder();
    expect(fresh.getSnapshot().messages.map((m) => m.seq)).toEqual([1, 2, 11]);
  });

  test("refusals reject the promise with the server's code", async () => {
    const { room, avaClient, samClient, samRoom } = await avaAndSam();
    const failures: string[] = [];
    samClient.on("change.failed", ({ change, error }) => failures.push(`${change.kind}:${error.code}`));
    await avaClient.send(room, "Ava's words");

    await expect(samRoom.edit(1, "Sam's words")).rejects.toMatchObject({ name: "MixroomError", code: "forbidden" });
    await expect(samRoom.deleteMessage(1)).rejects.toMatchObject({ code: "forbidden" });
    await expect(samRoom.edit(99, "nothing there")).rejects.toMatchObject({ code: "not_found" });
    await expect(samRoom.react(1, "great")).rejects.toMatchObject({ code: "invalid" });
    await expect(avaClient.edit(room, 1, "   ")).rejects.toMatchObject({ code: "invalid" });
    await expect(samClient.send(room, "hm", { replyTo: 99 })).rejects.toMatchObject({ code: "not_found" });
    await expect(
      samClient.send(room, "a file elsewhere", {
        attachments: [{ url: "https://files.example.com/v.wav", name: "v.wav", size: 1, content_type: "audio/wav" }],
      }),
    ).rejects.toMatchObject({ code: "forbidden", message: expect.stringContaining("attachments[0].url") });
    await avaClient.deleteMessage(room, 1);
    await expect(avaClient.deleteMessage(room, 1)).rejects.toMatchObject({ code: "not_found" });
    await expect(samRoom.react(1, "👍")).rejects.toMatchObject({ code: "not_found" });
    await expect(samClient.send(room, "answering a tombstone", { replyTo: 1 })).rejects.toMatchObject({ code: "not_found" });
    expect(failures).toEqual(["edit:forbidden", "delete:forbidden", "edit:not_found", "react:invalid", "react:not_found"]);
    // Nothing refused held up the queue or was stored.
    expect(samClient.pendingChanges()).toEqual([]);
    expect(samClient.pendingMessages()).toEqual([]);
    const others = newUser("Eve", "client");
    await server.putUser(others);
    const eve = await connected(clientFor(server.wsUrl, others));
    await expect(eve.edit(room, 1, "hijacked")).rejects.toMatchObject({ code: expect.stringMatching(/^(forbidden|not_found)$/) });
  });
});

describe("changes whose ack is lost on the wire", () => {
  test("an edit, a reaction and a deletion are resent with their client_id, resolve with the first ack and are stored once", async () => {
    const server = await TestServer.start();
    const proxy = await AckDroppingProxy.start(server.wsUrl);
    try {
      const ava = newUser("Ava", "client");
      const sam = newUser("Sam", "studio_owner");
      const { room } = await server.openBooking(ava, [sam]);
      const samClient = await connected(clientFor(server.wsUrl, sam));
      const samRoom = viewOf(samClient, room);
      const avaClient = await connected(clientFor(proxy.url, ava));
      const avaRoom = viewOf(avaClient, room);
      await until(avaRoom, (s) => s.status === "ready", "Ava's room");
      await until(samRoom, (s) => s.status === "ready", "Sam's room");
      let drops = 0;
      avaClient.on("disconnected", () => drops++);
      const failures: unknown[] = [];
      avaClient.on("change.failed", (failure) => failures.push(failure));
      await avaClient.send(room, "Session at 10");
      await avaClient.send(room, "Bring the Neumann");

      // Each change: the server stores it and answers, the proxy loses the
      // ack and cuts the connection; the client resends the very frame on
      // the next one and gets the first ack back.
      const sentAgain = (type: string, clientId: string | undefined): Array<Record<string, unknown>> =>
        proxy.sent.filter((frame) => frame.type === type && frame.client_id === clientId);
      const lostAck = (n: number): Record<string, unknown> => {
        const { ref: _ref, ...ack } = proxy.dropped[n] ?? {};
        return ack;
      };

      proxy.dropNextAck = true;
      const edited = await avaRoom.edit(1, "Session at 11");
      expect(proxy.droppedAcks).toBe(1);
      expect(drops).toBe(1);
      expect(edited).toMatchObject(lostAck(0));
      expect(sentAgain("edit", edited.client_id)).toHaveLength(2);

      proxy.dropNextAck = true;
      const reacted = await avaRoom.react(1, "✅");
      expect(proxy.droppedAcks).toBe(2);
      expect(reacted).toMatchObject(lostAck(1));
      expect(reacted.seq).toBeGreaterThan(edited.seq);
      expect(sentAgain("react", reacted.client_id)).toHaveLength(2);

      // The deletion too: its resend is answered with the first ack, not
      // `not_found`, though message 2 is deleted by then.
      proxy.dropNextAck = true;
      const deleted = await avaRoom.deleteMessage(2);
      expect(proxy.droppedAcks).toBe(3);
      expect(drops).toBe(3);
      expect(deleted).toMatchObject(lostAck(2));
      expect(deleted).toMatchObject({ type: "ack", client_id: expect.any(String), seq: reacted.seq + 1 });
      const deletes = sentAgain("delete", deleted.client_id);
      expect(deletes).toHaveLength(2);
      expect(deletes[1]).toEqual(deletes[0]);
      expect(failures).toEqual([]);
      expect(new Set([edited.client_id, reacted.client_id, deleted.client_id]).size).toBe(3);

      // Both views end where the server is: edited, one reaction, the
      // message deleted.
      for (const view of [avaRoom, samRoom]) {
        const snapshot = await until(
          view,
          (s) => at(s, 2)?.deleted_at !== undefined && at(s, 1)?.reactions !== undefined && s.connection === "open",
          "the changes in the view",
          20_000,
        );
        expect(at(snapshot, 1)).toMatchObject({
          body: "Session at 11",
          reactions: [{ emoji: "✅", count: 1, user_ids: [ava.id] }],
        });
        expect(at(snapshot, 2)).toMatchObject({ body: "" });
        expect(snapshot.messages.map((m) => m.seq)).toEqual([1, 2]);
      }
      // Stored exactly once each: three changes, at the seqs their acks named.
      const { messages, changes } = await server.storedEntries(sam, room);
      expect(messages.map((m) => [m.seq, m.body])).toEqual([
        [1, "Session at 11"],
        [2, ""],
      ]);
      expect(changes.map((c) => [c.type, c.seq, c.message_seq])).toEqual([
        ["message.edited", edited.seq, 1],
        ["message.reacted", reacted.seq, 1],
        ["message.deleted", deleted.seq, 2],
      ]);
      expect([edited.seq, reacted.seq, deleted.seq]).toEqual([3, 4, 5]);
      expect(avaClient.pendingChanges()).toEqual([]);
      await waitFor(() => avaClient.lastSeq(room) === 5 && samClient.lastSeq(room) === 5, "both clients at seq 5");
    } finally {
      await proxy.close();
      await server.stop();
    }
  });
});

describe("the edit window against the real server", () => {
  test("an edit after chat.edit_window_secs is refused as forbidden", async () => {
    const server = await TestServer.start({ env: { MIXROOM__CHAT__EDIT_WINDOW_SECS: "1" } });
    try {
      const ava = newUser("Ava", "client");
      const sam = newUser("Sam", "studio_owner");
      const { room } = await server.openBooking(ava, [sam]);
      const client = await connected(clientFor(server.wsUrl, ava));
      await client.send(room, "quick");
      await sleep(1_300);
      await expect(client.edit(room, 1, "too late")).rejects.toMatchObject({
        code: "forbidden",
        message: expect.stringContaining("edit window"),
      });
    } finally {
      await server.stop();
    }
  });
});
