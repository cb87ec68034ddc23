"""Admin for KB editors: entries with phrasings inline, history and revert, bulk actions, import
with a preview, and export. Every write goes through kb.services. The hit-testing page is added
from above, by chatbot.evaluation.admin."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.db.models import Count, Q
from django.forms.models import BaseInlineFormSet
from django.http import Http404, HttpResponse, HttpResponseBadRequest
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe
from simple_history.admin import SimpleHistoryAdmin

from kb import services
from kb.embedding_models import embedding_model_active
from kb.embedding_state import (
    embedding_counts,
    embedding_state,
    entries_in_embedding_state,
    entries_with_embedding_counts,
    waiting_for_index,
)
from kb.exporting import FORMATS, export_rows, render
from kb.import_files import ImportLimits, size_check
from kb.import_jobs import import_job_confirm, import_job_confirmable, import_job_create, import_job_record
from kb.importing import ImportFileError, entries_import, read_rows_from_bytes, upload_rows_if_small
from kb.models import (
    EmbeddingModel,
    EmbeddingState,
    Entry,
    ImportJob,
    IndexVersion,
    Language,
    Variant,
    entry_phrasings,
    text_hash,
)
from kb.text import text_clean, text_sanitise

# The entry's own fields, edited on its page, in the changelist (published) and by a history revert.
ENTRY_FIELDS = ("question", "answer", "category", "language", "is_published")


def _other_language(language: str) -> str:
    # Entries are in one of two languages (kb.models.Language): the other is the one translated to.
    return Language.CHINESE if language == Language.ENGLISH else Language.ENGLISH


NOTHING_LEFT = "Nothing is left of this text once control, zero-width and bidi characters are removed."


def _text_kept(text: str | None, *, multiline: bool = False) -> str:
    """``text`` as kb.services will store it (kb.text.text_clean), refused if that leaves nothing
    of a text that was given: the save would fail on it (a 500) after the form said yes."""
    kept = text_clean(text, multiline=multiline)
    if text and not kept:
        raise ValidationError(NOTHING_LEFT)
    return kept


class CategoryInput(forms.TextInput):
    """A text input that suggests the categories in use (a datalist): typing picks an existing one
    rather than a near-duplicate."""

    def render(self, name, value, attrs=None, renderer=None):
        list_id = f"{(attrs or {}).get('id', name)}-choices"
        attrs = {**(attrs or {}), "list": list_id, "autocomplete": "off"}
        options = format_html_join("", '<option value="{}">', ((c,) for c in categories_in_use()))
        field = super().render(name, value, attrs, renderer)
        return format_html('{}<datalist id="{}">{}</datalist>', field, list_id, options)


def categories_in_use() -> list[str]:
    """Every category an entry has, in order."""
    return list(Entry.objects.exclude(category="").order_by("category").values_list("category", flat=True).distinct())


class EntryForm(forms.ModelForm):
    """The entry's own fields, cleaned by the rule every write path shares, its answer for
    questions in the other language (Entry.translations), and phrasings pasted in bulk."""

    more_phrasings = forms.CharField(
        label="Add phrasings",
        required=False,
        widget=forms.Textarea(attrs={"rows": 3, "cols": 80, "placeholder": "One phrasing a line"}),
        help_text="Paste any number, one a line: added to the phrasings below (repeats and the question are skipped).",
    )

    translated_answer = forms.CharField(
        label="Answer for questions in the other language",
        required=False,
        widget=forms.Textarea(attrs={"rows": 4, "cols": 80}),
        help_text="Chinese for an English entry, English for a Chinese one: a question asked in that language "
        "gets this answer. Leave empty to answer every language with the answer above.",
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        translations = getattr(self.instance, "translations", None) or {}
        other = _other_language(getattr(self.instance, "language", None) or Language.ENGLISH)
        self.fields["translated_answer"].initial = translations.get(other, "")

    def clean_translated_answer(self):
        return _text_kept(self.cleaned_data.get("translated_answer"), multiline=True)

    def translations(self) -> dict[str, str]:
        """The form's answer in the other language, keyed by that language's code."""
        text = self.cleaned_data.get("translated_answer") or ""
        language = self.cleaned_data.get("language") or Language.ENGLISH
        return {_other_language(language): text} if text else {}

    def clean_question(self):
        return _text_kept(self.cleaned_data.get("question"))

    def clean_answer(self):
        return _text_kept(self.cleaned_data.get("answer"), multiline=True)

    def clean_category(self):
        # Optional: nothing left is no category, as kb.services stores it.
        return text_clean(self.cleaned_data.get("category"))

    def clean_more_phrasings(self):
        lines = (self.cleaned_data.get("more_phrasings") or "").splitlines()
        return [text for text in (text_clean(line) for line in lines) if text]


class VariantForm(forms.ModelForm):
    """A phrasing edited inline, without the characters kb.services drops, so the formset's
    duplicate checks compare the texts that will be saved. The primary phrasing is the entry's
    question: shown, not editable here (it is edited in one place, the question field)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.instance.pk and self.instance.is_primary:
            self.fields["text"].disabled = True
            # A tabular inline shows no per-row help text: the hint goes on the field itself.
            self.fields["text"].widget.attrs["title"] = "The entry's question: edit it in the Question field above."

    def clean_text(self):
        text = self.cleaned_data.get("text") or ""
        _text_kept(text)
        # Whitespace is left for kb.services to collapse: VariantInlineFormSet's own checks ignore
        # it and name the phrasing that repeats the question or another one.
        return text_sanitise(text)


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
    form = VariantForm
    formset = VariantInlineFormSet
    fields = ("text", "is_primary", "embedding", "embedding_error")
    readonly_fields = ("is_primary", "embedding", "embedding_error")
    extra = 3

    @admin.display(description="embedding state")
    def embedding(self, obj):
        # A row not saved yet has no state (its default, "pending", would say it waits for a vector).
        return obj.get_embedding_state_display() if obj.pk else ""


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


