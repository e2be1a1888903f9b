// Changes to sent messages (edit, delete, react, reply) as the published socket.io-client v4
// sees them on the server's /socket.io/ endpoint. Run by tests/tests/socketio_changes.rs:
//
//   CHAT_BASE_URL=http://127.0.0.1:PORT CHAT_USERS='[{"id":..,"token":..},x3]' \
//     node tests/js/socketio_changes.mjs <scenario> <mode>
//
// <mode> is the client's transport choice: "default" (polling, then upgrade), "websocket" or
// "polling". Prints one TAP-like line, `ok - ...` or `not ok - ...`, and exits 0 or 1.

import { io } from "socket.io-client";

const BASE = process.env.CHAT_BASE_URL;
const USERS = JSON.parse(process.env.CHAT_USERS ?? "[]");
const [scenarioName, mode = "default"] = process.argv.slice(2);
const WAIT_MS = 5000;
const QUIET_MS = 400;
const STREAM_EVENTS = ["newMessage", "messageUpdated", "conversationRead"];

const transportsFor = (m) =>
  ({ default: undefined, websocket: ["websocket"], polling: ["polling"] })[m];

/** A socket whose every event is recorded, so a wait never misses an early one. */
class Client {
  constructor(user, options = {}, { mode: m = mode } = {}) {
    const transports = transportsFor(m);
    this.log = [];
    this.waiters = [];
    this.socket = io(BASE, {
      forceNew: true,
      reconnection: false,
      ...(transports ? { transports } : {}),
      auth: { token: user.token },
      ...options,
    });
    const record = (event, args) => {
      this.log.push({ event, args });
      this.waiters = this.waiters.filter((w) => !w.offer(this.log.length - 1));
    };
    this.socket.onAny((event, ...args) => record(event, args));
    for (const reserved of ["connect", "connect_error", "disconnect"]) {
      this.socket.on(reserved, (...args) => record(reserved, args));
    }
  }

  waitFor(event, predicate = () => true, { ms = WAIT_MS } = {}) {
    return new Promise((resolve, reject) => {
      const matches = (i) => this.log[i].event === event && predicate(...this.log[i].args);
      for (let i = 0; i < this.log.length; i++) {
        if (matches(i)) return resolve(this.log[i].args[0]);
      }
      const timer = setTimeout(() => {
        const seen = this.log.map((e) => e.event).join(", ") || "nothing";
        reject(new Error(`no matching "${event}" within ${ms} ms (saw: ${seen})`));
      }, ms);
      this.waiters.push({
        offer: (i) => {
          if (!matches(i)) return false;
          clearTimeout(timer);
          resolve(this.log[i].args[0]);
          return true;
        },
      });
    });
  }

  async connected() {
    const outcome = await Promise.race([
      this.waitFor("connect").then(() => null),
      this.waitFor("connect_error").then((e) => e),
    ]);
    if (outcome) throw new Error(`connect_error: ${outcome.message}`);
    return this;
  }

  /** The stream deliveries received, in order: `{event, data}`. */
  stream() {
    return this.log.filter((e) => STREAM_EVENTS.includes(e.event)).map((e) => ({ event: e.event, data: e.args[0] }));
  }

  updates() {
    return this.log.filter((e) => e.event === "messageUpdated").map((e) => e.args[0]);
  }

  get transport() {
    return this.socket.io.engine?.transport?.name;
  }

  async upgraded() {
    if (this.transport === "websocket") return;
    await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error("no upgrade to websocket")), WAIT_MS);
      this.socket.io.engine.once("upgrade", () => {
        clearTimeout(timer);
        resolve();
      });
    });
  }

  close() {
    this.socket.disconnect();
  }
}

/** A client written before message changes existed: it listens to `newMessage` only. */
class SeedClient {
  constructor(user) {
    this.messages = [];
    this.socket = io(BASE, { forceNew: true, reconnection: false, auth: { token: user.token } });
    this.socket.on("newMessage", (m) => this.messages.push(m));
  }

