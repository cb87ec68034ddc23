"""Everything `make run` starts, in one supervised foreground process (`manage.py runstack`).

Order: Redis (embedded when REDIS_URL is unset) -> migrate -> demo knowledge base (when the KB
is empty) -> Celery worker and beat -> ASGI server (uvicorn, WEB_CONCURRENCY processes) -> wait
until the index is published and loaded -> print the URL. Ctrl-C stops the children, then Redis,
and exits 0.

The process commands are defined here once: docker-compose.yml runs the same ones (checked by
tests/test_setup.py), and the benchmarks and the tests start their servers and workers with them.
It sits in config/ beside the settings and the embedded Redis because it starts the whole stack;
the management command (config/management/commands/runstack.py) only parses the arguments.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError, OutputWrapper
from django.core.management.color import Style

from config import embedded_redis

CELERY = [sys.executable, "-m", "celery", "-A", "config"]


def worker_queues() -> list[str]:
    """Every queue the tasks use: the default one and embedding's. The one worker of `make run`
    (and of the tests) consumes both; docker-compose gives each a worker of its own."""
    return [settings.CELERY_TASK_DEFAULT_QUEUE, settings.CELERY_EMBED_QUEUE]


def worker_command(queues: Sequence[str]) -> list[str]:
    """A Celery worker consuming ``queues``, exactly as docker-compose's worker services run it.

    Only a worker that consumes the embedding queue loads the models (kb.tasks)."""
    return [*CELERY, "worker", "--loglevel=INFO", "--queues", ",".join(queues), "--without-gossip", "--without-mingle"]


def beat_command() -> list[str]:
    """Celery beat (the periodic KB sweep) exactly as docker-compose's `beat` service runs it."""
    return [*CELERY, "beat", "--loglevel=INFO"]  # its schedule file: CELERY_BEAT_SCHEDULE_FILENAME, under VAR_DIR


def web_command(host: str, port: int) -> list[str]:
    """The ASGI server exactly as docker-compose's `web` service runs it: uvicorn, with as many
    worker processes on the one port as $WEB_CONCURRENCY says (uvicorn reads it; see web_env)."""
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "config.asgi:application",
        "--host",
        host,
        "--port",
        str(port),
        # Django's ASGI handler does not speak the lifespan protocol.
        "--lifespan",
        "off",
        # Pings keep idle sockets open through proxies and notice dead peers.
        "--ws-ping-interval",
        "20",
        "--ws-ping-timeout",
        "20",
        "--timeout-graceful-shutdown",
        "10",
        # Chat frames are a few hundred bytes: compressing each costs more CPU than it saves.
        "--ws-per-message-deflate",
        "false",
        "--no-server-header",
    ]


def web_env(processes: int | None = None) -> dict[str, str]:
    """Environment of the web server command: how many processes serve the port."""
    return {"WEB_CONCURRENCY": str(processes or settings.WEB_CONCURRENCY)}


def metrics_env() -> dict[str, str]:
    """Environment of the web processes for Prometheus's multiprocess mode: one folder they all
    write their metrics to (so that /metrics, served by any of them, adds up every process), emptied
    first because numbers from an earlier run must not count in this one."""
    folder = Path(os.environ.get("PROMETHEUS_MULTIPROC_DIR") or settings.VAR_DIR / "prometheus")
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.db"):
        stale.unlink()
    return {"PROMETHEUS_MULTIPROC_DIR": str(folder)}


