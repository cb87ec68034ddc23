"""The console's groups: Ops reviewers and Agents read transcripts; KB editors read them too, to fix
answers from the log. Users need staff status as well (the console signs in through the admin)."""

from django.contrib.auth.management import create_permissions
from django.db import migrations

TRANSCRIPTS = ["view_conversation", "view_message", "view_feedback"]
GROUPS = {
    "Ops reviewers": [*TRANSCRIPTS, "view_site", "view_decisionthresholds"],
    "Agents": TRANSCRIPTS,
    "KB editors": TRANSCRIPTS,
}


def create_groups(apps, schema_editor):
    # Permissions are normally created after all migrations; make sure they exist now.
    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, apps=apps, verbosity=0)
        app_config.models_module = None
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    for name, codenames in GROUPS.items():
        group, _ = Group.objects.get_or_create(name=name)
        group.permissions.add(*Permission.objects.filter(content_type__app_label="chatbot", codename__in=codenames))


def remove_groups(apps, schema_editor):
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    Group.objects.filter(name__in=["Ops reviewers", "Agents"]).delete()
    editors = Group.objects.filter(name="KB editors").first()
    if editors is not None:
        editors.permissions.remove(*Permission.objects.filter(content_type__app_label="chatbot", codename__in=TRANSCRIPTS))


class Migration(migrations.Migration):
    dependencies = [
        ("chatbot", "0010_entry_hits"),
        ("kb", "0003_kb_editors_group"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [migrations.RunPython(create_groups, remove_groups)]
