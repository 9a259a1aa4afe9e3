/**
 * Test harness: the real `mixroom-realtime serve` binary (built by `cargo
 * build` in the repository root) on a port of our choosing and a SQLite
 * file of its own, plus the Mixroom backend's calls and Supabase-shaped
 * tokens.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { createHmac, randomUUID } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

export const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../../..");
export const JWT_SECRET = "mixroom-js-test-jwt-secret-5f2d8a1c9e7b3a4d6c0f1e2d3c4b5a69";
export const INTERNAL_API_KEY = "mixroom-js-test-internal-key-4c1d";

const STARTUP_TIMEOUT_MS = 60_000;

/** The binary under test; `MIXROOM_BIN` overrides the debug build. */
export function serverBinary(): string {
  return process.env.MIXROOM_BIN ?? join(REPO_ROOT, "target/debug/mixroom-realtime");
}

/** A port that was free a moment ago (the server binds it itself). */
export async function freePort(): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const probe = createServer();
    probe.once("error", reject);
    probe.listen(0, "127.0.0.1", () => {
      const address = probe.address();
      const port = typeof address === "object" && address ? address.port : 0;
      probe.close(() => resolvePort(port));
    });
  });
}

export interface ServerOptions {
  /** Extra `MIXROOM__…` settings. */
  env?: Record<string, string>;
  /** Forward the server's output to this process's stderr. */
  verbose?: boolean;
}

export class TestServer {
  readonly port: number;
  readonly dataDir: string;
  private child: ChildProcess | undefined;
  private output: string[] = [];

  private constructor(
    port: number,
    dataDir: string,
    private readonly options: ServerOptions,
  ) {
    this.port = port;
    this.dataDir = dataDir;
  }

  /** Starts a server on a free port and a fresh SQLite file. */
  static async start(options: ServerOptions = {}): Promise<TestServer> {
    const dataDir = mkdtempSync(join(tmpdir(), "mixroom-js-test-"));
    const server = new TestServer(await freePort(), dataDir, options);
    await server.launch();
    return server;
  }

