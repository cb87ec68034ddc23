"""Conversations and their messages, with what the bot retrieved and why it answered as it did."""

import secrets
import uuid

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models
from simple_history.models import HistoricalRecords

from chatbot.confidence import ConfidenceModel
from chatbot.decisions import Thresholds
from chatbot.opening_hours import OpeningHoursInvalid, opening_hours_parse, timezone_valid
from chatbot.origins import origins_normalise
from chatbot.protocol import (
    CUSTOMER_EMAIL_MAX_CHARS,
    CUSTOMER_NAME_MAX_CHARS,
    FEEDBACK_REASON_MAX_CHARS,
    SITE_MAX_CHARS,
)


class ConversationState(models.TextChoices):
    BOT = "bot", "With the bot"
    WAITING = "waiting", "Waiting for an agent"
    AGENT = "agent", "With an agent"
    CLOSED = "closed", "Closed"


class Outcome(models.IntegerChoices):
    """What a conversation came to, by its most telling reply: each value outranks those below it."""

    NONE = 0, "no reply"  # no answer yet ("did you mean" only, or nothing)
    FAQ = 1, "FAQ"
    LLM = 2, "LLM"
    UNANSWERED = 3, "unanswered"  # neither the FAQ nor the LLM could answer: a person was offered
    HANDED_OFF = 4, "handed off"  # the customer asked for a person, or one took the chat


# The site of the app's own demo page and of sockets that name no site: its key never changes.
DEFAULT_SITE_KEY = "default"


def site_key_new() -> str:
    """A new public key for a site: random and URL-safe (it goes in the widget's ``data-site`` and
    the socket's ``?site=``). It is public, so guessing it gains nothing an origin check allows."""
    return secrets.token_urlsafe(18)


class SiteLanguage(models.TextChoices):
    EN = "en", "English"
    ZH = "zh", "Chinese (Simplified)"


class Site(models.Model):
    """A website that embeds the chat widget: its public key, the origins (scheme, host and port)
    whose pages may open the chat socket with that key, and how the widget greets its customers."""

    name = models.CharField(max_length=100)
    key = models.CharField(
        max_length=SITE_MAX_CHARS,
        unique=True,
        default=site_key_new,
        editable=False,
        help_text="Public: the widget's data-site and the socket's ?site=. Rotate it to retire a leaked embed.",
    )
    allowed_origins = models.JSONField(
        default=list,
        blank=True,
        help_text="Pages that may open the chat with this key, one scheme://host[:port] each; the app's "
        "own pages always may.",
    )
    greeting_en = models.TextField(blank=True, default="Hi! How can we help you today?")
    greeting_zh = models.TextField(blank=True, default="您好！请问有什么可以帮您？")
    starter_questions = models.JSONField(
        default=list, blank=True, help_text="Questions the widget offers as buttons before the first message."
    )
    primary_colour = models.CharField(
        max_length=7,
        default="#0969da",
        validators=[RegexValidator(r"^#[0-9a-fA-F]{6}$", "A colour as #rrggbb.")],
        help_text="The widget's main colour, as #rrggbb.",
    )
    default_language = models.CharField(max_length=8, choices=SiteLanguage.choices, default=SiteLanguage.EN)
    llm_enabled = models.BooleanField(
        "LLM fallback",
        default=True,
        help_text="Answer questions the FAQ does not cover with the LLM (when one is configured); "
        "off: offer a person instead.",
    )
    opening_hours = models.TextField(
        blank=True,
        help_text='When agents answer chats, one line per day or range of days, e.g. "Mon-Fri 09:00-17:30" and '
        '"Sat 10:00-14:00" (several spans: "Mon 09:00-12:00, 13:00-17:00"). Empty: always. Outside these hours a '
        "customer who asks for a person is told so and may leave an email; the request waits in the inbox.",
    )
    timezone = models.CharField(
        max_length=64,
        default="UTC",
        blank=True,
        help_text="The time zone of the opening hours, e.g. Europe/London (empty: UTC).",
    )
    is_active = models.BooleanField(default=True, help_text="Off: the widget and the chat refuse this key.")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def is_default(self) -> bool:
        """Whether this is the app's own site (the demo page, and sockets that name no site)."""
        return self.key == DEFAULT_SITE_KEY

    def clean(self):
        # Stored normalised, so the admin shows what is compared and a typo is refused, not ignored.
        if not isinstance(self.allowed_origins, list):
            raise ValidationError({"allowed_origins": "a list of origins"})
        try:
            self.allowed_origins = origins_normalise(self.allowed_origins)
        except ValidationError as error:
            raise ValidationError({"allowed_origins": error.messages}) from None
        if not isinstance(self.starter_questions, list) or not all(
            isinstance(question, str) for question in self.starter_questions
        ):
            raise ValidationError({"starter_questions": "a list of questions"})
        self.starter_questions = [question.strip() for question in self.starter_questions if question.strip()]
        self.primary_colour = (self.primary_colour or "").lower()
        errors = {}
        self.timezone = (self.timezone or "").strip() or "UTC"
        if not timezone_valid(self.timezone):
            errors["timezone"] = "an IANA time zone name, e.g. Europe/London or Asia/Shanghai"
        try:
            opening_hours_parse(self.opening_hours)
        except OpeningHoursInvalid as error:
            errors["opening_hours"] = str(error)
        if errors:
            raise ValidationError(errors)


