// The web client as people use it every day: a send whose answer is lost is stored once,
// sends show as pending and are retried after a reconnect, unread survives reloads and
// logouts, the conversation list holds whoever writes, new messages announce themselves
// while reading history, a URL per chat (Back on a phone), readable times and day
// dividers, avatars from the server itself, links, notifications, keyboard use and an
// accessibility scan; screenshots of the desktop and phone layouts.
//
//   node client.test.mjs <baseUrl> <artifactDir>
import {
  startRun,
  expect,
  register,
  login,
  chatItem,
  messageText,
  waitForMessage,
  send,
  startChat,
  registerThroughApi,
  loginThroughApi,
  sendThroughApi,
  storedMessages,
  expectAccessible,
} from "./harness.mjs";

const run = await startRun();
const step = run.step.bind(run);
const PHONE = { viewport: { width: 375, height: 740 }, isMobile: true, hasTouch: true };

const alice = { fullName: "Alice Martin", username: "alice" };
const bob = { fullName: "Bob Chen", username: "bob_chen" };

// Alice's browser. Her socket goes through a relay the test controls, so that an event can
// be held back (a send whose answer is lost must not be rescued by its event in the test).
const ctxA = await run.newContext();
const relay = { hold: false, held: [] };
await ctxA.routeWebSocket(/\/ws/, (ws) => {
  const server = ws.connectToServer();
  server.onMessage((frame) => {
    if (relay.hold && String(frame).includes('"newMessage"')) relay.held.push(() => ws.send(frame));
    else ws.send(frame);
  });
  ws.onMessage((frame) => server.send(frame));
});
function release() {
  relay.hold = false;
  for (const deliver of relay.held.splice(0)) deliver();
}
// Desktop notifications and tab visibility, under the test's control.
await ctxA.addInitScript(() => {
  window.__notifications = [];
  window.__hidden = false;
  class TestNotification {
    static permission = "default";
    static requestPermission() {
      TestNotification.permission = "granted";
      return Promise.resolve("granted");
    }
    constructor(title, options) {
      this.title = title;
      Object.assign(this, options);
      window.__notifications.push(this);
    }
    close() {
      this.closed = true;
    }
  }
  window.Notification = TestNotification;
  Object.defineProperty(document, "visibilityState", { get: () => (window.__hidden ? "hidden" : "visible") });
  Object.defineProperty(document, "hidden", { get: () => window.__hidden });
});

const ctxB = await run.newContext();
const aliceUser = await registerThroughApi(ctxA.request, alice);
const bobUser = await registerThroughApi(ctxB.request, bob);
let a; // Alice's page
let b; // Bob's page

await step("the login form: a wrong password is said in a sentence and typed again", async () => {
  const ctx = await run.newContext();
  const page = await run.openPage(ctx, "stranger");
  await login(page, alice.username, "not the password");
  await page.locator("#login-form-error", { hasText: /^Invalid username or password\.$/ }).waitFor();
  expect((await page.inputValue("#login-password")) === "", "the wrong password is still there");
  const focused = await page.evaluate(() => document.activeElement && document.activeElement.id);
  expect(focused === "login-password", `focus is on ${focused}, not the password`);
  await expectAccessible(page, "the login form");
});

await step("an empty registration flags every missing field at once, in characters", async () => {
  const page = run.pages.get("stranger");
  await page.click("#tab-register");
  await page.click("#register-form button[type=submit]");
  for (const field of ["fullName", "username", "password", "confirmPassword"]) {
    await page.locator(`#register-${field}[aria-invalid="true"]`).waitFor();
    const message = await page.textContent(`#register-${field}-error`);
    expect(/^[A-Z].*\.$/.test(message), `${field}: ${JSON.stringify(message)} is not a sentence`);
  }
  const focused = await page.evaluate(() => document.activeElement.id);
  expect(focused === "register-fullName", `focus is on ${focused}`);
  await register(page, { fullName: "Short", username: "shorty", password: "short" });
  await page.locator("#register-password-error", { hasText: "Must be at least 8 characters." }).waitFor();
  const texts = await page.locator("#register-form").textContent();
  expect(!/bytes/.test(texts), "the form speaks of bytes");
  await expectAccessible(page, "the registration form with errors");
  await page.context().close();
  run.forget("stranger");
});

