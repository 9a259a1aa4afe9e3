/**
 * The demo page in a real browser (Debian's Chromium driven by
 * playwright-core; no browser download): Ava and Sam, each in a browser
 * context of their own, chat through the page the server serves at `/`,
 * see each other typing and reading, answer, react to, edit, delete and
 * share files by link, watch the booking badge and the notifications bell
 * change live, and Ava asks the support widget a question whose answer
 * streams in.
 */
import { existsSync, mkdirSync } from "node:fs";
import { join } from "node:path";

import { chromium, type Browser, type BrowserContext, type Page } from "playwright-core";
import { afterAll, beforeAll, expect, onTestFailed, test } from "vitest";

import { REPO_ROOT, TestServer } from "../test/server.js";

const CHROMIUM = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";
/** Screenshots of the end state, for people reading a CI run. */
const ARTIFACTS = join(REPO_ROOT, "clients/js/e2e/artifacts");
/**
 * The server compiles `demo/app.js` into its binary, so a binary built
 * before the latest `npm run build:demo` serves an older page. The browser
 * gets the committed file instead (which `npm run check:demo` keeps equal
 * to the sources); with a fresh binary the two are the same.
 */
const APP_JS = join(REPO_ROOT, "demo/app.js");

let server: TestServer;
let browser: Browser;
const contexts: BrowserContext[] = [];
const pageErrors: string[] = [];

beforeAll(async () => {
  if (!existsSync(CHROMIUM)) {
    throw new Error(`no Chromium at ${CHROMIUM}: apt-get install -y chromium (or set CHROMIUM_PATH)`);
  }
  server = await TestServer.start({ env: { MIXROOM__SERVER__DEMO: "true" } });
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    // Debian's Chromium, as root, on a machine without outside network.
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
});

afterAll(async () => {
  for (const context of contexts) await context.close().catch(() => undefined);
  await browser?.close();
  await server?.stop();
});

/** Keeps screenshots of every open page when a test fails, for CI logs. */
function screenshotsOnFailure(pages: Record<string, Page>): void {
  onTestFailed(async () => {
    mkdirSync(ARTIFACTS, { recursive: true });
    for (const [name, page] of Object.entries(pages)) {
      await page.screenshot({ path: join(ARTIFACTS, `failed-${name}.png`) }).catch(() => undefined);
    }
    console.error(`screenshots in ${ARTIFACTS}; server output:\n${server.outputTail()}`);
  });
}

async function newContext(options: Parameters<Browser["newContext"]>[0] = {}): Promise<BrowserContext> {
  const context = await browser.newContext(options);
  contexts.push(context);
  await context.route("**/demo/app.js", (route) =>
    route.fulfill({ path: APP_JS, contentType: "text/javascript; charset=utf-8", headers: { "cache-control": "no-cache" } }),
  );
  return context;
}

