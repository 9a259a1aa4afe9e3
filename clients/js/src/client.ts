/**
 * The Mixroom real-time client: one WebSocket to `/v1/ws` that
 *
 * - authenticates with a token from `getToken()` and sends a fresh one on
 *   the live socket before the current one expires (the server closes with
 *   4001 at `exp` otherwise);
 * - reconnects after any drop with exponential backoff and jitter;
 * - remembers the last `seq` delivered per joined room, re-joins with
 *   `since` after every reconnect, and hands each message to the app once
 *   and in seq order (duplicates dropped, holes filled from history);
 * - queues outgoing messages per room and resends each with the same
 *   `client_id` until the server acks it, so a message is stored exactly
 *   once however often the connection drops, and a room held up by a rate
 *   limit or a refusal never holds up another room;
 * - queues edits, deletions and reactions in the same per-room queue (so
 *   they go out in the order made, after the messages before them), each
 *   with a `client_id` of its own that it is resent with until acked, so a
 *   change too is stored exactly once (see "Changes across reconnects" at
 *   `edit()`); and counts the changes' seqs like messages';
 * - stops for good (`unauthorized`) when no usable token can be had,
 *   instead of reconnecting forever;
 * - emits a typed event for every frame of the contract;
 * - hands out live room views (`room()`, see room.ts).
 *
 * Nothing here touches `WebSocket`, `fetch` or `window` before `connect()`
 * or an HTTP helper is called, so the module can be imported (and a client
 * constructed) during server-side rendering.
 */
import { backoffDelay, DEFAULT_BACKOFF, type BackoffOptions } from "./backoff.js";
import { TypedEmitter } from "./emitter.js";
import { MixroomError } from "./errors.js";
import {
  CloseCode,
  type AckFrame,
  type Attachment,
  type BookingUpdatedFrame,
  type ChatMessage,
  type ClientFrame,
  type DeleteFrame,
  type EditFrame,
  type ErrorFrame,
  type HistoryFrame,
  type JoinedFrame,
  type JoinFrame,
  type LeftFrame,
  type Member,
  type MessageAbortedFrame,
  type MessageChangeFrame,
  type MessageDeletedFrame,
  type MessageDeltaFrame,
  type MessageEditedFrame,
  type MessageFrame,
  type MessageReactedFrame,
  type NotificationFrame,
  type NotificationKind,
  type PongFrame,
  type PresenceFrame,
  type ReactFrame,
  type ReadFrame,
  type RoomEntryFrame,
  type SendAck,
  type SendFrame,
  type ServerFrame,
  type SwitchableKind,
  type TokenRefreshedFrame,
  type TypingFrame,
  type UnknownFrame,
  type UnreadFrame,
  type WelcomeFrame,
} from "./frames.js";
import { newClientId } from "./ids.js";
import { RoomView, type RoomLink, type RoomViewOptions } from "./room.js";
import { tokenExpiresAt } from "./token.js";

// ---------------------------------------------------------------------------
// WebSocket abstraction: the browser's WebSocket and Node's `ws` both fit.
// ---------------------------------------------------------------------------

/**
 * Handler types are declared through a method so they are checked
 * bivariantly: a real `WebSocket`'s `(ev: MessageEvent) => void` handler
 * must be assignable to this narrower view of it.
 */
type Handler<E> = { bivarianceHack(event: E): void }["bivarianceHack"];

export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: Handler<unknown> | null;
  onmessage: Handler<{ data: unknown }> | null;
  onclose: Handler<{ code: number; reason: string }> | null;
  onerror: Handler<unknown> | null;
}

export type WebSocketConstructor = new (url: string) => WebSocketLike;

// ---------------------------------------------------------------------------
// Public types
// ---------------------------------------------------------------------------

export type ConnectionState =
  /** Created, `connect()` not called yet. */
  | "idle"
  /** Getting a token and opening the socket. */
  | "connecting"
  /** Socket open, `auth` sent, waiting for `welcome`. */
  | "authenticating"
  /** `welcome` received: frames flow. */
  | "open"
  /** Lost the socket; a retry is scheduled. */
  | "reconnecting"
  /**
   * No usable token: `getToken()` threw or returned nothing, or the server
   * refused a token fresh from `getToken()`. The client does not reconnect
   * by itself; call `connect()` again once the user has signed in.
   */
  | "unauthorized"
  /** `close()` was called. */
  | "closed";

/** Why the client stopped in the `unauthorized` state. */
export type UnauthorizedReason =
  /** `getToken()` threw. */
  | "token_error"
  /** `getToken()` returned no token (`undefined`, `null` or `""`). */
  | "no_token"
  /** The server closed with 4001 on a token just taken from `getToken()`. */
  | "token_refused";

export interface ClientEvents {
  state: { state: ConnectionState; previous: ConnectionState };
  welcome: WelcomeFrame;
  unread: UnreadFrame;
  token_refreshed: TokenRefreshedFrame;
  joined: JoinedFrame;
  left: LeftFrame;
  ack: AckFrame;
  /** Each stored message of a joined room once, in seq order. */
  message: MessageFrame;
  "message.delta": MessageDeltaFrame;
  "message.aborted": MessageAbortedFrame;
  /** An edit of a message of a joined room: once each, in seq order with the messages. */
  "message.edited": MessageEditedFrame;
  /** A deletion (the message is a tombstone now): once each, in seq order. */
  "message.deleted": MessageDeletedFrame;
  /** A reaction put on or taken back: once each, in seq order. */
  "message.reacted": MessageReactedFrame;
  history: HistoryFrame;
  typing: TypingFrame;
  read: ReadFrame;
  presence: PresenceFrame;
  "booking.updated": BookingUpdatedFrame;
  notification: NotificationFrame;
  pong: PongFrame;
  /** Every `error` frame, also those the client handles itself (retries). */
  error: ErrorFrame;
  /** Every frame as it arrived, before de-duplication; also unknown types. */
  frame: ServerFrame | UnknownFrame;
  /** The socket closed; `willReconnect` is false only after `close()`. */
  disconnected: { code: number; reason: string; willReconnect: boolean };
  reconnecting: { attempt: number; delayMs: number };
  /**
   * `getToken()` threw. While connecting this ends in `unauthorized`; during
   * a refresh on a live socket the client tries again in 5 s.
   */
  token_error: { error: unknown };
  /** The client stopped: no usable token (state `unauthorized`). */
  unauthorized: { reason: UnauthorizedReason; error?: unknown };
  /** The queue of unacked messages and changes of `room` changed (see `pendingMessages(room)`, `pendingChanges(room)`). */
  outbox: { room: string };
  /** The server refused a message for good; `send()` rejected with `error`. */
  "send.failed": {
    room: string;
    clientId: string;
    body: string;
    replyTo?: number;
    attachments?: Attachment[];
    error: MixroomError;
  };
  /**
   * An edit, deletion or reaction refused for good by the server
   * (`forbidden`, `not_found`, `invalid`, …); its promise rejected with
   * `error`. A lost connection is not a failure: the change is resent.
   */
  "change.failed": { room: string; change: PendingChange; error: MixroomError };
  /**
   * The server refused to join `room`, or removed this user from it: the
   * client no longer joins it (a `join()` rejects with the same error).
   */
  "room.failed": { room: string; error: MixroomError };
  /**
   * The room's history is shorter than what this client had seen (the
   * server's store was reset): counting restarts from `lastSeq`.
   */
  "room.reset": { room: string; lastSeq: number; previousLastSeq: number };
}

export interface MixroomClientOptions {
  /** `ws://host:port/v1/ws` or `wss://…/v1/ws`. */
  url: string;
  /**
   * Returns a valid access token (a Supabase session's `access_token`).
   * Called before every connect and before the current token expires.
   * Throwing or returning nothing (signed out) stops the client in the
   * `unauthorized` state.
   */
  getToken: () => string | null | undefined | Promise<string | null | undefined>;
  /**
   * Defaults to `globalThis.WebSocket` (browsers, Node ≥ 22), looked up at
   * `connect()`; pass `ws` on Node 20.
   */
  WebSocket?: WebSocketConstructor;
  /** Reconnect delays; defaults: 500 ms doubling up to 30 s, 50 % jitter. */
  backoff?: Partial<BackoffOptions>;
  /** Refresh the token this long before it expires (at most half its remaining life). Default 60 s. */
  refreshMarginMs?: number;
  /** Resend an unacked message or change (same `client_id`) after this long. Default 10 s. */
  ackTimeoutMs?: number;
  /** How long `history()`, `ping()` and the HTTP helpers wait. Default 10 s. */
  requestTimeoutMs?: number;
  /** At most one `typing` frame per room this often. Default 2 s. */
  typingThrottleMs?: number;
  /** Base URL of the HTTP API; derived from `url` by default. */
  httpUrl?: string;
  /** Defaults to `globalThis.fetch`, looked up when an HTTP helper is called. */
  fetch?: typeof fetch;
  /** For tests: the jitter's random source. */
  random?: () => number;
}