await step("Alice and Bob are logged in", async () => {
  a = await run.openPage(ctxA, "alice");
  await a.locator("#chat-view").waitFor({ state: "visible" });
  b = await run.openPage(ctxB, "bob");
  await b.locator("#chat-view").waitFor({ state: "visible" });
  await a.waitForFunction(() => document.body.classList.contains("is-connected"));
  await b.waitForFunction(() => document.body.classList.contains("is-connected"));
});

await step("a 51st person's message shows at once at the top of the conversation list", async () => {
  const client = await run.apiClient();
  let last;
  for (let i = 1; i <= 55; i += 1) {
    const n = String(i).padStart(2, "0");
    last = await registerThroughApi(client, { fullName: `Person ${n}`, username: `person${n}` });
  }
  // The newest registration holds this client's cookie: person55, past the first 50 A→Z.
  await sendThroughApi(client, aliceUser._id, "Hello from number 55");
  await client.dispose();
  const first = a.locator("#conversation-list .chat-item").first();
  await first.locator(".full-name", { hasText: "Person 55" }).waitFor();
  await first.locator(".preview", { hasText: "Hello from number 55" }).waitFor();
  await first.locator(".unread", { hasText: "1" }).waitFor();
  expect(last.username === "person55", "set-up");
  const when = await first.locator(".when").textContent();
  expect(/^[1-9]\d?:\d\d [AP]M$/.test(when), `the time reads ${JSON.stringify(when)}`);
});

await step("unread shows in the tab title and the favicon, and survives a reload", async () => {
  await a.waitForFunction(() => document.title === "(1) Chat");
  const icon = await a.getAttribute("#favicon", "href");
  expect(icon.startsWith("data:image/svg+xml,"), `favicon is ${icon.slice(0, 40)}`);
  await a.reload();
  await chatItem(a, "Person 55").locator(".unread", { hasText: "1" }).waitFor();
  await a.waitForFunction(() => document.title === "(1) Chat");
});

await step("opening the chat shows a 'new' divider before the first unread message and reads it", async () => {
  await chatItem(a, "Person 55").click();
  await waitForMessage(a, "Hello from number 55");
  const order = await a.locator("#messages > li").evaluateAll((items) => items.map((li) => li.className));
  expect(order.join(" ").includes("divider day-divider divider unread-divider msg theirs"), `order: ${order}`);
  await a.locator("#messages .day-divider", { hasText: "Today" }).waitFor();
  await chatItem(a, "Person 55").locator(".unread").waitFor({ state: "hidden" });
  await a.waitForFunction(() => document.title === "Person 55 · Chat");
  expect((await a.getAttribute("#favicon", "href")) === "/assets/icon.svg", "the favicon still counts");
});

await step("messages that arrived while logged out are unread when logging in again", async () => {
  await a.click("#logout");
  await a.locator("#login-form").waitFor({ state: "visible" });
  await sendThroughApi(ctxB.request, aliceUser._id, "First while you were out");
  await sendThroughApi(ctxB.request, aliceUser._id, "Second while you were out");
  await login(a, alice.username);
  await chatItem(a, bob.fullName).locator(".unread", { hasText: "2" }).waitFor();
  await chatItem(a, "Person 55").locator(".unread").waitFor({ state: "hidden" });
  await a.waitForFunction(() => document.title === "(2) Chat");
});

await step("the avatars come from the server itself, nothing from another site", async () => {
  const sources = await a.locator(".avatar img").evaluateAll((imgs) => imgs.map((img) => img.src));
  expect(sources.length >= 3, `only ${sources.length} avatars`);
  for (const src of sources) {
    expect(new URL(src).origin === run.origin && /\/api\/v1\/user\/[0-9a-f-]{36}\/avatar$/.test(src), `avatar ${src}`);
  }
  await a.waitForFunction(() => [...document.querySelectorAll(".avatar img")].every((img) => img.complete && img.naturalWidth > 0));
  expect(run.foreignRequests.length === 0, `requests to other sites: ${run.foreignRequests.join(", ")}`);
});

