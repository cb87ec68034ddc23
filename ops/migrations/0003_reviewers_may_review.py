"""Ops reviewers and KB editors may mark a bot reply right or wrong."""

from django.contrib.auth.management import create_permissions
from django.db import migrations

GROUPS = ["Ops reviewers", "KB editors"]
CODENAMES = ["add_answerreview", "change_answerreview", "view_answerreview"]


def grant(apps, schema_editor):
    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, apps=apps, verbosity=0)
        app_config.models_module = None
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    permissions = Permission.objects.filter(content_type__app_label="ops", codename__in=CODENAMES)
    for group in Group.objects.filter(name__in=GROUPS):
        group.permissions.add(*permissions)


def revoke(apps, schema_editor):
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    permissions = Permission.objects.filter(content_type__app_label="ops", codename__in=CODENAMES)
    for group in Group.objects.filter(name__in=GROUPS):
        group.permissions.remove(*permissions)


class Migration(migrations.Migration):
    dependencies = [("ops", "0002_answer_review")]

    operations = [migrations.RunPython(grant, revoke)]