  get httpUrl(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  get wsUrl(): string {
    return `ws://127.0.0.1:${this.port}/v1/ws`;
  }

  get databaseUrl(): string {
    return `sqlite://${join(this.dataDir, "chat.db")}`;
  }

  /** The last lines the server printed (for failure messages). */
  outputTail(lines = 40): string {
    return this.output.slice(-lines).join("\n");
  }

  private async launch(): Promise<void> {
    const env: Record<string, string> = {};
    for (const [key, value] of Object.entries(process.env)) {
      // Only what the test sets may configure the server.
      if (!key.startsWith("MIXROOM__") && value !== undefined) env[key] = value;
    }
    Object.assign(env, {
      MIXROOM__SERVER__LISTEN: `127.0.0.1:${this.port}`,
      MIXROOM__DATABASE__URL: this.databaseUrl,
      MIXROOM__AUTH__JWT_SECRET: JWT_SECRET,
      MIXROOM__AUTH__INTERNAL_API_KEY: INTERNAL_API_KEY,
      MIXROOM__EMAIL__OUTBOX_DIR: join(this.dataDir, "outbox"),
      MIXROOM__LOG__LEVEL: "warn",
      // Tests stop the server at once, without a rolling deploy's drain.
      MIXROOM__SERVER__DRAIN_MS: "0",
      MIXROOM__SERVER__CLOSE_SPREAD_MS: "0",
      ...this.options.env,
    });
    // The same port again right after a kill can be refused for a moment.
    for (let attempt = 0; ; attempt++) {
      try {
        await this.spawnOnce(env);
        return;
      } catch (error) {
        if (attempt >= 20 || !/address already in use|Address in use/i.test(String(error))) throw error;
        await sleep(250);
      }
    }
  }

  private spawnOnce(env: Record<string, string>): Promise<void> {
    const child = spawn(serverBinary(), ["serve"], {
      cwd: REPO_ROOT,
      env,
      stdio: ["ignore", "pipe", "pipe"],
    });
    this.child = child;
    return new Promise((resolveStart, reject) => {
      let started = false;
      const timer = setTimeout(() => {
        child.kill("SIGKILL");
        reject(new Error(`no "listening on" within ${STARTUP_TIMEOUT_MS} ms:\n${this.outputTail()}`));
      }, STARTUP_TIMEOUT_MS);
      const onLine = (line: string): void => {
        this.output.push(line);
        if (this.output.length > 500) this.output.shift();
        if (this.options.verbose) process.stderr.write(`[server] ${line}\n`);
        if (!started && line.startsWith("listening on ")) {
          started = true;
          clearTimeout(timer);
          resolveStart();
        }
      };
      lines(child.stdout, onLine);
      lines(child.stderr, onLine);
      child.once("error", (error) => {
        clearTimeout(timer);
        reject(error);
      });
      child.once("exit", (code, signal) => {
        if (started) return;
        clearTimeout(timer);
        reject(new Error(`the server exited (${code ?? signal}) before listening:\n${this.outputTail()}`));
      });
    });
  }

  /** Kills the process (SIGKILL: nothing unstored survives) and waits for it. */
  async kill(signal: NodeJS.Signals = "SIGKILL"): Promise<void> {
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise<void>((done) => child.once("exit", () => done()));
    child.kill(signal);
    await exited;
  }

  /** Starts the server again on the same port and database (killing it first if it runs). */
  async restart(): Promise<void> {
    await this.kill();
    await this.launch();
  }

  /** Stops the server and removes its data. */
  async stop(): Promise<void> {
    await this.kill("SIGTERM");
    rmSync(this.dataDir, { recursive: true, force: true });
  }

  // ---------------------------------------------------------------------------
  // The Mixroom backend's calls
  // ---------------------------------------------------------------------------

  async internal(method: string, path: string, body: unknown): Promise<unknown> {
    const response = await fetch(`${this.httpUrl}${path}`, {
      method,
      headers: { authorization: `Bearer ${INTERNAL_API_KEY}`, "content-type": "application/json" },
      body: JSON.stringify(body),
    });
    const text = await response.text();
    if (!response.ok) throw new Error(`${method} ${path}: ${response.status} ${text}`);
    return text ? JSON.parse(text) : undefined;
  }

  async putUser(user: TestUser): Promise<void> {
    await this.internal("PUT", `/v1/internal/users/${user.id}`, {
      email: `${user.name.toLowerCase()}@example.com`,
      name: user.name,
      role: user.role,
    });
  }

  async putBooking(bookingId: string, client: TestUser, providers: TestUser[], status: string): Promise<void> {
    await this.internal("PUT", `/v1/internal/bookings/${bookingId}`, {
      client_id: client.id,
      provider_ids: providers.map((p) => p.id),
      status,
      title: "Vocal session",
      starts_at: "2026-12-01T10:00:00Z",
    });
  }

  /** Mirrors the users and a confirmed booking between them; returns its room. */
  async openBooking(client: TestUser, providers: TestUser[]): Promise<{ bookingId: string; room: string }> {
    await this.putUser(client);
    for (const provider of providers) await this.putUser(provider);
    const bookingId = randomUUID();
    await this.putBooking(bookingId, client, providers, "confirmed");
    return { bookingId, room: `booking:${bookingId}` };
  }

  /** The room's whole stored history, oldest first (over HTTP, as `user`). */
  async storedMessages(user: TestUser, room: string): Promise<StoredMessage[]> {
    return (await this.storedEntries(user, room)).messages;
  }

  /**
   * Every entry of the room over HTTP (as `user`): its messages as they
   * stand and its changes (edits, deletions, reactions), each list oldest
   * first. Pages count both, so a page may hold no message: it pages on
   * from the lowest seq seen.
   */
  async storedEntries(user: TestUser, room: string): Promise<{ messages: StoredMessage[]; changes: StoredChange[] }> {
    const messages: StoredMessage[] = [];
    const changes: StoredChange[] = [];
    let before: number | undefined;
    for (;;) {
      const query = before === undefined ? "?limit=100" : `?limit=100&before=${before}`;
      const response = await fetch(`${this.httpUrl}/v1/rooms/${room}/messages${query}`, {
        headers: { authorization: `Bearer ${mintToken(user)}` },
      });
      const page = (await response.json()) as { messages: StoredMessage[]; changes?: StoredChange[]; has_more: boolean };
      messages.push(...page.messages);
      changes.push(...(page.changes ?? []));
      const seqs = [...page.messages, ...(page.changes ?? [])].map((entry) => entry.seq);
      if (!page.has_more || seqs.length === 0) break;
      before = Math.min(...seqs);
    }
    const bySeq = <T extends { seq: number }>(a: T, b: T): number => a.seq - b.seq;
    return { messages: messages.sort(bySeq), changes: changes.sort(bySeq) };
  }
}

export interface StoredMessage {
  seq: number;
  client_id: string | null;
  body: string;
}

export interface StoredChange {
  type: string;
  seq: number;
  message_seq: number;
}

export interface TestUser {
  id: string;
  name: string;
  role: "client" | "studio_owner" | "engineer" | "admin";
}

export function newUser(name: string, role: TestUser["role"]): TestUser {
  return { id: randomUUID(), name, role };
}

/** An HS256 token shaped like Supabase's, signed with the test secret. */
export function mintToken(user: TestUser, ttlSeconds = 3600): string {
  const now = Math.floor(Date.now() / 1000);
  const header = { alg: "HS256", typ: "JWT" };
  const claims = {
    sub: user.id,
    aud: "authenticated",
    iat: now,
    exp: now + ttlSeconds,
    email: `${user.name.toLowerCase()}@example.com`,
    user_metadata: { full_name: user.name },
    app_metadata: { role: user.role },
  };
  const encode = (value: unknown): string => Buffer.from(JSON.stringify(value)).toString("base64url");
  const unsigned = `${encode(header)}.${encode(claims)}`;
  const signature = createHmac("sha256", JWT_SECRET).update(unsigned).digest("base64url");
  return `${unsigned}.${signature}`;
}

export function sleep(ms: number): Promise<void> {
  return new Promise((done) => setTimeout(done, ms));
}

/** Polls `condition` until it holds; fails with `what` after `timeoutMs`. */
export async function waitFor(condition: () => boolean, what: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(20);
  }
}

function lines(stream: NodeJS.ReadableStream | null, onLine: (line: string) => void): void {
  if (!stream) return;
  let buffered = "";
  stream.setEncoding("utf8");
  stream.on("data", (chunk: string) => {
    buffered += chunk;
    let newline: number;
    while ((newline = buffered.indexOf("\n")) >= 0) {
      onLine(buffered.slice(0, newline));
      buffered = buffered.slice(newline + 1);
    }
  });
}
