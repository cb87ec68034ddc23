"""The hit-testing page of the entries admin (/admin/kb/entry/hit-testing/).

kb's EntryAdmin knows nothing of the bot's decisions, so the page is added from above: a subclass
that chatbot.admin registers for Entry in place of kb's own.
"""

from __future__ import annotations

import base64
from datetime import timedelta

from django.contrib import admin, messages
from django.contrib.humanize.templatetags.humanize import naturaltime
from django.core.exceptions import PermissionDenied
from django.db.models import F, Q, Value
from django.db.models.functions import Coalesce
from django.urls import path, reverse
from django.utils import timezone

from chatbot.evaluation.hit_testing import failures_csv, hit_test, hit_test_rows, hits_shown
from chatbot.evaluation.labelled import read_labelled_rows
from kb import services
from kb.admin import EntryAdmin
from kb.importing import ImportFileError
from kb.models import Entry

MAX_PASTED_QUESTIONS = 200
RECENT_DAYS = 30
# A labelled file is read whole and every question goes through the pipeline: BANKING77's test
# set (3,080 questions) is ~0.3 MB.
MAX_UPLOAD_BYTES = 5 * 2**20


class HitsFilter(admin.SimpleListFilter):
    """Entries by how recently they answered a customer (chatbot.entry_hits)."""

    title = "hits"
    parameter_name = "hits"

    def lookups(self, request, model_admin):
        return [("never", "Never hit"), ("recent", f"Hit in the last {RECENT_DAYS} days"), ("stale", "Not recently")]

    def queryset(self, request, queryset):
        since = timezone.now() - timedelta(days=RECENT_DAYS)
        if self.value() == "never":
            return queryset.filter(Q(hits__isnull=True) | Q(hits__count=0))
        if self.value() == "recent":
            return queryset.filter(hits__last_hit_at__gte=since)
        if self.value() == "stale":
            return queryset.filter(hits__last_hit_at__lt=since)
        return queryset


class EntryWithHitTestingAdmin(EntryAdmin):
    """kb's entries admin plus what the chat side knows: the hit-testing page, linked from the
    change list, and how often and how lately each entry answered customers."""

    change_list_template = "chatbot/entry_change_list.html"
    # The answer previewed as the widget renders it (its Markdown lives with the widget).
    change_form_template = "chatbot/entry_change_form.html"

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .annotate(n_hits=Coalesce(F("hits__count"), Value(0)), last_hit_at=F("hits__last_hit_at"))
        )

    def get_list_display(self, request):
        display = list(super().get_list_display(request))
        return [*display[:-1], "hit_count", "last_hit", *display[-1:]]  # before "updated"

    def get_list_filter(self, request):
        return [*super().get_list_filter(request), HitsFilter]

    # Not named "hits": that is the entry's relation to its EntryHits row, which the admin would show.
    @admin.display(description="hits", ordering="n_hits")
    def hit_count(self, obj):
        return obj.n_hits

    @admin.display(description="last hit", ordering="last_hit_at")
    def last_hit(self, obj):
        return naturaltime(obj.last_hit_at) if obj.last_hit_at else "never"

    def get_urls(self):
        """kb's pages, and hit-testing/ under the same URL name as ever (admin:kb_entry_hit_testing)."""
        extra = [
            path("hit-testing/", self.admin_site.admin_view(self.hit_testing_view), name="kb_entry_hit_testing"),
        ]
        return extra + super().get_urls()

    def hit_testing_view(self, request):
        """Type or paste questions (one a line), or upload a labelled file, and see what the bot
        would do with each, computed by the live chat pipeline."""
        # Staff status alone is not enough: the page shows entries' questions and runs uploads.
        if not self.has_view_permission(request):
            raise PermissionDenied
        context = {
            "title": "Hit testing",
            "questions": "",
            "thresholds_url": reverse("admin:chatbot_decisionthresholds_changelist"),
        }
        if request.method == "POST" and request.POST.get("add_phrasing"):
            self._add_phrasing(request)
        if request.method == "POST":
            upload = request.FILES.get("file")
            if upload is not None and upload.size > MAX_UPLOAD_BYTES:
                context["errors"] = [f"The file is over {MAX_UPLOAD_BYTES // 2**20} MB."]
            elif upload is not None:
                try:
                    report = hit_test_rows(read_labelled_rows(upload.name, upload.read()))
                except ImportFileError as exc:
                    context["errors"] = [str(exc)]
                else:
                    context.update(
                        report=report,
                        errors=report.errors,
                        filename=upload.name,
                        failures=self._failures_shown(report),
                        failures_csv_url=_csv_data_url(failures_csv(report)),
                    )
            else:
                text = request.POST.get("questions", "")
                lines = [line for line in text.splitlines() if line.strip()][:MAX_PASTED_QUESTIONS]
                context.update(questions=text, results=hit_test(lines))
        context["admin_entry_url"] = reverse("admin:kb_entry_changelist")
        context["can_add_phrasing"] = self.has_change_permission(request)
        return self._page(request, "chatbot/hit_testing.html", **context)

    def _add_phrasing(self, request) -> None:
        """The tested question as a phrasing of the entry the editor chose (the page then shows the
        questions again: the new phrasing is searchable once embedded, in a few seconds)."""
        if not self.has_change_permission(request):
            raise PermissionDenied
        question = request.POST["add_phrasing"]
        chosen = (request.POST.get("other_entry_id") or "").strip().lstrip("#") or request.POST.get("entry_id", "")
        entry = Entry.objects.filter(pk=int(chosen)).first() if chosen.isdigit() else None
        if entry is None:
            messages.error(request, f"No entry #{chosen}: nothing was added." if chosen else "Choose an entry.")
            return
        try:
            services.variant_create(entry=entry, text=question)
        except services.EntryInvalid as exc:
            messages.error(request, f"Not added to #{entry.pk}: {exc}.")
        else:
            messages.success(
                request,
                f"Added “{question}” as a phrasing of #{entry.pk} {entry.question}; "
                "it is searchable once embedded and the next index version is live (seconds).",
            )

    @staticmethod
    def _failures_shown(report) -> list[tuple[str, list]]:
        """Each kind of failure with its cases and their top three hits as shown."""
        grouped = report.failures
        cases = [case for kind_cases in grouped.values() for case in kind_cases]
        shown = iter(hits_shown(case.answer for case in cases))
        return [(kind, [(case, next(shown)[:3]) for case in kind_cases]) for kind, kind_cases in grouped.items()]


def _csv_data_url(text: str) -> str:
    """A download link's target holding the CSV itself: the report is not stored anywhere."""
    # The BOM makes spreadsheet programs read the file as UTF-8 (Chinese questions).
    return "data:text/csv;charset=utf-8;base64," + base64.b64encode(("\ufeff" + text).encode("utf-8")).decode("ascii")
