"""The filtered transcripts as files: CSV with one row per conversation, JSONL with one line per
message (its trace included). Streamed: an export of 100,000 conversations is never held whole."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator

from django.core.serializers.json import DjangoJSONEncoder

from chatbot.models import Message
from chatbot.protocol import agent_name
from kb.exporting import csv_cell_safe
from ops.selectors import (
    TranscriptFilter,
    agent_first_response_ms,
    conversations_filtered,
    conversations_matching,
    first_response_ms,
    outcome_of,
)

CONVERSATION_COLUMNS = [
    "conversation_id",
    "started_at",
    "site",
    "language",
    "outcome",
    "state",
    "messages",
    "rating",
    "rating_comment",
    "thumbs_up",
    "thumbs_down",
    "first_response_ms",
    "agent",
    "agent_first_response_ms",
]
CHUNK = 2000


class _Line:
    """A file-like sink for csv.writer that hands back what was written."""

    def write(self, text: str) -> str:
        return text


def conversations_csv(spec: TranscriptFilter) -> Iterator[str]:
    """One row per conversation matching ``spec`` (formula-like cells quoted)."""
    writer = csv.writer(_Line())
    yield "\ufeff" + writer.writerow(CONVERSATION_COLUMNS)
    for conversation in conversations_filtered(spec).iterator(chunk_size=CHUNK):
        response = first_response_ms(conversation)
        agent_response = agent_first_response_ms(conversation)
        row = [
            conversation.pk,
            conversation.created_at.isoformat(),
            conversation.site.name,
            conversation.language or "",
            outcome_of(conversation),
            conversation.state,
            conversation.n_messages,
            conversation.rating or "",
            conversation.rating_comment,
            conversation.thumbs_up,
            conversation.thumbs_down,
            "" if response is None else round(response),
            agent_name(conversation.agent) if conversation.agent_id else "",
            "" if agent_response is None else round(agent_response),
        ]
        yield writer.writerow([csv_cell_safe(cell) for cell in row])


def messages_jsonl(spec: TranscriptFilter) -> Iterator[str]:
    """One JSON object per message of the conversations matching ``spec``, with its trace."""
    messages = (
        Message.objects.filter(conversation__in=conversations_matching(spec).values("pk"))
        .select_related("feedback", "agent")
        .order_by("conversation_id", "created_at", "id")
    )
    for message in messages.iterator(chunk_size=CHUNK):
        feedback = getattr(message, "feedback", None)
        record = {
            "conversation_id": message.conversation_id,
            "message_id": message.pk,
            "at": message.created_at,
            "role": message.role,
            "text": message.text,
            "source": message.source,
            "entry_id": message.entry_id,
            "score": message.score,
            "citations": message.citations,
            "agent": agent_name(message.agent) if message.agent_id else None,
            "feedback": {"value": feedback.value, "reason": feedback.reason} if feedback else None,
            "decision": message.decision,
            "retrieval": message.retrieval,
            "timings_ms": message.timings_ms,
        }
        yield json.dumps(record, cls=DjangoJSONEncoder, ensure_ascii=False) + "\n"
