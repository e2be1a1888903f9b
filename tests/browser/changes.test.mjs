// Changing sent messages through the built-in web client in headless Chromium, between two
// people and in a group: reactions (the picker and the chips), replies with their quote,
// edits, deletions (an admin's too), each seen live by the other side and caught up after
// being offline; a refusal of the server shown like other errors; unread counts that leave
// changes out; the keyboard (Escape, Enter); the phone layout; an accessibility scan.
//
//   node changes.test.mjs <baseUrl> <artifactDir>
import { startRun, expect, chatItem, messageText, waitForMessage, send, registerThroughApi, expectAccessible } from "./harness.mjs";

const run = await startRun();
const step = run.step.bind(run);

const alice = { fullName: "Alice Martin", username: "alice" };
const bob = { fullName: "Bob Chen", username: "bob_chen" };
const carol = { fullName: "Carol Diaz", username: "carol" };
const PHONE = { viewport: { width: 375, height: 740 }, isMobile: true, hasTouch: true };

const ctxA = await run.newContext();
const ctxB = await run.newContext();
const aliceUser = await registerThroughApi(ctxA.request, alice);
const bobUser = await registerThroughApi(ctxB.request, bob);
let a; // Alice's page
let b; // Bob's page

// A message of the open chat, by its text (also one shown deleted, by its id).
const item = (page, text) => page.locator("#messages li.msg").filter({ has: page.locator(".text", { hasText: text }) });
const itemById = (page, id) => page.locator(`#messages li.msg[data-id="${id}"]`);
const chip = (li, emoji) => li.locator(".reaction", { has: li.page().locator(".emoji", { hasText: emoji }) });

// Opens a message's actions with its "⋯" button.
async function actions(li) {
  await li.hover();
  await li.locator(".msg-more").click();
  const menu = li.locator(".msg-menu");
  await menu.waitFor();
  return menu;
}

async function storedId(page, text) {
  const li = item(page, text).last();
  await li.waitFor();
  return li.getAttribute("data-id");
}

await step("two people open their chat; the actions of a message are one button", async () => {
  const client = ctxB.request;
  const response = await client.post(`/api/v1/message/send/${aliceUser._id}`, { data: { message: "Lunch at noon?" } });
  expect(response.status() === 201, `sending: ${response.status()}`);
  a = await run.openPage(ctxA, "alice", `/chat/${bobUser._id}`);
  b = await run.openPage(ctxB, "bob", `/chat/${aliceUser._id}`);
  await waitForMessage(a, "Lunch at noon?");
  await waitForMessage(b, "Lunch at noon?");
  const more = item(a, "Lunch at noon?").locator(".msg-more");
  expect((await more.getAttribute("aria-label")) === "Message actions", "the actions button has no name");
  expect((await more.getAttribute("aria-expanded")) === "false", "the actions start open");
});

await step("a reaction from the picker shows as a chip on both sides, live", async () => {
  const menu = await actions(item(a, "Lunch at noon?"));
  expect((await menu.locator(".react-choice").count()) >= 6, "fewer than six emoji offered");
  expect((await menu.locator('[data-action="edit"]').count()) === 0, "Edit offered on someone else's message");
  expect((await menu.locator('[data-action="delete"]').count()) === 0, "Delete offered on someone else's message in a direct chat");
  await expectAccessible(a, "a message's actions");
  await menu.getByRole("button", { name: "React with 👍" }).click();
  const mine = chip(item(a, "Lunch at noon?"), "👍");
  await mine.and(a.locator('[aria-pressed="true"]')).locator(".count", { hasText: "1" }).waitFor();
  await item(a, "Lunch at noon?").locator(".msg-menu").waitFor({ state: "detached" });
  const theirs = chip(item(b, "Lunch at noon?"), "👍");
  await theirs.and(b.locator('[aria-pressed="false"]')).locator(".count", { hasText: "1" }).waitFor();
});

await step("a chip toggles the reader's own reaction, and the count follows on both sides", async () => {
  await chip(item(b, "Lunch at noon?"), "👍").click();
  await chip(item(b, "Lunch at noon?"), "👍").and(b.locator('[aria-pressed="true"]')).locator(".count", { hasText: "2" }).waitFor();
  await chip(item(a, "Lunch at noon?"), "👍").locator(".count", { hasText: "2" }).waitFor();
  await chip(item(b, "Lunch at noon?"), "👍").click();
  await chip(item(b, "Lunch at noon?"), "👍").and(b.locator('[aria-pressed="false"]')).locator(".count", { hasText: "1" }).waitFor();
  await chip(item(a, "Lunch at noon?"), "👍").locator(".count", { hasText: "1" }).waitFor();
  // The focus stays on the chip that was pressed.
  expect(await chip(item(b, "Lunch at noon?"), "👍").evaluate((node) => node === document.activeElement), "the chip lost the focus");
});

