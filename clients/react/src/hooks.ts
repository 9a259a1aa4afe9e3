import { useCallback, useContext, useEffect, useMemo, useState, useSyncExternalStore } from "react";
import {
  MixroomError,
  type BookingStatus,
  type BookingUpdatedFrame,
  type ConnectionState,
  type Member,
  type RoomSnapshot,
  type RoomView,
  type RoomViewOptions,
  type SendOptions,
  type SupportConversation,
} from "@mixroom/realtime-client";
import { MixroomContext } from "./provider.js";
import { EMPTY_INBOX, type ClientBundle, type InboxSnapshot } from "./stores.js";

const noop = (): void => undefined;
const subscribeNothing = (): (() => void) => noop;
const EMPTY_LIST: readonly never[] = Object.freeze([]);

// ---------------------------------------------------------------------------
// Connection
// ---------------------------------------------------------------------------

/** The client's connection state; `idle` without a client (and on the server). */
export function useConnectionState(): ConnectionState {
  const client = useContext(MixroomContext)?.client;
  const subscribe = useCallback(
    (onChange: () => void) => (client ? client.on("state", () => onChange()) : noop),
    [client],
  );
  return useSyncExternalStore(
    subscribe,
    () => client?.state ?? "idle",
    () => "idle",
  );
}

// ---------------------------------------------------------------------------
// Rooms
// ---------------------------------------------------------------------------

/** What a room hook returns: the room view's snapshot and its actions. */
export interface RoomState extends RoomSnapshot {
  /**
   * Sends `body` (shows in `pending` at once, then as the stored message;
   * resent with the same `client_id` until stored once). Returns the
   * `client_id`. Throws before the room's view exists (no client yet, or
   * server rendering).
   */
  send(body: string, options?: SendOptions): string;
  /** Loads the page before the oldest message shown; resolves with whether older ones remain. */
  loadOlder(): Promise<boolean>;
  /** Marks the room read up to `seq` (default: the newest message shown). */
  markRead(seq?: number): void;
  /** Tells the others the user is typing (throttled: call it on every keystroke). */
  notifyTyping(): void;
  /** Sends a `failed` pending message again. */
  retry(clientId: string): void;
  /** Forgets a `failed` pending message. */
  dismiss(clientId: string): void;
}

const emptySnapshots = new Map<string, RoomSnapshot>();

/** The snapshot shown before a room's view exists: no messages, `status: "joining"`. */
export function emptyRoomSnapshot(room: string): RoomSnapshot {
  let snapshot = emptySnapshots.get(room);
  if (!snapshot) {
    snapshot = Object.freeze({
      room,
      status: "joining",
      error: undefined,
      connection: "idle",
      userId: undefined,
      messages: EMPTY_LIST,
      hasOlder: false,
      loadingOlder: false,
      pending: EMPTY_LIST,
      streaming: EMPTY_LIST,
      members: EMPTY_LIST,
      typing: EMPTY_LIST,
      reads: Object.freeze({}),
      readSeq: 0,
      unread: 0,
      lastSeq: 0,
    });
    if (emptySnapshots.size < 1000) emptySnapshots.set(room, snapshot);
  }
  return snapshot;
}

/**
 * The provider's shared view of `room` (e.g. `booking:<id>`): acquired in
 * an effect, released on unmount. `null`/`undefined` → none.
 */
function useRoomView(room: string | null | undefined, options?: RoomViewOptions): RoomView | null {
  const bundle = useContext(MixroomContext);
  const [held, setHeld] = useState<{ bundle: ClientBundle; view: RoomView } | null>(null);
  const pageSize = options?.pageSize;
  const typingTimeoutMs = options?.typingTimeoutMs;
  useEffect(() => {
    if (!bundle || !room) return undefined;
    const viewOptions: RoomViewOptions = {};
    if (pageSize !== undefined) viewOptions.pageSize = pageSize;
    if (typingTimeoutMs !== undefined) viewOptions.typingTimeoutMs = typingTimeoutMs;
    const view = bundle.rooms.acquire(room, viewOptions);
    const entry = { bundle, view };
    setHeld(entry);
    return () => {
      bundle.rooms.release(room, view);
      setHeld((current) => (current === entry ? null : current));
    };
  }, [bundle, room, pageSize, typingTimeoutMs]);
  // Between a change of room (or user) and the effect, show nothing of the old one.
  return held && held.bundle === bundle && held.view.name === room ? held.view : null;
}