await step("a send whose answer is lost is stored once: the retry carries the same key", async () => {
  await chatItem(a, bob.fullName).click();
  await waitForMessage(a, "Second while you were out");
  await chatItem(b, alice.fullName).click();
  const keys = [];
  let lose = true;
  await a.route("**/api/v1/message/send/**", async (route) => {
    keys.push(route.request().postDataJSON().clientMessageId);
    if (!lose) return route.continue();
    lose = false;
    await route.fetch(); // the server stores it...
    await route.abort("connectionreset"); // ...and the answer never arrives
  });
  relay.hold = true;
  await send(a, "Did this arrive?");
  const failed = a.locator("#outbox li.failed", { hasText: "Did this arrive?" });
  await failed.locator(".send-state", { hasText: "Not sent" }).waitFor();
  expect((await a.inputValue("#message-input")) === "", "the text was put back to be sent again as new");
  await failed.locator("button.retry").click();
  await waitForMessage(a, "Did this arrive?");
  await a.locator("#outbox li").waitFor({ state: "detached" });
  release();
  await waitForMessage(b, "Did this arrive?");
  await a.unroute("**/api/v1/message/send/**");
  expect(keys.length === 2 && keys[0] && keys[0] === keys[1], `keys sent: ${JSON.stringify(keys)}`);
  const stored = (await storedMessages(ctxA.request, bobUser._id)).filter((m) => m.message === "Did this arrive?");
  expect(stored.length === 1, `${stored.length} copies stored`);
  expect((await messageText(a, "Did this arrive?").count()) === 1, "shown twice");
  await a.reload();
  await waitForMessage(a, "Did this arrive?");
  expect((await messageText(a, "Did this arrive?").count()) === 1, "shown twice after a reload");
});

await step("a slow send shows at once as pending, then as sent", async () => {
  await a.route("**/api/v1/message/send/**", async (route) => {
    await new Promise((resolve) => setTimeout(resolve, 1500));
    await route.continue();
  });
  await send(a, "Slow but sure");
  await a.locator("#outbox li.pending", { hasText: "Slow but sure" }).locator(".send-state", { hasText: "Sending" }).waitFor();
  expect((await a.inputValue("#message-input")) === "", "the composer was not emptied");
  await waitForMessage(a, "Slow but sure");
  await a.locator("#outbox li").waitFor({ state: "detached" });
  await a.unroute("**/api/v1/message/send/**");
});

await step("offline: a failed send is retried by itself after the reconnect, once; what came meanwhile is unread", async () => {
  await ctxA.setOffline(true);
  await a.locator("#connection-status", { hasText: /offline/i }).waitFor({ state: "visible" });
  await send(a, "Written on the train");
  await a.locator("#outbox li.failed", { hasText: "Written on the train" }).locator("button.retry").waitFor();
  // Meanwhile someone writes in another chat.
  const person55 = await run.apiClient();
  await loginThroughApi(person55, "person55");
  await sendThroughApi(person55, aliceUser._id, "Sent while you were offline");
  await person55.dispose();
  await ctxA.setOffline(false);
  await a.locator("#connection-status").waitFor({ state: "hidden" });
  await waitForMessage(a, "Written on the train");
  await a.locator("#outbox li").waitFor({ state: "detached" });
  await a.locator("#composer-error").waitFor({ state: "hidden" });
  await waitForMessage(b, "Written on the train");
  const stored = (await storedMessages(ctxA.request, bobUser._id)).filter((m) => m.message === "Written on the train");
  expect(stored.length === 1, `${stored.length} copies stored`);
  const other = chatItem(a, "Person 55");
  await other.locator(".unread", { hasText: "1" }).waitFor();
  await other.locator(".preview", { hasText: "Sent while you were offline" }).waitFor();
  await other.click();
  await waitForMessage(a, "Sent while you were offline");
  await chatItem(a, bob.fullName).click();
  await waitForMessage(a, "Written on the train");
  await a.waitForFunction(() => document.title === "Bob Chen · Chat");
});

