/**
 * A live view of one room, built on the client's events: what a chat
 * screen shows, as one immutable snapshot that changes as a whole.
 *
 * - messages in seq order, each once: the latest page (`history`) when the
 *   room is joined, live and replayed ones as they come, older pages on
 *   `loadOlder()`; kept across reconnects and server restarts (the client
 *   re-joins with `since`, and the view keys messages by seq);
 * - each message as it stands: edits, deletions (tombstones) and
 *   reactions applied as their `message.edited`, `message.deleted` and
 *   `message.reacted` arrive, and reply quotes kept up to date with what
 *   they answer;
 * - the user's unacked sends, with their `client_id` and state, until the
 *   stored message (same `client_id`) takes their place in seq order;
 * - members and presence, who is typing (expiring), everyone's read cursor
 *   and the current user's unread count;
 * - the support agent's streamed answer while it streams.
 *
 * `subscribe`/`getSnapshot` fit React's `useSyncExternalStore`: the
 * snapshot object stays the same until something changes, and each part
 * (`messages`, `members`, …) keeps its identity while it does not change.
 */
import { applyChange, applyChangeToQuote } from "./changes.js";
import type { ConnectionState, MixroomClient, OutgoingState, SendOptions } from "./client.js";
import { TypedEmitter } from "./emitter.js";
import { MixroomError } from "./errors.js";
import { newClientId } from "./ids.js";
import type {
  AckFrame,
  Attachment,
  ChatMessage,
  HistoryFrame,
  JoinedFrame,
  Member,
  MessageChangeFrame,
  MessageDeletedFrame,
  MessageEditedFrame,
  MessageReactedFrame,
} from "./frames.js";

/** How a view reaches the client's room bookkeeping (internal). */
export interface RoomLink {
  /** Keeps the room joined on behalf of this view. */
  hold(): void;
  /** Lets go; the room is left when nothing else holds it. */
  release(): void;
  /** The room's `joined` frame when it is joined on the current socket. */
  joined(): JoinedFrame | undefined;
  /** The room's members as of the latest `joined` and `presence`. */
  members(): Member[];
}

export interface RoomViewOptions {
  /** Messages per history page, on join and per `loadOlder()`. Default 50, at most 100. */
  pageSize?: number;
  /** A typing indicator lasts this long after the user's last `typing`. Default 4 s. */
  typingTimeoutMs?: number;
}

/**
 * `joining`: waiting for the room's `joined` (connecting, or reconnecting —
 * what was loaded stays); `loading`: joined, the latest page is on its way;
 * `ready`; `failed`: the server refused the room or removed the user
 * (`error` says which); `closed`: `close()` was called.
 */
export type RoomStatus = "joining" | "loading" | "ready" | "failed" | "closed";

/** A client-side state of a send: the client's queue states, then `acked` or `failed`. */
export type PendingSendState = OutgoingState | "acked" | "failed";

/** A message of the current user not (yet) in `messages`. */
export interface PendingSend {
  readonly clientId: string;
  readonly body: string;
  /** The seq of the message it answers. */
  readonly replyTo?: number;
  readonly attachments?: readonly Attachment[];
  readonly state: PendingSendState;
  /** Once acked: its seq (the stored message follows). */
  readonly seq?: number;
  /** Once failed: why (`forbidden`, `too_large`, …). `retry()` or `dismiss()` it. */
  readonly error?: MixroomError;
}

/** The agent's answer while it streams (`message.delta`); the stored message replaces it. */
export interface StreamingMessage {
  readonly id: string;
  readonly body: string;
}

