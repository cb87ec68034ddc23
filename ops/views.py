"""The ops console's pages: thin; the queries are ops.selectors, the files ops.exports."""

from __future__ import annotations

from functools import wraps

from celery import current_app
from django.contrib import admin, messages
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.http import JsonResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.views.decorators.http import require_POST

from chatbot.models import Conversation, Message, Role
from kb.services import EntryInvalid
from ops import services
from ops.exports import conversations_csv, messages_jsonl
from ops.forms import DashboardRangeForm, TranscriptFilterForm
from ops.gaps import gap_draft_entry
from ops.inbox import conversation_for_agent
from ops.metrics import dashboard
from ops.models import GapCluster, GapRun
from ops.roles import can_handle_conversations, can_view_transcripts
from ops.selectors import (
    OUTCOMES,
    agent_first_response_ms,
    conversation_messages,
    conversations_annotated,
    first_response_ms,
    outcome_of,
    transcripts_page,
)
from ops.trace import traces_of

PAGE_SIZE = 50


def _role_required(allowed):
    """A view decorator: sign-in first (the admin's login page), then ``allowed(user)`` (else 403)."""

    def decorator(view):
        @wraps(view)
        def checked(request, *args, **kwargs):
            if not request.user.is_authenticated:
                return redirect_to_login(request.get_full_path(), "admin:login")
            if not allowed(request.user):
                raise PermissionDenied
            return view(request, *args, **kwargs)

        return checked

    return decorator


# Reading transcripts; chatting with customers in the inbox.
transcripts_required = _role_required(can_view_transcripts)
agents_required = _role_required(can_handle_conversations)


def _page(request, template: str, **context) -> TemplateResponse:
    return TemplateResponse(request, template, {**admin.site.each_context(request), **context})


@transcripts_required
def transcripts(request):
    """Conversations, newest first, narrowed by the filter form, 50 a page."""
    form = TranscriptFilterForm(request.GET or None)
    spec = form.spec()
    page, conversations = transcripts_page(spec, request.GET.get("page"), PAGE_SIZE)
    rows = [(c, outcome_of(c), first_response_ms(c)) for c in conversations]
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
    user = request.user
    return _page(
        request,
        "ops/conversation.html",
        title=f"Conversation {str(found.pk)[:8]}",
        conversation=found,
        outcome=OUTCOMES[outcome_of(found)],
        first_response=first_response_ms(found),
        agent_first_response=agent_first_response_ms(found),
        events=list(found.events.select_related("agent")),
        turns=turns,
        can_add_phrasing=user.has_perm("kb.add_variant"),
        can_add_entry=user.has_perm("kb.add_entry"),
        can_review=user.has_perm("ops.add_answerreview"),
        new_entry_url=reverse("admin:kb_entry_add"),
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


FIX_PERMISSIONS = {"phrasing": "kb.add_variant", "right": "ops.add_answerreview", "wrong": "ops.add_answerreview"}


@require_POST
@transcripts_required
def turn_fix(request, conversation_id, message_id):
    """Fix from the log: the question of a bot turn as a phrasing of the entry chosen, or the
    reply marked right or wrong. Back to the turn, with what happened."""
    message = get_object_or_404(
        Message.objects.select_related("reply_to"), pk=message_id, conversation_id=conversation_id, role=Role.BOT
    )
    action = request.POST.get("action", "")
    if action not in FIX_PERMISSIONS:
        messages.error(request, "Unknown fix.")
    elif not request.user.has_perm(FIX_PERMISSIONS[action]):
        raise PermissionDenied
    else:
        try:
            if action == "phrasing":
                chosen = request.POST.get("entry", "").strip().lstrip("#").split(" ", 1)[0]
                if not chosen.isdigit():
                    raise services.FixInvalid("choose an entry from the list (its number first)")
                services.phrasing_from_turn(message=message, entry_id=int(chosen))
                messages.success(
                    request,
                    f"Added “{message.reply_to.text}” as a phrasing of entry #{chosen}: the same question is "
                    "answered from it once embedded (seconds).",
                )
            else:
                services.answer_review_set(message=message, verdict=action, reviewer=request.user)
                messages.success(request, f"Marked the reply {action}.")
        except services.FixInvalid as exc:
            messages.error(request, f"Not done: {exc}.")
    return redirect(reverse("ops:conversation", args=[conversation_id]) + f"#m{message_id}")


@transcripts_required
def entries_search(request):
    """Search-as-you-type for the fix form: entries by number or by words of a phrasing."""
    if not request.user.has_perm("kb.view_entry"):
        raise PermissionDenied
    return JsonResponse({"entries": services.entries_search(request.GET.get("q", ""))})


@transcripts_required
def metrics(request):
    """The metrics dashboard over a date range (the last 30 days unless given)."""
    form = DashboardRangeForm(request.GET or None)
    since, until = form.range()
    figures = dashboard(since, until)
    charts = {
        "days": figures.days,
        "per_day": figures.per_day,
        "answered_by": figures.answered_by,
    }
    return _page(request, "ops/metrics.html", title="Metrics", form=form, figures=figures, charts=charts)


@transcripts_required
def gaps(request):
    """The newest gap-mining run's clusters, biggest first."""
    run = GapRun.objects.first()
    clusters = list(run.clusters.all()) if run else []
    return _page(
        request,
        "ops/gaps.html",
        title="Unanswered questions",
        run=run,
        clusters=clusters,
        can_draft=request.user.has_perm("kb.add_entry"),
    )


@require_POST
@transcripts_required
def gaps_mine_now(request):
    """Queue a gap-mining run."""
    try:
        current_app.send_task("ops.tasks.gaps_mine_run", ignore_result=True)
    except Exception as exc:  # noqa: BLE001 - the broker is down: say so, nothing was started
        messages.error(request, f"Could not queue the run ({type(exc).__name__}); try again.")
    else:
        messages.success(request, "Mining queued: reload in a minute.")
    return redirect("ops:gaps")


@require_POST
@transcripts_required
def gap_draft(request, cluster_id):
    """An unpublished entry from a cluster, opened in the admin for its answer."""
    if not request.user.has_perm("kb.add_entry"):
        raise PermissionDenied
    try:
        entry = gap_draft_entry(cluster=get_object_or_404(GapCluster, pk=cluster_id))
    except EntryInvalid as exc:
        messages.error(request, f"No draft made: {exc}.")
        return redirect("ops:gaps")
    messages.success(request, "Draft entry created, unpublished: write its answer, then publish it.")
    return redirect("admin:kb_entry_change", entry.pk)


@agents_required
def inbox(request):
    """The agent inbox: conversations waiting for a person and the agent's own, live over
    /ws/agent/ (ops.agent_consumer)."""
    return _page(
        request,
        "ops/inbox.html",
        title="Inbox",
        is_nav_sidebar_enabled=False,  # the chat needs the width
        can_search_entries=request.user.has_perm("kb.view_entry"),
        agent_id=request.user.pk,
    )


@agents_required
def inbox_conversation(request, conversation_id):
    """One conversation as the inbox shows it (JSON): turns with the bot's reasoning, the hand-off's steps."""
    found = conversation_for_agent(conversation_id=conversation_id)
    if found is None:
        return JsonResponse({"error": "There is no such conversation."}, status=404)
    return JsonResponse(found)


@agents_required
def canned_replies(request):
    """Canned replies from the FAQ for the inbox's reply box: entries matching the words typed,
    with their answers."""
    return JsonResponse({"entries": services.canned_replies(request.GET.get("q", ""))})
