"""The full stack for the load and soak benchmarks: PostgreSQL, Redis, a Celery worker and the ASGI
server, started with the commands `make run` uses, on a database of the benchmark's own."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from pathlib import Path

from bench.common import BASE_DIR, isolated_environment, reachable


class Stack:
    """One benchmark's services. Call :meth:`django_setup` before anything touches the ORM."""

    def __init__(self, name: str, workdir: Path, *, require_services: bool = True):
        if require_services and not (reachable("127.0.0.1", 5432) and reachable("127.0.0.1", 6379)):
            raise SystemExit("this benchmark runs on PostgreSQL and Redis at 127.0.0.1 (5432, 6379)")
        self.workdir = workdir
        self.env = isolated_environment(name, workdir)
        self.env["LOG_LEVEL"] = "WARNING"
        self.worker: subprocess.Popen | None = None
        self.web: subprocess.Popen | None = None
        self.web_processes = 0
        self.redis_pid = None

    def django_setup(self) -> None:
        os.environ.update(self.env)
        import django

        django.setup()
        from django.conf import settings
        from django.core.management import call_command

        from config import embedded_redis

        if settings.REDIS_EMBEDDED:
            self.redis_pid = embedded_redis.start(settings.REDIS_SOCKET)
        call_command("migrate", verbosity=0)

    def kb_load(self, path: Path) -> int:
        """Import a knowledge base file and wait until a worker has published its index; returns
        the number of phrasings searchable."""
        from django.core.management import call_command

        from config.runstack import worker_command, worker_queues
        from kb.models import IndexVersion, KbRevision, Variant

        call_command("kb_import", str(path), "--publish", verbosity=0)
        if self.worker is None:
            self.worker = subprocess.Popen(
                worker_command(worker_queues()),
                cwd=BASE_DIR,
                env={**os.environ, **self.env},
                stdout=(self.workdir / "worker.log").open("a"),
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if self.worker.poll() is not None:
                raise SystemExit((self.workdir / "worker.log").read_text()[-3000:])
            latest = IndexVersion.objects.order_by("-id").first()
            revision = KbRevision.objects.values_list("value", flat=True).first() or 0
            if latest and latest.kb_revision >= revision and not Variant.objects.filter(is_dirty=True).exists():
                return latest.vector_count
            time.sleep(0.5)
        raise SystemExit("the knowledge base was not indexed within 10 minutes")

    def web_start(self, port: int, processes: int, *, command: list[str] | None = None, cwd: Path | None = None):
        """Start the ASGI server (`make run`'s command unless ``command``) and wait until every
        process has loaded the index."""
        from config.runstack import web_command

        self.web_processes = processes
        env = {**os.environ, **self.env, "WEB_CONCURRENCY": str(processes)}
        if cwd is not None:
            env["PYTHONPATH"] = str(cwd)
        self.web = subprocess.Popen(
            command or web_command("127.0.0.1", port),
            cwd=cwd or BASE_DIR,
            env=env,
            stdout=(self.workdir / f"web-{port}.log").open("a"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.url = f"http://127.0.0.1:{port}/"
        deadline = time.monotonic() + 240
        ready_pids: set[int] = set()
        while time.monotonic() < deadline:
            if self.web.poll() is not None:
                raise SystemExit((self.workdir / f"web-{port}.log").read_text()[-3000:])
            status = self.readyz()
            if status is not None and status.get("ready", True):
                ready_pids.add(status.get("pid", 0))
                # Every process must have loaded its models and the index, not just one of them.
                if len(ready_pids) >= processes or command is not None:
                    return
            time.sleep(0.2)
        raise SystemExit("the web server did not become ready within 4 minutes")

    def readyz(self) -> dict | None:
        """One web process's readiness answer (the kernel picks which process), or None."""
        for path in ("readyz", "healthz"):
            try:
                with urllib.request.urlopen(self.url + path, timeout=5) as response:
                    return json.load(response)
            except urllib.error.HTTPError as error:
                if error.code == 404:
                    continue  # a server from before /readyz existed
                return None
            except OSError:
                return None
        return None

    def web_pids(self) -> list[int]:
        """The web server's processes (the uvicorn supervisor and its workers)."""
        import psutil

        if self.web is None:
            return []
        root = psutil.Process(self.web.pid)
        return [root.pid, *(child.pid for child in root.children(recursive=True))]

    def serving_pids(self) -> list[int]:
        """The processes that answer sockets: uvicorn's workers, or the server itself if single."""
        import psutil

        root = psutil.Process(self.web.pid)
        # multiprocessing's resource tracker is a child too (idle, not a worker).
        children = [child for child in root.children() if "resource_tracker" not in " ".join(child.cmdline())]
        return [child.pid for child in children] or [root.pid]

    def worker_pids(self) -> list[int]:
        import psutil

        if self.worker is None:
            return []
        root = psutil.Process(self.worker.pid)
        return [root.pid, *(child.pid for child in root.children(recursive=True))]

    def web_stop(self) -> None:
        _stop(self.web)
        self.web = None

    def stop(self) -> None:
        self.web_stop()
        _stop(self.worker)
        self.worker = None
        if self.redis_pid:
            from config import embedded_redis

            embedded_redis.stop(self.redis_pid)
        from django.db import connections

        connections.close_all()


def _stop(process: subprocess.Popen | None) -> None:
    if process is None or process.poll() is not None:
        return
    import signal

    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
