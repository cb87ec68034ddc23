"""What a customer's words say before any retrieval: asking for a person, or following up on the
previous answer. Cheap patterns in English and Chinese; they only steer, retrieval still decides."""

from __future__ import annotations

import re

from kb.text import han_count

_PERSON_EN = re.compile(
    r"\b(?:"
    r"(?:talk|speak|chat)\s+(?:to|with)\s+(?:a\s+|an\s+|some\s*one\s*|some\s*body\s*|your\s+|the\s+)?"
    r"(?:real\s+|live\s+|actual\s+)?(?:human|person|people|agent|representative|rep|operator|staff|someone|somebody"
    r"|customer\s+service|support)"
    r"|(?:human|live|real)\s+(?:agent|person|support|help|being)"
    r"|(?:connect|transfer|put)\s+me\s+(?:to|through|with)"
    r"|(?:need|want)\s+(?:a|to\s+talk\s+to\s+a)\s+(?:human|person|agent)"
    r"|customer\s+service\s+(?:agent|representative)"
    r")\b",
    re.IGNORECASE,
)
_PERSON_ALONE_EN = re.compile(r"^\s*(?:human|agent|representative|operator|a\s+person)\s*[.!?]*\s*$", re.IGNORECASE)
_PERSON_ZH = re.compile(r"人工|真人|转接客服|找客服|联系客服|客服人员|在线客服|接客服|活人")

_FOLLOW_UP_START_EN = re.compile(
    r"^\s*(?:and|but|also|so|then|what\s+about|how\s+about|what\s+if|and\s+if|is\s+that|does\s+that|is\s+it|does\s+it"
    r"|can\s+it|will\s+it|same\s+for)\b",
    re.IGNORECASE,
)
_FOLLOW_UP_WORD_EN = re.compile(r"\b(?:it|that|this|those|these|they|them|there|one|ones)\b", re.IGNORECASE)
_FOLLOW_UP_ZH = re.compile(r"^(?:那|那么|还有|另外|这个|那个|它)|(?:呢|那个|这个|它)[？?。！!]*$")
_WORD = re.compile(r"[^\W_]+")

MAX_FOLLOW_UP_WORDS = 8
MAX_FOLLOW_UP_CJK = 12


def asks_for_person(text: str) -> bool:
    """True when the customer asks to talk to a human (English or Chinese)."""
    return bool(_PERSON_EN.search(text) or _PERSON_ALONE_EN.match(text) or _PERSON_ZH.search(text))


def looks_like_follow_up(text: str) -> bool:
    """True for a short message that leans on the previous turn ("and how long does that take?",
    "那运费谁出？"): short, and opening with a connective or pointing back with a pronoun. A full
    question that names its own topic is left alone."""
    cjk = han_count(text)
    if cjk:
        return cjk <= MAX_FOLLOW_UP_CJK and bool(_FOLLOW_UP_ZH.search(text.strip()))
    if len(_WORD.findall(text)) > MAX_FOLLOW_UP_WORDS:
        return False
    return bool(_FOLLOW_UP_START_EN.search(text) or _FOLLOW_UP_WORD_EN.search(text))
