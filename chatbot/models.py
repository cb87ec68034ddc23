"""Conversations and their messages, with what the bot retrieved and why it answered as it did."""

import uuid

from django.db import models


class ConversationState(models.TextChoices):
    BOT = "bot", "With the bot"
    WAITING = "waiting", "Waiting for an agent"
    AGENT = "agent", "With an agent"
    CLOSED = "closed", "Closed"


class Conversation(models.Model):
    """One customer's chat on one site."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    site = models.CharField(max_length=100, default="default", db_index=True)
    state = models.CharField(max_length=10, choices=ConversationState.choices, default=ConversationState.BOT)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-updated_at"]

    def __str__(self) -> str:
        return str(self.id)


class Role(models.TextChoices):
    CUSTOMER = "customer", "Customer"
    BOT = "bot", "Bot"
    AGENT = "agent", "Agent"


class Source(models.TextChoices):
    FAQ = "faq", "FAQ"
    FALLBACK = "fallback", "Fallback"
    LLM = "llm", "LLM"
    HANDOFF = "handoff", "Hand-off"


class Message(models.Model):
    """A customer message or a reply; bot replies carry the retrieval trace and step timings."""

    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="messages")
    role = models.CharField(max_length=10, choices=Role.choices)
    text = models.TextField()
    # The id the customer's client gave its message: a resend with the same id is not answered twice.
    client_id = models.CharField(max_length=100, null=True, blank=True)
    reply_to = models.OneToOneField("self", null=True, blank=True, on_delete=models.CASCADE, related_name="reply")
    source = models.CharField(max_length=10, choices=Source.choices, blank=True)
    entry = models.ForeignKey("kb.Entry", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    score = models.FloatField(null=True, blank=True)
    retrieval = models.JSONField(default=list, blank=True)  # [{"entry_id", "score", "variant_id"}]
    decision = models.JSONField(default=dict, blank=True)  # why: threshold, reason, index version
    timings_ms = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["created_at", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["conversation", "client_id"],
                condition=models.Q(client_id__isnull=False),
                name="chatbot_message_unique_client_id",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.role}: {self.text[:60]}"
