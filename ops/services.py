"""Fixing the knowledge base from the log: a customer's question becomes a phrasing of the entry
that should have answered it (through kb.services, so it is embedded and published as any edit),
and a reviewer's verdict on a reply is recorded."""

from __future__ import annotations

from chatbot.models import Message, Role
from kb import services as kb_services
from kb.models import Entry, Variant
from ops.models import AnswerReview


class FixInvalid(ValueError):
    """A fix that cannot be made; the message says why."""


def turn_question(message: Message) -> str:
    """The customer's words a bot reply answered."""
    if message.role != Role.BOT or message.reply_to is None:
        raise FixInvalid("only a bot reply to a customer's message can be fixed")
    return message.reply_to.text


def phrasing_from_turn(*, message: Message, entry_id: int) -> Variant:
    """Add the customer's question of ``message`` as a phrasing of entry ``entry_id``."""
    entry = Entry.objects.filter(pk=entry_id).first()
    if entry is None:
        raise FixInvalid(f"there is no entry #{entry_id}")
    try:
        return kb_services.variant_create(entry=entry, text=turn_question(message))
    except kb_services.EntryInvalid as exc:
        raise FixInvalid(str(exc)) from exc


def answer_review_set(*, message: Message, verdict: str, reviewer) -> AnswerReview:
    """Record ``reviewer``'s verdict ("right" or "wrong") on a bot reply (replacing an earlier one)."""
    if verdict not in AnswerReview.Verdict.values:
        raise FixInvalid(f"unknown verdict {verdict!r}")
    turn_question(message)
    review, _ = AnswerReview.objects.update_or_create(
        message=message, defaults={"verdict": verdict, "reviewer": reviewer}
    )
    return review


def entries_search(query: str, *, limit: int = 10) -> list[dict]:
    """Entries whose question or a phrasing contains ``query`` (the fix form's search-as-you-type)."""
    query = query.strip()
    if not query:
        return []
    if query.lstrip("#").isdigit():
        found = Entry.objects.filter(pk=int(query.lstrip("#")))
    else:
        found = Entry.objects.filter(variants__text__icontains=query).distinct()
    return [
        {"id": pk, "question": question, "category": category}
        for pk, question, category in found.order_by("id").values_list("id", "question", "category")[:limit]
    ]
