"""Read-only transcript views in the admin until the ops console arrives."""

from django.contrib import admin

from chatbot.models import Conversation, Message


class MessageInline(admin.TabularInline):
    model = Message
    fk_name = "conversation"
    fields = ("created_at", "role", "text", "source", "entry", "score", "retrieval", "decision", "timings_ms")
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
