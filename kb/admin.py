"""Admin for KB editors: entries with phrasings inline, history and revert, bulk actions, import
with a preview, and export. Every write goes through kb.services. The hit-testing page is added
from above, by chatbot.evaluation.admin."""

from __future__ import annotations

from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db import transaction
from django.forms.models import BaseInlineFormSet
from django.http import HttpResponse, HttpResponseBadRequest
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path
from simple_history.admin import SimpleHistoryAdmin

from kb import services
from kb.embedding_state import embedding_state, entries_in_embedding_state, entries_with_embedding_counts
from kb.exporting import FORMATS, export_rows, render
from kb.importing import ImportFileError, entries_import, read_rows_from_bytes
from kb.models import EmbeddingState, Entry, IndexVersion, Variant, text_hash

MAX_UPLOAD_BYTES = 20 * 1024 * 1024
# The entry's own fields, edited on its page, in the changelist (published) and by a history revert.
ENTRY_FIELDS = ("question", "answer", "category", "language", "is_published")


class VariantInlineFormSet(BaseInlineFormSet):
    """Phrasings edited inline, checked against the services' rules before anything is saved, so
    that saving them (EntryAdmin.save_formset) cannot fail half-way."""

    def clean(self):
        super().clean()
        if any(self.errors):
            return
        # Compared as the services store them: text_hash ignores the whitespace they collapse.
        question = text_hash(self.instance.question or "")
        kept: dict[str, str] = {}
        edited = []
        for form in self.forms:
            variant, deleting = form.instance, self._should_delete_form(form)
            if variant.pk and variant.is_primary:
                if deleting or "text" in form.changed_data:
                    raise ValidationError(services.PRIMARY_READ_ONLY)
                continue
            text = form.cleaned_data.get("text")
            if deleting or not text:
                continue
            if text_hash(text) in kept:
                raise ValidationError(f"The phrasing {text!r} is there twice.")
            kept[text_hash(text)] = text
            if "text" in form.changed_data:
                edited.append(text)
        for text in edited:
            if text_hash(text) == question:
                raise ValidationError(f"The phrasing {text!r} is the entry's question already.")


class VariantInline(admin.TabularInline):
    model = Variant
    formset = VariantInlineFormSet
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
        if self.value() in EmbeddingState.values:
            return entries_in_embedding_state(queryset, self.value())
        return queryset


@admin.register(Entry)
class EntryAdmin(SimpleHistoryAdmin):
    list_display = ("question", "category", "language", "is_published", "phrasings", "embedding", "updated_at")
    list_filter = ("is_published", "language", EmbeddingStateFilter, "category")
    search_fields = ("question", "answer", "variants__text")
    list_editable = ("is_published",)
    fields = ENTRY_FIELDS
    inlines = [VariantInline]
    actions = ["publish", "unpublish", "reembed", "export_csv", "export_json", "export_xlsx"]
    change_list_template = "kb/entry_change_list.html"
    history_list_display = ["is_published", "category"]

    def get_queryset(self, request):
        return entries_with_embedding_counts(super().get_queryset(request))

    @admin.display(description="phrasings", ordering="n_variants")
    def phrasings(self, obj):
        return obj.n_variants

    @admin.display(description="embedding")
    def embedding(self, obj):
        state = embedding_state(failed=obj.n_failed, pending=obj.n_pending)
        count = {EmbeddingState.FAILED: obj.n_failed, EmbeddingState.PENDING: obj.n_pending}.get(state)
        return f"{state.value} ({count})" if count else state.value

    # --- saving: through kb.services, as the API and imports do ------------------------------
    def save_model(self, request, obj, form, change):
        """Create or update the entry with kb.services (its primary phrasing follows the question,
        and embedding is queued). Also the path of a history revert and of list_editable."""
        fields = {name: getattr(obj, name) for name in ENTRY_FIELDS}
        if change:
            services.entry_update(entry=obj, **fields)
            return
        created = services.entry_create(**fields)
        # The admin goes on with its own instance: the inlines and the response refer to it.
        obj.pk = created.pk
        obj.refresh_from_db()
        obj._state.adding = False

    def save_formset(self, request, form, formset, change):
        """Save the phrasings edited inline with kb.services' variant_* functions."""
        if formset.model is not Variant:
            super().save_formset(request, form, formset, change)
            return
        formset.save(commit=False)  # sorts the forms into deleted, changed and new; writes nothing
        for variant in formset.deleted_objects:
            services.variant_delete(variant=variant)
        for variant, _fields in formset.changed_objects:
            services.variant_update(variant=variant, text=variant.text)
        for variant in formset.new_objects:
            services.variant_create(entry=form.instance, text=variant.text)

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
        ]
        return extra + super().get_urls()

    def _page(self, request, template: str, **context) -> TemplateResponse:
        context = {**self.admin_site.each_context(request), "opts": self.model._meta, **context}
        return TemplateResponse(request, template, context)

    def import_view(self, request):
        """Upload -> preview (a dry run: every row checked, nothing saved) -> confirm."""
        if not self.has_add_permission(request) or not self.has_change_permission(request):
            return self._page(request, "kb/import.html", title="Import entries", denied=True)
        if request.method == "POST" and request.POST.get("confirm"):
            token = request.POST["confirm"]
            # Staged in shared storage: the preview may have been served by another process or host.
            staged = services.import_upload_get(token=token)
            if staged is None:
                messages.error(request, "That upload has expired; please choose the file again.")
                return redirect("admin:kb_entry_import")
            result = entries_import(rows=read_rows_from_bytes(staged.name, staged.content))
            services.import_upload_discard(token=token)
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
                token = services.import_upload_stage(name=upload.name, content=raw)
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


@admin.register(IndexVersion)
class IndexVersionAdmin(admin.ModelAdmin):
    list_display = ("id", "created_at", "kind", "vector_count", "entry_count", "embedder", "dimension", "kb_revision")

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
