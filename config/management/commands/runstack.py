"""manage.py runstack: everything `make run` starts, supervised in the foreground (config/runstack.py)."""

from __future__ import annotations

import os

from django.core.management.base import BaseCommand

from config.runstack import Stack


class Command(BaseCommand):
    help = "Start Redis (if embedded), migrate, load the demo KB, and run the web server and a Celery worker."

    def add_arguments(self, parser):
        parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
        parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
        parser.add_argument("--no-demo", action="store_true", help="do not load the demo knowledge base")
        parser.add_argument("--ready-timeout", type=float, default=180.0)

    def handle(self, *args, host: str, port: int, no_demo: bool, ready_timeout: float, **options):
        Stack(self.stdout, self.style).run(host=host, port=port, no_demo=no_demo, ready_timeout=ready_timeout)
