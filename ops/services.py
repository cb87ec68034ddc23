"""Fixing the knowledge base from the log: a customer's question becomes a phrasing of the entry
that should have answered it (through kb.services, so it is embedded and published as any edit),
and a reviewer's verdict on a reply is recorded."""

from __future__ import annotations

from chatbot.models import Message, Role
from kb import services as kb_services
from kb.language import detect_language
from kb.models import Entry, Variant
from kb.selectors import entry_search, search_ready
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


def canned_replies(query: str, *, limit: int = 5) -> list[dict]:
    """FAQ answers an agent may send, for the words typed in the reply box: the entries the bot's
    own search ranks best for them (in the words' language), else, before this process has an
    index, those whose phrasings contain the words."""
    query = query.strip()[:500]
    if not query:
        return []
    language = detect_language(query)
    if search_ready():
        hits = entry_search(query=query, k=limit).hits
        return [
            {
                "id": hit.entry_id,
                "question": hit.question,
                "answer": hit.answer_for(language),
                "score": round(hit.score, 3),
            }
            for hit in hits
        ]
    found = Entry.objects.filter(is_published=True, variants__text__icontains=query).distinct().order_by("id")[:limit]
    return [
        {"id": entry.pk, "question": entry.question, "answer": entry.answer_for(language), "score": None}
        for entry in found
    ]
