"""Serializers of the search endpoint: the question asked, and what the pipeline decided for it."""

from __future__ import annotations

from django.conf import settings
from rest_framework import serializers

from chatbot.models import Source
from kb.api.serializers import StrictCharField
from kb.text import text_sanitise


class SearchQuerySerializer(serializers.Serializer):
    """Query parameters of the search endpoint."""

    q = StrictCharField(help_text="The question, as a customer would type it.", trim_whitespace=True)
    k = serializers.IntegerField(
        required=False,
        min_value=1,
        help_text="How many entries to list in hits (at most KB_SEARCH_TOP_K, 5 by default).",
    )

    def validate_q(self, value: str) -> str:
        # Read as live chat reads a message (chatbot.protocol), so the search shows what chat would do.
        value = text_sanitise(value).strip()
        if not value:
            raise serializers.ValidationError("This field may not be blank.")
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
    fused_score = serializers.FloatField(
        allow_null=True,
        help_text=(
            "What ranked the entry: the hybrid score when keywords took part, "
            "cosine + weight x log P(entry) with the entry classifier."
        ),
    )


class SearchResultSerializer(serializers.Serializer):
    """What live chat would do with the query."""

    query = serializers.CharField()
    decision = DecisionSerializer()
    source = serializers.ChoiceField(choices=Source.choices)
    answer_entry_id = serializers.IntegerField(allow_null=True)
    score = serializers.FloatField()
    hits = SearchHitSerializer(many=True)
    timings_ms = serializers.DictField(child=serializers.FloatField())
