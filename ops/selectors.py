"""Transcripts as ops read them: conversations with what happened in them (outcome, language,
thumbs, first response time), filtered, and a conversation's turns with their traces."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta

from django.db.models import Count, Exists, F, OuterRef, QuerySet, Subquery, Value
from django.db.models.fields.json import KeyTextTransform
from django.db.models.functions import Coalesce
from django.utils import timezone

from chatbot.models import Conversation, Message, Outcome, Role

# What happened in a conversation, most telling first: the label of one that had several.
HANDED_OFF = "handed_off"  # the customer asked for a person (or is with one)
UNANSWERED = "unanswered"  # a question got neither an FAQ nor an LLM answer: the hand-off was offered
LLM = "llm"  # some answer came from the LLM
FAQ = "faq"  # every answer came from the FAQ
NO_REPLY = "none"  # the bot never replied
OUTCOMES = {
    HANDED_OFF: "handed off",
    UNANSWERED: "unanswered",
    LLM: "LLM",
    FAQ: "FAQ",
    NO_REPLY: "no reply",
}
# The console's names for the values of Conversation.outcome (kept as replies are stored).
OUTCOME_VALUES = {
    HANDED_OFF: Outcome.HANDED_OFF,
    UNANSWERED: Outcome.UNANSWERED,
    LLM: Outcome.LLM,
    FAQ: Outcome.FAQ,
    NO_REPLY: Outcome.NONE,
}
_OUTCOME_NAMES = {value: name for name, value in OUTCOME_VALUES.items()}


def _bot(**filters) -> QuerySet:
    return Message.objects.filter(conversation=OuterRef("pk"), role=Role.BOT, **filters)


def _count(queryset: QuerySet) -> Coalesce:
    # A correlated COUNT, evaluated only for the rows a page shows: an aggregate over a join would
    # group every matching conversation before ORDER BY ... LIMIT could cut them to a page.
    counted = queryset.order_by().values("conversation").annotate(n=Count("pk")).values("n")
    return Coalesce(Subquery(counted[:1]), Value(0))


def conversations_annotated(queryset: QuerySet | None = None) -> QuerySet:
    """Conversations with ``n_messages``, ``thumbs_up``/``thumbs_down``, ``language`` (of the first
    reply) and the response times' annotations (:func:`conversations_timed`). Every one is a
    subquery of its own row, so a page of 50 costs 50 rows' worth, however many match."""
    queryset = queryset if queryset is not None else Conversation.objects.all()
    first_reply = _bot().order_by("created_at", "id")
    messages = Message.objects.filter(conversation=OuterRef("pk"))
    return conversations_timed(queryset.select_related("site", "agent")).annotate(
        n_messages=_count(messages),
        thumbs_up=_count(_bot(feedback__value="up")),
        thumbs_down=_count(_bot(feedback__value="down")),
        language=Subquery(first_reply.annotate(lang=KeyTextTransform("language", "decision")).values("lang")[:1]),
    )


def conversations_timed(queryset: QuerySet) -> QuerySet:
    """Conversations with what their first response times are read from (:func:`first_response_ms`,
    :func:`agent_first_response_ms`): ``first_question_at``, ``first_reply_at``, ``first_reply_ms``
    and ``agent_first_reply_at`` (the first message of a person)."""
    first_reply = _bot().order_by("created_at", "id")
    messages = Message.objects.filter(conversation=OuterRef("pk"))
    first_question = messages.filter(role=Role.CUSTOMER).order_by("created_at", "id")
    return queryset.annotate(
        first_question_at=Subquery(first_question.values("created_at")[:1]),
        first_reply_at=Subquery(first_reply.values("created_at")[:1]),
        first_reply_ms=Subquery(first_reply.annotate(ms=KeyTextTransform("total", "timings_ms")).values("ms")[:1]),
        agent_first_reply_at=Subquery(
            messages.filter(role=Role.AGENT).order_by("created_at", "id").values("created_at")[:1]
        ),
    )


def outcome_of(conversation) -> str:
    """The outcome's name (a key of OUTCOMES) of a conversation."""
    return _OUTCOME_NAMES.get(conversation.outcome, NO_REPLY)