function useRoomSnapshot(view: RoomView | null, room: string | null | undefined): RoomSnapshot {
  const empty = emptyRoomSnapshot(room ?? "");
  const subscribe = useMemo(() => (view ? view.subscribe : subscribeNothing), [view]);
  return useSyncExternalStore(
    subscribe,
    () => (view ? view.getSnapshot() : empty),
    () => empty,
  );
}

/**
 * A room's live state: stored messages in seq order (the latest page of
 * history loaded, kept across reconnects and server restarts), the user's
 * pending sends, members, typing, read cursors and unread count, and the
 * support agent's streamed answer — plus `send`, `loadOlder`, `markRead`,
 * `notifyTyping`, `retry` and `dismiss`. Every hook of the same room shares one
 * room view. (Editing, deleting, replies and reactions are not offered:
 * the client and the protocol have no such operations yet.)
 */
export function useRoom(room: string | null | undefined, options?: RoomViewOptions): RoomState {
  const view = useRoomView(room, options);
  const snapshot = useRoomSnapshot(view, room);
  const send = useCallback(
    (body: string, sendOptions?: SendOptions): string => {
      if (!view) throw new MixroomError("closed", `no view of ${room ?? "(no room)"} yet: no client, or not mounted`);
      return view.send(body, sendOptions);
    },
    [view, room],
  );
  const loadOlder = useCallback(() => (view ? view.loadOlder() : Promise.resolve(false)), [view]);
  const markRead = useCallback((seq?: number) => view?.markRead(seq), [view]);
  const notifyTyping = useCallback(() => view?.typing(), [view]);
  const retry = useCallback((clientId: string) => view?.retry(clientId), [view]);
  const dismiss = useCallback((clientId: string) => view?.dismiss(clientId), [view]);
  return useMemo(
    () => ({ ...snapshot, send, loadOlder, markRead, notifyTyping, retry, dismiss }),
    [snapshot, send, loadOlder, markRead, notifyTyping, retry, dismiss],
  );
}

export interface TypingState {
  /** Ids of the users typing in the room now (not the current user). */
  typing: readonly string[];
  /** Tells the others the current user is typing (throttled: call it on every keystroke). */
  notifyTyping(): void;
}

/** Who is typing in `room`, and a way to say the user is. */
export function useTyping(room: string | null | undefined): TypingState {
  const { typing, notifyTyping } = useRoom(room);
  return useMemo(() => ({ typing, notifyTyping }), [typing, notifyTyping]);
}

export interface ReadState {
  /** Read cursors by user id (the others' and the user's own). */
  reads: Readonly<Record<string, number>>;
  /** The user's own cursor. */
  readSeq: number;
  /** Messages by others after the user's cursor. */
  unread: number;
  /** Marks the room read up to `seq` (default: the newest message shown). */
  markRead(seq?: number): void;
}

/** Read cursors and the unread count of `room`. */
export function useReadCursors(room: string | null | undefined): ReadState {
  const { reads, readSeq, unread, markRead } = useRoom(room);
  return useMemo(() => ({ reads, readSeq, unread, markRead }), [reads, readSeq, unread, markRead]);
}

export interface PresenceState {
  /** The room's members (from `joined`, kept current by `presence`). */
  members: readonly Member[];
  /** The members online now. */
  online: readonly Member[];
}

/** Members of `room` and which of them are online. */
export function usePresence(room: string | null | undefined): PresenceState {
  const { members } = useRoom(room);
  return useMemo(() => ({ members, online: Object.freeze(members.filter((member) => member.online)) }), [members]);
}

// ---------------------------------------------------------------------------
// Booking status
// ---------------------------------------------------------------------------

