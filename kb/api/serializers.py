"""Serializers of the knowledge-base API: they check types and shapes; the rules of an entry
live in kb.services, which every write goes through."""

from __future__ import annotations

from django.db import models
from django.urls import reverse
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from kb.embedding_state import embedding_summary, live_revision, waiting_for_index
from kb.models import EmbeddingState, Entry, ImportJob, Language, Variant
from kb.text import text_clean


class StrictCharField(serializers.CharField):
    """A text field that refuses numbers and booleans instead of quietly turning them into text."""

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


def clean_text(text: str) -> str:
    """The text as kb.services will store it (kb.text.text_clean), so that the unique (entry, text)
    rule sees the text that will actually be saved."""
    return text_clean(text)


class StrictPrimaryKeyRelatedField(serializers.PrimaryKeyRelatedField):
    """A related row's id: an integer, or its digits as a form sends them. A JSON number with a
    fraction or exponent is refused: DRF would truncate 1.5 to 1, and 1e400 (which JSON decodes to
    infinity) would overflow in the query (a 500)."""

    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, int | str):
            self.fail("incorrect_type", data_type=type(data).__name__)
        return super().to_internal_value(data)


class EmbeddingStatusSerializer(serializers.Serializer):
    """How far an entry's phrasings are from being searchable."""

    state = serializers.ChoiceField(choices=EmbeddingState.choices)
    pending = serializers.IntegerField(help_text="Phrasings waiting to be embedded.")
    failed = serializers.IntegerField(help_text="Phrasings the embedder failed on (retried by the next run).")
    in_index = serializers.BooleanField(
        help_text="Whether the live index version holds the entry as it is now (with `pending` 0: searchable)."
    )
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
    translations = serializers.DictField(
        child=StrictCharField(allow_blank=True, trim_whitespace=False),
        required=False,
        help_text="The answer for questions asked in other languages, by language code, e.g. "
        '{"zh": "…"}: a Chinese question gets it instead of `answer`.',
    )
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
            "translations",
            "category",
            "language",
            "is_published",
            "held_reason",
            "created_at",
            "updated_at",
            "variants",
            "embedding",
        ]
        read_only_fields = ["id", "held_reason", "created_at", "updated_at"]

    @extend_schema_field(EmbeddingStatusSerializer)
    def get_embedding(self, entry: Entry) -> dict:
        # The live index's revision, read once per response (a page lists many entries).
        if "live_revision" not in self.context:
            self.context["live_revision"] = live_revision()
        unindexed = waiting_for_index(entry.changed_revision, self.context["live_revision"])
        return embedding_summary(entry.variants.all(), unindexed=unindexed)


class VariantSerializer(serializers.ModelSerializer):
    """One phrasing of an entry's question; the primary one mirrors the question and is read-only."""

    serializer_related_field = StrictPrimaryKeyRelatedField

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


class ImportQuerySerializer(serializers.Serializer):
    """Query parameters of the import endpoint."""

    dry_run = serializers.BooleanField(
        required=False, default=False, help_text="Check the file and report the counts without saving anything."
    )
    unpublished = serializers.BooleanField(
        required=False,
        default=False,
        help_text="Import every row unpublished (customers get nothing from it until it is published).",
    )


class ImportUploadSerializer(serializers.Serializer):
    """The uploaded FAQ file."""

    file = serializers.FileField(help_text=".csv, .json (UTF-8) or .xlsx; see the README for the columns.")


class ImportResultSerializer(serializers.Serializer):
    """What an import saved (or, in a dry run, would save)."""

    created = serializers.IntegerField()
    updated = serializers.IntegerField()
    dry_run = serializers.BooleanField()
    warnings = serializers.IntegerField(help_text="Rows whose answer looks like no answer (empty, a placeholder).")


class ErrorSerializer(serializers.Serializer):
    """A request the API refused: {"detail": message} when it breaks a knowledge-base rule or is
    not readable, or {field: [messages]} for the fields that failed validation."""

    # Not required: DRF reports field errors under the fields' names, with no "detail".
    detail = serializers.CharField(required=False)


class ImportErrorSerializer(ErrorSerializer):
    """An import refused: the file's problem, or its bad rows (the first 100, and how many more)."""

    errors = serializers.ListField(child=serializers.CharField(), required=False)
    errors_more = serializers.IntegerField(required=False, help_text="Row errors beyond those listed.")


class ImportJobSerializer(serializers.ModelSerializer):
    """A background import (a file over KB_IMPORT_INLINE_MAX_ROWS rows) and its progress."""

    url = serializers.SerializerMethodField(help_text="Where to follow its progress.")
    errors = serializers.ListField(child=serializers.CharField(), help_text="The first 100 row errors.")
    errors_more = serializers.SerializerMethodField(help_text="Row errors beyond those listed.")

    class Meta:
        model = ImportJob
        fields = [
            "id",
            "url",
            "file_name",
            "dry_run",
            "state",
            "rows_total",
            "rows_done",
            "created",
            "updated",
            "error_count",
            "errors",
            "errors_more",
            "unpublished",
            "warning_count",
            "detail",
            "created_at",
            "updated_at",
        ]
        read_only_fields = fields

    def get_url(self, job: ImportJob) -> str:
        return reverse("kb-import-job", args=[job.pk])

    def get_errors_more(self, job: ImportJob) -> int:
        return job.error_count - len(job.errors)
