"""A site's opening hours, as admins write them: one line per day or range of days, e.g.

    Mon-Fri 09:00-17:30
    Sat 10:00-12:00, 13:00-16:00

in the site's time zone. Empty means always open. Outside them a customer who asks for a person is
told when agents are back and may leave an email."""

from __future__ import annotations

import datetime as dt
import re
import zoneinfo

DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
_LINE = re.compile(r"^\s*(?P<days>[A-Za-z][A-Za-z,\s\-]*?)\s+(?P<spans>\d.*)$")
_SPAN = re.compile(r"^(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})$")

Week = dict[int, list[tuple[dt.time, dt.time]]]  # weekday (Monday 0) -> spans, end exclusive


class OpeningHoursInvalid(ValueError):
    """Opening hours that cannot be read; the message names the line."""


def timezone_valid(name: str) -> bool:
    """Whether ``name`` is a time zone this machine knows (IANA, e.g. Europe/London)."""
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return False
    return True


def _day(name: str, line: str) -> int:
    key = name.strip().lower()[:3]
    if key not in DAYS or not name.strip().lower().startswith(key):
        raise OpeningHoursInvalid(f"{line!r}: {name.strip()!r} is not a day (Mon, Tue, … Sun)")
    return DAYS.index(key)


def _days(text: str, line: str) -> list[int]:
    days: list[int] = []
    for part in text.split(","):
        if "-" in part:
            first, last = (_day(name, line) for name in part.split("-", 1))
            span = list(range(first, last + 1)) if first <= last else [*range(first, 7), *range(0, last + 1)]
            days.extend(span)
        elif part.strip():
            days.append(_day(part, line))
    return days


def _span(text: str, line: str) -> tuple[dt.time, dt.time]:
    match = _SPAN.match(text.strip())
    if not match:
        raise OpeningHoursInvalid(f"{line!r}: {text.strip()!r} is not a span like 09:00-17:30")
    start_h, start_m, end_h, end_m = (int(group) for group in match.groups())
    if start_h > 23 or end_h > 24 or start_m > 59 or end_m > 59 or (end_h == 24 and end_m):
        raise OpeningHoursInvalid(f"{line!r}: {text.strip()!r} is not a time of day")
    start = dt.time(start_h, start_m)
    end = dt.time.max if end_h == 24 else dt.time(end_h, end_m)
    if end <= start:
        raise OpeningHoursInvalid(f"{line!r}: the span {text.strip()!r} ends before it starts")
    return start, end


def opening_hours_parse(text: str) -> Week | None:
    """The week the text describes; None when it is empty (always open). Raises
    :class:`OpeningHoursInvalid` naming the line that cannot be read."""
    week: Week = {}
    for line in (text or "").splitlines():
        if not line.strip():
            continue
        match = _LINE.match(line)
        if not match:
            raise OpeningHoursInvalid(f"{line.strip()!r}: write days, then spans, e.g. Mon-Fri 09:00-17:30")
        spans = [_span(span, line.strip()) for span in match["spans"].split(",")]
        for day in _days(match["days"], line.strip()):
            week.setdefault(day, []).extend(spans)
    return week or None


def is_open(*, hours: str, timezone: str, at: dt.datetime) -> bool:
    """Whether agents are there at ``at`` (an aware datetime) by these hours in ``timezone``.
    Unreadable hours count as always open: a typo must not turn customers away."""
    try:
        week = opening_hours_parse(hours)
        zone = zoneinfo.ZoneInfo(timezone or "UTC")
    except (OpeningHoursInvalid, zoneinfo.ZoneInfoNotFoundError, ValueError):
        return True
    if week is None:
        return True
    local = at.astimezone(zone)
    now = local.time()
    return any(
        start <= now < end or (end == dt.time.max and now >= start) for start, end in week.get(local.weekday(), [])
    )
