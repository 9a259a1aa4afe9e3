/**
 * What the provider keeps per client: shared room views (one per room,
 * counted), the latest booking update per booking, the notification inbox
 * and the support conversation. Created together with the client in the
 * provider's effect and disposed with it, so nothing here runs during
 * render or on the server.
 */
import type {
  BookingUpdatedFrame,
  MixroomClient,
  NotificationFrame,
  NotificationItem,
  RoomView,
  RoomViewOptions,
  SupportConversation,
} from "@mixroom/realtime-client";

type Listener = () => void;

class Listeners {
  private readonly set = new Set<Listener>();
  add(listener: Listener): () => void {
    this.set.add(listener);
    return () => {
      this.set.delete(listener);
    };
  }
  get size(): number {
    return this.set.size;
  }
  notify(): void {
    for (const listener of [...this.set]) listener();
  }
  clear(): void {
    this.set.clear();
  }
}

// ---------------------------------------------------------------------------
// Room views
// ---------------------------------------------------------------------------

/** One `RoomView` per room name, shared by every hook of the room, closed with the last one. */
export class RoomViews {
  private readonly views = new Map<string, { view: RoomView; holders: number }>();
  private disposed = false;

  constructor(private readonly client: MixroomClient) {}

  acquire(name: string, options?: RoomViewOptions): RoomView {
    let entry = this.views.get(name);
    if (!entry || this.disposed) {
      entry = { view: this.client.room(name, options), holders: 0 };
      if (!this.disposed) this.views.set(name, entry);
    }
    entry.holders += 1;
    return entry.view;
  }

  release(name: string, view: RoomView): void {
    const entry = this.views.get(name);
    if (!entry || entry.view !== view) {
      view.close();
      return;
    }
    entry.holders -= 1;
    if (entry.holders <= 0) {
      this.views.delete(name);
      view.close();
    }
  }

  /** Rooms with a view open (for tests and debugging). */
  openRooms(): string[] {
    return [...this.views.keys()];
  }

  dispose(): void {
    this.disposed = true;
    for (const { view } of this.views.values()) view.close();
    this.views.clear();
  }
}

// ---------------------------------------------------------------------------
// Booking status
// ---------------------------------------------------------------------------

/** The latest `booking.updated` per booking since the client was created. */
export class BookingUpdates {
  private readonly latest = new Map<string, BookingUpdatedFrame>();
  private readonly listeners = new Map<string, Listeners>();
  private readonly off: () => void;

  constructor(client: MixroomClient) {
    this.off = client.on("booking.updated", (frame) => {
      this.latest.set(frame.booking_id, frame);
      this.listeners.get(frame.booking_id)?.notify();
    });
  }

  get(bookingId: string): BookingUpdatedFrame | null {
    return this.latest.get(bookingId) ?? null;
  }

  subscribe(bookingId: string, listener: Listener): () => void {
    let set = this.listeners.get(bookingId);
    if (!set) {
      set = new Listeners();
      this.listeners.set(bookingId, set);
    }
    const remove = set.add(listener);
    return () => {
      remove();
      if (set.size === 0 && this.listeners.get(bookingId) === set) this.listeners.delete(bookingId);
    };
  }

  dispose(): void {
    this.off();
    this.listeners.clear();
  }
}

// ---------------------------------------------------------------------------
// Notifications
// ---------------------------------------------------------------------------

export type InboxStatus = "idle" | "loading" | "ready" | "error";

export interface InboxSnapshot {
  /** `idle` until something subscribes (and on the server), `loading` until the first page arrives. */
  readonly status: InboxStatus;
  /** Newest first: the loaded pages plus those that arrived live. */
  readonly notifications: readonly NotificationItem[];
  /** The server's count of unread notifications, kept current by live frames. */
  readonly unreadCount: number;
  /** Older notifications exist than the last of `notifications` (`loadMore()`). */
  readonly hasMore: boolean;
  /** Why the latest load failed (`status: "error"`). */
  readonly error: unknown;
}

