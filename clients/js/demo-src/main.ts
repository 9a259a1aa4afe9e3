/**
 * The demo page served by the server at `/` (when `server.demo = true`):
 * a booking chat with typing and read receipts, a live booking status
 * badge, a notifications bell and the support widget. The chat and the
 * support widget each draw one `RoomView` snapshot (history, live
 * messages, pending sends, members, typing, reads); the page keeps no
 * chat state of its own. Bundled into `demo/app.js` by `npm run build:demo`.
 */
import {
  MixroomClient,
  MixroomError,
  type ChatMessage,
  type ConnectionState,
  type Member,
  type NotificationItem,
  type PendingSend,
  type RoomSnapshot,
  type RoomView,
} from "../src/index.js";

interface DemoPerson {
  key: string;
  id: string;
  name: string;
  role: string;
}

/** The answer of `POST /demo/session`. */
interface DemoSession {
  token: string;
  expires_in: number;
  user: DemoPerson;
  people: DemoPerson[];
  booking: { id: string; room: string; title: string; status: string };
}

function element<T extends HTMLElement = HTMLElement>(id: string): T {
  const found = document.getElementById(id);
  if (!found) throw new Error(`#${id} is missing from the page`);
  return found as T;
}

function make<K extends keyof HTMLElementTagNameMap>(tag: K, className = "", text = ""): HTMLElementTagNameMap[K] {
  const made = document.createElement(tag);
  if (className) made.className = className;
  if (text) made.textContent = text;
  return made;
}

