/**
 * Web Push in the browser: subscribe this browser with the server's VAPID
 * key and register the subscription for the signed-in user, or undo both.
 *
 * The server pushes a notification or chat message to a user with no live
 * session at once (the email still follows if it stays unread); the app's
 * service worker shows it. These helpers only talk to the browser's
 * `PushManager` and to the server's routes, through a `MixroomClient`
 * (its token and HTTP base URL; it need not be connected).
 *
 * Nothing here touches a browser global until a helper is called.
 */
import { base64UrlToBytes, bytesToBase64Url } from "./base64url.js";
import type { MixroomClient, PushSubscriptionBody } from "./client.js";
import { MixroomError } from "./errors.js";

export interface PushOptions {
  /** The client whose token and server the requests use. */
  client: MixroomClient;
}

export interface PushSubscribed {
  /** The browser's subscription, registered with the server. */
  subscription: PushSubscription;
  /** True when the server stored it now (201), false when it had it already (200). */
  created: boolean;
  /** True when the browser's existing subscription (made with the same key) was kept. */
  reused: boolean;
}

/**
 * Subscribes this browser to Web Push and registers the subscription with
 * the server for the client's user; resolves with the subscription.
 *
 * 1. `GET /v1/push/vapid-public-key` — first, so that a server with push
 *    turned off rejects (`push_disabled`) before the user is asked anything;
 * 2. keeps the browser's existing subscription if it was made with that
 *    key; one made with another key (the server's key changed) is
 *    unsubscribed and replaced, and the server told to forget it;
 * 3. `pushManager.subscribe({ userVisibleOnly: true, applicationServerKey })`,
 *    which asks the user for permission if they have not answered yet;
 * 4. `POST /v1/me/push-subscriptions` with `{ endpoint, keys: { p256dh, auth } }`.
 *
 * Safe to call again (e.g. on every sign-in once permission is granted):
 * the same subscription is registered once. Call it first from a click
 * handler: browsers only ask for permission after a user gesture.
 *
 * Rejects with a `MixroomError` whose `code` is `push_disabled` (the
 * server has push off), `push_denied` (notifications blocked),
 * `push_unsupported` (no `PushManager`), `too_many` (the user has as many
 * subscriptions as the server allows) or `http` (anything else the server
 * refused); a browser failure (e.g. no push service reachable) is passed
 * on as the browser's own error.
 */
export async function subscribeToPush(
  registration: ServiceWorkerRegistration,
  options: PushOptions,
): Promise<PushSubscribed> {
  const { client } = options;
  const pushManager = pushManagerOf(registration);
  const applicationServerKey = vapidKeyBytes(await client.pushPublicKey());
  // Asking again once the user said no does nothing in any browser: say so
  // rather than let subscribe() fail with a vaguer error.
  if (notificationPermission() === "denied") {
    throw new MixroomError("push_denied", "notifications are blocked for this site");
  }

  let subscription = await pushManager.getSubscription();
  const reused = subscription !== null && sameKey(subscription, applicationServerKey);
  let replaced: string | undefined;
  if (subscription && !reused) {
    // The browser refuses a second subscription with a different key, so
    // the old one goes first.
    replaced = subscription.endpoint;
    await subscription.unsubscribe();
    subscription = null;
  }
  if (!subscription) {
    try {
      subscription = await pushManager.subscribe({ userVisibleOnly: true, applicationServerKey });
    } catch (error) {
      // Browsers say no with NotAllowedError; some with another error
      // once the user has blocked notifications at the prompt.
      if (isDomError(error, "NotAllowedError") || notificationPermission() === "denied") {
        throw new MixroomError("push_denied", "the user did not allow notifications");
      }
      throw error;
    }
  }
  if (replaced !== undefined && replaced !== subscription.endpoint) {
    // Best effort: the push service would answer the next push to it with
    // 410 and the server would drop it then; until that it would count
    // towards the user's limit.
    await client.removePushSubscription(replaced).catch(() => undefined);
  }

  const { created } = await client.addPushSubscription(subscriptionBody(subscription));
  return { subscription, created, reused };
}

/**
 * Undoes `subscribeToPush()`: `DELETE /v1/me/push-subscriptions?endpoint=…`,
 * then `subscription.unsubscribe()`. Resolves false when the browser had no
 * subscription. The server is told first: if that fails, the browser keeps
 * the subscription, so calling again can still name it.
 */
export async function unsubscribeFromPush(
  registration: ServiceWorkerRegistration,
  options: PushOptions,
): Promise<boolean> {
  const subscription = await pushManagerOf(registration).getSubscription();
  if (!subscription) return false;
  await options.client.removePushSubscription(subscription.endpoint);
  await subscription.unsubscribe();
  return true;
}

/**
 * A VAPID public key as `applicationServerKey` wants it: the base64url
 * text decoded to the 65 bytes of an uncompressed P-256 point (0x04, x, y).
 * Throws a `MixroomError` (`invalid`) for anything else.
 */
export function vapidKeyBytes(publicKey: string): Uint8Array<ArrayBuffer> {
  let bytes: Uint8Array<ArrayBuffer>;
  try {
    bytes = base64UrlToBytes(publicKey);
  } catch {
    throw new MixroomError("invalid", "the server's VAPID public key is not base64url");
  }
  if (bytes.length !== 65 || bytes[0] !== 0x04) {
    throw new MixroomError("invalid", "the server's VAPID public key is not an uncompressed P-256 point");
  }
  return bytes;
}

/** What `POST /v1/me/push-subscriptions` takes, from a browser subscription. */
export function subscriptionBody(subscription: PushSubscription): PushSubscriptionBody {
  const p256dh = subscription.getKey("p256dh");
  const auth = subscription.getKey("auth");
  if (!p256dh || !auth) {
    // A subscription made with an applicationServerKey always has both.
    throw new MixroomError("push_unsupported", "the browser's push subscription has no encryption keys");
  }
  return {
    endpoint: subscription.endpoint,
    keys: { p256dh: bytesToBase64Url(p256dh), auth: bytesToBase64Url(auth) },
  };
}

function pushManagerOf(registration: ServiceWorkerRegistration): PushManager {
  // Typed as always there, but missing in browsers without Web Push (and
  // on plain-http pages other than localhost).
  const pushManager = (registration as { pushManager?: PushManager }).pushManager;
  if (!pushManager) throw new MixroomError("push_unsupported", "this browser has no Web Push");
  return pushManager;
}

/**
 * Whether the subscription was made with this key. A browser that does not
 * tell (`applicationServerKey` null) counts as another key: replacing the
 * subscription costs little, pushing with the wrong key fails every time.
 */
function sameKey(subscription: PushSubscription, key: Uint8Array): boolean {
  const current = subscription.options?.applicationServerKey;
  if (!current) return false;
  const bytes = new Uint8Array(current);
  return bytes.length === key.length && bytes.every((byte, i) => byte === key[i]);
}

/** `Notification.permission` where there is one (windows and workers), else undefined. */
function notificationPermission(): string | undefined {
  const notification = (globalThis as { Notification?: { permission?: string } }).Notification;
  return notification?.permission;
}

function isDomError(error: unknown, name: string): boolean {
  return typeof error === "object" && error !== null && (error as { name?: unknown }).name === name;
}
