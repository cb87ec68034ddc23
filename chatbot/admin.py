"""Read-only transcript views in the admin until the ops console arrives, the decision
thresholds, and the entries admin with its hit-testing page."""

from django.contrib import admin
from simple_history.admin import SimpleHistoryAdmin

from chatbot.evaluation.admin import EntryWithHitTestingAdmin
from chatbot.models import Conversation, DecisionThresholds, Message
from kb.models import Entry

# kb.admin registered Entry when chatbot.evaluation.admin imported it (whatever the order of
# INSTALLED_APPS); swap in the subclass that adds hit testing, at the same URLs.
admin.site.unregister(Entry)
admin.site.register(Entry, EntryWithHitTestingAdmin)


class MessageInline(admin.TabularInline):
    model = Message
    fk_name = "conversation"
    fields = (
        "created_at",
        "role",
        "text",
        "source",
        "entry",
        "score",
        "citations",
        "retrieval",
        "decision",
        "timings_ms",
    )
    readonly_fields = fields
    extra = 0
    can_delete = False


@admin.register(Conversation)
class ConversationAdmin(admin.ModelAdmin):
    list_display = ("id", "site", "state", "created_at", "updated_at")
    list_filter = ("state", "site")
    readonly_fields = ("id", "site", "created_at", "updated_at")
    inlines = [MessageInline]


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = ("created_at", "conversation", "role", "short_text", "source", "score")
    list_filter = ("role", "source")
    search_fields = ("text",)
    readonly_fields = [field.name for field in Message._meta.fields]

    @admin.display(description="text")
    def short_text(self, obj):
        return obj.text[:80]

    def has_add_permission(self, request):
        return False


@admin.register(DecisionThresholds)
class DecisionThresholdsAdmin(SimpleHistoryAdmin):
    """One row per question language; kb_calibrate fills them from labelled questions, and an
    editor can adjust them here (every change is kept in History)."""

    list_display = (
        "language",
        "answer_threshold",
        "clarify_threshold",
        "clarify_margin",
        "max_suggestions",
        "calibrated",
    )
    fields = (
        "language",
        "answer_threshold",
        "clarify_threshold",
        "clarify_margin",
        "max_suggestions",
        "calibration_summary",
        "updated_at",
    )
    readonly_fields = ("calibration_summary", "updated_at")
    history_list_display = ["answer_threshold", "clarify_threshold", "clarify_margin"]

    @admin.display(description="calibrated")
    def calibrated(self, obj):
        return obj.calibration.get("at", "never")[:19] if obj.calibration else "never"

    @admin.display(description="last calibration")
    def calibration_summary(self, obj):
        data = obj.calibration
        if not data:
            return "Not calibrated: run `python manage.py kb_calibrate LABELLED_FILE`."
        metrics, files = data.get("metrics", {}), ", ".join(data.get("files", []))
        return (
            f"{data.get('at', '')[:19]} on {data.get('questions', '?')} questions ({files}): "
            f"precision {metrics.get('precision', 0):.3f}, recall {metrics.get('recall', 0):.3f}, "
            f"F1 {metrics.get('f1', 0):.3f}, wrong answers {metrics.get('wrong_rate', 0):.2%} "
            f"(cap {data.get('max_wrong_rate', 0):.2%})"
        )
