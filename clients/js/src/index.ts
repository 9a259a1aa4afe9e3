export {
  MixroomClient,
  httpUrlOf,
  type ClientEvents,
  type ConnectionState,
  type JoinOptions,
  type MixroomClientOptions,
  type NotificationItem,
  type NotificationList,
  type PendingMessage,
  type SendOptions,
  type SupportConversation,
  type UnreadCounts,
  type WebSocketConstructor,
  type WebSocketLike,
} from "./client.js";
export { backoffDelay, DEFAULT_BACKOFF, type BackoffOptions } from "./backoff.js";
export { MixroomError } from "./errors.js";
export { TypedEmitter, type Listener } from "./emitter.js";
export { tokenExpiresAt } from "./token.js";
export * from "./frames.js";
