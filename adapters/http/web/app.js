// The built-in chat client: plain DOM, no framework, no build step.
// Everything a user typed reaches the page through textContent, never as HTML.
"use strict";

(() => {
  const PAGE_SIZE = 30;
  const PEOPLE_PAGE_SIZE = 50;
  const DIRECTORY_PAGE_SIZE = 200; // the API's largest page, for looking names up
  const SYNC_PAGE_SIZE = 200;
  const TYPING_IDLE_MS = 2500;
  const TYPING_SHOWN_MS = 6000;
  const RECONNECT_MIN_MS = 500;
  const RECONNECT_MAX_MS = 15000;
  const NEAR_BOTTOM_PX = 80;
  const CHAT_PATH = /^\/chat\/([0-9a-f-]{36})$/;

  const $ = (id) => document.getElementById(id);

  const el = {
    loading: $("loading"),
    status: $("connection-status"),
    skipLink: $("skip-link"),
    favicon: $("favicon"),
    authView: $("auth-view"),
    tabLogin: $("tab-login"),
    tabRegister: $("tab-register"),
    loginForm: $("login-form"),
    registerForm: $("register-form"),
    chatView: $("chat-view"),
    meAvatar: $("me-avatar"),
    meName: $("me-name"),
    meUsername: $("me-username"),
    logout: $("logout"),
    notifyOffer: $("notify-offer"),
    enableNotifications: $("enable-notifications"),
    chatsPanel: $("chats-panel"),
    newChat: $("new-chat"),
    conversationList: $("conversation-list"),
    conversationListEmpty: $("conversation-list-empty"),
    findPeople: $("find-people"),
    moreConversations: $("more-conversations"),
    peoplePanel: $("people-panel"),
    closePeople: $("close-people"),
    search: $("user-search"),
    userList: $("user-list"),
    userListEmpty: $("user-list-empty"),
    moreUsers: $("more-users"),
    noConversation: $("no-conversation"),
    pane: $("conversation-pane"),
    back: $("back"),
    peerAvatar: $("peer-avatar"),
    peerName: $("peer-name"),
    peerStatus: $("peer-status"),
    typing: $("typing"),
    scroller: $("messages-scroll"),
    historyStatus: $("history-status"),
    messages: $("messages"),
    outbox: $("outbox"),
    newMessages: $("new-messages"),
    composer: $("composer"),
    input: $("message-input"),
    composerError: $("composer-error"),
  };

  const state = {
    me: null,
    users: new Map(), // id -> user, everyone we have heard of
    online: new Set(),
    everOnline: new Set(), // seen online while connected: going offline then is a "last seen"
    // The conversation list: peer id -> { peerId, last (message or null), updatedAt }.
    conversations: new Map(),
    conversationsCursor: null,
    people: { ids: [], next: null, search: "", token: 0 },
    cursor: null, // the last position of my message stream this tab has processed
    peer: null, // the id of the person whose conversation is open
    messageIds: new Set(),
    oldestId: null,
    hasOlder: false,
    loadingOlder: false,
    firstUnreadId: null, // where the "new" divider goes in the open conversation
    conversationToken: 0, // bumps on every switch, so late answers for an old peer are dropped
    drafts: new Map(), // peer id -> unsent text in the composer
    typingTimer: null,
    typingSent: false,
    incomingTypingTimer: null,
    inFlight: new Set(), // outbox keys being sent right now
    notifications: new Map(), // peer id -> the desktop notification shown for it
  };

  // Other tabs of this browser learn about logins and logouts at once.
  const tabs = "BroadcastChannel" in window ? new BroadcastChannel("chat-session") : null;

  // ---------------------------------------------------------------- API

  class ApiError extends Error {
    constructor(status, body) {
      super((body && body.errMessage) || (status ? `request failed (${status})` : "network error"));
      this.status = status;
      this.code = body && body.code;
      this.field = body && body.field;
    }
  }

  async function api(method, path, body) {
    let response;
    try {
      response = await fetch(`/api/v1${path}`, {
        method,
        credentials: "same-origin",
        headers: body === undefined ? { Accept: "application/json" } : { Accept: "application/json", "Content-Type": "application/json" },
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch {
      throw new ApiError(0, null);
    }
    let json = null;
    try {
      json = await response.json();
    } catch {
      // Not JSON: a proxy's error page or an empty body; the status says enough.
    }
    if (!response.ok || !json || json.success === false) {
      const error = new ApiError(response.status, json);
      if (response.status === 401 && state.me && !path.startsWith("/user/log")) {
        sessionEnded();
      }
      throw error;
    }
    return { data: json.responseData, headers: response.headers };
  }

  // ---------------------------------------------------------------- what this browser keeps

  // Per user, in localStorage: the stream cursor, read state, sends not yet confirmed and
  // when people were last seen. Shared by the user's tabs; a private window keeps none.
  const saved = {
    key(name) {
      return `chat.v1.${state.me._id}.${name}`;
    },
    get(name, fallback) {
      try {
        const raw = localStorage.getItem(this.key(name));
        return raw ? JSON.parse(raw) : fallback;
      } catch {
        return fallback;
      }
    },
    set(name, value) {
      try {
        localStorage.setItem(this.key(name), JSON.stringify(value));
      } catch {
        // Storage full or refused: this tab still works, it just forgets on reload.
      }
    },
  };

  // Whether cursor `a` is further along the stream than `b`. Cursors are opaque, but today's
  // start with the stream position in decimal (`42`, or `42~<group>.<seq>…` for a member of
  // groups), which may outgrow a double: compared by length, then text. When that tells
  // nothing, the one processed last is the newest, as the stream arrives in order.
  function cursorAfter(a, b) {
    if (b === null || b === undefined) return true;
    const [pa, pb] = [a.split("~")[0], b.split("~")[0]];
    if (!/^\d+$/.test(pa) || !/^\d+$/.test(pb) || pa === pb) return true;
    return pa.length !== pb.length ? pa.length > pb.length : pa > pb;
  }

  function advanceCursor(cursor) {
    if (typeof cursor !== "string" || !cursor) return;
    if (cursorAfter(cursor, state.cursor)) state.cursor = cursor;
    const stored = saved.get("cursor", null);
    if (cursorAfter(cursor, stored)) saved.set("cursor", cursor);
  }

  // Read state per peer: { upTo: the newest message id read, unread: [ids of messages not read] }.
  // Message ids sort by creation, so "read up to" also refuses ids that another tab read first.
  function reads() {
    return saved.get("reads", {});
  }

  function unreadIds(peerId) {
    const entry = reads()[peerId];
    return entry ? entry.unread : [];
  }

  function addUnread(peerId, messageId) {
    const all = reads();
    const entry = all[peerId] || { upTo: "", unread: [] };
    if (messageId <= entry.upTo || entry.unread.includes(messageId)) return;
    entry.unread.push(messageId);
    entry.unread.sort();
    all[peerId] = entry;
    saved.set("reads", all);
  }

  function markRead(peerId, upTo) {
    const all = reads();
    const entry = all[peerId] || { upTo: "", unread: [] };
    const limit = upTo || entry.unread[entry.unread.length - 1] || entry.upTo;
    const before = entry.unread.length;
    if (limit > entry.upTo) {
      entry.upTo = limit;
      entry.unread = entry.unread.filter((id) => id > entry.upTo);
      all[peerId] = entry;
      saved.set("reads", all);
    }
    if (before !== entry.unread.length) {
      paintConversation(peerId);
      paintTotals();
    }
    const note = state.notifications.get(peerId);
    if (note) {
      note.close();
      state.notifications.delete(peerId);
    }
  }

  function lastSeenOf(id) {
    const times = [saved.get("lastSeen", {})[id]];
    const conversation = state.conversations.get(id);
    if (conversation && conversation.last && conversation.last.senderId === id) times.push(conversation.last.createdAt);
    return times.filter(Boolean).sort().pop() || null;
  }

  function noteLastSeen(ids) {
    if (!ids.length) return;
    const all = saved.get("lastSeen", {});
    const now = new Date().toISOString();
    for (const id of ids) all[id] = now;
    saved.set("lastSeen", all);
  }

  // ---------------------------------------------------------------- small DOM helpers

  function show(node, visible) {
    node.hidden = !visible;
  }

  function visible() {
    return document.visibilityState === "visible";
  }

  function initials(user) {
    const name = (user.fullName || user.username || "?").trim();
    const parts = name.split(/\s+/).filter(Boolean);
    const letters = parts.length > 1 ? parts[0][0] + parts[parts.length - 1][0] : name.slice(0, 1);
    return letters.toUpperCase();
  }

  // One of the twelve avatar colours, the same for an id everywhere (FNV-1a).
  function colour(text) {
    let h = 0x811c9dc5;
    for (const c of text) h = Math.imul(h ^ c.codePointAt(0), 0x01000193) >>> 0;
    return h % 12;
  }

  function ownAvatar(id) {
    return `/api/v1/user/${encodeURIComponent(id)}/avatar`;
  }

  // The avatar: initials on a colour, covered by the picture once it loads. The picture is
  // the server's own unless the user chose one; a chosen one that fails falls back to it.
  function fillAvatar(node, id, user) {
    node.replaceChildren();
    node.dataset.hue = String(colour(id));
    const text = document.createElement("span");
    text.className = "initials";
    text.textContent = user ? initials(user) : "";
    node.append(text);
    const own = ownAvatar(id);
    const chosen = user && typeof user.avatar === "string" && (user.avatar.startsWith("https://") || user.avatar.startsWith("/api/v1/user/"));
    const img = document.createElement("img");
    img.alt = "";
    img.decoding = "async";
    img.referrerPolicy = "no-referrer";
    img.addEventListener("load", () => img.classList.add("loaded"));
    img.addEventListener("error", () => {
      if (img.getAttribute("src") !== own) img.src = own;
      else img.remove();
    });
    img.src = chosen ? user.avatar : own;
    node.append(img);
  }

  function nameOf(id) {
    const user = state.users.get(id);
    return user ? user.fullName : "…";
  }

  // ---------------------------------------------------------------- times

  function dayKey(date) {
    return `${date.getFullYear()}-${date.getMonth() + 1}-${date.getDate()}`;
  }

  function daysAgo(date) {
    const start = (d) => new Date(d.getFullYear(), d.getMonth(), d.getDate()).getTime();
    return Math.round((start(new Date()) - start(date)) / 86400000);
  }

  function clock(date) {
    return date.toLocaleTimeString([], { hour: "numeric", minute: "2-digit" });
  }

  // "Today", "Yesterday", a weekday within the week, else the date.
  function dayLabel(date) {
    const ago = daysAgo(date);
    if (ago === 0) return "Today";
    if (ago === 1) return "Yesterday";
    if (ago > 1 && ago < 7) return date.toLocaleDateString([], { weekday: "long" });
    const sameYear = date.getFullYear() === new Date().getFullYear();
    return date.toLocaleDateString([], { weekday: "short", day: "numeric", month: "short", ...(sameYear ? {} : { year: "numeric" }) });
  }

  // For the conversation list: the time today, else a short day.
  function shortWhen(iso) {
    const date = new Date(iso);
    if (Number.isNaN(date.getTime())) return "";
    const ago = daysAgo(date);
    if (ago === 0) return clock(date);
    if (ago === 1) return "Yesterday";
    if (ago > 1 && ago < 7) return date.toLocaleDateString([], { weekday: "short" });
    return date.toLocaleDateString([], { day: "numeric", month: "short" });
  }

  function lastSeenText(iso) {
    const date = new Date(iso);
    const ago = daysAgo(date);
    if (ago === 0) return `last seen today at ${clock(date)}`;
    if (ago === 1) return `last seen yesterday at ${clock(date)}`;
    return `last seen ${date.toLocaleDateString([], { day: "numeric", month: "short" })}`;
  }

  // ---------------------------------------------------------------- connection banner

  function setStatus(text) {
    // The banner takes room from the messages: keep the newest one in view if it was.
    const stick = state.peer && nearBottom();
    el.status.textContent = text || "";
    show(el.status, Boolean(text));
    document.body.classList.toggle("is-offline", Boolean(text));
    if (stick) scrollToBottom();
  }

  // ---------------------------------------------------------------- auth screens

  function selectTab(which) {
    const login = which === "login";
    el.tabLogin.setAttribute("aria-selected", String(login));
    el.tabRegister.setAttribute("aria-selected", String(!login));
    el.tabLogin.tabIndex = login ? 0 : -1;
    el.tabRegister.tabIndex = login ? -1 : 0;
    show(el.loginForm, login);
    show(el.registerForm, !login);
    const form = login ? el.loginForm : el.registerForm;
    const first = form.querySelector("input");
    if (first) first.focus();
  }

  function clearErrors(form) {
    for (const node of form.querySelectorAll(".field-error, .form-error")) node.textContent = "";
    for (const input of form.querySelectorAll("[aria-invalid]")) input.removeAttribute("aria-invalid");
  }

  // A sentence: capital first letter, full stop at the end.
  function sentence(text) {
    const trimmed = String(text).trim();
    if (!trimmed) return "";
    const capital = trimmed.charAt(0).toUpperCase() + trimmed.slice(1);
    return /[.!?…]$/.test(capital) ? capital : `${capital}.`;
  }

  function flagField(form, prefix, field, message) {
    const input = form.querySelector(`[name="${CSS.escape(field)}"]`);
    const slot = $(`${prefix}-${field}-error`);
    if (!input || !slot) return null;
    input.setAttribute("aria-invalid", "true");
    slot.textContent = sentence(message);
    return input;
  }

  // The API counts password lengths in bytes; people count characters. Below the minimum
  // both agree for the common case, so say characters; the maximum is stated as it is.
  function fieldMessage(field, message) {
    const rest = message.startsWith(`${field} `) ? message.slice(field.length + 1) : message;
    if (field === "password") return rest.replace(/at least (\d+) bytes/, "at least $1 characters");
    return rest;
  }

  // Puts the API's message next to the field it names, or above the button; moves focus
  // to where the person has to act.
  function showError(form, prefix, error) {
    const input = error.field ? flagField(form, prefix, error.field, fieldMessage(error.field, error.message)) : null;
    if (input) {
      input.focus();
      return;
    }
    $(`${prefix}-form-error`).textContent =
      error.status === 0 ? "Cannot reach the server. Check your connection and try again." : sentence(error.message);
    if (prefix === "login" && error.status === 401) {
      // Wrong username or password: the password is the likelier mistake; type it again.
      const password = $("login-password");
      password.value = "";
      password.setAttribute("aria-invalid", "true");
      password.focus();
    } else {
      form.querySelector("button[type=submit]").focus();
    }
  }

  function formValues(form) {
    const values = {};
    for (const [key, value] of new FormData(form)) values[key] = typeof value === "string" ? value : "";
    return values;
  }

  const bytes = (text) => new TextEncoder().encode(text).length;

  // Everything the form can tell before asking the server, all fields at once.
  function checkLogin(values) {
    const problems = [];
    if (!values.username.trim()) problems.push(["username", "Enter your username"]);
    if (!values.password) problems.push(["password", "Enter your password"]);
    return problems;
  }

  function checkRegistration(values) {
    const problems = [];
    if (!values.fullName.trim()) problems.push(["fullName", "Enter your name"]);
    const username = values.username.trim();
    if (!username) problems.push(["username", "Choose a username"]);
    else if (!/^[A-Za-z0-9_.-]{3,32}$/.test(username)) problems.push(["username", "Use 3–32 letters, digits, _ . or -"]);
    if (!values.password) problems.push(["password", "Choose a password"]);
    else if (bytes(values.password) < 8) problems.push(["password", "Must be at least 8 characters"]);
    else if (bytes(values.password) > 72) problems.push(["password", "Must be at most 72 bytes (fewer characters with accents or emoji)"]);
    if (!values.confirmPassword) problems.push(["confirmPassword", "Type the password again"]);
    else if (values.password && values.confirmPassword !== values.password) problems.push(["confirmPassword", "Does not match the password"]);
    return problems;
  }

  async function submitAuth(event, prefix, path, check, pick) {
    event.preventDefault();
    const form = event.currentTarget;
    const button = form.querySelector("button[type=submit]");
    clearErrors(form);
    const values = formValues(form);
    const problems = check(values);
    if (problems.length) {
      const inputs = problems.map(([field, message]) => flagField(form, prefix, field, message));
      inputs[0] && inputs[0].focus();
      return;
    }
    button.disabled = true;
    const registering = prefix === "register";
    try {
      const { data } = await api("POST", path, pick(values));
      form.reset();
      tabs && tabs.postMessage({ type: "login" });
      enterChat(data.user || data.newUser, { registered: registering, focus: true });
    } catch (error) {
      button.disabled = false;
      showError(form, prefix, error);
      return;
    }
    button.disabled = false;
  }

  function showAuth() {
    show(el.loading, false);
    show(el.chatView, false);
    show(el.skipLink, false);
    show(el.authView, true);
    clearErrors(el.loginForm);
    clearErrors(el.registerForm);
    document.title = "Chat";
    el.favicon.href = "/assets/icon.svg";
    if (location.pathname !== "/") history.replaceState(null, "", "/");
    selectTab("login");
  }

  // ---------------------------------------------------------------- people

  function remember(user) {
    if (user && user._id) state.users.set(user._id, user);
  }

  // Names for ids the page has not seen yet (a conversation list entry, a message from a
  // stranger): the people directory is read in its largest pages until they are all found.
  const directory = { cursor: null, done: false, queue: Promise.resolve() };

  function resolveUsers(ids) {
    const wanted = ids.filter((id) => id && state.me && id !== state.me._id && !state.users.has(id));
    if (!wanted.length) return Promise.resolve();
    directory.queue = directory.queue
      .then(async () => {
        // An earlier lookup may have found them meanwhile.
        let missing = wanted.filter((id) => !state.users.has(id));
        // One full pass at most: someone new may have joined since the last one ended.
        if (missing.length && directory.done) {
          directory.done = false;
          directory.cursor = null;
        }
        while (missing.length && !directory.done) {
          const params = new URLSearchParams({ limit: String(DIRECTORY_PAGE_SIZE) });
          if (directory.cursor) params.set("cursor", directory.cursor);
          const { data, headers } = await api("GET", `/user/get-other-users?${params}`);
          for (const user of data || []) remember(user);
          directory.cursor = headers.get("X-Next-Cursor");
          directory.done = !directory.cursor;
          missing = missing.filter((id) => !state.users.has(id));
        }
      })
      .catch((error) => console.warn("looking people up failed:", error.message))
      .then(() => {
        for (const id of wanted) paintConversation(id);
        if (state.peer && wanted.includes(state.peer)) paintPeer();
      });
    return directory.queue;
  }

  function personItem(user) {
    const li = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "user";
    button.dataset.userId = user._id;

    const avatar = document.createElement("span");
    avatar.className = "avatar";
    avatar.setAttribute("aria-hidden", "true");
    fillAvatar(avatar, user._id, user);
    const dot = document.createElement("span");
    dot.className = "presence";
    avatar.append(dot);

    const names = document.createElement("span");
    names.className = "names";
    const full = document.createElement("span");
    full.className = "full-name";
    full.textContent = user.fullName;
    const handle = document.createElement("span");
    handle.className = "username muted";
    handle.textContent = `@${user.username}`;
    names.append(full, handle);

    const presence = document.createElement("span");
    presence.className = "visually-hidden presence-text";
    button.append(avatar, names, presence);
    button.addEventListener("click", () => {
      closePeople();
      openConversation(user._id, { from: "list" });
    });
    li.append(button);
    return li;
  }

  function paintPerson(button) {
    const online = state.online.has(button.dataset.userId);
    button.classList.toggle("online", online);
    button.querySelector(".presence-text").textContent = online ? ", online" : "";
  }

  async function loadPeople(more) {
    const people = state.people;
    const token = ++people.token;
    const params = new URLSearchParams({ limit: String(PEOPLE_PAGE_SIZE) });
    if (people.search) params.set("search", people.search);
    if (more && people.next) params.set("cursor", people.next);
    try {
      const { data, headers } = await api("GET", `/user/get-other-users?${params}`);
      if (token !== people.token) return;
      const users = data || [];
      for (const user of users) remember(user);
      if (!more) {
        people.ids = [];
        el.userList.replaceChildren();
      }
      for (const user of users) {
        people.ids.push(user._id);
        const item = personItem(user);
        el.userList.append(item);
        paintPerson(item.firstElementChild);
      }
      people.next = headers.get("X-Next-Cursor");
      show(el.moreUsers, Boolean(people.next));
      show(el.userListEmpty, people.ids.length === 0);
    } catch (error) {
      if (token === people.token) {
        el.userListEmpty.textContent = `Could not load people: ${error.message}`;
        show(el.userListEmpty, true);
      }
    }
  }

  function openPeople() {
    show(el.chatsPanel, false);
    show(el.peoplePanel, true);
    el.userListEmpty.textContent = "Nobody found.";
    el.search.value = "";
    state.people.search = "";
    loadPeople(false);
    el.search.focus();
  }

  function closePeople() {
    if (el.peoplePanel.hidden) return;
    show(el.peoplePanel, false);
    show(el.chatsPanel, true);
  }

  // ---------------------------------------------------------------- the conversation list

  function peerOf(message) {
    return message.senderId === state.me._id ? message.receiverId : message.senderId;
  }

  function noteConversation(peerId, message) {
    const existing = state.conversations.get(peerId);
    if (existing && existing.last && existing.last._id >= message._id) return;
    state.conversations.set(peerId, { peerId, last: message, updatedAt: message.createdAt });
    renderConversations();
  }

  async function loadConversations(more) {
    const params = new URLSearchParams();
    if (more && state.conversationsCursor) params.set("cursor", state.conversationsCursor);
    try {
      const { data, headers } = await api("GET", `/message/conversations?${params}`);
      // Merged, not replaced: an event may have brought something newer meanwhile.
      for (const entry of data || []) {
        if ((entry.kind && entry.kind !== "direct") || !Array.isArray(entry.participants)) continue;
        const peerId = entry.participants.find((id) => id !== state.me._id) || entry.participants[0];
        const known = state.conversations.get(peerId);
        const last = entry.lastMessage || null;
        if (known && known.last && last && known.last._id > last._id) continue;
        state.conversations.set(peerId, { peerId, last, updatedAt: entry.updatedAt });
      }
      state.conversationsCursor = headers.get("X-Next-Cursor");
      renderConversations();
      resolveUsers([...state.conversations.keys()]);
    } catch (error) {
      console.warn("loading the conversation list failed:", error.message);
    }
  }

  function sortedConversations() {
    const when = (c) => (c.last ? c.last.createdAt : c.updatedAt) || "";
    return [...state.conversations.values()].sort((a, b) => {
      const order = when(b).localeCompare(when(a));
      if (order) return order;
      return (b.last ? b.last._id : "").localeCompare(a.last ? a.last._id : "");
    });
  }

  function conversationItem(peerId) {
    const li = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "chat-item";
    button.dataset.userId = peerId;
    const avatar = document.createElement("span");
    avatar.className = "avatar";
    avatar.setAttribute("aria-hidden", "true");
    const names = document.createElement("span");
    names.className = "names";
    const top = document.createElement("span");
    top.className = "row";
    const full = document.createElement("span");
    full.className = "full-name";
    const when = document.createElement("span");
    when.className = "when";
    top.append(full, when);
    const bottom = document.createElement("span");
    bottom.className = "row";
    const preview = document.createElement("span");
    preview.className = "preview";
    const badge = document.createElement("span");
    badge.className = "unread";
    bottom.append(preview, badge);
    names.append(top, bottom);
    button.append(avatar, names);
    button.addEventListener("click", () => openConversation(peerId, { from: "list" }));
    li.append(button);
    return li;
  }

  function renderConversations() {
    if (!state.me) return;
    const existing = new Map();
    for (const button of el.conversationList.querySelectorAll(".chat-item")) existing.set(button.dataset.userId, button.parentElement);
    const order = sortedConversations();
    let previous = null;
    for (const conversation of order) {
      let li = existing.get(conversation.peerId);
      existing.delete(conversation.peerId);
      if (!li) li = conversationItem(conversation.peerId);
      const wanted = previous ? previous.nextElementSibling : el.conversationList.firstElementChild;
      if (wanted !== li) el.conversationList.insertBefore(li, wanted);
      previous = li;
      paintConversation(conversation.peerId);
    }
    for (const li of existing.values()) li.remove();
    show(el.conversationListEmpty, order.length === 0);
    show(el.moreConversations, Boolean(state.conversationsCursor));
    paintTotals();
  }

  function paintConversation(peerId) {
    const button = el.conversationList.querySelector(`.chat-item[data-user-id="${CSS.escape(peerId)}"]`);
    const conversation = state.conversations.get(peerId);
    if (!button || !conversation) return;
    const user = state.users.get(peerId);
    const avatar = button.querySelector(".avatar");
    const hasUser = Boolean(user);
    if (avatar.dataset.filled !== String(hasUser)) {
      fillAvatar(avatar, peerId, user);
      const dot = document.createElement("span");
      dot.className = "presence";
      avatar.append(dot);
      avatar.dataset.filled = String(hasUser);
    }
    button.querySelector(".full-name").textContent = nameOf(peerId);
    const last = conversation.last;
    button.querySelector(".when").textContent = last ? shortWhen(last.createdAt) : "";
    const mine = last && last.senderId === state.me._id;
    button.querySelector(".preview").textContent = last ? `${mine ? "You: " : ""}${last.message.replace(/\s+/g, " ")}` : "";
    const count = unreadIds(peerId).length;
    const badge = button.querySelector(".unread");
    const spoken = document.createElement("span");
    spoken.className = "visually-hidden";
    spoken.textContent = count === 1 ? " unread message" : " unread messages";
    badge.replaceChildren(String(count), spoken);
    show(badge, count > 0);
    button.classList.toggle("has-unread", count > 0);
    const online = state.online.has(peerId);
    button.classList.toggle("online", online);
    button.setAttribute("aria-current", String(state.peer === peerId));
  }

  function paintAllConversations() {
    for (const peerId of state.conversations.keys()) paintConversation(peerId);
    paintTotals();
  }

  // The tab title and the favicon carry the number of unread messages.
  function paintTotals() {
    if (!state.me) return;
    let total = 0;
    for (const entry of Object.values(reads())) total += entry.unread.length;
    const base = state.peer ? `${nameOf(state.peer)} · Chat` : "Chat";
    document.title = total ? `(${total}) ${base}` : base;
    el.favicon.href = total ? badgeIcon(total) : "/assets/icon.svg";
  }

  function badgeIcon(count) {
    const label = count > 99 ? "99+" : String(count);
    const svg =
      `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 64 64">` +
      `<rect width="64" height="64" rx="16" fill="#4f46e5"/>` +
      `<path d="M16 20a6 6 0 0 1 6-6h20a6 6 0 0 1 6 6v14a6 6 0 0 1-6 6H30l-9 8v-8h1a6 6 0 0 1-6-6z" fill="#fff"/>` +
      `<circle cx="46" cy="18" r="18" fill="#dc2626"/>` +
      `<text x="46" y="25" text-anchor="middle" font-family="Arial, sans-serif" font-weight="700" ` +
      `font-size="${label.length > 2 ? 14 : 20}" fill="#fff">${label}</text></svg>`;
    return `data:image/svg+xml,${encodeURIComponent(svg)}`;
  }

  // ---------------------------------------------------------------- a conversation

  function linkify(node, text) {
    // Links become anchors; everything else, including what looks like markup, stays text.
    const pattern = /\bhttps?:\/\/[^\s<>"]+/gi;
    let at = 0;
    for (const match of text.matchAll(pattern)) {
      let url = match[0];
      url = url.replace(/[.,;:!?'")\]}]+$/, "");
      let href = null;
      try {
        const parsed = new URL(url);
        if (parsed.protocol === "http:" || parsed.protocol === "https:") href = parsed.href;
      } catch {
        href = null;
      }
      if (!href) continue;
      node.append(text.slice(at, match.index));
      const a = document.createElement("a");
      a.href = href;
      a.target = "_blank";
      a.rel = "noopener noreferrer";
      a.textContent = url;
      node.append(a);
      at = match.index + url.length;
    }
    node.append(text.slice(at));
  }

  function bubble(text, mine) {
    const wrap = document.createElement("div");
    wrap.className = "bubble";
    const body = document.createElement("p");
    body.className = "text";
    linkify(body, text);
    const meta = document.createElement("span");
    meta.className = "meta";
    wrap.append(body, meta);
    if (mine) wrap.dataset.mine = "true";
    return wrap;
  }

  function messageItem(message) {
    const mine = message.senderId === state.me._id;
    const li = document.createElement("li");
    li.className = `msg ${mine ? "mine" : "theirs"}`;
    li.dataset.id = message._id;
    const date = new Date(message.createdAt);
    li.dataset.day = Number.isNaN(date.getTime()) ? "" : dayKey(date);
    const wrap = bubble(message.message, mine);
    const time = document.createElement("time");
    time.dateTime = message.createdAt;
    time.textContent = Number.isNaN(date.getTime()) ? "" : clock(date);
    time.title = Number.isNaN(date.getTime()) ? "" : date.toLocaleString();
    wrap.querySelector(".meta").append(time);
    const who = document.createElement("span");
    who.className = "visually-hidden";
    who.textContent = mine ? "You said: " : `${nameOf(message.senderId)} said: `;
    li.append(who, wrap);
    return li;
  }

  function nearBottom() {
    return el.scroller.scrollHeight - el.scroller.scrollTop - el.scroller.clientHeight < NEAR_BOTTOM_PX;
  }

  function scrollToBottom() {
    el.scroller.scrollTop = el.scroller.scrollHeight;
  }

  // Inserts messages where their ids put them (ids sort by creation), skipping known ones.
  function placeMessages(messages) {
    let added = 0;
    for (const message of messages) {
      if (state.messageIds.has(message._id)) continue;
      state.messageIds.add(message._id);
      const item = messageItem(message);
      let next = null;
      for (let node = el.messages.lastElementChild; node; node = node.previousElementSibling) {
        if (!node.dataset.id) continue;
        if (node.dataset.id < message._id) break;
        next = node;
      }
      el.messages.insertBefore(item, next);
      added += 1;
    }
    if (added) placeDividers();
    const first = el.messages.querySelector(".msg");
    state.oldestId = first ? first.dataset.id : null;
    return added;
  }

  // Day dividers (Today, Yesterday, a date) wherever the day changes, and a "New messages"
  // divider before the first unread one.
  function placeDividers() {
    for (const node of el.messages.querySelectorAll(".divider")) node.remove();
    let day = null;
    let unreadPlaced = false;
    for (const node of [...el.messages.children]) {
      if (!unreadPlaced && state.firstUnreadId && node.dataset.id >= state.firstUnreadId && !node.classList.contains("mine")) {
        const divider = document.createElement("li");
        divider.className = "divider unread-divider";
        divider.id = "unread-divider";
        divider.textContent = "New messages";
        el.messages.insertBefore(divider, node);
        unreadPlaced = true;
      }
      if (node.dataset.day && node.dataset.day !== day) {
        day = node.dataset.day;
        const divider = document.createElement("li");
        divider.className = "divider day-divider";
        divider.textContent = dayLabel(new Date(node.querySelector("time").dateTime));
        const before = node.previousElementSibling && node.previousElementSibling.classList.contains("unread-divider") ? node.previousElementSibling : node;
        el.messages.insertBefore(divider, before);
      }
    }
  }

  function updateHistoryStatus() {
    if (state.loadingOlder) el.historyStatus.textContent = "Loading earlier messages…";
    else if (state.hasOlder) el.historyStatus.textContent = "";
    else el.historyStatus.textContent = state.messageIds.size || el.outbox.children.length ? "This is the beginning of your conversation." : "No messages yet. Say hello!";
  }

  async function fetchPage(peerId, before) {
    const params = new URLSearchParams({ limit: String(PAGE_SIZE) });
    if (before) params.set("before", before);
    const { data } = await api("GET", `/message/get-messages/${encodeURIComponent(peerId)}?${params}`);
    return data.messages || [];
  }

  function paintPeer() {
    const peerId = state.peer;
    if (!peerId) return;
    const user = state.users.get(peerId);
    el.peerName.textContent = nameOf(peerId);
    if (el.peerAvatar.dataset.for !== `${peerId}:${Boolean(user)}`) {
      fillAvatar(el.peerAvatar, peerId, user);
      el.peerAvatar.dataset.for = `${peerId}:${Boolean(user)}`;
    }
    const online = state.online.has(peerId);
    const seen = online ? null : lastSeenOf(peerId);
    el.peerStatus.textContent = online ? "online" : seen ? lastSeenText(seen) : "offline";
    el.peerStatus.classList.toggle("online", online);
    paintTotals();
  }

  function paintSkipLink() {
    show(el.skipLink, Boolean(state.me));
    if (state.peer) {
      el.skipLink.textContent = "Skip to the message box";
      el.skipLink.href = "#message-input";
    } else {
      el.skipLink.textContent = "Skip to the chats";
      el.skipLink.href = "#conversation-list";
    }
  }

  // With a mouse the composer takes the focus at once; on a touch screen that would open
  // the keyboard over the chat one came to read.
  function focusComposer() {
    if (matchMedia("(pointer: fine)").matches) el.input.focus();
  }

  // Opens a conversation. `from`: "list" (a click: Back returns to the list), "route" (the
  // URL said so), "notification".
  async function openConversation(id, { from } = {}) {
    if (!state.me || id === state.me._id) return;
    if (state.peer === id) {
      focusComposer();
      return;
    }
    saveDraft();
    stopTyping();
    const token = ++state.conversationToken;
    const wasOpen = Boolean(state.peer);
    state.peer = id;
    state.messageIds = new Set();
    state.oldestId = null;
    state.hasOlder = false;
    state.loadingOlder = false;
    const unread = unreadIds(id);
    state.firstUnreadId = unread.length ? unread[0] : null;

    const path = `/chat/${id}`;
    if (from === "list" || from === "notification") {
      // From one chat to another the entry is replaced: Back always leads to the list.
      if (wasOpen && history.state && history.state.chat) history.replaceState({ chat: id }, "", path);
      else if (location.pathname !== path) history.pushState({ chat: id }, "", path);
    }

    el.messages.replaceChildren();
    el.historyStatus.textContent = "Loading…";
    hideIncomingTyping();
    hidePill();
    el.composerError.textContent = "";
    el.input.removeAttribute("aria-invalid");
    el.input.value = state.drafts.get(id) || "";
    autosize();
    renderOutbox();
    paintPeer();
    show(el.noConversation, false);
    show(el.pane, true);
    el.chatView.classList.add("show-conversation");
    paintAllConversations();
    paintSkipLink();
    focusComposer();
    if (!state.users.has(id)) resolveUsers([id]);

    try {
      const page = await fetchPage(id, null);
      if (token !== state.conversationToken) return;
      placeMessages(page);
      state.hasOlder = page.length === PAGE_SIZE;
      updateHistoryStatus();
      scrollToBottom();
      // With more unread than fit, start at the first unread message.
      const divider = $("unread-divider");
      if (divider && divider.offsetTop < el.scroller.scrollTop) el.scroller.scrollTop = divider.offsetTop - 8;
      if (page.length) noteConversation(id, page[page.length - 1]);
      markRead(id, page.length ? page[page.length - 1]._id : null);
      fillViewport(token);
    } catch (error) {
      if (token !== state.conversationToken) return;
      el.historyStatus.textContent =
        error.status === 404 ? "This person is not on the server." : `Could not load messages: ${error.message}`;
    }
  }

  // A first page shorter than the view can't be scrolled, so scrolling could never ask for more.
  function fillViewport(token) {
    if (token === state.conversationToken && state.hasOlder && el.scroller.scrollHeight <= el.scroller.clientHeight) {
      loadOlder().then(() => fillViewport(token));
    }
  }

  async function loadOlder() {
    if (!state.peer || !state.hasOlder || state.loadingOlder || !state.oldestId) return;
    const token = state.conversationToken;
    state.loadingOlder = true;
    updateHistoryStatus();
    try {
      const page = await fetchPage(state.peer, state.oldestId);
      if (token !== state.conversationToken) return;
      // Keep the message under the reader's eyes where it is while older ones go in above.
      const fromBottom = el.scroller.scrollHeight - el.scroller.scrollTop;
      placeMessages(page);
      el.scroller.scrollTop = el.scroller.scrollHeight - fromBottom;
      state.hasOlder = page.length === PAGE_SIZE;
    } catch (error) {
      if (token === state.conversationToken) el.historyStatus.textContent = `Could not load earlier messages: ${error.message}`;
      return;
    } finally {
      if (token === state.conversationToken) state.loadingOlder = false;
    }
    updateHistoryStatus();
  }

  // After a reconnect: whatever arrived meanwhile is in the newest page.
  async function reloadNewest() {
    if (!state.peer) return;
    const token = state.conversationToken;
    try {
      const page = await fetchPage(state.peer, null);
      if (token !== state.conversationToken) return;
      const stick = nearBottom();
      const overlaps = page.length < PAGE_SIZE || page.some((m) => state.messageIds.has(m._id));
      if (!overlaps) {
        // More was missed than one page holds: start again from the newest page.
        state.messageIds = new Set();
        el.messages.replaceChildren();
        state.hasOlder = true;
      }
      placeMessages(page);
      updateHistoryStatus();
      if (stick || !overlaps) scrollToBottom();
      if (stick && visible() && page.length) markRead(state.peer, page[page.length - 1]._id);
    } catch (error) {
      console.warn("reloading the conversation failed:", error.message);
    }
  }

  function saveDraft() {
    if (!state.peer) return;
    if (el.input.value.trim()) state.drafts.set(state.peer, el.input.value);
    else state.drafts.delete(state.peer);
  }

  // `refocus`: put the keyboard focus on the closed chat's entry in the list.
  function closeConversation(refocus) {
    const peer = state.peer;
    saveDraft();
    stopTyping();
    state.conversationToken += 1;
    state.peer = null;
    state.firstUnreadId = null;
    hidePill();
    show(el.pane, false);
    show(el.noConversation, true);
    el.chatView.classList.remove("show-conversation");
    paintAllConversations();
    paintSkipLink();
    if (refocus && peer) {
      const item = el.conversationList.querySelector(`.chat-item[data-user-id="${CSS.escape(peer)}"]`);
      (item || el.newChat).focus();
    }
  }

  // Back, the back button and Escape: to the list, through history when the chat was
  // opened from it, so that the browser's Back and the page's agree.
  function backToList() {
    if (!state.peer) return;
    if (history.state && history.state.chat) history.back();
    else {
      history.replaceState(null, "", "/");
      closeConversation(true);
    }
  }

  // The URL names the screen: `/` the list, `/chat/<id>` a conversation.
  function route() {
    if (!state.me) return;
    const match = CHAT_PATH.exec(location.pathname);
    if (match) openConversation(match[1], { from: "route" });
    else if (state.peer) closeConversation(true);
  }

  // ---------------------------------------------------------------- the "new messages" pill

  function showPill() {
    show(el.newMessages, true);
  }

  function hidePill() {
    show(el.newMessages, false);
  }

  function onScroll() {
    if (el.scroller.scrollTop < 120) loadOlder();
    if (state.peer && nearBottom()) {
      hidePill();
      if (visible()) markRead(state.peer, lastShownId());
    }
  }

  function lastShownId() {
    const items = el.messages.querySelectorAll(".msg");
    return items.length ? items[items.length - 1].dataset.id : null;
  }

  // ---------------------------------------------------------------- sending

  // Every message gets its key when it is composed; each retry sends the same key, so the
  // server stores it once however often it is retried (clientMessageId).
  function newKey() {
    if (crypto.randomUUID) return crypto.randomUUID();
    const b = crypto.getRandomValues(new Uint8Array(16));
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    const hex = [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
    return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
  }

  // The outbox: sends not confirmed yet, kept across reloads: [{ key, to, text, at, failed, error }].
  function outbox() {
    return saved.get("outbox", []);
  }

  function saveOutbox(items) {
    saved.set("outbox", items);
  }

  function updateOutboxItem(key, change) {
    const items = outbox();
    const item = items.find((i) => i.key === key);
    if (!item) return null;
    Object.assign(item, change);
    saveOutbox(items);
    return item;
  }

  function renderOutbox() {
    const items = state.peer ? outbox().filter((i) => i.to === state.peer) : [];
    const stick = nearBottom();
    el.outbox.replaceChildren(...items.map(outboxItem));
    updateHistoryStatus();
    if (stick) scrollToBottom();
  }

  function outboxItem(item) {
    const li = document.createElement("li");
    const sending = !item.failed || state.inFlight.has(item.key);
    li.className = `msg mine ${sending ? "pending" : "failed"}`;
    li.dataset.key = item.key;
    const wrap = bubble(item.text, true);
    const meta = wrap.querySelector(".meta");
    const label = document.createElement("span");
    label.className = "send-state";
    if (sending) {
      label.textContent = "Sending…";
      meta.append(label);
    } else {
      label.textContent = item.error ? `Not sent: ${item.error}` : "Not sent";
      meta.append(label);
      if (item.retryable !== false) {
        const retry = document.createElement("button");
        retry.type = "button";
        retry.className = "retry";
        retry.textContent = "Retry";
        retry.addEventListener("click", () => deliver(item.key));
        meta.append(retry);
      }
      const discard = document.createElement("button");
      discard.type = "button";
      discard.className = "discard";
      discard.textContent = "Delete";
      discard.setAttribute("aria-label", "Delete this unsent message");
      discard.addEventListener("click", () => {
        saveOutbox(outbox().filter((i) => i.key !== item.key));
        renderOutbox();
        el.input.focus();
      });
      meta.append(discard);
    }
    li.append(wrap);
    return li;
  }

  function send(event) {
    event.preventDefault();
    const peer = state.peer;
    const text = el.input.value;
    if (!peer || !text.trim()) return;
    el.composerError.textContent = "";
    el.input.removeAttribute("aria-invalid");
    stopTyping();
    const item = { key: newKey(), to: peer, text, at: new Date().toISOString(), failed: false };
    saveOutbox([...outbox(), item]);
    el.input.value = "";
    state.drafts.delete(peer);
    autosize();
    hidePill();
    renderOutbox();
    scrollToBottom();
    deliver(item.key);
  }

  // Sends (or sends again) the outbox entry `key`.
  async function deliver(key) {
    const item = outbox().find((i) => i.key === key);
    if (!item || state.inFlight.has(key)) return;
    state.inFlight.add(key);
    updateOutboxItem(key, { failed: false, error: null });
    if (item.to === state.peer) renderOutbox();
    try {
      const { data } = await api("POST", `/message/send/${encodeURIComponent(item.to)}`, { message: item.text, clientMessageId: key });
      state.inFlight.delete(key);
      confirmSent(key, data);
    } catch (error) {
      state.inFlight.delete(key);
      if (!outbox().some((i) => i.key === key)) return; // confirmed meanwhile by its event
      // Unreachable, timed out, overloaded: worth another try. Anything else won't change.
      const retryable = error.status === 0 || error.status === 408 || error.status === 429 || error.status >= 500;
      const reason = error.status === 0 ? "" : retryable ? "the server is busy" : sentence(error.message).replace(/\.$/, "");
      updateOutboxItem(key, { failed: true, retryable, error: reason });
      if (item.to === state.peer) renderOutbox();
    }
  }

  // A send is confirmed, by its answer or by its `newMessage` event, whichever comes first.
  function confirmSent(key, message) {
    const items = outbox();
    if (items.some((i) => i.key === key)) {
      saveOutbox(items.filter((i) => i.key !== key));
    }
    if (message && message._id) ingest(message, { live: false });
    if (state.peer) renderOutbox();
  }

  // After a reconnect (and at start): everything not confirmed yet is sent again, with its key.
  function flushOutbox() {
    for (const item of outbox()) {
      if (item.retryable !== false) deliver(item.key);
    }
  }

  function autosize() {
    el.input.style.height = "auto";
    el.input.style.height = `${Math.min(el.input.scrollHeight, 160)}px`;
  }

  // ---------------------------------------------------------------- typing

  function sendTyping(isTyping) {
    if (!state.peer) return;
    socketSend("typing", { to: state.peer, isTyping });
  }

  function onComposerInput() {
    autosize();
    if (!state.peer) return;
    if (!el.input.value.trim()) {
      stopTyping();
      return;
    }
    if (!state.typingSent) {
      state.typingSent = true;
      sendTyping(true);
    }
    clearTimeout(state.typingTimer);
    state.typingTimer = setTimeout(stopTyping, TYPING_IDLE_MS);
  }

  function stopTyping() {
    clearTimeout(state.typingTimer);
    if (state.typingSent) {
      state.typingSent = false;
      sendTyping(false);
    }
  }

  function hideIncomingTyping() {
    clearTimeout(state.incomingTypingTimer);
    show(el.typing, false);
    show(el.peerStatus, true);
    el.typing.textContent = "";
  }

  // "typing…" takes the place of the status line under the name, so it never covers a message.
  function onTyping(data) {
    if (!data || !state.peer || data.from !== state.peer) return;
    if (data.isTyping) {
      el.typing.textContent = `${nameOf(state.peer)} is typing…`;
      show(el.peerStatus, false);
      show(el.typing, true);
      clearTimeout(state.incomingTypingTimer);
      // A lost "stopped" event must not leave the indicator up for ever.
      state.incomingTypingTimer = setTimeout(hideIncomingTyping, TYPING_SHOWN_MS);
    } else {
      hideIncomingTyping();
    }
  }

  // ---------------------------------------------------------------- messages from the server

  // One message of my stream, live or caught up: the conversation list, the open chat,
  // unread state, the outbox and notifications follow from it. Safe to see twice.
  function ingest(message, { live }) {
    if (!message || !state.me) return;
    if (message.cursor) advanceCursor(message.cursor);
    // Only messages between two people are shown here (group conversations are not yet).
    if (!message._id || !message.senderId || !message.receiverId) return;
    const mine = message.senderId === state.me._id;
    const peerId = peerOf(message);
    if (mine && message.clientMessageId && outbox().some((i) => i.key === message.clientMessageId)) {
      saveOutbox(outbox().filter((i) => i.key !== message.clientMessageId));
      if (state.peer === peerId) renderOutbox();
    }
    noteConversation(peerId, message);
    if (!state.users.has(peerId)) resolveUsers([peerId]);

    const open = state.peer === peerId;
    let readNow = false;
    if (open) {
      const stick = nearBottom() || mine;
      if (!stick && !mine && !state.messageIds.has(message._id) && !state.firstUnreadId) state.firstUnreadId = message._id;
      placeMessages([message]);
      updateHistoryStatus();
      if (!mine) hideIncomingTyping();
      if (stick) scrollToBottom();
      else if (!mine) showPill();
      readNow = stick && visible();
    }
    if (mine) {
      // Answering a conversation reads it.
      markRead(peerId, message._id);
    } else if (readNow) {
      markRead(peerId, message._id);
    } else {
      addUnread(peerId, message._id);
      paintConversation(peerId);
      paintTotals();
      if (live) notify(peerId, message);
    }
  }

  function onOnlineUsers(ids) {
    if (!Array.isArray(ids)) return;
    const now = new Set(ids);
    const gone = [...state.everOnline].filter((id) => !now.has(id));
    noteLastSeen(gone);
    for (const id of gone) state.everOnline.delete(id);
    for (const id of ids) state.everOnline.add(id);
    state.online = now;
    for (const button of el.userList.querySelectorAll(".user")) paintPerson(button);
    paintAllConversations();
    paintPeer();
  }

  // ---------------------------------------------------------------- desktop notifications

  function paintNotifyOffer() {
    show(el.notifyOffer, "Notification" in window && Notification.permission === "default");
  }

  async function enableNotifications() {
    try {
      await Notification.requestPermission();
    } catch {
      // Refused or not supported: the offer goes away either way.
    }
    paintNotifyOffer();
  }

  // Only while the tab is in the background, one per conversation (a newer one replaces it).
  function notify(peerId, message) {
    if (visible() || !("Notification" in window) || Notification.permission !== "granted") return;
    const text = message.message.length > 140 ? `${message.message.slice(0, 139)}…` : message.message;
    try {
      const note = new Notification(nameOf(peerId), { body: text, tag: `chat-${peerId}`, icon: ownAvatar(peerId) });
      note.onclick = () => {
        window.focus();
        note.close();
        closePeople();
        openConversation(peerId, { from: "notification" });
      };
      state.notifications.set(peerId, note);
    } catch (error) {
      console.warn("notification failed:", error.message);
    }
  }

  // ---------------------------------------------------------------- the socket

  const socket = { ws: null, attempt: 0, timer: null, wanted: false, everOpened: false, connecting: false };

  function socketSend(event, data) {
    if (socket.ws && socket.ws.readyState === WebSocket.OPEN) {
      socket.ws.send(JSON.stringify({ event, data }));
    }
  }

  // Reads my stream from the last cursor this browser processed: what arrived while the page
  // was closed, logged out or offline counts as unread. Without a cursor (the first start in
  // this browser) it only finds where the stream ends: older messages are history, not news.
  async function catchUp() {
    let since = state.cursor || saved.get("cursor", null);
    let baseline = since === null;
    for (;;) {
      const params = new URLSearchParams({ since: since || "", limit: String(SYNC_PAGE_SIZE) });
      let data;
      try {
        ({ data } = await api("GET", `/message/sync?${params}`));
      } catch (error) {
        if (error.status === 400 && error.field === "since" && !baseline) {
          // A cursor of another database (after a move): start over, without counting.
          saved.set("cursor", null);
          state.cursor = null;
          since = null;
          baseline = true;
          continue;
        }
        throw error;
      }
      for (const message of data.messages || []) {
        if (baseline) advanceCursor(message.cursor);
        else ingest(message, { live: false });
      }
      if (data.nextCursor) advanceCursor(data.nextCursor);
      // An empty stream read from its start: it begins at 0, and so does the news.
      if (baseline && !state.cursor && !(data.messages || []).length) advanceCursor("0");
      since = state.cursor;
      if (!data.hasMore) return;
    }
  }

  async function connect() {
    clearTimeout(socket.timer);
    socket.timer = null;
    if (!socket.wanted || socket.connecting || (socket.ws && socket.ws.readyState <= WebSocket.OPEN)) return;
    socket.connecting = true;
    try {
      await catchUp();
    } catch (error) {
      socket.connecting = false;
      if (error.status === 401) return; // sessionEnded() has taken over
      connectionLost();
      return;
    }
    socket.connecting = false;
    if (!socket.wanted) return;
    // The socket resumes where the catch-up ended: nothing in between is missed.
    const since = state.cursor ? `?since=${encodeURIComponent(state.cursor)}` : "";
    const ws = new WebSocket(`${location.protocol === "https:" ? "wss:" : "ws:"}//${location.host}/ws${since}`);
    socket.ws = ws;
    ws.addEventListener("open", () => {
      if (socket.ws !== ws) return;
      const reconnected = socket.everOpened;
      socket.everOpened = true;
      socket.attempt = 0;
      setStatus("");
      document.body.classList.add("is-connected");
      flushOutbox();
      if (reconnected) {
        loadConversations(false);
        reloadNewest();
      }
    });
    ws.addEventListener("message", (event) => {
      let frame;
      try {
        frame = JSON.parse(event.data);
      } catch {
        return;
      }
      if (!frame || typeof frame.event !== "string") return;
      if (frame.event === "newMessage") ingest(frame.data, { live: true });
      else if (frame.event === "onlineUsers") onOnlineUsers(frame.data);
      else if (frame.event === "typing") onTyping(frame.data);
    });
    ws.addEventListener("close", (event) => {
      if (socket.ws !== ws) return;
      socket.ws = null;
      if (event.code === 4001) {
        // The server does not know the cursor (data moved): start over from the end.
        saved.set("cursor", null);
        state.cursor = null;
      }
      connectionLost();
    });
  }

  function connectionLost() {
    document.body.classList.remove("is-connected");
    if (!socket.wanted) return;
    // Who is online is unknown until the next `onlineUsers`: show nobody rather than stale dots.
    state.everOnline.clear();
    onOnlineUsers([]);
    scheduleReconnect();
  }

  function scheduleReconnect() {
    if (socket.timer) return;
    // Exponential backoff with jitter, so a restarted server isn't hit by every tab at once.
    const ceiling = Math.min(RECONNECT_MAX_MS, RECONNECT_MIN_MS * 2 ** socket.attempt);
    const delay = Math.round(ceiling / 2 + Math.random() * (ceiling / 2));
    socket.attempt += 1;
    setStatus(navigator.onLine === false ? "Offline. Waiting for the network…" : "Offline. Reconnecting…");
    socket.timer = setTimeout(async () => {
      socket.timer = null;
      // A refused handshake looks like any other close: ask whether the session still holds.
      try {
        await api("GET", "/user/get-profile");
      } catch (error) {
        if (error.status === 401) return; // sessionEnded() has taken over
        scheduleReconnect();
        return;
      }
      connect();
    }, delay);
  }

  function startSocket() {
    socket.wanted = true;
    socket.attempt = 0;
    socket.everOpened = false;
    connect();
  }

  function stopSocket() {
    socket.wanted = false;
    clearTimeout(socket.timer);
    socket.timer = null;
    const ws = socket.ws;
    socket.ws = null;
    if (ws) ws.close(1000, "logout");
    setStatus("");
  }

  window.addEventListener("offline", () => {
    if (!socket.wanted) return;
    // A dropped network often leaves the socket looking open until TCP gives up.
    const ws = socket.ws;
    socket.ws = null;
    if (ws) ws.close(4000, "offline");
    connectionLost();
  });

  window.addEventListener("online", () => {
    if (!socket.wanted) return;
    socket.attempt = 0;
    clearTimeout(socket.timer);
    socket.timer = null;
    setStatus("Reconnecting…");
    connect();
  });

  // ---------------------------------------------------------------- session

  // `registered`: a new account; `focus`: the person just logged in here, put the focus in.
  function enterChat(user, { registered, focus }) {
    state.me = user;
    state.users.clear();
    remember(user);
    state.conversations.clear();
    state.conversationsCursor = null;
    state.online = new Set();
    state.everOnline = new Set();
    state.drafts.clear();
    state.inFlight.clear();
    directory.cursor = null;
    directory.done = false;
    // A new account's stream starts empty: everything from here on is news.
    state.cursor = registered ? "0" : saved.get("cursor", null);
    if (registered) saved.set("cursor", "0");
    el.conversationList.replaceChildren();
    closePeople();
    closeConversation();
    fillAvatar(el.meAvatar, user._id, user);
    el.meName.textContent = user.fullName;
    el.meUsername.textContent = `@${user.username}`;
    show(el.loading, false);
    show(el.authView, false);
    show(el.chatView, true);
    paintNotifyOffer();
    paintSkipLink();
    paintTotals();
    loadConversations(false);
    startSocket();
    // A chat's URL opened directly: put the list under it, so that Back leads there.
    const match = CHAT_PATH.exec(location.pathname);
    if (match) {
      // (After a reload the entry is already ours, with the list under it.)
      if (!(history.state && history.state.chat === match[1])) {
        history.replaceState(null, "", "/");
        history.pushState({ chat: match[1] }, "", `/chat/${match[1]}`);
      }
      openConversation(match[1], { from: "route" });
    } else {
      if (location.pathname !== "/") history.replaceState(null, "", "/");
      if (focus) el.newChat.focus();
    }
  }

  function leaveChat() {
    stopSocket();
    closeConversation();
    for (const note of state.notifications.values()) note.close();
    state.notifications.clear();
    state.me = null;
    el.conversationList.replaceChildren();
    el.userList.replaceChildren();
    showAuth();
  }

  function sessionEnded() {
    if (!state.me) return;
    leaveChat();
    $("login-form-error").textContent = "Your session has ended. Please log in again.";
  }

  async function logout() {
    el.logout.disabled = true;
    stopTyping();
    try {
      await api("POST", "/user/logout");
    } catch {
      // Already logged out elsewhere, or offline: this tab forgets the session either way.
    } finally {
      el.logout.disabled = false;
    }
    tabs && tabs.postMessage({ type: "logout" });
    leaveChat();
  }

  async function boot() {
    try {
      const { data } = await api("GET", "/user/get-profile");
      enterChat(data, { registered: false, focus: false });
    } catch (error) {
      showAuth();
      if (error.status === 0) $("login-form-error").textContent = "Cannot reach the server. Check your connection and reload.";
    }
  }

  // ---------------------------------------------------------------- wiring

  el.tabLogin.addEventListener("click", () => selectTab("login"));
  el.tabRegister.addEventListener("click", () => selectTab("register"));
  for (const tab of [el.tabLogin, el.tabRegister]) {
    tab.addEventListener("keydown", (event) => {
      if (event.key === "ArrowRight" || event.key === "ArrowLeft") {
        event.preventDefault();
        selectTab(tab === el.tabLogin ? "register" : "login");
        (tab === el.tabLogin ? el.tabRegister : el.tabLogin).focus();
      }
    });
  }

  el.loginForm.addEventListener("submit", (event) =>
    submitAuth(event, "login", "/user/login", checkLogin, (v) => ({ username: v.username.trim(), password: v.password })),
  );
  el.registerForm.addEventListener("submit", (event) =>
    submitAuth(event, "register", "/user/register", checkRegistration, (v) => ({
      fullName: v.fullName,
      username: v.username.trim(),
      password: v.password,
      confirmPassword: v.confirmPassword,
      ...(v.gender ? { gender: v.gender } : {}),
    })),
  );

  el.logout.addEventListener("click", logout);
  el.back.addEventListener("click", backToList);
  el.newChat.addEventListener("click", openPeople);
  el.findPeople.addEventListener("click", openPeople);
  el.closePeople.addEventListener("click", () => {
    closePeople();
    el.newChat.focus();
  });
  el.moreConversations.addEventListener("click", () => loadConversations(true));
  el.enableNotifications.addEventListener("click", enableNotifications);

  let searchTimer = null;
  el.search.addEventListener("input", () => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(() => {
      state.people.search = el.search.value.trim();
      state.people.next = null;
      loadPeople(false);
    }, 200);
  });
  el.moreUsers.addEventListener("click", () => loadPeople(true));

  el.scroller.addEventListener("scroll", onScroll);
  el.newMessages.addEventListener("click", () => {
    scrollToBottom();
    hidePill();
    if (state.peer) markRead(state.peer, lastShownId());
    el.input.focus();
  });

  el.composer.addEventListener("submit", send);
  el.input.addEventListener("input", onComposerInput);
  el.input.addEventListener("blur", stopTyping);
  el.input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      el.composer.requestSubmit();
    }
  });

  el.skipLink.addEventListener("click", (event) => {
    event.preventDefault();
    if (state.peer) el.input.focus();
    else (el.conversationList.querySelector("button") || el.newChat).focus();
  });

  document.addEventListener("keydown", (event) => {
    if (event.key !== "Escape" || !state.me || event.defaultPrevented) return;
    if (!el.peoplePanel.hidden) {
      closePeople();
      el.newChat.focus();
    } else if (state.peer) {
      backToList();
    }
  });

  window.addEventListener("popstate", route);

  document.addEventListener("visibilitychange", () => {
    if (visible() && state.peer && nearBottom()) markRead(state.peer, lastShownId());
  });

  // Another tab read or received something: show the same counts here.
  window.addEventListener("storage", (event) => {
    if (state.me && event.key === saved.key("reads")) paintAllConversations();
    if (state.me && event.key === saved.key("outbox") && state.peer) renderOutbox();
  });

  if (tabs) {
    tabs.addEventListener("message", (event) => {
      const type = event.data && event.data.type;
      if (type === "logout" && state.me) leaveChat();
      else if (type === "login" && !state.me) boot();
    });
  }

  // The times in the list say "Yesterday" after midnight without a reload.
  setInterval(() => {
    if (state.me) paintAllConversations();
  }, 60000);

  boot();
})();
