export { MixroomProvider, MixroomContext, useMixroomClient, type MixroomProviderProps } from "./provider.js";
export {
  emptyRoomSnapshot,
  useBookingStatus,
  useBookingUpdate,
  useConnectionState,
  useNotifications,
  usePresence,
  useReadCursors,
  useRoom,
  useSupportConversation,
  useTyping,
  type NotificationsState,
  type PresenceState,
  type ReadState,
  type RoomState,
  type SupportState,
  type TypingState,
} from "./hooks.js";
export { EMPTY_INBOX, type ClientBundle, type InboxSnapshot, type InboxStatus } from "./stores.js";