class Stack:
    """The supervisor: starts everything in order, watches the children, stops them on a signal.

    ``stdout`` and ``style`` are the management command's, so its output looks like Django's."""

    def __init__(self, stdout: OutputWrapper, style: Style):
        self.stdout = stdout
        self.style = style
        self.children: list[tuple[str, subprocess.Popen]] = []
        self.redis_pid: int | None = None
        self.stopping = False

    def run(self, *, host: str, port: int, no_demo: bool, ready_timeout: float) -> None:
        """Start the stack and supervise it until a signal (or a child's exit, as CommandError)."""
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        settings.VAR_DIR.mkdir(parents=True, exist_ok=True)
        try:
            self._start(host, port, no_demo, ready_timeout)
            self._supervise()
        finally:
            self._stop()

    def _start(self, host: str, port: int, no_demo: bool, ready_timeout: float) -> None:
        from kb.models import Entry

        if settings.REDIS_EMBEDDED:
            self.redis_pid = embedded_redis.start(settings.REDIS_SOCKET)
            self._say(f"Redis: embedded, on {settings.REDIS_SOCKET}")
        else:
            self._say(f"Redis: {settings.REDIS_URL}")
        call_command("migrate", interactive=False, verbosity=0)
        self._say(f"Database: {settings.DATABASES['default']['ENGINE'].rsplit('.', 1)[-1]} (migrated)")
        if not no_demo and not Entry.objects.exists():
            self._say(f"Loading the demo knowledge base: manage.py kb_import {settings.KB_DEMO_FILE.name}")
            call_command("kb_import", str(settings.KB_DEMO_FILE))
        login = self._admin_login()
        if settings.LLM_BASE_URL:
            self._say(f"LLM fallback: {settings.LLM_MODEL} at {settings.LLM_BASE_URL}")
        else:
            self._say("LLM fallback: off (set LLM_BASE_URL to an OpenAI-compatible endpoint); the bot offers a person")
        queues = worker_queues()
        self._spawn("worker", worker_command(queues))
        self._say(f"Worker: queues {', '.join(queues)}")
        self._spawn("beat", beat_command())
        self._spawn("web", web_command(host, port), {**web_env(), **metrics_env()})
        processes = settings.WEB_CONCURRENCY
        self._say(f"Web: uvicorn, {processes} process{'es' if processes > 1 else ''} on port {port} (WEB_CONCURRENCY)")
        url = f"http://{'localhost' if host in ('127.0.0.1', '0.0.0.0') else host}:{port}/"
        self._wait_ready(url, ready_timeout)
        self.stdout.write(
            self.style.SUCCESS(
                f"\n  Chat demo:  {url}\n  Admin:      {url}admin/   {login}\n"
                f"  Ops:        {url}ops/ (transcripts), {url}ops/inbox/ (agents' inbox)\n"
            )
        )
        self._say("Press Ctrl-C to stop.")

    def _admin_login(self) -> str:
        from django.contrib.auth import get_user_model

        users = get_user_model().objects
        password_file: Path = settings.VAR_DIR / "admin-password.txt"
        if not users.filter(is_superuser=True).exists():
            password = secrets.token_urlsafe(12)
            users.create_superuser("admin", "admin@example.com", password)
            password_file.write_text(password + "\n")
            password_file.chmod(0o600)
        if password_file.exists() and users.filter(username="admin").exists():
            return f"(user admin, password {password_file.read_text().strip()})"
        return "(log in with your superuser; `manage.py changepassword <user>` resets a password)"

    def _spawn(self, name: str, command: list[str], extra_env: dict[str, str] | None = None) -> None:
        # The children run on the supervisor's own settings (local for `make run`), named explicitly:
        # config/asgi.py and config/celery.py default to production.
        env = {**os.environ, "DJANGO_SETTINGS_MODULE": settings.SETTINGS_MODULE, **(extra_env or {})}
        # Own session: Ctrl-C reaches only this supervisor, which stops children in order.
        process = subprocess.Popen(
            command, env=env, cwd=settings.BASE_DIR, stdin=subprocess.DEVNULL, start_new_session=True
        )
        self.children.append((name, process))

    def _wait_ready(self, url: str, timeout: float) -> None:
        self._say("Waiting for the web server and the first index version (the embedder loads once)...")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.stopping:
            self._check_children()
            try:
                # /readyz: a web process has loaded its models and the published index.
                with urllib.request.urlopen(url + "readyz", timeout=2) as response:
                    ready = json.load(response)
                self._say(f"Index v{ready['index_version']} loaded ({ready['vectors']} phrasings).")
                return
            except OSError:  # not listening yet, or 503 until the first index is published
                pass
            time.sleep(0.5)
        if not self.stopping:
            raise CommandError(f"not ready after {timeout:.0f}s: see the worker and web output above")

    def _check_children(self) -> None:
        for name, process in self.children:
            if process.poll() is not None:
                raise CommandError(f"the {name} process exited with code {process.returncode}")

    def _supervise(self) -> None:
        while not self.stopping:
            self._check_children()
            time.sleep(0.5)

    def _on_signal(self, signum, frame) -> None:
        self.stopping = True

    def _stop(self) -> None:
        for _, process in reversed(self.children):
            if process.poll() is None:
                process.terminate()
        for name, process in reversed(self.children):
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self._say(f"{name} did not stop in 15 s; killing it")
                process.kill()
                process.wait()
        if self.redis_pid:
            embedded_redis.stop(self.redis_pid)
        if self.children:
            self._say("Stopped.")

    def _say(self, text: str) -> None:
        self.stdout.write(f"[runstack] {text}")
        self.stdout.flush()
