// Demo chat box on /ws/chat/. Keeps the conversation id across reloads, reconnects with backoff
// and resends messages not yet answered; the server answers a client id once, so nothing doubles.
(function () {
  "use strict";
  const log = document.getElementById("log");
  const form = document.getElementById("composer");
  const input = document.getElementById("text");
  const status = document.getElementById("status");
  const STORAGE_KEY = "chatbot.conversation";
  const pending = new Map(); // client id -> {text, element}
  const shownReplies = new Set(); // message ids already on screen
  let socket = null;
  let retryDelay = 500;

  function newId() {
    return (crypto.randomUUID && crypto.randomUUID()) ||
      "id-" + Date.now().toString(36) + "-" + Math.random().toString(36).slice(2);
  }

  function add(role, text, meta) {
    const item = document.createElement("li");
    item.className = "msg " + role;
    item.textContent = text;
    if (meta) {
      const small = document.createElement("span");
      small.className = "meta";
      small.textContent = meta;
      item.appendChild(small);
    }
    log.appendChild(item);
    log.scrollTop = log.scrollHeight;
    return item;
  }

  function setStatus(text, cls) {
    status.textContent = text;
    status.className = "status " + (cls || "");
  }

  function sendFrame(frame) {
    if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify(frame));
  }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    const saved = localStorage.getItem(STORAGE_KEY);
    const query = saved ? "?conversation=" + encodeURIComponent(saved) : "";
    socket = new WebSocket(scheme + location.host + "/ws/chat/" + query);
    socket.onopen = function () {
      retryDelay = 500;
      setStatus("online", "ok");
    };
    socket.onmessage = function (event) {
      const frame = JSON.parse(event.data);
      if (frame.type === "session") {
        localStorage.setItem(STORAGE_KEY, frame.conversation);
        // Resend whatever was sent but not answered before the connection dropped.
        pending.forEach(function (item, id) { sendFrame({ type: "message", id: id, text: item.text }); });
      } else if (frame.type === "history") {
        if (log.childElementCount === 0) {
          frame.messages.forEach(function (m) {
            add(m.role === "customer" ? "customer" : "bot", m.text);
            if (m.role !== "customer") shownReplies.add(m.message_id);
          });
        }
      } else if (frame.type === "answer") {
        const item = pending.get(frame.reply_to);
        if (item) { item.element.classList.remove("pending"); pending.delete(frame.reply_to); }
        if (shownReplies.has(frame.message_id)) return;
        shownReplies.add(frame.message_id);
        const meta = frame.source === "faq" ? "from the FAQ · score " + frame.score.toFixed(2) : "";
        add("bot", frame.text, meta);
      } else if (frame.type === "error") {
        if (frame.reply_to && pending.has(frame.reply_to)) {
          pending.get(frame.reply_to).element.classList.remove("pending");
          pending.delete(frame.reply_to);
        }
        if (frame.code !== "conversation_not_found") add("error", frame.detail);
      }
    };
    socket.onclose = function () {
      setStatus("reconnecting…", "bad");
      setTimeout(connect, retryDelay);
      retryDelay = Math.min(retryDelay * 2, 10000);
    };
  }

  function ask(text) {
    text = text.trim();
    if (!text) return;
    const id = newId();
    pending.set(id, { text: text, element: add("customer pending", text) });
    sendFrame({ type: "message", id: id, text: text });
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    ask(input.value);
    input.value = "";
    input.focus();
  });
  document.querySelectorAll("[data-example]").forEach(function (button) {
    button.addEventListener("click", function () { ask(button.textContent); });
  });
  connect();
})();