export interface RoomSnapshot {
  readonly room: string;
  readonly status: RoomStatus;
  readonly error: MixroomError | undefined;
  /** The client's connection state. */
  readonly connection: ConnectionState;
  /** The current user (from `welcome`). */
  readonly userId: string | undefined;
  /**
   * Stored messages, ascending seq, each once, as they stand: edited text
   * with `edited_at`; tombstones (`deleted_at`, empty `body`, no
   * attachments or reactions); `reactions`; reply quotes (`reply_to`) that
   * follow edits and deletions of what they answer. Changes themselves are
   * not entries here (their seqs are gaps in `messages`).
   */
  readonly messages: readonly ChatMessage[];
  /** Older messages exist than the first of `messages` (`loadOlder()`). */
  readonly hasOlder: boolean;
  readonly loadingOlder: boolean;
  /** The user's sends not in `messages` yet, oldest first. */
  readonly pending: readonly PendingSend[];
  readonly streaming: readonly StreamingMessage[];
  /** From `joined`, kept up to date by `presence`. */
  readonly members: readonly Member[];
  /** User ids typing now (not the current user). */
  readonly typing: readonly string[];
  /** Read cursors by user id: others' from `read` frames; the user's own as far as known. */
  readonly reads: Readonly<Record<string, number>>;
  /** The current user's read cursor as far as known (0: nothing known yet). */
  readonly readSeq: number;
  /** Messages by others (and the system) after the user's read cursor, deleted ones not counted (nor changes). */
  readonly unread: number;
  /** The newest seq in `messages` (0 when none; a later change's seq is not counted). */
  readonly lastSeq: number;
}

interface RoomViewEvents {
  change: RoomSnapshot;
}

interface PendingEntry {
  clientId: string;
  body: string;
  replyTo?: number;
  attachments?: Attachment[];
  state: PendingSendState;
  seq?: number;
  error?: MixroomError;
  order: number;
}

/**
 * The latest change seen to one message, per field, with the seq it came
 * at: re-applied to the message when it (or a reply quoting it) arrives
 * from a history page that may have been read before the change.
 */
interface Patch {
  edited?: MessageEditedFrame;
  deleted?: MessageDeletedFrame;
  reacted?: MessageReactedFrame;
}

/** History pages that count only changes do not add messages: at most this many more pages per `loadOlder()`. */
const MAX_EMPTY_PAGES = 5;

type Section = "messages" | "pending" | "streaming" | "members" | "typing" | "reads" | "other";

const DEFAULT_PAGE = 50;
const HISTORY_MAX = 100;
const EMPTY: readonly never[] = Object.freeze([]);

export class RoomView extends TypedEmitter<RoomViewEvents> {
  readonly name: string;
  private readonly pageSize: number;
  private readonly typingTimeoutMs: number;

  private status: RoomStatus = "joining";
  private error: MixroomError | undefined;
  private closed = false;

  private readonly byseq = new Map<number, ChatMessage>();
  /** Changes seen live, by the seq of the message they change. */
  private readonly patches = new Map<number, Patch>();
  /** The lowest seq covered by the history pages loaded (messages and changes alike). */
  private floor: number | undefined;
  /** The latest page arrived (or the room was empty). */
  private loaded = false;
  private loadingInitial = false;
  private hasOlder = true;
  private loadingOlder = false;

  private readonly pendingSends = new Map<string, PendingEntry>();
  private pendingCounter = 0;
  private readonly streamingBodies = new Map<string, string>();
  private members: Member[] = [];
  private readonly typingUntil = new Map<string, number>();
  private typingTimer: ReturnType<typeof setTimeout> | undefined;
  private readonly readCursors = new Map<string, number>();
  /** The user's own cursor from their `markRead()` and their other tabs' `read`. */
  private ownRead = 0;
  /** The server's unread count (`unread` frame) and the seq it counted up to. */
  private serverUnread: { count: number; upTo: number | undefined } | undefined;

