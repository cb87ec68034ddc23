"""Cheap language guess for routing texts: which embedder reads a question, which fallback wording."""

import re

from kb.text import han_count

_LETTER = re.compile(r"[^\W\d_]")


def detect_language(text: str) -> str:
    """'zh' when Han characters make up a good share of the letters, else 'en'."""
    letters = len(_LETTER.findall(text))
    if not letters:
        return "en"
    return "zh" if han_count(text) / letters >= 0.3 else "en"