async function openAs(user: "ava" | "sam"): Promise<Page> {
  const context = await newContext({ viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  page.on("pageerror", (error) => pageErrors.push(`${user}: ${error.message}`));
  page.on("console", (message) => {
    if (message.type() === "error") pageErrors.push(`${user} console: ${message.text()}`);
  });
  await page.goto(`${server.httpUrl}/`);
  await page.getByTestId(`pick-${user}`).click();
  await expect.poll(() => page.getByTestId("connection").getAttribute("data-state")).toBe("open");
  return page;
}

test("Ava and Sam chat through the demo page; the support widget streams its answer", async () => {
  const ava = await openAs("ava");
  const sam = await openAs("sam");
  screenshotsOnFailure({ ava, sam });
  await expect.poll(() => ava.getByTestId("me").textContent()).toContain("Ava");
  await expect.poll(() => sam.getByTestId("status-badge").textContent()).toBe("confirmed");

  // Presence: Ava sees Sam online.
  await expect
    .poll(() => ava.getByTestId("member-sam").getAttribute("class"))
    .toBe("online");

  // Typing: Sam sees it while Ava writes.
  await ava.getByTestId("message-input").pressSequentially("Hi Sam, can we start at 10?", { delay: 10 });
  await expect.poll(() => sam.getByTestId("typing").textContent()).toBe("Ava is typing…");

  // The message reaches Sam, stored (it carries its seq).
  await ava.getByTestId("send").click();
  const atSam = sam.locator('[data-testid="message"]', { hasText: "Hi Sam, can we start at 10?" });
  await atSam.waitFor();
  expect(await atSam.getAttribute("data-seq")).toBe("1");
  await expect.poll(() => sam.getByTestId("typing").textContent()).toBe("");

  // Read receipt: Sam's page is visible, so it marks the message read.
  await expect.poll(() => ava.getByTestId("receipt").textContent()).toBe("Seen by Sam");

  // And back.
  await sam.getByTestId("message-input").fill("Sure, 10 works. See you at Studio Nova!");
  await sam.getByTestId("message-input").press("Enter");
  await ava.locator('[data-testid="message"]', { hasText: "See you at Studio Nova!" }).waitFor();

  // Sam answers Ava's first message: his reply quotes it, at both.
  const first = (page: Page) => page.locator('[data-testid="message"][data-seq="1"]');
  await first(sam).getByTestId("reply").click();
  await expect.poll(() => sam.getByTestId("composer-bar").textContent()).toContain("Replying to Ava");
  await sam.getByTestId("message-input").fill("Actually, could we make it 11?");
  await sam.getByTestId("message-input").press("Enter");
  const replyAt = (page: Page) => page.locator('[data-testid="message"]', { hasText: "Actually, could we make it 11?" });
  await expect.poll(() => replyAt(ava).getByTestId("quote").textContent()).toBe("↩ You: Hi Sam, can we start at 10?");
  await expect.poll(() => sam.getByTestId("composer-bar").isHidden()).toBe(true);

  // Ava edits her first message: Sam sees the new text, marked edited, and
  // his reply's quote follows it.
  await first(ava).getByTestId("edit").click();
  await expect.poll(() => ava.getByTestId("message-input").inputValue()).toBe("Hi Sam, can we start at 10?");
  await ava.getByTestId("message-input").fill("Hi Sam, can we start at 11?");
  await ava.getByTestId("message-input").press("Enter");
  await expect.poll(() => first(sam).getByTestId("body").textContent()).toBe("Hi Sam, can we start at 11?");
  await expect.poll(() => first(sam).locator(".meta").textContent()).toContain("edited");
  await expect.poll(() => replyAt(sam).getByTestId("quote").textContent()).toBe("↩ Ava: Hi Sam, can we start at 11?");
  await expect.poll(() => replyAt(ava).getByTestId("quote").textContent()).toBe("↩ You: Hi Sam, can we start at 11?");

  // Sam thumbs it up: Ava sees the reaction; Ava adds hers, the count is 2.
  await first(sam).getByTestId("react-👍").click();
  const thumbs = (page: Page) => first(page).locator('[data-testid="reaction"][data-emoji="👍"]');
  await expect.poll(() => thumbs(ava).textContent()).toBe("👍 1");
  await thumbs(ava).click();
  await expect.poll(() => thumbs(sam).textContent()).toBe("👍 2");

  // Ava shares her stems by a Supabase Storage link.
  const stemsUrl = "https://abcd1234.supabase.co/storage/v1/object/sign/stems/take3.wav?token=demo";
  await ava.getByTestId("attach").click();
  await ava.getByTestId("attach-url").fill(stemsUrl);
  await ava.getByTestId("message-input").fill("Stems for Thursday");
  await ava.getByTestId("send").click();
  const stems = sam.locator('[data-testid="message"]', { hasText: "Stems for Thursday" }).getByTestId("attachment");
  await expect.poll(() => stems.getAttribute("href")).toBe(stemsUrl);
  expect(await stems.textContent()).toContain("take3.wav");

  // A link anywhere else is refused, and the page says why.
  await ava.getByTestId("attach").click();
  await ava.getByTestId("attach-url").fill("https://files.example.com/take3.wav");
  await ava.getByTestId("message-input").fill("Mirror link");
  await ava.getByTestId("send").click();
  await expect
    .poll(() => ava.getByTestId("messages").locator("li.pending", { hasText: "Mirror link" }).locator(".meta").textContent())
    .toContain("is not an origin attachments may come from");

  // Ava takes a message back: Sam sees it deleted.
  await ava.getByTestId("message-input").fill("Wrong booking, sorry");
  await ava.getByTestId("send").click();
  const wrong = sam.locator('[data-testid="message"]', { hasText: "Wrong booking, sorry" });
  await wrong.waitFor();
  const wrongSeq = await wrong.getAttribute("data-seq");
  await ava.locator(`[data-testid="message"][data-seq="${wrongSeq}"]`).getByTestId("delete").click();
  const tombstone = sam.locator(`[data-testid="message"][data-seq="${wrongSeq}"]`);
  await expect.poll(() => tombstone.getByTestId("body").textContent()).toBe("Message deleted");
  expect(await tombstone.getAttribute("class")).toContain("deleted");

  // The backend marks the booking paid: both badges change; the bell counts it.
  await sam.locator("details.backend summary").click();
  await sam.getByTestId("status-select").selectOption("paid");
  await sam.getByTestId("status-apply").click();
  await expect.poll(() => ava.getByTestId("status-badge").textContent()).toBe("paid");
  await expect.poll(() => sam.getByTestId("status-badge").textContent()).toBe("paid");
  await expect.poll(() => ava.getByTestId("bell-count").textContent()).toBe("1");
  await ava.locator('[data-testid="message"].system', { hasText: "confirmed to paid" }).waitFor();
  await ava.getByTestId("bell").click();
  await ava.getByTestId("inbox").getByText("Booking paid").waitFor();
  await ava.getByTestId("read-all").click();
  await expect.poll(() => ava.getByTestId("bell-count").isHidden()).toBe(true);

  // Stripe refunds part of the payment: both badges say so, and the room's
  // notice states the amounts.
  await sam.getByTestId("partial-refund").click();
  await expect.poll(() => ava.getByTestId("status-badge").textContent()).toBe("partially refunded");
  await expect.poll(() => sam.getByTestId("status-badge").textContent()).toBe("partially refunded");
  await ava
    .locator('[data-testid="message"].system', { hasText: "€25.00 of €100.00 refunded" })
    .waitFor();

  // Support: the answer streams in piece by piece, then settles. A
  // MutationObserver records what the streaming bubble showed on its way,
  // so the check does not depend on catching it at the right moment.
  await ava.getByTestId("support-open").click();
  await ava.evaluate(() => {
    const seen: string[] = [];
    (window as unknown as { streamed: string[] }).streamed = seen;
    new MutationObserver(() => {
      const bubble = document.querySelector('[data-testid="support-streaming"]');
      if (bubble?.textContent) seen.push(bubble.textContent);
    }).observe(document.getElementById("support-messages")!, {
      childList: true,
      subtree: true,
      characterData: true,
    });
  });
  await ava.getByTestId("support-input").fill("How do refunds work?");
  await ava.getByTestId("support-send").click();
  const answer = ava.getByTestId("support-answer");
  await answer.waitFor({ timeout: 30_000 });
  const complete = (await answer.textContent()) ?? "";
  expect(complete.toLowerCase()).toContain("refund");
  const streamed = await ava.evaluate(() => (window as unknown as { streamed: string[] }).streamed);
  // Several growing partial texts, each a prefix of the final answer.
  expect(new Set(streamed).size).toBeGreaterThan(3);
  for (const partial of streamed) expect(complete.startsWith(partial)).toBe(true);

  mkdirSync(ARTIFACTS, { recursive: true });
  await ava.screenshot({ path: join(ARTIFACTS, "ava.png") });
  await sam.screenshot({ path: join(ARTIFACTS, "sam.png") });
  expect(pageErrors).toEqual([]);
});

test("a server without the support route: the widget says so, the chat keeps working", async () => {
  const context = await newContext();
  const page = await context.newPage();
  screenshotsOnFailure({ eli: page });
  // Stand-in for a server built before the support agent existed.
  await page.route("**/v1/support/conversations", (route) => route.fulfill({ status: 404, body: "" }));
  await page.goto(`${server.httpUrl}/?as=eli`);
  await expect.poll(() => page.getByTestId("connection").getAttribute("data-state")).toBe("open");
  await page.getByTestId("support-open").click();
  await expect
    .poll(() => page.getByTestId("support-note").textContent())
    .toBe("Support chat is not available on this server.");
  await page.getByTestId("support-close").click();
  await page.getByTestId("message-input").fill("Eli here, mixing starts Monday.");
  await page.getByTestId("send").click();
  await page.locator('[data-testid="message"]:not(.pending)', { hasText: "Eli here" }).waitFor();
});
