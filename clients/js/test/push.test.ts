/**
 * Web Push helpers without a browser: `subscribeToPush()` and
 * `unsubscribeFromPush()` against a scripted `fetch` and a fake
 * `PushManager`, and the base64url conversions they rest on.
 */
import { createECDH, randomBytes } from "node:crypto";

import { afterEach, describe, expect, test, vi } from "vitest";

import {
  base64UrlToBytes,
  bytesToBase64Url,
  MixroomClient,
  MixroomError,
  subscribeToPush,
  unsubscribeFromPush,
  vapidKeyBytes,
} from "../src/index.js";

const TOKEN = "header.payload.signature";
const HTTP_URL = "https://realtime.test";
const ENDPOINT = "https://push.test/send/abc?x=1&y=a b";

/** A fresh P-256 public key, uncompressed (65 bytes, 0x04 first). */
function p256PublicKey(): Buffer {
  const ecdh = createECDH("prime256v1");
  ecdh.generateKeys();
  return ecdh.getPublicKey();
}

/** An `ArrayBuffer` holding exactly these bytes (a Buffer's may be a slice of a bigger pool). */
function bufferOf(bytes: Uint8Array): ArrayBuffer {
  return bytes.slice().buffer;
}

interface Call {
  url: string;
  method: string;
  headers: Record<string, string>;
  body: string | undefined;
}

/** A `fetch` that answers each request from `routes` (by method and path) and records it. */
function scriptedFetch(routes: Record<string, () => Response>): { fetch: typeof fetch; calls: Call[] } {
  const calls: Call[] = [];
  const fake = async (input: string | URL | Request, init: RequestInit = {}): Promise<Response> => {
    const url = String(input);
    const method = init.method ?? "GET";
    calls.push({
      url,
      method,
      headers: { ...(init.headers as Record<string, string>) },
      body: typeof init.body === "string" ? init.body : undefined,
    });
    const route = routes[`${method} ${new URL(url).pathname}`];
    if (!route) return new Response("no such route", { status: 404 });
    return route();
  };
  return { fetch: fake as typeof fetch, calls };
}

function json(status: number, body: unknown): Response {
  return new Response(JSON.stringify(body), { status, headers: { "content-type": "application/json" } });
}

function serverError(status: number, code: string): Response {
  return json(status, { error: { code, message: code } });
}

/** A browser subscription: what the helpers read, and whether it was unsubscribed. */
class FakeSubscription {
  unsubscribed = false;
  readonly p256dh = p256PublicKey();
  readonly auth = randomBytes(16);
  readonly options: { applicationServerKey: ArrayBuffer | null; userVisibleOnly: boolean };

  constructor(
    readonly endpoint: string,
    applicationServerKey: Uint8Array | null,
    private readonly onUnsubscribe: () => void = () => undefined,
  ) {
    this.options = { applicationServerKey: applicationServerKey ? bufferOf(applicationServerKey) : null, userVisibleOnly: true };
  }

  getKey(name: string): ArrayBuffer | null {
    if (name === "p256dh") return bufferOf(this.p256dh);
    if (name === "auth") return bufferOf(this.auth);
    return null;
  }

  async unsubscribe(): Promise<boolean> {
    this.unsubscribed = true;
    this.onUnsubscribe();
    return true;
  }
}

/** A `PushManager` holding at most one subscription, like a browser's. */
class FakePushManager {
  current: FakeSubscription | null = null;
  subscribeCalls: Array<{ userVisibleOnly?: boolean; applicationServerKey?: unknown }> = [];
  getSubscriptionCalls = 0;
  /** Set to make subscribe() fail as a browser does (e.g. the user says no). */
  refuseWith: Error | undefined;
  nextEndpoint = ENDPOINT;

  async getSubscription(): Promise<FakeSubscription | null> {
    this.getSubscriptionCalls++;
    return this.current;
  }

  async subscribe(options: { userVisibleOnly?: boolean; applicationServerKey?: Uint8Array }): Promise<FakeSubscription> {
    this.subscribeCalls.push(options);
    if (this.refuseWith) throw this.refuseWith;
    if (this.current) throw new Error("InvalidStateError: a subscription with another key exists");
    const subscription = new FakeSubscription(this.nextEndpoint, options.applicationServerKey ?? null, () => {
      if (this.current === subscription) this.current = null;
    });
    this.current = subscription;
    return subscription;
  }

