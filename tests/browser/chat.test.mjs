// Two people chat through the built-in web client in headless Chromium.
//
//   node chat.test.mjs <baseUrl> <artifactDir>
//
// Prints one line per step and closes with "N passed, N failed"; exits non-zero on the first
// failing step, after saving a screenshot of every open page into <artifactDir>.
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { chromium } from "playwright-core";

const [baseUrl, artifactDir] = process.argv.slice(2);
if (!baseUrl || !artifactDir) {
  console.error("usage: node chat.test.mjs <baseUrl> <artifactDir>");
  process.exit(2);
}
const origin = new URL(baseUrl).origin;
mkdirSync(artifactDir, { recursive: true });

const STEP_TIMEOUT_MS = 10_000;
const WHOLE_RUN_MS = 240_000;
const PASSWORD = "correct horse battery";
const XSS = "<img src=x onerror=alert(1)>";

const watchdog = setTimeout(() => {
  console.error(`the browser test did not finish within ${WHOLE_RUN_MS / 1000} s`);
  process.exit(3);
}, WHOLE_RUN_MS);
watchdog.unref();

// launch() gives the browser a fresh profile in a temporary folder, removed on close.
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM_PATH || "/usr/bin/chromium",
  headless: true,
  args: [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--disable-quic",
  ],
});

const pages = new Map(); // name -> page, for failure screenshots
const problems = []; // script errors and CSP violations seen on any page
const dialogs = [];

async function newContext() {
  const context = await browser.newContext({ baseURL: origin, viewport: { width: 1100, height: 680 } });
  // Only our origin: avatars are external URLs, and the test must not depend on the network.
  await context.route((url) => url.origin !== origin, (route) => route.abort());
  context.setDefaultTimeout(STEP_TIMEOUT_MS);
  return context;
}

async function openPage(context, name) {
  const page = await context.newPage();
  pages.set(name, page);
  page.on("pageerror", (error) => problems.push(`${name}: script error: ${error.message}`));
  page.on("console", (message) => {
    if (message.type() === "error" && /Content Security Policy|Refused to/i.test(message.text())) {
      problems.push(`${name}: ${message.text()}`);
    }
  });
  page.on("dialog", (dialog) => {
    dialogs.push(`${name}: ${dialog.type()} ${dialog.message()}`);
    dialog.dismiss().catch(() => {});
  });
  await page.goto("/");
  return page;
}

let passed = 0;
let failed = 0;

async function step(name, body) {
  try {
    await body();
    if (problems.length) throw new Error(problems.join("\n"));
    passed += 1;
    console.log(`ok ${passed} - ${name}`);
  } catch (error) {
    failed += 1;
    console.log(`not ok ${passed + failed} - ${name}`);
    console.log(String(error && error.stack ? error.stack : error).replace(/^/gm, "    "));
    for (const [pageName, page] of pages) {
      if (page.isClosed()) continue;
      await page
        .screenshot({ path: join(artifactDir, `failure-${pageName}.png`), fullPage: true })
        .catch(() => {});
    }
    await finish();
  }
}

async function finish() {
  await browser.close().catch(() => {});
  console.log(`${passed} passed, ${failed} failed`);
  process.exit(failed ? 1 : 0);
}

function expect(condition, message) {
  if (!condition) throw new Error(message);
}

// ---------------------------------------------------------------- helpers on the page

async function register(page, { fullName, username, password = PASSWORD, confirm = password }) {
  await page.click("#tab-register");
  await page.fill("#register-fullName", fullName);
  await page.fill("#register-username", username);
  await page.fill("#register-password", password);
  await page.fill("#register-confirmPassword", confirm);
  await page.click("#register-form button[type=submit]");
}

const userButton = (page, username) => page.locator("#user-list .user", { hasText: `@${username}` });
const messageText = (page, text) => page.locator("#messages li.msg .text", { hasText: text });

async function waitForMessage(page, text) {
  await messageText(page, text).last().waitFor({ state: "visible" });
}

async function send(page, text) {
  await page.fill("#message-input", text);
  await page.press("#message-input", "Enter");
}

// ---------------------------------------------------------------- the scenario

const alice = { fullName: "Alice Martin", username: "alice" };
const bob = { fullName: "Bob Chen", username: "bob_chen" };

