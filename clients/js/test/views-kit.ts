/**
 * What the real-server tests of room views share: clients for test users
 * (fast reconnects), room views, waiting on a view's snapshot, and closing
 * everything a test opened.
 */

import WebSocket from "ws";

import { MixroomClient, type MixroomClientOptions, type RoomSnapshot, type RoomView } from "../src/index.js";
import { mintToken, waitFor, type TestUser } from "./server.js";

const clients: MixroomClient[] = [];
const views: RoomView[] = [];

/** A client for `user` on `url`, closed by `closeOpened`. */
export function clientFor(url: string, user: TestUser, options: Partial<MixroomClientOptions> = {}): MixroomClient {
  const client = new MixroomClient({
    url,
    getToken: () => mintToken(user),
    WebSocket,
    backoff: { initialMs: 100, maxMs: 1000 },
    ...options,
  });
  clients.push(client);
  return client;
}

export async function connected(client: MixroomClient): Promise<MixroomClient> {
  client.connect();
  await client.whenOpen(15_000);
  return client;
}

/** A room view, closed by `closeOpened`. */
export function viewOf(client: MixroomClient, room: string, pageSize?: number): RoomView {
  const view = client.room(room, pageSize === undefined ? {} : { pageSize });
  views.push(view);
  return view;
}

/** Waits until the view's snapshot satisfies `condition`. */
export async function until(
  view: RoomView,
  condition: (s: RoomSnapshot) => boolean,
  what: string,
  timeoutMs = 20_000,
): Promise<RoomSnapshot> {
  await waitFor(() => condition(view.getSnapshot()), what, timeoutMs);
  return view.getSnapshot();
}

/** Closes the views and clients the test opened (for `afterEach`). */
export function closeOpened(): void {
  for (const view of views.splice(0)) view.close();
  for (const client of clients.splice(0)) client.close();
}
