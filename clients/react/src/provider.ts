import { createContext, createElement, useContext, useEffect, useRef, useState, type ReactNode } from "react";
import { MixroomClient, type MixroomClientOptions } from "@mixroom/realtime-client";
import { ClientBundle } from "./stores.js";

/** The provider's client and shared stores; `null` outside a provider, before the effect ran, signed out and on the server. */
export const MixroomContext = createContext<ClientBundle | null>(null);
MixroomContext.displayName = "MixroomContext";

export interface MixroomProviderProps {
  /** `wss://…/v1/ws`. A change creates a new client. */
  url: string;
  /**
   * The current access token, or nothing when signed out. May change
   * between renders: the latest one is always called.
   */
  getToken: MixroomClientOptions["getToken"];
  /**
   * The signed-in user (or any key that changes on sign-in and sign-out).
   * Each value gets a client of its own: the previous user's client is
   * closed. `null` means signed out: no client at all. Leave it out to
   * keep one client and let `getToken` decide.
   */
  userId?: string | null;
  /**
   * The rest of the client's options (`WebSocket`, `fetch`, `backoff`, …),
   * read when a client is created.
   */
  options?: Omit<MixroomClientOptions, "url" | "getToken">;
  children?: ReactNode;
}

/**
 * Owns one `MixroomClient` per signed-in user. The client is created and
 * connected in an effect, never during render, and closed on unmount or
 * when `url` or `userId` changes; under React Strict Mode's extra
 * mount/unmount the discarded client never opens a socket (connecting is
 * deferred by a task and cancelled). On the server no client exists and
 * every hook returns its empty snapshot.
 */
export function MixroomProvider({ url, getToken, userId, options, children }: MixroomProviderProps): ReactNode {
  const getTokenRef = useRef(getToken);
  const optionsRef = useRef(options);
  useEffect(() => {
    getTokenRef.current = getToken;
    optionsRef.current = options;
  });

  const [bundle, setBundle] = useState<ClientBundle | null>(null);
  useEffect(() => {
    if (userId === null) return undefined;
    const client = new MixroomClient({
      ...optionsRef.current,
      url,
      getToken: () => getTokenRef.current(),
    });
    const created = new ClientBundle(client);
    setBundle(created);
    const timer = setTimeout(() => {
      try {
        client.connect();
      } catch (error) {
        // No WebSocket implementation: say so once, rather than in a render.
        console.error("@mixroom/realtime-react: could not connect:", error);
      }
    }, 0);
    return () => {
      clearTimeout(timer);
      created.dispose();
      setBundle((current) => (current === created ? null : current));
    };
  }, [url, userId]);

  return createElement(MixroomContext.Provider, { value: bundle }, children);
}

/** The provider's client, or `null` (no provider, signed out, not created yet, or server rendering). */
export function useMixroomClient(): MixroomClient | null {
  return useContext(MixroomContext)?.client ?? null;
}
