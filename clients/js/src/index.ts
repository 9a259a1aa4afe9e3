export {
  MixroomClient,
  httpUrlOf,
  type ChangeKind,
  type ClientEvents,
  type ConnectionState,
  type EmailSwitches,
  type JoinOptions,
  type MixroomClientOptions,
  type NotificationItem,
  type NotificationList,
  type NotificationQuery,
  type OutgoingState,
  type PendingChange,
  type PendingMessage,
  type Preferences,
  type PreferencesUpdate,
  type PushSubscriptionBody,
  type PushSwitches,
  type SendOptions,
  type SupportConversation,
  type UnauthorizedReason,
  type UnreadCounts,
  type WebSocketConstructor,
  type WebSocketLike,
} from "./client.js";
export {
  RoomView,
  type PendingSend,
  type PendingSendState,
  type RoomSnapshot,
  type RoomStatus,
  type RoomViewOptions,
  type StreamingMessage,
} from "./room.js";
export { applyChange, applyChangeToQuote, excerptOf, QUOTE_CHARS } from "./changes.js";
export { backoffDelay, DEFAULT_BACKOFF, type BackoffOptions } from "./backoff.js";
export { MixroomError, type MixroomErrorCode } from "./errors.js";
export {
  subscribeToPush,
  subscriptionBody,
  unsubscribeFromPush,
  vapidKeyBytes,
  type PushOptions,
  type PushSubscribed,
} from "./push.js";
export { base64UrlToBytes, bytesToBase64Url } from "./base64url.js";
export { TypedEmitter, type Listener } from "./emitter.js";
export { tokenExpiresAt } from "./token.js";
export * from "./frames.js";
