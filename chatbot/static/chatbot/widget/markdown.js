// Safe Markdown for bot answers: paragraphs, line breaks, "-"/"*" and "1." lists, **bold**,
// *italic*/_italic_, `code` and links. Everything is built as DOM nodes with text nodes for the
// text, so no answer (the FAQ is edited by people, the LLM says what it likes) can inject HTML.
// Links are kept only for http:, https: and mailto: and open in a new tab with rel=noopener.
(function () {
  "use strict";
  const parts = (window[Symbol.for("supportchat.parts")] ||= {});
  const SAFE_PROTOCOLS = new Set(["http:", "https:", "mailto:"]);
  // One alternative per inline form; the first that matches earliest wins.
  const INLINE = /\*\*(.+?)\*\*|__(.+?)__|\*([^*\s](?:[^*]*[^*\s])?)\*|(?<![\w])_([^_\s](?:[^_]*[^_\s])?)_(?![\w])|`([^`]+)`|\[([^\]]+)\]\(([^)\s]+)\)|(https?:\/\/[^\s<>()]+[^\s<>().,;:!?'"])/;
  const LIST_ITEM = /^\s*(?:([-*+])|(\d{1,3})[.)])\s+(.*)$/;

  function safeUrl(href) {
    try {
      const url = new URL(href);
      return SAFE_PROTOCOLS.has(url.protocol) ? url.href : null;
    } catch (_error) {
      return null;
    }
  }

  function link(href, label, depth) {
    const url = safeUrl(href);
    if (!url) return document.createTextNode(label === href ? href : label + " (" + href + ")");
    const a = document.createElement("a");
    a.href = url;
    a.target = "_blank";
    a.rel = "noopener noreferrer nofollow";
    if (label === href) a.textContent = label;
    else inline(a, label, depth + 1);
    return a;
  }

  function wrap(tag, text, depth) {
    const element = document.createElement(tag);
    if (tag === "code") element.textContent = text;
    else inline(element, text, depth + 1);
    return element;
  }

  // Appends ``text``'s inline Markdown to ``parent``; newlines become <br>.
  function inline(parent, text, depth = 0) {
    while (text) {
      const match = depth < 4 ? INLINE.exec(text) : null;
      const plain = match ? text.slice(0, match.index) : text;
      plain.split("\n").forEach((line, index) => {
        if (index) parent.appendChild(document.createElement("br"));
        if (line) parent.appendChild(document.createTextNode(line));
      });
      if (!match) return;
      const [whole, bold1, bold2, em1, em2, code, label, href, bare] = match;
      if (bold1 || bold2) parent.appendChild(wrap("strong", bold1 || bold2, depth));
      else if (em1 || em2) parent.appendChild(wrap("em", em1 || em2, depth));
      else if (code) parent.appendChild(wrap("code", code, depth));
      else if (label) parent.appendChild(link(href, label, depth));
      else parent.appendChild(link(bare, bare, depth));
      text = text.slice(match.index + whole.length);
    }
  }

  // A DocumentFragment of ``source`` rendered: blocks split on blank lines, list runs become lists.
  function render(source) {
    const fragment = document.createDocumentFragment();
    const lines = String(source || "").replace(/\r\n?/g, "\n").split("\n");
    let paragraph = [];
    let list = null;
    const flushParagraph = () => {
      if (paragraph.length) {
        const p = document.createElement("p");
        inline(p, paragraph.join("\n"));
        fragment.appendChild(p);
      }
      paragraph = [];
    };
    for (const line of lines) {
      const item = LIST_ITEM.exec(line);
      if (item) {
        flushParagraph();
        const tag = item[1] ? "ul" : "ol";
        if (!list || list.tagName.toLowerCase() !== tag) {
          list = document.createElement(tag);
          if (tag === "ol" && item[2] !== "1") list.start = Number(item[2]);
          fragment.appendChild(list);
        }
        const li = document.createElement("li");
        inline(li, item[3]);
        list.appendChild(li);
      } else if (!line.trim()) {
        flushParagraph();
        list = null;
      } else {
        list = null;
        paragraph.push(line);
      }
    }
    flushParagraph();
    return fragment;
  }

  parts.markdown = { render, safeUrl };
})();