await step("a new message while reading older ones: a pill, and the message waits below", async () => {
  for (let i = 1; i <= 40; i += 1) await sendThroughApi(ctxB.request, aliceUser._id, `Bulk ${i}`);
  await waitForMessage(a, "Bulk 40");
  await a.locator("#messages-scroll").evaluate((node) => {
    node.scrollTop = 0;
  });
  await a.waitForFunction(() => {
    const node = document.querySelector("#messages-scroll");
    return node.scrollHeight - node.scrollTop - node.clientHeight > 300;
  });
  await sendThroughApi(ctxB.request, aliceUser._id, "While you were reading");
  await a.locator("#new-messages").waitFor({ state: "visible" });
  await a.locator("#unread-divider").waitFor({ state: "attached" });
  expect(!(await inView(a, messageText(a, "While you were reading"))), "the new message scrolled into view");
  await chatItem(a, bob.fullName).locator(".unread", { hasText: "1" }).waitFor();
  await a.click("#new-messages");
  await a.locator("#new-messages").waitFor({ state: "hidden" });
  expect(await inView(a, messageText(a, "While you were reading")), "the pill did not bring the message into view");
  await chatItem(a, bob.fullName).locator(".unread").waitFor({ state: "hidden" });
});

// Whether the whole of `locator` is inside the visible part of the messages.
async function inView(page, locator) {
  const box = await locator.boundingBox();
  const view = await page.locator("#messages-scroll").boundingBox();
  return Boolean(box && view && box.y >= view.y - 1 && box.y + box.height <= view.y + view.height + 1);
}

await step("the typing line covers no message", async () => {
  await a.locator("#messages-scroll").evaluate((node) => {
    node.scrollTop = node.scrollHeight;
  });
  await b.locator("#message-input").pressSequentially("Typing a long answer", { delay: 20 });
  await a.locator("#typing", { hasText: `${bob.fullName} is typing` }).waitFor({ state: "visible" });
  const newest = a.locator("#messages li.msg").last();
  expect(await inView(a, newest), "the newest message is not fully in view while the other types");
  const typing = await a.locator("#typing").boundingBox();
  const bubble = await newest.boundingBox();
  const overlap = typing.y < bubble.y + bubble.height && bubble.y < typing.y + typing.height;
  expect(!overlap, "the typing line overlaps the newest message");
  await b.fill("#message-input", "");
});

await step("links in messages are clickable and open safely; the rest stays text", async () => {
  await send(b, "Docs are at https://example.com/docs?page=2. And <b>this</b> is text.");
  const link = messageText(a, "Docs are at").locator("a");
  await link.waitFor();
  expect((await link.getAttribute("href")) === "https://example.com/docs?page=2", `href ${await link.getAttribute("href")}`);
  expect((await link.getAttribute("rel")) === "noopener noreferrer", "rel");
  expect((await link.getAttribute("target")) === "_blank", "target");
  expect((await link.textContent()) === "https://example.com/docs?page=2", "the full stop went into the link");
  expect((await messageText(a, "Docs are at").locator("b").count()) === 0, "markup became an element");
});

await step("days are divided (Today, Yesterday) and times read like 4:05 PM", async () => {
  const times = await a.locator("#messages time").allTextContents();
  for (const time of times) expect(/^[1-9]\d?:\d\d [AP]M$/.test(time), `a time reads ${JSON.stringify(time)}`);
  // Another browser of Alice's whose clock is a day ahead (a clock is per browser context).
  const ctx = await run.newContext();
  await loginThroughApi(ctx.request, alice.username);
  await ctx.clock.setFixedTime(new Date(Date.now() + 24 * 3600 * 1000));
  const page = await run.openPage(ctx, "alice-tomorrow", `/chat/${bobUser._id}`);
  await waitForMessage(page, "Docs are at");
  await page.locator("#messages .day-divider", { hasText: "Yesterday" }).waitFor();
  await chatItem(page, bob.fullName).locator(".when", { hasText: "Yesterday" }).waitFor();
  await ctx.close();
  run.forget("alice-tomorrow");
});