export interface SendOptions {
  /** The idempotency key; a fresh UUID by default. Reuse it to retry a send yourself. */
  clientId?: string;
  /** The seq of the message this one answers (same room, not deleted; else `not_found`). */
  replyTo?: number;
  /** Files shared by reference (at most 10; `https` URLs on the server's allowed origins). */
  attachments?: Attachment[];
}

export interface JoinOptions {
  /** Also deliver the stored messages with a seq above this one (0: all of them). */
  since?: number;
}

/**
 * Where an unacked message is: `queued` (waiting behind an earlier message
 * of its room, or for the connection), `sending` (written, no ack yet) or
 * `retrying` (waiting out `retry_after_ms` after `rate_limited`/`internal`).
 */
export type OutgoingState = "queued" | "sending" | "retrying";

/** A message waiting for its ack. */
export interface PendingMessage {
  room: string;
  clientId: string;
  body: string;
  replyTo?: number;
  attachments?: Attachment[];
  state: OutgoingState;
}

/** What a change does: `edit`, `delete` or `react`. */
export type ChangeKind = "edit" | "delete" | "react";

/** An edit, deletion or reaction waiting for its ack. */
export interface PendingChange {
  room: string;
  kind: ChangeKind;
  /** The seq of the message it changes. */
  seq: number;
  /** Its idempotency key: a fresh UUID, sent with it and with every resend (its ack carries it). */
  clientId: string;
  /** The `ref` it is sent with, the same on every resend (its ack and error carry it). */
  ref: string;
  /** An edit's new text. */
  body?: string;
  /** A reaction's emoji, and whether it is put on or taken back. */
  emoji?: string;
  on?: boolean;
  state: OutgoingState;
}

export interface NotificationItem {
  id: string;
  // `string & {}` keeps editors suggesting the known kinds while allowing new ones.
  kind: NotificationKind | (string & {});
  title: string;
  body: string;
  link: string | null;
  created_at: string;
  read_at: string | null;
}

export interface NotificationList {
  notifications: NotificationItem[];
  has_more: boolean;
  unread_count: number;
}

export interface NotificationQuery {
  /** Only unread ones. */
  unread?: boolean;
  /** The page after this notification id (the last `id` of the previous page). */
  before?: string;
  /** 1 to 100; the server's default is 50. */
  limit?: number;
}

/** Email on/off per kind (`GET /v1/me/preferences`). */
export type EmailSwitches = Record<SwitchableKind, boolean>;

/** Web Push on/off per kind (`GET /v1/me/preferences`), for the browsers `subscribeToPush()` registered. */
export type PushSwitches = Record<SwitchableKind, boolean>;

export interface Preferences {
  email: EmailSwitches;
  push: PushSwitches;
  /** The user's delay before an unread chat message is emailed; `null`: the server's. */
  chat_delay_secs: number | null;
  /** The server's delays, for showing what `null` means. */
  defaults: { offline_delay_secs: number; unread_delay_secs: number };
}

/** A change for `PUT /v1/me/preferences`: only what is given changes. */
export interface PreferencesUpdate {
  email?: Partial<EmailSwitches>;
  push?: Partial<PushSwitches>;
  /** 0 to 604800 seconds, or `null` for the server's delays. */
  chat_delay_secs?: number | null;
}

/** A browser's push subscription as the server stores it (`POST /v1/me/push-subscriptions`). */
export interface PushSubscriptionBody {
  /** The push service's URL for this browser. */
  endpoint: string;
  /** base64url: the browser's P-256 public key (`p256dh`) and its 16-byte auth secret (`auth`). */
  keys: { p256dh: string; auth: string };
}

export interface UnreadCounts {
  notifications: number;
  rooms: Record<string, number>;
}

export interface SupportConversation {
  id: string;
  room: string;
  status?: string;
}

// ---------------------------------------------------------------------------
// Internal state
// ---------------------------------------------------------------------------

interface RoomState {
  name: string;
  /** Highest seq handed to the app; `undefined` until the first `joined`. */
  lastSeq: number | undefined;
  /** `joined` received on the current socket. */
  joinedOnSocket: boolean;
  /** The latest `joined` frame, for `join()` calls on a room already joined. */
  lastJoined: JoinedFrame | undefined;
  /** The ref of the `join` in flight on the current socket. */
  joinRef: string | undefined;
  /** Entries (messages and changes) that arrived ahead of a hole, by seq. */
  ahead: Map<number, RoomEntryFrame>;
  /** The ref of the `history` request filling a hole. */
  gapRef: string | undefined;
  /** A paged replay: the seq this page ends at, when more follows it. */
  pageUntil: number | undefined;
  /** The ref of the `join` fetching the next page of a replay. */
  pageRef: string | undefined;
  /** Highest seq the app marked read, and the highest sent to the server. */
  readWanted: number;
  readSent: number;
  lastTypingAt: number;
  waiters: Array<{ resolve: (frame: JoinedFrame) => void; reject: (error: MixroomError) => void }>;
  /** Kept joined because `join()` asked (until `leave()`). */
  explicit: boolean;
  /** Open room views holding it. */
  views: number;
  /** From the latest `joined`, kept up to date by `presence`. */
  members: Map<string, Member>;
}

/** A queued `send`, `edit`, `delete` or `react`. */
interface Outgoing {
  room: string;
  /** The frame, without its `ref`. */
  frame: SendFrame | EditFrame | DeleteFrame | ReactFrame;
  /** The frame's `client_id` (a change's too): its ack carries it. */
  clientId: string;
  /** `<type>:<client_id>`, e.g. `send:…`, `delete:…`; the same on every resend. */
  ref: string;
  /** Queue order over all rooms, for `pendingMessages()`. */
  order: number;
  resolve: (ack: AckFrame) => void;
  reject: (error: MixroomError) => void;
  /** The socket generation it was last written to (`undefined`: not in flight). */
  sentOn: number | undefined;
  ackTimer: ReturnType<typeof setTimeout> | undefined;
  /** Set while waiting out `retry_after_ms` after `rate_limited`/`internal`. */
  retryTimer: ReturnType<typeof setTimeout> | undefined;
}

interface PendingRequest {
  expect: ServerFrame["type"];
  resolve: (frame: ServerFrame) => void;
  reject: (error: MixroomError) => void;
  timer: ReturnType<typeof setTimeout>;
}

const RETRYABLE_CODES: ReadonlySet<string> = new Set(["rate_limited", "internal"]);
/** A client-side close code: the connection looked dead (no welcome, or silence). */
const CLOSE_HEARTBEAT_TIMEOUT = 4000;
/** Never refresh the token more often than this (a `getToken` that returns the same token). */
const MIN_REFRESH_DELAY_MS = 1000;
/** The history page size the server allows. */
const HISTORY_MAX = 100;

export class MixroomClient extends TypedEmitter<ClientEvents> {
  private readonly options: Required<
    Omit<MixroomClientOptions, "WebSocket" | "backoff" | "fetch" | "httpUrl">
  >;
  private readonly WebSocketOption: WebSocketConstructor | undefined;
  private readonly backoff: BackoffOptions;
  private readonly httpUrl: string;
  private readonly fetchOption: typeof fetch | undefined;

  private currentState: ConnectionState = "idle";
  private socket: WebSocketLike | undefined;
  /**
   * Bumped whenever a socket is opened or given up: callbacks and timers
   * capture it and do nothing once it has moved on, so a late event of an
   * old socket can never touch the new one.
   */
  private generation = 0;
  private attempt = 0;
  private closedByUser = false;
  private token: string | undefined;
  private refreshingToken: { ref: string; token: string } | undefined;
  /** `welcome` arrived on the current socket. */
  private welcomed = false;
  /** The server answered a refresh token from `getToken()` with `unauthorized` (and none got through since). */
  private refreshRefused = false;
  private me: string | undefined;
  private latestUnread: UnreadFrame | undefined;
  /** Server clock minus local clock, from `welcome` (token expiry is server time). */
  private clockSkewMs = 0;
  private lastHeardAt = 0;
  private refCounter = 0;