  /** Puts an existing subscription in place, made with `key`. */
  existing(endpoint: string, key: Uint8Array | null): FakeSubscription {
    const subscription = new FakeSubscription(endpoint, key, () => {
      if (this.current === subscription) this.current = null;
    });
    this.current = subscription;
    return subscription;
  }
}

function registrationOf(pushManager: FakePushManager): ServiceWorkerRegistration {
  return { pushManager } as unknown as ServiceWorkerRegistration;
}

function clientWith(fetchImpl: typeof fetch): MixroomClient {
  return new MixroomClient({
    url: "wss://realtime.test/v1/ws",
    httpUrl: HTTP_URL,
    getToken: () => TOKEN,
    fetch: fetchImpl,
  });
}

async function rejection(promise: Promise<unknown>): Promise<MixroomError> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(MixroomError);
  return error as MixroomError;
}

afterEach(() => {
  vi.unstubAllGlobals();
});

describe("base64url", () => {
  test("a VAPID key decodes to the 65 bytes of the uncompressed point", () => {
    const key = p256PublicKey();
    const text = key.toString("base64url");
    expect(text).not.toMatch(/[+/=]/);
    const bytes = vapidKeyBytes(text);
    expect(bytes).toBeInstanceOf(Uint8Array);
    expect(bytes.length).toBe(65);
    expect(bytes[0]).toBe(0x04);
    expect(Buffer.from(bytes).equals(key)).toBe(true);
    // Padded, or in the standard alphabet, it is the same key.
    expect(Buffer.from(vapidKeyBytes(key.toString("base64"))).equals(key)).toBe(true);
  });

  test("a key that is not an uncompressed P-256 point is refused", () => {
    const key = p256PublicKey();
    const compressed = Buffer.concat([Buffer.from([0x02]), key.subarray(1, 33)]);
    const wrongPrefix = Buffer.concat([Buffer.from([0x05]), key.subarray(1)]);
    for (const bad of [compressed.toString("base64url"), wrongPrefix.toString("base64url"), "", "not*base64!"]) {
      expect(() => vapidKeyBytes(bad)).toThrow(MixroomError);
    }
  });

  test("bytes go to base64url without padding and back, for every length", () => {
    for (let length = 0; length < 70; length++) {
      const bytes = randomBytes(length);
      const text = bytesToBase64Url(bytes);
      expect(text).toBe(bytes.toString("base64url"));
      expect(Buffer.from(base64UrlToBytes(text)).equals(bytes)).toBe(true);
      expect(bytesToBase64Url(bufferOf(bytes))).toBe(text);
    }
  });
});

