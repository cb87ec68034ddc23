"""Admin for KB editors: entries with phrasings inline, history and revert, bulk actions, import
with a preview, and export. Every write goes through kb.services. The hit-testing page is added
from above, by chatbot.evaluation.admin."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db import transaction
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
from kb.embedding_state import embedding_state, entries_in_embedding_state, entries_with_embedding_counts
from kb.exporting import FORMATS, export_rows, render
from kb.import_files import ImportLimits, size_check
from kb.import_jobs import import_job_confirm, import_job_confirmable, import_job_create
from kb.importing import ImportFileError, entries_import, read_rows_from_bytes, upload_rows_if_small
from kb.models import EmbeddingModel, EmbeddingState, Entry, ImportJob, IndexVersion, Variant, text_hash
from kb.text import text_clean, text_sanitise

# The entry's own fields, edited on its page, in the changelist (published) and by a history revert.
ENTRY_FIELDS = ("question", "answer", "category", "language", "is_published")


NOTHING_LEFT = "Nothing is left of this text once control, zero-width and bidi characters are removed."


def _text_kept(text: str | None, *, multiline: bool = False) -> str:
    """``text`` as kb.services will store it (kb.text.text_clean), refused if that leaves nothing
    of a text that was given: the save would fail on it (a 500) after the form said yes."""
    kept = text_clean(text, multiline=multiline)
    if text and not kept:
        raise ValidationError(NOTHING_LEFT)
    return kept


class EntryForm(forms.ModelForm):
    """The entry's own fields, cleaned by the rule every write path shares."""

    def clean_question(self):
        return _text_kept(self.cleaned_data.get("question"))

    def clean_answer(self):
        return _text_kept(self.cleaned_data.get("answer"), multiline=True)

    def clean_category(self):
        # Optional: nothing left is no category, as kb.services stores it.
        return text_clean(self.cleaned_data.get("category"))


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


@admin.register(Entry)
class EntryAdmin(SimpleHistoryAdmin):
    list_display = (
        "question",
        "category",
        "language",
        "is_published",
        "held",
        "phrasings",
        "embedding",
        "updated_at",
    )
    list_filter = ("is_published", HeldFilter, "language", EmbeddingStateFilter, "category")
    search_fields = ("question", "answer", "variants__text")
    list_editable = ("is_published",)
    form = EntryForm
    fields = (*ENTRY_FIELDS, "held_reason")
    readonly_fields = ("held_reason",)
    inlines = [VariantInline]
    actions = ["publish", "unpublish", "reembed", "export_csv", "export_json", "export_xlsx"]
    change_list_template = "kb/entry_change_list.html"
    history_list_display = ["is_published", "category"]

    def get_queryset(self, request):
        return entries_with_embedding_counts(super().get_queryset(request))

    @admin.display(description="phrasings", ordering="n_variants")
    def phrasings(self, obj):
        return obj.n_variants

    @admin.display(description="held for review")
    def held(self, obj):
        return obj.held_reason or ""

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
        else:
            created = services.entry_create(**fields)
            # The admin goes on with its own instance: the inlines and the response refer to it.
            obj.pk = created.pk
            obj.refresh_from_db()
            obj._state.adding = False
        if obj.held_reason:
            self.message_user(
                request,
                f"“{obj.question}” is held unpublished for review: {obj.held_reason}. "
                "Rewrite the answer (or allow the contact details) and save again to publish it.",
                messages.WARNING,
            )

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
            try:
                result = entries_import(rows=read_rows_from_bytes(staged.name, staged.content))
            except ImportFileError as exc:  # the limits were lowered since the preview
                return self._import_page(request, errors=[str(exc)])
            finally:
                services.import_upload_discard(token=token)
            if result.ok:
                messages.success(request, f"Imported: {result.created} created, {result.updated} updated.")
                return redirect("admin:kb_entry_changelist")
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
            started = import_job_confirm(job=job, user=request.user)
            if started is None:
                messages.error(request, "That upload was imported already or has expired; choose the file again.")
                return redirect("admin:kb_entry_import")
            return redirect("admin:kb_entry_import_job", job_id=started.pk)
        return self._page(
            request,
            "kb/import_job.html",
            title=f"{'Checking' if job.dry_run else 'Importing'} {job.file_name}",
            job=job,
            errors_more=job.error_count - len(job.errors),
            can_confirm=import_job_confirmable(job_id=job.pk),
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
    list_display = ("id", "created_at", "kind", "vector_count", "entry_count", "embedder", "dimension", "kb_revision")

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
