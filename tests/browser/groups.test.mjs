// Groups and the server's read state in the web client: three people make a group and
// chat in it (sender names, typing, changes as lines of the history), unread counts are the
// server's (the same after a reload and in a second browser, cleared everywhere by reading
// in one), "Seen" and "Seen by" from read receipts, the member panel (roles, rename, add,
// hand over, leave), a removed member who can no longer send, the new-group form's errors,
// accessibility scans of the group screens, and a screenshot of a group.
//
//   node groups.test.mjs <baseUrl> <artifactDir>
import {
  startRun,
  expect,
  chatItem,
  messageText,
  waitForMessage,
  send,
  startChat,
  registerThroughApi,
  loginThroughApi,
  expectAccessible,
} from "./harness.mjs";

const run = await startRun();
const step = run.step.bind(run);

const alice = { fullName: "Alice Martin", username: "alice" };
const bob = { fullName: "Bob Chen", username: "bob" };
const carol = { fullName: "Carol Diaz", username: "carol" };
const dan = { fullName: "Dan Wright", username: "dan" };

const ctxA = await run.newContext();
const ctxB = await run.newContext();
const ctxC = await run.newContext();
const danClient = await run.apiClient();
const aliceUser = await registerThroughApi(ctxA.request, alice);
await registerThroughApi(ctxB.request, bob);
const carolUser = await registerThroughApi(ctxC.request, carol);
await registerThroughApi(danClient, dan);
let a; // Alice's page
let b; // Bob's page
let c; // Carol's page
let groupId;

const systemLine = (page, text) => page.locator("#messages li.msg.system", { hasText: text });
const unreadBadge = (page, name) => chatItem(page, name).locator(".unread");
const memberRow = (page, fullName) => page.locator("#member-list .member", { hasText: fullName });

async function connected(page) {
  await page.locator("#chat-view").waitFor({ state: "visible" });
  await page.waitForFunction(() => document.body.classList.contains("is-connected"));
}

// The server's own count for `client`'s user, read from the conversation list.
async function serverUnread(client, id) {
  const response = await client.get("/api/v1/message/conversations");
  const entry = (await response.json()).responseData.find((c) => c._id === id);
  return entry ? entry.unreadCount : null;
}

await step("Alice, Bob and Carol are logged in", async () => {
  a = await run.openPage(ctxA, "alice");
  b = await run.openPage(ctxB, "bob");
  c = await run.openPage(ctxC, "carol");
  await Promise.all([connected(a), connected(b), connected(c)]);
});

await step("the new-group form says what is missing, and passes the accessibility scan", async () => {
  await b.click("#new-group");
  await b.locator("#new-group-panel").waitFor({ state: "visible" });
  expect((await b.evaluate(() => document.activeElement.id)) === "new-group-name", "the name field has no focus");
  await b.click("#create-group");
  await b.locator("#new-group-name-error", { hasText: "Give the group a name." }).waitFor();
  await b.locator("#new-group-members-error", { hasText: "Choose at least one person." }).waitFor();
  expect((await b.getAttribute("#new-group-name", "aria-invalid")) === "true", "the name is not marked invalid");
  await b.locator("#new-group-people .pick", { hasText: "@carol" }).waitFor();
  await expectAccessible(b, "the new-group form with errors");
  await b.keyboard.press("Escape");
  await b.locator("#chats-panel").waitFor({ state: "visible" });
  expect((await b.evaluate(() => document.activeElement.id)) === "new-group", "focus did not return to New group");
});