class HeldFilter(admin.SimpleListFilter):
    """Entries held unpublished by screening (kb.screening)."""

    title = "held for review"
    parameter_name = "held"

    def lookups(self, request, model_admin):
        return [("yes", "Held"), ("no", "Not held")]

    def queryset(self, request, queryset):
        if self.value() == "yes":
            return queryset.exclude(held_reason="")
        if self.value() == "no":
            return queryset.filter(held_reason="")
        return queryset


class CategoryFilter(admin.SimpleListFilter):
    """Entries by category, as a drop-down: a knowledge base may have a hundred categories."""

    title = "category"
    parameter_name = "category"
    template = "kb/select_filter.html"

    def lookups(self, request, model_admin):
        return [(name, name) for name in categories_in_use()]

    def queryset(self, request, queryset):
        return queryset.filter(category=self.value()) if self.value() is not None else queryset


@admin.register(Entry)
class EntryAdmin(SimpleHistoryAdmin):
    list_display = (
        "question",
        "category_cell",
        "language",
        "is_published",
        "held",
        "phrasings",
        "embedding",
        "updated_at",
    )
    list_filter = ("is_published", HeldFilter, "language", EmbeddingStateFilter, CategoryFilter)
    search_fields = ("question", "answer", "variants__text")
    list_editable = ("is_published",)
    form = EntryForm
    fields = (
        "question",
        "answer",
        "translated_answer",
        "category",
        "language",
        "is_published",
        "held_reason",
        "more_phrasings",
    )
    readonly_fields = ("held_reason",)
    inlines = [VariantInline]
    actions = ["publish", "unpublish", "reembed", "export_csv", "export_json", "export_xlsx"]
    change_list_template = "kb/entry_change_list.html"
    change_form_template = "kb/entry_change_form.html"
    history_list_display = ["is_published", "category"]
    object_history_form_template = "kb/entry_history_form.html"

    def get_queryset(self, request):
        return entries_with_embedding_counts(super().get_queryset(request))

    def formfield_for_dbfield(self, db_field, request, **kwargs):
        if db_field.name == "category":
            kwargs["widget"] = CategoryInput(attrs={"class": "vTextField"})
        return super().formfield_for_dbfield(db_field, request, **kwargs)

    @admin.display(description="category", ordering="category")
    def category_cell(self, obj):
        # Long category names (BANKING77 has 77 of up to 50 characters) must not squeeze the question.
        return format_html('<span class="category-cell" title="{}">{}</span>', obj.category, obj.category)

    @admin.display(description="phrasings", ordering="n_variants")
    def phrasings(self, obj):
        return obj.n_variants

    @admin.display(description="held for review")
    def held(self, obj):
        return obj.held_reason or ""

    @admin.display(description="embedding")
    def embedding(self, obj):
        state = embedding_state(
            failed=obj.n_failed, pending=obj.n_pending, unindexed=waiting_for_index(obj.changed_revision, obj.live)
        )
        count = {EmbeddingState.FAILED: obj.n_failed, EmbeddingState.PENDING: obj.n_pending}.get(state)
        return f"{state.value} ({count})" if count else state.value

    # --- saving: through kb.services, as the API and imports do ------------------------------
    def save_model(self, request, obj, form, change):
        """Nothing is written yet: the entry's fields are saved with its phrasings in save_related,
        in one kb.services call (one history row with both, one index version). A history revert,
        which no save_related follows, is saved here with that version's phrasings."""
        fields = {name: getattr(obj, name) for name in ENTRY_FIELDS}
        if isinstance(form, EntryForm):  # the change form and a revert, not the changelist's column
            fields["translations"] = form.translations()
        version_id = getattr(request, "_kb_revert_version", None)
        if version_id is not None:
            services.entry_revert(entry=obj, version_id=version_id, **fields)
            self._warn_if_held(request, obj)
            return
        obj._kb_fields = fields

    def save_related(self, request, form, formsets, change):
        """Create or update the entry with kb.services: its fields, the phrasings edited inline (its
        primary phrasing follows the question) and embedding queued, as the API and imports do.
        Also the path of the changelist's "published" column (no formsets)."""
        obj = form.instance
        fields = obj.__dict__.pop("_kb_fields", None) or {name: getattr(obj, name) for name in ENTRY_FIELDS}
        phrasings, renamed = None, None
        for formset in formsets:
            if formset.model is Variant:
                phrasings, renamed = self._phrasings_after(obj, formset)
            else:
                formset.save()
        pasted = form.cleaned_data.get("more_phrasings") if isinstance(form, EntryForm) else None
        if pasted:
            # Repeats and the question itself are dropped by kb.services, as for an import.
            phrasings = [*(phrasings if phrasings is not None else entry_phrasings(entry_id=obj.pk)), *pasted]
        if change:
            services.entry_update(entry=obj, variants=phrasings, renamed=renamed, **fields)
        else:
            created = services.entry_create(variants=phrasings or [], **fields)
            # The admin goes on with its own instance: the change message and the response use it.
            obj.pk = created.pk
            obj.refresh_from_db()
            obj._state.adding = False
        self._warn_if_held(request, obj)

    @staticmethod
    def _phrasings_after(entry: Entry, formset) -> tuple[list[str], dict[int, str]]:
        """The entry's alternate phrasings once the inline's deletions, edits and additions apply,
        and the edited ones by id. Started from the stored ones, so a phrasing added meanwhile
        elsewhere (the API, an import) is kept, not dropped for being absent from the page."""
        formset.save(commit=False)  # sorts the forms into deleted, changed and new; writes nothing
        stored = {}
        if entry.pk is not None:
            rows = Variant.objects.filter(entry_id=entry.pk, is_primary=False).order_by("id")
            stored = dict(rows.values_list("pk", "text"))
        for variant in formset.deleted_objects:
            stored.pop(variant.pk, None)
        renamed = {}
        for variant, _fields in formset.changed_objects:
            if variant.pk in stored:
                stored[variant.pk] = renamed[variant.pk] = variant.text
        return [*stored.values(), *(variant.text for variant in formset.new_objects)], renamed

    def _warn_if_held(self, request, obj) -> None:
        if obj.held_reason:
            self.message_user(
                request,
                f"“{obj.question}” is held unpublished for review: {obj.held_reason}. "
                "Rewrite the answer (or allow the contact details) and save again to publish it.",
                messages.WARNING,
            )

    # --- history: phrasings are kept and restored with the entry --------------------------------
    def history_form_view(self, request, object_id, version_id, extra_context=None):
        """A version of the entry, with the phrasings a revert restores (kb.services.entry_revert)."""
        record = Entry.history.filter(id=object_id, history_id=version_id).first()
        if request.method == "POST":
            entry = Entry.objects.filter(pk=object_id).first()
            if record is None or entry is None or not self.has_change_permission(request, entry):
                raise PermissionDenied
            request._kb_revert_version = int(version_id)
        context = {**(extra_context or {})}
        if record is not None:
            current = entry_phrasings(entry_id=record.id)
            context["version_phrasings"] = record.phrasings
            if record.phrasings is not None:
                context["phrasings_restored"] = [t for t in record.phrasings if t not in current]
                context["phrasings_dropped"] = [t for t in current if t not in record.phrasings]
        return super().history_form_view(request, object_id, version_id, context)

    def set_history_delta_changes(self, request, historical_records, foreign_keys_are_objs=True):
        """The history list's "Changes" column, with the phrasings each save added and removed."""
        super().set_history_delta_changes(request, historical_records, foreign_keys_are_objs)
        records = list(historical_records)
        for newer, older in zip(records, records[1:], strict=False):
            if newer.phrasings is None or older.phrasings is None:
                continue
            removed = [t for t in older.phrasings if t not in newer.phrasings]
            added = [t for t in newer.phrasings if t not in older.phrasings]
            if removed or added:
                change = {
                    "field": "phrasings",
                    "old": "; ".join(f"− {t}" for t in removed) or "",
                    "new": "; ".join(f"+ {t}" for t in added) or "",
                }
                newer.history_delta_changes = [*(getattr(newer, "history_delta_changes", None) or []), change]

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
        held = queryset.exclude(held_reason="").count()
        if held:
            warning = f"{held} held for review stay unpublished until their text passes."
            self.message_user(request, warning, messages.WARNING)

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
            path(
                "import/jobs/<uuid:job_id>/",
                self.admin_site.admin_view(self.import_job_view),
                name="kb_entry_import_job",
            ),
            path("export/", self.admin_site.admin_view(self.export_view), name="kb_entry_export"),
            path("categories/", self.admin_site.admin_view(self.categories_view), name="kb_entry_categories"),
        ]
        return extra + super().get_urls()

    def _page(self, request, template: str, **context) -> TemplateResponse:
        context = {**self.admin_site.each_context(request), "opts": self.model._meta, **context}
        return TemplateResponse(request, template, context)

    def _import_page(self, request, **context) -> TemplateResponse:
        context.setdefault("title", "Import entries")
        # The upload itself (content) stays in the database.
        jobs = ImportJob.objects.defer("content")[:5]
        return self._page(request, "kb/import.html", recent_jobs=jobs, limits=ImportLimits.from_settings(), **context)

    def _can_import(self, request) -> bool:
        return self.has_add_permission(request) and self.has_change_permission(request)

    def import_view(self, request):
        """Upload -> preview (a dry run: every row checked, nothing saved) -> confirm. A file over
        KB_IMPORT_INLINE_MAX_ROWS rows is previewed and imported by a background job instead
        (import_job_view); a file over an import limit is refused before it is read."""
        if not self._can_import(request):
            return self._page(request, "kb/import.html", title="Import entries", denied=True)
        if request.method == "POST" and request.POST.get("confirm"):
            token = request.POST["confirm"]
            # Staged in shared storage: the preview may have been served by another process or host.
            staged = services.import_upload_get(token=token)
            if staged is None:
                messages.error(request, "That upload has expired; please choose the file again.")
                return redirect("admin:kb_entry_import")
            unpublished = bool(request.POST.get("unpublished"))
            try:
                result = entries_import(rows=read_rows_from_bytes(staged.name, staged.content), unpublished=unpublished)
            except ImportFileError as exc:  # the limits were lowered since the preview
                return self._import_page(request, errors=[str(exc)])
            finally:
                services.import_upload_discard(token=token)
            if result.ok:
                # The file's own name, for the job list (the staged copy is named by its token).
                name = text_clean(request.POST.get("filename", "")) or staged.name
                job = import_job_record(name=name, result=result, unpublished=unpublished, user=request.user)
                messages.success(request, f"Imported: {result.created} created, {result.updated} updated.")
                return redirect("admin:kb_entry_import_job", job_id=job.pk)
            return self._import_page(request, errors=result.errors, errors_more=result.errors_more)
        if request.method == "POST":
            upload = request.FILES.get("file")
            if upload is None:
                return self._import_page(request, errors=["Choose a file."])
            try:
                size_check(upload.name, upload.size)  # before reading it
                raw = upload.read()
                rows = upload_rows_if_small(upload.name, raw)
            except ImportFileError as exc:
                return self._import_page(request, errors=[str(exc)])
            if rows is None:
                job = import_job_create(name=upload.name, content=raw, dry_run=True, user=request.user)
                return redirect("admin:kb_entry_import_job", job_id=job.pk)
            preview = entries_import(rows=rows, dry_run=True)
            token = None
            if preview.ok:
                token = services.import_upload_stage(name=upload.name, content=raw)
            return self._import_page(
                request,
                title="Import entries: preview",
                preview=preview,
                plan=preview.plan,
                # A file whose answers look like no answers comes in unpublished unless asked.
                default_unpublished=preview.warning_count > 0,
                token=token,
                filename=upload.name,
                errors=preview.errors,
                errors_more=preview.errors_more,
            )
        return self._import_page(request)

    def import_job_view(self, request, job_id):
        """A background import's progress (the page reloads itself until the job ends); a finished
        dry run's counts and row errors, with the button that imports the file for real."""
        if not self._can_import(request):
            return self._page(request, "kb/import.html", title="Import entries", denied=True)
        job = ImportJob.objects.defer("content").filter(pk=job_id).first()
        if job is None:
            raise Http404("No such import job.")
        if request.method == "POST" and request.POST.get("confirm"):
            started = import_job_confirm(job=job, unpublished=bool(request.POST.get("unpublished")), user=request.user)
            if started is None:
                messages.error(request, "That upload was imported already or has expired; choose the file again.")
                return redirect("admin:kb_entry_import")
            return redirect("admin:kb_entry_import_job", job_id=started.pk)
        progress = None
        if job.state == ImportJob.State.DONE and not job.dry_run:
            progress = embedding_counts(Entry.objects.filter(id__in=job.entry_ids))
            progress["total"] = sum(progress.values())
        return self._page(
            request,
            "kb/import_job.html",
            title=f"{'Checking' if job.dry_run else 'Importing'} {job.file_name}",
            job=job,
            errors_more=job.error_count - len(job.errors),
            can_confirm=import_job_confirmable(job_id=job.pk),
            default_unpublished=job.warning_count > 0,
            plan=job.preview,
            progress=progress,
            # The page reloads itself while the job runs or its entries are not all searchable yet.
            refresh=not job.finished or bool(progress and progress["pending"]),
        )

    def categories_view(self, request):
        """Every category with its entries; rename one, or merge it into another by giving that
        one's name."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        if request.method == "POST":
            if not self.has_change_permission(request):
                raise PermissionDenied
            old, new = request.POST.get("old", ""), request.POST.get("new", "")
            merging = new.strip() and Entry.objects.filter(category=text_clean(new)).exists()
            try:
                count = services.category_rename(old=old, new=new)
            except services.EntryInvalid as exc:
                messages.error(request, str(exc))
            else:
                verb = "Merged" if merging else "Renamed"
                messages.success(request, f"{verb} “{old}” into “{text_clean(new) or '(none)'}”: {count} entries.")
            return redirect("admin:kb_entry_categories")
        rows = (
            Entry.objects.values("category")
            .annotate(entries=Count("id"), published=Count("id", filter=Q(is_published=True)))
            .order_by("category")
        )
        return self._page(
            request,
            "kb/categories.html",
            title="Categories",
            categories=rows,
            can_change=self.has_change_permission(request),
            all_categories=categories_in_use(),
        )

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
    list_display = (
        "id",
        "created_at",
        "kind",
        "vector_count",
        "entry_count",
        "classifier",
        "embedder",
        "dimension",
        "kb_revision",
    )

    @admin.display(description="entry classifier")
    def classifier(self, obj: IndexVersion) -> str:
        """Whether the entry classifier ranks this version, and what held-out phrasings said."""
        report = obj.entry_head or {}
        if not report:
            return "-"
        measured = ""
        if "top1_cosine" in report:
            p_value = report["p_value"]  # rounded to 4 places when stored
            p_text = "p < 0.0001" if p_value < 0.0001 else f"p = {p_value:.2g}"
            cosine, with_head = report["top1_cosine"], report["top1_with_head"]
            measured = f"held-out top-1 {cosine:.1%} by cosine, {with_head:.1%} with it ({p_text})"
        if report.get("kept"):
            reused = ", refitted with the weight chosen before" if report.get("reused") else ""
            line = f"ranks (weight {report['weight']}{reused}); {measured}".rstrip("; ")
            if report.get("reranks"):
                line += (
                    f"; where its two best entries are within {report['rerank_margin']}, a second classifier "
                    f"reading both models re-ranks (weight {report['rerank_weight']}; "
                    f"{report['rerank_share']:.1%} of held-out phrasings, top-1 {report['top1_reranked']:.1%})"
                )
            elif "rerank_reason" in report:
                line += f"; no re-ranking: {report['rerank_reason']}"
            return line
        return f"not used: {report.get('reason', '')}"

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


def _by_half(record: dict | None, key: str, line) -> str:
    """One line per half of a kb_tune run that has ``key`` in its part of ``record`` (scores or
    data): the English model's (top level), then the USE adapter's, prefixed with its name."""
    halves = [("", record or {}), ("USE adapter ", (record or {}).get("use_adapter") or {})]
    lines = [name + line(half) for name, half in halves if key in half]
    return format_html_join(mark_safe("<br>"), "{}", ((text,) for text in lines)) if lines else "-"


def _scores_line(scores: dict, key: str, fmt: str) -> str:
    """Was → tuned for each half a run measured."""
    return _by_half(
        scores, "active", lambda half: f"{format(half['active'][key], fmt)} → {format(half['tuned'][key], fmt)}"
    )


@admin.register(EmbeddingModel)
class EmbeddingModelAdmin(admin.ModelAdmin):
    """Model versions: the base model and what kb_tune trained, with their held-out scores against
    the version that was active then; "Tune now" starts a run, and any kept version can be switched
    to (back) in one step, atomically, with its vectors still stored."""

    change_list_template = "kb/embeddingmodel_change_list.html"
    list_display = (
        "label",
        "state",
        "top1",
        "f1",
        "paired_tests",
        "training_time",
        "trained_on",
        "created_at",
        "activated_at",
        "switch",
    )
    fields = ("label", "state", "reason", "parent", "scores", "data", "training_seconds", "created_at", "activated_at")
    readonly_fields = fields

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    @admin.display(description="held-out top-1 (was → tuned)")
    def top1(self, obj):
        return _scores_line(obj.scores, "top1", ".1%")

    @admin.display(description="answer F1 (was → tuned)")
    def f1(self, obj):
        return _scores_line(obj.scores, "f1", ".3f")

    @admin.display(description="p (top-1, F1)")
    def paired_tests(self, obj):
        return _by_half(obj.scores, "p_top1", lambda half: f"{half['p_top1']:.3g}, {half['p_f1']:.3g}")

    @admin.display(description="training")
    def training_time(self, obj):
        if obj.state == EmbeddingModel.State.TRAINING:
            return obj.reason or "starting"
        return f"{obj.training_seconds / 60:.1f} min" if obj.training_seconds else "-"

    @admin.display(description="phrasings (held out)")
    def trained_on(self, obj):
        return _by_half(
            obj.data,
            "train_phrasings",
            lambda d: f"{d['train_phrasings']} of {d['entries']} entries ({d['held_out']} + {d['out_of_scope']})",
        )

    @admin.display(description="")
    def switch(self, obj):
        if obj.state != EmbeddingModel.State.AVAILABLE:
            return ""
        url = reverse("admin:kb_embeddingmodel_switch", args=[obj.pk])
        return format_html('<a class="button" href="{}">Switch to {}</a>', url, obj.label)

    def get_urls(self):
        extra = [
            path("tune/", self.admin_site.admin_view(self.tune_view), name="kb_embeddingmodel_tune"),
            path("<int:pk>/switch/", self.admin_site.admin_view(self.switch_view), name="kb_embeddingmodel_switch"),
        ]
        return extra + super().get_urls()

    def changelist_view(self, request, extra_context=None):
        embedding_model_active()  # the base model's row, on first visit
        running = EmbeddingModel.objects.filter(state=EmbeddingModel.State.TRAINING).exists()
        return super().changelist_view(request, {**(extra_context or {}), "tuning_running": running})

    def _can_switch(self, request) -> bool:
        return self.has_view_permission(request) and request.user.has_perm("kb.change_embeddingmodel")

    def tune_view(self, request):
        """POST: queue a kb_tune run (the page lists it as "training" once a worker picks it up)."""
        if request.method != "POST":
            return redirect("admin:kb_embeddingmodel_changelist")
        if not self._can_switch(request):
            return HttpResponse(status=403)
        try:
            services.kb_tune_enqueue()
        except Exception as exc:  # noqa: BLE001 - the broker is down: say so, nothing was started
            messages.error(request, f"Could not queue the tuning run ({type(exc).__name__}); try again.")
        else:
            messages.success(request, "Tuning queued: it trains for several minutes; this list shows its progress.")
        return redirect("admin:kb_embeddingmodel_changelist")

    def switch_view(self, request, pk):
        """GET: what switching to this version means; POST: switch (the rollback too)."""
        model = EmbeddingModel.objects.filter(pk=pk).first()
        if model is None:
            raise Http404("No such model version.")
        if not self._can_switch(request):
            return HttpResponse(status=403)
        active = embedding_model_active()
        if request.method == "POST":
            try:
                version = services.embedding_model_activate(model=model, reason=f"switched by {request.user}")
            except ValueError as exc:
                messages.error(request, str(exc))
            else:
                messages.success(
                    request,
                    f"{model.label} is active: index v{version.pk} of its vectors is live ({active.label} kept).",
                )
            return redirect("admin:kb_embeddingmodel_changelist")
        stored = model.vectors.count()
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": f"Switch to {model.label}",
            "model": model,
            "active": active,
            "stored_vectors": stored,
            "phrasings": Variant.objects.count(),
            "can_switch": model.state == EmbeddingModel.State.AVAILABLE,
        }
        return TemplateResponse(request, "kb/embeddingmodel_switch.html", context)
