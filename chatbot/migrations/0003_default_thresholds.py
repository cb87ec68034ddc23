"""Starting thresholds for English and Chinese questions, so editors see and can change them in
admin before anyone runs kb_calibrate. Values measured on the demo knowledge base (issue #4)."""

from django.contrib.auth.management import create_permissions
from django.db import migrations

DEFAULTS = {
    "en": {"answer_threshold": 0.6, "clarify_threshold": 0.5, "clarify_margin": 0.02},
    "zh": {"answer_threshold": 0.6, "clarify_threshold": 0.5, "clarify_margin": 0.02},
}


def create_defaults(apps, schema_editor):
    DecisionThresholds = apps.get_model("chatbot", "DecisionThresholds")
    for language, values in DEFAULTS.items():
        DecisionThresholds.objects.get_or_create(language=language, defaults=values)
    # KB editors tune the thresholds along with the entries they curate.
    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, apps=apps, verbosity=0)
        app_config.models_module = None
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    group, _ = Group.objects.get_or_create(name="KB editors")
    group.permissions.add(
        *Permission.objects.filter(
            content_type__app_label="chatbot", codename__in=["view_decisionthresholds", "change_decisionthresholds"]
        )
    )


class Migration(migrations.Migration):
    dependencies = [("chatbot", "0002_decision_thresholds"), ("kb", "0003_kb_editors_group")]

    operations = [migrations.RunPython(create_defaults, migrations.RunPython.noop)]