describe("subscribeToPush", () => {
  test("subscribes with the server's key and registers the subscription with the client's token", async () => {
    const key = p256PublicKey();
    const { fetch, calls } = scriptedFetch({
      "GET /v1/push/vapid-public-key": () => json(200, { public_key: key.toString("base64url") }),
      "POST /v1/me/push-subscriptions": () => json(201, {}),
    });
    const pushManager = new FakePushManager();

    const result = await subscribeToPush(registrationOf(pushManager), { client: clientWith(fetch) });

    expect(pushManager.subscribeCalls).toHaveLength(1);
    const options = pushManager.subscribeCalls[0]!;
    expect(options.userVisibleOnly).toBe(true);
    expect(options.applicationServerKey).toBeInstanceOf(Uint8Array);
    expect(Buffer.from(options.applicationServerKey as Uint8Array).equals(key)).toBe(true);

    expect(calls.map((c) => `${c.method} ${c.url}`)).toEqual([
      `GET ${HTTP_URL}/v1/push/vapid-public-key`,
      `POST ${HTTP_URL}/v1/me/push-subscriptions`,
    ]);
    for (const call of calls) expect(call.headers.authorization).toBe(`Bearer ${TOKEN}`);
    expect(calls[0]!.headers["content-type"]).toBeUndefined();
    expect(calls[0]!.body).toBeUndefined();

    const post = calls[1]!;
    expect(post.headers["content-type"]).toBe("application/json");
    const subscription = pushManager.current!;
    expect(JSON.parse(post.body!)).toEqual({
      endpoint: ENDPOINT,
      keys: { p256dh: subscription.p256dh.toString("base64url"), auth: subscription.auth.toString("base64url") },
    });
    expect(result.subscription).toBe(subscription);
    expect(result).toMatchObject({ created: true, reused: false });
  });

  test("a subscription made with the same key is kept, and registered again (200: already there)", async () => {
    const key = p256PublicKey();
    const { fetch, calls } = scriptedFetch({
      "GET /v1/push/vapid-public-key": () => json(200, { public_key: key.toString("base64url") }),
      "POST /v1/me/push-subscriptions": () => json(200, {}),
    });
    const pushManager = new FakePushManager();
    const existing = pushManager.existing("https://push.test/send/kept", key);

    const result = await subscribeToPush(registrationOf(pushManager), { client: clientWith(fetch) });

    expect(pushManager.subscribeCalls).toHaveLength(0);
    expect(existing.unsubscribed).toBe(false);
    expect(result).toMatchObject({ created: false, reused: true });
    expect(result.subscription).toBe(existing);
    expect(calls.map((c) => c.method)).toEqual(["GET", "POST"]);
    expect(JSON.parse(calls[1]!.body!)).toMatchObject({ endpoint: "https://push.test/send/kept" });
  });

  test("a subscription made with another key is unsubscribed, replaced, and forgotten by the server", async () => {
    const key = p256PublicKey();
    const oldEndpoint = "https://push.test/send/old?a=1&b=2";
    const { fetch, calls } = scriptedFetch({
      "GET /v1/push/vapid-public-key": () => json(200, { public_key: key.toString("base64url") }),
      "DELETE /v1/me/push-subscriptions": () => new Response(null, { status: 204 }),
      "POST /v1/me/push-subscriptions": () => json(201, {}),
    });
    const pushManager = new FakePushManager();
    const old = pushManager.existing(oldEndpoint, p256PublicKey());

    const result = await subscribeToPush(registrationOf(pushManager), { client: clientWith(fetch) });

    expect(old.unsubscribed).toBe(true);
    expect(pushManager.subscribeCalls).toHaveLength(1);
    expect(result.subscription).not.toBe(old);
    expect(result.subscription.endpoint).toBe(ENDPOINT);
    expect(result).toMatchObject({ created: true, reused: false });
    expect(calls.map((c) => `${c.method} ${c.url}`)).toEqual([
      `GET ${HTTP_URL}/v1/push/vapid-public-key`,
      `DELETE ${HTTP_URL}/v1/me/push-subscriptions?endpoint=${encodeURIComponent(oldEndpoint)}`,
      `POST ${HTTP_URL}/v1/me/push-subscriptions`,
    ]);
    expect(JSON.parse(calls[2]!.body!)).toMatchObject({ endpoint: ENDPOINT });
  });

  test("a subscription whose key the browser does not tell is replaced too", async () => {
    const key = p256PublicKey();
    const { fetch } = scriptedFetch({
      "GET /v1/push/vapid-public-key": () => json(200, { public_key: key.toString("base64url") }),
      // The server never had it: its DELETE failing does not stop the new subscription.
      "DELETE /v1/me/push-subscriptions": () => serverError(404, "not_found"),
      "POST /v1/me/push-subscriptions": () => json(201, {}),
    });
    const pushManager = new FakePushManager();
    const old = pushManager.existing("https://push.test/send/unknown-key", null);

    const result = await subscribeToPush(registrationOf(pushManager), { client: clientWith(fetch) });

    expect(old.unsubscribed).toBe(true);
    expect(result.subscription.endpoint).toBe(ENDPOINT);
  });

  test("push turned off on the server: push_disabled, before the browser is asked anything", async () => {
    const { fetch, calls } = scriptedFetch({
      "GET /v1/push/vapid-public-key": () => serverError(503, "push_disabled"),
    });
    const pushManager = new FakePushManager();

    const error = await rejection(subscribeToPush(registrationOf(pushManager), { client: clientWith(fetch) }));

    expect(error.code).toBe("push_disabled");
    expect(error.status).toBe(503);
    expect(error.serverCode).toBe("push_disabled");
    expect(pushManager.getSubscriptionCalls).toBe(0);
    expect(pushManager.subscribeCalls).toHaveLength(0);
    expect(calls).toHaveLength(1);
  });

  test("a server outage (503 internal) is not push_disabled", async () => {
    const { fetch } = scriptedFetch({
      "GET /v1/push/vapid-public-key": () => serverError(503, "internal"),
    });
    const error = await rejection(subscribeToPush(registrationOf(new FakePushManager()), { client: clientWith(fetch) }));
    expect(error.code).toBe("http");
    expect(error.status).toBe(503);
    expect(error.serverCode).toBe("internal");
  });

  test("a malformed key from the server is refused before subscribing", async () => {
    const { fetch } = scriptedFetch({
      "GET /v1/push/vapid-public-key": () => json(200, { public_key: Buffer.alloc(32, 7).toString("base64url") }),
    });
    const pushManager = new FakePushManager();
    const error = await rejection(subscribeToPush(registrationOf(pushManager), { client: clientWith(fetch) }));
    expect(error.code).toBe("invalid");
    expect(pushManager.subscribeCalls).toHaveLength(0);
  });

  test("too many subscriptions: too_many", async () => {
    const key = p256PublicKey();
    const { fetch } = scriptedFetch({
      "GET /v1/push/vapid-public-key": () => json(200, { public_key: key.toString("base64url") }),
      "POST /v1/me/push-subscriptions": () => serverError(409, "too_many"),
    });
    const error = await rejection(subscribeToPush(registrationOf(new FakePushManager()), { client: clientWith(fetch) }));
    expect(error.code).toBe("too_many");
    expect(error.status).toBe(409);
  });

  test("the user says no: push_denied", async () => {
    const key = p256PublicKey();
    const { fetch, calls } = scriptedFetch({
      "GET /v1/push/vapid-public-key": () => json(200, { public_key: key.toString("base64url") }),
    });
    const pushManager = new FakePushManager();
    pushManager.refuseWith = new DOMException("Registration failed - permission denied", "NotAllowedError");

    const error = await rejection(subscribeToPush(registrationOf(pushManager), { client: clientWith(fetch) }));

    expect(error.code).toBe("push_denied");
    expect(calls.map((c) => c.method)).toEqual(["GET"]);
  });

  test("blocked at the prompt, whatever error the browser throws: push_denied", async () => {
    const notification = { permission: "default" };
    vi.stubGlobal("Notification", notification);
    const key = p256PublicKey();
    const { fetch } = scriptedFetch({
      "GET /v1/push/vapid-public-key": () => json(200, { public_key: key.toString("base64url") }),
    });
    const pushManager = new FakePushManager();
    const subscribe = pushManager.subscribe.bind(pushManager);
    pushManager.subscribe = async (options) => {
      notification.permission = "denied"; // the user clicked "Block"
      pushManager.refuseWith = new DOMException("Registration failed", "AbortError");
      return subscribe(options);
    };

    const error = await rejection(subscribeToPush(registrationOf(pushManager), { client: clientWith(fetch) }));

    expect(error.code).toBe("push_denied");
  });

  test("notifications already blocked: push_denied without asking the browser to subscribe", async () => {
    vi.stubGlobal("Notification", { permission: "denied" });
    const key = p256PublicKey();
    const { fetch } = scriptedFetch({
      "GET /v1/push/vapid-public-key": () => json(200, { public_key: key.toString("base64url") }),
    });
    const pushManager = new FakePushManager();

    const error = await rejection(subscribeToPush(registrationOf(pushManager), { client: clientWith(fetch) }));

    expect(error.code).toBe("push_denied");
    expect(pushManager.subscribeCalls).toHaveLength(0);
  });

  test("other browser failures are passed on as they are", async () => {
    const key = p256PublicKey();
    const { fetch } = scriptedFetch({
      "GET /v1/push/vapid-public-key": () => json(200, { public_key: key.toString("base64url") }),
    });
    const pushManager = new FakePushManager();
    const failure = new DOMException("no push service", "AbortError");
    pushManager.refuseWith = failure;
    await expect(subscribeToPush(registrationOf(pushManager), { client: clientWith(fetch) })).rejects.toBe(failure);
  });

  test("no PushManager: push_unsupported, and nothing is requested", async () => {
    const { fetch, calls } = scriptedFetch({});
    const registration = {} as ServiceWorkerRegistration;
    const error = await rejection(subscribeToPush(registration, { client: clientWith(fetch) }));
    expect(error.code).toBe("push_unsupported");
    expect(calls).toHaveLength(0);
  });
});