// Someone who never comes online, so the list has an offline entry too.
const carol = { fullName: "Carol Diaz", username: "carol" };
{
  const context = await newContext();
  const response = await context.request.post("/api/v1/user/register", {
    data: { ...carol, password: PASSWORD, gender: "female" },
  });
  if (response.status() !== 201) {
    console.error(`registering ${carol.username} through the API: ${response.status()} ${await response.text()}`);
    process.exit(1);
  }
  await context.close();
}

const ctxA = await newContext();
const ctxB = await newContext();
let a; // Alice's first tab
let b; // Bob's tab
let a2; // Alice's second tab

await step("the page is served with the login form", async () => {
  a = await openPage(ctxA, "alice");
  await a.locator("#login-form").waitFor({ state: "visible" });
  expect((await a.title()) === "Chat", `title is ${await a.title()}`);
});

await step("a validation error from the API shows next to its field", async () => {
  await register(a, { ...alice, password: "short" });
  const error = a.locator("#register-password-error");
  await error.filter({ hasText: /at least 8/i }).waitFor();
  expect((await a.getAttribute("#register-password", "aria-invalid")) === "true", "password not marked invalid");
  await register(a, { ...alice, confirm: "something else entirely" });
  await a.locator("#register-confirmPassword-error").filter({ hasText: /match/i }).waitFor();
});

await step("Alice registers and lands in the chat", async () => {
  await a.screenshot({ path: join(artifactDir, "register.png") });
  await register(a, alice);
  await a.locator("#chat-view").waitFor({ state: "visible" });
  await a.locator("#me-name", { hasText: alice.fullName }).waitFor();
});

await step("a taken username is reported on the username field", async () => {
  b = await openPage(ctxB, "bob");
  await register(b, { ...bob, username: "ALICE" });
  await b.locator("#register-username-error").filter({ hasText: /taken/i }).waitFor();
});

await step("Bob registers; each sees the other in the list, online", async () => {
  await register(b, bob);
  await b.locator("#chat-view").waitFor({ state: "visible" });
  await userButton(b, alice.username).and(b.locator(".online")).waitFor();
  // Alice's list was loaded before Bob existed: his coming online brings him in.
  await userButton(a, bob.username).and(a.locator(".online")).waitFor();
});

await step("the search narrows the list", async () => {
  await a.fill("#user-search", "nobody-by-this-name");
  await a.locator("#user-list-empty").waitFor({ state: "visible" });
  await a.fill("#user-search", "bob");
  await userButton(a, bob.username).waitFor();
  await userButton(a, carol.username).waitFor({ state: "detached" });
  await a.fill("#user-search", "");
  await userButton(a, carol.username).and(a.locator(":not(.online)")).waitFor();
  await userButton(a, bob.username).and(a.locator(".online")).waitFor();
});

await step("messages appear live on both sides", async () => {
  await userButton(a, bob.username).click();
  await a.locator("#peer-name", { hasText: bob.fullName }).waitFor();
  await a.locator("#peer-status", { hasText: "online" }).waitFor();
  await userButton(b, alice.username).click();
  await b.locator("#peer-name", { hasText: alice.fullName }).waitFor();

  await send(a, "Hi Bob! Did the deploy go out?");
  await waitForMessage(b, "Hi Bob! Did the deploy go out?");
  await waitForMessage(a, "Hi Bob! Did the deploy go out?");
  await send(b, "Yes, ten minutes ago. Everything is green.");
  await waitForMessage(a, "Everything is green");
  await send(a, "Great, thanks.\nI'll tell the team.");
  await waitForMessage(b, "I'll tell the team.");
  expect((await a.locator("#messages li.msg").count()) === 3, "Alice does not see exactly three messages");
  expect((await b.locator("#messages li.msg").count()) === 3, "Bob does not see exactly three messages");
  expect((await a.locator("#messages li.msg.mine").count()) === 2, "Alice's own messages are not on her side");
});

await step("the typing indicator shows while the other types, and goes away", async () => {
  await b.locator("#message-input").pressSequentially("Sounds good", { delay: 20 });
  await a.locator("#typing", { hasText: `${bob.fullName} is typing` }).waitFor({ state: "visible" });
  await a.screenshot({ path: join(artifactDir, "conversation.png") });
  await b.press("#message-input", "Enter");
  await waitForMessage(a, "Sounds good");
  await a.locator("#typing").waitFor({ state: "hidden" });
});