await step("Alice makes a group with Bob and Carol, picked from the people search", async () => {
  await a.click("#new-group");
  await a.fill("#new-group-name", "Weekend trip");
  await a.fill("#new-group-search", "bob");
  await a.locator("#new-group-people .pick", { hasText: "@bob" }).click();
  await a.fill("#new-group-search", "car");
  await a.locator("#new-group-people .pick", { hasText: "@carol" }).click();
  await a.locator("#new-group-chosen .chip").nth(1).waitFor();
  const chosen = await a.locator("#new-group-chosen .chip").allTextContents();
  expect(chosen.join("|") === "Bob Chen: take off the new group ×|Carol Diaz: take off the new group ×", `chosen: ${chosen}`);
  await expectAccessible(a, "the new-group form with people chosen");
  await a.locator("#create-group", { hasText: "Create group (3 people)" }).click();
  await a.locator("#peer-name", { hasText: "Weekend trip" }).waitFor();
  await systemLine(a, "You created the group “Weekend trip”").waitFor();
  await a.locator("#peer-status", { hasText: "3 members" }).waitFor();
  const match = /^\/group\/([0-9a-f-]{36})$/.exec(new URL(a.url()).pathname);
  expect(match, `the URL is ${a.url()}`);
  groupId = match[1];
  // The others have it in their lists at once, its first entry unread.
  for (const page of [b, c]) {
    await chatItem(page, "Weekend trip").locator(".preview", { hasText: "Alice Martin created the group “Weekend trip”" }).waitFor();
    await unreadBadge(page, "Weekend trip").filter({ hasText: "1" }).waitFor();
  }
  await unreadBadge(a, "Weekend trip").waitFor({ state: "hidden" });
});

await step("the three chat: live for everyone, with the sender's name on others' messages", async () => {
  await send(a, "Who brings the tent?");
  await chatItem(b, "Weekend trip").click();
  await waitForMessage(b, "Who brings the tent?");
  await systemLine(b, "Alice Martin created the group “Weekend trip”").waitFor();
  await b.locator("#messages li.msg.theirs", { hasText: "Who brings the tent?" }).locator(".sender", { hasText: "Alice Martin" }).waitFor();
  await send(b, "I do!");
  await send(b, "And the stove.");
  await waitForMessage(a, "And the stove.");
  const first = a.locator("#messages li.msg.theirs", { hasText: "I do!" });
  await first.locator(".sender", { hasText: "Bob Chen" }).waitFor();
  // One name over a run of one person's messages.
  const second = a.locator("#messages li.msg.theirs", { hasText: "And the stove." });
  expect(await second.evaluate((li) => li.classList.contains("continued")), "the name repeats on the second message of a run");
  await chatItem(c, "Weekend trip").locator(".preview", { hasText: "Bob: And the stove." }).waitFor();
  await unreadBadge(c, "Weekend trip").filter({ hasText: "4" }).waitFor();
});

await step("typing in a group: 'Bob is typing…', then 'Bob and Carol are typing…'", async () => {
  await b.locator("#message-input").pressSequentially("Bringing sn", { delay: 20 });
  await a.locator("#typing", { hasText: "Bob is typing…" }).waitFor({ state: "visible" });
  await chatItem(c, "Weekend trip").click();
  await waitForMessage(c, "And the stove.");
  await c.locator("#message-input").pressSequentially("Me t", { delay: 20 });
  await a.locator("#typing", { hasText: "Bob and Carol are typing…" }).waitFor({ state: "visible" });
  await b.fill("#message-input", "");
  await c.fill("#message-input", "");
  await a.locator("#typing").waitFor({ state: "hidden" });
  await a.locator("#peer-status", { hasText: "3 members" }).waitFor({ state: "visible" });
});

