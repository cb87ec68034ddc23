"""Reads on the customer side."""

from chatbot.models import Conversation, Message


def conversation_history(*, conversation: Conversation, limit: int) -> list[dict]:
    """The last ``limit`` messages of a conversation, oldest first, as the widget shows them."""
    messages = list(
        Message.objects.filter(conversation=conversation)
        .select_related("reply_to")
        .order_by("-created_at", "-id")[:limit]
    )
    return [
        {
            "message_id": message.id,
            "role": message.role,
            "text": message.text,
            "client_id": message.client_id,
            "reply_to": message.reply_to.client_id if message.reply_to else None,
            "source": message.source or None,
            "created_at": message.created_at.isoformat(),
        }
        for message in reversed(messages)
    ]
