// The built-in chat client: plain DOM, no framework, no build step.
// Everything a user typed reaches the page through textContent, never as HTML.
"use strict";

(() => {
  const PAGE_SIZE = 30;
  const USERS_PAGE_SIZE = 50;
  const TYPING_IDLE_MS = 2500;
  const TYPING_SHOWN_MS = 6000;
  const RECONNECT_MIN_MS = 500;
  const RECONNECT_MAX_MS = 15000;

  const $ = (id) => document.getElementById(id);

  const el = {
    loading: $("loading"),
    status: $("connection-status"),
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
    scroller: $("messages-scroll"),
    historyStatus: $("history-status"),
    messages: $("messages"),
    typing: $("typing"),
    composer: $("composer"),
    input: $("message-input"),
    composerError: $("composer-error"),
  };

  const state = {
    me: null,
    users: new Map(), // id -> user, everyone we have shown or heard from
    listed: [], // ids in the list, in order
    nextCursor: null,
    search: "",
    online: new Set(),
    unread: new Set(),
    peer: null, // the user whose conversation is open
    messageIds: new Set(),
    oldestId: null,
    hasOlder: false,
    loadingOlder: false,
    conversationToken: 0, // bumps on every switch, so late answers for an old peer are dropped
    typingTimer: null,
    typingSent: false,
    incomingTypingTimer: null,
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

  // ---------------------------------------------------------------- small DOM helpers

  function show(node, visible) {
    node.hidden = !visible;
  }

  function initials(user) {
    const name = (user.fullName || user.username || "?").trim();
    const parts = name.split(/\s+/).filter(Boolean);
    const letters = parts.length > 1 ? parts[0][0] + parts[parts.length - 1][0] : name.slice(0, 2);
    return letters.toUpperCase();
  }

  // One of the twelve avatar colours, the same for a username everywhere (FNV-1a).
  function colour(text) {
    let h = 0x811c9dc5;
    for (const c of text) h = Math.imul(h ^ c.codePointAt(0), 0x01000193) >>> 0;
    return h % 12;
  }

  // The avatar: initials on a colour from the username, covered by the picture once it loads
  // (avatars are external URLs that may be slow, blocked or gone).
  function fillAvatar(node, user) {
    node.replaceChildren();
    node.dataset.hue = String(colour(user.username || ""));
    const text = document.createElement("span");
    text.className = "initials";
    text.textContent = initials(user);
    node.append(text);
    if (typeof user.avatar === "string" && user.avatar.startsWith("https://")) {
      const img = document.createElement("img");
      img.alt = "";
      img.decoding = "async";
      img.loading = "lazy";
      img.referrerPolicy = "no-referrer";
      img.addEventListener("load", () => img.classList.add("loaded"));
      img.addEventListener("error", () => img.remove());
      img.src = user.avatar;
      node.append(img);
    }
  }

  function formatTime(iso) {
    const date = new Date(iso);
    if (Number.isNaN(date.getTime())) return "";
    const now = new Date();
    const sameDay = date.toDateString() === now.toDateString();
    const time = date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    return sameDay ? time : `${date.toLocaleDateString([], { day: "numeric", month: "short" })} ${time}`;
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

  // Puts the API's message next to the field it names, or above the button.
  function showError(form, prefix, error) {
    const input = error.field ? form.querySelector(`[name="${CSS.escape(error.field)}"]`) : null;
    if (input) {
      input.setAttribute("aria-invalid", "true");
      // The API says "password must be …"; next to the password field, "Must be …" reads better.
      const message = error.message.startsWith(`${error.field} `) ? error.message.slice(error.field.length + 1) : error.message;
      $(`${prefix}-${error.field}-error`).textContent = message.charAt(0).toUpperCase() + message.slice(1);
      input.focus();
    } else {
      $(`${prefix}-form-error`).textContent =
        error.status === 0 ? "Cannot reach the server. Check your connection and try again." : error.message;
    }
  }

  function formValues(form) {
    const values = {};
    for (const [key, value] of new FormData(form)) values[key] = typeof value === "string" ? value : "";
    return values;
  }

  async function submitAuth(event, prefix, path, pick) {
    event.preventDefault();
    const form = event.currentTarget;
    const button = form.querySelector("button[type=submit]");
    clearErrors(form);
    button.disabled = true;
    try {
      const { data } = await api("POST", path, pick(formValues(form)));
      form.reset();
      tabs && tabs.postMessage({ type: "login" });
      enterChat(data.user || data.newUser);
    } catch (error) {
      showError(form, prefix, error);
    } finally {
      button.disabled = false;
    }
  }

  function showAuth() {
    show(el.loading, false);
    show(el.chatView, false);
    show(el.authView, true);
    document.title = "Chat";
    selectTab("login");
  }

  // ---------------------------------------------------------------- people

  function userItem(user) {
    const li = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "user";
    button.dataset.userId = user._id;

    const avatar = document.createElement("span");
    avatar.className = "avatar";
    avatar.setAttribute("aria-hidden", "true");
    fillAvatar(avatar, user);
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

    const badge = document.createElement("span");
    badge.className = "unread";
    badge.textContent = "new";

    const sr = document.createElement("span");
    sr.className = "visually-hidden presence-text";

    button.append(avatar, names, badge, sr);
    button.addEventListener("click", () => openConversation(user._id));
    li.append(button);
    return li;
  }

  function paintUser(id) {
    const button = el.userList.querySelector(`[data-user-id="${CSS.escape(id)}"]`);
    if (!button) return;
    const online = state.online.has(id);
    button.classList.toggle("online", online);
    button.classList.toggle("has-unread", state.unread.has(id));
    button.querySelector(".presence-text").textContent = `${online ? ", online" : ", offline"}${state.unread.has(id) ? ", new messages" : ""}`;
    if (state.peer && state.peer._id === id) button.setAttribute("aria-current", "true");
    else button.removeAttribute("aria-current");
  }

  function renderUsers(append) {
    if (!append) el.userList.replaceChildren();
    const shown = new Set([...el.userList.querySelectorAll("[data-user-id]")].map((b) => b.dataset.userId));
    for (const id of state.listed) {
      if (shown.has(id)) continue;
      el.userList.append(userItem(state.users.get(id)));
      paintUser(id);
    }
    show(el.userListEmpty, state.listed.length === 0);
    el.userListEmpty.textContent = state.search ? "Nobody matches that search." : "Nobody here yet.";
    show(el.moreUsers, Boolean(state.nextCursor));
  }

  let usersRequest = 0;
  async function loadUsers(append = false) {
    const request = ++usersRequest;
    const params = new URLSearchParams({ limit: String(USERS_PAGE_SIZE) });
    if (state.search) params.set("search", state.search);
    if (append && state.nextCursor) params.set("cursor", state.nextCursor);
    try {
      const { data, headers } = await api("GET", `/user/get-other-users?${params}`);
      if (request !== usersRequest) return;
      if (!append) state.listed = [];
      for (const user of data) {
        state.users.set(user._id, user);
        if (!state.listed.includes(user._id)) state.listed.push(user._id);
      }
      state.nextCursor = headers.get("X-Next-Cursor");
      renderUsers(append);
    } catch (error) {
      if (error.status !== 401) console.warn("loading people failed:", error.message);
    }
  }

  let refreshUsersTimer = null;
  function refreshUsersSoon() {
    clearTimeout(refreshUsersTimer);
    refreshUsersTimer = setTimeout(() => loadUsers(false), 300);
  }

  // ---------------------------------------------------------------- conversation

  function messageItem(message) {
    const li = document.createElement("li");
    const mine = message.senderId === state.me._id;
    li.className = `msg ${mine ? "mine" : "theirs"}`;
    li.dataset.id = message._id;
    const bubble = document.createElement("div");
    bubble.className = "bubble";
    const text = document.createElement("p");
    text.className = "text";
    text.textContent = message.message;
    const time = document.createElement("time");
    time.dateTime = message.createdAt;
    time.title = new Date(message.createdAt).toLocaleString();
    time.textContent = formatTime(message.createdAt);
    bubble.append(text, time);
    const who = document.createElement("span");
    who.className = "visually-hidden";
    who.textContent = mine ? "You: " : `${state.peer ? state.peer.fullName : ""}: `;
    li.append(who, bubble);
    return li;
  }

  function nearBottom() {
    const s = el.scroller;
    return s.scrollHeight - s.scrollTop - s.clientHeight < 80;
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
        if (node.dataset.id < message._id) break;
        next = node;
      }
      el.messages.insertBefore(item, next);
      added += 1;
    }
    const first = el.messages.firstElementChild;
    state.oldestId = first ? first.dataset.id : null;
    return added;
  }

  function updateHistoryStatus() {
    if (state.loadingOlder) el.historyStatus.textContent = "Loading earlier messages…";
    else if (state.hasOlder) el.historyStatus.textContent = "";
    else el.historyStatus.textContent = state.messageIds.size ? "This is the beginning of your conversation." : "No messages yet. Say hello!";
  }

  async function fetchPage(peerId, before) {
    const params = new URLSearchParams({ limit: String(PAGE_SIZE) });
    if (before) params.set("before", before);
    const { data } = await api("GET", `/message/get-messages/${encodeURIComponent(peerId)}?${params}`);
    return data.messages || [];
  }

  function paintPeer() {
    const peer = state.peer;
    if (!peer) return;
    const online = state.online.has(peer._id);
    el.peerStatus.textContent = online ? "online" : "offline";
    el.peerStatus.classList.toggle("online", online);
  }

  async function openConversation(id) {
    const peer = state.users.get(id);
    if (!peer) return;
    stopTyping();
    const token = ++state.conversationToken;
    state.peer = peer;
    state.messageIds = new Set();
    state.oldestId = null;
    state.hasOlder = false;
    state.loadingOlder = false;
    state.unread.delete(id);
    for (const button of el.userList.querySelectorAll("[data-user-id]")) paintUser(button.dataset.userId);

    el.messages.replaceChildren();
    el.historyStatus.textContent = "Loading…";
    hideIncomingTyping();
    el.composerError.textContent = "";
    fillAvatar(el.peerAvatar, peer);
    el.peerName.textContent = peer.fullName;
    paintPeer();
    show(el.noConversation, false);
    show(el.pane, true);
    el.chatView.classList.add("show-conversation");
    document.title = `${peer.fullName} · Chat`;
    el.input.focus();

    try {
      const page = await fetchPage(id, null);
      if (token !== state.conversationToken) return;
      placeMessages(page);
      state.hasOlder = page.length === PAGE_SIZE;
      updateHistoryStatus();
      scrollToBottom();
      fillViewport(token);
    } catch (error) {
      if (token === state.conversationToken) el.historyStatus.textContent = `Could not load messages: ${error.message}`;
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
      const page = await fetchPage(state.peer._id, state.oldestId);
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
      const page = await fetchPage(state.peer._id, null);
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
    } catch (error) {
      console.warn("reloading the conversation failed:", error.message);
    }
  }

  function closeConversation() {
    stopTyping();
    state.conversationToken += 1;
    state.peer = null;
    show(el.pane, false);
    show(el.noConversation, true);
    el.chatView.classList.remove("show-conversation");
    document.title = "Chat";
    for (const button of el.userList.querySelectorAll("[data-user-id]")) paintUser(button.dataset.userId);
  }

  async function send(event) {
    event.preventDefault();
    const peer = state.peer;
    const text = el.input.value;
    if (!peer || !text.trim()) return;
    el.composerError.textContent = "";
    el.input.removeAttribute("aria-invalid");
    stopTyping();
    const token = state.conversationToken;
    el.input.value = "";
    autosize();
    try {
      const { data } = await api("POST", `/message/send/${encodeURIComponent(peer._id)}`, { message: text });
      if (token === state.conversationToken) {
        placeMessages([data]);
        updateHistoryStatus();
        scrollToBottom();
      }
    } catch (error) {
      if (token === state.conversationToken) {
        if (!el.input.value) el.input.value = text; // give the text back so it isn't lost
        autosize();
        el.input.setAttribute("aria-invalid", "true");
        el.composerError.textContent = error.status === 0 ? "Not sent: the server is unreachable." : `Not sent: ${error.message}`;
      }
    }
  }

  function autosize() {
    el.input.style.height = "auto";
    el.input.style.height = `${Math.min(el.input.scrollHeight, 160)}px`;
  }

  // ---------------------------------------------------------------- typing

  function sendTyping(isTyping) {
    if (!state.peer) return;
    socketSend("typing", { to: state.peer._id, isTyping });
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
    el.typing.textContent = "";
  }

  function onTyping(data) {
    if (!data || !state.peer || data.from !== state.peer._id) return;
    if (data.isTyping) {
      el.typing.textContent = `${state.peer.fullName} is typing…`;
      show(el.typing, true);
      clearTimeout(state.incomingTypingTimer);
      // A lost "stopped" event must not leave the indicator up for ever.
      state.incomingTypingTimer = setTimeout(hideIncomingTyping, TYPING_SHOWN_MS);
    } else {
      hideIncomingTyping();
    }
  }

  // ---------------------------------------------------------------- events from the server

  function onNewMessage(message) {
    if (!message || !state.me) return;
    const other = message.senderId === state.me._id ? message.receiverId : message.senderId;
    if (state.peer && state.peer._id === other) {
      const stick = nearBottom() || message.senderId === state.me._id;
      placeMessages([message]);
      updateHistoryStatus();
      if (message.senderId === other) hideIncomingTyping();
      if (stick) scrollToBottom();
    } else if (message.senderId === other) {
      state.unread.add(other);
      if (state.users.has(other)) paintUser(other);
      else refreshUsersSoon();
    }
  }

  function onOnlineUsers(ids) {
    if (!Array.isArray(ids)) return;
    state.online = new Set(ids);
    for (const button of el.userList.querySelectorAll("[data-user-id]")) paintUser(button.dataset.userId);
    paintPeer();
    // Someone online we have never listed has just joined: show them.
    const me = state.me && state.me._id;
    if (!state.search && ids.some((id) => id !== me && !state.users.has(id))) refreshUsersSoon();
  }

  // ---------------------------------------------------------------- the socket

  const socket = { ws: null, attempt: 0, timer: null, wanted: false, everOpened: false };

  function socketSend(event, data) {
    if (socket.ws && socket.ws.readyState === WebSocket.OPEN) {
      socket.ws.send(JSON.stringify({ event, data }));
    }
  }

  function connect() {
    clearTimeout(socket.timer);
    socket.timer = null;
    if (!socket.wanted || (socket.ws && socket.ws.readyState <= WebSocket.OPEN)) return;
    const url = `${location.protocol === "https:" ? "wss:" : "ws:"}//${location.host}/ws`;
    const ws = new WebSocket(url);
    socket.ws = ws;
    ws.addEventListener("open", () => {
      if (socket.ws !== ws) return;
      const reconnected = socket.everOpened;
      socket.everOpened = true;
      socket.attempt = 0;
      setStatus("");
      document.body.classList.add("is-connected");
      if (reconnected) {
        loadUsers(false);
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
      if (frame.event === "newMessage") onNewMessage(frame.data);
      else if (frame.event === "onlineUsers") onOnlineUsers(frame.data);
      else if (frame.event === "typing") onTyping(frame.data);
    });
    ws.addEventListener("close", () => {
      if (socket.ws !== ws) return;
      socket.ws = null;
      connectionLost();
    });
  }

  function connectionLost() {
    document.body.classList.remove("is-connected");
    if (!socket.wanted) return;
    // Who is online is unknown until the next `onlineUsers`: show nobody rather than stale dots.
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

  function enterChat(user) {
    state.me = user;
    state.users.clear();
    state.listed = [];
    state.unread.clear();
    state.online = new Set();
    state.search = "";
    el.search.value = "";
    closeConversation();
    fillAvatar(el.meAvatar, user);
    el.meName.textContent = user.fullName;
    el.meUsername.textContent = `@${user.username}`;
    show(el.loading, false);
    show(el.authView, false);
    show(el.chatView, true);
    el.search.focus();
    loadUsers(false);
    startSocket();
  }

  function leaveChat() {
    stopSocket();
    closeConversation();
    state.me = null;
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
      enterChat(data);
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
    submitAuth(event, "login", "/user/login", (v) => ({ username: v.username.trim(), password: v.password })),
  );
  el.registerForm.addEventListener("submit", (event) =>
    submitAuth(event, "register", "/user/register", (v) => ({
      fullName: v.fullName,
      username: v.username.trim(),
      password: v.password,
      confirmPassword: v.confirmPassword,
      ...(v.gender ? { gender: v.gender } : {}),
    })),
  );

  el.logout.addEventListener("click", logout);
  el.back.addEventListener("click", closeConversation);

  let searchTimer = null;
  el.search.addEventListener("input", () => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(() => {
      state.search = el.search.value.trim();
      state.nextCursor = null;
      loadUsers(false);
    }, 200);
  });
  el.moreUsers.addEventListener("click", () => loadUsers(true));

  el.scroller.addEventListener("scroll", () => {
    if (el.scroller.scrollTop < 120) loadOlder();
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

  if (tabs) {
    tabs.addEventListener("message", (event) => {
      const type = event.data && event.data.type;
      if (type === "logout" && state.me) leaveChat();
      else if (type === "login" && !state.me) boot();
    });
  }

  boot();
})();
