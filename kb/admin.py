"""Admin for KB editors: entries with phrasings inline, history and revert, bulk actions, import
with a preview, export, and hit testing. Every write goes through kb.services."""

from __future__ import annotations

import secrets
import time
from pathlib import Path

from django.conf import settings
from django.contrib import admin, messages
from django.db import transaction
from django.db.models import Count, Exists, OuterRef, Q
from django.http import HttpResponse, HttpResponseBadRequest
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from simple_history.admin import SimpleHistoryAdmin

from kb import services
from kb.exporting import FORMATS, export_rows, render
from kb.hit_testing import hit_test, hit_test_rows, read_labelled_rows
from kb.importing import ImportFileError, entries_import, read_rows_from_bytes
from kb.models import EmbeddingState, Entry, IndexVersion, Variant

MAX_UPLOAD_BYTES = 20 * 1024 * 1024


class VariantInline(admin.TabularInline):
    model = Variant
    fields = ("text", "is_primary", "embedding_state", "embedding_error")
    readonly_fields = ("is_primary", "embedding_state", "embedding_error")
    extra = 3


class EmbeddingStateFilter(admin.SimpleListFilter):
    """Entries by the state of their phrasings' vectors."""

    title = "embedding state"
    parameter_name = "embedding"

    def lookups(self, request, model_admin):
        return [("failed", "Failed"), ("pending", "Pending"), ("embedded", "Embedded")]

    def queryset(self, request, queryset):
        failed = Variant.objects.filter(entry=OuterRef("pk"), embedding_state=EmbeddingState.FAILED)
        dirty = Variant.objects.filter(entry=OuterRef("pk"), is_dirty=True)
        if self.value() == "failed":
            return queryset.filter(Exists(failed))
        if self.value() == "pending":
            return queryset.filter(Exists(dirty)).exclude(Exists(failed))
        if self.value() == "embedded":
            return queryset.exclude(Exists(dirty))
        return queryset