await step("a message that looks like HTML is shown as text", async () => {
  await send(a, XSS);
  for (const page of [a, b]) {
    await waitForMessage(page, XSS);
    const text = await messageText(page, XSS).last().textContent();
    expect(text === XSS, `rendered as ${JSON.stringify(text)}`);
    expect((await page.locator("#messages img").count()) === 0, "an img element was created");
  }
  expect(dialogs.length === 0, `a dialog opened: ${dialogs.join(", ")}`);
});

await step("a second tab of Alice stays in sync", async () => {
  a2 = await openPage(ctxA, "alice-tab2");
  await a2.locator("#chat-view").waitFor({ state: "visible" });
  await userButton(a2, bob.username).click();
  await waitForMessage(a2, XSS);
  await send(a, "Sent from the first tab");
  await waitForMessage(a2, "Sent from the first tab");
  await send(b, "Both your tabs should see this");
  await waitForMessage(a, "Both your tabs should see this");
  await waitForMessage(a2, "Both your tabs should see this");
});

await step("older messages load page by page when scrolling up", async () => {
  const aliceId = await userButton(b, alice.username).getAttribute("data-user-id");
  for (let i = 1; i <= 40; i += 1) {
    const response = await ctxB.request.post(`/api/v1/message/send/${aliceId}`, { data: { message: `Bulk ${i}` } });
    expect(response.status() === 201, `sending bulk message ${i}: ${response.status()}`);
  }
  await waitForMessage(a2, "Bulk 40");
  await a2.reload();
  await userButton(a2, bob.username).click();
  await waitForMessage(a2, "Bulk 40");
  const total = 7 + 40;
  const first = await a2.locator("#messages li.msg").count();
  expect(first === 30, `the first page holds ${first} messages, not 30`);
  expect((await messageText(a2, "Hi Bob!").count()) === 0, "the oldest message is already loaded");
  await a2.locator("#messages-scroll").evaluate((node) => {
    node.scrollTop = 0;
  });
  await waitForMessage(a2, "Hi Bob! Did the deploy go out?");
  await a2.waitForFunction((n) => document.querySelectorAll("#messages li.msg").length === n, total);
  await a2.locator("#history-status", { hasText: "beginning" }).waitFor();
  await a2.setViewportSize({ width: 390, height: 720 });
  await a2.screenshot({ path: join(artifactDir, "narrow.png") });
  await a2.setViewportSize({ width: 1100, height: 680 });
  const texts = await a2.locator("#messages li.msg .text").allTextContents();
  expect(texts[0] === "Hi Bob! Did the deploy go out?" && texts[total - 1] === "Bulk 40", "messages out of order");
  expect(new Set(texts).size === texts.length, "a message is shown twice");
});

await step("offline: the page says so, reconnects and shows what it missed", async () => {
  await ctxA.setOffline(true);
  await a.locator("#connection-status", { hasText: /offline|reconnecting/i }).waitFor({ state: "visible" });
  await a.screenshot({ path: join(artifactDir, "offline.png") });
  await send(b, "Are you back?");
  await waitForMessage(b, "Are you back?");
  await ctxA.setOffline(false);
  await a.locator("#connection-status").waitFor({ state: "hidden" });
  await waitForMessage(a, "Are you back?");
  await a.waitForFunction(() => document.body.classList.contains("is-connected"));
  // Live again, not just reloaded.
  await send(b, "Welcome back");
  await waitForMessage(a, "Welcome back");
});

await step("Bob leaving turns his dot off on Alice's side", async () => {
  await ctxB.close();
  pages.delete("bob");
  await userButton(a, bob.username).and(a.locator(":not(.online)")).waitFor();
  await a.locator("#peer-status", { hasText: "offline" }).waitFor();
});

await step("logging out in one tab logs out the other; logging in again works", async () => {
  await a.click("#logout");
  await a.locator("#login-form").waitFor({ state: "visible" });
  await a2.locator("#login-form").waitFor({ state: "visible" });
  await a.fill("#login-username", alice.username);
  await a.fill("#login-password", "not the password");
  await a.click("#login-form button[type=submit]");
  await a.locator("#login-form-error", { hasText: /invalid/i }).waitFor();
  await a.fill("#login-password", PASSWORD);
  await a.click("#login-form button[type=submit]");
  await a.locator("#chat-view").waitFor({ state: "visible" });
  await userButton(a, bob.username).waitFor();
  await a2.locator("#chat-view").waitFor({ state: "visible" });
});

await finish();
