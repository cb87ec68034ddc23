"""The Celery application: configured from Django settings (CELERY_*), tasks found in apps.

Production settings unless DJANGO_SETTINGS_MODULE says otherwise (as in cookiecutter-django): a
deployment that forgets to set it gets production's checks, not a debug setup. `make run`, the tests
and the benchmarks set it explicitly for every process they start.
"""

import os

from celery import Celery
from celery.signals import setup_logging

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.production")

app = Celery("chatbot")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@setup_logging.connect
def logging_setup(**kwargs) -> None:
    """Workers and beat log as the web processes do (Django's LOGGING: structured, JSON by default)
    instead of Celery's own format; connecting this signal keeps Celery's hands off logging."""
    from django.conf import settings
    from django.utils.log import configure_logging

    configure_logging(settings.LOGGING_CONFIG, settings.LOGGING)
