"""/ops/: the transcripts list, a conversation, and the filtered set's exports."""

from django.urls import path

from ops import views

app_name = "ops"
urlpatterns = [
    path("", views.transcripts, name="transcripts"),
    path("conversations/<uuid:conversation_id>/", views.conversation, name="conversation"),
    path(
        "conversations/<uuid:conversation_id>/messages/<int:message_id>/fix",
        views.turn_fix,
        name="turn-fix",
    ),
    path("entries.json", views.entries_search, name="entries-search"),
    path("metrics/", views.metrics, name="metrics"),
    path("inbox/", views.inbox, name="inbox"),
    path("inbox/<uuid:conversation_id>.json", views.inbox_conversation, name="inbox-conversation"),
    path("inbox/replies.json", views.canned_replies, name="canned-replies"),
    path("gaps/", views.gaps, name="gaps"),
    path("gaps/mine", views.gaps_mine_now, name="gaps-mine"),
    path("gaps/<int:cluster_id>/draft", views.gap_draft, name="gap-draft"),
    path("export.csv", views.export, {"fmt": "csv"}, name="export-csv"),
    path("export.jsonl", views.export, {"fmt": "jsonl"}, name="export-jsonl"),
]
