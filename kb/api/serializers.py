"""Serializers of the knowledge-base API: they check types and shapes; the rules of an entry
live in kb.services, which every write goes through."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from chatbot.models import Source
from kb.models import EmbeddingState, Entry, Language, Variant


class StrictCharField(serializers.CharField):
    """A text field that refuses numbers and booleans instead of quietly turning them into text."""

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


def clean_text(text: str) -> str:
    """Collapse runs of whitespace, as kb.services does before it stores a phrasing, so that the
    unique (entry, text) rule sees the text that will actually be saved."""
    return " ".join(text.split())


def embedding_status(variants) -> dict:
    """Embedding state of an entry from its phrasings: failed if any failed, else pending while
    any waits for a vector, else embedded."""
    pending = failed = 0
    errors: list[str] = []
    for variant in variants:
        if variant.embedding_state == EmbeddingState.FAILED:
            failed += 1
            if variant.embedding_error and variant.embedding_error not in errors:
                errors.append(variant.embedding_error)
        elif variant.is_dirty:
            pending += 1
    state = EmbeddingState.FAILED if failed else EmbeddingState.PENDING if pending else EmbeddingState.EMBEDDED
    return {"state": state.value, "pending": pending, "failed": failed, "errors": errors}


class EmbeddingStatusSerializer(serializers.Serializer):
    """How far an entry's phrasings are from being searchable."""

    state = serializers.ChoiceField(choices=EmbeddingState.choices)
    pending = serializers.IntegerField(help_text="Phrasings waiting to be embedded.")
    failed = serializers.IntegerField(help_text="Phrasings the embedder failed on (retried by the next run).")
    errors = serializers.ListField(child=serializers.CharField(), help_text="Distinct embedding errors.")


@extend_schema_field({"type": "string", "enum": Language.values})
class LanguageField(StrictCharField):
    """A language code; which codes are known is checked by kb.services."""


class AlternatePhrasingsField(serializers.ListField):
    """The entry's alternate phrasings as texts; the primary one (the question itself) is left out."""

    # Lengths and blanks are kb.services' rules (checked after it collapses whitespace).
    child = StrictCharField(allow_blank=True, trim_whitespace=False)

    def get_attribute(self, instance: Entry):
        return instance

    def to_representation(self, entry: Entry) -> list[str]:
        # .all() so that a prefetched list is reused rather than queried once per entry.
        return [variant.text for variant in entry.variants.all() if not variant.is_primary]


class EntrySerializer(serializers.ModelSerializer):
    """An FAQ entry with its alternate phrasings and their embedding state."""

    serializer_field_mapping = {
        **serializers.ModelSerializer.serializer_field_mapping,
        models.CharField: StrictCharField,
        models.TextField: StrictCharField,
    }

    # Question, answer and language are only type-checked here: their rules (not empty, lengths,
    # known languages) belong to kb.services, which the admin and imports use too, and come back
    # as 400 {"detail": ...}.
    question = StrictCharField(
        allow_blank=True, trim_whitespace=False, help_text="At most 500 characters; runs of whitespace are collapsed."
    )
    answer = StrictCharField(allow_blank=True, trim_whitespace=False, help_text="At most 5000 characters.")
    language = LanguageField(required=False, help_text="Language of the entry (default en).")
    variants = AlternatePhrasingsField(
        required=False,
        help_text="Alternate phrasings of the question (not the question itself). When given, it replaces "
        "the entry's list; phrasings kept keep their vectors. Omit it to leave the phrasings as they are.",
    )
    embedding = serializers.SerializerMethodField()

    class Meta:
        model = Entry
        fields = [
            "id",
            "question",
            "answer",
            "category",
            "language",
            "is_published",
            "created_at",
            "updated_at",
            "variants",
            "embedding",
        ]
        read_only_fields = ["id", "created_at", "updated_at"]

    @extend_schema_field(EmbeddingStatusSerializer)
    def get_embedding(self, entry: Entry) -> dict:
        return embedding_status(entry.variants.all())


