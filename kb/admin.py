"""Admin for KB editors: entries with their phrasings inline; every save goes through services."""

from django.contrib import admin
from django.db import transaction
from django.db.models import Count, Q

from kb import services
from kb.models import EmbeddingState, Entry, IndexVersion, Variant


class VariantInline(admin.TabularInline):
    model = Variant
    fields = ("text", "is_primary", "embedding_state", "embedding_error")
    readonly_fields = ("is_primary", "embedding_state", "embedding_error")
    extra = 3

    def has_delete_permission(self, request, obj=None):
        return True


@admin.register(Entry)
class EntryAdmin(admin.ModelAdmin):
    list_display = ("question", "category", "language", "is_published", "phrasings", "embedding", "updated_at")
    list_filter = ("is_published", "language", "category")
    search_fields = ("question", "answer", "variants__text")
    list_editable = ("is_published",)
    fields = ("question", "answer", "category", "language", "is_published")
    inlines = [VariantInline]

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

    def save_related(self, request, form, formsets, change):
        super().save_related(request, form, formsets, change)
        # Inline edits bypass entry_update: re-establish the primary phrasing and queue embedding.
        services.entry_variants_sync(entry=form.instance)
        services.kb_changed_notify()

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        services.kb_changed_notify()

    @transaction.atomic
    def delete_model(self, request, obj):
        services.entry_delete(entry=obj)

    @transaction.atomic
    def delete_queryset(self, request, queryset):
        queryset.delete()
        services.kb_changed_notify()


@admin.register(IndexVersion)
class IndexVersionAdmin(admin.ModelAdmin):
    list_display = ("id", "created_at", "vector_count", "entry_count", "embedder", "dimension", "kb_revision")

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
