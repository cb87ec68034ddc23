"""Read-only transcript views in the admin until the ops console arrives, the sites that embed
the widget, the decision thresholds, and the entries admin with its hit-testing page."""

from django import forms
from django.contrib import admin, messages
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from simple_history.admin import SimpleHistoryAdmin

from chatbot.evaluation.admin import EntryWithHitTestingAdmin
from chatbot.models import Conversation, DecisionThresholds, Feedback, Message, OutOfScopeExamples, Site
from chatbot.sites import site_key_rotate, site_origins
from kb.models import Entry, Language

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

    def has_add_permission(self, request, obj=None):
        return False  # a transcript is what was said: nobody adds to it here


class LinesField(forms.CharField):
    """A list of strings, edited one per line (blank lines dropped)."""

    widget = forms.Textarea(attrs={"rows": 4, "cols": 60})

    def prepare_value(self, value):
        return "\n".join(value) if isinstance(value, list | tuple) else value

    def to_python(self, value):
        return [line.strip() for line in (super().to_python(value) or "").splitlines() if line.strip()]


class SiteForm(forms.ModelForm):
    allowed_origins = LinesField(
        required=False,
        help_text="One per line, as scheme://host[:port] (e.g. https://shop.example.com). Pages there may "
        "open the chat with this site's key; the app's own pages always may.",
    )
    starter_questions = LinesField(required=False, help_text="One per line.")
    rotate_key = forms.BooleanField(
        required=False,
        label="Rotate the key when saving",
        help_text="Gives the site a new public key: embeds with the old one stop working.",
    )

    class Meta:
        model = Site
        fields = (
            "name",
            "allowed_origins",
            "is_active",
            "llm_enabled",
            "greeting_en",
            "greeting_zh",
            "starter_questions",
            "primary_colour",
            "default_language",
        )

    def clean_rotate_key(self):
        rotate = self.cleaned_data["rotate_key"]
        if rotate and self.instance.is_default:
            raise forms.ValidationError("The default site's key is fixed: it serves sockets that name no site.")
        return rotate


@admin.register(Site)
class SiteAdmin(admin.ModelAdmin):
    """The websites that embed the chat widget. The key is public and read-only; the rotate action
    (or the checkbox on a site's page) replaces it."""

    form = SiteForm
    list_display = ("name", "key", "is_active", "llm_enabled", "default_language", "origins", "updated_at")
    list_filter = ("is_active", "llm_enabled", "default_language")
    search_fields = ("name", "key", "allowed_origins")
    readonly_fields = ("key", "created_at", "updated_at")
    actions = ["rotate_keys"]

    def get_fieldsets(self, request, obj=None):
        appearance = ("greeting_en", "greeting_zh", "starter_questions", "primary_colour", "default_language")
        access = ("key", "allowed_origins", "is_active", "llm_enabled")
        if obj is not None:
            access = (*access, "rotate_key", "created_at", "updated_at")
        return [
            (None, {"fields": ("name", *access)}),
            ("Widget", {"fields": appearance}),
            ("Agents", {"fields": ("opening_hours", "timezone")}),
        ]

    @admin.display(description="allowed origins")
    def origins(self, obj):
        return ", ".join(site_origins(obj)) or "(this app's pages only)"

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        if change and form.cleaned_data.get("rotate_key"):
            site_key_rotate(site=obj)
            self.message_user(request, f"{obj.name}: new key {obj.key}; the old one no longer works.")

    @admin.action(description="Rotate the keys of the selected sites (their old keys stop working)")
    def rotate_keys(self, request, queryset):
        rotated = []
        for site in queryset:
            if site.is_default:
                self.message_user(request, f"{site.name}: the default site's key is fixed.", messages.WARNING)
                continue
            site_key_rotate(site=site)
            rotated.append(site.name)
        if rotated:
            self.message_user(request, f"New keys for: {', '.join(rotated)}. Update their embeds.")

    def has_delete_permission(self, request, obj=None):
        # Sockets that name no site, and the demo page, belong to the default site.
        return super().has_delete_permission(request, obj) and not (obj is not None and obj.is_default)


@admin.register(Conversation)
class ConversationAdmin(admin.ModelAdmin):
    list_display = ("id", "site", "state", "agent", "rating", "customer_name", "created_at", "updated_at")
    list_filter = ("state", "site", "rating")
    list_select_related = ("site", "agent")
    search_fields = ("customer_name", "customer_email")
    readonly_fields = (
        "id",
        "site",
        "created_at",
        "updated_at",
        "customer_name",
        "customer_email",
        "rating",
        "rating_comment",
        "rated_at",
        # The hand-off changes these, from the inbox: never by hand.
        "state",
        "agent",
        "handoff_requested_at",
        "agent_joined_at",
    )
    inlines = [MessageInline]

    def has_add_permission(self, request):
        return False  # conversations start in the chat, not in the admin


