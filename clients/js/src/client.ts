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
 * - queues outgoing messages and resends each with the same `client_id`
 *   until the server acks it, so a message is stored exactly once however
 *   often the connection drops;
 * - emits a typed event for every frame of the contract.
 */
import { backoffDelay, DEFAULT_BACKOFF, type BackoffOptions } from "./backoff.js";
import { TypedEmitter } from "./emitter.js";
import { MixroomError } from "./errors.js";
import {
  CloseCode,
  type AckFrame,
  type BookingUpdatedFrame,
  type ChatMessage,
  type ClientFrame,
  type ErrorFrame,
  type HistoryFrame,
  type JoinedFrame,
  type JoinFrame,
  type LeftFrame,
  type MessageAbortedFrame,
  type MessageDeltaFrame,
  type MessageFrame,
  type NotificationFrame,
  type PongFrame,
  type PresenceFrame,
  type ReadFrame,
  type ServerFrame,
  type TokenRefreshedFrame,
  type TypingFrame,
  type UnknownFrame,
  type UnreadFrame,
  type WelcomeFrame,
} from "./frames.js";
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
  /** `close()` was called. */
  | "closed";

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
  /** `getToken()` threw; the client retries. */
  token_error: { error: unknown };
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
   */
  getToken: () => string | Promise<string>;
  /** Defaults to `globalThis.WebSocket` (browsers, Node ≥ 22); pass `ws` on Node 20. */
  WebSocket?: WebSocketConstructor;
  /** Reconnect delays; defaults: 500 ms doubling up to 30 s, 50 % jitter. */
  backoff?: Partial<BackoffOptions>;
  /** Refresh the token this long before it expires (at most half its remaining life). Default 60 s. */
  refreshMarginMs?: number;
  /** Resend an unacked message (same `client_id`) after this long. Default 10 s. */
  ackTimeoutMs?: number;
  /** How long `history()`, `ping()` and the HTTP helpers wait. Default 10 s. */
  requestTimeoutMs?: number;
  /** At most one `typing` frame per room this often. Default 2 s. */
  typingThrottleMs?: number;
  /** Base URL of the HTTP API; derived from `url` by default. */
  httpUrl?: string;
  /** Defaults to `globalThis.fetch`. */
  fetch?: typeof fetch;
  /** For tests: the jitter's random source. */
  random?: () => number;
}

export interface SendOptions {
  /** The idempotency key; a fresh UUID by default. Reuse it to retry a send yourself. */
  clientId?: string;
}

export interface JoinOptions {
  /** Also deliver the stored messages with a seq above this one (0: all of them). */
  since?: number;
}

/** A message waiting for its ack. */
export interface PendingMessage {
  room: string;
  clientId: string;
  body: string;
}

export interface NotificationItem {
  id: string;
  kind: string;
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
  /** Messages that arrived ahead of a hole, by seq. */
  ahead: Map<number, MessageFrame>;
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
}

interface Outgoing extends PendingMessage {
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
  private readonly WebSocketImpl: WebSocketConstructor;
  private readonly backoff: BackoffOptions;
  private readonly httpUrl: string;
  private readonly fetchImpl: typeof fetch | undefined;

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
  private me: string | undefined;
  /** Server clock minus local clock, from `welcome` (token expiry is server time). */
  private clockSkewMs = 0;
  private lastHeardAt = 0;
  private refCounter = 0;

  private reconnectTimer: ReturnType<typeof setTimeout> | undefined;
  private refreshTimer: ReturnType<typeof setTimeout> | undefined;
  private heartbeatTimer: ReturnType<typeof setInterval> | undefined;

  private readonly rooms = new Map<string, RoomState>();
  private readonly outbox: Outgoing[] = [];
  private readonly requests = new Map<string, PendingRequest>();
  private openWaiters: Array<() => void> = [];