describe("unsubscribeFromPush", () => {
  test("tells the server first (DELETE with the endpoint url-encoded), then unsubscribes the browser", async () => {
    const pushManager = new FakePushManager();
    const existing = pushManager.existing(ENDPOINT, p256PublicKey());
    const order: string[] = [];
    const { fetch, calls } = scriptedFetch({
      "DELETE /v1/me/push-subscriptions": () => {
        order.push(`server (browser unsubscribed: ${existing.unsubscribed})`);
        return new Response(null, { status: 204 });
      },
    });

    expect(await unsubscribeFromPush(registrationOf(pushManager), { client: clientWith(fetch) })).toBe(true);

    expect(order).toEqual(["server (browser unsubscribed: false)"]);
    expect(existing.unsubscribed).toBe(true);
    expect(calls).toHaveLength(1);
    const call = calls[0]!;
    expect(call.url).toBe(`${HTTP_URL}/v1/me/push-subscriptions?endpoint=${encodeURIComponent(ENDPOINT)}`);
    expect(new URL(call.url).searchParams.get("endpoint")).toBe(ENDPOINT);
    expect(call.headers.authorization).toBe(`Bearer ${TOKEN}`);
    expect(call.body).toBeUndefined();
  });

  test("no subscription: nothing to do", async () => {
    const { fetch, calls } = scriptedFetch({});
    expect(await unsubscribeFromPush(registrationOf(new FakePushManager()), { client: clientWith(fetch) })).toBe(false);
    expect(calls).toHaveLength(0);
  });

  test("a subscription the server did not have (404) is still unsubscribed", async () => {
    const pushManager = new FakePushManager();
    const existing = pushManager.existing(ENDPOINT, p256PublicKey());
    const { fetch } = scriptedFetch({ "DELETE /v1/me/push-subscriptions": () => serverError(404, "not_found") });
    expect(await unsubscribeFromPush(registrationOf(pushManager), { client: clientWith(fetch) })).toBe(true);
    expect(existing.unsubscribed).toBe(true);
  });

  test("when the server cannot be told, the browser keeps the subscription for a retry", async () => {
    const pushManager = new FakePushManager();
    const existing = pushManager.existing(ENDPOINT, p256PublicKey());
    const { fetch } = scriptedFetch({ "DELETE /v1/me/push-subscriptions": () => serverError(503, "internal") });
    const error = await rejection(unsubscribeFromPush(registrationOf(pushManager), { client: clientWith(fetch) }));
    expect(error.code).toBe("http");
    expect(existing.unsubscribed).toBe(false);
  });
});

describe("push preferences", () => {
  test("updatePreferences sends push switches beside email ones", async () => {
    const stored = {
      email: { chat: true, booking: true, support: true, marketing: false, reminder: true },
      push: { chat: false, booking: true, support: true, marketing: false, reminder: true },
      chat_delay_secs: null,
      defaults: { offline_delay_secs: 300, unread_delay_secs: 900 },
    };
    const { fetch, calls } = scriptedFetch({ "PUT /v1/me/preferences": () => json(200, stored) });

    const preferences = await clientWith(fetch).updatePreferences({ push: { chat: false }, email: { reminder: true } });

    expect(JSON.parse(calls[0]!.body!)).toEqual({ push: { chat: false }, email: { reminder: true } });
    expect(preferences.push.chat).toBe(false);
    expect(preferences.push.reminder).toBe(true);
  });
});