def default_site_id() -> int:
    """The default site's id: a conversation created without a site belongs to it. The data
    migration creates the row; it is created again here if it went missing (a flushed database)."""
    site_id = Site.objects.filter(key=DEFAULT_SITE_KEY).values_list("pk", flat=True).first()
    if site_id is None:
        site, _ = Site.objects.get_or_create(key=DEFAULT_SITE_KEY, defaults={"name": "Customer support"})
        site_id = site.pk
    return site_id


class Conversation(models.Model):
    """One customer's chat on one site."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    site = models.ForeignKey(Site, on_delete=models.PROTECT, default=default_site_id, related_name="conversations")
    state = models.CharField(max_length=10, choices=ConversationState.choices, default=ConversationState.BOT)
    # Indexed: the ops console lists conversations newest first, 50 at a time, and by date range.
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)
    # Who the customer is, when the host page says so (SupportChat.identify): for agents, never the LLM.
    customer_name = models.CharField(max_length=CUSTOMER_NAME_MAX_CHARS, blank=True)
    customer_email = models.EmailField(max_length=CUSTOMER_EMAIL_MAX_CHARS, blank=True)
    # The customer's rating of the whole chat (1-5), when the widget asked for one.
    rating = models.PositiveSmallIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1), MaxValueValidator(5)]
    )
    rating_comment = models.TextField(blank=True)
    rated_at = models.DateTimeField(null=True, blank=True)
    # The live hand-off: when the customer asked for a person, and who holds the chat now (or held it
    # last: kept after a hand-back, for the transcripts' agent filter).
    handoff_requested_at = models.DateTimeField(null=True, blank=True)
    agent = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="conversations_held"
    )
    agent_joined_at = models.DateTimeField(null=True, blank=True)
    # Kept as replies are stored (it only rises), so the ops console filters by it through an index
    # instead of looking into every conversation's messages.
    outcome = models.PositiveSmallIntegerField(choices=Outcome.choices, default=Outcome.NONE)

    class Meta:
        ordering = ["-updated_at"]
        permissions = [("handle_conversation", "Can chat with customers as an agent")]
        indexes = [
            # The agents' inbox reads the few conversations waiting for or held by a person.
            models.Index(
                fields=["state"],
                condition=models.Q(state__in=["waiting", "agent"]),
                name="chatbot_conversation_live",
            ),
            models.Index(fields=["outcome", "-created_at"], name="chatbot_conversation_outcome"),
        ]

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
    # An agent's message: who wrote it.
    agent = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
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
    answer_confidence = models.FloatField(
        null=True,
        blank=True,
        validators=_unit,
        help_text=(
            "Answer when the confidence model's P(the best entry is right) reaches this (instead of the answer "
            "threshold on the score). Empty: answer by the score. kb_calibrate sets both."
        ),
    )
    confidence_model = models.JSONField(
        default=dict,
        blank=True,
        help_text="The answer-confidence model kb_calibrate fitted (chatbot.confidence); empty if none.",
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
            confidence=self.answer_confidence,
            confidence_model=ConfidenceModel.from_json(self.confidence_model),
        )

    def clean(self):
        # With an answer confidence the two rules read different numbers (a probability, a score):
        # a "did you mean" threshold above the score's answer threshold is then legitimate.
        if self.clarify_threshold > self.answer_threshold and self.answer_confidence is None:
            raise ValidationError({"clarify_threshold": "must not be higher than the answer threshold"})
        if self.answer_confidence is not None and ConfidenceModel.from_json(self.confidence_model) is None:
            raise ValidationError(
                {"answer_confidence": "there is no confidence model to apply it to: run kb_calibrate, or leave empty"}
            )


class OutOfScopeExamples(models.Model):
    """Labelled out-of-scope questions kb_calibrate learned from, with their vectors in the space of
    the embedder that asked them: how near a new question comes to the nearest of them is one of
    the answer confidence's features (chatbot.confidence.OUT_OF_SCOPE_FEATURE). A question close to
    one the bot must not answer is likely out of scope too, however close it also is to an entry.
    Written once by kb_calibrate and never changed; the confidence model names the row it reads."""

    language = models.CharField(max_length=8)
    embedder = models.CharField(max_length=300, help_text="The embedder (kb.embedders name) the vectors are of.")
    questions = models.JSONField(default=list, help_text="The labelled questions, in the vectors' order.")
    dimensions = models.PositiveIntegerField()
    vectors = models.BinaryField(help_text="float32, one row per question, unit length.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name = "out-of-scope examples"
        verbose_name_plural = "out-of-scope examples"
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.language}: {len(self.questions)} out-of-scope questions ({self.created_at:%Y-%m-%d %H:%M})"


class PromptText(models.Model):
    """One message of an LLM prompt, stored once by its SHA-256: a bot message's decision record
    refers to its prompt's messages by hash (chatbot.decision_record), so the instructions shared by
    every conversation and the turns each later prompt repeats are not stored again and again."""

    sha256 = models.CharField(max_length=64, primary_key=True)
    text = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.sha256[:12]}: {self.text[:60]}"


class FeedbackValue(models.TextChoices):
    UP = "up", "Helpful"
    DOWN = "down", "Not helpful"


class Feedback(models.Model):
    """A customer's thumbs up or down on one bot reply, with an optional reason (one per reply:
    sending again replaces it). What KB editors read to find answers that miss."""

    message = models.OneToOneField(Message, on_delete=models.CASCADE, related_name="feedback")
    value = models.CharField(max_length=4, choices=FeedbackValue.choices)
    reason = models.TextField(max_length=FEEDBACK_REASON_MAX_CHARS, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-updated_at"]

    def __str__(self) -> str:
        return f"{self.value} on message {self.message_id}"


class EntryHits(models.Model):
    """How often an FAQ entry answered customers, and when it last did. Counted from the stored
    replies by chatbot.entry_hits.entry_hits_refresh (a periodic task), so answering a customer
    writes nothing more than its messages."""

    entry = models.OneToOneField("kb.Entry", on_delete=models.CASCADE, primary_key=True, related_name="hits")
    count = models.PositiveIntegerField(default=0, db_index=True)
    last_hit_at = models.DateTimeField(null=True, blank=True, db_index=True)

    class Meta:
        verbose_name_plural = "entry hits"

    def __str__(self) -> str:
        return f"entry {self.entry_id}: {self.count} hits"


class EntryHitsCounted(models.Model):
    """One row: the id of the last message EntryHits has counted."""

    last_message_id = models.BigIntegerField(default=0)

    def __str__(self) -> str:
        return f"counted up to message {self.last_message_id}"


class EventKind(models.TextChoices):
    REQUESTED = "requested", "Asked for a person"
    EMAIL_LEFT = "email_left", "Left an email (outside opening hours)"
    JOINED = "joined", "Agent joined"
    HANDED_BACK = "handed_back", "Handed back to the bot"
    CLOSED = "closed", "Closed by the agent"
    AGENT_AWAY = "agent_away", "Agent's connection lost: back in the queue"
    CANCELLED = "cancelled", "Customer went back to the bot"


class ConversationEvent(models.Model):
    """What happened to a conversation besides its messages: the hand-off's steps, for the transcript
    and the first-response times."""

    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="events")
    kind = models.CharField(max_length=12, choices=EventKind.choices)
    agent = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return f"{self.kind} at {self.created_at:%Y-%m-%d %H:%M}"


class AgentPresence(models.Model):
    """When an agent's console was last connected: a conversation stays with an agent whose
    connection dropped for CHATBOT_AGENT_GRACE_SECONDS, then goes back to the queue."""

    agent = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, primary_key=True, related_name="+")
    last_seen_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"agent {self.agent_id} seen {self.last_seen_at:%H:%M:%S}"
