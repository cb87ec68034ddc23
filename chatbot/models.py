"""Conversations and their messages, with what the bot retrieved and why it answered as it did."""

import uuid

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from simple_history.models import HistoricalRecords

from chatbot.decisions import Thresholds


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

    @property
    def is_stored(self) -> bool:
        """Whether it is in the database: a conversation is stored with its first message."""
        return not self._state.adding


class Role(models.TextChoices):
    CUSTOMER = "customer", "Customer"
    BOT = "bot", "Bot"
    AGENT = "agent", "Agent"


class Source(models.TextChoices):
    FAQ = "faq", "FAQ"
    CLARIFY = "clarify", "Did you mean"
    LLM = "llm", "LLM"
    HANDOFF = "handoff", "Hand-off"
    # Replies of the first release (before the LLM fallback and hand-off): kept for old transcripts.
    FALLBACK = "fallback", "Fallback"


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
    retrieval = models.JSONField(default=list, blank=True)  # [{"entry_id", "score", "variant_id", ...}]
    decision = models.JSONField(default=dict, blank=True)  # why: thresholds, reason, options, LLM context
    citations = models.JSONField(default=list, blank=True)  # entry ids an LLM answer says it used
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


_unit = [MinValueValidator(0.0), MaxValueValidator(1.0)]


class DecisionThresholds(models.Model):
    """When the bot answers from the FAQ, asks "did you mean", or falls back, for questions in one
    language. Scores are the cosine of the best phrasing, and each language is scored by its own
    model (see kb.embedders.LanguageRoutedEmbedder), so each language needs its own thresholds.
    `manage.py kb_calibrate` picks them from labelled questions; editors can change them in admin."""

    language = models.CharField(max_length=8, unique=True, help_text="Language of the customer's question (en, zh).")
    answer_threshold = models.FloatField(
        default=0.6, validators=_unit, help_text="The best entry's score from which its answer is given."
    )
    clarify_threshold = models.FloatField(
        default=0.5,
        validators=_unit,
        help_text='The lowest score at which an entry may be offered as a "did you mean" suggestion.',
    )
    clarify_margin = models.FloatField(
        default=0.02,
        validators=_unit,
        help_text="When the two best entries' scores are closer than this, the bot asks which one was meant.",
    )
    max_suggestions = models.PositiveSmallIntegerField(
        default=3, validators=[MinValueValidator(2), MaxValueValidator(5)], help_text="Buttons in a suggestion."
    )
    calibration = models.JSONField(
        default=dict, blank=True, help_text="What kb_calibrate measured when it chose these values."
    )
    updated_at = models.DateTimeField(auto_now=True)
    history = HistoricalRecords()

    class Meta:
        verbose_name = "decision thresholds"
        verbose_name_plural = "decision thresholds"
        ordering = ["language"]

    def __str__(self) -> str:
        return f"{self.language}: answer >= {self.answer_threshold:.3f}"

    def as_thresholds(self, language: str | None = None) -> Thresholds:
        """This row as the decision reads it; ``language`` names the questions it is applied to
        when that is not the row's own (a language without a row borrows English's)."""
        return Thresholds(
            language=language or self.language,
            answer=self.answer_threshold,
            clarify=self.clarify_threshold,
            margin=self.clarify_margin,
            max_suggestions=self.max_suggestions,
        )

    def clean(self):
        if self.clarify_threshold > self.answer_threshold:
            raise ValidationError({"clarify_threshold": "must not be higher than the answer threshold"})


class PromptText(models.Model):
    """One message of an LLM prompt, stored once by its SHA-256: a bot message's decision record
    refers to its prompt's messages by hash (chatbot.decision_record), so the instructions shared by
    every conversation and the turns each later prompt repeats are not stored again and again."""

    sha256 = models.CharField(max_length=64, primary_key=True)
    text = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.sha256[:12]}: {self.text[:60]}"