  constructor(options: MixroomClientOptions) {
    super();
    const WebSocketImpl =
      options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (!WebSocketImpl) {
      throw new Error("no WebSocket implementation: pass `WebSocket` (e.g. from the `ws` package)");
    }
    this.WebSocketImpl = WebSocketImpl;
    this.backoff = { ...DEFAULT_BACKOFF, ...options.backoff };
    this.httpUrl = (options.httpUrl ?? httpUrlOf(options.url)).replace(/\/$/, "");
    this.fetchImpl = options.fetch ?? globalThis.fetch?.bind(globalThis);
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

  /** Opens the connection (and keeps it open until `close()`). */
  connect(): void {
    if (this.currentState !== "idle" && this.currentState !== "closed") return;
    this.closedByUser = false;
    void this.openSocket();
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

  /** Resolves once the connection is open (rejects after `timeoutMs`). */
  whenOpen(timeoutMs = this.options.requestTimeoutMs): Promise<void> {
    if (this.currentState === "open") return Promise.resolve();
    return new Promise((resolve, reject) => {
      const done = (): void => {
        clearTimeout(timer);
        resolve();
      };
      const timer = setTimeout(() => {
        this.openWaiters = this.openWaiters.filter((waiter) => waiter !== done);
        reject(new MixroomError("timeout", `not connected within ${timeoutMs} ms`));
      }, timeoutMs);
      this.openWaiters.push(done);
    });
  }

  private async openSocket(): Promise<void> {
    const generation = ++this.generation;
    this.setState("connecting");
    let token: string;
    try {
      token = await this.options.getToken();
    } catch (error) {
      if (generation !== this.generation) return;
      this.emit("token_error", { error });
      this.scheduleReconnect();
      return;
    }
    if (generation !== this.generation) return; // closed while waiting
    let socket: WebSocketLike;
    try {
      socket = new this.WebSocketImpl(this.options.url);
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
    for (const message of this.outbox) {
      message.sentOn = undefined;
      if (message.ackTimer) clearTimeout(message.ackTimer);
      message.ackTimer = undefined;
    }
    for (const [ref, request] of this.requests) {
      clearTimeout(request.timer);
      request.reject(new MixroomError("connection_lost", "the connection was lost"));
      this.requests.delete(ref);
    }
    const willReconnect = !this.closedByUser;
    this.emit("disconnected", { code, reason, willReconnect });
    if (!willReconnect) {
      this.setState("closed");
      return;
    }
    if (code === CloseCode.Flooding || code === CloseCode.PolicyViolation) {
      // Coming straight back would be refused again: wait several seconds.
      this.attempt = Math.max(this.attempt, 4);
    }
    this.scheduleReconnect();
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
        return this.onMessage(frame);
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
        return this.emit("unread", frame);
      case "message.delta":
        return this.emit("message.delta", frame);
      case "message.aborted":
        return this.emit("message.aborted", frame);
      case "typing":
        return this.emit("typing", frame);
      case "read":
        return this.emit("read", frame);
      case "presence":
        return this.emit("presence", frame);
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
    for (const waiter of waiters) waiter();
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
      }
    }
    this.emit("left", frame);
  }

  private onMessage(frame: MessageFrame): void {
    const room = this.rooms.get(frame.room);
    // Not joined (any more), or a straggler of an old join: the re-join's
    // replay brings whatever matters.
    if (!room || !room.joinedOnSocket) return;
    if (room.lastSeq === undefined) room.lastSeq = frame.seq - 1;
    this.accept(room, frame);
  }

  /** Delivers `frame` in seq order: duplicates dropped, early ones held back. */
  private accept(room: RoomState, frame: MessageFrame): void {
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

  private deliver(room: RoomState, frame: MessageFrame): void {
    room.lastSeq = frame.seq;
    this.emit("message", frame);
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
      for (const message of frame.messages) {
        if (message.seq > last && !room.ahead.has(message.seq)) {
          room.ahead.set(message.seq, { ...message, type: "message" });
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
    const index = this.outbox.findIndex((message) => message.clientId === frame.client_id);
    if (index >= 0) {
      const [message] = this.outbox.splice(index, 1);
      if (message) {
        clearOutgoingTimers(message);
        message.resolve(frame);
      }
    }
    this.emit("ack", frame);
    this.pumpOutbox();
  }

  private onError(frame: ErrorFrame): void {
    this.emit("error", frame);
    const ref = frame.ref;
    if (ref === undefined) return;
    const outgoing = this.outbox.find((message) => sendRef(message.clientId) === ref);
    if (outgoing) return this.onSendError(outgoing, frame);
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

  private onSendError(message: Outgoing, frame: ErrorFrame): void {
    clearOutgoingTimers(message);
    message.sentOn = undefined;
    if (RETRYABLE_CODES.has(frame.code)) {
      // Same client_id later: stored at most once whatever happened.
      const generation = this.generation;
      message.retryTimer = setTimeout(() => {
        message.retryTimer = undefined;
        if (generation === this.generation) this.pumpOutbox();
      }, frame.retry_after_ms ?? 1000);
      return;
    }
    this.outbox.splice(this.outbox.indexOf(message), 1);
    message.reject(MixroomError.fromFrame(frame));
    this.pumpOutbox();
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
  }

  private onTokenRefreshed(frame: TokenRefreshedFrame): void {
    if (this.refreshingToken && (frame.ref == null || frame.ref === this.refreshingToken.ref)) {
      this.token = this.refreshingToken.token;
      this.refreshingToken = undefined;
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
    let token: string;
    try {
      token = await this.options.getToken();
    } catch (error) {
      if (generation !== this.generation) return;
      this.emit("token_error", { error });
      this.scheduleRefresh(5_000);
      return;
    }
    if (generation !== this.generation || this.currentState !== "open") return;
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
    let room = this.rooms.get(roomName);
    if (!room) {
      room = {
        name: roomName,
        lastSeq: options.since,
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
      };
      this.rooms.set(roomName, room);
    }
    if (room.joinedOnSocket && room.lastJoined) return Promise.resolve(room.lastJoined);
    const joined = new Promise<JoinedFrame>((resolve, reject) => {
      room.waiters.push({ resolve, reject });
    });
    if (this.currentState === "open") this.sendJoin(room);
    return joined;
  }

  /** Leaves `room`; it is no longer re-joined. */
  leave(roomName: string): void {
    const room = this.rooms.get(roomName);
    if (!room) return;
    this.rooms.delete(roomName);
    const error = new MixroomError("closed", `left ${roomName}`);
    for (const waiter of room.waiters) waiter.reject(error);
    if (this.currentState === "open") this.write({ type: "leave", room: roomName });
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
    await this.whenOpen();
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
   * stores it once. Messages go out one at a time, in the order queued.
   * Rejects only when the server refuses it for good (`invalid`,
   * `forbidden`, `too_large`, ...).
   */
  send(roomName: string, body: string, options: SendOptions = {}): Promise<AckFrame> {
    const clientId = options.clientId ?? newClientId();
    return new Promise<AckFrame>((resolve, reject) => {
      this.outbox.push({
        room: roomName,
        clientId,
        body,
        resolve,
        reject,
        sentOn: undefined,
        ackTimer: undefined,
        retryTimer: undefined,
      });
      this.pumpOutbox();
    });
  }

  /** Messages queued or sent but not acked yet, oldest first. */
  pendingMessages(): PendingMessage[] {
    return this.outbox.map(({ room, clientId, body }) => ({ room, clientId, body }));
  }

  /**
   * Sends the oldest unacked message unless it is already in flight on
   * this socket. One at a time keeps a user's messages in the order typed,
   * even when one of them has to wait out `rate_limited`.
   */
  private pumpOutbox(): void {
    if (this.currentState !== "open") return;
    const message = this.outbox[0];
    if (!message || message.sentOn === this.generation || message.retryTimer) return;
    message.sentOn = this.generation;
    this.write({
      type: "send",
      room: message.room,
      client_id: message.clientId,
      body: message.body,
      ref: sendRef(message.clientId),
    });
    const generation = this.generation;
    message.ackTimer = setTimeout(() => {
      message.ackTimer = undefined;
      // No ack on a socket that still looks alive: send the same client_id
      // again; the server answers with the original ack if it stored it.
      if (generation === this.generation && message.sentOn === generation) {
        message.sentOn = undefined;
        this.pumpOutbox();
      }
    }, this.options.ackTimeoutMs);
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

  /** `GET /v1/notifications` (newest first). */
  notifications(options: { unread?: boolean; limit?: number } = {}): Promise<NotificationList> {
    const query = new URLSearchParams();
    if (options.unread) query.set("unread", "true");
    if (options.limit !== undefined) query.set("limit", String(options.limit));
    return this.http<NotificationList>("GET", `/v1/notifications${querySuffix(query)}`);
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
  messages(roomName: string, options: { before?: number; limit?: number } = {}): Promise<{ messages: ChatMessage[]; has_more: boolean }> {
    const query = new URLSearchParams();
    if (options.before !== undefined) query.set("before", String(options.before));
    if (options.limit !== undefined) query.set("limit", String(options.limit));
    return this.http("GET", `/v1/rooms/${encodeURIComponent(roomName)}/messages${querySuffix(query)}`);
  }

  private async http<T>(method: string, path: string): Promise<T> {
    if (!this.fetchImpl) throw new Error("no fetch implementation: pass `fetch`");
    const token = await this.usableToken();
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), this.options.requestTimeoutMs);
    try {
      const response = await this.fetchImpl(`${this.httpUrl}${path}`, {
        method,
        headers: { authorization: `Bearer ${token}` },
        signal: controller.signal,
      });
      const text = await response.text();
      if (!response.ok) {
        throw new MixroomError("http", `${method} ${path}: ${response.status} ${text}`, {
          status: response.status,
        });
      }
      return JSON.parse(text) as T;
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
    return this.options.getToken();
  }
}

function querySuffix(query: URLSearchParams): string {
  const text = query.toString();
  return text ? `?${text}` : "";
}

function sendRef(clientId: string): string {
  return `send:${clientId}`;
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

/** A UUID; `crypto.randomUUID` is missing on plain-http pages that are not localhost. */
function newClientId(): string {
  const cryptoApi = (globalThis as { crypto?: { randomUUID?: () => string } }).crypto;
  if (cryptoApi?.randomUUID) return cryptoApi.randomUUID();
  const random = (): string => Math.random().toString(16).slice(2, 10).padEnd(8, "0");
  return `${random()}-${random().slice(0, 4)}-4${random().slice(0, 3)}-${random().slice(0, 4)}-${random()}${random().slice(0, 4)}`;
}
