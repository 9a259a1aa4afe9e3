/**
 * The demo page's service worker, bundled into `demo/sw.js` by
 * `npm run build:demo` and served at `/demo-sw.js` (a path at the root, so
 * its scope, `/`, covers the page at `/`). It shows each Web Push the
 * server sends, and opens the notification's link when it is clicked.
 *
 * A push's payload (decrypted by the browser) is JSON:
 * `{"title","body","link","kind","tag"}`. It has no `fetch` handler: the
 * page's requests go to the network as if it were not there.
 */
export {};

declare const self: ServiceWorkerGlobalScope;

interface PushPayload {
  title: string;
  body: string;
  link: string | null;
  kind: string;
  tag: string | null;
}

/** What a notification carries to the click handler. */
interface ShownData {
  link: string | null;
}

self.addEventListener("install", () => {
  // Take over from an older version at once: the demo has no cached state
  // that a newer worker could disagree with.
  void self.skipWaiting();
});

self.addEventListener("activate", (event) => {
  event.waitUntil(self.clients.claim());
});

self.addEventListener("push", (event) => {
  const payload = readPayload(event.data);
  const options: NotificationOptions = {
    body: payload.body,
    data: { link: payload.link } satisfies ShownData,
  };
  // One notification per tag (e.g. per booking room): a newer push replaces
  // the older one instead of stacking up.
  if (payload.tag) options.tag = payload.tag;
  // With `userVisibleOnly` every push must show a notification, so this
  // always does, also when the payload could not be read.
  event.waitUntil(self.registration.showNotification(payload.title, options));
});

self.addEventListener("notificationclick", (event) => {
  event.notification.close();
  const data = event.notification.data as Partial<ShownData> | null;
  event.waitUntil(openOrFocus(typeof data?.link === "string" ? data.link : null));
});

/** The payload, with defaults for anything missing (an empty or non-JSON push still shows something). */
function readPayload(data: PushMessageData | null): PushPayload {
  let parsed: Record<string, unknown> = {};
  try {
    const value: unknown = data?.json();
    if (typeof value === "object" && value !== null) parsed = value as Record<string, unknown>;
  } catch {
    // Not JSON: the defaults below.
  }
  const text = (key: string): string | null => {
    const value = parsed[key];
    return typeof value === "string" && value !== "" ? value : null;
  };
  return {
    title: text("title") ?? "Mixroom",
    body: text("body") ?? "",
    link: text("link"),
    kind: text("kind") ?? "",
    tag: text("tag"),
  };
}

/**
 * Focuses a window already showing the link, else opens it in a new one.
 * With no link, focuses any window of this site (the demo page), else
 * opens the page. A relative link is taken relative to the worker's scope.
 */
async function openOrFocus(link: string | null): Promise<void> {
  const target = new URL(link ?? "./", self.registration.scope).href;
  // Also windows that loaded before this worker took over.
  const windows = await self.clients.matchAll({ type: "window", includeUncontrolled: true });
  const showing = windows.find((client) => client.url === target) ?? (link === null ? windows[0] : undefined);
  if (showing) {
    await showing.focus();
    return;
  }
  await self.clients.openWindow(target);
}
