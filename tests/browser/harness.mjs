// What every browser scenario shares: headless Chromium, contexts that reach nothing but
// the server under test, numbered steps that stop at the first failure (saving a screenshot
// of every open page), helpers on the page, and the axe-core accessibility scan.
//
// A scenario file is run as `node <file> <baseUrl> <artifactDir>`; it prints one line per
// step and closes with "N passed, N failed"; it exits non-zero on the first failing step.
import { mkdirSync, readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";
import { chromium, request } from "playwright-core";

const STEP_TIMEOUT_MS = 10_000;
export const PASSWORD = "correct horse battery";

// A time zone where it is about noon now, so that no run crosses midnight: "Today" and
// "Yesterday" mean the same from its first step to its last. (Etc/GMT-N is UTC+N.)
const NOON_ZONE = (() => {
  let shift = 12 - new Date().getUTCHours();
  if (shift > 12) shift -= 24;
  return shift === 0 ? "UTC" : `Etc/GMT${shift > 0 ? "-" : "+"}${Math.abs(shift)}`;
})();

export async function startRun({ wholeRunMs = 170_000 } = {}) {
  const [baseUrl, artifactDir] = process.argv.slice(2);
  if (!baseUrl || !artifactDir) {
    console.error("usage: node <scenario>.mjs <baseUrl> <artifactDir>");
    process.exit(2);
  }
  const origin = new URL(baseUrl).origin;
  mkdirSync(artifactDir, { recursive: true });

  const watchdog = setTimeout(() => {
    console.error(`the browser scenario did not finish within ${wholeRunMs / 1000} s`);
    process.exit(3);
  }, wholeRunMs);
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

  const run = new Run({ browser, origin, artifactDir });
  return run;
}

class Run {
  constructor({ browser, origin, artifactDir }) {
    this.browser = browser;
    this.origin = origin;
    this.artifactDir = artifactDir;
    this.pages = new Map(); // name -> page, for failure screenshots
    this.problems = []; // script errors and CSP violations seen on any page
    this.dialogs = [];
    this.foreignRequests = []; // anything a page asked of another origin
    this.passed = 0;
    this.failed = 0;
  }

  // A browser profile of its own (cookies, storage), in English, desktop-sized unless told.
  async newContext(options = {}) {
    const context = await this.browser.newContext({
      baseURL: this.origin,
      viewport: { width: 1100, height: 680 },
      locale: "en-US",
      timezoneId: NOON_ZONE,
      ...options,
    });
    // Only our origin: the page must not depend on (or tell anything to) another site.
    await context.route(
      (url) => url.origin !== this.origin,
      (route) => {
        this.foreignRequests.push(route.request().url());
        return route.abort();
      },
    );
    context.setDefaultTimeout(STEP_TIMEOUT_MS);
    return context;
  }

  async openPage(context, name, path = "/") {
    const page = await context.newPage();
    this.pages.set(name, page);
    page.on("pageerror", (error) => this.problems.push(`${name}: script error: ${error.message}`));
    page.on("console", (message) => {
      if (message.type() === "error" && /Content Security Policy|Refused to/i.test(message.text())) {
        this.problems.push(`${name}: ${message.text()}`);
      }
    });
    page.on("dialog", (dialog) => {
      this.dialogs.push(`${name}: ${dialog.type()} ${dialog.message()}`);
      dialog.dismiss().catch(() => {});
    });
    await page.goto(path);
    return page;
  }

  forget(name) {
    this.pages.delete(name);
  }

  async step(name, body) {
    try {
      await body();
      if (this.problems.length) throw new Error(this.problems.join("\n"));
      this.passed += 1;
      console.log(`ok ${this.passed} - ${name}`);
    } catch (error) {
      this.failed += 1;
      console.log(`not ok ${this.passed + this.failed} - ${name}`);
      console.log(String(error && error.stack ? error.stack : error).replace(/^/gm, "    "));
      for (const [pageName, page] of this.pages) {
        if (page.isClosed()) continue;
        await page
          .screenshot({ path: join(this.artifactDir, `failure-${pageName}.png`), fullPage: true })
          .catch(() => {});
      }
      await this.finish();
    }
  }

  async finish() {
    await this.browser.close().catch(() => {});
    console.log(`${this.passed} passed, ${this.failed} failed`);
    process.exit(this.failed ? 1 : 0);
  }

  screenshot(page, name) {
    return page.screenshot({ path: join(this.artifactDir, name) });
  }

  // A client of the API alone (no page), logged in as whoever it registers or logs in.
  async apiClient() {
    return request.newContext({ baseURL: this.origin });
  }
}

export function expect(condition, message) {
  if (!condition) throw new Error(message);
}

// ---------------------------------------------------------------- the API, for set-up

// Registers through the API with `client` (a page context's `request`, which then shares
// the login cookie with the pages, or an `apiClient()`); returns the new user.
export async function registerThroughApi(client, user) {
  const response = await client.post("/api/v1/user/register", { data: { password: PASSWORD, ...user } });
  if (response.status() !== 201) {
    throw new Error(`registering ${user.username}: ${response.status()} ${await response.text()}`);
  }
  return (await response.json()).responseData.newUser;
}

export async function loginThroughApi(client, username) {
  const response = await client.post("/api/v1/user/login", { data: { username, password: PASSWORD } });
  if (response.status() !== 200) throw new Error(`logging ${username} in: ${response.status()}`);
  return (await response.json()).responseData.user;
}

export async function sendThroughApi(client, toId, message) {
  const response = await client.post(`/api/v1/message/send/${toId}`, { data: { message } });
  if (response.status() !== 201) throw new Error(`sending ${JSON.stringify(message)}: ${response.status()}`);
  return (await response.json()).responseData;
}

// Every message of a conversation, as the server stores it, oldest first.
export async function storedMessages(client, otherId) {
  const response = await client.get(`/api/v1/message/get-messages/${otherId}?limit=200`);
  if (response.status() !== 200) throw new Error(`reading messages: ${response.status()}`);
  return (await response.json()).responseData.messages;
}

// ---------------------------------------------------------------- helpers on the page

export async function register(page, { fullName, username, password = PASSWORD, confirm = password }) {
  await page.click("#tab-register");
  await page.fill("#register-fullName", fullName);
  await page.fill("#register-username", username);
  await page.fill("#register-password", password);
  await page.fill("#register-confirmPassword", confirm);
  await page.click("#register-form button[type=submit]");
}

export async function login(page, username, password = PASSWORD) {
  await page.fill("#login-username", username);
  await page.fill("#login-password", password);
  await page.click("#login-form button[type=submit]");
}

// An entry of the conversation list, by the other person's full name.
export const chatItem = (page, fullName) =>
  page.locator("#conversation-list .chat-item").filter({ has: page.locator(".full-name", { hasText: fullName }) });
// An entry of the people directory ("New chat"), by username.
export const personItem = (page, username) => page.locator("#user-list .user", { hasText: `@${username}` });
export const messageText = (page, text) => page.locator("#messages li.msg .text", { hasText: text });

export async function waitForMessage(page, text) {
  await messageText(page, text).last().waitFor({ state: "visible" });
}

export async function send(page, text) {
  await page.fill("#message-input", text);
  await page.press("#message-input", "Enter");
}

// Opens the people directory and starts a chat with `username`.
export async function startChat(page, username) {
  await page.click("#new-chat");
  await page.fill("#user-search", username);
  await personItem(page, username).click();
}

// ---------------------------------------------------------------- accessibility

const axeSource = readFileSync(createRequire(import.meta.url).resolve("axe-core/axe.min.js"), "utf8");

// Runs axe-core on the page as it is (WCAG 2 A and AA rules and axe's best practices);
// fails on any serious or critical violation, naming each with the elements it found.
export async function expectAccessible(page, label) {
  // evaluate() is not subject to the page's Content-Security-Policy, a script tag would be.
  await page.evaluate(axeSource);
  const results = await page.evaluate(() =>
    // eslint-disable-next-line no-undef
    axe.run(document, { resultTypes: ["violations"] }),
  );
  const bad = results.violations.filter((v) => v.impact === "serious" || v.impact === "critical");
  const text = bad
    .map((v) => `${v.impact} ${v.id}: ${v.help}\n${v.nodes.map((n) => `      ${n.target.join(" ")}`).join("\n")}`)
    .join("\n  ");
  expect(bad.length === 0, `${label}: accessibility violations:\n  ${text}`);
  return results.violations;
}