export const EMPTY_INBOX: InboxSnapshot = Object.freeze({
  status: "idle",
  notifications: Object.freeze([]) as readonly NotificationItem[],
  unreadCount: 0,
  hasMore: false,
  error: undefined,
});

const PAGE = 50;

/**
 * The inbox: `GET /v1/notifications` when the first hook subscribes (and
 * again after every reconnect, for what came while offline), merged by id
 * with live `notification` frames; `unread` frames set the count, and
 * `notifications.read` frames (a read in another tab) mark items read.
 */
export class Inbox {
  private readonly items = new Map<string, NotificationItem>();
  private unreadCount = 0;
  private hasMore = false;
  private status: InboxStatus = "idle";
  private error: unknown;
  private snapshot: InboxSnapshot = EMPTY_INBOX;
  private started = false;
  private disposed = false;
  private loadGeneration = 0;
  /** Unread notifications that arrived live while a load was on its way. */
  private liveDuringLoad: Set<string> | undefined;
  private readonly listeners = new Listeners();
  private readonly offs: Array<() => void>;

  constructor(private readonly client: MixroomClient) {
    this.offs = [
      client.on("notification", (frame) => this.onNotification(frame)),
      client.on("unread", (frame) => {
        this.unreadCount = frame.notifications;
        this.changed();
      }),
      client.on("frame", (frame) => {
        if (frame.type === "notifications.read") this.onReadElsewhere(frame as { ids?: unknown; all?: unknown });
      }),
      client.on("welcome", () => {
        // Live from here on: fetch again what arrived before (offline, or
        // while a first fetch was on its way); a load in flight is superseded.
        if (this.started) void this.load();
      }),
    ];
  }

  readonly getSnapshot = (): InboxSnapshot => this.snapshot;

  readonly subscribe = (listener: Listener): (() => void) => {
    const remove = this.listeners.add(listener);
    if (!this.started && !this.disposed) {
      this.started = true;
      void this.load();
    }
    return remove;
  };

  /** Fetches the newest page again and merges it in. */
  load(): Promise<void> {
    if (this.disposed) return Promise.resolve();
    const generation = ++this.loadGeneration;
    this.liveDuringLoad = new Set();
    if (this.status !== "ready") {
      this.status = "loading";
      this.changed();
    }
    return this.client.notifications({ limit: PAGE }).then(
      (list) => {
        if (generation !== this.loadGeneration || this.disposed) return;
        const fetched = new Set(list.notifications.map((item) => item.id));
        let extra = 0;
        for (const id of this.liveDuringLoad ?? []) {
          if (!fetched.has(id) && this.items.get(id)?.read_at === null) extra += 1;
        }
        this.liveDuringLoad = undefined;
        for (const item of list.notifications) this.items.set(item.id, freeze(item));
        this.unreadCount = list.unread_count + extra;
        if (this.status !== "ready") this.hasMore = list.has_more;
        this.status = "ready";
        this.error = undefined;
        this.changed();
      },
      (error: unknown) => {
        if (generation !== this.loadGeneration || this.disposed) return;
        this.liveDuringLoad = undefined;
        this.status = "error";
        this.error = error;
        this.changed();
      },
    );
  }

  /** Loads the page after the oldest notification shown. */
  async loadMore(): Promise<boolean> {
    const oldest = this.sorted().at(-1);
    if (this.disposed || !this.hasMore || !oldest) return false;
    const page = await this.client.notifications({ before: oldest.id, limit: PAGE });
    if (this.disposed) return false;
    for (const item of page.notifications) if (!this.items.has(item.id)) this.items.set(item.id, freeze(item));
    this.hasMore = page.has_more;
    this.changed();
    return this.hasMore;
  }

