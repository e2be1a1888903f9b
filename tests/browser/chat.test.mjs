// Two people chat through the built-in web client in headless Chromium: registering,
// finding each other, live messages, typing, presence, history pages, a second tab, going
// offline and coming back, logging out.
//
//   node chat.test.mjs <baseUrl> <artifactDir>
import {
  startRun,
  expect,
  register,
  login,
  chatItem,
  personItem,
  messageText,
  waitForMessage,
  send,
  registerThroughApi,
  PASSWORD,
} from "./harness.mjs";

const XSS = "<img src=x onerror=alert(1)>";
const run = await startRun();
const step = run.step.bind(run);

const alice = { fullName: "Alice Martin", username: "alice" };
const bob = { fullName: "Bob Chen", username: "bob_chen" };
// Someone who never comes online, so the directory has an offline entry too.
const carol = { fullName: "Carol Diaz", username: "carol" };
{
  const client = await run.apiClient();
  await registerThroughApi(client, { ...carol, gender: "female" });
  await client.dispose();
}

const ctxA = await run.newContext();
const ctxB = await run.newContext();
let a; // Alice's first tab
let b; // Bob's tab
let a2; // Alice's second tab

await step("the page is served with the login form", async () => {
  a = await run.openPage(ctxA, "alice");
  await a.locator("#login-form").waitFor({ state: "visible" });
  expect((await a.title()) === "Chat", `title is ${await a.title()}`);
});

await step("a validation error from the API shows next to its field", async () => {
  // The form checks what it can itself; what only the server knows comes back per field.
  await register(a, { ...alice, username: "carol" });
  await a.locator("#register-username-error").filter({ hasText: /taken/i }).waitFor();
  expect((await a.getAttribute("#register-username", "aria-invalid")) === "true", "username not marked invalid");
  await register(a, { ...alice, confirm: "something else entirely" });
  await a.locator("#register-confirmPassword-error").filter({ hasText: /match/i }).waitFor();
});

await step("Alice registers and lands in the chat", async () => {
  await run.screenshot(a, "register.png");
  await register(a, alice);
  await a.locator("#chat-view").waitFor({ state: "visible" });
  await a.locator("#me-name", { hasText: alice.fullName }).waitFor();
  await a.locator("#conversation-list-empty").waitFor({ state: "visible" });
});

await step("Bob registers; each finds the other among the people, online", async () => {
  b = await run.openPage(ctxB, "bob");
  await register(b, bob);
  await b.locator("#chat-view").waitFor({ state: "visible" });
  await b.click("#new-chat");
  await personItem(b, alice.username).and(b.locator(".online")).waitFor();
  await a.click("#new-chat");
  await personItem(a, bob.username).and(a.locator(".online")).waitFor();
});

await step("the search narrows the people list", async () => {
  await a.fill("#user-search", "nobody-by-this-name");
  await a.locator("#user-list-empty").waitFor({ state: "visible" });
  await a.fill("#user-search", "bob");
  await personItem(a, bob.username).waitFor();
  await personItem(a, carol.username).waitFor({ state: "detached" });
  await a.fill("#user-search", "");
  await personItem(a, carol.username).and(a.locator(":not(.online)")).waitFor();
  await personItem(a, bob.username).and(a.locator(".online")).waitFor();
});

await step("messages appear live on both sides, and the chat joins both lists", async () => {
  await personItem(a, bob.username).click();
  await a.locator("#peer-name", { hasText: bob.fullName }).waitFor();
  await a.locator("#peer-status", { hasText: "online" }).waitFor();

  await send(a, "Hi Bob! Did the deploy go out?");
  await waitForMessage(a, "Hi Bob! Did the deploy go out?");
  // Bob has no chat open: Alice's first message brings her into his list, unread.
  await b.click("#close-people");
  const item = chatItem(b, alice.fullName);
  await item.locator(".unread", { hasText: "1" }).waitFor();
  await item.locator(".preview", { hasText: "Did the deploy go out?" }).waitFor();
  await item.click();
  await b.locator("#peer-name", { hasText: alice.fullName }).waitFor();
  await waitForMessage(b, "Hi Bob! Did the deploy go out?");
  await item.locator(".unread").waitFor({ state: "hidden" });

  await send(b, "Yes, ten minutes ago. Everything is green.");
  await waitForMessage(a, "Everything is green");
  await send(a, "Great, thanks.\nI'll tell the team.");
  await waitForMessage(b, "I'll tell the team.");
  expect((await a.locator("#messages li.msg").count()) === 3, "Alice does not see exactly three messages");
  expect((await b.locator("#messages li.msg").count()) === 3, "Bob does not see exactly three messages");
  expect((await a.locator("#messages li.msg.mine").count()) === 2, "Alice's own messages are not on her side");
  await chatItem(a, bob.fullName).locator(".preview", { hasText: "You: Great, thanks. I'll tell the team." }).waitFor();
});