def first_response_ms(conversation) -> float | None:
    """Milliseconds from the customer's first message to the first reply (annotated). A bot reply
    is stored together with the question it answers, so their times are one: its own recorded
    time to answer (``timings_ms.total``) is the wait the customer saw."""
    if conversation.first_question_at is None or conversation.first_reply_at is None:
        return None
    between = (conversation.first_reply_at - conversation.first_question_at).total_seconds() * 1000
    recorded = float(conversation.first_reply_ms) if conversation.first_reply_ms else 0.0
    return max(between, recorded)


def agent_first_response_ms(conversation) -> float | None:
    """Milliseconds from the customer's request for a person to the first agent message
    (annotated); None when no agent wrote after a request."""
    requested, replied = conversation.handoff_requested_at, conversation.agent_first_reply_at
    if requested is None or replied is None or replied < requested:
        return None
    return (replied - requested).total_seconds() * 1000


@dataclass(frozen=True)
class TranscriptFilter:
    """What the transcripts list is narrowed to; every field optional."""

    since: date | None = None
    until: date | None = None  # inclusive
    outcome: str = ""
    rating: int | None = None
    thumbs: str = ""  # "up", "down" or "any"
    language: str = ""
    site_id: int | None = None
    agent_id: int | None = None  # the agent who held the conversation last
    text: str = ""


def _day_start(day: date) -> datetime:
    return timezone.make_aware(datetime.combine(day, time.min))


def conversations_filtered(spec: TranscriptFilter) -> QuerySet:
    """Conversations matching ``spec``, newest first, annotated (conversations_annotated)."""
    return conversations_annotated(conversations_matching(spec)).order_by("-created_at", "-id")


def transcripts_page(spec: TranscriptFilter, number, per_page: int):
    """One page of the conversations matching ``spec``, newest first, and its rows annotated. The
    page's ids are picked first from the bare filter (an index scan on created_at), then only those
    rows are annotated: annotating before OFFSET would compute every skipped row's subqueries."""
    from django.core.paginator import Paginator

    page = Paginator(conversations_matching(spec).order_by("-created_at", "-id").values_list("pk", flat=True), per_page)
    page = page.get_page(number)
    ids = list(page.object_list)
    rows = {c.pk: c for c in conversations_annotated(Conversation.objects.filter(pk__in=ids))}
    return page, [rows[pk] for pk in ids if pk in rows]


def conversations_matching(spec: TranscriptFilter) -> QuerySet:
    """Conversations matching ``spec``, not annotated (for a subquery: the export's messages)."""
    queryset = Conversation.objects.all()
    if spec.since:
        queryset = queryset.filter(created_at__gte=_day_start(spec.since))
    if spec.until:
        queryset = queryset.filter(created_at__lt=_day_start(spec.until + timedelta(days=1)))
    if spec.site_id:
        queryset = queryset.filter(site_id=spec.site_id)
    if spec.rating:
        queryset = queryset.filter(rating=spec.rating)
    if spec.agent_id:
        queryset = queryset.filter(agent_id=spec.agent_id)
    if spec.text:
        said = Message.objects.filter(conversation=OuterRef("pk"), text__icontains=spec.text)
        queryset = queryset.filter(Exists(said))
    if spec.thumbs in {"up", "down"}:
        queryset = queryset.filter(Exists(_bot(feedback__value=spec.thumbs)))
    elif spec.thumbs == "any":
        queryset = queryset.filter(Exists(_bot(feedback__isnull=False)))
    if spec.language:
        queryset = queryset.filter(Exists(_bot(decision__language=spec.language)))
    return _outcome_filtered(queryset, spec.outcome)


def _outcome_filtered(queryset: QuerySet, outcome: str) -> QuerySet:
    # Conversation.outcome is indexed with created_at: a page of any outcome is an index scan.
    if outcome in OUTCOME_VALUES:
        return queryset.filter(outcome=OUTCOME_VALUES[outcome])
    return queryset


def conversation_messages(conversation: Conversation) -> QuerySet:
    """A conversation's messages in order, with their feedback and the entry answered from."""
    return (
        Message.objects.filter(conversation=conversation)
        .select_related("feedback", "entry", "review", "reply_to", "agent")
        .order_by("created_at", "id")
        .annotate(entry_question=F("entry__question"))
    )