  private readonly unsubscribers: Array<() => void> = [];
  private readonly dirty = new Set<Section>(["messages", "pending", "streaming", "members", "typing", "reads", "other"]);
  private notifyScheduled = false;
  private snapshot: RoomSnapshot | undefined;
  private parts: {
    messages: readonly ChatMessage[];
    pending: readonly PendingSend[];
    streaming: readonly StreamingMessage[];
    members: readonly Member[];
    typing: readonly string[];
    reads: Readonly<Record<string, number>>;
  } = { messages: EMPTY, pending: EMPTY, streaming: EMPTY, members: EMPTY, typing: EMPTY, reads: Object.freeze({}) };

  /** Use `client.room(name)`. */
  constructor(
    private readonly client: MixroomClient,
    name: string,
    private readonly link: RoomLink,
    options: RoomViewOptions = {},
  ) {
    super();
    this.name = name;
    this.pageSize = Math.max(1, Math.min(HISTORY_MAX, options.pageSize ?? DEFAULT_PAGE));
    this.typingTimeoutMs = options.typingTimeoutMs ?? 4_000;
    this.listen();
    const unread = client.lastUnread;
    if (unread) this.serverUnread = { count: unread.rooms[name] ?? 0, upTo: undefined };
    this.syncPending();
    link.hold();
    const joined = link.joined();
    if (joined) this.onJoined(joined);
  }

  // -------------------------------------------------------------------------
  // Reading
  // -------------------------------------------------------------------------

  /** The current snapshot; the same object until something changes. */
  readonly getSnapshot = (): RoomSnapshot => {
    if (this.snapshot && this.dirty.size === 0) return this.snapshot;
    this.snapshot = this.build();
    this.dirty.clear();
    return this.snapshot;
  };

  /**
   * Calls `listener` after each change (batched per microtask); returns an
   * unsubscribe function. `useSyncExternalStore(room.subscribe, room.getSnapshot)`.
   */
  readonly subscribe = (listener: () => void): (() => void) => this.on("change", () => listener());

  // -------------------------------------------------------------------------
  // Acting
  // -------------------------------------------------------------------------

  /**
   * Sends `body` (through the client's queue for this room: retried with
   * the same `client_id` until stored once). It shows in `pending` at once
   * and is replaced by the stored message; a refusal shows as a `failed`
   * entry. Returns the `client_id`. For the ack itself use
   * `client.send(room.name, body)`, which this view shows the same way.
   */
  send(body: string, options: SendOptions = {}): string {
    if (this.closed) throw new MixroomError("closed", `the view of ${this.name} is closed`);
    const clientId = options.clientId ?? newClientId();
    this.client.send(this.name, body, { ...options, clientId }).catch(() => undefined);
    return clientId;
  }

  /** Sends a `failed` message again, with the same `client_id` (and its reply and attachments). */
  retry(clientId: string): void {
    const entry = this.pendingSends.get(clientId);
    if (!entry || entry.state !== "failed" || this.closed) return;
    entry.state = "queued";
    entry.error = undefined;
    this.client
      .send(this.name, entry.body, {
        clientId,
        ...(entry.replyTo !== undefined ? { replyTo: entry.replyTo } : {}),
        ...(entry.attachments !== undefined ? { attachments: entry.attachments } : {}),
      })
      .catch(() => undefined);
    this.changed("pending");
  }

  /**
   * New text for the user's message `seq` (`client.edit`): resolves with
   * the ack; the message in `messages` changes when its `message.edited`
   * arrives (not before: the server may refuse).
   */
  edit(seq: number, body: string): Promise<AckFrame> {
    if (this.closed) return Promise.reject(this.closedError());
    return this.client.edit(this.name, seq, body);
  }

  /** Deletes message `seq` (`client.deleteMessage`); it becomes a tombstone when its `message.deleted` arrives. */
  deleteMessage(seq: number): Promise<AckFrame> {
    if (this.closed) return Promise.reject(this.closedError());
    return this.client.deleteMessage(this.name, seq);
  }

  /** Puts `emoji` on message `seq`, or takes the user's back with `on = false` (`client.react`). */
  react(seq: number, emoji: string, on = true): Promise<AckFrame> {
    if (this.closed) return Promise.reject(this.closedError());
    return this.client.react(this.name, seq, emoji, on);
  }

