/**
 * The WebSocket frames of the Mixroom real-time contract (PROTOCOL.md, v1),
 * plus the frames this server adds (`unread`, `token_refreshed`,
 * `message.aborted`, and the changes to messages: `edit`, `delete`,
 * `react` and their `message.edited`, `message.deleted`,
 * `message.reacted`).
 *
 * Every frame is one JSON object discriminated by `type`. Servers may add
 * fields and frame types, so unknown ones are passed through untyped
 * (`UnknownFrame`) rather than rejected.
 */

/** A user's role, from the token's `app_metadata.role`. */
export type UserRole = "client" | "studio_owner" | "engineer" | "admin";

/** Who wrote a message: a user, the AI support agent, or the system. */
export type SenderRole = UserRole | "agent" | "system";

export type BookingStatus =
  | "requested"
  | "confirmed"
  | "payment_pending"
  | "paid"
  | "payment_failed"
  | "in_session"
  | "completed"
  | "cancelled"
  | "partially_refunded"
  | "refunded"
  | "disputed";

/** The `code` of an `error` frame. */
export type ErrorCode =
  | "invalid"
  | "unauthorized"
  | "forbidden"
  | "not_found"
  | "gone"
  | "too_large"
  | "timeout"
  | "conflict"
  | "rate_limited"
  | "internal";

/**
 * A file shared by reference (uploaded to Supabase Storage first). `url`
 * must be `https` on an origin of the server's `chat.attachment_origins`
 * (by default any `https://*.supabase.co`); at most 10 per message.
 */
export interface Attachment {
  url: string;
  /** 1–255 characters, no control characters. */
  name: string;
  /** In bytes. */
  size: number;
  /** A media type, e.g. `audio/wav`. */
  content_type: string;
}

/** One emoji on a message: how many put it on, and who (in the order they came). */
export interface Reaction {
  emoji: string;
  count: number;
  user_ids: string[];
}

/** What a reply answers, as that message stands now. */
export interface ReplyQuote {
  seq: number;
  sender: Sender;
  /** The first 120 characters of its current text; `""` once deleted. */
  excerpt: string;
  /** The answered message was deleted. */
  deleted?: boolean;
}

// ---------------------------------------------------------------------------
// Client → server
// ---------------------------------------------------------------------------

export interface AuthFrame {
  type: "auth";
  token: string;
  ref?: string;
}

export interface JoinFrame {
  type: "join";
  room: string;
  /** Replay every message with a larger seq after `joined`. */
  since?: number;
  ref?: string;
}

export interface LeaveFrame {
  type: "leave";
  room: string;
  ref?: string;
}

export interface SendFrame {
  type: "send";
  room: string;
  /** Unique per sender and room for good: a resend returns the first ack. */
  client_id: string;
  body: string;
  /** The seq of the message this one answers (same room, not deleted). */
  reply_to?: number;
  attachments?: Attachment[];
  ref?: string;
}

/** New text for one's own message, within the server's edit window (15 min). */
export interface EditFrame {
  type: "edit";
  room: string;
  seq: number;
  body: string;
  /**
   * Makes a resend safe, as a send's: answered with the first ack, stored
   * once. Fresh for each change, unique per sender and room across sends
   * and changes (this client always sets one).
   */
  client_id?: string;
  ref?: string;
}

/** Deletes one's own message (any, as an admin); a tombstone stays at its seq. */
export interface DeleteFrame {
  type: "delete";
  room: string;
  seq: number;
  /** As an edit's: a resend gets the first ack, even once the message is deleted. */
  client_id?: string;
  ref?: string;
}

/** Puts an emoji on a message (`on: true`) or takes one's own back. */
export interface ReactFrame {
  type: "react";
  room: string;
  seq: number;
  emoji: string;
  on: boolean;
  /** As an edit's: a resend gets the first ack and stores nothing. */
  client_id?: string;
  ref?: string;
}

export interface TypingClientFrame {
  type: "typing";
  room: string;
  ref?: string;
}

export interface ReadClientFrame {
  type: "read";
  room: string;
  seq: number;
  ref?: string;
}

export interface HistoryRequestFrame {
  type: "history";
  room: string;
  /** Messages with a smaller seq (all when absent). */
  before?: number;
  /** At most 100; 50 when absent. */
  limit?: number;
  ref?: string;
}

export interface PingFrame {
  type: "ping";
  ref?: string;
}

