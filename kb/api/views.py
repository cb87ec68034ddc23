"""Views of the knowledge-base API: parse the request, call kb.services (writes), kb.importing
(files) or kb.import_jobs (large files), and render the result. The search endpoint, which runs
the answering pipeline, is chatbot.evaluation.views."""

from __future__ import annotations

from django_filters.rest_framework import DjangoFilterBackend
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import status, viewsets
from rest_framework.exceptions import APIException
from rest_framework.filters import SearchFilter
from rest_framework.generics import get_object_or_404
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
    ImportJobSerializer,
    ImportQuerySerializer,
    ImportResultSerializer,
    ImportUploadSerializer,
    VariantSerializer,
)
from kb.import_files import size_check
from kb.import_jobs import import_job_create
from kb.importing import ImportFileError, entries_import, upload_rows_if_small
from kb.models import Entry, ImportJob, Variant


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
    """Import a .csv, .json or .xlsx FAQ file. Up to KB_IMPORT_INLINE_MAX_ROWS rows: inside the request,
    every row checked, and any bad row means nothing is saved. More: a background job (202) that
    saves the valid rows and lists the others; follow it at its url."""

    permission_classes = [CanImportKb]
    parser_classes = [MultiPartParser, FormParser]

    @extend_schema(
        summary="Import entries from a file",
        request={"multipart/form-data": ImportUploadSerializer},
        parameters=[ImportQuerySerializer],
        responses={200: ImportResultSerializer, 202: ImportJobSerializer, 400: ImportErrorSerializer},
    )
    def post(self, request: Request) -> Response:
        options = ImportQuerySerializer(data=request.query_params)
        options.is_valid(raise_exception=True)
        upload = ImportUploadSerializer(data=request.data)
        upload.is_valid(raise_exception=True)
        dry_run, unpublished = options.validated_data["dry_run"], options.validated_data["unpublished"]
        file = upload.validated_data["file"]
        try:
            size_check(file.name, file.size)  # before reading it
            raw = file.read()
            rows = upload_rows_if_small(file.name, raw)
        except ImportFileError as exc:
            return _import_refused(str(exc))
        if rows is None:
            job = import_job_create(
                name=file.name, content=raw, dry_run=dry_run, unpublished=unpublished, user=request.user
            )
            return Response(ImportJobSerializer(job).data, status=status.HTTP_202_ACCEPTED)
        # A dry run saves every row for real (so the counts are exact) and then rolls back, which
        # also drops the KB revision bump and the queued embedding job.
        result = entries_import(rows=rows, dry_run=dry_run, unpublished=unpublished)
        if not result.ok:
            return _import_refused(
                f"{result.error_count} row(s) have errors; nothing was saved",
                errors=result.errors,
                errors_more=result.errors_more,
            )
        return Response(
            {"created": result.created, "updated": result.updated, "dry_run": dry_run, "warnings": result.warning_count}
        )


@extend_schema(tags=["import"])
class ImportJobView(APIView):
    """A background import's state (queued, running, done, failed), progress and row errors."""

    permission_classes = [CanImportKb]

    @extend_schema(summary="Show an import job", responses={200: ImportJobSerializer, 404: ErrorSerializer})
    def get(self, request: Request, job_id) -> Response:
        job = get_object_or_404(ImportJob.objects.defer("content"), pk=job_id)
        return Response(ImportJobSerializer(job).data)


def _import_refused(detail: str, errors: list[str] | None = None, errors_more: int = 0) -> Response:
    return Response(
        {"detail": detail, "errors": errors or [], "errors_more": errors_more}, status=status.HTTP_400_BAD_REQUEST
    )
