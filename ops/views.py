"""The ops console's pages: thin; the queries are ops.selectors, the files ops.exports."""

from __future__ import annotations

from functools import wraps

from django.contrib import admin
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import StreamingHttpResponse
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse

from chatbot.models import Conversation
from ops.exports import conversations_csv, messages_jsonl
from ops.forms import TranscriptFilterForm
from ops.roles import can_view_transcripts
from ops.selectors import (
    OUTCOMES,
    conversation_messages,
    conversations_annotated,
    conversations_filtered,
    first_response_ms,
    outcome_of,
)
from ops.trace import traces_of

PAGE_SIZE = 50


def transcripts_required(view):
    """Sign-in first (the admin's login page), then the permission to read transcripts (403)."""

    @wraps(view)
    def checked(request, *args, **kwargs):
        if not request.user.is_authenticated:
            return redirect_to_login(request.get_full_path(), "admin:login")
        if not can_view_transcripts(request.user):
            raise PermissionDenied
        return view(request, *args, **kwargs)

    return checked


def _page(request, template: str, **context) -> TemplateResponse:
    return TemplateResponse(request, template, {**admin.site.each_context(request), **context})


@transcripts_required
def transcripts(request):
    """Conversations, newest first, narrowed by the filter form, 50 a page."""
    form = TranscriptFilterForm(request.GET or None)
    spec = form.spec() if form.is_bound else TranscriptFilterForm({}).spec()
    page = Paginator(conversations_filtered(spec), PAGE_SIZE).get_page(request.GET.get("page"))
    rows = [(c, outcome_of(c), first_response_ms(c)) for c in page.object_list]
    query = request.GET.copy()
    query.pop("page", None)
    return _page(
        request,
        "ops/transcripts.html",
        title="Transcripts",
        form=form,
        page=page,
        rows=rows,
        outcomes=OUTCOMES,
        query=query.urlencode(),
    )


@transcripts_required
def conversation(request, conversation_id):
    """One conversation: every turn, each bot turn with its trace drawn for people."""
    found = get_object_or_404(conversations_annotated(Conversation.objects.filter(pk=conversation_id)))
    messages = list(conversation_messages(found))
    traces = traces_of(messages, with_prompt=True)
    turns = [(message, traces.get(message.pk)) for message in messages]
    return _page(
        request,
        "ops/conversation.html",
        title=f"Conversation {str(found.pk)[:8]}",
        conversation=found,
        outcome=OUTCOMES[outcome_of(found)],
        first_response=first_response_ms(found),
        turns=turns,
    )


@transcripts_required
def export(request, fmt: str):
    """The filtered conversations as CSV (one row each) or JSONL (one line per message)."""
    spec = TranscriptFilterForm(request.GET).spec()
    if fmt == "csv":
        response = StreamingHttpResponse(conversations_csv(spec), content_type="text/csv; charset=utf-8")
    else:
        response = StreamingHttpResponse(messages_jsonl(spec), content_type="application/x-ndjson; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="transcripts.{fmt}"'
    return response