  private reconnectTimer: ReturnType<typeof setTimeout> | undefined;
  private refreshTimer: ReturnType<typeof setTimeout> | undefined;
  private heartbeatTimer: ReturnType<typeof setInterval> | undefined;

  private readonly rooms = new Map<string, RoomState>();
  /** Unacked messages, one ordered queue per room; each room's head is in flight. */
  private readonly queues = new Map<string, Outgoing[]>();
  private outgoingCounter = 0;
  private readonly requests = new Map<string, PendingRequest>();
  private openWaiters: Array<{ resolve: () => void; reject: (error: MixroomError) => void }> = [];

  constructor(options: MixroomClientOptions) {
    super();
    this.WebSocketOption = options.WebSocket;
    this.backoff = { ...DEFAULT_BACKOFF, ...options.backoff };
    this.httpUrl = (options.httpUrl ?? httpUrlOf(options.url)).replace(/\/$/, "");
    this.fetchOption = options.fetch;
    this.options = {
      url: options.url,
      getToken: options.getToken,
      refreshMarginMs: options.refreshMarginMs ?? 60_000,
      ackTimeoutMs: options.ackTimeoutMs ?? 10_000,
      requestTimeoutMs: options.requestTimeoutMs ?? 10_000,
      typingThrottleMs: options.typingThrottleMs ?? 2_000,
      random: options.random ?? Math.random,
    };
  }

  // -------------------------------------------------------------------------
  // Connection
  // -------------------------------------------------------------------------

  get state(): ConnectionState {
    return this.currentState;
  }

  /** The user id from `welcome` (kept while reconnecting). */
  get userId(): string | undefined {
    return this.me;
  }

  /** The latest `unread` frame (sent after every `welcome`), if any yet. */
  get lastUnread(): UnreadFrame | undefined {
    return this.latestUnread;
  }

  /**
   * Opens the connection (and keeps it open until `close()`). From
   * `unauthorized` (after the user signed in again) it starts over.
   * Throws when there is no WebSocket implementation (Node 20 without
   * the `WebSocket` option).
   */
  connect(): void {
    if (!["idle", "closed", "unauthorized"].includes(this.currentState)) return;
    this.webSocketImpl(); // fail here, at the caller, rather than in a retry loop
    this.closedByUser = false;
    this.attempt = 0;
    void this.openSocket();
  }

  private webSocketImpl(): WebSocketConstructor {
    const impl = this.WebSocketOption ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (!impl) {
      throw new Error("no WebSocket implementation: pass `WebSocket` (e.g. from the `ws` package)");
    }
    return impl;
  }

  /**
   * Closes the socket and stops reconnecting. Joined rooms and unacked
   * messages are kept: a later `connect()` re-joins and resends them.
   */
  close(): void {
    this.closedByUser = true;
    this.clearTimer("reconnectTimer");
    if (this.socket) {
      this.dropSocket(CloseCode.Normal, "client closed");
    } else {
      // Between sockets (waiting for a token or a retry): just stop.
      this.generation++;
      this.setState("closed");
    }
  }

  /** Skips the backoff wait (e.g. on the browser's `online` event). */
  reconnectNow(): void {
    if (this.currentState !== "reconnecting") return;
    this.clearTimer("reconnectTimer");
    this.attempt = 0;
    void this.openSocket();
  }

  /**
   * Resolves once the connection is open; rejects after `timeoutMs`, or at
   * once in (or on entering) the `unauthorized` state.
   */
  whenOpen(timeoutMs = this.options.requestTimeoutMs): Promise<void> {
    if (this.currentState === "open") return Promise.resolve();
    if (this.currentState === "unauthorized") {
      return Promise.reject(new MixroomError("unauthorized", "signed out: no usable token"));
    }
    return new Promise((resolve, reject) => {
      const waiter = {
        resolve: (): void => {
          clearTimeout(timer);
          resolve();
        },
        reject: (error: MixroomError): void => {
          clearTimeout(timer);
          reject(error);
        },
      };
      const timer = setTimeout(() => {
        this.openWaiters = this.openWaiters.filter((other) => other !== waiter);
        reject(new MixroomError("timeout", `not connected within ${timeoutMs} ms`));
      }, timeoutMs);
      this.openWaiters.push(waiter);
    });
  }

  private async openSocket(): Promise<void> {
    const generation = ++this.generation;
    this.setState("connecting");
    let token: string | null | undefined;
    try {
      token = await this.options.getToken();
    } catch (error) {
      if (generation !== this.generation) return;
      this.emit("token_error", { error });
      this.becomeUnauthorized("token_error", error);
      return;
    }
    if (generation !== this.generation) return; // closed while waiting
    if (typeof token !== "string" || token === "") {
      this.becomeUnauthorized("no_token");
      return;
    }
    let socket: WebSocketLike;
    try {
      socket = new (this.webSocketImpl())(this.options.url);
    } catch (error) {
      this.emit("disconnected", { code: 0, reason: String(error), willReconnect: true });
      this.scheduleReconnect();
      return;
    }
    this.socket = socket;
    this.token = token;
    this.lastHeardAt = Date.now();
    // A connect that hangs (a black-holed SYN, a server that never answers
    // `auth`) is given up like a dropped one; `welcome` replaces this timer
    // with the heartbeat.
    this.heartbeatTimer = setTimeout(() => {
      if (generation === this.generation) this.dropSocket(CLOSE_HEARTBEAT_TIMEOUT, "no welcome in time");
    }, this.options.requestTimeoutMs);
    socket.onopen = () => {
      if (generation !== this.generation) return;
      this.setState("authenticating");
      this.write({ type: "auth", token });
    };
    socket.onmessage = (event) => {
      if (generation !== this.generation) return;
      this.onData(event.data);
    };
    socket.onclose = (event) => {
      if (generation !== this.generation) return;
      this.onSocketClosed(event.code, event.reason);
    };
    // An error is always followed by a close event, which does the work.
    socket.onerror = () => undefined;
  }

  /** Gives up the current socket now, without waiting for its close event. */
  private dropSocket(code: number, reason: string): void {
    const socket = this.socket;
    this.onSocketClosed(code, reason);
    try {
      socket?.close(code, reason);
    } catch {
      // Already closed.
    }
  }

  private onSocketClosed(code: number, reason: string): void {
    this.generation++;
    if (this.socket) {
      this.socket.onopen = this.socket.onmessage = this.socket.onclose = null;
    }
    this.socket = undefined;
    // 4001 on a token fresh from getToken() — refused at `auth`, closed
    // while a refresh `auth` was pending (a token of another user), or after
    // the server answered a refresh token with `unauthorized` — means no
    // token will do: stop. 4001 on a welcomed socket whose refreshes were
    // not refused is mere expiry: reconnect with a new token.
    const tokenRefused =
      code === CloseCode.AuthFailed &&
      (!this.welcomed || this.refreshingToken !== undefined || this.refreshRefused);
    this.welcomed = false;
    this.refreshRefused = false;
    this.refreshingToken = undefined;
    this.clearTimer("refreshTimer");
    this.clearTimer("heartbeatTimer");
    for (const room of this.rooms.values()) {
      room.joinedOnSocket = false;
      room.joinRef = undefined;
      // What was ahead of a hole is replayed after the re-join.
      room.ahead.clear();
      room.gapRef = undefined;
      room.pageUntil = undefined;
      room.pageRef = undefined;
    }
    for (const queue of this.queues.values()) {
      for (const message of queue) {
        // Unanswered: resent on the next socket with the same client_id
        // (a send's or a change's), which the server stores at most once.
        message.sentOn = undefined;
        if (message.ackTimer) clearTimeout(message.ackTimer);
        message.ackTimer = undefined;
      }
    }
    for (const room of this.queues.keys()) this.emit("outbox", { room });
    for (const [ref, request] of this.requests) {
      clearTimeout(request.timer);
      request.reject(new MixroomError("connection_lost", "the connection was lost"));
      this.requests.delete(ref);
    }
    const willReconnect = !this.closedByUser && !tokenRefused;
    this.emit("disconnected", { code, reason, willReconnect });
    if (this.closedByUser) {
      this.setState("closed");
      return;
    }
    if (tokenRefused) {
      this.becomeUnauthorized("token_refused");
      return;
    }
    if (code === CloseCode.Flooding || code === CloseCode.PolicyViolation) {
      // Coming straight back would be refused again: wait several seconds.
      this.attempt = Math.max(this.attempt, 4);
    }
    this.scheduleReconnect();
  }