  private closedError(): MixroomError {
    return new MixroomError("closed", `the view of ${this.name} is closed`);
  }

  /** Forgets a `failed` message. */
  dismiss(clientId: string): void {
    const entry = this.pendingSends.get(clientId);
    if (entry?.state !== "failed") return;
    this.pendingSends.delete(clientId);
    this.changed("pending");
  }

  /**
   * Loads the page before the oldest message shown; resolves with whether
   * still older ones exist. Rejects if the request fails (try again later).
   */
  async loadOlder(): Promise<boolean> {
    if (this.closed || !this.loaded || this.loadingOlder || !this.hasOlder) return this.hasOlder && !this.closed;
    this.loadingOlder = true;
    this.changed("other");
    try {
      // A page of only changes (reactions, say) shows nothing new: go on
      // to the next one, a few times at most.
      for (let page = 0; page <= MAX_EMPTY_PAGES; page++) {
        const oldest = this.lowestSeq();
        if (oldest === undefined || oldest <= 1) {
          this.hasOlder = false;
          return false;
        }
        const history = await this.client.history(this.name, { before: oldest, limit: this.pageSize });
        if (this.closed) return false;
        const added = this.addPage(history);
        if (added > 0 || !this.hasOlder) break;
      }
      return this.hasOlder;
    } finally {
      this.loadingOlder = false;
      this.changed("other");
    }
  }

  /** Marks the room read up to `seq` (default: the newest message shown). Only moves forward. */
  markRead(seq: number = this.newestSeq()): void {
    if (this.closed || seq <= this.ownRead) return;
    this.ownRead = seq;
    this.client.markRead(this.name, seq);
    this.changed("reads");
  }

  /** Tells the others the user is typing (throttled by the client). */
  typing(): void {
    if (!this.closed) this.client.typing(this.name);
  }

