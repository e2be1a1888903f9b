// Drives the server's /socket.io/ endpoint with the published socket.io-client v4, the way
// a front end of the original app does. Run by tests/tests/socketio.rs:
//
//   CHAT_BASE_URL=http://127.0.0.1:PORT CHAT_USERS='[{"id":..,"token":..},x3]' \
//     node tests/js/socketio.mjs <scenario> <mode>
//
// <mode> is the client's transport choice: "default" (polling, then upgrade), "websocket"
// (transports: ["websocket"]) or "polling" (transports: ["polling"]). Prints one TAP-like
// line, `ok - ...` or `not ok - ...`, and exits 0 or 1.

import { io } from "socket.io-client";

const BASE = process.env.CHAT_BASE_URL;
const USERS = JSON.parse(process.env.CHAT_USERS ?? "[]");
// An origin the server lists in cors.allowed_origins (the browser page of a front end).
const ALLOWED_ORIGIN = process.env.CHAT_ALLOWED_ORIGIN;
const [scenarioName, mode = "default"] = process.argv.slice(2);
const WAIT_MS = 5000;
const QUIET_MS = 400;

const transportsFor = (m) =>
  ({ default: undefined, websocket: ["websocket"], polling: ["polling"] })[m];

/** A socket whose every event is recorded, so a wait never misses an early one. */
class Client {
  constructor(user, options = {}, { mode: m = mode, namespace = "" } = {}) {
    const transports = transportsFor(m);
    this.log = [];
    this.waiters = [];
    this.socket = io(BASE + namespace, {
      forceNew: true,
      reconnection: false,
      ...(transports ? { transports } : {}),
      ...(user ? { auth: { token: user.token } } : {}),
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

  /** Index to pass as `from` to wait only for what comes later. */
  mark() {
    return this.log.length;
  }

  waitFor(event, predicate = () => true, { from = 0, ms = WAIT_MS } = {}) {
    return new Promise((resolve, reject) => {
      const matches = (i) => {
        const entry = this.log[i];
        return i >= from && entry.event === event && predicate(...entry.args);
      };
      for (let i = from; i < this.log.length; i++) {
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

  count(event, from = 0) {
    return this.log.slice(from).filter((e) => e.event === event).length;
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

function assert(condition, message) {
  if (!condition) throw new Error(message);
}

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

/** The newMessage payloads a client received, in order (from `from` on). */
function newMessages(c, from = 0) {
  return c.log.slice(from).filter((e) => e.event === "newMessage").map((e) => e.args[0]);
}

/** Cursors are decimal strings: each one right after the one before, starting after `since`. */
function assertConsecutive(messages, since) {
  let expected = BigInt(since) + 1n;
  for (const m of messages) {
    assert(typeof m.cursor === "string" && /^(0|[1-9][0-9]*)$/.test(m.cursor), `cursor ${JSON.stringify(m)}`);
    assert(BigInt(m.cursor) === expected, `expected cursor ${expected}, got ${m.cursor} (all: ${messages.map((x) => x.cursor)})`);
    expected += 1n;
  }
}

async function sendMessage(from, to, text) {
  const response = await fetch(`${BASE}/api/v1/message/send/${to.id}`, {
    method: "POST",
    headers: { "Content-Type": "application/json", Authorization: `Bearer ${from.token}` },
    body: JSON.stringify({ message: text }),
  });
  assert(response.status === 201, `sending a message answered ${response.status}`);
  return (await response.json()).responseData;
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

const scenarios = {
  // The receiver's devices and the sender's other device get newMessage; a third user doesn't.
  async delivery() {
    const [alice, bob, carol] = USERS;
    const bobHere = client(bob);
    const bobElsewhere = client(bob, {}, { mode: otherMode });
    const aliceElsewhere = client(alice);
    const carolHere = client(carol);
    await Promise.all([bobHere, bobElsewhere, aliceElsewhere, carolHere].map((c) => c.connected()));
    await settled(bobHere);

    const sent = await sendMessage(alice, bob, "hello over socket.io <b>&</b>");
    for (const c of [bobHere, bobElsewhere, aliceElsewhere]) {
      const got = await c.waitFor("newMessage", (m) => m._id === sent._id);
      assert(got.message === "hello over socket.io <b>&</b>", `message body ${JSON.stringify(got)}`);
      assert(got.senderId === alice.id && got.receiverId === bob.id, "sender and receiver ids");
      assert(got.conversationId === sent.conversationId && got.createdAt === sent.createdAt, "fields");
      assert(/^[1-9][0-9]*$/.test(got.cursor), `a cursor in ${JSON.stringify(got)}`);
    }
    await sleep(QUIET_MS);
    assert(carolHere.count("newMessage") === 0, "a third user received the message");
    await settled(bobHere);
  },

  // No token, a bad token, and a namespace that doesn't exist: connect_error, no connection.
  async unauthenticated() {
    const [alice] = USERS;
    const anonymous = client(null);
    const error = await anonymous.waitFor("connect_error");
    assert(/authentication required/i.test(error.message), `message: ${error.message}`);
    const forged = client({ token: "not.a.jwt" });
    const forgedError = await forged.waitFor("connect_error");
    assert(/invalid or expired token/i.test(forgedError.message), `message: ${forgedError.message}`);
    const elsewhere = client(alice, {}, { namespace: "/admin" });
    const nspError = await elsewhere.waitFor("connect_error");
    assert(/invalid namespace/i.test(nspError.message), `message: ${nspError.message}`);
    await sleep(QUIET_MS);
    for (const c of [anonymous, forged, elsewhere]) {
      assert(!c.socket.connected && c.count("connect") === 0, "a refused client got connected");
    }
  },

  // The token also travels as a Bearer header, a cookie or ?token=, like the native /ws.
  async "auth-sources"() {
    const [alice, bob, carol] = USERS;
    const viaHeader = client(null, { extraHeaders: { Authorization: `Bearer ${alice.token}` } });
    // Node's XMLHttpRequest refuses to set a Cookie header: the cookie rides the WebSocket
    // handshake here, and a raw polling handshake in tests/tests/socketio.rs.
    const viaCookie = client(
      null,
      { extraHeaders: { Cookie: `token=${bob.token}` } },
      { mode: "websocket" },
    );
    const viaQuery = client(null, { query: { token: carol.token } });
    await Promise.all([viaHeader, viaCookie, viaQuery].map((c) => c.connected()));
    await viaHeader.waitFor("onlineUsers", (list) => list.includes(alice.id));
    await viaCookie.waitFor("onlineUsers", (list) => list.includes(bob.id));
    await viaQuery.waitFor("onlineUsers", (list) => list.includes(carol.id));
    // The auth packet's token wins over the others.
    const both = client(alice, { query: { token: "not.a.jwt" } });
    await both.connected();
  },

  // A front end on an allowed origin connects with withCredentials; a page of any other
  // origin gets a connect_error: its handshake is refused before the upgrade. (In Node,
  // withCredentials keeps a cookie jar of its own that replaces a Cookie header, so the
  // token rides the auth packet here; tests/tests/hardening/origins.rs sends the cookie.)
  async origins() {
    const [alice] = USERS;
    const fromPage = (origin) =>
      client(alice, { withCredentials: true, extraHeaders: { Origin: origin } });
    const allowed = fromPage(ALLOWED_ORIGIN);
    await allowed.connected();
    await allowed.waitFor("onlineUsers", (list) => list.includes(alice.id));
    const foreign = fromPage("https://evil.example");
    await foreign.waitFor("connect_error");
    await sleep(QUIET_MS);
    assert(!foreign.socket.connected && foreign.count("connect") === 0, "a foreign page got connected");
  },

  // onlineUsers / getOnlineUsers on connect, and to everyone when a user goes away.
  async presence() {
    const [alice, bob] = USERS;
    const a = client(alice);
    await a.connected();
    const first = await a.waitFor("onlineUsers", (l) => l.includes(alice.id));
    assert(Array.isArray(first), "onlineUsers is an array");
    await a.waitFor("getOnlineUsers", (l) => l.includes(alice.id));

    const b = client(bob, {}, { mode: otherMode });
    await b.connected();
    await a.waitFor("getOnlineUsers", (l) => l.includes(bob.id) && l.includes(alice.id));
    await b.waitFor("onlineUsers", (l) => l.includes(bob.id) && l.includes(alice.id));
    await settled(a);

    const before = a.mark();
    b.close();
    const after = await a.waitFor("getOnlineUsers", (l) => !l.includes(bob.id), { from: before });
    assert(after.includes(alice.id), "alice is still online");
    await a.waitFor("onlineUsers", (l) => !l.includes(bob.id), { from: before });
  },

  // typing {to, isTyping} reaches the target only, as {from, to, isTyping}; acks are tolerated.
  async typing() {
    const [alice, bob, carol] = USERS;
    // Typing reaches only someone you share a conversation with.
    await sendMessage(alice, bob, "hi");
    const a = client(alice);
    const b = client(bob);
    const c = client(carol);
    await Promise.all([a, b, c].map((x) => x.connected()));
    await settled(a);

    a.socket.emit("typing", { to: bob.id, isTyping: true });
    const started = await b.waitFor("typing", (t) => t.from === alice.id && t.isTyping === true);
    assert(started.to === bob.id, `typing payload ${JSON.stringify(started)}`);

    // An emit asking for an ack must not break anything.
    a.socket.emit("typing", { to: bob.id, isTyping: false }, () => {});
    await b.waitFor("typing", (t) => t.from === alice.id && t.isTyping === false);
    // Garbage event data is ignored, not fatal.
    const mark = b.mark();
    a.socket.emit("typing", "nonsense");
    a.socket.emit("unknownEvent", { x: 1 });
    a.socket.emit("typing", { to: bob.id, isTyping: true });
    await b.waitFor("typing", (t) => t.isTyping === true, { from: mark });

    await sleep(QUIET_MS);
    assert(c.count("typing") === 0, "a third user saw the typing notice");
    assert(a.socket.connected && a.count("disconnect") === 0, "the sender was disconnected");
  },

  // auth.since: what was stored after the cursor is replayed in order, then live messages follow,
  // with messages sent during the reconnect on either side of the seam: consecutive cursors,
  // none missing, none twice.
  async resume() {
    const [alice, bob] = USERS;
    const first = client(bob);
    await first.connected();
    await settled(first);
    const early = [];
    for (let i = 1; i <= 3; i++) early.push(await sendMessage(alice, bob, `early ${i}`));
    await first.waitFor("newMessage", (m) => m._id === early[2]._id);
    const seen = newMessages(first);
    assert(seen.map((m) => m._id).join() === early.map((m) => m._id).join(), "live messages in order");
    assertConsecutive(seen, "0");
    const since = seen[seen.length - 1].cursor;
    first.close();

    const missed = [];
    for (let i = 1; i <= 4; i++) missed.push(await sendMessage(alice, bob, `missed ${i}`));
    const second = client(bob, { auth: { token: bob.token, since } });
    const during = Promise.all([1, 2, 3, 4, 5].map((i) => sendMessage(alice, bob, `during ${i}`)));
    await second.connected();
    const duringSent = await during;
    await settled(second);
    const after = await sendMessage(alice, bob, "after");
    await second.waitFor("newMessage", (m) => m._id === after._id);
    await sleep(QUIET_MS);

    const resumed = newMessages(second);
    assertConsecutive(resumed, since);
    const expected = [...missed, ...duringSent, after].map((m) => m._id).sort();
    assert(
      resumed.map((m) => m._id).sort().join() === expected.join(),
      `replayed and live: ${resumed.map((m) => m.message)}`,
    );
    // The missed ones come first, in the order they were sent, as complete messages.
    assert(resumed.slice(0, 4).map((m) => m._id).join() === missed.map((m) => m._id).join(), "replay order");
    assert(resumed[0].message === "missed 1" && resumed[0].senderId === alice.id, "a replayed message");
    assert(resumed[resumed.length - 1]._id === after._id, "the live message comes last");

    // The sender's own device resumes its own stream: the same messages at the sender's cursors.
    const aliceBack = client(alice, { auth: { token: alice.token, since: "0" } });
    await aliceBack.connected();
    await aliceBack.waitFor("newMessage", (m) => m._id === after._id);
    await sleep(QUIET_MS);
    const own = newMessages(aliceBack);
    assertConsecutive(own, "0");
    assert(own.length === 3 + expected.length, `alice's stream has ${own.length} messages`);
  },

  // `?since=` on the Engine.IO handshake works like auth.since; the packet's value wins.
  async "resume-query"() {
    const [alice, bob] = USERS;
    const sent = [];
    for (let i = 1; i <= 3; i++) sent.push(await sendMessage(alice, bob, `stored ${i}`));
    const viaQuery = client(bob, { query: { since: "1" } });
    const packetWins = client(bob, { auth: { token: bob.token, since: "2" }, query: { since: "abc" } });
    await Promise.all([viaQuery, packetWins].map((c) => c.connected()));
    await viaQuery.waitFor("newMessage", (m) => m._id === sent[2]._id);
    await packetWins.waitFor("newMessage", (m) => m._id === sent[2]._id);
    await sleep(QUIET_MS);
    assert(newMessages(viaQuery).map((m) => m.cursor).join() === "2,3", "query since 1");
    assert(newMessages(packetWins).map((m) => m.cursor).join() === "3", "auth since 2");
    // Without since: only what is stored from now on.
    const fresh = client(bob);
    await fresh.connected();
    await settled(fresh);
    const later = await sendMessage(alice, bob, "later");
    await fresh.waitFor("newMessage", (m) => m._id === later._id);
    await sleep(QUIET_MS);
    assert(newMessages(fresh).map((m) => m.cursor).join() === "4", "from now on");
  },

  // A since that is not a cursor is refused with connect_error, whichever way it comes.
  async "bad-since"() {
    const [alice, bob, carol] = USERS;
    const cases = [
      client(alice, { auth: { token: alice.token, since: "abc" } }),
      client(bob, { auth: { token: bob.token, since: 42 } }),
      client(carol, { query: { since: "-1" } }),
    ];
    for (const c of cases) {
      const error = await c.waitFor("connect_error");
      assert(error.message === "since is not a valid cursor", `message: ${error.message}`);
    }
    await sleep(QUIET_MS);
    for (const c of cases) assert(c.count("connect") === 0, "connected despite a bad since");
  },

  // A group: its entries reach every member's sockets (the sender's too) with each reader's
  // whole cursor; typing reaches the other members; a removed member gets the removal and
  // nothing after; reads go to one's own other sockets, receipts to the others; a resume
  // with the composite cursor replays what was missed.
  async groups() {
    const [alice, bob, carol] = USERS;
    const group = await api(alice, "POST", "/conversations", { name: "Team", members: [bob.id, carol.id] }, 201);
    const gid = group._id;
    const bobHere = client(bob);
    const bobElsewhere = client(bob, {}, { mode: otherMode });
    const aliceHere = client(alice);
    const carolHere = client(carol);
    const all = [bobHere, bobElsewhere, aliceHere, carolHere];
    await Promise.all(all.map((c) => c.connected()));
    await settled(bobHere);

    const sent = await api(alice, "POST", `/conversations/${gid}/messages`, { message: "hello team" }, 201);
    for (const c of all) {
      const got = await c.waitFor("newMessage", (m) => m._id === sent._id);
      assert(got.conversationId === gid && got.receiverId === null, `group fields ${JSON.stringify(got)}`);
      assert(got.kind === "text" && got.seq === 2 && got.senderId === alice.id, `entry ${JSON.stringify(got)}`);
      // Each user's stream holds the notice of joining: position 1, then the group at 2.
      assert(got.cursor === `1~${gid}.2`, `cursor ${got.cursor}`);
    }

    // Typing in the group: the other members, not the typist's own socket.
    carolHere.socket.emit("typing", { conversationId: gid, isTyping: true });
    for (const c of [bobHere, bobElsewhere, aliceHere]) {
      const typing = await c.waitFor("typing", (t) => t.from === carol.id);
      assert(typing.conversationId === gid && typing.isTyping === true && !("to" in typing), JSON.stringify(typing));
    }

    // Bob reads on one socket: his other one is told, the others get a receipt.
    const bobMark = bobElsewhere.mark();
    await api(bob, "POST", `/conversations/${gid}/read`, { upTo: sent._id });
    const read = await bobElsewhere.waitFor("conversationRead", (r) => r.conversationId === gid, { from: bobMark });
    assert(read.upTo === sent._id && read.seq === 2 && read.cursor === `2~${gid}.2`, JSON.stringify(read));
    for (const c of [aliceHere, carolHere]) {
      const receipt = await c.waitFor("messagesRead", (r) => r.userId === bob.id);
      assert(receipt.conversationId === gid && receipt.upTo === sent._id && receipt.seq === 2, JSON.stringify(receipt));
    }

    // Carol is removed: the removal is her last entry of the group.
    await api(alice, "DELETE", `/conversations/${gid}/members/${carol.id}`);
    const updated = await carolHere.waitFor("conversationUpdated");
    assert(updated.change.action === "removed" && updated.change.userIds[0] === carol.id, JSON.stringify(updated));
    assert(updated.conversation._id === gid && updated.conversation.memberCount === 2, JSON.stringify(updated));
    const removal = await carolHere.waitFor("newMessage", (m) => m.kind === "system" && m.system.action === "removed");
    assert(removal.seq === 3 && removal.receiverId === null, JSON.stringify(removal));
    const carolMark = carolHere.mark();

    // Bob goes away with his last cursor, and misses a message.
    await bobHere.waitFor("newMessage", (m) => m.seq === 3);
    const since = newMessages(bobHere).at(-1).cursor;
    bobHere.close();
    const missed = await api(alice, "POST", `/conversations/${gid}/messages`, { message: "missed" }, 201);
    const back = client(bob, { auth: { token: bob.token, since } });
    await back.connected();
    const replayed = await back.waitFor("newMessage", (m) => m._id === missed._id);
    // Bob's stream: joining, then his read; the group at the missed entry.
    assert(replayed.cursor === `2~${gid}.4`, `cursor ${replayed.cursor}`);
    await sleep(QUIET_MS);
    assert(newMessages(back).length === 1, `replayed ${JSON.stringify(newMessages(back))}`);
    assert(newMessages(carolHere, carolMark).length === 0, "the removed member got an entry after the removal");
    assert(carolHere.count("typing", carolMark) === 0, "the removed member got typing");
    // A cursor that is no cursor of bob's is refused: start over.
    const wrong = client(bob, { auth: { token: bob.token, since: `0~${gid}.1` } });
    const error = await wrong.waitFor("connect_error");
    assert(error.message === "since is not a valid cursor: start over from 0", `message: ${error.message}`);
  },

  // Over several ping intervals (1 s in the test server) the client stays connected.
  async heartbeat() {
    const [alice, bob] = USERS;
    const a = client(alice);
    const b = client(bob);
    await Promise.all([a, b].map((x) => x.connected()));
    await sleep(3500);
    for (const x of [a, b]) {
      assert(x.socket.connected && x.count("disconnect") === 0, `disconnected: ${JSON.stringify(x.log.filter((e) => e.event === "disconnect"))}`);
    }
    await settled(a);
    const sent = await sendMessage(bob, alice, "still there?");
    await a.waitFor("newMessage", (m) => m._id === sent._id);
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