  /** Stops reconnecting until the next `connect()`; rooms and queued messages are kept. */
  private becomeUnauthorized(reason: UnauthorizedReason, error?: unknown): void {
    this.generation++;
    this.clearTimer("reconnectTimer");
    this.clearTimer("refreshTimer");
    this.clearTimer("heartbeatTimer");
    this.token = undefined;
    this.setState("unauthorized");
    const waiters = this.openWaiters;
    this.openWaiters = [];
    const failure = new MixroomError("unauthorized", `signed out: ${reason}`);
    for (const waiter of waiters) waiter.reject(failure);
    this.emit("unauthorized", error === undefined ? { reason } : { reason, error });
  }

  private scheduleReconnect(): void {
    const delayMs = backoffDelay(this.attempt, this.backoff, this.options.random);
    this.attempt++;
    this.setState("reconnecting");
    this.emit("reconnecting", { attempt: this.attempt, delayMs });
    this.clearTimer("reconnectTimer");
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = undefined;
      void this.openSocket();
    }, delayMs);
  }

  private setState(state: ConnectionState): void {
    const previous = this.currentState;
    if (previous === state) return;
    this.currentState = state;
    this.emit("state", { state, previous });
  }

  private clearTimer(name: "reconnectTimer" | "refreshTimer" | "heartbeatTimer"): void {
    const timer = this[name];
    if (timer !== undefined) {
      clearTimeout(timer);
      clearInterval(timer);
      this[name] = undefined;
    }
  }

  private write(frame: ClientFrame): boolean {
    if (!this.socket) return false;
    try {
      this.socket.send(JSON.stringify(frame));
      return true;
    } catch {
      // The socket is closing; its close event reconnects and resends.
      return false;
    }
  }

  private nextRef(kind: string): string {
    this.refCounter += 1;
    return `${kind}:${this.refCounter}`;
  }

  // -------------------------------------------------------------------------
  // Incoming frames
  // -------------------------------------------------------------------------

  private onData(data: unknown): void {
    this.lastHeardAt = Date.now();
    let parsed: unknown;
    try {
      parsed = JSON.parse(typeof data === "string" ? data : String(data));
    } catch {
      return; // The server only sends JSON; ignore anything else.
    }
    if (typeof parsed !== "object" || parsed === null || !("type" in parsed)) return;
    const frame = parsed as ServerFrame;
    this.emit("frame", frame);
    switch (frame.type) {
      case "welcome":
        return this.onWelcome(frame);
      case "joined":
        return this.onJoined(frame);
      case "message":
      case "message.edited":
      case "message.deleted":
      case "message.reacted":
        return this.onEntry(frame);
      case "ack":
        return this.onAck(frame);
      case "history":
        return this.onHistory(frame);
      case "error":
        return this.onError(frame);
      case "token_refreshed":
        return this.onTokenRefreshed(frame);
      case "left":
        return this.onLeft(frame);
      case "pong":
        this.settleRequest(frame);
        return this.emit("pong", frame);
      case "unread":
        this.latestUnread = frame;
        return this.emit("unread", frame);
      case "message.delta":
        return this.emit("message.delta", frame);
      case "message.aborted":
        return this.emit("message.aborted", frame);
      case "typing":
        return this.emit("typing", frame);
      case "read":
        return this.emit("read", frame);
      case "presence": {
        const member = this.rooms.get(frame.room)?.members.get(frame.user_id);
        if (member) member.online = frame.online;
        return this.emit("presence", frame);
      }
      case "booking.updated":
        return this.emit("booking.updated", frame);
      case "notification":
        return this.emit("notification", frame);
      default:
        // A frame type added after this client was written: only `frame`.
        return;
    }
  }

  private onWelcome(frame: WelcomeFrame): void {
    this.attempt = 0;
    this.welcomed = true;
    if (this.me !== undefined && this.me !== frame.user_id) {
      // Signed in as someone else: what the previous user queued is not
      // theirs to send.
      this.dropAllOutgoing(new MixroomError("unauthorized", "signed in as another user"));
    }
    this.me = frame.user_id;
    const serverTime = Date.parse(frame.server_time);
    if (Number.isFinite(serverTime)) this.clockSkewMs = serverTime - Date.now();
    this.setState("open");
    this.emit("welcome", frame);
    this.startHeartbeat(frame.heartbeat_ms);
    this.scheduleRefresh();
    for (const room of this.rooms.values()) this.sendJoin(room);
    this.pumpOutbox();
    const waiters = this.openWaiters;
    this.openWaiters = [];
    for (const waiter of waiters) waiter.resolve();
  }

  private onJoined(frame: JoinedFrame): void {
    const room = this.rooms.get(frame.room);
    // A long replay comes in pages; newer messages wait in `ahead`.
    const page = room !== undefined && frame.ref !== undefined && frame.ref === room.pageRef;
    if (room) {
      room.pageRef = undefined;
      room.pageUntil = frame.has_more ? frame.replay_until : undefined;
    }
    if (page) return;
    if (room) {
      room.joinRef = undefined;
      room.joinedOnSocket = true;
      room.lastJoined = frame;
      room.members = new Map(frame.members.map((member) => [member.user_id, { ...member }]));
      if (room.lastSeq === undefined) {
        // First join without `since`: live messages from here on.
        room.lastSeq = frame.last_seq;
      } else if (frame.last_seq < room.lastSeq) {
        const previousLastSeq = room.lastSeq;
        room.lastSeq = frame.last_seq;
        this.emit("room.reset", { room: room.name, lastSeq: frame.last_seq, previousLastSeq });
      }
    }
    this.emit("joined", frame);
    if (!room) return;
    const waiters = room.waiters;
    room.waiters = [];
    for (const waiter of waiters) waiter.resolve(frame);
    if (room.readWanted > room.readSent) this.sendRead(room);
  }

  private onLeft(frame: LeftFrame): void {
    if (frame.ref === undefined) {
      // The server removed us (no longer a participant): do not re-join.
      const room = this.rooms.get(frame.room);
      if (room) {
        this.rooms.delete(frame.room);
        const error = new MixroomError("forbidden", `removed from ${frame.room}`);
        for (const waiter of room.waiters) waiter.reject(error);
        this.emit("left", frame);
        this.emit("room.failed", { room: frame.room, error });
        return;
      }
    }
    this.emit("left", frame);
  }

  /** A message or a change to one: each takes a seq of the room's sequence. */
  private onEntry(frame: RoomEntryFrame): void {
    const room = this.rooms.get(frame.room);
    // Not joined (any more), or a straggler of an old join: the re-join's
    // replay brings whatever matters.
    if (!room || !room.joinedOnSocket) return;
    if (room.lastSeq === undefined) room.lastSeq = frame.seq - 1;
    this.accept(room, frame);
  }

  /** Delivers `frame` in seq order: duplicates dropped, early ones held back. */
  private accept(room: RoomState, frame: RoomEntryFrame): void {
    const last = room.lastSeq ?? 0;
    if (frame.seq <= last) return;
    if (frame.seq > last + 1) {
      room.ahead.set(frame.seq, frame);
      this.fillGap(room);
      return;
    }
    this.deliver(room, frame);
    this.drainAhead(room);
  }

  private deliver(room: RoomState, frame: RoomEntryFrame): void {
    room.lastSeq = frame.seq;
    switch (frame.type) {
      case "message":
        this.emit("message", frame);
        break;
      case "message.edited":
        this.emit("message.edited", frame);
        break;
      case "message.deleted":
        this.emit("message.deleted", frame);
        break;
      case "message.reacted":
        this.emit("message.reacted", frame);
        break;
    }
    if (room.pageUntil !== undefined && frame.seq >= room.pageUntil) this.nextPage(room);
  }

  /** Asks for the next page of a replay (a `join` with `since` again). */
  private nextPage(room: RoomState): void {
    room.pageUntil = undefined;
    if (this.currentState !== "open") return;
    room.pageRef = this.nextRef("page");
    this.write({ type: "join", room: room.name, since: room.lastSeq ?? 0, ref: room.pageRef });
  }

  private drainAhead(room: RoomState): void {
    for (;;) {
      const next = room.ahead.get((room.lastSeq ?? 0) + 1);
      if (!next) break;
      room.ahead.delete(next.seq);
      this.deliver(room, next);
    }
    for (const seq of room.ahead.keys()) {
      if (seq <= (room.lastSeq ?? 0)) room.ahead.delete(seq);
    }
    if (room.ahead.size > 0) this.fillGap(room);
  }

  /**
   * Asks for the messages of a hole. The server promises gap-free, ordered
   * delivery per socket, so this is a safety net, not the normal path.
   */
  private fillGap(room: RoomState): void {
    if (room.gapRef || this.currentState !== "open" || room.ahead.size === 0) return;
    // A paged replay in progress brings the hole itself.
    if (room.pageUntil !== undefined || room.pageRef !== undefined) return;
    const firstAhead = Math.min(...room.ahead.keys());
    const missing = firstAhead - (room.lastSeq ?? 0) - 1;
    if (missing <= 0) return this.drainAhead(room);
    room.gapRef = this.nextRef("gap");
    this.write({
      type: "history",
      room: room.name,
      before: firstAhead,
      limit: Math.min(HISTORY_MAX, missing),
      ref: room.gapRef,
    });
  }

  private onHistory(frame: HistoryFrame): void {
    const room = this.rooms.get(frame.room);
    if (room && frame.ref !== undefined && frame.ref === room.gapRef) {
      room.gapRef = undefined;
      const last = room.lastSeq ?? 0;
      let filled = false;
      const entries: RoomEntryFrame[] = [
        ...frame.messages.map((message): MessageFrame => ({ ...message, type: "message" })),
        ...(frame.changes ?? []),
      ];
      for (const entry of entries) {
        if (entry.seq > last && !room.ahead.has(entry.seq)) {
          room.ahead.set(entry.seq, entry);
          filled = true;
        }
      }
      if (!filled && room.ahead.size > 0) {
        // The store has nothing for the hole: skip it rather than stall.
        room.lastSeq = Math.min(...room.ahead.keys()) - 1;
      }
      this.drainAhead(room);
      return;
    }
    this.settleRequest(frame);
    this.emit("history", frame);
  }

  private onAck(frame: AckFrame): void {
    const message = this.findOutgoing(frame.ref, frame.client_id);
    if (message) {
      this.removeOutgoing(message);
      clearOutgoingTimers(message);
      message.resolve(frame);
    }
    this.emit("ack", frame);
    if (message) {
      this.emit("outbox", { room: message.room });
      this.pumpRoom(message.room);
    }
  }

  /**
   * The unacked entry an `ack`/`error` is about: by its `ref`, else by the
   * ack's `client_id` (a send's or a change's). An ack whose `client_id`
   * is not the one its `ref` names is not that entry's.
   */
  private findOutgoing(ref: string | undefined, clientId?: string): Outgoing | undefined {
    for (const queue of this.queues.values()) {
      for (const message of queue) {
        if (
          ref !== undefined
            ? ref === message.ref && (clientId === undefined || clientId === message.clientId)
            : clientId !== undefined && clientId === message.clientId
        ) {
          return message;
        }
      }
    }
    if (ref !== undefined && clientId !== undefined) return this.findOutgoing(undefined, clientId);
    return undefined;
  }

  private removeOutgoing(message: Outgoing): void {
    const queue = this.queues.get(message.room);
    if (!queue) return;
    const index = queue.indexOf(message);
    if (index >= 0) queue.splice(index, 1);
    if (queue.length === 0) this.queues.delete(message.room);
  }

  private dropAllOutgoing(error: MixroomError): void {
    const rooms = [...this.queues.keys()];
    const messages = [...this.queues.values()].flat();
    this.queues.clear();
    for (const message of messages) {
      clearOutgoingTimers(message);
      message.reject(error);
    }
    for (const room of rooms) this.emit("outbox", { room });
  }

  private onError(frame: ErrorFrame): void {
    this.emit("error", frame);
    const ref = frame.ref;
    if (ref === undefined) return;
    const outgoing = this.findOutgoing(ref);
    if (outgoing) return this.onOutgoingError(outgoing, frame);
    const paging = [...this.rooms.values()].find((room) => room.pageRef === ref);
    if (paging) {
      // The next page was refused (e.g. rate_limited): ask again later.
      paging.pageRef = undefined;
      const generation = this.generation;
      setTimeout(() => {
        if (generation === this.generation && this.rooms.get(paging.name) === paging) {
          this.nextPage(paging);
        }
      }, frame.retry_after_ms ?? 1000);
      return;
    }
    if (this.requests.has(ref)) {
      const request = this.requests.get(ref);
      this.requests.delete(ref);
      if (request) {
        clearTimeout(request.timer);
        request.reject(MixroomError.fromFrame(frame));
      }
      return;
    }
    if (this.refreshingToken?.ref === ref) {
      // The fresh token was refused; the current one stays valid until
      // `exp`. Try again shortly; at `exp` the server closes with 4001 and
      // the reconnect asks `getToken()` again.
      this.refreshingToken = undefined;
      if (frame.code === "unauthorized") this.refreshRefused = true;
      this.scheduleRefresh(5_000);
      return;
    }
    for (const room of this.rooms.values()) {
      if (room.joinRef === ref) return this.onJoinError(room, frame);
      if (room.gapRef === ref) {
        room.gapRef = undefined;
        return;
      }
    }
  }

  private onOutgoingError(message: Outgoing, frame: ErrorFrame): void {
    clearOutgoingTimers(message);
    message.sentOn = undefined;
    if (RETRYABLE_CODES.has(frame.code)) {
      // Same client_id (same ref) later: a message or change is stored at
      // most once whatever happened. Only this room waits; the other
      // rooms' queues go on.
      message.retryTimer = setTimeout(() => {
        message.retryTimer = undefined;
        this.pumpRoom(message.room);
      }, frame.retry_after_ms ?? 1000);
      this.emit("outbox", { room: message.room });
      return;
    }
    this.removeOutgoing(message);
    this.failOutgoing(message, MixroomError.fromFrame(frame));
    this.emit("outbox", { room: message.room });
    this.pumpRoom(message.room);
  }

  /** Rejects an entry taken off its queue, with its `send.failed` or `change.failed` event. */
  private failOutgoing(message: Outgoing, error: MixroomError): void {
    message.reject(error);
    const frame = message.frame;
    if (frame.type === "send") {
      this.emit("send.failed", {
        room: message.room,
        clientId: frame.client_id,
        body: frame.body,
        ...(frame.reply_to !== undefined ? { replyTo: frame.reply_to } : {}),
        ...(frame.attachments !== undefined ? { attachments: frame.attachments } : {}),
        error,
      });
    } else {
      this.emit("change.failed", { room: message.room, change: this.pendingChange(message), error });
    }
  }

  private onJoinError(room: RoomState, frame: ErrorFrame): void {
    room.joinRef = undefined;
    if (RETRYABLE_CODES.has(frame.code)) {
      const generation = this.generation;
      setTimeout(() => {
        if (generation === this.generation && this.rooms.get(room.name) === room) {
          this.sendJoin(room);
        }
      }, frame.retry_after_ms ?? 1000);
      return;
    }
    // Not allowed or no such room: forget it so reconnects do not retry.
    this.rooms.delete(room.name);
    const error = MixroomError.fromFrame(frame);
    for (const waiter of room.waiters) waiter.reject(error);
    this.emit("room.failed", { room: room.name, error });
  }

  private onTokenRefreshed(frame: TokenRefreshedFrame): void {
    if (this.refreshingToken && (frame.ref == null || frame.ref === this.refreshingToken.ref)) {
      this.token = this.refreshingToken.token;
      this.refreshingToken = undefined;
      this.refreshRefused = false;
    }
    this.emit("token_refreshed", frame);
    this.scheduleRefresh();
  }

  private settleRequest(frame: ServerFrame & { ref?: string | null }): void {
    if (frame.ref == null) return;
    const request = this.requests.get(frame.ref);
    if (!request || request.expect !== frame.type) return;
    this.requests.delete(frame.ref);
    clearTimeout(request.timer);
    request.resolve(frame);
  }

  // -------------------------------------------------------------------------
  // Heartbeat and token refresh
  // -------------------------------------------------------------------------

  /**
   * Browsers do not expose the server's WebSocket pings, so the client
   * pings when it has heard nothing for a heartbeat, and gives the socket
   * up when it has heard nothing for 2.5 heartbeats (a half-open TCP
   * connection would otherwise look alive for minutes).
   */
  private startHeartbeat(heartbeatMs: number): void {
    this.clearTimer("heartbeatTimer");
    const interval = Math.max(1000, heartbeatMs);
    this.heartbeatTimer = setInterval(() => {
      const silentFor = Date.now() - this.lastHeardAt;
      if (silentFor > interval * 2.5) {
        this.dropSocket(CLOSE_HEARTBEAT_TIMEOUT, "heartbeat timeout");
      } else if (silentFor >= interval) {
        this.write({ type: "ping" });
      }
    }, interval);
  }

  /** Schedules `getToken()` + `auth` ahead of the current token's expiry. */
  private scheduleRefresh(retryInMs?: number): void {
    this.clearTimer("refreshTimer");
    const expiresAt = this.token === undefined ? undefined : tokenExpiresAt(this.token);
    if (expiresAt === undefined) return;
    const remaining = expiresAt - (Date.now() + this.clockSkewMs);
    // Already expired: the server closes with 4001 and the reconnect gets a
    // fresh token; refreshing now would only spin.
    if (remaining <= 0) return;
    const margin = Math.min(this.options.refreshMarginMs, remaining / 2);
    const delay =
      retryInMs !== undefined
        ? Math.min(retryInMs, remaining / 2)
        : Math.max(MIN_REFRESH_DELAY_MS, remaining - margin);
    const generation = this.generation;
    this.refreshTimer = setTimeout(() => {
      this.refreshTimer = undefined;
      void this.refreshToken(generation);
    }, delay);
  }

  private async refreshToken(generation: number): Promise<void> {
    let token: string | null | undefined;
    try {
      token = await this.options.getToken();
    } catch (error) {
      if (generation !== this.generation) return;
      this.emit("token_error", { error });
      this.scheduleRefresh(5_000);
      return;
    }
    if (generation !== this.generation || this.currentState !== "open") return;
    if (typeof token !== "string" || token === "") {
      // Signed out while connected: the socket lives until `exp`; the
      // reconnect after its 4001 asks getToken() again and stops then.
      this.scheduleRefresh(5_000);
      return;
    }
    const ref = this.nextRef("auth");
    this.refreshingToken = { ref, token };
    this.write({ type: "auth", token, ref });
  }

  // -------------------------------------------------------------------------
  // Rooms
  // -------------------------------------------------------------------------

  /**
   * Joins `room` now and after every reconnect (resuming with `since`).
   * Resolves with the first `joined`; rejects if the server refuses.
   */
  join(roomName: string, options: JoinOptions = {}): Promise<JoinedFrame> {
    const room = this.ensureRoom(roomName, options.since);
    room.explicit = true;
    if (room.joinedOnSocket && room.lastJoined) return Promise.resolve(room.lastJoined);
    const joined = new Promise<JoinedFrame>((resolve, reject) => {
      room.waiters.push({ resolve, reject });
    });
    if (this.currentState === "open") this.sendJoin(room);
    return joined;
  }

  /**
   * A live view of one room: its messages (the latest page loaded on join,
   * older pages on demand), pending sends, members, typing, read cursors and
   * unread count, as immutable snapshots. The room stays joined while a view
   * (or a `join()`) holds it; `view.close()` lets go. See `RoomView`.
   */
  room(roomName: string, options: RoomViewOptions = {}): RoomView {
    return new RoomView(this, roomName, this.roomLink(roomName), options);
  }

  private roomLink(roomName: string): RoomLink {
    let held = false;
    return {
      hold: () => {
        if (held) return;
        held = true;
        const room = this.ensureRoom(roomName, undefined);
        room.views += 1;
        if (this.currentState === "open") this.sendJoin(room);
      },
      release: () => {
        if (!held) return;
        held = false;
        const room = this.rooms.get(roomName);
        if (!room) return;
        room.views = Math.max(0, room.views - 1);
        if (room.views === 0 && !room.explicit) this.dropRoom(room);
      },
      joined: () => {
        const room = this.rooms.get(roomName);
        return room?.joinedOnSocket ? room.lastJoined : undefined;
      },
      members: () => [...(this.rooms.get(roomName)?.members.values() ?? [])].map((m) => ({ ...m })),
    };
  }

  private ensureRoom(roomName: string, since: number | undefined): RoomState {
    let room = this.rooms.get(roomName);
    if (!room) {
      room = {
        name: roomName,
        lastSeq: since,
        joinedOnSocket: false,
        lastJoined: undefined,
        joinRef: undefined,
        ahead: new Map(),
        gapRef: undefined,
        pageUntil: undefined,
        pageRef: undefined,
        readWanted: 0,
        readSent: 0,
        lastTypingAt: 0,
        waiters: [],
        explicit: false,
        views: 0,
        members: new Map(),
      };
      this.rooms.set(roomName, room);
    }
    return room;
  }

  /**
   * Undoes `join()`: the room is left and no longer re-joined — unless an
   * open room view still holds it, in which case it is left when the last
   * view closes.
   */
  leave(roomName: string): void {
    const room = this.rooms.get(roomName);
    if (!room) return;
    room.explicit = false;
    const error = new MixroomError("closed", `left ${roomName}`);
    const waiters = room.waiters;
    room.waiters = [];
    for (const waiter of waiters) waiter.reject(error);
    if (room.views === 0) this.dropRoom(room);
  }

  private dropRoom(room: RoomState): void {
    if (this.rooms.get(room.name) !== room) return;
    this.rooms.delete(room.name);
    if (this.currentState === "open" && (room.joinedOnSocket || room.joinRef !== undefined)) {
      this.write({ type: "leave", room: room.name });
    }
  }

  /** The highest seq delivered for `room` (`undefined` before its first `joined`). */
  lastSeq(roomName: string): number | undefined {
    return this.rooms.get(roomName)?.lastSeq;
  }

  /** The rooms this client keeps joined. */
  joinedRooms(): string[] {
    return [...this.rooms.keys()];
  }

  private sendJoin(room: RoomState): void {
    if (room.joinRef !== undefined || room.joinedOnSocket) return;
    room.joinRef = this.nextRef("join");
    const frame: JoinFrame = { type: "join", room: room.name, ref: room.joinRef };
    if (room.lastSeq !== undefined) frame.since = room.lastSeq;
    this.write(frame);
  }

  /** Tells the others in `room` that this user is typing (throttled). */
  typing(roomName: string): void {
    const room = this.rooms.get(roomName);
    if (!room || !room.joinedOnSocket || this.currentState !== "open") return;
    const now = Date.now();
    if (now - room.lastTypingAt < this.options.typingThrottleMs) return;
    room.lastTypingAt = now;
    this.write({ type: "typing", room: roomName });
  }

  /**
   * Marks `room` read up to `seq`. Sent now when joined, else after the
   * next `joined`; only ever moves forward.
   */
  markRead(roomName: string, seq: number): void {
    const room = this.rooms.get(roomName);
    if (!room || seq <= room.readWanted) return;
    room.readWanted = seq;
    if (room.joinedOnSocket && this.currentState === "open") this.sendRead(room);
  }

  private sendRead(room: RoomState): void {
    if (this.write({ type: "read", room: room.name, seq: room.readWanted })) {
      room.readSent = room.readWanted;
    }
  }

  /** Older messages: up to `limit` (≤ 100) with seq < `before`, newest first. */
  history(roomName: string, options: { before?: number; limit?: number } = {}): Promise<HistoryFrame> {
    return this.request<HistoryFrame>("history", (ref) => ({
      type: "history",
      room: roomName,
      ref,
      ...(options.before !== undefined ? { before: options.before } : {}),
      ...(options.limit !== undefined ? { limit: options.limit } : {}),
    }));
  }

  /** A round trip to the server. */
  ping(): Promise<PongFrame> {
    return this.request<PongFrame>("pong", (ref) => ({ type: "ping", ref }));
  }

  private async request<T extends ServerFrame>(
    expect: T["type"],
    build: (ref: string) => ClientFrame,
  ): Promise<T> {
    if (this.currentState !== "open") await this.whenOpen(); // written at once when open
    const ref = this.nextRef("req");
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.requests.delete(ref);
        reject(new MixroomError("timeout", `no ${expect} reply within ${this.options.requestTimeoutMs} ms`));
      }, this.options.requestTimeoutMs);
      this.requests.set(ref, {
        expect,
        resolve: (frame) => resolve(frame as T),
        reject,
        timer,
      });
      this.write(build(ref));
    });
  }

  // -------------------------------------------------------------------------
  // Sending
  // -------------------------------------------------------------------------

  /**
   * Queues a message and resolves with its ack once stored. Survives
   * reconnects: the same `client_id` is resent until acked, and the server
   * stores it once. Each room has its own queue: its messages go out one at
   * a time, in the order queued, while other rooms' queues go on
   * regardless. Rejects only when the server refuses it for good
   * (`invalid`, `forbidden`, `too_large`, `not_found` for a `replyTo` that
   * is not there, ...). `replyTo` answers a message of the room by its seq;
   * `attachments` share files by reference.
   */
  send(roomName: string, body: string, options: SendOptions = {}): Promise<SendAck> {
    const frame: SendFrame = { type: "send", room: roomName, client_id: options.clientId ?? newClientId(), body };
    if (options.replyTo !== undefined) frame.reply_to = options.replyTo;
    if (options.attachments !== undefined) frame.attachments = options.attachments.map((a) => ({ ...a }));
    return this.enqueue(frame) as Promise<SendAck>;
  }

  /**
   * New text for the user's own message `seq` (within the server's edit
   * window, 15 minutes by default). Resolves with the ack (its `seq` is the
   * edit's own place in the room's sequence); everyone in the room gets
   * `message.edited`. Rejects with the server's refusal: `forbidden` (not
   * the author, or past the window), `not_found` (no such message, or
   * deleted), `invalid`, `too_large`.
   *
   * Changes across reconnects: edits, deletions and reactions wait in the
   * room's queue with its messages, so they go out in the order made and a
   * change made offline is sent once connected. Each gets a fresh
   * `client_id` once (`pendingChanges()` shows it) and is resent with it
   * until acked, like a send: after a reconnect, after
   * `rate_limited`/`internal`, and when no ack comes within `ackTimeoutMs`.
   * The server answers a resend with the first ack and stores nothing, so
   * a change is stored exactly once — a deletion too, whose resend is not
   * answered `not_found` even though the message is deleted by then.
   */
  edit(roomName: string, seq: number, body: string): Promise<AckFrame> {
    return this.enqueue({ type: "edit", room: roomName, seq, body, client_id: newClientId() });
  }

  /**
   * Deletes message `seq` (the user's own; any, for an admin): it stays as
   * a tombstone. Resolves with the ack; everyone gets `message.deleted`.
   * Rejects with `forbidden` or `not_found` (no such message, or deleted
   * already — by someone else, or by an earlier `deleteMessage()`). Queued
   * and resent like `edit()`: a deletion whose answer a dropped connection
   * lost is sent again with its `client_id`, and the server answers with
   * its first ack.
   */
  deleteMessage(roomName: string, seq: number): Promise<AckFrame> {
    return this.enqueue({ type: "delete", room: roomName, seq, client_id: newClientId() });
  }

  /**
   * Puts `emoji` (one emoji) on message `seq`, or with `on = false` takes
   * the user's own back. Resolves with the ack; everyone gets
   * `message.reacted` with the message's reactions after it. Putting the
   * same emoji on twice counts once. Rejects with `invalid` (not one emoji,
   * or too many on the message), `not_found`, `forbidden`. Queued and
   * resent like `edit()`.
   */
  react(roomName: string, seq: number, emoji: string, on = true): Promise<AckFrame> {
    return this.enqueue({ type: "react", room: roomName, seq, emoji, on, client_id: newClientId() });
  }

  /** Queues a send or a change; `frame.client_id` is set (a change's too). */
  private enqueue(frame: Outgoing["frame"] & { client_id: string }): Promise<AckFrame> {
    const roomName = frame.room;
    const clientId = frame.client_id;
    return new Promise<AckFrame>((resolve, reject) => {
      let queue = this.queues.get(roomName);
      if (!queue) {
        queue = [];
        this.queues.set(roomName, queue);
      }
      queue.push({
        room: roomName,
        frame,
        clientId,
        ref: outgoingRef(frame.type, clientId),
        order: ++this.outgoingCounter,
        resolve,
        reject,
        sentOn: undefined,
        ackTimer: undefined,
        retryTimer: undefined,
      });
      this.emit("outbox", { room: roomName });
      this.pumpRoom(roomName);
    });
  }

  /** Messages queued or sent but not acked yet (of one room, or all), oldest first. */
  pendingMessages(roomName?: string): PendingMessage[] {
    const pending: PendingMessage[] = [];
    for (const message of this.outgoing(roomName)) {
      const frame = message.frame;
      if (frame.type !== "send") continue;
      pending.push({
        room: message.room,
        clientId: frame.client_id,
        body: frame.body,
        ...(frame.reply_to !== undefined ? { replyTo: frame.reply_to } : {}),
        ...(frame.attachments !== undefined ? { attachments: frame.attachments.map((a) => ({ ...a })) } : {}),
        state: this.outgoingState(message),
      });
    }
    return pending;
  }

  /** Edits, deletions and reactions queued or sent but not acked yet (of one room, or all), oldest first. */
  pendingChanges(roomName?: string): PendingChange[] {
    return this.outgoing(roomName)
      .filter((message) => message.frame.type !== "send")
      .map((message) => this.pendingChange(message));
  }

  private outgoing(roomName: string | undefined): Outgoing[] {
    return roomName === undefined
      ? [...this.queues.values()].flat().sort((a, b) => a.order - b.order)
      : [...(this.queues.get(roomName) ?? [])];
  }

  private pendingChange(message: Outgoing): PendingChange {
    const frame = message.frame;
    const base = { room: message.room, clientId: message.clientId, ref: message.ref, state: this.outgoingState(message) };
    switch (frame.type) {
      case "edit":
        return { ...base, kind: "edit", seq: frame.seq, body: frame.body };
      case "react":
        return { ...base, kind: "react", seq: frame.seq, emoji: frame.emoji, on: frame.on };
      case "delete":
        return { ...base, kind: "delete", seq: frame.seq };
      default:
        throw new Error("a send is not a change");
    }
  }

  private outgoingState(message: Outgoing): OutgoingState {
    if (message.retryTimer !== undefined) return "retrying";
    if (message.sentOn !== undefined && message.sentOn === this.generation) return "sending";
    return "queued";
  }

  private pumpOutbox(): void {
    for (const room of [...this.queues.keys()]) this.pumpRoom(room);
  }

  /**
   * Sends the room's oldest unacked entry unless it is already in flight
   * on this socket or waiting out a retry delay. One at a time per room
   * keeps a user's messages and changes in the order made, even when one
   * of them has to wait out `rate_limited`; other rooms are not held up by
   * it.
   */
  private pumpRoom(roomName: string): void {
    if (this.currentState !== "open") return;
    const message = this.queues.get(roomName)?.[0];
    if (!message || message.sentOn === this.generation || message.retryTimer) return;
    message.sentOn = this.generation;
    this.write({ ...message.frame, ref: message.ref });
    const generation = this.generation;
    message.ackTimer = setTimeout(() => {
      message.ackTimer = undefined;
      // No ack on a socket that still looks alive: send the same client_id
      // again (a message or a change alike); the server answers with the
      // first ack if it stored it, and stores it once either way.
      if (generation === this.generation && message.sentOn === generation) {
        message.sentOn = undefined;
        this.pumpRoom(message.room);
      }
    }, this.options.ackTimeoutMs);
    this.emit("outbox", { room: message.room });
  }

  // -------------------------------------------------------------------------
  // HTTP helpers (same token)
  // -------------------------------------------------------------------------

  /** `POST /v1/support/conversations`; then `join(conversation.room)`. */
  openSupportConversation(): Promise<SupportConversation> {
    return this.http<{ id: string; room?: string; status?: string }>(
      "POST",
      "/v1/support/conversations",
    ).then((body) => ({ ...body, room: body.room ?? `support:${body.id}` }));
  }

  /**
   * `GET /v1/notifications`, newest first. For the next page pass the last
   * notification's `id` as `before` while `has_more` is true.
   */
  notifications(options: NotificationQuery = {}): Promise<NotificationList> {
    const query = new URLSearchParams();
    if (options.unread) query.set("unread", "true");
    if (options.before !== undefined) query.set("before", options.before);
    if (options.limit !== undefined) query.set("limit", String(options.limit));
    return this.http<NotificationList>("GET", `/v1/notifications${querySuffix(query)}`);
  }

  /** `GET /v1/me/preferences`: email and push on/off per kind, and the chat email delay. */
  preferences(): Promise<Preferences> {
    return this.http<Preferences>("GET", "/v1/me/preferences");
  }

  /**
   * `PUT /v1/me/preferences`: changes only what `change` names (e.g.
   * `{ email: { marketing: true } }`, `{ push: { chat: false } }`); resolves
   * with the stored preferences.
   * An unknown kind or a delay out of range rejects (HTTP 422).
   */
  updatePreferences(change: PreferencesUpdate): Promise<Preferences> {
    return this.http<Preferences>("PUT", "/v1/me/preferences", change);
  }

  markNotificationRead(id: string): Promise<NotificationItem> {
    return this.http<NotificationItem>("POST", `/v1/notifications/${encodeURIComponent(id)}/read`);
  }

  markAllNotificationsRead(): Promise<{ marked: number }> {
    return this.http<{ marked: number }>("POST", "/v1/notifications/read-all");
  }

  /** `GET /v1/me/unread`: the same counts as the `unread` frame. */
  unreadCounts(): Promise<UnreadCounts> {
    return this.http<UnreadCounts>("GET", "/v1/me/unread");
  }

  /** Older messages over HTTP (no socket needed). */
  messages(
    roomName: string,
    options: { before?: number; limit?: number } = {},
  ): Promise<{ messages: ChatMessage[]; changes?: MessageChangeFrame[]; has_more: boolean }> {
    const query = new URLSearchParams();
    if (options.before !== undefined) query.set("before", String(options.before));
    if (options.limit !== undefined) query.set("limit", String(options.limit));
    return this.http("GET", `/v1/rooms/${encodeURIComponent(roomName)}/messages${querySuffix(query)}`);
  }

  // -------------------------------------------------------------------------
  // Web Push (see push.ts for `subscribeToPush()`, which uses these)
  // -------------------------------------------------------------------------

  /**
   * `GET /v1/push/vapid-public-key`: the server's VAPID public key (base64url,
   * an uncompressed P-256 point). Rejects with `push_disabled` when the
   * server has push turned off.
   */
  async pushPublicKey(): Promise<string> {
    try {
      const body = await this.http<{ public_key?: unknown }>("GET", "/v1/push/vapid-public-key");
      if (typeof body.public_key !== "string" || body.public_key === "") {
        throw new MixroomError("invalid", "the server sent no VAPID public key");
      }
      return body.public_key;
    } catch (error) {
      throw pushError(error);
    }
  }

  /**
   * `POST /v1/me/push-subscriptions`: stores a browser's subscription for
   * the signed-in user. `created` is false when the server had it already
   * (200 rather than 201). Rejects with `too_many` (409) when the user has
   * as many as the server allows, `push_disabled` when push is off.
   */
  async addPushSubscription(subscription: PushSubscriptionBody): Promise<{ created: boolean }> {
    try {
      const { status } = await this.httpRequest("POST", "/v1/me/push-subscriptions", subscription);
      return { created: status === 201 };
    } catch (error) {
      throw pushError(error);
    }
  }

  /**
   * `DELETE /v1/me/push-subscriptions?endpoint=…`: forgets a subscription.
   * Resolves true when it was removed, false when the server did not have
   * it (404): either way the server will not push to it.
   */
  async removePushSubscription(endpoint: string): Promise<boolean> {
    try {
      await this.httpRequest("DELETE", `/v1/me/push-subscriptions?endpoint=${encodeURIComponent(endpoint)}`);
      return true;
    } catch (error) {
      if (error instanceof MixroomError && error.code === "http" && error.status === 404) return false;
      throw pushError(error);
    }
  }

  private async http<T>(method: string, path: string, body?: unknown): Promise<T> {
    const { text } = await this.httpRequest(method, path, body);
    return JSON.parse(text) as T;
  }

  /** One authenticated request; rejects with a `MixroomError` (`http`) for any status but 2xx. */
  private async httpRequest(method: string, path: string, body?: unknown): Promise<{ status: number; text: string }> {
    const fetchImpl = this.fetchOption ?? (globalThis as { fetch?: typeof fetch }).fetch;
    if (!fetchImpl) throw new Error("no fetch implementation: pass `fetch`");
    const token = await this.usableToken();
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), this.options.requestTimeoutMs);
    const headers: Record<string, string> = { authorization: `Bearer ${token}` };
    if (body !== undefined) headers["content-type"] = "application/json";
    try {
      // Called unbound: a browser's fetch refuses `this` other than window.
      const response = await fetchImpl.call(globalThis, `${this.httpUrl}${path}`, {
        method,
        headers,
        signal: controller.signal,
        ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
      });
      const text = await response.text();
      if (!response.ok) {
        const serverCode = errorCodeOf(text);
        throw new MixroomError("http", `${method} ${path}: ${response.status} ${text}`, {
          status: response.status,
          ...(serverCode !== undefined ? { serverCode } : {}),
        });
      }
      return { status: response.status, text };
    } finally {
      clearTimeout(timer);
    }
  }

  /** The socket's token while it has some life left, else a fresh one. */
  private async usableToken(): Promise<string> {
    const expiresAt = this.token === undefined ? undefined : tokenExpiresAt(this.token);
    if (this.token !== undefined && (expiresAt === undefined || expiresAt - Date.now() > 5_000)) {
      return this.token;
    }
    const token = await this.options.getToken();
    if (typeof token !== "string" || token === "") {
      throw new MixroomError("unauthorized", "signed out: getToken() returned no token");
    }
    return token;
  }
}