class VariantSerializer(serializers.ModelSerializer):
    """One phrasing of an entry's question; the primary one mirrors the question and is read-only."""

    text = StrictCharField(trim_whitespace=False, help_text="At most 500 characters; runs of whitespace are collapsed.")

    class Meta:
        model = Variant
        fields = ["id", "entry", "text", "is_primary", "embedding_state", "embedding_error", "embedded_at"]
        read_only_fields = ["id", "is_primary", "embedding_state", "embedding_error", "embedded_at"]
        # Duplicates are reported by the write itself (the database constraint is the rule), with
        # one message for both the validator's check and the race it cannot see.
        validators: list = []

    def validate_text(self, value: str) -> str:
        value = clean_text(value)
        if not value:
            raise serializers.ValidationError("This field may not be blank.")
        limit = Variant._meta.get_field("text").max_length
        if len(value) > limit:
            raise serializers.ValidationError(f"Ensure this field has no more than {limit} characters.")
        return value

    def validate_entry(self, value: Entry) -> Entry:
        if self.instance is not None and value.pk != self.instance.entry_id:
            raise serializers.ValidationError("A phrasing cannot move to another entry.")
        return value


class SearchQuerySerializer(serializers.Serializer):
    """Query parameters of the search endpoint."""

    q = StrictCharField(help_text="The question, as a customer would type it.", trim_whitespace=True)
    k = serializers.IntegerField(
        required=False,
        min_value=1,
        help_text="How many entries to list in hits (at most KB_SEARCH_TOP_K, 5 by default).",
    )

    def validate_q(self, value: str) -> str:
        limit = settings.CHATBOT_MAX_MESSAGE_CHARS
        if len(value) > limit:
            raise serializers.ValidationError(f"Ensure this field has no more than {limit} characters.")
        return value

    def validate_k(self, value: int) -> int:
        # The pipeline retrieves KB_SEARCH_TOP_K entries, as live chat does; k can only show fewer.
        limit = settings.KB_SEARCH_TOP_K
        if value > limit:
            raise serializers.ValidationError(f"Ensure this value is less than or equal to {limit}.")
        return value


class ThresholdsSerializer(serializers.Serializer):
    """The decision thresholds in force for the question's language."""

    language = serializers.CharField()
    answer = serializers.FloatField()
    clarify = serializers.FloatField()
    margin = serializers.FloatField()
    max_suggestions = serializers.IntegerField()


class SuggestionSerializer(serializers.Serializer):
    """One "did you mean" option."""

    entry_id = serializers.IntegerField()
    question = serializers.CharField()


class DecisionSerializer(serializers.Serializer):
    """What the pipeline decided (faq, clarify, llm or handoff) and why."""

    kind = serializers.ChoiceField(choices=["faq", "clarify", "llm", "handoff"])
    reason = serializers.CharField()
    thresholds = ThresholdsSerializer()
    index_version = serializers.IntegerField(allow_null=True)
    language = serializers.CharField()
    search_mode = serializers.CharField()
    options = SuggestionSerializer(many=True, required=False)


class SearchHitSerializer(serializers.Serializer):
    """One retrieved entry and the phrasing that matched it best."""

    entry_id = serializers.IntegerField()
    question = serializers.CharField()
    score = serializers.FloatField(help_text="Dense (cosine) score of its best phrasing: the decision compares it.")
    variant_id = serializers.IntegerField(source="matched_variant_id")
    keyword_score = serializers.FloatField(allow_null=True, help_text="BM25 score, when keyword search took part.")
    fused_score = serializers.FloatField(allow_null=True, help_text="Hybrid ranking score, when keywords took part.")


class SearchResultSerializer(serializers.Serializer):
    """What live chat would do with the query."""

    query = serializers.CharField()
    decision = DecisionSerializer()
    source = serializers.ChoiceField(choices=Source.choices)
    answer_entry_id = serializers.IntegerField(allow_null=True)
    score = serializers.FloatField()
    hits = SearchHitSerializer(many=True)
    timings_ms = serializers.DictField(child=serializers.FloatField())


class ImportQuerySerializer(serializers.Serializer):
    """Query parameters of the import endpoint."""

    dry_run = serializers.BooleanField(
        required=False, default=False, help_text="Check the file and report the counts without saving anything."
    )


class ImportUploadSerializer(serializers.Serializer):
    """The uploaded FAQ file."""

    file = serializers.FileField(help_text=".csv, .json (UTF-8) or .xlsx; see the README for the columns.")


class ImportResultSerializer(serializers.Serializer):
    """What an import saved (or, in a dry run, would save)."""

    created = serializers.IntegerField()
    updated = serializers.IntegerField()
    dry_run = serializers.BooleanField()


class ErrorSerializer(serializers.Serializer):
    """A request the API refused."""

    detail = serializers.CharField()


class ImportErrorSerializer(ErrorSerializer):
    """An import refused; errors lists every bad row."""

    errors = serializers.ListField(child=serializers.CharField(), required=False)
