// The agent inbox (/ops/inbox/): the queue in real time over /ws/agent/ (ops/agent_consumer.py),
// one conversation at a time with its history and the bot's reasoning, and the chat with the
// customer once taken. A new request rings (Web Audio, no file) and shows in the tab's title.
(function () {
  "use strict";
  const $ = (id) => document.getElementById(id);
  const me = JSON.parse($("agent-id").textContent);
  const baseTitle = document.title;
  const lists = { waiting: $("list-waiting"), mine: $("list-mine"), others: $("list-others") };
  const log = $("chat-log");
  const replyText = $("reply-text");
  let socket = null;
  let backoff = 500;
  let current = null; // the conversation shown: {id, state, agent_id, ...}
  let inbox = { waiting: [], mine: [], others: [] };
  let seenWaiting = null; // ids already announced (null until the first inbox)
  const shown = new Set(); // message ids drawn in the log
  const read = new Map(); // conversation id -> the latest customer message's time the agent has seen
  const pending = new Map(); // client id -> {conversation, text, el}: sent, not yet stored
  let typingTimer = 0;
  let typingSent = 0;
  let customerTypingTimer = 0;

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "class") node.className = value;
      else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
      else node.setAttribute(name, value === true ? "" : value);
    }
    for (const child of children) if (child !== null && child !== undefined) node.append(child);
    return node;
  }

  function ago(iso) {
    if (!iso) return "";
    const seconds = Math.max(0, (Date.now() - new Date(iso).getTime()) / 1000);
    if (seconds < 60) return Math.round(seconds) + " s";
    if (seconds < 3600) return Math.round(seconds / 60) + " min";
    if (seconds < 86400) return Math.round(seconds / 3600) + " h";
    return Math.round(seconds / 86400) + " d";
  }

  // --- the socket ------------------------------------------------------------------------------
  function connect() {
    const ws = (socket = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws/agent/"));
    ws.onopen = () => {
      backoff = 500;
      $("inbox-connection").textContent = "Connected: new requests appear here as they come.";
      $("inbox-connection").classList.remove("off");
      if (current) {
        send({ type: "watch", conversation: current.id });
        if (current.state === "agent" && current.agent_id === me) send({ type: "take", conversation: current.id });
      }
      pending.forEach((item, id) => send({ type: "message", conversation: item.conversation, id, text: item.text }));
    };
    ws.onmessage = (event) => receive(JSON.parse(event.data));
    ws.onclose = () => {
      if (socket !== ws) return;
      socket = null;
      $("inbox-connection").textContent = "Connection lost: reconnecting… (your chats stay yours for a while)";
      $("inbox-connection").classList.add("off");
      setTimeout(connect, backoff * (0.8 + Math.random() * 0.4));
      backoff = Math.min(backoff * 2, 10000);
    };
  }

  function send(frame) {
    if (socket && socket.readyState === WebSocket.OPEN) {
      socket.send(JSON.stringify(frame));
      return true;
    }
    return false;
  }

  function receive(frame) {
    switch (frame.type) {
      case "inbox":
        return inboxShow(frame);
      case "event":
        if (current && frame.conversation === current.id) eventShow(frame.frame);
        return;
      case "taken":
      case "released":
        if (current && frame.conversation === current.id) open(current.id);
        return;
      case "sent":
        return sentShow(frame);
      case "error":
        return errorShow(frame);
    }
  }

  // --- the lists -------------------------------------------------------------------------------
  function inboxShow(frame) {
    inbox = frame;
    const fresh = frame.waiting.filter((row) => seenWaiting && !seenWaiting.has(row.id));
    seenWaiting = new Set(frame.waiting.map((row) => row.id));
    for (const [name, list] of Object.entries(lists)) {
      list.replaceChildren(...(frame[name] || []).map((row) => rowItem(row, name)));
      if (!(frame[name] || []).length) list.append(el("li", { class: "empty-row" }, el("small", null, "none")));
    }
    $("count-waiting").textContent = "(" + frame.waiting.length + ")";
    document.title = (frame.waiting.length ? "(" + frame.waiting.length + ") " : "") + baseTitle;
    if (fresh.length) ring();
    if (current) {
      const row = [...frame.waiting, ...frame.mine, ...frame.others].find((r) => r.id === current.id);
      if (row && (row.state !== current.state || row.agent_id !== current.agent_id)) open(current.id);
    }
  }

  function rowItem(row, list) {
    const who = row.customer || "Customer " + row.id.slice(0, 8);
    const since = list === "waiting" ? ago(row.requested_at) : ago(row.last_at);
    const button = el(
      "button",
      { type: "button", class: "row", "data-conversation": row.id, "aria-current": current && current.id === row.id ? "true" : "false", onclick: () => open(row.id) },
      el("span", { class: "age" }, since),
      el("span", { class: "who" }, who),
      " ",
      row.email_left ? el("span", { class: "tag" }, "left an email") : null,
      row.returned ? el("span", { class: "tag" }, "agent lost") : null,
      list === "mine" && unread(row) ? el("span", { class: "tag new" }, "new message") : null,
      list === "others" ? el("span", { class: "tag" }, row.agent) : null,
      el("span", { class: "last" }, row.last_text || "…"),
    );
    return el("li", null, button);
  }

  function unread(row) {
    if (current && current.id === row.id) read.set(row.id, row.last_at);
    return Boolean(row.last_at) && read.has(row.id) && read.get(row.id) < row.last_at;
  }

  let audio = null;
  function ring() {
    if (!$("sound-on").checked) return;
    try {
      audio = audio || new (window.AudioContext || window.webkitAudioContext)();
      const tone = audio.createOscillator();
      const gain = audio.createGain();
      tone.frequency.value = 880;
      gain.gain.setValueAtTime(0.15, audio.currentTime);
      gain.gain.exponentialRampToValueAtTime(0.001, audio.currentTime + 0.4);
      tone.connect(gain).connect(audio.destination);
      tone.start();
      tone.stop(audio.currentTime + 0.4);
    } catch (_error) {
      /* no audio here: the title still says it */
    }
  }

  // --- one conversation --------------------------------------------------------------------------
  async function open(id) {
    if (current && current.id !== id) send({ type: "unwatch", conversation: current.id });
    send({ type: "watch", conversation: id });
    const response = await fetch("/ops/inbox/" + id + ".json", { credentials: "same-origin" });
    if (!response.ok) {
      $("reply-status").textContent = "Could not load that conversation (" + response.status + ").";
      return;
    }
    const data = await response.json();
    if (current && current.id !== id) $("customer-typing").textContent = "";
    const customerTurns = data.messages.filter((m) => m.role === "customer");
    if (customerTurns.length) read.set(id, customerTurns[customerTurns.length - 1].created_at);
    current = data;
    // Drawn afresh from what is stored: turns and the hand-off's steps in time order, then the
    // agent's messages still on their way.
    shown.clear();
    log.replaceChildren();
    const items = [
      ...data.messages.map((message) => ({ at: message.created_at, draw: () => messageShow(message) })),
      ...data.events.map((event) => ({ at: event.created_at, draw: () => eventLine(event.label + (event.agent ? " (" + event.agent + ")" : ""), event.created_at) })),
    ];
    items.sort((a, b) => (a.at < b.at ? -1 : a.at > b.at ? 1 : 0)).forEach((item) => item.draw());
    pending.forEach((item) => item.conversation === id && item.el && log.append(item.el));
    head();
    document.querySelectorAll(".inbox-list button.row").forEach((b) => b.setAttribute("aria-current", String(b.dataset.conversation === id)));
    if (current.state === "agent" && current.agent_id === me) replyText.focus();
  }

  function head() {
    const holder = current.state === "agent" ? (current.agent_id === me ? "you" : current.agent) : null;
    const who = current.customer_name || current.customer_email || "Customer " + current.id.slice(0, 8);
    const state = { waiting: "waiting for a person", agent: "with " + holder, bot: "with the bot", closed: "closed" }[current.state];
    $("chat-title").textContent = who + (current.customer_email && current.customer_name ? " <" + current.customer_email + ">" : "") + " · " + current.site + " · " + state;
    $("chat-trace-link").href = "/ops/conversations/" + current.id + "/";
    $("chat-empty").hidden = true;
    $("chat-head").hidden = false;
    log.hidden = false;
    const mine = current.state === "agent" && current.agent_id === me;
    $("take").hidden = mine || current.state === "agent";
    $("take").textContent = current.state === "waiting" ? "Take this chat" : "Join this chat";
    $("hand-back").hidden = !mine;
    $("close-chat").hidden = !mine;
    $("reply-form").hidden = !mine;
    log.scrollTop = log.scrollHeight;
  }

  function messageShow(message) {
    if (shown.has(message.message_id)) return;
    shown.add(message.message_id);
    const who = message.role === "customer" ? "Customer" : message.role === "agent" ? message.agent || "Agent" : "Bot" + (message.source ? " · " + message.source.toUpperCase() : "");
    const turn = el("div", { class: "turn " + message.role, "data-message-id": message.message_id },
      el("div", { class: "who" }, who + " · " + new Date(message.created_at).toLocaleTimeString()),
      el("div", { class: "bubble" }, message.text));
    const trace = message.trace;
    if (trace) {
      const best = trace.hits[0];
      const why = trace.kind + ": " + trace.reason + (best ? " — best #" + best.entry_id + " " + best.question + " (" + best.score + ", " + best.verdict + ")" : "") + (trace.llm_status ? " — LLM " + trace.llm_status : "");
      turn.append(el("div", { class: "why" }, why));
    }
    log.append(turn);
    log.scrollTop = log.scrollHeight;
  }

  function eventLine(text, iso) {
    log.append(el("div", { class: "event" }, text + (iso ? " · " + new Date(iso).toLocaleTimeString() : "")));
    log.scrollTop = log.scrollHeight;
  }

  function eventShow(frame) {
    switch (frame.type) {
      case "history":
        for (const message of frame.messages || []) messageShow(message);
        $("customer-typing").textContent = "";
        return;
      case "message":
        return messageShow({ message_id: frame.message_id, role: "agent", agent: frame.agent, text: frame.text, created_at: frame.created_at });
      case "typing":
        if (frame.from !== "customer") return;
        clearTimeout(customerTypingTimer);
        $("customer-typing").textContent = frame.active ? "The customer is typing…" : "";
        if (frame.active) customerTypingTimer = setTimeout(() => ($("customer-typing").textContent = ""), 6000);
        return;
      case "agent_joined":
      case "agent_left":
      case "handoff_cancelled":
        return open(current.id); // the step is stored: drawn with the rest
    }
  }

  function sentShow(frame) {
    const item = pending.get(frame.reply_to);
    pending.delete(frame.reply_to);
    if (item && item.el) {
      item.el.dataset.messageId = frame.message_id;
      item.el.classList.remove("pending");
      item.el.querySelector(".who").textContent = "You · " + new Date(frame.created_at).toLocaleTimeString();
    }
    shown.add(frame.message_id);
    $("reply-status").textContent = "";
  }

  function errorShow(frame) {
    if (frame.reply_to) pending.delete(frame.reply_to);
    $("reply-status").textContent = frame.detail;
    if (current && frame.conversation === current.id) open(current.id);
  }

  // --- what the agent does -----------------------------------------------------------------------
  $("take").addEventListener("click", () => current && send({ type: "take", conversation: current.id }));
  $("hand-back").addEventListener("click", () => current && send({ type: "release", conversation: current.id, close: false }));
  $("close-chat").addEventListener("click", () => current && send({ type: "release", conversation: current.id, close: true }));

  $("reply-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = replyText.value.trim();
    if (!text || !current) return;
    const id = crypto.randomUUID ? crypto.randomUUID() : "a-" + Date.now().toString(36) + Math.random().toString(36).slice(2);
    const bubble = el("div", { class: "turn agent pending" }, el("div", { class: "who" }, "You · sending…"), el("div", { class: "bubble" }, text));
    log.append(bubble);
    log.scrollTop = log.scrollHeight;
    pending.set(id, { conversation: current.id, text, el: bubble });
    send({ type: "message", conversation: current.id, id, text });
    typingStop();
    replyText.value = "";
    replyText.focus();
  });
  replyText.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $("reply-form").requestSubmit();
    }
  });
  replyText.addEventListener("input", () => {
    if (!current) return;
    if (Date.now() - typingSent > 2000) {
      typingSent = Date.now();
      send({ type: "typing", conversation: current.id, active: true });
    }
    clearTimeout(typingTimer);
    typingTimer = setTimeout(typingStop, 4000);
  });
  function typingStop() {
    clearTimeout(typingTimer);
    if (typingSent && current) send({ type: "typing", conversation: current.id, active: false });
    typingSent = 0;
  }

  // Canned replies: the FAQ searched as the bot searches it; a click puts the answer in the reply box.
  const canned = $("canned-q");
  if (canned) {
    let timer = 0;
    canned.addEventListener("input", () => {
      clearTimeout(timer);
      timer = setTimeout(async () => {
        const q = canned.value.trim();
        const results = $("canned-results");
        if (!q) return results.replaceChildren();
        const response = await fetch("/ops/inbox/replies.json?q=" + encodeURIComponent(q), { credentials: "same-origin" });
        if (!response.ok || canned.value.trim() !== q) return;
        const data = await response.json();
        results.replaceChildren(
          ...data.entries.map((entry) =>
            el("li", null, el("button", {
              type: "button",
              class: "canned-reply",
              onclick: () => {
                replyText.value = replyText.value.trim() ? replyText.value.trimEnd() + "\n\n" + entry.answer : entry.answer;
                replyText.focus();
              },
            }, el("b", null, "#" + entry.id + " " + entry.question), el("span", { class: "answer" }, entry.answer))),
          ),
        );
        if (!data.entries.length) results.append(el("li", null, el("small", null, "No entry matches.")));
      }, 250);
    });
  }

  setInterval(() => inbox && inboxShow(inbox), 30000); // the ages move on
  connect();
})();
