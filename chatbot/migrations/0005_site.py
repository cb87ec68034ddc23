"""Sites (issue 11): the websites that embed the chat widget. Conversations get a reference to
their site beside the old free-text column, which 0006 maps and 0007 replaces."""

import django.core.validators
import django.db.models.deletion
from django.db import migrations, models

import chatbot.models


class Migration(migrations.Migration):
    dependencies = [("chatbot", "0004_prompt_text")]

    operations = [
        migrations.CreateModel(
            name="Site",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("name", models.CharField(max_length=100)),
                (
                    "key",
                    models.CharField(
                        default=chatbot.models.site_key_new,
                        editable=False,
                        help_text="Public: the widget's data-site and the socket's ?site=. Rotate it to retire a leaked embed.",
                        max_length=100,
                        unique=True,
                    ),
                ),
                (
                    "allowed_origins",
                    models.JSONField(
                        blank=True,
                        default=list,
                        help_text="Pages that may open the chat with this key, one scheme://host[:port] each; the app's own pages always may.",
                    ),
                ),
                ("greeting_en", models.TextField(blank=True, default="Hi! How can we help you today?")),
                ("greeting_zh", models.TextField(blank=True, default="您好！请问有什么可以帮您？")),
                (
                    "starter_questions",
                    models.JSONField(
                        blank=True,
                        default=list,
                        help_text="Questions the widget offers as buttons before the first message.",
                    ),
                ),
                (
                    "primary_colour",
                    models.CharField(
                        default="#0969da",
                        help_text="The widget's main colour, as #rrggbb.",
                        max_length=7,
                        validators=[django.core.validators.RegexValidator("^#[0-9a-fA-F]{6}$", "A colour as #rrggbb.")],
                    ),
                ),
                (
                    "default_language",
                    models.CharField(
                        choices=[("en", "English"), ("zh", "Chinese (Simplified)")], default="en", max_length=8
                    ),
                ),
                (
                    "llm_enabled",
                    models.BooleanField(
                        default=True,
                        help_text="Answer questions the FAQ does not cover with the LLM (when one is configured); off: offer a person instead.",
                        verbose_name="LLM fallback",
                    ),
                ),
                (
                    "is_active",
                    models.BooleanField(default=True, help_text="Off: the widget and the chat refuse this key."),
                ),
                ("created_at", models.DateTimeField(auto_now_add=True)),
                ("updated_at", models.DateTimeField(auto_now=True)),
            ],
            options={"ordering": ["name"]},
        ),
        migrations.AddField(
            model_name="conversation",
            name="site_ref",
            field=models.ForeignKey(
                null=True, on_delete=django.db.models.deletion.PROTECT, related_name="+", to="chatbot.site"
            ),
        ),
    ]
