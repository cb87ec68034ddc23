"""The search endpoint: what live chat would answer to a question, through the same pipeline."""

from __future__ import annotations

from django.conf import settings
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from chatbot.evaluation.serializers import SearchQuerySerializer, SearchResultSerializer
from chatbot.pipeline import answer_question
from kb.api.permissions import CanSearchKb


@extend_schema(tags=["search"])
class SearchView(APIView):
    """What live chat would answer to a question: the same pipeline, without saving a message."""

    permission_classes = [CanSearchKb]

    # No docstring of its own: the API docs would show it in place of the class's description.
    @extend_schema(
        summary="Test a question against the knowledge base",
        parameters=[SearchQuerySerializer],
        responses={
            200: SearchResultSerializer,
            400: OpenApiResponse(description="q missing, empty or too long, or k out of range."),
        },
    )
    def get(self, request: Request) -> Response:
        params = SearchQuerySerializer(data=request.query_params)
        params.is_valid(raise_exception=True)
        query = params.validated_data["q"]
        k = params.validated_data.get("k", settings.KB_SEARCH_TOP_K)
        answer = answer_question(query)
        result = {
            "query": query,
            "decision": answer.decision.decision_json(),
            "source": answer.source,
            "answer_entry_id": answer.entry_id,
            "score": answer.score,
            "hits": answer.hits[:k],
            "timings_ms": answer.timings_ms,
        }
        return Response(SearchResultSerializer(result).data)
