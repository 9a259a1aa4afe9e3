/**
 * The demo page served by the server at `/` (when `server.demo = true`):
 * a booking chat with typing and read receipts, a live booking status
 * badge, a notifications bell and the support widget — all through
 * `MixroomClient`. Bundled into `demo/app.js` by `npm run build:demo`.
 */
import {
  MixroomClient,
  MixroomError,
  type ChatMessage,
  type ConnectionState,
  type Member,
  type NotificationItem,
} from "../src/index.js";

interface DemoPerson {
  key: string;
  id: string;
  name: string;
  role: string;
}

/** `POST /demo/session`: a token for a demo user, and the demo booking. */
interface DemoSession {
  token: string;
  expires_in: number;
  user: DemoPerson;
  people: DemoPerson[];
  booking: { id: string; room: string; title: string; status: string };
}

const TYPING_SHOWN_MS = 3000;

function element<T extends HTMLElement = HTMLElement>(id: string): T {
  const found = document.getElementById(id);
  if (!found) throw new Error(`#${id} is missing from the page`);
  return found as T;
}

async function fetchSession(user: string): Promise<DemoSession> {
  const response = await fetch("/demo/session", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ user }),
  });
  if (!response.ok) throw new Error(`POST /demo/session: ${response.status} ${await response.text()}`);
  return (await response.json()) as DemoSession;
}