await step("a reply quotes its original above the message box; Escape gives it up", async () => {
  const menu = await actions(item(a, "Lunch at noon?"));
  await menu.locator('[data-action="reply"]').click();
  await a.locator("#reply-bar", { hasText: `Replying to ${bob.fullName}: Lunch at noon?` }).waitFor();
  expect(await a.locator("#message-input").evaluate((node) => node === document.activeElement), "the message box has not the focus");
  await a.press("#message-input", "Escape");
  await a.locator("#reply-bar").waitFor({ state: "hidden" });
  // Escape gave up the reply only: the chat is still open.
  await a.locator("#conversation-pane").waitFor({ state: "visible" });
  await (await actions(item(a, "Lunch at noon?"))).locator('[data-action="reply"]').click();
  await a.locator("#reply-bar").waitFor({ state: "visible" });
  await send(a, "Yes, see you there");
  await a.locator("#reply-bar").waitFor({ state: "hidden" });
  const reply = item(a, "see you there").locator(".quote");
  await reply.filter({ hasText: bob.fullName }).filter({ hasText: "Lunch at noon?" }).waitFor();
  await item(b, "see you there").locator(".quote", { hasText: "Lunch at noon?" }).waitFor();
  // The server keeps the reply: a reload shows the quote again.
  const stored = await (await ctxB.request.get(`/api/v1/message/get-messages/${aliceUser._id}?limit=10`)).json();
  const kept = stored.responseData.messages.find((m) => m.message === "Yes, see you there");
  expect(kept && kept.replyTo && kept.replyTo.text === "Lunch at noon?", `stored reply: ${JSON.stringify(kept)}`);
});

await step("clicking a quote goes to the original", async () => {
  await item(b, "see you there").locator(".quote").click();
  await item(b, "Lunch at noon?").and(b.locator(".highlight")).waitFor();
  expect(await item(b, "Lunch at noon?").evaluate((node) => node === document.activeElement), "the original has not the focus");
});

await step("an edit: Escape cancels, Enter saves; both sides show the new text and 'edited'", async () => {
  // While edited, the message is found by its id: its text is the edit box.
  const reply = itemById(a, await storedId(a, "see you there"));
  let menu = await actions(reply);
  await menu.locator('[data-action="edit"]').click();
  const box = reply.locator(".edit-form textarea");
  await box.waitFor();
  expect(await box.evaluate((node) => node === document.activeElement), "the edit box has not the focus");
  await box.fill("Something else entirely");
  await box.press("Escape");
  await a.locator("#messages .edit-form").waitFor({ state: "detached" });
  await waitForMessage(a, "Yes, see you there");
  await a.locator("#conversation-pane").waitFor({ state: "visible" });

  menu = await actions(reply);
  await menu.locator('[data-action="edit"]').click();
  await box.fill("Yes, see you at 12:30");
  await box.press("Enter");
  await item(a, "see you at 12:30").locator(".edited").waitFor();
  await item(b, "see you at 12:30").locator(".edited").waitFor();
  await item(b, "see you at 12:30").locator(".quote", { hasText: "Lunch at noon?" }).waitFor();
  expect((await item(b, "Yes, see you there").count()) === 0, "Bob still sees the old text");
  await chatItem(b, alice.fullName).locator(".preview", { hasText: "Yes, see you at 12:30" }).waitFor();
});

await step("editing the original updates the quotes of its replies", async () => {
  const original = itemById(b, await storedId(b, "Lunch at noon?"));
  const menu = await actions(original);
  await menu.locator('[data-action="edit"]').click();
  await original.locator(".edit-form textarea").fill("Lunch at 12:30?");
  await original.locator(".edit-form button[type=submit]").click();
  await item(a, "Lunch at 12:30?").locator(".edited").waitFor();
  await item(a, "see you at 12:30").locator(".quote", { hasText: "Lunch at 12:30?" }).waitFor();
  await item(b, "see you at 12:30").locator(".quote", { hasText: "Lunch at 12:30?" }).waitFor();
});