  /**
   * Stops the view: no more changes, and the room is left unless another
   * view or a `client.join()` still holds it. Messages already queued are
   * still sent.
   */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const unsubscribe of this.unsubscribers.splice(0)) unsubscribe();
    if (this.typingTimer) clearTimeout(this.typingTimer);
    this.link.release();
    this.status = "closed";
    this.changed("other");
  }

  // -------------------------------------------------------------------------
  // The client's events
  // -------------------------------------------------------------------------

  private listen(): void {
    const client = this.client;
    const mine = <T extends { room: string }>(handler: (event: T) => void) => (event: T) => {
      if (event.room === this.name && !this.closed) handler(event);
    };
    this.unsubscribers.push(
      client.on("state", ({ state }) => {
        if (state !== "open") {
          if (this.status === "ready" || this.status === "loading") this.status = "joining";
          // Pieces of a streamed answer are not replayed; the stored
          // message comes by `since` after the re-join.
          if (this.streamingBodies.size > 0) {
            this.streamingBodies.clear();
            this.changed("streaming");
          }
          if (this.typingUntil.size > 0) {
            this.typingUntil.clear();
            this.changed("typing");
          }
        }
        this.changed("other");
      }),
      client.on("welcome", () => this.changed("other")),
      client.on("unread", ({ rooms }) => {
        this.serverUnread = { count: rooms[this.name] ?? 0, upTo: undefined };
        this.changed("reads");
      }),
      client.on("joined", mine((frame) => this.onJoined(frame))),
      client.on("message", mine((message) => {
        this.addMessages([message]);
        const sender = message.sender.user_id;
        if (sender !== null && this.typingUntil.delete(sender)) this.changed("typing");
        if (this.streamingBodies.delete(message.id)) this.changed("streaming");
      })),
      client.on("message.delta", mine(({ id, delta }) => {
        this.streamingBodies.set(id, (this.streamingBodies.get(id) ?? "") + delta);
        this.changed("streaming");
      })),
      client.on("message.aborted", mine(({ id }) => {
        if (this.streamingBodies.delete(id)) this.changed("streaming");
      })),
      client.on("typing", mine(({ user_id }) => {
        if (user_id === client.userId) return;
        this.typingUntil.set(user_id, Date.now() + this.typingTimeoutMs);
        this.scheduleTypingExpiry();
        this.changed("typing");
      })),
      client.on("read", mine(({ user_id, seq }) => {
        if (seq > (this.readCursors.get(user_id) ?? 0)) this.readCursors.set(user_id, seq);
        // The user's own read from another tab (or device) moves their cursor here too.
        if (user_id === client.userId && seq > this.ownRead) this.ownRead = seq;
        this.changed("reads");
      })),
      client.on("presence", mine(() => {
        this.members = this.link.members();
        this.changed("members");
      })),
      client.on("message.edited", mine((change) => this.onChange(change))),
      client.on("message.deleted", mine((change) => this.onChange(change))),
      client.on("message.reacted", mine((change) => this.onChange(change))),
      client.on("ack", ({ client_id, seq }) => {
        const entry = client_id === undefined ? undefined : this.pendingSends.get(client_id);
        if (!entry || client_id === undefined || this.closed) return;
        if (this.byseq.get(seq)?.client_id === client_id) {
          this.pendingSends.delete(client_id);
        } else {
          entry.state = "acked";
          entry.seq = seq;
        }
        this.changed("pending");
      }),
      client.on("outbox", mine(() => this.syncPending())),
      client.on("send.failed", mine(({ clientId, body, replyTo, attachments, error }) => {
        const entry = this.pendingSends.get(clientId) ?? this.newEntry(clientId, body, replyTo, attachments);
        entry.state = "failed";
        entry.error = error;
        this.pendingSends.set(clientId, entry);
        this.changed("pending");
      })),
      client.on("room.failed", mine(({ error }) => {
        this.status = "failed";
        this.error = error;
        this.changed("other");
      })),
      client.on("room.reset", mine(() => {
        // The server's store is shorter than what was shown: start over.
        this.byseq.clear();
        this.patches.clear();
        this.floor = undefined;
        this.loaded = false;
        this.hasOlder = true;
        this.changed("messages");
        this.loadLatest();
      })),
    );
  }

  private onJoined(frame: JoinedFrame): void {
    this.members = this.link.members();
    this.changed("members");
    if (this.status === "failed") return;
    // The server's unread count was taken at `welcome`, just before this
    // socket's joins: it counts up to about this `last_seq`.
    if (this.serverUnread && this.serverUnread.upTo === undefined) this.serverUnread.upTo = frame.last_seq;
    this.status = this.loaded ? "ready" : "loading";
    this.changed("other");
    this.loadLatest();
  }

  /** The latest page, once per view (again after a store reset). */
  private loadLatest(): void {
    if (this.loaded || this.loadingInitial || this.closed || !this.link.joined()) return;
    // Everything above the client's last seq comes as `message` events.
    const upTo = this.client.lastSeq(this.name) ?? 0;
    if (upTo <= 0) {
      this.loaded = true;
      this.hasOlder = false;
      this.status = "ready";
      this.changed("other");
      return;
    }
    this.loadingInitial = true;
    this.client
      .history(this.name, { before: upTo + 1, limit: this.pageSize })
      .then(
        (page) => {
          if (this.closed) return;
          const added = this.addPage(page);
          this.loaded = true;
          if (this.status === "loading") this.status = "ready";
          this.changed("other");
          // The newest entries were all changes: show some messages.
          if (added === 0 && this.hasOlder) this.loadOlder().catch(() => undefined);
        },
        (error: unknown) => {
          if (this.closed) return;
          const code = error instanceof MixroomError ? error.code : undefined;
          if (code === "forbidden" || code === "not_found") {
            this.status = "failed";
            this.error = error as MixroomError;
            this.changed("other");
          } else if (code !== "connection_lost") {
            // A timeout or rate_limited: try again shortly. A lost
            // connection tries again at the next `joined`.
            const delay = error instanceof MixroomError ? (error.retryAfterMs ?? 1000) : 1000;
            setTimeout(() => this.loadLatest(), delay);
          }
        },
      )
      .finally(() => {
        this.loadingInitial = false;
      });
  }

  /**
   * A history page: its messages as they stand; its changes (which the
   * messages already show) only move the paging floor. Returns how many
   * messages were new.
   */
  private addPage(page: HistoryFrame): number {
    const added = this.addMessages(page.messages);
    for (const entry of [...page.messages, ...(page.changes ?? [])]) {
      if (this.floor === undefined || entry.seq < this.floor) this.floor = entry.seq;
    }
    this.hasOlder = page.has_more && (this.lowestSeq() ?? 1) > 1;
    return added;
  }

  /** A change to a message: applied to it and to the quotes of replies to it. */
  private onChange(change: MessageChangeFrame): void {
    const patch = this.patches.get(change.message_seq) ?? {};
    const kind = change.type === "message.edited" ? "edited" : change.type === "message.deleted" ? "deleted" : "reacted";
    const known = patch[kind];
    if (known !== undefined && known.seq >= change.seq) return;
    (patch as Record<string, MessageChangeFrame>)[kind] = change;
    this.patches.set(change.message_seq, patch);
    let touched = false;
    const target = this.byseq.get(change.message_seq);
    if (target) {
      const updated = applyChange(target, change);
      if (updated !== target) {
        this.byseq.set(target.seq, freezeMessage(updated));
        touched = true;
      }
    }
    if (change.type !== "message.reacted") {
      for (const message of this.byseq.values()) {
        if (message.reply_to?.seq !== change.message_seq || message.seq > change.seq) continue;
        const updated = applyChangeToQuote(message, change);
        if (updated !== message) {
          this.byseq.set(message.seq, freezeMessage(updated));
          touched = true;
        }
      }
    }
    if (touched) this.changed("messages");
  }

  /**
   * `message` with the changes seen live that a history page may have
   * been read before: to itself, and to the message it quotes when the
   * change came after it. Changes are states, so re-applying one the
   * message already shows changes nothing.
   */
  private patched(message: ChatMessage): ChatMessage {
    let result = message;
    for (const change of changesOf(this.patches.get(message.seq))) result = applyChange(result, change);
    const quoted = message.reply_to?.seq;
    if (quoted !== undefined) {
      for (const change of changesOf(this.patches.get(quoted))) {
        if (change.seq > message.seq) result = applyChangeToQuote(result, change);
      }
    }
    return result;
  }

  private addMessages(messages: readonly ChatMessage[]): number {
    let added = 0;
    const me = this.client.userId;
    for (const message of messages) {
      if (this.byseq.has(message.seq)) continue;
      this.byseq.set(message.seq, freezeMessage(this.patched(message)));
      added += 1;
      if (message.client_id !== null && message.sender.user_id === me && this.pendingSends.delete(message.client_id)) {
        this.changed("pending");
      }
    }
    if (added === 0) return 0;
    for (const [clientId, entry] of this.pendingSends) {
      if (entry.seq !== undefined && this.byseq.has(entry.seq)) {
        this.pendingSends.delete(clientId);
        this.changed("pending");
      }
    }
    this.changed("messages");
    return added;
  }

  /** Mirrors the client's queue for this room into `pending`. */
  private syncPending(): void {
    const queued = this.client.pendingMessages(this.name);
    const inQueue = new Set<string>();
    for (const message of queued) {
      inQueue.add(message.clientId);
      const entry = this.pendingSends.get(message.clientId);
      if (!entry) {
        const created = this.newEntry(message.clientId, message.body, message.replyTo, message.attachments);
        created.state = message.state;
        this.pendingSends.set(message.clientId, created);
      } else if (entry.state !== "acked") {
        entry.state = message.state;
        entry.error = undefined;
      }
    }
    for (const [clientId, entry] of this.pendingSends) {
      // Left the queue without an ack or a refusal (another user signed in).
      if (!inQueue.has(clientId) && entry.state !== "acked" && entry.state !== "failed") {
        this.pendingSends.delete(clientId);
      }
    }
    this.changed("pending");
  }

  private newEntry(clientId: string, body: string, replyTo?: number, attachments?: Attachment[]): PendingEntry {
    return {
      clientId,
      body,
      ...(replyTo !== undefined ? { replyTo } : {}),
      ...(attachments !== undefined ? { attachments } : {}),
      state: "queued",
      order: ++this.pendingCounter,
    };
  }

  private scheduleTypingExpiry(): void {
    if (this.typingTimer) clearTimeout(this.typingTimer);
    this.typingTimer = undefined;
    if (this.typingUntil.size === 0 || this.closed) return;
    const next = Math.min(...this.typingUntil.values());
    this.typingTimer = setTimeout(() => {
      const now = Date.now();
      for (const [user, until] of this.typingUntil) if (until <= now) this.typingUntil.delete(user);
      this.changed("typing");
      this.scheduleTypingExpiry();
    }, Math.max(0, next - Date.now()));
  }

  // -------------------------------------------------------------------------
  // Snapshots
  // -------------------------------------------------------------------------

  private changed(section: Section): void {
    this.dirty.add(section);
    if (this.notifyScheduled) return;
    this.notifyScheduled = true;
    queueMicrotask(() => {
      this.notifyScheduled = false;
      if (this.dirty.size === 0) return;
      this.emit("change", this.getSnapshot());
    });
  }

  private build(): RoomSnapshot {
    const parts = this.parts;
    if (this.dirty.has("messages")) {
      parts.messages = Object.freeze([...this.byseq.values()].sort((a, b) => a.seq - b.seq));
    }
    if (this.dirty.has("pending")) {
      parts.pending = Object.freeze(
        [...this.pendingSends.values()]
          .sort((a, b) => a.order - b.order)
          .map((entry) =>
            Object.freeze({
              clientId: entry.clientId,
              body: entry.body,
              ...(entry.replyTo !== undefined ? { replyTo: entry.replyTo } : {}),
              ...(entry.attachments !== undefined
                ? { attachments: Object.freeze(entry.attachments.map((a) => Object.freeze({ ...a }))) }
                : {}),
              state: entry.state,
              ...(entry.seq !== undefined ? { seq: entry.seq } : {}),
              ...(entry.error !== undefined ? { error: entry.error } : {}),
            }),
          ),
      );
    }
    if (this.dirty.has("streaming")) {
      parts.streaming = Object.freeze(
        [...this.streamingBodies].map(([id, body]) => Object.freeze({ id, body })),
      );
    }
    if (this.dirty.has("members")) {
      parts.members = Object.freeze(this.members.map((member) => Object.freeze({ ...member })));
    }
    if (this.dirty.has("typing")) {
      parts.typing = Object.freeze([...this.typingUntil.keys()]);
    }
    const me = this.client.userId;
    const { cursor, older } = this.ownCursor(me);
    const reads: Record<string, number> = Object.fromEntries(this.readCursors);
    if (me !== undefined && cursor > 0) reads[me] = Math.max(cursor, reads[me] ?? 0);
    if (!shallowEqual(reads, parts.reads)) parts.reads = Object.freeze(reads);
    let unread = older;
    for (const message of parts.messages) {
      if (message.seq > cursor && message.sender.user_id !== me && message.deleted_at === undefined) unread += 1;
    }
    return Object.freeze({
      room: this.name,
      status: this.status,
      error: this.error,
      connection: this.client.state,
      userId: me,
      messages: parts.messages,
      hasOlder: this.hasOlder,
      loadingOlder: this.loadingOlder,
      pending: parts.pending,
      streaming: parts.streaming,
      members: parts.members,
      typing: parts.typing,
      reads: parts.reads,
      readSeq: cursor,
      unread,
      lastSeq: parts.messages.at(-1)?.seq ?? 0,
    });
  }

  /**
   * The user's read cursor: the furthest of what they marked read (here or,
   * via `read` frames, in another tab) and what the server's unread count
   * implies — counting that many messages by others back from the seq the
   * count was taken at. `older`: unread messages below the loaded page.
   */
  private ownCursor(me: string | undefined): { cursor: number; older: number } {
    const server = this.serverUnread;
    if (!server || !this.loaded) return { cursor: this.ownRead, older: 0 };
    const upTo = server.upTo ?? this.newestSeq();
    let derived: number | undefined;
    let counted = 0;
    if (server.count === 0) {
      derived = upTo;
    } else {
      const descending = [...this.byseq.values()].filter((m) => m.seq <= upTo).sort((a, b) => b.seq - a.seq);
      for (const message of descending) {
        // The server counts what others wrote and did not delete.
        if (message.sender.user_id === me || message.deleted_at !== undefined) continue;
        counted += 1;
        if (counted === server.count) {
          derived = message.seq - 1;
          break;
        }
      }
    }
    let older = 0;
    if (derived === undefined) {
      // More unread than loaded: the cursor is below the first page.
      derived = (this.oldestSeq() ?? upTo + 1) - 1;
      older = this.hasOlder ? server.count - counted : 0;
    }
    if (this.ownRead >= derived) return { cursor: this.ownRead, older: 0 };
    return { cursor: derived, older };
  }

  private oldestSeq(): number | undefined {
    let oldest: number | undefined;
    for (const seq of this.byseq.keys()) if (oldest === undefined || seq < oldest) oldest = seq;
    return oldest;
  }

  /** The lowest seq loaded: of a message, or of a change a history page listed. */
  private lowestSeq(): number | undefined {
    const oldest = this.oldestSeq();
    if (this.floor === undefined) return oldest;
    return oldest === undefined ? this.floor : Math.min(oldest, this.floor);
  }

  private newestSeq(): number {
    let newest = 0;
    for (const seq of this.byseq.keys()) if (seq > newest) newest = seq;
    return newest;
  }
}

