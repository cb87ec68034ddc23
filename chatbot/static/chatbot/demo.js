// Demo chat box on /ws/chat/. Keeps the conversation id and its resume token across reloads
// (resuming needs both), reconnects with backoff
// and resends messages not yet answered; the server answers a client id once, so nothing doubles.
// LLM replies stream in as "delta" frames into a provisional bubble that the final "answer" frame
// replaces; "did you mean" replies come as buttons that send a "choose" frame. An error frame with
// retry_after_ms (not_ready, rate_limited, busy) leaves the message pending and sends it again
// after that long; too_many_connections waits that long before reconnecting.
(function () {
  "use strict";
  const log = document.getElementById("log");
  const form = document.getElementById("composer");
  const input = document.getElementById("text");
  const status = document.getElementById("status");
  const STORAGE_KEY = "chatbot.conversation";
  const TOKEN_KEY = "chatbot.resume_token";
  const chinese = /[\u3400-\u9fff]/;
  const pending = new Map(); // client id -> {text, element}
  const streaming = new Map(); // client id -> provisional bot bubble
  const shownReplies = new Set(); // message ids already on screen
  const sentIds = new Set(); // client ids this page sent
  let socket = null;
  let retryDelay = 500;
  let reconnectAfter = 0; // ms the server asked us to wait before reconnecting

  function newId() {
    return (crypto.randomUUID && crypto.randomUUID()) ||
      "id-" + Date.now().toString(36) + "-" + Math.random().toString(36).slice(2);
  }

  function add(role, text, meta) {
    const item = document.createElement("li");
    item.className = "msg " + role;
    item.textContent = text;
    if (meta) setMeta(item, meta);
    log.appendChild(item);
    log.scrollTop = log.scrollHeight;
    return item;
  }

  function setMeta(item, meta) {
    const small = document.createElement("span");
    small.className = "meta";
    small.textContent = meta;
    item.appendChild(small);
  }

  function addButtons(item, buttons) {
    const row = document.createElement("div");
    row.className = "choices";
    buttons.forEach(function (spec) {
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = spec.label;
      button.addEventListener("click", function () {
        row.querySelectorAll("button").forEach(function (b) { b.disabled = true; });
        spec.onClick();
      });
      row.appendChild(button);
    });
    item.appendChild(row);
  }

  function addHandoffButton(item, text) {
    const zh = chinese.test(text);
    addButtons(item, [{
      label: zh ? "转人工客服" : "Talk to a person",
      onClick: function () { ask(zh ? "转人工" : "I'd like to talk to a person"); },
    }]);
  }

  function setStatus(text, cls) {
    status.textContent = text;
    status.className = "status " + (cls || "");
  }

  function sendFrame(frame) {
    if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify(frame));
  }

  function metaFor(frame) {
    if (frame.source === "faq") return "from the FAQ" + (frame.score ? " · score " + frame.score.toFixed(2) : "");
    if (frame.source === "llm") return "AI answer from our FAQ" + (frame.citations && frame.citations.length ? " · sources #" + frame.citations.join(", #") : "");
    return "";
  }

  function showReply(frame) {
    const provisional = streaming.get(frame.reply_to);
    streaming.delete(frame.reply_to);
    if (shownReplies.has(frame.message_id)) { if (provisional) provisional.remove(); return; }
    shownReplies.add(frame.message_id);
    const item = provisional || add("bot", "");
    item.classList.remove("streaming");
    item.textContent = frame.text;
    const meta = metaFor(frame);
    if (meta) setMeta(item, meta);
    if (frame.type === "suggestions") {
      addButtons(item, frame.options.map(function (option) {
        return { label: option.question, onClick: function () { choose(option); } };
      }));
    } else if (frame.source === "handoff" && frame.handoff === "offered") {
      addHandoffButton(item, frame.text);
    }
    log.scrollTop = log.scrollHeight;
  }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    const saved = localStorage.getItem(STORAGE_KEY);
    const token = localStorage.getItem(TOKEN_KEY);
    const query = saved && token
      ? "?conversation=" + encodeURIComponent(saved) + "&resume=" + encodeURIComponent(token)
      : "";
    socket = new WebSocket(scheme + location.host + "/ws/chat/" + query);
    socket.onopen = function () {
      retryDelay = 500;
      setStatus("online", "ok");
    };
    socket.onmessage = function (event) {
      const frame = JSON.parse(event.data);
      if (frame.type === "session") {
        localStorage.setItem(STORAGE_KEY, frame.conversation);
        localStorage.setItem(TOKEN_KEY, frame.resume_token);
        // Resend whatever was sent but not answered before the connection dropped.
        pending.forEach(function (item, id) { sendFrame(item.frame); });
      } else if (frame.type === "history") {
        // On resume: the conversation so far. Later: an exchange made in another tab of this
        // conversation; messages this page already shows are skipped.
        const fresh = log.childElementCount === 0;
        const bots = frame.messages.filter(function (m) { return m.role !== "customer"; });
        const latestBot = bots.length ? bots[bots.length - 1] : null;
        frame.messages.forEach(function (m) {
          if (m.role === "customer") {
            if (fresh || !sentIds.has(m.client_id)) add("customer", m.text);
            return;
          }
          if (shownReplies.has(m.message_id)) return;
          shownReplies.add(m.message_id);
          const item = add("bot", m.text, metaFor(m));
          if (m.source === "clarify" && m.options.length) {
            addButtons(item, m.options.map(function (option) {
              return { label: option.question, onClick: function () { choose(option); } };
            }));
          } else if (m.source === "handoff" && m.handoff === "offered" && m === latestBot) {
            // An older offer was answered or passed by since: only the latest one is still open.
            addHandoffButton(item, m.text);
          }
        });
      } else if (frame.type === "delta") {
        let item = streaming.get(frame.reply_to);
        if (!item) { item = add("bot streaming", ""); streaming.set(frame.reply_to, item); }
        item.textContent += frame.text;
        log.scrollTop = log.scrollHeight;
      } else if (frame.type === "answer" || frame.type === "suggestions") {
        const item = pending.get(frame.reply_to);
        if (item) { item.element.classList.remove("pending"); pending.delete(frame.reply_to); }
        showReply(frame);
      } else if (frame.type === "error") {
        if (frame.retry_after_ms && frame.reply_to && pending.has(frame.reply_to)) {
          // Not answered yet (the server is starting up, or we sent too fast): the same message,
          // same id, goes again.
          const waiting = pending.get(frame.reply_to);
          setStatus(frame.code === "not_ready" ? "starting up…" : "slow down…", "bad");
          setTimeout(function () { setStatus("online", "ok"); sendFrame(waiting.frame); }, frame.retry_after_ms);
          return;
        }
        if (frame.reply_to && pending.has(frame.reply_to)) {
          pending.get(frame.reply_to).element.classList.remove("pending");
          pending.delete(frame.reply_to);
        }
        if (frame.reply_to && streaming.has(frame.reply_to)) {
          streaming.get(frame.reply_to).remove();
          streaming.delete(frame.reply_to);
        }
        if (frame.code === "too_many_connections") reconnectAfter = frame.retry_after_ms || 10000;
        if (frame.code !== "resume_denied") add("error", frame.detail);
      }
    };
    socket.onclose = function () {
      setStatus("reconnecting…", "bad");
      // A reply that was streaming is asked again on reconnect; drop its partial text.
      streaming.forEach(function (item) { item.remove(); });
      streaming.clear();
      setTimeout(connect, Math.max(retryDelay, reconnectAfter));
      reconnectAfter = 0;
      retryDelay = Math.min(retryDelay * 2, 10000);
    };
  }

  function send(frame, text) {
    sentIds.add(frame.id);
    pending.set(frame.id, { frame: frame, element: add("customer pending", text) });
    sendFrame(frame);
  }

  function ask(text) {
    text = text.trim();
    if (!text) return;
    send({ type: "message", id: newId(), text: text }, text);
  }

  function choose(option) {
    send({ type: "choose", id: newId(), entry_id: option.entry_id }, option.question);
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