function socketUrl(): string {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}/v1/ws`;
}

function timeOf(iso: string): string {
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? "" : date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

function newId(): string {
  return crypto.randomUUID?.() ?? `${Date.now()}-${Math.random().toString(16).slice(2)}`;
}

// ---------------------------------------------------------------------------
// Booking chat
// ---------------------------------------------------------------------------

class BookingChat {
  private readonly list = element<HTMLOListElement>("messages");
  private readonly typingLine = element("typing");
  private readonly membersLine = element("members");
  private readonly badge = element("status-badge");
  /** Rendered messages by seq, and not-yet-stored ones by client_id. */
  private readonly bySeq = new Map<number, HTMLLIElement>();
  private readonly pending = new Map<string, HTMLLIElement>();
  private readonly members = new Map<string, Member>();
  /** Others' read positions, for "Seen by". */
  private readonly readUpTo = new Map<string, number>();
  private readonly typingTimers = new Map<string, ReturnType<typeof setTimeout>>();
  private newestSeq = 0;

  constructor(
    private readonly client: MixroomClient,
    private readonly session: DemoSession,
  ) {
    element("booking-title").textContent = session.booking.title;
    this.setStatus(session.booking.status, false);
    for (const person of session.people) {
      this.members.set(person.id, { user_id: person.id, name: person.name, role: person.role, online: false });
    }
    this.renderMembers();
  }

  private get room(): string {
    return this.session.booking.room;
  }

  async start(): Promise<void> {
    const client = this.client;
    client.on("message", (message) => {
      if (message.room !== this.room) return;
      this.render(message);
      this.markReadIfVisible();
    });
    client.on("typing", ({ room, user_id }) => {
      if (room === this.room && user_id !== client.userId) this.showTyping(user_id);
    });
    client.on("read", ({ room, user_id, seq }) => {
      if (room !== this.room || user_id === client.userId) return;
      this.readUpTo.set(user_id, Math.max(seq, this.readUpTo.get(user_id) ?? 0));
      this.renderReceipts();
    });
    client.on("presence", ({ room, user_id, online }) => {
      const member = this.members.get(user_id);
      if (room === this.room && member) {
        member.online = online;
        this.renderMembers();
      }
    });
    client.on("joined", ({ room, members }) => {
      if (room !== this.room) return;
      for (const member of members) this.members.set(member.user_id, member);
      this.renderMembers();
    });
    client.on("booking.updated", ({ booking_id, status }) => {
      if (booking_id === this.session.booking.id) this.setStatus(status, true);
    });
    document.addEventListener("visibilitychange", () => this.markReadIfVisible());

    // Join for live messages, then draw the latest page of history once.
    const joined = await client.join(this.room);
    if (joined.last_seq > 0) {
      const page = await client.history(this.room, { before: joined.last_seq + 1, limit: 50 });
      for (const message of [...page.messages].reverse()) this.render(message);
    }
    this.markReadIfVisible();

    const input = element<HTMLInputElement>("message-input");
    input.addEventListener("input", () => client.typing(this.room));
    element<HTMLFormElement>("composer").addEventListener("submit", (event) => {
      event.preventDefault();
      const body = input.value.trim();
      if (!body) return;
      input.value = "";
      this.send(body);
    });
  }

  private send(body: string): void {
    const clientId = newId();
    const item = this.item(body, true);
    item.classList.add("pending");
    item.dataset.clientId = clientId;
    item.querySelector(".meta")!.textContent = "sending…";
    this.pending.set(clientId, item);
    this.list.append(item);
    this.scrollDown();
    // The client resends with this client_id until acked: never twice stored.
    this.client.send(this.room, body, { clientId }).catch((error: unknown) => {
      item.querySelector(".meta")!.textContent =
        error instanceof MixroomError ? `not sent: ${error.message}` : "not sent";
    });
  }

  private item(body: string, mine: boolean): HTMLLIElement {
    const item = document.createElement("li");
    if (mine) item.classList.add("mine");
    const text = document.createElement("div");
    text.className = "body";
    text.textContent = body;
    const meta = document.createElement("div");
    meta.className = "meta";
    item.append(text, meta);
    return item;
  }

  /** Draws a stored message in seq order (history and live may overlap). */
  private render(message: ChatMessage): void {
    if (this.bySeq.has(message.seq)) return;
    const mine = message.sender.user_id === this.client.userId;
    const pending = message.client_id ? this.pending.get(message.client_id) : undefined;
    const item = pending ?? this.item(message.body, mine);
    if (pending && message.client_id) this.pending.delete(message.client_id);
    item.classList.remove("pending");
    item.dataset.seq = String(message.seq);
    item.dataset.testid = "message";
    if (message.sender.role === "system") item.classList.add("system");
    const meta = item.querySelector(".meta")!;
    meta.textContent =
      message.sender.role === "system" ? timeOf(message.sent_at) : `${mine ? "You" : message.sender.name} · ${timeOf(message.sent_at)}`;
    this.bySeq.set(message.seq, item);
    this.newestSeq = Math.max(this.newestSeq, message.seq);
    // Insert before the first rendered message with a larger seq.
    const later = [...this.bySeq.entries()].filter(([seq]) => seq > message.seq).sort(([a], [b]) => a - b)[0];
    if (later) this.list.insertBefore(item, later[1]);
    else if (!pending) this.list.insertBefore(item, this.list.querySelector("li.pending"));
    if (!mine) this.hideTyping(message.sender.user_id ?? "");
    this.renderReceipts();
    this.scrollDown();
  }

  private markReadIfVisible(): void {
    if (document.visibilityState === "visible" && this.newestSeq > 0) {
      this.client.markRead(this.room, this.newestSeq);
    }
  }

  /** "Seen by Sam" under the newest of my messages each reader has read. */
  private renderReceipts(): void {
    for (const receipt of this.list.querySelectorAll(".receipt")) receipt.remove();
    const names = new Map<HTMLLIElement, string[]>();
    for (const [userId, seq] of this.readUpTo) {
      const mine = [...this.bySeq.entries()]
        .filter(([s, item]) => s <= seq && item.classList.contains("mine"))
        .sort(([a], [b]) => b - a)[0];
      if (!mine) continue;
      const name = this.members.get(userId)?.name ?? "someone";
      names.set(mine[1], [...(names.get(mine[1]) ?? []), name]);
    }
    for (const [item, readers] of names) {
      const receipt = document.createElement("span");
      receipt.className = "receipt";
      receipt.dataset.testid = "receipt";
      receipt.textContent = `Seen by ${readers.sort().join(", ")}`;
      item.append(receipt);
    }
  }

  private showTyping(userId: string): void {
    clearTimeout(this.typingTimers.get(userId));
    this.typingTimers.set(userId, setTimeout(() => this.hideTyping(userId), TYPING_SHOWN_MS));
    this.renderTyping();
  }

  private hideTyping(userId: string): void {
    clearTimeout(this.typingTimers.get(userId));
    if (this.typingTimers.delete(userId)) this.renderTyping();
  }

  private renderTyping(): void {
    const names = [...this.typingTimers.keys()].map((id) => this.members.get(id)?.name ?? "Someone");
    this.typingLine.textContent =
      names.length === 0 ? "" : `${names.join(" and ")} ${names.length === 1 ? "is" : "are"} typing…`;
  }

  private renderMembers(): void {
    this.membersLine.replaceChildren(
      ...[...this.members.values()].map((member) => {
        const span = document.createElement("span");
        span.className = member.online ? "online" : "";
        span.dataset.testid = `member-${member.name.toLowerCase()}`;
        const dot = document.createElement("i");
        dot.className = "dot";
        span.append(dot, `${member.name}${member.user_id === this.client.userId ? " (you)" : ""}`);
        return span;
      }),
    );
  }

  private setStatus(status: string, flash: boolean): void {
    this.badge.textContent = status.replace(/_/g, " ");
    this.badge.className = `badge ${status}`;
    this.badge.dataset.status = status;
    if (flash) {
      void this.badge.offsetWidth; // restart the animation
      this.badge.classList.add("flash");
    }
    element<HTMLSelectElement>("status-select").value = status;
  }

  private scrollDown(): void {
    this.list.scrollTop = this.list.scrollHeight;
  }
}

// ---------------------------------------------------------------------------
// Notifications bell
// ---------------------------------------------------------------------------

class Bell {
  private readonly count = element("bell-count");
  private readonly panel = element("inbox");
  private readonly list = element<HTMLOListElement>("notifications");
  private unread = 0;

  constructor(private readonly client: MixroomClient) {}

  start(): void {
    // The server sends the counts right after every welcome.
    this.client.on("unread", ({ notifications }) => this.setUnread(notifications));
    this.client.on("notification", () => {
      this.setUnread(this.unread + 1);
      if (!this.panel.hidden) void this.load();
    });
    element("bell").addEventListener("click", () => {
      this.panel.hidden = !this.panel.hidden;
      if (!this.panel.hidden) void this.load();
    });
    element("read-all").addEventListener("click", () => {
      void this.client.markAllNotificationsRead().then(() => {
        this.setUnread(0);
        return this.load();
      });
    });
  }

  private setUnread(count: number): void {
    this.unread = count;
    this.count.textContent = count > 99 ? "99+" : String(count);
    this.count.hidden = count === 0;
  }

  private async load(): Promise<void> {
    const inbox = await this.client.notifications({ limit: 20 });
    this.setUnread(inbox.unread_count);
    this.list.replaceChildren(...inbox.notifications.map((n) => this.item(n)));
    if (inbox.notifications.length === 0) {
      const empty = document.createElement("li");
      empty.textContent = "Nothing yet.";
      this.list.append(empty);
    }
  }

  private item(notification: NotificationItem): HTMLLIElement {
    const item = document.createElement("li");
    if (!notification.read_at) item.classList.add("unread");
    const title = document.createElement("b");
    title.textContent = notification.title;
    const body = document.createElement("small");
    body.textContent = `${notification.body} · ${timeOf(notification.created_at)}`;
    item.append(title, body);
    return item;
  }
}

// ---------------------------------------------------------------------------
// Support widget
// ---------------------------------------------------------------------------

class SupportWidget {
  private readonly panel = element("support-panel");
  private readonly list = element<HTMLOListElement>("support-messages");
  private readonly note = element("support-note");
  private readonly form = element<HTMLFormElement>("support-form");
  private room: string | undefined;
  private opening: Promise<string | undefined> | undefined;
  /** Agent replies being streamed, by message id. */
  private readonly streaming = new Map<string, HTMLLIElement>();
  private readonly shown = new Set<string>();

  constructor(private readonly client: MixroomClient) {}

  start(): void {
    element("support").hidden = false;
    element("support-open").addEventListener("click", () => {
      this.panel.hidden = !this.panel.hidden;
      if (!this.panel.hidden) void this.open();
    });
    element("support-close").addEventListener("click", () => (this.panel.hidden = true));
    this.client.on("message.delta", ({ room, id, delta }) => {
      if (room !== this.room) return;
      let item = this.streaming.get(id);
      if (!item) {
        item = this.line("", "agent");
        item.classList.add("streaming");
        item.dataset.testid = "support-streaming";
        this.streaming.set(id, item);
      }
      item.textContent += delta;
      this.scrollDown();
    });
    this.client.on("message.aborted", ({ room, id }) => {
      const item = this.streaming.get(id);
      if (room !== this.room || !item) return;
      // The pieces will not become a message; a system notice explains why.
      this.streaming.delete(id);
      item.remove();
    });
    this.client.on("message", (message) => {
      if (message.room !== this.room || this.shown.has(message.id)) return;
      this.shown.add(message.id);
      const streamed = this.streaming.get(message.id);
      if (streamed) {
        // The complete reply replaces the pieces (same id).
        this.streaming.delete(message.id);
        streamed.classList.remove("streaming");
        streamed.dataset.testid = "support-answer";
        streamed.textContent = message.body;
        return;
      }
      const kind = message.sender.user_id === this.client.userId ? "mine" : message.sender.role;
      const item = this.line(message.body, kind);
      if (message.sender.role === "agent") item.dataset.testid = "support-answer";
    });
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      const input = element<HTMLInputElement>("support-input");
      const question = input.value.trim();
      if (!question) return;
      input.value = "";
      void this.open().then((room) => {
        if (room) void this.client.send(room, question);
      });
    });
  }

  /** Opens a conversation once; resolves with its room, or nothing when unavailable. */
  private open(): Promise<string | undefined> {
    this.opening ??= this.client
      .openSupportConversation()
      .then(async ({ room }) => {
        this.room = room;
        await this.client.join(room, { since: 0 });
        this.line("Ask anything about bookings, payments or your account.", "system");
        return room;
      })
      .catch((error: unknown) => {
        // Servers without the support route (404/405) still run the rest
        // of the demo; say so instead of failing.
        const status = error instanceof MixroomError ? error.status : undefined;
        this.note.textContent =
          status === 404 || status === 405
            ? "Support chat is not available on this server."
            : `Support is unavailable right now (${error instanceof Error ? error.message : String(error)}).`;
        this.note.hidden = false;
        this.form.hidden = true;
        this.opening = undefined;
        return undefined;
      });
    return this.opening;
  }

  private line(text: string, kind: string): HTMLLIElement {
    const item = document.createElement("li");
    item.className = kind;
    item.textContent = text;
    this.list.append(item);
    this.scrollDown();
    return item;
  }

  private scrollDown(): void {
    this.list.scrollTop = this.list.scrollHeight;
  }
}

// ---------------------------------------------------------------------------
// Start
// ---------------------------------------------------------------------------

async function start(userKey: string): Promise<void> {
  const first = await fetchSession(userKey);
  let fresh: string | undefined = first.token;
  const client = new MixroomClient({
    url: socketUrl(),
    // The first token comes with the session; later ones (reconnects and
    // refreshes before expiry) are minted again by the demo route — a real
    // app returns its Supabase session's access_token here.
    getToken: async () => {
      const token = fresh ?? (await fetchSession(userKey)).token;
      fresh = undefined;
      return token;
    },
  });
  // Exposed for poking around in the console.
  (window as unknown as { mixroom: MixroomClient }).mixroom = client;

  element("picker").hidden = true;
  element("app").hidden = false;
  element("who").hidden = false;
  element("me").textContent = `${first.user.name} · ${first.user.role.replace(/_/g, " ")}`;
  const pill = element("connection");
  const showState = (state: ConnectionState): void => {
    pill.textContent = state === "open" ? "live" : state;
    pill.className = `pill ${state}`;
    pill.dataset.state = state;
  };
  client.on("state", ({ state }) => showState(state));
  window.addEventListener("online", () => client.reconnectNow());

  const chat = new BookingChat(client, first);
  new Bell(client).start();
  new SupportWidget(client).start();
  element<HTMLFormElement>("status-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const status = element<HTMLSelectElement>("status-select").value;
    void fetch("/demo/booking", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ status }),
    });
  });
  element<HTMLButtonElement>("partial-refund").addEventListener("click", () => {
    void fetch("/demo/payment", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ event: "partial_refund" }),
    });
  });

  client.connect();
  await chat.start();
}

function main(): void {
  const pick = (user: string): void => {
    history.replaceState(null, "", `?as=${encodeURIComponent(user)}`);
    start(user).catch((error: unknown) => {
      element("picker").hidden = false;
      const shown = element("picker-error");
      shown.textContent = error instanceof Error ? error.message : String(error);
      shown.hidden = false;
    });
  };
  for (const button of document.querySelectorAll<HTMLButtonElement>("[data-user]")) {
    button.addEventListener("click", () => pick(button.dataset.user ?? ""));
  }
  const preset = new URLSearchParams(location.search).get("as");
  if (preset) pick(preset);
}

main();
