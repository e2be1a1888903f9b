// The built-in chat client: plain DOM, no framework, no build step.
// Everything a user typed reaches the page through textContent, never as HTML.
"use strict";

(() => {
  const PAGE_SIZE = 30;
  const PEOPLE_PAGE_SIZE = 50;
  const PICK_PAGE_SIZE = 20; // people offered to add to a group
  const SYNC_PAGE_SIZE = 200;
  const TYPING_IDLE_MS = 2500;
  const TYPING_SHOWN_MS = 6000;
  const RECONNECT_MIN_MS = 500;
  const RECONNECT_MAX_MS = 15000;
  const NEAR_BOTTOM_PX = 80;
  const READ_DELAY_MS = 300; // a chat's reads reach the server at most this often
  const SEEN_NAMES = 3; // "Seen by Alice, Bob, Carol"; more readers are counted instead
  const CHAT_PATH = /^\/chat\/([0-9a-f-]{36})$/;
  const GROUP_PATH = /^\/group\/([0-9a-f-]{36})$/;
  // The emoji offered in a message's actions (fully qualified, as the server gives them back).
  const REACTIONS = ["👍", "❤️", "😂", "😮", "😢", "🙏"];
  const QUOTE_LENGTH = 100; // characters of the original a reply shows, as the server cuts them

  const $ = (id) => document.getElementById(id);
  const enc = encodeURIComponent;

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
    newGroup: $("new-group"),
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
    newGroupPanel: $("new-group-panel"),
    closeNewGroup: $("close-new-group"),
    newGroupForm: $("new-group-form"),
    newGroupName: $("new-group-name"),
    newGroupSearch: $("new-group-search"),
    newGroupChosen: $("new-group-chosen"),
    newGroupPeople: $("new-group-people"),
    newGroupPeopleEmpty: $("new-group-people-empty"),
    moreGroupPeople: $("more-group-people"),
    createGroup: $("create-group"),
    noConversation: $("no-conversation"),
    pane: $("conversation-pane"),
    back: $("back"),
    peerAvatar: $("peer-avatar"),
    peerName: $("peer-name"),
    peerStatus: $("peer-status"),
    typing: $("typing"),
    groupInfo: $("group-info"),
    scroller: $("messages-scroll"),
    historyStatus: $("history-status"),
    messages: $("messages"),
    outbox: $("outbox"),
    newMessages: $("new-messages"),
    composer: $("composer"),
    replyBar: $("reply-bar"),
    replyWho: $("reply-who"),
    replyQuote: $("reply-quote"),
    replyCancel: $("reply-cancel"),
    input: $("message-input"),
    composerError: $("composer-error"),
    composerClosed: $("composer-closed"),
    groupPanel: $("group-panel"),
    closeGroupPanel: $("close-group-panel"),
    renameForm: $("rename-form"),
    groupName: $("group-name"),
    groupNameError: $("group-name-error"),
    groupNameText: $("group-name-text"),
    membersHeading: $("members-heading"),
    memberList: $("member-list"),
    addMembers: $("add-members"),
    addSearch: $("add-search"),
    addResults: $("add-results"),
    addResultsEmpty: $("add-results-empty"),
    groupError: $("group-error"),
    leaveGroup: $("leave-group"),
    leaveConfirm: $("leave-confirm"),
    leaveConfirmText: $("leave-confirm-text"),
    leaveYes: $("leave-yes"),
    leaveNo: $("leave-no"),
  };

  const state = {
    me: null,
    users: new Map(), // id -> user, everyone we have heard of
    online: new Set(),
    everOnline: new Set(), // seen online while connected: going offline then is a "last seen"
    // Every chat the page knows: key -> chat (see chatFor). The key of a direct chat is the
    // other person's id, a group's is its conversation id (both are what the URL names).
    conversations: new Map(),
    byConversationId: new Map(), // conversation id -> key
    groups: new Map(), // group id -> { name, version, members: [{ userId, role, joinedAt }] }
    receipts: new Map(), // conversation id -> Map(user id -> the seq they have read up to)
    conversationsCursor: null,
    people: { ids: [], next: null, search: "", token: 0 },
    cursor: null, // the last position of my message stream this tab has processed
    peer: null, // the key of the open chat
    messageIds: new Map(), // id -> the open chat's messages as last known (the highest version)
    menuFor: null, // the message whose actions are open
    confirmDelete: null, // the message whose deletion waits for a "Delete" again
    editing: null, // { id, text }: the message being edited, and the text so far
    replyTo: null, // { messageId, senderId, text }: what the next send answers
    systemEntries: new Map(), // id -> the open chat's system entries, to word them again
    oldestId: null,
    hasOlder: false,
    loadingOlder: false,
    firstUnreadId: null, // where the "new" divider goes in the open conversation
    conversationToken: 0, // bumps on every switch, so late answers for an old chat are dropped
    drafts: new Map(), // chat key -> unsent text in the composer
    typingTimer: null,
    typingSent: false,
    typers: new Map(), // user id -> timer, for whoever is typing in the open chat
    inFlight: new Set(), // outbox keys being sent right now
    notifications: new Map(), // chat key -> the desktop notification shown for it
  };

  // Other tabs of this browser learn about logins and logouts at once.
  const tabs = "BroadcastChannel" in window ? new BroadcastChannel("chat-session") : null;

  // Runs `task` once, `ms` after the last call for the same key.
  const timers = new Map();
  function soon(key, ms, task) {
    clearTimeout(timers.get(key));
    timers.set(
      key,
      setTimeout(() => {
        timers.delete(key);
        task();
      }, ms),
    );
  }

  // ---------------------------------------------------------------- API

  class ApiError extends Error {
    constructor(status, body) {
      super((body && body.errMessage) || (status ? `request failed (${status})` : "network error"));
      this.status = status;
      this.code = body && body.code;
      this.field = body && body.field;
    }
  }

  // `keepalive`: the request outlives the page (a read told as the tab closes).
  async function api(method, path, body, { keepalive = false } = {}) {
    let response;
    try {
      response = await fetch(`/api/v1${path}`, {
        method,
        keepalive,
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

  // A refusal that asking again will not change (not a lost connection, a timeout or a busy server).
  function refused(error) {
    return error.status >= 400 && error.status < 500 && error.status !== 408 && error.status !== 429;
  }

  // ---------------------------------------------------------------- what this browser keeps

  // Per user, in localStorage: the stream cursor, sends not yet confirmed and when people
  // were last seen. Shared by the user's tabs; a private window keeps none. Read state is
  // the server's: every device shows the same.
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
    remove(name) {
      try {
        localStorage.removeItem(this.key(name));
      } catch {
        // Nothing to forget.
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

  function lastSeenOf(id) {
    const times = [saved.get("lastSeen", {})[id]];
    const chat = state.conversations.get(id);
    if (chat && chat.last && chat.last.senderId === id) times.push(chat.last.createdAt);
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
  // `lazy`: only once scrolled near (a long member list).
  function fillAvatar(node, id, user, { lazy = false } = {}) {
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
    if (lazy) img.loading = "lazy";
    img.referrerPolicy = "no-referrer";
    img.addEventListener("load", () => img.classList.add("loaded"));
    img.addEventListener("error", () => {
      if (img.getAttribute("src") !== own) img.src = own;
      else img.remove();
    });
    img.src = chosen ? user.avatar : own;
    node.append(img);
  }

  // A group has no picture: the initials of its name on a colour of its id.
  function fillGroupAvatar(node, id, name) {
    node.replaceChildren();
    node.dataset.hue = String(colour(id));
    node.classList.add("group-avatar");
    const text = document.createElement("span");
    text.className = "initials";
    text.textContent = name ? initials({ fullName: name }) : "";
    node.append(text);
  }

  function nameOf(id) {
    const user = state.users.get(id);
    return user ? user.fullName : "…";
  }

  // The first word of a name, for the short places of a group (its list preview, typing,
  // "Seen by"): "You" for me.
  function firstName(id) {
    if (state.me && id === state.me._id) return "You";
    const user = state.users.get(id);
    return user ? user.fullName.trim().split(/\s+/)[0] : "…";
  }

  // "Alice", "Alice and Bob", "Alice, Bob and Carol".
  function listOf(names) {
    return names.length > 1 ? `${names.slice(0, -1).join(", ")} and ${names[names.length - 1]}` : names.join("");
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
  // stranger, a group's members): each is read by id, a few at a time.
  const LOOKUPS_AT_ONCE = 6;
  const lookups = new Map(); // id -> its lookup while it runs

  function lookUp(id) {
    if (!lookups.has(id)) {
      const lookup = api("GET", `/user/${enc(id)}`)
        .then(({ data }) => remember(data))
        .catch((error) => {
          // 404: nobody has this id; nothing to show but the id.
          if (error.status !== 404) console.warn("looking someone up failed:", error.message);
        })
        .finally(() => lookups.delete(id));
      lookups.set(id, lookup);
    }
    return lookups.get(id);
  }

  async function resolveUsers(ids) {
    const wanted = [...new Set(ids.filter((id) => id && state.me && id !== state.me._id && !state.users.has(id)))];
    if (!wanted.length) return;
    let next = 0;
    const worker = async () => {
      while (next < wanted.length) await lookUp(wanted[next++]);
    };
    await Promise.all(Array.from({ length: Math.min(LOOKUPS_AT_ONCE, wanted.length) }, worker));
    // Names show in the list (people, group previews), the open chat and its members.
    paintAllConversations();
    paintPeer();
    repaintNames();
    paintReceipts();
    paintGroupPanel();
    paintChosen();
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
      openConversation(user._id, { from: "list", kind: "direct" });
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
    closeNewGroup();
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

  // ---------------------------------------------------------------- chats and read state

  // A chat as the page knows it. Unread is the server's arithmetic: entries after my read
  // position (`lastSeq - readSeq`); both only move forward, so whatever tells them (the
  // list, an event, an answer) is merged by taking the larger, in any order, any number of
  // times.
  function chatFor(key, kind) {
    let chat = state.conversations.get(key);
    if (!chat) {
      chat = {
        key,
        kind,
        id: kind === "group" ? key : null, // the conversation id (direct: once known)
        name: null, // groups
        memberIds: [], // groups: the first members, from the list
        memberCount: kind === "group" ? 0 : 2,
        last: null, // the last entry
        updatedAt: null,
        listed: false, // seen in the server's list
        lastSeq: 0,
        readSeq: 0, // read up to here, here (the server is told shortly after)
        readId: null, // the entry at readSeq, when this page moved it
        readGuessed: false, // readSeq is a guess until the server's list says
        serverReadSeq: 0, // what the server has confirmed
        gone: null, // groups: "removed", "left", or "stranger" (never a member)
        goneSeq: 0, // the entry that took me out
        // Seqs after my read position that are no message to read: changes of messages (they
        // take seqs too) and messages deleted before I read them. Unread leaves them out.
        uncounted: new Set(),
      };
      state.conversations.set(key, chat);
      if (chat.id) state.byConversationId.set(chat.id, key);
    }
    return chat;
  }

  function learnConversationId(chat, id) {
    if (!id || chat.id) return;
    chat.id = id;
    state.byConversationId.set(id, chat.key);
  }

  function openChat() {
    return state.peer ? state.conversations.get(state.peer) || null : null;
  }

  function unreadOf(chat) {
    let skipped = 0;
    for (const seq of chat.uncounted) if (seq > chat.readSeq && seq <= chat.lastSeq) skipped += 1;
    return Math.max(0, chat.lastSeq - chat.readSeq - skipped);
  }

  // A seq of the chat that is no message to read (see `uncounted`).
  function skipSeq(chat, seq) {
    if (seq > chat.readSeq) chat.uncounted.add(seq);
    if (seq > chat.lastSeq) chat.lastSeq = seq;
  }

  function nameOfChat(chat) {
    // (A group I am out of answers no questions: its name is unknown after a reload.)
    if (chat.kind === "group") return chat.name || (chat.gone ? "Group" : "…");
    return nameOf(chat.key);
  }

  // Whether `a` is a later entry of the same conversation than `b`.
  function laterThan(a, b) {
    if (!b) return true;
    if (a.seq && b.seq) return a.seq > b.seq;
    return a._id > b._id;
  }

  function peerOf(message) {
    return message.senderId === state.me._id ? message.receiverId : message.senderId;
  }

  // Moves my read position here (and, with `confirmed`, as the server already has it).
  function advanceRead(chat, seq, id, confirmed) {
    let moved = false;
    if (seq > chat.readSeq || (chat.readGuessed && confirmed)) {
      // (A guess gives way to the server's word, also when that is further back.)
      moved = seq !== chat.readSeq;
      chat.readSeq = seq;
      chat.readId = id || chat.readId;
      chat.readGuessed = false;
      for (const skipped of chat.uncounted) if (skipped <= seq) chat.uncounted.delete(skipped);
    }
    if (confirmed && seq > chat.serverReadSeq) chat.serverReadSeq = seq;
    if (moved && unreadOf(chat) === 0) closeNotification(chat.key);
    return moved;
  }

  // An entry of a chat, from the stream or a page of history: the list's preview and counts.
  function noteEntry(chat, message) {
    learnConversationId(chat, message.conversationId);
    if (!chat.listed && !chat.last && chat.lastSeq === 0 && (message.seq || 0) > 1) {
      // A chat this page had not listed (further down the list than it read): count this
      // entry until the server's list says how many are unread.
      chat.readSeq = message.seq - 1;
      chat.readGuessed = true;
      soon("list", 500, () => loadConversations(false));
    }
    if (laterThan(message, chat.last)) {
      chat.last = message;
      chat.updatedAt = message.createdAt;
    }
    if ((message.seq || 0) > chat.lastSeq) chat.lastSeq = message.seq;
  }

  async function loadConversations(more) {
    const params = new URLSearchParams();
    if (more && state.conversationsCursor) params.set("cursor", state.conversationsCursor);
    try {
      const { data, headers } = await api("GET", `/message/conversations?${params}`);
      if (!state.me) return;
      // Merged, not replaced: an event may have brought something newer meanwhile.
      const names = [];
      for (const entry of data || []) {
        const group = entry.kind === "group";
        let key = entry._id;
        if (!group) {
          if (!Array.isArray(entry.participants)) continue;
          key = entry.participants.find((id) => id !== state.me._id) || entry.participants[0];
          names.push(key);
        }
        const chat = chatFor(key, group ? "group" : "direct");
        chat.listed = true;
        learnConversationId(chat, entry._id);
        const last = entry.lastMessage || null;
        const lastSeq = Number(entry.lastSeq) || (last && last.seq) || 0;
        if (group) {
          if (entry.name) chat.name = entry.name;
          if (Array.isArray(entry.members)) chat.memberIds = entry.members;
          if (typeof entry.memberCount === "number") chat.memberCount = entry.memberCount;
          // Listed, so a member: added again since the entry that took me out.
          if (chat.gone && lastSeq >= chat.goneSeq) chat.gone = null;
          if (last) names.push(last.senderId);
        }
        if (last && laterThan(last, chat.last)) chat.last = last;
        if (!chat.updatedAt || (entry.updatedAt && entry.updatedAt > chat.updatedAt)) chat.updatedAt = entry.updatedAt;
        if (lastSeq > chat.lastSeq) chat.lastSeq = lastSeq;
        const readSeq = Math.max(0, lastSeq - (Number(entry.unreadCount) || 0));
        advanceRead(chat, readSeq, entry.lastReadMessageId || null, true);
        // Taken as the list has it: its count already leaves out what is no message.
        if (chat.readSeq === readSeq) for (const seq of chat.uncounted) if (seq <= lastSeq) chat.uncounted.delete(seq);
      }
      state.conversationsCursor = headers.get("X-Next-Cursor");
      renderConversations();
      resolveUsers(names);
    } catch (error) {
      console.warn("loading the conversation list failed:", error.message);
    }
  }

  // The chats the list shows: my groups (and those I just left or was removed from), and
  // people I have a message with.
  function listedChats() {
    const shown = (c) => (c.kind === "group" ? c.gone !== "stranger" && Boolean(c.listed || c.last || c.name) : Boolean(c.last));
    return [...state.conversations.values()].filter(shown);
  }

  function sortedConversations() {
    const when = (c) => (c.last ? c.last.createdAt : c.updatedAt) || "";
    return listedChats().sort((a, b) => {
      const order = when(b).localeCompare(when(a));
      if (order) return order;
      return (b.last ? b.last._id : "").localeCompare(a.last ? a.last._id : "");
    });
  }

  function chatButton(key) {
    return el.conversationList.querySelector(`.chat-item[data-key="${CSS.escape(key)}"]`);
  }

  function conversationItem(chat) {
    const li = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "chat-item";
    button.dataset.key = chat.key;
    // Kept for what reads the entry by its kind (and the tests' keyboard check).
    if (chat.kind === "group") button.dataset.groupId = chat.key;
    else button.dataset.userId = chat.key;
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
    button.addEventListener("click", () => openConversation(chat.key, { from: "list" }));
    li.append(button);
    return li;
  }

  function renderConversations() {
    if (!state.me) return;
    const existing = new Map();
    for (const button of el.conversationList.querySelectorAll(".chat-item")) existing.set(button.dataset.key, button.parentElement);
    const order = sortedConversations();
    let previous = null;
    for (const chat of order) {
      let li = existing.get(chat.key);
      existing.delete(chat.key);
      if (!li) li = conversationItem(chat);
      const wanted = previous ? previous.nextElementSibling : el.conversationList.firstElementChild;
      if (wanted !== li) el.conversationList.insertBefore(li, wanted);
      previous = li;
      paintConversation(chat.key);
    }
    for (const li of existing.values()) li.remove();
    show(el.conversationListEmpty, order.length === 0);
    show(el.moreConversations, Boolean(state.conversationsCursor));
    paintTotals();
  }

  // The list's second line: the last entry, said short.
  function previewOf(chat) {
    const last = chat.last;
    if (!last) return chat.kind === "group" && !chat.gone ? "No messages yet" : "";
    if (last.kind === "system") return systemText(last);
    const text = last.deletedAt ? "Message deleted" : (last.message || "").replace(/\s+/g, " ");
    if (last.senderId === state.me._id) return `You: ${text}`;
    return chat.kind === "group" ? `${firstName(last.senderId)}: ${text}` : text;
  }

  function paintConversation(key) {
    const button = chatButton(key);
    const chat = state.conversations.get(key);
    if (!button || !chat) return;
    const avatar = button.querySelector(".avatar");
    if (chat.kind === "group") {
      const mark = `group:${chat.name || ""}`;
      if (avatar.dataset.filled !== mark) {
        fillGroupAvatar(avatar, key, chat.name);
        avatar.dataset.filled = mark;
      }
    } else {
      const user = state.users.get(key);
      const mark = `user:${Boolean(user)}`;
      if (avatar.dataset.filled !== mark) {
        fillAvatar(avatar, key, user);
        const dot = document.createElement("span");
        dot.className = "presence";
        avatar.append(dot);
        avatar.dataset.filled = mark;
      }
    }
    button.querySelector(".full-name").textContent = nameOfChat(chat);
    button.querySelector(".when").textContent = chat.last ? shortWhen(chat.last.createdAt) : "";
    button.querySelector(".preview").textContent = previewOf(chat);
    const count = unreadOf(chat);
    const badge = button.querySelector(".unread");
    const spoken = document.createElement("span");
    spoken.className = "visually-hidden";
    spoken.textContent = count === 1 ? " unread message" : " unread messages";
    badge.replaceChildren(String(count), spoken);
    show(badge, count > 0);
    button.classList.toggle("has-unread", count > 0);
    button.classList.toggle("online", chat.kind === "direct" && state.online.has(key));
    button.classList.toggle("gone", Boolean(chat.gone));
    button.setAttribute("aria-current", String(state.peer === key));
  }

  function paintAllConversations() {
    for (const key of state.conversations.keys()) paintConversation(key);
    paintTotals();
  }

  // The tab title and the favicon carry the number of unread messages.
  function paintTotals() {
    if (!state.me) return;
    let total = 0;
    for (const chat of listedChats()) total += unreadOf(chat);
    const chat = openChat();
    const base = chat ? `${nameOfChat(chat)} · Chat` : "Chat";
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

  // Reads the open chat up to its newest entry on the page: here at once, on the server
  // shortly after (so that every device counts the same). Only forward.
  function markRead(key) {
    const chat = state.conversations.get(key);
    if (!chat) return;
    if (chat.gone) {
      // Out of the group: the server keeps no read position for me there any more.
      if (advanceRead(chat, chat.lastSeq, null, true)) {
        paintConversation(key);
        paintTotals();
      }
      return;
    }
    const newest = newestShown();
    // The open chat shows its newest entries: what follows the newest one shown (up to the
    // chat's last seq) are changes of messages, read with it.
    if (!newest || !advanceRead(chat, Math.max(newest.seq, chat.lastSeq), newest.id, false)) return;
    paintConversation(key);
    paintTotals();
    soon(`read:${key}`, READ_DELAY_MS, () => sendRead(chat));
  }

  async function sendRead(chat) {
    if (!state.me || !chat.id || chat.gone || !chat.readId || chat.readSeq <= chat.serverReadSeq || chat.readSending) return;
    const seq = chat.readSeq;
    chat.readSending = true;
    let again = false;
    try {
      const { data } = await api("POST", `/conversations/${enc(chat.id)}/read`, { upTo: chat.readId }, { keepalive: true });
      if (advanceRead(chat, Math.max(seq, Number(data.seq) || 0), null, true)) paintConversation(chat.key);
      again = chat.readSeq > chat.serverReadSeq; // read on while this one was under way
    } catch (error) {
      // Refused (out of the group meanwhile): nothing to tell. Offline or busy: told after
      // the next connect (flushReads).
      if (refused(error)) chat.serverReadSeq = Math.max(chat.serverReadSeq, seq);
    } finally {
      chat.readSending = false;
    }
    if (again) soon(`read:${chat.key}`, READ_DELAY_MS, () => sendRead(chat));
  }

  function unconfirmedReads() {
    return [...state.conversations.values()].filter((chat) => chat.readSeq > chat.serverReadSeq && chat.readId && !chat.gone);
  }

  // After a connect: reads the server has not confirmed yet.
  function flushReads() {
    for (const chat of unconfirmedReads()) soon(`read:${chat.key}`, READ_DELAY_MS, () => sendRead(chat));
  }

  // Before logging out or leaving the page: the reads waiting for their moment go now.
  function sendReadsNow() {
    return Promise.all(
      unconfirmedReads().map((chat) => {
        clearTimeout(timers.get(`read:${chat.key}`));
        timers.delete(`read:${chat.key}`);
        return sendRead(chat);
      }),
    );
  }

  // `conversationRead`: my read position moved, on this device or another.
  function onConversationRead(data) {
    if (!data || !state.me) return;
    if (data.cursor) advanceCursor(data.cursor);
    const key = state.byConversationId.get(data.conversationId);
    if (!key) {
      soon("list", 500, () => loadConversations(false));
      return;
    }
    const chat = state.conversations.get(key);
    if (advanceRead(chat, Number(data.seq) || 0, data.upTo, true)) {
      paintConversation(key);
      paintTotals();
    }
  }

  // ---------------------------------------------------------------- read receipts

  // Someone read a conversation up to `seq`. Their own entries count too: whoever wrote
  // has read everything before.
  function noteReceipt(conversationId, userId, seq) {
    if (!conversationId || !userId || !seq || (state.me && userId === state.me._id)) return false;
    let readers = state.receipts.get(conversationId);
    if (!readers) {
      readers = new Map();
      state.receipts.set(conversationId, readers);
    }
    if ((readers.get(userId) || 0) >= seq) return false;
    readers.set(userId, seq);
    return true;
  }

  // How far the other person has read in a chat with them, as the server has it: "Seen"
  // right after a reload, before any new receipt comes.
  async function loadDirectReads(chat, token) {
    if (!chat.id) return;
    try {
      const { data } = await api("GET", `/conversations/${enc(chat.id)}`);
      let moved = false;
      for (const m of (data && data.members) || []) {
        if (typeof m.readSeq === "number" && noteReceipt(data._id, m.userId, m.readSeq)) moved = true;
      }
      if (moved && token === state.conversationToken) paintReceipts();
    } catch (error) {
      console.warn("reading the conversation failed:", error.message);
    }
  }

  // `messagesRead`: another member read up to `seq`.
  function onMessagesRead(data) {
    if (!data || !noteReceipt(data.conversationId, data.userId, Number(data.seq) || 0)) return;
    const chat = openChat();
    if (chat && chat.id === data.conversationId) paintReceipts();
  }

  // Under my last message: "Seen" (direct), "Seen by Alice, Bob" or "Seen by 4" (groups).
  function paintReceipts() {
    for (const node of el.messages.querySelectorAll(".receipt")) node.remove();
    const chat = openChat();
    if (!chat || !chat.id) return;
    const mine = [...el.messages.querySelectorAll('.msg[data-mine="true"]:not(.system)')].pop();
    const seq = mine ? Number(mine.dataset.seq) : 0;
    const readers = state.receipts.get(chat.id);
    if (!seq || !readers) return;
    const seen = [...readers].filter(([, upTo]) => upTo >= seq).map(([id]) => id);
    if (!seen.length) return;
    const note = document.createElement("p");
    note.className = "receipt";
    if (chat.kind === "direct") {
      const ticks = document.createElement("span");
      ticks.className = "ticks";
      ticks.setAttribute("aria-hidden", "true");
      ticks.textContent = "✓✓";
      note.append(ticks, " Seen");
    } else {
      note.textContent = seen.length <= SEEN_NAMES ? `Seen by ${seen.map(firstName).join(", ")}` : `Seen by ${seen.length}`;
      note.title = `Seen by ${listOf(seen.map(nameOf))}`;
    }
    mine.append(note);
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

  function timeOf(iso) {
    const date = new Date(iso);
    const time = document.createElement("time");
    time.dateTime = iso;
    time.textContent = Number.isNaN(date.getTime()) ? "" : clock(date);
    time.title = Number.isNaN(date.getTime()) ? "" : date.toLocaleString();
    return time;
  }

  function entryItem(message, className) {
    const mine = message.senderId === state.me._id;
    const li = document.createElement("li");
    li.className = `msg ${className || (mine ? "mine" : "theirs")}`;
    li.dataset.id = message._id;
    li.dataset.seq = String(message.seq || 0);
    li.dataset.sender = message.senderId;
    li.dataset.mine = String(mine);
    const date = new Date(message.createdAt);
    li.dataset.day = Number.isNaN(date.getTime()) ? "" : dayKey(date);
    return li;
  }

  function messageItem(message) {
    if (message.kind === "system") return systemItem(message);
    const mine = message.senderId === state.me._id;
    const gone = Boolean(message.deletedAt);
    const li = entryItem(message);
    li.dataset.version = String(message.version || message.seq || 0);
    li.classList.toggle("deleted", gone);
    const wrap = bubble(gone ? "" : message.message, mine);
    const meta = wrap.querySelector(".meta");
    if (gone) {
      const text = wrap.querySelector(".text");
      text.classList.add("deleted-text");
      text.textContent = "Message deleted";
    } else {
      if (message.replyTo) wrap.prepend(quoteNode(message.replyTo, true));
      if (message.editedAt) {
        const edited = document.createElement("span");
        edited.className = "edited";
        edited.textContent = "edited";
        const at = new Date(message.editedAt);
        if (!Number.isNaN(at.getTime())) edited.title = `Edited ${at.toLocaleString()}`;
        meta.append(edited);
      }
    }
    meta.append(timeOf(message.createdAt));
    if (!message.receiverId && !mine) {
      // In a group, whose it is, above the text (once per run of one sender's messages).
      const sender = document.createElement("span");
      sender.className = "sender";
      sender.dataset.hue = String(colour(message.senderId));
      sender.setAttribute("aria-hidden", "true");
      sender.textContent = nameOf(message.senderId);
      wrap.prepend(sender);
    }
    const who = document.createElement("span");
    who.className = "visually-hidden who";
    who.textContent = mine ? "You said: " : `${nameOf(message.senderId)} said: `;
    const line = document.createElement("div");
    line.className = "msg-line";
    line.append(wrap);
    const open = canChange();
    if (!gone && open) line.append(moreButton(message));
    li.append(who, line);
    if (!gone && Array.isArray(message.reactions) && message.reactions.length) li.append(reactionsOf(message, open));
    if (!gone && open && state.menuFor === message._id) li.append(menuOf(message));
    if (!gone && open && state.editing && state.editing.id === message._id) {
      wrap.querySelector(".text").replaceWith(editForm(message));
    }
    return li;
  }

  // Whether the open chat takes changes (not a group I am out of).
  function canChange() {
    const chat = openChat();
    return Boolean(chat) && !(chat.kind === "group" && chat.gone);
  }

  // What a reply shows of the message it answers. `live`: a button that goes to it.
  function quoteNode(quote, live) {
    const node = document.createElement(live ? "button" : "div");
    node.className = "quote";
    node.dataset.replyTo = quote.messageId;
    if (live) node.dataset.action = "quote";
    node.dataset.sender = quote.senderId;
    const spoken = document.createElement("span");
    spoken.className = "visually-hidden";
    spoken.textContent = "In reply to ";
    const who = document.createElement("span");
    who.className = "quote-who";
    who.textContent = quote.senderId === state.me._id ? "You" : nameOf(quote.senderId);
    const text = document.createElement("span");
    text.className = "quote-text";
    if (quote.deleted) {
      text.classList.add("deleted-text");
      text.textContent = "Message deleted";
    } else {
      text.textContent = `${(quote.text || "").replace(/\s+/g, " ")}${quote.truncated ? "…" : ""}`;
    }
    node.append(spoken, who, text);
    if (live) {
      node.type = "button";
      node.title = "Show the original message";
      node.addEventListener("click", () => goToMessage(quote.messageId));
    }
    return node;
  }

  function moreButton(message) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "msg-more";
    button.dataset.action = "more";
    button.setAttribute("aria-label", "Message actions");
    button.setAttribute("aria-expanded", String(state.menuFor === message._id));
    button.setAttribute("aria-controls", `actions-${message._id}`);
    const dots = document.createElement("span");
    dots.setAttribute("aria-hidden", "true");
    dots.textContent = "⋯";
    button.append(dots);
    button.addEventListener("click", () => toggleMenu(message._id));
    return button;
  }

  // The reactions under a message: one chip per emoji with its count, pressed when mine.
  function reactionsOf(message, open) {
    const list = document.createElement("ul");
    list.className = "reactions";
    list.setAttribute("aria-label", "Reactions");
    for (const reaction of message.reactions) {
      const li = document.createElement("li");
      const chip = document.createElement("button");
      chip.type = "button";
      chip.className = "reaction";
      chip.dataset.action = "reaction";
      chip.dataset.emoji = reaction.emoji;
      chip.disabled = !open;
      chip.setAttribute("aria-pressed", String(Boolean(reaction.me)));
      const who = reaction.count === 1 ? "1 reaction" : `${reaction.count} reactions`;
      chip.setAttribute("aria-label", `${reaction.emoji} ${who}${reaction.me ? ", yours among them" : ""}`);
      chip.title = reaction.me ? "Take your reaction back" : `React with ${reaction.emoji}`;
      const emoji = document.createElement("span");
      emoji.className = "emoji";
      emoji.textContent = reaction.emoji;
      const count = document.createElement("span");
      count.className = "count";
      count.textContent = String(reaction.count);
      chip.append(emoji, count);
      chip.addEventListener("click", () => toggleReaction(message._id, reaction.emoji));
      li.append(chip);
      list.append(li);
    }
    return list;
  }

  // Whether I may delete a message: my own, or anyone's in a group I manage.
  function canDelete(message) {
    if (message.senderId === state.me._id) return true;
    const chat = openChat();
    if (!chat || chat.kind !== "group") return false;
    const role = roleOf(state.groups.get(chat.key), state.me._id);
    return role === "owner" || role === "admin";
  }

  // A message's actions: react with one of the common emoji, reply, edit, delete.
  function menuOf(message) {
    const mine = message.senderId === state.me._id;
    const menu = document.createElement("div");
    menu.className = "msg-menu";
    menu.id = `actions-${message._id}`;
    menu.setAttribute("role", "group");
    menu.setAttribute("aria-label", "Message actions");
    const action = (name, text, label, run, extra = "") => {
      const button = document.createElement("button");
      button.type = "button";
      button.className = `ghost small${extra}`;
      button.dataset.action = name;
      button.textContent = text;
      if (label) button.setAttribute("aria-label", label);
      button.addEventListener("click", run);
      return button;
    };
    if (state.confirmDelete === message._id) {
      const ask = document.createElement("span");
      ask.className = "confirm-text";
      ask.textContent = mine ? "Delete this message for everyone?" : `Delete ${nameOf(message.senderId)}'s message for everyone?`;
      menu.append(
        ask,
        action("delete-yes", "Delete", null, () => deleteMessage(message._id), " danger-text"),
        action("delete-no", "Cancel", null, () => {
          state.confirmDelete = null;
          repaintMessage(message._id, "delete");
        }),
      );
      return menu;
    }
    const picker = document.createElement("span");
    picker.className = "picker";
    const mineOf = new Set((message.reactions || []).filter((r) => r.me).map((r) => r.emoji));
    for (const emoji of REACTIONS) {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "react-choice";
      button.dataset.action = "react";
      button.dataset.emoji = emoji;
      button.textContent = emoji;
      button.setAttribute("aria-pressed", String(mineOf.has(emoji)));
      button.setAttribute("aria-label", `React with ${emoji}`);
      button.addEventListener("click", () => {
        closeMenu(true);
        toggleReaction(message._id, emoji);
      });
      picker.append(button);
    }
    menu.append(picker, action("reply", "Reply", null, () => startReply(message._id)));
    if (mine) menu.append(action("edit", "Edit", null, () => startEdit(message._id)));
    if (canDelete(message)) {
      menu.append(
        action("delete", "Delete", null, () => {
          state.confirmDelete = message._id;
          repaintMessage(message._id, "delete-no");
        }, " danger-text"),
      );
    }
    return menu;
  }

  // The text of my message, editable in its place: Enter saves, Shift+Enter is a new line,
  // Escape gives up.
  function editForm(message) {
    const form = document.createElement("form");
    form.className = "edit-form";
    form.noValidate = true;
    const label = document.createElement("label");
    label.className = "visually-hidden";
    label.htmlFor = `edit-${message._id}`;
    label.textContent = "Edit your message";
    const input = document.createElement("textarea");
    input.id = `edit-${message._id}`;
    input.rows = 2;
    input.maxLength = 5000;
    input.dataset.action = "edit-text";
    input.value = state.editing.text;
    input.addEventListener("input", () => {
      if (state.editing && state.editing.id === message._id) state.editing.text = input.value;
    });
    input.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        form.requestSubmit();
      } else if (event.key === "Escape") {
        event.preventDefault();
        cancelEdit();
      }
    });
    const buttons = document.createElement("span");
    buttons.className = "edit-buttons";
    const save = document.createElement("button");
    save.type = "submit";
    save.className = "ghost small";
    save.textContent = "Save";
    const cancel = document.createElement("button");
    cancel.type = "button";
    cancel.className = "ghost small";
    cancel.textContent = "Cancel";
    cancel.addEventListener("click", cancelEdit);
    buttons.append(save, cancel);
    form.append(label, input, buttons);
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      saveEdit(message._id, input.value, save);
    });
    return form;
  }

  // A change of a group, as a centred line of its history.
  function systemItem(message) {
    state.systemEntries.set(message._id, message);
    const li = entryItem(message, "system");
    const line = document.createElement("p");
    line.className = "system-text";
    const text = document.createElement("span");
    text.className = "what";
    text.textContent = systemText(message);
    line.append(text, " ", timeOf(message.createdAt));
    li.append(line);
    return li;
  }

  // The sentence of a system entry, said from my side ("Alice added you"); the server's own
  // sentence while a name is not known yet.
  function systemText(message) {
    const change = message.system;
    const me = state.me._id;
    if (!change) return message.message;
    const ids = [change.actorId, ...(change.userIds || []), change.userId, change.newOwnerId].filter(Boolean);
    if (ids.some((id) => id !== me && !state.users.has(id))) return message.message;
    const who = (id) => (id === me ? "you" : nameOf(id));
    const Who = (id) => (id === me ? "You" : nameOf(id));
    const actor = Who(change.actorId);
    const people = listOf((change.userIds || []).map(who));
    switch (change.action) {
      case "created":
        return `${actor} created the group “${change.name}”`;
      case "added":
        return `${actor} added ${people}`;
      case "removed":
        return `${actor} removed ${people}`;
      case "left":
        if (!change.newOwnerId) return `${actor} left`;
        return `${actor} left; ${Who(change.newOwnerId)} ${change.newOwnerId === me ? "are" : "is"} the owner now`;
      case "renamed":
        return `${actor} renamed the group to “${change.name}”`;
      case "roleChanged":
        return `${actor} made ${who(change.userId)} ${change.role === "admin" ? "an admin" : "a member"}`;
      case "ownershipTransferred":
        return `${actor} made ${who(change.userId)} the owner`;
      default:
        return message.message;
    }
  }

  // Names on the open chat's entries, once the lookup found them.
  function repaintNames() {
    for (const node of el.messages.querySelectorAll(".msg")) {
      const id = node.dataset.sender;
      if (node.classList.contains("system")) {
        const message = state.systemEntries.get(node.dataset.id);
        if (message) node.querySelector(".what").textContent = systemText(message);
        continue;
      }
      const sender = node.querySelector(".sender");
      if (sender) sender.textContent = nameOf(id);
      const who = node.querySelector(".who");
      if (who && node.dataset.mine !== "true") who.textContent = `${nameOf(id)} said: `;
      const quoted = node.querySelector(".quote-who");
      const quote = node.querySelector(".quote");
      if (quoted && quote.dataset.sender !== state.me._id) quoted.textContent = nameOf(quote.dataset.sender);
    }
    if (state.replyTo) paintReplyBar();
  }

  function nearBottom() {
    return el.scroller.scrollHeight - el.scroller.scrollTop - el.scroller.clientHeight < NEAR_BOTTOM_PX;
  }

  function scrollToBottom() {
    el.scroller.scrollTop = el.scroller.scrollHeight;
  }

  // Inserts entries where their ids put them (ids sort by creation), skipping known ones.
  function placeMessages(messages) {
    const chat = openChat();
    let added = 0;
    for (const message of messages) {
      if (chat && message.senderId !== state.me._id) {
        learnConversationId(chat, message.conversationId);
        noteReceipt(chat.id, message.senderId, message.seq);
      }
      const known = state.messageIds.get(message._id);
      if (known) {
        // Seen before: a later state of it (a page racing an event) replaces the earlier.
        if (newer(message, known)) applyMessage(message);
        continue;
      }
      state.messageIds.set(message._id, message);
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
    if (added) paintReceipts();
    return added;
  }

  // Day dividers (Today, Yesterday, a date) wherever the day changes, a "New messages"
  // divider before the first unread one, and in groups the sender's name over the first
  // of each run of their messages.
  function placeDividers() {
    for (const node of el.messages.querySelectorAll(".divider")) node.remove();
    let day = null;
    let unreadPlaced = false;
    let previousSender = null;
    for (const node of [...el.messages.children]) {
      if (!unreadPlaced && state.firstUnreadId && node.dataset.id >= state.firstUnreadId && node.dataset.mine !== "true") {
        const divider = document.createElement("li");
        divider.className = "divider unread-divider";
        divider.id = "unread-divider";
        divider.textContent = "New messages";
        el.messages.insertBefore(divider, node);
        unreadPlaced = true;
        previousSender = null;
      }
      if (node.dataset.day && node.dataset.day !== day) {
        day = node.dataset.day;
        const divider = document.createElement("li");
        divider.className = "divider day-divider";
        divider.textContent = dayLabel(new Date(node.querySelector("time").dateTime));
        const before = node.previousElementSibling && node.previousElementSibling.classList.contains("unread-divider") ? node.previousElementSibling : node;
        el.messages.insertBefore(divider, before);
        previousSender = null;
      }
      const system = node.classList.contains("system");
      node.classList.toggle("continued", !system && previousSender === node.dataset.sender);
      previousSender = system ? null : node.dataset.sender;
    }
  }

  // ---------------------------------------------------------------- changing messages

  function messageNode(id) {
    return el.messages.querySelector(`li.msg[data-id="${CSS.escape(id)}"]`);
  }

  // Whether copy `a` of a message is a later state than copy `b` (`version`: the seq of its
  // last change).
  function newer(a, b) {
    const version = (m) => Number(m.version) || Number(m.seq) || 0;
    return version(a) > version(b);
  }

  // Draws a message of the open chat again from what is known of it. The focus stays on the
  // same control (`focus`: the control to focus instead, by its data-action).
  function repaintMessage(id, focus) {
    const old = messageNode(id);
    const message = state.messageIds.get(id);
    if (!old || !message) return null;
    const active = document.activeElement;
    const hadFocus = Boolean(active && old.contains(active));
    let action = focus || null;
    let emoji = null;
    if (!action && hadFocus && active.dataset) {
      action = active.dataset.action || null;
      emoji = active.dataset.emoji || null;
    }
    const item = messageItem(message);
    item.classList.toggle("continued", old.classList.contains("continued"));
    item.classList.toggle("highlight", old.classList.contains("highlight"));
    const receipt = old.querySelector(":scope > .receipt");
    if (receipt) item.append(receipt);
    old.replaceWith(item);
    if (action || hadFocus) {
      const selector = emoji ? `[data-action="${action}"][data-emoji="${CSS.escape(emoji)}"]` : `[data-action="${action}"]`;
      const target = (action && item.querySelector(selector)) || item.querySelector('[data-action="more"]');
      if (target) target.focus();
      else {
        item.tabIndex = -1;
        item.focus();
      }
    }
    return item;
  }

  function toggleMenu(id) {
    if (state.menuFor === id) {
      closeMenu(true);
      return;
    }
    const previous = state.menuFor;
    state.menuFor = id;
    state.confirmDelete = null;
    if (previous) repaintMessage(previous);
    const item = repaintMessage(id, "react");
    const menu = item && item.querySelector(".msg-menu");
    if (menu) menu.scrollIntoView({ block: "nearest" });
  }

  function closeMenu(refocus) {
    const id = state.menuFor;
    if (!id) return;
    state.menuFor = null;
    state.confirmDelete = null;
    repaintMessage(id, refocus ? "more" : null);
  }

  function showChangeError(what, error) {
    el.composerError.textContent =
      error.status === 0 ? "Cannot reach the server. Check your connection and try again." : `Could not ${what}. ${sentence(error.message)}`;
  }

  // Asks the server for a change of a message; its answer is the message as it stands.
  async function changeMessage(what, method, message, suffix, body) {
    el.composerError.textContent = "";
    try {
      const { data } = await api(method, `/conversations/${enc(message.conversationId)}/messages/${enc(message._id)}${suffix}`, body);
      applyMessage(data);
      return data;
    } catch (error) {
      showChangeError(what, error);
      return null;
    }
  }

  async function toggleReaction(id, emoji) {
    const message = state.messageIds.get(id);
    if (!message || message.deletedAt) return;
    const mine = (message.reactions || []).some((r) => r.emoji === emoji && r.me);
    await changeMessage(mine ? "take the reaction back" : "react", mine ? "DELETE" : "PUT", message, `/reactions/${enc(emoji)}`);
  }

  async function deleteMessage(id) {
    const message = state.messageIds.get(id);
    if (!message) return;
    const done = await changeMessage("delete the message", "DELETE", message, "");
    state.confirmDelete = null;
    state.menuFor = null;
    repaintMessage(id, done ? null : "more");
  }

  function startEdit(id) {
    const message = state.messageIds.get(id);
    if (!message || message.deletedAt) return;
    if (state.editing && state.editing.id !== id) {
      const previous = state.editing.id;
      state.editing = null;
      repaintMessage(previous);
    }
    state.menuFor = null;
    state.confirmDelete = null;
    state.editing = { id, text: message.message };
    el.composerError.textContent = "";
    const item = repaintMessage(id, "edit-text");
    const input = item && item.querySelector("textarea");
    if (input) input.setSelectionRange(input.value.length, input.value.length);
  }

  function cancelEdit() {
    if (!state.editing) return;
    const id = state.editing.id;
    state.editing = null;
    el.composerError.textContent = "";
    repaintMessage(id, "more");
  }

  async function saveEdit(id, text, button) {
    const message = state.messageIds.get(id);
    if (!message) return;
    if (!text.trim()) {
      showChangeError("save the edit", { status: 400, message: "A message cannot be empty: delete it instead" });
      return;
    }
    if (text === message.message) {
      cancelEdit();
      return;
    }
    button.disabled = true;
    const done = await changeMessage("save the edit", "PATCH", message, "", { message: text });
    if (done && state.editing && state.editing.id === id) {
      state.editing = null;
      repaintMessage(id, "more");
    } else if (button.isConnected) {
      button.disabled = false;
    }
  }

  function graphemes(text) {
    if (typeof Intl !== "undefined" && Intl.Segmenter) return [...new Intl.Segmenter().segment(text)].map((s) => s.segment);
    return [...text];
  }

  // The start of a text as a quote shows it (the server cuts at the same length).
  function excerpt(text) {
    const parts = graphemes(String(text || ""));
    return { text: parts.slice(0, QUOTE_LENGTH).join(""), truncated: parts.length > QUOTE_LENGTH };
  }

  function startReply(id) {
    const message = state.messageIds.get(id);
    if (!message || message.deletedAt) return;
    state.replyTo = { messageId: id, senderId: message.senderId, text: message.message };
    state.menuFor = null;
    state.confirmDelete = null;
    repaintMessage(id);
    paintReplyBar();
    el.input.focus();
  }

  function cancelReply(refocus) {
    if (!state.replyTo) return;
    state.replyTo = null;
    paintReplyBar();
    if (refocus) el.input.focus();
  }

  // Over the message box: what the next send answers, with a button to give up.
  function paintReplyBar() {
    const reply = state.replyTo;
    show(el.replyBar, Boolean(reply));
    if (!reply) return;
    el.replyWho.textContent = reply.senderId === state.me._id ? "Replying to yourself:" : `Replying to ${nameOf(reply.senderId)}:`;
    const cut = excerpt(reply.text.replace(/\s+/g, " "));
    el.replyQuote.textContent = `${cut.text}${cut.truncated ? "…" : ""}`;
  }

  // A reply's quote was clicked: to the original, loading earlier pages until it is there.
  async function goToMessage(id) {
    const token = state.conversationToken;
    let node = messageNode(id);
    for (let pages = 0; !node && state.hasOlder && pages < 20 && token === state.conversationToken; pages++) {
      await loadOlder();
      node = messageNode(id);
    }
    if (token !== state.conversationToken) return;
    if (!node) {
      el.composerError.textContent = "The original message is not in this chat's history any more.";
      return;
    }
    const smooth = !matchMedia("(prefers-reduced-motion: reduce)").matches;
    node.scrollIntoView({ block: "center", behavior: smooth ? "smooth" : "auto" });
    node.classList.add("highlight");
    setTimeout(() => {
      const shown = messageNode(id); // (drawn again meanwhile, if it changed)
      if (shown) shown.classList.remove("highlight");
    }, 2000);
    node.tabIndex = -1;
    node.focus({ preventScroll: true });
  }

  // A later state of a message (the answer to a change, `messageUpdated`, a page of
  // history): the open chat, the quotes of its replies and the list's preview follow it.
  function applyMessage(message) {
    if (!message || !message._id || !state.me) return;
    const group = !message.receiverId;
    const key = group ? message.conversationId : peerOf(message);
    const chat = state.conversations.get(key);
    if (chat && chat.last && chat.last._id === message._id && newer(message, chat.last)) {
      chat.last = message;
      paintConversation(key);
    }
    const known = state.messageIds.get(message._id);
    if (state.peer !== key || !known || !newer(message, known)) return;
    state.messageIds.set(message._id, message);
    if (message.deletedAt) {
      if (state.editing && state.editing.id === message._id) state.editing = null;
      if (state.menuFor === message._id) state.menuFor = null;
      if (state.replyTo && state.replyTo.messageId === message._id) cancelReply(false);
    }
    repaintMessage(message._id);
    refreshQuotes(message);
  }

  // The replies to `original` quote it as it stands now (the server tells no reply of it).
  function refreshQuotes(original) {
    const cut = excerpt(original.message);
    const quote = original.deletedAt ? { text: undefined, truncated: false, deleted: true } : { ...cut, deleted: false };
    for (const [id, message] of state.messageIds) {
      if (!message.replyTo || message.replyTo.messageId !== original._id) continue;
      state.messageIds.set(id, { ...message, replyTo: { ...message.replyTo, ...quote } });
      repaintMessage(id);
    }
    if (state.replyTo && state.replyTo.messageId === original._id && !original.deletedAt) {
      state.replyTo.text = original.message;
      paintReplyBar();
    }
  }

  // `messageUpdated`: a message was edited, deleted or reacted to (live or caught up).
  function onMessageUpdated(data) {
    if (!data || !state.me) return;
    if (data.cursor) advanceCursor(data.cursor);
    const message = data.message;
    if (!message || !message._id || !message.senderId || !message.conversationId) return;
    const key = message.receiverId ? peerOf(message) : message.conversationId;
    const chat = state.conversations.get(key);
    if (chat) {
      learnConversationId(chat, message.conversationId);
      // The change took a seq, and a message deleted before I read it is none to read.
      const change = data.change || {};
      if (Number(change.seq)) skipSeq(chat, Number(change.seq));
      if (change.kind === "deleted" && message.senderId !== state.me._id && message.seq) skipSeq(chat, message.seq);
      paintConversation(key);
      paintTotals();
    }
    applyMessage(message);
  }

  function updateHistoryStatus() {
    const chat = openChat();
    const group = chat && chat.kind === "group";
    if (state.loadingOlder) el.historyStatus.textContent = "Loading earlier messages…";
    else if (state.hasOlder) el.historyStatus.textContent = "";
    else if (state.messageIds.size || el.outbox.children.length) el.historyStatus.textContent = group ? "" : "This is the beginning of your conversation.";
    else el.historyStatus.textContent = group ? "No messages yet." : "No messages yet. Say hello!";
  }

  async function fetchPage(chat, before) {
    const params = new URLSearchParams({ limit: String(PAGE_SIZE) });
    if (before) params.set("before", before);
    if (chat.kind === "group") {
      const { data } = await api("GET", `/conversations/${enc(chat.key)}/messages?${params}`);
      return data || [];
    }
    const { data } = await api("GET", `/message/get-messages/${enc(chat.key)}?${params}`);
    learnConversationId(chat, data._id);
    return data.messages || [];
  }

  // The header: who (or which group), their status, and what I can do there.
  function paintPeer() {
    const chat = openChat();
    if (!chat) return;
    const key = chat.key;
    el.peerName.textContent = nameOfChat(chat);
    if (chat.kind === "group") {
      const mark = `group:${key}:${chat.name || ""}`;
      if (el.peerAvatar.dataset.for !== mark) {
        el.peerAvatar.classList.remove("group-avatar");
        fillGroupAvatar(el.peerAvatar, key, chat.name);
        el.peerAvatar.dataset.for = mark;
      }
      el.peerStatus.textContent = groupStatus(chat);
      el.peerStatus.classList.remove("online");
      show(el.groupInfo, !chat.gone);
      if (chat.gone) closeGroupPanel(false);
    } else {
      const user = state.users.get(key);
      const mark = `user:${key}:${Boolean(user)}`;
      if (el.peerAvatar.dataset.for !== mark) {
        el.peerAvatar.classList.remove("group-avatar");
        fillAvatar(el.peerAvatar, key, user);
        el.peerAvatar.dataset.for = mark;
      }
      const online = state.online.has(key);
      const seen = online ? null : lastSeenOf(key);
      el.peerStatus.textContent = online ? "online" : seen ? lastSeenText(seen) : "offline";
      el.peerStatus.classList.toggle("online", online);
      show(el.groupInfo, false);
    }
    paintComposer(chat);
    paintTotals();
  }

  function groupStatus(chat) {
    if (chat.gone === "stranger") return "";
    if (chat.gone) return "You are no longer a member";
    const details = state.groups.get(chat.key);
    const count = details ? details.members.length : chat.memberCount;
    if (!count) return "";
    const online = details ? details.members.filter((m) => m.userId !== state.me._id && state.online.has(m.userId)).length : 0;
    return `${count} members${online ? `, ${online} online` : ""}`;
  }

  // Out of a group, the composer gives way to a line saying why.
  function paintComposer(chat) {
    const closed = chat.kind === "group" && Boolean(chat.gone);
    if (closed && !el.composer.hidden) stopTyping();
    show(el.composer, !closed);
    show(el.composerClosed, closed);
    el.composerClosed.textContent =
      chat.gone === "removed"
        ? "You were removed from this group, so you can no longer send messages to it."
        : chat.gone === "left"
          ? "You left this group, so you can no longer send messages to it."
          : "This group does not exist, or you are not a member of it.";
    paintSkipLink();
  }

  function paintSkipLink() {
    show(el.skipLink, Boolean(state.me));
    if (state.peer && !el.composer.hidden) {
      el.skipLink.textContent = "Skip to the message box";
      el.skipLink.href = "#message-input";
    } else if (state.peer) {
      el.skipLink.textContent = "Skip to the messages";
      el.skipLink.href = "#messages-scroll";
    } else {
      el.skipLink.textContent = "Skip to the chats";
      el.skipLink.href = "#conversation-list";
    }
  }

  // With a mouse the composer takes the focus at once; on a touch screen that would open
  // the keyboard over the chat one came to read.
  function focusComposer() {
    if (matchMedia("(pointer: fine)").matches && !el.composer.hidden) el.input.focus();
  }

  function chatPath(chat) {
    return chat.kind === "group" ? `/group/${chat.key}` : `/chat/${chat.key}`;
  }

  // What a path names: a chat with a person, a group, or nothing (the list).
  function routeOf(pathname) {
    const person = CHAT_PATH.exec(pathname);
    if (person) return { key: person[1], kind: "direct" };
    const group = GROUP_PATH.exec(pathname);
    if (group) return { key: group[1], kind: "group" };
    return null;
  }

  // Opens a chat. `from`: "list" (a click: Back returns to the list), "route" (the URL said
  // so), "notification". `kind`: for a chat the page does not know yet.
  async function openConversation(key, { from, kind } = {}) {
    if (!state.me || key === state.me._id) return;
    if (state.peer === key) {
      focusComposer();
      return;
    }
    saveDraft();
    stopTyping();
    closeGroupPanel(false);
    const token = ++state.conversationToken;
    const wasOpen = Boolean(state.peer);
    const chat = state.conversations.get(key) || chatFor(key, kind || "direct");
    state.peer = key;
    state.messageIds = new Map();
    forgetChanges();
    state.systemEntries = new Map();
    state.oldestId = null;
    state.hasOlder = false;
    state.loadingOlder = false;
    state.firstUnreadId = null;
    const readSeq = chat.readSeq; // where "New messages" starts

    const path = chatPath(chat);
    if (from === "list" || from === "notification") {
      // From one chat to another the entry is replaced: Back always leads to the list.
      if (wasOpen && history.state && history.state.chat) history.replaceState({ chat: key }, "", path);
      else if (location.pathname !== path) history.pushState({ chat: key }, "", path);
    }

    el.messages.replaceChildren();
    el.historyStatus.textContent = "Loading…";
    clearTypers();
    hidePill();
    el.composerError.textContent = "";
    el.input.removeAttribute("aria-invalid");
    el.input.value = state.drafts.get(key) || "";
    autosize();
    renderOutbox();
    paintPeer();
    show(el.noConversation, false);
    show(el.pane, true);
    el.chatView.classList.add("show-conversation");
    paintAllConversations();
    paintSkipLink();
    focusComposer();
    if (chat.kind === "group") loadGroup(key);
    else if (!state.users.has(key)) resolveUsers([key]);

    try {
      const page = await fetchPage(chat, null);
      if (token !== state.conversationToken) return;
      const firstUnread = page.find((m) => (m.seq || 0) > readSeq && m.senderId !== state.me._id);
      state.firstUnreadId = firstUnread ? firstUnread._id : null;
      placeMessages(page);
      state.hasOlder = page.length === PAGE_SIZE;
      updateHistoryStatus();
      scrollToBottom();
      // With more unread than fit, start at the first unread message.
      const divider = $("unread-divider");
      if (divider && divider.offsetTop < el.scroller.scrollTop) el.scroller.scrollTop = divider.offsetTop - 8;
      if (page.length) {
        noteEntry(chat, page[page.length - 1]);
        renderConversations();
      }
      if (visible()) markRead(key);
      if (chat.kind === "direct") loadDirectReads(chat, token);
      fillViewport(token);
    } catch (error) {
      if (token !== state.conversationToken) return;
      if (chat.kind === "group" && (error.status === 403 || error.status === 404)) {
        if (error.status === 403) markGone(chat, chat.gone || "removed", chat.lastSeq);
        else chat.gone = "stranger";
        el.historyStatus.textContent = "";
        renderConversations();
        paintPeer();
        return;
      }
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
    const chat = openChat();
    if (!chat || !state.hasOlder || state.loadingOlder || !state.oldestId) return;
    const token = state.conversationToken;
    state.loadingOlder = true;
    updateHistoryStatus();
    try {
      const page = await fetchPage(chat, state.oldestId);
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
    const chat = openChat();
    if (!chat || (chat.kind === "group" && chat.gone)) return;
    const token = state.conversationToken;
    try {
      const page = await fetchPage(chat, null);
      if (token !== state.conversationToken) return;
      const stick = nearBottom();
      const overlaps = page.length < PAGE_SIZE || page.some((m) => state.messageIds.has(m._id));
      if (!overlaps) {
        // More was missed than one page holds: start again from the newest page.
        state.messageIds = new Map();
        el.messages.replaceChildren();
        state.hasOlder = true;
      }
      placeMessages(page);
      updateHistoryStatus();
      if (stick || !overlaps) scrollToBottom();
      if (stick && visible()) markRead(chat.key);
    } catch (error) {
      console.warn("reloading the conversation failed:", error.message);
    }
  }

  // Leaving a chat: its open actions, edit and reply go with it.
  function forgetChanges() {
    state.menuFor = null;
    state.confirmDelete = null;
    state.editing = null;
    state.replyTo = null;
    paintReplyBar();
  }

  function saveDraft() {
    if (!state.peer) return;
    if (el.input.value.trim()) state.drafts.set(state.peer, el.input.value);
    else state.drafts.delete(state.peer);
  }

  // `refocus`: put the keyboard focus on the closed chat's entry in the list.
  function closeConversation(refocus) {
    const key = state.peer;
    saveDraft();
    stopTyping();
    closeGroupPanel(false);
    clearTypers();
    state.conversationToken += 1;
    state.peer = null;
    state.firstUnreadId = null;
    forgetChanges();
    hidePill();
    show(el.pane, false);
    show(el.noConversation, true);
    el.chatView.classList.remove("show-conversation");
    paintAllConversations();
    paintSkipLink();
    if (refocus && key) {
      const item = chatButton(key);
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

  // The URL names the screen: `/` the list, `/chat/<user id>` or `/group/<id>` a chat.
  function route() {
    if (!state.me) return;
    const target = routeOf(location.pathname);
    if (target) openConversation(target.key, { from: "route", kind: target.kind });
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
      if (visible()) markRead(state.peer);
    }
  }

  // The newest entry on the page: { id, seq }.
  function newestShown() {
    const items = el.messages.querySelectorAll(".msg");
    const last = items.length ? items[items.length - 1] : null;
    return last && Number(last.dataset.seq) ? { id: last.dataset.id, seq: Number(last.dataset.seq) } : null;
  }

  // ---------------------------------------------------------------- groups

  function roleOf(details, userId) {
    const member = details && details.members.find((m) => m.userId === userId);
    return member ? member.role : null;
  }

  // A group as `GET /conversations/:id` (and every change) answers it.
  function setGroup(data) {
    if (!data || !data._id || !state.me) return;
    const known = state.groups.get(data._id);
    if (known && known.version > data.version) return; // overtaken by a newer answer
    const members = Array.isArray(data.members) ? data.members : [];
    state.groups.set(data._id, { name: data.name, version: data.version, members });
    const chat = chatFor(data._id, "group");
    chat.name = data.name;
    chat.memberCount = members.length;
    chat.memberIds = members.map((m) => m.userId);
    if (members.some((m) => m.userId === state.me._id)) {
      if (chat.gone && (data.lastSeq || 0) >= chat.goneSeq) chat.gone = null;
    }
    // Where each member has read up to, when the server says.
    for (const m of members) if (typeof m.readSeq === "number") noteReceipt(data._id, m.userId, m.readSeq);
    resolveUsers(chat.memberIds);
    renderConversations();
    if (state.peer === data._id) {
      paintPeer();
      paintGroupPanel();
      paintReceipts();
      // Whoever became a member meanwhile is no longer offered.
      if (!el.groupPanel.hidden && el.addResults.children.length) searchToAdd();
    }
  }

  async function loadGroup(id) {
    try {
      const { data } = await api("GET", `/conversations/${enc(id)}`);
      setGroup(data);
    } catch (error) {
      const chat = state.conversations.get(id);
      if (!chat) return;
      if (error.status === 403) markGone(chat, chat.gone || "removed", chat.lastSeq);
      else if (error.status === 404) chat.gone = "stranger";
      else return;
      renderConversations();
      if (state.peer === id) paintPeer();
    }
  }

  // I am out of the group (removed, or I left): it stays on the page, read-only.
  function markGone(chat, how, seq) {
    chat.gone = how;
    chat.goneSeq = Math.max(chat.goneSeq, seq || 0);
    if (state.peer === chat.key) {
      clearTypers();
      paintPeer();
    }
  }

  // A system entry: what changed, for the list, the header and the composer; the member
  // list is read again.
  function applyChange(chat, message) {
    const change = message.system;
    if (!change) return;
    const me = state.me._id;
    const ids = change.userIds || [];
    if ((change.action === "created" || change.action === "renamed") && change.name) chat.name = change.name;
    if (change.action === "removed" && ids.includes(me)) markGone(chat, "removed", message.seq);
    else if (change.action === "left" && change.actorId === me) markGone(chat, "left", message.seq);
    else if ((change.action === "added" || change.action === "created") && ids.includes(me) && (message.seq || 0) >= chat.goneSeq) {
      chat.gone = null;
    }
    if (change.action === "added") chat.memberCount += ids.length;
    if (change.action === "removed") chat.memberCount = Math.max(0, chat.memberCount - ids.length);
    if (change.action === "left") chat.memberCount = Math.max(0, chat.memberCount - 1);
    if (!chat.gone && (state.groups.has(chat.key) || state.peer === chat.key)) soon(`group:${chat.key}`, 150, () => loadGroup(chat.key));
    if (state.peer === chat.key) paintPeer();
  }

  // `conversationUpdated`: a group's name, members or roles changed (its entry follows).
  function onConversationUpdated(data) {
    const group = data && data.conversation;
    if (!group || !group._id || !state.me) return;
    const chat = state.conversations.get(group._id);
    if (!chat) return;
    if (group.name) chat.name = group.name;
    if (typeof group.memberCount === "number") chat.memberCount = group.memberCount;
    const change = data.change || {};
    const out = (change.action === "removed" && (change.userIds || []).includes(state.me._id)) || (change.action === "left" && change.actorId === state.me._id);
    const details = state.groups.get(group._id);
    if (!out && details && group.version > details.version) soon(`group:${chat.key}`, 150, () => loadGroup(chat.key));
    paintConversation(chat.key);
    if (state.peer === chat.key) paintPeer();
  }

  // ---------------------------------------------------------------- the group's panel

  function openGroupPanel() {
    const chat = openChat();
    if (!chat || chat.kind !== "group" || chat.gone) return;
    show(el.groupPanel, true);
    el.pane.classList.add("with-panel");
    el.groupInfo.setAttribute("aria-expanded", "true");
    el.groupError.textContent = "";
    el.groupNameError.textContent = "";
    el.groupName.removeAttribute("aria-invalid");
    el.addSearch.value = "";
    el.addResults.replaceChildren();
    show(el.addResultsEmpty, false);
    hideLeaveConfirm();
    paintGroupPanel();
    loadGroup(chat.key);
    el.closeGroupPanel.focus();
  }

  function closeGroupPanel(refocus) {
    if (el.groupPanel.hidden) return;
    show(el.groupPanel, false);
    el.pane.classList.remove("with-panel");
    el.groupInfo.setAttribute("aria-expanded", "false");
    hideLeaveConfirm();
    if (refocus && !el.groupInfo.hidden) el.groupInfo.focus();
  }

  function paintGroupPanel() {
    const chat = openChat();
    if (el.groupPanel.hidden || !chat || chat.kind !== "group") return;
    const details = state.groups.get(chat.key);
    const members = details ? details.members : [];
    const me = state.me._id;
    const myRole = roleOf(details, me);
    const admin = myRole === "owner" || myRole === "admin";
    show(el.renameForm, admin);
    show(el.groupNameText, !admin);
    el.groupNameText.textContent = nameOfChat(chat);
    if (document.activeElement !== el.groupName) el.groupName.value = chat.name || "";
    el.membersHeading.textContent = details ? `${members.length} ${members.length === 1 ? "member" : "members"}` : "Members";

    // Rebuilt whole; the focus goes back to the same button (or the heading) afterwards.
    const focused = document.activeElement && el.memberList.contains(document.activeElement) ? document.activeElement.dataset : null;
    const focusKey = focused ? `${focused.action}:${focused.userId}` : null;
    el.memberList.replaceChildren(...members.map((member) => memberItem(member, myRole)));
    if (focusKey) {
      const again = [...el.memberList.querySelectorAll("button")].find((b) => `${b.dataset.action}:${b.dataset.userId}` === focusKey);
      (again || el.membersHeading).focus();
    }
    show(el.addMembers, admin);
  }

  const ROLE_NAMES = { owner: "Owner", admin: "Admin", member: "" };

  function memberItem(member, myRole) {
    const me = state.me._id;
    const id = member.userId;
    const user = state.users.get(id);
    const li = document.createElement("li");
    li.className = "member";
    li.dataset.userId = id;
    const avatar = document.createElement("span");
    avatar.className = "avatar small";
    avatar.setAttribute("aria-hidden", "true");
    fillAvatar(avatar, id, user, { lazy: true });
    const names = document.createElement("span");
    names.className = "names";
    const full = document.createElement("span");
    full.className = "full-name";
    full.textContent = id === me ? `${nameOf(id)} (you)` : nameOf(id);
    names.append(full);
    if (ROLE_NAMES[member.role]) {
      const role = document.createElement("span");
      role.className = `role role-${member.role}`;
      role.textContent = ROLE_NAMES[member.role];
      names.append(role);
    }
    li.append(avatar, names);

    const name = nameOf(id);
    const actions = [];
    if (id !== me && myRole === "owner") {
      // (Each name starts with the button's text, for those who speak to their computer.)
      if (member.role === "admin") actions.push(["member", "Make member", `Make member: ${name}, no longer an admin`]);
      else actions.push(["admin", "Make admin", `Make admin: ${name}`]);
      actions.push(["owner", "Make owner", `Make owner: ${name}; you become an admin`]);
    }
    if (id !== me && (myRole === "owner" || (myRole === "admin" && member.role === "member"))) {
      actions.push(["remove", "Remove", `Remove ${name} from the group`]);
    }
    if (actions.length) {
      const bar = document.createElement("span");
      bar.className = "member-actions";
      for (const [action, text, label] of actions) {
        const button = document.createElement("button");
        button.type = "button";
        button.className = `ghost small${action === "remove" ? " danger-text" : ""}`;
        button.dataset.action = action;
        button.dataset.userId = id;
        button.textContent = text;
        button.setAttribute("aria-label", label);
        button.addEventListener("click", () => memberAction(action, id, button));
        bar.append(button);
      }
      li.append(bar);
    }
    return li;
  }

  // A change asked of the server; the answer is the group as it is afterwards.
  async function changeGroup(request, button) {
    const chat = openChat();
    if (!chat || chat.kind !== "group") return null;
    el.groupError.textContent = "";
    if (button) button.disabled = true;
    try {
      const { data } = await request(`/conversations/${enc(chat.key)}`);
      setGroup(data);
      return data;
    } catch (error) {
      el.groupError.textContent = error.status === 0 ? "Cannot reach the server. Check your connection and try again." : sentence(error.message);
      return null;
    } finally {
      if (button) button.disabled = false;
    }
  }

  function memberAction(action, userId, button) {
    if (action === "remove") return changeGroup((path) => api("DELETE", `${path}/members/${enc(userId)}`), button);
    if (action === "owner") return changeGroup((path) => api("POST", `${path}/owner`, { userId }), button);
    return changeGroup((path) => api("PUT", `${path}/members/${enc(userId)}/role`, { role: action }), button);
  }

  async function rename(event) {
    event.preventDefault();
    el.groupNameError.textContent = "";
    el.groupName.removeAttribute("aria-invalid");
    const name = el.groupName.value.trim();
    const chat = openChat();
    if (!name) {
      el.groupName.setAttribute("aria-invalid", "true");
      el.groupNameError.textContent = "Give the group a name.";
      el.groupName.focus();
      return;
    }
    if (!chat || name === chat.name) return;
    const done = await changeGroup((path) => api("PATCH", path, { name }), el.renameForm.querySelector("button"));
    if (!done && el.groupError.textContent) {
      el.groupName.setAttribute("aria-invalid", "true");
      el.groupNameError.textContent = el.groupError.textContent;
      el.groupError.textContent = "";
    }
  }

  // People to add: a search of the directory, members left out.
  const adding = { token: 0 };
  async function searchToAdd() {
    const chat = openChat();
    const text = el.addSearch.value.trim();
    const token = ++adding.token;
    if (!chat || !text) {
      el.addResults.replaceChildren();
      show(el.addResultsEmpty, false);
      return;
    }
    try {
      const params = new URLSearchParams({ limit: String(PICK_PAGE_SIZE), search: text });
      const { data } = await api("GET", `/user/get-other-users?${params}`);
      if (token !== adding.token) return;
      const details = state.groups.get(chat.key);
      const members = new Set(details ? details.members.map((m) => m.userId) : []);
      const users = (data || []).filter((u) => !members.has(u._id));
      for (const user of users) remember(user);
      el.addResults.replaceChildren(...users.map(addItem));
      show(el.addResultsEmpty, users.length === 0);
    } catch (error) {
      if (token === adding.token) el.groupError.textContent = `Could not search: ${error.message}`;
    }
  }

  function addItem(user) {
    const li = document.createElement("li");
    li.className = "member";
    const avatar = document.createElement("span");
    avatar.className = "avatar small";
    avatar.setAttribute("aria-hidden", "true");
    fillAvatar(avatar, user._id, user);
    const names = document.createElement("span");
    names.className = "names";
    const full = document.createElement("span");
    full.className = "full-name";
    full.textContent = user.fullName;
    const handle = document.createElement("span");
    handle.className = "username muted";
    handle.textContent = `@${user.username}`;
    names.append(full, handle);
    const button = document.createElement("button");
    button.type = "button";
    button.className = "ghost small";
    button.textContent = "Add";
    button.setAttribute("aria-label", `Add ${user.fullName} to the group`);
    button.addEventListener("click", async () => {
      const done = await changeGroup((path) => api("POST", `${path}/members`, { userIds: [user._id] }), button);
      if (done) el.addSearch.focus();
    });
    li.append(avatar, names, button);
    return li;
  }

  function hideLeaveConfirm() {
    show(el.leaveConfirm, false);
    show(el.leaveGroup, true);
  }

  function askToLeave() {
    const chat = openChat();
    if (!chat) return;
    const details = state.groups.get(chat.key);
    let text = "You will no longer get this group's messages.";
    if (roleOf(details, state.me._id) === "owner" && details.members.length > 1) {
      // The server hands ownership to the oldest admin, else the oldest member.
      const others = details.members.filter((m) => m.userId !== state.me._id);
      const next = others.find((m) => m.role === "admin") || others[0];
      text = `You are the owner: ${nameOf(next.userId)} will become the owner. ${text}`;
    }
    el.leaveConfirmText.textContent = `Leave “${nameOfChat(chat)}”? ${text}`;
    show(el.leaveGroup, false);
    show(el.leaveConfirm, true);
    el.leaveNo.focus();
  }

  async function leave() {
    const chat = openChat();
    if (!chat) return;
    const data = await changeGroup((path) => api("POST", `${path}/leave`), el.leaveYes);
    if (!data) return;
    markGone(chat, "left", data.lastSeq);
    closeGroupPanel(false);
    renderConversations();
    el.scroller.focus();
  }

  // ---------------------------------------------------------------- a new group

  const newGroup = { chosen: new Map(), next: null, token: 0, ids: [] };

  function openNewGroup() {
    closePeople();
    show(el.chatsPanel, false);
    show(el.newGroupPanel, true);
    el.newGroupForm.reset();
    clearErrors(el.newGroupForm);
    newGroup.chosen.clear();
    paintChosen();
    loadGroupPeople(false);
    el.newGroupName.focus();
  }

  function closeNewGroup() {
    if (el.newGroupPanel.hidden) return;
    show(el.newGroupPanel, false);
    show(el.chatsPanel, true);
  }

  async function loadGroupPeople(more) {
    const token = ++newGroup.token;
    const params = new URLSearchParams({ limit: String(PEOPLE_PAGE_SIZE) });
    const search = el.newGroupSearch.value.trim();
    if (search) params.set("search", search);
    if (more && newGroup.next) params.set("cursor", newGroup.next);
    try {
      const { data, headers } = await api("GET", `/user/get-other-users?${params}`);
      if (token !== newGroup.token) return;
      const users = data || [];
      for (const user of users) remember(user);
      if (!more) {
        newGroup.ids = [];
        el.newGroupPeople.replaceChildren();
      }
      for (const user of users) {
        newGroup.ids.push(user._id);
        el.newGroupPeople.append(pickItem(user));
      }
      newGroup.next = headers.get("X-Next-Cursor");
      show(el.moreGroupPeople, Boolean(newGroup.next));
      el.newGroupPeopleEmpty.textContent = "Nobody found.";
      show(el.newGroupPeopleEmpty, newGroup.ids.length === 0);
    } catch (error) {
      if (token !== newGroup.token) return;
      el.newGroupPeopleEmpty.textContent = `Could not load people: ${error.message}`;
      show(el.newGroupPeopleEmpty, true);
    }
  }

  // A person to tick: a real checkbox, its label the name.
  function pickItem(user) {
    const li = document.createElement("li");
    const label = document.createElement("label");
    label.className = "pick";
    const box = document.createElement("input");
    box.type = "checkbox";
    box.value = user._id;
    box.checked = newGroup.chosen.has(user._id);
    box.addEventListener("change", () => {
      if (box.checked) newGroup.chosen.set(user._id, user);
      else newGroup.chosen.delete(user._id);
      $("new-group-members-error").textContent = "";
      el.newGroupSearch.removeAttribute("aria-invalid");
      paintChosen();
    });
    const avatar = document.createElement("span");
    avatar.className = "avatar small";
    avatar.setAttribute("aria-hidden", "true");
    fillAvatar(avatar, user._id, user);
    const names = document.createElement("span");
    names.className = "names";
    const full = document.createElement("span");
    full.className = "full-name";
    full.textContent = user.fullName;
    const handle = document.createElement("span");
    handle.className = "username muted";
    handle.textContent = `@${user.username}`;
    names.append(full, handle);
    label.append(box, avatar, names);
    li.append(label);
    return li;
  }

  // The chosen people, each a button that takes them off again.
  function paintChosen() {
    if (el.newGroupPanel.hidden) return;
    el.newGroupChosen.replaceChildren(
      ...[...newGroup.chosen.values()].map((user) => {
        const li = document.createElement("li");
        const chip = document.createElement("button");
        chip.type = "button";
        chip.className = "chip";
        const spoken = document.createElement("span");
        spoken.className = "visually-hidden";
        spoken.textContent = ": take off the new group";
        const x = document.createElement("span");
        x.setAttribute("aria-hidden", "true");
        x.textContent = " ×";
        chip.append(user.fullName, spoken, x);
        chip.addEventListener("click", () => {
          newGroup.chosen.delete(user._id);
          const box = el.newGroupPeople.querySelector(`input[value="${CSS.escape(user._id)}"]`);
          if (box) box.checked = false;
          paintChosen();
          el.newGroupSearch.focus();
        });
        li.append(chip);
        return li;
      }),
    );
    el.createGroup.textContent = newGroup.chosen.size ? `Create group (${newGroup.chosen.size + 1} people)` : "Create group";
  }

  async function createGroup(event) {
    event.preventDefault();
    const form = el.newGroupForm;
    clearErrors(form);
    const name = el.newGroupName.value.trim();
    const problems = [];
    if (!name) problems.push(["name", "Give the group a name"]);
    if (!newGroup.chosen.size) problems.push(["members", "Choose at least one person"]);
    if (problems.length) {
      const inputs = problems.map(([field, message]) => flagField(form, "new-group", field, message));
      inputs[0] && inputs[0].focus();
      return;
    }
    el.createGroup.disabled = true;
    try {
      const { data } = await api("POST", "/conversations", { name, members: [...newGroup.chosen.keys()] });
      const chat = chatFor(data._id, "group");
      chat.listed = true;
      chat.updatedAt = data.updatedAt;
      chat.lastSeq = Math.max(chat.lastSeq, data.lastSeq || 0);
      advanceRead(chat, data.lastSeq || 0, null, true); // its first entry is mine
      setGroup(data);
      closeNewGroup();
      openConversation(data._id, { from: "list", kind: "group" });
    } catch (error) {
      showError(form, "new-group", error);
    } finally {
      el.createGroup.disabled = false;
    }
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

  // The outbox: sends not confirmed yet, kept across reloads:
  // [{ key, to (the chat's key), group (whether `to` is a group), text, at, failed, error }].
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
    if (item.replyTo) {
      const cut = excerpt(item.replyTo.text);
      wrap.prepend(quoteNode({ messageId: item.replyTo.messageId, senderId: item.replyTo.senderId, text: cut.text, truncated: cut.truncated, deleted: false }, false));
    }
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
    const chat = openChat();
    const text = el.input.value;
    if (!peer || !chat || !text.trim() || (chat.kind === "group" && chat.gone)) return;
    el.composerError.textContent = "";
    el.input.removeAttribute("aria-invalid");
    stopTyping();
    const item = { key: newKey(), to: peer, group: chat.kind === "group", text, at: new Date().toISOString(), failed: false };
    if (state.replyTo) item.replyTo = { messageId: state.replyTo.messageId, senderId: state.replyTo.senderId, text: state.replyTo.text };
    cancelReply(false);
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
      const path = item.group ? `/conversations/${enc(item.to)}/messages` : `/message/send/${enc(item.to)}`;
      const body = { message: item.text, clientMessageId: key };
      if (item.replyTo) body.replyTo = item.replyTo.messageId;
      const { data } = await api("POST", path, body);
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
    const chat = openChat();
    if (!chat) return;
    if (chat.kind === "group") {
      if (!chat.gone) socketSend("typing", { conversationId: chat.key, isTyping });
    } else {
      socketSend("typing", { to: chat.key, isTyping });
    }
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

  function clearTypers() {
    for (const timer of state.typers.values()) clearTimeout(timer);
    state.typers.clear();
    paintTyping();
  }

  function stoppedTyping(userId) {
    if (!state.typers.has(userId)) return;
    clearTimeout(state.typers.get(userId));
    state.typers.delete(userId);
    paintTyping();
  }

  // "… is typing" takes the place of the status line under the name, so it never covers a
  // message: "Bob Chen is typing…"; in a group "Alice is typing…", "Alice and Bob are
  // typing…", "3 people are typing…".
  function paintTyping() {
    const chat = openChat();
    const ids = [...state.typers.keys()];
    if (!chat || !ids.length) {
      show(el.typing, false);
      show(el.peerStatus, true);
      el.typing.textContent = "";
      return;
    }
    let text;
    if (chat.kind === "direct") text = `${nameOf(chat.key)} is typing…`;
    else if (ids.length === 1) text = `${firstName(ids[0])} is typing…`;
    else if (ids.length === 2) text = `${listOf(ids.map(firstName))} are typing…`;
    else text = `${ids.length} people are typing…`;
    el.typing.textContent = text;
    show(el.peerStatus, false);
    show(el.typing, true);
  }

  function onTyping(data) {
    const chat = openChat();
    if (!data || !chat || !data.from || data.from === state.me._id) return;
    const here = data.conversationId ? data.conversationId === chat.key && chat.kind === "group" : chat.kind === "direct" && data.from === chat.key;
    if (!here) return;
    if (!data.isTyping) {
      stoppedTyping(data.from);
      return;
    }
    clearTimeout(state.typers.get(data.from));
    // A lost "stopped" event must not leave the indicator up for ever.
    state.typers.set(
      data.from,
      setTimeout(() => stoppedTyping(data.from), TYPING_SHOWN_MS),
    );
    paintTyping();
  }

  // ---------------------------------------------------------------- messages from the server

  // One entry of my stream (a message, or a change of a group), live or caught up: the chat
  // list, the open chat, unread counts, the outbox and notifications follow from it. Safe
  // to see twice.
  function ingest(message, { live }) {
    if (!message || !state.me) return;
    if (message.cursor) advanceCursor(message.cursor);
    if (!message._id || !message.senderId) return;
    const group = !message.receiverId;
    if (group && !message.conversationId) return;
    const key = group ? message.conversationId : peerOf(message);
    const mine = message.senderId === state.me._id;
    const system = message.kind === "system";
    if (mine && message.clientMessageId && outbox().some((i) => i.key === message.clientMessageId)) {
      saveOutbox(outbox().filter((i) => i.key !== message.clientMessageId));
      if (state.peer === key) renderOutbox();
    }
    const chat = state.conversations.get(key) || chatFor(key, group ? "group" : "direct");
    noteEntry(chat, message);
    // My own entries are read (the server moved my position with them).
    if (mine) advanceRead(chat, message.seq || 0, message._id, true);
    else noteReceipt(chat.id, message.senderId, message.seq);
    if (system) applyChange(chat, message);
    renderConversations();
    if (group) {
      const change = message.system || {};
      resolveUsers([message.senderId, ...(change.userIds || []), change.userId, change.newOwnerId].filter(Boolean));
      if (!chat.name) soon(`group:${key}`, 150, () => loadGroup(key));
    } else if (!state.users.has(key)) {
      resolveUsers([key]);
    }

    const open = state.peer === key;
    let readNow = false;
    if (open) {
      const stick = nearBottom() || mine;
      if (!stick && !mine && !state.messageIds.has(message._id) && !state.firstUnreadId) state.firstUnreadId = message._id;
      placeMessages([message]);
      updateHistoryStatus();
      if (!mine) stoppedTyping(message.senderId);
      if (stick) scrollToBottom();
      else if (!mine) showPill();
      readNow = stick && visible();
    }
    if (mine) return;
    if (readNow) {
      markRead(key);
    } else {
      paintConversation(key);
      paintTotals();
      if (live && !system) notify(key, message);
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

  // Scoped presence (many users online): changes of the people I share a conversation with,
  // each the current state of one user. A connection's first one names those online.
  function onPresence(changes) {
    if (!Array.isArray(changes)) return;
    for (const change of changes) {
      if (!change || typeof change.userId !== "string") continue;
      if (change.online) {
        state.online.add(change.userId);
        state.everOnline.add(change.userId);
      } else if (state.online.has(change.userId) || state.everOnline.has(change.userId)) {
        noteLastSeen([change.userId]);
        state.online.delete(change.userId);
        state.everOnline.delete(change.userId);
      }
    }
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

  // Only while the tab is in the background, one per chat (a newer one replaces it).
  function notify(key, message) {
    if (visible() || !("Notification" in window) || Notification.permission !== "granted") return;
    const chat = state.conversations.get(key);
    const group = chat && chat.kind === "group";
    let text = message.message.length > 140 ? `${message.message.slice(0, 139)}…` : message.message;
    if (group) text = `${nameOf(message.senderId)}: ${text}`;
    try {
      const title = group ? nameOfChat(chat) : nameOf(key);
      const note = new Notification(title, { body: text, tag: `chat-${key}`, icon: group ? "/assets/icon.svg" : ownAvatar(key) });
      note.onclick = () => {
        window.focus();
        note.close();
        closePeople();
        closeNewGroup();
        openConversation(key, { from: "notification" });
      };
      state.notifications.set(key, note);
    } catch (error) {
      console.warn("notification failed:", error.message);
    }
  }

  function closeNotification(key) {
    const note = state.notifications.get(key);
    if (note) {
      note.close();
      state.notifications.delete(key);
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
  // was closed, logged out or offline updates the list and the open chat (unread counts are
  // the server's; the list is read again after each connect). Without a cursor (the first
  // start in this browser) there is nothing to catch up: the socket starts at the stream's
  // end.
  async function catchUp() {
    let since = state.cursor || saved.get("cursor", null);
    while (since !== null) {
      const params = new URLSearchParams({ since, limit: String(SYNC_PAGE_SIZE) });
      let data;
      try {
        ({ data } = await api("GET", `/message/sync?${params}`));
      } catch (error) {
        if (error.status === 400 && error.field === "since") {
          // A cursor of another database (after a move), or one the server no longer
          // takes: start over from the end.
          saved.set("cursor", null);
          state.cursor = null;
          return;
        }
        throw error;
      }
      for (const message of data.messages || []) ingest(message, { live: false });
      for (const item of data.events || []) streamEvent(item && item.event, item && item.data);
      if (data.nextCursor) advanceCursor(data.nextCursor);
      if (!data.hasMore) return;
      since = state.cursor;
    }
  }

  // The socket's events (and the sync pages' `events`).
  function streamEvent(name, data) {
    if (name === "newMessage") ingest(data, { live: true });
    else if (name === "conversationRead") onConversationRead(data);
    else if (name === "messagesRead") onMessagesRead(data);
    else if (name === "conversationUpdated") onConversationUpdated(data);
    else if (name === "messageUpdated") onMessageUpdated(data);
    else if (name === "onlineUsers") onOnlineUsers(data);
    else if (name === "presence") onPresence(data);
    else if (name === "typing") onTyping(data);
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
      flushReads();
      // Without a cursor the socket carries what is stored from its opening on: what came
      // between the first reads and now is read again, as after a reconnect.
      if (reconnected || !since) {
        loadConversations(false);
        reloadNewest();
        const chat = openChat();
        if (chat && chat.kind === "group" && !chat.gone) loadGroup(chat.key);
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
      streamEvent(frame.event, frame.data);
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
    state.byConversationId.clear();
    state.groups.clear();
    state.receipts.clear();
    state.conversationsCursor = null;
    state.online = new Set();
    state.everOnline = new Set();
    state.drafts.clear();
    state.inFlight.clear();
    lookups.clear();
    // A new account's stream starts empty: everything from here on is news.
    state.cursor = registered ? "0" : saved.get("cursor", null);
    if (registered) saved.set("cursor", "0");
    saved.remove("reads"); // kept by earlier versions of the page: read state is the server's now
    el.conversationList.replaceChildren();
    closePeople();
    closeNewGroup();
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
    const target = routeOf(location.pathname);
    if (target) {
      // (After a reload the entry is already ours, with the list under it.)
      if (!(history.state && history.state.chat === target.key)) {
        const path = location.pathname;
        history.replaceState(null, "", "/");
        history.pushState({ chat: target.key }, "", path);
      }
      openConversation(target.key, { from: "route", kind: target.kind });
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
    await sendReadsNow();
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
  el.newGroup.addEventListener("click", openNewGroup);
  el.closeNewGroup.addEventListener("click", () => {
    closeNewGroup();
    el.newGroup.focus();
  });
  el.newGroupForm.addEventListener("submit", createGroup);
  el.newGroupName.addEventListener("input", () => {
    $("new-group-name-error").textContent = "";
    el.newGroupName.removeAttribute("aria-invalid");
  });
  el.moreGroupPeople.addEventListener("click", () => loadGroupPeople(true));
  let pickTimer = null;
  el.newGroupSearch.addEventListener("input", () => {
    clearTimeout(pickTimer);
    pickTimer = setTimeout(() => loadGroupPeople(false), 200);
  });
  // Enter in the search finds people; it does not create the group half-chosen.
  el.newGroupSearch.addEventListener("keydown", (event) => {
    if (event.key === "Enter") event.preventDefault();
  });

  el.groupInfo.addEventListener("click", () => (el.groupPanel.hidden ? openGroupPanel() : closeGroupPanel(true)));
  el.closeGroupPanel.addEventListener("click", () => closeGroupPanel(true));
  el.renameForm.addEventListener("submit", rename);
  let addTimer = null;
  el.addSearch.addEventListener("input", () => {
    clearTimeout(addTimer);
    addTimer = setTimeout(searchToAdd, 200);
  });
  el.addSearch.addEventListener("keydown", (event) => {
    if (event.key === "Enter") event.preventDefault();
  });
  el.leaveGroup.addEventListener("click", askToLeave);
  el.leaveNo.addEventListener("click", () => {
    hideLeaveConfirm();
    el.leaveGroup.focus();
  });
  el.leaveYes.addEventListener("click", leave);
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
    if (state.peer) markRead(state.peer);
    focusComposer();
  });

  el.composer.addEventListener("submit", send);
  el.input.addEventListener("input", onComposerInput);
  el.input.addEventListener("blur", stopTyping);
  el.input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      el.composer.requestSubmit();
    } else if (event.key === "Escape" && state.replyTo) {
      event.preventDefault();
      cancelReply(true);
    }
  });
  el.replyCancel.addEventListener("click", () => cancelReply(true));

  // A click anywhere but on the message closes its actions.
  document.addEventListener("click", (event) => {
    if (!state.menuFor) return;
    const item = event.target instanceof Element ? event.target.closest("li.msg") : null;
    if (!item || item.dataset.id !== state.menuFor) closeMenu(false);
  });

  el.skipLink.addEventListener("click", (event) => {
    event.preventDefault();
    if (state.peer && !el.composer.hidden) el.input.focus();
    else if (state.peer) el.scroller.focus();
    else (el.conversationList.querySelector("button") || el.newChat).focus();
  });

  document.addEventListener("keydown", (event) => {
    if (event.key !== "Escape" || !state.me || event.defaultPrevented) return;
    if (state.menuFor) {
      closeMenu(true);
    } else if (state.editing) {
      cancelEdit();
    } else if (state.replyTo && !el.composer.hidden) {
      cancelReply(true);
    } else if (!el.groupPanel.hidden && state.peer) {
      closeGroupPanel(true);
    } else if (!el.peoplePanel.hidden) {
      closePeople();
      el.newChat.focus();
    } else if (!el.newGroupPanel.hidden) {
      closeNewGroup();
      el.newGroup.focus();
    } else if (state.peer) {
      backToList();
    }
  });

  window.addEventListener("popstate", route);

  document.addEventListener("visibilitychange", () => {
    if (visible() && state.peer && nearBottom()) markRead(state.peer);
    else if (!visible() && state.me) sendReadsNow();
  });
  window.addEventListener("pagehide", () => {
    if (state.me) sendReadsNow();
  });

  // Another tab queued or confirmed a send: show the same outbox here. (Reads reach the
  // other tabs as `conversationRead`, like other devices.)
  window.addEventListener("storage", (event) => {
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
