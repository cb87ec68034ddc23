"""Views of the knowledge-base API: parse the request, call kb.services (writes) or kb.importing
(files), and render the result. The search endpoint, which runs the answering pipeline, is
chatbot.evaluation.views."""

from __future__ import annotations

from django_filters.rest_framework import DjangoFilterBackend
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import status, viewsets
from rest_framework.exceptions import APIException
from rest_framework.filters import SearchFilter
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from kb import services
from kb.api.permissions import CanImportKb, KbModelPermissions
from kb.api.serializers import (
    EntrySerializer,
    ErrorSerializer,
    ImportErrorSerializer,
    ImportQuerySerializer,
    ImportResultSerializer,
    ImportUploadSerializer,
    VariantSerializer,
)
from kb.importing import ImportFileError, entries_import, read_rows_from_bytes
from kb.models import Entry, Variant

# An upload is read into memory in one piece; the demo knowledge base is ~20 KB, so this leaves
# room for tens of thousands of entries while keeping one request from exhausting a web process.
MAX_IMPORT_BYTES = 10 * 1024 * 1024


class Invalid(APIException):
    """A request that breaks a knowledge-base rule: 400 {"detail": message}."""

    status_code = status.HTTP_400_BAD_REQUEST
    default_detail = "Invalid request."
    default_code = "invalid"


class KbRulesMixin:
    """Turns the services' rule violations (EntryInvalid) into 400 responses instead of 500s."""

    def handle_exception(self, exc):
        if isinstance(exc, services.EntryInvalid):
            exc = Invalid(str(exc))
        return super().handle_exception(exc)


@extend_schema_view(
    list=extend_schema(summary="List entries"),
    retrieve=extend_schema(summary="Show an entry"),
    create=extend_schema(summary="Create an entry", responses={201: EntrySerializer, 400: ErrorSerializer}),
    update=extend_schema(summary="Replace an entry", responses={200: EntrySerializer, 400: ErrorSerializer}),
    partial_update=extend_schema(summary="Change an entry", responses={200: EntrySerializer, 400: ErrorSerializer}),
    destroy=extend_schema(summary="Delete an entry"),
)
@extend_schema(tags=["entries"])
class EntryViewSet(KbRulesMixin, viewsets.ModelViewSet):
    """FAQ entries; every write goes through kb.services, so phrasings become dirty, the KB
    revision moves on and embedding is queued."""

    queryset = Entry.objects.prefetch_related("variants")
    serializer_class = EntrySerializer
    permission_classes = [KbModelPermissions]
    filter_backends = [DjangoFilterBackend, SearchFilter]
    filterset_fields = ["category", "language", "is_published"]
    search_fields = ["question", "answer", "variants__text"]

    def perform_create(self, serializer):
        serializer.instance = services.entry_create(**serializer.validated_data)

    def perform_update(self, serializer):
        serializer.instance = services.entry_update(entry=serializer.instance, **serializer.validated_data)

    def perform_destroy(self, instance):
        services.entry_delete(entry=instance)


@extend_schema_view(
    list=extend_schema(summary="List phrasings"),
    retrieve=extend_schema(summary="Show a phrasing"),
    create=extend_schema(summary="Add a phrasing", responses={201: VariantSerializer, 400: ErrorSerializer}),
    update=extend_schema(summary="Replace a phrasing", responses={200: VariantSerializer, 400: ErrorSerializer}),
    partial_update=extend_schema(summary="Change a phrasing", responses={200: VariantSerializer, 400: ErrorSerializer}),
    destroy=extend_schema(
        summary="Delete a phrasing",
        responses={204: None, 400: OpenApiResponse(ErrorSerializer, description="The primary phrasing.")},
    ),
)
@extend_schema(tags=["phrasings"])
class VariantViewSet(KbRulesMixin, viewsets.ModelViewSet):
    """Phrasings of entries' questions. The primary phrasing mirrors the question and changes
    only with it; the others can be added, edited and deleted here."""

    queryset = Variant.objects.all()
    serializer_class = VariantSerializer
    permission_classes = [KbModelPermissions]
    filter_backends = [DjangoFilterBackend]
    filterset_fields = ["entry"]

    def perform_create(self, serializer):
        data = serializer.validated_data
        serializer.instance = services.variant_create(entry=data["entry"], text=data["text"])

    def perform_update(self, serializer):
        variant = serializer.instance
        serializer.instance = services.variant_update(
            variant=variant, text=serializer.validated_data.get("text", variant.text)
        )

    def perform_destroy(self, instance):
        services.variant_delete(variant=instance)


@extend_schema(tags=["import"])
class ImportView(APIView):
    """Import a .csv, .json or .xlsx FAQ file: every row is checked, and any bad row means nothing is saved."""

    permission_classes = [CanImportKb]
    parser_classes = [MultiPartParser, FormParser]

    @extend_schema(
        summary="Import entries from a file",
        request={"multipart/form-data": ImportUploadSerializer},
        parameters=[ImportQuerySerializer],
        responses={200: ImportResultSerializer, 400: ImportErrorSerializer},
    )
    def post(self, request: Request) -> Response:
        options = ImportQuerySerializer(data=request.query_params)
        options.is_valid(raise_exception=True)
        upload = ImportUploadSerializer(data=request.data)
        upload.is_valid(raise_exception=True)
        dry_run = options.validated_data["dry_run"]
        file = upload.validated_data["file"]
        if file.size > MAX_IMPORT_BYTES:
            return _import_refused(f"{file.name} is {file.size} bytes; the limit is {MAX_IMPORT_BYTES} bytes")
        try:
            rows = read_rows_from_bytes(file.name, file.read())
        except ImportFileError as exc:
            return _import_refused(str(exc))
        # A dry run saves every row for real (so the counts are exact) and then rolls back, which
        # also drops the KB revision bump and the queued embedding job.
        result = entries_import(rows=rows, dry_run=dry_run)
        if not result.ok:
            return _import_refused(f"{len(result.errors)} row(s) have errors; nothing was saved", errors=result.errors)
        return Response({"created": result.created, "updated": result.updated, "dry_run": dry_run})


def _import_refused(detail: str, errors: list[str] | None = None) -> Response:
    return Response({"detail": detail, "errors": errors or []}, status=status.HTTP_400_BAD_REQUEST)