@admin.register(Entry)
class EntryAdmin(SimpleHistoryAdmin):
    list_display = ("question", "category", "language", "is_published", "phrasings", "embedding", "updated_at")
    list_filter = ("is_published", "language", EmbeddingStateFilter, "category")
    search_fields = ("question", "answer", "variants__text")
    list_editable = ("is_published",)
    fields = ("question", "answer", "category", "language", "is_published")
    inlines = [VariantInline]
    actions = ["publish", "unpublish", "reembed", "export_csv", "export_json", "export_xlsx"]
    change_list_template = "kb/entry_change_list.html"
    history_list_display = ["is_published", "category"]

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .annotate(
                n_variants=Count("variants", distinct=True),
                n_pending=Count("variants", filter=Q(variants__is_dirty=True), distinct=True),
                n_failed=Count("variants", filter=Q(variants__embedding_state=EmbeddingState.FAILED), distinct=True),
            )
        )

    @admin.display(description="phrasings", ordering="n_variants")
    def phrasings(self, obj):
        return obj.n_variants

    @admin.display(description="embedding")
    def embedding(self, obj):
        if obj.n_failed:
            return f"failed ({obj.n_failed})"
        if obj.n_pending:
            return f"pending ({obj.n_pending})"
        return "embedded"

    # --- saving: the same rules as the services --------------------------------------------
    def save_model(self, request, obj, form, change):
        # Also the path of a history revert: the primary phrasing follows the restored question.
        super().save_model(request, obj, form, change)
        services.entry_variants_sync(entry=obj)
        services.kb_changed_notify()

    def save_related(self, request, form, formsets, change):
        super().save_related(request, form, formsets, change)
        # Inline edits bypass entry_update: re-establish the primary phrasing and queue embedding.
        services.entry_variants_sync(entry=form.instance)
        services.kb_changed_notify()

    @transaction.atomic
    def delete_model(self, request, obj):
        services.entry_delete(entry=obj)

    @transaction.atomic
    def delete_queryset(self, request, queryset):
        services.entries_delete(entry_ids=list(queryset.values_list("id", flat=True)))

    # --- bulk actions ------------------------------------------------------------------------
    @admin.action(description="Publish selected entries", permissions=["change"])
    def publish(self, request, queryset):
        count = services.entries_set_published(entry_ids=list(queryset.values_list("id", flat=True)), published=True)
        self.message_user(request, f"Published {count} entries.", messages.SUCCESS)

    @admin.action(description="Unpublish selected entries", permissions=["change"])
    def unpublish(self, request, queryset):
        count = services.entries_set_published(entry_ids=list(queryset.values_list("id", flat=True)), published=False)
        self.message_user(request, f"Unpublished {count} entries.", messages.SUCCESS)

    @admin.action(description="Re-embed selected entries", permissions=["change"])
    def reembed(self, request, queryset):
        count = services.entries_reembed(entry_ids=list(queryset.values_list("id", flat=True)))
        self.message_user(request, f"Queued {count} phrasings for embedding.", messages.SUCCESS)

    def _export(self, queryset, fmt: str) -> HttpResponse:
        response = HttpResponse(render(export_rows(queryset), fmt), content_type=FORMATS[fmt])
        response["Content-Disposition"] = f'attachment; filename="kb-entries.{fmt}"'
        return response

    @admin.action(description="Export selected as CSV", permissions=["view"])
    def export_csv(self, request, queryset):
        return self._export(queryset, "csv")

    @admin.action(description="Export selected as JSON", permissions=["view"])
    def export_json(self, request, queryset):
        return self._export(queryset, "json")

    @admin.action(description="Export selected as XLSX", permissions=["view"])
    def export_xlsx(self, request, queryset):
        return self._export(queryset, "xlsx")

    # --- extra pages -------------------------------------------------------------------------
    def get_urls(self):
        extra = [
            path("import/", self.admin_site.admin_view(self.import_view), name="kb_entry_import"),
            path("export/", self.admin_site.admin_view(self.export_view), name="kb_entry_export"),
            path("hit-testing/", self.admin_site.admin_view(self.hit_testing_view), name="kb_entry_hit_testing"),
        ]
        return extra + super().get_urls()

    def _page(self, request, template: str, **context) -> TemplateResponse:
        context = {**self.admin_site.each_context(request), "opts": self.model._meta, **context}
        return TemplateResponse(request, template, context)

    def import_view(self, request):
        """Upload -> preview (a dry run: every row checked, nothing saved) -> confirm."""
        if not self.has_add_permission(request) or not self.has_change_permission(request):
            return self._page(request, "kb/import.html", title="Import entries", denied=True)
        uploads = settings.VAR_DIR / "imports"
        if request.method == "POST" and request.POST.get("confirm"):
            token = request.POST["confirm"]
            stored = next(iter(uploads.glob(f"{Path(token).name}.*")), None) if token.isalnum() else None
            if stored is None:
                messages.error(request, "That upload has expired; please choose the file again.")
                return redirect("admin:kb_entry_import")
            result = entries_import(rows=read_rows_from_bytes(stored.name, stored.read_bytes()))
            stored.unlink(missing_ok=True)
            if result.ok:
                messages.success(request, f"Imported: {result.created} created, {result.updated} updated.")
                return redirect("admin:kb_entry_changelist")
            return self._page(request, "kb/import.html", title="Import entries", errors=result.errors)
        if request.method == "POST":
            upload = request.FILES.get("file")
            if upload is None:
                return self._page(request, "kb/import.html", title="Import entries", errors=["Choose a file."])
            if upload.size > MAX_UPLOAD_BYTES:
                return self._page(request, "kb/import.html", title="Import entries", errors=["The file is over 20 MB."])
            raw = upload.read()
            try:
                rows = read_rows_from_bytes(upload.name, raw)
            except ImportFileError as exc:
                return self._page(request, "kb/import.html", title="Import entries", errors=[str(exc)])
            preview = entries_import(rows=rows, dry_run=True)
            token = None
            if preview.ok:
                token = secrets.token_hex(16)
                uploads.mkdir(parents=True, exist_ok=True)
                # Previews never confirmed would pile up: keep a day's worth.
                for stale in uploads.glob("*"):
                    if stale.stat().st_mtime < time.time() - 86400:
                        stale.unlink(missing_ok=True)
                (uploads / f"{token}{Path(upload.name).suffix.lower()}").write_bytes(raw)
            return self._page(
                request,
                "kb/import.html",
                title="Import entries: preview",
                preview=preview,
                token=token,
                filename=upload.name,
                errors=preview.errors,
            )
        return self._page(request, "kb/import.html", title="Import entries")

    def export_view(self, request):
        """All entries (or the changelist's filter) as CSV, JSON or XLSX."""
        if not self.has_view_permission(request):
            return HttpResponse(status=403)
        fmt = request.GET.get("format", "csv")
        if fmt not in FORMATS:
            return HttpResponseBadRequest(f"unknown format {fmt!r}")
        return self._export(Entry.objects.all(), fmt)

    def hit_testing_view(self, request):
        """Type or paste questions (one a line), or upload a labelled file, and see what the bot
        would do with each, computed by the live chat pipeline."""
        context = {
            "title": "Hit testing",
            "questions": "",
            "thresholds_url": reverse("admin:chatbot_decisionthresholds_changelist"),
        }
        if request.method == "POST":
            upload = request.FILES.get("file")
            if upload is not None:
                try:
                    report = hit_test_rows(read_labelled_rows(upload.name, upload.read()))
                except ImportFileError as exc:
                    context["errors"] = [str(exc)]
                else:
                    context.update(report=report, errors=report.errors, filename=upload.name)
            else:
                text = request.POST.get("questions", "")
                lines = [line for line in text.splitlines() if line.strip()][:200]
                context.update(questions=text, results=hit_test(lines))
        context["admin_entry_url"] = reverse("admin:kb_entry_changelist")
        return self._page(request, "kb/hit_testing.html", **context)


@admin.register(IndexVersion)
class IndexVersionAdmin(admin.ModelAdmin):
    list_display = ("id", "created_at", "kind", "vector_count", "entry_count", "embedder", "dimension", "kb_revision")

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