export type ClientFrame =
  | AuthFrame
  | JoinFrame
  | LeaveFrame
  | SendFrame
  | EditFrame
  | DeleteFrame
  | ReactFrame
  | TypingClientFrame
  | ReadClientFrame
  | HistoryRequestFrame
  | PingFrame;

// ---------------------------------------------------------------------------
// Server → client
// ---------------------------------------------------------------------------

export interface WelcomeFrame {
  type: "welcome";
  user_id: string;
  session_id: string;
  /** RFC 3339. */
  server_time: string;
  /** The server pings this often; the client pings when it hears nothing. */
  heartbeat_ms: number;
}

/** Unread counts, sent right after `welcome` (a server extension). */
export interface UnreadFrame {
  type: "unread";
  notifications: number;
  /** Unread chat messages per room, e.g. `{"booking:b1": 3}`. */
  rooms: Record<string, number>;
}

/** The answer to an `auth` frame on a live socket (a server extension). */
export interface TokenRefreshedFrame {
  type: "token_refreshed";
  ref?: string | null;
  /** RFC 3339: the socket is closed with 4001 then, unless refreshed again. */
  expires_at: string;
}

export interface Member {
  user_id: string;
  name: string;
  role: string;
  online: boolean;
}

export interface JoinedFrame {
  type: "joined";
  ref?: string;
  room: string;
  /** The room's newest seq (0 for an empty room). */
  last_seq: number;
  members: Member[];
  /**
   * With `since`: the replay stopped before `last_seq`; the rest comes by
   * joining again with `since` = `replay_until` (the client does this
   * itself, before handing over newer messages).
   */
  has_more?: boolean;
  /** With `since`: the seq the replay that follows this frame ends at. */
  replay_until?: number;
}

export interface LeftFrame {
  type: "left";
  /** Absent when the server removed the session (no longer a participant). */
  ref?: string;
  room: string;
}

/**
 * The answer to a `send`, `edit`, `delete` or `react` once stored: `seq`
 * is the entry's place in the room's sequence (a change takes a seq of its
 * own). A resend with the same `client_id` gets this same ack again.
 */
export interface AckFrame {
  type: "ack";
  ref?: string;
  /**
   * The `client_id` the frame carried: always there on a send's ack, and on
   * a change's when the change had one (this client's always do).
   */
  client_id?: string;
  id: string;
  seq: number;
  sent_at: string;
}

/** The ack of a `send`: it always names the message's `client_id`. */
export type SendAck = AckFrame & { client_id: string };

export interface Sender {
  /** `null` for system messages. */
  user_id: string | null;
  name: string;
  role: SenderRole;
}

/** A stored chat message (live, replayed or from history). */
export interface ChatMessage {
  room: string;
  /** Per room, from 1, without gaps. */
  seq: number;
  id: string;
  client_id: string | null;
  sender: Sender;
  /** `""` once deleted. */
  body: string;
  sent_at: string;
  /** For a reply: what it answers, as that stands now. */
  reply_to?: ReplyQuote;
  /** Absent when none (and once deleted). */
  attachments?: Attachment[];
  /** Set once the text was edited. */
  edited_at?: string;
  /** Set on a tombstone: `body` is empty, attachments and reactions are gone. */
  deleted_at?: string;
  /** Each emoji once, in the order it first came; absent when none. */
  reactions?: Reaction[];
}

export interface MessageFrame extends ChatMessage {
  type: "message";
}

/** A streamed piece of an AI reply; the whole follows as a `message` with the same `id`. */
export interface MessageDeltaFrame {
  type: "message.delta";
  room: string;
  id: string;
  delta: string;
}

/**
 * The pieces streamed under `id` will not become a message (the answer
 * failed, or an admin took the conversation over): drop them. A server
 * extension of the support agent.
 */
export interface MessageAbortedFrame {
  type: "message.aborted";
  room: string;
  id: string;
  reason: "failed" | "taken_over" | (string & {});
}

/**
 * What every change to a message has: its own `seq` in the room's sequence
 * (count it as delivered, like a message's), the changed message's seq,
 * who changed it and when. Change frames show the message as it stands
 * (a replayed one as it stands at replay time): applying one is setting
 * fields, so applying it twice changes nothing.
 */
interface MessageChangeBase {
  room: string;
  seq: number;
  /** The seq of the message changed. */
  message_seq: number;
  by: Sender;
  /** RFC 3339. */
  at: string;
}