await step("unread is the server's: the same after a reload and in a second browser, read in one, read in all", async () => {
  for (const page of [b, c]) {
    await page.keyboard.press("Escape");
    await page.locator("#conversation-pane").waitFor({ state: "hidden" });
  }
  await send(a, "Dinner at 8?");
  await send(a, "At the lake house.");
  await unreadBadge(c, "Weekend trip").filter({ hasText: "2" }).waitFor();
  expect((await serverUnread(ctxC.request, groupId)) === 2, "the server counts otherwise");
  await c.reload();
  await unreadBadge(c, "Weekend trip").filter({ hasText: "2" }).waitFor();
  await c.waitForFunction(() => document.title === "(2) Chat");
  // Carol's other browser (a context of its own: no storage shared with the first).
  const ctx = await run.newContext();
  await loginThroughApi(ctx.request, carol.username);
  const other = await run.openPage(ctx, "carol-elsewhere");
  await connected(other);
  await unreadBadge(other, "Weekend trip").filter({ hasText: "2" }).waitFor();
  await chatItem(c, "Weekend trip").click();
  await waitForMessage(c, "At the lake house.");
  await unreadBadge(c, "Weekend trip").waitFor({ state: "hidden" });
  await unreadBadge(other, "Weekend trip").waitFor({ state: "hidden" });
  await other.waitForFunction(() => document.title === "Chat");
  await other.reload();
  await chatItem(other, "Weekend trip").waitFor();
  await unreadBadge(other, "Weekend trip").waitFor({ state: "hidden" });
  expect((await serverUnread(ctxC.request, groupId)) === 0, "the server still counts unread");
  await ctx.close();
  run.forget("carol-elsewhere");
});

await step("seen by: Alice's last message names who read it", async () => {
  const receipt = a.locator("#messages li.msg.mine", { hasText: "At the lake house." }).locator(".receipt");
  await receipt.filter({ hasText: /^Seen by Carol$/ }).waitFor();
  expect((await a.locator("#messages .receipt").count()) === 1, "more than one receipt");
  await unreadBadge(b, "Weekend trip").filter({ hasText: "2" }).waitFor();
  await chatItem(b, "Weekend trip").click();
  await waitForMessage(b, "At the lake house.");
  await receipt.filter({ hasText: /^Seen by (Carol, Bob|Bob, Carol)$/ }).waitFor();
  const title = await receipt.getAttribute("title");
  expect(/Carol Diaz/.test(title) && /Bob Chen/.test(title), `the full names: ${title}`);
});

await step("a direct chat: 'Seen' under my last message once the other reads it, and after a reload", async () => {
  await startChat(a, "bob");
  await a.locator("#peer-name", { hasText: bob.fullName }).waitFor();
  await send(a, "Call me later?");
  await waitForMessage(a, "Call me later?");
  await chatItem(b, alice.fullName).locator(".unread", { hasText: "1" }).waitFor();
  expect((await a.locator("#messages .receipt").count()) === 0, "seen before Bob read it");
  await chatItem(b, alice.fullName).click();
  await waitForMessage(b, "Call me later?");
  await a.locator("#messages li.msg.mine", { hasText: "Call me later?" }).locator(".receipt", { hasText: "Seen" }).waitFor();
  // After a reload the server says how far Bob has read: "Seen" again, without a new receipt.
  await a.reload();
  await chatItem(a, bob.fullName).click();
  await waitForMessage(a, "Call me later?");
  await a.locator("#messages li.msg.mine", { hasText: "Call me later?" }).locator(".receipt", { hasText: "Seen" }).waitFor();
});

await step("the member panel: roles; the owner makes Bob an admin, renames the group and adds Dan", async () => {
  await chatItem(b, "Weekend trip").click();
  await chatItem(a, "Weekend trip").click();
  await a.locator("#peer-name", { hasText: "Weekend trip" }).waitFor();
  await a.click("#group-info");
  await a.locator("#group-panel").waitFor({ state: "visible" });
  expect((await a.getAttribute("#group-info", "aria-expanded")) === "true", "aria-expanded");
  await a.locator("#members-heading", { hasText: "3 members" }).waitFor();
  await memberRow(a, "Alice Martin (you)").locator(".role", { hasText: "Owner" }).waitFor();
  expect((await memberRow(a, "Bob Chen").locator(".role").count()) === 0, "Bob has a role badge");
  await a.click('#member-list button[aria-label="Make admin: Bob Chen"]');
  await memberRow(a, "Bob Chen").locator(".role", { hasText: "Admin" }).waitFor();
  await systemLine(a, "You made Bob Chen an admin").waitFor();
  await systemLine(b, "Alice Martin made you an admin").waitFor();

  await a.fill("#group-name", "Weekend at the lake");
  await a.click("#rename-form button[type=submit]");
  await a.locator("#peer-name", { hasText: "Weekend at the lake" }).waitFor();
  await b.locator("#peer-name", { hasText: "Weekend at the lake" }).waitFor();
  await chatItem(c, "Weekend at the lake").waitFor();
  await systemLine(c, "Alice Martin renamed the group to “Weekend at the lake”").waitFor();

  await a.fill("#add-search", "da");
  await a.click('#add-results button[aria-label="Add Dan Wright to the group"]');
  await a.locator("#members-heading", { hasText: "4 members" }).waitFor();
  await systemLine(b, "Alice Martin added Dan Wright").waitFor();
  await a.locator("#add-results .member").waitFor({ state: "detached" });
  // Dan has it in his list, the entry that added him unread.
  const response = await danClient.get("/api/v1/message/conversations");
  const entry = (await response.json()).responseData.find((conversation) => conversation._id === groupId);
  expect(entry && entry.name === "Weekend at the lake" && entry.unreadCount === 1, `Dan's entry: ${JSON.stringify(entry)}`);
  await expectAccessible(a, "the group chat with its member panel");
});