  /** Marks one read at once (here), then on the server; undone if the server refuses. */
  async markRead(id: string): Promise<void> {
    const item = this.items.get(id);
    const wasUnread = item !== undefined && item.read_at === null;
    if (item && wasUnread) {
      this.items.set(id, freeze({ ...item, read_at: new Date().toISOString() }));
      this.unreadCount = Math.max(0, this.unreadCount - 1);
      this.changed();
    }
    try {
      const stored = await this.client.markNotificationRead(id);
      if (this.disposed) return;
      if (this.items.has(id)) this.items.set(id, freeze(stored));
      this.changed();
    } catch (error) {
      if (!this.disposed && item && wasUnread && this.items.get(id)?.read_at !== null) {
        this.items.set(id, item);
        this.unreadCount += 1;
        this.changed();
      }
      throw error;
    }
  }

  /** Marks every notification read. */
  async markAllRead(): Promise<void> {
    const now = new Date().toISOString();
    for (const [id, item] of this.items) if (item.read_at === null) this.items.set(id, freeze({ ...item, read_at: now }));
    this.unreadCount = 0;
    this.changed();
    await this.client.markAllNotificationsRead();
  }

  dispose(): void {
    this.disposed = true;
    for (const off of this.offs) off();
    this.listeners.clear();
  }

  private onNotification(frame: NotificationFrame): void {
    if (this.items.has(frame.id)) return;
    const { type: _type, ...rest } = frame;
    const item: NotificationItem = { ...rest, read_at: rest.read_at ?? null };
    this.items.set(item.id, freeze(item));
    if (item.read_at === null) {
      this.liveDuringLoad?.add(item.id);
      this.unreadCount += 1;
    }
    this.changed();
  }

  private onReadElsewhere(frame: { ids?: unknown; all?: unknown }): void {
    const now = new Date().toISOString();
    const ids = frame.all === true ? [...this.items.keys()] : Array.isArray(frame.ids) ? frame.ids.map(String) : [];
    let marked = 0;
    for (const id of ids) {
      const item = this.items.get(id);
      if (item && item.read_at === null) {
        this.items.set(id, freeze({ ...item, read_at: now }));
        marked += 1;
      }
    }
    // The server's fresh `unread` frame follows and sets the exact count.
    if (frame.all === true) this.unreadCount = 0;
    else this.unreadCount = Math.max(0, this.unreadCount - marked);
    if (marked > 0 || frame.all === true) this.changed();
  }

  private sorted(): NotificationItem[] {
    // Newest first; ties (same millisecond) by id, which the server issues in time order.
    return [...this.items.values()].sort((a, b) =>
      a.created_at === b.created_at ? (a.id < b.id ? 1 : a.id > b.id ? -1 : 0) : a.created_at < b.created_at ? 1 : -1,
    );
  }

  private changed(): void {
    if (this.disposed) return;
    this.snapshot = Object.freeze({
      status: this.status,
      notifications: Object.freeze(this.sorted()),
      unreadCount: this.unreadCount,
      hasMore: this.hasMore,
      error: this.error,
    });
    this.listeners.notify();
  }
}

function freeze(item: NotificationItem): NotificationItem {
  return Object.freeze({ ...item });
}

// ---------------------------------------------------------------------------
// The bundle
// ---------------------------------------------------------------------------

/** A client and what the hooks share about it. */
export class ClientBundle {
  readonly rooms: RoomViews;
  readonly bookings: BookingUpdates;
  readonly inbox: Inbox;
  private support: Promise<SupportConversation> | undefined;

  constructor(readonly client: MixroomClient) {
    this.rooms = new RoomViews(client);
    this.bookings = new BookingUpdates(client);
    this.inbox = new Inbox(client);
  }

  /** The user's support conversation: opened once per client, then reused (again after a failure). */
  supportConversation(): Promise<SupportConversation> {
    if (!this.support) {
      const opening = this.client.openSupportConversation();
      this.support = opening;
      opening.catch(() => {
        if (this.support === opening) this.support = undefined;
      });
    }
    return this.support;
  }

  dispose(): void {
    this.rooms.dispose();
    this.bookings.dispose();
    this.inbox.dispose();
    this.client.close();
  }
}
