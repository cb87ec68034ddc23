"""What reviewers record about the bot's replies."""

from django.conf import settings
from django.db import models


class AnswerReview(models.Model):
    """A reviewer's verdict on one bot reply: right or wrong (one per reply; a new one replaces it)."""

    class Verdict(models.TextChoices):
        RIGHT = "right", "Right"
        WRONG = "wrong", "Wrong"

    message = models.OneToOneField("chatbot.Message", on_delete=models.CASCADE, related_name="review")
    verdict = models.CharField(max_length=5, choices=Verdict.choices)
    reviewer = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.verdict} on message {self.message_id}"


class GapRun(models.Model):
    """One gap-mining run (ops.gaps.gaps_mine); only the newest is kept."""

    created_at = models.DateTimeField(auto_now_add=True)
    window_days = models.PositiveIntegerField()
    questions = models.PositiveIntegerField()  # unanswered questions it read
    seconds = models.FloatField()

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"gap mining of {self.created_at:%Y-%m-%d %H:%M}"


class GapCluster(models.Model):
    """Similar questions the FAQ could not answer, with the entry drafted from them."""

    run = models.ForeignKey(GapRun, on_delete=models.CASCADE, related_name="clusters")
    language = models.CharField(max_length=8)
    size = models.PositiveIntegerField()  # times asked
    distinct = models.PositiveIntegerField()  # different wordings
    representative = models.TextField()  # the most central question
    examples = models.JSONField(default=list)
    draft_entry = models.ForeignKey("kb.Entry", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")

    class Meta:
        ordering = ["-size", "id"]

    def __str__(self) -> str:
        return f"{self.size}× {self.representative[:60]}"
