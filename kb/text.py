"""Text rules that every part of the product applies the same way: whitespace normalisation, the
key two texts are compared by, and which characters count as Chinese/Japanese script."""

from __future__ import annotations

import re

# Han ideographs: CJK Unified Ideographs, Extension A and the compatibility block. Chinese text is
# made of these; they route a question to the multilingual embedder, to jieba for keywords, and to
# the Chinese cues.
HAN_CHARS = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
# Hiragana and katakana: like Han, written without spaces, so each character is a word of its own
# wherever words are counted (the LLM output guard).
KANA_CHARS = "\u3040-\u30ff"
CJK_CHARS = KANA_CHARS + HAN_CHARS

HAN_RE = re.compile(f"[{HAN_CHARS}]")
CJK_RE = re.compile(f"[{CJK_CHARS}]")


def text_normalise(text: str | None) -> str:
    """The text as stored and compared: runs of whitespace (newlines, tabs, full-width spaces)
    become one space, none at either end."""
    return " ".join((text or "").split())


def text_key(text: str | None) -> str:
    """What two texts are matched by when case must not matter (an import's rows against entries,
    a labelled question against entry questions)."""
    return text_normalise(text).casefold()


def han_count(text: str) -> int:
    """How many Han ideographs ``text`` holds."""
    return len(HAN_RE.findall(text))


# Characters a person never means to send and that break storage or display: C0/C1 controls but
# tab and newline (NUL is refused by PostgreSQL), bidirectional overrides and isolates (they reorder
# what an agent reads), zero-width characters and the BOM, and lone surrogates (JSON escapes can
# produce them; no database can store them).
_UNWANTED_RE = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200d\u2060\ufeff\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)


def text_sanitise(text: str) -> str:
    """``text`` without the characters a customer or an import never means (see above); carriage
    returns become newlines."""
    return _UNWANTED_RE.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))


def text_clean(text: str | None, *, multiline: bool = False) -> str:
    """A knowledge-base text as it is stored, whoever writes it (API, admin, import): without the
    unwanted characters (:func:`text_sanitise`), then a one-line text (question, phrasing, category)
    normalised (:func:`text_normalise`), a multi-line one (an answer) only stripped at both ends."""
    text = text_sanitise(text or "")
    return text.strip() if multiline else text_normalise(text)


def has_unwanted_characters(text: str) -> bool:
    """Whether :func:`text_sanitise` would change ``text`` (for identifiers, which are refused
    rather than silently changed)."""
    return _UNWANTED_RE.search(text) is not None or "\r" in text
