"""The default site (the app's own demo page, and sockets that name no site), and a site for every
other name conversations were stored with: before sites existed, ``?site=`` was free text."""

import re
import secrets

from django.db import migrations

DEFAULT_SITE_KEY = "default"  # chatbot.models.DEFAULT_SITE_KEY
# What the demo page shows today (templates/chatbot/demo.html).
DEFAULT_SITE = {
    "name": "Customer support",
    "primary_colour": "#b4441c",
    "starter_questions": [
        "Where is my package?",
        "How long do I have to send something back?",
        "My card was declined",
        "I forgot my password",
        "可以开发票吗？",
    ],
}
URL_SAFE = re.compile(r"^[A-Za-z0-9_-]{1,100}$")


def sites_create(apps, schema_editor):
    Site = apps.get_model("chatbot", "Site")
    Conversation = apps.get_model("chatbot", "Conversation")
    default, _ = Site.objects.get_or_create(key=DEFAULT_SITE_KEY, defaults=DEFAULT_SITE)
    names = Conversation.objects.exclude(site=DEFAULT_SITE_KEY).values_list("site", flat=True).distinct()
    for name in sorted(set(names)):
        # A name that is already a usable key stays one, so a page that sent ?site=NAME from the
        # app's own origin keeps working; anything else gets a random key.
        key = name if URL_SAFE.match(name) and not Site.objects.filter(key=name).exists() else None
        site = Site.objects.create(name=name[:100] or "(unnamed)", key=key or secrets.token_urlsafe(18))
        Conversation.objects.filter(site=name).update(site_ref=site)
    Conversation.objects.filter(site_ref__isnull=True).update(site_ref=default)


def sites_forget(apps, schema_editor):
    Conversation = apps.get_model("chatbot", "Conversation")
    for conversation in Conversation.objects.select_related("site_ref").exclude(site_ref=None).iterator():
        conversation.site = conversation.site_ref.key
        conversation.save(update_fields=["site"])


class Migration(migrations.Migration):
    dependencies = [("chatbot", "0005_site")]

    operations = [migrations.RunPython(sites_create, sites_forget)]
