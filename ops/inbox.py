"""What the agent inbox reads: the conversations waiting for a person or held by one, and one
conversation as an agent sees it (every turn, the bot's reasoning in short, the hand-off's steps)."""

from __future__ import annotations

from django.db.models import Exists, OuterRef, Subquery

from chatbot.models import Conversation, ConversationEvent, ConversationState, EventKind, Message, Role
from chatbot.protocol import agent_name
from ops.trace import traces_of

INBOX_LIMIT = 200


def _row(conversation: Conversation) -> dict:
    return {
        "id": str(conversation.pk),
        "state": conversation.state,
        "site": conversation.site.name,
        "customer": conversation.customer_name or conversation.customer_email or "",
        "email": conversation.customer_email,
        "last_text": conversation.last_text or "",
        "last_at": conversation.last_at.isoformat() if conversation.last_at else None,
        "requested_at": conversation.handoff_requested_at.isoformat() if conversation.handoff_requested_at else None,
        "agent": agent_name(conversation.agent) if conversation.agent_id else "",
        "agent_id": conversation.agent_id,
        "email_left": conversation.email_left,
        "returned": conversation.returned,
    }


def inbox_for(*, agent) -> dict:
    """The inbox of ``agent``: ``waiting`` (oldest request first), ``mine`` (held by this agent) and
    ``others`` (held by other agents)."""
    customer = Message.objects.filter(conversation=OuterRef("pk"), role=Role.CUSTOMER).order_by("-created_at", "-id")
    events = ConversationEvent.objects.filter(conversation=OuterRef("pk"))
    live = (
        Conversation.objects.filter(state__in=[ConversationState.WAITING, ConversationState.AGENT])
        .select_related("site", "agent")
        .annotate(
            last_text=Subquery(customer.values("text")[:1]),
            last_at=Subquery(customer.values("created_at")[:1]),
            email_left=Exists(events.filter(kind=EventKind.EMAIL_LEFT)),
            returned=Exists(events.filter(kind=EventKind.AGENT_AWAY)),
        )
        .order_by("handoff_requested_at", "created_at")[:INBOX_LIMIT]
    )
    inbox: dict[str, list[dict]] = {"waiting": [], "mine": [], "others": []}
    for conversation in live:
        if conversation.state == ConversationState.WAITING:
            inbox["waiting"].append(_row(conversation))
        elif conversation.agent_id == agent.pk:
            inbox["mine"].append(_row(conversation))
        else:
            inbox["others"].append(_row(conversation))
    return inbox


def _trace_summary(trace) -> dict | None:
    if trace is None:
        return None
    return {
        "kind": trace.kind,
        "reason": trace.reason,
        "hits": [
            {"entry_id": hit.entry_id, "question": hit.question, "score": round(hit.score, 3), "verdict": hit.verdict}
            for hit in trace.hits[:3]
        ],
        "llm_status": (trace.llm or {}).get("status"),
    }


def conversation_for_agent(*, conversation_id) -> dict | None:
    """One conversation as the agent console shows it, or None if there is no such conversation."""
    conversation = Conversation.objects.select_related("site", "agent").filter(pk=conversation_id).first()
    if conversation is None:
        return None
    messages = list(conversation.messages.select_related("agent", "reply_to"))
    traces = traces_of([message for message in messages if message.role == Role.BOT])
    return {
        "id": str(conversation.pk),
        "state": conversation.state,
        "site": conversation.site.name,
        "customer_name": conversation.customer_name,
        "customer_email": conversation.customer_email,
        "agent": agent_name(conversation.agent) if conversation.agent_id else "",
        "agent_id": conversation.agent_id,
        "requested_at": conversation.handoff_requested_at.isoformat() if conversation.handoff_requested_at else None,
        "messages": [
            {
                "message_id": message.pk,
                "role": message.role,
                "text": message.text,
                "created_at": message.created_at.isoformat(),
                "source": message.source or None,
                "agent": agent_name(message.agent) if message.agent_id else None,
                "trace": _trace_summary(traces.get(message.pk)),
            }
            for message in messages
        ],
        "events": [
            {
                "kind": event.kind,
                "label": event.get_kind_display(),
                "agent": agent_name(event.agent) if event.agent_id else "",
                "created_at": event.created_at.isoformat(),
            }
            for event in conversation.events.select_related("agent")
        ],
    }
