"""Agents chat with customers in the inbox: the Agents group gets the permission to."""

from django.contrib.auth.management import create_permissions
from django.db import migrations


def grant(apps, schema_editor):
    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, apps=apps, verbosity=0)
        app_config.models_module = None
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    agents, _ = Group.objects.get_or_create(name="Agents")
    agents.permissions.add(*Permission.objects.filter(content_type__app_label="chatbot", codename="handle_conversation"))


def revoke(apps, schema_editor):
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    agents = Group.objects.filter(name="Agents").first()
    if agents is not None:
        agents.permissions.remove(*Permission.objects.filter(content_type__app_label="chatbot", codename="handle_conversation"))


class Migration(migrations.Migration):
    dependencies = [("ops", "0004_gap_mining"), ("chatbot", "0012_live_handoff")]

    operations = [migrations.RunPython(grant, revoke)]