await step("an admin may remove members but not the owner, and changes no roles", async () => {
  await b.click("#group-info");
  await memberRow(b, "Bob Chen (you)").locator(".role", { hasText: "Admin" }).waitFor();
  await memberRow(b, "Dan Wright").locator('button[data-action="remove"]').waitFor();
  expect((await memberRow(b, "Alice Martin").locator("button").count()) === 0, "Bob may act on the owner");
  expect((await b.locator('#member-list button[data-action="admin"]').count()) === 0, "Bob may change roles");
  await b.keyboard.press("Escape");
  await b.locator("#group-panel").waitFor({ state: "hidden" });
  expect((await b.evaluate(() => document.activeElement.id)) === "group-info", "focus did not return to Members");
});

await step("a removed member sees the removal and can no longer send", async () => {
  await c.locator("#peer-name", { hasText: "Weekend at the lake" }).waitFor();
  await a.click('#member-list button[aria-label="Remove Carol Diaz from the group"]');
  await a.locator("#members-heading", { hasText: "3 members" }).waitFor();
  await systemLine(a, "You removed Carol Diaz").waitFor();
  await systemLine(b, "Alice Martin removed Carol Diaz").waitFor();
  await systemLine(c, "Alice Martin removed you").waitFor();
  await c.locator("#composer").waitFor({ state: "hidden" });
  await c.locator("#composer-closed", { hasText: "You were removed from this group" }).waitFor();
  await c.locator("#group-info").waitFor({ state: "hidden" });
  await c.locator("#peer-status", { hasText: "You are no longer a member" }).waitFor();
  // Nothing of what follows reaches her.
  await send(a, "Carol, we will miss you");
  await waitForMessage(b, "Carol, we will miss you");
  const refused = await ctxC.request.post(`/api/v1/conversations/${groupId}/messages`, { data: { message: "Wait!" } });
  expect(refused.status() === 403, `a send after the removal answered ${refused.status()}`);
  expect((await messageText(c, "Carol, we will miss you").count()) === 0, "the removed member got a later message");
  await c.reload();
  await c.locator("#composer-closed", { hasText: /no longer|not a member/ }).waitFor();
  await c.locator("#composer").waitFor({ state: "hidden" });
});

await step("the owner hands over and leaves; the others see it", async () => {
  await a.click('#member-list button[aria-label="Make owner: Bob Chen; you become an admin"]');
  await memberRow(a, "Bob Chen").locator(".role", { hasText: "Owner" }).waitFor();
  await memberRow(a, "Alice Martin (you)").locator(".role", { hasText: "Admin" }).waitFor();
  await systemLine(b, "Alice Martin made you the owner").waitFor();
  await a.click("#leave-group");
  await a.locator("#leave-confirm-text", { hasText: "Leave “Weekend at the lake”?" }).waitFor();
  expect((await a.evaluate(() => document.activeElement.id)) === "leave-no", "Cancel has no focus");
  await a.click("#leave-yes");
  await a.locator("#group-panel").waitFor({ state: "hidden" });
  await systemLine(a, "You left").waitFor();
  await a.locator("#composer-closed", { hasText: "You left this group" }).waitFor();
  await systemLine(b, "Alice Martin left").waitFor();
  await b.locator("#peer-status", { hasText: "2 members" }).waitFor();
});