await step("a refusal of the server shows as an error: reacting to a message deleted meanwhile", async () => {
  await send(b, "Can you bring the slides?");
  await waitForMessage(a, "Can you bring the slides?");
  const id = await storedId(a, "Can you bring the slides?");
  // Alice's reaction reaches the server only once Bob's deletion has: it is answered 409.
  let release;
  const held = new Promise((resolve) => (release = resolve));
  await a.route("**/reactions/**", async (route) => {
    await held;
    await route.continue();
  });
  const menu = await actions(item(a, "Can you bring the slides?"));
  await menu.getByRole("button", { name: "React with 😮" }).click();

  // Meanwhile Bob deletes it (after confirming).
  const bobMenu = await actions(item(b, "Can you bring the slides?"));
  await bobMenu.locator('[data-action="delete"]').click();
  await item(b, "Can you bring the slides?").locator(".msg-menu", { hasText: "Delete this message for everyone?" }).waitFor();
  await item(b, "Can you bring the slides?").locator('[data-action="delete-yes"]').click();
  await itemById(b, id).locator(".text.deleted-text", { hasText: "Message deleted" }).waitFor();
  await itemById(a, id).locator(".text.deleted-text", { hasText: "Message deleted" }).waitFor();
  expect((await itemById(a, id).locator(".msg-more, .reaction").count()) === 0, "a deleted message still has actions");
  const italic = await itemById(a, id).locator(".text").evaluate((node) => getComputedStyle(node).fontStyle);
  expect(italic === "italic", `"Message deleted" is ${italic}`);

  release();
  await a.locator("#composer-error", { hasText: /Could not react\. .*delet/i }).waitFor();
  await a.unroute("**/reactions/**");
  await chatItem(a, bob.fullName).locator(".preview", { hasText: "Message deleted" }).waitFor();
});

await step("deleting the original leaves its replies quoting a deleted message", async () => {
  const menu = await actions(item(b, "Lunch at 12:30?"));
  await menu.locator('[data-action="delete"]').click();
  await item(b, "Lunch at 12:30?").locator('[data-action="delete-yes"]').click();
  await item(a, "see you at 12:30").locator(".quote .quote-text.deleted-text", { hasText: "Message deleted" }).waitFor();
  await item(b, "see you at 12:30").locator(".quote .quote-text.deleted-text", { hasText: "Message deleted" }).waitFor();
  expect((await messageText(a, "Lunch at 12:30?").count()) === 0, "Alice still sees the deleted text");
});

await step("changes do not count as unread, live or after a reload; reading clears them", async () => {
  await a.locator("#messages-scroll").focus();
  await a.keyboard.press("Escape");
  await a.locator("#conversation-pane").waitFor({ state: "hidden" });
  const entry = chatItem(a, bob.fullName);
  await send(b, "Great!");
  await entry.locator(".unread", { hasText: "1" }).waitFor();
  // A change between two messages: Alice's events come in order, so the second message
  // finds the change counted already (or not at all).
  const menu = await actions(item(b, "see you at 12:30"));
  await menu.getByRole("button", { name: "React with ❤️" }).click();
  await chip(item(b, "see you at 12:30"), "❤️").waitFor();
  await send(b, "One more thing: bring cash");
  await entry.locator(".preview", { hasText: "One more thing" }).waitFor();
  await entry.locator(".unread", { hasText: "2" }).waitFor();
  expect((await a.title()).startsWith("(2) "), `title ${await a.title()}`);
  // Changes after the last message: the server's list counts two, and opening reads all.
  const one = await actions(item(b, "One more thing"));
  await one.getByRole("button", { name: "React with 😂" }).click();
  await chip(item(b, "One more thing"), "😂").click();
  await chip(item(b, "One more thing"), "😂").waitFor({ state: "detached" });
  await a.reload();
  await entry.locator(".unread", { hasText: "2" }).waitFor();
  await entry.click();
  await waitForMessage(a, "One more thing");
  await chip(item(a, "see you at 12:30"), "❤️").and(a.locator('[aria-pressed="false"]')).waitFor();
  await entry.locator(".unread").waitFor({ state: "hidden" });
  // The server is told (shortly after): its list counts nothing unread either.
  const unread = await a.evaluate(async (peer) => {
    let count = null;
    for (let tries = 0; tries < 50 && count !== 0; tries++) {
      if (tries) await new Promise((resolve) => setTimeout(resolve, 100));
      const list = await (await fetch("/api/v1/message/conversations")).json();
      const chat = list.responseData.find((c) => c.participants && c.participants.includes(peer));
      count = chat ? chat.unreadCount : null;
    }
    return count;
  }, bobUser._id);
  expect(unread === 0, `the server counts ${unread} unread after Alice read them`);
});

await step("changes made while offline arrive on coming back", async () => {
  await ctxA.setOffline(true);
  await a.locator("#connection-status", { hasText: /Offline/ }).waitFor();
  const great = itemById(b, await storedId(b, "Great!"));
  const menu = await actions(great);
  await menu.locator('[data-action="edit"]').click();
  await great.locator(".edit-form textarea").fill("Great, thanks!");
  await great.locator(".edit-form textarea").press("Enter");
  await item(b, "Great, thanks!").locator(".edited").waitFor();
  await chip(item(b, "see you at 12:30"), "❤️").click();
  await chip(item(b, "see you at 12:30"), "❤️").waitFor({ state: "detached" });
  await ctxA.setOffline(false);
  await item(a, "Great, thanks!").locator(".edited").waitFor();
  await chip(item(a, "see you at 12:30"), "❤️").waitFor({ state: "detached" });
  await a.locator("#connection-status").waitFor({ state: "hidden" });
});

