// The customer chat widget (issue 11). /widget.js (chatbot/widget_views.py) loads styles.js,
// markdown.js and then this file, with the embed tag's data-* attributes copied onto this script.
// It draws a launcher and a panel in a shadow root, talks the chat protocol on /ws/chat/?site=KEY
// (README, "Chat protocol"), and exposes window.SupportChat to the host page.
//
// Robustness rules, each from the protocol: every message carries a client id and stays in the
// outbox (localStorage, per site) until its answer arrives, so it is resent after a reconnect or a
// reload and the server answers a known id with the stored reply ("duplicate"), never twice;
// replies are shown once per message_id. Errors with retry_after_ms (rate_limited, busy,
// not_ready) resend the same frame after that long; flood_closed and too_many_connections make
// the next reconnect wait that long.
(function () {
  "use strict";
  const api = window.SupportChat;
  if (api && api.version) return; // the tag is on the page twice
  const parts = window[Symbol.for("supportchat.parts")] || {};
  const script = document.currentScript;
  if (!script || !parts.css || !parts.markdown) return;
  const data = script.dataset;
  const host = new URL(script.src).origin;
  const siteKey = data.site || "default";
  const langUrls = JSON.parse(data.langs || "{}");
  const storageKey = "supportchat:" + host + ":" + siteKey;
  const events = new EventTarget();
  const md = parts.markdown;

  // --- state ---------------------------------------------------------------------------------
  const saved = load();
  const outbox = new Map(); // client id -> {frame, el}; frames the server has not answered yet
  (saved.outbox || []).forEach(({ frame, label }) => frame && frame.id && outbox.set(frame.id, { frame, label, el: null }));
  const shown = new Set(); // message ids on screen
  const streaming = new Map(); // client id -> {el, text}; LLM answers arriving as deltas
  const controls = []; // feedback / rating / identify frames waiting for their acknowledgement
  let config = null;
  let strings = {};
  let lang = "en";
  let socket = null;
  let connected = false;
  let backoff = 500;
  let waitBeforeReconnect = 0;
  let reconnectTimer = 0;
  let identity = null;
  let ready = false;
  let latestOffer = null; // the handoff-offer button row still open
  let agentName = null; // the person holding the chat (the bot is silent meanwhile)
  let personAsked = false; // a person was asked for and has not joined yet
  let announcedAgent = null; // whose joining the log already says (reconnects say it again)
  let typingSentAt = 0; // the customer's typing, told to the agent at most every 2 s
  let typingStopTimer = 0;
  let agentTypingTimer = 0;

  function load() {
    try {
      return JSON.parse(localStorage.getItem(storageKey)) || {};
    } catch (_error) {
      return {};
    }
  }

  function persist() {
    saved.outbox = Array.from(outbox.values(), (item) => ({ frame: item.frame, label: item.label }));
    try {
      localStorage.setItem(storageKey, JSON.stringify(saved));
    } catch (_error) {
      /* private mode or full: the chat still works for this page view */
    }
  }

  function newId() {
    return crypto.randomUUID ? crypto.randomUUID() : "c-" + Date.now().toString(36) + Math.random().toString(36).slice(2);
  }

  function t(key, values) {
    let text = strings[key] || key;
    for (const name in values || {}) text = text.replace("{" + name + "}", values[name]);
    return text;
  }

  function emit(type, detail) {
    events.dispatchEvent(new CustomEvent(type, { detail }));
  }

  // --- colours: the site's primary colour, adjusted until text on it and it on white keep AA ---
  function luminance(hex) {
    const [r, g, b] = [1, 3, 5].map((i) => {
      const c = parseInt(hex.slice(i, i + 2), 16) / 255;
      return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4;
    });
    return 0.2126 * r + 0.7152 * g + 0.0722 * b;
  }
  const contrast = (a, b) => {
    const [x, y] = [luminance(a), luminance(b)].sort((p, q) => q - p);
    return (x + 0.05) / (y + 0.05);
  };
  function darken(hex) {
    return "#" + [1, 3, 5].map((i) => Math.floor(parseInt(hex.slice(i, i + 2), 16) * 0.85).toString(16).padStart(2, "0")).join("");
  }
  function applyColours(element, primary) {
    let colour = /^#[0-9a-f]{6}$/i.test(primary || "") ? primary : "#0969da";
    const onPrimary = contrast(colour, "#ffffff") >= contrast(colour, "#1f2328") ? "#ffffff" : "#1f2328";
    while (contrast(colour, onPrimary) < 4.5 && onPrimary === "#ffffff") colour = darken(colour);
    let text = colour;
    while (contrast(text, "#ffffff") < 4.5) text = darken(text);
    element.style.setProperty("--sc-primary", colour);
    element.style.setProperty("--sc-on-primary", onPrimary);
    element.style.setProperty("--sc-primary-text", text);
  }

  // --- DOM helpers ---------------------------------------------------------------------------
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const name in attrs || {}) {
      const value = attrs[name];
      if (value === null || value === undefined || value === false) continue;
      if (name === "class") node.className = value;
      else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
      else if (name in node && typeof value !== "string") node[name] = value;
      else node.setAttribute(name, value === true ? "" : value);
    }
    for (const child of children) if (child !== null && child !== undefined) node.append(child);
    return node;
  }

  // --- the UI ----------------------------------------------------------------------------------
  // A tag of its own, so the host page's element selectors (div, p…) do not match it.
  const mount = el("support-chat", { "data-support-chat": "" });
  const shadow = mount.attachShadow({ mode: "open" });
  if (shadow.adoptedStyleSheets !== undefined && window.CSSStyleSheet && "replaceSync" in CSSStyleSheet.prototype) {
    const sheet = new CSSStyleSheet();
    sheet.replaceSync(parts.css);
    shadow.adoptedStyleSheets = [sheet];
  } else {
    shadow.append(el("style", null, parts.css)); // older browsers; a strict style-src blocks this
  }
  const root = el("div", { class: "root" });
  const launcher = el("button", { class: "launcher", type: "button", "aria-expanded": "false", "aria-controls": "sc-panel" });
  const SVG = "http://www.w3.org/2000/svg";
  // Icons are drawn, not emoji: a system without an emoji font shows emoji as empty boxes.
  function svgIcon(path) {
    const svg = document.createElementNS(SVG, "svg");
    const shape = document.createElementNS(SVG, "path");
    svg.setAttribute("viewBox", "0 0 24 24");
    svg.setAttribute("aria-hidden", "true");
    svg.setAttribute("focusable", "false");
    shape.setAttribute("d", path);
    svg.append(shape);
    return svg;
  }
  const THUMB_UP = "M2 21h4V9H2v12zm20-11a2 2 0 0 0-2-2h-6.3l1-4.6v-.3c0-.4-.2-.8-.4-1.1L13.2 1 6.6 7.6C6.2 8 6 8.5 6 9v10a2 2 0 0 0 2 2h9c.8 0 1.5-.5 1.8-1.2l3-7.1c.1-.2.2-.5.2-.7v-2z";
  const THUMB_DOWN = "M22 3h-4v12h4V3zM2 14a2 2 0 0 0 2 2h6.3l-1 4.6v.3c0 .4.2.8.4 1.1l1.1 1 6.6-6.6c.4-.4.6-.9.6-1.4V5a2 2 0 0 0-2-2H7c-.8 0-1.5.5-1.8 1.2l-3 7.1c-.1.2-.2.5-.2.7v2z";
  launcher.append(svgIcon("M4 4h16a2 2 0 0 1 2 2v10a2 2 0 0 1-2 2H8l-4 4V6a2 2 0 0 1 2-2z"));
  const title = el("h2", { id: "sc-title" });
  const status = el("span", { class: "status", role: "status" });
  const endButton = el("button", { type: "button", onclick: () => endChat() });
  const closeButton = el("button", { type: "button", class: "x", onclick: () => close() }, "×");
  const log = el("div", { class: "log", role: "log", "aria-live": "polite", "aria-labelledby": "sc-title", tabindex: "0" });
  const input = el("textarea", { rows: 1, maxlength: 2000, id: "sc-input" });
  const inputLabel = el("label", { for: "sc-input", class: "sr-only" });
  const sendButton = el("button", { type: "submit" });
  const composer = el("form", { class: "composer", autocomplete: "off" }, inputLabel, input, sendButton);
  const panel = el(
    "div",
    { class: "panel", id: "sc-panel", role: "dialog", "aria-labelledby": "sc-title", hidden: true },
    el("div", { class: "head" }, el("div", { style: null }, title, status), endButton, closeButton),
    log,
    composer,
  );
  const intro = el("div", { class: "intro" });
  const typing = el("div", { class: "typing" }, el("span", { class: "sr-only" }), el("i"), el("i"), el("i"));
  const agentTyping = el("div", { class: "typing agent-typing" }, el("span", { class: "who" }), el("i"), el("i"), el("i"));
  root.append(launcher, panel);
  shadow.append(root);

  launcher.addEventListener("click", () => (panel.hidden ? open() : close()));
  panel.addEventListener("keydown", (event) => {
    if (event.key === "Escape") {
      event.stopPropagation();
      close();
    }
  });
  composer.addEventListener("submit", (event) => {
    event.preventDefault();
    typingStop();
    send(input.value);
    input.value = "";
    input.focus();
  });
  // With a person on the other side, they see when the customer is typing.
  input.addEventListener("input", () => {
    if (!agentName) return;
    if (Date.now() - typingSentAt > 2000) {
      typingSentAt = Date.now();
      sendFrame({ type: "typing", active: true });
    }
    clearTimeout(typingStopTimer);
    typingStopTimer = setTimeout(typingStop, 4000);
  });
  function typingStop() {
    clearTimeout(typingStopTimer);
    if (typingSentAt) sendFrame({ type: "typing", active: false });
    typingSentAt = 0;
  }
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      composer.requestSubmit();
    }
  });

  function applyStrings() {
    launcher.setAttribute("aria-label", panel.hidden ? t("open") : t("close"));
    title.textContent = config ? config.name || t("title") : t("title");
    endButton.textContent = t("endChat");
    closeButton.setAttribute("aria-label", t("close"));
    input.placeholder = agentName ? t("placeholderAgent", { name: agentName }) : t("placeholder");
    inputLabel.textContent = t("inputLabel");
    sendButton.textContent = t("send");
    typing.firstChild.textContent = t("typing");
    setStatus(status.dataset.key || "connecting");
    renderIntro();
  }

  function setStatus(key) {
    status.dataset.key = key;
    status.textContent = t(key, { name: agentName || t("agent") });
  }

  function scrollDown() {
    log.scrollTop = log.scrollHeight;
  }

  function renderIntro() {
    const zh = lang.startsWith("zh");
    const greeting = config && config.greeting ? config.greeting[zh ? "zh" : "en"] || config.greeting.en : "";
    intro.replaceChildren();
    if (greeting) intro.append(el("div", { class: "msg bot greeting" }, el("div", { class: "body" }, md.render(greeting))));
    const starters = (config && config.starter_questions) || [];
    const started = log.querySelector(".msg.customer") || saved.conversation;
    if (starters.length && !started) {
      intro.append(
        el("div", { class: "starters" }, ...starters.map((question) => el("button", { type: "button", onclick: () => send(question) }, question))),
      );
    }
    if (log.firstChild !== intro) log.prepend(intro);
  }

  // While a person is asked for (and none has joined): a bar that says so, with a way back to the bot.
  const waitingBar = el(
    "div",
    { class: "msg notice waiting-person" },
    el("span", { class: "label" }),
    " ",
    el("button", { type: "button", class: "secondary", onclick: () => sendFrame({ type: "handoff_cancel" }) }),
  );
  function showWaiting() {
    if (personAsked && !agentName) {
      waitingBar.querySelector(".label").textContent = t("waitingPerson");
      waitingBar.querySelector("button").textContent = t("backToBot");
      log.append(waitingBar);
    } else waitingBar.remove();
  }

  function updateTyping() {
    showWaiting();
    const waiting = Array.from(outbox.keys()).some((id) => !streaming.has(id));
    // "The assistant is typing" only while the bot answers, not while a person is asked for.
    if (waiting && connected && !agentName && !personAsked) log.append(typing);
    else typing.remove();
    scrollDown();
  }

  function speaker(role, name) {
    return el("span", { class: "sr-only" }, (role === "customer" ? t("you") : role === "agent" ? name || t("agent") : t("bot")) + ": ");
  }

  // A message from the person holding the chat.
  function renderAgent(message) {
    if (shown.has(message.message_id)) return;
    shown.add(message.message_id);
    const name = message.agent || agentName || t("agent");
    log.append(
      el("div", { class: "msg agent", "data-message-id": message.message_id }, speaker("agent", name), el("span", { class: "from", "aria-hidden": "true" }, name), el("div", { class: "body" }, md.render(message.text))),
    );
    agentTyping.remove();
  }

  function notice(text) {
    log.append(el("div", { class: "msg notice" }, text));
    scrollDown();
  }

  // Outside opening hours: the customer may leave an email; the request waits for the next agent.
  function showEmailForm() {
    if (log.querySelector(".leave-email")) return;
    const id = "sc-email";
    const email = el("input", { id, type: "email", maxlength: 254, required: true, autocomplete: "email" });
    const form = el(
      "form",
      { class: "msg bot leave-email" },
      el("label", { for: id }, t("emailLabel")),
      email,
      el("div", { class: "row" }, el("button", { type: "submit", class: "primary" }, t("emailSend"))),
    );
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      if (!email.checkValidity()) return email.reportValidity();
      identify({ ...(identity || {}), email: email.value.trim() });
      form.replaceWith(el("div", { class: "msg notice" }, t("emailThanks", { email: email.value.trim() })));
    });
    log.append(form);
    scrollDown();
    if (!panel.hidden) email.focus();
  }

  function addCustomer(text, clientId) {
    const item = el("div", { class: "msg customer", "data-client-id": clientId || null }, speaker("customer"), el("span", { class: "text" }, text));
    log.append(item);
    return item;
  }

  function markQueued(item, queued) {
    item.classList.toggle("pending", queued);
    const old = item.querySelector(".queued");
    if (old) old.remove();
    if (queued) item.append(el("span", { class: "queued" }, t("queued")));
  }

  function citationNodes(ids) {
    if (!ids || !ids.length) return null;
    const template = data.faqUrl || (config && config.faq_url) || "";
    const refs = el("div", { class: "refs" }, t("sources") + " ");
    for (const id of ids) {
      if (refs.childNodes.length > 1) refs.append(", ");
      const label = t("faqRef", { id });
      const url = template ? md.safeUrl(template.replace("{id}", encodeURIComponent(id))) : null;
      refs.append(url ? el("a", { href: url, target: "_blank", rel: "noopener noreferrer" }, label) : el("span", { class: "ref" }, label));
    }
    return refs;
  }

  function metaText(reply) {
    if (reply.source === "faq") return t("faqAnswer");
    if (reply.source === "llm") return t("aiAnswer");
    return "";
  }

  // A bot turn (an answer or suggestions frame, or a history message) as a bubble.
  function renderBot(reply, item, live) {
    const body = el("div", { class: "body" }, md.render(reply.text));
    item = item || el("div");
    item.className = "msg bot";
    item.dataset.messageId = reply.message_id;
    item.replaceChildren(speaker("bot"), body);
    const meta = metaText(reply);
    if (meta) item.append(el("span", { class: "meta" }, meta));
    const refs = citationNodes(reply.citations);
    if (refs) item.append(refs);
    const options = reply.options || [];
    if ((reply.type === "suggestions" || reply.source === "clarify") && options.length) {
      const row = el("div", { class: "choices" });
      options.forEach((option) =>
        row.append(
          el("button", {
            type: "button",
            onclick: () => {
              row.querySelectorAll("button").forEach((button) => (button.disabled = true));
              choose(option);
            },
          }, option.question),
        ),
      );
      item.append(row);
    }
    if (reply.source === "handoff" && reply.handoff === "offered") {
      if (latestOffer) latestOffer.remove();
      latestOffer = el("div", { class: "choices" }, el("button", { type: "button", onclick: () => send(t("handoffRequest")) }, t("handoff")));
      item.append(latestOffer);
    } else if (latestOffer && live) {
      latestOffer.remove(); // the conversation went on: the offer is no longer open
      latestOffer = null;
    }
    // Every answer, the hand-off offer included: a thumbs-down there tells editors what the FAQ lacks.
    if (reply.source && reply.source !== "clarify") item.append(feedbackRow(reply.message_id));
    if (!item.parentNode) log.append(item);
    return item;
  }

  function feedbackRow(messageId) {
    const row = el("div", { class: "feedback" });
    const up = el("button", { type: "button", "aria-pressed": "false", "aria-label": t("helpful"), title: t("helpful") }, svgIcon(THUMB_UP));
    const down = el("button", { type: "button", "aria-pressed": "false", "aria-label": t("notHelpful"), title: t("notHelpful") }, svgIcon(THUMB_DOWN));
    const press = (value) => {
      up.setAttribute("aria-pressed", String(value === "up"));
      down.setAttribute("aria-pressed", String(value === "down"));
    };
    up.addEventListener("click", () => {
      press("up");
      const form = row.querySelector(".reason");
      if (form) form.remove();
      control({ type: "feedback", message_id: messageId, value: "up" });
    });
    down.addEventListener("click", () => {
      press("down");
      if (row.querySelector(".reason")) return;
      const id = "sc-reason-" + messageId;
      const reason = el("textarea", { id, maxlength: 500, rows: 2 });
      const form = el(
        "form",
        { class: "reason" },
        el("label", { for: id }, t("reasonLabel")),
        reason,
        el("button", { type: "submit", class: "primary" }, t("sendFeedback")),
      );
      form.addEventListener("submit", (event) => {
        event.preventDefault();
        const frame = { type: "feedback", message_id: messageId, value: "down" };
        if (reason.value.trim()) frame.reason = reason.value.trim().slice(0, 500);
        control(frame);
        form.remove();
        down.focus();
      });
      row.append(form);
      reason.focus();
    });
    row.append(up, down);
    return row;
  }

  function showRating(reason) {
    if (log.querySelector(".rating")) return;
    const comment = el("textarea", { id: "sc-comment", maxlength: 1000, rows: 2 });
    const stars = el("div", { class: "stars" });
    for (let n = 1; n <= 5; n++) {
      stars.append(
        el("label", null, el("input", { type: "radio", name: "sc-score", value: String(n), "aria-label": t("rateStar", { n }) }), el("span", { "aria-hidden": "true" }, n + "★")),
      );
    }
    const card = el(
      "form",
      { class: "msg bot rating", "data-reason": reason },
      el("fieldset", null, el("legend", null, t("rateTitle")), stars),
      el("label", { for: "sc-comment" }, t("commentLabel")),
      comment,
      el("div", { class: "row" }, el("button", { type: "submit", class: "primary" }, t("submitRating")), el("button", { type: "button", class: "secondary", onclick: () => finishRating(card, null) }, t("skip"))),
    );
    card.addEventListener("submit", (event) => {
      event.preventDefault();
      const picked = card.querySelector("input[name=sc-score]:checked");
      if (!picked) return stars.querySelector("input").focus();
      const frame = { type: "rating", score: Number(picked.value) };
      if (comment.value.trim()) frame.comment = comment.value.trim().slice(0, 1000);
      finishRating(card, frame);
    });
    log.append(card);
    scrollDown();
    if (!panel.hidden) card.querySelector("input").focus();
  }

  function finishRating(card, frame) {
    if (frame) control(frame);
    const note = el("div", { class: "msg notice", tabindex: "-1" }, frame ? t("ratingThanks") : "");
    card.replaceWith(note);
    if (card.dataset.reason === "end") forgetConversation();
    if (!frame) note.remove();
    input.focus();
  }

  function endChat() {
    if (!saved.conversation && !log.querySelector(".msg.customer")) return close();
    showRating("end");
  }

  // The customer ended the chat: the next message starts a new conversation.
  function forgetConversation() {
    agentName = null;
    personAsked = false;
    delete saved.conversation;
    delete saved.token;
    outbox.clear();
    persist();
    shown.clear();
    log.replaceChildren(el("div", { class: "msg notice" }, t("ended")));
    renderIntro();
    if (socket) socket.close(1000);
  }

  // --- the socket ------------------------------------------------------------------------------
  function connect() {
    clearTimeout(reconnectTimer);
    reconnectTimer = 0;
    if (socket || !config) return;
    const query = new URLSearchParams({ site: siteKey });
    if (saved.conversation && saved.token) {
      query.set("conversation", saved.conversation);
      query.set("resume", saved.token);
    }
    const url = host.replace(/^http/, "ws") + "/ws/chat/?" + query;
    const ws = (socket = new WebSocket(url));
    setStatus(connected ? "reconnecting" : "connecting");
    ws.onmessage = (event) => {
      let frame;
      try {
        frame = JSON.parse(event.data);
      } catch (_error) {
        return;
      }
      receive(frame);
    };
    ws.onclose = () => {
      if (socket !== ws) return;
      socket = null;
      connected = false;
      // A reply that was streaming is asked again (its message is still in the outbox).
      streaming.forEach((item) => item.el.remove());
      streaming.clear();
      updateTyping();
      setStatus(navigator.onLine === false ? "offline" : "reconnecting");
      const delay = Math.max(backoff, waitBeforeReconnect) * (0.8 + Math.random() * 0.4);
      waitBeforeReconnect = 0;
      backoff = Math.min(backoff * 2, 15000);
      reconnectTimer = setTimeout(connect, delay);
    };
  }

  function sendFrame(frame) {
    if (!socket || socket.readyState !== WebSocket.OPEN || !connected) return false;
    socket.send(JSON.stringify(frame));
    return true;
  }

  function control(frame) {
    controls.push(frame);
    sendFrame(frame);
  }

  function acknowledge(test) {
    const index = controls.findIndex(test);
    if (index >= 0) controls.splice(index, 1);
  }

  function receive(frame) {
    switch (frame.type) {
      case "session": {
        connected = true;
        backoff = 500;
        agentName = null; // an agent_joined follows when a person still holds the chat
        input.placeholder = t("placeholder");
        if (saved.conversation !== frame.conversation) shown.clear();
        saved.conversation = frame.conversation;
        saved.token = frame.resume_token;
        persist();
        setStatus("online");
        if (identity) controls.some((c) => c.type === "identify") || controls.push({ type: "identify", ...identity });
        outbox.forEach((item) => {
          if (item.el) markQueued(item.el, false);
          sendFrame(item.frame);
        });
        controls.forEach(sendFrame);
        showQueued();
        updateTyping();
        return;
      }
      case "history":
        return history(frame.messages || []);
      case "delta": {
        let item = streaming.get(frame.reply_to);
        if (!item) {
          if (!outbox.has(frame.reply_to)) return;
          item = { el: el("div", { class: "msg bot streaming", "aria-busy": "true" }), text: "" };
          streaming.set(frame.reply_to, item);
          log.append(item.el);
        }
        item.text += frame.text;
        item.el.replaceChildren(speaker("bot"), el("div", { class: "body" }, md.render(item.text)));
        updateTyping();
        return;
      }
      case "answer":
      case "suggestions":
        return reply(frame);
      case "received":
        return received(frame);
      case "handoff_cancelled":
        if (personAsked) notice(t("backWithBot"));
        personAsked = false;
        updateTyping();
        return;
      case "message":
        if (frame.from === "agent") {
          renderAgent(frame);
          emit("message", { role: "agent", text: frame.text, message_id: frame.message_id, agent: frame.agent });
          scrollDown();
        }
        return;
      case "typing":
        if (frame.from !== "agent") return;
        clearTimeout(agentTypingTimer);
        if (frame.active) {
          agentTyping.querySelector(".who").textContent = t("agentTyping", { name: agentName || t("agent") });
          log.append(agentTyping);
          scrollDown();
          agentTypingTimer = setTimeout(() => agentTyping.remove(), 6000);
        } else agentTyping.remove();
        return;
      case "agent_joined":
        if (announcedAgent !== frame.agent) notice(t("agentJoined", { name: frame.agent }));
        agentName = announcedAgent = frame.agent;
        personAsked = false;
        setStatus("withAgent");
        input.placeholder = t("placeholderAgent", { name: agentName });
        emit("agent", { joined: true, agent: frame.agent });
        updateTyping();
        return;
      case "agent_left":
        agentTyping.remove();
        notice(t({ handed_back: "agentHandedBack", closed: "agentClosed", agent_away: "agentAway" }[frame.reason] || "agentClosed", { name: frame.agent }));
        agentName = announcedAgent = null;
        personAsked = frame.reason === "agent_away";
        setStatus("online");
        input.placeholder = t("placeholder");
        emit("agent", { joined: false, agent: frame.agent, reason: frame.reason });
        if (frame.reason === "closed") showRating("agent");
        updateTyping();
        return;
      case "feedback_saved":
        acknowledge((c) => c.type === "feedback" && c.message_id === frame.message_id);
        feedbackSaved(frame);
        return;
      case "rating_saved":
        acknowledge((c) => c.type === "rating");
        return;
      case "identified":
        acknowledge((c) => c.type === "identify");
        return;
      case "error":
        return error(frame);
    }
  }

  function feedbackSaved(frame) {
    const item = log.querySelector('[data-message-id="' + Number(frame.message_id) + '"] .feedback');
    if (!item || item.querySelector(".thanks")) return;
    item.append(el("span", { class: "thanks" }, t("feedbackThanks")));
  }

  // A message stored for a person to answer: it leaves the outbox; no bot reply follows.
  function received(frame) {
    const waiting = outbox.get(frame.reply_to);
    if (waiting) {
      outbox.delete(frame.reply_to);
      persist();
      if (waiting.el) markQueued(waiting.el, false);
    }
    updateTyping();
  }

  function reply(frame) {
    const waiting = outbox.get(frame.reply_to);
    const stream = streaming.get(frame.reply_to);
    streaming.delete(frame.reply_to);
    if (waiting) {
      outbox.delete(frame.reply_to);
      persist();
      if (waiting.el) markQueued(waiting.el, false);
    }
    if (shown.has(frame.message_id)) {
      if (stream) stream.el.remove();
    } else {
      shown.add(frame.message_id);
      renderBot(frame, stream && stream.el, true);
      emit("message", { role: "bot", text: frame.text, message_id: frame.message_id, source: frame.source || "clarify", reply_to: frame.reply_to });
      if (frame.source === "handoff" && frame.handoff === "requested") {
        personAsked = true;
        emit("handoff", { message_id: frame.message_id, text: frame.text, hours: frame.hours || "open" });
        if (frame.hours === "closed") showEmailForm();
      }
    }
    updateTyping();
  }

  function history(messages) {
    const resume = !log.querySelector(".msg.bot:not(.greeting):not(.rating), .msg.customer:not(.pending)");
    if (resume) {
      // The conversation so far (on resume): drawn in order, with messages still waiting after it.
      log.replaceChildren(intro);
      latestOffer = null;
    }
    const lastBot = messages.filter((m) => m.role !== "customer").pop();
    if (resume && lastBot) personAsked = lastBot.source === "handoff" && lastBot.handoff === "requested";
    for (const message of messages) {
      if (message.role === "agent") {
        renderAgent(message);
        continue;
      }
      if (message.role === "customer") {
        const waiting = outbox.get(message.client_id);
        if (waiting && waiting.el) log.append(waiting.el);
        else if (resume || !log.querySelector('[data-client-id="' + CSS.escape(message.client_id || "") + '"]')) {
          const item = addCustomer(message.text, message.client_id);
          if (waiting) waiting.el = item;
        }
        continue;
      }
      if (shown.has(message.message_id)) continue;
      shown.add(message.message_id);
      if (message.reply_to && outbox.has(message.reply_to)) {
        outbox.delete(message.reply_to);
        persist();
      }
      const item = renderBot(message, null, false);
      if (message.source === "handoff" && message.handoff === "offered" && message !== lastBot && latestOffer) {
        latestOffer.remove(); // answered or passed by since: only the latest offer is still open
        latestOffer = null;
      }
      void item;
    }
    showQueued();
    renderIntro();
    updateTyping();
  }

  // Messages typed but not answered get a bubble (after the history when there is one).
  function showQueued() {
    outbox.forEach((item) => {
      if (!item.el) item.el = addCustomer(item.frame.type === "choose" ? item.label || "" : item.frame.text, item.frame.id);
      else if (!item.el.parentNode) log.append(item.el);
      markQueued(item.el, !connected);
    });
  }

  function error(frame) {
    const waiting = frame.reply_to && outbox.get(frame.reply_to);
    if (frame.code === "flood_closed" || frame.code === "too_many_connections") {
      waitBeforeReconnect = frame.retry_after_ms || 10000;
      setStatus("slowDown");
      return;
    }
    if (frame.code === "resume_denied") {
      delete saved.conversation;
      delete saved.token;
      persist();
      return;
    }
    if (frame.retry_after_ms) {
      // Nothing was stored: the same frame (same client id) goes again after the pause asked for.
      setStatus(frame.code === "not_ready" ? "startingUp" : "slowDown");
      const again = waiting ? [waiting.frame] : controls.slice();
      setTimeout(() => {
        if (connected) setStatus("online");
        again.forEach((f) => (f.type === "message" || f.type === "choose" ? outbox.has(f.id) : controls.includes(f)) && sendFrame(f));
      }, frame.retry_after_ms);
      return;
    }
    if (waiting) {
      outbox.delete(frame.reply_to);
      persist();
      const stream = streaming.get(frame.reply_to);
      if (stream) stream.el.remove();
      streaming.delete(frame.reply_to);
      if (waiting.el) markQueued(waiting.el, false);
    }
    // A feedback, rating or identify frame the server refused (or, on an older server, does not know):
    // it is not sent again on the next reconnect.
    if (!waiting && /^(invalid_|unknown_type)/.test(frame.code || "")) controls.splice(0, controls.length);
    log.append(el("div", { class: "msg error" }, frame.detail || t("error")));
    updateTyping();
  }

  // --- what the customer and the host page do ------------------------------------------------------
  function queue(frame, text, label) {
    const item = { frame, el: addCustomer(text, frame.id), label };
    outbox.set(frame.id, item);
    persist();
    renderIntro();
    markQueued(item.el, !sendFrame(frame));
    emit("message", { role: "customer", text, client_id: frame.id });
    updateTyping();
    connect();
  }

  function send(text) {
    text = String(text || "").trim();
    if (!text) return false;
    queue({ type: "message", id: newId(), text: text.slice(0, 2000) }, text);
    return true;
  }

  function choose(option) {
    queue({ type: "choose", id: newId(), entry_id: option.entry_id }, option.question, option.question);
  }

  let focusBefore = null;
  function open() {
    if (!panel.hidden) return;
    focusBefore = document.activeElement;
    panel.hidden = false;
    launcher.setAttribute("aria-expanded", "true");
    saved.open = true;
    persist();
    applyStrings();
    connect();
    scrollDown();
    input.focus();
    emit("open", {});
  }

  function close() {
    if (panel.hidden) return;
    panel.hidden = true;
    launcher.setAttribute("aria-expanded", "false");
    saved.open = false;
    persist();
    applyStrings();
    if (focusBefore && focusBefore !== mount && document.contains(focusBefore)) focusBefore.focus();
    else launcher.focus();
    emit("close", {});
  }

  function resolveLanguage(tag) {
    if (!tag) return null;
    const codes = Object.keys(langUrls);
    const lower = tag.toLowerCase();
    return (
      codes.find((code) => code.toLowerCase() === lower) ||
      (lower.startsWith("zh") && codes.find((code) => code.startsWith("zh"))) ||
      codes.find((code) => code.split("-")[0] === lower.split("-")[0]) ||
      null
    );
  }

  async function setLanguage(tag) {
    const code = resolveLanguage(tag) || "en";
    const response = await fetch(langUrls[code] || langUrls.en, { credentials: "omit" });
    strings = await response.json();
    lang = code;
    root.lang = code;
    applyStrings();
    return code;
  }

  function identify(person) {
    // Only what is given is sent: an absent field leaves the stored one unchanged.
    identity = {};
    if (person && person.name) identity.name = String(person.name).slice(0, 100);
    if (person && person.email) identity.email = String(person.email).slice(0, 254);
    acknowledge((c) => c.type === "identify");
    control({ type: "identify", ...identity });
    connect();
  }

  async function fetchConfig() {
    for (let attempt = 0; ; attempt++) {
      try {
        const response = await fetch(host + "/widget/sites/" + encodeURIComponent(siteKey) + ".json", { credentials: "omit" });
        if (response.ok) return await response.json();
        if (response.status === 404) throw new Error("unknown site key " + siteKey);
      } catch (error) {
        // A page on an origin the site does not allow gets no CORS header: the fetch fails.
        if (attempt >= 2) throw error;
      }
      await new Promise((resolve) => setTimeout(resolve, 1000 * 3 ** attempt));
    }
  }

  window.addEventListener("online", () => socket || !config || connect());
  window.addEventListener("offline", () => setStatus("offline"));

  const publicApi = {
    version: 1,
    get ready() {
      return ready;
    },
    get status() {
      return status.dataset.key || "connecting";
    },
    get language() {
      return lang;
    },
    open,
    close,
    send,
    setLanguage,
    identify,
    addEventListener: (type, listener, options) => events.addEventListener(type, listener, options),
    removeEventListener: (type, listener, options) => events.removeEventListener(type, listener, options),
  };
  window.SupportChat = publicApi;

  (async () => {
    try {
      config = await fetchConfig();
    } catch (problem) {
      status.dataset.key = "unavailable";
      console.warn("SupportChat: not available on this page:", problem.message || problem);
      window.dispatchEvent(new CustomEvent("supportchat:unavailable"));
      return;
    }
    applyColours(root, config.colours && config.colours.primary);
    const pageLang = data.lang || document.documentElement.lang || navigator.language || config.default_language;
    await setLanguage(resolveLanguage(pageLang) ? pageLang : config.default_language);
    document.body.append(mount);
    ready = true;
    emit("ready", { language: lang, site: siteKey });
    window.dispatchEvent(new CustomEvent("supportchat:ready"));
    if (saved.open) open();
    else if (outbox.size) connect(); // messages typed before a reload are still owed an answer
  })();
})();