await step("desktop notifications: asked for on a click, only in the background, one per chat", async () => {
  await a.locator("#notify-offer").waitFor({ state: "visible" });
  await a.click("#enable-notifications");
  await a.locator("#notify-offer").waitFor({ state: "hidden" });
  await a.evaluate(() => {
    window.__hidden = true;
    document.dispatchEvent(new Event("visibilitychange"));
  });
  await sendThroughApi(ctxB.request, aliceUser._id, "Are you there?");
  await sendThroughApi(ctxB.request, aliceUser._id, "Hello?");
  await a.waitForFunction(() => window.__notifications.length === 2);
  const notes = await a.evaluate(() => window.__notifications.map((n) => ({ title: n.title, body: n.body, tag: n.tag })));
  expect(notes.every((n) => n.title === bob.fullName && n.tag === `chat-${bobUser._id}`), JSON.stringify(notes));
  expect(notes[1].body === "Hello?", JSON.stringify(notes));
  await a.waitForFunction(() => document.title.startsWith("(2) "));
  // Clicking it brings the chat, read.
  await a.keyboard.press("Escape");
  await a.locator("#conversation-pane").waitFor({ state: "hidden" });
  await a.evaluate(() => {
    window.__hidden = false;
    window.__notifications[1].onclick();
  });
  await a.locator("#peer-name", { hasText: bob.fullName }).waitFor();
  await a.waitForFunction(() => document.title === `${"Bob Chen"} · Chat`);
  await a.evaluate(() => {
    window.__notifications.length = 0;
  });
  await sendThroughApi(ctxB.request, aliceUser._id, "Visible now");
  await waitForMessage(a, "Visible now");
  expect((await a.evaluate(() => window.__notifications.length)) === 0, "notified while the tab was in front");
});

await step("keyboard: a skip link to the composer, Escape closes the chat", async () => {
  await a.reload();
  await a.locator("#peer-name", { hasText: bob.fullName }).waitFor();
  // The skip link is what the first Tab reaches: the first focusable element of the page.
  const first = await a.evaluate(() => {
    const focusable = 'a[href], button:not([disabled]), input, textarea, select, [tabindex]:not([tabindex="-1"])';
    return [...document.querySelectorAll(focusable)].find((node) => node.getClientRects().length || node.id === "skip-link").id;
  });
  expect(first === "skip-link", `the first focusable element is ${first}`);
  await a.focus("#skip-link");
  const box = await a.locator("#skip-link").boundingBox();
  expect(box && box.y >= 0, "the skip link is not on screen when focused");
  await a.keyboard.press("Enter");
  expect((await a.evaluate(() => document.activeElement.id)) === "message-input", "the skip link did not reach the composer");
  await a.keyboard.press("Escape");
  await a.locator("#conversation-pane").waitFor({ state: "hidden" });
  expect(new URL(a.url()).pathname === "/", `the URL is ${a.url()}`);
  const focused = await a.evaluate(() => document.activeElement.dataset.userId);
  expect(focused === bobUser._id, "focus did not return to the chat's entry");
});

await step("the desktop layout passes the accessibility scan", async () => {
  await chatItem(a, bob.fullName).click();
  await waitForMessage(a, "Visible now");
  await expectAccessible(a, "the desktop chat");
});

await step("Bob goes away: Alice sees when he was last seen", async () => {
  await b.close();
  run.forget("bob");
  await a.locator("#peer-status", { hasText: /^last seen today at [1-9]\d?:\d\d [AP]M$/ }).waitFor();
});

await step("on a phone: each chat has a URL, Back returns to the list, reload reopens the chat", async () => {
  const ctx = await run.newContext(PHONE);
  await loginThroughApi(ctx.request, bob.username);
  const phone = await run.openPage(ctx, "bob-phone");
  await chatItem(phone, alice.fullName).click();
  await waitForMessage(phone, "Visible now");
  expect(new URL(phone.url()).pathname === `/chat/${aliceUser._id}`, `URL ${phone.url()}`);
  expect(!(await phone.locator("#conversation-list").isVisible()), "the list shows beside the chat on a phone");
  await phone.goBack();
  await phone.locator("#conversation-list").waitFor({ state: "visible" });
  await phone.locator("#conversation-pane").waitFor({ state: "hidden" });
  expect(new URL(phone.url()).pathname === "/", `Back led to ${phone.url()}`);
  await phone.goForward();
  await waitForMessage(phone, "Visible now");
  await phone.reload();
  await waitForMessage(phone, "Visible now");
  await phone.locator("#peer-name", { hasText: alice.fullName }).waitFor();
  // A chat's link opened directly still has the list under it.
  await phone.goto(`/chat/${aliceUser._id}`);
  await waitForMessage(phone, "Visible now");
  await phone.click("#back");
  await phone.locator("#conversation-list").waitFor({ state: "visible" });
  expect(new URL(phone.url()).pathname === "/", `the back button led to ${phone.url()}`);
});