/** The `code` of the server's error body `{"error":{"code","message"}}`, if the text is one. */
function errorCodeOf(text: string): string | undefined {
  try {
    const parsed: unknown = JSON.parse(text);
    const error = typeof parsed === "object" && parsed !== null ? (parsed as { error?: unknown }).error : undefined;
    const code = typeof error === "object" && error !== null ? (error as { code?: unknown }).code : undefined;
    return typeof code === "string" ? code : undefined;
  } catch {
    return undefined;
  }
}

/**
 * The push routes' refusals as codes an app can tell apart: push turned
 * off on the server (503 `push_disabled`), and too many subscriptions
 * (409). Any other error is passed on as it is (a 503 `internal` is an
 * outage, not push being off).
 */
function pushError(error: unknown): unknown {
  if (!(error instanceof MixroomError) || error.code !== "http") return error;
  const options = {
    ...(error.status !== undefined ? { status: error.status } : {}),
    ...(error.serverCode !== undefined ? { serverCode: error.serverCode } : {}),
  };
  if (error.serverCode === "push_disabled") {
    return new MixroomError("push_disabled", "the server has Web Push turned off", options);
  }
  if (error.status === 409 || error.serverCode === "too_many") {
    return new MixroomError("too_many", "too many push subscriptions for this user: remove one first", options);
  }
  return error;
}

function querySuffix(query: URLSearchParams): string {
  const text = query.toString();
  return text ? `?${text}` : "";
}

/** The `ref` of a queued frame: its type and `client_id`, the same on every resend. */
function outgoingRef(type: Outgoing["frame"]["type"], clientId: string): string {
  return `${type}:${clientId}`;
}

function clearOutgoingTimers(message: Outgoing): void {
  if (message.ackTimer) clearTimeout(message.ackTimer);
  if (message.retryTimer) clearTimeout(message.retryTimer);
  message.ackTimer = message.retryTimer = undefined;
}

/** `ws://h/v1/ws` → `http://h`; `wss://` → `https://`. */
export function httpUrlOf(wsUrl: string): string {
  const url = new URL(wsUrl);
  url.protocol = url.protocol === "wss:" ? "https:" : "http:";
  url.pathname = url.pathname.replace(/\/v1\/ws\/?$/, "");
  url.search = "";
  url.hash = "";
  return url.toString().replace(/\/$/, "");
}
