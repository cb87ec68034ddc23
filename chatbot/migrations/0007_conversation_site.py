"""Conversations reference their site; the free-text column goes (0006 mapped every value)."""

import django.db.models.deletion
from django.db import migrations, models

import chatbot.models


class Migration(migrations.Migration):
    dependencies = [("chatbot", "0006_default_site")]

    operations = [
        migrations.RemoveField(model_name="conversation", name="site"),
        migrations.RenameField(model_name="conversation", old_name="site_ref", new_name="site"),
        # Not null first, then the default: made NOT NULL with a default at once, Django would call
        # the default (today's model code) to fill NULL rows, and 0006 left none.
        migrations.AlterField(
            model_name="conversation",
            name="site",
            field=models.ForeignKey(
                on_delete=django.db.models.deletion.PROTECT, related_name="conversations", to="chatbot.site"
            ),
        ),
        migrations.AlterField(
            model_name="conversation",
            name="site",
            field=models.ForeignKey(
                default=chatbot.models.default_site_id,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="conversations",
                to="chatbot.site",
            ),
        ),
    ]