  connected() {
    return new Promise((resolve, reject) => {
      this.socket.on("connect", resolve);
      this.socket.on("connect_error", reject);
    });
  }

  close() {
    this.socket.disconnect();
  }
}

function assert(condition, message) {
  if (!condition) throw new Error(message);
}

const json = (x) => JSON.stringify(x);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const otherMode = mode === "websocket" ? "default" : "websocket";
const opened = [];
const client = (...args) => {
  const c = new Client(...args);
  opened.push(c);
  return c;
};

/** The transport the mode should end on, once connected. */
async function settled(c) {
  if (mode === "default") await c.upgraded();
  const expected = mode === "polling" ? "polling" : "websocket";
  assert(c.transport === expected, `expected the ${expected} transport, got ${c.transport}`);
}

/** A cursor's parts: the stream position and each group's seq, as numbers. */
function parts(cursor) {
  assert(typeof cursor === "string" && /^[0-9]+(~[0-9a-f-]+\.[0-9]+)*$/i.test(cursor), `cursor ${json(cursor)}`);
  const [position, ...groups] = cursor.split("~");
  return [BigInt(position), ...groups.map((g) => BigInt(g.slice(g.lastIndexOf(".") + 1)))];
}

/** Each delivery's cursor moves one part of the cursor before it (first: `since`) on by one. */
function assertConsecutive(items, since) {
  let previous = parts(since);
  for (const { data } of items) {
    const next = parts(data.cursor);
    const steps = next.map((n, i) => n - (previous[i] ?? 0n));
    const ones = steps.filter((s) => s === 1n).length;
    const zeros = steps.filter((s) => s === 0n).length;
    assert(
      next.length === previous.length && ones === 1 && zeros === steps.length - 1,
      `cursor ${data.cursor} is not one step after ${previous.join("/")} (all: ${items.map((x) => x.data.cursor)})`,
    );
    previous = next;
  }
}

/** A call to the REST API as `user`; returns responseData after checking the status. */
async function api(user, method, path, body, status = 200) {
  const response = await fetch(`${BASE}/api/v1${path}`, {
    method,
    headers: { "Content-Type": "application/json", Authorization: `Bearer ${user.token}` },
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
  });
  const text = await response.text();
  assert(response.status === status, `${method} ${path} answered ${response.status}: ${text}`);
  return JSON.parse(text).responseData;
}

const messagePath = (m) => `/conversations/${m.conversationId}/messages/${m._id}`;
const reactionPath = (m, emoji) => `${messagePath(m)}/reactions/${encodeURIComponent(emoji)}`;

