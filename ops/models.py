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
