"""Cheap language guess for routing texts: which embedder reads a question, which fallback wording."""

import re

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_LETTER = re.compile(r"[^\W\d_]")


def detect_language(text: str) -> str:
    """'zh' when CJK characters make up a good share of the letters, else 'en'."""
    letters = len(_LETTER.findall(text))
    if not letters:
        return "en"
    return "zh" if len(_CJK.findall(text)) / letters >= 0.3 else "en"
