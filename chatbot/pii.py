"""PII redaction for customer chat messages: `pii_redact` and the `Redaction` it returns.

Messages are redacted before they are sent to an LLM and (by default) before they are stored.
Four kinds are detected, in this order, each replaced by a short language-neutral placeholder:

* ``email`` -> ``[email]``: the usual ``local@domain.tld`` forms (plus-addressing, subdomains, any case,
  a full-width ＠), and ones written to dodge filters with a bracketed at and dot
  (``jane(at)example.com``, ``jane [at] example [dot] com``, ``jane at example dot com``).
* ``card``  -> ``[card]``:  13-19 digit payment card numbers, contiguous or grouped by spaces or dashes
  (or dots) the way cards print them (fours with a shorter last group, e.g. 4-4-4-4 or 4-4-4-4-3; Amex 4-6-5;
  Diners 4-6-4), accepted only when the Luhn checksum holds.
* ``id``    -> ``[id]``:    Chinese resident ID numbers (18 characters with the ISO 7064 MOD 11-2 check
  character and a plausible birth date; the old 15-digit form with a plausible date) and US SSNs
  written ``123-45-6789``.
* ``phone`` -> ``[phone]``: whatever ``phonenumbers.PhoneNumberMatcher`` finds as a valid number,
  read as Chinese ("CN") and as US ("US") text: numbers with a ``+`` or ``00`` prefix, US national
  formats, Chinese mobiles and landlines with an area code, also inside Chinese text without spaces.

The order matters: cards and IDs are long digit runs that the phone matcher could partly eat, so they
are replaced first, and each later detector runs on text where earlier spans are already placeholders
(which hold no digits and no ``@``, so nothing can match inside them).

Everything here is linear in the length of the message: the regexes have no nested unbounded
quantifiers and start only at the boundary of a run, and the card search over digit groups is bounded
by the 19-digit maximum.

Known limits, chosen to keep answers useful: a bare number that is a valid phone number is redacted
even when it is an order number ("order 4155552671"); a phone number glued by "-", "_" or "/" to a
Latin letter ("Tel-13812345678") is taken for a reference code and kept. Digits (and an ID's check
letter X) are read alike in ASCII and in full width (``４１１１…``, common in Chinese text).
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import phonenumbers

PLACEHOLDERS = {"email": "[email]", "phone": "[phone]", "card": "[card]", "id": "[id]"}

# Regions the phone matcher reads national numbers as; numbers with a "+" prefix are found whatever the
# region. "CN" also makes "00" an international prefix ("0044 20 7946 0958"), which "US" (011) does not.
PHONE_REGIONS = ("CN", "US")

Span = tuple[int, int]  # start and end offsets, as in re.Match.span()
Detector = Callable[[str], list[Span]]

# --- emails -----------------------------------------------------------------------------------------
# The lookbehind makes a match start only at the beginning of a run of address characters, so a long
# run without "@" is scanned once rather than once per position. The domain is one flat character
# class and is checked label by label in Python, instead of a nested (label\.)+ group.
_EMAIL_CANDIDATE = re.compile(r"(?<![A-Za-z0-9._%+-])([A-Za-z0-9._%+-]+)[@＠]([A-Za-z0-9.-]+)")


def _bracketed(word: str) -> str:
    return r"\s*[\(\[{<]\s*" + word + r"\s*[\)\]}>]\s*"


# Addresses written to dodge filters: "jane(at)example.com", "jane [at] example [dot] com". Only
# bracketed "at"/"dot" (a bare "at" is ordinary English). Each repetition must consume a separator,
# so matching stays linear.
_OBFUSCATED_EMAIL = re.compile(
    r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]+"
    + _bracketed("at")
    + r"[A-Za-z0-9-]+(?:(?:\.|"
    + _bracketed("dot")
    + r")[A-Za-z0-9-]+)+",
    re.IGNORECASE,
)
# ... and with plain words, "jane at example dot com": only with at least one " dot " after the
# " at ", so that "meet me at noon" or "look at example.com" are not addresses.
_WORDED_EMAIL = re.compile(
    r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]+\s+at\s+[A-Za-z0-9-]+(?:\s+dot\s+[A-Za-z0-9-]+)+(?![A-Za-z0-9-])",
    re.IGNORECASE,
)
_WORDED_DOT = re.compile(r"\s+dot\s+", re.IGNORECASE)
_BRACKETED_DOT = re.compile(_bracketed("dot"), re.IGNORECASE)
_BRACKETED_AT = re.compile(_bracketed("at"), re.IGNORECASE)
_DOMAIN_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_TOP_LEVEL_DOMAIN = re.compile(r"[A-Za-z]{2,63}")

# --- cards ------------------------------------------------------------------------------------------
_DIGIT_RUN = re.compile(r"[0-9]+")
_CARD_GROUP_SEPARATORS = " -."  # "4111.1111.1111.1111" too
_CARD_MIN_DIGITS, _CARD_MAX_DIGITS = 13, 19
# Grouped card numbers as printed on cards and typed by people; any other grouping of 13-19 digits
# (a phone number with its country code, a date followed by numbers) is not read as a card.
_CARD_GROUPINGS_FIXED = {(4, 6, 5), (4, 6, 4)}

# --- identity numbers -------------------------------------------------------------------------------
# Chinese resident IDs start with a region code whose first digit is 1-8. The check character X is
# accepted only when no Latin letter follows, so it is not the first letter of a word. Digits after
# "+" are a phone number with its country code ("+435957720806492").
_CN_ID_18 = re.compile(r"(?<![0-9+])[1-8][0-9]{16}(?:[0-9]|[Xx](?![A-Za-z]))(?![0-9])")
_CN_ID_15 = re.compile(r"(?<![0-9+])[1-8][0-9]{14}(?![0-9])")
_CN_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_CN_ID_CHECK_CHARACTERS = "10X98765432"  # indexed by the weighted sum mod 11 (ISO 7064 MOD 11-2)
_EARLIEST_BIRTH_YEAR = 1900
# Area 000, 666 and 900-999, group 00 and serial 0000 are never issued. The lookarounds keep a
# longer dashed code (a part number, a date range) from being read as an SSN.
_US_SSN = re.compile(r"(?<![0-9+])(?<![0-9]-)(?!000|666|9)[0-9]{3}-(?!00)[0-9]{2}-(?!0000)[0-9]{4}(?!-?[0-9])")

# --- phones -----------------------------------------------------------------------------------------
# Characters that glue a number into a reference code when a letter is on their other side
# ("INV-2026-000123", "ABC/4155552671"); between two numbers they are a list ("13812345678/13912345678").
_CODE_JOINERS = "-_/"


@dataclass(frozen=True)
class Redaction:
    """The result of `pii_redact`."""

    text: str  # the text with every PII span replaced by a placeholder
    found: dict[str, int]  # kind -> how many spans were replaced, e.g. {"email": 1, "card": 1}


def pii_redact(text: str) -> Redaction:
    """Replace every email, card number, ID number and phone number in `text` by its placeholder.

    Never raises on a string. Text without PII comes back as the very same string with ``found == {}``.
    Redacting the result again changes nothing: the detectors are rerun until a pass finds nothing,
    because a replaced span can set apart PII that was glued to it ("11010519491231002X11010519491231002X"
    holds two IDs, but the first is followed by a digit until the second is replaced). Every pass
    replaces at least one digit or "@" and adds none, so this ends; it is one extra pass in practice.
    """
    found: dict[str, int] = {}
    current = text
    while True:
        current, found_in_pass = _redact_pass(current)
        if not found_in_pass:
            break
        for kind, count in found_in_pass.items():
            found[kind] = found.get(kind, 0) + count
    # No pass replaced anything when nothing was found, so `current` is then `text` itself.
    return Redaction(text=current, found=found)


# Full-width digits (common in Chinese text, "１３８１２３４５６７８") read as ASCII ones. One character for
# one, so spans found in the translated text are spans of the original.
_FULL_WIDTH_DIGITS = str.maketrans("０１２３４５６７８９Ｘｘ", "0123456789Xx")


def _redact_pass(text: str) -> tuple[str, dict[str, int]]:
    """Run every detector once, in priority order, each on the output of the one before."""
    found: dict[str, int] = {}
    for kind, detect in _DETECTORS:
        spans = detect(text.translate(_FULL_WIDTH_DIGITS))
        if spans:
            text = _replace_spans(text, spans, PLACEHOLDERS[kind])
            found[kind] = found.get(kind, 0) + len(spans)
    return text, found


def _replace_spans(text: str, spans: list[Span], placeholder: str) -> str:
    """Replace the given sorted, non-overlapping spans of `text` by `placeholder`."""
    pieces = []
    position = 0
    for start, end in spans:
        pieces.append(text[position:start])
        pieces.append(placeholder)
        position = end
    pieces.append(text[position:])
    return "".join(pieces)


# --- emails -----------------------------------------------------------------------------------------


def _email_spans(text: str) -> list[Span]:
    spans = []
    for match in _EMAIL_CANDIDATE.finditer(text):
        local, domain = match.group(1), match.group(2)
        # A sentence may end right after the address ("write to a@b.com."), and dots before the local
        # part are punctuation, not part of the address.
        local_start = match.start(1) + len(local) - len(local.lstrip("."))
        domain = domain.rstrip(".-")
        if local_start < match.end(1) and _is_email_domain(domain):
            spans.append((local_start, match.start(2) + len(domain)))
    for match in _OBFUSCATED_EMAIL.finditer(text):
        local, domain = _BRACKETED_AT.split(match.group(0), maxsplit=1)
        if local.strip(".") and _is_email_domain(_BRACKETED_DOT.sub(".", domain)):
            spans.append(match.span())
    for match in _WORDED_EMAIL.finditer(text):
        local, domain = re.split(r"\s+at\s+", match.group(0), maxsplit=1, flags=re.IGNORECASE)
        if local.strip(".") and _is_email_domain(_WORDED_DOT.sub(".", domain)):
            spans.append(match.span())
    kept: list[Span] = []
    for span in sorted(spans):  # the two forms may overlap in a contrived address: keep the first
        if not kept or span[0] >= kept[-1][1]:
            kept.append(span)
    return kept


def _is_email_domain(domain: str) -> bool:
    labels = domain.split(".")
    if len(labels) < 2:
        return False
    return all(_DOMAIN_LABEL.fullmatch(label) for label in labels) and bool(_TOP_LEVEL_DOMAIN.fullmatch(labels[-1]))


# --- cards ------------------------------------------------------------------------------------------


def _card_spans(text: str) -> list[Span]:
    spans = []
    for chain in _digit_group_chains(text):
        spans.extend(_cards_in_chain(text, chain))
    return spans


def _digit_group_chains(text: str) -> Iterator[list[re.Match[str]]]:
    """Yield maximal sequences of digit runs joined by exactly one space or dash ("4111 1111 ...")."""
    chain: list[re.Match[str]] = []
    for run in _DIGIT_RUN.finditer(text):
        if chain and run.start() == chain[-1].end() + 1 and text[chain[-1].end()] in _CARD_GROUP_SEPARATORS:
            chain.append(run)
            continue
        if chain:
            yield chain
        chain = [run]
    if chain:
        yield chain


def _cards_in_chain(text: str, chain: list[re.Match[str]]) -> Iterator[Span]:
    """Yield card spans made of consecutive groups of `chain`, leftmost first, longest at each start.

    A card may share a chain with other numbers ("qty 2 4111 1111 1111 1111"), so every start group
    is tried; a candidate never exceeds 19 digits, so this is linear in the number of groups.
    """
    first = 0
    while first < len(chain):
        best_last = None
        digit_count = 0
        for last in range(first, len(chain)):
            digit_count += len(chain[last].group())
            if digit_count > _CARD_MAX_DIGITS:
                break
            if digit_count >= _CARD_MIN_DIGITS and _is_card(text, chain[first : last + 1]):
                best_last = last
        if best_last is None:
            first += 1
        else:
            yield chain[first].start(), chain[best_last].end()
            first = best_last + 1


def _is_card(text: str, groups: list[re.Match[str]]) -> bool:
    digits = "".join(group.group() for group in groups)
    start, end = groups[0].start(), groups[-1].end()
    # No issued card starts with 0, and "+" starts a phone number with its country code.
    if digits[0] == "0" or (start > 0 and text[start - 1] == "+"):
        return False
    if not _is_card_grouping(groups) or not _luhn_valid(digits):
        return False
    # An 18-character resident ID can pass Luhn by chance (1 in 10); its own checksum and birth date
    # are far stronger evidence, so it is left for the ID detector.
    if len(digits) == 18 and _is_cn_resident_id_18(digits):
        return False
    check_character = text[end : end + 1]
    return not (len(digits) == 17 and check_character in ("X", "x") and _is_cn_resident_id_18(digits + "X"))


def _is_card_grouping(groups: list[re.Match[str]]) -> bool:
    """Whether the groups are one run of digits, fours with a shorter last group, or Amex/Diners 4-6-x."""
    lengths = tuple(len(group.group()) for group in groups)
    if len(lengths) == 1 or lengths in _CARD_GROUPINGS_FIXED:
        return True
    return all(length == 4 for length in lengths[:-1]) and lengths[-1] <= 4


def _luhn_valid(digits: str) -> bool:
    total = 0
    for position, character in enumerate(reversed(digits)):
        value = int(character)
        if position % 2 == 1:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


# --- identity numbers -------------------------------------------------------------------------------


def _id_spans(text: str) -> list[Span]:
    spans = [match.span() for match in _CN_ID_18.finditer(text) if _is_cn_resident_id_18(match.group())]
    spans += [match.span() for match in _CN_ID_15.finditer(text) if _is_cn_resident_id_15(match.group())]
    spans += [match.span() for match in _US_SSN.finditer(text)]
    # The three patterns need different lengths of digits with non-digits around them, so their
    # matches never overlap; they only need to be put back in text order.
    return sorted(spans)


def _is_cn_resident_id_18(value: str) -> bool:
    """Whether `value` (17 digits + check character) has a valid checksum and a plausible birth date."""
    if len(value) != 18 or not value[:17].isascii() or not value[:17].isdigit():
        return False
    weighted_sum = sum(int(digit) * weight for digit, weight in zip(value[:17], _CN_ID_WEIGHTS, strict=True))
    if value[17].upper() != _CN_ID_CHECK_CHARACTERS[weighted_sum % 11]:
        return False
    return _is_plausible_birth_date(value[6:14])


def _is_cn_resident_id_15(value: str) -> bool:
    """Whether `value` (the pre-1999 15-digit form, no checksum) holds a plausible birth date 19YYMMDD."""
    return _is_plausible_birth_date("19" + value[6:12])


def _is_plausible_birth_date(yyyymmdd: str) -> bool:
    try:
        birth = datetime.date(int(yyyymmdd[:4]), int(yyyymmdd[4:6]), int(yyyymmdd[6:8]))
    except ValueError:
        return False
    return _EARLIEST_BIRTH_YEAR <= birth.year and birth <= datetime.date.today()


# --- phones -----------------------------------------------------------------------------------------


def _phone_spans(text: str) -> list[Span]:
    """Spans of valid phone numbers found by reading `text` as each of `PHONE_REGIONS`.

    The regions disagree at the edges ("1 (415) 555-2671" is one number for "US" but only from the
    parenthesis for "CN"), so all matches are pooled and the longest is kept where they overlap.
    """
    candidates: set[Span] = set()
    for region in PHONE_REGIONS:
        for match in phonenumbers.PhoneNumberMatcher(text, region, leniency=phonenumbers.Leniency.VALID):
            if not _is_part_of_reference_code(text, match.start, match.end):
                candidates.add((match.start, match.end))
    spans: list[Span] = []
    for start, end in sorted(candidates, key=lambda span: (span[0], -span[1])):
        if not spans or start >= spans[-1][1]:
            spans.append((start, end))
    return spans


def _is_part_of_reference_code(text: str, start: int, end: int) -> bool:
    """Whether the number is an order or ticket reference rather than a phone number.

    "#4155552671" is how people write an order number, and "INV-2026-000123" is a code whose digits
    the matcher would otherwise take for a Chinese landline.
    """
    before = text[max(start - 2, 0) : start]
    after = text[end : end + 2]
    if before.endswith("#"):
        return True
    glued_before = len(before) == 2 and before[1] in _CODE_JOINERS and _is_ascii_letter(before[0])
    glued_after = len(after) == 2 and after[0] in _CODE_JOINERS and _is_ascii_letter(after[1])
    return glued_before or glued_after


def _is_ascii_letter(character: str) -> bool:
    return character.isascii() and character.isalpha()


_DETECTORS: tuple[tuple[str, Detector], ...] = (
    ("email", _email_spans),
    ("card", _card_spans),
    ("id", _id_spans),
    ("phone", _phone_spans),
)
