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