const scenarios = {
  // A direct conversation: every device of both users (bob's on two transports) gets each
  // change once, at consecutive cursors, with `me` for its own user; the same change twice is
  // one event; a client that knows only newMessage keeps working; a device resuming with
  // auth.since gets what it missed, in order, once.
  async direct() {
    const [alice, bob] = USERS;
    const bobHere = client(bob);
    const bobElsewhere = client(bob, {}, { mode: otherMode });
    const aliceHere = client(alice);
    const seed = new SeedClient(bob);
    opened.push(seed);
    await Promise.all([bobHere, bobElsewhere, aliceHere].map((c) => c.connected()).concat(seed.connected()));
    await settled(bobHere);
    const devices = [bobHere, bobElsewhere, aliceHere];

    const m1 = await api(alice, "POST", `/message/send/${bob.id}`, { message: "helo" }, 201);
    const edited = await api(alice, "PATCH", messagePath(m1), { message: "hello" });
    const editedAgain = await api(alice, "PATCH", messagePath(m1), { message: "hello" });
    assert(edited.version === m1.seq + 1 && editedAgain.version === edited.version, `versions ${json([edited, editedAgain])}`);
    const reacted = await api(bob, "PUT", reactionPath(m1, "👍"));
    const reactedAgain = await api(bob, "PUT", `${messagePath(m1)}/reactions/:thumbsup:`);
    assert(json(reacted) === json(reactedAgain), `the same reaction twice: ${json([reacted, reactedAgain])}`);
    assert(json(reacted.reactions) === json([{ emoji: "👍", count: 1, me: true }]), json(reacted));
    const deleted = await api(alice, "DELETE", messagePath(m1));
    const deletedAgain = await api(alice, "DELETE", messagePath(m1));
    assert(json(deleted) === json(deletedAgain), "the same deletion twice");
    assert(deleted.message === "" && deleted.deletedBy === alice.id && deleted.reactions.length === 0, json(deleted));

    for (const c of devices) await c.waitFor("messageUpdated", (u) => u.change.kind === "deleted");
    await sleep(QUIET_MS);
    for (const c of devices) {
      const who = c === aliceHere ? "alice" : "bob";
      const updates = c.updates();
      assert(
        json(updates.map((u) => u.change.kind)) === json(["edited", "reactionAdded", "deleted"]),
        `${who}: ${json(updates)}`,
      );
      const [e, r, d] = updates;
      assert(e.message._id === m1._id && e.message.message === "hello" && e.message.editedAt === edited.editedAt, json(e));
      assert(e.change.userId === alice.id && e.change.seq === m1.seq + 1 && e.message.version === m1.seq + 1, json(e));
      const me = who === "bob";
      assert(json(r.message.reactions) === json([{ emoji: "👍", count: 1, me }]), `${who}: ${json(r)}`);
      assert(r.change.userId === bob.id && r.change.emoji === "👍" && r.change.seq === m1.seq + 2, json(r));
      assert(d.message.message === "" && d.message.deletedBy === alice.id && d.message.deletedAt === deleted.deletedAt, json(d));
      assert(json(d.message.reactions) === "[]" && d.change.seq === m1.seq + 3, json(d));
      assert(!("text" in d.message) && typeof d.change.at === "string", json(d));
      const stream = c.stream();
      assert(stream.length === 4 && stream[0].event === "newMessage", `${who}: ${json(stream)}`);
      assertConsecutive(stream, "0");
    }

    // Bob's first device goes away with its last cursor, and misses changes and a message.
    const since = bobHere.stream().at(-1).data.cursor;
    bobHere.close();
    const m2 = await api(alice, "POST", `/conversations/${m1.conversationId}/messages`, { message: "second" }, 201);
    await api(alice, "PATCH", messagePath(m2), { message: "second, edited" });
    await api(bob, "PUT", reactionPath(m2, "\u2764"));
    await api(alice, "DELETE", messagePath(m2));
    const m3 = await api(alice, "POST", `/message/send/${bob.id}`, { message: "third", replyTo: m1._id }, 400);
    assert(m3 === undefined, "a reply to a deleted message is refused");
    const last = await api(alice, "POST", `/message/send/${bob.id}`, { message: "third" }, 201);

    const back = client(bob, { auth: { token: bob.token, since } });
    await back.connected();
    await back.waitFor("newMessage", (m) => m._id === last._id);
    await bobElsewhere.waitFor("newMessage", (m) => m._id === last._id);
    await sleep(QUIET_MS);
    const replayed = back.stream();
    assert(
      json(replayed.map((x) => x.event)) ===
        json(["newMessage", "messageUpdated", "messageUpdated", "messageUpdated", "newMessage"]),
      `replayed: ${json(replayed)}`,
    );
    assertConsecutive(replayed, since);
    assert(replayed[0].data._id === m2._id && replayed[4].data._id === last._id, json(replayed));
    assert(
      json(replayed.slice(1, 4).map((x) => x.data.change.kind)) === json(["edited", "reactionAdded", "deleted"]),
      json(replayed),
    );
    assert(replayed[2].data.change.emoji === "\u2764\ufe0f" && replayed[2].data.change.userId === bob.id, json(replayed[2]));
    // The device that stayed got the same deliveries live, at the same cursors.
    const live = bobElsewhere.stream().slice(4);
    assert(
      json(live.map((x) => [x.event, x.data.cursor])) === json(replayed.map((x) => [x.event, x.data.cursor])),
      `live ${json(live)} replayed ${json(replayed)}`,
    );

    // The client that knows only newMessage got every message, and is still connected.
    assert(json(seed.messages.map((m) => m._id)) === json([m1._id, m2._id, last._id]), json(seed.messages));
    assert(seed.socket.connected, "the newMessage-only client was disconnected");
  },

  // A group: a reply carries its quote to every member; a reaction reaches every member's
  // device with `me` for its own user; the owner deletes a member's message; each change
  // takes the group's next seq, in every member's cursor; the reply's quote turns deleted.
  async group() {
    const [alice, bob, carol] = USERS;
    const group = await api(alice, "POST", "/conversations", { name: "Team", members: [bob.id, carol.id] }, 201);
    const gid = group._id;
    const devices = { alice: client(alice), bob: client(bob), carol: client(carol) };
    const all = Object.values(devices);
    await Promise.all(all.map((c) => c.connected()));
    await settled(devices.bob);

    const original = await api(carol, "POST", `/conversations/${gid}/messages`, { message: "lunch at noon?" }, 201);
    const reply = await api(bob, "POST", `/conversations/${gid}/messages`, { message: "yes", replyTo: original._id }, 201);
    const quote = { messageId: original._id, senderId: carol.id, text: "lunch at noon?", truncated: false, deleted: false };
    assert(json(reply.replyTo) === json(quote), json(reply));
    for (const c of all) {
      const got = await c.waitFor("newMessage", (m) => m._id === reply._id);
      assert(json(got.replyTo) === json(quote), json(got));
    }

    await api(alice, "PUT", `${messagePath(original)}/reactions/:tada:`);
    await api(alice, "PUT", reactionPath(original, "🎉"));
    const removed = await api(alice, "DELETE", messagePath(original));
    assert(removed.deletedBy === alice.id, json(removed));
    for (const c of all) await c.waitFor("messageUpdated", (u) => u.change.kind === "deleted");
    await sleep(QUIET_MS);
    for (const [name, c] of Object.entries(devices)) {
      const updates = c.updates();
      assert(json(updates.map((u) => u.change.kind)) === json(["reactionAdded", "deleted"]), `${name}: ${json(updates)}`);
      const [r, d] = updates;
      assert(json(r.message.reactions) === json([{ emoji: "🎉", count: 1, me: name === "alice" }]), `${name}: ${json(r)}`);
      assert(r.change.seq === reply.seq + 1 && d.change.seq === reply.seq + 2, `${name}: ${json(updates)}`);
      assert(r.message.receiverId === null && d.message.deletedBy === alice.id && d.message.message === "", json(d));
      for (const u of updates) {
        assert(u.cursor.endsWith(`~${gid}.${u.change.seq}`), `${name}: cursor ${u.cursor} for seq ${u.change.seq}`);
      }
      const stream = c.stream();
      assertConsecutive(stream.slice(1), stream[0].data.cursor);
    }
    const history = await api(bob, "GET", `/conversations/${gid}/messages`);
    const shown = history.find((m) => m._id === reply._id);
    assert(
      json(shown.replyTo) === json({ messageId: original._id, senderId: carol.id, truncated: false, deleted: true }),
      json(shown),
    );
  },
};

async function main() {
  const scenario = scenarios[scenarioName];
  if (!BASE || USERS.length < 3 || !scenario || !(mode in { default: 1, websocket: 1, polling: 1 })) {
    console.log(`not ok - usage: scenario one of ${Object.keys(scenarios).join(", ")}; CHAT_BASE_URL and 3 CHAT_USERS`);
    process.exit(2);
  }
  const label = `${scenarioName} (${mode})`;
  const deadline = setTimeout(() => {
    console.log(`not ok - ${label}: timed out`);
    process.exit(1);
  }, 30000);
  try {
    await scenario();
    console.log(`ok - ${label}`);
    process.exitCode = 0;
  } catch (error) {
    console.log(`not ok - ${label}: ${error.message}`);
    process.exitCode = 1;
  } finally {
    clearTimeout(deadline);
    for (const c of opened) c.close();
  }
}

await main();
// Sockets closed; give the last packets a moment, then leave even if a handle lingers.
setTimeout(() => process.exit(), 200).unref();