/** The latest `booking.updated` frame for the booking since the client was created, or `null`. */
export function useBookingUpdate(bookingId: string | null | undefined): BookingUpdatedFrame | null {
  const bookings = useContext(MixroomContext)?.bookings;
  const subscribe = useCallback(
    (onChange: () => void) => (bookings && bookingId ? bookings.subscribe(bookingId, onChange) : noop),
    [bookings, bookingId],
  );
  return useSyncExternalStore(
    subscribe,
    () => (bookings && bookingId ? bookings.get(bookingId) : null),
    () => null,
  );
}

/**
 * The booking's status as of the latest live `booking.updated`, or `null`
 * until one arrives (render your own loaded status until then).
 */
export function useBookingStatus(bookingId: string | null | undefined): BookingStatus | null {
  return useBookingUpdate(bookingId)?.status ?? null;
}

// ---------------------------------------------------------------------------
// Notifications
// ---------------------------------------------------------------------------

export interface NotificationsState extends InboxSnapshot {
  /** Marks one notification read (at once here, then on the server). */
  markRead(id: string): Promise<void>;
  markAllRead(): Promise<void>;
  /** Loads the next (older) page; resolves with whether more remain. */
  loadMore(): Promise<boolean>;
  /** Fetches the newest page again. */
  reload(): Promise<void>;
}

/**
 * The user's inbox: the newest page over HTTP (fetched when the first
 * such hook mounts, and again after each reconnect), live `notification`
 * frames merged in, the unread count, and `markRead(id)`.
 */
export function useNotifications(): NotificationsState {
  const inbox = useContext(MixroomContext)?.inbox;
  const snapshot = useSyncExternalStore(
    inbox ? inbox.subscribe : subscribeNothing,
    inbox ? inbox.getSnapshot : () => EMPTY_INBOX,
    () => EMPTY_INBOX,
  );
  return useMemo(() => {
    const missing = (): Promise<never> => Promise.reject(new MixroomError("closed", "no Mixroom client (signed out, or not mounted)"));
    return {
      ...snapshot,
      markRead: (id: string) => (inbox ? inbox.markRead(id) : missing()),
      markAllRead: () => (inbox ? inbox.markAllRead() : missing()),
      loadMore: () => (inbox ? inbox.loadMore() : Promise.resolve(false)),
      reload: () => (inbox ? inbox.load() : Promise.resolve()),
    };
  }, [snapshot, inbox]);
}

// ---------------------------------------------------------------------------
// Support
// ---------------------------------------------------------------------------

export interface SupportState {
  /** `idle` (no client, or not enabled), `opening`, `open`, or `error`. */
  status: "idle" | "opening" | "open" | "error";
  conversation: SupportConversation | null;
  error: unknown;
  /** The conversation's room (its messages, pending sends and the agent's `streaming` answer). */
  room: RoomState;
  /** After an `error`: tries to open the conversation again. */
  retry(): void;
}

/**
 * Opens the user's support conversation (once per client; every such hook
 * reuses it) and returns its room: send the question with `room.send()`,
 * and show `room.streaming` while the agent's answer streams — the stored
 * message replaces it.
 */
export function useSupportConversation(options: { enabled?: boolean } = {}): SupportState {
  const enabled = options.enabled ?? true;
  const bundle = useContext(MixroomContext);
  const [attempt, setAttempt] = useState(0);
  const [result, setResult] = useState<{
    bundle: ClientBundle;
    conversation: SupportConversation | null;
    error: unknown;
  } | null>(null);
  useEffect(() => {
    if (!bundle || !enabled) return undefined;
    let active = true;
    bundle.supportConversation().then(
      (conversation) => {
        if (active) setResult({ bundle, conversation, error: undefined });
      },
      (error: unknown) => {
        if (active) setResult({ bundle, conversation: null, error });
      },
    );
    return () => {
      active = false;
    };
  }, [bundle, enabled, attempt]);
  const current = result && result.bundle === bundle ? result : null;
  const conversation = enabled ? (current?.conversation ?? null) : null;
  const room = useRoom(conversation?.room ?? null);
  const retry = useCallback(() => {
    setResult(null);
    setAttempt((n) => n + 1);
  }, []);
  const status: SupportState["status"] =
    !bundle || !enabled ? "idle" : conversation ? "open" : current?.error !== undefined ? "error" : "opening";
  return { status, conversation, error: current?.error, room, retry };
}