/** The message frozen, deeply (and without a frame's `type`). */
function freezeMessage(message: ChatMessage & { type?: string }): ChatMessage {
  const { type: _type, ...rest } = message;
  const frozen: ChatMessage = { ...rest, sender: Object.freeze({ ...rest.sender }) };
  if (rest.reply_to) {
    frozen.reply_to = Object.freeze({ ...rest.reply_to, sender: Object.freeze({ ...rest.reply_to.sender }) });
  }
  if (rest.attachments) frozen.attachments = Object.freeze(rest.attachments.map((a) => Object.freeze({ ...a }))) as Attachment[];
  if (rest.reactions) {
    frozen.reactions = Object.freeze(
      rest.reactions.map((r) => Object.freeze({ ...r, user_ids: Object.freeze([...r.user_ids]) as string[] })),
    ) as ChatMessage["reactions"];
  }
  return Object.freeze(frozen);
}

/** A patch's changes in seq order. */
function changesOf(patch: Patch | undefined): MessageChangeFrame[] {
  if (!patch) return [];
  return [patch.edited, patch.deleted, patch.reacted]
    .filter((change): change is MessageChangeFrame => change !== undefined)
    .sort((a, b) => a.seq - b.seq);
}

function shallowEqual(a: Record<string, number>, b: Readonly<Record<string, number>>): boolean {
  const keys = Object.keys(a);
  return keys.length === Object.keys(b).length && keys.every((key) => a[key] === b[key]);
}