await step("in a group the owner deletes a member's message; members get no Delete for others", async () => {
  const ctxC = await run.newContext();
  await registerThroughApi(ctxC.request, carol);
  const carolId = (await (await ctxC.request.get("/api/v1/user/get-profile")).json()).responseData._id;
  const created = await ctxA.request.post("/api/v1/conversations", { data: { name: "Lunch crew", members: [bobUser._id, carolId] } });
  expect(created.status() === 201, `creating the group: ${created.status()}`);
  const group = (await created.json()).responseData;
  const said = await ctxC.request.post(`/api/v1/conversations/${group._id}/messages`, { data: { message: "Pizza again?" } });
  expect(said.status() === 201, `Carol's message: ${said.status()}`);
  await b.goto(`/group/${group._id}`);
  await a.goto(`/group/${group._id}`);
  await waitForMessage(a, "Pizza again?");
  await waitForMessage(b, "Pizza again?");
  const bobMenu = await actions(item(b, "Pizza again?"));
  expect((await bobMenu.locator('[data-action="delete"]').count()) === 0, "a member may delete another's message");
  await b.keyboard.press("Escape");
  await item(b, "Pizza again?").locator(".msg-menu").waitFor({ state: "detached" });
  await b.locator("#conversation-pane").waitFor({ state: "visible" });
  const id = await storedId(a, "Pizza again?");
  const menu = await actions(item(a, "Pizza again?"));
  await menu.locator('[data-action="delete"]').click();
  await item(a, "Pizza again?").locator(".msg-menu", { hasText: `Delete ${carol.fullName}'s message for everyone?` }).waitFor();
  await item(a, "Pizza again?").locator('[data-action="delete-yes"]').click();
  await itemById(b, id).locator(".text", { hasText: "Message deleted" }).waitFor();
  await ctxC.close();
});

await step("desktop screenshot: reactions, a reply, an edit, a deletion and the actions open", async () => {
  await a.goto(`/chat/${bobUser._id}`);
  await b.goto(`/chat/${aliceUser._id}`);
  await waitForMessage(a, "Great, thanks!");
  await waitForMessage(b, "Great, thanks!");
  await send(a, "I'll book a table by the window");
  await waitForMessage(b, "book a table");
  await (await actions(item(a, "Great, thanks!"))).getByRole("button", { name: "React with 👍" }).click();
  await chip(item(b, "Great, thanks!"), "👍").waitFor();
  await (await actions(item(b, "Great, thanks!"))).getByRole("button", { name: "React with 👍" }).click();
  await chip(item(a, "Great, thanks!"), "👍").locator(".count", { hasText: "2" }).waitFor();
  await (await actions(item(b, "book a table"))).getByRole("button", { name: "React with 🙏" }).click();
  await chip(item(a, "book a table"), "🙏").waitFor();
  await (await actions(item(b, "book a table"))).locator('[data-action="reply"]').click();
  await send(b, "I'll be there at 12:30 sharp");
  await item(a, "12:30 sharp").locator(".quote", { hasText: "book a table" }).waitFor();
  await (await actions(item(a, "Great, thanks!"))).locator('[data-action="reply"]').click();
  await a.locator("#message-input").fill("Perfect");
  await (await actions(item(a, "book a table"))).waitFor();
  await a.locator("#messages-scroll").evaluate((node) => (node.scrollTop = node.scrollHeight));
  await a.mouse.move(0, 0);
  await run.screenshot(a, "desktop.png");
  await expectAccessible(a, "a chat with changed messages");
  await a.keyboard.press("Escape");
});

await step("on a phone every message's actions are a tap away", async () => {
  const ctx = await run.newContext(PHONE);
  await ctx.request.post("/api/v1/user/login", { data: { username: bob.username, password: "correct horse battery" } });
  const phone = await run.openPage(ctx, "bob-phone", `/chat/${aliceUser._id}`);
  await waitForMessage(phone, "book a table");
  const more = item(phone, "book a table").locator(".msg-more");
  const shown = await more.evaluate((node) => getComputedStyle(node).opacity);
  expect(shown === "1", `the actions button is not shown without hover (opacity ${shown})`);
  const box = await more.boundingBox();
  expect(box && box.width >= 40 && box.height >= 40, `the actions button is small: ${JSON.stringify(box)}`);
  await more.tap();
  await item(phone, "book a table").locator(".msg-menu").waitFor();
  await run.screenshot(phone, "phone-chat.png");
  await expectAccessible(phone, "a phone chat with actions open");
  await ctx.close();
  run.forget("bob-phone");
});

await run.finish();
