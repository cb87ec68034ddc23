"""The metrics dashboard's figures over a date range: conversations per day by outcome, who
answered (FAQ, LLM, a person), the resolution rate, thumbs and CSAT, first response times, and the
entries that answer most and that customers dislike most.

Resolution rate: the share of conversations the bot replied in that had no hand-off (offered or
asked for), no thumbs-down and no repeated question (the same customer words twice: the answer did
not help). CSAT: the share of ratings that are 4 or 5 stars."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date, timedelta

from django.db.models import Count, Exists, F, OuterRef, Q
from django.db.models.functions import Lower, TruncDate

from chatbot.models import Feedback, Message, Role, Source
from ops.selectors import (
    OUTCOMES,
    TranscriptFilter,
    agent_first_response_ms,
    conversations_matching,
    conversations_timed,
    first_response_ms,
    outcome_of,
)

TOP_ENTRIES = 10


def percentile(values: list[float], share: float) -> float | None:
    """The ``share`` percentile of ``values`` (nearest rank), None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


@dataclass(frozen=True)
class Dashboard:
    since: date
    until: date
    days: list[str]
    per_day: dict[str, list[int]]  # outcome -> conversations per day
    conversations: int
    answered_by: dict[str, int]  # "FAQ", "LLM", "a person" -> replies
    resolution_rate: float | None
    resolved: int
    replied: int
    thumbs_up: int
    thumbs_down: int
    ratings: int
    csat: float | None
    mean_rating: float | None
    bot_first_response_ms: dict[str, float | None]
    agent_first_response_ms: dict[str, float | None]
    top_hits: list[tuple[int, str, int]]
    top_thumbs_down: list[tuple[int, str, int]]


def dashboard(since: date, until: date) -> Dashboard:
    """The figures for conversations started from ``since`` to ``until`` (inclusive)."""
    matching = conversations_matching(TranscriptFilter(since=since, until=until))
    days = [since + timedelta(days=n) for n in range((until - since).days + 1)]
    index = {day: n for n, day in enumerate(days)}
    per_day = {label: [0] * len(days) for label in OUTCOMES.values()}
    response_times, agent_times, conversations = [], [], 0
    # Only what the figures read: the list's other annotations would cost a subquery each per row.
    timed = conversations_timed(matching.only("pk", "created_at", "outcome", "handoff_requested_at"))
    for conversation in timed.annotate(day=TruncDate("created_at")).iterator(2000):
        conversations += 1
        if conversation.day in index:
            per_day[OUTCOMES[outcome_of(conversation)]][index[conversation.day]] += 1
        response = first_response_ms(conversation)
        if response is not None:
            response_times.append(response)
        agent_response = agent_first_response_ms(conversation)
        if agent_response is not None:
            agent_times.append(agent_response)

    replies = Message.objects.filter(conversation__in=matching.values("pk"))
    by_source = dict(replies.filter(role=Role.BOT).values_list("source").annotate(n=Count("id")))
    answered_by = {
        "FAQ": by_source.get(Source.FAQ, 0),
        "LLM": by_source.get(Source.LLM, 0),
        "a person": replies.filter(role=Role.AGENT).count(),
    }

    bot = Message.objects.filter(conversation=OuterRef("pk"), role=Role.BOT)
    customer = Q(messages__role=Role.CUSTOMER)
    judged = matching.filter(Exists(bot)).annotate(
        asked=Count("messages", filter=customer, distinct=True),
        distinct_asked=Count(Lower("messages__text"), filter=customer, distinct=True),
        handed=Exists(bot.filter(source=Source.HANDOFF)),
        disliked=Exists(bot.filter(feedback__value="down")),
    )
    replied = judged.count()
    resolved = judged.filter(handed=False, disliked=False, asked=F("distinct_asked")).count()

    feedback = Feedback.objects.filter(message__conversation__in=matching.values("pk"))
    ratings = list(matching.exclude(rating=None).values_list("rating", flat=True))
    hits = (
        replies.filter(role=Role.BOT, source=Source.FAQ, entry__isnull=False)
        .values("entry_id", "entry__question")
        .annotate(n=Count("id"))
        .order_by("-n")[:TOP_ENTRIES]
    )
    disliked = (
        feedback.filter(value="down", message__entry__isnull=False)
        .values("message__entry_id", "message__entry__question")
        .annotate(n=Count("id"))
        .order_by("-n")[:TOP_ENTRIES]
    )
    return Dashboard(
        since=since,
        until=until,
        days=[day.isoformat() for day in days],
        per_day=per_day,
        conversations=conversations,
        answered_by=answered_by,
        resolution_rate=resolved / replied if replied else None,
        resolved=resolved,
        replied=replied,
        thumbs_up=feedback.filter(value="up").count(),
        thumbs_down=feedback.filter(value="down").count(),
        ratings=len(ratings),
        csat=sum(1 for r in ratings if r >= 4) / len(ratings) if ratings else None,
        mean_rating=sum(ratings) / len(ratings) if ratings else None,
        bot_first_response_ms={"p50": percentile(response_times, 0.5), "p95": percentile(response_times, 0.95)},
        agent_first_response_ms={"p50": percentile(agent_times, 0.5), "p95": percentile(agent_times, 0.95)},
        top_hits=[(row["entry_id"], row["entry__question"], row["n"]) for row in hits],
        top_thumbs_down=[(row["message__entry_id"], row["message__entry__question"], row["n"]) for row in disliked],
    )
