"""Contact details in text (emails, web addresses, phone numbers), normalised so that the same
contact written two ways compares equal.

An LLM reply may only pass on contact details that the FAQ entries it was given contain (or that
CHATBOT_CONTACT_ALLOWLIST names): a small model invents phone numbers and URLs with confidence, and a
poisoned entry may try to send customers elsewhere. The detection is deliberately loose (any run of 7+
digits reads as a phone number): a false alarm costs a hand-off offer, a miss sends a customer to a
made-up number.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

# Email addresses: plain, with a full-width at, or written to dodge filters with bracketed at and dot
# ("jane (at) example [dot] com").
_AT = r"(?:[@＠]|\s*[\(\[{<]\s*at\s*[\)\]}>]\s*)"
_DOT = r"(?:\.|\s*[\(\[{<]\s*dot\s*[\)\]}>]\s*)"
_EMAIL = re.compile(
    rf"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]+{_AT}[A-Za-z0-9-]+(?:{_DOT}[A-Za-z0-9-]+)*{_DOT}[A-Za-z]{{2,63}}\b",
    re.IGNORECASE,
)


def email_spans(text: str) -> list[tuple[int, int]]:
    """Where the email addresses in ``text`` are."""
    return [match.span() for match in _EMAIL.finditer(text)]


# Web addresses: with a scheme or "www.", or a bare host name ending in a common or two-letter
# top-level domain (so "e.g." or "3.5" never match).
_URL = re.compile(
    r"(?i)(?<![\w@.-])(?:https?://|www\.)[^\s<>\"'()\[\]{}，。、；！？]+"
    r"|(?<![\w@.-])(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+"
    r"(?:com|net|org|info|biz|io|co|app|dev|shop|store|online|site|help|support|example|[a-z]{2})"
    r"(?![\w-])(?:/[^\s<>\"'()\[\]{}，。、；！？]*)?"
)
# Phone numbers: 7 or more digits, maybe grouped by spaces, dashes, dots or brackets, maybe with a "+".
# Bounded by ASCII letters and digits only: Chinese text runs straight into the number.
_PHONE = re.compile(r"(?<![A-Za-z0-9.])\+?\(?\d[\d\s().-]{5,}\d(?![A-Za-z0-9])")
_TRAILING_PUNCTUATION = ".,;:!?)]}'\""


@dataclass(frozen=True)
class Contact:
    """One contact detail: its kind, its normalised value, and the text it was read from."""

    kind: str  # "email" | "url" | "phone"
    value: str
    text: str


def contacts_find(text: str) -> list[Contact]:
    """Every email, web address and phone number in ``text`` (full-width characters read as ASCII)."""
    text = unicodedata.normalize("NFKC", text)
    found: list[Contact] = []
    taken: list[tuple[int, int]] = []
    for start, end in email_spans(text):
        raw = text[start:end]
        found.append(Contact("email", _email_value(raw), raw))
        taken.append((start, end))
    for match in _URL.finditer(text):
        if _overlaps(match.span(), taken):
            continue
        raw = match.group(0).rstrip(_TRAILING_PUNCTUATION)
        found.append(Contact("url", _url_host(raw), raw))
        taken.append(match.span())
    for match in _PHONE.finditer(text):
        digits = re.sub(r"\D", "", match.group(0))
        if len(digits) < 7 or _overlaps(match.span(), taken):
            continue
        found.append(Contact("phone", digits, match.group(0)))
    return found


def contacts_not_allowed(text: str, allowed_sources: Iterable[str]) -> list[Contact]:
    """The contact details in ``text`` that none of ``allowed_sources`` (texts: the FAQ entries, the
    allow-list) contains. Web addresses are allowed by host, phone numbers by their last 7+ digits
    (a country code or trunk prefix may be added or left out)."""
    return contacts_outside(text, contacts_allowed(allowed_sources))


def contacts_allowed(sources: Iterable[str]) -> list[Contact]:
    """The contact details the texts ``sources`` give (read once, checked against many times)."""
    return [contact for source in sources for contact in contacts_find(source)]


def contacts_outside(text: str, allowed: list[Contact]) -> list[Contact]:
    """The contact details in ``text`` that are none of ``allowed`` (see :func:`contacts_not_allowed`)."""
    return [contact for contact in contacts_find(text) if not any(_same(contact, other) for other in allowed)]


def _same(contact: Contact, other: Contact) -> bool:
    if contact.kind != other.kind:
        return False
    if contact.kind == "phone":
        # National "020 7946 0958" and international "+44 20 7946 0958" are one number.
        shorter, longer = sorted((contact.value.lstrip("0"), other.value.lstrip("0")), key=len)
        return len(shorter) >= 7 and longer.endswith(shorter)
    if contact.kind == "url":
        return contact.value == other.value or contact.value.endswith("." + other.value)
    return contact.value == other.value


def _email_value(raw: str) -> str:
    # Obfuscated forms ("jane (at) example [dot] com") compare equal to the plain one.
    value = re.sub(r"\s*[\(\[{<]\s*at\s*[\)\]}>]\s*", "@", raw, flags=re.IGNORECASE)
    value = re.sub(r"\s*[\(\[{<]\s*dot\s*[\)\]}>]\s*", ".", value, flags=re.IGNORECASE)
    return value.replace("＠", "@").casefold()


def _url_host(raw: str) -> str:
    host = re.sub(r"(?i)^https?://", "", raw).split("/", 1)[0].split(":", 1)[0].casefold()
    return host.removeprefix("www.")


def _overlaps(span: tuple[int, int], taken: list[tuple[int, int]]) -> bool:
    return any(span[0] < end and start < span[1] for start, end in taken)
