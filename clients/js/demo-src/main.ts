/**
 * The demo page served by the server at `/` (when `server.demo = true`):
 * a booking chat with typing and read receipts, replies, reactions, edits,
 * deletions and file links, a live booking status
 * badge, a notifications bell, Web Push ("Enable notifications", with the
 * service worker in sw.ts) and the support widget — all through
 * `MixroomClient`. Bundled into `demo/app.js` by `npm run build:demo`.
 */
import {
  applyChange,
  applyChangeToQuote,
  MixroomClient,
  MixroomError,
  subscribeToPush,
  unsubscribeFromPush,
  type Attachment,
  type ChatMessage,
  type ConnectionState,
  type Member,
  type MessageChangeFrame,
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

/** Quick reactions offered under each message. */
const QUICK_REACTIONS = ["👍", "🎧", "🔥"];

/**
 * The chat's extra styles: the server's `demo/style.css` is compiled into
 * its binary, while this bundle is rebuilt with the client, so what the
 * message actions need comes with the bundle.
 */
const CHAT_STYLE = `
.messages li { position: relative; }
.messages .quote { border-left: 3px solid var(--accent); padding: 2px 8px; margin: 2px 0 4px; font-size: 12px; color: var(--muted); }
.messages .quote.deleted { font-style: italic; }
.messages li.deleted .body { font-style: italic; color: var(--muted); }
.messages .files { display: flex; flex-direction: column; gap: 2px; margin: 2px 0; }
.messages .files a { color: #b6a5ff; font-size: 13px; }
.messages .reactions { display: flex; gap: 4px; flex-wrap: wrap; margin: 4px 0 2px; }
.messages .chip { padding: 1px 8px; border-radius: 99px; font-size: 13px; background: var(--line); }
.messages .chip.mine { background: rgba(124,92,255,.35); }
.messages .actions { display: flex; gap: 2px; margin-top: 2px; opacity: .45; }
.messages li:hover .actions, .messages .actions:focus-within { opacity: 1; }
.messages .actions button { padding: 0 6px; font-size: 12px; background: transparent; color: var(--muted); }
.messages .actions button:hover { color: var(--text); }
.composer-bar { display: flex; justify-content: space-between; align-items: center; gap: 8px; font-size: 12px; color: var(--muted); border-left: 3px solid var(--accent); padding: 2px 8px; margin-top: 6px; }
.composer-bar span { overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.composer-bar button { padding: 0 6px; background: transparent; }
.attach-row { display: flex; gap: 8px; margin-top: 6px; }
.attach-row input { flex: 1; font-size: 13px; }
.chat-error { color: var(--bad); font-size: 12px; min-height: 0; }
`;

/** A guess at a linked file's media type, from its name. */
function mediaTypeOf(name: string): string {
  const types: Record<string, string> = {
    wav: "audio/wav", mp3: "audio/mpeg", flac: "audio/flac", aif: "audio/aiff", aiff: "audio/aiff",
    m4a: "audio/mp4", pdf: "application/pdf", zip: "application/zip", png: "image/png",
    jpg: "image/jpeg", jpeg: "image/jpeg", txt: "text/plain",
  };
  return types[name.split(".").pop()?.toLowerCase() ?? ""] ?? "application/octet-stream";
}

/** An attachment for a link to a file in Supabase Storage (its name from the path). */
function attachmentFor(url: string): Attachment {
  let name = "file";
  try {
    name = decodeURIComponent(new URL(url).pathname.split("/").filter(Boolean).pop() ?? "file") || "file";
  } catch {
    // Not a URL: the server says so.
  }
  // A link does not tell the file's size; an app that uploads it knows.
  return { url, name, size: 0, content_type: mediaTypeOf(name) };
}

function sizeOf(bytes: number): string {
  if (bytes <= 0) return "";
  const units = ["B", "KB", "MB", "GB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return ` (${value.toFixed(unit === 0 ? 0 : 1)} ${units[unit]})`;
}

class BookingChat {
  private readonly list = element<HTMLOListElement>("messages");
  private readonly typingLine = element("typing");
  private readonly membersLine = element("members");
  private readonly badge = element("status-badge");
  private readonly input = element<HTMLInputElement>("message-input");
  /** "Replying to …" / "Editing …" above the composer. */
  private readonly bar = document.createElement("div");
  private readonly attachRow = document.createElement("div");
  private readonly attachInput = document.createElement("input");
  private readonly errorLine = document.createElement("div");
  /** Stored messages as they stand, and their list items, by seq. */
  private readonly messages = new Map<number, ChatMessage>();
  private readonly bySeq = new Map<number, HTMLLIElement>();
  /** Not-yet-stored messages by client_id. */
  private readonly pending = new Map<string, HTMLLIElement>();
  /**
   * Changes seen live: a history page read before one of them arrived
   * shows the message as it was, so they are applied again when it comes.
   */
  private readonly liveChanges: MessageChangeFrame[] = [];
  private readonly members = new Map<string, Member>();
  /** Others' read positions, for "Seen by". */
  private readonly readUpTo = new Map<string, number>();
  private readonly typingTimers = new Map<string, ReturnType<typeof setTimeout>>();
  private newestSeq = 0;
  /** What the composer does next besides sending: answer a message, or edit one. */
  private mode: { kind: "reply" | "edit"; seq: number } | undefined;

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
    this.buildComposer();
    client.on("message", (message) => {
      if (message.room !== this.room) return;
      this.render(message);
      this.markReadIfVisible();
    });
    const onChange = (change: MessageChangeFrame): void => {
      if (change.room !== this.room) return;
      this.liveChanges.push(change);
      this.applyChange(change);
    };
    client.on("message.edited", onChange);
    client.on("message.deleted", onChange);
    client.on("message.reacted", onChange);
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

    // The composer works at once (the client queues what is sent before
    // the room is joined). Were its handler added only after the history
    // below, a quick Send would submit the form natively: a page reload.
    this.input.addEventListener("input", () => client.typing(this.room));
    this.input.addEventListener("keydown", (event) => {
      if (event.key === "Escape") this.setMode(undefined);
    });
    element<HTMLFormElement>("composer").addEventListener("submit", (event) => {
      event.preventDefault();
      const body = this.input.value.trim();
      if (!body) return;
      this.submit(body);
    });

    // Join for live messages, then draw the latest page of history once.
    const joined = await client.join(this.room);
    if (joined.last_seq > 0) {
      const page = await client.history(this.room, { before: joined.last_seq + 1, limit: 50 });
      for (const message of [...page.messages].reverse()) this.render(message);
    }
    this.markReadIfVisible();
  }

  /** The reply/edit bar, the attach row and the error line around the composer. */
  private buildComposer(): void {
    const style = document.createElement("style");
    style.textContent = CHAT_STYLE;
    document.head.append(style);
    const composer = element<HTMLFormElement>("composer");

    this.bar.className = "composer-bar";
    this.bar.dataset.testid = "composer-bar";
    this.bar.hidden = true;

    const attach = document.createElement("button");
    attach.type = "button";
    attach.textContent = "📎";
    attach.title = "Attach a link to a file";
    attach.dataset.testid = "attach";
    attach.addEventListener("click", () => {
      this.attachRow.hidden = !this.attachRow.hidden;
      if (!this.attachRow.hidden) this.attachInput.focus();
    });
    composer.insertBefore(attach, composer.querySelector("button[type=submit]"));

    this.attachRow.className = "attach-row";
    this.attachRow.hidden = true;
    this.attachInput.dataset.testid = "attach-url";
    this.attachInput.type = "url";
    this.attachInput.placeholder = "https://<project>.supabase.co/storage/v1/object/sign/…/take3.wav?token=…";
    this.attachInput.autocomplete = "off";
    const clear = document.createElement("button");
    clear.type = "button";
    clear.textContent = "×";
    clear.setAttribute("aria-label", "No attachment");
    clear.addEventListener("click", () => {
      this.attachInput.value = "";
      this.attachRow.hidden = true;
    });
    this.attachRow.append(this.attachInput, clear);

    this.errorLine.className = "chat-error";
    this.errorLine.dataset.testid = "chat-error";
    this.errorLine.setAttribute("aria-live", "polite");
    composer.before(this.bar, this.attachRow);
    composer.after(this.errorLine);
  }

  private setMode(mode: BookingChat["mode"]): void {
    const wasEditing = this.mode?.kind === "edit";
    this.mode = mode;
    const message = mode ? this.messages.get(mode.seq) : undefined;
    if (!mode || !message) {
      this.mode = undefined;
      this.bar.hidden = true;
      if (wasEditing) this.input.value = "";
      return;
    }
    const label = document.createElement("span");
    const cancel = document.createElement("button");
    cancel.type = "button";
    cancel.textContent = "×";
    cancel.setAttribute("aria-label", "Cancel");
    cancel.dataset.testid = "composer-cancel";
    cancel.addEventListener("click", () => this.setMode(undefined));
    if (mode.kind === "reply") {
      label.textContent = `Replying to ${this.nameOf(message)}: ${message.body}`;
      if (wasEditing) this.input.value = "";
    } else {
      label.textContent = "Editing your message (Esc to cancel)";
      this.input.value = message.body;
    }
    this.bar.replaceChildren(label, cancel);
    this.bar.hidden = false;
    this.input.focus();
  }

  /** Sends, answers or edits, as the composer's mode says. */
  private submit(body: string): void {
    const mode = this.mode;
    this.input.value = "";
    this.setMode(undefined);
    this.showError(undefined);
    if (mode?.kind === "edit") {
      this.act(this.client.edit(this.room, mode.seq, body));
      return;
    }
    const url = this.attachInput.value.trim();
    this.attachInput.value = "";
    this.attachRow.hidden = true;
    this.send(body, mode?.seq, url ? [attachmentFor(url)] : undefined);
  }

  private send(body: string, replyTo: number | undefined, attachments: Attachment[] | undefined): void {
    const clientId = newId();
    const item = this.item(true);
    item.classList.add("pending");
    item.dataset.clientId = clientId;
    item.querySelector(".body")!.textContent = body;
    item.querySelector(".meta")!.textContent = "sending…";
    this.pending.set(clientId, item);
    this.list.append(item);
    this.scrollDown();
    // The client resends with this client_id until acked: never twice stored.
    const options = {
      clientId,
      ...(replyTo !== undefined ? { replyTo } : {}),
      ...(attachments ? { attachments } : {}),
    };
    this.client.send(this.room, body, options).catch((error: unknown) => {
      item.querySelector(".meta")!.textContent =
        error instanceof MixroomError ? `not sent: ${error.message}` : "not sent";
    });
  }

  /** An edit, deletion or reaction: the change shows when the server's frame comes; a refusal shows below the composer. */
  private act(change: Promise<unknown>): void {
    change.catch((error: unknown) => this.showError(error instanceof Error ? error.message : String(error)));
  }

  private showError(text: string | undefined): void {
    this.errorLine.textContent = text ?? "";
  }

  private item(mine: boolean): HTMLLIElement {
    const item = document.createElement("li");
    if (mine) item.classList.add("mine");
    const text = document.createElement("div");
    text.className = "body";
    const meta = document.createElement("div");
    meta.className = "meta";
    item.append(text, meta);
    return item;
  }

  /** Draws a stored message in seq order (history and live may overlap). */
  private render(incoming: ChatMessage): void {
    if (this.bySeq.has(incoming.seq)) return;
    const message = this.withLiveChanges(incoming);
    const mine = message.sender.user_id === this.client.userId;
    const pending = message.client_id ? this.pending.get(message.client_id) : undefined;
    const item = pending ?? this.item(mine);
    if (pending && message.client_id) this.pending.delete(message.client_id);
    item.classList.remove("pending");
    item.dataset.seq = String(message.seq);
    item.dataset.testid = "message";
    if (message.sender.role === "system") item.classList.add("system");
    this.messages.set(message.seq, message);
    this.bySeq.set(message.seq, item);
    this.draw(item, message);
    this.newestSeq = Math.max(this.newestSeq, message.seq);
    // Insert before the first rendered message with a larger seq.
    const later = [...this.bySeq.entries()].filter(([seq]) => seq > message.seq).sort(([a], [b]) => a - b)[0];
    if (later) this.list.insertBefore(item, later[1]);
    else if (!pending) this.list.insertBefore(item, this.list.querySelector("li.pending"));
    if (!mine) this.hideTyping(message.sender.user_id ?? "");
    this.renderReceipts();
    this.scrollDown();
  }

  /** A message from a history page, with the changes seen live that the page may predate. */
  private withLiveChanges(message: ChatMessage): ChatMessage {
    let result = message;
    for (const change of this.liveChanges) {
      result = applyChange(result, change);
      if (change.seq > message.seq) result = applyChangeToQuote(result, change);
    }
    return result;
  }

  /** An edit, deletion or reaction: the message it names and the quotes of replies to it. */
  private applyChange(change: MessageChangeFrame): void {
    for (const [seq, message] of this.messages) {
      let updated = applyChange(message, change);
      if (seq < change.seq) updated = applyChangeToQuote(updated, change);
      if (updated === message) continue;
      this.messages.set(seq, updated);
      const item = this.bySeq.get(seq);
      if (item) this.draw(item, updated);
    }
    if (this.mode && this.messages.get(this.mode.seq)?.deleted_at !== undefined) this.setMode(undefined);
    this.renderReceipts();
  }

  private nameOf(message: ChatMessage): string {
    return message.sender.user_id === this.client.userId ? "you" : message.sender.name;
  }

  /** The item's content from the message as it stands. */
  private draw(item: HTMLLIElement, message: ChatMessage): void {
    const mine = message.sender.user_id === this.client.userId;
    const system = message.sender.role === "system";
    const deleted = message.deleted_at !== undefined;
    item.classList.toggle("deleted", deleted);
    const parts: HTMLElement[] = [];

    const quote = message.reply_to;
    if (quote) {
      const shown = document.createElement("div");
      shown.className = quote.deleted ? "quote deleted" : "quote";
      shown.dataset.testid = "quote";
      const who = quote.sender.user_id === this.client.userId ? "You" : quote.sender.name || "Someone";
      shown.textContent = quote.deleted ? `↩ ${who}: message deleted` : `↩ ${who}: ${quote.excerpt}`;
      parts.push(shown);
    }

    const body = document.createElement("div");
    body.className = "body";
    body.dataset.testid = "body";
    body.textContent = deleted ? "Message deleted" : message.body;
    parts.push(body);

    if (message.attachments?.length) {
      const files = document.createElement("div");
      files.className = "files";
      for (const file of message.attachments) {
        const link = document.createElement("a");
        link.href = file.url;
        link.target = "_blank";
        link.rel = "noopener noreferrer";
        link.dataset.testid = "attachment";
        link.textContent = `📎 ${file.name}${sizeOf(file.size)}`;
        files.append(link);
      }
      parts.push(files);
    }

    if (message.reactions?.length) {
      const chips = document.createElement("div");
      chips.className = "reactions";
      for (const reaction of message.reactions) {
        const own = this.client.userId !== undefined && reaction.user_ids.includes(this.client.userId);
        const chip = document.createElement("button");
        chip.type = "button";
        chip.className = own ? "chip mine" : "chip";
        chip.dataset.testid = "reaction";
        chip.dataset.emoji = reaction.emoji;
        chip.title = reaction.user_ids.map((id) => this.members.get(id)?.name ?? "someone").join(", ");
        chip.textContent = `${reaction.emoji} ${reaction.count}`;
        chip.addEventListener("click", () => this.act(this.client.react(this.room, message.seq, reaction.emoji, !own)));
        chips.append(chip);
      }
      parts.push(chips);
    }

    const meta = document.createElement("div");
    meta.className = "meta";
    const when = timeOf(message.sent_at);
    meta.textContent =
      (system ? when : `${mine ? "You" : message.sender.name} · ${when}`) +
      (message.edited_at !== undefined && !deleted ? " · edited" : "");
    parts.push(meta);

    if (!system && !deleted) parts.push(this.actions(message, mine));
    item.replaceChildren(...parts);
  }

  /** Reply, quick reactions, and for one's own message edit and delete. */
  private actions(message: ChatMessage, mine: boolean): HTMLElement {
    const row = document.createElement("div");
    row.className = "actions";
    const button = (label: string, testid: string, title: string, onClick: () => void): void => {
      const action = document.createElement("button");
      action.type = "button";
      action.textContent = label;
      action.title = title;
      action.dataset.testid = testid;
      action.addEventListener("click", onClick);
      row.append(action);
    };
    button("Reply", "reply", "Reply", () => this.setMode({ kind: "reply", seq: message.seq }));
    for (const emoji of QUICK_REACTIONS) {
      const own = message.reactions?.some((r) => r.emoji === emoji && this.client.userId !== undefined && r.user_ids.includes(this.client.userId));
      button(emoji, `react-${emoji}`, own ? `Take back ${emoji}` : `React ${emoji}`, () =>
        this.act(this.client.react(this.room, message.seq, emoji, !own)),
      );
    }
    if (mine) {
      button("Edit", "edit", "Edit (within 15 minutes)", () => this.setMode({ kind: "edit", seq: message.seq }));
      button("Delete", "delete", "Delete", () => this.act(this.client.deleteMessage(this.room, message.seq)));
    }
    return row;
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
// Web Push
// ---------------------------------------------------------------------------

/**
 * Where the server serves `demo/sw.js` (built from demo-src/sw.ts). At the
 * root: a worker's scope can be no wider than its script's folder, and
 * this one's must cover the page at `/`.
 */
const SERVICE_WORKER_URL = "/demo-sw.js";

/** Styles of the push toggle (the bundle brings its own, like CHAT_STYLE). */
const PUSH_STYLE = `
.push { display: flex; align-items: center; gap: 6px; font-size: 12px; color: var(--muted); }
.push button { padding: 4px 10px; font-size: 12px; }
.push[data-state="on"] button { background: rgba(47,191,113,.15); color: var(--ok); }
.push[data-state="denied"] span, .push[data-state="disabled"] span, .push[data-state="error"] span { color: var(--warn); }
`;

/** What the toggle shows: on, off, or why it is off. */
type PushState = "on" | "off" | "denied" | "disabled" | "unsupported" | "error";

/**
 * "Enable notifications": registers the service worker and subscribes this
 * browser for the signed-in user with `subscribeToPush()`; once on, the
 * same button turns it off with `unsubscribeFromPush()`. The server then
 * pushes what arrives while the user has no page open.
 */
class PushToggle {
  private readonly box = document.createElement("span");
  private readonly button = document.createElement("button");
  private readonly status = document.createElement("span");
  private state: PushState = "off";

  constructor(private readonly client: MixroomClient) {}

  start(): void {
    const style = document.createElement("style");
    style.textContent = PUSH_STYLE;
    document.head.append(style);
    this.box.className = "push";
    this.box.dataset.testid = "push";
    this.button.type = "button";
    this.button.dataset.testid = "push-toggle";
    this.status.dataset.testid = "push-status";
    this.status.setAttribute("aria-live", "polite");
    this.box.append(this.button, this.status);
    element("bell").before(this.box);

    // Service workers (and so push) exist only on https pages and localhost.
    if (!("serviceWorker" in navigator) || !("PushManager" in window) || !("Notification" in window)) {
      this.show("unsupported", window.isSecureContext ? "no Web Push in this browser" : "needs https (or localhost)");
      this.button.disabled = true;
      return;
    }
    if (Notification.permission === "denied") this.show("denied", "blocked in this browser's site settings");
    else this.show("off", "");
    this.button.addEventListener("click", () => void this.toggle());
  }

  private async toggle(): Promise<void> {
    this.button.disabled = true;
    try {
      if (this.state === "on") await this.disable();
      else await this.enable();
    } finally {
      this.button.disabled = false;
    }
  }

  private async enable(): Promise<void> {
    this.show(this.state, "asking…");
    try {
      await navigator.serviceWorker.register(SERVICE_WORKER_URL, { scope: "/" });
    } catch (error) {
      // A 404 here: the server does not serve the worker (an older binary).
      this.show("error", `could not load ${SERVICE_WORKER_URL}: ${messageOf(error)}`);
      return;
    }
    try {
      // subscribe() needs an active worker; on the first visit it is still
      // installing, and `ready` waits for it.
      const registration = await navigator.serviceWorker.ready;
      const { created } = await subscribeToPush(registration, { client: this.client });
      this.show("on", created ? "notifications on" : "notifications on (already registered)");
    } catch (error) {
      if (error instanceof MixroomError && error.code === "push_denied") {
        this.show("denied", "blocked: allow notifications for this site in the browser");
      } else if (error instanceof MixroomError && error.code === "push_disabled") {
        this.show("disabled", "the server has push turned off");
      } else if (error instanceof MixroomError && error.code === "too_many") {
        this.show("error", "too many browsers registered for you: turn one off");
      } else if (error instanceof MixroomError && error.code === "push_unsupported") {
        this.show("unsupported", "no Web Push in this browser");
      } else {
        // E.g. no push service reachable (headless browsers have none).
        this.show("error", `the browser could not subscribe: ${messageOf(error)}`);
      }
    }
  }

  private async disable(): Promise<void> {
    try {
      const registration = await navigator.serviceWorker.getRegistration("/");
      if (registration) await unsubscribeFromPush(registration, { client: this.client });
      this.show("off", "notifications off");
    } catch (error) {
      // Still subscribed: the button stays "Turn off" for another try.
      this.show("on", `could not turn off: ${messageOf(error)}`);
    }
  }

  private show(state: PushState, text: string): void {
    this.state = state;
    this.box.dataset.state = state;
    this.button.textContent = state === "on" ? "Turn off notifications" : "Enable notifications";
    this.status.textContent = text;
  }
}

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
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
  new PushToggle(client).start();
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