/** A message's new text. */
export interface MessageEditedFrame extends MessageChangeBase {
  type: "message.edited";
  body: string;
  edited_at?: string;
}

/** A message became a tombstone: empty body, no attachments, no reactions. */
export interface MessageDeletedFrame extends MessageChangeBase {
  type: "message.deleted";
}

/** Someone put an emoji on (`on`) or took theirs back; `reactions` is the message's whole list after it. */
export interface MessageReactedFrame extends MessageChangeBase {
  type: "message.reacted";
  emoji: string;
  on: boolean;
  reactions: Reaction[];
}

export type MessageChangeFrame = MessageEditedFrame | MessageDeletedFrame | MessageReactedFrame;

/** An entry of a room's sequence: a message or a change to one. */
export type RoomEntryFrame = MessageFrame | MessageChangeFrame;

export interface HistoryFrame {
  type: "history";
  ref?: string;
  room: string;
  /** Newest first, each as it stands now. */
  messages: ChatMessage[];
  /**
   * The edits, deletions and reactions among the page's seqs (absent when
   * none; do not rely on their order). The messages already show their
   * effect: they count for seq bookkeeping only (a page's `limit` counts
   * them too).
   */
  changes?: MessageChangeFrame[];
  has_more: boolean;
}

export interface TypingFrame {
  type: "typing";
  room: string;
  user_id: string;
}

export interface ReadFrame {
  type: "read";
  room: string;
  user_id: string;
  seq: number;
}

export interface PresenceFrame {
  type: "presence";
  room: string;
  user_id: string;
  online: boolean;
}

export interface BookingUpdatedFrame {
  type: "booking.updated";
  booking_id: string;
  status: BookingStatus;
  previous_status: BookingStatus | null;
  reason: string | null;
  at: string;
}

/**
 * What a notification is about. `reminder`: a booking starts soon;
 * `policy`: an announcement everyone gets (a change to the terms or the
 * privacy policy), which no preference turns off. Servers may add kinds,
 * so a notification's `kind` can also be a string not listed here.
 */
export type NotificationKind = "chat" | "booking" | "support" | "marketing" | "reminder" | "policy";

/** The kinds a user can switch email and push on or off for: all but `policy`. */
export type SwitchableKind = Exclude<NotificationKind, "policy">;

export interface NotificationFrame {
  type: "notification";
  id: string;
  // `string & {}` keeps editors suggesting the known kinds while allowing new ones.
  kind: NotificationKind | (string & {});
  title: string;
  body: string;
  link: string | null;
  created_at: string;
  read_at?: string | null;
}

export interface PongFrame {
  type: "pong";
  ref?: string;
  server_time: string;
}

export interface ErrorFrame {
  type: "error";
  ref?: string;
  code: ErrorCode;
  message: string;
  retry_after_ms?: number;
}

/** A frame type this client does not know (servers may add some). */
export interface UnknownFrame {
  type: string;
  [field: string]: unknown;
}

export type ServerFrame =
  | WelcomeFrame
  | UnreadFrame
  | TokenRefreshedFrame
  | JoinedFrame
  | LeftFrame
  | AckFrame
  | MessageFrame
  | MessageDeltaFrame
  | MessageAbortedFrame
  | MessageEditedFrame
  | MessageDeletedFrame
  | MessageReactedFrame
  | HistoryFrame
  | TypingFrame
  | ReadFrame
  | PresenceFrame
  | BookingUpdatedFrame
  | NotificationFrame
  | PongFrame
  | ErrorFrame;

/** Close codes of the contract. */
export const CloseCode = {
  /** Normal close (the client's `close()`). */
  Normal: 1000,
  /** The server is shutting down: reconnect and resume with `since`. */
  GoingAway: 1001,
  /** Too many connections for this user or address: back off. */
  PolicyViolation: 1008,
  /** A frame larger than the server's limit. */
  TooLarge: 1009,
  /** The client stopped reading and its queue filled up: reconnect and resume. */
  TryAgainLater: 1013,
  /** The token was bad or expired (refresh it before `exp`). */
  AuthFailed: 4001,
  /** No `auth` frame within the server's timeout. */
  AuthTimeout: 4008,
  /** The client kept flooding after `rate_limited`. */
  Flooding: 4029,
} as const;

/** Room names: `booking:<id>`, `support:<id>`, `user:<id>`. */
export function bookingRoom(bookingId: string): string {
  return `booking:${bookingId}`;
}

export function supportRoom(conversationId: string): string {
  return `support:${conversationId}`;
}
