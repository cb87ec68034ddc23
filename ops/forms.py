"""The transcripts list's filter form: what ops can narrow conversations to."""

from __future__ import annotations

from datetime import date, timedelta

from django import forms
from django.contrib.auth import get_user_model
from django.utils import timezone

from chatbot.models import Site
from kb.models import Language
from ops.selectors import OUTCOMES, TranscriptFilter


class TranscriptFilterForm(forms.Form):
    since = forms.DateField(required=False, label="From", widget=forms.DateInput(attrs={"type": "date"}))
    until = forms.DateField(required=False, label="To", widget=forms.DateInput(attrs={"type": "date"}))
    outcome = forms.ChoiceField(required=False, choices=[("", "any outcome"), *OUTCOMES.items()])
    rating = forms.TypedChoiceField(
        required=False, coerce=int, empty_value=None, choices=[("", "any rating"), *((n, f"{n}★") for n in range(1, 6))]
    )
    thumbs = forms.ChoiceField(
        required=False,
        choices=[("", "any feedback"), ("down", "thumbs down"), ("up", "thumbs up"), ("any", "any thumbs")],
    )
    language = forms.ChoiceField(required=False, choices=[("", "any language"), *Language.choices])
    site = forms.ModelChoiceField(required=False, queryset=Site.objects.order_by("name"), empty_label="any site")
    agent = forms.ModelChoiceField(required=False, queryset=get_user_model().objects.none(), empty_label="any agent")
    q = forms.CharField(required=False, label="Text", max_length=200, widget=forms.TextInput(attrs={"type": "search"}))

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Those who have held a conversation.
        users = get_user_model().objects.filter(conversations_held__isnull=False).distinct()
        self.fields["agent"].queryset = users.order_by("first_name", "username")
        self.fields["agent"].label_from_instance = lambda user: user.get_full_name() or user.get_username()

    def spec(self) -> TranscriptFilter:
        """The filter the valid fields describe (an invalid field is left out: the list still shows)."""
        self.is_valid()  # an unbound form is not valid and has no cleaned data: no filter at all
        data = getattr(self, "cleaned_data", {})
        site, agent = data.get("site"), data.get("agent")
        return TranscriptFilter(
            since=data.get("since"),
            until=data.get("until"),
            outcome=data.get("outcome") or "",
            rating=data.get("rating"),
            thumbs=data.get("thumbs") or "",
            language=data.get("language") or "",
            site_id=site.pk if site else None,
            agent_id=agent.pk if agent else None,
            text=(data.get("q") or "").strip(),
        )


class DashboardRangeForm(forms.Form):
    since = forms.DateField(required=False, label="From", widget=forms.DateInput(attrs={"type": "date"}))
    until = forms.DateField(required=False, label="To", widget=forms.DateInput(attrs={"type": "date"}))

    DEFAULT_DAYS = 30
    MAX_DAYS = 366

    def range(self) -> tuple[date, date]:
        """The days asked for: the last 30 by default, at most a year, ``since`` not after ``until``."""
        data = self.cleaned_data if self.is_bound and self.is_valid() else {}
        until = data.get("until") or timezone.localdate()
        since = data.get("since") or until - timedelta(days=self.DEFAULT_DAYS - 1)
        since = min(since, until)
        return max(since, until - timedelta(days=self.MAX_DAYS - 1)), until
