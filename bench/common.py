"""Helpers shared by the benchmarks: an isolated database and Redis, result files, tables."""

from __future__ import annotations

import json
import os
import platform
import socket
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
RESULTS = BASE_DIR / "bench" / "results"
DATA = BASE_DIR.parent / "shared" / "data"


def reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def isolated_environment(name: str, workdir: Path) -> dict[str, str]:
    """Environment variables giving a benchmark its own database, Redis database and index folder:
    PostgreSQL and Redis on 127.0.0.1 when they run, else SQLite and the embedded Redis."""
    env = {
        "VAR_DIR": str(workdir),
        "KB_INDEX_DIR": str(workdir / "index"),
        "DJANGO_SETTINGS_MODULE": "config.settings.local",
        "DJANGO_DEBUG": "false",
        "CELERY_QUEUE": f"bench-{name}",
        # Every simulated customer connects from 127.0.0.1 and asks as fast as its think time says:
        # flood control still runs (its cost is measured), with limits these robots do not reach.
        "CHATBOT_CONNECTIONS_PER_IP": "0",
        "CHATBOT_MESSAGES_PER_MINUTE": "6000",
        "CHATBOT_FRAMES_PER_SECOND": "100",
    }
    if reachable("127.0.0.1", 5432):
        import psycopg

        database = f"bench_{name}"
        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as connection:
            connection.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
            connection.execute(f"CREATE DATABASE {database}")
        env["DATABASE_URL"] = f"postgres://postgres@127.0.0.1:5432/{database}"
    if reachable("127.0.0.1", 6379):
        env["REDIS_URL"] = "redis://127.0.0.1:6379/13"
    return env


def machine() -> dict:
    return {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()}


def save(name: str, result: dict) -> Path:
    """Write bench/results/<name>-<UTC time>.json and bench/results/<name>-latest.json."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    payload = {"benchmark": name, "at": stamp, "machine": machine(), "command": " ".join(sys.argv), **result}
    path = RESULTS / f"{name}-{stamp}.json"
    path.write_text(json.dumps(payload, indent=2))
    (RESULTS / f"{name}-latest.json").write_text(json.dumps(payload, indent=2))
    return path


def table(rows: list[tuple], header: tuple) -> str:
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    line = lambda row: "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True))  # noqa: E731
    return "\n".join([line(header), line(tuple("-" * w for w in widths)), *(line(row) for row in rows)])


class Timer:
    def __enter__(self):
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.started


def banking77_oos_kb_load(workdir: Path):
    """BANKING77-OOS's 50 in-scope intents' training questions as the knowledge base (one entry per
    intent), imported, embedded by the real services and published, in the database Django is set
    up on; returns the published IndexVersion (after printing its size)."""
    import csv

    from django.core.management import call_command

    from chatbot.evaluation.labelled import labelled_rows_read
    from kb import services

    call_command("migrate", verbosity=0)
    kb_file = workdir / "banking77-oos-train.csv"
    with kb_file.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "category"])
        writer.writerows(
            (row["question"], row["category"]) for row in labelled_rows_read(DATA / "banking77-oos" / "train")
        )
    call_command("kb_import", str(kb_file), "--publish", verbosity=0)
    with Timer() as embedding:
        while services.variants_embed_batch(limit=256).remaining:
            pass
        version = services.index_publish()
    print(
        f"knowledge base: {version.entry_count} entries, {version.vector_count} phrasings, embedded in "
        f"{embedding.seconds:.0f} s ({version.embedder})"
    )
    return version