@admin.register(Feedback)
class FeedbackAdmin(admin.ModelAdmin):
    """Customers' thumbs on bot replies: the thumbs-down are where the knowledge base misses."""

    list_display = ("updated_at", "value", "answer_text", "reason", "source", "conversation")
    list_filter = ("value", "message__source")
    list_select_related = ("message", "message__conversation")
    search_fields = ("reason", "message__text")
    readonly_fields = ("message", "value", "reason", "created_at", "updated_at")

    @admin.display(description="answer")
    def answer_text(self, obj):
        return obj.message.text[:100]

    @admin.display(description="source")
    def source(self, obj):
        return obj.message.source

    @admin.display(description="conversation")
    def conversation(self, obj):
        return obj.message.conversation_id

    def has_add_permission(self, request):
        return False


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


class DecisionThresholdsForm(forms.ModelForm):
    """Thresholds for a language the bot detects (en, zh): a row for any other would be used by
    nothing."""

    language = forms.ChoiceField(choices=Language.choices)

    class Meta:
        model = DecisionThresholds
        fields = ("language", "answer_threshold", "clarify_threshold", "clarify_margin", "max_suggestions")


@admin.register(OutOfScopeExamples)
class OutOfScopeExamplesAdmin(admin.ModelAdmin):
    """What kb_calibrate learned the bot must not answer: read-only (a change means calibrating
    again with corrected labels, which measures whether it still helps)."""

    list_display = ("__str__", "language", "count", "embedder", "created_at")
    fields = ("language", "embedder", "created_at", "question_list")
    readonly_fields = fields

    @admin.display(description="questions")
    def count(self, obj):
        return len(obj.questions)

    @admin.display(description="questions")
    def question_list(self, obj):
        return format_html_join("", "<div>{}</div>", ((question,) for question in obj.questions))

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        # A confidence model may name it: kb_calibrate removes the ones none does.
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
        "decides_by",
        "calibrated",
    )
    fields = (
        "language",
        "answer_threshold",
        "clarify_threshold",
        "clarify_margin",
        "max_suggestions",
        "answer_confidence",
        "confidence_summary",
        "calibration_summary",
        "updated_at",
    )
    readonly_fields = ("confidence_summary", "calibration_summary", "updated_at")
    form = DecisionThresholdsForm
    history_list_display = ["answer_threshold", "clarify_threshold", "clarify_margin", "answer_confidence"]

    @admin.display(description="answers by")
    def decides_by(self, obj):
        if obj.answer_confidence is not None and obj.confidence_model:
            return f"confidence >= {obj.answer_confidence:.3f}"
        return f"score >= {obj.answer_threshold:.3f}"

    @admin.display(description="confidence model")
    def confidence_summary(self, obj):
        model, note = obj.confidence_model, (obj.calibration or {}).get("confidence", {})
        if not model:
            reason = note.get("reason") or "kb_calibrate has not fitted one"
            return f"None: the bot answers when the best score reaches the answer threshold ({reason})."
        features = ", ".join(model.get("features", []))
        summary = (
            f"Logistic model over {len(model.get('features', []))} retrieval features ({features}), fitted for "
            f"{model.get('embedder', '?')}"
        )
        if note.get("auc") is not None:
            metrics = note.get("metrics", {})
            summary += (
                f"; ROC AUC {note['auc']:.3f} (best score alone {note.get('score_auc', 0):.3f}); out of fold: "
                f"F1 {metrics.get('f1', 0):.3f}, wrong answers {metrics.get('wrong_rate', 0):.2%}"
            )
        if model.get("examples") is not None:
            link = reverse("admin:chatbot_outofscopeexamples_change", args=[model["examples"]])
            summary = format_html(
                '{}; it also reads how near a question comes to <a href="{}">{} labelled out-of-scope questions</a>',
                summary,
                link,
                note.get("out_of_scope_examples", "the"),
            )
            without = note.get("metrics_without_examples")
            if without:
                summary = format_html("{} (F1 {} out of fold without them)", summary, f"{without.get('f1', 0):.3f}")
        if obj.answer_confidence is None:
            summary = format_html("{}. Not in use: set an answer confidence to use it", summary)
        return format_html("{}.", summary)

    @admin.display(description="calibrated")
    def calibrated(self, obj):
        return obj.calibration.get("at", "never")[:19] if obj.calibration else "never"

    @admin.display(description="last calibration")
    def calibration_summary(self, obj):
        data = obj.calibration
        if not data:
            return "Not calibrated: run `python manage.py kb_calibrate LABELLED_FILE`."
        metrics, files = data.get("metrics", {}), ", ".join(data.get("files", []))
        by = "the answer confidence" if (data.get("confidence") or {}).get("adopted") else "the score"
        return (
            f"{data.get('at', '')[:19]} on {data.get('questions', '?')} questions ({files}), answering by {by}: "
            f"precision {metrics.get('precision', 0):.3f}, recall {metrics.get('recall', 0):.3f}, "
            f"F1 {metrics.get('f1', 0):.3f}, wrong answers {metrics.get('wrong_rate', 0):.2%} "
            f"(cap {data.get('max_wrong_rate', 0):.2%}"
            + (f", kept with {data['cap_confidence']:.0%} confidence)" if data.get("cap_confidence") else ")")
        )