await step("on a phone: the group's address, its member panel over the whole screen, a clean accessibility scan", async () => {
  const ctx = await run.newContext({ viewport: { width: 375, height: 740 }, isMobile: true, hasTouch: true });
  await loginThroughApi(ctx.request, bob.username);
  const phone = await run.openPage(ctx, "bob-phone", `/group/${groupId}`);
  await phone.locator("#peer-name", { hasText: "Weekend at the lake" }).waitFor();
  await waitForMessage(phone, "Carol, we will miss you");
  await expectAccessible(phone, "a group on a phone");
  await phone.click("#group-info");
  await memberRow(phone, "Bob Chen (you)").locator(".role", { hasText: "Owner" }).waitFor();
  const panel = await phone.locator("#group-panel").boundingBox();
  expect(panel.x <= 0 && panel.width >= 375, `the panel is ${panel.width} px wide at ${panel.x}`);
  const width = await phone.evaluate(() => document.documentElement.scrollWidth);
  expect(width <= 375, `the page is ${width} px wide on a 375 px screen`);
  await expectAccessible(phone, "a group's member panel on a phone");
  await phone.click("#close-group-panel");
  await phone.click("#back");
  await phone.locator("#conversation-list").waitFor({ state: "visible" });
  expect(new URL(phone.url()).pathname === "/", `the back button led to ${phone.url()}`);
  await ctx.close();
  run.forget("bob-phone");
});

await step("a screenshot of a group with its member panel", async () => {
  const ctx = await run.newContext();
  await registerThroughApi(ctx.request, { fullName: "Maya Patel", username: "maya" });
  const jonasClient = await run.apiClient();
  const jonas = await registerThroughApi(jonasClient, { fullName: "Jonas Weber", username: "jonas" });
  const lenaClient = await run.apiClient();
  const lena = await registerThroughApi(lenaClient, { fullName: "Lena Fischer", username: "lena" });
  const created = await ctx.request.post("/api/v1/conversations", { data: { name: "Design review", members: [jonas._id, lena._id] } });
  expect(created.status() === 201, `creating the group: ${created.status()}`);
  const group = (await created.json()).responseData;
  const page = await run.openPage(ctx, "maya", `/group/${group._id}`);
  await connected(page);
  const say = async (client, message) => {
    const response = await client.post(`/api/v1/conversations/${group._id}/messages`, { data: { message } });
    expect(response.status() === 201, `sending: ${response.status()}`);
    return (await response.json()).responseData;
  };
  await say(jonasClient, "Morning! Are we still on for 11?");
  await say(lenaClient, "Yes, I'll bring the new mockups.");
  await say(ctx.request, "Great, see you both there.");
  const last = await say(jonasClient, "Here's the prototype: https://example.com/prototype");
  await lenaClient.post(`/api/v1/conversations/${group._id}/read`, { data: { upTo: last._id } });
  await waitForMessage(page, "prototype");
  await page.locator("#messages .receipt", { hasText: /^Seen by (Jonas, Lena|Lena, Jonas)$/ }).waitFor();
  await page.click("#group-info");
  await memberRow(page, "Lena Fischer").waitFor();
  await page.evaluate(() => document.activeElement.blur());
  await run.screenshot(page, "group.png");
  await jonasClient.dispose();
  await lenaClient.dispose();
  await ctx.close();
  run.forget("maya");
});

await step("nothing was asked of another site", async () => {
  expect(run.foreignRequests.length === 0, `requests to other sites: ${run.foreignRequests.join(", ")}`);
  expect(run.dialogs.length === 0, `dialogs: ${run.dialogs.join(", ")}`);
  expect(carolUser._id && aliceUser._id, "set-up");
});

await danClient.dispose();
await run.finish();