await step("on a phone: a 44 px back button, 16 px text fields, and a clean accessibility scan", async () => {
  const phone = run.pages.get("bob-phone");
  await expectAccessible(phone, "the phone list");
  await chatItem(phone, alice.fullName).click();
  await waitForMessage(phone, "Visible now");
  const back = await phone.locator("#back").boundingBox();
  expect(back.width >= 44 && back.height >= 44, `the back button is ${back.width}×${back.height}`);
  const sizes = await phone.evaluate(() =>
    ["#message-input", "#user-search", "#login-username"].map((s) => parseFloat(getComputedStyle(document.querySelector(s)).fontSize)),
  );
  expect(sizes.every((size) => size >= 16), `text field sizes ${sizes}`);
  await expectAccessible(phone, "the phone chat");
  await phone.context().close();
  run.forget("bob-phone");
});

await step("screenshots of the desktop and phone layouts", async () => {
  const ctx = await run.newContext();
  await ctx.grantPermissions(["notifications"]);
  const maya = await registerThroughApi(ctx.request, { fullName: "Maya Patel", username: "maya" });
  const jonasClient = await run.apiClient();
  const jonas = await registerThroughApi(jonasClient, { fullName: "Jonas Weber", username: "jonas" });
  const lenaClient = await run.apiClient();
  await registerThroughApi(lenaClient, { fullName: "Lena Fischer", username: "lena" });
  const page = await run.openPage(ctx, "maya");
  await page.waitForFunction(() => document.body.classList.contains("is-connected"));
  await sendThroughApi(lenaClient, maya._id, "Thanks for yesterday! The notes are in the shared folder.");
  await sendThroughApi(jonasClient, maya._id, "Morning! Are we still on for the design review at 11?");
  await sendThroughApi(ctx.request, jonas._id, "Yes! I'll bring the new mockups.");
  await sendThroughApi(jonasClient, maya._id, "Great. Could you share the prototype link before?");
  await sendThroughApi(ctx.request, jonas._id, "Sure: https://example.com/prototype");
  await sendThroughApi(jonasClient, maya._id, "Thanks, looks good. See you at 11.");
  await chatItem(page, "Jonas Weber").click();
  await waitForMessage(page, "See you at 11.");
  await page.locator("#message-input").fill("On my way");
  await page.evaluate(() => document.activeElement.blur());
  await run.screenshot(page, "desktop.png");

  const phoneCtx = await run.newContext(PHONE);
  await loginThroughApi(phoneCtx.request, "maya");
  const phone = await run.openPage(phoneCtx, "maya-phone");
  await chatItem(phone, "Jonas Weber").waitFor();
  await phone.waitForFunction(() => document.body.classList.contains("is-connected"));
  await sendThroughApi(lenaClient, maya._id, "Lunch today? The new place on the corner?");
  // Both of Lena's messages: neither was read, on any device (the count is the server's).
  await chatItem(phone, "Lena Fischer").locator(".unread", { hasText: "2" }).waitFor();
  await lenaClient.dispose();
  const width = await phone.evaluate(() => document.documentElement.scrollWidth);
  expect(width <= 375, `the page is ${width} px wide on a 375 px screen`);
  await run.screenshot(phone, "phone-list.png");
  await chatItem(phone, "Jonas Weber").click();
  await waitForMessage(phone, "See you at 11.");
  await jonasClient.post("/api/v1/message/send/" + maya._id, { data: { message: "Just landed, 5 minutes away" } });
  await waitForMessage(phone, "5 minutes away");
  await run.screenshot(phone, "phone-chat.png");
  await jonasClient.dispose();
  await ctx.close();
  await phoneCtx.close();
  run.forget("maya");
  run.forget("maya-phone");
});

await step("nothing was asked of another site", async () => {
  expect(run.foreignRequests.length === 0, `requests to other sites: ${run.foreignRequests.join(", ")}`);
  expect(run.dialogs.length === 0, `dialogs: ${run.dialogs.join(", ")}`);
});

await run.finish();