function post(path: string, body: unknown): Promise<Response> {
  return fetch(path, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
}

/** `POST /demo/session`: a token for a demo user, and the demo booking. */
async function fetchSession(user: string): Promise<DemoSession> {
  const response = await post("/demo/session", { user });
  if (!response.ok) throw new Error(`POST /demo/session: ${response.status} ${await response.text()}`);
  return (await response.json()) as DemoSession;
}

function timeOf(iso: string): string {
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? "" : date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

/**
 * Makes `list` show one element per entry, in order: an entry whose key
 * was shown before keeps its element (`draw` gets it to update).
 */
function drawList<T>(
  list: HTMLElement,
  shown: Map<string, HTMLElement>,
  entries: readonly T[],
  key: (entry: T) => string,
  draw: (entry: T, previous: HTMLElement | undefined) => HTMLElement,
): void {
  const next = new Map<string, HTMLElement>();
  for (const entry of entries) next.set(key(entry), draw(entry, shown.get(key(entry))));
  list.replaceChildren(...next.values());
  shown.clear();
  for (const [k, item] of next) shown.set(k, item);
  list.scrollTop = list.scrollHeight;
}

// ---------------------------------------------------------------------------
// Booking chat: one room view, drawn whole on every change
// ---------------------------------------------------------------------------

class BookingChat {
  private readonly list = element<HTMLOListElement>("messages");
  private readonly shown = new Map<string, HTMLElement>();
  private readonly room: RoomView;
  private drawn: RoomSnapshot | undefined;

  constructor(
    client: MixroomClient,
    private readonly session: DemoSession,
  ) {
    element("booking-title").textContent = session.booking.title;
    setStatus(session.booking.status, false);
    this.room = client.room(session.booking.room);
    this.room.subscribe(() => this.draw(this.room.getSnapshot()));
    this.draw(this.room.getSnapshot());
    client.on("booking.updated", ({ booking_id, status }) => {
      if (booking_id === session.booking.id) setStatus(status, true);
    });
    document.addEventListener("visibilitychange", () => this.markReadIfVisible(this.room.getSnapshot()));
    const input = element<HTMLInputElement>("message-input");
    input.addEventListener("input", () => this.room.typing());
    element<HTMLFormElement>("composer").addEventListener("submit", (event) => {
      event.preventDefault();
      const body = input.value.trim();
      input.value = "";
      if (body) this.room.send(body); // pending at once; resent with its client_id until stored
    });
  }

  private draw(now: RoomSnapshot): void {
    const before = this.drawn;
    this.drawn = now;
    if (now.members !== before?.members) this.drawMembers(now);
    if (now.typing !== before?.typing || now.members !== before?.members) {
      const names = now.typing.map((id) => this.nameOf(now, id));
      element("typing").textContent =
        names.length === 0 ? "" : `${names.join(" and ")} ${names.length === 1 ? "is" : "are"} typing…`;
    }
    if (now.messages !== before?.messages || now.pending !== before?.pending || now.reads !== before?.reads) {
      type Entry = { message: ChatMessage } | { pending: PendingSend };
      const entries: Entry[] = [
        ...now.messages.map((message) => ({ message })),
        ...now.pending.map((pending) => ({ pending })),
      ];
      drawList(
        this.list,
        this.shown,
        entries,
        (entry) => ("message" in entry ? `seq:${entry.message.seq}` : `pending:${entry.pending.clientId}`),
        (entry, previous) =>
          "message" in entry ? (previous ?? this.storedItem(now, entry.message)) : this.pendingItem(entry.pending),
      );
      this.drawReceipts(now);
    }
    this.markReadIfVisible(now);
  }

  private storedItem(now: RoomSnapshot, message: ChatMessage): HTMLElement {
    const mine = message.sender.user_id === now.userId;
    const system = message.sender.role === "system";
    const item = make("li", [mine ? "mine" : "", system ? "system" : ""].join(" ").trim());
    item.dataset.testid = "message";
    item.dataset.seq = String(message.seq);
    const who = system ? "" : `${mine ? "You" : message.sender.name} · `;
    item.append(make("div", "body", message.body), make("div", "meta", `${who}${timeOf(message.sent_at)}`));
    return item;
  }

  private pendingItem(pending: PendingSend): HTMLElement {
    const item = make("li", "mine pending");
    item.dataset.testid = "pending-message";
    item.dataset.clientId = pending.clientId;
    const meta =
      pending.state === "failed"
        ? `not sent: ${pending.error?.message ?? "refused"}`
        : pending.state === "retrying" ? "waiting to resend…" : "sending…";
    item.append(make("div", "body", pending.body), make("div", "meta", meta));
    return item;
  }

  /** "Seen by Sam" under the newest of my messages each other reader has read. */
  private drawReceipts(now: RoomSnapshot): void {
    for (const receipt of this.list.querySelectorAll(".receipt")) receipt.remove();
    const readers = new Map<number, string[]>();
    for (const [userId, seq] of Object.entries(now.reads)) {
      if (userId === now.userId) continue;
      const newestMine = [...now.messages].reverse().find((m) => m.seq <= seq && m.sender.user_id === now.userId);
      if (newestMine) readers.set(newestMine.seq, [...(readers.get(newestMine.seq) ?? []), this.nameOf(now, userId)]);
    }
    for (const [seq, names] of readers) {
      const receipt = make("span", "receipt", `Seen by ${names.sort().join(", ")}`);
      receipt.dataset.testid = "receipt";
      this.shown.get(`seq:${seq}`)?.append(receipt);
    }
  }

  private drawMembers(now: RoomSnapshot): void {
    // Before the first `joined`: the demo's people, offline.
    const members: readonly Member[] =
      now.members.length > 0
        ? now.members
        : this.session.people.map((p) => ({ user_id: p.id, name: p.name, role: p.role, online: false }));
    element("members").replaceChildren(
      ...members.map((member) => {
        const span = make("span", member.online ? "online" : "");
        span.dataset.testid = `member-${member.name.toLowerCase()}`;
        span.append(make("i", "dot"), `${member.name}${member.user_id === now.userId ? " (you)" : ""}`);
        return span;
      }),
    );
  }

  private nameOf(now: RoomSnapshot, userId: string): string {
    return now.members.find((m) => m.user_id === userId)?.name ?? "Someone";
  }

  private markReadIfVisible(now: RoomSnapshot): void {
    if (document.visibilityState === "visible" && now.lastSeq > now.readSeq) this.room.markRead(now.lastSeq);
  }
}

function setStatus(status: string, flash: boolean): void {
  const badge = element("status-badge");
  badge.textContent = status.replace(/_/g, " ");
  badge.className = `badge ${status}`;
  badge.dataset.status = status;
  if (flash) {
    void badge.offsetWidth; // restart the animation
    badge.classList.add("flash");
  }
  element<HTMLSelectElement>("status-select").value = status;
}

// ---------------------------------------------------------------------------
// Notifications bell
// ---------------------------------------------------------------------------

function startBell(client: MixroomClient): void {
  const count = element("bell-count");
  const panel = element("inbox");
  let unread = 0;
  const setUnread = (value: number): void => {
    unread = value;
    count.textContent = value > 99 ? "99+" : String(value);
    count.hidden = value === 0;
  };
  const load = async (): Promise<void> => {
    const inbox = await client.notifications({ limit: 20 });
    setUnread(inbox.unread_count);
    const items = inbox.notifications.map((n: NotificationItem) => {
      const item = make("li", n.read_at ? "" : "unread");
      item.append(make("b", "", n.title), make("small", "", `${n.body} · ${timeOf(n.created_at)}`));
      return item;
    });
    element("notifications").replaceChildren(...(items.length > 0 ? items : [make("li", "", "Nothing yet.")]));
  };
  // The server sends the counts right after every welcome.
  client.on("unread", ({ notifications }) => setUnread(notifications));
  client.on("notification", () => {
    setUnread(unread + 1);
    if (!panel.hidden) void load();
  });
  element("bell").addEventListener("click", () => {
    panel.hidden = !panel.hidden;
    if (!panel.hidden) void load();
  });
  element("read-all").addEventListener("click", () => {
    void client.markAllNotificationsRead().then(() => {
      setUnread(0);
      return load();
    });
  });
}

// ---------------------------------------------------------------------------
// Support widget: a room view of the user's support conversation
// ---------------------------------------------------------------------------

function startSupport(client: MixroomClient): void {
  const panel = element("support-panel");
  const list = element<HTMLOListElement>("support-messages");
  const note = element("support-note");
  const form = element<HTMLFormElement>("support-form");
  const intro = make("li", "system", "Ask anything about bookings, payments or your account.");
  const shown = new Map<string, HTMLElement>();
  let opening: Promise<RoomView | undefined> | undefined;

  const draw = (now: RoomSnapshot): void => {
    type Entry = { key: string; text: string; kind: string; testid?: string };
    const entries: Entry[] = [
      { key: "intro", text: "", kind: "" },
      ...now.messages.map((m) => ({
        key: `seq:${m.seq}`,
        text: m.body,
        kind: m.sender.user_id === now.userId ? "mine" : m.sender.role,
        ...(m.sender.role === "agent" ? { testid: "support-answer" } : {}),
      })),
      ...now.pending.map((p) => ({ key: `pending:${p.clientId}`, text: p.body, kind: "mine pending" })),
      ...now.streaming.map((s) => ({ key: `streaming:${s.id}`, text: s.body, kind: "agent streaming", testid: "support-streaming" })),
    ];
    drawList(list, shown, entries, (e) => e.key, (entry, previous) => {
      if (entry.key === "intro") return intro;
      const item = previous ?? make("li", entry.kind);
      item.className = entry.kind;
      if (entry.testid) item.dataset.testid = entry.testid;
      if (item.textContent !== entry.text) item.textContent = entry.text;
      return item;
    });
  };

  /** Opens a conversation once; resolves with its room view, or nothing when unavailable. */
  const open = (): Promise<RoomView | undefined> =>
    (opening ??= client
      .openSupportConversation()
      .then(({ room }) => {
        const view = client.room(room);
        view.subscribe(() => draw(view.getSnapshot()));
        draw(view.getSnapshot());
        return view;
      })
      .catch((error: unknown) => {
        // Servers without the support route (404/405) still run the rest
        // of the demo; say so instead of failing.
        const status = error instanceof MixroomError ? error.status : undefined;
        note.textContent =
          status === 404 || status === 405
            ? "Support chat is not available on this server."
            : `Support is unavailable right now (${error instanceof Error ? error.message : String(error)}).`;
        note.hidden = false;
        form.hidden = true;
        opening = undefined;
        return undefined;
      }));

  element("support").hidden = false;
  element("support-open").addEventListener("click", () => {
    panel.hidden = !panel.hidden;
    if (!panel.hidden) void open();
  });
  element("support-close").addEventListener("click", () => (panel.hidden = true));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const input = element<HTMLInputElement>("support-input");
    const question = input.value.trim();
    input.value = "";
    if (question) void open().then((view) => view?.send(question));
  });
}

// ---------------------------------------------------------------------------
// Start
// ---------------------------------------------------------------------------

async function start(userKey: string): Promise<void> {
  const first = await fetchSession(userKey);
  let fresh: string | undefined = first.token;
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const client = new MixroomClient({
    url: `${scheme}//${location.host}/v1/ws`,
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
    pill.textContent = state === "open" ? "live" : state === "unauthorized" ? "signed out" : state;
    pill.className = `pill ${state}`;
    pill.dataset.state = state;
  };
  client.on("state", ({ state }) => showState(state));
  window.addEventListener("online", () => client.reconnectNow());

  new BookingChat(client, first);
  startBell(client);
  startSupport(client);
  element<HTMLFormElement>("status-form").addEventListener("submit", (event) => {
    event.preventDefault();
    void post("/demo/booking", { status: element<HTMLSelectElement>("status-select").value });
  });
  element<HTMLButtonElement>("partial-refund").addEventListener("click", () => {
    void post("/demo/payment", { event: "partial_refund" });
  });
  client.connect();
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
