"""The hit-testing page of the entries admin (/admin/kb/entry/hit-testing/).

kb's EntryAdmin knows nothing of the bot's decisions, so the page is added from above: a subclass
that chatbot.admin registers for Entry in place of kb's own.
"""

from __future__ import annotations

from django.core.exceptions import PermissionDenied
from django.urls import path, reverse

from chatbot.evaluation.hit_testing import hit_test, hit_test_rows
from chatbot.evaluation.labelled import read_labelled_rows
from kb.admin import EntryAdmin
from kb.importing import ImportFileError

MAX_PASTED_QUESTIONS = 200
# A labelled file is read whole and every question goes through the pipeline: BANKING77's test
# set (3,080 questions) is ~0.3 MB.
MAX_UPLOAD_BYTES = 5 * 2**20


class EntryWithHitTestingAdmin(EntryAdmin):
    """kb's entries admin plus the hit-testing page, linked from the change list."""

    change_list_template = "chatbot/entry_change_list.html"

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
                    context.update(report=report, errors=report.errors, filename=upload.name)
            else:
                text = request.POST.get("questions", "")
                lines = [line for line in text.splitlines() if line.strip()][:MAX_PASTED_QUESTIONS]
                context.update(questions=text, results=hit_test(lines))
        context["admin_entry_url"] = reverse("admin:kb_entry_changelist")
        return self._page(request, "chatbot/hit_testing.html", **context)