await step("the typing indicator shows while the other types, and goes away", async () => {
  await b.locator("#message-input").pressSequentially("Sounds good", { delay: 20 });
  await a.locator("#typing", { hasText: `${bob.fullName} is typing` }).waitFor({ state: "visible" });
  await run.screenshot(a, "conversation.png");
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
  expect(run.dialogs.length === 0, `a dialog opened: ${run.dialogs.join(", ")}`);
});

await step("a second tab of Alice stays in sync", async () => {
  a2 = await run.openPage(ctxA, "alice-tab2");
  await a2.locator("#chat-view").waitFor({ state: "visible" });
  await chatItem(a2, bob.fullName).click();
  await waitForMessage(a2, XSS);
  await send(a, "Sent from the first tab");
  await waitForMessage(a2, "Sent from the first tab");
  await send(b, "Both your tabs should see this");
  await waitForMessage(a, "Both your tabs should see this");
  await waitForMessage(a2, "Both your tabs should see this");
});

await step("older messages load page by page when scrolling up", async () => {
  const aliceId = await b.evaluate(() => location.pathname.split("/").pop());
  for (let i = 1; i <= 40; i += 1) {
    const response = await ctxB.request.post(`/api/v1/message/send/${aliceId}`, { data: { message: `Bulk ${i}` } });
    expect(response.status() === 201, `sending bulk message ${i}: ${response.status()}`);
  }
  await waitForMessage(a2, "Bulk 40");
  await a2.goto("/");
  await chatItem(a2, bob.fullName).click();
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
  const texts = await a2.locator("#messages li.msg .text").allTextContents();
  expect(texts[0] === "Hi Bob! Did the deploy go out?" && texts[total - 1] === "Bulk 40", "messages out of order");
  expect(new Set(texts).size === texts.length, "a message is shown twice");
});

await step("offline: the page says so, reconnects and shows what it missed", async () => {
  await ctxA.setOffline(true);
  await a.locator("#connection-status", { hasText: /offline|reconnecting/i }).waitFor({ state: "visible" });
  await run.screenshot(a, "offline.png");
  await send(b, "Are you back?");
  await waitForMessage(b, "Are you back?");
  await ctxA.setOffline(false);
  await a.locator("#connection-status").waitFor({ state: "hidden" });
  await waitForMessage(a, "Are you back?");
  await a.waitForFunction(() => document.body.classList.contains("is-connected"));
  // Live again, not just reloaded.
  await send(b, "Welcome back");
  await waitForMessage(a, "Welcome back");
  expect((await messageText(a, "Are you back?").count()) === 1, "a missed message is shown twice");
});

await step("Bob leaving turns his dot off on Alice's side and shows when he was last seen", async () => {
  await ctxB.close();
  run.forget("bob");
  await chatItem(a, bob.fullName).and(a.locator(":not(.online)")).waitFor();
  await a.locator("#peer-status", { hasText: /^last seen today at \d{1,2}:\d{2}/ }).waitFor();
});

await step("logging out in one tab logs out the other; logging in again works", async () => {
  await a.click("#logout");
  await a.locator("#login-form").waitFor({ state: "visible" });
  await a2.locator("#login-form").waitFor({ state: "visible" });
  await login(a, alice.username, "not the password");
  await a.locator("#login-form-error", { hasText: /invalid/i }).waitFor();
  await login(a, alice.username, PASSWORD);
  await a.locator("#chat-view").waitFor({ state: "visible" });
  await chatItem(a, bob.fullName).waitFor();
  await a2.locator("#chat-view").waitFor({ state: "visible" });
});

await run.finish();
